//! The floating addresses on the HA interface: added and removed with
//! `ip addr`, and the interface's own primary IPv4 address that VRRP is
//! sent from.

use std::net::Ipv4Addr;

use anyhow::Context as _;

/// `ip addr replace|del ADDRESS dev INTERFACE`; failures are logged.
pub(super) fn ip_addr(verb: &str, address: &str, interface: &str) {
    let mut command = std::process::Command::new("ip");
    command.args(["addr", verb, address, "dev", interface]);
    if verb == "replace" && address.contains(':') {
        command.arg("nodad");
    }
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) if verb == "del" => {
            tracing::debug!(address, stderr = %String::from_utf8_lossy(&output.stderr), "ha: address already gone");
        }
        Ok(output) => {
            tracing::error!(address, stderr = %String::from_utf8_lossy(&output.stderr), "ha: ip addr {verb} failed");
        }
        Err(error) => tracing::error!(address, %error, "ha: cannot run ip"),
    }
}

/// The interface's first IPv4 address (`ip -4 -o addr show dev IFACE`),
/// `None` if it has none.
pub fn primary_ipv4(interface: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", interface])
        .output()
        .context("running ip")?;
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "inet"
                && let Some(address) = words.next().and_then(|a| a.split('/').next())
                && let Ok(address) = address.parse()
            {
                return Ok(Some(address));
            }
        }
    }
    Ok(None)
}

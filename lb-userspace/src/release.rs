//! Floating IPs a dead `lb run` left behind. A master killed by SIGKILL
//! (or crashing) never hands over: its floating IPs stay on the HA
//! interface, and the kernel keeps answering ARP / neighbour solicitations
//! for them while the peer, now master, holds them too. So `lb run`
//! removes them when it starts, before VRRP runs, and `lb release` (the
//! unit's `ExecStopPost=`) removes them however the process ended.
//!
//! [`stale`] decides (pure, tested on literal `ip` output); [`release`]
//! lists the interface's addresses and removes the stale ones with `ip`,
//! the tool [`crate::ha`] adds them with.

use std::{net::IpAddr, process::Command};

use ipnet::IpNet;

use crate::config::HaInstance;

/// Why the floating IPs could not be listed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// `ip` could not be run.
    #[error("cannot run ip: {0}")]
    Spawn(#[source] std::io::Error),
    /// `ip -o addr show dev INTERFACE` failed.
    #[error("listing the addresses of {interface}: {message}")]
    List {
        /// The HA interface.
        interface: String,
        /// What `ip` said.
        message: String,
    },
    /// `ip addr del` failed.
    #[error("removing {address} from {interface}: {message}")]
    Remove {
        /// The floating IP, as the interface holds it.
        address: IpNet,
        /// The HA interface.
        interface: String,
        /// What `ip` said.
        message: String,
    },
}

/// The addresses in `present` (an interface's, with their prefix lengths)
/// that are floating IPs of `floating`. An address counts whatever its
/// prefix length: it is the address that answers ARP.
pub fn stale(floating: &[IpNet], present: &[IpNet]) -> Vec<IpNet> {
    present
        .iter()
        .filter(|held| floating.iter().any(|f| f.addr() == held.addr()))
        .copied()
        .collect()
}

/// The addresses in `ip -o addr show` output (`inet` and `inet6` words).
pub fn parse_addresses(text: &str) -> Vec<IpNet> {
    let mut addresses = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if (word == "inet" || word == "inet6")
                && let Some(address) = words.next().and_then(|a| a.parse::<IpNet>().ok())
            {
                addresses.push(address);
            }
        }
    }
    addresses
}

/// The addresses `interface` holds, both families.
pub fn addresses(interface: &str) -> Result<Vec<IpNet>, ReleaseError> {
    let output = Command::new("ip")
        .args(["-o", "addr", "show", "dev", interface])
        .output()
        .map_err(ReleaseError::Spawn)?;
    if !output.status.success() {
        return Err(ReleaseError::List {
            interface: interface.to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(parse_addresses(&String::from_utf8_lossy(&output.stdout)))
}

/// Removes the floating IPs of the instance `ha` that `ha.interface`
/// holds; returns them (empty: nothing to do). Stops at the first one that
/// cannot be removed.
pub fn release(ha: &HaInstance) -> Result<Vec<IpNet>, ReleaseError> {
    let held = stale(&ha.floating_ips, &addresses(&ha.interface)?);
    for address in &held {
        let output = Command::new("ip")
            .args(["addr", "del", &address.to_string(), "dev", &ha.interface])
            .output()
            .map_err(ReleaseError::Spawn)?;
        // Gone meanwhile (EADDRNOTAVAIL) is what was wanted.
        if !output.status.success() && still_held(&ha.interface, address.addr()) {
            return Err(ReleaseError::Remove {
                address: *address,
                interface: ha.interface.clone(),
                message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
    }
    Ok(held)
}

/// Whether `interface` still holds `address` (true if it cannot be told).
fn still_held(interface: &str, address: IpAddr) -> bool {
    addresses(interface).map_or(true, |held| held.iter().any(|a| a.addr() == address))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -o addr show dev eth0` on a balancer a master killed by SIGKILL left
    /// holding two floating IPs (iproute2 6.1).
    const IP_ADDR: &str = "\
2: eth0    inet 192.0.2.1/24 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 198.51.100.1/24 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.0.2.254/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::fe/64 scope global nodad \\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::1/64 scope global \\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::8c1f:5aff:fe0e:1/64 scope link \\       valid_lft forever preferred_lft forever
";

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn parses_ip_addr_output() {
        assert_eq!(
            parse_addresses(IP_ADDR),
            nets(&[
                "192.0.2.1/24",
                "198.51.100.1/24",
                "192.0.2.254/24",
                "2001:db8::fe/64",
                "2001:db8::1/64",
                "fe80::8c1f:5aff:fe0e:1/64"
            ])
        );
        assert_eq!(parse_addresses(""), []);
    }

    #[test]
    fn only_floating_ips_are_stale_whatever_their_prefix() {
        let present = parse_addresses(IP_ADDR);
        let floating = nets(&["198.51.100.1/24", "192.0.2.254/32", "2001:db8::fe/64"]);
        assert_eq!(
            stale(&floating, &present),
            nets(&["198.51.100.1/24", "192.0.2.254/24", "2001:db8::fe/64"])
        );
        // The interface's own addresses are never touched.
        assert_eq!(stale(&nets(&["203.0.113.10/24"]), &present), []);
        assert_eq!(stale(&[], &present), []);
    }
}

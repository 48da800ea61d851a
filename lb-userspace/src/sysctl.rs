//! The kernel settings `lb run` changes on the host, and only those: IP
//! forwarding on the interfaces the data plane is attached to, put back as
//! they were on a clean stop.
//!
//! Why per interface and not `net.ipv4.ip_forward` /
//! `net.ipv6.conf.all.forwarding`: `bpf_fib_lookup` checks forwarding on the
//! packet's ingress device only (`IN_DEV_FORWARD` / `idev->cnf.forwarding`),
//! and every packet the data path sees arrives on an attached interface.
//! Turning IPv6 forwarding on for all interfaces makes the host a router
//! everywhere, which stops it accepting router advertisements (and so its
//! default route) on interfaces lb has nothing to do with.
//!
//! Packets the data path hands to the kernel to forward (`pass_no_neighbour`)
//! need, for IPv4, forwarding on the ingress device again; for IPv6,
//! `ip6_forward` also wants `conf/all/forwarding` unless the ingress device
//! has `force_forwarding` (Linux 6.17 and later), which is set too where the
//! kernel has it.
//!
//! An edge: it only reads and writes `/proc/sys/net`; the controller decides
//! when.

use std::path::PathBuf;

use anyhow::Context as _;

/// The sysctls `lb run` turned on, with the values they had before.
#[derive(Debug, Default)]
pub struct ForwardingSysctls {
    changed: Vec<(PathBuf, String)>,
}

impl ForwardingSysctls {
    /// Turns forwarding on for each of `interfaces` (IPv4 and IPv6, and
    /// IPv6 `force_forwarding` where the kernel has it), logging every value
    /// it changes. An interface the host lacks is skipped (attaching to it
    /// fails with a clearer message); so is IPv6 on an interface where it is
    /// disabled.
    pub fn enable(interfaces: &[&str]) -> anyhow::Result<Self> {
        let mut sysctls = Self::default();
        let mut no_force_forwarding = Vec::new();
        for interface in interfaces {
            let v4 = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}"));
            let v6 = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{interface}"));
            let mut wanted = Vec::new();
            if v4.is_dir() {
                wanted.push(v4.join("forwarding"));
            }
            if v6.is_dir() {
                wanted.push(v6.join("forwarding"));
                let force = v6.join("force_forwarding");
                if force.exists() {
                    wanted.push(force);
                } else {
                    no_force_forwarding.push(*interface);
                }
            }
            for path in wanted {
                if let Err(error) = sysctls.turn_on(path) {
                    sysctls.restore();
                    return Err(error);
                }
            }
        }
        if !no_force_forwarding.is_empty() && !all_ipv6_forwarding() {
            tracing::warn!(
                interfaces = ?no_force_forwarding,
                "this kernel has no net.ipv6.conf.IFACE.force_forwarding (Linux < 6.17): IPv6 \
                 packets the data plane hands to the kernel (next hop not yet resolved) are not \
                 forwarded unless net.ipv6.conf.all.forwarding=1"
            );
        }
        Ok(sysctls)
    }

    fn turn_on(&mut self, path: PathBuf) -> anyhow::Result<()> {
        let before = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string();
        if before == "1" {
            return Ok(());
        }
        std::fs::write(&path, "1")
            .with_context(|| format!("enabling forwarding: writing 1 to {}", path.display()))?;
        tracing::info!(
            sysctl = %name(&path),
            from = %before,
            to = 1,
            "enabled forwarding on an attached interface (bpf_fib_lookup needs it); \
             restored on a clean stop"
        );
        self.changed.push((path, before));
        Ok(())
    }

    /// Puts back every value [`ForwardingSysctls::enable`] changed, newest
    /// first (on a clean stop; after SIGQUIT the data plane still needs
    /// them). Failures are logged: the interface may be gone.
    pub fn restore(&mut self) {
        for (path, before) in self.changed.drain(..).rev() {
            match std::fs::write(&path, &before) {
                Ok(()) => tracing::info!(sysctl = %name(&path), to = %before, "restored"),
                Err(error) => {
                    tracing::warn!(sysctl = %name(&path), %error, "could not restore");
                }
            }
        }
    }
}

/// Whether `net.ipv6.conf.all.forwarding` is on.
fn all_ipv6_forwarding() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
        .is_ok_and(|value| value.trim() == "1")
}

/// `/proc/sys/net/ipv4/conf/eth0/forwarding` as `net.ipv4.conf.eth0.forwarding`.
fn name(path: &std::path::Path) -> String {
    path.strip_prefix("/proc/sys")
        .unwrap_or(path)
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_read_as_sysctl_writes_them() {
        assert_eq!(
            name(std::path::Path::new(
                "/proc/sys/net/ipv6/conf/eth0/force_forwarding"
            )),
            "net.ipv6.conf.eth0.force_forwarding"
        );
    }
}

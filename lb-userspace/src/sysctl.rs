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
//! What was changed is also written to a record under `/run/lb`, so that
//! after SIGQUIT (or a crash) left the data plane running, the `lb run` that
//! takes it over — or `lb detach` — still puts back the values from before
//! the first one. `/run` is emptied at boot, as the sysctls are reset.
//!
//! One more, for HA, left set (keepalived does the same): IPv4
//! `promote_secondaries` on each VRRP interface. Without it, removing the
//! first address of a subnet removes every other address of that subnet
//! with it — so an instance stepping down would take the floating IPs of
//! another instance (same subnet, added after its own) off the interface.
//!
//! An edge: it only reads and writes `/proc/sys/net` and its record; the
//! controller decides when.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Sets `net.ipv4.conf.INTERFACE.promote_secondaries` to 1 (see the
/// module doc); `true` if it was 0.
pub fn promote_secondaries(interface: &str) -> anyhow::Result<bool> {
    let path = PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{interface}/promote_secondaries"
    ));
    let before =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if before.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&path, "1").with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Where the record of an instance's changed sysctls lives.
const RECORD_DIR: &str = "/run/lb";

/// The record of the forwarding sysctls `lb run` changed for `instance`.
pub fn record_path(instance: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("{instance}.forwarding"))
}

/// The sysctls `lb run` turned on, with the values they had before.
#[derive(Debug, Default)]
pub struct ForwardingSysctls {
    /// Changed by this process.
    changed: Vec<(PathBuf, String)>,
    /// Changed by an earlier `lb run` of the instance that left its data
    /// plane running (found in the record).
    inherited: Vec<(PathBuf, String)>,
    record: Option<PathBuf>,
}

impl ForwardingSysctls {
    /// Turns forwarding on for each of `interfaces` (IPv4 and IPv6, and
    /// IPv6 `force_forwarding` where the kernel has it), logging every value
    /// it changes, and keeps `record` up to date. An interface the host lacks
    /// is skipped (attaching to it fails with a clearer message); so is IPv6
    /// on an interface where it is disabled.
    pub fn enable(interfaces: &[&str], record: PathBuf) -> anyhow::Result<Self> {
        let inherited = read_record(&record);
        if !inherited.is_empty() {
            tracing::info!(
                record = %record.display(),
                sysctls = inherited.len(),
                "forwarding sysctls an earlier lb run changed: put back on a clean stop"
            );
        }
        let mut sysctls = Self {
            changed: Vec::new(),
            inherited,
            record: Some(record),
        };
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
                    sysctls.abandon();
                    return Err(error);
                }
            }
        }
        sysctls.save();
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

    /// Writes the record (or removes it when nothing is changed). A record
    /// that cannot be written is logged: only a takeover after SIGQUIT
    /// needs it.
    fn save(&self) {
        let Some(record) = &self.record else { return };
        let entries: Vec<&(PathBuf, String)> = self.inherited.iter().chain(&self.changed).collect();
        if entries.is_empty() {
            let _ = std::fs::remove_file(record);
            return;
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = record.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let staged = record.with_extension("forwarding.new");
            std::fs::write(&staged, format_record(netns(), &entries))?;
            std::fs::rename(&staged, record)
        };
        if let Err(error) = write() {
            tracing::warn!(record = %record.display(), %error,
                "cannot record the forwarding sysctls changed: an lb run taking over after \
                 SIGQUIT will leave them on");
        }
    }

    /// Puts back every value changed — by this process and by the earlier
    /// `lb run` it took over from — newest first, and removes the record (on
    /// a clean stop; after SIGQUIT the data plane still needs them).
    /// Failures are logged: the interface may be gone.
    pub fn restore(&mut self) {
        let all: Vec<(PathBuf, String)> = self
            .inherited
            .drain(..)
            .chain(self.changed.drain(..))
            .collect();
        put_back(all);
        self.save();
    }

    /// Puts back only what this process changed, keeping the record of the
    /// earlier run's changes (a start that failed: a taken-over data plane
    /// may still be forwarding).
    pub fn abandon(&mut self) {
        put_back(std::mem::take(&mut self.changed));
        self.save();
    }
}

/// `lb detach`: puts back what the record of `instance` lists, if it was
/// written in this network namespace, and removes it; how many values were
/// put back.
pub fn restore_recorded(instance: &str) -> usize {
    let record = record_path(instance);
    let entries = read_record(&record);
    let count = entries.len();
    put_back(entries);
    let _ = std::fs::remove_file(&record);
    count
}

/// Writes each `(path, value)` back, last first.
fn put_back(entries: Vec<(PathBuf, String)>) {
    for (path, before) in entries.into_iter().rev() {
        match std::fs::write(&path, &before) {
            Ok(()) => tracing::info!(sysctl = %name(&path), to = %before, "restored"),
            Err(error) => {
                tracing::warn!(sysctl = %name(&path), %error, "could not restore");
            }
        }
    }
}

/// The entries of `record`, oldest first; none if it is missing, unreadable
/// or from another network namespace (its paths would name other
/// interfaces).
fn read_record(record: &Path) -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Vec::new();
    };
    match parse_record(&text) {
        Some((ns, entries)) if ns == netns() => entries,
        Some(_) => {
            tracing::warn!(record = %record.display(),
                "the forwarding record is from another network namespace: ignored");
            Vec::new()
        }
        None => {
            tracing::warn!(record = %record.display(), "unreadable forwarding record: ignored");
            Vec::new()
        }
    }
}

/// The record's text: `netns INODE`, then one `PATH VALUE` line per sysctl.
fn format_record(netns: u64, entries: &[&(PathBuf, String)]) -> String {
    let mut text = format!("netns {netns}\n");
    for (path, value) in entries {
        let _ = writeln!(text, "{} {value}", path.display());
    }
    text
}

/// The inverse of [`format_record`]; `None` if it does not parse, or names
/// a path outside `/proc/sys/net`.
fn parse_record(text: &str) -> Option<(u64, Vec<(PathBuf, String)>)> {
    let mut lines = text.lines();
    let netns = lines.next()?.strip_prefix("netns ")?.parse().ok()?;
    let mut entries = Vec::new();
    for line in lines {
        let (path, value) = line.rsplit_once(' ')?;
        let path = PathBuf::from(path);
        if !path.starts_with("/proc/sys/net") || value.parse::<i64>().is_err() {
            return None;
        }
        entries.push((path, value.to_string()));
    }
    Some((netns, entries))
}

/// This process's network namespace (the inode of `/proc/self/ns/net`).
fn netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
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
    fn records_round_trip_and_refuse_foreign_paths() {
        let entries = [
            (
                PathBuf::from("/proc/sys/net/ipv4/conf/eth0/forwarding"),
                "0".to_string(),
            ),
            (
                PathBuf::from("/proc/sys/net/ipv6/conf/eth0.100/force_forwarding"),
                "0".to_string(),
            ),
        ];
        let text = format_record(4_026_531_840, &entries.iter().collect::<Vec<_>>());
        assert_eq!(
            text,
            "netns 4026531840\n/proc/sys/net/ipv4/conf/eth0/forwarding 0\n\
             /proc/sys/net/ipv6/conf/eth0.100/force_forwarding 0\n"
        );
        assert_eq!(parse_record(&text), Some((4_026_531_840, entries.to_vec())));
        assert_eq!(parse_record("netns 1\n/etc/passwd 0\n"), None);
        assert_eq!(parse_record("netns 1\n/proc/sys/net/x root\n"), None);
        assert_eq!(parse_record("garbage"), None);
    }

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

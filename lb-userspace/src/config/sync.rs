//! `sync:` (docs/DESIGN.md §4, §5): connection sync between the balancers of
//! one HA pair or ECMP group — where to exchange flows, with whom, under
//! which key, and how much a peer may put in this balancer's table.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use super::problems::Problems;
use super::{Config, Ha};

/// The section as written; [`ConnSync::interface_for`] and
/// [`ConnSync::peers_for`] resolve its defaults from `ha:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnSync {
    /// Interface the sync datagrams leave and arrive on; default
    /// `ha.interface`.
    #[serde(default)]
    pub interface: Option<String>,
    /// UDP port, the same on every balancer.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The peers' addresses; default: the VRRP unicast peers.
    #[serde(default)]
    pub peers: Vec<IpAddr>,
    /// The pair's shared HMAC key (the file's bytes, surrounding
    /// whitespace ignored). Required: a sync datagram moves traffic.
    pub secret_file: PathBuf,
    /// Flows per second this balancer accepts from its peers (all of
    /// them together); the rest are refused and counted.
    #[serde(default = "default_peer_rate")]
    pub peer_rate: u32,
    /// The largest share of the connection table that flows installed by
    /// peers may hold (counted over the TCP idle timeout), so a broken or
    /// compromised peer cannot evict the local flows.
    #[serde(default = "default_peer_share")]
    pub peer_share: f64,
}

/// The default UDP port.
pub const DEFAULT_PORT: u16 = 7946;

const fn default_port() -> u16 {
    DEFAULT_PORT
}
const fn default_peer_rate() -> u32 {
    50_000
}
const fn default_peer_share() -> f64 {
    0.5
}

impl ConnSync {
    /// The interface: `sync.interface`, else `ha.interface`.
    pub fn interface_for(&self, ha: Option<&Ha>) -> Option<String> {
        self.interface
            .clone()
            .or_else(|| ha.map(|ha| ha.interface.clone()))
    }

    /// The peers: `sync.peers`, else every VRRP unicast peer of every
    /// instance (deduplicated, in order).
    pub fn peers_for(&self, ha: Option<&Ha>) -> Vec<IpAddr> {
        if !self.peers.is_empty() {
            return self.peers.clone();
        }
        let mut peers = Vec::new();
        for instance in ha.map(Ha::instances).unwrap_or_default() {
            for peer in instance.unicast_peers {
                if !peers.contains(&peer) {
                    peers.push(peer);
                }
            }
        }
        peers
    }
}

/// `sync`: an interface and peers to be had (from the section or from
/// `ha:`), a port, and bounds that let something in.
pub(super) fn check_sync(config: &Config, sync: &ConnSync, problems: &mut Problems) {
    let ha = config.ha.as_ref();
    if sync.interface_for(ha).is_none() {
        problems.push(
            "sync.interface",
            "required without an ha: section (whose interface is the default)".into(),
        );
    } else if let Some(interface) = &sync.interface
        && interface.is_empty()
    {
        problems.push("sync.interface", "must not be empty".into());
    }
    if sync.peers_for(ha).is_empty() {
        problems.push(
            "sync.peers",
            "no peers: list the other balancers' addresses here, or give ha.unicast_peers \
             (multicast VRRP peers are not known by address)"
                .into(),
        );
    }
    if sync.port == 0 {
        problems.push("sync.port", "must be 1..65535".into());
    }
    if sync.secret_file.as_os_str().is_empty() {
        problems.push(
            "sync.secret_file",
            "must name the file of the shared key".into(),
        );
    }
    if sync.peer_rate == 0 {
        problems.push(
            "sync.peer_rate",
            "must be at least 1 (flows per second accepted from peers)".into(),
        );
    }
    if !(sync.peer_share > 0.0 && sync.peer_share <= 1.0) {
        problems.push(
            "sync.peer_share",
            format!(
                "{} is outside (0, 1]: the share of the connection table peers may fill",
                sync.peer_share
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::*;

    fn problems(text: &str) -> Vec<(String, String)> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(super::super::ConfigError::Invalid(problems)) => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            Err(other) => panic!("{other}"),
        }
    }

    const HA: &str = "ha: { interface: eth1, virtual_router_id: 51, priority: 100, \
                      unicast_peers: [192.0.2.2], floating_ips: [203.0.113.10/24] }\n";

    #[test]
    fn defaults_come_from_ha() {
        let config = Config::parse(&format!(
            "{MINIMAL}{HA}sync: {{ secret_file: /etc/lb/sync.key }}\n"
        ))
        .unwrap();
        let sync = config.sync.as_ref().unwrap();
        assert_eq!(sync.port, 7946);
        assert_eq!(sync.peer_rate, 50_000);
        assert!((sync.peer_share - 0.5).abs() < f64::EPSILON);
        assert_eq!(
            sync.interface_for(config.ha.as_ref()).as_deref(),
            Some("eth1")
        );
        assert_eq!(
            sync.peers_for(config.ha.as_ref()),
            ["192.0.2.2".parse::<IpAddr>().unwrap()]
        );
        // Explicit values win.
        let config = Config::parse(&format!(
            "{MINIMAL}{HA}sync: {{ interface: eth0, port: 8000, peers: [192.0.2.3, 192.0.2.4], \
             secret_file: /k, peer_rate: 10, peer_share: 0.25 }}\n"
        ))
        .unwrap();
        let sync = config.sync.as_ref().unwrap();
        assert_eq!(
            sync.interface_for(config.ha.as_ref()).as_deref(),
            Some("eth0")
        );
        assert_eq!(sync.peers_for(config.ha.as_ref()).len(), 2);
    }

    /// With sync, a round-robin service under ha: keeps its flows: no
    /// warning; without, the warning says what to configure.
    #[test]
    fn local_schedulers_are_not_warned_about_with_sync() {
        let rr = MINIMAL.replace(
            "protocol: tcp\n",
            "protocol: tcp\n    scheduler: round-robin\n",
        );
        let without = Config::parse(&format!("{rr}{HA}")).unwrap().warnings();
        assert_eq!(without.len(), 1, "{without:?}");
        assert!(
            without[0].message.contains("configure sync:"),
            "{without:?}"
        );
        let with = Config::parse(&format!("{rr}{HA}sync: {{ secret_file: /k }}\n"))
            .unwrap()
            .warnings();
        assert!(with.is_empty(), "{with:?}");
    }

    #[test]
    fn what_cannot_work_is_refused_with_its_path() {
        // No ha: neither interface nor peers have a default.
        let found = problems(&format!("{MINIMAL}sync: {{ secret_file: /k }}\n"));
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["sync.interface", "sync.peers"], "{found:?}");
        assert!(found[1].1.contains("ha.unicast_peers"), "{found:?}");
        // Multicast VRRP: peers unknown.
        let multicast = HA.replace("unicast_peers: [192.0.2.2], ", "");
        let found = problems(&format!(
            "{MINIMAL}{multicast}sync: {{ secret_file: /k }}\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "sync.peers");
        // Bounds.
        let found = problems(&format!(
            "{MINIMAL}{HA}sync: {{ secret_file: /k, port: 0, peer_rate: 0, peer_share: 1.5 }}\n"
        ));
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["sync.port", "sync.peer_rate", "sync.peer_share"],
            "{found:?}"
        );
        // The key file is required.
        let found = problems(&format!("{MINIMAL}{HA}sync: {{ port: 7946 }}\n"));
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "sync" && m.contains("secret_file")),
            "{found:?}"
        );
    }
}

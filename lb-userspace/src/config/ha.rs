//! The VRRP instances of the `ha` section: each entry of `ha.instances` as
//! written ([`HaInstanceSpec`]), what a service's health does to an
//! instance ([`Track`]), and each instance resolved with the section's
//! defaults ([`HaInstance`]), which is what `lb run` starts.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use super::Ha;

/// One entry of `ha.instances`: its own VRID, priority and floating IPs;
/// every other key, when given, overrides the section's.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HaInstanceSpec {
    /// VRID, 1..=255, unique on the interface.
    pub virtual_router_id: u8,
    /// Priority, 1..=254.
    pub priority: u8,
    /// Floating addresses the master of this instance holds.
    #[serde(default)]
    pub floating_ips: Vec<IpNet>,
    /// Overrides `ha.interface`.
    #[serde(default)]
    pub interface: Option<String>,
    /// Overrides `ha.advert_interval`.
    #[serde(default, with = "optional_duration")]
    pub advert_interval: Option<Duration>,
    /// Overrides `ha.preempt`.
    #[serde(default)]
    pub preempt: Option<bool>,
    /// Overrides `ha.preempt_delay`.
    #[serde(default, with = "optional_duration")]
    pub preempt_delay: Option<Duration>,
    /// Overrides `ha.unicast_peers`.
    #[serde(default)]
    pub unicast_peers: Option<Vec<IpAddr>>,
    /// Overrides `ha.track`.
    #[serde(default)]
    pub track: Option<Vec<Track>>,
}

/// keepalived's `track_script` with `weight`, on a service's health: while
/// `service` has fewer than `min_healthy` healthy backends on this
/// balancer, the instance's priority is lowered by `weight` (never below
/// 1), or, with `weight: 0`, the instance is in `fault` (as keepalived does
/// for a failing script without a weight).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Track {
    /// The service's name.
    pub service: String,
    /// How much the priority drops, 0..=253; 0 puts the instance in fault.
    #[serde(default)]
    pub weight: u8,
    /// Healthy backends needed; default: the service's `min_healthy`.
    #[serde(default)]
    pub min_healthy: Option<u32>,
}

/// One VRRP instance with every setting resolved: what `lb run` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaInstance {
    /// Interface VRRP runs on.
    pub interface: String,
    /// VRID, 1..=255.
    pub virtual_router_id: u8,
    /// Configured priority, 1..=254 (tracking may lower it).
    pub priority: u8,
    /// Advertisement interval.
    pub advert_interval: Duration,
    /// `false` is keepalived's `nopreempt`.
    pub preempt: bool,
    /// keepalived's `preempt_delay`.
    pub preempt_delay: Duration,
    /// Unicast peers; empty means multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// Floating addresses the master holds.
    pub floating_ips: Vec<IpNet>,
    /// Services whose health lowers the priority.
    pub track: Vec<Track>,
    /// Announcements of each floating IP on becoming master (`ha.garp_repeat`).
    pub garp_repeat: u32,
    /// Their spacing (`ha.garp_interval`).
    pub garp_interval: Duration,
}

impl Ha {
    /// The instances to run: the one written in the section itself, or
    /// one per `instances` entry with the section's keys as defaults. A
    /// validated section without `instances` has its VRID and priority.
    pub fn instances(&self) -> Vec<HaInstance> {
        if self.instances.is_empty() {
            return vec![HaInstance {
                interface: self.interface.clone(),
                virtual_router_id: self.virtual_router_id.unwrap_or_default(),
                priority: self.priority.unwrap_or_default(),
                advert_interval: self.advert_interval,
                preempt: self.preempt,
                preempt_delay: self.preempt_delay,
                unicast_peers: self.unicast_peers.clone(),
                floating_ips: self.floating_ips.clone(),
                track: self.track.clone(),
                garp_repeat: self.garp_repeat,
                garp_interval: self.garp_interval,
            }];
        }
        self.instances
            .iter()
            .map(|spec| HaInstance {
                interface: spec
                    .interface
                    .clone()
                    .unwrap_or_else(|| self.interface.clone()),
                virtual_router_id: spec.virtual_router_id,
                priority: spec.priority,
                advert_interval: spec.advert_interval.unwrap_or(self.advert_interval),
                preempt: spec.preempt.unwrap_or(self.preempt),
                preempt_delay: spec.preempt_delay.unwrap_or(self.preempt_delay),
                unicast_peers: spec
                    .unicast_peers
                    .clone()
                    .unwrap_or_else(|| self.unicast_peers.clone()),
                floating_ips: spec.floating_ips.clone(),
                track: spec.track.clone().unwrap_or_else(|| self.track.clone()),
                garp_repeat: self.garp_repeat,
                garp_interval: self.garp_interval,
            })
            .collect()
    }

    /// Where instance `i`'s `key` is written: in its `instances` entry if
    /// that overrides it, else in the section (for messages).
    pub fn path_of(&self, i: usize, key: &str) -> String {
        let overridden = self.instances.get(i).is_some_and(|spec| match key {
            "interface" => spec.interface.is_some(),
            "advert_interval" => spec.advert_interval.is_some(),
            "preempt" => spec.preempt.is_some(),
            "preempt_delay" => spec.preempt_delay.is_some(),
            "unicast_peers" => spec.unicast_peers.is_some(),
            "track" => spec.track.is_some(),
            _ => true,
        });
        if overridden {
            format!("ha.instances[{i}].{key}")
        } else {
            format!("ha.{key}")
        }
    }
}

mod optional_duration {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "\
instance: edge1
interfaces: [{ name: eth0 }]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }]
";

    #[test]
    fn single_form_is_one_instance() {
        let text = format!(
            "{BASE}ha: {{ interface: eth0, virtual_router_id: 51, priority: 150, \
             floating_ips: [203.0.113.10/24], track: [{{ service: web, weight: 60 }}] }}\n"
        );
        let ha = Config::parse(&text).unwrap().ha.unwrap();
        let instances = ha.instances();
        assert_eq!(instances.len(), 1);
        let one = &instances[0];
        assert_eq!((one.virtual_router_id, one.priority), (51, 150));
        assert_eq!(one.interface, "eth0");
        assert_eq!(one.advert_interval, Duration::from_secs(1));
        assert_eq!(one.track[0].weight, 60);
        assert_eq!(one.track[0].min_healthy, None);
    }

    #[test]
    fn instances_take_the_section_as_defaults() {
        let text = format!(
            "{BASE}ha:
  interface: eth0
  advert_interval: 100ms
  unicast_peers: [192.0.2.2]
  track: [{{ service: web, weight: 60 }}]
  instances:
    - {{ virtual_router_id: 51, priority: 150, floating_ips: [203.0.113.10/24] }}
    - {{ virtual_router_id: 52, priority: 100, floating_ips: [203.0.113.20/24],
        preempt: false, advert_interval: 200ms, track: [] }}
"
        );
        let ha = Config::parse(&text).unwrap().ha.unwrap();
        let [a, b] = <[HaInstance; 2]>::try_from(ha.instances()).unwrap();
        assert_eq!((a.virtual_router_id, a.priority), (51, 150));
        assert_eq!((b.virtual_router_id, b.priority), (52, 100));
        assert_eq!(a.advert_interval, Duration::from_millis(100));
        assert_eq!(b.advert_interval, Duration::from_millis(200));
        assert!(a.preempt && !b.preempt);
        assert_eq!(a.unicast_peers, b.unicast_peers);
        assert_eq!(a.track.len(), 1);
        assert!(b.track.is_empty());
        assert_eq!(a.floating_ips[0].to_string(), "203.0.113.10/24");
        assert_eq!(
            ha.path_of(1, "advert_interval"),
            "ha.instances[1].advert_interval"
        );
        assert_eq!(ha.path_of(0, "advert_interval"), "ha.advert_interval");
        assert_eq!(ha.path_of(0, "priority"), "ha.instances[0].priority");
    }

    fn problems(ha: &str) -> Vec<String> {
        match Config::parse(&format!("{BASE}{ha}")) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid(problems)) => problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn the_two_forms_do_not_mix_and_each_is_complete() {
        let both = problems(
            "ha: { interface: eth0, virtual_router_id: 51, priority: 150, \
             floating_ips: [203.0.113.10/24], \
             instances: [{ virtual_router_id: 52, priority: 100 }] }\n",
        );
        assert_eq!(both.len(), 3, "{both:?}");
        assert!(both[0].starts_with("ha.virtual_router_id: set it in each entry of ha.instances"));
        assert!(both[1].starts_with("ha.priority: set it in each entry"));
        assert!(both[2].starts_with("ha.floating_ips: set it in each entry"));
        let neither = problems("ha: { interface: eth0 }\n");
        assert_eq!(neither.len(), 2, "{neither:?}");
        assert!(neither[0].starts_with("ha.virtual_router_id: missing"));
        assert!(neither[1].starts_with("ha.priority: missing"));
    }

    #[test]
    fn instances_are_checked_where_written() {
        let found = problems(
            "ha:
  interface: eth0
  instances:
    - { virtual_router_id: 0, priority: 255, floating_ips: [203.0.113.10/24] }
    - { virtual_router_id: 52, priority: 100, advert_interval: 5ms,
        floating_ips: [203.0.113.10/24] }
    - { virtual_router_id: 52, priority: 90,
        track: [{ service: nosuch, weight: 254 }, { service: web, min_healthy: 0 }] }
",
        );
        let expected = [
            "ha.instances[0].virtual_router_id: 0 is reserved",
            "ha.instances[0].priority: 255 is reserved",
            "ha.instances[1].advert_interval: 5ms is not a multiple of 10ms",
            "ha.instances[1].floating_ips: 203.0.113.10 is a floating IP of ha.instances[0] too",
            "ha.instances[2].virtual_router_id: 52 is used by ha.instances[1] on eth0 too",
            "ha.instances[2].track[0].service: no service named \"nosuch\"",
            "ha.instances[2].track[0].weight: 254 is over 253",
            "ha.instances[2].track[1].min_healthy: must be at least 1",
        ];
        for (found, expected) in found.iter().zip(expected) {
            assert!(found.starts_with(expected), "{found:?} is not {expected:?}");
        }
        assert_eq!(found.len(), expected.len(), "{found:?}");
    }
}

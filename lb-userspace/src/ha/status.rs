//! What `lb status`, `lb ha` and the metrics show of HA: one
//! [`InstanceStatus`] per VRRP instance, kept by its thread, and the
//! [`HaStatus`] of the report, whose top-level fields describe the first
//! instance (the single-instance shape of docs/DESIGN.md §6) and whose
//! `instances` lists them all.

use serde::{Deserialize, Serialize};

/// HA part of the status report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HaStatus {
    /// `master`, `backup`, `fault`, `initialize` (VRRP starting or
    /// stopped) or `standalone` (no `ha` section); of the first instance.
    pub state: String,
    /// The first instance's configured VRRP priority.
    pub priority: Option<u8>,
    /// The first instance's peer (the master it last heard), when known.
    pub peer: Option<String>,
    /// Unix time of the first instance's last state change.
    pub since: u64,
    /// Why the first instance is in its state.
    pub reason: String,
    /// The first instance's state changes since the controller started.
    #[serde(default)]
    pub transitions: u64,
    /// Malformed VRRP packets the first instance dropped (a bad checksum,
    /// TTL / hop limit other than 255, an IPv6 source that is not
    /// link-local, ...).
    #[serde(default)]
    pub invalid_packets: u64,
    /// Well-formed advertisements the first instance ignored: another
    /// virtual router's (VRID) or another address family's.
    #[serde(default)]
    pub ignored_packets: u64,
    /// When the first instance, as master, had its floating IPs in place
    /// (Unix time in milliseconds); `None` unless master.
    #[serde(default)]
    pub floating_ips_added_ms: Option<u64>,
    /// The kind of the first instance's fault, when in fault.
    #[serde(default)]
    pub fault_cause: Option<String>,
    /// Every instance (empty when standalone).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

impl HaStatus {
    /// Without an `ha` section, since `started`.
    pub fn standalone(started: u64) -> Self {
        Self {
            state: "standalone".into(),
            priority: None,
            peer: None,
            since: started,
            reason: "no ha section in the configuration".into(),
            transitions: 0,
            invalid_packets: 0,
            ignored_packets: 0,
            floating_ips_added_ms: None,
            fault_cause: None,
            instances: Vec::new(),
        }
    }

    /// The report for `instances`, in configuration order.
    pub fn of(instances: Vec<InstanceStatus>, started: u64) -> Self {
        let Some(first) = instances.first() else {
            return Self::standalone(started);
        };
        Self {
            state: first.state.clone(),
            priority: Some(first.priority),
            peer: first.peer.clone(),
            since: first.since,
            reason: first.reason.clone(),
            transitions: first.transitions,
            invalid_packets: first.invalid_packets,
            ignored_packets: first.ignored_packets,
            floating_ips_added_ms: first.floating_ips_added_ms,
            fault_cause: first.fault_cause.clone(),
            instances,
        }
    }
}

/// One VRRP instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Its VRID.
    pub virtual_router_id: u8,
    /// The interface it runs on.
    #[serde(default)]
    pub interface: String,
    /// `master`, `backup`, `fault` or `initialize`. `master` only once
    /// every floating IP is in place: until then (VRRP already master,
    /// the adds under way) the state shown before stays, and `reason`
    /// says so.
    pub state: String,
    /// Configured priority.
    pub priority: u8,
    /// Priority in effect (tracking lowers it).
    pub effective_priority: u8,
    /// Why the priority in effect is what it is (or why in fault).
    #[serde(default)]
    pub priority_reason: String,
    /// The master on the segment as this balancer sees it: its own
    /// address when master, the master it follows when backup.
    pub master: Option<String>,
    /// The master it last heard (another balancer).
    #[serde(default)]
    pub peer: Option<String>,
    /// Unix time of the last state change.
    pub since: u64,
    /// Why it is in this state.
    pub reason: String,
    /// State changes since the controller started.
    #[serde(default)]
    pub transitions: u64,
    /// Malformed VRRP packets dropped since the controller started.
    #[serde(default)]
    pub invalid_packets: u64,
    /// Well-formed advertisements ignored (another VRID or family).
    #[serde(default)]
    pub ignored_packets: u64,
    /// Its floating IPs.
    #[serde(default)]
    pub floating_ips: Vec<String>,
    /// When, as master, it had every floating IP in place (Unix time in
    /// milliseconds); `None` unless master.
    #[serde(default)]
    pub floating_ips_added_ms: Option<u64>,
    /// Floating-IP adds the kernel refused since the controller started
    /// (each address of each try).
    #[serde(default)]
    pub address_failures: u64,
    /// In fault: the kind of cause (`link_down`, `no_address`, `track`,
    /// `floating_ip_refused`, `thread_stopped`); `reason` says more.
    #[serde(default)]
    pub fault_cause: Option<String>,
    /// Its tracked services as last seen.
    #[serde(default)]
    pub tracks: Vec<TrackStatus>,
}

/// One tracked service of an instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackStatus {
    /// The service.
    pub service: String,
    /// What its failure takes off the priority (0: fault).
    pub weight: u8,
    /// Healthy backends needed.
    pub min_healthy: u32,
    /// Healthy backends now.
    pub healthy: u32,
    /// Fewer than needed.
    pub failing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(vrid: u8, state: &str) -> InstanceStatus {
        InstanceStatus {
            virtual_router_id: vrid,
            interface: "eth0".into(),
            state: state.into(),
            priority: 150,
            effective_priority: 90,
            priority_reason: "configured 150, -60: service web has 0 healthy backends (needs 1)"
                .into(),
            master: Some("192.0.2.2".into()),
            peer: Some("192.0.2.2".into()),
            since: 1_700_000_000,
            reason: "higher priority 100 from 192.0.2.2".into(),
            transitions: 3,
            invalid_packets: 1,
            ignored_packets: 0,
            floating_ips: vec!["192.0.2.254/24".into()],
            floating_ips_added_ms: None,
            address_failures: 0,
            fault_cause: None,
            tracks: Vec::new(),
        }
    }

    /// docs/DESIGN.md §6: the top-level fields describe the first
    /// instance, and `instances` lists each with its VRID, state, both
    /// priorities, the master, since and reason.
    #[test]
    fn the_report_keeps_the_single_instance_shape_and_lists_every_instance() {
        let report = HaStatus::of(vec![instance(51, "backup"), instance(52, "master")], 7);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["state"], "backup");
        assert_eq!(json["priority"], 150);
        assert_eq!(json["peer"], "192.0.2.2");
        assert_eq!(json["since"], 1_700_000_000);
        assert_eq!(json["reason"], "higher priority 100 from 192.0.2.2");
        assert_eq!(json["transitions"], 3);
        let second = &json["instances"][1];
        for key in [
            "virtual_router_id",
            "state",
            "priority",
            "effective_priority",
            "master",
            "since",
            "reason",
        ] {
            assert!(!second[key].is_null(), "no {key} in {second}");
        }
        assert_eq!(second["virtual_router_id"], 52);
        assert_eq!(second["effective_priority"], 90);
        // What `lb status` reads back.
        let back: HaStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.instances.len(), 2);

        let standalone = serde_json::to_value(HaStatus::of(Vec::new(), 7)).unwrap();
        assert_eq!(standalone["state"], "standalone");
        assert_eq!(standalone["since"], 7);
        assert_eq!(standalone["priority"], serde_json::Value::Null);
        assert_eq!(standalone["instances"], serde_json::json!([]));
    }
}

//! What `lb status`, `lb ha` and the metrics show of HA: one
//! [`InstanceStatus`] per VRRP instance, kept by its thread, and the
//! [`HaStatus`] of the report, whose top-level fields describe the first
//! instance (the single-instance shape of DESIGN.md §6) and whose
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
    /// Malformed VRRP packets the first instance dropped.
    #[serde(default)]
    pub invalid_packets: u64,
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
    /// `master`, `backup`, `fault` or `initialize`.
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
    /// Its floating IPs.
    #[serde(default)]
    pub floating_ips: Vec<String>,
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

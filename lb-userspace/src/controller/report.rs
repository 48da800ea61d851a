//! What `lb status` and `lb stats` answer (docs/DESIGN.md §6): the JSON the API
//! serves and the command line prints.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ha::HaStatus;

/// `lb status` as JSON (docs/DESIGN.md §6).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// Instance name.
    pub instance: String,
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// High availability.
    pub ha: HaStatus,
    /// The junk-traffic guard: deny lists and automatic denials (beside
    /// the core shape of docs/DESIGN.md §6).
    #[serde(default)]
    pub guard: crate::guard::GuardReport,
    /// `guard.attack`: per VIP, the rates and whether it is under attack
    /// (beside the core shape of docs/DESIGN.md §6).
    #[serde(default)]
    pub attack: crate::attack::AttackReport,
    /// `announce`: per VIP, announced or withdrawn and why (beside the
    /// core shape of docs/DESIGN.md §6; `null` without the section).
    #[serde(default)]
    pub announce: Option<super::announcing::AnnounceStatus>,
    /// Connection sync: peers and counters (beside the core shape of
    /// docs/DESIGN.md §6; `null` without a `sync:` section).
    #[serde(default)]
    pub sync: Option<crate::sync::status::SyncStatus>,
}

/// One service in [`StatusReport`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP.
    pub vip: String,
    /// Port (0: all).
    pub port: u16,
    /// `tcp` / `udp`.
    pub protocol: String,
    /// Scheduler.
    pub scheduler: String,
    /// Forwarding mode.
    pub forwarding: String,
    /// The tier serving new flows; `null` when no backend can.
    pub active_tier: Option<u8>,
    /// What the operator should know (a service with no backends); empty
    /// when all is well (docs/DESIGN.md §6 lists it).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Backends.
    pub backends: Vec<BackendStatus>,
}

/// One backend in [`ServiceStatus`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct BackendStatus {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tier.
    pub tier: u8,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the live table: in the configured units for the static
    /// schedulers, in hundredths of them for `least-conn` and `resource`
    /// (`weight: 1` at full weight shows 100).
    pub effective_weight: u32,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Drained by the operator.
    pub drained: bool,
    /// Active flows. In `dsr` and `tunnel` modes the balancer sees only the
    /// client's half of a flow, so this is an estimate there.
    pub active_flows: Option<u64>,
    /// The last health-check result; `null` without checks.
    pub last_check: Option<LastCheck>,
}

/// A health-check result in [`BackendStatus`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct LastCheck {
    /// Passed.
    pub ok: bool,
    /// What happened ("ok", "connection refused", "status 503", ...).
    pub detail: String,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
}

/// `lb stats` as JSON.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatsReport {
    /// Per service.
    pub services: Vec<ServiceStats>,
    /// Dropped packets per reason.
    pub drops: BTreeMap<String, u64>,
    /// Every verdict reason.
    pub reasons: BTreeMap<String, u64>,
    /// The connection table: fill and estimated LRU evictions.
    #[serde(default)]
    pub connection_table: crate::conns::ConnTableStats,
}

/// One service in [`StatsReport`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ServiceStats {
    /// Name.
    pub name: String,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows scheduled.
    pub new_flows: u64,
    /// Per backend.
    pub backends: Vec<BackendStats>,
}

/// One backend in [`ServiceStats`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct BackendStats {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows scheduled.
    pub new_flows: u64,
}

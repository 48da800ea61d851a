//! The types that cross the control socket (docs/STYLE.md §17): what `lb
//! status` and `lb stats` answer (docs/DESIGN.md §6), the JSON the API
//! serves and the command line prints; which services a report covers; and
//! (`change.rs`) the operator's changes and why one is refused. The
//! controller fills them; the faces (API, metrics, command line, `lb stats
//! --watch`, `lb route`) read them without importing the controller.

mod change;

pub use change::{Override, OverrideError, RouteError, UndoFailed, half_done, reload_failure};

use std::{collections::BTreeMap, fmt::Write as _};

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
    pub announce: Option<AnnounceStatus>,
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
    /// How long ago its result arrived, in milliseconds, when the report
    /// was made.
    pub age_ms: u64,
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

/// `announce` in [`StatusReport`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AnnounceStatus {
    /// BIRD's control socket.
    pub bird_socket: String,
    /// The include lb writes.
    pub bird_include: String,
    /// Includes BIRD took since start.
    pub bird_updates: u64,
    /// Why the last attempt to tell BIRD failed (retried every second).
    pub bird_error: Option<String>,
    /// Per VIP.
    pub vips: Vec<VipStatus>,
}

/// One VIP in [`AnnounceStatus`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct VipStatus {
    /// The decision: vip, state, cause, reason, diverted, communities,
    /// `med`, `local_pref`.
    #[serde(flatten)]
    pub announcement: crate::announce::VipAnnouncement,
    /// Unix time of the last change.
    pub since: u64,
    /// State changes since start.
    pub changes: u64,
    /// Times it was diverted since start.
    pub diverts: u64,
}

/// Which services a report covers (`lb status web`, `/v1/status?service=web`):
/// every one when no name is given, otherwise those named. The rest of a
/// report is the same either way: a filter only leaves services out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFilter {
    names: Vec<String>,
}

/// Known services an unknown-name error lists at most.
const LISTED: usize = 20;

impl ServiceFilter {
    /// The services named (none: every service).
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }

    /// Every service.
    pub fn all() -> Self {
        Self::default()
    }

    /// The names given (empty: every service).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the service `name` is reported.
    pub fn admits(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n == name)
    }

    /// `Err` naming every name that is not among `known`, and listing the
    /// known ones in their order (the first [`LISTED`] of them, and how many
    /// more).
    pub fn check<'a>(&self, known: impl Iterator<Item = &'a str> + Clone) -> Result<(), String> {
        let unknown: Vec<String> = self
            .names
            .iter()
            .filter(|name| !known.clone().any(|k| k == name.as_str()))
            .map(|name| format!("{name:?}"))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let total = known.clone().count();
        let listed: Vec<&str> = known.take(LISTED).collect();
        let services = if listed.is_empty() {
            "none is configured".to_string()
        } else {
            let more = total.saturating_sub(listed.len());
            let mut text = listed.join(", ");
            if more > 0 {
                let _ = write!(text, ", and {more} more");
            }
            format!("the services are {text}")
        };
        Err(format!(
            "no service named {}: {services}",
            unknown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceFilter;

    #[test]
    fn a_filter_admits_the_named_services_and_names_the_unknown_ones() {
        let all = ServiceFilter::all();
        assert!(all.admits("web") && all.admits("dns"));
        assert_eq!(all.check(["web"].into_iter()), Ok(()));
        let some = ServiceFilter::new(vec!["web".into(), "dns".into()]);
        assert!(some.admits("web") && some.admits("dns") && !some.admits("mail"));
        assert_eq!(some.check(["mail", "dns", "web"].into_iter()), Ok(()));
        assert_eq!(
            some.check(["mail", "web"].into_iter()),
            Err("no service named \"dns\": the services are mail, web".into())
        );
        assert_eq!(
            some.check(std::iter::empty()),
            Err("no service named \"web\", \"dns\": none is configured".into())
        );
        let many: Vec<String> = (0..25).map(|n| format!("s{n:02}")).collect();
        let error = some.check(many.iter().map(String::as_str)).unwrap_err();
        assert!(error.ends_with("s19, and 5 more"), "{error}");
    }
}

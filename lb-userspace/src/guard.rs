//! The junk-traffic guard's bookkeeping in the controller: the operator's
//! runtime deny list (`lb guard deny|allow`), and what the data path's
//! automatic guard did (`GUARD_DENIED` entries, seen by polling), turned
//! into events to log, counters and the report `lb guard list` and
//! `lb status` show. Pure: the controller reads and writes the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use lb_common::{
    Addr,
    maps::{GUARD_CAUSE_NEW_FLOWS, GUARD_CAUSE_PACKETS, GUARD_CAUSE_SYN_ONLY, GuardDenial},
};
use serde::{Deserialize, Serialize};

/// Why the automatic guard denied a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// `guard.auto.new_flows_per_second`.
    NewFlows,
    /// `guard.auto.syn_only_per_second`.
    SynOnly,
    /// `guard.auto.packets_per_second`.
    Packets,
}

impl Cause {
    /// Every cause, for metrics.
    pub const ALL: [Cause; 3] = [Cause::NewFlows, Cause::SynOnly, Cause::Packets];

    /// The data path's `GUARD_CAUSE_*` value, if known.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            GUARD_CAUSE_NEW_FLOWS => Some(Cause::NewFlows),
            GUARD_CAUSE_SYN_ONLY => Some(Cause::SynOnly),
            GUARD_CAUSE_PACKETS => Some(Cause::Packets),
            _ => None,
        }
    }

    /// Stable name, for logs, JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Cause::NewFlows => "new_flows",
            Cause::SynOnly => "syn_only",
            Cause::Packets => "packets",
        }
    }
}

/// A source the automatic guard denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The source address.
    pub source: IpAddr,
    /// The VIP whose threshold it crossed.
    pub vip: IpAddr,
    /// Which threshold.
    pub cause: Cause,
    /// Seconds left until it is let in again.
    pub expires_in_seconds: u64,
}

/// A new denial, to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What was denied.
    pub denial: Denial,
}

/// `lb guard list`, and the `guard` part of `lb status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardReport {
    /// Prefixes from `guard.deny` in the configuration file.
    pub configured: Vec<String>,
    /// Prefixes added with `lb guard deny` (kept across controller
    /// restarts, until `lb guard allow` or the data plane is removed).
    pub runtime: Vec<String>,
    /// Whether `guard.auto` is configured.
    pub auto: bool,
    /// Sources the automatic guard denies now.
    pub denied: Vec<Denial>,
    /// Denials since start, per cause name.
    pub denials_total: BTreeMap<String, u64>,
}

/// The controller's guard state.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Prefixes the operator denied at runtime.
    runtime: BTreeSet<IpNet>,
    /// Denials in the data path, by source: (since, until, vip, cause).
    known: BTreeMap<IpAddr, (u64, u64, IpAddr, Cause)>,
    /// Denials seen since start, per cause.
    totals: BTreeMap<Cause, u64>,
}

/// A map address as an `IpAddr` (IPv4-mapped addresses as IPv4).
pub fn addr_ip(addr: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl Guard {
    /// The runtime deny list.
    pub fn runtime(&self) -> &BTreeSet<IpNet> {
        &self.runtime
    }

    /// Adds `prefix` to the runtime deny list; false if it was there.
    pub fn deny(&mut self, prefix: IpNet) -> bool {
        self.runtime.insert(prefix.trunc())
    }

    /// Removes `prefix` from the runtime deny list; false if it was not
    /// there.
    pub fn allow(&mut self, prefix: IpNet) -> bool {
        self.runtime.remove(&prefix.trunc())
    }

    /// Takes in the data path's `GUARD_DENIED` entries read at `now_ns`
    /// (its clock): returns the denials that are new since the last call
    /// (an entry whose start changed is a new denial), counting them.
    /// Expired entries are neither new nor kept.
    pub fn observe(&mut self, entries: &[(Addr, GuardDenial)], now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut known = BTreeMap::new();
        for (addr, denial) in entries {
            if denial.until_ns <= now_ns {
                continue;
            }
            let Some(cause) = Cause::from_raw(denial.cause) else {
                continue;
            };
            let source = addr_ip(addr);
            let entry = (
                denial.since_ns,
                denial.until_ns,
                addr_ip(&denial.vip),
                cause,
            );
            if self
                .known
                .get(&source)
                .is_none_or(|old| old.0 != denial.since_ns)
            {
                *self.totals.entry(cause).or_default() += 1;
                events.push(Event {
                    denial: to_denial(source, &entry, now_ns),
                });
            }
            known.insert(source, entry);
        }
        self.known = known;
        events
    }

    /// Forgets the automatic denials of sources in `prefix` (the
    /// controller removes them from the map); returns those sources.
    pub fn forget_within(&mut self, prefix: &IpNet) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self
            .known
            .keys()
            .filter(|source| prefix.contains(*source))
            .copied()
            .collect();
        for source in &gone {
            self.known.remove(source);
        }
        gone
    }

    /// The report, at `now_ns`.
    pub fn report(&self, configured: &[IpNet], auto: bool, now_ns: u64) -> GuardReport {
        GuardReport {
            configured: configured.iter().map(ToString::to_string).collect(),
            runtime: self.runtime.iter().map(ToString::to_string).collect(),
            auto,
            denied: self
                .known
                .iter()
                .filter(|(_, entry)| entry.1 > now_ns)
                .map(|(source, entry)| to_denial(*source, entry, now_ns))
                .collect(),
            denials_total: Cause::ALL
                .iter()
                .map(|cause| {
                    (
                        cause.name().to_string(),
                        self.totals.get(cause).copied().unwrap_or(0),
                    )
                })
                .collect(),
        }
    }

    /// Denials since start for `cause`.
    pub fn total(&self, cause: Cause) -> u64 {
        self.totals.get(&cause).copied().unwrap_or(0)
    }

    /// Sources denied now, per VIP whose threshold they crossed.
    pub fn denied_per_vip(&self, now_ns: u64) -> BTreeMap<IpAddr, u32> {
        let mut per_vip = BTreeMap::new();
        for entry in self.known.values().filter(|entry| entry.1 > now_ns) {
            *per_vip.entry(entry.2).or_default() += 1;
        }
        per_vip
    }

    /// Sources denied now.
    pub fn denied_now(&self, now_ns: u64) -> usize {
        self.known.values().filter(|entry| entry.1 > now_ns).count()
    }
}

fn to_denial(source: IpAddr, entry: &(u64, u64, IpAddr, Cause), now_ns: u64) -> Denial {
    Denial {
        source,
        vip: entry.2,
        cause: entry.3,
        expires_in_seconds: entry.1.saturating_sub(now_ns).div_ceil(1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps::ipv4_mapped;

    use super::*;

    fn denial(since: u64, until: u64, cause: u32) -> GuardDenial {
        GuardDenial {
            until_ns: until,
            since_ns: since,
            vip: ipv4_mapped([203, 0, 113, 10]),
            cause,
            pad: 0,
        }
    }

    #[test]
    fn a_denial_is_an_event_once_and_counted_per_cause() {
        let mut guard = Guard::default();
        let source = ipv4_mapped([198, 51, 100, 7]);
        let entries = [(source, denial(1_000, 61_000_000_000, GUARD_CAUSE_SYN_ONLY))];
        let events = guard.observe(&entries, 2_000);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].denial.source.to_string(), "198.51.100.7");
        assert_eq!(events[0].denial.vip.to_string(), "203.0.113.10");
        assert_eq!(events[0].denial.cause, Cause::SynOnly);
        assert_eq!(events[0].denial.expires_in_seconds, 61);
        assert!(guard.observe(&entries, 3_000).is_empty(), "seen already");
        assert_eq!(guard.total(Cause::SynOnly), 1);
        // Denied again later (a new start): a second event.
        let again = [(source, denial(70_000_000_000, 130_000_000_000, 3))];
        assert_eq!(guard.observe(&again, 70_000_000_001).len(), 1);
        assert_eq!(guard.total(Cause::Packets), 1);
        let report = guard.report(&[], true, 70_000_000_001);
        assert_eq!(report.denied.len(), 1);
        assert_eq!(report.denials_total["syn_only"], 1);
        assert_eq!(report.denials_total["packets"], 1);
        assert_eq!(report.denials_total["new_flows"], 0);
        let vip: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(guard.denied_per_vip(70_000_000_001)[&vip], 1);
        assert!(guard.denied_per_vip(130_000_000_000).is_empty());
    }

    #[test]
    fn expired_entries_are_neither_events_nor_listed() {
        let mut guard = Guard::default();
        let entries = [(ipv4_mapped([198, 51, 100, 7]), denial(0, 5, 1))];
        assert!(guard.observe(&entries, 5).is_empty());
        assert!(guard.report(&[], true, 5).denied.is_empty());
        assert_eq!(guard.denied_now(5), 0);
    }

    #[test]
    fn allowing_a_prefix_forgets_the_sources_in_it() {
        let mut guard = Guard::default();
        let entries = [
            (ipv4_mapped([198, 51, 100, 7]), denial(0, 100, 1)),
            (ipv4_mapped([192, 0, 2, 7]), denial(0, 100, 1)),
        ];
        guard.observe(&entries, 1);
        let gone = guard.forget_within(&"198.51.100.0/24".parse().unwrap());
        assert_eq!(gone, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(guard.denied_now(1), 1);
    }

    #[test]
    fn runtime_prefixes_are_kept_normalised() {
        let mut guard = Guard::default();
        assert!(guard.deny("198.51.100.9/24".parse().unwrap()));
        assert!(!guard.deny("198.51.100.0/24".parse().unwrap()));
        assert!(guard.allow("198.51.100.0/24".parse().unwrap()));
        assert!(!guard.allow("198.51.100.0/24".parse().unwrap()));
    }
}

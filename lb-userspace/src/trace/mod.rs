//! `lb trace`: the data path's decisions as they happen. The kernel emits
//! them to a ring buffer only while a trace is attached (`SETTINGS_TRACE`),
//! filtered, sampled and rate-limited there (`lb-ebpf/src/trace.rs`).
//!
//! This file is the pure part: filters (the kernel's, merged over every
//! client tracing, and each client's own), events decoded into [`TraceLine`]
//! and the API's request and answer. [`hub`] is the I/O: the thread that
//! reads the ring buffer, and the buffer clients poll.

pub mod hub;

use std::net::IpAddr;

use lb_common::{
    Reason,
    maps::{Addr, is_ipv4_mapped},
    trace::{
        EVENT_BACKEND, EVENT_PORTS, TRACE_DROPS, TRACE_SOURCE, TRACE_VIP, TraceEvent, TraceSettings,
    },
};
use serde::{Deserialize, Serialize};

use crate::route::map_addr;

/// Events per second each CPU may emit, and the burst it may send at once.
pub const EVENTS_PER_SECOND: u64 = 2_000;
/// See [`EVENTS_PER_SECOND`].
pub const BURST: u64 = 200;

/// What one client traces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only drops.
    #[serde(default)]
    pub drops: bool,
    /// Only packets to this VIP.
    #[serde(default)]
    pub vip: Option<IpAddr>,
    /// Only packets from this prefix.
    #[serde(default)]
    pub source: Option<ipnet::IpNet>,
}

impl Filter {
    /// Whether `line` passes.
    pub fn matches(&self, line: &TraceLine) -> bool {
        (!self.drops || line.drop)
            && self.vip.is_none_or(|vip| line.destination == Some(vip))
            && self
                .source
                .is_none_or(|prefix| line.source.is_some_and(|s| prefix.contains(&s)))
    }
}

/// The kernel's filter for a set of clients: what every one of them
/// narrows to (each client filters further on its own).
pub fn kernel_settings<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> TraceSettings {
    let filters: Vec<&Filter> = filters.into_iter().collect();
    let interval_ns = 1_000_000_000 / EVENTS_PER_SECOND;
    let mut settings = TraceSettings {
        sample_every: 1,
        interval_ns,
        burst_ns: interval_ns * BURST,
        ..TraceSettings::default()
    };
    let Some(first) = filters.first() else {
        return settings;
    };
    if filters.iter().all(|f| f.drops) {
        settings.flags |= TRACE_DROPS;
    }
    if let Some(vip) = first.vip
        && filters.iter().all(|f| f.vip == Some(vip))
    {
        settings.flags |= TRACE_VIP;
        settings.vip = map_addr(vip);
    }
    if let Some(source) = first.source
        && filters.iter().all(|f| f.source == Some(source))
    {
        settings.flags |= TRACE_SOURCE;
        settings.source = map_addr(source.network());
        settings.source_len = match source {
            ipnet::IpNet::V4(net) => u32::from(net.prefix_len()) + 96,
            ipnet::IpNet::V6(net) => u32::from(net.prefix_len()),
        };
    }
    settings
}

/// One decision, as `lb trace` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceLine {
    /// When, UTC, RFC 3339 with microseconds.
    pub time: String,
    /// The interface it came in on.
    pub interface: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    /// Source address (`null` for a frame too short to have one).
    pub source: Option<IpAddr>,
    /// Source port, when the packet has one.
    pub source_port: Option<u16>,
    /// Destination address.
    pub destination: Option<IpAddr>,
    /// Destination port.
    pub destination_port: Option<u16>,
    /// The verdict reason (as `lb stats` names it).
    pub reason: String,
    /// Whether the packet was dropped.
    pub drop: bool,
    /// `pass`, `drop`, `tx`, `redirect` or `aborted`.
    pub action: String,
    /// The backend chosen, `address:port` (port 0: the client's).
    pub backend: Option<String>,
}

/// Reasons after which the packet went (or was to go) to a backend: the
/// only ones whose backend is reported.
fn has_backend(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::ForwardToBackend
            | Reason::ForwardUncachedHop
            | Reason::PassNoNeighbour
            | Reason::IcmpToBackend
            | Reason::IcmpTooBig
            | Reason::DropNoRoute
            | Reason::DropNoNeighbour
            | Reason::DropRedirect
            | Reason::DropNoHeadroom
    )
}

fn ip_of(addr: &Addr) -> IpAddr {
    crate::plan::unmap_addr(*addr)
}

/// `time_ns` on the monotonic clock as UTC text, given the realtime minus
/// monotonic offset.
pub fn utc_text(time_ns: u64, offset_ns: i128) -> String {
    let unix_ns = i128::from(time_ns) + offset_ns;
    let secs = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Decodes a kernel event; `interface` names an ifindex.
pub fn decode(event: &TraceEvent, offset_ns: i128, interface: &str) -> TraceLine {
    let reason = Reason::from_slot(event.reason);
    let ports = event.flags & EVENT_PORTS != 0;
    let known = event.proto != 0 || event.dst != [0; 16];
    let backend =
        (event.flags & EVENT_BACKEND != 0 && reason.is_some_and(has_backend)).then(|| {
            let addr = ip_of(&event.backend);
            match addr {
                IpAddr::V6(v6) if !is_ipv4_mapped(&event.backend) => {
                    format!("[{v6}]:{}", event.backend_port)
                }
                addr => format!("{addr}:{}", event.backend_port),
            }
        });
    TraceLine {
        time: utc_text(event.time_ns, offset_ns),
        interface: interface.to_string(),
        protocol: match event.proto {
            lb_common::proto::TCP => "tcp".into(),
            lb_common::proto::UDP => "udp".into(),
            lb_common::proto::ICMP => "icmp".into(),
            lb_common::proto::ICMPV6 => "icmpv6".into(),
            0 if !known => "-".into(),
            other => other.to_string(),
        },
        source: known.then(|| ip_of(&event.src)),
        source_port: ports.then_some(event.sport),
        destination: known.then(|| ip_of(&event.dst)),
        destination_port: ports.then_some(event.dport),
        reason: reason.map_or_else(|| format!("reason {}", event.reason), |r| r.name().into()),
        drop: reason.is_some_and(Reason::is_drop),
        action: match event.action {
            0 => "aborted",
            1 => "drop",
            2 => "pass",
            3 => "tx",
            4 => "redirect",
            _ => "?",
        }
        .into(),
        backend,
    }
}

/// `POST /v1/trace`: the events after `after` that pass the filter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TracePoll {
    /// The client, so its filter stays in force between polls.
    pub client: String,
    /// The last sequence number seen (`None`: from now on).
    pub after: Option<u64>,
    /// What to trace.
    #[serde(flatten)]
    pub filter: Filter,
}

/// The answer to a [`TracePoll`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TraceBatch {
    /// Events, oldest first.
    pub events: Vec<TraceLine>,
    /// The sequence number to poll after next.
    pub next: u64,
    /// Events not shown since this client started: refused by the kernel's
    /// rate limit or a full ring buffer (for every client tracing), or
    /// gone from the controller's buffer before this client polled.
    pub lost: u64,
}

/// A text line for people.
pub fn human(line: &TraceLine) -> String {
    let end = |addr: Option<IpAddr>, port: Option<u16>| match (addr, port) {
        (None, _) => "-".to_string(),
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
    };
    let time = line.time.get(11..26).unwrap_or(&line.time);
    let mut text = format!(
        "{time} {:<8} {:<6} {} -> {} {}",
        line.interface,
        line.protocol,
        end(line.source, line.source_port),
        end(line.destination, line.destination_port),
        line.reason
    );
    if let Some(backend) = &line.backend {
        text.push_str(" backend ");
        text.push_str(backend);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_is_rfc3339() {
        // 2026-11-30T17:32:41.000001Z is 1_796_059_961 s after the epoch.
        assert_eq!(
            utc_text(1_000, 1_796_059_961_000_000_000),
            "2026-11-30T17:32:41.000001Z"
        );
        assert_eq!(utc_text(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            utc_text(0, 951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn kernel_filter_is_what_every_client_narrows_to() {
        let a = Filter {
            drops: true,
            vip: Some("203.0.113.10".parse().unwrap()),
            source: Some("198.51.100.0/24".parse().unwrap()),
        };
        let one = kernel_settings([&a]);
        assert_eq!(one.flags, TRACE_DROPS | TRACE_VIP | TRACE_SOURCE);
        assert_eq!(one.source_len, 96 + 24);
        let b = Filter {
            drops: false,
            ..a.clone()
        };
        let two = kernel_settings([&a, &b]);
        assert_eq!(two.flags, TRACE_VIP | TRACE_SOURCE);
        let c = Filter::default();
        assert_eq!(kernel_settings([&a, &c]).flags, 0);
        assert_eq!(kernel_settings([]).flags, 0);
        assert_eq!(one.burst_ns / one.interval_ns, BURST);
    }

    #[test]
    fn decodes_events_and_reports_backends_only_where_chosen() {
        let mut event = TraceEvent {
            time_ns: 5,
            ifindex: 2,
            reason: Reason::ForwardToBackend as u32,
            src: map_addr("198.51.100.2".parse().unwrap()),
            dst: map_addr("203.0.113.10".parse().unwrap()),
            sport: 40000,
            dport: 80,
            proto: lb_common::proto::TCP,
            action: 4,
            flags: EVENT_BACKEND | EVENT_PORTS,
            backend: map_addr("192.0.2.11".parse().unwrap()),
            backend_port: 8080,
            ..TraceEvent::default()
        };
        let line = decode(&event, 0, "eth0");
        assert_eq!(line.backend.as_deref(), Some("192.0.2.11:8080"));
        assert_eq!(line.action, "redirect");
        assert!(!line.drop);
        assert_eq!(
            human(&line),
            "00:00:00.000000 eth0     tcp    198.51.100.2:40000 -> 203.0.113.10:80 \
             forward_to_backend backend 192.0.2.11:8080"
        );
        event.reason = Reason::DropDenied as u32;
        event.flags = EVENT_BACKEND;
        let line = decode(&event, 0, "eth0");
        assert_eq!(line.backend, None);
        assert_eq!(line.source_port, None);
        assert!(line.drop);
        let filter = Filter {
            drops: true,
            vip: None,
            source: Some("198.51.100.0/30".parse().unwrap()),
        };
        assert!(filter.matches(&line));
        let elsewhere = Filter {
            source: Some("198.51.100.4/30".parse().unwrap()),
            ..filter
        };
        assert!(!elsewhere.matches(&line));
    }
}

//! `lb route`'s answer as JSON and as text: the [`Decision`] with its ids
//! named (service, backend address) and the controller's view of the
//! backend (health, drain, tier, weights) beside the kernel's.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Decision, HopView, Query, Source};
use crate::{
    config::Protocol,
    plan::PlannedService,
    report::{BackendStatus, StatusReport},
};

/// The API request (`POST /v1/route`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteRequest {
    /// Client address.
    pub client: IpAddr,
    /// Client port, if known.
    pub client_port: Option<u16>,
    /// VIP.
    pub vip: IpAddr,
    /// Service port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl RouteRequest {
    /// The query for [`super::decide`]: a later packet of the flow (not a
    /// SYN), on no CPU in particular.
    pub fn query(&self) -> Result<Query, String> {
        let proto = match self.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("protocol {other:?}: expected tcp or udp")),
        };
        Ok(Query {
            client: self.client,
            client_port: self.client_port,
            vip: self.vip,
            port: self.port,
            proto: proto.number(),
            syn: false,
            cpu: None,
        })
    }
}

/// `lb route --output json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteReport {
    /// The flow asked about.
    pub flow: RouteRequest,
    /// The verdict reason the data path counts for it; `null` when it
    /// depends on what the flow does not say (client port, CPU).
    pub verdict: Option<String>,
    /// The matching service.
    pub service: Option<RouteService>,
    /// The backend the next packet of the flow goes to.
    pub backend: Option<RouteBackend>,
    /// The connection-table entry of the flow.
    pub connection: Option<RouteConnection>,
    /// What the scheduler gives a new flow.
    pub scheduler: Option<RouteScheduler>,
    /// The next hop towards the backend.
    pub next_hop: Option<RouteHop>,
    /// The guard's view of the client.
    pub guard: RouteGuard,
    /// What the maps cannot tell in advance.
    pub notes: Vec<String>,
}

/// The service in [`RouteReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteService {
    /// Name.
    pub name: String,
    /// `exact` or `all-port`.
    #[serde(rename = "match")]
    pub matched: String,
    /// Its port (0: all ports).
    pub port: u16,
    /// Scheduler.
    pub scheduler: String,
    /// Forwarding.
    pub forwarding: String,
}

/// A backend in [`RouteReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteBackend {
    /// Address.
    pub address: String,
    /// Port (0: the client's destination port).
    pub port: u16,
    /// `connection`, `scheduler` or `next_pick` (round robin).
    pub source: String,
    /// The kernel's `BACKENDS` entry says it may carry traffic.
    pub usable: bool,
    /// `up`, `down` or `unknown`, as the controller has it.
    pub health: Option<String>,
    /// Drained by the operator.
    pub drained: Option<bool>,
    /// Tier.
    pub tier: Option<u8>,
    /// Configured weight.
    pub weight: Option<u32>,
    /// Weight in the live table, in the units of `lb status`.
    pub effective_weight: Option<u32>,
}

/// The connection-table entry in [`RouteReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteConnection {
    /// The backend it holds, `address:port`.
    pub backend: String,
    /// A FIN or RST was seen.
    pub closed: bool,
    /// Milliseconds since it was last refreshed (refreshed at most once a
    /// second).
    pub idle_ms: u64,
    /// The flow stays on it; `false`: the flow is rescheduled (idle, its
    /// backend unusable or moved to another service).
    pub kept: bool,
}

/// The scheduler in [`RouteReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteScheduler {
    /// The table slot a new flow hashes to.
    pub slot: Option<u32>,
    /// The backend there, `address:port` (maglev, ip-hash).
    pub pick: Option<String>,
    /// Round robin: the next pick on each CPU, in CPU order.
    pub next_picks: Vec<Option<String>>,
    /// maglev hashes the client port too: give `CLIENT:PORT`.
    pub needs_client_port: bool,
}

/// The next hop in [`RouteReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteHop {
    /// Resolved by the controller (`false`: the kernel's FIB decides).
    pub cached: bool,
    /// Egress interface.
    pub interface: Option<String>,
    /// Its index.
    pub ifindex: Option<u32>,
    /// Our MAC on it.
    pub source_mac: Option<String>,
    /// The next hop's MAC.
    pub next_hop_mac: Option<String>,
    /// Longest IP packet that takes this hop.
    pub mtu: Option<u16>,
}

/// The guard in [`RouteReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouteGuard {
    /// The deny-list prefix that holds the client.
    pub denied_by: Option<String>,
    /// The automatic guard denies the client for this many more
    /// milliseconds.
    pub auto_denied_ms: Option<u64>,
    /// The per-source new-flow limit is configured.
    pub rate_limit: bool,
    /// New flows the client may open at once now (`null`: a full burst).
    pub rate_tokens: Option<f64>,
    /// The client's next new flow is refused (`drop_rate_limited`).
    pub rate_limited: bool,
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A map-form address as text.
fn addr_text(addr: &lb_common::Addr) -> String {
    crate::plan::unmap_addr(*addr).to_string()
}

/// Names `decision`'s ids from the planner's view and the controller's
/// status; `interface` names an ifindex.
pub fn build(
    request: &RouteRequest,
    decision: &Decision,
    planned: &[PlannedService],
    status: &StatusReport,
    interface: impl Fn(u32) -> Option<String>,
) -> RouteReport {
    let service = decision
        .service
        .and_then(|m| planned.iter().find(|p| p.key == m.key).map(|p| (m, p)));
    let named = |id: u32| -> Option<(String, u16, Option<&BackendStatus>)> {
        let (service, backend) = planned
            .iter()
            .find_map(|s| s.backends.iter().find(|b| b.id == id).map(|b| (s, b)))?;
        let status = status
            .services
            .iter()
            .find(|s| s.name == service.name)
            .and_then(|s| {
                s.backends.iter().find(|b| {
                    b.address == backend.key.address.to_string() && b.port == backend.key.port
                })
            });
        Some((backend.key.address.to_string(), backend.key.port, status))
    };
    let label = |id: u32| named(id).map(|(a, p, _)| format!("{a}:{p}"));
    let backend = decision.backend.map(|(id, value, source)| {
        let (address, port, status) = named(id).unwrap_or_else(|| {
            // Planned no more (a reload raced): the kernel's entry speaks.
            (addr_text(&value.addr), value.port, None)
        });
        RouteBackend {
            address,
            port,
            source: match source {
                Source::Connection => "connection",
                Source::Scheduler => "scheduler",
                Source::NextPick => "next_pick",
            }
            .into(),
            usable: value.flags & lb_common::maps::BACKEND_USABLE != 0,
            health: status.map(|s| s.health.clone()),
            drained: status.map(|s| s.drained),
            tier: status.map(|s| s.tier),
            weight: status.map(|s| s.weight),
            effective_weight: status.map(|s| s.effective_weight),
        }
    });
    let scheduler = decision.service.map(|_| RouteScheduler {
        slot: decision.schedule.slot,
        pick: decision.schedule.pick.and_then(label),
        next_picks: decision
            .schedule
            .next_picks
            .iter()
            .map(|id| label(*id))
            .collect(),
        needs_client_port: decision.schedule.needs_client_port,
    });
    let next_hop = decision.hop.map(|hop| hop_report(hop, &interface));
    let guard = &decision.guard;
    let now = crate::dataplane::monotonic_ns();
    let notes = notes(request, decision);
    RouteReport {
        flow: request.clone(),
        verdict: decision.verdict.map(|r| r.name().to_string()),
        service: service.map(|(m, p)| {
            let configured = status.services.iter().find(|s| s.name == p.name);
            RouteService {
                name: p.name.clone(),
                matched: if m.all_ports { "all-port" } else { "exact" }.into(),
                port: m.key.port,
                scheduler: configured.map_or_else(String::new, |s| s.scheduler.clone()),
                forwarding: configured.map_or_else(String::new, |s| s.forwarding.clone()),
            }
        }),
        backend,
        connection: decision.connection.map(|c| RouteConnection {
            backend: label(c.backend_id).unwrap_or_else(|| format!("id {}", c.backend_id)),
            closed: c.closed,
            idle_ms: c.idle_ns / 1_000_000,
            kept: c.kept,
        }),
        scheduler,
        next_hop,
        guard: RouteGuard {
            denied_by: guard
                .denied_by
                .map(|(prefix, len)| prefix_text(&prefix, len)),
            auto_denied_ms: guard
                .auto_denied
                .map(|d| d.until_ns.saturating_sub(now) / 1_000_000),
            rate_limit: guard.rate_limit,
            #[allow(clippy::cast_precision_loss, reason = "a handful of tokens")]
            rate_tokens: guard.rate_tokens_milli.map(|t| t as f64 / 1000.0),
            rate_limited: guard.rate_limit && guard.rate_tokens_milli.is_some_and(|t| t < 1000),
        },
        notes,
    }
}

/// The decision's notes, and what the request left open.
fn notes(request: &RouteRequest, decision: &Decision) -> Vec<String> {
    let mut notes: Vec<String> = decision.notes.iter().map(|n| (*n).to_string()).collect();
    if request.client_port.is_none() {
        notes.push("no client port: the connection table was not looked up".into());
    }
    if decision.schedule.needs_client_port {
        notes.push("maglev hashes the client port: give CLIENT:PORT for the backend".into());
    }
    if !decision.schedule.next_picks.is_empty() && decision.backend.is_none() {
        notes.push("round-robin: a new flow gets the next pick of the CPU that receives it".into());
    }
    if matches!(decision.hop, Some(HopView::Fib)) {
        notes.push("no cached next hop: the kernel's FIB decides per packet".into());
    }
    notes
}

/// The next hop for the report.
fn hop_report(hop: HopView, interface: &impl Fn(u32) -> Option<String>) -> RouteHop {
    match hop {
        HopView::Cached(hop) => RouteHop {
            cached: true,
            interface: interface(hop.ifindex),
            ifindex: Some(hop.ifindex),
            source_mac: Some(mac_text(hop.smac)),
            next_hop_mac: Some(mac_text(hop.dmac)),
            mtu: Some(hop.mtu),
        },
        HopView::Fib => RouteHop {
            cached: false,
            interface: None,
            ifindex: None,
            source_mac: None,
            next_hop_mac: None,
            mtu: None,
        },
    }
}

/// A map-form prefix as `addr/len` in its own family.
fn prefix_text(prefix: &lb_common::Addr, len: u32) -> String {
    if lb_common::maps::is_ipv4_mapped(prefix) {
        format!("{}/{}", addr_text(prefix), len.saturating_sub(96))
    } else {
        format!("{}/{len}", addr_text(prefix))
    }
}

/// The guard's line of `lb route`.
fn guard_text(g: &RouteGuard) -> String {
    let mut guard = Vec::new();
    if let Some(prefix) = &g.denied_by {
        guard.push(format!("denied by {prefix} (drop_denied)"));
    }
    if let Some(ms) = g.auto_denied_ms {
        guard.push(format!("denied by guard.auto for {ms} ms more"));
    }
    if g.rate_limit {
        guard.push(match (g.rate_limited, g.rate_tokens) {
            (true, _) => "rate limited: the next new flow is refused".into(),
            (false, Some(t)) => format!("rate limit: {t:.1} new flows left in the burst"),
            (false, None) => "rate limit: full burst".into(),
        });
    }
    if guard.is_empty() {
        guard.push("allows".into());
    }
    guard.join("; ")
}

/// `lb route` for people.
pub fn print(report: &RouteReport) {
    let flow = &report.flow;
    let client = match (flow.client, flow.client_port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let vip = match flow.vip {
        IpAddr::V6(a) => format!("[{a}]:{}", flow.port),
        a @ IpAddr::V4(_) => format!("{a}:{}", flow.port),
    };
    println!("flow      {} {client} -> {vip}", flow.protocol);
    println!(
        "verdict   {}",
        report.verdict.as_deref().unwrap_or("depends (see notes)")
    );
    match &report.service {
        Some(s) => println!(
            "service   {} ({} match, port {}), {} / {}",
            s.name, s.matched, s.port, s.scheduler, s.forwarding
        ),
        None => println!("service   none: the packet goes to this host's stack untouched"),
    }
    println!("guard     {}", guard_text(&report.guard));
    match &report.connection {
        Some(c) => println!(
            "conntrack {} ({}, idle {} ms){}",
            c.backend,
            if c.closed { "closed" } else { "open" },
            c.idle_ms,
            if c.kept { "" } else { ": rescheduled" }
        ),
        None if flow.client_port.is_some() => println!("conntrack no entry: a new flow"),
        None => println!("conntrack not looked up (no client port)"),
    }
    if let Some(s) = &report.scheduler {
        if let Some(pick) = &s.pick {
            println!(
                "scheduler slot {} -> {pick}",
                s.slot.map_or_else(|| "-".into(), |x| x.to_string())
            );
        } else if !s.next_picks.is_empty() {
            let picks: Vec<String> = s
                .next_picks
                .iter()
                .enumerate()
                .map(|(cpu, p)| format!("cpu{cpu} {}", p.as_deref().unwrap_or("none")))
                .collect();
            println!("scheduler next picks: {}", picks.join(", "));
        } else if s.slot.is_some() {
            println!("scheduler empty slot: no usable backend");
        }
    }
    match &report.backend {
        Some(b) => {
            let state = match (&b.health, b.drained, b.tier, b.weight, b.effective_weight) {
                (Some(health), Some(drained), Some(tier), Some(weight), Some(effective)) => {
                    format!(
                        ", health {health}, {}, tier {tier}, weight {weight} (effective {effective})",
                        if drained { "drained" } else { "not drained" },
                    )
                }
                _ => String::new(),
            };
            println!(
                "backend   {}:{} (from {}{}){state}",
                b.address,
                b.port,
                b.source,
                if b.usable { "" } else { ", not usable" }
            );
        }
        None => println!("backend   none"),
    }
    if let Some(h) = &report.next_hop {
        if h.cached {
            println!(
                "next hop  {} (ifindex {}) {} -> {}, mtu {}",
                h.interface.as_deref().unwrap_or("?"),
                h.ifindex.unwrap_or(0),
                h.source_mac.as_deref().unwrap_or("?"),
                h.next_hop_mac.as_deref().unwrap_or("?"),
                h.mtu.unwrap_or(0)
            );
        } else {
            println!("next hop  not cached: bpf_fib_lookup per packet");
        }
    }
    for note in &report.notes {
        println!("note      {note}");
    }
}

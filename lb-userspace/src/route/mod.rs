//! `lb route`: where a flow goes, and why — the data path's decision for
//! one TCP / UDP flow, computed in userspace from the maps the kernel reads
//! (service match, guard, connection table, scheduler, next hop), so the
//! answer is the kernel's.
//!
//! The decision ([`decide`]) is pure: it reads the maps through [`Tables`]
//! and follows `lb-ebpf/src/balancer.rs` step for step, with the shared
//! flow hash (`lb_common::hash`). A map that cannot be read makes the
//! answer an error naming it ([`ReadError`]): an absent entry and a failed
//! read are different answers ("no connection-table entry" is only said
//! of a lookup that found none). [`maps`] reads a loaded or pinned data
//! plane; [`report`] names services and backends for people and scripts.

pub mod maps;
pub mod report;

use std::net::IpAddr;

use lb_common::{
    Addr, BackendValue, ConnValue, Endpoint, FlowKey, HopValue, RateValue, Reason, ServiceKey,
    ServiceValue, Settings,
    hash::{flow_hash, source_hash},
    maps::{
        BACKEND_DRAINING, BACKEND_USABLE, CONN_CLOSED, GuardDenial, HOP_RESOLVED, NO_BACKEND,
        SCHED_IP_HASH, SCHED_ROUND_ROBIN, SETTINGS_DENY, SETTINGS_GUARD, ServiceSlot, ipv4_mapped,
    },
};

/// The flow asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// The client's address.
    pub client: IpAddr,
    /// The client's port; without it a `maglev` pick and the connection
    /// table (both keyed by the 5-tuple) cannot be named.
    pub client_port: Option<u16>,
    /// The VIP.
    pub vip: IpAddr,
    /// The service port the client connects to.
    pub port: u16,
    /// `lb_common::proto::TCP` or `UDP`.
    pub proto: u8,
    /// A bare TCP SYN (a new connection on the tuple) rather than a later
    /// packet: a SYN reopens a closed connection-table entry.
    pub syn: bool,
    /// The CPU whose round-robin position decides (`None`: every CPU's next
    /// pick is listed, none is the answer).
    pub cpu: Option<u32>,
}

/// A map the decision needs could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading map {map}")]
pub struct ReadError {
    /// Which map.
    pub map: &'static str,
    /// What went wrong.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A read of the maps: `Ok(None)` where the kernel's lookup finds nothing.
pub type Read<T> = Result<T, ReadError>;

/// The maps the decision reads, as the kernel sees them. `None` is an
/// entry the kernel's lookup would not find; a read that failed is an `Err`.
pub trait Tables {
    /// `SETTINGS[0]`.
    fn settings(&self) -> Read<Settings>;
    /// Whether `VIPS` holds `addr`.
    fn is_vip(&self, addr: &Addr) -> Read<bool>;
    /// `SERVICES[key]`.
    fn service(&self, key: &ServiceKey) -> Read<Option<ServiceValue>>;
    /// `SERVICE_IDS[id]`.
    fn service_slot(&self, id: u32) -> Read<Option<ServiceSlot>>;
    /// `BACKENDS[id]`.
    fn backend(&self, id: u32) -> Read<Option<BackendValue>>;
    /// `MAGLEV[index]`.
    fn slot(&self, index: u32) -> Read<Option<u32>>;
    /// `RR_POS[service_id]` on each CPU, in CPU order (empty: no entry).
    fn rr_positions(&self, service_id: u32) -> Read<Vec<u32>>;
    /// The flow's connection-table entry (`CONNS_V4`, or `CONNS` for IPv6).
    fn conn(&self, flow: &FlowKey) -> Read<Option<ConnValue>>;
    /// `HOPS[id]`.
    fn hop(&self, id: u32) -> Read<Option<HopValue>>;
    /// The prefixes of `DENY` (map form: IPv4 mapped, length + 96).
    fn deny_prefixes(&self) -> Read<Vec<(Addr, u32)>>;
    /// `GUARD_DENIED[src]`.
    fn guard_denial(&self, src: &Addr) -> Read<Option<GuardDenial>>;
    /// `RATE[src]`.
    fn rate_bucket(&self, src: &Addr) -> Read<Option<RateValue>>;
    /// `CLOCK_MONOTONIC` now, the data path's clock.
    fn now_ns(&self) -> u64;
}

/// The service a flow matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceMatch {
    /// Its `SERVICES` key (port 0: the all-port service).
    pub key: ServiceKey,
    /// Its value.
    pub value: ServiceValue,
    /// Matched through (vip, 0, proto): no exact-port service.
    pub all_ports: bool,
}

/// What the guard says of the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardView {
    /// The deny-list prefix that holds the source (map form), if any and
    /// the list is in force.
    pub denied_by: Option<(Addr, u32)>,
    /// The automatic guard's current denial of the source.
    pub auto_denied: Option<GuardDenial>,
    /// The per-source new-flow limit is configured.
    pub rate_limit: bool,
    /// The source's bucket, in thousandths of a new flow, refilled to now
    /// (`None`: no bucket yet, a full burst).
    pub rate_tokens_milli: Option<u64>,
}

/// The flow's connection-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    /// The backend it is pinned to.
    pub backend_id: u32,
    /// A FIN or RST was seen.
    pub closed: bool,
    /// Nanoseconds since it was last refreshed.
    pub idle_ns: u64,
    /// It still holds the flow (not idle past its timeout, not a closed
    /// entry a SYN reopens) and its backend is usable and of this service:
    /// the packet follows it.
    pub kept: bool,
}

/// Where the chosen backend comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The connection table.
    Connection,
    /// The scheduler's pick for a new flow (maglev, ip-hash).
    Scheduler,
    /// Round robin: the next pick on the CPU asked about.
    NextPick,
}

/// The scheduler's view of the flow, as if it were new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleView {
    /// The table slot a new flow hashes to (maglev, ip-hash).
    pub slot: Option<u32>,
    /// The backend in that slot (`NO_BACKEND`: none).
    pub pick: Option<u32>,
    /// Round robin: each CPU's next pick, in CPU order.
    pub next_picks: Vec<u32>,
    /// maglev needs the client port to hash the flow.
    pub needs_client_port: bool,
}

/// The next hop towards the chosen backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopView {
    /// The controller's resolved hop (`HOPS`), for packets up to its MTU.
    Cached(HopValue),
    /// None cached for this address: the kernel's FIB decides per packet.
    Fib,
}

/// The decision for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The flow key the kernel uses (client port 0 when not given).
    pub flow: FlowKey,
    /// The destination is a VIP.
    pub vip: bool,
    /// The service, if one matches.
    pub service: Option<ServiceMatch>,
    /// The guard.
    pub guard: GuardView,
    /// The connection-table entry, if any (and the client port was given).
    pub connection: Option<ConnectionView>,
    /// The scheduler, for a new flow.
    pub schedule: ScheduleView,
    /// The backend the packet goes to, and from where.
    pub backend: Option<(u32, BackendValue, Source)>,
    /// Its next hop.
    pub hop: Option<HopView>,
    /// The verdict reason the data path counts (`forward_uncached_hop`
    /// means the FIB decides: it may also pass or drop the packet).
    /// `None`: not decidable without more (the client port, the CPU).
    pub verdict: Option<Reason>,
    /// Things the maps cannot tell in advance.
    pub notes: Vec<&'static str>,
}

/// The map form of an address.
pub fn map_addr(addr: IpAddr) -> Addr {
    match addr {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Whether `addr` is in the map-form prefix (`prefix`, `len`).
fn in_prefix(addr: &Addr, prefix: &Addr, len: u32) -> bool {
    let len = len.min(128) as usize;
    let (bytes, bits) = (len / 8, len % 8);
    if addr[..bytes] != prefix[..bytes] {
        return false;
    }
    bits == 0 || {
        let mask = 0xffu8 << (8 - bits);
        addr[bytes] & mask == prefix[bytes] & mask
    }
}

/// The data path's decision for `query`, read from `tables`; an error if a
/// map it needs could not be read.
pub fn decide(query: &Query, tables: &impl Tables) -> Read<Decision> {
    let settings = tables.settings()?;
    let now = tables.now_ns();
    let flow = FlowKey {
        src: map_addr(query.client),
        dst: map_addr(query.vip),
        sport: query.client_port.unwrap_or(0),
        dport: query.port,
        proto: query.proto,
        pad: [0; 3],
    };
    let mut decision = Decision {
        flow,
        vip: tables.is_vip(&flow.dst)?,
        service: None,
        guard: guard_view(&flow.src, &settings, tables, now)?,
        connection: None,
        schedule: ScheduleView::default(),
        backend: None,
        hop: None,
        verdict: None,
        notes: Vec::new(),
    };
    decision.service = find_service(&flow, tables)?;
    if !decision.vip {
        decision.verdict = Some(Reason::PassNoService);
        return Ok(decision);
    }
    if let Some(service) = decision.service {
        decision.schedule = schedule_view(&flow, query, &service.value, &settings, tables)?;
    }
    if decision.guard.denied_by.is_some() {
        decision.verdict = Some(Reason::DropDenied);
        return Ok(decision);
    }
    if decision.guard.auto_denied.is_some() {
        decision.verdict = Some(Reason::DropGuardAuto);
        return Ok(decision);
    }
    if settings.flags & SETTINGS_GUARD != 0 {
        decision
            .notes
            .push("guard.auto: a packet that crosses a threshold is dropped (drop_guard_auto)");
    }
    if query.client_port.is_some()
        && let Some(conn) = tables.conn(&flow)?
    {
        decision.connection = Some(connection_view(
            &flow, query, &conn, &settings, now, tables,
        )?);
    }
    if let Some(conn) = decision.connection.filter(|c| c.kept)
        && let Some(backend) = tables.backend(conn.backend_id)?
    {
        decision.backend = Some((conn.backend_id, backend, Source::Connection));
        finish_forward(&mut decision, tables)?;
        return Ok(decision);
    }
    let Some(service) = decision.service else {
        decision.verdict = Some(Reason::PassNoService);
        return Ok(decision);
    };
    // As `choose_backend`: a flow that goes on (an open entry, rescheduled,
    // and not a SYN starting a new connection on its tuple) is no new flow
    // to the rate limit.
    let goes_on = decision
        .connection
        .is_some_and(|c| !(c.closed || query.syn && query.proto == lb_common::proto::TCP));
    if !goes_on
        && decision.guard.rate_limit
        && decision.guard.rate_tokens_milli.is_some_and(|t| t < 1000)
    {
        decision.verdict = Some(Reason::DropRateLimited);
        return Ok(decision);
    }
    let schedule = &decision.schedule;
    let (pick, source) = if service.value.scheduler == SCHED_ROUND_ROBIN {
        let pick = query
            .cpu
            .and_then(|cpu| schedule.next_picks.get(cpu as usize).copied());
        (pick, Source::NextPick)
    } else {
        (schedule.pick, Source::Scheduler)
    };
    let Some(id) = pick else {
        // Round robin without a CPU, or maglev without a client port.
        return Ok(decision);
    };
    // NO_BACKEND is past the end of BACKENDS: not looked up, as the kernel.
    let backend = if id == NO_BACKEND {
        None
    } else {
        tables.backend(id)?
    };
    match backend {
        Some(backend)
            if backend.flags & BACKEND_USABLE != 0 && backend.service_id == service.value.id =>
        {
            decision.backend = Some((id, backend, source));
            finish_forward(&mut decision, tables)?;
        }
        _ => decision.verdict = Some(Reason::DropNoBackend),
    }
    Ok(decision)
}

/// The next hop and verdict once a backend is chosen.
fn finish_forward(decision: &mut Decision, tables: &impl Tables) -> Read<()> {
    let Some((id, backend, _)) = decision.backend else {
        return Ok(());
    };
    let hop = match tables.hop(id)? {
        Some(hop) if hop.addr == backend.addr && hop.flags & HOP_RESOLVED != 0 => {
            HopView::Cached(hop)
        }
        _ => HopView::Fib,
    };
    decision.hop = Some(hop);
    decision.verdict = Some(match hop {
        HopView::Cached(_) => Reason::ForwardToBackend,
        HopView::Fib => Reason::ForwardUncachedHop,
    });
    Ok(())
}

/// `SERVICES`: exact (vip, port, proto), then the all-port service.
fn find_service(flow: &FlowKey, tables: &impl Tables) -> Read<Option<ServiceMatch>> {
    let exact = Endpoint::new(flow.dst, flow.dport, flow.proto);
    if let Some(value) = tables.service(&exact)? {
        return Ok(Some(ServiceMatch {
            key: exact,
            value,
            all_ports: false,
        }));
    }
    let all = Endpoint::new(flow.dst, 0, flow.proto);
    Ok(tables.service(&all)?.map(|value| ServiceMatch {
        key: all,
        value,
        all_ports: true,
    }))
}

/// The deny list, the automatic guard's denial, the rate bucket.
fn guard_view(src: &Addr, settings: &Settings, tables: &impl Tables, now: u64) -> Read<GuardView> {
    let denied_by = if settings.flags & SETTINGS_DENY == 0 {
        None
    } else {
        tables
            .deny_prefixes()?
            .into_iter()
            .filter(|(prefix, len)| in_prefix(src, prefix, *len))
            .max_by_key(|(_, len)| *len)
    };
    let auto_denied = if settings.flags & SETTINGS_GUARD == 0 {
        None
    } else {
        tables.guard_denial(src)?.filter(|d| now < d.until_ns)
    };
    let rate = u64::from(settings.rate_per_second);
    let bucket = if rate == 0 {
        None
    } else {
        tables.rate_bucket(src)?
    };
    let rate_tokens_milli = bucket.map(|bucket| {
        // As `admit_new_flow`: refilled per whole millisecond, capped.
        let burst = u64::from(settings.rate_burst.max(1)) * 1000;
        let elapsed_ms = now.saturating_sub(bucket.last_ns).min(1_000_000_000_000) / 1_000_000;
        (bucket.milli_tokens + elapsed_ms * rate).min(burst)
    });
    Ok(GuardView {
        denied_by,
        auto_denied,
        rate_limit: rate != 0,
        rate_tokens_milli,
    })
}

/// As `established` / `service_of_flow`: does the entry keep the flow?
fn connection_view(
    flow: &FlowKey,
    query: &Query,
    conn: &ConnValue,
    settings: &Settings,
    now: u64,
    tables: &impl Tables,
) -> Read<ConnectionView> {
    let closed = conn.flags & CONN_CLOSED != 0;
    let idle_ns = now.saturating_sub(conn.last_seen_ns);
    let idle_limit = if flow.proto == lb_common::proto::TCP {
        settings.tcp_idle_ns
    } else {
        settings.udp_idle_ns
    };
    let opening = query.syn && flow.proto == lb_common::proto::TCP;
    let live = idle_ns <= idle_limit && !(closed && opening);
    let kept = live
        && of_this_service(flow, conn.backend_id, tables)?
        && !(opening && draining(conn.backend_id, tables)?);
    Ok(ConnectionView {
        backend_id: conn.backend_id,
        closed,
        idle_ns,
        kept,
    })
}

/// The backend is usable and its service is the one `SERVICES` gives the
/// flow: the same (vip, port, proto), or the all-port service with no
/// exact one beside it.
fn of_this_service(flow: &FlowKey, id: u32, tables: &impl Tables) -> Read<bool> {
    let Some(backend) = tables.backend(id)? else {
        return Ok(false);
    };
    let Some(slot) = tables.service_slot(backend.service_id)? else {
        return Ok(false);
    };
    if backend.flags & BACKEND_USABLE == 0
        || slot.key.proto != flow.proto
        || slot.key.addr != flow.dst
    {
        return Ok(false);
    }
    Ok(slot.key.port == flow.dport
        || (slot.key.port == 0
            && tables
                .service(&Endpoint::new(flow.dst, flow.dport, flow.proto))?
                .is_none()))
}

/// Whether backend `id` takes no new flows (`BACKEND_DRAINING`).
fn draining(id: u32, tables: &impl Tables) -> Read<bool> {
    Ok(tables
        .backend(id)?
        .is_some_and(|backend| backend.flags & BACKEND_DRAINING != 0))
}

/// As `schedule`: the slot and backend a new flow would get.
fn schedule_view(
    flow: &FlowKey,
    query: &Query,
    service: &ServiceValue,
    settings: &Settings,
    tables: &impl Tables,
) -> Read<ScheduleView> {
    let ring = settings.ring_size;
    let mut view = ScheduleView::default();
    if ring == 0 {
        view.pick = Some(NO_BACKEND);
        return Ok(view);
    }
    let row = service
        .id
        .wrapping_mul(2)
        .wrapping_add(u32::from(service.active_half & 1));
    let at = |slot: u32| -> Read<u32> {
        Ok(tables
            .slot(row.wrapping_mul(ring).wrapping_add(slot))?
            .unwrap_or(NO_BACKEND))
    };
    match service.scheduler {
        SCHED_ROUND_ROBIN => {
            let len = service.rr_len;
            view.next_picks = tables
                .rr_positions(service.id)?
                .into_iter()
                .map(|position| {
                    if len == 0 || len > ring {
                        Ok(NO_BACKEND)
                    } else {
                        at(position % len)
                    }
                })
                .collect::<Read<_>>()?;
        }
        SCHED_IP_HASH => {
            let slot = source_hash(&flow.src) % ring;
            view.slot = Some(slot);
            view.pick = Some(at(slot)?);
        }
        _ => {
            if query.client_port.is_none() {
                view.needs_client_port = true;
            } else {
                let slot =
                    flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto) % ring;
                view.slot = Some(slot);
                view.pick = Some(at(slot)?);
            }
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests;

//! `lb_balancer`'s decision path: parse, then either the reply path (a NAT
//! backend answering a client) or the service path (connection table,
//! scheduler, forwarding).
//!
//! Large working state lives in the per-CPU [`Scratch`] entry, and each path
//! out of [`balance`] is a function of its own (`#[inline(never)]`): the
//! verifier allows 512 bytes of stack for the deepest chain of calls, and
//! LLVM's BPF backend reuses stack slots poorly within one big function.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use lb_common::{
    Addr, BackendValue, ConnValue, HopValue, NO_BACKEND, RateValue, Reason, ServiceValue, Settings,
    hash::{flow_hash, source_hash},
    maps::{
        BACKEND_DRAINING, BACKEND_USABLE, CONN_CLOSED, CONN_HALF_OPEN, FWD_DSR, FWD_NAT,
        FWD_TUNNEL, GUARD_CAUSE_NEW_FLOWS, GUARD_CAUSE_PACKETS, GUARD_CAUSE_SYN_ONLY, GuardCounts,
        GuardDenial, GuardKey, GuardSettings, HOP_RESOLVED, SCHED_IP_HASH, SCHED_ROUND_ROBIN,
        SETTINGS_ATTACK, SETTINGS_DENY, SETTINGS_GUARD, SETTINGS_NAT, SETTINGS_SYNC, ServiceSlot,
        VIP_FRAGMENTS_TCP, VIP_FRAGMENTS_UDP,
    },
    proto,
};

use crate::{
    Drop, Verdict, finish,
    forward::{End, FibQuery, Hop, NextHop, encapsulate, next_hop, rewrite, rewrite_v4, transmit},
    icmp,
    keys::{self, Keys},
    maps::{
        BACKENDS, CONN_MISSING, CONN_STALE, CONN_UNKNOWN, CONNS, CONNS_V4, DENY, GUARD_COUNTS,
        GUARD_DENIED, GUARD_SETTINGS, HOPS, MAGLEV, NAT, NAT_FILTER, NAT_OUTBOUND, RATE, ROUTES,
        RR_POS, SERVICE_IDS, SERVICES, SETTINGS, STATS_BACKENDS, STATS_SERVICES, Scratch,
        VIP_FILTER, VIPS, count_closed, count_new_flow, count_traffic, may_contain, scratch,
    },
    packet::frame_len,
    parse::{Parsed, parse},
    trace,
};

/// Decides what happens to the frame in `ctx`; returns the counted action.
///
/// The common cases are kept to one hash lookup each: an established TCP /
/// UDP flow is found in the connection table, which leads to its backend and
/// service through arrays; a new flow finds its service by (vip, port,
/// proto) directly; host traffic is told from VIP traffic by `VIP_FILTER`,
/// an inlined array lookup. Only the rest (all-port services, fragments,
/// ICMP, malformed packets, filter false positives) asks `VIPS`.
#[inline(always)]
pub fn balance(ctx: &XdpContext) -> u32 {
    let Some(scratch) = scratch() else {
        // The map has one entry per CPU by construction; if it were ever
        // missing, the frame is not ours to judge.
        return finish(Ok(Verdict::pass(Reason::PassNoService))) & trace::ACTION_MASK;
    };
    let settings = SETTINGS.get(0);
    let flags = settings.map_or(0, |settings| settings.flags);
    let packed = decide(ctx, scratch, settings, flags);
    if !cfg!(feature = "trace") {
        return packed;
    }
    if flags & lb_common::maps::SETTINGS_TRACE != 0 {
        trace::record(ctx, scratch, packed);
    }
    packed & trace::ACTION_MASK
}

/// [`balance`]'s decision: the counted action, with its reason above it
/// (see [`finish`]).
#[inline(always)]
fn decide(ctx: &XdpContext, scratch: &mut Scratch, settings: Option<&Settings>, flags: u32) -> u32 {
    match parse(ctx, scratch).get() {
        Err(drop) => finish(Err(drop)),
        Ok(Parsed::NotIp) => finish(Ok(Verdict::pass(Reason::PassNonIp))),
        Ok(Parsed::OtherMac) => finish(Ok(Verdict::pass(Reason::PassOtherMac))),
        Ok(Parsed::NotOurs) => finish(Ok(Verdict::pass(Reason::PassNoService))),
        Ok(Parsed::Malformed) => {
            if is_vip(scratch) {
                let reason =
                    Reason::from_slot(scratch.malformed).unwrap_or(Reason::DropMalformedEth);
                finish(Err(Drop(reason)))
            } else {
                finish(Ok(Verdict::pass(Reason::PassNoService)))
            }
        }
        Ok(Parsed::Ip) => {
            if !may_contain(&VIP_FILTER, &scratch.packet.dst) {
                return host(ctx, scratch, flags);
            }
            // The guard first, and cheaply for the denied: one trie lookup,
            // and the VIP check only for a source it names.
            if flags & SETTINGS_DENY != 0 && denied(scratch) {
                return if is_vip(scratch) {
                    finish(Err(Drop(Reason::DropDenied)))
                } else {
                    host(ctx, scratch, flags)
                };
            }
            // The automatic guard: one lookup for a denied source, one for
            // its counts; only when `guard.auto` is configured.
            if flags & SETTINGS_GUARD != 0 && guard_packet(scratch) {
                return finish(Err(Drop(Reason::DropGuardAuto)));
            }
            scratch.conn_state = CONN_UNKNOWN;
            let packet = &scratch.packet;
            if packet.has_l4
                && !packet.fragment
                && (packet.proto == proto::TCP || packet.proto == proto::UDP)
            {
                if let Some(settings) = settings {
                    set_flow(scratch, Keys::ConnTable);
                    let action = established(ctx, scratch, settings);
                    if action != FLOW_UNDECIDED {
                        return action;
                    }
                }
                set_flow(scratch, Keys::All);
                let packet = &scratch.packet;
                keys::set_endpoint(&mut scratch.lookup, &packet.dst, packet.dport, packet.proto);
                // SAFETY: copied out at once.
                if let Some(service) = unsafe { SERVICES.get(&scratch.lookup) }.copied() {
                    return to_service(ctx, scratch, &service);
                }
            }
            if !is_vip(scratch) {
                return host(ctx, scratch, flags);
            }
            match scratch.packet.proto {
                proto::ICMP | proto::ICMPV6 if scratch.packet.has_l4 => icmp::to_vip(ctx, scratch),
                _ => to_vip(ctx, scratch),
            }
        }
    }
}

/// Whether the packet's destination is a VIP; if so its entry is copied to
/// `scratch.vip`.
#[inline(always)]
fn is_vip(scratch: &mut Scratch) -> bool {
    if !may_contain(&VIP_FILTER, &scratch.packet.dst) {
        return false;
    }
    // SAFETY: copied out at once.
    match unsafe { VIPS.get(&scratch.packet.dst) } {
        Some(value) => {
            scratch.vip = *value;
            true
        }
        None => false,
    }
}

/// A well-formed packet to an address that is not a VIP: a NAT reply to
/// translate, or the stack's, untouched.
#[inline(always)]
fn host(ctx: &XdpContext, scratch: &mut Scratch, flags: u32) -> u32 {
    if flags & SETTINGS_NAT != 0 && may_contain(&NAT_FILTER, &scratch.packet.src) {
        reply(ctx, scratch)
    } else {
        finish(Ok(Verdict::pass(Reason::PassNoService)))
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The guard's deny list: is the source of a packet to a VIP in a denied
/// prefix?
#[inline(always)]
fn denied(scratch: &mut Scratch) -> bool {
    scratch.deny_key = Key::new(128, scratch.packet.src);
    DENY.get(&scratch.deny_key).is_some()
}

/// One second, the automatic guard's counting window.
const GUARD_WINDOW_NS: u64 = 1_000_000_000;

/// The automatic guard, per packet to a (possible) VIP: is the source
/// denied, or does this packet take it over the packet or SYN-only
/// threshold of its VIP? Either way the packet is to be dropped. A
/// destination that turns out not to be a VIP (a `VIP_FILTER` false
/// positive) is counted but never denied or dropped.
#[inline(never)]
fn guard_packet(scratch: &mut Scratch) -> bool {
    let Some(limits) = GUARD_SETTINGS.get(0) else {
        return false;
    };
    let now = now(scratch);
    if let Some(denial) = GUARD_DENIED.get_ptr(&scratch.packet.src) {
        // SAFETY: the LRU entry stays valid for this program run.
        if now < unsafe { (*denial).until_ns } {
            return is_vip(scratch);
        }
        // Expired: the source is welcome again.
        let _ = GUARD_DENIED.remove(&scratch.packet.src);
    }
    let packet = &scratch.packet;
    let (syn, ack) = if packet.proto == proto::TCP && packet.has_l4 {
        let flags = packet.tcp_flags & (TCP_SYN | TCP_ACK);
        (u32::from(flags == TCP_SYN), u32::from(flags == TCP_ACK))
    } else {
        (0, 0)
    };
    scratch.guard_key = GuardKey {
        src: packet.src,
        vip: packet.dst,
    };
    let Some(counts) = GUARD_COUNTS.get_ptr_mut(&scratch.guard_key) else {
        // The first packet of a window never crosses a threshold (each is
        // at least 1). A full table forgets its least recent pair.
        let fresh = GuardCounts {
            window_ns: now,
            packets: 1,
            new_flows: 0,
            syns: syn,
            acks: ack,
        };
        let _ = GUARD_COUNTS.insert(&scratch.guard_key, &fresh, 0);
        return false;
    };
    // SAFETY: as above; racing CPUs may lose an increment (see
    // `GuardCounts`).
    let cause = unsafe {
        if now.saturating_sub((*counts).window_ns) >= GUARD_WINDOW_NS {
            *counts = GuardCounts {
                window_ns: now,
                ..GuardCounts::default()
            };
        }
        (*counts).packets = (*counts).packets.wrapping_add(1);
        (*counts).syns = (*counts).syns.wrapping_add(syn);
        (*counts).acks = (*counts).acks.wrapping_add(ack);
        if limits.packets != 0 && (*counts).packets > limits.packets {
            GUARD_CAUSE_PACKETS
        } else if limits.syn_only != 0
            && (*counts).syns.saturating_sub((*counts).acks) > limits.syn_only
        {
            GUARD_CAUSE_SYN_ONLY
        } else {
            return false;
        }
    };
    if !is_vip(scratch) {
        return false;
    }
    guard_deny(scratch, limits, cause, now, counts);
    true
}

/// The automatic guard, per new flow: does this flow take its source over
/// its VIP's new-flow threshold? If so the source is denied.
#[inline(never)]
fn guard_new_flow(scratch: &mut Scratch, now: u64) -> bool {
    let Some(limits) = GUARD_SETTINGS.get(0) else {
        return false;
    };
    if limits.new_flows == 0 {
        return false;
    }
    scratch.guard_key = GuardKey {
        src: scratch.flow.src,
        vip: scratch.flow.dst,
    };
    // `guard_packet` made the entry for this packet; if it was evicted
    // since, the flow goes uncounted.
    let Some(counts) = GUARD_COUNTS.get_ptr_mut(&scratch.guard_key) else {
        return false;
    };
    // SAFETY: as in `guard_packet`.
    let new_flows = unsafe {
        (*counts).new_flows = (*counts).new_flows.wrapping_add(1);
        (*counts).new_flows
    };
    if new_flows <= limits.new_flows {
        return false;
    }
    guard_deny(scratch, limits, GUARD_CAUSE_NEW_FLOWS, now, counts);
    true
}

/// Denies `scratch.guard_key`'s source for `limits.deny_ns`, for `cause`,
/// and starts its `counts` afresh: a source let in early (`lb guard allow`)
/// is not denied again for what it sent before.
#[inline(always)]
fn guard_deny(
    scratch: &mut Scratch,
    limits: &GuardSettings,
    cause: u32,
    now: u64,
    counts: *mut GuardCounts,
) {
    // SAFETY: the caller's LRU entry, valid for this program run.
    unsafe {
        *counts = GuardCounts {
            window_ns: now,
            ..GuardCounts::default()
        };
    }
    scratch.denial = GuardDenial {
        until_ns: now.wrapping_add(limits.deny_ns),
        since_ns: now,
        vip: scratch.guard_key.vip,
        cause,
        pad: 0,
    };
    // A full table forgets its least recently denied source.
    let _ = GUARD_DENIED.insert(&scratch.guard_key.src, &scratch.denial, 0);
}

/// The guard's rate limit: may `src` open one more flow now? A token bucket
/// per source, in thousandths of a flow, refilled at `rate_per_second` up to
/// `rate_burst`. Updates race between CPUs; the limit is approximate.
#[inline(always)]
fn admit_new_flow(src: &Addr, settings: &Settings, now: u64) -> bool {
    let rate = u64::from(settings.rate_per_second);
    if rate == 0 {
        return true;
    }
    let burst = u64::from(settings.rate_burst.max(1)) * 1000;
    let Some(bucket) = RATE.get_ptr_mut(src) else {
        let fresh = RateValue {
            milli_tokens: burst - 1000,
            last_ns: now,
        };
        // A full table forgets its least recent source; a failed insert
        // only lets this flow through.
        let _ = RATE.insert(src, &fresh, 0);
        return true;
    };
    // SAFETY: the LRU entry stays valid for this program run.
    unsafe {
        // Capped so the product below cannot overflow (1000 s of refill).
        let elapsed_ms = now.saturating_sub((*bucket).last_ns).min(1_000_000_000_000) / 1_000_000;
        let tokens = ((*bucket).milli_tokens + elapsed_ms * rate).min(burst);
        (*bucket).last_ns = now;
        if tokens < 1000 {
            (*bucket).milli_tokens = tokens;
            return false;
        }
        (*bucket).milli_tokens = tokens - 1000;
    }
    true
}

/// A TCP / UDP packet whose service the fast path found (`scratch.flow` is
/// set).
#[inline(never)]
fn to_service(ctx: &XdpContext, scratch: &mut Scratch, service: &ServiceValue) -> u32 {
    finish(to_backend(ctx, scratch, service))
}

/// `scratch.flow` and `scratch.flow4` (`keys` says which) from
/// `scratch.packet`: the flow as the client sent it. [`established`] reads
/// only the connection table's key (`Keys::ConnTable`).
#[inline(always)]
fn set_flow(scratch: &mut Scratch, keys: Keys) {
    let packet = &scratch.packet;
    keys::set_flow(
        &mut scratch.flow,
        &mut scratch.flow4,
        (packet.v6, keys),
        (&packet.src, &packet.dst),
        (packet.sport, packet.dport, packet.proto),
    );
}

/// The flow's connection-table entry: `CONNS_V4` for IPv4, `CONNS` for
/// IPv6 (`set_flow` filled the key).
#[inline(always)]
fn conn_entry(scratch: &Scratch) -> Option<*mut ConnValue> {
    if scratch.packet.v6 {
        CONNS.get_ptr_mut(&scratch.flow)
    } else {
        CONNS_V4.get_ptr_mut(&scratch.flow4)
    }
}

/// Remembers the flow's backend in its connection table. A full table
/// evicts its least recently used entry; a failed insert only costs this
/// flow its stickiness.
#[inline(always)]
fn conn_insert(scratch: &Scratch, conn: &ConnValue) {
    let _ = if scratch.packet.v6 {
        CONNS.insert(&scratch.flow, conn, 0)
    } else {
        CONNS_V4.insert(&scratch.flow4, conn, 0)
    };
}

/// TCP / UDP (and fragments) to a VIP, on the slow path.
#[inline(never)]
fn to_vip(ctx: &XdpContext, scratch: &mut Scratch) -> u32 {
    finish(try_to_vip(ctx, scratch))
}

#[inline(always)]
fn try_to_vip(ctx: &XdpContext, scratch: &mut Scratch) -> Result<Verdict, Drop> {
    set_flow(scratch, Keys::All);
    let packet = &scratch.packet;
    if packet.fragment {
        let vip = &scratch.vip;
        let port = match packet.proto {
            proto::TCP if vip.fragments & VIP_FRAGMENTS_TCP != 0 => vip.fragment_tcp_port,
            proto::UDP if vip.fragments & VIP_FRAGMENTS_UDP != 0 => vip.fragment_udp_port,
            _ => return Err(Drop(Reason::DropFragment)),
        };
        let service = find_service(scratch, port).ok_or(Drop(Reason::DropFragment))?;
        if service.scheduler != SCHED_IP_HASH {
            return Err(Drop(Reason::DropFragment));
        }
        return to_backend(ctx, scratch, &service);
    }
    match packet.proto {
        proto::TCP | proto::UDP => match find_service(scratch, scratch.flow.dport) {
            Some(service) => to_backend(ctx, scratch, &service),
            None => Ok(Verdict::pass(Reason::PassNoService)),
        },
        _ => Ok(Verdict::pass(Reason::PassNoService)),
    }
}

/// The service of `scratch.flow`'s VIP and protocol on `port`: exact
/// (vip, port, proto) first, then the all-port service (vip, 0, proto).
#[inline(always)]
pub fn find_service(scratch: &mut Scratch, port: u16) -> Option<ServiceValue> {
    let proto = scratch.flow.proto;
    keys::set_endpoint(&mut scratch.lookup, &scratch.flow.dst, port, proto);
    // SAFETY: copied out at once.
    if let Some(service) = unsafe { SERVICES.get(&scratch.lookup) } {
        return Some(*service);
    }
    keys::set_endpoint_port(&mut scratch.lookup, 0, proto);
    // SAFETY: as above.
    unsafe { SERVICES.get(&scratch.lookup) }.copied()
}

/// The service path for `scratch.flow`: pick (or keep) a backend, forward,
/// count.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    service: &ServiceValue,
) -> Result<Verdict, Drop> {
    let bytes = frame_len(ctx) as u64;
    let fragment = scratch.packet.fragment;
    let (backend_id, new_flow) = choose_backend(scratch, service, fragment)?;
    let result = send_to_backend(ctx, scratch, service, Reason::ForwardToBackend);
    if result.is_ok_and(|verdict| verdict.reason != Reason::IcmpTooBig) {
        count_traffic(&STATS_SERVICES, service.id, bytes, new_flow);
        count_traffic(&STATS_BACKENDS, backend_id, bytes, new_flow);
    } else if new_flow {
        // The flow's entry is written though its first packet was not sent
        // (no neighbour yet, too big): its retransmission goes the
        // established way, so the flow is counted as opened now, or never
        // (and its close would then count against the active flows).
        count_new_flow(&STATS_SERVICES, service.id);
        count_new_flow(&STATS_BACKENDS, backend_id);
    }
    result
}

/// The flow hash of `scratch.flow` (the Maglev slot). Computed only where
/// it is used: an established flow needs none.
#[inline(always)]
fn hash_of(scratch: &Scratch) -> u32 {
    let flow = &scratch.flow;
    flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto)
}

/// A connection-table entry, read once.
#[derive(Clone, Copy)]
struct Entry {
    backend_id: u32,
    last_seen: u64,
    closed: bool,
    /// `CONN_HALF_OPEN`: its first packet is all this balancer saw of it.
    half_open: bool,
}

/// What this packet means for its flow, and when it came.
#[derive(Clone, Copy)]
struct Moment {
    now: u64,
    idle_limit: u64,
    /// A FIN or RST: the flow ends.
    ending: bool,
    /// A bare SYN: a new flow on the tuple.
    opening: bool,
}

/// The coarse clock (`CLOCK_MONOTONIC_COARSE`, one tick of resolution): the
/// helper reads it from memory where `bpf_ktime_get_ns` reads the TSC (about
/// 15 ns a packet on a VM); idle timeouts and rate buckets need no finer
/// time. It moves once a tick, as jiffies do, and the verifier turns
/// `bpf_jiffies64` into one load; so this CPU's last reading is reused while
/// jiffies stand still, and the helper call (2–3 ns) is made once a tick.
/// A reading taken between the tick's jiffies and clock updates is one more
/// tick old, so another CPU's reading (a stored `last_seen_ns`, a bucket's
/// `last_ns`) may be a tick ahead of this one: every difference against a
/// stored time saturates at zero, never wraps to "idle for ever".
#[inline(always)]
fn now(scratch: &mut Scratch) -> u64 {
    // SAFETY: the kernel helpers have no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    if jiffies != scratch.clock_jiffies || scratch.clock_ns == 0 {
        // SAFETY: as above.
        scratch.clock_ns = unsafe { bpf_ktime_get_coarse_ns() };
        scratch.clock_jiffies = jiffies;
    }
    scratch.clock_ns
}

impl Moment {
    /// This packet's moment in a flow of protocol `proto` (the packet's
    /// own, or the one an ICMP error quotes).
    #[inline(always)]
    fn of(scratch: &mut Scratch, settings: &Settings, proto: u8) -> Self {
        let now = now(scratch);
        let is_tcp = proto == proto::TCP;
        let flags = scratch.packet.tcp_flags;
        Self {
            now,
            idle_limit: if is_tcp {
                settings.tcp_idle_ns
            } else {
                settings.udp_idle_ns
            },
            ending: is_tcp && flags & (TCP_FIN | TCP_RST) != 0,
            opening: is_tcp && flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        }
    }
}

impl Moment {
    /// A bare SYN on an entry of a backend that takes no new flows
    /// (`BACKEND_DRAINING`): a new connection on a reused tuple, for the
    /// scheduler, not the entry.
    #[inline(always)]
    fn reopens_on(&self, backend: &BackendValue) -> bool {
        self.opening && backend.flags & BACKEND_DRAINING != 0
    }
}

impl Entry {
    /// Reads the entry `conn` points to.
    #[inline(always)]
    fn read(conn: *mut ConnValue) -> Self {
        // SAFETY: the LRU entry stays valid for this program run; a racing
        // update from another CPU can only replace it with another valid
        // value.
        let (backend_id, last_seen, flags) =
            unsafe { ((*conn).backend_id, (*conn).last_seen_ns, (*conn).flags) };
        Self {
            backend_id,
            last_seen,
            closed: flags & CONN_CLOSED != 0,
            half_open: flags & CONN_HALF_OPEN != 0,
        }
    }

    /// Whether the entry still holds the flow: not idle past its timeout, and
    /// not a closed tuple that a bare SYN reopens.
    #[inline(always)]
    fn live(self, moment: &Moment) -> bool {
        moment.now.saturating_sub(self.last_seen) <= moment.idle_limit
            && !(self.closed && moment.opening)
    }

    /// The flow stays on its backend: mark it closed on a FIN / RST, and
    /// refresh its time at most every ~second (one write per packet would
    /// bounce the cache line between CPUs for busy flows). Returns whether
    /// this packet marked it closed (for the caller, which has the flow's
    /// key, to report to sync).
    #[inline(always)]
    fn keep(self, conn: *mut ConnValue, moment: &Moment) -> bool {
        let closes = moment.ending && !self.closed;
        if closes {
            // SAFETY: as in `read`.
            unsafe { (*conn).flags |= CONN_CLOSED };
            count_closed(self.backend_id);
        }
        if moment.now.saturating_sub(self.last_seen) > 1_000_000_000 {
            // SAFETY: as in `read`.
            unsafe { (*conn).last_seen_ns = moment.now };
        }
        closes
    }
}

/// `established`'s answer when the slow path must decide (recorded in
/// `scratch.conn_state`).
const FLOW_UNDECIDED: u32 = u32::MAX;

/// The fast path of an established flow: the connection table names the
/// backend, the backend its service (`SERVICE_IDS`, an array), so the
/// service key is never hashed. The service must still be the one
/// `SERVICES` would give the packet: the same (vip, port, proto), or the
/// all-port service with no exact one beside it. Returns the counted
/// action, or [`FLOW_UNDECIDED`] with `scratch.conn_state` saying why: no
/// entry, or one the slow path would reschedule in any case (idle, a SYN
/// reopening it, its backend unusable or of another service now) — so it
/// need not look the entry up again. Inlined, as `parse` is: a call's
/// return costs more than the lookup's hashing on mitigated CPUs.
#[inline(always)]
fn established(ctx: &XdpContext, scratch: &mut Scratch, settings: &Settings) -> u32 {
    let Some(conn) = conn_entry(scratch) else {
        scratch.conn_state = CONN_MISSING;
        return FLOW_UNDECIDED;
    };
    let moment = Moment::of(scratch, settings, scratch.packet.proto);
    let entry = Entry::read(conn);
    let found = if entry.live(&moment) {
        service_of_packet(scratch, entry.backend_id)
            .filter(|(backend, _)| !moment.reopens_on(backend))
    } else {
        None
    };
    let Some((backend, slot)) = found else {
        scratch.conn_state = CONN_STALE;
        scratch.stale = (entry.backend_id, entry.closed);
        return FLOW_UNDECIDED;
    };
    let service = slot.value;
    if settings.flags & SETTINGS_ATTACK != 0
        && entry.half_open
        && (moment.opening || scratch.packet.proto == proto::UDP)
        && !crate::attack::readmit(scratch, service.id, moment.opening, moment.now)
    {
        return finish(Err(Drop(Reason::DropAttackUnverified)));
    }
    if entry.keep(conn, &moment) && settings.flags & SETTINGS_SYNC != 0 {
        crate::sync::report_closed(scratch, entry.backend_id);
    }
    if settings.flags & SETTINGS_ATTACK != 0 {
        crate::attack::went_on(
            scratch,
            conn,
            service.id,
            moment.opening,
            entry.last_seen,
            moment.now,
        );
    }
    scratch.backend = *backend;
    scratch.backend_id = entry.backend_id;
    let bytes = frame_len(ctx) as u64;
    let result = send_to_backend(ctx, scratch, &service, Reason::ForwardToBackend);
    if result.is_ok_and(|verdict| verdict.reason != Reason::IcmpTooBig) {
        count_traffic(&STATS_SERVICES, service.id, bytes, false);
        count_traffic(&STATS_BACKENDS, entry.backend_id, bytes, false);
    }
    finish(result)
}

/// Backend `id` and its service's slot, if the backend is usable and its
/// service is the one `SERVICES` gives `scratch.packet`: the same (vip,
/// port, proto), or the all-port service with no exact one beside it.
#[inline(always)]
fn service_of_packet(
    scratch: &mut Scratch,
    id: u32,
) -> Option<(&'static BackendValue, &'static ServiceSlot)> {
    let backend = BACKENDS.get(id)?;
    let slot = SERVICE_IDS.get(backend.service_id)?;
    let packet = &scratch.packet;
    if backend.flags & BACKEND_USABLE == 0
        || slot.key.proto != packet.proto
        || slot.key.addr != packet.dst
    {
        return None;
    }
    if slot.key.port != packet.dport {
        if slot.key.port != 0 {
            return None;
        }
        keys::set_endpoint(&mut scratch.lookup, &packet.dst, packet.dport, packet.proto);
        // SAFETY: only tested for presence.
        if unsafe { SERVICES.get(&scratch.lookup) }.is_some() {
            return None;
        }
    }
    Some((backend, slot))
}

/// The backend for `scratch.flow`, into `scratch.backend` (and its id into
/// `scratch.backend_id`); returns its id and whether the flow is new. The
/// connection table's, while that backend is usable, still this service's,
/// and the flow not idle past its timeout; otherwise the scheduler's,
/// remembered in the table. Fragments are scheduled by source alone and
/// never tracked: later fragments carry no ports to find the entry with.
/// `scratch.conn_state` carries what the fast path already learnt of the
/// entry.
#[inline(always)]
pub fn choose_backend(
    scratch: &mut Scratch,
    service: &ServiceValue,
    fragment: bool,
) -> Result<(u32, bool), Drop> {
    let settings = SETTINGS.get(0).ok_or(Drop(Reason::DropNoBackend))?;
    let moment = Moment::of(scratch, settings, scratch.flow.proto);
    // The entry this flow replaces, if any: (its backend, closed).
    let mut replaced = None;
    if !fragment && scratch.conn_state == CONN_STALE {
        // Rescheduled (see `established`).
        replaced = Some(scratch.stale);
    } else if !fragment
        && scratch.conn_state == CONN_UNKNOWN
        && let Some(conn) = conn_entry(scratch)
    {
        let entry = Entry::read(conn);
        if entry.live(&moment)
            && usable_backend(entry.backend_id, service.id, scratch)
            && !moment.reopens_on(&scratch.backend)
        {
            if entry.keep(conn, &moment) && settings.flags & SETTINGS_SYNC != 0 {
                crate::sync::report_closed(scratch, entry.backend_id);
            }
            return Ok((entry.backend_id, false));
        }
        // Rescheduled: idle, its backend gone, or a new SYN on the tuple.
        replaced = Some((entry.backend_id, entry.closed));
    }
    // A flow that goes on (an open entry, and not a bare SYN starting a new
    // connection on its tuple) is not a new flow to the guard: a client's
    // long busy connection never counts against its own rate.
    let goes_on = matches!(replaced, Some((_, false))) && !moment.opening;
    if !goes_on {
        // `guard.attack` first: a spoofed SYN it drops costs no rate-limit
        // bucket or guard count.
        if settings.flags & SETTINGS_ATTACK != 0
            && !fragment
            && !crate::attack::admit(scratch, service.id, moment.opening, moment.now)
        {
            return Err(Drop(Reason::DropAttackUnverified));
        }
        if !admit_new_flow(&scratch.flow.src, settings, moment.now) {
            return Err(Drop(Reason::DropRateLimited));
        }
        if settings.flags & SETTINGS_GUARD != 0 && guard_new_flow(scratch, moment.now) {
            return Err(Drop(Reason::DropGuardAuto));
        }
    }
    let backend_id = schedule(scratch, service, settings.ring_size);
    if !usable_backend(backend_id, service.id, scratch) {
        return Err(Drop(Reason::DropNoBackend));
    }
    // Fragments are not tracked: not a flow of their own.
    if fragment {
        return Ok((backend_id, false));
    }
    let conn = ConnValue {
        backend_id,
        flags: if moment.ending { CONN_CLOSED } else { 0 }
            | if settings.flags & SETTINGS_ATTACK != 0 {
                crate::attack::open_flags(moment.opening, scratch.flow.proto)
            } else {
                0
            },
        last_seen_ns: moment.now,
    };
    // A tuple still in the table (rescheduled: closed, idle, its backend
    // gone) gets its entry rewritten in place, found again by one lookup
    // of a line just read: an LRU insert takes a free node and frees the
    // old one, about half of a new flow's cost. Other CPUs may see the
    // fields change one at a time, as they see `Entry::keep`'s writes.
    match replaced.and_then(|_| conn_entry(scratch)) {
        // SAFETY: the LRU entry stays valid for this program run.
        Some(entry) => unsafe { *entry = conn },
        None => conn_insert(scratch, &conn),
    }
    if settings.flags & SETTINGS_SYNC != 0 {
        crate::sync::report_opened(scratch, backend_id);
        // A flow first seen by its FIN or RST (its earlier packets went
        // through another balancer) opens closed here; its peers, which
        // install an open entry, hear of the close too.
        if moment.ending {
            crate::sync::report_closed(scratch, backend_id);
        }
    }
    // The old entry's flow ends only now that the new one replaces it: a
    // refused packet leaves the entry (and the counts) as they were, so
    // retried packets do not count one close each.
    if let Some((old, false)) = replaced {
        count_closed(old);
    }
    if moment.ending {
        count_closed(backend_id);
    }
    Ok((backend_id, true))
}

/// The scheduler's pick for a new flow, or `NO_BACKEND`.
#[inline(always)]
fn schedule(scratch: &Scratch, service: &ServiceValue, ring_size: u32) -> u32 {
    if ring_size == 0 {
        return NO_BACKEND;
    }
    let row = service
        .id
        .wrapping_mul(2)
        .wrapping_add(u32::from(service.active_half & 1));
    let slot = match service.scheduler {
        SCHED_ROUND_ROBIN => {
            if service.rr_len == 0 || service.rr_len > ring_size {
                return NO_BACKEND;
            }
            let Some(position) = RR_POS.get_ptr_mut(service.id) else {
                return NO_BACKEND;
            };
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe {
                let current = *position % service.rr_len;
                *position = current.wrapping_add(1);
                current
            }
        }
        SCHED_IP_HASH => source_hash(&scratch.flow.src) % ring_size,
        _ => hash_of(scratch) % ring_size,
    };
    MAGLEV
        .get(row.wrapping_mul(ring_size).wrapping_add(slot))
        .copied()
        .unwrap_or(NO_BACKEND)
}

/// Whether `BACKENDS[id]` is usable and belongs to `service_id`; if so it
/// is copied to `scratch.backend`, its id to `scratch.backend_id`.
#[inline(always)]
fn usable_backend(id: u32, service_id: u32, scratch: &mut Scratch) -> bool {
    match BACKENDS.get(id) {
        Some(backend)
            if backend.flags & BACKEND_USABLE != 0 && backend.service_id == service_id =>
        {
            scratch.backend = *backend;
            scratch.backend_id = id;
            true
        }
        _ => false,
    }
}

/// The cached next hop of `scratch.backend` into `scratch.hop`, if the
/// controller resolved one for this address and a packet of `ip_len` fits.
#[inline(always)]
fn cached_hop(scratch: &mut Scratch, ip_len: u16) -> bool {
    match HOPS.get(scratch.backend_id) {
        Some(hop) if hop.addr == scratch.backend.addr => take_hop(scratch, hop, ip_len),
        _ => false,
    }
}

/// The cached next hop of the route that covers the packet's destination
/// (a client, on the reply path) into `scratch.hop`: the controller mirrors
/// the main routing table into `ROUTES`, resolving the gateways of unicast
/// routes; connected, local, multipath and unreachable prefixes are there
/// unresolved, so the longest match sends those packets to the FIB.
#[inline(always)]
fn cached_route(scratch: &mut Scratch) -> bool {
    scratch.route_key = Key::new(128, scratch.packet.dst);
    let ip_len = scratch.packet.ip_len;
    match ROUTES.get(&scratch.route_key) {
        Some(hop) => take_hop(scratch, hop, ip_len),
        None => false,
    }
}

/// `hop` into `scratch.hop` if it is resolved and a packet of `ip_len`
/// fits its MTU.
#[inline(always)]
fn take_hop(scratch: &mut Scratch, hop: &HopValue, ip_len: u16) -> bool {
    if hop.flags & HOP_RESOLVED == 0 || ip_len > hop.mtu {
        return false;
    }
    scratch.hop = Hop::of(hop);
    true
}

/// Forwards `scratch.packet` to `scratch.backend` the way `service` says.
/// The next hop is the backend's cached one; without one, the FIB's (and
/// the packet is counted under `ForwardUncachedHop` if it was a forward).
#[inline(always)]
pub fn send_to_backend(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    service: &ServiceValue,
    reason: Reason,
) -> Result<Verdict, Drop> {
    let packet = &scratch.packet;
    let outer_len: u16 = match (service.forwarding, packet.v6) {
        (FWD_TUNNEL, true) => 40,
        (FWD_TUNNEL, false) => 20,
        _ => 0,
    };
    let ip_len = packet.ip_len.wrapping_add(outer_len);
    let (next, reason) = if cached_hop(scratch, ip_len) {
        (NextHop::Out, reason)
    } else {
        // Route first: nothing is rewritten unless it can be sent.
        scratch.query = FibQuery {
            v6: scratch.packet.v6,
            ip_len,
            src: scratch.packet.src,
            dst: scratch.backend.addr,
        };
        let reason = if reason == Reason::ForwardToBackend {
            Reason::ForwardUncachedHop
        } else {
            reason
        };
        (next_hop(ctx, scratch), reason)
    };
    match next {
        NextHop::Local | NextHop::NoRoute => return Err(Drop(Reason::DropNoRoute)),
        NextHop::TooBig => return icmp::too_big_to_client(ctx, scratch, outer_len),
        // DSR keeps the VIP as destination: the stack would deliver it here.
        NextHop::NoNeighbour if service.forwarding == FWD_DSR => {
            return Err(Drop(Reason::DropNoNeighbour));
        }
        NextHop::NoNeighbour | NextHop::Out => {}
    }
    match service.forwarding {
        FWD_NAT => {
            let (packet, backend) = (&scratch.packet, &scratch.backend);
            // IPv4 in line (a call costs 1.5 ns here), IPv6 out of line.
            if packet.v6 {
                rewrite(ctx, packet, End::Destination, &backend.addr, backend.port).get()?;
            } else {
                rewrite_v4(ctx, packet, End::Destination, &backend.addr, backend.port)?;
            }
        }
        FWD_TUNNEL => {
            encapsulate(ctx, &scratch.packet, &scratch.backend.addr).get()?;
        }
        FWD_DSR => {}
        _ => return Err(Drop(Reason::DropNoBackend)),
    }
    if next == NextHop::Out {
        transmit(ctx, &scratch.hop, reason)
    } else {
        // A rewritten or encapsulated packet is an ordinary routed one: the
        // stack resolves the neighbour and forwards it.
        Ok(Verdict::pass(Reason::PassNoNeighbour))
    }
}

/// Whether a packet from a backend of an all-port NAT service is the
/// backend's own traffic (its package updates, DNS, outbound connections),
/// not a reply in a flow lb forwarded to it: such a packet keeps its own
/// source. Every port of the backend belongs to the service, so its address
/// and port alone cannot tell the two apart (exact-port services can, and
/// never come here). The rule, in order:
///
/// - the flow it answers is in the connection table (client = its
///   destination, the VIP, the ports swapped): a reply, translated;
/// - UDP otherwise: the backend's own datagram;
/// - TCP in a connection the backend opened (`NAT_OUTBOUND`), or a bare
///   SYN, which opens one (and is remembered there): the backend's own;
/// - any other TCP packet: a reply in a flow whose entry this balancer
///   lacks (an HA peer forwarded its start, or the LRU evicted it),
///   translated, so established connections survive a takeover.
#[inline(always)]
fn backend_outbound(scratch: &mut Scratch, vip: &Addr) -> bool {
    let packet = &scratch.packet;
    let (v6, src, dst) = (packet.v6, packet.src, packet.dst);
    let (sport, dport, proto, flags) = (packet.sport, packet.dport, packet.proto, packet.tcp_flags);
    keys::set_flow(
        &mut scratch.flow,
        &mut scratch.flow4,
        (v6, Keys::ConnTable),
        (&dst, vip),
        (dport, sport, proto),
    );
    if conn_entry(scratch).is_some() {
        return false;
    }
    if proto != proto::TCP {
        return true;
    }
    keys::set_flow_key(&mut scratch.flow, (&src, &dst), (sport, dport, proto));
    if NAT_OUTBOUND.get_ptr(&scratch.flow).is_some() {
        return true;
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A full table forgets its least recent connection; a failed insert
        // leaves this one's later packets to the last rule.
        let _ = NAT_OUTBOUND.insert(&scratch.flow, &0, 0);
        return true;
    }
    false
}

/// The reply path: a packet from a NAT backend (its address, port and
/// protocol name exactly one service) gets the VIP and service port restored
/// as source and goes to the client. Stateless, so an HA peer carries on
/// established flows after a takeover. Packets from a backend to this host
/// itself (health checks) are left alone.
#[inline(always)]
fn reply(ctx: &XdpContext, scratch: &mut Scratch) -> u32 {
    finish(try_reply(ctx, scratch))
}

#[inline(always)]
fn try_reply(ctx: &XdpContext, scratch: &mut Scratch) -> Result<Verdict, Drop> {
    let packet = &scratch.packet;
    if !packet.has_l4 || (packet.proto != proto::TCP && packet.proto != proto::UDP) {
        return Ok(Verdict::pass(Reason::PassNoService));
    }
    let proto = packet.proto;
    keys::set_endpoint(&mut scratch.lookup, &packet.src, packet.sport, proto);
    // SAFETY: copied out at once.
    let nat = if let Some(nat) = unsafe { NAT.get(&scratch.lookup) } {
        *nat
    } else {
        keys::set_endpoint_port(&mut scratch.lookup, 0, proto);
        // SAFETY: as above.
        let nat = match unsafe { NAT.get(&scratch.lookup) } {
            Some(nat) => *nat,
            None => return Ok(Verdict::pass(Reason::PassNoService)),
        };
        if backend_outbound(scratch, &nat.vip) {
            return Ok(Verdict::pass(Reason::PassBackendOutbound));
        }
        nat
    };
    let (next, reason) = if cached_route(scratch) {
        (NextHop::Out, Reason::ReplyToClient)
    } else {
        let packet = &scratch.packet;
        scratch.query = FibQuery {
            v6: packet.v6,
            ip_len: packet.ip_len,
            src: nat.vip,
            dst: packet.dst,
        };
        (next_hop(ctx, scratch), Reason::ReplyUncachedHop)
    };
    if next == NextHop::Local || next == NextHop::NoRoute || next == NextHop::TooBig {
        // To this host (a health check answer), not routable from here, or
        // too big for the client's route (the stack answers the backend's
        // path-MTU discovery): untouched, the stack's business.
        return Ok(Verdict::pass(Reason::PassNoService));
    }
    rewrite(ctx, &scratch.packet, End::Source, &nat.vip, nat.port).get()?;
    if next == NextHop::Out {
        transmit(ctx, &scratch.hop, reason)
    } else {
        // Translated, the reply is an ordinary routed packet: the stack
        // resolves the client's next hop and forwards it.
        Ok(Verdict::pass(Reason::PassNoNeighbour))
    }
}

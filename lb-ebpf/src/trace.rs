//! `lb trace`: each decision, emitted to a ring buffer while a trace is
//! attached (`SETTINGS_TRACE`). Kept out of line and out of the decision
//! path: the data path only tests the flag, in the settings it has read
//! anyway, and hands over the packed verdict ([`crate::finish`]).
//!
//! Filtered (drops only, one VIP, one source prefix), sampled (one in
//! `sample_every`) and rate-limited per CPU (GCRA: one event per
//! `interval_ns`, bursts of `burst_ns`), so a flood costs the trace events
//! and never the data path more than this function; what the limit or a
//! full ring refuses is counted in `TRACE_STATE.lost`.

#![allow(
    clippy::cast_possible_truncation,
    reason = "ifindex and the XDP action fit their fields (u32, u8) by the kernel's definition"
)]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use lb_common::{
    Addr, NO_BACKEND, Reason,
    trace::{
        EVENT_BACKEND, EVENT_PORTS, TRACE_DROPS, TRACE_SOURCE, TRACE_VIP, TraceEvent,
        TraceSettings, TraceState,
    },
};

use crate::maps::{Scratch, VIPS};

/// The events: 256 KiB, room for over 3,000 of them.
#[map]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Filters and rate limit, one entry.
#[map]
pub static TRACE_SETTINGS: Array<TraceSettings> = Array::with_max_entries(1, 0);

/// The rate limit's state and the lost count, per CPU.
#[map]
pub static TRACE_STATE: PerCpuArray<TraceState> = PerCpuArray::with_max_entries(1, 0);

/// Mask of the XDP action in [`crate::finish`]'s packed result.
pub const ACTION_MASK: u32 = 0xff;

/// Whether `addr` is in the prefix `prefix` / `len` (map form).
#[inline(always)]
fn in_prefix(addr: &Addr, prefix: &Addr, len: u32) -> bool {
    let mut i = 0u32;
    while i < 16 {
        let bits = len.saturating_sub(i * 8).min(8);
        // The top `bits` bits of a byte (a shift by 8 is none left: all).
        let mask = !0xffu8.checked_shr(bits).unwrap_or(0);
        let (a, p) = (addr[i as usize], prefix[i as usize]);
        if (a ^ p) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Emits the decision `decided` (action, reason) about `scratch.packet`, if
/// the filters, the sampling and the rate limit let it through. Forgets the
/// backend chosen, so the next packet reports one only if it chose one.
#[inline(never)]
pub fn record(ctx: &XdpContext, scratch: &mut Scratch, decided: u32) {
    let backend_id = scratch.backend_id;
    scratch.backend_id = NO_BACKEND;
    let Some(reason) = Reason::from_slot(decided >> 8) else {
        return;
    };
    // Not IP, or not for this host: never a balancer's decision.
    if reason == Reason::PassNonIp || reason == Reason::PassOtherMac {
        return;
    }
    let Some(filter) = TRACE_SETTINGS.get(0) else {
        return;
    };
    let packet = &scratch.packet;
    if filter.flags & TRACE_DROPS != 0 && !reason.is_drop() {
        return;
    }
    if filter.flags & TRACE_VIP != 0 && packet.dst != filter.vip {
        return;
    }
    if filter.flags & TRACE_SOURCE != 0
        && !in_prefix(&packet.src, &filter.source, filter.source_len)
    {
        return;
    }
    // Host traffic is passed untouched: only a VIP's is a decision.
    // SAFETY: only tested for presence.
    if reason == Reason::PassNoService && unsafe { VIPS.get(&packet.dst) }.is_none() {
        return;
    }
    let Some(state) = TRACE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the current CPU's entry; XDP runs with preemption off.
    let state = unsafe { &mut *state };
    state.seen = state.seen.wrapping_add(1);
    if filter.sample_every > 1 && state.seen % u64::from(filter.sample_every) != 0 {
        return;
    }
    // SAFETY: the kernel helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let due = if state.next_ns > now {
        state.next_ns
    } else {
        now
    };
    if due - now > filter.burst_ns {
        state.lost = state.lost.wrapping_add(1);
        return;
    }
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        state.lost = state.lost.wrapping_add(1);
        return;
    };
    state.next_ns = due.wrapping_add(filter.interval_ns);
    let malformed_eth = reason == Reason::DropMalformedEth;
    let ports = packet.has_l4
        && !malformed_eth
        && !matches!(
            reason,
            Reason::DropMalformedIpv4
                | Reason::DropMalformedIpv6
                | Reason::DropMalformedTcp
                | Reason::DropMalformedUdp
                | Reason::DropMalformedIcmp
        );
    let chosen = backend_id != NO_BACKEND;
    entry.write(TraceEvent {
        time_ns: now,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: reason as u32,
        src: if malformed_eth { [0; 16] } else { packet.src },
        dst: if malformed_eth { [0; 16] } else { packet.dst },
        sport: if ports { packet.sport } else { 0 },
        dport: if ports { packet.dport } else { 0 },
        proto: if malformed_eth { 0 } else { packet.proto },
        action: (decided & ACTION_MASK) as u8,
        flags: if chosen { EVENT_BACKEND } else { 0 } | if ports { EVENT_PORTS } else { 0 },
        pad: 0,
        backend: if chosen {
            scratch.backend.addr
        } else {
            [0; 16]
        },
        backend_port: if chosen { scratch.backend.port } else { 0 },
        pad2: 0,
        backend_id,
    });
    entry.submit(0);
}

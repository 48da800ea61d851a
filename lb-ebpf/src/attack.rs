//! `guard.attack` in the data path (DESIGN.md §2.3): per-service counts of
//! new flows, bare-SYN flows and those that went on, for the controller to
//! judge attacks by; and, for a VIP the controller marked under attack, the
//! admission of new flows. A proven source (a completed handshake, a
//! retransmitted SYN, a UDP flow that went on before the attack) passes,
//! up to its per-second budget; an unknown source's first SYN is dropped
//! and remembered, and its retransmission inside the window (the same
//! tuple and sequence number) proves it; an unknown source's UDP datagram
//! takes from the service's per-second budget. Established flows never
//! come here. Everything is skipped unless `SETTINGS_ATTACK` is set.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr, ConnValue,
    attack::{
        AttackCounts, AttackVip, Budget, PENDING_ENTRIES, PendingSlot, Proven, RETRY_MAX_NS,
        RETRY_MIN_NS, VERIFIED_ENTRIES, VIPS_ENTRIES, pending_key, pending_slot, second_of,
    },
    maps::CONN_HALF_OPEN,
    proto,
};

use crate::maps::Scratch;

/// Per-CPU running counts per service id (sized to the services at load).
#[map]
pub static ATTACK_COUNTS: PerCpuArray<AttackCounts> = PerCpuArray::with_max_entries(64, 0);

/// Per-CPU budget of new UDP flows from unknown sources per service id, for
/// the current second (sized to the services at load).
#[map]
pub static ATTACK_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(64, 0);

/// VIPs under attack, written by the controller.
#[map]
pub static ATTACK_VIPS: HashMap<Addr, AttackVip> = HashMap::with_max_entries(VIPS_ENTRIES, 0);

/// Sources that proved themselves: when, and their new flows this second.
#[map]
pub static ATTACK_VERIFIED: LruHashMap<Addr, Proven> =
    LruHashMap::with_max_entries(VERIFIED_ENTRIES, 0);

/// First SYNs of unknown sources, in the slot of their tuple hash and
/// sequence number: when each was seen (see `PendingSlot`).
#[map]
pub static ATTACK_PENDING: Array<PendingSlot> = Array::with_max_entries(PENDING_ENTRIES, 0);

/// How often a proven source's proof is refreshed by its flows: at most
/// once a second, so a busy client costs one map write a second, not one
/// a flow.
const REFRESH_NS: u64 = 1_000_000_000;

/// A new flow of service `service_id` (`scratch.flow`): counts it, and
/// decides whether it may open. Only a bare SYN (`opening`) or a UDP
/// datagram to a VIP under attack can be refused: from a proven source
/// within its per-second budget it passes; an unknown source's first SYN
/// is dropped and remembered, its retransmission proves it; an unknown
/// UDP source takes from the service's budget. Out of line: the new-flow
/// path pays a call only while `guard.attack` is configured.
#[inline(never)]
pub fn admit(scratch: &Scratch, service_id: u32, opening: bool, now: u64) -> bool {
    if let Some(counts) = ATTACK_COUNTS.get_ptr_mut(service_id) {
        // SAFETY: this CPU's slot of a per-CPU array, which nothing else
        // touches while this program runs on this CPU.
        unsafe {
            (*counts).new_flows = (*counts).new_flows.wrapping_add(1);
            if opening {
                (*counts).syns = (*counts).syns.wrapping_add(1);
            }
        }
    }
    let flow = &scratch.flow;
    let udp = flow.proto == proto::UDP;
    if !opening && !udp {
        return true;
    }
    // SAFETY: copied out at once.
    let Some(vip) = (unsafe { ATTACK_VIPS.get(&flow.dst) }).copied() else {
        return true;
    };
    if let Some(proven) = ATTACK_VERIFIED.get_ptr_mut(&flow.src) {
        // SAFETY: the LRU entry stays valid for this program run; a racing
        // CPU's update leaves valid values (a flow counted twice or not).
        unsafe {
            if now.saturating_sub((*proven).at_ns) < vip.verified_ns {
                return within_source_budget(proven, &vip, now);
            }
        }
    }
    if udp {
        return within_unknown_budget(service_id, &vip, now);
    }
    let key = pending_key(
        &flow.src,
        &flow.dst,
        flow.sport,
        flow.dport,
        scratch.packet.tcp_seq,
    );
    let Some(slot) = ATTACK_PENDING.get_ptr_mut(pending_slot(key)) else {
        return false;
    };
    // SAFETY: an array slot, valid for the program's life; a racing CPU
    // leaves valid values (see `PendingSlot`).
    unsafe {
        let first = (*slot).seen_ns;
        if first != 0 && (*slot).key == key {
            let age = now.saturating_sub(first);
            if age < RETRY_MIN_NS {
                // Too soon to be the retransmission: a repeat proves
                // nothing, and the first sighting stays.
                return false;
            }
            if age <= RETRY_MAX_NS {
                (*slot).seen_ns = 0;
                let proven = Proven {
                    at_ns: now,
                    second: second_of(now),
                    flows: 1,
                };
                // A full table forgets its least recently proven source.
                let _ = ATTACK_VERIFIED.insert(&flow.src, &proven, 0);
                return true;
            }
        }
        // A first SYN (or one after the window): remembered, dropped, in
        // place of whatever held its slot.
        (*slot).key = key;
        (*slot).seen_ns = now;
    }
    false
}

/// A proven source's new flow to a VIP under attack: counted in its
/// second; refused over `source_budget` (0: no bound), so a spoofer using
/// a known client's address gets no more than that.
///
/// # Safety
/// `proven` points to a live `ATTACK_VERIFIED` entry.
#[inline(always)]
unsafe fn within_source_budget(proven: *mut Proven, vip: &AttackVip, now: u64) -> bool {
    let second = second_of(now);
    // SAFETY: the caller's.
    unsafe {
        if (*proven).second != second {
            (*proven).second = second;
            (*proven).flows = 0;
        }
        if vip.source_budget != 0 && (*proven).flows >= vip.source_budget {
            return false;
        }
        (*proven).flows = (*proven).flows.wrapping_add(1);
    }
    true
}

/// An unknown source's new UDP flow to service `service_id` of a VIP under
/// attack: admitted while this CPU's budget for the second lasts.
#[inline(always)]
fn within_unknown_budget(service_id: u32, vip: &AttackVip, now: u64) -> bool {
    let Some(budget) = ATTACK_BUDGET.get_ptr_mut(service_id) else {
        return false;
    };
    let second = u64::from(second_of(now));
    // SAFETY: this CPU's slot of a per-CPU array.
    unsafe {
        if (*budget).second != second {
            (*budget).second = second;
            (*budget).spent = 0;
        }
        if (*budget).spent >= u64::from(vip.unknown_budget) {
            return false;
        }
        (*budget).spent = (*budget).spent.wrapping_add(1);
    }
    true
}

/// `ConnValue::flags` for a new flow's entry: `CONN_HALF_OPEN` for one a
/// bare SYN or a UDP datagram opens (until its next packet).
#[inline(always)]
pub fn open_flags(opening: bool, proto: u8) -> u32 {
    if opening || proto == proto::UDP {
        CONN_HALF_OPEN
    } else {
        0
    }
}

/// An established flow's packet (`conn`, of service `service_id`): the
/// first one after its opening packet that is not a bare SYN completes
/// it — counted for a TCP flow, and its source proven ([`prove`]). One
/// test of a flag the entry's cache line already holds.
#[inline(always)]
pub fn went_on(scratch: &Scratch, conn: *mut ConnValue, service_id: u32, opening: bool, now: u64) {
    // SAFETY: the LRU entry stays valid for this program run; a racing
    // CPU may count a flow twice, which only lowers the half-open share.
    unsafe {
        if opening || (*conn).flags & CONN_HALF_OPEN == 0 {
            return;
        }
        (*conn).flags &= !CONN_HALF_OPEN;
    }
    prove(scratch, service_id, now);
}

/// A flow of `scratch.packet`'s source went on: a completed TCP handshake
/// (counted) proves the source; a UDP flow's second datagram does too,
/// except to a VIP under attack, where a spoofer can send two as easily
/// as one. Out of line: paid once a flow.
#[inline(never)]
fn prove(scratch: &Scratch, service_id: u32, now: u64) {
    let packet = &scratch.packet;
    if packet.proto == proto::TCP {
        if let Some(counts) = ATTACK_COUNTS.get_ptr_mut(service_id) {
            // SAFETY: as in `admit`.
            unsafe { (*counts).completed = (*counts).completed.wrapping_add(1) };
        }
    } else if
    // SAFETY: only tested for presence.
    unsafe { ATTACK_VIPS.get(&packet.dst) }.is_some() {
        return;
    }
    if let Some(proven) = ATTACK_VERIFIED.get_ptr_mut(&packet.src) {
        // SAFETY: as in `admit`.
        unsafe {
            if now.saturating_sub((*proven).at_ns) >= REFRESH_NS {
                (*proven).at_ns = now;
            }
        }
        return;
    }
    let proven = Proven {
        at_ns: now,
        second: second_of(now),
        flows: 0,
    };
    let _ = ATTACK_VERIFIED.insert(&packet.src, &proven, 0);
}

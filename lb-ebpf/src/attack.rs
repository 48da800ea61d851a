//! `guard.attack` in the data path (DESIGN.md §2.3): per-service counts of
//! new flows, bare-SYN flows and those that went on, for the controller to
//! judge attacks by; and, for a VIP the controller marked under attack, the
//! admission of bare SYNs: a proven source passes, an unknown one's first
//! SYN is dropped and remembered, and its retransmission inside the window
//! (the same tuple and sequence number) proves it. Established flows never come here. Everything is skipped
//! unless `SETTINGS_ATTACK` is set.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr, ConnValue,
    attack::{
        AttackCounts, AttackVip, PENDING_ENTRIES, PendingKey, RETRY_MAX_NS, RETRY_MIN_NS,
        VERIFIED_ENTRIES, VIPS_ENTRIES, VerifiedUntil, pending_key,
    },
    maps::CONN_HALF_OPEN,
};

use crate::maps::Scratch;

/// Per-CPU running counts per service id (sized to the services at load).
#[map]
pub static ATTACK_COUNTS: PerCpuArray<AttackCounts> = PerCpuArray::with_max_entries(64, 0);

/// VIPs under attack, written by the controller.
#[map]
pub static ATTACK_VIPS: HashMap<Addr, AttackVip> = HashMap::with_max_entries(VIPS_ENTRIES, 0);

/// Sources that proved themselves, until when they pass.
#[map]
pub static ATTACK_VERIFIED: LruHashMap<Addr, VerifiedUntil> =
    LruHashMap::with_max_entries(VERIFIED_ENTRIES, 0);

/// First SYNs of unknown sources, by tuple hash: when each was seen.
#[map]
pub static ATTACK_PENDING: LruHashMap<PendingKey, u64> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

/// A new flow of service `service_id` (`scratch.flow`): counts it, and
/// decides whether it may open. Only a bare SYN (`opening`) to a VIP under
/// attack can be refused. Out of line: the new-flow path pays a call only
/// while `guard.attack` is configured.
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
    if !opening {
        return true;
    }
    let flow = &scratch.flow;
    // SAFETY: copied out at once.
    let Some(vip) = (unsafe { ATTACK_VIPS.get(&flow.dst) }).copied() else {
        return true;
    };
    // SAFETY: copied out at once; a racing update leaves a valid value.
    if let Some(until) = unsafe { ATTACK_VERIFIED.get(&flow.src) }.copied()
        && now < until
    {
        return true;
    }
    let key = pending_key(
        &flow.src,
        &flow.dst,
        flow.sport,
        flow.dport,
        scratch.packet.tcp_seq,
    );
    // SAFETY: as above.
    if let Some(first) = unsafe { ATTACK_PENDING.get(&key) }.copied() {
        let age = now.saturating_sub(first);
        if age < RETRY_MIN_NS {
            // Too soon to be the retransmission: a repeat proves nothing,
            // and the first sighting stays.
            return false;
        }
        if age <= RETRY_MAX_NS {
            let until = now.wrapping_add(vip.verified_ns);
            // A full table forgets its least recently proven source.
            let _ = ATTACK_VERIFIED.insert(&flow.src, &until, 0);
            let _ = ATTACK_PENDING.remove(&key);
            return true;
        }
    }
    // A first SYN (or one after the window): remembered, dropped. A full
    // table forgets its oldest pending SYN.
    let _ = ATTACK_PENDING.insert(&key, &now, 0);
    false
}

/// `ConnValue::flags` for a new flow's entry: `CONN_HALF_OPEN` for one a
/// bare SYN opens.
#[inline(always)]
pub fn open_flags(opening: bool) -> u32 {
    if opening { CONN_HALF_OPEN } else { 0 }
}

/// An established flow's packet (`conn`, of service `service_id`): the
/// first one after its opening SYN that is not a bare SYN counts it as
/// completed. One test of a flag the entry's cache line already holds.
#[inline(always)]
pub fn went_on(conn: *mut ConnValue, service_id: u32, opening: bool) {
    // SAFETY: the LRU entry stays valid for this program run; a racing
    // CPU may count a flow twice, which only lowers the half-open share.
    unsafe {
        if opening || (*conn).flags & CONN_HALF_OPEN == 0 {
            return;
        }
        (*conn).flags &= !CONN_HALF_OPEN;
    }
    if let Some(counts) = ATTACK_COUNTS.get_ptr_mut(service_id) {
        // SAFETY: as in `admit`.
        unsafe { (*counts).completed = (*counts).completed.wrapping_add(1) };
    }
}

//! `guard.attack` in the data path (docs/DESIGN.md §2.3): per-service counts of
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
        AttackCounts, AttackVip, Budget, PENDING_SLOTS, PENDING_WAYS, Proven, RETRY_MAX_NS,
        RETRY_MIN_NS, VERIFIED_ENTRIES, VIPS_ENTRIES, pending_age, pending_key, pending_place,
        pending_tag, pending_value, second_of,
    },
    maps::CONN_HALF_OPEN,
    proto,
};

use crate::maps::Scratch;

/// Per-CPU running counts per service id (sized to the services at load).
#[map]
pub static ATTACK_COUNTS: PerCpuArray<AttackCounts> = PerCpuArray::with_max_entries(64, 0);

/// Budget of new UDP flows from unknown sources per service id, for the
/// current second, shared by the CPUs (sized to the services at load).
#[map]
pub static ATTACK_BUDGET: Array<Budget> = Array::with_max_entries(64, 0);

/// VIPs under attack, written by the controller.
#[map]
pub static ATTACK_VIPS: HashMap<Addr, AttackVip> = HashMap::with_max_entries(VIPS_ENTRIES, 0);

/// Sources that proved themselves: when, and their new flows this second.
#[map]
pub static ATTACK_VERIFIED: LruHashMap<Addr, Proven> =
    LruHashMap::with_max_entries(VERIFIED_ENTRIES, 0);

/// First SYNs of unknown sources: 2-way sets of slots, each a SYN's tag
/// and when it was seen (`lb_common::attack::pending_place`). Memory-mapped
/// (`BPF_F_MMAPABLE`), so userspace reads 32 MiB without a syscall a slot.
#[map]
pub static ATTACK_PENDING: Array<u64> = Array::with_max_entries(PENDING_SLOTS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The slots `ATTACK_PENDING` is declared with (the set arithmetic needs
/// the count the map has; it is not resized at load).
const ATTACK_PENDING_LEN: u32 = PENDING_SLOTS;

/// How often a proven source's proof is refreshed by its flows: at most
/// once a second, so a busy client costs one map write a second, not one
/// a flow.
const REFRESH_NS: u64 = 1_000_000_000;

/// A new flow of service `service_id` (`scratch.flow`): counts it, and
/// decides whether it may open ([`admitted`]). Only a bare SYN (`opening`)
/// or a UDP datagram to a VIP under attack can be refused. Out of line:
/// the new-flow path pays a call only while `guard.attack` is configured.
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
    admitted(
        &Asking {
            src: &flow.src,
            dst: &flow.dst,
            sport: flow.sport,
            dport: flow.dport,
            udp: flow.proto == proto::UDP,
            seq: scratch.packet.tcp_seq,
        },
        service_id,
        opening,
        now,
    )
}

/// A packet on a half-open entry (its flow's first packet was all this
/// balancer saw of it: a bare SYN, or a datagram less than a second ago)
/// that opens again — a bare SYN, or a UDP datagram — asks the admission
/// once more: under attack such an entry proves nothing (a spoofed SYN
/// that won an entry before the attack was detected, a spoofed tuple
/// seen twice). A proven source's datagram on its own young UDP flow
/// passes without taking from its budget again: it opens no new flow. A
/// bare SYN does take from it: a SYN on a half-open tuple may be a new
/// connection (a spoofer using a known address reuses the tuples it won
/// before the attack was detected). Out of line: paid only by those
/// packets, and only while `guard.attack` is configured.
#[inline(never)]
pub fn readmit(scratch: &Scratch, service_id: u32, opening: bool, now: u64) -> bool {
    let packet = &scratch.packet;
    if !opening && let Some(proven) = ATTACK_VERIFIED.get_ptr_mut(&packet.src) {
        // SAFETY: as in `admitted`; the value is copied out at once.
        let at_ns = unsafe { (*proven).at_ns };
        // SAFETY: copied out at once.
        let verified_ns = unsafe { ATTACK_VIPS.get(&packet.dst) }.map_or(0, |vip| vip.verified_ns);
        if now.saturating_sub(at_ns) < verified_ns {
            return true;
        }
    }
    admitted(
        &Asking {
            src: &packet.src,
            dst: &packet.dst,
            sport: packet.sport,
            dport: packet.dport,
            udp: packet.proto == proto::UDP,
            seq: packet.tcp_seq,
        },
        service_id,
        opening,
        now,
    )
}

/// Who asks to open a flow.
struct Asking<'a> {
    src: &'a Addr,
    dst: &'a Addr,
    sport: u16,
    dport: u16,
    udp: bool,
    /// A SYN's sequence number.
    seq: u32,
}

/// The admission: a packet that is neither a bare SYN nor UDP, or to a VIP
/// not under attack, passes; from a proven source, within its per-second
/// budget; an unknown source's first SYN is dropped and remembered, its
/// retransmission proves it; an unknown UDP source takes from the
/// service's per-second budget.
#[inline(always)]
fn admitted(asking: &Asking, service_id: u32, opening: bool, now: u64) -> bool {
    if !opening && !asking.udp {
        return true;
    }
    // SAFETY: copied out at once.
    let Some(vip) = (unsafe { ATTACK_VIPS.get(asking.dst) }).copied() else {
        return true;
    };
    if let Some(proven) = ATTACK_VERIFIED.get_ptr_mut(asking.src) {
        // SAFETY: the LRU entry stays valid for this program run; a racing
        // CPU's update leaves valid values (a flow counted twice or not).
        unsafe {
            if now.saturating_sub((*proven).at_ns) < vip.verified_ns {
                return within_source_budget(proven, &vip, now);
            }
        }
    }
    if asking.udp {
        return within_unknown_budget(service_id, &vip, now);
    }
    let key = pending_key(
        asking.src,
        asking.dst,
        asking.sport,
        asking.dport,
        asking.seq,
    );
    let (first, tag) = pending_place(key, ATTACK_PENDING_LEN);
    // The set: the slot holding this SYN's tag, else its emptiest or
    // oldest slot (one cache line).
    let mut found = None;
    let mut oldest: Option<(*mut u64, u64)> = None;
    for way in 0..PENDING_WAYS {
        let Some(slot) = ATTACK_PENDING.get_ptr_mut(first.wrapping_add(way)) else {
            return false;
        };
        // SAFETY: an array slot, valid for the program's run; aligned
        // 8-byte loads and stores, so a racing CPU's write is seen whole
        // or not.
        let value = unsafe { *slot };
        if pending_tag(value) == tag {
            found = Some((slot, value));
            break;
        }
        let age = pending_age(value, now);
        if oldest.is_none_or(|(_, older)| age > older) {
            oldest = Some((slot, age));
        }
    }
    let Some((mine, value)) = found else {
        // A first SYN: remembered in the emptiest or oldest slot, dropped.
        if let Some((slot, _)) = oldest {
            // SAFETY: as above.
            unsafe { *slot = pending_value(tag, now) };
        }
        return false;
    };
    let age = pending_age(value, now);
    if age < RETRY_MIN_NS {
        // Too soon to be the retransmission: a repeat proves nothing, and
        // the first sighting stays.
        return false;
    }
    if age <= RETRY_MAX_NS {
        let proven = Proven {
            at_ns: now,
            second: second_of(now),
            flows: 1,
        };
        // A full table forgets its least recently proven source.
        let _ = ATTACK_VERIFIED.insert(asking.src, &proven, 0);
        // SAFETY: as above.
        unsafe { *mine = 0 };
        return true;
    }
    // Seen again after the window: a first SYN once more.
    // SAFETY: as above.
    unsafe { *mine = pending_value(tag, now) };
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
/// attack: admitted while the service's budget for the second lasts (one
/// counter for every CPU: a flood that lands on one CPU spends the same
/// budget as one spread over all). The counter is a plain one (this target
/// has no atomic add in `core`): increments racing on two CPUs may count
/// once, letting through at most one more datagram per race.
#[inline(always)]
fn within_unknown_budget(service_id: u32, vip: &AttackVip, now: u64) -> bool {
    let Some(budget) = ATTACK_BUDGET.get_ptr_mut(service_id) else {
        return false;
    };
    let second = u64::from(second_of(now));
    // SAFETY: an array slot, valid for the program's run; the racing
    // writes of other CPUs are to the same plain integers and leave valid
    // values (a lost count at worst).
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

/// How long a UDP flow must have lasted before its next datagram proves
/// its source: two datagrams of a spoofed tuple a moment apart (a flood
/// over a narrow range repeats tuples) prove nothing.
const UDP_PROOF_NS: u64 = 1_000_000_000;

/// An established flow's packet (`conn`, of service `service_id`, its entry
/// last stamped `last_seen`): the first one after its opening packet that
/// is not a bare SYN completes a TCP flow — counted, and its source proven
/// ([`prove`]); a UDP flow completes with a datagram at least
/// [`UDP_PROOF_NS`] after it began. One test of a flag the entry's cache
/// line already holds.
#[inline(always)]
pub fn went_on(
    scratch: &Scratch,
    conn: *mut ConnValue,
    service_id: u32,
    opening: bool,
    last_seen: u64,
    now: u64,
) {
    // SAFETY: the LRU entry stays valid for this program run; a racing
    // CPU may count a flow twice, which only lowers the half-open share.
    unsafe {
        if opening || (*conn).flags & CONN_HALF_OPEN == 0 {
            return;
        }
        if scratch.packet.proto == proto::UDP && now.saturating_sub(last_seen) < UDP_PROOF_NS {
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

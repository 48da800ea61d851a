//! `guard.attack`'s shared types (docs/DESIGN.md §2.3): the per-service counters
//! the controller judges attacks by, the per-VIP attack state it writes for
//! the data path, and the admission's proven sources and pending SYNs.

#![allow(
    clippy::inline_always,
    reason = "the XDP program needs these inlined: BPF-to-BPF calls cost a frame"
)]

use crate::Addr;

/// Value of the per-CPU `ATTACK_COUNTS` array, indexed by service id:
/// running totals (never reset; the controller takes differences), counted
/// only while `SETTINGS_ATTACK` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttackCounts {
    /// New flows (what the scheduler was asked for, admitted or not).
    pub new_flows: u64,
    /// Of those, TCP flows opened by a bare SYN.
    pub syns: u64,
    /// TCP flows opened by a bare SYN whose first later packet (not a bare
    /// SYN) arrived: the handshake went on.
    pub completed: u64,
}
const _: () = assert!(core::mem::size_of::<AttackCounts>() == 24);

/// Value of `ATTACK_VIPS`, keyed by VIP: present while the VIP is under
/// attack (the controller inserts and removes it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttackVip {
    /// How long a source that proves itself passes (`verified_for`).
    pub verified_ns: u64,
    /// The controller's monotonic clock when the attack began.
    pub since_ns: u64,
    /// New UDP flows a second from unknown sources each service of the
    /// VIP admits (all CPUs together).
    pub unknown_budget: u32,
    /// New flows a second one proven source may open to VIPs under attack
    /// (`source_flows_per_second`; 0: no bound): a spoofer using a known
    /// client's address gets no more than this.
    pub source_budget: u32,
}
const _: () = assert!(core::mem::size_of::<AttackVip>() == 24);

/// Value of `ATTACK_VERIFIED`, keyed by source: when it last proved itself
/// (a retransmitted SYN, a completed handshake, a UDP flow that went on
/// outside an attack), and its new flows in the current second while a
/// VIP is under attack (bounded by [`AttackVip::source_budget`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Proven {
    /// Data path clock of the last proof.
    pub at_ns: u64,
    /// The second (`now >> 30`, about 1.07 s) `flows` counts in.
    pub second: u32,
    /// New flows to VIPs under attack in that second.
    pub flows: u32,
}
const _: () = assert!(core::mem::size_of::<Proven>() == 16);

/// Value of the `ATTACK_BUDGET` array, indexed by service id: new UDP
/// flows from unknown sources admitted in the current second (one counter
/// for all CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Budget {
    /// The second (`now >> 30`) `spent` counts in.
    pub second: u64,
    /// Admitted in it.
    pub spent: u64,
}
const _: () = assert!(core::mem::size_of::<Budget>() == 16);

/// The coarse second of a data path time (`ns >> 30`: 1.07 s), for the
/// budgets: a shift, not a division.
#[inline(always)]
pub fn second_of(ns: u64) -> u32 {
    // Truncation wanted: 2^32 such seconds are 146 years of uptime.
    #[allow(clippy::cast_possible_truncation)]
    let second = (ns >> 30) as u32;
    second
}

/// A retransmitted SYN proves its source only this long after the first
/// (the first retransmission comes after the initial RTO, 1 s by RFC 6298;
/// a spoofer's repeat sooner proves nothing).
pub const RETRY_MIN_NS: u64 = 500_000_000;

/// ... and at most this long after: later it counts as a first SYN again
/// (the second retransmission, at 3 s, is then remembered, the third
/// proves it).
pub const RETRY_MAX_NS: u64 = 3_000_000_000;

/// Slots of `ATTACK_PENDING` (first SYNs waiting for their
/// retransmission): an array of 8-way sets, 8 bytes a slot (32 MiB), a set
/// one cache line. A first SYN takes its set's emptiest or oldest slot, so
/// it is forgotten only once eight later SYNs landed in its set: at
/// 300,000 spoofed SYNs a second, a real client's SYN is still there a
/// second later, when its retransmission comes, all but about once in
/// 100,000.
pub const PENDING_SLOTS: u32 = 1 << 22;

/// Slots of one set of `ATTACK_PENDING`.
pub const PENDING_WAYS: u32 = 8;

/// Entries of `ATTACK_VERIFIED` (proven sources, LRU).
pub const VERIFIED_ENTRIES: u32 = 65_536;

/// Entries of `ATTACK_VIPS`: VIPs under attack at once.
pub const VIPS_ENTRIES: u32 = 1024;

/// The identity of a SYN in `ATTACK_PENDING`: a hash of (source, source
/// port, VIP, port) and the SYN's sequence number, see [`pending_key`].
pub type PendingKey = u64;

/// [`PendingKey`] of a SYN: the tuple's 32-bit flow hash beside the SYN's
/// sequence number. A retransmitted SYN carries its first sending's
/// sequence number; a spoofer's repeat of a tuple with a fresh random one
/// matches by chance about once in 2^32, and its tuple hash must match too.
#[inline(always)]
pub fn pending_key(src: &Addr, dst: &Addr, sport: u16, dport: u16, seq: u32) -> PendingKey {
    let hash = crate::hash::flow_hash(src, dst, sport, dport, crate::proto::TCP);
    (u64::from(hash) << 32) | u64::from(seq)
}

/// Where a SYN of `key` is remembered: the first slot of its set of
/// [`PENDING_WAYS`] (the others follow it), and the 40-bit tag stored
/// there. A
/// multiplicative hash spreads the key: the set comes from its high bits,
/// the tag from its low ones.
#[inline(always)]
pub fn pending_place(key: PendingKey, slots: u32) -> (u32, u64) {
    let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let sets = u64::from(slots / PENDING_WAYS).max(1);
    // The set number is below `slots / PENDING_WAYS`: it fits.
    #[allow(clippy::cast_possible_truncation)]
    let set = ((mixed >> 24) % sets) as u32;
    (set * PENDING_WAYS, mixed & TAG_MASK)
}

const TAG_MASK: u64 = (1 << 40) - 1;
const TICK_MASK: u64 = (1 << 24) - 1;

/// The clock of a slot: `ns >> 24` (16.8 ms ticks), 24 bits of it (78 hours
/// before it wraps), never 0 (an empty slot).
#[inline(always)]
fn tick(ns: u64) -> u64 {
    let tick = (ns >> 24) & TICK_MASK;
    if tick == 0 { 1 } else { tick }
}

/// A slot's value: `tag` seen at `now`.
#[inline(always)]
pub fn pending_value(tag: u64, now: u64) -> u64 {
    (tag << 24) | tick(now)
}

/// The tag a slot's `value` holds (0 for an empty slot).
#[inline(always)]
pub fn pending_tag(value: u64) -> u64 {
    value >> 24
}

/// How long ago (at `now`) the SYN a slot's `value` holds was seen, to a
/// tick; an empty slot is as old as can be.
#[inline(always)]
pub fn pending_age(value: u64, now: u64) -> u64 {
    if value == 0 {
        return u64::MAX;
    }
    (tick(now).wrapping_sub(value & TICK_MASK) & TICK_MASK) << 24
}

/// `value` as if seen `ns` earlier (tests age the table).
pub fn pending_aged(value: u64, ns: u64) -> u64 {
    let tick = (value & TICK_MASK).wrapping_sub(ns >> 24) & TICK_MASK;
    (value & !TICK_MASK) | if tick == 0 { TICK_MASK } else { tick }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)` with no padding (their sizes are asserted above)
    // and every bit pattern valid.
    unsafe impl aya::Pod for super::AttackCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AttackVip {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Proven {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Budget {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_slot_remembers_its_tag_and_tells_its_age_to_a_tick() {
        let now = 5_000 * S;
        let (first, tag) = pending_place(0x1234_5678_0000_03e8, PENDING_SLOTS);
        assert_eq!(first % PENDING_WAYS, 0, "a set's first slot");
        assert!(first + PENDING_WAYS <= PENDING_SLOTS);
        assert!(tag > 0 && tag < 1 << 40);
        let value = pending_value(tag, now);
        assert_eq!(pending_tag(value), tag);
        assert!(pending_age(value, now) < 1 << 24);
        let later = pending_age(value, now + S);
        assert!(later.abs_diff(S) < 2 << 24, "{later}");
        assert_eq!(pending_age(0, now), u64::MAX, "empty");
        let aged = pending_aged(value, 2 * S);
        assert_eq!(pending_tag(aged), tag);
        assert!(pending_age(aged, now).abs_diff(2 * S) < 2 << 24);
    }

    #[test]
    fn another_sequence_number_or_tuple_gets_another_tag_or_set() {
        let key = pending_key(&[0; 16], &[1; 16], 1000, 80, 7);
        let other_seq = pending_key(&[0; 16], &[1; 16], 1000, 80, 8);
        let other_port = pending_key(&[0; 16], &[1; 16], 1001, 80, 7);
        for other in [other_seq, other_port] {
            assert_ne!(
                pending_place(key, PENDING_SLOTS),
                pending_place(other, PENDING_SLOTS)
            );
        }
    }
}

//! `guard.attack`'s shared types (DESIGN.md §2.3): the per-service counters
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
    /// VIP admits, per CPU (the per-VIP budget divided among the CPUs).
    pub unknown_budget: u32,
    /// New flows a second one proven source may open to the VIP, per CPU
    /// (`source_flows_per_second` divided among the CPUs): a spoofer using
    /// a known client's address gets no more than this.
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

/// Value of the per-CPU `ATTACK_BUDGET` array, indexed by service id: new
/// UDP flows from unknown sources admitted in the current second.
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
/// retransmission, an array indexed by [`pending_slot`]; a SYN landing on
/// a taken slot overwrites it): a flood of about this many SYNs over
/// `RETRY_MAX_NS` leaves a genuine first SYN a fair chance to be found by
/// its retransmission.
pub const PENDING_ENTRIES: u32 = 1 << PENDING_BITS;

/// log2 of [`PENDING_ENTRIES`].
pub const PENDING_BITS: u32 = 17;

/// Entries of `ATTACK_VERIFIED` (proven sources, LRU).
pub const VERIFIED_ENTRIES: u32 = 65_536;

/// Entries of `ATTACK_VIPS`: VIPs under attack at once.
pub const VIPS_ENTRIES: u32 = 1024;

/// What `ATTACK_PENDING` remembers of a SYN: a hash of (source, source
/// port, VIP, port) and the SYN's sequence number, see [`pending_key`].
pub type PendingKey = u64;

/// Value of `ATTACK_PENDING`, slot [`pending_slot`] of its key: the SYN
/// and when it was seen; `seen_ns` 0 is a free slot. An array, not a hash
/// map: a flood's SYN costs a slot overwrite, no allocation or eviction;
/// a SYN's retransmission, same key, lands on the same slot. Two CPUs
/// writing one slot at once may leave one's key with the other's time;
/// the worst of it is one SYN's retransmission not found (or found one
/// window early), as a collision would do.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingSlot {
    pub key: PendingKey,
    /// Data path clock when the SYN was seen (0: free).
    pub seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PendingSlot>() == 16);

/// The `ATTACK_PENDING` slot of `key`: its top bits after a multiplicative
/// mix (the sequence number alone spreads a flood of one tuple).
#[inline(always)]
pub fn pending_slot(key: PendingKey) -> u32 {
    // Truncation impossible: PENDING_BITS < 32 bits are left.
    #[allow(clippy::cast_possible_truncation)]
    let slot = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PENDING_BITS)) as u32;
    slot
}

/// [`PendingKey`] of a SYN: the tuple's 32-bit flow hash beside the SYN's
/// sequence number. A retransmitted SYN carries its first sending's
/// sequence number; a spoofer's repeat of a tuple with a fresh random one
/// matches by chance about once in 2^32, and its tuple hash must match too.
#[inline(always)]
pub fn pending_key(src: &Addr, dst: &Addr, sport: u16, dport: u16, seq: u32) -> PendingKey {
    let hash = crate::hash::flow_hash(src, dst, sport, dport, crate::proto::TCP);
    (u64::from(hash) << 32) | u64::from(seq)
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingSlot {}
}

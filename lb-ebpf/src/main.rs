//! The XDP programs of lb. Each `#[xdp]` entry is thin: it calls a `try_*`
//! function returning `Result<Verdict, Drop>` and turns the outcome into a
//! counted XDP action in one place.
//!
//! Built only for `bpfel-unknown-none` (`cargo xtask build-ebpf`); on the host
//! it is type-checked by clippy and nothing else.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(
    clippy::inline_always,
    reason = "BPF-to-BPF calls cannot pass packet pointers the verifier still trusts; \
              the data path is inlined into one function on purpose"
)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference into scratch memory; by value they would \
              be copied onto the 512-byte stack"
)]
#![allow(
    clippy::needless_pass_by_value,
    reason = "`#[xdp]` fixes the entry signature to take the context by value"
)]

mod attack;
mod balancer;
mod bench;
mod csum;
mod decap;
mod forward;
mod icmp;
mod keys;
mod maps;
mod packet;
mod parse;
mod reference;
mod sync;
mod trace;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::Reason;

/// What the program decided, and why (the counter to bump).
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    /// An `xdp_action` value.
    pub action: u32,
    /// The counter slot.
    pub reason: Reason,
}

impl Verdict {
    /// Hand the frame to the kernel stack untouched.
    pub const fn pass(reason: Reason) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }
}

/// A packet we refuse: dropped, and counted under its reason.
#[derive(Clone, Copy)]
pub(crate) struct Drop(pub Reason);

/// `Result<(), Drop>` in one register, for functions kept out of line (BPF
/// returns a single 64-bit value; aggregates would need a hidden pointer).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Status(u32);

impl Status {
    const OK: u32 = u32::MAX;

    /// Packs a result.
    #[inline(always)]
    pub fn from(result: Result<(), Drop>) -> Self {
        match result {
            Ok(()) => Self(Self::OK),
            Err(Drop(reason)) => Self(reason as u32),
        }
    }

    /// Unpacks it.
    #[inline(always)]
    pub fn get(self) -> Result<(), Drop> {
        if self.0 == Self::OK {
            return Ok(());
        }
        Err(Drop(
            Reason::from_slot(self.0).unwrap_or(Reason::DropMalformedEth),
        ))
    }
}

/// Counts a decision under its reason and returns its XDP action: the one
/// place where errors become verdicts. The reason rides above the action
/// (bits 8 and up) for `lb trace`; [`balancer::balance`] returns the action
/// alone (`trace::ACTION_MASK`).
#[inline(always)]
pub(crate) fn finish(result: Result<Verdict, Drop>) -> u32 {
    let verdict = match result {
        Ok(verdict) => verdict,
        Err(Drop(reason)) => Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        },
    };
    maps::count(verdict.reason);
    if cfg!(feature = "trace") {
        verdict.action | ((verdict.reason as u32) << 8)
    } else {
        verdict.action
    }
}

/// The load balancer, attached to the interfaces that receive VIP traffic.
#[xdp]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    balancer::balance(&ctx)
}

/// For backends of `tunnel` services: strips the tunnel header, then passes.
/// Keeps no counters: it must not depend on the balancer's maps.
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    match decap::try_decap(&ctx) {
        Ok(verdict) => verdict.action,
        Err(Drop(_)) => xdp_action::XDP_DROP,
    }
}

/// Benchmarks only: restores a saved frame, then tail-calls the program
/// under test (see `bench`).
#[xdp]
pub fn lb_bench(ctx: XdpContext) -> u32 {
    bench::bench(&ctx)
}

/// Benchmarks only: the restore alone, to subtract.
#[xdp]
pub fn lb_bench_baseline(ctx: XdpContext) -> u32 {
    bench::baseline(&ctx)
}

/// Benchmarks only: the floor program (swap MACs, `XDP_TX`), see
/// `bench::floor`.
#[xdp]
pub fn lb_floor(ctx: XdpContext) -> u32 {
    bench::floor(&ctx)
}

/// Benchmarks only: the forwarding floor (one VIP to one backend's MAC,
/// `XDP_TX`), see `bench::floor_forward`.
#[xdp]
pub fn lb_floor_fwd(ctx: XdpContext) -> u32 {
    bench::floor_forward(&ctx)
}

/// Benchmarks only: the reference balancer, IPIP (see `reference`).
#[xdp]
pub fn lb_ref_tunnel(ctx: XdpContext) -> u32 {
    reference::tunnel(&ctx)
}

/// Benchmarks only: the reference balancer, nat (see `reference`).
#[xdp]
pub fn lb_ref_nat(ctx: XdpContext) -> u32 {
    reference::nat(&ctx)
}

/// Benchmarks only: drops every frame. On the receiving end of a veth it
/// makes frames sent into the veth by XDP delivered (and discarded at once),
/// so a packets-per-second figure is the sender's, not the receiver's stack.
#[xdp]
pub fn lb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The kernel needs a GPL-compatible licence to allow GPL-only helpers.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the verifier rejects any program with a
    // reachable panic, so this only satisfies the `no_std` link.
    loop {}
}

/// On the host the crate is only type-checked (clippy); std provides the
/// runtime there, and this `main` is never run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

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
    clippy::needless_pass_by_value,
    reason = "`#[xdp]` fixes the entry signature to take the context by value"
)]

mod balancer;
mod maps;
mod packet;

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

/// The load balancer, attached to the interfaces that receive VIP traffic.
#[xdp]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    let verdict = match balancer::try_balance(&ctx) {
        Ok(verdict) => verdict,
        Err(Drop(reason)) => Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        },
    };
    maps::count(verdict.reason);
    verdict.action
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

//! Benchmark harness programs, never attached to an interface.
//!
//! `BPF_PROG_TEST_RUN` with `repeat` > 1 runs the program on one buffer, so
//! from the second run on a rewriting path would see its own output (a
//! NAT-ed or encapsulated frame). `lb_bench` puts the original frame back
//! first — head position and bytes, from `BENCH_FRAME` — then tail-calls the
//! program under test; `lb_bench_baseline` does the same restore and stops,
//! so its time is the wrapper's own cost, to subtract.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{Array, ProgramArray},
    programs::XdpContext,
};

use lb_common::maps::{BENCH_WORDS, BenchFrame, FloorHop};

use crate::packet::{read_at, write_at};

/// The saved frame (one entry).
#[map]
pub static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// `lb_floor_fwd`'s VIP and MACs (one entry).
#[map]
pub static FLOOR_HOP: Array<FloorHop> = Array::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map]
pub static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Restores the saved frame; false if there is none or it cannot be.
/// With `vary` set, the frame then gets this run's tuple ([`vary`]).
#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let Some(frame) = BENCH_FRAME.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the one entry of an array, valid for the program's life;
    // benchmarks run on one CPU.
    let frame = unsafe { &mut *frame };
    let want = frame.len as usize;
    let have = ctx.data_end() - ctx.data();
    if have != want {
        // A tunnel run left an outer header in front: move the head back.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "< 512"
        )]
        let delta = (have.wrapping_sub(want) as i32).clamp(-512, 512);
        // SAFETY: helper call on the live context; pointers re-derived below.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return false;
        }
    }
    for i in 0..BENCH_WORDS {
        if i * 8 >= want {
            break;
        }
        if write_at(ctx, i * 8, frame.words[i]).is_none() {
            return false;
        }
    }
    if frame.vary != 0 {
        let run = frame.runs;
        frame.runs = run.wrapping_add(1);
        return vary(ctx, frame.vary as usize, run);
    }
    true
}

/// Gives the IPv4 / TCP frame whose IP header is at `ip` a tuple of its
/// own for run `run`: a source address in 10.0.0.0/8, a source port of
/// 1024 and up and a sequence number, from one multiplicative hash of
/// `run` (a bijection whose 64 bits all land in the tuple, so no two runs
/// share one; random-looking to the tables). Checksums
/// are left stale: the balancer does not verify them.
#[inline(always)]
fn vary(ctx: &XdpContext, ip: usize, run: u64) -> bool {
    let mixed = run.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let high = (mixed >> 32) as u32;
    #[allow(clippy::cast_possible_truncation, reason = "the low half wanted")]
    let low = mixed as u32;
    let src = (0x0a00_0000 | (high >> 8)).to_be_bytes();
    #[allow(clippy::cast_possible_truncation, reason = "15 bits")]
    let port = (1024 | (high & 0x7fff) as u16).to_be_bytes();
    let ip = ip & 0xff;
    write_at(ctx, ip + 12, src).is_some()
        && write_at(ctx, ip + 20, port).is_some()
        && write_at(ctx, ip + 24, low.to_be_bytes()).is_some()
}

/// Restores the frame and runs the program under test.
#[inline(always)]
pub fn bench(ctx: &XdpContext) -> u32 {
    if !restore(ctx) {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call does not return on success; the context is valid.
    unsafe { BENCH_TARGET.tail_call(ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Restores the frame only: the wrapper's own cost.
#[inline(always)]
pub fn baseline(ctx: &XdpContext) -> u32 {
    if restore(ctx) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// The floor: the least any XDP forwarder does to a frame — swap the
/// Ethernet addresses and send it back out (`XDP_TX`). Timed through the same
/// wrapper as the balancer, it is what every path is reported above.
#[inline(always)]
pub fn floor(ctx: &XdpContext) -> u32 {
    let Some(macs) = read_at::<[u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    if write_at(ctx, 0, swapped).is_none() {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// The forwarding floor: IPv4 frames to `FLOOR_HOP`'s VIP get the backend's
/// MAC and go back out (`XDP_TX`); everything else passes. No parsing past
/// the destination address, no tables, no counters.
#[inline(always)]
pub fn floor_forward(ctx: &XdpContext) -> u32 {
    let Some(hop) = FLOOR_HOP.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // EtherType at 12, IPv4 destination at 14 + 16.
    let (Some(ether_type), Some(dst)) = (read_at::<[u8; 2]>(ctx, 12), read_at::<[u8; 4]>(ctx, 30))
    else {
        return xdp_action::XDP_PASS;
    };
    if ether_type != [0x08, 0x00] || dst != hop.vip {
        return xdp_action::XDP_PASS;
    }
    if write_at(ctx, 0, hop.dmac).is_none() || write_at(ctx, 6, hop.smac).is_none() {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_TX
}

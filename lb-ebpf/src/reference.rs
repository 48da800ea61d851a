//! Benchmarks only: the reference balancer. It does the work every XDP
//! balancer must do per established IPv4 packet and nothing more: parse
//! Ethernet, IPv4 and the ports, one LRU-hash lookup on the 5-tuple, then
//! IPIP encapsulation (`lb_ref_tunnel`) or a NAT rewrite with incremental
//! checksums (`lb_ref_nat`), and `XDP_TX`. No counters, no VLANs, no IPv6,
//! no IP options, no scheduling (a flow not in `REF_FLOWS` passes). The
//! bench reports lb's paths as ratios to it (docs/BENCHMARKS.md); it is
//! never attached to an interface.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, maps::LruHashMap,
    programs::XdpContext,
};
use lb_common::maps::{RefKey, RefValue};

use crate::{
    csum,
    packet::{read_at, write_at},
};

/// The reference's connection table. Small: the bench holds a flow or two,
/// and a lookup costs the same in a small table as in a large one.
#[map]
pub static REF_FLOWS: LruHashMap<RefKey, RefValue> = LruHashMap::with_max_entries(1024, 0);

/// Ethernet header length.
const ETH: usize = 14;
/// IPv4 header length (no options).
const IP: usize = 20;
/// The outer header IPIP adds.
const OUTER: u16 = 20;

/// The flow's value and the IPv4 header, or `None` for anything that is
/// not an IPv4 TCP / UDP packet of a known flow.
#[inline(always)]
fn lookup(ctx: &XdpContext) -> Option<(&'static RefValue, [u8; IP])> {
    if read_at::<[u8; 2]>(ctx, 12)? != [0x08, 0x00] {
        return None;
    }
    let ip = read_at::<[u8; IP]>(ctx, ETH)?;
    let proto = ip[9];
    if ip[0] != 0x45 || (proto != 6 && proto != 17) {
        return None;
    }
    let key = RefKey {
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        ports: read_at::<[u8; 4]>(ctx, ETH + IP)?,
        proto: u32::from(proto),
    };
    // SAFETY: map values stay valid for the program's run (RCU); an
    // eviction meanwhile is harmless to a benchmark.
    let value = unsafe { REF_FLOWS.get(&key) }?;
    Some((value, ip))
}

/// IPIP: a new outer IPv4 header to the backend (the inner TOS, TTL 64,
/// no ID, fragments allowed: the header lb writes), then `XDP_TX`.
#[inline(always)]
pub fn tunnel(ctx: &XdpContext) -> u32 {
    let Some((flow, ip)) = lookup(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let total = u16::from_be_bytes([ip[2], ip[3]])
        .wrapping_add(OUTER)
        .to_be_bytes();
    // SAFETY: helper call on the live context; bounds re-checked below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(OUTER)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let (s, d) = (flow.source, flow.backend);
    let mut outer = [
        0x45, ip[1], total[0], total[1], 0, 0, 0, 0, 64, 4, 0, 0, s[0], s[1], s[2], s[3], d[0],
        d[1], d[2], d[3],
    ];
    let sum = csum::ipv4_header(&outer).to_be_bytes();
    outer[10] = sum[0];
    outer[11] = sum[1];
    if write_at(ctx, 0, flow.macs).is_none()
        || write_at(ctx, 12, [0x08u8, 0x00]).is_none()
        || write_at(ctx, ETH, outer).is_none()
    {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// NAT: the destination address and port become the backend's, the IPv4
/// and TCP / UDP checksums updated incrementally, then `XDP_TX`.
#[inline(always)]
pub fn nat(ctx: &XdpContext) -> u32 {
    let Some((flow, ip)) = lookup(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let old_dst = [ip[16], ip[17], ip[18], ip[19]];
    let ip_sum = csum::replace(
        u16::from_be_bytes([ip[10], ip[11]]),
        &old_dst,
        &flow.backend,
    );
    // TCP's checksum is 16 bytes into its header, UDP's 6.
    let l4_sum_at = ETH + IP + if ip[9] == 6 { 16 } else { 6 };
    let (Some(old_port), Some(l4_sum)) = (
        read_at::<[u8; 2]>(ctx, ETH + IP + 2),
        read_at::<[u8; 2]>(ctx, l4_sum_at),
    ) else {
        return xdp_action::XDP_DROP;
    };
    let l4_sum = if ip[9] == 17 && l4_sum == [0, 0] {
        l4_sum
    } else {
        let sum = csum::replace(u16::from_be_bytes(l4_sum), &old_dst, &flow.backend);
        csum::replace(sum, &old_port, &flow.port).to_be_bytes()
    };
    if write_at(ctx, 0, flow.macs).is_none()
        || write_at(ctx, ETH + 10, ip_sum.to_be_bytes()).is_none()
        || write_at(ctx, ETH + 16, flow.backend).is_none()
        || write_at(ctx, ETH + IP + 2, flow.port).is_none()
        || write_at(ctx, l4_sum_at, l4_sum).is_none()
    {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

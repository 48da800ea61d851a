//! `lb_decap`, for backends of `tunnel` services: strips the outer IPv4 /
//! IPv6 header of IPIP, IP6IP6 and mixed-family tunnels and passes the inner
//! packet to the stack, so no `ipip` / `ip6_tunnel` kernel module is needed.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Reason, proto};

use crate::{
    Drop, Verdict,
    packet::{read_at, write_at},
    parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6},
};

/// Decapsulates a tunnelled packet; everything else passes untouched.
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Result<Verdict, Drop> {
    let eth: [u8; 14] = read_at(ctx, 0).ok_or(Drop(Reason::DropMalformedEth))?;
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3_off = 14;
    let mut tag = [0u8; 4];
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        tag = read_at(ctx, 14).ok_or(Drop(Reason::DropMalformedEth))?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3_off = 18;
    }
    let (outer_len, inner_proto) = match ether_type {
        ETH_P_IPV4 => {
            let header: [u8; 20] = read_at(ctx, l3_off).ok_or(Drop(Reason::DropMalformedIpv4))?;
            let frags = u16::from_be_bytes([header[6], header[7]]);
            // Fragmented tunnel packets are left to the stack to reassemble.
            if header[0] >> 4 != 4 || frags & 0x3fff != 0 {
                return Ok(Verdict::pass(Reason::PassNoService));
            }
            (usize::from(header[0] & 0x0f) * 4, header[9])
        }
        ETH_P_IPV6 => {
            let header: [u8; 40] = read_at(ctx, l3_off).ok_or(Drop(Reason::DropMalformedIpv6))?;
            (40, header[6])
        }
        _ => return Ok(Verdict::pass(Reason::PassNonIp)),
    };
    let inner_type = match inner_proto {
        proto::IPIP => ETH_P_IPV4,
        proto::IPV6 => ETH_P_IPV6,
        _ => return Ok(Verdict::pass(Reason::PassNoService)),
    };
    if outer_len < 20 {
        return Err(Drop(Reason::DropMalformedIpv4));
    }
    // The inner header must be there before anything is moved.
    read_at::<[u8; 20]>(ctx, l3_off + outer_len).ok_or(Drop(Reason::DropMalformedIpv4))?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "at most 60"
    )]
    let delta = outer_len as i32;
    // SAFETY: plain helper call on the live context; pointers are re-derived
    // (and re-checked) after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Drop(Reason::DropNoHeadroom));
    }
    let short = Drop(Reason::DropMalformedEth);
    let mut new_eth = eth;
    let type_bytes = inner_type.to_be_bytes();
    if l3_off == 18 {
        tag[2] = type_bytes[0];
        tag[3] = type_bytes[1];
        write_at(ctx, 14, tag).ok_or(short)?;
    } else {
        new_eth[12] = type_bytes[0];
        new_eth[13] = type_bytes[1];
    }
    write_at(ctx, 0, new_eth).ok_or(short)?;
    Ok(Verdict::pass(Reason::ForwardToBackend))
}

//! `lb_balancer`'s decision path: parse, find the service, decide.
//!
//! Only traffic for a service is ours. Anything else — non-IP frames, frames
//! for another MAC, packets to other addresses, even malformed ones — goes to
//! the kernel untouched. A packet for a VIP that is malformed or truncated is
//! dropped and counted, never forwarded half-parsed.

use lb_common::{Addr, Reason, ServiceKey, maps::ipv4_mapped, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    Drop, Verdict,
    maps::{IFACES, SERVICES, VIPS},
    packet::read_at,
};

use aya_ebpf::programs::XdpContext;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers skipped on the way to the transport header.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// More extension headers than this and the packet is refused: the verifier
/// needs a bound, and real traffic carries one or two at most.
const IPV6_MAX_EXT_HEADERS: usize = 4;

/// The network-layer facts of a packet addressed to a VIP.
struct IpPacket {
    /// Destination address in map form.
    dst: Addr,
    /// Transport protocol (after IPv6 extension headers).
    proto: u8,
    /// Offset of the transport header.
    l4_off: usize,
    /// A fragment of a larger datagram (first or later).
    fragment: bool,
}

/// Decides what happens to the frame in `ctx`.
#[inline(always)]
pub fn try_balance(ctx: &XdpContext) -> Result<Verdict, Drop> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(Drop(Reason::DropMalformedEth))?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // One tag: TCI (2 bytes), then the inner EtherType.
        let tag: [u8; 4] = read_at(ctx, l3_off).ok_or(Drop(Reason::DropMalformedEth))?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3_off += 4;
    }
    if ether_type != ETH_P_IPV4 && ether_type != ETH_P_IPV6 {
        return Ok(Verdict::pass(Reason::PassNonIp));
    }
    if !for_this_host(ctx, &eth.dst_addr) {
        return Ok(Verdict::pass(Reason::PassOtherMac));
    }
    let parsed = if ether_type == ETH_P_IPV4 {
        parse_ipv4(ctx, l3_off)?
    } else {
        parse_ipv6(ctx, l3_off)?
    };
    let Some(ip) = parsed else {
        return Ok(Verdict::pass(Reason::PassNoService));
    };
    if ip.fragment {
        return Err(Drop(Reason::DropFragment));
    }
    let port = match ip.proto {
        proto::TCP => {
            let tcp: TcpHdr = read_at(ctx, ip.l4_off).ok_or(Drop(Reason::DropMalformedTcp))?;
            let header_len = usize::from(tcp.doff()) * 4;
            if header_len < TcpHdr::LEN || !fits(ctx, ip.l4_off, header_len) {
                return Err(Drop(Reason::DropMalformedTcp));
            }
            u16::from_be_bytes(tcp.dest)
        }
        proto::UDP => {
            let udp: UdpHdr = read_at(ctx, ip.l4_off).ok_or(Drop(Reason::DropMalformedUdp))?;
            u16::from_be_bytes(udp.dst)
        }
        proto::ICMP | proto::ICMPV6 => {
            // Type, code, checksum and the four bytes every ICMP message has.
            let _: [u8; 8] = read_at(ctx, ip.l4_off).ok_or(Drop(Reason::DropMalformedIcmp))?;
            return Ok(Verdict::pass(Reason::PassIcmpToVip));
        }
        _ => return Ok(Verdict::pass(Reason::PassNoService)),
    };
    if find_service(ip.dst, port, ip.proto) {
        Ok(Verdict::pass(Reason::PassServiceMatched))
    } else {
        Ok(Verdict::pass(Reason::PassNoService))
    }
}

/// Exact (vip, port, proto) first, then the all-port service (vip, 0, proto).
#[inline(always)]
fn find_service(vip: Addr, port: u16, proto: u8) -> bool {
    let exact = ServiceKey::new(vip, port, proto);
    // SAFETY: the value is only tested for presence, never held across a
    // map update.
    if unsafe { SERVICES.get(exact) }.is_some() {
        return true;
    }
    let any_port = ServiceKey::new(vip, 0, proto);
    // SAFETY: as above.
    unsafe { SERVICES.get(any_port) }.is_some()
}

/// False for a unicast frame addressed to another MAC than the receiving
/// interface's own. Interfaces not in `IFACES` (not configured) accept all.
#[inline(always)]
fn for_this_host(ctx: &XdpContext, dst_mac: &[u8; 6]) -> bool {
    if dst_mac[0] & 1 == 1 {
        return true; // broadcast or multicast
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out before anything else touches the map.
    match unsafe { IFACES.get(ifindex) } {
        Some(iface) => iface.mac == *dst_mac,
        None => true,
    }
}

/// True when `len` bytes starting at `off` lie inside the frame.
#[inline(always)]
fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

/// `Some` for a well-formed IPv4 packet to a VIP, `None` for one to any other
/// address (which the stack gets untouched, malformed or not).
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<Option<IpPacket>, Drop> {
    let ip: Ipv4Hdr = read_at(ctx, off).ok_or(Drop(Reason::DropMalformedIpv4))?;
    let dst = ipv4_mapped(ip.dst_addr);
    // SAFETY: presence test only.
    if unsafe { VIPS.get(dst) }.is_none() {
        return Ok(None);
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || !fits(ctx, off, total_len)
    {
        return Err(Drop(Reason::DropMalformedIpv4));
    }
    let frags = u16::from_be_bytes(ip.frags);
    Ok(Some(IpPacket {
        dst,
        proto: ip.proto,
        l4_off: off + header_len,
        // More-fragments flag or a non-zero offset.
        fragment: frags & 0x3fff != 0,
    }))
}

/// As [`parse_ipv4`], for IPv6; skips up to [`IPV6_MAX_EXT_HEADERS`]
/// extension headers.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<Option<IpPacket>, Drop> {
    let ip: Ipv6Hdr = read_at(ctx, off).ok_or(Drop(Reason::DropMalformedIpv6))?;
    // SAFETY: presence test only.
    if unsafe { VIPS.get(ip.dst_addr) }.is_none() {
        return Ok(None);
    }
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.vcf[0] >> 4 != 6 || !fits(ctx, off, Ipv6Hdr::LEN + payload_len) {
        return Err(Drop(Reason::DropMalformedIpv6));
    }
    let mut packet = IpPacket {
        dst: ip.dst_addr,
        proto: ip.next_hdr,
        l4_off: off + Ipv6Hdr::LEN,
        fragment: false,
    };
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match packet.proto {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                // Next header, length in 8-octet units not counting the first.
                let ext: [u8; 2] =
                    read_at(ctx, packet.l4_off).ok_or(Drop(Reason::DropMalformedIpv6))?;
                packet.proto = ext[0];
                packet.l4_off += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 8] =
                    read_at(ctx, packet.l4_off).ok_or(Drop(Reason::DropMalformedIpv6))?;
                packet.proto = ext[0];
                packet.l4_off += 8;
                packet.fragment = true;
            }
            _ => return Ok(Some(packet)),
        }
    }
    Err(Drop(Reason::DropMalformedIpv6))
}

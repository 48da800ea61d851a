//! Ethernet (one VLAN tag), IPv4 (IHL honoured), IPv6 (extension headers
//! skipped) and the transport header, into a [`Packet`].
//!
//! Only traffic for a VIP is ours. A malformed packet to any other address
//! goes to the stack untouched; a malformed packet to a VIP is dropped and
//! counted under the header that was wrong (`Parsed::Malformed`: the caller
//! decides which, once it knows whether the destination is a VIP).

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, Reason, maps::is_ipv4_mapped, proto};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    ip::Ipv6Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    Drop, keys,
    maps::{IFACE_SLOTS, IFACES, Scratch},
    packet::{fits, read_at, read_into},
};

/// Ethernet types in host order, from network-types' `EtherType` (network
/// order).
pub const ETH_P_IPV4: u16 = u16::from_be(EtherType::Ipv4 as u16);
pub const ETH_P_IPV6: u16 = u16::from_be(EtherType::Ipv6 as u16);
pub const ETH_P_8021Q: u16 = u16::from_be(EtherType::Ieee8021q as u16);
pub const ETH_P_8021AD: u16 = u16::from_be(EtherType::Ieee8021ad as u16);

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// More extension headers than this and the packet is refused: the verifier
/// needs a bound, and real traffic carries one or two at most.
const IPV6_MAX_EXT_HEADERS: usize = 4;

/// What the parser learnt about an IP packet. Lives in the per-CPU
/// [`Scratch`] map, not on the 512-byte stack.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the IP header (14, or 18 behind a VLAN tag). Stored as u16:
    /// loaded back from the map it is then known to be non-negative and
    /// below 64 KiB, which the verifier needs to accept offset arithmetic.
    pub l3: u16,
    /// Offset of the transport header (u16 for the same reason).
    pub l4: u16,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Source address, map form.
    pub src: Addr,
    /// Destination address, map form.
    pub dst: Addr,
    /// Source port (TCP/UDP), else 0.
    pub sport: u16,
    /// Destination port (TCP/UDP), else 0.
    pub dport: u16,
    /// A transport header is present (false for non-first fragments and
    /// protocols other than TCP, UDP, ICMP).
    pub has_l4: bool,
    /// Part of a fragmented datagram.
    pub fragment: bool,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 otherwise.
    pub tcp_flags: u8,
    /// TCP sequence number; 0 otherwise. A SYN's retransmission carries
    /// its first sending's (`guard.attack` tells them apart by it).
    pub tcp_seq: u32,
    /// Bytes from the IP header to the end of the IP packet.
    pub ip_len: u16,
}

impl Packet {
    /// Offset of the IP header.
    #[inline(always)]
    pub fn l3_off(&self) -> usize {
        usize::from(self.l3)
    }

    /// Offset of the transport header.
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        usize::from(self.l4)
    }
}

/// The parser's verdict; the packet itself is in [`Scratch::packet`].
///
/// The parser does no map lookup but the interface's MAC: whether the
/// destination is a VIP is decided after it, by the caller, so the common
/// cases (a service's packet, host traffic) each cost one lookup at most.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Parsed {
    /// Not IPv4 / IPv6.
    NotIp = 0,
    /// Unicast for another MAC address.
    OtherMac = 1,
    /// IP that is never a VIP's (IPv6 to an IPv4-mapped address): the
    /// stack's business, whatever its state.
    NotOurs = 2,
    /// IP whose destination was read but which is malformed after it:
    /// dropped under [`Scratch::malformed`] if it is to a VIP, the stack's
    /// business otherwise.
    Malformed = 3,
    /// IP, well formed.
    Ip = 4,
}

/// Parses the frame in `ctx` into `scratch.packet`.
///
/// Inlined: a BPF-to-BPF call costs its return, and on CPUs whose kernel
/// mitigates return-stack attacks (SRSO "Safe RET", retbleed return thunks)
/// a return is 5–8 ns — more than the parse itself (docs/BENCHMARKS.md).
#[inline(always)]
pub fn parse(ctx: &XdpContext, scratch: &mut Scratch) -> ParseResult {
    ParseResult::from(try_parse(ctx, scratch))
}

/// `Result<Parsed, Drop>` in one register: the `Parsed` discriminant, or
/// `DROPPED` plus the reason's slot.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct ParseResult(u32);

impl ParseResult {
    const DROPPED: u32 = 0x100;

    #[inline(always)]
    fn from(result: Result<Parsed, Drop>) -> Self {
        match result {
            Ok(parsed) => Self(parsed as u32),
            Err(Drop(reason)) => Self(Self::DROPPED + reason as u32),
        }
    }

    /// Unpacks it.
    #[inline(always)]
    pub fn get(self) -> Result<Parsed, Drop> {
        match self.0 {
            0 => Ok(Parsed::NotIp),
            1 => Ok(Parsed::OtherMac),
            2 => Ok(Parsed::NotOurs),
            3 => Ok(Parsed::Malformed),
            4 => Ok(Parsed::Ip),
            other => Err(Drop(
                Reason::from_slot(other.wrapping_sub(Self::DROPPED))
                    .unwrap_or(Reason::DropMalformedEth),
            )),
        }
    }
}

#[inline(always)]
fn try_parse(ctx: &XdpContext, scratch: &mut Scratch) -> Result<Parsed, Drop> {
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
        return Ok(Parsed::NotIp);
    }
    if !for_this_host(ctx, &eth.dst_addr) {
        return Ok(Parsed::OtherMac);
    }
    let ip = if ether_type == ETH_P_IPV6 {
        parse_ipv6(ctx, l3_off, &mut scratch.packet)?
    } else {
        parse_ipv4(ctx, l3_off, &mut scratch.packet)?
    };
    let reason = match ip {
        Ip::NotOurs => return Ok(Parsed::NotOurs),
        Ip::MalformedIpv4 => Reason::DropMalformedIpv4,
        Ip::MalformedIpv6 => Reason::DropMalformedIpv6,
        Ip::Ok => match parse_l4(ctx, &mut scratch.packet) {
            Ok(()) => return Ok(Parsed::Ip),
            Err(reason) => reason,
        },
    };
    scratch.malformed = reason as u32;
    Ok(Parsed::Malformed)
}

/// What the IP header said. Fieldless on purpose: enums with payloads may
/// carry undefined bytes that LLVM moves through registers the verifier
/// then refuses to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ip {
    /// Never a VIP's.
    NotOurs,
    /// The IPv4 header is inconsistent (its destination is in the packet).
    MalformedIpv4,
    /// The IPv6 header is inconsistent (its destination is in the packet).
    MalformedIpv6,
    /// Well formed so far.
    Ok,
}

/// False for a group-addressed frame, or a unicast one addressed to another
/// MAC than the receiving interface's own. Interfaces not in `IFACES` (not
/// configured) accept any unicast frame.
#[inline(always)]
fn for_this_host(ctx: &XdpContext, dst_mac: &[u8; 6]) -> bool {
    // Broadcast and multicast frames are never balanced: unicast IP inside a
    // group-addressed frame would otherwise be forwarded by every balancer
    // on the segment (Linux forwarding and IPVS ignore it too).
    if dst_mac[0] & 1 == 1 {
        return false;
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    if let Some(slot) = IFACE_SLOTS.get(ifindex % lb_common::maps::IFACE_SLOTS)
        && slot.ifindex == ifindex
    {
        return slot.mac == *dst_mac;
    }
    // SAFETY: the value is compared at once, never held across a map update.
    match unsafe { IFACES.get(ifindex) } {
        Some(iface) => iface.mac == *dst_mac,
        None => true,
    }
}

/// Fills `packet` from an IPv4 header. Whether a malformed header matters
/// (to a VIP) is the caller's decision; a header too short to hold the
/// destination is refused outright.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, packet: &mut Packet) -> Result<Ip, Drop> {
    let ip: Ipv4Hdr = read_at(ctx, off).ok_or(Drop(Reason::DropMalformedIpv4))?;
    keys::set_mapped(&mut packet.dst, ip.dst_addr);
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = u16::from_be_bytes(ip.tot_len);
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || usize::from(total_len) < header_len
        || !fits(ctx, off, usize::from(total_len))
    {
        return Ok(Ip::MalformedIpv4);
    }
    // A multicast, reserved or broadcast source (224.0.0.0 and up) is never
    // a client.
    if ip.src_addr[0] >= 224 {
        return Ok(Ip::MalformedIpv4);
    }
    let frags = u16::from_be_bytes(ip.frags);
    packet.l3 = offset(off);
    packet.l4 = offset(off + header_len);
    packet.v6 = false;
    packet.proto = ip.proto;
    keys::set_mapped(&mut packet.src, ip.src_addr);
    packet.sport = 0;
    packet.dport = 0;
    packet.tcp_flags = 0;
    packet.tcp_seq = 0;
    // Only the first fragment carries the transport header.
    // (A mask, not `trailing_zeros`: BPF has no count-trailing-zeros.)
    #[allow(clippy::verbose_bit_mask, reason = "see above")]
    let first_fragment = frags & 0x1fff == 0;
    packet.has_l4 = first_fragment;
    // More-fragments flag or a non-zero offset.
    packet.fragment = frags & 0x3fff != 0;
    packet.ip_len = total_len;
    Ok(Ip::Ok)
}

/// As [`parse_ipv4`], for IPv6; skips up to [`IPV6_MAX_EXT_HEADERS`]
/// extension headers.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, packet: &mut Packet) -> Result<Ip, Drop> {
    // Version, traffic class, flow label, payload length, next header.
    let start: [u8; 8] = read_at(ctx, off).ok_or(Drop(Reason::DropMalformedIpv6))?;
    if !read_into(ctx, off + 24, &mut packet.dst) || !read_into(ctx, off + 8, &mut packet.src) {
        return Err(Drop(Reason::DropMalformedIpv6));
    }
    // The maps hold IPv4 addresses in IPv4-mapped form: an IPv6 packet to or
    // from such an address must never be taken for IPv4 VIP or backend
    // traffic. To one, it is not ours.
    if is_ipv4_mapped(&packet.dst) {
        return Ok(Ip::NotOurs);
    }
    // From one (never valid on the wire, RFC 4291 §2.5.5.2), or from a
    // multicast address (never a source, §2.7).
    if is_ipv4_mapped(&packet.src) || packet.src[0] == 0xff {
        return Ok(Ip::MalformedIpv6);
    }
    let payload_len = u16::from_be_bytes([start[4], start[5]]);
    if start[0] >> 4 != 6 || payload_len > 0xffff - 40 {
        return Ok(Ip::MalformedIpv6);
    }
    #[allow(clippy::cast_possible_truncation, reason = "40 fits u16")]
    let ip_len = payload_len + Ipv6Hdr::LEN as u16;
    if !fits(ctx, off, usize::from(ip_len)) {
        return Ok(Ip::MalformedIpv6);
    }
    packet.l3 = offset(off);
    let mut l4 = off + Ipv6Hdr::LEN;
    packet.v6 = true;
    packet.proto = start[6];
    packet.sport = 0;
    packet.dport = 0;
    packet.tcp_flags = 0;
    packet.tcp_seq = 0;
    packet.has_l4 = true;
    packet.fragment = false;
    packet.ip_len = ip_len;
    let ip_end = off + usize::from(ip_len);
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match packet.proto {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                // Next header, length in 8-octet units not counting the first.
                let Some(ext) = read_at::<[u8; 2]>(ctx, l4) else {
                    return Ok(Ip::MalformedIpv6);
                };
                if l4 + (usize::from(ext[1]) + 1) * 8 > ip_end {
                    return Ok(Ip::MalformedIpv6);
                }
                packet.proto = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = read_at::<[u8; 4]>(ctx, l4) else {
                    return Ok(Ip::MalformedIpv6);
                };
                if l4 + 8 > ip_end {
                    return Ok(Ip::MalformedIpv6);
                }
                packet.proto = ext[0];
                l4 += 8;
                packet.fragment = true;
                // Fragment offset (13 bits, in 8-octet units) of zero: the
                // first fragment, which carries the transport header.
                packet.has_l4 = u16::from_be_bytes([ext[2], ext[3]]) >> 3 == 0;
            }
            _ => {
                packet.l4 = offset(l4);
                return Ok(Ip::Ok);
            }
        }
    }
    Ok(Ip::MalformedIpv6)
}

/// Reads the transport ports; `Err` names the header that is cut short.
/// Headers must end inside the IP packet, not merely inside the frame: bytes
/// after it (Ethernet padding of short frames) are not part of the packet.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, packet: &mut Packet) -> Result<(), Reason> {
    if !packet.has_l4 {
        return Ok(());
    }
    let l4 = packet.l4_off();
    let ip_end = packet.l3_off() + usize::from(packet.ip_len);
    match packet.proto {
        proto::TCP => {
            // Ports, sequence numbers, data offset and flags: the rest of
            // the header lies inside the IP packet, which `parse_ipv4` /
            // `parse_ipv6` found inside the frame.
            let tcp: [u8; 14] = read_at(ctx, l4).ok_or(Reason::DropMalformedTcp)?;
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < TcpHdr::LEN || l4 + header_len > ip_end {
                return Err(Reason::DropMalformedTcp);
            }
            packet.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            packet.tcp_flags = tcp[13];
            packet.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        }
        proto::UDP => {
            let udp: UdpHdr = read_at(ctx, l4).ok_or(Reason::DropMalformedUdp)?;
            let length = usize::from(u16::from_be_bytes(udp.len));
            // A fragment's UDP length covers the whole datagram.
            let length_ok = packet.fragment || (length >= UdpHdr::LEN && l4 + length <= ip_end);
            if l4 + UdpHdr::LEN > ip_end || !length_ok {
                return Err(Reason::DropMalformedUdp);
            }
            packet.sport = u16::from_be_bytes(udp.src);
            packet.dport = u16::from_be_bytes(udp.dst);
        }
        proto::ICMP | proto::ICMPV6 => {
            // Type, code, checksum and the four bytes every message has.
            read_at::<[u8; 8]>(ctx, l4).ok_or(Reason::DropMalformedIcmp)?;
            if l4 + 8 > ip_end {
                return Err(Reason::DropMalformedIcmp);
            }
        }
        _ => packet.has_l4 = false,
    }
    Ok(())
}

/// An offset as stored in [`Packet`]; offsets past `MAX_OFFSET` are never
/// read through (`ptr_at` refuses them), so saturating is harmless.
#[inline(always)]
fn offset(off: usize) -> u16 {
    u16::try_from(off).unwrap_or(u16::MAX)
}

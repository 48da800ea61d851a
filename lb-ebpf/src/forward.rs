//! Sending a packet on: address rewrites with incremental checksums (NAT),
//! IPIP / IP6IP6 encapsulation (tunnel), and the next hop from
//! `bpf_fib_lookup` (MACs, then `XDP_TX` or a devmap redirect).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{Addr, HopValue, Reason, hash::tunnel_hash, proto};

use crate::{
    Drop, Status, Verdict, csum,
    maps::{DEVMAP, SETTINGS, Scratch},
    packet::{bytes_at, frame_len, ptr_at, read_at, write_at},
    parse::Packet,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where `bpf_fib_lookup` says a packet goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Out of `Hop::ifindex`, with `Hop`'s MACs.
    Out,
    /// Routable, but the neighbour is not resolved yet.
    NoNeighbour,
    /// The destination is this host.
    Local,
    /// Unreachable, blackhole, prohibited, forwarding disabled, ...
    NoRoute,
    /// Longer than the egress MTU (`scratch.fib`'s `mtu_result`).
    TooBig,
}

/// The egress interface and MACs of a [`NextHop::Out`].
#[derive(Clone, Copy, Default)]
pub struct Hop {
    /// Egress interface.
    pub ifindex: u32,
    /// The Ethernet header's first 12 bytes: the next hop's MAC, then ours
    /// on the egress interface.
    pub macs: [u8; 12],
}

impl Hop {
    /// `hop`'s interface and MACs, copied in whole words.
    #[inline(always)]
    pub fn of(hop: &HopValue) -> Self {
        const DMAC: usize = core::mem::offset_of!(HopValue, dmac);
        const _: () = assert!(core::mem::offset_of!(HopValue, smac) == DMAC + 6);
        // SAFETY: `dmac` and `smac` are adjacent byte arrays (asserted):
        // 12 bytes inside `*hop`.
        let macs = unsafe {
            core::ptr::from_ref(hop)
                .cast::<u8>()
                .add(DMAC)
                .cast::<[u8; 12]>()
                .read_unaligned()
        };
        Self {
            ifindex: hop.ifindex,
            macs,
        }
    }
}

/// What `next_hop` is asked.
#[derive(Clone, Copy)]
pub struct FibQuery {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// IP length of the packet as it will leave.
    pub ip_len: u16,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
}

/// Asks the kernel's FIB where `scratch.query` goes, filling `scratch.hop`
/// when it goes out. Out of line: one copy of the helper call for every path.
#[inline(never)]
pub fn next_hop(ctx: &XdpContext, scratch: &mut Scratch) -> NextHop {
    let query = &scratch.query;
    let params = &mut scratch.fib;
    // SAFETY: `params` points to a whole, writable bpf_fib_lookup; all-zero
    // is its documented initial state.
    unsafe { core::ptr::write_bytes(core::ptr::from_mut(params), 0, 1) };
    #[allow(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;
    params.__bindgen_anon_1.tot_len = query.ip_len;
    if query.v6 {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&query.src);
        params.__bindgen_anon_4.ipv6_dst = words(&query.dst);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = v4_word(&query.src);
        params.__bindgen_anon_4.ipv4_dst = v4_word(&query.dst);
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "the struct is 64 bytes"
    )]
    let size = core::mem::size_of::<FibParams>() as i32;
    // SAFETY: `params` is a valid, initialised bpf_fib_lookup of `size` bytes
    // (in a map value, which the helper accepts) and `ctx.ctx` the live
    // xdp_md.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), core::ptr::from_mut(params), size, 0) };
    #[allow(
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation,
        reason = "return codes are small and non-negative"
    )]
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let (dmac, smac) = (&scratch.fib.dmac, &scratch.fib.smac);
            scratch.hop = Hop {
                ifindex: scratch.fib.ifindex,
                macs: [
                    dmac[0], dmac[1], dmac[2], dmac[3], dmac[4], dmac[5], smac[0], smac[1],
                    smac[2], smac[3], smac[4], smac[5],
                ],
            };
            NextHop::Out
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeighbour,
        BPF_FIB_LKUP_RET_NOT_FWDED => NextHop::Local,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => NextHop::TooBig,
        _ => NextHop::NoRoute,
    }
}

/// Writes the MACs and sends the frame: `XDP_TX` back out of the interface it
/// came in on, or a redirect through `DEVMAP` to another.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, hop: &Hop, reason: Reason) -> Result<Verdict, Drop> {
    write_at(ctx, 0, hop.macs).ok_or(Drop(Reason::DropMalformedEth))?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(Verdict {
            action: xdp_action::XDP_TX,
            reason,
        });
    }
    match DEVMAP.redirect(hop.ifindex, 0) {
        Ok(action) => Ok(Verdict { action, reason }),
        Err(_) => Err(Drop(Reason::DropRedirect)),
    }
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Source address and port (the reply path).
    Source,
    /// Destination address and port (towards a backend).
    Destination,
}

/// Rewrites one end's address, and its port unless `port` is 0, updating
/// the IPv4 header checksum and the TCP / UDP checksum (whose pseudo-header
/// covers the addresses) incrementally.
///
/// Out of line, like [`encapsulate`]: a stack frame of its own.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, packet: &Packet, end: End, addr: &Addr, port: u16) -> Status {
    Status::from(try_rewrite(ctx, packet, end, addr, port))
}

#[inline(always)]
fn try_rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    end: End,
    addr: &Addr,
    port: u16,
) -> Result<(), Drop> {
    if packet.v6 {
        rewrite_v6(ctx, packet, end, addr, port)
    } else {
        rewrite_v4(ctx, packet, end, addr, port)
    }
}

/// [`rewrite`] for IPv6: no header checksum; the TCP / UDP checksum covers
/// the addresses.
#[inline(always)]
fn rewrite_v6(
    ctx: &XdpContext,
    packet: &Packet,
    end: End,
    addr: &Addr,
    port: u16,
) -> Result<(), Drop> {
    let malformed = Drop(Reason::DropMalformedIpv6);
    // Fields are changed in place through `bytes_at`, never copied to the
    // stack: this function's frame adds to the deepest call chain.
    let l4_checksum = match (packet.has_l4, packet.proto) {
        (true, proto::TCP) => Some(bytes_at::<2>(ctx, packet.l4_off() + 16).ok_or(malformed)?),
        (true, proto::UDP) => Some(bytes_at::<2>(ctx, packet.l4_off() + 6).ok_or(malformed)?),
        _ => None,
    };
    let mut sum = l4_checksum.as_ref().map(|c| u16::from_be_bytes(**c));
    let off = packet.l3_off() + if end == End::Source { 8 } else { 24 };
    let field = bytes_at::<16>(ctx, off).ok_or(malformed)?;
    sum = sum.map(|c| csum::replace(c, field, addr));
    *field = *addr;
    if port != 0 && packet.has_l4 && (packet.proto == proto::TCP || packet.proto == proto::UDP) {
        let off = packet.l4_off() + if end == End::Source { 0 } else { 2 };
        let field = bytes_at::<2>(ctx, off).ok_or(malformed)?;
        let new = port.to_be_bytes();
        sum = sum.map(|c| csum::replace(c, field, &new));
        *field = new;
    }
    if let (Some(field), Some(checksum)) = (l4_checksum, sum) {
        // A computed UDP checksum of zero is sent as all ones.
        let checksum = if packet.proto == proto::UDP && checksum == 0 {
            0xffff
        } else {
            checksum
        };
        *field = checksum.to_be_bytes();
    }
    Ok(())
}

/// [`rewrite`] for IPv4, the common case kept short: the address and port
/// are read and written as whole words, both checksums take one delta, and
/// the arithmetic stays in the machine's byte order (a one's-complement sum
/// is the same in either order, RFC 1071 §2(B)).
#[inline(always)]
#[allow(
    clippy::cast_ptr_alignment,
    reason = "every access through these pointers is read_unaligned / write_unaligned"
)]
pub fn rewrite_v4(
    ctx: &XdpContext,
    packet: &Packet,
    end: End,
    addr: &Addr,
    port: u16,
) -> Result<(), Drop> {
    let malformed = Drop(Reason::DropMalformedIpv4);
    // One bounds check for the fixed header, one for the transport fields.
    let ip = ptr_at::<[u8; 20]>(ctx, packet.l3_off()).ok_or(malformed)?;
    let new_addr = u32::from_ne_bytes(v4_bytes(addr));
    let addr_off = if end == End::Source { 12 } else { 16 };
    // SAFETY: `ptr_at` checked the 20 bytes lie inside the frame; the
    // fields are inside them; packet memory is writable and unaligned
    // access is allowed (see `ptr_at`).
    let delta = unsafe {
        let field = ip.cast::<u8>().add(addr_off).cast::<u32>();
        let checksum = ip.cast::<u8>().add(10).cast::<u16>();
        let old = field.read_unaligned();
        field.write_unaligned(new_addr);
        let delta = csum::words(!old) + csum::words(new_addr);
        checksum.write_unaligned(csum::apply(checksum.read_unaligned(), delta));
        delta
    };
    if !packet.has_l4 {
        return Ok(());
    }
    let l4 = packet.l4_off();
    let (fields, checksum_off, udp) = match packet.proto {
        proto::TCP => (
            ptr_at::<[u8; 18]>(ctx, l4).map(<*mut [u8; 18]>::cast::<u8>),
            16,
            false,
        ),
        proto::UDP => (
            ptr_at::<[u8; 8]>(ctx, l4).map(<*mut [u8; 8]>::cast::<u8>),
            6,
            true,
        ),
        _ => return Ok(()),
    };
    let fields = fields.ok_or(malformed)?;
    // SAFETY: as above, within the 18 (TCP) or 8 (UDP) bytes checked.
    unsafe {
        let mut delta = delta;
        if port != 0 {
            let field = fields
                .add(if end == End::Source { 0 } else { 2 })
                .cast::<u16>();
            let new_port = port.to_be();
            delta += u32::from(!field.read_unaligned()) + u32::from(new_port);
            field.write_unaligned(new_port);
        }
        let checksum = fields.add(checksum_off).cast::<u16>();
        let old = checksum.read_unaligned();
        // An IPv4 UDP checksum of zero means "none" and stays so; a computed
        // one of zero is sent as all ones (both the same in either order).
        if udp && old == 0 {
            return Ok(());
        }
        let new = csum::apply(old, delta);
        checksum.write_unaligned(if udp && new == 0 { 0xffff } else { new });
    }
    Ok(())
}

/// Encapsulates the IP packet in an outer IPv4 (IPIP) or IPv6 (IP6IP6)
/// header to `backend`, keeping the Ethernet header (and VLAN tag) in front.
/// The outer source is taken from the configured tunnel prefix, its host bits
/// varied by the packet's `tunnel_hash` so the backend's NIC spreads flows
/// over its queues (RSS); with no host bits the hash is not computed.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, packet: &Packet, backend: &Addr) -> Status {
    Status::from(try_encapsulate(ctx, packet, backend))
}

#[inline(always)]
fn try_encapsulate(ctx: &XdpContext, packet: &Packet, backend: &Addr) -> Result<(), Drop> {
    let outer_len: usize = if packet.v6 { 40 } else { 20 };
    let eth: [u8; 14] = read_at(ctx, 0).ok_or(Drop(Reason::DropMalformedEth))?;
    let vlan_tag: Option<[u8; 4]> = if packet.l3_off() == 18 {
        Some(read_at(ctx, 14).ok_or(Drop(Reason::DropMalformedEth))?)
    } else {
        None
    };
    let first: [u8; 2] = read_at(ctx, packet.l3_off()).ok_or(Drop(Reason::DropMalformedEth))?;
    let inner_len = packet.ip_len;
    #[allow(
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation,
        reason = "20 or 40"
    )]
    let delta = -(outer_len as i32);
    // SAFETY: plain helper call on the live context; every pointer into the
    // frame is re-derived (and re-checked) after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Drop(Reason::DropNoHeadroom));
    }
    let short = Drop(Reason::DropNoHeadroom);
    write_at(ctx, 0, eth).ok_or(short)?;
    if let Some(tag) = vlan_tag {
        write_at(ctx, 14, tag).ok_or(short)?;
    }
    let settings = SETTINGS.get(0).ok_or(Drop(Reason::DropNoRoute))?;
    let off = packet.l3_off();
    if packet.v6 {
        let mut source = settings.tunnel_v6_source;
        let varied = vary(
            u32::from_be_bytes([source[12], source[13], source[14], source[15]]),
            settings.tunnel_v6_host_bits,
            packet,
        )
        .to_be_bytes();
        source[12] = varied[0];
        source[13] = varied[1];
        source[14] = varied[2];
        source[15] = varied[3];
        // Version 6, the inner traffic class carried over, no flow label.
        let header_start = [0x60 | (first[0] & 0x0f), first[1] & 0xf0, 0, 0];
        write_at(ctx, off, header_start).ok_or(short)?;
        write_at(ctx, off + 4, inner_len.to_be_bytes()).ok_or(short)?;
        write_at(ctx, off + 6, [proto::IPV6, 64u8]).ok_or(short)?;
        write_at(ctx, off + 8, source).ok_or(short)?;
        write_at(ctx, off + 24, *backend).ok_or(short)?;
    } else {
        let source = vary(
            u32::from_be_bytes(settings.tunnel_v4_source),
            settings.tunnel_v4_host_bits,
            packet,
        )
        .to_be_bytes();
        #[allow(clippy::cast_possible_truncation, reason = "20")]
        let total = inner_len.wrapping_add(outer_len as u16);
        let header = ipv4_header(first[1], total, proto::IPIP, source, v4_bytes(backend));
        write_at(ctx, off, header).ok_or(short)?;
    }
    // The frame must still hold the whole inner packet.
    if frame_len(ctx) < off + outer_len + usize::from(inner_len) {
        return Err(short);
    }
    Ok(())
}

/// A 20-byte IPv4 header (no options, no fragmentation, TTL 64) with its
/// checksum.
#[inline(always)]
pub fn ipv4_header(tos: u8, total: u16, proto: u8, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let total = total.to_be_bytes();
    let mut header = [
        0x45, tos, total[0], total[1], 0, 0, 0, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let checksum = csum::ipv4_header(&header).to_be_bytes();
    header[10] = checksum[0];
    header[11] = checksum[1];
    header
}

/// `base` with its low `host_bits` replaced by those of `packet`'s
/// `tunnel_hash`.
#[inline(always)]
fn vary(base: u32, host_bits: u32, packet: &Packet) -> u32 {
    if host_bits == 0 {
        return base;
    }
    let hash = tunnel_hash(&packet.src, packet.sport, packet.dport);
    let mask = if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    (base & !mask) | (hash & mask)
}

/// The IPv4 address inside a mapped address.
#[inline(always)]
pub fn v4_bytes(addr: &Addr) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

/// The IPv4 address as the FIB wants it: network order in a u32.
#[inline(always)]
fn v4_word(addr: &Addr) -> u32 {
    u32::from_ne_bytes(v4_bytes(addr))
}

/// An IPv6 address as four network-order u32 words.
#[inline(always)]
fn words(addr: &Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

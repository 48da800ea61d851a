//! ICMP and `ICMPv6` addressed to a VIP: echo requests are answered here;
//! "fragmentation needed" / "packet too big" about a VIP flow goes to the
//! backend that owns the flow (so path MTU discovery works through lb);
//! anything else goes to the stack.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use lb_common::{Addr, Reason, maps::FWD_NAT, maps::ipv4_mapped, proto};

use crate::{
    Drop, Status, Verdict,
    balancer::{choose_backend, find_service, send_to_backend},
    csum, finish,
    forward::{End, ipv4_header, rewrite, v4_bytes},
    keys,
    maps::Scratch,
    packet::{read_at, read_into, write_at},
    parse::Packet,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO: u8 = 8;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Handles an ICMP / `ICMPv6` packet to a VIP; returns the counted action.
/// Out of line: a stack frame of its own (see `balancer`).
#[inline(never)]
pub fn to_vip(ctx: &XdpContext, scratch: &mut Scratch) -> u32 {
    let packet = &scratch.packet;
    let Some(header) = read_at::<[u8; 2]>(ctx, packet.l4_off()) else {
        return finish(Err(Drop(Reason::DropMalformedIcmp)));
    };
    match (packet.v6, header[0], header[1]) {
        (false, ICMP_ECHO, _) => finish(echo_reply(ctx, packet, ICMP_ECHO_REPLY)),
        (true, ICMPV6_ECHO_REQUEST, _) => finish(echo_reply(ctx, packet, ICMPV6_ECHO_REPLY)),
        (false, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) | (true, ICMPV6_PKT_TOOBIG, _) => {
            too_big(ctx, scratch)
        }
        _ => finish(Ok(Verdict::pass(Reason::PassIcmpToVip))),
    }
}

/// Turns an echo request into its reply in place and sends it back.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, packet: &Packet, reply: u8) -> Result<Verdict, Drop> {
    let malformed = Drop(Reason::DropMalformedIcmp);
    let mac: [u8; 12] = read_at(ctx, 0).ok_or(malformed)?;
    let swapped = [
        mac[6], mac[7], mac[8], mac[9], mac[10], mac[11], mac[0], mac[1], mac[2], mac[3], mac[4],
        mac[5],
    ];
    write_at(ctx, 0, swapped).ok_or(malformed)?;
    let off = packet.l3_off();
    if packet.v6 {
        // Swapping the addresses leaves the pseudo-header sum unchanged.
        write_at(ctx, off + 8, packet.dst).ok_or(malformed)?;
        write_at(ctx, off + 24, packet.src).ok_or(malformed)?;
        write_at(ctx, off + 7, 64u8).ok_or(malformed)?;
    } else {
        write_at(ctx, off + 12, v4_bytes(&packet.dst)).ok_or(malformed)?;
        write_at(ctx, off + 16, v4_bytes(&packet.src)).ok_or(malformed)?;
        let ttl_proto: [u8; 2] = read_at(ctx, off + 8).ok_or(malformed)?;
        let fresh = [64, ttl_proto[1]];
        write_at(ctx, off + 8, fresh).ok_or(malformed)?;
        let checksum = u16::from_be_bytes(read_at(ctx, off + 10).ok_or(malformed)?);
        let checksum = csum::replace(checksum, &ttl_proto, &fresh);
        write_at(ctx, off + 10, checksum.to_be_bytes()).ok_or(malformed)?;
    }
    let type_code: [u8; 2] = read_at(ctx, packet.l4_off()).ok_or(malformed)?;
    let new_type_code = [reply, type_code[1]];
    write_at(ctx, packet.l4_off(), new_type_code).ok_or(malformed)?;
    let checksum = u16::from_be_bytes(read_at(ctx, packet.l4_off() + 2).ok_or(malformed)?);
    let checksum = csum::replace(checksum, &type_code, &new_type_code);
    write_at(ctx, packet.l4_off() + 2, checksum.to_be_bytes()).ok_or(malformed)?;
    Ok(Verdict {
        action: xdp_action::XDP_TX,
        reason: Reason::IcmpEchoReply,
    })
}

/// The flow quoted inside an ICMP error: (client, client port, VIP port).
#[derive(Clone, Copy)]
pub struct Quoted {
    /// Offset of the quoted IP header (u16: bounded once back from the map).
    ip_off: u16,
    /// Offset of the quoted transport header.
    l4_off: u16,
    /// The client: the quoted packet's destination.
    client: Addr,
    /// The quoted packet's source port (the service port).
    vip_port: u16,
    /// The quoted packet's destination port (the client's port).
    client_port: u16,
    /// Transport protocol of the quoted packet.
    proto: u8,
}

/// Sends a too-big error about a VIP flow to the backend that owns the flow;
/// returns the counted action. Out of line: a stack frame of its own.
#[inline(never)]
fn too_big(ctx: &XdpContext, scratch: &mut Scratch) -> u32 {
    finish(try_too_big(ctx, scratch))
}

#[inline(always)]
fn try_too_big(ctx: &XdpContext, scratch: &mut Scratch) -> Result<Verdict, Drop> {
    if !quoted_flow(ctx, &scratch.packet, &mut scratch.quoted) {
        return Ok(Verdict::pass(Reason::PassIcmpToVip));
    }
    let quoted = &scratch.quoted;
    // The error is about a packet the VIP sent; the flow, seen from the
    // client, runs the other way.
    keys::set_flow(
        &mut scratch.flow,
        &mut scratch.flow4,
        (scratch.packet.v6, keys::Keys::All),
        (&quoted.client, &scratch.packet.dst),
        (quoted.client_port, quoted.vip_port, quoted.proto),
    );
    let Some(service) = find_service(scratch, scratch.quoted.vip_port) else {
        return Ok(Verdict::pass(Reason::PassIcmpToVip));
    };
    choose_backend(scratch, &service, false)?;
    if service.forwarding == FWD_NAT {
        // The backend knows the flow by its own address and port: rewrite
        // the quoted packet's source to them, and the outer destination.
        let (packet, backend) = (&scratch.packet, &scratch.backend);
        nat_quoted(ctx, packet, &scratch.quoted, &backend.addr, backend.port)?;
        rewrite(ctx, packet, End::Destination, &backend.addr, 0).get()?;
    }
    send_to_backend(ctx, scratch, &service, Reason::IcmpToBackend)
}

/// Reads the flow quoted after the 8-byte ICMP header into `out`; false
/// when it is not a TCP / UDP packet from this VIP.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, packet: &Packet, out: &mut Quoted) -> bool {
    let ip_off = packet.l4_off() + 8;
    let l4_off = if packet.v6 {
        let Some(next_header) = read_at::<[u8; 1]>(ctx, ip_off + 6) else {
            return false;
        };
        // Quoted source (must be this VIP) into `client` first, compared in
        // place, then overwritten with the quoted destination.
        if !read_into(ctx, ip_off + 8, &mut out.client) || out.client != packet.dst {
            return false;
        }
        if !read_into(ctx, ip_off + 24, &mut out.client) {
            return false;
        }
        out.proto = next_header[0];
        ip_off + 40
    } else {
        let Some(header) = read_at::<[u8; 20]>(ctx, ip_off) else {
            return false;
        };
        let ihl = usize::from(header[0] & 0x0f) * 4;
        let src = ipv4_mapped([header[12], header[13], header[14], header[15]]);
        if ihl < 20 || src != packet.dst {
            return false;
        }
        out.client = ipv4_mapped([header[16], header[17], header[18], header[19]]);
        out.proto = header[9];
        ip_off + ihl
    };
    if out.proto != proto::TCP && out.proto != proto::UDP {
        return false;
    }
    let Some(ports) = read_at::<[u8; 4]>(ctx, l4_off) else {
        return false;
    };
    out.ip_off = u16::try_from(ip_off).unwrap_or(u16::MAX);
    out.l4_off = u16::try_from(l4_off).unwrap_or(u16::MAX);
    out.vip_port = u16::from_be_bytes([ports[0], ports[1]]);
    out.client_port = u16::from_be_bytes([ports[2], ports[3]]);
    true
}

/// NAT mode: the quoted packet's source becomes the backend's address and
/// port, with the quoted IPv4 header checksum and the ICMP checksum updated
/// (for `ICMPv6` also for the outer destination, part of its pseudo-header).
#[inline(always)]
fn nat_quoted(
    ctx: &XdpContext,
    packet: &Packet,
    quoted: &Quoted,
    backend: &Addr,
    port: u16,
) -> Result<(), Drop> {
    let malformed = Drop(Reason::DropMalformedIcmp);
    let checksum_off = packet.l4_off() + 2;
    let mut checksum = u16::from_be_bytes(read_at(ctx, checksum_off).ok_or(malformed)?);
    if packet.v6 {
        write_at(ctx, usize::from(quoted.ip_off) + 8, *backend).ok_or(malformed)?;
        checksum = csum::replace(checksum, &packet.dst, backend); // quoted source
        checksum = csum::replace(checksum, &packet.dst, backend); // outer destination
    } else {
        let old = v4_bytes(&packet.dst);
        let new = v4_bytes(backend);
        write_at(ctx, usize::from(quoted.ip_off) + 12, new).ok_or(malformed)?;
        let ip_checksum_off = usize::from(quoted.ip_off) + 10;
        let old_ip: [u8; 2] = read_at(ctx, ip_checksum_off).ok_or(malformed)?;
        let new_ip = csum::replace(u16::from_be_bytes(old_ip), &old, &new).to_be_bytes();
        write_at(ctx, ip_checksum_off, new_ip).ok_or(malformed)?;
        checksum = csum::replace(checksum, &old, &new);
        checksum = csum::replace(checksum, &old_ip, &new_ip);
    }
    if port != 0 {
        let old: [u8; 2] = read_at(ctx, usize::from(quoted.l4_off)).ok_or(malformed)?;
        let new = port.to_be_bytes();
        write_at(ctx, usize::from(quoted.l4_off), new).ok_or(malformed)?;
        checksum = csum::replace(checksum, &old, &new);
    }
    write_at(ctx, checksum_off, checksum.to_be_bytes()).ok_or(malformed)?;
    Ok(())
}

/// An ICMP "fragmentation needed" / `ICMPv6` "packet too big" being built.
#[derive(Clone, Copy)]
pub struct TooBig {
    /// Type, code, checksum, and the MTU field.
    header: [u8; 8],
    /// IPv4: the quoted IP header (no options) and the first 8 bytes after.
    quote4: [u8; 28],
    /// IPv6: the quoted IP header and the first 8 bytes after.
    quote6: [u8; 48],
}

/// The egress towards the backend takes less than this packet plus
/// `overhead` (the tunnel header): the packet is not sent on, and the client
/// gets ICMP "fragmentation needed" (`ICMPv6` "packet too big") from the VIP
/// with the MTU that fits, quoting the packet's IP header and first 8 bytes
/// (what path-MTU discovery reads), back out of the interface it came in on.
/// The egress MTU is the FIB's answer in `scratch.fib`. An IPv4 packet with
/// IP options is dropped as unroutable instead (quoted, it would be cut).
#[inline(always)]
pub fn too_big_to_client(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    overhead: u16,
) -> Result<Verdict, Drop> {
    build_too_big(ctx, scratch, overhead).get()?;
    Ok(Verdict {
        action: xdp_action::XDP_TX,
        reason: Reason::IcmpTooBig,
    })
}

/// Out of line: a stack frame of its own.
#[inline(never)]
fn build_too_big(ctx: &XdpContext, scratch: &mut Scratch, overhead: u16) -> Status {
    Status::from(try_build_too_big(ctx, scratch, overhead))
}

#[inline(always)]
fn try_build_too_big(ctx: &XdpContext, scratch: &mut Scratch, overhead: u16) -> Result<(), Drop> {
    let unroutable = Drop(Reason::DropNoRoute);
    let l3 = scratch.packet.l3_off();
    let v6 = scratch.packet.v6;
    // SAFETY: a union of two u16s; the FIB wrote `mtu_result`.
    let egress = unsafe { scratch.fib.__bindgen_anon_1.mtu_result };
    let mtu = egress.saturating_sub(overhead);
    let mac: [u8; 12] = read_at(ctx, 0).ok_or(unroutable)?;
    let message = &mut scratch.too_big;
    let (ip_len, quote_len) = if v6 {
        if !read_into(ctx, l3, &mut message.quote6) {
            return Err(unroutable);
        }
        let mtu = u32::from(mtu.max(1280)).to_be_bytes();
        message.header = [ICMPV6_PKT_TOOBIG, 0, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]];
        (40, 48)
    } else {
        if !read_into(ctx, l3, &mut message.quote4) || message.quote4[0] != 0x45 {
            return Err(unroutable);
        }
        let mtu = mtu.max(68).to_be_bytes();
        message.header = [
            ICMP_DEST_UNREACH,
            ICMP_FRAG_NEEDED,
            0,
            0,
            0,
            0,
            mtu[0],
            mtu[1],
        ];
        (20, 28)
    };
    let total = l3 + ip_len + 8 + quote_len;
    // The length from the helper, not `data_end - data`: LLVM folds that
    // into `total + data - data_end`, arithmetic on the end pointer the
    // verifier refuses.
    // SAFETY: plain helper calls on the live context; every access after
    // them re-derives (and re-checks) its pointer.
    let length = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "frames are far below 2 GiB"
    )]
    let delta = total as i32 - length as i32;
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(unroutable);
    }
    let swapped = [
        mac[6], mac[7], mac[8], mac[9], mac[10], mac[11], mac[0], mac[1], mac[2], mac[3], mac[4],
        mac[5],
    ];
    write_at(ctx, 0, swapped).ok_or(unroutable)?;
    // From the VIP (the packet's destination) to the client (its source).
    let (vip, client) = (&scratch.packet.dst, &scratch.packet.src);
    if v6 {
        write_ipv6_error(ctx, l3, vip, client, &mut scratch.too_big)
    } else {
        write_ipv4_error(ctx, l3, vip, client, &mut scratch.too_big)
    }
}

/// Writes the IPv6 header and the `ICMPv6` message at `l3` (checksummed).
#[inline(always)]
fn write_ipv6_error(
    ctx: &XdpContext,
    l3: usize,
    vip: &Addr,
    client: &Addr,
    message: &mut TooBig,
) -> Result<(), Drop> {
    let unroutable = Drop(Reason::DropNoRoute);
    let length: u16 = 8 + 48;
    // Pseudo-header: addresses, upper-layer length, next header.
    let mut sum = csum::add(csum::add(0, vip), client);
    sum += u32::from(length) + u32::from(proto::ICMPV6);
    sum = csum::add(csum::add(sum, &message.header), &message.quote6);
    let checksum = (!csum::fold(sum)).to_be_bytes();
    message.header[2] = checksum[0];
    message.header[3] = checksum[1];
    let length = length.to_be_bytes();
    let start = [0x60, 0, 0, 0, length[0], length[1], proto::ICMPV6, 64];
    write_at(ctx, l3, start).ok_or(unroutable)?;
    write_at(ctx, l3 + 8, *vip).ok_or(unroutable)?;
    write_at(ctx, l3 + 24, *client).ok_or(unroutable)?;
    write_at(ctx, l3 + 40, message.header).ok_or(unroutable)?;
    write_at(ctx, l3 + 48, message.quote6).ok_or(unroutable)?;
    Ok(())
}

/// Writes the IPv4 header and the ICMP message at `l3` (checksummed).
#[inline(always)]
fn write_ipv4_error(
    ctx: &XdpContext,
    l3: usize,
    vip: &Addr,
    client: &Addr,
    message: &mut TooBig,
) -> Result<(), Drop> {
    let unroutable = Drop(Reason::DropNoRoute);
    let sum = csum::add(csum::add(0, &message.header), &message.quote4);
    let checksum = (!csum::fold(sum)).to_be_bytes();
    message.header[2] = checksum[0];
    message.header[3] = checksum[1];
    let header = ipv4_header(0, 20 + 8 + 28, proto::ICMP, v4_bytes(vip), v4_bytes(client));
    write_at(ctx, l3, header).ok_or(unroutable)?;
    write_at(ctx, l3 + 20, message.header).ok_or(unroutable)?;
    write_at(ctx, l3 + 28, message.quote4).ok_or(unroutable)?;
    Ok(())
}

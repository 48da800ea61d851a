//! Telling the segment where a floating address now lives: a gratuitous
//! ARP for IPv4, an unsolicited neighbour advertisement for IPv6, each one
//! whole Ethernet frame sent through a packet socket.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Announces `address` at our MAC: a broadcast ARP request for it, from it.
pub(super) fn gratuitous_arp(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    send_frame(ifindex, ETH_P_ARP, &frame, "gratuitous ARP");
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Announces `address` at our MAC (RFC 4861 §7.2.6): an unsolicited
/// neighbour advertisement to all nodes, from the address itself, with the
/// router and override flags and our link-layer address.
pub(super) fn unsolicited_na(ifindex: u32, mac: [u8; 6], address: Ipv6Addr) {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // neighbour advertisement; checksum below
    icmp.extend_from_slice(&[0xa0, 0, 0, 0]); // router, override
    icmp.extend_from_slice(&address.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(address, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    send_frame(
        ifindex,
        ETH_P_IPV6,
        &frame,
        "unsolicited neighbour advertisement",
    );
}

/// The `ICMPv6` checksum over the pseudo-header and `message` (whose checksum
/// field is zero).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).unwrap_or(0);
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(message);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// Sends a whole Ethernet frame out of `ifindex` through a packet socket.
fn send_frame(ifindex: u32, ethertype: u16, frame: &[u8], what: &str) {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "ha: no packet socket for {what}");
        return;
    }
    // SAFETY: `fd` is a fresh socket we own from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    to.sll_protocol = ethertype.to_be();
    to.sll_ifindex = i32::try_from(ifindex).unwrap_or_default();
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `to` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default(),
        )
    };
    if sent < 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "ha: {what} not sent");
    }
}

//! Telling the segment where a floating address now lives: a gratuitous
//! ARP for IPv4, an unsolicited neighbour advertisement for IPv6, each one
//! whole Ethernet frame (built by a pure function, tested on its bytes)
//! sent through one packet socket.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// The frame that announces `address` at `mac`, and its ethertype.
pub(super) fn announcement(mac: [u8; 6], address: IpAddr) -> (u16, Vec<u8>) {
    match address {
        IpAddr::V4(v4) => (ETH_P_ARP, gratuitous_arp(mac, v4)),
        IpAddr::V6(v6) => (ETH_P_IPV6, unsolicited_na(mac, v6)),
    }
}

/// A broadcast ARP request for `address`, from it, at our MAC (what
/// keepalived and `arping -U` send).
fn gratuitous_arp(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    frame
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) to all nodes,
/// from the address itself, with the router and override flags and our
/// link-layer address.
fn unsolicited_na(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
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
    // 32 bytes: the length always fits.
    frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    frame
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

/// A packet socket that sends whole Ethernet frames out of one interface.
/// Opened for protocol 0, so it receives nothing.
pub(super) struct Announcer {
    fd: OwnedFd,
    ifindex: u32,
}

impl Announcer {
    pub(super) fn open(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, ifindex })
    }

    /// Sends `frame` (whose first six bytes are the destination MAC).
    pub(super) fn send(&self, ethertype: u16, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
        to.sll_protocol = ethertype.to_be();
        to.sll_ifindex = i32::try_from(self.ifindex).unwrap_or_default();
        to.sll_halen = 6;
        for (dst, src) in to.sll_addr.iter_mut().zip(frame.iter().take(6)) {
            *dst = *src;
        }
        // SAFETY: `frame` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default(),
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn gratuitous_arp_bytes() {
        let (ethertype, frame) = announcement(MAC, "192.0.2.254".parse().unwrap());
        assert_eq!(ethertype, ETH_P_ARP);
        #[rustfmt::skip]
        let expected = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  2, 0, 0, 0, 0, 1,  0x08, 0x06,
            0, 1,  8, 0,  6, 4,  0, 1,              // Ethernet, IPv4, request
            2, 0, 0, 0, 0, 1,  192, 0, 2, 254,      // sender: us, the address
            0, 0, 0, 0, 0, 0,  192, 0, 2, 254,      // target: the address
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn unsolicited_na_bytes() {
        let (ethertype, frame) = announcement(MAC, "2001:db8::fe".parse().unwrap());
        assert_eq!(ethertype, ETH_P_IPV6);
        #[rustfmt::skip]
        let expected = [
            0x33, 0x33, 0, 0, 0, 1,  2, 0, 0, 0, 0, 1,  0x86, 0xdd,
            0x60, 0, 0, 0,  0, 32,  58, 255,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            // Checksum 0x7730, from an independent Python RFC 1071 sum
            // over the pseudo-header and message.
            136, 0, 0x77, 0x30,  0xa0, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
            2, 1,  2, 0, 0, 0, 0, 1,
        ];
        assert_eq!(frame, expected);
    }
}

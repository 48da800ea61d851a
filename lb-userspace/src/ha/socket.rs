//! The raw VRRP socket (IPv4, protocol 112) on the HA interface, and the
//! check of a received packet's IP header before its payload is parsed.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;

use crate::{netlink::ifindex, vrrp};

/// A received IPv4 packet's VRRP advertisement, if it is a valid one with
/// TTL 255 (RFC 5798 §7.1: anything else may have crossed a router).
pub(super) fn parse_ipv4(packet: &[u8], src: Ipv4Addr) -> Result<vrrp::Advertisement, String> {
    let header_len = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
    if header_len < 20 || packet.len() < header_len {
        return Err(format!("truncated IPv4 header ({} bytes)", packet.len()));
    }
    if packet[9] != vrrp::PROTOCOL {
        return Err(format!("IP protocol {}, not VRRP", packet[9]));
    }
    if packet[8] != 255 {
        return Err(format!("TTL {} (must be 255)", packet[8]));
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    vrrp::parse(&packet[header_len..], IpAddr::V4(src), IpAddr::V4(dst)).map_err(|e| e.to_string())
}

/// The raw VRRP socket on one interface.
pub(super) struct VrrpSocket(OwnedFd);

impl VrrpSocket {
    pub(super) fn open(interface: &str, local: Ipv4Addr) -> anyhow::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(vrrp::PROTOCOL),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("ha: raw socket for VRRP (root needed)");
        }
        // SAFETY: `fd` is a fresh socket we own from here on.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let index = i32::try_from(ifindex(interface)?)?;
        socket.option(
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_bytes(),
        )?;
        socket.option(libc::IPPROTO_IP, libc::IP_TTL, &255i32.to_ne_bytes())?;
        socket.option(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            &255i32.to_ne_bytes(),
        )?;
        socket.option(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &0i32.to_ne_bytes(),
        )?;
        // SAFETY: ip_mreqn is plain data; zero is valid.
        let mut request: libc::ip_mreqn = unsafe { std::mem::zeroed() };
        request.imr_multiaddr.s_addr = u32::from_ne_bytes(vrrp::MULTICAST_V4.octets());
        request.imr_address.s_addr = u32::from_ne_bytes(local.octets());
        request.imr_ifindex = index;
        // SAFETY: reading the struct's own bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const request).cast::<u8>(),
                std::mem::size_of::<libc::ip_mreqn>(),
            )
        };
        socket.option(libc::IPPROTO_IP, libc::IP_MULTICAST_IF, bytes)?;
        socket.option(libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, bytes)?;
        Ok(socket)
    }

    fn option(&self, level: i32, name: i32, value: &[u8]) -> anyhow::Result<()> {
        // SAFETY: `value` is valid for its length.
        let rc = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                u32::try_from(value.len())?,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("ha: setsockopt {name}"));
        }
        Ok(())
    }

    pub(super) fn send(&self, payload: &[u8], to: Ipv4Addr) {
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        address.sin_family = u16::try_from(libc::AF_INET).unwrap_or_default();
        address.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
        // SAFETY: `payload` and `address` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const address).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or_default(),
            )
        };
        if sent < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), %to, "ha: advertisement not sent");
        }
    }

    /// One packet (with its IPv4 header) and its source, or `None` after
    /// `wait`.
    pub(super) fn receive(&self, buffer: &mut [u8], wait: Duration) -> Option<(usize, Ipv4Addr)> {
        let mut ready = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = i32::try_from(wait.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&raw mut ready, 1, wait_ms) } <= 0 {
            return None;
        }
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut from_len = u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).ok()?;
        // SAFETY: `buffer`, `from` and `from_len` are valid out-parameters.
        let received = unsafe {
            libc::recvfrom(
                self.0.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        let len = usize::try_from(received).ok()?;
        Some((len, Ipv4Addr::from(from.sin_addr.s_addr.to_ne_bytes())))
    }
}

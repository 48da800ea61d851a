//! The raw VRRP socket (IP protocol 112, IPv4 or IPv6) on the HA interface,
//! the eventfd that wakes its thread at once, and the check of a received
//! packet's IP layer (TTL / hop limit 255, an IPv6 link-local source)
//! before its payload is parsed.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;

use crate::vrrp::{self, Family};

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
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    if packet[8] != 255 {
        return Err(format!(
            "TTL {} (must be 255{})",
            packet[8],
            unicast_hint(!dst.is_multicast())
        ));
    }
    vrrp::parse(&packet[header_len..], IpAddr::V4(src), IpAddr::V4(dst)).map_err(|e| e.to_string())
}

/// A received IPv6 VRRP payload's advertisement (the kernel strips the
/// IPv6 header; its hop limit and destination come as ancillary data), if
/// it is a valid one with hop limit 255 (RFC 5798 §7.1) from a link-local
/// source (§5.1.2.1: a router sends from its link-local address).
pub(super) fn parse_ipv6(
    payload: &[u8],
    src: Ipv6Addr,
    dst: Option<Ipv6Addr>,
    hop_limit: Option<u8>,
) -> Result<vrrp::Advertisement, String> {
    match hop_limit {
        Some(255) => {}
        Some(other) => {
            let unicast = dst.is_some_and(|d| !d.is_multicast());
            return Err(format!(
                "hop limit {other} (must be 255{})",
                unicast_hint(unicast)
            ));
        }
        None => return Err("no hop limit given by the kernel".into()),
    }
    if src.segments()[0] & 0xffc0 != 0xfe80 {
        return Err(format!("source {src} is not link-local"));
    }
    let dst = dst.ok_or("no destination given by the kernel")?;
    vrrp::parse(payload, IpAddr::V6(src), IpAddr::V6(dst)).map_err(|e| e.to_string())
}

/// keepalived sends unicast advertisements with the system's default TTL
/// / hop limit unless told otherwise; say how, where it applies.
fn unicast_hint(unicast: bool) -> &'static str {
    if unicast {
        "; a keepalived peer needs `unicast_ttl 255`"
    } else {
        ""
    }
}

/// What [`VrrpSocket::receive`] got.
pub(super) enum Received {
    /// An IPv4 packet, header included, of this length, from this source.
    V4 { len: usize, src: Ipv4Addr },
    /// An IPv6 payload of this length, with its addresses and hop limit.
    V6 {
        len: usize,
        src: Ipv6Addr,
        dst: Option<Ipv6Addr>,
        hop_limit: Option<u8>,
    },
    /// The wait ended without a packet.
    Nothing,
    /// The stop [`Wake`] was set.
    Woken,
    /// The news [`Wake`] was set (and is now cleared).
    News,
}

/// An eventfd the VRRP thread polls with its socket: setting it ends the
/// thread's wait at once (a stop request, or news from the address
/// thread), where a flag would wait for the next timeout.
#[derive(Debug)]
pub(super) struct Wake(OwnedFd);

impl Wake {
    pub(super) fn new() -> anyhow::Result<Self> {
        // SAFETY: plain eventfd(2); the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("ha: eventfd");
        }
        // SAFETY: `fd` is fresh and ours.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the thread; it stays woken until [`Wake::clear`].
    pub(super) fn set(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a live buffer to our eventfd. It
        // cannot fail but on a counter about to overflow, which a set one
        // never is.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the counter (the eventfd is non-blocking: a cleared one
    /// answers EAGAIN, which leaves it cleared).
    pub(super) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into a live buffer from our eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

/// The raw VRRP socket on one interface, of one family.
pub(super) struct VrrpSocket {
    fd: OwnedFd,
    family: Family,
    ifindex: u32,
    /// The source of every IPv6 advertisement: the link-local address.
    local_v6: Ipv6Addr,
}

impl VrrpSocket {
    /// Opens the socket for advertisements from `local` (an IPv4 address
    /// of the interface, or its IPv6 link-local address) and joins the
    /// family's VRRP group on `interface` (index `ifindex`).
    pub(super) fn open(interface: &str, ifindex: u32, local: IpAddr) -> anyhow::Result<Self> {
        let family = Family::of(local);
        let domain = match family {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        };
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(vrrp::PROTOCOL),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("ha: raw socket for VRRP (root needed)");
        }
        let socket = Self {
            // SAFETY: `fd` is a fresh socket we own from here on.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            family,
            ifindex,
            local_v6: match local {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
            },
        };
        let index = i32::try_from(ifindex)?;
        socket.option(
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_bytes(),
        )?;
        let one = 1i32.to_ne_bytes();
        let hops = 255i32.to_ne_bytes();
        let zero = 0i32.to_ne_bytes();
        match local {
            IpAddr::V4(local) => {
                socket.option(libc::IPPROTO_IP, libc::IP_TTL, &hops)?;
                socket.option(libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &hops)?;
                socket.option(libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &zero)?;
                let request = libc::ip_mreqn {
                    imr_multiaddr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(vrrp::MULTICAST_V4.octets()),
                    },
                    imr_address: libc::in_addr {
                        s_addr: u32::from_ne_bytes(local.octets()),
                    },
                    imr_ifindex: index,
                };
                let bytes = bytes_of(&request);
                socket.option(libc::IPPROTO_IP, libc::IP_MULTICAST_IF, bytes)?;
                socket.option(libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, bytes)?;
            }
            IpAddr::V6(_) => {
                // No IPV6_CHECKSUM: the kernel would drop a bad checksum
                // unseen, and such packets are counted; `vrrp::parse`
                // checks it.
                socket.option(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
                socket.option(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
                socket.option(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &zero)?;
                socket.option(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    &index.to_ne_bytes(),
                )?;
                socket.option(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &one)?;
                socket.option(libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &one)?;
                let request = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr {
                        s6_addr: vrrp::MULTICAST_V6.octets(),
                    },
                    ipv6mr_interface: ifindex,
                };
                socket.option(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_ADD_MEMBERSHIP,
                    bytes_of(&request),
                )?;
            }
        }
        Ok(socket)
    }

    fn option(&self, level: i32, name: i32, value: &[u8]) -> anyhow::Result<()> {
        // SAFETY: `value` is valid for its length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                u32::try_from(value.len())?,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("ha: setsockopt {level}/{name}"));
        }
        Ok(())
    }

    /// Sends `payload` to `to` (the group or a peer, of the socket's
    /// family); IPv6 ones from the link-local address, on the interface.
    pub(super) fn send(&self, payload: &[u8], to: IpAddr) {
        let sent = match to {
            IpAddr::V4(to) => {
                let address = libc::sockaddr_in {
                    sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(to.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: `payload` and `address` are valid for the lengths given.
                unsafe {
                    libc::sendto(
                        self.fd.as_raw_fd(),
                        payload.as_ptr().cast(),
                        payload.len(),
                        0,
                        (&raw const address).cast(),
                        socklen_of::<libc::sockaddr_in>(),
                    )
                }
            }
            IpAddr::V6(to) => self.send_v6(payload, to),
        };
        if sent < 0 {
            tracing::warn!(error = %io::Error::last_os_error(), %to, "ha: advertisement not sent");
        }
    }

    /// `sendmsg` with an `IPV6_PKTINFO` naming the link-local source and
    /// the interface (a link-local peer needs its scope too).
    fn send_v6(&self, payload: &[u8], to: Ipv6Addr) -> isize {
        let mut address: libc::sockaddr_in6 = zeroed();
        address.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or_default();
        address.sin6_addr.s6_addr = to.octets();
        address.sin6_scope_id = self.ifindex;
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: self.local_v6.octets(),
            },
            ipi6_ifindex: self.ifindex,
        };
        // u64s keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        let mut message: libc::msghdr = zeroed();
        message.msg_name = (&raw mut address).cast();
        message.msg_namelen = socklen_of::<libc::sockaddr_in6>();
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(socklen_of::<libc::in6_pktinfo>()) };
        message.msg_controllen = usize::try_from(space).unwrap_or_default();
        // SAFETY: `message` points at `control`, which holds one cmsghdr
        // with an in6_pktinfo (64 bytes > CMSG_SPACE(20) = 40); the
        // header and data written stay inside it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&raw const message);
            (*header).cmsg_level = libc::IPPROTO_IPV6;
            (*header).cmsg_type = libc::IPV6_PKTINFO;
            (*header).cmsg_len = usize::try_from(libc::CMSG_LEN(socklen_of::<libc::in6_pktinfo>()))
                .unwrap_or_default();
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast(), info);
            libc::sendmsg(self.fd.as_raw_fd(), &raw const message, 0)
        }
    }

    /// Waits at most `wait` for a packet, for `wake` (a stop) or for
    /// `news` (cleared when it ends the wait); one packet (for IPv4 with
    /// its header) in `buffer`.
    pub(super) fn receive(
        &self,
        buffer: &mut [u8],
        wait: Duration,
        wake: &Wake,
        news: &Wake,
    ) -> Received {
        let mut ready = [
            libc::pollfd {
                fd: wake.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: news.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // ppoll for a timeout to the nanosecond: poll's milliseconds would
        // wake early (rounded down) or late (rounded up) by up to 1 ms.
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(wait.subsec_nanos().cast_signed()),
        };
        // SAFETY: three valid pollfds, a valid timespec, no signal mask.
        let n = unsafe { libc::ppoll(ready.as_mut_ptr(), 3, &raw const timeout, std::ptr::null()) };
        if n <= 0 {
            return Received::Nothing;
        }
        if ready[0].revents != 0 {
            return Received::Woken;
        }
        if ready[1].revents != 0 {
            news.clear();
            return Received::News;
        }
        match self.family {
            Family::V4 => self.receive_v4(buffer),
            Family::V6 => self.receive_v6(buffer),
        }
    }

    fn receive_v4(&self, buffer: &mut [u8]) -> Received {
        let mut from: libc::sockaddr_in = zeroed();
        let mut from_len = socklen_of::<libc::sockaddr_in>();
        // SAFETY: `buffer`, `from` and `from_len` are valid out-parameters.
        let received = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        match usize::try_from(received) {
            Ok(len) => Received::V4 {
                len,
                src: Ipv4Addr::from(from.sin_addr.s_addr.to_ne_bytes()),
            },
            Err(_) => Received::Nothing,
        }
    }

    fn receive_v6(&self, buffer: &mut [u8]) -> Received {
        let mut from: libc::sockaddr_in6 = zeroed();
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let mut message: libc::msghdr = zeroed();
        message.msg_name = (&raw mut from).cast();
        message.msg_namelen = socklen_of::<libc::sockaddr_in6>();
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `message` points at live buffers of the sizes given.
        let received =
            unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut message, libc::MSG_DONTWAIT) };
        let Ok(len) = usize::try_from(received) else {
            return Received::Nothing;
        };
        let (mut dst, mut hop_limit) = (None, None);
        // SAFETY: the kernel filled `control` up to msg_controllen with
        // well-formed cmsghdrs; CMSG_FIRSTHDR / CMSG_NXTHDR walk them and
        // stop at its end, and each data read matches its type's size.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&raw const message);
            while !header.is_null() {
                let data = libc::CMSG_DATA(header);
                match ((*header).cmsg_level, (*header).cmsg_type) {
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                        dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                        let hops: libc::c_int = std::ptr::read_unaligned(data.cast());
                        hop_limit = u8::try_from(hops).ok();
                    }
                    _ => {}
                }
                header = libc::CMSG_NXTHDR(&raw const message, header);
            }
        }
        Received::V6 {
            len,
            src: Ipv6Addr::from(from.sin6_addr.s6_addr),
            dst,
            hop_limit,
        }
    }
}

/// An all-zero value of a C struct.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for libc's plain-data socket structs, for which
    // all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or_default()
}

/// The bytes of a plain-data socket option struct.
fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: reading a plain-data struct's own bytes for its size.
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(value).cast(), std::mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VRID 51, priority 100, 100 cs, one address `fe80::1`, from `fe80::2` to
    /// `ff02::12` (the vector of `vrrp::wire`'s tests).
    const V6: [u8; 24] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x6d, 0xc5, // header
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // fe80::1
    ];

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_advertisements_need_hop_limit_255_and_a_link_local_source() {
        let (src, dst) = (v6("fe80::2"), Some(vrrp::MULTICAST_V6));
        let advert = parse_ipv6(&V6, src, dst, Some(255)).expect("valid");
        assert_eq!((advert.vrid, advert.priority), (51, 100));
        let cases = [
            (
                "hop limit 64",
                src,
                dst,
                Some(64),
                "hop limit 64 (must be 255)",
            ),
            ("no hop limit", src, dst, None, "no hop limit"),
            (
                "global source",
                v6("2001:db8::2"),
                dst,
                Some(255),
                "source 2001:db8::2 is not link-local",
            ),
            ("no destination", src, None, Some(255), "no destination"),
            // Right bytes, other source: the checksum covers it.
            ("spoofed source", v6("fe80::3"), dst, Some(255), "checksum"),
        ];
        for (what, src, dst, hops, error) in cases {
            let got = parse_ipv6(&V6, src, dst, hops).expect_err(what);
            assert!(got.contains(error), "{what}: {got}");
        }
        let mut bad = V6;
        bad[7] ^= 1;
        assert!(parse_ipv6(&bad, src, dst, Some(255)).is_err());
    }

    #[test]
    fn ipv4_packets_need_ttl_255() {
        // IPv4 header (TTL 255, protocol 112, 192.0.2.1 → 224.0.0.18), then
        // keepalived's advertisement of `vrrp::wire`'s tests.
        #[rustfmt::skip]
        let mut packet = [
            0x45, 0, 0, 32,  0, 0, 0, 0,  255, 112, 0, 0,  192, 0, 2, 1,  224, 0, 0, 18,
            0x31, 0x33, 0x96, 0x01,  0x00, 0x64, 0x59, 0xcb,  0xcb, 0x00, 0x71, 0x0a,
        ];
        let src = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(parse_ipv4(&packet, src).expect("valid").priority, 150);
        packet[8] = 64;
        assert_eq!(
            parse_ipv4(&packet, src).unwrap_err(),
            "TTL 64 (must be 255)"
        );
        assert!(parse_ipv4(&packet[..10], src).is_err());
    }
}

//! The rtnetlink edge: how the controller learns, for each backend address,
//! the next hop a forwarded packet takes — egress interface, our MAC on it,
//! the next hop's MAC, the egress MTU — and how it hears that any of these
//! changed.
//!
//! The XDP data plane never triggers ARP or neighbour discovery, so the
//! controller asks the kernel to keep each next hop resolved with a
//! *managed* neighbour entry (`NTF_EXT_MANAGED`, Linux 5.16+): the kernel
//! resolves it at once and keeps re-probing it, as `ip neigh replace ADDR dev
//! DEV managed` does.
//!
//! The file has two layers. The codec (netlink headers, `rtattr`
//! attributes, the route / neighbour / link messages we send and read) is
//! pure functions over byte slices, tested on literal bytes at the bottom.
//! [`Netlink`] (request / reply, and dumps) and [`Monitor`] (change
//! notifications) put raw `NETLINK_ROUTE` sockets under it, with `libc`
//! only. Sockets belong to the network namespace of the thread that opens
//! them.
//!
//! Behaviour of the kernel this relies on (checked on 6.18):
//! - `RTM_NEWNEIGH` with `NLM_F_CREATE | NLM_F_REPLACE`, `ndm_state =
//!   NUD_NONE` and `NDA_FLAGS_EXT = NTF_EXT_MANAGED` (what iproute2 sends for
//!   `managed`) creates the entry and starts resolving it; it turns an
//!   existing *permanent* entry into a managed, dynamic one without error.
//!   That downgrade is why [`Netlink::neighbour_manage`] looks first.
//! - Creating a permanent entry with `NTF_EXT_MANAGED` fails with `EINVAL`
//!   ("Invalid NTF_* flag for permanent entry").
//! - `RTM_GETROUTE` answers unreachable / blackhole / prohibit routes (and
//!   no route at all) with an error, not a route: `EHOSTUNREACH`, `EINVAL`,
//!   `EACCES`, `ENETUNREACH`.
//! - A route dump (`RTM_GETROUTE` with `NLM_F_DUMP`) on a socket without
//!   `NETLINK_GET_STRICT_CHK` lists every table of the family, each message
//!   naming its table in `RTA_TABLE`. IPv6 local, anycast and multicast
//!   routes (`::1`, our addresses, `ff00::/8`) are in table local; the main
//!   table holds the prefix routes, `fe80::/64` included, as `ip -6 route
//!   show` lists them. IPv6 unreachable routes name `lo` in `RTA_OIF`.
//! - One dump runs per socket: a dump requested before the last one was
//!   read to its `NLMSG_DONE` is refused with `EBUSY`. Dump datagrams are
//!   filled up to the largest buffer `recvmsg` was given, at most ~32 KiB.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// Constants from the kernel's uapi headers (`linux/netlink.h`,
/// `linux/rtnetlink.h`, `linux/neighbour.h`, `linux/if_link.h`), typed as
/// the wire fields that carry them.
mod uapi {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLA_HDRLEN: usize = 4;
    pub const NLMSG_NOOP: u16 = 1;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 0x01;
    pub const NLM_F_ACK: u16 = 0x04;
    /// On a dump's messages: the dump was interrupted by a change and may
    /// be inconsistent.
    pub const NLM_F_DUMP_INTR: u16 = 0x10;
    /// `NLM_F_ROOT | NLM_F_MATCH`: every entry.
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_REPLACE: u16 = 0x100;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    /// On `NLMSG_ERROR`: only the request's header is echoed.
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// On `NLMSG_ERROR`: extended-ack attributes follow the echo.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    /// Attribute types carry "nested" and "byte order" bits on top.
    pub const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_GETROUTE: u16 = 26;
    pub const RTM_NEWNEIGH: u16 = 28;
    pub const RTM_DELNEIGH: u16 = 29;
    pub const RTM_GETNEIGH: u16 = 30;

    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const RTA_PREFSRC: u16 = 7;
    pub const RTA_METRICS: u16 = 8;
    pub const RTA_MULTIPATH: u16 = 9;
    pub const RTA_TABLE: u16 = 15;
    pub const RTA_VIA: u16 = 18;
    pub const RTAX_MTU: u16 = 2;

    pub const RT_TABLE_MAIN: u32 = 254;
    /// `rtm_flags`: a cached clone or exception, not a FIB entry.
    pub const RTM_F_CLONED: u32 = 0x200;

    pub const RTN_UNICAST: u8 = 1;
    pub const RTN_LOCAL: u8 = 2;
    pub const RTN_BLACKHOLE: u8 = 6;
    pub const RTN_UNREACHABLE: u8 = 7;
    pub const RTN_PROHIBIT: u8 = 8;

    pub const RTMGRP_LINK: u32 = 0x1;
    pub const RTMGRP_NEIGH: u32 = 0x4;
    pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;

    pub const NDA_DST: u16 = 1;
    pub const NDA_LLADDR: u16 = 2;
    pub const NDA_FLAGS_EXT: u16 = 15;
    pub const NTF_EXT_LEARNED: u8 = 0x10;
    pub const NTF_EXT_MANAGED: u32 = 0x1;

    pub const IFLA_ADDRESS: u16 = 1;
    pub const IFLA_MTU: u16 = 4;
    pub const IFF_UP: u32 = 0x1;
    pub const IFF_RUNNING: u32 = 0x40;

    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
}

/// Neighbour states (`NUD_*` in `linux/neighbour.h`), the bits of
/// [`Neighbour::state`].
pub mod nud {
    /// Resolution in progress, no address yet.
    pub const INCOMPLETE: u16 = 0x01;
    /// Confirmed recently.
    pub const REACHABLE: u16 = 0x02;
    /// Has an address, not confirmed recently; still used.
    pub const STALE: u16 = 0x04;
    /// Used while stale; confirmation pending.
    pub const DELAY: u16 = 0x08;
    /// Being re-probed; the address is still used.
    pub const PROBE: u16 = 0x10;
    /// Resolution failed.
    pub const FAILED: u16 = 0x20;
    /// No resolution needed on this device.
    pub const NOARP: u16 = 0x40;
    /// Static, set by an administrator.
    pub const PERMANENT: u16 = 0x80;
}

/// A reply that does not parse. Never a panic: every field is read through
/// a bounds check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a fixed header needs.
    #[error("{0} truncated")]
    Truncated(&'static str),
    /// A length field that points outside the bytes at hand.
    #[error("{what} claims {length} bytes, {available} available")]
    BadLength {
        /// Which header or attribute.
        what: &'static str,
        /// Its length field.
        length: usize,
        /// How many bytes were left.
        available: usize,
    },
    /// An attribute value of the wrong size.
    #[error("{what} has {length} bytes")]
    BadValue {
        /// Which attribute.
        what: &'static str,
        /// Its value's size.
        length: usize,
    },
    /// A header field outside the range its meaning allows.
    #[error("{what} is {value}, out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// A reply of a type the request cannot produce.
    #[error("unexpected message type {0}")]
    UnexpectedMessage(u16),
}

/// A failed netlink operation. Every variant but `Open` names the operation
/// and its address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The socket could not be created or set up.
    #[error("netlink: opening a NETLINK_ROUTE socket: {0}")]
    Open(#[source] io::Error),
    /// Sending, receiving or waiting failed (including a reply timeout).
    #[error("netlink {op} {target}: {source}")]
    Io {
        /// The operation, e.g. `route get`.
        op: &'static str,
        /// Its address, e.g. `192.0.2.11 dev #2`.
        target: String,
        /// What the socket call said.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("netlink {op} {target}: {source}{}", detail(.message.as_deref()))]
    Kernel {
        /// The operation.
        op: &'static str,
        /// Its address.
        target: String,
        /// The errno the kernel answered with.
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        message: Option<String>,
    },
    /// The kernel's reply did not parse.
    #[error("netlink {op} {target}: malformed reply: {source}")]
    Malformed {
        /// The operation.
        op: &'static str,
        /// Its address.
        target: String,
        /// What was wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A dump held more entries than the operation accepts.
    #[error("netlink {op} {target}: more than {limit} entries")]
    TooLarge {
        /// The operation.
        op: &'static str,
        /// What was dumped.
        target: String,
        /// The most entries accepted.
        limit: usize,
    },
}

fn detail(message: Option<&str>) -> String {
    message.map_or_else(String::new, |m| format!(" ({m})"))
}

impl NetlinkError {
    /// The errno the kernel answered with, for [`NetlinkError::Kernel`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What a route does with matching packets (`rtm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteKind {
    /// Forwarded out of [`Route::oif`].
    Unicast,
    /// Delivered to this host.
    Local,
    /// An `unreachable` route, or no route at all (`EHOSTUNREACH`,
    /// `ENETUNREACH`).
    Unreachable,
    /// A `blackhole` route (the kernel answers `EINVAL`).
    Blackhole,
    /// A `prohibit` route (`EACCES`).
    Prohibit,
    /// Any other `RTN_*` type (broadcast, multicast, anycast, ...).
    Other(u8),
}

/// The route the kernel would use for a destination, as `ip route get`
/// shows it. For kinds other than `Unicast` and `Local`, `oif` is 0 and the
/// options are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Unicast, local, or a kind that does not forward.
    pub kind: RouteKind,
    /// Egress interface index (`RTA_OIF`; `lo` for local routes).
    pub oif: u32,
    /// The next hop when it is not the destination itself (`RTA_GATEWAY`,
    /// or `RTA_VIA` for an IPv4 route via an IPv6 gateway).
    pub gateway: Option<IpAddr>,
    /// The preferred source address (`RTA_PREFSRC`).
    pub source: Option<IpAddr>,
    /// A route or path MTU (`RTAX_MTU` in `RTA_METRICS`); else the link's
    /// MTU applies.
    pub mtu: Option<u32>,
}

/// An address family, for requests about a whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn af(self) -> u8 {
        match self {
            Self::V4 => uapi::AF_INET,
            Self::V6 => uapi::AF_INET6,
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Self::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    fn max_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// One route of the main table, as `ip route show` lists it.
///
/// `oif`, `gateway` and `mtu` are the route's own attributes, whatever its
/// kind: IPv6 unreachable / blackhole / prohibit routes name `lo` as their
/// interface. A multipath route carries its next hops in `RTA_MULTIPATH`,
/// which is not decoded: `oif` is 0 and `gateway` `None`, and the caller
/// asks the FIB. So does a route using a nexthop object (`nhid`) when
/// `net.ipv4.nexthop_compat_mode` is 0 (the kernel then sends only the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// The network address: host bits clear, `0.0.0.0` / `::` for a
    /// default route (no `RTA_DST`).
    pub dst: IpAddr,
    /// The prefix length (`rtm_dst_len`), at most 32 / 128.
    pub prefix_len: u8,
    /// What the route does (`rtm_type`).
    pub kind: RouteKind,
    /// Egress interface index (`RTA_OIF`); 0 when it has none.
    pub oif: u32,
    /// The next hop (`RTA_GATEWAY`, or `RTA_VIA`); `None` for connected
    /// routes.
    pub gateway: Option<IpAddr>,
    /// A route MTU (`RTAX_MTU` in `RTA_METRICS`).
    pub mtu: Option<u32>,
    /// An ECMP route (`RTA_MULTIPATH`): the next hop depends on the flow.
    pub multipath: bool,
}

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its link-layer address, when it has an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` bits, see [`nud`].
    pub state: u16,
    /// Kept resolved by the kernel (`NTF_EXT_MANAGED`).
    pub managed: bool,
    /// Installed by another control plane (`NTF_EXT_LEARNED`, e.g. EVPN).
    pub extern_learned: bool,
}

impl Neighbour {
    /// Whether its MAC can be used to forward now: it has one and the kernel
    /// still trusts it.
    pub fn usable(&self) -> bool {
        const USABLE: u16 =
            nud::REACHABLE | nud::STALE | nud::DELAY | nud::PROBE | nud::PERMANENT | nud::NOARP;
        self.mac.is_some() && self.state & USABLE != 0
    }

    /// Whether someone else owns this entry (an administrator's static
    /// entry, a no-ARP device, another control plane), so we must not
    /// replace it.
    pub fn owned_elsewhere(&self) -> bool {
        self.state & (nud::PERMANENT | nud::NOARP) != 0 || self.extern_learned
    }
}

/// An interface's addressing, as `ip link show` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Its MAC address; `None` for links without an Ethernet address
    /// (tunnels, or an unusual `IFLA_ADDRESS` length).
    pub mac: Option<[u8; 6]>,
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up and running (`IFF_UP` and `IFF_RUNNING`).
    pub up: bool,
}

// ---------------------------------------------------------------------------
// Codec: encoding requests.

/// Rounds a length up to netlink's 4-byte alignment.
const fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// A request under construction: netlink header, family header, attributes.
struct Request {
    bytes: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, seq: u32, family_header: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        bytes.extend_from_slice(family_header);
        bytes.resize(align(bytes.len()), 0);
        Self { bytes }
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        let length = u16::try_from(uapi::NLA_HDRLEN + value.len())
            .expect("attribute values sent here are addresses or u32s, at most 16 bytes");
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(align(self.bytes.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let length = u32::try_from(self.bytes.len())
            .expect("requests built here are well under 4 GiB (at most 64 bytes)");
        self.bytes[..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes
    }
}

fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => uapi::AF_INET,
        IpAddr::V6(_) => uapi::AF_INET6,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `struct rtmsg` for a host route lookup.
fn rtmsg(dst: IpAddr) -> [u8; 12] {
    let dst_len = match dst {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
    [family(dst), dst_len, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// `struct ndmsg`.
fn ndmsg(addr: IpAddr, ifindex: u32, state: u16) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[0] = family(addr); // then 3 bytes of padding
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    header[8..10].copy_from_slice(&state.to_ne_bytes());
    // ndm_flags and ndm_type stay 0
    header
}

/// `RTM_GETROUTE` for `dst`, answered with one `RTM_NEWROUTE` (`ip route get`).
fn encode_route_get(seq: u32, dst: IpAddr) -> Vec<u8> {
    Request::new(uapi::RTM_GETROUTE, uapi::NLM_F_REQUEST, seq, &rtmsg(dst))
        .attr(uapi::RTA_DST, &addr_bytes(&dst))
        .finish()
}

/// `RTM_GETROUTE` dumping every table of `family` (what `ip route show
/// table all` sends): one `RTM_NEWROUTE` per route, then `NLMSG_DONE`.
/// Without `NETLINK_GET_STRICT_CHK` the kernel filters nothing, so the
/// table is picked when decoding.
fn encode_route_dump(seq: u32, family: Family) -> Vec<u8> {
    let mut header = [0u8; 12];
    header[0] = family.af();
    Request::new(
        uapi::RTM_GETROUTE,
        uapi::NLM_F_REQUEST | uapi::NLM_F_DUMP,
        seq,
        &header,
    )
    .finish()
}

/// `RTM_GETNEIGH` for one entry, answered with `RTM_NEWNEIGH` or `ENOENT`.
fn encode_neighbour_get(seq: u32, addr: IpAddr, ifindex: u32) -> Vec<u8> {
    Request::new(
        uapi::RTM_GETNEIGH,
        uapi::NLM_F_REQUEST,
        seq,
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .finish()
}

/// `RTM_NEWNEIGH` making a managed entry, byte for byte what iproute2 sends
/// for `ip neigh replace ADDR dev DEV managed` — except that `replace` is
/// false when no entry exists, so that a permanent entry added meanwhile
/// makes the kernel answer `EEXIST` instead of being downgraded.
fn encode_neighbour_manage(seq: u32, addr: IpAddr, ifindex: u32, replace: bool) -> Vec<u8> {
    let existing = if replace {
        uapi::NLM_F_REPLACE
    } else {
        uapi::NLM_F_EXCL
    };
    Request::new(
        uapi::RTM_NEWNEIGH,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK | uapi::NLM_F_CREATE | existing,
        seq,
        // NUD_NONE: no address given, the kernel resolves it.
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .attr(uapi::NDA_FLAGS_EXT, &uapi::NTF_EXT_MANAGED.to_ne_bytes())
    .finish()
}

/// `RTM_DELNEIGH` for one entry, acknowledged.
fn encode_neighbour_delete(seq: u32, addr: IpAddr, ifindex: u32) -> Vec<u8> {
    Request::new(
        uapi::RTM_DELNEIGH,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK,
        seq,
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .finish()
}

/// `RTM_GETLINK` by index, answered with one `RTM_NEWLINK`.
fn encode_link_get(seq: u32, ifindex: u32) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change
    let mut header = [0u8; 16];
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    Request::new(uapi::RTM_GETLINK, uapi::NLM_F_REQUEST, seq, &header).finish()
}

// ---------------------------------------------------------------------------
// Codec: decoding replies.

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let field = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes(field.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(field.try_into().ok()?))
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    /// Everything after the 16-byte header.
    payload: &'a [u8],
}

/// The messages of one datagram, in order. After an error it yields nothing
/// more.
#[derive(Debug)]
struct Messages<'a> {
    rest: &'a [u8],
}

fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let (Some(length), Some(kind), Some(flags), Some(seq)) = (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
        ) else {
            return Some(Err(DecodeError::Truncated("netlink header")));
        };
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length < uapi::NLMSG_HDRLEN || length > rest.len() {
            return Some(Err(DecodeError::BadLength {
                what: "netlink message",
                length,
                available: rest.len(),
            }));
        }
        let payload = rest.get(uapi::NLMSG_HDRLEN..length)?;
        self.rest = rest.get(align(length)..).unwrap_or_default();
        Some(Ok(Message {
            kind,
            flags,
            seq,
            payload,
        }))
    }
}

/// The `rtattr`s in `bytes`, as (type without flag bits, value). After an
/// error it yields nothing more.
#[derive(Debug)]
struct Attributes<'a> {
    rest: &'a [u8],
}

fn attributes(bytes: &[u8]) -> Attributes<'_> {
    Attributes { rest: bytes }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let (Some(length), Some(kind)) = (u16_at(rest, 0), u16_at(rest, 2)) else {
            return Some(Err(DecodeError::Truncated("attribute header")));
        };
        let length = usize::from(length);
        if length < uapi::NLA_HDRLEN || length > rest.len() {
            return Some(Err(DecodeError::BadLength {
                what: "attribute",
                length,
                available: rest.len(),
            }));
        }
        let value = rest.get(uapi::NLA_HDRLEN..length)?;
        self.rest = rest.get(align(length)..).unwrap_or_default();
        Some(Ok((kind & uapi::NLA_TYPE_MASK, value)))
    }
}

/// The fixed family header at the start of a payload, and the attributes
/// after it.
fn split_header<'a>(
    payload: &'a [u8],
    length: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let header = payload.get(..length).ok_or(DecodeError::Truncated(what))?;
    let rest = payload.get(align(length)..).unwrap_or_default();
    Ok((header, rest))
}

fn decode_ip(value: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(DecodeError::BadValue {
            what,
            length: value.len(),
        })
    }
}

fn decode_u32(value: &[u8], what: &'static str) -> Result<u32, DecodeError> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_ne_bytes)
        .map_err(|_| DecodeError::BadValue {
            what,
            length: value.len(),
        })
}

/// Everything we read from an `RTM_NEWROUTE` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteMessage {
    /// `rtm_family`.
    family: u8,
    /// `rtm_dst_len`.
    dst_len: u8,
    /// `RTA_TABLE`, else `rtm_table` (which says `RT_TABLE_COMPAT` for
    /// ids above 255).
    table: u32,
    /// `rtm_type`.
    kind: RouteKind,
    /// `rtm_flags`.
    flags: u32,
    dst: Option<IpAddr>,
    oif: u32,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    mtu: Option<u32>,
    multipath: bool,
}

/// The payload of an `RTM_NEWROUTE` message.
fn parse_route(payload: &[u8]) -> Result<RouteMessage, DecodeError> {
    let (header, attrs) = split_header(payload, 12, "rtmsg")?;
    let kind = match header[7] {
        uapi::RTN_UNICAST => RouteKind::Unicast,
        uapi::RTN_LOCAL => RouteKind::Local,
        uapi::RTN_UNREACHABLE => RouteKind::Unreachable,
        uapi::RTN_BLACKHOLE => RouteKind::Blackhole,
        uapi::RTN_PROHIBIT => RouteKind::Prohibit,
        other => RouteKind::Other(other),
    };
    let mut route = RouteMessage {
        family: header[0],
        dst_len: header[1],
        table: u32::from(header[4]),
        kind,
        flags: u32_at(header, 8).ok_or(DecodeError::Truncated("rtmsg"))?,
        dst: None,
        oif: 0,
        gateway: None,
        source: None,
        mtu: None,
        multipath: false,
    };
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            uapi::RTA_DST => route.dst = Some(decode_ip(value, "RTA_DST")?),
            uapi::RTA_TABLE => route.table = decode_u32(value, "RTA_TABLE")?,
            uapi::RTA_MULTIPATH => route.multipath = true,
            uapi::RTA_OIF => route.oif = decode_u32(value, "RTA_OIF")?,
            uapi::RTA_GATEWAY => route.gateway = Some(decode_ip(value, "RTA_GATEWAY")?),
            // struct rtvia: a u16 family, then the address.
            uapi::RTA_VIA => {
                let address = value.get(2..).ok_or(DecodeError::BadValue {
                    what: "RTA_VIA",
                    length: value.len(),
                })?;
                route.gateway = Some(decode_ip(address, "RTA_VIA")?);
            }
            uapi::RTA_PREFSRC => route.source = Some(decode_ip(value, "RTA_PREFSRC")?),
            uapi::RTA_METRICS => {
                for metric in attributes(value) {
                    let (kind, value) = metric?;
                    if kind == uapi::RTAX_MTU {
                        route.mtu = Some(decode_u32(value, "RTAX_MTU")?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(route)
}

/// The payload of an `RTM_NEWROUTE` reply to a route get.
fn decode_route(payload: &[u8]) -> Result<Route, DecodeError> {
    let route = parse_route(payload)?;
    Ok(Route {
        kind: route.kind,
        oif: route.oif,
        gateway: route.gateway,
        source: route.source,
        mtu: route.mtu,
    })
}

/// One `RTM_NEWROUTE` of a route dump of `family`: `None` unless it is a
/// route of the main table that `ip route show` lists. Cached clones are
/// left out, and so are IPv6 routes that do not forward or refuse —
/// local, anycast, multicast — which only a kernel without
/// `CONFIG_IPV6_MULTIPLE_TABLES` puts in the main table.
fn decode_route_entry(payload: &[u8], family: Family) -> Result<Option<RouteEntry>, DecodeError> {
    let route = parse_route(payload)?;
    let listed = match family {
        Family::V4 => true,
        Family::V6 => matches!(
            route.kind,
            RouteKind::Unicast
                | RouteKind::Unreachable
                | RouteKind::Blackhole
                | RouteKind::Prohibit
        ),
    };
    if route.family != family.af()
        || route.table != uapi::RT_TABLE_MAIN
        || route.flags & uapi::RTM_F_CLONED != 0
        || !listed
    {
        return Ok(None);
    }
    if route.dst_len > family.max_prefix_len() {
        return Err(DecodeError::OutOfRange {
            what: "rtm_dst_len",
            value: route.dst_len.into(),
        });
    }
    let dst = match route.dst {
        None => family.unspecified(),
        Some(dst) if Family::of(dst) == family => dst,
        Some(other) => {
            return Err(DecodeError::BadValue {
                what: "RTA_DST",
                length: addr_bytes(&other).len(),
            });
        }
    };
    Ok(Some(RouteEntry {
        dst,
        prefix_len: route.dst_len,
        kind: route.kind,
        oif: route.oif,
        gateway: route.gateway,
        mtu: route.mtu,
        multipath: route.multipath,
    }))
}

/// The payload of an `RTM_NEWNEIGH` reply.
fn decode_neighbour(payload: &[u8]) -> Result<Neighbour, DecodeError> {
    let (header, attrs) = split_header(payload, 12, "ndmsg")?;
    let state = u16_at(header, 8).ok_or(DecodeError::Truncated("ndmsg"))?;
    let mut neighbour = Neighbour {
        mac: None,
        state,
        managed: false,
        extern_learned: header[10] & uapi::NTF_EXT_LEARNED != 0,
    };
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            // Other lengths are other link layers; no MAC for us there.
            uapi::NDA_LLADDR => neighbour.mac = <[u8; 6]>::try_from(value).ok(),
            uapi::NDA_FLAGS_EXT => {
                let flags = decode_u32(value, "NDA_FLAGS_EXT")?;
                neighbour.managed = flags & uapi::NTF_EXT_MANAGED != 0;
            }
            _ => {}
        }
    }
    Ok(neighbour)
}

/// The payload of an `RTM_NEWLINK` reply.
fn decode_link(payload: &[u8]) -> Result<Link, DecodeError> {
    let (header, attrs) = split_header(payload, 16, "ifinfomsg")?;
    let flags = u32_at(header, 8).ok_or(DecodeError::Truncated("ifinfomsg"))?;
    let mut mac = None;
    let mut mtu = None;
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            uapi::IFLA_ADDRESS => mac = <[u8; 6]>::try_from(value).ok(),
            uapi::IFLA_MTU => mtu = Some(decode_u32(value, "IFLA_MTU")?),
            _ => {}
        }
    }
    Ok(Link {
        mac,
        mtu: mtu.ok_or(DecodeError::Truncated("link without IFLA_MTU"))?,
        up: flags & uapi::IFF_UP != 0 && flags & uapi::IFF_RUNNING != 0,
    })
}

/// An `NLMSG_ERROR`: an ack when `errno` is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorReply {
    /// Positive errno, or 0.
    errno: i32,
    /// The extended-ack message (`NLMSGERR_ATTR_MSG`).
    message: Option<String>,
}

/// The payload of an `NLMSG_ERROR` whose header had `flags`.
fn decode_error(flags: u16, payload: &[u8]) -> Result<ErrorReply, DecodeError> {
    let error = u32_at(payload, 0).ok_or(DecodeError::Truncated("nlmsgerr"))?;
    let errno = i32::from_ne_bytes(error.to_ne_bytes()).wrapping_neg();
    // The request is echoed: its header only when capped, else all of it.
    let echoed = if flags & uapi::NLM_F_CAPPED != 0 {
        uapi::NLMSG_HDRLEN
    } else {
        let length = u32_at(payload, 4).ok_or(DecodeError::Truncated("nlmsgerr"))?;
        usize::try_from(length).unwrap_or(usize::MAX)
    };
    let tlvs = payload.get(4 + align(echoed)..).unwrap_or_default();
    let message = ext_ack_message(flags, tlvs)?;
    Ok(ErrorReply { errno, message })
}

/// The payload of the `NLMSG_DONE` ending a dump, whose header had `flags`:
/// an errno (0 when the dump is complete), then extended-ack attributes.
fn decode_done(flags: u16, payload: &[u8]) -> Result<ErrorReply, DecodeError> {
    if payload.is_empty() {
        return Ok(ErrorReply {
            errno: 0,
            message: None,
        });
    }
    let error = u32_at(payload, 0).ok_or(DecodeError::Truncated("NLMSG_DONE"))?;
    let errno = i32::from_ne_bytes(error.to_ne_bytes()).wrapping_neg();
    let message = ext_ack_message(flags, payload.get(4..).unwrap_or_default())?;
    Ok(ErrorReply { errno, message })
}

/// The extended-ack message (`NLMSGERR_ATTR_MSG`) among `tlvs`, when the
/// header's `flags` say there are any.
fn ext_ack_message(flags: u16, tlvs: &[u8]) -> Result<Option<String>, DecodeError> {
    let mut message = None;
    if flags & uapi::NLM_F_ACK_TLVS != 0 {
        for attr in attributes(tlvs) {
            let (kind, value) = attr?;
            if kind == uapi::NLMSGERR_ATTR_MSG {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Ok(message)
}

/// Why a dump stopped before its end.
#[derive(Debug, PartialEq, Eq)]
enum DumpFailure {
    /// A datagram or message did not parse.
    Malformed(DecodeError),
    /// The kernel refused the dump or failed during it.
    Kernel(ErrorReply),
    /// More entries than the limit.
    TooLarge(usize),
}

impl DumpFailure {
    fn into_error(self, op: &'static str, target: String) -> NetlinkError {
        match self {
            Self::Malformed(source) => malformed(op, target, source),
            Self::Kernel(reply) => NetlinkError::Kernel {
                op,
                target,
                source: io::Error::from_raw_os_error(reply.errno),
                message: reply.message,
            },
            Self::TooLarge(limit) => NetlinkError::TooLarge { op, target, limit },
        }
    }
}

/// What a dump does with each of its data messages (type, payload).
type TakeMessage<'a> = dyn FnMut(u16, &[u8]) -> Result<(), DumpFailure> + 'a;

/// Where a dump stands after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpProgress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` arrived: every entry was seen.
    Done,
}

/// The replies to one dump request, read datagram by datagram.
#[derive(Debug)]
struct DumpReader {
    seq: u32,
    /// Some message carried `NLM_F_DUMP_INTR`: the table changed during
    /// the dump, which may have missed or repeated entries.
    interrupted: bool,
}

impl DumpReader {
    fn new(seq: u32) -> Self {
        Self {
            seq,
            interrupted: false,
        }
    }

    /// Hands each data message of `datagram` that answers this dump to
    /// `take` (type, payload), skipping other sequence numbers (replies to
    /// abandoned requests) and no-ops. `NLMSG_DONE` ends the dump, or fails
    /// it when it carries an errno; so does an `NLMSG_ERROR`.
    fn feed(
        &mut self,
        datagram: &[u8],
        take: &mut TakeMessage<'_>,
    ) -> Result<DumpProgress, DumpFailure> {
        for message in messages(datagram) {
            let message = message.map_err(DumpFailure::Malformed)?;
            if message.seq != self.seq {
                continue;
            }
            if message.flags & uapi::NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.kind {
                uapi::NLMSG_DONE => {
                    let reply = decode_done(message.flags, message.payload)
                        .map_err(DumpFailure::Malformed)?;
                    return if reply.errno == 0 {
                        Ok(DumpProgress::Done)
                    } else {
                        Err(DumpFailure::Kernel(reply))
                    };
                }
                uapi::NLMSG_ERROR => {
                    let reply = decode_error(message.flags, message.payload)
                        .map_err(DumpFailure::Malformed)?;
                    return Err(if reply.errno == 0 {
                        DumpFailure::Malformed(DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR))
                    } else {
                        DumpFailure::Kernel(reply)
                    });
                }
                uapi::NLMSG_NOOP => {}
                kind => take(kind, message.payload)?,
            }
        }
        Ok(DumpProgress::More)
    }
}

/// Whether `datagram` holds the last message (`NLMSG_DONE` or
/// `NLMSG_ERROR`) of the dump with sequence `seq`.
fn ends_dump(datagram: &[u8], seq: u32) -> bool {
    messages(datagram)
        .map_while(Result::ok)
        .any(|m| m.seq == seq && matches!(m.kind, uapi::NLMSG_DONE | uapi::NLMSG_ERROR))
}

/// The routes a route dump keeps, at most `limit`.
#[derive(Debug)]
struct RouteCollector {
    family: Family,
    limit: usize,
    routes: Vec<RouteEntry>,
}

impl RouteCollector {
    fn new(family: Family, limit: usize) -> Self {
        Self {
            family,
            limit,
            routes: Vec::new(),
        }
    }

    fn take(&mut self, kind: u16, payload: &[u8]) -> Result<(), DumpFailure> {
        if kind != uapi::RTM_NEWROUTE {
            return Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(kind)));
        }
        if let Some(route) =
            decode_route_entry(payload, self.family).map_err(DumpFailure::Malformed)?
        {
            if self.routes.len() >= self.limit {
                return Err(DumpFailure::TooLarge(self.limit));
            }
            self.routes.push(route);
        }
        Ok(())
    }
}

/// How many change notifications a datagram holds (`NLMSG_DONE` and no-ops
/// aside). A datagram that does not parse counts as one change: the caller
/// re-resolves, which is always safe.
fn count_notifications(datagram: &[u8]) -> usize {
    let mut count = 0;
    for message in messages(datagram) {
        match message {
            Ok(m) if matches!(m.kind, uapi::NLMSG_DONE | uapi::NLMSG_NOOP) => {}
            Ok(_) => count += 1,
            Err(_) => return count + 1,
        }
    }
    count
}

// ---------------------------------------------------------------------------
// Sockets.

/// Receive buffer size: replies to single gets are a few KiB at most, and
/// the kernel fills dump datagrams up to the largest buffer `recvmsg` was
/// given, capped near 32 KiB.
const BUFFER: usize = 64 * 1024;

/// How long a request waits for the kernel's reply (each datagram of a
/// dump) before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most routes [`Netlink::route_dump`] returns.
const MAX_ROUTES: usize = 1_000_000;

/// How many times a dump runs when the table keeps changing under it.
const DUMP_ATTEMPTS: usize = 3;

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("socket option and address structs are tiny")
}

/// A bound `NETLINK_ROUTE` socket, close-on-exec, subscribed to `groups`.
fn open_socket(groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2); the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, kind, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Best effort (Linux 4.3 / 4.12): errors echo only the request's header
    // and carry the kernel's message, e.g. "Invalid NTF_* flag ...".
    let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
    let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).expect("AF_NETLINK is 16");
    address.nl_groups = groups;
    // SAFETY: `address` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            socklen_of::<libc::sockaddr_nl>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receives one datagram into `buffer`; returns its length and whether the
/// kernel sent it (port id 0), not another process. A datagram larger than
/// the buffer is an error, not a silent truncation.
fn receive(fd: &OwnedFd, buffer: &mut [u8], flags: libc::c_int) -> io::Result<(usize, bool)> {
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut from_len = socklen_of::<libc::sockaddr_nl>();
    // SAFETY: `buffer`, `from` and `from_len` are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            flags | libc::MSG_TRUNC,
            (&raw mut from).cast(),
            &raw mut from_len,
        )
    };
    let length = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if length > buffer.len() {
        return Err(io::Error::other(format!(
            "a {length}-byte netlink datagram overflowed the {}-byte buffer",
            buffer.len()
        )));
    }
    Ok((length, from.nl_pid == 0))
}

/// What a request got back.
enum Reply {
    /// An `NLMSG_ERROR` with errno 0.
    Ack,
    /// A data message: its type and payload.
    Message(u16, Vec<u8>),
}

/// A request socket: one request at a time, each answered before the next.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buffer: Vec<u8>,
    /// The sequence number of a dump given up before its end (an error
    /// mid-way). The kernel runs one dump per socket, refusing another with
    /// `EBUSY` until that one is read to its end.
    unfinished_dump: Option<u32>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.fd)
            .field("seq", &self.seq)
            .field("unfinished_dump", &self.unfinished_dump)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a request socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let fd = open_socket(0, false).map_err(NetlinkError::Open)?;
        let timeout = libc::timeval {
            tv_sec: libc::time_t::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: 0,
        };
        // SAFETY: `timeout` lives for the call and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                socklen_of::<libc::timeval>(),
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            seq: 1,
            buffer: vec![0; BUFFER],
            unfinished_dump: None,
        })
    }

    /// Like `ip route get DST`: the route the kernel would use.
    /// Unreachable, blackhole and prohibit routes (and no route) come back
    /// as a [`Route`] of that kind, not as an error. Link-local IPv6
    /// destinations need an interface and are not supported.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Route, NetlinkError> {
        const OP: &str = "route get";
        let seq = self.next_seq();
        let request = encode_route_get(seq, dst);
        let target = || dst.to_string();
        let unroutable = |kind| Route {
            kind,
            oif: 0,
            gateway: None,
            source: None,
            mtu: None,
        };
        match self.exchange(&request, seq, OP, &target) {
            Ok(Reply::Message(uapi::RTM_NEWROUTE, payload)) => {
                decode_route(&payload).map_err(|source| malformed(OP, target(), source))
            }
            Ok(Reply::Message(kind, _)) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Ok(Reply::Ack) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
            Err(error) => match error.errno() {
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                    Ok(unroutable(RouteKind::Unreachable))
                }
                // The request is well-formed (see the tests below), so
                // EINVAL is the kernel's answer for a blackhole route.
                Some(libc::EINVAL) => Ok(unroutable(RouteKind::Blackhole)),
                Some(libc::EACCES) => Ok(unroutable(RouteKind::Prohibit)),
                _ => Err(error),
            },
        }
    }

    /// The routes of the main table (`RT_TABLE_MAIN`) for `family`, as
    /// `ip route show` / `ip -6 route show` lists them: unicast routes and
    /// also unreachable, blackhole and prohibit ones (and, for IPv4, any
    /// other kind an administrator put there), without cached clones. See
    /// [`RouteEntry`] for what each field holds. At most 1,000,000 routes
    /// (else [`NetlinkError::TooLarge`]); a dump the table's changes keep
    /// interrupting is tried 3 times, then fails with an
    /// [`io::ErrorKind::Interrupted`] I/O error.
    pub fn route_dump(&mut self, family: Family) -> Result<Vec<RouteEntry>, NetlinkError> {
        self.route_dump_at_most(family, MAX_ROUTES)
    }

    /// [`Netlink::route_dump`] keeping at most `limit` routes: one more is
    /// [`NetlinkError::TooLarge`], without collecting the rest (for a
    /// caller whose own table is smaller).
    pub fn route_dump_at_most(
        &mut self,
        family: Family,
        limit: usize,
    ) -> Result<Vec<RouteEntry>, NetlinkError> {
        const OP: &str = "route dump";
        let target = || format!("{family} main table");
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.next_seq();
            let request = encode_route_dump(seq, family);
            let mut collector = RouteCollector::new(family, limit);
            let complete = self.dump(&request, seq, OP, &target, &mut |kind, payload| {
                collector.take(kind, payload)
            })?;
            if complete {
                return Ok(collector.routes);
            }
        }
        Err(NetlinkError::Io {
            op: OP,
            target: target(),
            source: io::Error::new(
                io::ErrorKind::Interrupted,
                format!("the table changed during each of {DUMP_ATTEMPTS} dumps"),
            ),
        })
    }

    /// Like `ip neigh get ADDR dev IFINDEX`; `None` when there is no entry.
    pub fn neighbour_get(
        &mut self,
        addr: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        self.neighbour_get_as("neighbour get", addr, ifindex)
    }

    /// Makes the kernel resolve `addr` on `ifindex` now and keep it
    /// resolved: a managed entry (`NTF_EXT_MANAGED`, Linux 5.16+; `ip neigh
    /// replace ADDR dev DEV managed`). Leaves entries someone else owns
    /// (permanent, no-ARP, externally learned) alone, since the kernel would
    /// silently turn them into dynamic ones. Returns `true` when it created
    /// or changed an entry, `false` when it left one as it was (already
    /// managed, or owned elsewhere).
    pub fn neighbour_manage(&mut self, addr: IpAddr, ifindex: u32) -> Result<bool, NetlinkError> {
        const OP: &str = "neighbour manage";
        // Two rounds: an entry may appear between our look and our create.
        for _ in 0..2 {
            let existing = self.neighbour_get_as(OP, addr, ifindex)?;
            if existing.is_some_and(|n| n.managed || n.owned_elsewhere()) {
                return Ok(false);
            }
            let seq = self.next_seq();
            let request = encode_neighbour_manage(seq, addr, ifindex, existing.is_some());
            match self.exchange(&request, seq, OP, &|| neighbour_target(addr, ifindex)) {
                Ok(_) => return Ok(true),
                Err(error) if error.errno() == Some(libc::EEXIST) => {}
                Err(error) => return Err(error),
            }
        }
        Err(NetlinkError::Kernel {
            op: OP,
            target: neighbour_target(addr, ifindex),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            message: Some("entry keeps reappearing".into()),
        })
    }

    /// Removes a managed entry this process made. A missing entry is not an
    /// error; an entry that is no longer managed (an administrator replaced
    /// it) is left alone.
    pub fn neighbour_forget(&mut self, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
        const OP: &str = "neighbour forget";
        match self.neighbour_get_as(OP, addr, ifindex)? {
            Some(neighbour) if neighbour.managed => {}
            _ => return Ok(()),
        }
        let seq = self.next_seq();
        let request = encode_neighbour_delete(seq, addr, ifindex);
        match self.exchange(&request, seq, OP, &|| neighbour_target(addr, ifindex)) {
            Ok(_) => Ok(()),
            Err(error) if error.errno() == Some(libc::ENOENT) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// MAC address, MTU and state of an interface (`RTM_GETLINK` by index).
    pub fn link(&mut self, ifindex: u32) -> Result<Link, NetlinkError> {
        const OP: &str = "link get";
        let seq = self.next_seq();
        let request = encode_link_get(seq, ifindex);
        let target = || format!("#{ifindex}");
        match self.exchange(&request, seq, OP, &target)? {
            Reply::Message(uapi::RTM_NEWLINK, payload) => {
                decode_link(&payload).map_err(|source| malformed(OP, target(), source))
            }
            Reply::Message(kind, _) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Reply::Ack => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
        }
    }

    fn neighbour_get_as(
        &mut self,
        op: &'static str,
        addr: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let seq = self.next_seq();
        let request = encode_neighbour_get(seq, addr, ifindex);
        let target = || neighbour_target(addr, ifindex);
        match self.exchange(&request, seq, op, &target) {
            Ok(Reply::Message(uapi::RTM_NEWNEIGH, payload)) => decode_neighbour(&payload)
                .map(Some)
                .map_err(|source| malformed(op, target(), source)),
            Ok(Reply::Message(kind, _)) => Err(malformed(
                op,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Ok(Reply::Ack) => Err(malformed(
                op,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
            Err(error) if error.errno() == Some(libc::ENOENT) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` and reads until the answer with sequence `seq`
    /// arrives; replies to earlier, abandoned requests are skipped.
    fn exchange(
        &mut self,
        request: &[u8],
        seq: u32,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<Reply, NetlinkError> {
        self.send(request, op, target)?;
        loop {
            let length = self.receive_datagram(op, target)?;
            let datagram = self.buffer.get(..length).unwrap_or_default();
            for message in messages(datagram) {
                let message = message.map_err(|source| malformed(op, target(), source))?;
                if message.seq != seq {
                    continue;
                }
                if message.kind != uapi::NLMSG_ERROR {
                    return Ok(Reply::Message(message.kind, message.payload.to_vec()));
                }
                let reply = decode_error(message.flags, message.payload)
                    .map_err(|source| malformed(op, target(), source))?;
                if reply.errno == 0 {
                    return Ok(Reply::Ack);
                }
                return Err(NetlinkError::Kernel {
                    op,
                    target: target(),
                    source: io::Error::from_raw_os_error(reply.errno),
                    message: reply.message,
                });
            }
        }
    }

    /// Sends the dump `request` (sequence `seq`) and hands every data
    /// message of its reply to `take`, until `NLMSG_DONE`. Returns whether
    /// the dump is consistent (no `NLM_F_DUMP_INTR`). A dump given up
    /// before its end is read to its end before the next one starts.
    fn dump(
        &mut self,
        request: &[u8],
        seq: u32,
        op: &'static str,
        target: &dyn Fn() -> String,
        take: &mut TakeMessage<'_>,
    ) -> Result<bool, NetlinkError> {
        self.finish_unfinished_dump(op, target)?;
        self.send(request, op, target)?;
        self.unfinished_dump = Some(seq);
        let mut reader = DumpReader::new(seq);
        loop {
            let length = self.receive_datagram(op, target)?;
            let datagram = self.buffer.get(..length).unwrap_or_default();
            match reader.feed(datagram, take) {
                Ok(DumpProgress::More) => {}
                Ok(DumpProgress::Done) => {
                    self.unfinished_dump = None;
                    return Ok(!reader.interrupted);
                }
                Err(failure) => {
                    // The kernel's error ends the dump; ours do not.
                    if matches!(failure, DumpFailure::Kernel(_)) {
                        self.unfinished_dump = None;
                    }
                    return Err(failure.into_error(op, target()));
                }
            }
        }
    }

    /// Reads a dump given up earlier to its end (discarding it), so that the
    /// kernel accepts a new one. A silent socket (the end was lost) is
    /// taken as the end.
    fn finish_unfinished_dump(
        &mut self,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        while self.unfinished_dump.is_some() {
            match self.receive_datagram(op, target) {
                Ok(_) => {}
                Err(NetlinkError::Io { source, .. })
                    if source.kind() == io::ErrorKind::TimedOut =>
                {
                    self.unfinished_dump = None;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn send(
        &self,
        request: &[u8],
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        loop {
            // SAFETY: `request` is valid for its length; the kernel is the
            // default destination of an unconnected netlink socket.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(io_error(op, target, error));
            }
        }
    }

    /// Receives the kernel's next datagram into the buffer and returns its
    /// length. Notes the end of an unfinished dump on the way.
    fn receive_datagram(
        &mut self,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<usize, NetlinkError> {
        loop {
            let (length, from_kernel) = match receive(&self.fd, &mut self.buffer, 0) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // SO_RCVTIMEO expired.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io_error(
                        op,
                        target,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no reply within {REPLY_TIMEOUT:?}"),
                        ),
                    ));
                }
                Err(error) => return Err(io_error(op, target, error)),
            };
            if !from_kernel {
                continue;
            }
            if let Some(seq) = self.unfinished_dump
                && ends_dump(self.buffer.get(..length).unwrap_or_default(), seq)
            {
                self.unfinished_dump = None;
            }
            return Ok(length);
        }
    }
}

fn io_error(op: &'static str, target: &dyn Fn() -> String, source: io::Error) -> NetlinkError {
    NetlinkError::Io {
        op,
        target: target(),
        source,
    }
}

fn neighbour_target(addr: IpAddr, ifindex: u32) -> String {
    format!("{addr} dev #{ifindex}")
}

fn malformed(op: &'static str, target: String, source: DecodeError) -> NetlinkError {
    NetlinkError::Malformed { op, target, source }
}

/// A socket subscribed to neighbour, route, link and address changes
/// (`RTMGRP_NEIGH`, `RTMGRP_IPV4_ROUTE`, `RTMGRP_IPV6_ROUTE`, `RTMGRP_LINK`,
/// `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`). It only says *that*
/// something changed; the caller re-resolves what it cares about.
pub struct Monitor {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let groups = uapi::RTMGRP_NEIGH
            | uapi::RTMGRP_IPV4_ROUTE
            | uapi::RTMGRP_IPV6_ROUTE
            | uapi::RTMGRP_LINK
            | uapi::RTMGRP_IPV4_IFADDR
            | uapi::RTMGRP_IPV6_IFADDR;
        let fd = open_socket(groups, true).map_err(NetlinkError::Open)?;
        // Best effort: a bigger queue makes overruns (ENOBUFS) rarer when a
        // link flap floods route and neighbour events. FORCE needs
        // CAP_NET_ADMIN and ignores rmem_max; the plain option is the fallback.
        let size = 4 * 1024 * 1024;
        if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        Ok(Self {
            fd,
            buffer: vec![0; BUFFER],
        })
    }

    /// Waits up to `timeout` for change notifications and returns how many
    /// arrived (0 on timeout). Once one arrives it drains everything queued
    /// without waiting further. An overrun (`ENOBUFS`: notifications were
    /// lost) counts as a change, so the caller re-resolves everything.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, NetlinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = libc::c_int::try_from(remaining.as_micros().div_ceil(1000))
                .unwrap_or(libc::c_int::MAX);
            let mut poll_fd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the count given.
            let rc = unsafe { libc::poll(&raw mut poll_fd, 1, millis) };
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.error(error));
            }
            if rc > 0 {
                let count = self.drain()?;
                if count > 0 {
                    return Ok(count);
                }
            }
            if Instant::now() >= deadline {
                return Ok(0);
            }
        }
    }

    /// Reads every queued datagram without blocking; counts notifications.
    fn drain(&mut self) -> Result<usize, NetlinkError> {
        let mut count = 0usize;
        loop {
            match receive(&self.fd, &mut self.buffer, libc::MSG_DONTWAIT) {
                Ok((length, true)) => {
                    count += count_notifications(self.buffer.get(..length).unwrap_or_default());
                }
                Ok((_, false)) => {}
                Err(error) => match error.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(count),
                    Some(libc::ENOBUFS) => count += 1,
                    Some(libc::EINTR) => {}
                    _ => return Err(self.error(error)),
                },
            }
        }
    }

    fn error(&self, source: io::Error) -> NetlinkError {
        NetlinkError::Io {
            op: "monitor",
            target: format!("fd {}", self.fd.as_raw_fd()),
            source,
        }
    }
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn v4(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn route_get_request_bytes() {
        let bytes = encode_route_get(1, v4("198.51.100.1"));
        #[rustfmt::skip]
        let expected = [
            0x24, 0, 0, 0,  26, 0,  0x01, 0,  1, 0, 0, 0,  0, 0, 0, 0, // nlmsghdr
            2, 32, 0, 0, 0, 0, 0, 0,  0, 0, 0, 0,                      // rtmsg
            8, 0, 1, 0,  198, 51, 100, 1,                              // RTA_DST
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn neighbour_manage_request_is_what_iproute2_sends() {
        // strace of `ip neigh replace 192.0.2.11 dev va managed` (va = #2):
        // nlmsg_len=44, RTM_NEWNEIGH, REQUEST|ACK|REPLACE|CREATE,
        // ndm_state=NUD_NONE, NDA_DST, NDA_FLAGS_EXT=NTF_EXT_MANAGED.
        let bytes = encode_neighbour_manage(7, v4("192.0.2.11"), 2, true);
        #[rustfmt::skip]
        let expected = [
            44, 0, 0, 0,  28, 0,  0x05, 0x05,  7, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,  2, 0, 0, 0,  0, 0,  0,  0,         // ndmsg
            8, 0, 1, 0,  192, 0, 2, 11,                     // NDA_DST
            8, 0, 15, 0,  1, 0, 0, 0,                       // NDA_FLAGS_EXT
        ];
        assert_eq!(bytes, expected);
        // Without an entry: CREATE|EXCL instead of REPLACE.
        let bytes = encode_neighbour_manage(7, v4("192.0.2.11"), 2, false);
        assert_eq!(bytes[6..8], [0x05, 0x06]);
    }

    #[test]
    fn neighbour_get_and_delete_and_link_request_bytes() {
        let v6: IpAddr = "2001:db8::11".parse().expect("test address");
        #[rustfmt::skip]
        let expected = [
            48, 0, 0, 0,  30, 0,  0x01, 0,  3, 0, 0, 0,  0, 0, 0, 0,
            10, 0, 0, 0,  5, 0, 0, 0,  0, 0,  0,  0,
            20, 0, 1, 0,  0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        ];
        assert_eq!(encode_neighbour_get(3, v6, 5), expected);
        let delete = encode_neighbour_delete(4, v4("192.0.2.11"), 2);
        assert_eq!(delete[4..8], [29, 0, 0x05, 0]);
        assert_eq!(delete.len(), 36);
        #[rustfmt::skip]
        let link = [
            32, 0, 0, 0,  18, 0,  0x01, 0,  9, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(encode_link_get(9, 2), link);
    }

    /// The kernel's answer to `ip route get 198.51.100.1` with
    /// `198.51.100.0/24 via 192.0.2.11 dev #2 mtu 1300`: `RTA_TABLE`,
    /// `RTA_DST`, `RTA_OIF`, `RTA_PREFSRC`, `RTA_GATEWAY`, `RTA_METRICS` with
    /// `RTAX_MTU`, `RTA_UID`, `RTA_CACHEINFO`.
    #[rustfmt::skip]
    const ROUTE_REPLY: [u8; 124] = [
        0x7c, 0, 0, 0,  0x18, 0,  0, 0,  1, 0, 0, 0,  0xe1, 0x24, 0, 0,
        2, 32, 0, 0, 0xfe, 0, 0, 1,  0, 2, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 1, 0,  198, 51, 100, 1,
        8, 0, 4, 0,  2, 0, 0, 0,
        8, 0, 7, 0,  192, 0, 2, 1,
        8, 0, 5, 0,  192, 0, 2, 11,
        12, 0, 8, 0,  8, 0, 2, 0,  0x14, 0x05, 0, 0,
        8, 0, 25, 0,  0, 0, 0, 0,
        36, 0, 12, 0,  2, 0, 0, 0, 0, 0, 0, 0,  0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,  0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn decodes_a_route_reply() {
        let message = messages(&ROUTE_REPLY)
            .next()
            .expect("one message")
            .expect("parses");
        assert_eq!((message.kind, message.seq), (uapi::RTM_NEWROUTE, 1));
        let route = decode_route(message.payload).expect("route");
        assert_eq!(
            route,
            Route {
                kind: RouteKind::Unicast,
                oif: 2,
                gateway: Some(v4("192.0.2.11")),
                source: Some(v4("192.0.2.1")),
                mtu: Some(1300),
            }
        );
    }

    #[test]
    fn decodes_route_kinds_and_rta_via() {
        #[rustfmt::skip]
        let local = [
            2, 32, 0, 0, 0xff, 0, 0xfe, 2,  0, 0, 0, 0,
            8, 0, 4, 0,  1, 0, 0, 0,
        ];
        let route = decode_route(&local).expect("route");
        assert_eq!(
            (route.kind, route.oif, route.gateway),
            (RouteKind::Local, 1, None)
        );
        #[rustfmt::skip]
        let via = [
            2, 32, 0, 0, 0xfe, 0, 0, 1,  0, 0, 0, 0,
            22, 0, 18, 0,  10, 0,  0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,  0, 0,
        ];
        let route = decode_route(&via).expect("route");
        assert_eq!(route.gateway, Some("2001:db8::1".parse().expect("addr")));
        let mut other = local;
        other[7] = 3; // RTN_BROADCAST
        assert_eq!(
            decode_route(&other).expect("route").kind,
            RouteKind::Other(3)
        );
    }

    /// The kernel's answer to `ip neigh get 192.0.2.11 dev #2` for a
    /// permanent entry: `NDA_DST`, `NDA_LLADDR`, `NDA_PROBES`, `NDA_CACHEINFO`.
    #[rustfmt::skip]
    const NEIGHBOUR_REPLY: [u8; 76] = [
        0x4c, 0, 0, 0,  0x1c, 0,  0, 0,  2, 0, 0, 0,  0xe1, 0x24, 0, 0,
        2, 0, 0, 0,  2, 0, 0, 0,  0x80, 0,  0, 1,
        8, 0, 1, 0,  192, 0, 2, 11,
        10, 0, 2, 0,  2, 0, 0, 0, 0, 0x99,  0, 0,
        8, 0, 4, 0,  0, 0, 0, 0,
        20, 0, 3, 0,  0x62, 1, 0, 0,  0x62, 1, 0, 0,  0x62, 1, 0, 0,  1, 0, 0, 0,
    ];

    #[test]
    fn decodes_a_neighbour_reply() {
        let message = messages(&NEIGHBOUR_REPLY)
            .next()
            .expect("one message")
            .expect("parses");
        assert_eq!(message.kind, uapi::RTM_NEWNEIGH);
        let neighbour = decode_neighbour(message.payload).expect("neighbour");
        assert_eq!(
            neighbour,
            Neighbour {
                mac: Some([2, 0, 0, 0, 0, 0x99]),
                state: nud::PERMANENT,
                managed: false,
                extern_learned: false,
            }
        );
        assert!(neighbour.usable() && neighbour.owned_elsewhere());
    }

    #[test]
    fn decodes_a_managed_neighbour_and_usability() {
        #[rustfmt::skip]
        let incomplete = [
            10, 0, 0, 0,  2, 0, 0, 0,  0x01, 0,  0, 1,
            8, 0, 15, 0,  1, 0, 0, 0,
        ];
        let neighbour = decode_neighbour(&incomplete).expect("neighbour");
        assert!(neighbour.managed && !neighbour.usable() && !neighbour.owned_elsewhere());
        let stale_without_mac = Neighbour {
            mac: None,
            state: nud::STALE,
            managed: false,
            extern_learned: false,
        };
        assert!(!stale_without_mac.usable());
        let failed = Neighbour {
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: nud::FAILED,
            ..stale_without_mac
        };
        assert!(!failed.usable());
        assert!(
            Neighbour {
                state: nud::DELAY,
                ..failed
            }
            .usable()
        );
    }

    /// `ENOENT` for `ip neigh get 192.0.2.99 dev #2`, without
    /// `NETLINK_CAP_ACK`: the whole request is echoed.
    #[rustfmt::skip]
    const ENOENT_REPLY: [u8; 56] = [
        0x38, 0, 0, 0,  2, 0,  0, 0,  3, 0, 0, 0,  0xe1, 0x24, 0, 0,
        0xfe, 0xff, 0xff, 0xff,
        0x24, 0, 0, 0,  0x1e, 0,  1, 0,  3, 0, 0, 0,  0, 0, 0, 0,
        2, 0, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0,
        8, 0, 1, 0,  192, 0, 2, 99,
    ];

    #[test]
    fn decodes_errors_and_acks() {
        let message = messages(&ENOENT_REPLY)
            .next()
            .expect("one message")
            .expect("parses");
        assert_eq!(message.kind, uapi::NLMSG_ERROR);
        let reply = decode_error(message.flags, message.payload).expect("error");
        assert_eq!(
            reply,
            ErrorReply {
                errno: libc::ENOENT,
                message: None
            }
        );

        // Capped (header only) with an extended-ack message: EINVAL.
        #[rustfmt::skip]
        let capped = [
            0xea, 0xff, 0xff, 0xff,
            44, 0, 0, 0,  28, 0,  0x05, 0x05,  7, 0, 0, 0,  0, 0, 0, 0,
            12, 0, 1, 0,  b'b', b'a', b'd', b' ', b'!', 0, 0, 0,
        ];
        let reply =
            decode_error(uapi::NLM_F_CAPPED | uapi::NLM_F_ACK_TLVS, &capped).expect("error");
        assert_eq!(
            reply,
            ErrorReply {
                errno: libc::EINVAL,
                message: Some("bad !".into())
            }
        );

        let ack = [0u8; 20];
        assert_eq!(
            decode_error(uapi::NLM_F_CAPPED, &ack).expect("ack").errno,
            0
        );
    }

    #[test]
    fn decodes_a_link_reply() {
        // Head of the kernel's RTM_NEWLINK for a veth: ifinfomsg (ARPHRD_ETHER,
        // #2, UP|BROADCAST|RUNNING|MULTICAST|LOWER_UP), IFLA_IFNAME "va",
        // IFLA_MTU 1400, IFLA_ADDRESS, IFLA_BROADCAST.
        #[rustfmt::skip]
        let payload = [
            0, 0, 1, 0,  2, 0, 0, 0,  0x43, 0x10, 1, 0,  0, 0, 0, 0,
            7, 0, 3, 0,  b'v', b'a', 0, 0,
            8, 0, 4, 0,  0x78, 0x05, 0, 0,
            10, 0, 1, 0,  0x76, 0xa3, 0x28, 0x8e, 0xde, 0x98,  0, 0,
            10, 0, 2, 0,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  0, 0,
        ];
        let link = decode_link(&payload).expect("link");
        assert_eq!(
            link,
            Link {
                mac: Some([0x76, 0xa3, 0x28, 0x8e, 0xde, 0x98]),
                mtu: 1400,
                up: true,
            }
        );
        let mut down = payload;
        down[8] = 0x02; // BROADCAST only
        assert!(!decode_link(&down).expect("link").up);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_never_a_panic() {
        for cut in 1..ROUTE_REPLY.len() {
            let parsed: Result<Vec<_>, _> = messages(&ROUTE_REPLY[..cut]).collect();
            assert!(parsed.is_err(), "cut at {cut} parsed");
            // The payload alone, cut anywhere: decoding may fail, never panic.
            let _ = decode_route(ROUTE_REPLY.get(16..cut).unwrap_or_default());
            let _ = decode_neighbour(NEIGHBOUR_REPLY.get(16..cut.min(76)).unwrap_or_default());
            let _ = decode_link(ROUTE_REPLY.get(16..cut).unwrap_or_default());
            let _ = decode_error(0, ENOENT_REPLY.get(16..cut.min(56)).unwrap_or_default());
        }
        assert_eq!(decode_route(&[2, 32]), Err(DecodeError::Truncated("rtmsg")));
        // A message whose length field lies.
        let mut lying = NEIGHBOUR_REPLY;
        lying[0] = 0xff;
        assert!(matches!(
            messages(&lying).next(),
            Some(Err(DecodeError::BadLength { .. }))
        ));
        lying[0] = 3; // shorter than a header
        assert!(matches!(messages(&lying).next(), Some(Err(_))));
        // An attribute whose length is below its own header, or too long.
        let mut payload = NEIGHBOUR_REPLY[16..].to_vec();
        payload[12] = 2;
        assert!(decode_neighbour(&payload).is_err());
        payload[12] = 200;
        assert!(decode_neighbour(&payload).is_err());
        // Attribute values of the wrong size.
        #[rustfmt::skip]
        let bad_oif = [2, 32, 0, 0, 0, 0, 0, 1,  0, 0, 0, 0,  6, 0, 4, 0, 1, 0, 0, 0];
        assert_eq!(
            decode_route(&bad_oif),
            Err(DecodeError::BadValue {
                what: "RTA_OIF",
                length: 2
            })
        );
        for garbage in [&[0xffu8; 40][..], &[0u8; 40][..], &[0x10, 0, 0][..]] {
            let _ = messages(garbage).collect::<Vec<_>>();
            let _ = decode_route(garbage);
            let _ = decode_neighbour(garbage);
            let _ = decode_link(garbage);
            let _ = decode_error(0, garbage);
            let _ = decode_error(uapi::NLM_F_ACK_TLVS, garbage);
            let _ = count_notifications(garbage);
        }
    }

    #[test]
    fn counts_notifications_in_a_datagram() {
        let mut two = NEIGHBOUR_REPLY.to_vec();
        two.extend_from_slice(&ROUTE_REPLY);
        assert_eq!(count_notifications(&two), 2);
        #[rustfmt::skip]
        let done = [20, 0, 0, 0,  3, 0,  2, 0,  1, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0];
        assert_eq!(count_notifications(&done), 0);
        // Garbage after a good message still says "something changed".
        two.truncate(NEIGHBOUR_REPLY.len() + 10);
        assert_eq!(count_notifications(&two), 2);
    }

    // Route dumps. The messages below are the kernel's (6.18) answer to
    // `ip route show table all` / `ip -6 route show table all` in a
    // namespace with `nl0` = #2, captured with `strace -x -e read=3`. Each
    // is a whole netlink message (flags `NLM_F_MULTI | NLM_F_DUMP_FILTERED`,
    // sequence `DUMP_SEQ`).
    const DUMP_SEQ: u32 = 0x6b0d_7e7d;

    /// `default via 192.0.2.254 dev #2`: `RTA_TABLE`, `RTA_GATEWAY`, `RTA_OIF`.
    #[rustfmt::skip]
    const DUMP_DEFAULT: [u8; 52] = [
        0x34, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 0, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 5, 0,  0xc0, 0, 2, 0xfe,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// `192.0.2.0/24 dev #2 proto kernel scope link src 192.0.2.1`: no gateway.
    #[rustfmt::skip]
    const DUMP_CONNECTED: [u8; 60] = [
        0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 24, 0, 0, 0xfe, 2, 0xfd, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 1, 0,  0xc0, 0, 2, 0,
        8, 0, 7, 0,  0xc0, 0, 2, 1,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// `198.51.100.64/26 via 192.0.2.11 dev #2 mtu 1300`: `RTA_METRICS`.
    #[rustfmt::skip]
    const DUMP_MTU: [u8; 72] = [
        0x48, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 26, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 1, 0,  0xc6, 0x33, 0x64, 0x40,
        12, 0, 8, 0,  8, 0, 2, 0, 20, 5, 0, 0,
        8, 0, 5, 0,  0xc0, 0, 2, 11,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// `unreachable 203.0.113.0/24`: no interface.
    #[rustfmt::skip]
    const DUMP_UNREACHABLE: [u8; 44] = [
        0x2c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 24, 0, 0, 0xfe, 3, 0, 7,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 1, 0,  0xcb, 0, 0x71, 0,
    ];

    /// `203.0.113.128/25 nexthop via 192.0.2.11 nexthop via 192.0.2.12`:
    /// `RTA_MULTIPATH` (two `rtnexthop`s), no top-level gateway or interface.
    #[rustfmt::skip]
    const DUMP_MULTIPATH: [u8; 80] = [
        0x50, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 25, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 1, 0,  0xcb, 0, 0x71, 0x80,
        0x24, 0, 9, 0,  16, 0, 0, 0, 2, 0, 0, 0, 8, 0, 5, 0, 0xc0, 0, 2, 11, 16, 0, 0, 0, 2, 0, 0, 0, 8, 0, 5, 0, 0xc0, 0, 2, 12,
    ];

    /// `198.51.100.128/25 via 192.0.2.12 table 100`.
    #[rustfmt::skip]
    const DUMP_TABLE_100: [u8; 60] = [
        0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 25, 0, 0, 0x64, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0x64, 0, 0, 0,
        8, 0, 1, 0,  0xc6, 0x33, 0x64, 0x80,
        8, 0, 5, 0,  0xc0, 0, 2, 12,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// `198.51.100.192/26 via 192.0.2.13 table 1000`: `rtm_table` says
    /// `RT_TABLE_COMPAT` (252), `RTA_TABLE` 1000.
    #[rustfmt::skip]
    const DUMP_TABLE_1000: [u8; 60] = [
        0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 26, 0, 0, 0xfc, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xe8, 3, 0, 0,
        8, 0, 1, 0,  0xc6, 0x33, 0x64, 0xc0,
        8, 0, 5, 0,  0xc0, 0, 2, 13,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// `local 192.0.2.1 dev #2 table local`.
    #[rustfmt::skip]
    const DUMP_LOCAL: [u8; 60] = [
        0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        2, 0x20, 0, 0, 0xff, 2, 0xfe, 2,  0, 0, 0, 0,
        8, 0, 15, 0,  0xff, 0, 0, 0,
        8, 0, 1, 0,  0xc0, 0, 2, 1,
        8, 0, 7, 0,  0xc0, 0, 2, 1,
        8, 0, 4, 0,  2, 0, 0, 0,
    ];

    /// The end of the IPv4 dump, alone in its datagram.
    #[rustfmt::skip]
    const DUMP_DONE: [u8; 20] = [
        20, 0, 0, 0,  3, 0,  2, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
        0, 0, 0, 0,
    ];

    /// `2001:db8::/64 dev #2 proto kernel metric 256`: `RTA_PRIORITY`,
    /// `RTA_CACHEINFO`, `RTA_PREF`.
    #[rustfmt::skip]
    const DUMP_V6_CONNECTED: [u8; 116] = [
        0x74, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x54, 18, 0, 0,
        10, 0x40, 0, 0, 0xfe, 2, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        20, 0, 1, 0,  0x20, 1, 13, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        8, 0, 6, 0,  0, 1, 0, 0,
        8, 0, 4, 0,  2, 0, 0, 0,
        0x24, 0, 12, 0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        5, 0, 20, 0,  0, 0, 0, 0,
    ];

    /// `default via 2001:db8::fe dev #2 metric 1024`.
    #[rustfmt::skip]
    const DUMP_V6_DEFAULT: [u8; 116] = [
        0x74, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x54, 18, 0, 0,
        10, 0, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
        8, 0, 15, 0,  0xfe, 0, 0, 0,
        8, 0, 6, 0,  0, 4, 0, 0,
        20, 0, 5, 0,  0x20, 1, 13, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
        8, 0, 4, 0,  2, 0, 0, 0,
        0x24, 0, 12, 0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        5, 0, 20, 0,  0, 0, 0, 0,
    ];
    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Feeds `datagrams` to a dump of `family`, as `Netlink::dump` does
    /// with the socket's; returns the routes and whether the dump is
    /// consistent. Datagrams that end before `NLMSG_DONE` are an error.
    fn dump_of(
        datagrams: &[&[u8]],
        family: Family,
        limit: usize,
    ) -> Result<(Vec<RouteEntry>, bool), DumpFailure> {
        let mut reader = DumpReader::new(DUMP_SEQ);
        let mut collector = RouteCollector::new(family, limit);
        for datagram in datagrams {
            let progress =
                reader.feed(datagram, &mut |kind, payload| collector.take(kind, payload))?;
            if progress == DumpProgress::Done {
                return Ok((collector.routes, !reader.interrupted));
            }
        }
        Err(DumpFailure::Malformed(DecodeError::Truncated(
            "dump without NLMSG_DONE",
        )))
    }

    fn entry(dst: &str, prefix_len: u8, kind: RouteKind) -> RouteEntry {
        RouteEntry {
            dst: v4(dst),
            prefix_len,
            kind,
            oif: 0,
            gateway: None,
            mtu: None,
            multipath: false,
        }
    }

    #[test]
    fn route_dump_request_is_what_iproute2_sends() {
        // `ip route show table all`: RTM_GETROUTE, REQUEST|DUMP, an rtmsg
        // with only the family set, no attributes.
        #[rustfmt::skip]
        let expected = [
            0x1c, 0, 0, 0,  26, 0,  0x01, 0x03,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
            2, 0, 0, 0, 0, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(encode_route_dump(DUMP_SEQ, Family::V4), expected);
        let mut v6 = expected;
        v6[16] = 10;
        assert_eq!(encode_route_dump(DUMP_SEQ, Family::V6), v6);
    }

    #[test]
    fn decodes_a_multi_part_route_dump() {
        // Two routes in the first datagram, the rest in the second, and
        // NLMSG_DONE alone in the third, as the kernel splits a long dump.
        let first = concat(&[&DUMP_DEFAULT, &DUMP_CONNECTED]);
        let second = concat(&[
            &DUMP_TABLE_100,
            &DUMP_TABLE_1000,
            &DUMP_MTU,
            &DUMP_UNREACHABLE,
            &DUMP_MULTIPATH,
            &DUMP_LOCAL,
        ]);
        let (routes, consistent) =
            dump_of(&[&first, &second, &DUMP_DONE], Family::V4, 10).expect("dump");
        assert!(consistent);
        let expected = [
            RouteEntry {
                oif: 2,
                gateway: Some(v4("192.0.2.254")),
                ..entry("0.0.0.0", 0, RouteKind::Unicast)
            },
            RouteEntry {
                oif: 2,
                ..entry("192.0.2.0", 24, RouteKind::Unicast)
            },
            RouteEntry {
                oif: 2,
                gateway: Some(v4("192.0.2.11")),
                mtu: Some(1300),
                ..entry("198.51.100.64", 26, RouteKind::Unicast)
            },
            entry("203.0.113.0", 24, RouteKind::Unreachable),
            RouteEntry {
                multipath: true,
                ..entry("203.0.113.128", 25, RouteKind::Unicast)
            },
        ];
        assert_eq!(routes, expected);

        // Two routes and NLMSG_DONE in one datagram.
        let one = concat(&[&DUMP_DEFAULT, &DUMP_CONNECTED, &DUMP_DONE]);
        let (routes, _) = dump_of(&[&one], Family::V4, 10).expect("dump");
        assert_eq!(routes, expected[..2]);
    }

    #[test]
    fn decodes_an_ipv6_route_dump() {
        let datagram = concat(&[&DUMP_V6_CONNECTED, &DUMP_V6_DEFAULT, &DUMP_DONE]);
        let (routes, _) = dump_of(&[&datagram], Family::V6, 10).expect("dump");
        let v6 = |text: &str| -> IpAddr { text.parse().expect("test address") };
        let connected = RouteEntry {
            dst: v6("2001:db8::"),
            prefix_len: 64,
            kind: RouteKind::Unicast,
            oif: 2,
            gateway: None,
            mtu: None,
            multipath: false,
        };
        let default = RouteEntry {
            dst: v6("::"),
            prefix_len: 0,
            gateway: Some(v6("2001:db8::fe")),
            ..connected
        };
        assert_eq!(routes, [connected, default]);
        // The other family's dump keeps none of them.
        let (routes, _) = dump_of(&[&datagram], Family::V4, 10).expect("dump");
        assert_eq!(routes, []);
    }

    #[test]
    fn route_dump_keeps_the_main_table_only() {
        let payload = |message: &[u8]| message[16..].to_vec();
        let decode = |payload: &[u8], family| decode_route_entry(payload, family).expect("parses");
        for other in [&DUMP_TABLE_100[..], &DUMP_TABLE_1000, &DUMP_LOCAL] {
            assert_eq!(decode(&payload(other), Family::V4), None);
        }
        // RTA_TABLE, not rtm_table, decides: rtm_table says COMPAT (252)
        // here, and main (254) in the default route.
        let mut compat_main = payload(&DUMP_TABLE_1000);
        compat_main[16..18].copy_from_slice(&[254, 0]);
        assert_eq!(
            decode(&compat_main, Family::V4).map(|r| r.dst),
            Some(v4("198.51.100.192"))
        );
        let mut main_100 = payload(&DUMP_DEFAULT);
        main_100[16] = 100;
        assert_eq!(decode(&main_100, Family::V4), None);
        // Without RTA_TABLE, rtm_table.
        #[rustfmt::skip]
        let bare = [2, 24, 0, 0, 254, 3, 0, 1,  0, 0, 0, 0,  8, 0, 1, 0,  192, 0, 2, 0];
        assert!(decode(&bare, Family::V4).is_some());
        let mut bare_local = bare;
        bare_local[4] = 255;
        assert_eq!(decode(&bare_local, Family::V4), None);

        // Cached clones are left out.
        let mut cloned = payload(&DUMP_DEFAULT);
        cloned[9] = 0x02; // rtm_flags = RTM_F_CLONED
        assert_eq!(decode(&cloned, Family::V4), None);

        // IPv6: routes that neither forward nor refuse are left out even in
        // main; IPv4 keeps any kind, as `ip route show` does.
        let mut v6_multicast = payload(&DUMP_V6_DEFAULT);
        v6_multicast[7] = 5; // RTN_MULTICAST
        assert_eq!(decode(&v6_multicast, Family::V6), None);
        let mut v6_blackhole = payload(&DUMP_V6_DEFAULT);
        v6_blackhole[7] = uapi::RTN_BLACKHOLE;
        assert_eq!(
            decode(&v6_blackhole, Family::V6).map(|r| r.kind),
            Some(RouteKind::Blackhole)
        );
        let mut v4_local = payload(&DUMP_CONNECTED);
        v4_local[7] = uapi::RTN_LOCAL;
        assert_eq!(
            decode(&v4_local, Family::V4).map(|r| r.kind),
            Some(RouteKind::Local)
        );
    }

    #[test]
    fn route_dump_errors_interruptions_and_limits() {
        // Replies to other requests are skipped, their NLMSG_DONE too.
        let mut stale_done = DUMP_DONE;
        stale_done[8] = 0x7c;
        let mut stale_route = DUMP_DEFAULT;
        stale_route[8] = 0x7c;
        let datagram = concat(&[&stale_route, &stale_done, &DUMP_CONNECTED, &DUMP_DONE]);
        let (routes, _) = dump_of(&[&datagram], Family::V4, 10).expect("dump");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst, v4("192.0.2.0"));

        // NLM_F_DUMP_INTR: complete but inconsistent.
        let mut interrupted = DUMP_CONNECTED;
        interrupted[6] |= 0x10;
        let (routes, consistent) =
            dump_of(&[&interrupted, &DUMP_DONE], Family::V4, 10).expect("dump");
        assert_eq!((routes.len(), consistent), (1, false));

        // An errno in NLMSG_DONE, with an extended-ack message.
        #[rustfmt::skip]
        let failed_done = [
            28, 0, 0, 0,  3, 0,  0x02, 0x02,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
            0xf0, 0xff, 0xff, 0xff, // -EBUSY
            8, 0, 1, 0,  b'n', b'o', b'!', 0,
        ];
        assert_eq!(
            dump_of(&[&DUMP_DEFAULT, &failed_done], Family::V4, 10),
            Err(DumpFailure::Kernel(ErrorReply {
                errno: libc::EBUSY,
                message: Some("no!".into())
            }))
        );

        // NLMSG_ERROR instead of the dump (ENOENT_REPLY answers seq 3).
        let mut refused = ENOENT_REPLY;
        refused[8..12].copy_from_slice(&DUMP_SEQ.to_ne_bytes());
        assert_eq!(
            dump_of(&[&refused], Family::V4, 10),
            Err(DumpFailure::Kernel(ErrorReply {
                errno: libc::ENOENT,
                message: None
            }))
        );
        // An ack is not an answer to a dump.
        #[rustfmt::skip]
        let ack = [
            36, 0, 0, 0,  2, 0,  0x00, 0x01,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
            0, 0, 0, 0,  0x1c, 0, 0, 0,  26, 0, 1, 3,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
        ];
        assert_eq!(
            dump_of(&[&ack], Family::V4, 10),
            Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(
                uapi::NLMSG_ERROR
            )))
        );
        // Nor is another kind of message.
        let mut neighbour = NEIGHBOUR_REPLY;
        neighbour[8..12].copy_from_slice(&DUMP_SEQ.to_ne_bytes());
        assert_eq!(
            dump_of(&[&neighbour], Family::V4, 10),
            Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(
                uapi::RTM_NEWNEIGH
            )))
        );

        // The limit counts kept routes only.
        let datagram = concat(&[&DUMP_LOCAL, &DUMP_DEFAULT, &DUMP_CONNECTED, &DUMP_DONE]);
        assert!(dump_of(&[&datagram], Family::V4, 2).is_ok());
        assert_eq!(
            dump_of(&[&datagram], Family::V4, 1),
            Err(DumpFailure::TooLarge(1))
        );

        // Header fields out of range, addresses of the wrong family.
        let mut long_prefix = DUMP_CONNECTED[16..].to_vec();
        long_prefix[1] = 33;
        assert_eq!(
            decode_route_entry(&long_prefix, Family::V4),
            Err(DecodeError::OutOfRange {
                what: "rtm_dst_len",
                value: 33
            })
        );
        let mut v6_dst_in_v4 = DUMP_V6_CONNECTED[16..].to_vec();
        v6_dst_in_v4[0] = 2;
        v6_dst_in_v4[1] = 24;
        assert_eq!(
            decode_route_entry(&v6_dst_in_v4, Family::V4),
            Err(DecodeError::BadValue {
                what: "RTA_DST",
                length: 16
            })
        );
    }

    #[test]
    fn truncated_route_dumps_are_an_error_never_a_panic() {
        let whole = concat(&[
            &DUMP_DEFAULT,
            &DUMP_CONNECTED,
            &DUMP_MTU,
            &DUMP_MULTIPATH,
            &DUMP_V6_DEFAULT,
            &DUMP_DONE,
        ]);
        for cut in 0..whole.len() {
            // One datagram cut short: a bad length, or no NLMSG_DONE.
            assert!(
                dump_of(&[&whole[..cut]], Family::V4, 10).is_err(),
                "cut at {cut} parsed"
            );
            let _ = dump_of(&[&whole[..cut]], Family::V6, 10);
            // Any payload cut anywhere: may fail, never panics.
            for start in [16, 68, 136] {
                let payload = whole.get(start..cut).unwrap_or_default();
                let _ = decode_route_entry(payload, Family::V4);
                let _ = decode_route_entry(payload, Family::V6);
            }
            let _ = decode_done(
                uapi::NLM_F_ACK_TLVS,
                DUMP_DONE.get(16..cut.min(20)).unwrap_or_default(),
            );
            let _ = ends_dump(&whole[..cut], DUMP_SEQ);
        }
        for garbage in [&[0xffu8; 40][..], &[0u8; 40][..], &[0x10, 0, 0][..]] {
            let _ = dump_of(&[garbage], Family::V4, 10);
            let _ = decode_route_entry(garbage, Family::V6);
            let _ = decode_done(uapi::NLM_F_ACK_TLVS, garbage);
        }
        assert_eq!(
            decode_done(0, &[0, 0]),
            Err(DecodeError::Truncated("NLMSG_DONE"))
        );
        assert_eq!(decode_done(0, &[]).map(|reply| reply.errno), Ok(0));
        // The end of a dump is found in a datagram, whatever precedes it.
        let datagram = concat(&[&DUMP_DEFAULT, &DUMP_DONE]);
        assert!(ends_dump(&datagram, DUMP_SEQ));
        assert!(!ends_dump(&datagram, DUMP_SEQ + 1));
        assert!(!ends_dump(&DUMP_DEFAULT, DUMP_SEQ));
    }

    #[test]
    fn errors_name_the_operation_and_address() {
        let error = NetlinkError::Kernel {
            op: "neighbour manage",
            target: neighbour_target(v4("192.0.2.11"), 2),
            source: io::Error::from_raw_os_error(libc::EINVAL),
            message: Some("Invalid NTF_* flag for permanent entry".into()),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("netlink neighbour manage 192.0.2.11 dev #2: "),
            "{text}"
        );
        assert!(
            text.ends_with("(Invalid NTF_* flag for permanent entry)"),
            "{text}"
        );
        assert_eq!(error.errno(), Some(libc::EINVAL));

        let error = DumpFailure::TooLarge(MAX_ROUTES)
            .into_error("route dump", format!("{} main table", Family::V6));
        assert_eq!(
            error.to_string(),
            "netlink route dump IPv6 main table: more than 1000000 entries"
        );
        assert_eq!(error.errno(), None);
    }
}

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
//! The module has two layers. The codec is pure functions over byte
//! slices: `codec` frames netlink messages and `rtattr` attributes;
//! `route`, `neigh` and `link` encode the requests and decode the replies
//! of each kind; `dump` follows a multi-part reply to its end. Each file's
//! tests, at its bottom, run on literal bytes (the kernel's replies they
//! share are in `fixtures`). [`Netlink`] (request / reply, and dumps;
//! `request`) and [`Monitor`] (change notifications; `monitor`) put raw
//! `NETLINK_ROUTE` sockets (`socket`) under it, with `libc` only. Sockets
//! belong to the network namespace of the thread that opens them.
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

mod address;
mod codec;
mod dump;
#[cfg(all(test, target_endian = "little"))]
mod fixtures;
mod interface;
mod link;
mod monitor;
mod neigh;
mod request;
mod route;
mod socket;
mod uapi;

pub use interface::{holds_address, ifindex, link_up, mac_address, primary_address};
pub use monitor::Monitor;
pub use request::Netlink;

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

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

fn malformed(op: &'static str, target: String, source: DecodeError) -> NetlinkError {
    NetlinkError::Malformed { op, target, source }
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

/// An address an interface holds, as `ip addr show` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The interface holding it.
    pub ifindex: u32,
    /// The address and its prefix length.
    pub address: ipnet::IpNet,
    /// `RT_SCOPE_*`: 0 global, 253 link (IPv6 `fe80::/10`), 254 host.
    pub scope: u8,
    /// `IFA_F_*` flags (secondary, tentative, permanent, ...).
    pub flags: u32,
}

impl Address {
    /// Still in (or failed) duplicate address detection: the kernel will
    /// not send from it yet.
    pub fn tentative(&self) -> bool {
        self.flags & (uapi::IFA_F_TENTATIVE | uapi::IFA_F_DADFAILED) != 0
    }

    /// An IPv6 link-local address (scope link).
    pub fn link_local(&self) -> bool {
        self.scope == uapi::RT_SCOPE_LINK && self.address.addr().is_ipv6()
    }
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::address::decode_address;
    use crate::netlink::codec::{decode_error, messages};
    use crate::netlink::fixtures::*;
    use crate::netlink::link::decode_link;
    use crate::netlink::monitor::count_notifications;
    use crate::netlink::neigh::decode_neighbour;
    use crate::netlink::route::decode_route;

    #[test]
    fn truncated_and_garbage_input_is_an_error_never_a_panic() {
        for cut in 1..ROUTE_REPLY.len() {
            let parsed: Result<Vec<_>, _> = messages(&ROUTE_REPLY[..cut]).collect();
            assert!(parsed.is_err(), "cut at {cut} parsed");
            // The payload alone, cut anywhere: decoding may fail, never panic.
            let _ = decode_route(ROUTE_REPLY.get(16..cut).unwrap_or_default());
            let _ = decode_neighbour(NEIGHBOUR_REPLY.get(16..cut.min(76)).unwrap_or_default());
            let _ = decode_link(ROUTE_REPLY.get(16..cut).unwrap_or_default());
            let _ = decode_address(ROUTE_REPLY.get(16..cut).unwrap_or_default());
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
            let _ = decode_address(garbage);
            let _ = decode_error(0, garbage);
            let _ = decode_error(uapi::NLM_F_ACK_TLVS, garbage);
            let _ = count_notifications(garbage);
        }
    }
}

//! The kernel's replies (6.18, captured with `strace -x -e read=3`) that
//! the codec tests decode, and the helpers that run them through a dump;
//! shared by the tests of every file here. Literal bytes are little-endian:
//! netlink uses the host's byte order.

use std::net::IpAddr;

use super::dump::{DumpFailure, DumpProgress, DumpReader};
use super::route::RouteCollector;
use super::{DecodeError, Family, RouteEntry, RouteKind};

pub(super) fn v4(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// The kernel's answer to `ip route get 198.51.100.1` with
/// `198.51.100.0/24 via 192.0.2.11 dev #2 mtu 1300`: `RTA_TABLE`,
/// `RTA_DST`, `RTA_OIF`, `RTA_PREFSRC`, `RTA_GATEWAY`, `RTA_METRICS` with
/// `RTAX_MTU`, `RTA_UID`, `RTA_CACHEINFO`.
#[rustfmt::skip]
pub(super) const ROUTE_REPLY: [u8; 124] = [
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

/// The kernel's answer to `ip neigh get 192.0.2.11 dev #2` for a
/// permanent entry: `NDA_DST`, `NDA_LLADDR`, `NDA_PROBES`, `NDA_CACHEINFO`.
#[rustfmt::skip]
pub(super) const NEIGHBOUR_REPLY: [u8; 76] = [
    0x4c, 0, 0, 0,  0x1c, 0,  0, 0,  2, 0, 0, 0,  0xe1, 0x24, 0, 0,
    2, 0, 0, 0,  2, 0, 0, 0,  0x80, 0,  0, 1,
    8, 0, 1, 0,  192, 0, 2, 11,
    10, 0, 2, 0,  2, 0, 0, 0, 0, 0x99,  0, 0,
    8, 0, 4, 0,  0, 0, 0, 0,
    20, 0, 3, 0,  0x62, 1, 0, 0,  0x62, 1, 0, 0,  0x62, 1, 0, 0,  1, 0, 0, 0,
];

/// `ENOENT` for `ip neigh get 192.0.2.99 dev #2`, without
/// `NETLINK_CAP_ACK`: the whole request is echoed.
#[rustfmt::skip]
pub(super) const ENOENT_REPLY: [u8; 56] = [
    0x38, 0, 0, 0,  2, 0,  0, 0,  3, 0, 0, 0,  0xe1, 0x24, 0, 0,
    0xfe, 0xff, 0xff, 0xff,
    0x24, 0, 0, 0,  0x1e, 0,  1, 0,  3, 0, 0, 0,  0, 0, 0, 0,
    2, 0, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0,
    8, 0, 1, 0,  192, 0, 2, 99,
];

// Route dumps. The messages below are the kernel's (6.18) answer to
// `ip route show table all` / `ip -6 route show table all` in a
// namespace with `nl0` = #2, captured with `strace -x -e read=3`. Each
// is a whole netlink message (flags `NLM_F_MULTI | NLM_F_DUMP_FILTERED`,
// sequence `DUMP_SEQ`).
pub(super) const DUMP_SEQ: u32 = 0x6b0d_7e7d;

/// `default via 192.0.2.254 dev #2`: `RTA_TABLE`, `RTA_GATEWAY`, `RTA_OIF`.
#[rustfmt::skip]
pub(super) const DUMP_DEFAULT: [u8; 52] = [
    0x34, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 0, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
    8, 0, 15, 0,  0xfe, 0, 0, 0,
    8, 0, 5, 0,  0xc0, 0, 2, 0xfe,
    8, 0, 4, 0,  2, 0, 0, 0,
];

/// `192.0.2.0/24 dev #2 proto kernel scope link src 192.0.2.1`: no gateway.
#[rustfmt::skip]
pub(super) const DUMP_CONNECTED: [u8; 60] = [
    0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 24, 0, 0, 0xfe, 2, 0xfd, 1,  0, 0, 0, 0,
    8, 0, 15, 0,  0xfe, 0, 0, 0,
    8, 0, 1, 0,  0xc0, 0, 2, 0,
    8, 0, 7, 0,  0xc0, 0, 2, 1,
    8, 0, 4, 0,  2, 0, 0, 0,
];

/// `198.51.100.64/26 via 192.0.2.11 dev #2 mtu 1300`: `RTA_METRICS`.
#[rustfmt::skip]
pub(super) const DUMP_MTU: [u8; 72] = [
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
pub(super) const DUMP_UNREACHABLE: [u8; 44] = [
    0x2c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 24, 0, 0, 0xfe, 3, 0, 7,  0, 0, 0, 0,
    8, 0, 15, 0,  0xfe, 0, 0, 0,
    8, 0, 1, 0,  0xcb, 0, 0x71, 0,
];

/// `203.0.113.128/25 nexthop via 192.0.2.11 nexthop via 192.0.2.12`:
/// `RTA_MULTIPATH` (two `rtnexthop`s), no top-level gateway or interface.
#[rustfmt::skip]
pub(super) const DUMP_MULTIPATH: [u8; 80] = [
    0x50, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 25, 0, 0, 0xfe, 3, 0, 1,  0, 0, 0, 0,
    8, 0, 15, 0,  0xfe, 0, 0, 0,
    8, 0, 1, 0,  0xcb, 0, 0x71, 0x80,
    0x24, 0, 9, 0,  16, 0, 0, 0, 2, 0, 0, 0, 8, 0, 5, 0, 0xc0, 0, 2, 11, 16, 0, 0, 0, 2, 0, 0, 0, 8, 0, 5, 0, 0xc0, 0, 2, 12,
];

/// `198.51.100.128/25 via 192.0.2.12 table 100`.
#[rustfmt::skip]
pub(super) const DUMP_TABLE_100: [u8; 60] = [
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
pub(super) const DUMP_TABLE_1000: [u8; 60] = [
    0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 26, 0, 0, 0xfc, 3, 0, 1,  0, 0, 0, 0,
    8, 0, 15, 0,  0xe8, 3, 0, 0,
    8, 0, 1, 0,  0xc6, 0x33, 0x64, 0xc0,
    8, 0, 5, 0,  0xc0, 0, 2, 13,
    8, 0, 4, 0,  2, 0, 0, 0,
];

/// `local 192.0.2.1 dev #2 table local`.
#[rustfmt::skip]
pub(super) const DUMP_LOCAL: [u8; 60] = [
    0x3c, 0, 0, 0,  24, 0,  0x22, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    2, 0x20, 0, 0, 0xff, 2, 0xfe, 2,  0, 0, 0, 0,
    8, 0, 15, 0,  0xff, 0, 0, 0,
    8, 0, 1, 0,  0xc0, 0, 2, 1,
    8, 0, 7, 0,  0xc0, 0, 2, 1,
    8, 0, 4, 0,  2, 0, 0, 0,
];

/// The end of the IPv4 dump, alone in its datagram.
#[rustfmt::skip]
pub(super) const DUMP_DONE: [u8; 20] = [
    20, 0, 0, 0,  3, 0,  2, 0,  0x7d, 0x7e, 13, 0x6b,  0x50, 18, 0, 0,
    0, 0, 0, 0,
];

/// `2001:db8::/64 dev #2 proto kernel metric 256`: `RTA_PRIORITY`,
/// `RTA_CACHEINFO`, `RTA_PREF`.
#[rustfmt::skip]
pub(super) const DUMP_V6_CONNECTED: [u8; 116] = [
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
pub(super) const DUMP_V6_DEFAULT: [u8; 116] = [
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

/// The sequence number of the address dump below (`ip -o -4 addr show dev
/// d0`, d0 = #3).
pub(super) const ADDRESS_DUMP_SEQ: u32 = 0x6b0d_b428;

/// An `RTM_NEWADDR` of that dump: 192.0.2.254/24, secondary and permanent,
/// with `IFA_ADDRESS`, `IFA_LOCAL`, `IFA_LABEL` "d0", `IFA_FLAGS`,
/// `IFA_CACHEINFO`.
#[rustfmt::skip]
pub(super) const ADDRESS_V4_SECONDARY: [u8; 76] = [
    0x4c, 0, 0, 0,  0x14, 0,  0x22, 0,  0x28, 0xb4, 0x0d, 0x6b,  0xbf, 0x3e, 0, 0,
    2, 24, 0x81, 0,  3, 0, 0, 0,
    8, 0, 1, 0,  192, 0, 2, 254,
    8, 0, 2, 0,  192, 0, 2, 254,
    7, 0, 3, 0,  b'd', b'0', 0, 0,
    8, 0, 8, 0,  0x81, 0, 0, 0,
    20, 0, 6, 0,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xb2, 0x81, 0x18, 0,  0xb2, 0x81, 0x18, 0,
];

/// The `NLMSG_DONE` that ends that dump.
#[rustfmt::skip]
pub(super) const ADDRESS_DUMP_DONE: [u8; 20] = [
    0x14, 0, 0, 0,  3, 0,  0x22, 0,  0x28, 0xb4, 0x0d, 0x6b,  0xbf, 0x3e, 0, 0,
    0, 0, 0, 0,
];

/// An `RTM_NEWADDR` of `ip -o -6 addr show dev d0`: the link-local
/// `fe80::ff:fe00:1/64`, scope link, permanent, with `IFA_ADDRESS` only,
/// `IFA_CACHEINFO`, `IFA_FLAGS`, `IFA_PROTO` (kernel lo).
#[rustfmt::skip]
pub(super) const ADDRESS_V6_LINK_LOCAL: [u8; 80] = [
    0x50, 0, 0, 0,  0x14, 0,  0x22, 0,  0x25, 0xb4, 0x0d, 0x6b,  0x62, 0x3e, 0, 0,
    10, 64, 0x80, 0xfd,  3, 0, 0, 0,
    20, 0, 1, 0,  0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 1,
    20, 0, 6, 0,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xdb, 0x7f, 0x18, 0,  0xdb, 0x7f, 0x18, 0,
    8, 0, 8, 0,  0x80, 0, 0, 0,
    5, 0, 11, 0,  3, 0, 0, 0,
];

pub(super) fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Feeds `datagrams` to a dump of `family`, as `Netlink::dump` does
/// with the socket's; returns the routes and whether the dump is
/// consistent. Datagrams that end before `NLMSG_DONE` are an error.
pub(super) fn dump_of(
    datagrams: &[&[u8]],
    family: Family,
    limit: usize,
) -> Result<(Vec<RouteEntry>, bool), DumpFailure> {
    let mut reader = DumpReader::new(DUMP_SEQ);
    let mut collector = RouteCollector::new(family, limit);
    for datagram in datagrams {
        let progress = reader.feed(datagram, &mut |kind, payload| collector.take(kind, payload))?;
        if progress == DumpProgress::Done {
            return Ok((collector.routes, !reader.interrupted));
        }
    }
    Err(DumpFailure::Malformed(DecodeError::Truncated(
        "dump without NLMSG_DONE",
    )))
}

pub(super) fn entry(dst: &str, prefix_len: u8, kind: RouteKind) -> RouteEntry {
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

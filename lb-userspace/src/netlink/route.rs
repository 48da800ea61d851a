//! Route messages: `RTM_GETROUTE` for one destination (`ip route get`) or
//! a whole table (a dump), and the `RTM_NEWROUTE` replies decoded into a
//! [`Route`] or the [`RouteEntry`]s of the main table.

use std::net::IpAddr;

use super::codec::{
    Request, addr_bytes, attributes, decode_ip, decode_u32, family, split_header, u32_at,
};
use super::dump::DumpFailure;
use super::{DecodeError, Family, Route, RouteEntry, RouteKind, uapi};

/// `struct rtmsg` for a host route lookup.
fn rtmsg(dst: IpAddr) -> [u8; 12] {
    let dst_len = match dst {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
    [family(dst), dst_len, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// `RTM_GETROUTE` for `dst`, answered with one `RTM_NEWROUTE` (`ip route get`).
pub(super) fn encode_route_get(seq: u32, dst: IpAddr) -> Vec<u8> {
    Request::new(uapi::RTM_GETROUTE, uapi::NLM_F_REQUEST, seq, &rtmsg(dst))
        .attr(uapi::RTA_DST, &addr_bytes(&dst))
        .finish()
}

/// `RTM_GETROUTE` dumping every table of `family` (what `ip route show
/// table all` sends): one `RTM_NEWROUTE` per route, then `NLMSG_DONE`.
/// Without `NETLINK_GET_STRICT_CHK` the kernel filters nothing, so the
/// table is picked when decoding.
pub(super) fn encode_route_dump(seq: u32, family: Family) -> Vec<u8> {
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
pub(super) fn decode_route(payload: &[u8]) -> Result<Route, DecodeError> {
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
pub(super) fn decode_route_entry(
    payload: &[u8],
    family: Family,
) -> Result<Option<RouteEntry>, DecodeError> {
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

/// The routes a route dump keeps, at most `limit`.
#[derive(Debug)]
pub(super) struct RouteCollector {
    family: Family,
    limit: usize,
    pub(super) routes: Vec<RouteEntry>,
}

impl RouteCollector {
    pub(super) fn new(family: Family, limit: usize) -> Self {
        Self {
            family,
            limit,
            routes: Vec::new(),
        }
    }

    pub(super) fn take(&mut self, kind: u16, payload: &[u8]) -> Result<(), DumpFailure> {
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

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::codec::messages;
    use crate::netlink::fixtures::*;

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
}

//! Forwarding under `BPF_PROG_TEST_RUN`, byte for byte: every mode for both
//! families and both protocols, the NAT reply path, the connection table,
//! drains, all-port services, VLANs, fragments and ICMP. Expected frames are
//! built by editing the input with etherparse and recomputing every checksum
//! there, so the kernel's incremental checksums are checked independently.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{IpNumber, NetHeaders, PacketBuilder, TransportHeader};
use lb::{
    plan::{BackendKey, BackendState},
    route::Tables as _,
};
use lb_common::{Reason, maps::ipv4_mapped};
use lb_tests::{
    frames::{self, Headers, eth, ip_packet},
    testrun::{Action, EGRESS_MAC, Harness, LB_MAC, ROUTER_MAC, backend_mac},
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);

const CONFIG: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: nat4t, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }] }
  - { name: nat4u, vip: 203.0.113.10, port: 53, protocol: udp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 5353 }] }
  - { name: dsr4t, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.12 }] }
  - { name: dsr4u, vip: 203.0.113.11, port: 53, protocol: udp, forwarding: dsr, backends: [{ address: 192.0.2.12 }] }
  - { name: tun4t, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: 192.0.2.13 }] }
  - { name: tun4u, vip: 203.0.113.12, port: 53, protocol: udp, forwarding: tunnel, backends: [{ address: 192.0.2.13 }] }
  - { name: nat6t, vip: '2001:db8:ff::10', port: 80, protocol: tcp, forwarding: nat, backends: [{ address: '2001:db8::11', port: 8080 }] }
  - { name: nat6u, vip: '2001:db8:ff::10', port: 53, protocol: udp, forwarding: nat, backends: [{ address: '2001:db8::11', port: 5353 }] }
  - { name: dsr6t, vip: '2001:db8:ff::11', port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: '2001:db8::12' }] }
  - { name: dsr6u, vip: '2001:db8:ff::11', port: 53, protocol: udp, forwarding: dsr, backends: [{ address: '2001:db8::12' }] }
  - { name: tun6t, vip: '2001:db8:ff::12', port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: '2001:db8::13' }] }
  - { name: tun6u, vip: '2001:db8:ff::12', port: 53, protocol: udp, forwarding: tunnel, backends: [{ address: '2001:db8::13' }] }
  - { name: any4, vip: 203.0.113.20, port: 0, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.14 }] }
  - { name: hash4, vip: 203.0.113.30, port: 80, protocol: udp, scheduler: ip-hash, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }
  - { name: pair4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }
  - { name: hash6, vip: '2001:db8:ff::30', port: 80, protocol: udp, scheduler: ip-hash, forwarding: dsr, backends: [{ address: '2001:db8::21' }, { address: '2001:db8::22' }] }
  - { name: rr4, vip: 203.0.113.50, port: 80, protocol: tcp, scheduler: round-robin, forwarding: dsr, backends: [{ address: 192.0.2.21, weight: 1 }, { address: 192.0.2.22, weight: 2 }] }
  - { name: lost4, vip: 203.0.113.60, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.99 }] }
  - { name: lostdsr4, vip: 203.0.113.61, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.98 }] }
dataplane: { ring_size: 1009, tunnel_source_v4: 198.51.100.128/28, tunnel_source_v6: '2001:db8:ee::/96' }
";

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, last)
}

/// The expected NAT output: destination (and port) rewritten, MACs to the
/// backend.
fn nat_expected(input: &[u8], backend: IpAddr, port: Option<u16>, last: u8) -> Vec<u8> {
    let mut h = Headers::parse(input);
    h.eth.source = EGRESS_MAC;
    h.eth.destination = backend_mac(last);
    match (&mut h.net, backend) {
        (NetHeaders::Ipv4(ip, _), IpAddr::V4(b)) => ip.destination = b.octets(),
        (NetHeaders::Ipv6(ip, _), IpAddr::V6(b)) => ip.destination = b.octets(),
        _ => panic!("family mismatch"),
    }
    if let Some(port) = port {
        match h.transport.as_mut() {
            Some(TransportHeader::Tcp(tcp)) => tcp.destination_port = port,
            Some(TransportHeader::Udp(udp)) => udp.destination_port = port,
            _ => panic!("no ports"),
        }
    }
    h.to_bytes()
}

/// The expected DSR output: only the MACs change.
fn dsr_expected(input: &[u8], last: u8) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&backend_mac(last));
    out[6..12].copy_from_slice(&EGRESS_MAC);
    out
}

/// The tunnel hash of a frame (client address and ports), by the reference
/// model's own hash (`lb_tests::tables`, written from the contract, not
/// `lb_common::hash`, the code under test).
fn hash_of(input: &[u8]) -> u32 {
    let h = Headers::parse(input);
    let src = match &h.net {
        NetHeaders::Ipv4(ip, _) => IpAddr::from(ip.source),
        NetHeaders::Ipv6(ip, _) => IpAddr::from(ip.source),
        NetHeaders::Arp(_) => panic!("not IP"),
    };
    let (sport, dport) = match &h.transport {
        Some(TransportHeader::Tcp(t)) => (t.source_port, t.destination_port),
        Some(TransportHeader::Udp(u)) => (u.source_port, u.destination_port),
        _ => panic!("no ports"),
    };
    lb_tests::tables::tunnel_hash(src, sport, dport)
}

/// The expected tunnel output: an outer header from the tunnel prefix (host
/// bits from the tunnel hash) to the backend, the inner packet untouched.
fn tunnel_expected(input: &[u8], backend: IpAddr, last: u8) -> Vec<u8> {
    let inner = ip_packet(input);
    let hash = hash_of(input);
    let mut out = Vec::new();
    let ether_type = match backend {
        IpAddr::V4(_) => etherparse::EtherType::IPV4,
        IpAddr::V6(_) => etherparse::EtherType::IPV6,
    };
    etherparse::Ethernet2Header {
        source: EGRESS_MAC,
        destination: backend_mac(last),
        ether_type,
    }
    .write(&mut out)
    .unwrap();
    match backend {
        IpAddr::V4(b) => {
            let source = (u32::from(Ipv4Addr::new(198, 51, 100, 128)) & !0xf) | (hash & 0xf);
            let mut outer = etherparse::Ipv4Header::new(
                u16::try_from(inner.len()).unwrap(),
                64,
                IpNumber::IPV4,
                source.to_be_bytes(),
                b.octets(),
            )
            .unwrap();
            outer.dont_fragment = false;
            outer.identification = 0;
            let Headers {
                net: NetHeaders::Ipv4(ip, _),
                ..
            } = Headers::parse(input)
            else {
                panic!()
            };
            outer.dscp = ip.dscp;
            outer.ecn = ip.ecn;
            outer.write(&mut out).unwrap();
        }
        IpAddr::V6(b) => {
            let mut source = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 0).octets();
            source[12..].copy_from_slice(&hash.to_be_bytes());
            let Headers {
                net: NetHeaders::Ipv6(ip, _),
                ..
            } = Headers::parse(input)
            else {
                panic!()
            };
            etherparse::Ipv6Header {
                traffic_class: ip.traffic_class,
                flow_label: etherparse::Ipv6FlowLabel::ZERO,
                payload_length: u16::try_from(inner.len()).unwrap(),
                next_header: IpNumber::IPV6,
                hop_limit: 64,
                source,
                destination: b.octets(),
            }
            .write(&mut out)
            .unwrap();
        }
    }
    out.extend_from_slice(&inner);
    out
}

#[test]
fn every_mode_family_and_protocol_forwards_byte_exact() {
    let harness = Harness::new(CONFIG);
    let b4 = |last| IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
    // Backends are written 2001:db8::<last> in decimal digits, like their IPv4 twins.
    let b6 = |last: u8| IpAddr::V6(format!("2001:db8::{last}").parse().unwrap());
    let tcp4 = |vip| frames::tcp4(CLIENT4, 40000, vip, 80);
    let udp4 = |vip| frames::udp4(CLIENT4, 40000, vip, 53);
    let tcp6 = |vip| frames::tcp6(CLIENT6, 40000, vip, 80);
    let udp6 = |vip| frames::udp6(CLIENT6, 40000, vip, 53);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "nat IPv4 TCP",
            tcp4(v4(10)),
            nat_expected(&tcp4(v4(10)), b4(11), Some(8080), 11),
        ),
        (
            "nat IPv4 UDP",
            udp4(v4(10)),
            nat_expected(&udp4(v4(10)), b4(11), Some(5353), 11),
        ),
        (
            "nat IPv6 TCP",
            tcp6(v6(0x10)),
            nat_expected(&tcp6(v6(0x10)), b6(11), Some(8080), 11),
        ),
        (
            "nat IPv6 UDP",
            udp6(v6(0x10)),
            nat_expected(&udp6(v6(0x10)), b6(11), Some(5353), 11),
        ),
        (
            "dsr IPv4 TCP",
            tcp4(v4(11)),
            dsr_expected(&tcp4(v4(11)), 12),
        ),
        (
            "dsr IPv4 UDP",
            udp4(v4(11)),
            dsr_expected(&udp4(v4(11)), 12),
        ),
        (
            "dsr IPv6 TCP",
            tcp6(v6(0x11)),
            dsr_expected(&tcp6(v6(0x11)), 12),
        ),
        (
            "dsr IPv6 UDP",
            udp6(v6(0x11)),
            dsr_expected(&udp6(v6(0x11)), 12),
        ),
        (
            "tunnel IPv4 TCP",
            tcp4(v4(12)),
            tunnel_expected(&tcp4(v4(12)), b4(13), 13),
        ),
        (
            "tunnel IPv4 UDP",
            udp4(v4(12)),
            tunnel_expected(&udp4(v4(12)), b4(13), 13),
        ),
        (
            "tunnel IPv6 TCP",
            tcp6(v6(0x12)),
            tunnel_expected(&tcp6(v6(0x12)), b6(13), 13),
        ),
        (
            "tunnel IPv6 UDP",
            udp6(v6(0x12)),
            tunnel_expected(&udp6(v6(0x12)), b6(13), 13),
        ),
    ];
    for (description, input, expected) in cases {
        let (outcome, moved) = harness.run_counted(&input);
        assert_eq!(outcome.action, Action::Redirect, "{description}");
        assert_eq!(outcome.frame, expected, "{description}: output bytes");
        assert_eq!(
            moved,
            [(Reason::ForwardToBackend, 1)].into(),
            "{description}"
        );
    }
}

#[test]
fn nat_replies_get_the_vip_back_and_go_to_the_client() {
    let harness = Harness::new(CONFIG);
    let cases: Vec<(&str, Vec<u8>, IpAddr, u16)> = vec![
        (
            "IPv4 TCP",
            frames::tcp4(Ipv4Addr::new(192, 0, 2, 11), 8080, CLIENT4, 40000),
            IpAddr::V4(v4(10)),
            80,
        ),
        (
            "IPv4 UDP",
            frames::udp4(Ipv4Addr::new(192, 0, 2, 11), 5353, CLIENT4, 40000),
            IpAddr::V4(v4(10)),
            53,
        ),
        (
            "IPv6 TCP",
            frames::tcp6("2001:db8::11".parse().unwrap(), 8080, CLIENT6, 40000),
            IpAddr::V6(v6(0x10)),
            80,
        ),
        (
            "IPv6 UDP",
            frames::udp6("2001:db8::11".parse().unwrap(), 5353, CLIENT6, 40000),
            IpAddr::V6(v6(0x10)),
            53,
        ),
    ];
    for (description, input, vip, port) in cases {
        let mut h = Headers::parse(&input);
        h.eth.source = EGRESS_MAC;
        h.eth.destination = ROUTER_MAC;
        match (&mut h.net, vip) {
            (NetHeaders::Ipv4(ip, _), IpAddr::V4(v)) => ip.source = v.octets(),
            (NetHeaders::Ipv6(ip, _), IpAddr::V6(v)) => ip.source = v.octets(),
            _ => panic!(),
        }
        match h.transport.as_mut() {
            Some(TransportHeader::Tcp(tcp)) => tcp.source_port = port,
            Some(TransportHeader::Udp(udp)) => udp.source_port = port,
            _ => panic!(),
        }
        let (outcome, moved) = harness.run_counted(&input);
        assert_eq!(outcome.action, Action::Redirect, "{description}");
        assert_eq!(outcome.frame, h.to_bytes(), "{description}: output bytes");
        assert_eq!(moved, [(Reason::ReplyToClient, 1)].into(), "{description}");
    }
    // A backend talking to the balancer itself (a health-check answer) is
    // the stack's business: untouched.
    let to_self = frames::tcp4(
        Ipv4Addr::new(192, 0, 2, 11),
        8080,
        Ipv4Addr::new(192, 0, 2, 1),
        40000,
    );
    let (outcome, moved) = harness.run_counted(&to_self);
    assert_eq!(outcome.action, Action::Pass);
    assert_eq!(outcome.frame, to_self);
    assert_eq!(moved, [(Reason::PassNoService, 1)].into());
}

/// The backend a dsr frame went to: the last byte of its destination MAC.
fn dsr_backend(outcome: &lb_tests::testrun::Outcome) -> u8 {
    assert_eq!(outcome.action, Action::Redirect);
    outcome.frame[5]
}

fn key(service: &str, last: u8) -> BackendKey {
    BackendKey {
        service: service.into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
        port: 80,
    }
}

#[test]
fn established_flows_keep_their_backend_while_it_is_usable() {
    let mut harness = Harness::new(CONFIG);
    // Find flows of pair4 that land on each backend.
    let flow = |port| frames::tcp4(CLIENT4, port, v4(40), 80);
    let ack = |port| frames::tcp4_ack(CLIENT4, port, v4(40), 80);
    let first = dsr_backend(&harness.run(&flow(1000)));
    let (other_port, other) = (1001..2000)
        .map(|port| (port, dsr_backend(&harness.run(&flow(port)))))
        .find(|(_, backend)| *backend != first)
        .expect("both backends get flows");
    let reused = (2000..3000)
        .find(|port| dsr_backend(&harness.run(&flow(*port))) == first)
        .expect("another flow on the first backend");
    // Drain the first backend (weight 0): its flows stay, new flows avoid it.
    let drained = BackendState {
        up: true,
        weight: Some(0),
    };
    let first_key = key("pair4", first);
    harness.replan(&[(first_key.clone(), drained)].into());
    assert_eq!(
        dsr_backend(&harness.run(&ack(1000))),
        first,
        "drained backend keeps its flow"
    );
    for port in 3000..3200 {
        assert_eq!(
            dsr_backend(&harness.run(&flow(port))),
            other,
            "new flow {port} to a drained backend"
        );
    }
    // A bare SYN reusing the tuple of an entry the drained backend still
    // holds (never closed) is a new connection: it goes elsewhere, and the
    // flow's later packets follow it.
    assert_eq!(
        dsr_backend(&harness.run(&flow(reused))),
        other,
        "a SYN reusing a drained backend's tuple"
    );
    assert_eq!(dsr_backend(&harness.run(&ack(reused))), other);
    // Undrain: the table changes back, established flows stay where they are.
    harness.replan(&BTreeMap::new());
    assert_eq!(dsr_backend(&harness.run(&ack(1000))), first);
    assert_eq!(dsr_backend(&harness.run(&flow(other_port))), other);
    // Take the first backend down: its flow is rescheduled on the next packet.
    let down = BackendState {
        up: false,
        weight: None,
    };
    harness.replan(&[(first_key, down)].into());
    assert_eq!(
        dsr_backend(&harness.run(&flow(1000))),
        other,
        "flow moved off a down backend"
    );
    assert_eq!(dsr_backend(&harness.run(&flow(other_port))), other);
}

#[test]
fn connection_table_wins_over_a_changed_table() {
    let mut harness = Harness::new(CONFIG);
    let flow = |port| frames::tcp4(CLIENT4, port, v4(40), 80);
    // Flows pinned before the change...
    let before: Vec<(u16, u8)> = (5000..5100)
        .map(|p| (p, dsr_backend(&harness.run(&flow(p)))))
        .collect();
    // ...then a third backend joins, which takes about a third of new flows.
    harness.reconfigure(&CONFIG.replace(
        "{ name: pair4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }",
        "{ name: pair4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }, { address: 192.0.2.13 }] }",
    ));
    for (port, backend) in &before {
        assert_eq!(
            dsr_backend(&harness.run(&flow(*port))),
            *backend,
            "flow {port} moved"
        );
    }
    let new_on_third = (6000..6300)
        .filter(|p| dsr_backend(&harness.run(&flow(*p))) == 13)
        .count();
    assert!(
        (60..140).contains(&new_on_third),
        "{new_on_third} of 300 new flows on the new backend"
    );
}

#[test]
fn all_port_service_keeps_the_port() {
    let harness = Harness::new(CONFIG);
    for port in [22, 443, 8443] {
        let input = frames::tcp4(CLIENT4, 40000, v4(20), port);
        let expected = nat_expected(&input, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 14)), None, 14);
        let outcome = harness.run(&input);
        assert_eq!(outcome.action, Action::Redirect, "port {port}");
        assert_eq!(outcome.frame, expected, "port {port}");
    }
}

/// `input` (a backend's packet) as the reply path sends it to the client:
/// the VIP (and `port`, if any) as its source, MACs towards the router.
fn reply_expected(input: &[u8], vip: Ipv4Addr, port: Option<u16>) -> Vec<u8> {
    let mut h = Headers::parse(input);
    h.eth.source = EGRESS_MAC;
    h.eth.destination = ROUTER_MAC;
    let NetHeaders::Ipv4(ip, _) = &mut h.net else {
        panic!("not IPv4")
    };
    ip.source = vip.octets();
    if let Some(port) = port {
        match h.transport.as_mut() {
            Some(TransportHeader::Tcp(tcp)) => tcp.source_port = port,
            Some(TransportHeader::Udp(udp)) => udp.source_port = port,
            _ => panic!("no ports"),
        }
    }
    h.to_bytes()
}

/// A backend of an all-port NAT service sends its own traffic through the
/// balancer too: its connections and datagrams keep its source, while its
/// replies in flows lb forwarded get the VIP — and so do TCP packets of a
/// flow this balancer never saw start (an HA takeover).
#[test]
fn all_port_nat_tells_replies_from_the_backends_own_traffic() {
    let config = CONFIG.replace(
        "dataplane:",
        "  - { name: any4u, vip: 203.0.113.20, port: 0, protocol: udp, forwarding: nat, \
         backends: [{ address: 192.0.2.13 }] }\ndataplane:",
    );
    let harness = Harness::new(&config);
    let tcp_backend = Ipv4Addr::new(192, 0, 2, 14);
    let udp_backend = Ipv4Addr::new(192, 0, 2, 13);
    let remote = Ipv4Addr::new(198, 51, 100, 9);
    let untouched = |description: &str, frame: Vec<u8>| {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Pass, "{description}");
        assert_eq!(outcome.frame, frame, "{description}: untouched");
        assert_eq!(
            moved,
            [(Reason::PassBackendOutbound, 1)].into(),
            "{description}"
        );
    };
    let translated = |description: &str, frame: Vec<u8>| {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Redirect, "{description}");
        assert_eq!(
            outcome.frame,
            reply_expected(&frame, v4(20), None),
            "{description}: output bytes"
        );
        assert_eq!(moved, [(Reason::ReplyToClient, 1)].into(), "{description}");
    };
    untouched(
        "the backend's own SYN",
        frames::tcp4(tcp_backend, 41000, remote, 443),
    );
    untouched(
        "the rest of its connection",
        frames::tcp4_ack(tcp_backend, 41000, remote, 443),
    );
    untouched(
        "its own datagram (a DNS query)",
        frames::udp4(udp_backend, 42000, remote, 53),
    );
    // Flows lb forwarded: the replies get the VIP.
    assert_eq!(
        harness
            .run(&frames::tcp4(CLIENT4, 40100, v4(20), 8443))
            .action,
        Action::Redirect
    );
    translated(
        "a reply in a TCP flow lb forwarded",
        frames::tcp4_ack(tcp_backend, 8443, CLIENT4, 40100),
    );
    assert_eq!(
        harness
            .run(&frames::udp4(CLIENT4, 40300, v4(20), 5000))
            .action,
        Action::Redirect
    );
    translated(
        "a reply in a UDP flow lb forwarded",
        frames::udp4(udp_backend, 5000, CLIENT4, 40300),
    );
    translated(
        "a TCP packet of a flow started through the HA peer",
        frames::tcp4_ack(tcp_backend, 8443, CLIENT4, 40200),
    );
}

#[test]
fn an_established_flow_moves_when_an_exact_service_appears_beside_its_all_port_one() {
    let mut harness = Harness::new(CONFIG);
    let input = frames::tcp4(CLIENT4, 40000, v4(20), 443);
    let on_any = nat_expected(&input, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 14)), None, 14);
    assert_eq!(
        harness.run(&input).frame,
        on_any,
        "first packet: all-port service"
    );
    assert_eq!(harness.run(&input).frame, on_any, "established");
    // An exact service for port 443 takes the port over: SERVICES would give
    // the packet that service now, so the established fast path must not
    // keep the flow on the all-port one.
    let config = CONFIG.replace(
        "dataplane:",
        "  - { name: exact443, vip: 203.0.113.20, port: 443, protocol: tcp, forwarding: dsr, \
         backends: [{ address: 192.0.2.21 }] }\ndataplane:",
    );
    harness.reconfigure(&config);
    let outcome = harness.run(&input);
    assert_eq!(
        outcome.frame,
        dsr_expected(&input, 21),
        "moved to the exact service"
    );
    // And back once it is gone.
    harness.reconfigure(CONFIG);
    let outcome = harness.run(&input);
    assert_eq!(outcome.frame, on_any, "back on the all-port service");
}

#[test]
fn vlan_tag_is_kept_on_forwarded_frames() {
    let harness = Harness::new(CONFIG);
    let input = frames::tcp4_vlan(42, CLIENT4, 40000, v4(10), 80);
    let expected = nat_expected(
        &input,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
        Some(8080),
        11,
    );
    assert!(Headers::parse(&expected).vlan.is_some());
    let outcome = harness.run(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(outcome.frame, expected);
    // And inside a tunnel, behind the tag.
    let input = frames::tcp4_vlan(42, CLIENT4, 40000, v4(12), 80);
    let outcome = harness.run(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(
        &outcome.frame[12..18],
        &input[12..18],
        "tag and outer EtherType"
    );
    assert_eq!(outcome.frame[18 + 9], 4, "IPIP");
    assert_eq!(
        &outcome.frame[18 + 20..],
        &input[18..],
        "inner packet untouched"
    );
}

/// An IPv4 fragment of a UDP datagram: the first carries the UDP header.
fn fragment4(vip: Ipv4Addr, first: bool, id: u16) -> Vec<u8> {
    let mut header =
        etherparse::Ipv4Header::new(16, 64, IpNumber::UDP, CLIENT4.octets(), vip.octets()).unwrap();
    header.identification = id;
    header.more_fragments = first;
    header.fragment_offset = etherparse::IpFragOffset::try_new(if first { 0 } else { 2 }).unwrap();
    let mut frame = Vec::new();
    etherparse::Ethernet2Header {
        source: lb_tests::testrun::CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut frame)
    .unwrap();
    header.write(&mut frame).unwrap();
    if first {
        etherparse::UdpHeader {
            source_port: 40000,
            destination_port: 80,
            length: 24,
            checksum: 0,
        }
        .write(&mut frame)
        .unwrap();
        frame.extend_from_slice(&[7; 8]);
    } else {
        frame.extend_from_slice(&[9; 16]);
    }
    frame
}

#[test]
fn fragments_follow_the_source_for_ip_hash_and_are_dropped_otherwise() {
    let harness = Harness::new(CONFIG);
    let first = harness.run(&fragment4(v4(30), true, 1));
    let later = harness.run(&fragment4(v4(30), false, 1));
    assert_eq!(first.action, Action::Redirect);
    assert_eq!(
        dsr_backend(&first),
        dsr_backend(&later),
        "fragments of one datagram split"
    );
    // The same client's whole datagrams go there too (ip-hash).
    let whole = harness.run(&frames::udp4(CLIENT4, 40000, v4(30), 80));
    assert_eq!(dsr_backend(&whole), dsr_backend(&first));
    // A maglev service has no way to place a later fragment.
    let (outcome, moved) = harness.run_counted(&fragment4(v4(10), false, 2));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropFragment, 1)].into());
}

#[test]
fn icmp_echo_to_a_vip_is_answered_here() {
    let harness = Harness::new(CONFIG);
    let mut request4 = Vec::new();
    eth()
        .ipv4(CLIENT4.octets(), v4(10).octets(), 20)
        .icmpv4_echo_request(7, 1)
        .write(&mut request4, b"ping")
        .unwrap();
    let mut request6 = Vec::new();
    eth()
        .ipv6(CLIENT6.octets(), v6(0x10).octets(), 20)
        .icmpv6_echo_request(7, 1)
        .write(&mut request6, b"ping")
        .unwrap();
    for (description, request) in [("IPv4", request4), ("IPv6", request6)] {
        let mut h = Headers::parse(&request);
        std::mem::swap(&mut h.eth.source, &mut h.eth.destination);
        match (&mut h.net, h.transport.as_mut()) {
            (NetHeaders::Ipv4(ip, _), Some(TransportHeader::Icmpv4(icmp))) => {
                std::mem::swap(&mut ip.source, &mut ip.destination);
                ip.time_to_live = 64;
                let etherparse::Icmpv4Type::EchoRequest(echo) = icmp.icmp_type else {
                    panic!()
                };
                icmp.icmp_type = etherparse::Icmpv4Type::EchoReply(echo);
            }
            (NetHeaders::Ipv6(ip, _), Some(TransportHeader::Icmpv6(icmp))) => {
                std::mem::swap(&mut ip.source, &mut ip.destination);
                ip.hop_limit = 64;
                let etherparse::Icmpv6Type::EchoRequest(echo) = icmp.icmp_type else {
                    panic!()
                };
                icmp.icmp_type = etherparse::Icmpv6Type::EchoReply(echo);
            }
            _ => panic!(),
        }
        let (outcome, moved) = harness.run_counted(&request);
        assert_eq!(outcome.action, Action::Tx, "{description}");
        assert_eq!(outcome.frame, h.to_bytes(), "{description}: reply bytes");
        assert_eq!(moved, [(Reason::IcmpEchoReply, 1)].into(), "{description}");
    }
}

/// The first 28 bytes of a packet the VIP sent (IPv4 header + 8 bytes), as
/// quoted in an ICMP error.
fn quoted4(vip: Ipv4Addr, vip_port: u16) -> Vec<u8> {
    let reply = frames::tcp4(vip, vip_port, CLIENT4, 40000);
    reply[14..14 + 28].to_vec()
}

/// The router that reports "fragmentation needed" in these tests.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A "fragmentation needed" error (MTU 1400) from [`ROUTER4`] to `vip`,
/// about the reply of the VIP's port 80 to `CLIENT4`:40000.
fn too_big4(vip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    eth()
        .ipv4(ROUTER4.octets(), vip.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, &quoted4(vip, 80))
        .unwrap();
    frame
}

/// The `CONNS_V4` key of a TCP flow.
fn tcp_key4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> lb_common::FlowKeyV4 {
    lb_common::FlowKeyV4 {
        src: src.octets(),
        dst: dst.octets(),
        sport,
        dport,
        proto: 6,
        pad: [0; 3],
    }
}

/// The clock is read once a tick per CPU, so an entry another CPU touched
/// may carry a time a tick ahead of this CPU's: such an entry is fresh, not
/// idle since the clock wrapped (which would reschedule the flow).
#[test]
fn an_entry_stamped_ahead_of_this_cpus_clock_keeps_its_flow() {
    let mut harness = Harness::new(CONFIG);
    let client = Ipv4Addr::new(198, 51, 100, 78);
    let syn = frames::tcp4(client, 6000, v4(10), 80);
    assert_eq!(harness.run(&syn).action, Action::Redirect);
    let key = tcp_key4(client, 6000, v4(10), 80);
    let read = |harness: &Harness| {
        lb::route::maps::MapTables::new(&harness.dataplane)
            .conn(&key.widen())
            .expect("read the connection table")
            .expect("the flow's entry")
    };
    let mut entry = read(&harness);
    // Another CPU's reading, 4 ms (a tick at 250 Hz) ahead.
    entry.last_seen_ns += 4_000_000;
    harness
        .dataplane
        .write_conn(lb_common::map_names::CONNS_V4, &key, &entry)
        .expect("write the entry");
    let ack = frames::tcp4_ack(client, 6000, v4(10), 80);
    let (outcome, moved) = harness.run_counted(&ack);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    assert_eq!(read(&harness), entry, "kept as it was, not rescheduled");
}

/// A "fragmentation needed" error finds the flow it quotes in the
/// connection table by that flow's key, not by the key of whatever packet
/// came before it (which the error would otherwise read, and rewrite).
#[test]
fn a_too_big_error_looks_up_the_flow_it_quotes() {
    let harness = Harness::new(CONFIG);
    let other = frames::tcp4(Ipv4Addr::new(198, 51, 100, 77), 5555, v4(10), 80);
    assert_eq!(harness.run(&other).action, Action::Redirect);
    let (outcome, moved) = harness.run_counted(&too_big4(v4(10)));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::IcmpToBackend, 1)].into());
    let keys: Vec<lb_common::FlowKeyV4> = harness
        .dataplane
        .conn_keys(lb_common::map_names::CONNS_V4)
        .expect("read CONNS_V4");
    let quoted = tcp_key4(CLIENT4, 40000, v4(10), 80);
    assert!(
        keys.contains(&quoted),
        "the quoted flow has its own entry: {keys:?}"
    );
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[test]
fn too_big_errors_reach_the_backend_that_owns_the_flow() {
    let harness = Harness::new(CONFIG);
    // DSR: passed on unchanged but for the MACs.
    let input = too_big4(v4(11));
    let (outcome, moved) = harness.run_counted(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(outcome.frame, dsr_expected(&input, 12));
    assert_eq!(moved, [(Reason::IcmpToBackend, 1)].into());
    // NAT: outer destination and the quoted source become the backend's, and
    // every checksum still holds.
    let outcome = harness.run(&too_big4(v4(10)));
    assert_eq!(outcome.action, Action::Redirect);
    let h = Headers::parse(&outcome.frame);
    let NetHeaders::Ipv4(ip, _) = &h.net else {
        panic!()
    };
    assert_eq!(ip.destination, [192, 0, 2, 11]);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else {
        panic!()
    };
    let recomputed = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type.clone(), &h.payload);
    assert_eq!(icmp.checksum, recomputed.checksum, "ICMP checksum");
    let (quoted, _) = etherparse::Ipv4Header::from_slice(&h.payload).unwrap();
    assert_eq!(quoted.source, [192, 0, 2, 11]);
    assert_eq!(
        quoted.header_checksum,
        quoted.calc_header_checksum(),
        "quoted IP checksum"
    );
    assert_eq!(
        u16::from_be_bytes([h.payload[20], h.payload[21]]),
        8080,
        "quoted port"
    );
    // About a flow of no service: the stack's.
    let (outcome, moved) = harness.run_counted(&{
        let mut frame = Vec::new();
        eth()
            .ipv4(ROUTER4.octets(), v4(10).octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut frame, &quoted4(v4(10), 81))
            .unwrap();
        frame
    });
    assert_eq!(outcome.action, Action::Pass);
    assert_eq!(moved, [(Reason::PassIcmpToVip, 1)].into());
}

#[test]
fn packet_too_big_reaches_the_ipv6_tunnel_backend() {
    let harness = Harness::new(CONFIG);
    let reply = frames::tcp6(v6(0x12), 80, CLIENT6, 40000);
    let quoted = &reply[14..14 + 48];
    let mut input = Vec::new();
    eth()
        .ipv6(
            "2001:db8:1::1".parse::<Ipv6Addr>().unwrap().octets(),
            v6(0x12).octets(),
            64,
        )
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut input, quoted)
        .unwrap();
    let outcome = harness.run(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(&outcome.frame[..6], &backend_mac(13));
    assert_eq!(outcome.frame[14 + 6], 41, "IP6IP6");
    let backend: Ipv6Addr = "2001:db8::13".parse().unwrap();
    assert_eq!(&outcome.frame[14 + 24..14 + 40], &backend.octets());
    assert_eq!(
        &outcome.frame[14 + 40..],
        &input[14..],
        "inner packet untouched"
    );
}

#[test]
fn round_robin_follows_the_weights_flow_by_flow() {
    let harness = Harness::new(CONFIG);
    let mut served = BTreeMap::<u8, u32>::new();
    for port in 0..300 {
        let outcome = harness.run(&frames::tcp4(CLIENT4, 10_000 + port, v4(50), 80));
        *served.entry(dsr_backend(&outcome)).or_default() += 1;
    }
    // Each CPU walks the 1:2 sequence on its own; over 300 flows that is
    // 100:200 give or take one cycle per CPU.
    let on_22 = served.get(&22).copied().unwrap_or(0);
    assert!((196..=204).contains(&on_22), "{served:?}");
}

#[test]
fn a_backend_reached_on_the_same_interface_is_sent_with_xdp_tx() {
    let harness = Harness::new(CONFIG);
    let lb0 = lb::netlink::ifindex("lb0").unwrap();
    // Arriving on lb0 (to lb0's own MAC) for a DSR backend behind lb0.
    let mut input = frames::tcp4(CLIENT4, 40000, v4(11), 80);
    input[..6].copy_from_slice(&EGRESS_MAC);
    let outcome = harness.run_on(lb0, &input);
    assert_eq!(outcome.action, Action::Tx);
    assert_eq!(outcome.frame, dsr_expected(&input, 12));
}

#[test]
fn an_unresolved_next_hop_goes_to_the_stack_or_is_dropped_for_dsr() {
    let harness = Harness::new(CONFIG);
    // NAT: rewritten, then handed to the stack, which resolves and forwards.
    let input = frames::tcp4(CLIENT4, 40000, v4(60), 80);
    let (outcome, moved) = harness.run_counted(&input);
    assert_eq!(outcome.action, Action::Pass);
    let h = Headers::parse(&outcome.frame);
    let NetHeaders::Ipv4(ip, _) = &h.net else {
        panic!()
    };
    assert_eq!(
        ip.destination,
        [192, 0, 2, 99],
        "rewritten before the stack sees it"
    );
    assert_eq!(moved, [(Reason::PassNoNeighbour, 1)].into());
    // DSR: the destination is still the VIP; the stack would keep it.
    let (outcome, moved) = harness.run_counted(&frames::tcp4(CLIENT4, 40000, v4(61), 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropNoNeighbour, 1)].into());
}

#[test]
fn without_a_cached_next_hop_the_fib_fallback_gives_the_same_bytes_and_is_counted() {
    let mut harness = Harness::new(CONFIG);
    let inputs = [
        frames::tcp4(CLIENT4, 40000, v4(10), 80),
        frames::udp4(CLIENT4, 40000, v4(11), 53),
        frames::tcp4(CLIENT4, 40000, v4(12), 80),
        frames::tcp6(CLIENT6, 40000, v6(0x10), 80),
        frames::udp6(CLIENT6, 40000, v6(0x11), 53),
        frames::tcp6(CLIENT6, 40000, v6(0x12), 80),
    ];
    let cached: Vec<_> = inputs
        .iter()
        .map(|input| {
            let (outcome, moved) = harness.run_counted(input);
            assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into(), "cached hop");
            outcome
        })
        .collect();
    harness.clear_hops();
    for (input, cached) in inputs.iter().zip(&cached) {
        let (outcome, moved) = harness.run_counted(input);
        assert_eq!(&outcome, cached, "the FIB path sends the same frame");
        assert_eq!(moved, [(Reason::ForwardUncachedHop, 1)].into());
    }
    assert!(harness.refresh_hops() > 0, "hops resolved again");
    let (outcome, moved) = harness.run_counted(&inputs[0]);
    assert_eq!(outcome, cached[0]);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
}

#[test]
fn replies_use_the_cached_route_hop_and_the_fib_gives_the_same_bytes() {
    let mut harness = Harness::new(CONFIG);
    let replies = [
        frames::tcp4(Ipv4Addr::new(192, 0, 2, 11), 8080, CLIENT4, 40000),
        frames::udp6("2001:db8::11".parse().unwrap(), 5353, CLIENT6, 40000),
    ];
    let cached: Vec<_> = replies
        .iter()
        .map(|input| {
            let (outcome, moved) = harness.run_counted(input);
            assert_eq!(outcome.action, Action::Redirect);
            assert_eq!(
                outcome.frame[..6],
                ROUTER_MAC,
                "the gateway of the client route"
            );
            assert_eq!(
                moved,
                [(Reason::ReplyToClient, 1)].into(),
                "cached route hop"
            );
            outcome
        })
        .collect();
    harness.clear_hops();
    for (input, cached) in replies.iter().zip(&cached) {
        let (outcome, moved) = harness.run_counted(input);
        assert_eq!(&outcome, cached, "the FIB path sends the same frame");
        assert_eq!(moved, [(Reason::ReplyUncachedHop, 1)].into());
    }
    // An address of this host inside a cached gateway route (a /32 on lo):
    // a reply to it is the stack's, as the FIB says, not the gateway's.
    harness.netns().addr("lo", "198.51.100.99/32");
    harness.refresh_hops();
    let to_self = frames::tcp4(
        Ipv4Addr::new(192, 0, 2, 11),
        8080,
        Ipv4Addr::new(198, 51, 100, 99),
        40000,
    );
    let (outcome, moved) = harness.run_counted(&to_self);
    assert_eq!(outcome.action, Action::Pass);
    assert_eq!(outcome.frame, to_self);
    assert_eq!(moved, [(Reason::PassNoService, 1)].into());
    // A more specific connected prefix inside the cached route: each host
    // there has its own MAC, so the FIB decides (no neighbour: the stack).
    harness.netns().addr("lb0", "198.51.100.200/28");
    harness.refresh_hops();
    let to_onlink = frames::tcp4(
        Ipv4Addr::new(192, 0, 2, 11),
        8080,
        Ipv4Addr::new(198, 51, 100, 201),
        40000,
    );
    let (outcome, moved) = harness.run_counted(&to_onlink);
    assert_eq!(
        outcome.action,
        Action::Pass,
        "handed to the stack to resolve"
    );
    assert_eq!(moved, [(Reason::PassNoNeighbour, 1)].into());
}

#[test]
fn a_cached_hop_serves_only_its_own_address_and_packets_that_fit() {
    let mut harness = Harness::new(CONFIG);
    let id = harness
        .planner
        .planned()
        .iter()
        .find(|service| service.name == "dsr4t")
        .map(|service| service.backends[0].id)
        .unwrap();
    let resolved = harness.dataplane.hop(id).unwrap();
    assert_eq!(resolved.flags, lb_common::maps::HOP_RESOLVED);
    assert_eq!(resolved.dmac, backend_mac(12));
    assert_eq!(resolved.smac, EGRESS_MAC);
    assert_eq!(resolved.mtu, 1500);
    let input = frames::tcp4(CLIENT4, 40000, v4(11), 80);
    let odd_mac = [0x02, 0, 0, 0, 0x0b, 0x77];
    // A hop left behind by a backend that used this id before.
    let mut stale = resolved;
    stale.addr = ipv4_mapped([192, 0, 2, 250]);
    stale.dmac = odd_mac;
    harness.dataplane.set_hop(id, &stale).unwrap();
    let (outcome, moved) = harness.run_counted(&input);
    assert_eq!(outcome.frame, dsr_expected(&input, 12), "not the stale MAC");
    assert_eq!(moved, [(Reason::ForwardUncachedHop, 1)].into());
    // A packet longer than the cached MTU: the FIB decides (as it always did).
    let mut small = resolved;
    small.mtu = 40;
    small.dmac = odd_mac;
    harness.dataplane.set_hop(id, &small).unwrap();
    let (outcome, moved) = harness.run_counted(&input);
    assert_eq!(outcome.frame, dsr_expected(&input, 12));
    assert_eq!(moved, [(Reason::ForwardUncachedHop, 1)].into());
    // The cached hop, when it applies, is what the frame is sent with.
    let mut moved_hop = resolved;
    moved_hop.dmac = odd_mac;
    harness.dataplane.set_hop(id, &moved_hop).unwrap();
    let (outcome, moved) = harness.run_counted(&input);
    assert_eq!(outcome.frame[..6], odd_mac);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
}

#[test]
fn a_changed_backend_mac_is_followed_once_the_hop_is_refreshed() {
    let mut harness = Harness::new(CONFIG);
    let input = frames::tcp6(CLIENT6, 40000, v6(0x11), 80);
    let outcome = harness.run(&input);
    assert_eq!(outcome.frame[..6], backend_mac(12));
    let new_mac = [0x02, 0, 0, 0, 0x0b, 0x99];
    harness.netns().ip(&[
        "neigh",
        "replace",
        "2001:db8::12",
        "lladdr",
        &lb_tests::testrun::mac_text(new_mac),
        "dev",
        "lb0",
        "nud",
        "permanent",
    ]);
    assert_eq!(
        harness.refresh_hops(),
        2,
        "the two backends at 2001:db8::12 (dsr6t, dsr6u) changed"
    );
    let outcome = harness.run(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(outcome.frame[..6], new_mac);
}

#[test]
fn the_guard_drops_denied_sources_and_sources_opening_flows_too_fast() {
    let config = format!(
        "{CONFIG}guard:\n  deny: [198.51.100.64/26, '2001:db8:1::bad/128']\n  \
         rate_limit: {{ new_flows_per_second: 1, burst: 5 }}\n"
    );
    let mut harness = Harness::new(&config);
    let denied4 = Ipv4Addr::new(198, 51, 100, 70);
    let denied6: Ipv6Addr = "2001:db8:1::bad".parse().unwrap();
    let (outcome, moved) = harness.run_counted(&frames::tcp4(denied4, 40000, v4(11), 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropDenied, 1)].into());
    let (outcome, moved) = harness.run_counted(&frames::udp6(denied6, 40000, v6(0x11), 53));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropDenied, 1)].into());
    // Not a VIP: the guard does not apply.
    let (outcome, _) = harness.run_counted(&frames::tcp4(
        denied4,
        40000,
        Ipv4Addr::new(192, 0, 2, 77),
        80,
    ));
    assert_eq!(outcome.action, Action::Pass);

    // Five new flows from one source pass (the burst), the sixth is dropped;
    // an established flow is never limited; another source is unaffected.
    for port in 0..5 {
        let outcome = harness.run(&frames::tcp4(CLIENT4, 30_000 + port, v4(11), 80));
        assert_eq!(outcome.action, Action::Redirect, "flow {port}");
    }
    let (outcome, moved) = harness.run_counted(&frames::tcp4(CLIENT4, 30_005, v4(11), 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropRateLimited, 1)].into());
    assert_eq!(
        harness
            .run(&frames::tcp4(CLIENT4, 30_000, v4(11), 80))
            .action,
        Action::Redirect
    );
    let other = Ipv4Addr::new(198, 51, 100, 8);
    assert_eq!(
        harness.run(&frames::tcp4(other, 30_000, v4(11), 80)).action,
        Action::Redirect
    );

    // Lifting the deny list on reload lets the source in.
    harness.reconfigure(CONFIG);
    let outcome = harness.run(&frames::tcp4(denied4, 40001, v4(11), 80));
    assert_eq!(outcome.action, Action::Redirect);
}

/// An IPv6 fragment of a UDP datagram (fragment extension header); the
/// first carries the UDP header.
fn fragment6(vip: Ipv6Addr, first: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::Ethernet2Header {
        source: lb_tests::testrun::CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut frame)
    .unwrap();
    etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: etherparse::Ipv6FlowLabel::ZERO,
        payload_length: 8 + 16,
        next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: CLIENT6.octets(),
        destination: vip.octets(),
    }
    .write(&mut frame)
    .unwrap();
    etherparse::Ipv6FragmentHeader {
        next_header: IpNumber::UDP,
        fragment_offset: etherparse::IpFragOffset::try_new(if first { 0 } else { 2 }).unwrap(),
        more_fragments: first,
        identification: 7,
    }
    .write(&mut frame)
    .unwrap();
    if first {
        etherparse::UdpHeader {
            source_port: 40000,
            destination_port: 80,
            length: 32,
            checksum: 0,
        }
        .write(&mut frame)
        .unwrap();
        frame.extend_from_slice(&[7; 8]);
    } else {
        frame.extend_from_slice(&[9; 16]);
    }
    frame
}

#[test]
fn ipv6_fragments_follow_the_source_for_ip_hash() {
    let harness = Harness::new(CONFIG);
    let first = harness.run(&fragment6(v6(0x30), true));
    let later = harness.run(&fragment6(v6(0x30), false));
    assert_eq!(first.action, Action::Redirect);
    assert_eq!(
        dsr_backend(&first),
        dsr_backend(&later),
        "fragments of one datagram split"
    );
    assert_eq!(later.frame[..6], backend_mac(dsr_backend(&first)));
    // No ip-hash service takes UDP fragments on this VIP: dropped.
    let (outcome, moved) = harness.run_counted(&fragment6(v6(0x11), false));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropFragment, 1)].into());
}

#[test]
fn idle_flows_expire_and_are_rescheduled() {
    // UDP flows idle for 2 s (the shortest timeout `lb check` takes) are
    // forgotten: once its flow has been quiet that long, a client of a
    // drained backend moves (ip-hash: the one other).
    let config = CONFIG.replace("dataplane: {", "dataplane: { udp_idle_timeout: 2s,");
    let mut harness = Harness::new(&config);
    let flow = frames::udp4(CLIENT4, 1000, v4(30), 80);
    let first = dsr_backend(&harness.run(&flow));
    let drained_flow = dsr_backend(&harness.run(&flow));
    assert_eq!(drained_flow, first, "a fresh flow stays");
    let key = BackendKey {
        service: "hash4".into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, first)),
        port: 80,
    };
    let drained = BackendState {
        up: true,
        weight: Some(0),
    };
    harness.replan(&[(key, drained)].into());
    assert_eq!(
        dsr_backend(&harness.run(&flow)),
        first,
        "a flow that is not idle keeps its drained backend"
    );
    let mut key = tcp_key4(CLIENT4, 1000, v4(30), 80);
    key.proto = 17;
    idle_for(&mut harness, &key, 3_000_000_000);
    let after = dsr_backend(&harness.run(&flow));
    assert_ne!(after, first, "an idle flow kept its drained backend");
}

/// Moves the `CONNS_V4` entry of `key` back in time by `ns`, as if its flow
/// had been quiet that long.
fn idle_for(harness: &mut Harness, key: &lb_common::FlowKeyV4, ns: u64) {
    let mut entry = lb::route::maps::MapTables::new(&harness.dataplane)
        .conn(&key.widen())
        .expect("read the connection table")
        .expect("the flow's entry");
    entry.last_seen_ns = entry
        .last_seen_ns
        .checked_sub(ns)
        .expect("the machine has been up longer than the idle time");
    harness
        .dataplane
        .write_conn(lb_common::map_names::CONNS_V4, key, &entry)
        .expect("write the entry");
}

/// A flow rescheduled because it was idle goes on: it is no new flow to the
/// rate limit (a client's own long, bursty connection must not lock it
/// out), while a new connection is still limited — a bare SYN, even on a
/// tuple the table holds.
#[test]
fn a_rescheduled_flow_does_not_count_against_the_rate_limit() {
    let config = format!(
        "{}guard:\n  rate_limit: {{ new_flows_per_second: 1, burst: 1 }}\n",
        CONFIG.replace("dataplane: {", "dataplane: { tcp_idle_timeout: 2s,")
    );
    let mut harness = Harness::new(&config);
    let client = Ipv4Addr::new(198, 51, 100, 79);
    assert_eq!(
        harness.run(&frames::tcp4(client, 6100, v4(10), 80)).action,
        Action::Redirect,
        "the first flow takes the one token"
    );
    let key = tcp_key4(client, 6100, v4(10), 80);
    idle_for(&mut harness, &key, 10_000_000_000);
    let (outcome, moved) = harness.run_counted(&frames::tcp4_ack(client, 6100, v4(10), 80));
    assert_eq!(outcome.action, Action::Redirect, "the idle flow goes on");
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    let (outcome, moved) = harness.run_counted(&frames::tcp4(client, 6101, v4(10), 80));
    assert_eq!(outcome.action, Action::Drop, "a new flow is still limited");
    assert_eq!(moved, [(Reason::DropRateLimited, 1)].into());
    idle_for(&mut harness, &key, 10_000_000_000);
    let (outcome, moved) = harness.run_counted(&frames::tcp4(client, 6100, v4(10), 80));
    assert_eq!(
        outcome.action,
        Action::Drop,
        "a SYN on the idle tuple is new"
    );
    assert_eq!(moved, [(Reason::DropRateLimited, 1)].into());
}

/// A refused reschedule leaves the entry and the active-flow counts as they
/// were: the old flow's close is counted once, when a new entry replaces
/// it, not once per retried SYN.
#[test]
fn refused_reschedules_do_not_count_closes() {
    let config = format!(
        "{}guard:\n  rate_limit: {{ new_flows_per_second: 1, burst: 1 }}\n",
        CONFIG.replace("dataplane: {", "dataplane: { tcp_idle_timeout: 2s,")
    );
    let mut harness = Harness::new(&config);
    let client = Ipv4Addr::new(198, 51, 100, 80);
    let syn = frames::tcp4(client, 6200, v4(10), 80);
    assert_eq!(harness.run(&syn).action, Action::Redirect);
    let key = tcp_key4(client, 6200, v4(10), 80);
    let backend = lb::route::maps::MapTables::new(&harness.dataplane)
        .conn(&key.widen())
        .expect("read the connection table")
        .expect("the flow's entry")
        .backend_id;
    let closed = |harness: &Harness| {
        harness
            .dataplane
            .backend_traffic(backend)
            .expect("read the backend's counters")
            .closed_flows
    };
    idle_for(&mut harness, &key, 10_000_000_000);
    for retry in 0..3 {
        let (outcome, moved) = harness.run_counted(&syn);
        assert_eq!(
            moved,
            [(Reason::DropRateLimited, 1)].into(),
            "retry {retry}"
        );
        assert_eq!(outcome.action, Action::Drop);
    }
    assert_eq!(closed(&harness), 0, "no close counted for refused SYNs");
    // Once a token is back (a second), the SYN replaces the entry: one close.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(harness.run(&syn).action, Action::Redirect);
    assert_eq!(closed(&harness), 1, "the replaced flow's close, once");
}

#[test]
fn the_data_plane_counts_flows_opening_and_closing() {
    let harness = Harness::new(CONFIG);
    // nat4t has one backend, id 0.
    let traffic = || harness.dataplane.backend_traffic(0).unwrap();
    let with_flags = |flags: fn(etherparse::TcpHeader) -> etherparse::TcpHeader| {
        let input = frames::tcp4(CLIENT4, 41000, v4(10), 80);
        let mut h = Headers::parse(&input);
        if let Some(TransportHeader::Tcp(tcp)) = h.transport.take() {
            h.transport = Some(TransportHeader::Tcp(flags(tcp)));
        }
        h.to_bytes()
    };
    let syn = with_flags(|mut t| {
        t.syn = true;
        t
    });
    let ack = with_flags(|mut t| {
        t.syn = false;
        t.ack = true;
        t
    });
    let fin = with_flags(|mut t| {
        t.syn = false;
        t.ack = true;
        t.fin = true;
        t
    });
    harness.run(&syn);
    harness.run(&ack);
    assert_eq!(
        (traffic().new_flows, traffic().closed_flows),
        (1, 0),
        "one open flow"
    );
    harness.run(&fin);
    harness.run(&fin); // a retransmitted FIN is not a second close
    assert_eq!(
        (traffic().new_flows, traffic().closed_flows),
        (1, 1),
        "closed by FIN"
    );
    // A new SYN on the same tuple (after TIME_WAIT) is a new flow.
    harness.run(&syn);
    assert_eq!((traffic().new_flows, traffic().closed_flows), (2, 1));
}

/// A UDP datagram from `src` to `dst`:53 whose IP packet is `ip_len` bytes.
fn udp_of_ip_len(src: IpAddr, dst: IpAddr, ip_len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let payload = vec![0x5a; ip_len - 28];
            eth()
                .ipv4(s.octets(), d.octets(), 64)
                .udp(40000, 53)
                .write(&mut frame, &payload)
                .unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let payload = vec![0x5a; ip_len - 48];
            eth()
                .ipv6(s.octets(), d.octets(), 64)
                .udp(40000, 53)
                .write(&mut frame, &payload)
                .unwrap();
        }
        _ => panic!("one family"),
    }
    frame
}

/// The ICMP error the balancer should send back for `input`: from the VIP
/// to the client, MACs swapped, quoting the IP header and 8 bytes.
fn too_big_expected(input: &[u8], mtu: u16) -> Vec<u8> {
    let packet = ip_packet(input);
    let mut out = Vec::new();
    let Headers { net, .. } = Headers::parse(input);
    match net {
        NetHeaders::Ipv4(ip, _) => {
            let quote = &packet[..28];
            let icmp = etherparse::Icmpv4Header::with_checksum(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    },
                ),
                quote,
            );
            let mut header = etherparse::Ipv4Header::new(
                u16::try_from(icmp.header_len() + quote.len()).unwrap(),
                64,
                IpNumber::ICMP,
                ip.destination,
                ip.source,
            )
            .unwrap();
            header.dont_fragment = false;
            header.header_checksum = header.calc_header_checksum();
            etherparse::Ethernet2Header {
                source: LB_MAC,
                destination: lb_tests::testrun::CLIENT_MAC,
                ether_type: etherparse::EtherType::IPV4,
            }
            .write(&mut out)
            .unwrap();
            header.write(&mut out).unwrap();
            icmp.write(&mut out).unwrap();
            out.extend_from_slice(quote);
        }
        NetHeaders::Ipv6(ip, _) => {
            let quote = &packet[..48];
            PacketBuilder::ethernet2(LB_MAC, lb_tests::testrun::CLIENT_MAC)
                .ipv6(ip.destination, ip.source, 64)
                .icmpv6(etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                })
                .write(&mut out, quote)
                .unwrap();
        }
        NetHeaders::Arp(_) => panic!("not IP"),
    }
    out
}

#[test]
fn a_packet_too_big_for_the_tunnel_gets_the_client_an_icmp_error_with_the_mtu_that_fits() {
    let harness = Harness::new(CONFIG);
    let b4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 13));
    let b6 = IpAddr::V6("2001:db8::13".parse().unwrap());
    let cases = [
        (IpAddr::V4(CLIENT4), IpAddr::V4(v4(12)), b4, 1480),
        (IpAddr::V6(CLIENT6), IpAddr::V6(v6(0x12)), b6, 1460),
    ];
    for (client, vip, backend, fits) in cases {
        // The egress (lb0) has an MTU of 1500: the tunnel header makes a
        // 1500-byte packet too big; the largest that fits is forwarded.
        let input = udp_of_ip_len(client, vip, 1500);
        let (outcome, moved) = harness.run_counted(&input);
        assert_eq!(outcome.action, Action::Tx, "{vip}: back to the client");
        assert_eq!(
            outcome.frame,
            too_big_expected(&input, fits),
            "{vip}: ICMP error"
        );
        assert_eq!(moved, [(Reason::IcmpTooBig, 1)].into(), "{vip}");
        let input = udp_of_ip_len(client, vip, usize::from(fits));
        let (outcome, moved) = harness.run_counted(&input);
        assert_eq!(outcome.action, Action::Redirect, "{vip}: {fits} bytes fit");
        assert_eq!(outcome.frame, tunnel_expected(&input, backend, 13));
        assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into(), "{vip}");
    }
    // NAT and DSR add nothing: a full-size packet goes on.
    let input = udp_of_ip_len(IpAddr::V4(CLIENT4), IpAddr::V4(v4(11)), 1500);
    let outcome = harness.run(&input);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(outcome.frame, dsr_expected(&input, 12));
}

/// A new flow whose first packet cannot be sent (a DSR backend with no
/// neighbour yet) still has its entry written, and is counted as opened
/// then: its retransmission goes the established way, so it would never be
/// counted otherwise (one of 300 flows went missing from `e2e_announce`'s
/// count that way), and its close would count against the active flows.
#[test]
fn a_new_flow_whose_first_packet_is_not_sent_is_counted_once() {
    let harness = Harness::new(CONFIG);
    let client = Ipv4Addr::new(198, 51, 100, 81);
    let syn = frames::tcp4(client, 7000, v4(61), 80);
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropNoNeighbour, 1)].into());
    let backend = lb::route::maps::MapTables::new(&harness.dataplane)
        .conn(&tcp_key4(client, 7000, v4(61), 80).widen())
        .expect("read the connection table")
        .expect("the flow's entry")
        .backend_id;
    let traffic = || {
        harness
            .dataplane
            .backend_traffic(backend)
            .expect("read the backend's counters")
    };
    assert_eq!((traffic().new_flows, traffic().packets), (1, 0));
    // The retransmission finds the entry: no second new flow.
    let (_, moved) = harness.run_counted(&syn);
    assert_eq!(moved, [(Reason::DropNoNeighbour, 1)].into());
    assert_eq!(traffic().new_flows, 1);
}

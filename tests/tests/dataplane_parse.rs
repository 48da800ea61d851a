//! The balancer's parser under `BPF_PROG_TEST_RUN`: what is not ours passes
//! byte for byte; what is ours but malformed is dropped and counted exactly
//! once under the right reason.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::IpNumber;
use lb_common::Reason;
use lb_tests::{
    frames::{self, PAYLOAD, eth},
    testrun::{Action, Harness},
};

const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 99);

/// TCP/80 and UDP/53 on both VIPs, each with one NAT backend.
const CONFIG: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: web4, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.11 }] }
  - { name: dns4, vip: 203.0.113.10, port: 53, protocol: udp, backends: [{ address: 192.0.2.11 }] }
  - { name: web6, vip: '2001:db8:0:0:0:0:0:10', port: 80, protocol: tcp, backends: [{ address: '2001:db8::11' }] }
  - { name: dns6, vip: '2001:db8:0:0:0:0:0:10', port: 53, protocol: udp, backends: [{ address: '2001:db8::11' }] }
dataplane: { ring_size: 1009 }
";

fn harness() -> Harness {
    Harness::new(CONFIG)
}

/// IPv4 to `dst` carrying `l4` as raw transport bytes (possibly cut short).
fn ipv4_raw(dst: Ipv4Addr, protocol: IpNumber, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    eth()
        .ipv4(CLIENT4.octets(), dst.octets(), 64)
        .write(&mut frame, protocol, l4)
        .unwrap();
    frame
}

/// IPv6 to `dst` carrying `l4` as raw transport bytes.
fn ipv6_raw(dst: Ipv6Addr, protocol: IpNumber, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    eth()
        .ipv6(CLIENT6.octets(), dst.octets(), 64)
        .write(&mut frame, protocol, l4)
        .unwrap();
    frame
}

/// The transport header of a frame built by `frames`, for cutting short.
fn l4_of(frame: &[u8]) -> Vec<u8> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let ip = sliced.net.unwrap();
    let payload = match ip {
        etherparse::NetSlice::Ipv4(v4) => v4.payload().payload,
        etherparse::NetSlice::Ipv6(v6) => v6.payload().payload,
        etherparse::NetSlice::Arp(_) => panic!("not IP"),
    };
    payload.to_vec()
}

/// Sets the IPv4 header's IHL nibble; the IPv4 header follows 14 bytes of
/// Ethernet in untagged frames.
fn with_ihl(mut frame: Vec<u8>, ihl: u8) -> Vec<u8> {
    let ip = etherparse::Ethernet2Header::LEN;
    frame[ip] = 0x40 | ihl;
    frame
}

#[test]
fn traffic_that_is_not_ours_passes_byte_for_byte() {
    let harness = harness();
    let mut other_mac = frames::tcp4(CLIENT4, 40000, VIP4, 80);
    other_mac[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "ARP request",
            frames::arp_request(CLIENT4, VIP4),
            Reason::PassNonIp,
        ),
        (
            "IPv4 TCP to another address",
            frames::tcp4(CLIENT4, 40000, OTHER4, 80),
            Reason::PassNoService,
        ),
        (
            "IPv4 UDP to another address",
            frames::udp4(CLIENT4, 40000, OTHER4, 53),
            Reason::PassNoService,
        ),
        (
            "IPv6 TCP to another address",
            frames::tcp6(CLIENT6, 40000, OTHER6, 80),
            Reason::PassNoService,
        ),
        (
            "IPv6 UDP to another address",
            frames::udp6(CLIENT6, 40000, OTHER6, 53),
            Reason::PassNoService,
        ),
        (
            "IPv4 TCP to a VIP, port without service",
            frames::tcp4(CLIENT4, 40000, VIP4, 81),
            Reason::PassNoService,
        ),
        (
            "IPv6 UDP to a VIP, protocol without service",
            frames::udp6(CLIENT6, 40000, VIP6, 80),
            Reason::PassNoService,
        ),
        (
            "unicast frame for another MAC",
            other_mac,
            Reason::PassOtherMac,
        ),
        (
            "malformed IPv4 to another address",
            with_ihl(frames::tcp4(CLIENT4, 1, OTHER4, 80), 3),
            Reason::PassNoService,
        ),
        (
            "truncated TCP to another address",
            ipv4_raw(OTHER4, IpNumber::TCP, &[0; 10]),
            Reason::PassNoService,
        ),
    ];
    for (description, frame, reason) in cases {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Pass, "{description}");
        assert_eq!(outcome.frame, frame, "{description}: bytes changed");
        assert_eq!(moved, [(reason, 1)].into(), "{description}: counters");
    }
}

#[test]
fn service_traffic_is_recognised_also_behind_a_vlan_tag() {
    let harness = harness();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 TCP", frames::tcp4(CLIENT4, 40000, VIP4, 80)),
        ("IPv4 UDP", frames::udp4(CLIENT4, 40000, VIP4, 53)),
        ("IPv6 TCP", frames::tcp6(CLIENT6, 40000, VIP6, 80)),
        ("IPv6 UDP", frames::udp6(CLIENT6, 40000, VIP6, 53)),
        (
            "VLAN 42, IPv4 TCP",
            frames::tcp4_vlan(42, CLIENT4, 40000, VIP4, 80),
        ),
    ];
    for (description, frame) in cases {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Redirect, "{description}");
        assert_eq!(
            moved,
            [(Reason::ForwardToBackend, 1)].into(),
            "{description}"
        );
    }
    // The VLAN tag is really parsed: the same tagged frame to a port without
    // a service is recognised as such.
    let (_, moved) = harness.run_counted(&frames::tcp4_vlan(42, CLIENT4, 40000, VIP4, 81));
    assert_eq!(moved, [(Reason::PassNoService, 1)].into());
}

#[test]
fn malformed_packets_to_a_service_are_dropped_and_counted_once() {
    let harness = harness();
    let tcp4 = frames::tcp4(CLIENT4, 40000, VIP4, 80);
    let tcp6 = frames::tcp6(CLIENT6, 40000, VIP6, 80);
    let tcp_header = l4_of(&tcp4);
    let udp_header = l4_of(&frames::udp4(CLIENT4, 40000, VIP4, 53));
    let ip4_end = etherparse::Ethernet2Header::LEN + etherparse::Ipv4Header::MIN_LEN;
    let ip6_end = etherparse::Ethernet2Header::LEN + etherparse::Ipv6Header::LEN;
    let mut bad_doff = tcp_header.clone();
    bad_doff[12] = 0x40; // data offset 4 words: shorter than a TCP header
    let mut fragment = tcp4.clone();
    let flags = etherparse::Ethernet2Header::LEN + 6;
    fragment[flags] |= 0x20; // more fragments
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        // (A frame shorter than an Ethernet header cannot be tested here:
        // BPF_PROG_TEST_RUN refuses XDP input below 14 bytes, as drivers do.)
        (
            "VLAN tag cut short",
            frames::tcp4_vlan(42, CLIENT4, 1, VIP4, 80)[..16].to_vec(),
            Reason::DropMalformedEth,
        ),
        (
            "IPv4 header cut short",
            tcp4[..ip4_end - 4].to_vec(),
            Reason::DropMalformedIpv4,
        ),
        (
            "IPv4 total length beyond the frame",
            tcp4[..ip4_end + 8].to_vec(),
            Reason::DropMalformedIpv4,
        ),
        (
            "IPv4 IHL below 5",
            with_ihl(tcp4.clone(), 4),
            Reason::DropMalformedIpv4,
        ),
        (
            "IPv4 IHL beyond the packet",
            with_ihl(tcp4.clone(), 15),
            Reason::DropMalformedIpv4,
        ),
        (
            "IPv6 header cut short",
            tcp6[..ip6_end - 10].to_vec(),
            Reason::DropMalformedIpv6,
        ),
        (
            "IPv6 payload length beyond the frame",
            tcp6[..ip6_end + 8].to_vec(),
            Reason::DropMalformedIpv6,
        ),
        (
            "TCP header cut short (IPv4)",
            ipv4_raw(VIP4, IpNumber::TCP, &tcp_header[..10]),
            Reason::DropMalformedTcp,
        ),
        (
            "TCP header cut short (IPv6)",
            ipv6_raw(VIP6, IpNumber::TCP, &tcp_header[..19]),
            Reason::DropMalformedTcp,
        ),
        (
            "TCP data offset below 5",
            ipv4_raw(VIP4, IpNumber::TCP, &bad_doff),
            Reason::DropMalformedTcp,
        ),
        (
            "UDP header cut short",
            ipv4_raw(VIP4, IpNumber::UDP, &udp_header[..4]),
            Reason::DropMalformedUdp,
        ),
        (
            "ICMP header cut short",
            ipv4_raw(VIP4, IpNumber::ICMP, &[8, 0, 0]),
            Reason::DropMalformedIcmp,
        ),
        ("IPv4 fragment", fragment, Reason::DropFragment),
        (
            "IPv4 from a multicast source",
            frames::udp4(Ipv4Addr::new(224, 0, 0, 5), 1, VIP4, 53),
            Reason::DropMalformedIpv4,
        ),
        (
            "IPv6 from an IPv4-mapped source",
            frames::tcp6("::ffff:192.0.2.11".parse().unwrap(), 1, VIP6, 80),
            Reason::DropMalformedIpv6,
        ),
        (
            "IPv6 from a multicast source",
            frames::udp6("ff02::1".parse().unwrap(), 1, VIP6, 53),
            Reason::DropMalformedIpv6,
        ),
    ];
    for (description, frame, reason) in cases {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Drop, "{description}");
        assert_eq!(moved, [(reason, 1)].into(), "{description}: counters");
    }
}

#[test]
fn payload_helper_is_what_frames_carry() {
    // Guards the builders the other tests rely on: an independent parser
    // reads back the addresses, ports and payload they were given.
    let frame = frames::udp6(CLIENT6, 40000, VIP6, 53);
    let sliced = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6")
    };
    assert_eq!(ip.header().destination_addr(), VIP6);
    let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    assert_eq!(udp.destination_port(), 53);
    assert_eq!(udp.payload(), PAYLOAD);
}

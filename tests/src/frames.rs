//! Frames for tests, built with etherparse (an independent implementation of
//! the wire formats), never with hand-computed offsets.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, PacketBuilderStep, VlanId};

use crate::testrun::{CLIENT_MAC, LB_MAC};

/// Payload carried by test frames.
pub const PAYLOAD: &[u8] = b"lb test payload";

/// Ethernet to the balancer's MAC.
pub fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
}

/// A TCP SYN over IPv4.
pub fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// A UDP datagram over IPv4.
pub fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = eth().ipv4(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// A TCP SYN over IPv6.
pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let builder = eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// A UDP datagram over IPv6.
pub fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let builder = eth().ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// A TCP SYN over IPv4 inside one 802.1Q tag.
pub fn tcp4_vlan(vlan: u16, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = eth()
        .single_vlan(VlanId::try_new(vlan).expect("vlan id"))
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// An ARP request (who has `target`?), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    let arp = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &CLIENT_MAC,
        &sender.octets(),
        &[0; 6],
        &target.octets(),
    )
    .expect("arp packet");
    frame.extend_from_slice(&arp.to_bytes());
    frame
}

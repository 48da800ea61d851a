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
    tcp4_seq(src, sport, dst, dport, 1000)
}

/// A TCP SYN over IPv4 with sequence number `seq`.
pub fn tcp4_seq(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> Vec<u8> {
    let builder = eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, seq, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(PAYLOAD.len()));
    builder.write(&mut frame, PAYLOAD).expect("write frame");
    frame
}

/// A TCP segment with ACK (no SYN) over IPv4: a packet of an open
/// connection.
pub fn tcp4_ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1001, 64240)
        .ack(1);
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

/// A frame taken apart by etherparse, to be edited and put back together
/// with every checksum recomputed: the independent reference for what the
/// balancer should emit.
#[derive(Clone, Debug)]
pub struct Headers {
    /// Ethernet.
    pub eth: etherparse::Ethernet2Header,
    /// One VLAN tag, if any.
    pub vlan: Option<etherparse::SingleVlanHeader>,
    /// IPv4 or IPv6.
    pub net: etherparse::NetHeaders,
    /// TCP, UDP, ICMP.
    pub transport: Option<etherparse::TransportHeader>,
    /// What follows.
    pub payload: Vec<u8>,
}

impl Headers {
    /// Parses `frame`; panics if etherparse cannot.
    pub fn parse(frame: &[u8]) -> Self {
        let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).expect("parse frame");
        let Some(etherparse::LinkHeader::Ethernet2(eth)) = headers.link else {
            panic!("no Ethernet header");
        };
        let vlan = headers.link_exts.iter().find_map(|ext| match ext {
            etherparse::LinkExtHeader::Vlan(vlan) => Some(vlan.clone()),
            etherparse::LinkExtHeader::Macsec(_) => None,
        });
        Self {
            eth,
            vlan,
            net: headers.net.expect("IP header"),
            transport: headers.transport,
            payload: headers.payload.slice().to_vec(),
        }
    }

    /// Serialises with IP, TCP, UDP and ICMP checksums recomputed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut transport = self.transport.clone();
        let mut net = self.net.clone();
        let transport_len = transport
            .as_ref()
            .map_or(0, etherparse::TransportHeader::header_len);
        let ip_payload_len = transport_len + self.payload.len();
        match &mut net {
            etherparse::NetHeaders::Ipv4(ip, _) => {
                ip.set_payload_len(ip_payload_len).expect("length");
                match &mut transport {
                    Some(etherparse::TransportHeader::Tcp(tcp)) => {
                        tcp.checksum = tcp.calc_checksum_ipv4(ip, &self.payload).expect("csum");
                    }
                    Some(etherparse::TransportHeader::Udp(udp)) => {
                        udp.length = u16::try_from(8 + self.payload.len()).expect("length");
                        udp.checksum = udp.calc_checksum_ipv4(ip, &self.payload).expect("csum");
                    }
                    Some(etherparse::TransportHeader::Icmpv4(icmp)) => {
                        icmp.update_checksum(&self.payload);
                    }
                    _ => {}
                }
            }
            etherparse::NetHeaders::Ipv6(ip, _) => {
                ip.set_payload_length(ip_payload_len).expect("length");
                match &mut transport {
                    Some(etherparse::TransportHeader::Tcp(tcp)) => {
                        tcp.checksum = tcp.calc_checksum_ipv6(ip, &self.payload).expect("csum");
                    }
                    Some(etherparse::TransportHeader::Udp(udp)) => {
                        udp.length = u16::try_from(8 + self.payload.len()).expect("length");
                        udp.checksum = udp.calc_checksum_ipv6(ip, &self.payload).expect("csum");
                    }
                    Some(etherparse::TransportHeader::Icmpv6(icmp)) => {
                        icmp.update_checksum(ip.source, ip.destination, &self.payload)
                            .expect("csum");
                    }
                    _ => {}
                }
            }
            etherparse::NetHeaders::Arp(_) => panic!("not IP"),
        }
        let mut out = Vec::new();
        self.eth.write(&mut out).expect("write");
        if let Some(vlan) = &self.vlan {
            vlan.write(&mut out).expect("write");
        }
        match &net {
            etherparse::NetHeaders::Ipv4(ip, _) => ip.write(&mut out).expect("write"),
            etherparse::NetHeaders::Ipv6(ip, _) => ip.write(&mut out).expect("write"),
            etherparse::NetHeaders::Arp(_) => unreachable!(),
        }
        if let Some(transport) = &transport {
            transport.write(&mut out).expect("write");
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The bytes of `frame` from its IP header on (for tunnel expectations).
pub fn ip_packet(frame: &[u8]) -> Vec<u8> {
    let headers = Headers::parse(frame);
    let skip = etherparse::Ethernet2Header::LEN + headers.vlan.as_ref().map_or(0, |_| 4);
    frame[skip..].to_vec()
}

//! The balancer against its reference model (`lb_tests::model`): 50,000
//! random well-formed frames, then 60,000 mutated ones (bits flipped, bytes
//! overwritten, cut short, padded, header fields set), each in its own
//! `BPF_PROG_TEST_RUN`; then, on a second balancer with backends down
//! (a whole primary tier among them), 20,000 well-formed frames. The
//! program must never abort; where the model can tell, verdict, backend and
//! rewritten fields must be what it predicts (the model computes its own
//! Maglev tables, round-robin sequences and flow hash from the
//! configuration: `lb_tests::tables`). Round robin is predicted while every
//! frame is a new flow the model follows (the well-formed ones; the runs
//! are pinned to one CPU, whose position the kernel keeps). A disagreement
//! prints the frame in hex.
//!
//! The PRNG is seeded (`LB_MODEL_SEED` overrides the seed), so a failure
//! replays exactly.
#![allow(
    clippy::cast_possible_truncation,
    reason = "random numbers are drawn as u64 and narrowed to the field they fill"
)]

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4HeaderSlice, PacketBuilderStep,
    TcpHeaderSlice, UdpHeaderSlice, VlanId,
};
use lb::config::Forwarding;
use lb::plan::{BackendKey, BackendState};
use lb_tests::{
    frames,
    model::{CLIENT_NET_V4, CLIENT_NET_V6, Down, IpView, Model, Prediction, ip_view, ports},
    testrun::{Action, EGRESS_MAC, Harness, LB_MAC, ROUTER_MAC, backend_mac, pin_to_this_cpu},
};

/// Random well-formed frames.
const VALID_FRAMES: usize = 50_000;
/// Random mutated frames.
const MUTATED_FRAMES: usize = 60_000;
/// Seed of the run unless `LB_MODEL_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x6c62_2024_0d0c_a11e;

/// IPv4 and IPv6 services over maglev, ip-hash and round robin, nat, dsr and
/// tunnel, TCP and UDP, exact-port and all-port, weights varied, standby
/// tiers and one service whose only backends are drained (its table is
/// empty).
const CONFIG: &str = "\
instance: model
interfaces: [{ name: lb0 }]
services:
  - name: web4
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    scheduler: maglev
    forwarding: nat
    backends:
      - { address: 192.0.2.11, port: 8080, weight: 100 }
      - { address: 192.0.2.12, port: 8080, weight: 200 }
      - { address: 192.0.2.13, port: 8080, weight: 50 }
  - name: dns4
    vip: 203.0.113.10
    port: 53
    protocol: udp
    scheduler: ip-hash
    forwarding: nat
    backends:
      - { address: 192.0.2.11 }
      - { address: 192.0.2.14, weight: 300 }
  - name: ssh4
    vip: 203.0.113.10
    port: 22
    protocol: tcp
    scheduler: ip-hash
    forwarding: dsr
    backends:
      - { address: 192.0.2.13 }
      - { address: 192.0.2.14, weight: 150 }
      - { address: 192.0.2.21, tier: 1 }
  - name: app4
    vip: 203.0.113.20
    port: 443
    protocol: tcp
    scheduler: maglev
    forwarding: dsr
    backends:
      - { address: 192.0.2.12, weight: 100 }
      - { address: 192.0.2.13, weight: 100 }
      - { address: 192.0.2.21, weight: 250 }
      - { address: 192.0.2.22, weight: 10 }
  - name: tun4
    vip: 203.0.113.20
    port: 0
    protocol: udp
    scheduler: ip-hash
    forwarding: tunnel
    backends:
      - { address: 192.0.2.21, weight: 100 }
      - { address: 192.0.2.22, weight: 50 }
  - name: tcp4-tunnel
    vip: 203.0.113.20
    port: 8443
    protocol: tcp
    scheduler: maglev
    forwarding: tunnel
    backends:
      - { address: 192.0.2.11 }
      - { address: 192.0.2.22 }
  - name: drained4
    vip: 203.0.113.30
    port: 80
    protocol: tcp
    forwarding: nat
    backends:
      - { address: 192.0.2.11, port: 80, weight: 0 }
      - { address: 192.0.2.12, port: 80, weight: 0 }
  - name: web6
    vip: '2001:db8:f::10'
    port: 80
    protocol: tcp
    scheduler: maglev
    forwarding: nat
    backends:
      - { address: '2001:db8::11', port: 8080, weight: 100 }
      - { address: '2001:db8::12', port: 8080, weight: 100 }
      - { address: '2001:db8::21', port: 8080, weight: 200 }
  - name: dns6
    vip: '2001:db8:f::10'
    port: 53
    protocol: udp
    scheduler: ip-hash
    forwarding: tunnel
    backends:
      - { address: '2001:db8::13', weight: 100 }
      - { address: '2001:db8::14', weight: 20 }
  - name: all6
    vip: '2001:db8:f::20'
    port: 0
    protocol: tcp
    scheduler: maglev
    forwarding: dsr
    backends:
      - { address: '2001:db8::11' }
      - { address: '2001:db8::22', weight: 300 }
      - { address: '2001:db8::12', tier: 1 }
  - name: quic6
    vip: '2001:db8:f::20'
    port: 443
    protocol: udp
    scheduler: maglev
    forwarding: nat
    backends:
      - { address: '2001:db8::21', port: 4433 }
      - { address: '2001:db8::22', port: 4433, weight: 70 }
  - name: udp6-all
    vip: '2001:db8:f::30'
    port: 0
    protocol: udp
    scheduler: ip-hash
    forwarding: nat
    backends:
      - { address: '2001:db8::13' }
      - { address: '2001:db8::14', weight: 40 }
      - { address: '2001:db8::12', weight: 60 }
  - name: tcp6-ip-hash
    vip: '2001:db8:f::30'
    port: 25
    protocol: tcp
    scheduler: ip-hash
    forwarding: tunnel
    backends:
      - { address: '2001:db8::12' }
      - { address: '2001:db8::22' }
  - name: rr4
    vip: 203.0.113.40
    port: 80
    protocol: tcp
    scheduler: round-robin
    forwarding: nat
    backends:
      - { address: 192.0.2.11, port: 9011, weight: 30 }
      - { address: 192.0.2.12, port: 9012, weight: 50 }
      - { address: 192.0.2.13, port: 9013, weight: 20 }
  - name: rr6
    vip: '2001:db8:f::40'
    port: 8080
    protocol: tcp
    scheduler: round-robin
    forwarding: dsr
    backends:
      - { address: '2001:db8::13' }
      - { address: '2001:db8::14' }
      - { address: '2001:db8::21' }
      - { address: '2001:db8::22', tier: 1 }
dataplane:
  ring_size: 1009
  max_services: 16
  max_backends: 64
  connection_table_size: 65536
  tunnel_source_v4: 192.0.2.64/28
  tunnel_source_v6: '2001:db8:ff::/112'
";

/// Addresses that carry no service, among them the IPv4-mapped IPv6 form of
/// IPv4 VIPs (not an address a packet can be sent to, and not a VIP).
fn non_vips(v6: bool) -> Vec<IpAddr> {
    if v6 {
        [
            "2001:db8:f::99",
            "2001:db8::11",
            "2001:db8:1::99",
            "2001:db8:2::1",
            "::ffff:203.0.113.10",
            "::ffff:203.0.113.20",
        ]
    } else {
        [
            "203.0.113.99",
            "192.0.2.11",
            "198.51.100.200",
            "10.1.2.3",
            "203.0.113.11",
            "192.0.2.1",
        ]
    }
    .iter()
    .map(|a| a.parse().expect("address"))
    .collect()
}

/// splitmix64: small, seedable, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True `percent`% of the time.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// One of `values`, or (as often as each of them) any 16-bit value.
    fn pick_or_any(&mut self, values: &[u16]) -> u16 {
        match self.below(values.len() + 1) {
            0 => self.port(),
            i => values[i - 1],
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn port(&mut self) -> u16 {
        self.next() as u16
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// A 5-tuple, to keep every generated flow fresh.
type Tuple = (IpAddr, IpAddr, u16, u16, u8);

/// One generated well-formed frame.
struct Generated {
    frame: Vec<u8>,
    /// A non-fragment (its checksums can be checked after a rewrite).
    whole: bool,
}

/// Builds well-formed frames from the configuration's services.
struct Generator<'a> {
    rng: Rng,
    harness: &'a Harness,
    seen: HashSet<Tuple>,
}

impl Generator<'_> {
    fn client(&mut self, v6: bool) -> IpAddr {
        if v6 {
            let host = self.rng.next() | 1;
            IpAddr::V6(Ipv6Addr::from(
                u128::from(CLIENT_NET_V6.0) | u128::from(host),
            ))
        } else {
            let host = self.rng.range(1, 254) as u32;
            IpAddr::V4(Ipv4Addr::from(u32::from(CLIENT_NET_V4.0) | host))
        }
    }

    fn vips(&self, v6: bool) -> Vec<IpAddr> {
        let mut vips: Vec<IpAddr> = self
            .harness
            .config
            .services
            .iter()
            .map(|s| s.vip)
            .filter(|vip| vip.is_ipv6() == v6)
            .collect();
        vips.sort_unstable();
        vips.dedup();
        vips
    }

    /// A client flow to `dst`, fresh: (src, sport) drawn until unseen.
    fn fresh_client(&mut self, dst: IpAddr, dport: u16, proto: u8) -> (IpAddr, u16) {
        loop {
            let src = self.client(dst.is_ipv6());
            let sport = self.rng.range(1024, 65535) as u16;
            if self.seen.insert((src, dst, sport, dport, proto)) {
                return (src, sport);
            }
        }
    }

    fn generate(&mut self) -> Generated {
        let v6 = self.rng.chance(50);
        let vlan = if self.rng.chance(10) {
            Some(self.rng.range(1, 4094) as u16)
        } else {
            None
        };
        let len = self.rng.range(0, 48);
        let payload = self.rng.bytes(len);
        let roll = self.rng.below(100);
        let services: Vec<_> = self
            .harness
            .config
            .services
            .iter()
            .filter(|s| s.vip.is_ipv6() == v6)
            .cloned()
            .collect();
        let (src, sport, dst, dport, proto) = match roll {
            // A service.
            0..55 => {
                let service = self.rng.pick(&services);
                let dport = if service.port == 0 {
                    self.rng.port()
                } else {
                    service.port
                };
                let proto = service.protocol.number();
                let (src, sport) = self.fresh_client(service.vip, dport, proto);
                (src, sport, service.vip, dport, proto)
            }
            // A VIP, any port and protocol (mostly no service).
            55..70 => {
                let vips = self.vips(v6);
                let dst = self.rng.pick(&vips);
                let proto = self.rng.pick(&[6, 17]);
                let dport = self.rng.port();
                let (src, sport) = self.fresh_client(dst, dport, proto);
                (src, sport, dst, dport, proto)
            }
            // Another address.
            70..80 => {
                let dst = self.rng.pick(&non_vips(v6));
                let proto = self.rng.pick(&[6, 17]);
                let any = self.rng.port();
                let dport = self.rng.pick(&[80, 53, 443, 22, any]);
                let (src, sport) = self.fresh_client(dst, dport, proto);
                (src, sport, dst, dport, proto)
            }
            // A reply from a NAT backend to a client; for IPv6 now and then
            // from the IPv4-mapped form of an IPv4 backend's address (not a
            // backend: a different host, if anything).
            80..92 => {
                let mapped = v6 && self.rng.chance(10);
                let nat: Vec<_> = self
                    .harness
                    .config
                    .services
                    .iter()
                    .filter(|s| s.forwarding == Forwarding::Nat && s.vip.is_ipv6() == v6 ^ mapped)
                    .flat_map(|s| s.backends.iter().map(move |b| (s.clone(), b.clone())))
                    .collect();
                let (service, backend) = self.rng.pick(&nat);
                let sport = match backend.port_for(&service) {
                    0 => self.rng.port(),
                    port => port,
                };
                let src = match backend.address {
                    IpAddr::V4(a) if mapped => IpAddr::V6(a.to_ipv6_mapped()),
                    address => address,
                };
                let dst = self.client(v6);
                (
                    src,
                    sport,
                    dst,
                    self.rng.range(1024, 65535) as u16,
                    service.protocol.number(),
                )
            }
            // An IPv4 fragment to a VIP (IPv6 fragments need an extension
            // header, which the model leaves alone).
            _ if !v6 => return self.fragment(vlan, &payload),
            // IPv6: a service's VIP on the discard port (a service only if
            // it is an all-port one).
            _ => {
                let service = self.rng.pick(&services);
                let proto = service.protocol.number();
                let (src, sport) = self.fresh_client(service.vip, 9, proto);
                (src, sport, service.vip, 9, proto)
            }
        };
        let ip = ip_step(vlan, src, dst, self.rng.range(1, 255) as u8);
        let mut frame = Vec::new();
        if proto == 6 {
            let builder = ip.tcp(sport, dport, self.rng.next() as u32, self.rng.port());
            let builder = if self.rng.chance(70) {
                builder.syn()
            } else {
                builder.ack(self.rng.next() as u32)
            };
            builder.write(&mut frame, &payload).expect("tcp frame");
        } else {
            ip.udp(sport, dport)
                .write(&mut frame, &payload)
                .expect("udp frame");
        }
        Generated { frame, whole: true }
    }

    /// An IPv4 TCP / UDP fragment to a VIP: first (transport header, more
    /// fragments) or a later one (offset > 0).
    fn fragment(&mut self, vlan: Option<u16>, payload: &[u8]) -> Generated {
        let vips = self.vips(false);
        let dst = self.rng.pick(&vips);
        let proto = self.rng.pick(&[6u8, 17]);
        let any = self.rng.port();
        let dport = self.rng.pick(&[80, 53, 22, 443, any]);
        let (src, sport) = self.fresh_client(dst, dport, proto);
        let first = self.rng.chance(50);
        let body = if first {
            // A whole segment's transport header and some data, cut to a
            // multiple of 8 after the header.
            let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
                unreachable!("IPv4 fragment")
            };
            let whole = if proto == 6 {
                frames::tcp4(s, sport, d, dport)
            } else {
                frames::udp4(s, sport, d, dport)
            };
            let mut l4 = whole[34..].to_vec();
            l4.extend_from_slice(payload);
            l4.truncate(24.max(l4.len() / 8 * 8));
            l4
        } else {
            let len = 8 * self.rng.range(1, 8);
            self.rng.bytes(len)
        };
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            unreachable!("IPv4 fragment")
        };
        let mut header =
            Ipv4Header::new(0, 64, IpNumber(proto), s.octets(), d.octets()).expect("ipv4 header");
        header.identification = self.rng.port();
        header.more_fragments = first || self.rng.chance(50);
        header.fragment_offset = IpFragOffset::try_new(if first {
            0
        } else {
            self.rng.range(1, 8000) as u16
        })
        .expect("offset");
        let ip = IpHeaders::Ipv4(header, etherparse::Ipv4Extensions::default());
        let step = match vlan {
            Some(id) => frames::eth().single_vlan(vlan_id(id)).ip(ip),
            None => frames::eth().ip(ip),
        };
        let mut frame = Vec::new();
        step.write(&mut frame, IpNumber(proto), &body)
            .expect("fragment");
        let view = ip_view(&frame).expect("a well-formed fragment");
        assert!(view.fragment, "the builder kept the fragment fields");
        Generated {
            frame,
            whole: false,
        }
    }
}

fn vlan_id(id: u16) -> VlanId {
    VlanId::try_new(id).expect("vlan id")
}

/// Ethernet (optionally tagged) and an IP header from `src` to `dst`.
fn ip_step(vlan: Option<u16>, src: IpAddr, dst: IpAddr, ttl: u8) -> PacketBuilderStep<IpHeaders> {
    let eth = frames::eth();
    match (vlan, src, dst) {
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        (Some(id), IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.single_vlan(vlan_id(id))
                .ipv4(s.octets(), d.octets(), ttl)
        }
        (Some(id), IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.single_vlan(vlan_id(id))
                .ipv6(s.octets(), d.octets(), ttl)
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
}

/// Mutates a copy of `valid` (whose IP packet is `view`) in one to three
/// ways; returns the frame and a short description.
fn mutate(rng: &mut Rng, valid: &[u8], view: &IpView, harness: &Harness) -> (Vec<u8>, String) {
    let mut frame = valid.to_vec();
    let mut description = String::new();
    for _ in 0..rng.range(1, 3) {
        let what = match rng.below(6) {
            0 => {
                for _ in 0..rng.range(1, 4) {
                    let at = rng.below(frame.len());
                    frame[at] ^= 1 << rng.below(8);
                }
                "flip".to_string()
            }
            1 => {
                for _ in 0..rng.range(1, 4) {
                    let at = rng.below(frame.len());
                    frame[at] = rng.byte();
                }
                "overwrite".to_string()
            }
            2 if frame.len() > 14 => {
                let len = rng.range(14, frame.len() - 1);
                frame.truncate(len);
                format!("truncate to {len}")
            }
            3 => {
                let len = rng.range(1, 40);
                let pad = rng.bytes(len);
                frame.extend_from_slice(&pad);
                format!("pad {}", pad.len())
            }
            _ => set_field(rng, &mut frame, view, harness),
        };
        let _ = write!(description, "{what}; ");
    }
    (frame, description)
}

/// A length field's new value, near `current` (the true length) or not.
fn length_value(rng: &mut Rng, current: usize) -> u16 {
    match rng.below(4) {
        0 => rng.port(),
        1 => rng.below(current + 1) as u16,
        2 => (current + rng.range(1, 16)) as u16,
        _ => current.saturating_sub(rng.range(1, 24)) as u16,
    }
}

/// A VIP or another address of the family asked for.
fn some_address(rng: &mut Rng, harness: &Harness, v6: bool) -> IpAddr {
    let addresses: Vec<IpAddr> = harness
        .config
        .services
        .iter()
        .map(|s| s.vip)
        .chain(non_vips(v6))
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    rng.pick(&addresses)
}

/// Sets one header field of `frame` (laid out as `view` says) to a value
/// chosen to hit the parser's decisions.
fn set_field(rng: &mut Rng, frame: &mut [u8], view: &IpView, harness: &Harness) -> String {
    let l3 = view.l3;
    let l4 = view.l3 + view.header_len;
    let v6 = view.src.is_ipv6();
    let mut put = |at: usize, bytes: &[u8]| {
        if at + bytes.len() <= frame.len() {
            frame[at..at + bytes.len()].copy_from_slice(bytes);
        }
    };
    match rng.below(11) {
        0 => {
            let mac = rng.pick(&[
                LB_MAC,
                [0xff; 6],
                [0x02, 0, 0, 0, 0, 0x99],
                [0x01, 0, 0x5e, 0, 0, 1],
            ]);
            put(0, &mac);
            "dst MAC".into()
        }
        1 => {
            let ether_type = rng.pick_or_any(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x9100]);
            put(l3 - 2, &ether_type.to_be_bytes());
            format!("EtherType {ether_type:#06x}")
        }
        2 => {
            let byte = rng.byte();
            put(l3, &[byte]);
            format!("IP byte 0 = {byte:#04x}")
        }
        3 => {
            let len = length_value(rng, view.ip_len - if v6 { 40 } else { 0 });
            put(l3 + if v6 { 4 } else { 2 }, &len.to_be_bytes());
            format!("IP length {len}")
        }
        4 => {
            let proto = rng.pick_or_any(&[6, 17, 1, 58, 0, 43, 44, 60, 51, 47, 4, 41]) as u8;
            put(l3 + if v6 { 6 } else { 9 }, &[proto]);
            format!("IP protocol {proto}")
        }
        5 if !v6 => {
            let frags = rng.pick_or_any(&[0x2000, 0x4000, 0x0001, 0x3fff]);
            put(l3 + 6, &frags.to_be_bytes());
            format!("IPv4 flags/offset {frags:#06x}")
        }
        6 => {
            let dst = some_address(rng, harness, v6);
            match dst {
                IpAddr::V4(a) => put(l3 + 16, &a.octets()),
                IpAddr::V6(a) => put(l3 + 24, &a.octets()),
            }
            format!("IP destination {dst}")
        }
        7 if view.proto == IpNumber::TCP => {
            let offset = rng.byte() & 0xf0;
            put(l4 + 12, &[offset]);
            format!("TCP data offset byte {offset:#04x}")
        }
        7 if view.proto == IpNumber::UDP => {
            let len = length_value(rng, view.ip_len - view.header_len);
            put(l4 + 4, &len.to_be_bytes());
            format!("UDP length {len}")
        }
        8 => {
            let port = rng.pick_or_any(&[80, 53, 443, 22, 0, 8080]);
            put(l4 + 2, &port.to_be_bytes());
            format!("destination port {port}")
        }
        9 if !v6 => {
            // Options: a longer IHL over the same bytes.
            let ihl = rng.range(5, 15) as u8;
            put(l3, &[0x40 | ihl]);
            format!("IHL {ihl}")
        }
        _ => {
            let port = rng.port();
            put(l4, &port.to_be_bytes());
            format!("source port {port}")
        }
    }
}

/// How one frame came out.
#[derive(Default)]
struct Tally {
    frames: usize,
    exact: usize,
    /// Frames the model did not predict, by reason and kernel verdict.
    unknown: BTreeMap<(&'static str, String), usize>,
    actions: BTreeMap<String, usize>,
    predictions: BTreeMap<String, usize>,
}

/// A mismatch between kernel and model.
struct Mismatch {
    category: String,
    detail: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn prediction_label(prediction: &Prediction) -> String {
    match prediction {
        Prediction::Pass => "pass".into(),
        Prediction::Drop => "drop".into(),
        Prediction::Forward { forwarding, .. } => {
            format!("forward ({forwarding:?})").to_lowercase()
        }
        Prediction::Reply { .. } => "reply".into(),
        Prediction::Unknown(_) => "unknown".into(),
    }
}

/// The `last` of `backend_mac(last)` for a backend: the test bed names
/// backends `192.0.2.{last}` and `2001:db8::{last}` with `last` written in
/// decimal, so `2001:db8::14` is host 14 (not 0x14).
fn backend_host(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => format!("{:x}", a.segments()[7])
            .parse()
            .expect("test bed IPv6 backends end in decimal digits"),
    }
}

/// Whether `addr` lies in `net`/`len`.
fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    let len = u32::from(len);
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            u32::from(a).checked_shr(32 - len).unwrap_or(0)
                == u32::from(n).checked_shr(32 - len).unwrap_or(0)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            u128::from(a).checked_shr(128 - len).unwrap_or(0)
                == u128::from(n).checked_shr(128 - len).unwrap_or(0)
        }
        _ => false,
    }
}

/// Valid IPv4 header checksum and TCP / UDP checksum of a whole packet.
fn checksums_ok(frame: &[u8], view: &IpView) -> Result<(), String> {
    let ip = &frame[view.l3..view.l3 + view.ip_len];
    let payload = view.payload(frame);
    let (src, dst) = (view.src, view.dst);
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
        let header = Ipv4HeaderSlice::from_slice(ip).map_err(|e| e.to_string())?;
        if header.to_header().calc_header_checksum() != header.header_checksum() {
            return Err("IPv4 header checksum".into());
        }
        match view.proto {
            IpNumber::TCP => {
                let tcp = TcpHeaderSlice::from_slice(payload).map_err(|e| e.to_string())?;
                let data = &payload[tcp.slice().len()..];
                let sum = tcp
                    .calc_checksum_ipv4_raw(s.octets(), d.octets(), data)
                    .map_err(|e| e.to_string())?;
                if sum != tcp.checksum() {
                    return Err("TCP checksum".into());
                }
            }
            IpNumber::UDP => {
                let udp = UdpHeaderSlice::from_slice(payload).map_err(|e| e.to_string())?;
                let sum = udp
                    .to_header()
                    .calc_checksum_ipv4_raw(s.octets(), d.octets(), &payload[8..])
                    .map_err(|e| e.to_string())?;
                if udp.checksum() != 0 && sum != udp.checksum() {
                    return Err("UDP checksum".into());
                }
            }
            _ => {}
        }
    } else if let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) {
        match view.proto {
            IpNumber::TCP => {
                let tcp = TcpHeaderSlice::from_slice(payload).map_err(|e| e.to_string())?;
                let data = &payload[tcp.slice().len()..];
                let sum = tcp
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), data)
                    .map_err(|e| e.to_string())?;
                if sum != tcp.checksum() {
                    return Err("TCP checksum".into());
                }
            }
            IpNumber::UDP => {
                let udp = UdpHeaderSlice::from_slice(payload).map_err(|e| e.to_string())?;
                let sum = udp
                    .to_header()
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), &payload[8..])
                    .map_err(|e| e.to_string())?;
                if sum != udp.checksum() {
                    return Err("UDP checksum".into());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks an encapsulated frame: outer header to `backend`, from the tunnel
/// prefix, around the unchanged inner packet.
fn check_tunnel(
    harness: &Harness,
    input: &[u8],
    output: &[u8],
    backend: IpAddr,
) -> Result<(), String> {
    let before = ip_view(input).ok_or("input not well formed")?;
    let after = ip_view(output).ok_or("output not well formed")?;
    if after.dst != backend {
        return Err(format!("tunnel to {}, not {backend}", after.dst));
    }
    let inner_proto = if backend.is_ipv4() {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    if after.proto != inner_proto {
        return Err(format!("outer protocol {:?}", after.proto));
    }
    let dataplane = &harness.config.dataplane;
    let (net, len) = match after.src {
        IpAddr::V4(_) => dataplane
            .tunnel_source_v4
            .map(|n| (IpAddr::V4(n.network()), n.prefix_len())),
        IpAddr::V6(_) => dataplane
            .tunnel_source_v6
            .map(|n| (IpAddr::V6(n.network()), n.prefix_len())),
    }
    .ok_or("no tunnel source configured")?;
    if !in_prefix(after.src, net, len) {
        return Err(format!("outer source {} outside the prefix", after.src));
    }
    let inner = &input[before.l3..before.l3 + before.ip_len];
    if after.payload(output) != inner {
        return Err("inner packet changed".into());
    }
    if after.dst.is_ipv4() {
        let header = Ipv4HeaderSlice::from_slice(&output[after.l3..]).map_err(|e| e.to_string())?;
        if header.to_header().calc_header_checksum() != header.header_checksum() {
            return Err("outer IPv4 header checksum".into());
        }
    }
    Ok(())
}

/// Checks the program's output for a frame the model says is forwarded or
/// replied to; `Err` says what differs.
fn check_output(
    harness: &Harness,
    input: &[u8],
    output: &[u8],
    prediction: &Prediction,
    whole: bool,
) -> Result<(), String> {
    let before = ip_view(input).ok_or("input not well formed")?;
    let after = ip_view(output).ok_or("output not well formed")?;
    let in_ports = before
        .first_fragment
        .then(|| ports(before.proto, before.payload(input)))
        .flatten();
    let out_ports = after
        .first_fragment
        .then(|| ports(after.proto, after.payload(output)))
        .flatten();
    if output[6..12] != EGRESS_MAC {
        return Err(format!("source MAC {}", hex(&output[6..12])));
    }
    match *prediction {
        Prediction::Forward {
            backend_addr,
            backend_port,
            forwarding,
        } => {
            let expected_mac = backend_mac(backend_host(backend_addr));
            if output[..6] != expected_mac {
                return Err(format!(
                    "destination MAC {} (backend {backend_addr} has {})",
                    hex(&output[..6]),
                    hex(&expected_mac)
                ));
            }
            match forwarding {
                Forwarding::Nat => {
                    if after.dst != backend_addr {
                        return Err(format!("NAT to {}, not {backend_addr}", after.dst));
                    }
                    if after.src != before.src {
                        return Err(format!("source changed to {}", after.src));
                    }
                    if let (Some((sport, dport)), Some(out)) = (in_ports, out_ports) {
                        let port = if backend_port == 0 {
                            dport
                        } else {
                            backend_port
                        };
                        if out != (sport, port) {
                            return Err(format!("ports {out:?}, not {:?}", (sport, port)));
                        }
                    }
                    if whole {
                        checksums_ok(output, &after)?;
                    }
                }
                Forwarding::Dsr => {
                    if output[12..] != input[12..] {
                        return Err("DSR changed more than the MACs".into());
                    }
                }
                Forwarding::Tunnel => {
                    check_tunnel(harness, input, output, backend_addr)?;
                }
            }
        }
        Prediction::Reply { vip, port } => {
            if output[..6] != ROUTER_MAC {
                return Err(format!("reply to MAC {}", hex(&output[..6])));
            }
            if after.src != vip || after.dst != before.dst {
                return Err(format!("reply {} -> {}", after.src, after.dst));
            }
            let (Some((sport, dport)), Some(out)) = (in_ports, out_ports) else {
                return Err("reply without ports".into());
            };
            let sport = if port == 0 { sport } else { port };
            if out != (sport, dport) {
                return Err(format!("reply ports {out:?}, not {:?}", (sport, dport)));
            }
            if whole {
                checksums_ok(output, &after)?;
            }
        }
        Prediction::Pass | Prediction::Drop | Prediction::Unknown(_) => {}
    }
    Ok(())
}

/// What is special about a frame the kernel and the model disagree on, as
/// far as two known causes go.
fn hint(frame: &[u8]) -> String {
    let mut hints = Vec::new();
    // Read by hand: the frame may be malformed past the addresses.
    let l3 = match frame.get(12..14) {
        Some([0x81, 0x00] | [0x88, 0xa8]) => 18,
        _ => 14,
    };
    let ipv6 = frame.get(l3 - 2..l3) == Some(&[0x86, 0xdd][..]);
    let mapped = |at: usize| {
        frame
            .get(l3 + at..l3 + at + 16)
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
            .is_some_and(|bytes| Ipv6Addr::from(bytes).to_ipv4_mapped().is_some())
    };
    if ipv6 && (mapped(8) || mapped(24)) {
        hints.push("IPv4-mapped IPv6 address");
    }
    if let Some(view) = ip_view(frame) {
        let l4 = view.l3 + view.header_len;
        if view.first_fragment
            && ports(view.proto, view.payload(frame)).is_none()
            && ports(view.proto, &frame[l4..]).is_some()
        {
            hints.push("transport header past the IP packet's end, inside the frame");
        }
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!(" [{}]", hints.join("; "))
    }
}

/// Runs `frame`, compares with the model, tallies.
fn run_one(
    harness: &Harness,
    model: &Model<'_>,
    frame: &[u8],
    whole: bool,
    tally: &mut Tally,
    mismatches: &mut Vec<Mismatch>,
    context: &str,
) {
    assert!(frame.len() >= 14, "test runs need an Ethernet header");
    let outcome = harness.run(frame);
    tally.frames += 1;
    *tally
        .actions
        .entry(format!("{:?}", outcome.action))
        .or_default() += 1;
    assert_ne!(
        outcome.action,
        Action::Aborted,
        "XDP_ABORTED for {context}: {}",
        hex(frame)
    );
    let prediction = model.predict(frame);
    *tally
        .predictions
        .entry(prediction_label(&prediction))
        .or_default() += 1;
    let expected = match prediction {
        Prediction::Unknown(why) => {
            *tally
                .unknown
                .entry((why, format!("{:?}", outcome.action)))
                .or_default() += 1;
            return;
        }
        Prediction::Pass => Action::Pass,
        Prediction::Drop => Action::Drop,
        Prediction::Forward { .. } | Prediction::Reply { .. } => Action::Redirect,
    };
    tally.exact += 1;
    let problem = if outcome.action != expected {
        Some(format!("{:?}", outcome.action))
    } else if expected == Action::Pass && outcome.frame != frame {
        Some("bytes changed".into())
    } else if expected == Action::Redirect {
        check_output(harness, frame, &outcome.frame, &prediction, whole).err()
    } else {
        None
    };
    if let Some(problem) = problem {
        mismatches.push(Mismatch {
            category: format!(
                "model {} / kernel {problem}{}",
                prediction_label(&prediction),
                hint(frame)
            ),
            detail: format!(
                "{context}\n      predicted {prediction:?}, kernel {:?}: {problem}\n      in  {}\n      out {}",
                outcome.action,
                hex(frame),
                hex(&outcome.frame)
            ),
        });
    }
}

fn print_tally(name: &str, tally: &Tally) {
    println!(
        "{name}: {} frames, {} checked exactly, {} only for not aborting",
        tally.frames,
        tally.exact,
        tally.frames - tally.exact
    );
    println!("  kernel verdicts: {:?}", tally.actions);
    println!("  model predictions: {:?}", tally.predictions);
    for ((why, action), count) in &tally.unknown {
        println!("  not predicted ({why}): {count}, kernel {action}");
    }
}

#[test]
fn kernel_agrees_with_the_reference_model_on_random_and_mutated_frames() {
    let started = Instant::now();
    // Round robin's position is per CPU: every run on this one.
    pin_to_this_cpu();
    let harness = Harness::new(CONFIG);
    let model = Model::of(&harness);
    let seed = std::env::var("LB_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("seed {seed} (set LB_MODEL_SEED to replay another)");
    let mut generator = Generator {
        rng: Rng(seed),
        harness: &harness,
        seen: HashSet::new(),
    };
    let mut mismatches = Vec::new();

    let mut valid = Tally::default();
    let mut corpus = Vec::with_capacity(VALID_FRAMES);
    for i in 0..VALID_FRAMES {
        let generated = generator.generate();
        run_one(
            &harness,
            &model,
            &generated.frame,
            generated.whole,
            &mut valid,
            &mut mismatches,
            &format!("valid frame {i}"),
        );
        corpus.push(generated.frame);
    }
    let round_robin_picks = model.round_robin_picks();
    // A mutated frame can reach round robin unpredicted (or as a flow the
    // connection table already holds), moving the kernel's position.
    model.stop_round_robin();

    let mut mutated = Tally::default();
    let mut rng = Rng(seed ^ 0x5a5a_5a5a_5a5a_5a5a);
    for i in 0..MUTATED_FRAMES {
        let original = &corpus[rng.below(corpus.len())];
        let view = ip_view(original).expect("generated frames are well formed");
        let (frame, how) = mutate(&mut rng, original, &view, &harness);
        run_one(
            &harness,
            &model,
            &frame,
            false,
            &mut mutated,
            &mut mismatches,
            &format!("mutated frame {i} ({how}) of {}", hex(original)),
        );
    }

    print_tally("well-formed", &valid);
    println!("  of which round robin's next pick: {round_robin_picks}");
    print_tally("mutated", &mutated);
    println!("runtime {:.2?}", started.elapsed());

    show(&mismatches);
    assert!(
        valid.frames + mutated.frames >= 100_000 && mutated.frames >= 50_000,
        "too few frames run"
    );
    assert!(
        valid.exact * 100 >= valid.frames * 99,
        "the model should predict nearly every well-formed frame"
    );
    assert!(
        round_robin_picks >= 1000,
        "round robin was predicted for {round_robin_picks} frames only"
    );
    assert!(
        mutated.exact * 100 >= mutated.frames * 60,
        "the model predicted too few mutated frames to mean much"
    );
    for action in ["Pass", "Drop", "Redirect"] {
        for (name, tally) in [("well-formed", &valid), ("mutated", &mutated)] {
            assert!(
                tally.actions.get(action).copied().unwrap_or(0) >= 200,
                "too few {action} verdicts among {name} frames: {:?}",
                tally.actions
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} frame(s) where kernel and model disagree (categories above)",
        mismatches.len()
    );
}

/// The mismatches by category, three examples each (all with
/// `LB_MODEL_VERBOSE` set).
fn show(mismatches: &[Mismatch]) {
    let mut by_category: BTreeMap<&str, Vec<&Mismatch>> = BTreeMap::new();
    for mismatch in mismatches {
        by_category
            .entry(&mismatch.category)
            .or_default()
            .push(mismatch);
    }
    // Three examples per category, or all with LB_MODEL_VERBOSE set.
    let shown = if std::env::var_os("LB_MODEL_VERBOSE").is_some() {
        usize::MAX
    } else {
        3
    };
    for (category, cases) in &by_category {
        println!("MISMATCH {category}: {} frame(s), e.g.", cases.len());
        for case in cases.iter().take(shown) {
            println!("    {}", case.detail);
        }
    }
}

/// Backends down, as health checks would have it: one of a maglev
/// service's, the whole primary tier of ip-hash `ssh4` and of maglev
/// `all6` (their standby tiers serve), one of each round robin (with
/// `rr6`'s, one of its equal-weight ties goes), and all of ip-hash
/// `tun4`'s (nothing to send to).
const DOWN: [(&str, &str); 9] = [
    ("web4", "192.0.2.12"),
    ("ssh4", "192.0.2.13"),
    ("ssh4", "192.0.2.14"),
    ("all6", "2001:db8::11"),
    ("all6", "2001:db8::22"),
    ("rr4", "192.0.2.12"),
    ("rr6", "2001:db8::14"),
    ("tun4", "192.0.2.21"),
    ("tun4", "192.0.2.22"),
];

/// Well-formed frames checked after the backends went down.
const DOWN_FRAMES: usize = 20_000;

#[test]
fn kernel_agrees_with_the_reference_model_with_backends_down() {
    pin_to_this_cpu();
    let mut harness = Harness::new(CONFIG);
    let down: Vec<Down> = DOWN
        .iter()
        .map(|(name, address)| {
            let address: IpAddr = address.parse().expect("address");
            let service = harness
                .config
                .services
                .iter()
                .find(|s| s.name == *name)
                .expect("a configured service");
            let backend = service
                .backends
                .iter()
                .find(|b| b.address == address)
                .expect("a configured backend");
            ((*name).to_owned(), address, backend.port_for(service))
        })
        .collect();
    let states: BTreeMap<BackendKey, BackendState> = down
        .iter()
        .map(|(service, address, port)| {
            (
                BackendKey {
                    service: service.clone(),
                    address: *address,
                    port: *port,
                },
                BackendState {
                    up: false,
                    weight: None,
                },
            )
        })
        .collect();
    harness.replan(&states);
    let model = Model::with_down(&harness.config, LB_MAC, &down);
    let seed = std::env::var("LB_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
        ^ 0xd0d0;
    let mut generator = Generator {
        rng: Rng(seed),
        harness: &harness,
        seen: HashSet::new(),
    };
    let mut tally = Tally::default();
    let mut mismatches = Vec::new();
    for i in 0..DOWN_FRAMES {
        let generated = generator.generate();
        run_one(
            &harness,
            &model,
            &generated.frame,
            generated.whole,
            &mut tally,
            &mut mismatches,
            &format!("frame {i} with backends down"),
        );
    }
    print_tally("well-formed, backends down", &tally);
    println!(
        "  of which round robin's next pick: {}",
        model.round_robin_picks()
    );
    show(&mismatches);
    assert_eq!(
        tally.exact, tally.frames,
        "every well-formed frame predicted"
    );
    assert!(
        model.round_robin_picks() >= 400,
        "too few round-robin picks"
    );
    assert!(
        tally.predictions.get("drop").copied().unwrap_or(0) >= 200,
        "too few frames to a service with no backend up: {:?}",
        tally.predictions
    );
    assert!(
        mismatches.is_empty(),
        "{} frame(s) where kernel and model disagree (categories above)",
        mismatches.len()
    );
}

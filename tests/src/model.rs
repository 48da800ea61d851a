//! A userspace reference model of `lb_balancer`: what the program should do
//! with one frame of a *fresh* flow (no connection-table entry), derived from
//! the configuration (and which backends are down) alone — never from the
//! program's code nor from the planner's tables.
//!
//! Frames are read with etherparse, an implementation of the wire formats
//! independent of the program's parser. The flow hash, the serving tier and
//! the Maglev table are computed here ([`crate::tables`]) from their
//! specifications, so a planner or hash that drifts from the contract shows
//! up as a disagreement; everything else (what is well formed, what is ours,
//! which service, which backend) is decided here from docs/DESIGN.md §2:
//!
//! - non-IP frames, unicast frames for another MAC and packets not addressed
//!   to a service pass untouched;
//! - a packet to a VIP that is malformed or truncated is dropped, whatever
//!   its port (the port may be what is cut off); one to any other address
//!   passes;
//! - TCP / UDP to a service goes to `table[hash % ring_size]` of the service
//!   (exact port first, then the all-port service); round robin to the next
//!   entry of the service's smooth sequence (one per new flow, on the one CPU
//!   the test runs on: [`Model::round_robin_pick`]);
//! - a backend that is down has no weight, and the serving tier is the
//!   lowest with `min_healthy` healthy weighted backends (else the lowest
//!   with any): [`Model::with_down`];
//! - fragments to a VIP go to the first `ip-hash` service of their protocol
//!   on it, by source hash; without one they are dropped;
//! - a well-formed TCP / UDP packet from a NAT backend's (address, port,
//!   protocol) to a client gets the VIP and service port as its source;
//!   from a backend of an all-port service, a UDP datagram or a bare TCP
//!   SYN in no flow lb forwarded is the backend's own traffic and passes.
//!
//! "Well formed" is judged within the lengths the headers declare: a
//! transport header must lie inside the IP packet (IPv4 total length, IPv6
//! payload length), not merely inside the frame (Ethernet padding is not part
//! of the packet), and a UDP length field must be at least 8 and inside the
//! IP payload. Addresses compare within their family: an IPv6 packet to or
//! from `::ffff:a.b.c.d` is not to or from the IPv4 host `a.b.c.d`.
//! Group-addressed frames are never balanced.
//!
//! Where the outcome depends on things the model does not cover, or the
//! design leaves open, the answer is [`Prediction::Unknown`] with the reason:
//! ICMP to a VIP, IPv6 extension headers, round robin once the kernel's
//! position can no longer be followed ([`Model::stop_round_robin`]), replies
//! to addresses outside the test bed's client prefixes, fragments from NAT
//! backends, and frames too short to read the destination address.

use std::{
    cell::{Cell, RefCell},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice,
    SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use lb::config::{Config, Forwarding, Scheduler, Service};

use crate::{
    tables::{self, MaglevBackend},
    testrun::{Harness, LB_MAC},
};

/// The IPv4 clients of the test bed (routed via its router).
pub const CLIENT_NET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);
/// The IPv6 clients of the test bed (routed via its router).
pub const CLIENT_NET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 64);

/// What the program should do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// `XDP_PASS`, the frame untouched.
    Pass,
    /// `XDP_DROP`.
    Drop,
    /// Sent to a backend of a service.
    Forward {
        /// The backend.
        backend_addr: IpAddr,
        /// The backend's port (NAT rewrites the destination port to it);
        /// 0 keeps the client's destination port.
        backend_port: u16,
        /// How the service forwards.
        forwarding: Forwarding,
    },
    /// A reply from a NAT backend, sent to the client with the service as
    /// its source.
    Reply {
        /// The source address restored.
        vip: IpAddr,
        /// The source port restored; 0 keeps the backend's port.
        port: u16,
    },
    /// Outside what the model covers; why.
    Unknown(&'static str),
}

/// Where the IP packet of a frame is, and the fields the decision reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpView {
    /// Offset of the IP header in the frame (14, or 18 behind a VLAN tag).
    pub l3: usize,
    /// Length of the IP header (IPv4 IHL, 40 for IPv6).
    pub header_len: usize,
    /// Length of the IP packet as its header declares it.
    pub ip_len: usize,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol (IPv4) / next header (IPv6).
    pub proto: IpNumber,
    /// IPv4: more-fragments flag or non-zero offset.
    pub fragment: bool,
    /// IPv4: fragment offset zero (the fragment carries the transport header).
    pub first_fragment: bool,
}

impl IpView {
    /// The transport bytes: from the end of the IP header to the end of the
    /// IP packet.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.l3 + self.header_len..self.l3 + self.ip_len]
    }
}

/// The link layer: destination MAC, `EtherType` after at most one VLAN tag,
/// where the network header starts.
#[derive(Clone, Copy, Debug)]
struct Link {
    dst_mac: [u8; 6],
    ether_type: EtherType,
    l3: usize,
}

/// Ethernet plus one optional 802.1Q / 802.1ad tag; `None` when the tag is
/// cut short.
fn link(frame: &[u8]) -> Option<Link> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    let mut link = Link {
        dst_mac: eth.destination(),
        ether_type: eth.ether_type(),
        l3: eth.slice().len(),
    };
    if link.ether_type == EtherType::VLAN_TAGGED_FRAME
        || link.ether_type == EtherType::PROVIDER_BRIDGING
    {
        let tag = SingleVlanHeaderSlice::from_slice(&frame[link.l3..]).ok()?;
        link.ether_type = tag.ether_type();
        link.l3 += tag.slice().len();
    }
    Some(link)
}

/// What reading the IP header gave.
enum Ip {
    /// Not even the fixed header is there: the destination is unknown.
    Short,
    /// The destination could be read, the packet is malformed.
    Malformed(IpAddr),
    /// A well-formed IP packet (by its own declared lengths).
    Ok(IpView),
}

/// The IPv4 packet at `l3`: header (version, IHL ≥ 5) by etherparse, total
/// length covering the header and inside the frame.
fn ipv4(frame: &[u8], l3: usize) -> Ip {
    let bytes = &frame[l3..];
    // RFC 791: the destination address is bytes 16..20 of the fixed header.
    let Some(dst) = bytes.get(16..20) else {
        return Ip::Short;
    };
    let dst = IpAddr::from(<[u8; 4]>::try_from(dst).expect("four bytes"));
    let Ok(header) = Ipv4HeaderSlice::from_slice(bytes) else {
        return Ip::Malformed(dst);
    };
    let header_len = header.slice().len();
    let ip_len = usize::from(header.total_len());
    if ip_len < header_len || ip_len > bytes.len() {
        return Ip::Malformed(dst);
    }
    let offset = header.fragments_offset().value();
    Ip::Ok(IpView {
        l3,
        header_len,
        ip_len,
        src: header.source_addr().into(),
        dst,
        proto: header.protocol(),
        fragment: header.more_fragments() || offset != 0,
        first_fragment: offset == 0,
    })
}

/// The IPv6 packet at `l3`: header (version) by etherparse, payload length
/// inside the frame. A payload length of 0 is an empty payload (a jumbogram
/// would need a hop-by-hop option and more than 64 KiB).
fn ipv6(frame: &[u8], l3: usize) -> Ip {
    let bytes = &frame[l3..];
    // RFC 8200: the destination address is bytes 24..40 of the header.
    let Some(dst) = bytes.get(24..40) else {
        return Ip::Short;
    };
    let dst = IpAddr::from(<[u8; 16]>::try_from(dst).expect("sixteen bytes"));
    let Ok(header) = Ipv6HeaderSlice::from_slice(bytes) else {
        return Ip::Malformed(dst);
    };
    let header_len = header.slice().len();
    let ip_len = header_len + usize::from(header.payload_length());
    if ip_len > bytes.len() {
        return Ip::Malformed(dst);
    }
    Ip::Ok(IpView {
        l3,
        header_len,
        ip_len,
        src: header.source_addr().into(),
        dst,
        proto: header.next_header(),
        fragment: false,
        first_fragment: true,
    })
}

/// The IP packet of a well-formed frame (as the model judges it), for
/// reading the program's output; `None` for anything else.
pub fn ip_view(frame: &[u8]) -> Option<IpView> {
    let link = link(frame)?;
    let ip = match link.ether_type {
        EtherType::IPV4 => ipv4(frame, link.l3),
        EtherType::IPV6 => ipv6(frame, link.l3),
        _ => return None,
    };
    match ip {
        Ip::Ok(view) => Some(view),
        Ip::Short | Ip::Malformed(_) => None,
    }
}

/// The (source port, destination port) of a TCP / UDP header at the start of
/// `payload`.
pub fn ports(proto: IpNumber, payload: &[u8]) -> Option<(u16, u16)> {
    match proto {
        IpNumber::TCP => TcpHeaderSlice::from_slice(payload)
            .ok()
            .map(|tcp| (tcp.source_port(), tcp.destination_port())),
        IpNumber::UDP => UdpHeaderSlice::from_slice(payload)
            .ok()
            .map(|udp| (udp.source_port(), udp.destination_port())),
        _ => None,
    }
}

/// IPv6 extension headers the program steps over (hop-by-hop, routing,
/// fragment, destination options): not modelled.
const IPV6_EXTENSIONS: [IpNumber; 4] = [
    IpNumber::IPV6_HEADER_HOP_BY_HOP,
    IpNumber::IPV6_ROUTE_HEADER,
    IpNumber::IPV6_FRAGMENTATION_HEADER,
    IpNumber::IPV6_DESTINATION_OPTIONS,
];

/// What the transport header said.
enum Transport {
    /// TCP / UDP with its ports.
    Ports(u16, u16),
    /// No transport header to read: a non-first fragment, or a protocol
    /// other than TCP / UDP / ICMP.
    None,
    /// TCP / UDP header missing or cut short inside the IP packet.
    Malformed,
    /// Not modelled.
    Unknown(&'static str),
}

/// A backend that is down: (service name, address, port as
/// `Backend::port_for` gives it).
pub type Down = (String, IpAddr, u16);

/// A round-robin service's sequence (backend indices) and the position of
/// the next new flow.
#[derive(Debug)]
struct RoundRobin {
    /// `None`: the cycle is longer than the ring (not modelled).
    sequence: Option<Vec<usize>>,
    position: usize,
    /// New flows predicted by it so far.
    picks: usize,
}

/// The reference model for one configuration and set of backends down.
#[derive(Debug)]
pub struct Model<'a> {
    config: &'a Config,
    own_mac: [u8; 6],
    /// Per service (in configuration order), the model's own Maglev table
    /// of backend indices; empty for round robin.
    tables: Vec<Vec<Option<usize>>>,
    /// Per service, its round robin (`None` for other schedulers).
    round_robin: RefCell<Vec<Option<RoundRobin>>>,
    /// [`Model::stop_round_robin`] was called.
    round_robin_stopped: Cell<bool>,
}

impl<'a> Model<'a> {
    /// A model of the program as it runs `config` with every backend up,
    /// on an interface whose MAC is `own_mac`.
    pub fn new(config: &'a Config, own_mac: [u8; 6]) -> Self {
        Self::with_down(config, own_mac, &[])
    }

    /// As [`Model::new`], with the backends in `down` down (their health
    /// checks failed).
    pub fn with_down(config: &'a Config, own_mac: [u8; 6], down: &[Down]) -> Self {
        let ring_size = config.dataplane.ring_size as usize;
        let up = |service: &Service| -> Vec<bool> {
            service
                .backends
                .iter()
                .map(|b| {
                    !down.iter().any(|(name, address, port)| {
                        *name == service.name
                            && *address == b.address
                            && *port == b.port_for(service)
                    })
                })
                .collect()
        };
        let tables = config
            .services
            .iter()
            .map(|service| {
                if service.scheduler == Scheduler::RoundRobin {
                    return Vec::new();
                }
                let backends: Vec<MaglevBackend> = service
                    .backends
                    .iter()
                    .zip(serving_weights(service, &up(service)))
                    .enumerate()
                    .map(|(index, (backend, weight))| MaglevBackend {
                        index,
                        identity: format!("{}:{}", backend.address, backend.port_for(service)),
                        weight,
                    })
                    .collect();
                tables::maglev(&backends, ring_size)
            })
            .collect();
        let round_robin = config
            .services
            .iter()
            .map(|service| {
                (service.scheduler == Scheduler::RoundRobin).then(|| RoundRobin {
                    sequence: tables::smooth_round_robin(
                        &serving_weights(service, &up(service)),
                        ring_size,
                    ),
                    position: 0,
                    picks: 0,
                })
            })
            .collect();
        Self {
            config,
            own_mac,
            tables,
            round_robin: RefCell::new(round_robin),
            round_robin_stopped: Cell::new(false),
        }
    }

    /// From now on round robin is not predicted: the frames to come may move
    /// the kernel's position in ways the model does not follow (a frame it
    /// cannot predict, a flow that already has a connection-table entry).
    pub fn stop_round_robin(&self) {
        self.round_robin_stopped.set(true);
    }

    /// How many new flows round robin was predicted for (until
    /// [`Model::stop_round_robin`]), all services together.
    pub fn round_robin_picks(&self) -> usize {
        self.round_robin
            .borrow()
            .iter()
            .flatten()
            .map(|state| state.picks)
            .sum()
    }

    /// The next pick of round-robin service `position` (in configuration
    /// order) for a new flow: the entry of its sequence at the service's
    /// position, which then moves on (the kernel's `RR_POS`, on the one CPU
    /// the test runs on). No weighted backend: dropped, the position kept.
    fn round_robin_pick(&self, position: usize, service: &Service) -> Prediction {
        let mut round_robin = self.round_robin.borrow_mut();
        let Some(Some(state)) = round_robin.get_mut(position) else {
            return Prediction::Unknown("round robin");
        };
        if self.round_robin_stopped.get() {
            return Prediction::Unknown("round robin after frames the model does not follow");
        }
        let Some(sequence) = &state.sequence else {
            return Prediction::Unknown("round robin cycle longer than the ring");
        };
        if sequence.is_empty() {
            return Prediction::Drop;
        }
        let index = sequence[state.position % sequence.len()];
        state.position = (state.position % sequence.len()) + 1;
        state.picks += 1;
        let backend = &service.backends[index];
        Prediction::Forward {
            backend_addr: backend.address,
            backend_port: backend.port_for(service),
            forwarding: service.forwarding,
        }
    }

    /// The model of a harness's balancer.
    pub fn of(harness: &'a Harness) -> Self {
        Self::new(&harness.config, LB_MAC)
    }

    /// What the program should do with `frame`, for a flow it has not seen.
    pub fn predict(&self, frame: &[u8]) -> Prediction {
        let Some(link) = link(frame) else {
            return Prediction::Unknown("VLAN tag cut short");
        };
        if link.ether_type != EtherType::IPV4 && link.ether_type != EtherType::IPV6 {
            return Prediction::Pass;
        }
        if link.dst_mac[0] & 1 == 1 {
            // Group-addressed frames are never balanced (as a router and
            // IPVS ignore unicast IP in them): to the stack, untouched.
            return Prediction::Pass;
        }
        if link.dst_mac != self.own_mac {
            return Prediction::Pass;
        }
        let ip = if link.ether_type == EtherType::IPV4 {
            ipv4(frame, link.l3)
        } else {
            ipv6(frame, link.l3)
        };
        let view = match ip {
            Ip::Short => return Prediction::Unknown("IP header cut short"),
            Ip::Malformed(dst) if self.is_vip(dst) => return Prediction::Drop,
            Ip::Malformed(_) => return Prediction::Pass,
            Ip::Ok(view) => view,
        };
        let vip = self.is_vip(view.dst);
        // An IPv4-mapped or multicast source is never valid on the wire (nor
        // an IPv4 source from 224.0.0.0 up): refused if it is for a VIP, the
        // stack's business otherwise.
        let bogus_source = match view.src {
            IpAddr::V6(src) => src.to_ipv4_mapped().is_some() || src.is_multicast(),
            IpAddr::V4(src) => src.octets()[0] >= 224,
        };
        if bogus_source {
            return if vip {
                Prediction::Drop
            } else {
                Prediction::Pass
            };
        }
        let transport = Self::transport(&view, frame, vip);
        if vip {
            self.to_vip(&view, &transport)
        } else {
            let bare_syn = view.proto == IpNumber::TCP
                && TcpHeaderSlice::from_slice(view.payload(frame))
                    .is_ok_and(|tcp| tcp.syn() && !tcp.ack());
            self.to_host(&view, &transport, bare_syn)
        }
    }

    /// Reads the transport header of a well-formed IP packet.
    fn transport(view: &IpView, frame: &[u8], vip: bool) -> Transport {
        let payload = view.payload(frame);
        if !view.first_fragment {
            return Transport::None;
        }
        match view.proto {
            IpNumber::TCP | IpNumber::UDP => {
                let Some((sport, dport)) = ports(view.proto, payload) else {
                    return Transport::Malformed;
                };
                if view.proto == IpNumber::UDP && !view.fragment {
                    // RFC 768 length field below 8 or beyond the IP payload:
                    // lb takes the header for malformed (dropped to a VIP,
                    // passed otherwise). A fragment's covers the datagram.
                    let length = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
                    if length < 8 || length > payload.len() {
                        return Transport::Malformed;
                    }
                }
                Transport::Ports(sport, dport)
            }
            proto if IPV6_EXTENSIONS.contains(&proto) && view.src.is_ipv6() => {
                Transport::Unknown("IPv6 extension headers")
            }
            IpNumber::ICMP | IpNumber::IPV6_ICMP if vip => Transport::Unknown("ICMP to a VIP"),
            _ => Transport::None,
        }
    }

    /// A well-formed IP packet to a VIP.
    fn to_vip(&self, view: &IpView, transport: &Transport) -> Prediction {
        let (sport, dport) = match *transport {
            Transport::Unknown(why) => return Prediction::Unknown(why),
            Transport::Malformed => return Prediction::Drop,
            Transport::Ports(sport, dport) => (sport, dport),
            Transport::None => (0, 0),
        };
        let proto = view.proto.0;
        if view.fragment {
            // Fragments carry no ports past the first: they can only be sent
            // consistently by source address.
            let service = self.config.services.iter().find(|service| {
                service.vip == view.dst
                    && service.protocol.number() == proto
                    && service.scheduler == Scheduler::IpHash
            });
            return match service {
                Some(service) => self.schedule(service, view, sport, dport),
                None => Prediction::Drop,
            };
        }
        if !matches!(transport, Transport::Ports(..)) {
            return Prediction::Pass;
        }
        match self.service(view.dst, dport, proto) {
            Some(service) => self.schedule(service, view, sport, dport),
            None => Prediction::Pass,
        }
    }

    /// A well-formed IP packet to another address: the reply path or the
    /// stack.
    fn to_host(&self, view: &IpView, transport: &Transport, bare_syn: bool) -> Prediction {
        if view.fragment && self.is_nat_address(view.src) {
            // Whether fragments of replies get the VIP is not specified.
            return Prediction::Unknown("fragment from a NAT backend");
        }
        let Some(from) = self.nat_backend(view.src, view.proto.0, transport) else {
            return match transport {
                Transport::Unknown(why) if self.is_nat_address(view.src) => {
                    Prediction::Unknown(why)
                }
                _ => Prediction::Pass,
            };
        };
        if from.port == 0 && (view.proto == IpNumber::UDP || bare_syn) {
            // An all-port backend's packet in no flow lb forwarded (a fresh
            // flow has no connection-table entry): a datagram or a
            // connection of the backend's own, which keeps its source
            // (docs/DESIGN.md §2.2, the reply path).
            return Prediction::Pass;
        }
        if !in_client_net(view.dst) {
            // Where it goes is up to the routing table.
            return Prediction::Unknown("reply to an address outside the client prefixes");
        }
        Prediction::Reply {
            vip: from.vip,
            port: from.port,
        }
    }

    /// The service of a NAT backend's (address, port, protocol), exact port
    /// first, then an all-port service's backend.
    fn nat_backend(&self, src: IpAddr, proto: u8, transport: &Transport) -> Option<&'a Service> {
        let Transport::Ports(sport, _) = *transport else {
            return None;
        };
        let find = |port: u16| {
            self.config.services.iter().find(|service| {
                service.forwarding == Forwarding::Nat
                    && service.protocol.number() == proto
                    && service
                        .backends
                        .iter()
                        .any(|b| b.address == src && b.port_for(service) == port)
            })
        };
        find(sport).or_else(|| find(0))
    }

    /// Whether `addr` is the address of any NAT backend.
    fn is_nat_address(&self, addr: IpAddr) -> bool {
        self.config.services.iter().any(|service| {
            service.forwarding == Forwarding::Nat
                && service.backends.iter().any(|b| b.address == addr)
        })
    }

    /// Whether `addr` carries a service.
    fn is_vip(&self, addr: IpAddr) -> bool {
        self.config
            .services
            .iter()
            .any(|service| service.vip == addr)
    }

    /// The service for (vip, port, proto): exact port, else all-port.
    fn service(&self, vip: IpAddr, port: u16, proto: u8) -> Option<&'a Service> {
        let find = |port: u16| {
            self.config.services.iter().find(|service| {
                service.vip == vip && service.port == port && service.protocol.number() == proto
            })
        };
        find(port).or_else(|| find(0))
    }

    /// The backend `service`'s scheduler picks for a new flow.
    fn schedule(&self, service: &Service, view: &IpView, sport: u16, dport: u16) -> Prediction {
        let position = self
            .config
            .services
            .iter()
            .position(|s| std::ptr::eq(s, service))
            .expect("services come from the model's configuration");
        let hash = match service.scheduler {
            Scheduler::Maglev | Scheduler::LeastConn | Scheduler::Resource => {
                tables::flow_hash(view.src, view.dst, sport, dport, view.proto.0)
            }
            Scheduler::IpHash => tables::source_hash(view.src),
            Scheduler::RoundRobin => return self.round_robin_pick(position, service),
        };
        let table = &self.tables[position];
        let Some(index) = table[hash as usize % table.len()] else {
            return Prediction::Drop;
        };
        let backend = &service.backends[index];
        Prediction::Forward {
            backend_addr: backend.address,
            backend_port: backend.port_for(service),
            forwarding: service.forwarding,
        }
    }
}

/// Each backend's weight in the table, `up[i]` saying whether backend `i`
/// is up: its configured weight if it is up and in the serving tier, else
/// 0. The serving tier is the lowest with at least `min_healthy` healthy
/// weighted backends, else the lowest with any (docs/DESIGN.md §5, `tier` and
/// `min_healthy`).
fn serving_weights(service: &Service, up: &[bool]) -> Vec<u32> {
    let mut weighted_per_tier = std::collections::BTreeMap::<u8, u32>::new();
    for (backend, _) in service
        .backends
        .iter()
        .zip(up)
        .filter(|(b, up)| b.weight > 0 && **up)
    {
        *weighted_per_tier.entry(backend.tier).or_default() += 1;
    }
    let serving = weighted_per_tier
        .iter()
        .find(|&(_, &count)| count >= service.min_healthy)
        .or_else(|| weighted_per_tier.iter().next())
        .map(|(&tier, _)| tier);
    service
        .backends
        .iter()
        .zip(up)
        .map(|(b, up)| {
            if *up && Some(b.tier) == serving {
                b.weight
            } else {
                0
            }
        })
        .collect()
}

/// Whether `addr` is in the test bed's client prefixes.
pub fn in_client_net(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let (net, len) = CLIENT_NET_V4;
            u32::from(v4) >> (32 - len) == u32::from(net) >> (32 - len)
        }
        IpAddr::V6(v6) => {
            let (net, len) = CLIENT_NET_V6;
            u128::from(v6) >> (128 - len) == u128::from(net) >> (128 - len)
        }
    }
}

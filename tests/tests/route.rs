//! `lb route` against the data plane: for 12,000 random flows (maglev,
//! ip-hash and round-robin services, exact and all-port, IPv4 and IPv6,
//! backends going down and drained between rounds, a deny list, flows
//! repeated, closed and reopened), the decision `lb route` computes from the
//! maps (`lb::route::decide` over `MapTables`, before the packet) must be
//! what the real program then does in `BPF_PROG_TEST_RUN`: the same verdict
//! counter, and the same backend — the one the connection table holds after
//! the run and the one whose MAC the forwarded frame carries.
//!
//! Round robin depends on the CPU's position: the test pins itself to one
//! CPU and asks about that CPU's next pick. `LB_ROUTE_SEED` replays a run.
#![allow(
    clippy::cast_possible_truncation,
    reason = "random numbers are drawn as u64 and narrowed to the field they fill"
)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::PacketBuilder;
use lb::{
    plan::{BackendKey, BackendState},
    route::{Query, Source, Tables as _, decide, maps::MapTables},
};
use lb_common::{ConnValue, FlowKey, Reason, proto};
use lb_tests::testrun::{Action, CLIENT_MAC, Harness, LB_MAC, backend_mac, pin_to_this_cpu};

/// Flows checked.
const FLOWS: usize = 12_000;
/// Flows between changes of backend states.
const ROUND: usize = 1_500;
const DEFAULT_SEED: u64 = 0x726f_7574_6521;

const CONFIG: &str = "\
instance: route
interfaces: [{ name: lb0 }]
guard:
  deny: [198.51.100.240/28]
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
  - name: rr4
    vip: 203.0.113.20
    port: 80
    protocol: tcp
    scheduler: round-robin
    forwarding: dsr
    backends:
      - { address: 192.0.2.12, weight: 3 }
      - { address: 192.0.2.13, weight: 1 }
      - { address: 192.0.2.21, weight: 2 }
  - name: all4
    vip: 203.0.113.20
    port: 0
    protocol: tcp
    scheduler: maglev
    forwarding: tunnel
    backends:
      - { address: 192.0.2.21 }
      - { address: 192.0.2.22, weight: 50 }
      - { address: 192.0.2.14, tier: 1 }
  - name: few4
    vip: 203.0.113.30
    port: 80
    protocol: tcp
    scheduler: maglev
    forwarding: nat
    backends:
      - { address: 192.0.2.11, port: 80 }
      - { address: 192.0.2.12, port: 80 }
  - name: web6
    vip: '2001:db8:f::10'
    port: 80
    protocol: tcp
    scheduler: maglev
    forwarding: nat
    backends:
      - { address: '2001:db8::11', port: 8080 }
      - { address: '2001:db8::12', port: 8080, weight: 200 }
  - name: udp6-all
    vip: '2001:db8:f::30'
    port: 0
    protocol: udp
    scheduler: ip-hash
    forwarding: dsr
    backends:
      - { address: '2001:db8::13' }
      - { address: '2001:db8::14', weight: 40 }
  - name: rr6
    vip: '2001:db8:f::30'
    port: 443
    protocol: udp
    scheduler: round-robin
    forwarding: nat
    backends:
      - { address: '2001:db8::21', port: 4433 }
      - { address: '2001:db8::22', port: 4433, weight: 2 }
dataplane:
  ring_size: 1009
  max_services: 16
  max_backends: 64
  connection_table_size: 65536
  tunnel_source_v4: 192.0.2.64/28
";

/// (vip, port (0: any but the exact ones), UDP).
const TARGETS: &[(&str, u16, bool)] = &[
    ("203.0.113.10", 80, false),
    ("203.0.113.10", 53, true),
    ("203.0.113.20", 80, false),
    ("203.0.113.20", 0, false),
    ("203.0.113.30", 80, false),
    ("2001:db8:f::10", 80, false),
    ("2001:db8:f::30", 0, true),
    ("2001:db8:f::30", 443, true),
];

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One flow and the kind of packet sent on it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    sport: u16,
    vip: IpAddr,
    dport: u16,
    udp: bool,
}

/// TCP flags of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tcp {
    Syn,
    Ack,
    Fin,
}

fn frame(flow: &Flow, tcp: Tcp) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (flow.client, flow.vip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family per flow"),
    };
    let mut out = Vec::new();
    if flow.udp {
        ip.udp(flow.sport, flow.dport)
            .write(&mut out, b"route")
            .expect("frame");
    } else {
        let tcp_builder = ip.tcp(flow.sport, flow.dport, 1000, 64240);
        let tcp_builder = match tcp {
            Tcp::Syn => tcp_builder.syn(),
            Tcp::Ack => tcp_builder.ack(1),
            Tcp::Fin => tcp_builder.ack(1).fin(),
        };
        tcp_builder.write(&mut out, b"route").expect("frame");
    }
    out
}

fn random_flow(rng: &mut Rng) -> Flow {
    let (vip, port, udp) = TARGETS[rng.below(TARGETS.len() as u64) as usize];
    let vip: IpAddr = vip.parse().expect("vip");
    let client = match vip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.below(256) as u8)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            rng.below(4) as u16,
            rng.below(65536) as u16,
        )),
    };
    let dport = if port == 0 {
        // Any port but the exact services beside the all-port one.
        loop {
            let p = 1 + rng.below(65535) as u16;
            if p != 80 && p != 443 {
                break p;
            }
        }
    } else {
        port
    };
    Flow {
        client,
        sport: 1024 + rng.below(64511) as u16,
        vip,
        dport,
        udp,
    }
}

/// The backend host number whose MAC the test bed gives an address
/// (`192.0.2.<n>`, `2001:db8::<n>` with n written in decimal).
fn host_of(addr: IpAddr) -> u8 {
    let text = addr.to_string();
    text.rsplit(['.', ':'])
        .next()
        .and_then(|last| last.parse().ok())
        .expect("a test-bed backend address")
}

/// Backend states for round `round`: some backends down, some drained.
fn states(round: usize) -> BTreeMap<BackendKey, BackendState> {
    let key = |service: &str, address: &str, port: u16| BackendKey {
        service: service.into(),
        address: address.parse().expect("address"),
        port,
    };
    let mut states = BTreeMap::new();
    let down = BackendState {
        up: false,
        weight: None,
    };
    let drained = BackendState {
        up: true,
        weight: Some(0),
    };
    match round % 4 {
        1 => {
            states.insert(key("web4", "192.0.2.12", 8080), down);
            states.insert(key("rr4", "192.0.2.12", 80), drained);
            states.insert(key("all4", "192.0.2.21", 0), down);
            states.insert(key("all4", "192.0.2.22", 0), down);
        }
        2 => {
            states.insert(key("few4", "192.0.2.11", 80), drained);
            states.insert(key("few4", "192.0.2.12", 80), down);
            states.insert(key("dns4", "192.0.2.14", 53), drained);
            states.insert(key("web6", "2001:db8::12", 8080), down);
            states.insert(key("rr6", "2001:db8::22", 4433), drained);
        }
        3 => {
            states.insert(key("web4", "192.0.2.11", 8080), drained);
            states.insert(key("udp6-all", "2001:db8::14", 0), down);
        }
        _ => {}
    }
    states
}

/// The kernel's connection-table entry for `flow`.
fn conn(harness: &Harness, flow: &FlowKey) -> Option<ConnValue> {
    MapTables::new(&harness.dataplane)
        .conn(flow)
        .expect("read the connection table")
}

#[test]
fn route_names_the_backend_the_data_plane_uses() {
    let seed = std::env::var("LB_ROUTE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut harness = Harness::new(CONFIG);
    let cpu = pin_to_this_cpu();
    let mut rng = Rng(seed);
    let mut flows: Vec<Flow> = Vec::new();
    let mut by_source: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_verdict: BTreeMap<Reason, usize> = BTreeMap::new();
    for i in 0..FLOWS {
        if i % ROUND == 0 {
            harness.replan(&states(i / ROUND));
        }
        let flow = if !flows.is_empty() && rng.chance(40) {
            flows[rng.below(flows.len() as u64) as usize]
        } else {
            let flow = random_flow(&mut rng);
            flows.push(flow);
            flow
        };
        let tcp = match rng.below(10) {
            0..=3 => Tcp::Syn,
            4 => Tcp::Fin,
            _ => Tcp::Ack,
        };
        let query = Query {
            client: flow.client,
            client_port: Some(flow.sport),
            vip: flow.vip,
            port: flow.dport,
            proto: if flow.udp { proto::UDP } else { proto::TCP },
            syn: !flow.udp && tcp == Tcp::Syn,
            cpu: Some(cpu),
        };
        let decision = decide(&query, &MapTables::new(&harness.dataplane)).expect("read the maps");
        let bytes = frame(&flow, tcp);
        let (outcome, moved) = harness.run_counted(&bytes);
        let context = || format!("flow {i} (seed {seed:#x}): {flow:?} {tcp:?}\n{decision:#?}");
        let verdict = decision
            .verdict
            .unwrap_or_else(|| panic!("no verdict for a full query; {}", context()));
        assert_eq!(
            moved,
            BTreeMap::from([(verdict, 1)]),
            "verdict counters; {}",
            context()
        );
        *by_verdict.entry(verdict).or_default() += 1;
        match decision.backend {
            Some((id, backend, source)) => {
                assert_eq!(outcome.action, Action::Redirect, "forwarded; {}", context());
                let kept = conn(&harness, &decision.flow)
                    .unwrap_or_else(|| panic!("no CONNS entry after the run; {}", context()));
                assert_eq!(kept.backend_id, id, "the kernel's backend; {}", context());
                let host = host_of(lb::plan::unmap_addr(backend.addr));
                assert_eq!(
                    outcome.frame[..6],
                    backend_mac(host),
                    "the frame went to another backend; {}",
                    context()
                );
                *by_source
                    .entry(match source {
                        Source::Connection => "connection",
                        Source::Scheduler => "scheduler",
                        Source::NextPick => "next pick",
                    })
                    .or_default() += 1;
            }
            None => assert_eq!(outcome.action, Action::Drop, "dropped; {}", context()),
        }
    }
    println!("backends by source: {by_source:?}\nverdicts: {by_verdict:?}");
    for source in ["connection", "scheduler", "next pick"] {
        assert!(
            by_source.get(source).is_some_and(|n| *n > 200),
            "too few flows decided by {source}: {by_source:?}"
        );
    }
    for reason in [Reason::DropDenied, Reason::DropNoBackend] {
        assert!(
            by_verdict.get(&reason).is_some_and(|n| *n > 20),
            "too few {reason:?}: {by_verdict:?}"
        );
    }
}

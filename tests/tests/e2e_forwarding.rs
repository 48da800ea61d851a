//! Real traffic through `lb run` in network namespaces: for each forwarding
//! mode and both families, thousands of TCP connections and UDP requests
//! from a client to the VIP; every one must complete, and each backend's
//! share must be within ±10% of its weight's. With ip-hash one client always
//! lands on one backend.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use lb_tests::bed::{Bed, tcp_request, udp_request};

const TCP_CONNECTIONS: u16 = 3000;
const UDP_REQUESTS: u16 = 3000;
const IP_HASH_CONNECTIONS: u16 = 200;
/// Weights of backends 11, 12, 13.
const WEIGHTS: [(u8, u32); 3] = [(11, 100), (12, 100), (13, 200)];

fn config(family: Family, socket: &str) -> String {
    let (nat, dsr, tunnel) = family.vips();
    let backends = |port: Option<u16>| -> String {
        let list: Vec<String> = WEIGHTS
            .iter()
            .map(|(host, weight)| {
                let address = family.backend(*host);
                match port {
                    Some(port) => {
                        format!("{{ address: '{address}', port: {port}, weight: {weight} }}")
                    }
                    None => format!("{{ address: '{address}', weight: {weight} }}"),
                }
            })
            .collect();
        format!("[{}]", list.join(", "))
    };
    let mut services = String::new();
    for (name, vip, forwarding, port) in [
        ("nat", nat, "nat", Some(8080)),
        ("dsr", dsr, "dsr", None),
        ("tunnel", tunnel, "tunnel", None),
    ] {
        for protocol in ["tcp", "udp"] {
            writeln!(
                services,
                "  - {{ name: {name}-{protocol}, vip: '{vip}', port: 80, protocol: {protocol}, \
                 forwarding: {forwarding}, backends: {} }}",
                backends(port)
            )
            .unwrap();
        }
    }
    writeln!(
        services,
        "  - {{ name: sticky, vip: '{dsr}', port: 8080, protocol: tcp, scheduler: ip-hash, \
         forwarding: dsr, backends: {} }}",
        backends(None)
    )
    .unwrap();
    format!(
        "instance: e2e{}{family:?}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n{services}\
         control: {{ socket: {socket} }}\n\
         dataplane: {{ tunnel_source_v4: 192.0.2.240/28, tunnel_source_v6: '2001:db8::f000/116' }}\n",
        std::process::id()
    )
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn vips(self) -> (IpAddr, IpAddr, IpAddr) {
        match self {
            Family::V4 => (
                "203.0.113.10".parse().unwrap(),
                "203.0.113.11".parse().unwrap(),
                "203.0.113.12".parse().unwrap(),
            ),
            Family::V6 => (
                "2001:db8:ff::10".parse().unwrap(),
                "2001:db8:ff::11".parse().unwrap(),
                "2001:db8:ff::12".parse().unwrap(),
            ),
        }
    }

    fn backend(self, host: u8) -> IpAddr {
        match self {
            Family::V4 => format!("192.0.2.{host}").parse().unwrap(),
            Family::V6 => format!("2001:db8::{host}").parse().unwrap(),
        }
    }

    fn client(self) -> IpAddr {
        match self {
            Family::V4 => "198.51.100.2".parse().unwrap(),
            Family::V6 => "2001:db8:1::2".parse().unwrap(),
        }
    }
}

/// Requests served per backend name, and failures.
#[derive(Debug, Default)]
struct Tally {
    per_backend: BTreeMap<String, u32>,
    failures: u32,
}

impl Tally {
    fn add(&mut self, answer: Option<String>) {
        match answer {
            Some(name) => *self.per_backend.entry(name).or_default() += 1,
            None => self.failures += 1,
        }
    }

    /// Each backend's share within ±10% (relative) of its weight's share.
    fn assert_shares(&self, what: &str) {
        assert_eq!(
            self.failures, 0,
            "{what}: {} requests failed ({self:?})",
            self.failures
        );
        let total: u32 = self.per_backend.values().sum();
        let weight_total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        for (host, weight) in WEIGHTS {
            let served = self
                .per_backend
                .get(&format!("b{host}"))
                .copied()
                .unwrap_or(0);
            let expected = f64::from(total) * f64::from(weight) / f64::from(weight_total);
            let deviation = (f64::from(served) - expected).abs() / expected;
            println!(
                "{what}: b{host} served {served} of {total} (expected {expected:.0}, off by {:.1}%)",
                deviation * 100.0
            );
            assert!(
                deviation <= 0.10,
                "{what}: b{host} served {served}, expected {expected:.0} ±10%"
            );
        }
    }
}

fn run(family: Family) {
    let socket = format!("/run/lb/e2e-{}-{family:?}.sock", std::process::id());
    let mut bed = Bed::new(&[11, 12, 13]);
    bed.start_lb(&config(family, &socket));
    let (nat, dsr, tunnel) = family.vips();
    let client = family.client();
    let results = bed.client.run(move || {
        let mut results = Vec::new();
        for (mode, vip) in [("nat", nat), ("dsr", dsr), ("tunnel", tunnel)] {
            let mut tcp = Tally::default();
            for i in 0..TCP_CONNECTIONS {
                // Fixed source ports: the same flows, hence the same shares,
                // on every run.
                let source = SocketAddr::new(client, 20_000 + i);
                tcp.add(tcp_request(SocketAddr::new(vip, 80), Some(source)));
            }
            let mut udp = Tally::default();
            for i in 0..UDP_REQUESTS {
                let socket = UdpSocket::bind(SocketAddr::new(client, 40_000 + i)).unwrap();
                socket
                    .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                udp.add(udp_request(&socket, SocketAddr::new(vip, 80)));
            }
            results.push((format!("{mode} tcp"), tcp));
            results.push((format!("{mode} udp"), udp));
        }
        let mut sticky = Tally::default();
        for _ in 0..IP_HASH_CONNECTIONS {
            sticky.add(tcp_request(SocketAddr::new(dsr, 8080), None));
        }
        results.push(("ip-hash".into(), sticky));
        results
    });
    let stats = bed.lb_command(&["stats", "--output", "json"]);
    assert!(stats.status.success(), "lb stats: {stats:?}");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    for (what, tally) in &results {
        if what == "ip-hash" {
            assert_eq!(tally.failures, 0, "ip-hash: failures");
            assert_eq!(
                tally.per_backend.len(),
                1,
                "ip-hash: one client, one backend: {tally:?}"
            );
        } else {
            tally.assert_shares(&format!("{family:?} {what}"));
        }
    }
    // The counters saw every flow: at least one new flow per request.
    let services = stats["services"].as_array().unwrap();
    let new_flows = |name: &str| {
        services.iter().find(|s| s["name"] == name).unwrap()["new_flows"]
            .as_u64()
            .unwrap()
    };
    assert!(
        new_flows("nat-tcp") >= u64::from(TCP_CONNECTIONS),
        "{stats}"
    );
    assert!(new_flows("dsr-udp") >= u64::from(UDP_REQUESTS), "{stats}");
    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
    assert!(
        !bed.lb.has_xdp("eth0") && !bed.lb.has_xdp("eth1"),
        "XDP left attached"
    );
}

#[test]
fn ipv4_every_mode_balances_real_traffic() {
    run(Family::V4);
}

#[test]
fn ipv6_every_mode_balances_real_traffic() {
    run(Family::V6);
}

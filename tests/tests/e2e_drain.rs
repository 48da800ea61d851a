//! `lb drain` in real traffic: a drained backend keeps the connections it
//! has, gets no new ones — and a new connection that reuses the tuple of
//! one it still holds (the client dropped it without the balancer seeing a
//! FIN or RST, then connected again from the same port) is a new
//! connection, which goes to another backend.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_tests::bed::{Bed, HeldConnection, tcp_request};

const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn config(socket: &str) -> String {
    format!(
        "instance: e2edrain{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n  \
         - {{ name: web, vip: {}, port: 80, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}], \
         health_check: {{ kind: tcp, interval: 200ms, timeout: 200ms }} }}\n\
         control: {{ socket: {socket} }}\n",
        std::process::id(),
        VIP.ip()
    )
}

/// The nftables table that hides the client's RSTs from the balancer.
const NFT_TABLE: &str = "lb_e2e_drain";

#[test]
fn a_syn_reusing_the_tuple_of_a_drained_backends_flow_goes_elsewhere() {
    let socket = format!("/run/lb/e2e-drain-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config(&socket));
    let up = lb_tests::netns::wait_until(Duration::from_secs(10), || {
        bed.backend_status().values().all(|b| b["health"] == "up")
    });
    assert!(up, "backends up: {:?}", bed.backend_status());

    let source = SocketAddr::new(IpAddr::V4(CLIENT), 30_000);
    let (held, kept) = bed.client.run(move || {
        let held = HeldConnection::open_from(source, VIP).expect("first connection");
        // More connections held on the same backend, to finish after the drain.
        let kept: Vec<HeldConnection> = (30_001..30_021)
            .filter_map(|port| {
                HeldConnection::open_from(SocketAddr::new(IpAddr::V4(CLIENT), port), VIP)
            })
            .filter(|c| c.backend == held.backend)
            .collect();
        (held, kept)
    });
    assert!(!kept.is_empty(), "no other connection on {}", held.backend);
    let drained = held.backend.clone();
    let other = if drained == "b11" { "b12" } else { "b11" };
    let address = format!("192.0.2.{}", &drained[1..]);
    let output = bed.lb_command(&["drain", "web", &address]);
    assert!(output.status.success(), "lb drain: {output:?}");

    // The client drops the connection with a RST the balancer never sees:
    // its connection-table entry stays open, on the drained backend.
    let rules = format!(
        "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0;\n    \
         tcp flags & rst == rst drop\n  }}\n}}\n"
    );
    let file = lb_tests::TempFile::new("lb-e2e-drain.nft", &rules);
    let output = bed
        .client
        .exec("nft", &["-f", file.path().to_str().expect("utf-8 path")]);
    assert!(output.status.success(), "nft -f: {output:?}");
    held.abort();
    std::thread::sleep(Duration::from_millis(100));
    let output = bed
        .client
        .exec("nft", &["delete", "table", "inet", NFT_TABLE]);
    assert!(output.status.success(), "nft delete table: {output:?}");

    // The balancer still holds the flow, open, on the drained backend.
    let output = bed.lb_command(&[
        "route",
        "198.51.100.2:30000",
        "203.0.113.10:80",
        "tcp",
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "lb route: {output:?}");
    let route: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let connection = &route["connection"];
    assert_eq!(connection["closed"], false, "{route}");
    assert_eq!(connection["backend"], format!("{address}:8080"), "{route}");

    let (again, fresh) = bed.client.run(move || {
        let again = tcp_request(VIP, Some(source));
        let fresh: Vec<Option<String>> = (0..20).map(|_| tcp_request(VIP, None)).collect();
        (again, fresh)
    });
    assert_eq!(
        again.as_deref(),
        Some(other),
        "a SYN reusing the drained backend's tuple is a new connection"
    );
    for (i, served) in fresh.iter().enumerate() {
        assert_eq!(served.as_deref(), Some(other), "new connection {i}");
    }
    // The connection the drained backend held all along finishes there.
    let count = kept.len();
    let finished: Vec<Option<String>> = bed
        .client
        .run(move || kept.into_iter().map(HeldConnection::finish).collect());
    for served in &finished {
        assert_eq!(
            served.as_deref(),
            Some(drained.as_str()),
            "the {count} connections held on the drained backend: {finished:?}"
        );
    }
    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
}

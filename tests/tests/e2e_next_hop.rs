//! The next-hop cache end to end, through the real `lb run`: it resolves
//! every backend's neighbour itself, so traffic flows from an empty
//! neighbour table with health checks off (DSR included, which cannot hand
//! a packet to the stack to resolve), and it follows a backend whose MAC
//! changes under traffic.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use lb_tests::bed::{Bed, tcp_request};

/// Services on one backend, b11, for each mode and family; no health checks.
fn config(instance: &str, socket: &str) -> String {
    let mut services = String::new();
    for (name, vip, backend, forwarding, port) in [
        ("nat4", "203.0.113.10", "192.0.2.11", "nat", ", port: 8080"),
        ("dsr4", "203.0.113.11", "192.0.2.11", "dsr", ""),
        ("tun4", "203.0.113.12", "192.0.2.11", "tunnel", ""),
        (
            "nat6",
            "2001:db8:ff::10",
            "2001:db8::11",
            "nat",
            ", port: 8080",
        ),
        ("dsr6", "2001:db8:ff::11", "2001:db8::11", "dsr", ""),
        ("tun6", "2001:db8:ff::12", "2001:db8::11", "tunnel", ""),
    ] {
        writeln!(
            services,
            "  - {{ name: {name}, vip: '{vip}', port: 80, protocol: tcp, forwarding: {forwarding}, \
             backends: [{{ address: '{backend}'{port} }}] }}"
        )
        .unwrap();
    }
    format!(
        "instance: {instance}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n{services}\
         control: {{ socket: {socket} }}\n\
         dataplane: {{ tunnel_source_v4: 192.0.2.240/28, tunnel_source_v6: '2001:db8::f000/116' }}\n"
    )
}

fn unique(tag: &str) -> (String, String) {
    let instance = format!("nh{tag}{}", std::process::id());
    let socket = format!("/tmp/lb-{instance}.sock");
    (instance, socket)
}

/// `count` TCP requests to `vip` from the client; how many b11 answered.
fn served(bed: &Bed, vip: SocketAddr, count: usize) -> usize {
    bed.client.run(move || {
        (0..count)
            .filter(|_| tcp_request(vip, None).as_deref() == Some("b11"))
            .count()
    })
}

/// The balancer's neighbour entry for `addr`, as `ip neigh show` prints it.
fn neighbour(bed: &Bed, addr: &str) -> String {
    let output = bed.lb.ip(&["neigh", "show", addr]);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn every_mode_and_family_works_from_an_empty_neighbour_table() {
    let mut bed = Bed::new(&[11]);
    bed.lb.ip(&["neigh", "flush", "all"]);
    for addr in ["192.0.2.11", "2001:db8::11"] {
        assert!(
            !neighbour(&bed, addr).contains("lladdr"),
            "the balancer starts without a neighbour entry for {addr}"
        );
    }
    let (instance, socket) = unique("cold");
    bed.start_lb_cold(&config(&instance, &socket));
    for vip in [
        "203.0.113.10:80",
        "203.0.113.11:80",
        "203.0.113.12:80",
        "[2001:db8:ff::10]:80",
        "[2001:db8:ff::11]:80",
        "[2001:db8:ff::12]:80",
    ] {
        let vip: SocketAddr = vip.parse().unwrap();
        let started = Instant::now();
        let ok = served(&bed, vip, 20);
        println!("{vip}: {ok}/20 served in {:?}", started.elapsed());
        assert_eq!(ok, 20, "{vip}: every request served");
    }
    for addr in ["192.0.2.11", "2001:db8::11"] {
        let entry = neighbour(&bed, addr);
        println!("{entry}");
        assert!(
            entry.contains("lladdr") && entry.contains("managed"),
            "lb asked the kernel to resolve {addr} and keep it resolved: {entry:?}"
        );
    }
    let stats = bed.lb_command(&["stats", "--output", "json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let cached = stats["reasons"]["forward_to_backend"].as_u64().unwrap_or(0);
    let dropped = stats["reasons"]["drop_no_neighbour"].as_u64().unwrap_or(0);
    println!("forwarded with a cached hop: {cached}; dropped for want of a neighbour: {dropped}");
    assert!(cached > 0, "the cached next hop carried the traffic");
    let output = bed.stop_lb();
    assert!(
        output.status.success(),
        "lb run stopped cleanly: {output:?}"
    );
    for addr in ["192.0.2.11", "2001:db8::11"] {
        assert!(
            !neighbour(&bed, addr).contains("managed"),
            "a clean stop removes the managed entries lb created"
        );
    }
}

/// Right after `lb run` answers, from an empty neighbour table, the
/// backends' next hops are already cached: the start asked the kernel to
/// resolve them and waited (a bounded time) for the answers, so the first
/// packets of every mode and family take the cached path, none the FIB's.
#[test]
fn the_first_packets_after_a_cold_start_take_the_cached_hop() {
    let mut bed = Bed::new(&[11]);
    // The backend answers neighbour solicitations only once its IPv6
    // address has passed duplicate address detection.
    let settled = lb_tests::netns::wait_until(std::time::Duration::from_secs(10), || {
        let output = bed.backends[0].ns.ip(&["-6", "addr", "show", "tentative"]);
        output.stdout.is_empty()
    });
    assert!(settled, "the backend's IPv6 address left DAD");
    bed.lb.ip(&["neigh", "flush", "all"]);
    let (instance, socket) = unique("first");
    bed.start_lb_cold(&config(&instance, &socket));
    for addr in ["192.0.2.11", "2001:db8::11"] {
        let entry = neighbour(&bed, addr);
        assert!(
            entry.contains("lladdr"),
            "resolved before lb run answered: {addr}: {entry:?}"
        );
    }
    for vip in [
        "203.0.113.10:80",
        "203.0.113.11:80",
        "203.0.113.12:80",
        "[2001:db8:ff::10]:80",
        "[2001:db8:ff::11]:80",
        "[2001:db8:ff::12]:80",
    ] {
        let vip: SocketAddr = vip.parse().unwrap();
        assert_eq!(served(&bed, vip, 2), 2, "{vip}: served");
    }
    let stats = bed.lb_command(&["stats", "--output", "json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let reasons = &stats["reasons"];
    println!("{reasons}");
    let cached = reasons["forward_to_backend"].as_u64().unwrap_or(0);
    let uncached = reasons["forward_uncached_hop"].as_u64().unwrap_or(0);
    assert!(cached > 0, "the cached hops carried the traffic: {reasons}");
    assert_eq!(
        uncached, 0,
        "no packet asked the FIB for a backend: {reasons}"
    );
    let output = bed.stop_lb();
    assert!(
        output.status.success(),
        "lb run stopped cleanly: {output:?}"
    );
}

#[test]
fn a_backend_whose_mac_changes_under_traffic_is_followed() {
    let mut bed = Bed::new(&[11]);
    // The backend announces its new MAC (gratuitous ARP), as a replaced NIC
    // or a migrated VM does.
    bed.backends[0].ns.sysctl("net.ipv4.conf.all.arp_notify=1");
    bed.backends[0].ns.sysctl("net.ipv4.conf.eth0.arp_notify=1");
    let (instance, socket) = unique("mac");
    bed.start_lb(&config(&instance, &socket));
    let vip: SocketAddr = "203.0.113.11:80".parse().unwrap();
    assert_eq!(served(&bed, vip, 5), 5, "DSR serves before the change");
    let new_mac = "02:00:00:00:0b:77";
    let changed = Instant::now();
    bed.backends[0]
        .ns
        .ip(&["link", "set", "dev", "eth0", "address", new_mac]);
    // Requests keep coming; each waits at most 3 s (TCP retransmits its SYN
    // once in that time). Bounded: 40 requests.
    let mut first_ok_after = None;
    for _ in 0..40 {
        if served(&bed, vip, 1) == 1 {
            first_ok_after = Some(changed.elapsed());
            break;
        }
    }
    let entry = neighbour(&bed, "192.0.2.11");
    println!("after the change: {entry}; first request served {first_ok_after:?} after it");
    assert!(entry.contains(new_mac), "the kernel learnt the new MAC");
    assert!(
        first_ok_after.is_some(),
        "DSR follows the backend's new MAC"
    );
    assert_eq!(served(&bed, vip, 10), 10, "and keeps serving");
}

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

/// The outer source addresses of the IPIP / IP6IP6 frames seen on `iface`
/// in `ns` until `stop` (at most 10,000 frames).
fn capture_tunnel_sources(
    ns: &lb_tests::netns::Netns,
    iface: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<std::collections::BTreeSet<IpAddr>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let started = std::sync::Arc::clone(&ready);
    let handle = ns.spawn_thread(move || {
        let all = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own from here on.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        address.sll_protocol = all;
        // SAFETY: a NUL-terminated name.
        address.sll_ifindex =
            i32::try_from(unsafe { libc::if_nametoindex(name.as_ptr()) }).unwrap();
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid pointers and lengths for the calls.
        unsafe {
            assert_eq!(
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const address).cast(),
                    u32::try_from(std::mem::size_of_val(&address)).unwrap(),
                ),
                0
            );
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(std::mem::size_of_val(&timeout)).unwrap(),
            );
        }
        started.wait();
        let mut sources = std::collections::BTreeSet::new();
        let mut frame = [0u8; 2048];
        for _ in 0..10_000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            // SAFETY: `frame` is valid for its length.
            let len = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    0,
                )
            };
            let Ok(len) = usize::try_from(len) else {
                continue;
            };
            let frame = &frame[..len];
            match (frame.get(12..14), frame.get(14..54)) {
                (Some([0x08, 0x00]), Some(ip)) if ip[9] == 4 => {
                    sources.insert(IpAddr::from([ip[12], ip[13], ip[14], ip[15]]));
                }
                (Some([0x86, 0xdd]), Some(ip)) if ip[6] == 41 => {
                    let source: [u8; 16] = ip[8..24].try_into().unwrap();
                    sources.insert(IpAddr::from(source));
                }
                _ => {}
            }
        }
        sources
    });
    ready.wait();
    handle
}

/// A newcomer's first tunnel configuration names no `tunnel_source`: it
/// passes `lb check`, serves both families end to end, and the tunnels
/// leave from the balancer's own address on the backends' side.
#[test]
fn tunnels_without_a_source_prefix_use_the_balancers_address() {
    let socket = format!("/run/lb/e2e-tsrc-{}.sock", std::process::id());
    let config = format!(
        "instance: tsrc{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: t4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, \
         backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
         \x20 - {{ name: t6, vip: '2001:db8:ff::12', port: 80, protocol: tcp, forwarding: tunnel, \
         backends: [{{ address: '2001:db8::11' }}, {{ address: '2001:db8::12' }}] }}\n\
         control: {{ socket: {socket} }}\n",
        pid = std::process::id()
    );
    let file = lb_tests::TempFile::new("tunnel.yaml", &config);
    let check = std::process::Command::new(lb_tests::lb_binary())
        .args(["check", "-c", file.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "lb check: {check:?}");

    let mut bed = Bed::new(&[11, 12]);
    bed.keep_tunnels_on_the_switch();
    bed.start_lb(&config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let capture = capture_tunnel_sources(&bed.switch, "plb", std::sync::Arc::clone(&stop));
    let served = bed.client.run(|| {
        let mut served = BTreeMap::new();
        for vip in ["203.0.113.12:80", "[2001:db8:ff::12]:80"] {
            let vip: SocketAddr = vip.parse().unwrap();
            let answers: Vec<Option<String>> = (0..50).map(|_| tcp_request(vip, None)).collect();
            served.insert(vip, answers);
        }
        served
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sources = capture.join().unwrap();
    for (vip, answers) in &served {
        assert!(
            answers.iter().all(Option::is_some),
            "{vip}: {} of 50 failed",
            answers.iter().filter(|a| a.is_none()).count()
        );
    }
    let expected: std::collections::BTreeSet<IpAddr> = ["192.0.2.1", "2001:db8::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(sources, expected, "outer sources of the tunnels");
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("tunnel outer source"), "{log}");
}

/// The default tunnel source follows the routes: once the way to the
/// backends leaves from another of the balancer's addresses, the tunnels
/// leave from it too, without a reload. The hop follower looks the source
/// up with the next hops, on its own thread; the owner only writes it.
#[test]
fn a_changed_egress_address_moves_the_default_tunnel_source() {
    let socket = format!("/run/lb/e2e-tmove-{}.sock", std::process::id());
    let config = format!(
        "instance: tmove{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: t4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, \
         backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
         control: {{ socket: {socket} }}\n",
        pid = std::process::id()
    );
    let mut bed = Bed::new(&[11, 12]);
    bed.keep_tunnels_on_the_switch();
    bed.start_lb(&config);
    let vip: SocketAddr = "203.0.113.12:80".parse().unwrap();
    // The outer sources of the tunnels of 5 connections; every one served.
    let sources_now = |bed: &Bed| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let capture = capture_tunnel_sources(&bed.switch, "plb", std::sync::Arc::clone(&stop));
        let answers: Vec<Option<String>> = bed
            .client
            .run(move || (0..5).map(|_| tcp_request(vip, None)).collect());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sources = capture.join().unwrap();
        assert!(answers.iter().all(Option::is_some), "{answers:?}");
        sources
    };
    let at = |addresses: &[&str]| -> std::collections::BTreeSet<IpAddr> {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    };
    assert_eq!(sources_now(&bed), at(&["192.0.2.1"]));

    // The backends are now reached from 192.0.2.5 (192.0.2.1 stays, as
    // their gateway).
    for args in [
        ["addr", "add", "192.0.2.5/32", "dev", "eth1"].as_slice(),
        &[
            "route",
            "add",
            "192.0.2.0/25",
            "dev",
            "eth1",
            "src",
            "192.0.2.5",
        ],
    ] {
        let output = bed.lb.ip(args);
        assert!(output.status.success(), "ip {args:?}: {output:?}");
    }
    let started = std::time::Instant::now();
    let mut seen = sources_now(&bed);
    // 20 rounds at most; the follower looks again on the route change,
    // or within 2 s regardless.
    for _ in 0..20 {
        if seen == at(&["192.0.2.5"]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        seen = sources_now(&bed);
    }
    assert_eq!(seen, at(&["192.0.2.5"]), "the tunnel source did not follow");
    println!("tunnel source moved within {:?}", started.elapsed());
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("source=192.0.2.5") && log.contains("tunnel outer source"),
        "{log}"
    );
}

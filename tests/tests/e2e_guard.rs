//! The automatic guard against a real flood through `lb run`: a flooder in
//! its own namespace (behind the balancer's `eth2`) sends a bounded UDP
//! flood to a VIP while a well-behaved client keeps making TCP requests to
//! another service of the same VIP. Run once with the guard off and once
//! with `guard.auto` (turned on by `lb reload`); the good client's success
//! rate and the time to detect are printed. Asserted: with the guard on the
//! flooder ends up denied (`lb guard list`, `lb status`), not one of its
//! packets reaches the backend after that (a counting UDP server there),
//! and every request of the good client after the detection succeeds.
//! Then `lb guard allow` lets the flooder in again and `lb guard deny`
//! shuts it out by hand.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bed::{Bed, DecapGuard, tcp_request},
    netns::{Netns, veth, wait_until},
};

const FLOODER: &str = "203.0.113.130";
const VIP: &str = "203.0.113.10";
/// The counting server's port on the backend (and the flood's service port).
const SINK_PORT: u16 = 9000;
/// The flood's bounds: this many datagrams, or this long, whichever first.
const FLOOD_PACKETS: u64 = 3_000_000;
const FLOOD_TIME: Duration = Duration::from_secs(3);
/// How long the good client carries on after the detection (guard on).
const AFTER_DETECTION: Duration = Duration::from_millis(1500);
/// The good client's pace: a well-behaved client, far below the thresholds.
const CLIENT_PAUSE: Duration = Duration::from_millis(10);

const AUTO: &str = "guard:\n  auto: { packets_per_second: 5000, new_flows_per_second: 1000, \
                    syn_only_per_second: 200, deny_for: 60s }\n";

fn config(socket: &str, guard: &str) -> String {
    format!(
        "instance: e2eguard{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}, {{ name: eth2 }}]\n\
         services:\n\
         \x20 - {{ name: web, vip: {VIP}, port: 80, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         \x20 - {{ name: sink, vip: {VIP}, port: {SINK_PORT}, protocol: udp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: {SINK_PORT} }}] }}\n\
         control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n{guard}",
        std::process::id()
    )
}

/// Datagrams the backend's counting server received, per source address.
type Received = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

/// A UDP server on the backend that counts datagrams per source and answers
/// only `marker` datagrams (so a marker's answer proves every datagram
/// queued before it was counted).
fn counting_server(ns: &Netns, stop: &Arc<AtomicBool>) -> (Received, std::thread::JoinHandle<()>) {
    let received: Received = Arc::default();
    let socket = ns.run(|| {
        let socket = UdpSocket::bind(("0.0.0.0", SINK_PORT)).expect("bind the counting server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        socket
    });
    let (counts, stop) = (Arc::clone(&received), Arc::clone(stop));
    let server = ns.spawn_thread(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                *counts.lock().unwrap().entry(from.ip()).or_default() += 1;
                if &buf[..n] == b"marker" {
                    let _ = socket.send_to(b"counted", from);
                }
            }
        }
    });
    (received, server)
}

/// Sends a marker from `ns` through the balancer and waits for the counting
/// server's answer: the counts are then complete up to that moment.
fn settle(ns: &Netns) {
    let target = SocketAddr::new(VIP.parse().unwrap(), SINK_PORT);
    let answered = ns.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        (0..10).any(|_| {
            socket.send_to(b"marker", target).is_ok() && {
                let mut buf = [0u8; 16];
                socket.recv_from(&mut buf).is_ok()
            }
        })
    });
    assert!(answered, "the counting server did not answer a marker");
}

fn flooded(received: &Received) -> u64 {
    let flooder: IpAddr = FLOODER.parse().unwrap();
    received.lock().unwrap().get(&flooder).copied().unwrap_or(0)
}

/// The flood: at most [`FLOOD_PACKETS`] datagrams over at most
/// [`FLOOD_TIME`], from one socket of the flooder to the sink service,
/// counted in `sent` as they go.
fn flood(ns: &Netns, sent: &Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let sent = Arc::clone(sent);
    ns.spawn_thread(move || {
        let socket = UdpSocket::bind((FLOODER, 0)).expect("bind the flooder");
        let target = SocketAddr::new(VIP.parse().unwrap(), SINK_PORT);
        let start = Instant::now();
        while sent.load(Ordering::Relaxed) < FLOOD_PACKETS && start.elapsed() < FLOOD_TIME {
            if socket.send_to(b"flood", target).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// The good client's requests while `running`: (when it finished, ok).
fn good_client(
    ns: &Netns,
    running: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, bool)>> {
    let running = Arc::clone(running);
    ns.spawn_thread(move || {
        let target = SocketAddr::new(VIP.parse().unwrap(), 80);
        let mut results = Vec::new();
        while running.load(Ordering::Relaxed) {
            let ok = tcp_request(target, None).is_some();
            results.push((Instant::now(), ok));
            std::thread::sleep(CLIENT_PAUSE);
        }
        results
    })
}

fn rate(results: &[(Instant, bool)]) -> f64 {
    let ok = results.iter().filter(|(_, ok)| *ok).count();
    #[allow(clippy::cast_precision_loss, reason = "request counts")]
    let rate = 100.0 * ok as f64 / results.len().max(1) as f64;
    rate
}

fn flooder_denied(bed: &Bed) -> bool {
    bed.guard_list()["denied"]
        .as_array()
        .is_some_and(|denied| denied.iter().any(|d| d["source"] == FLOODER))
}

/// One round: flood and good client together.
struct Round {
    /// The good client's requests.
    results: Vec<(Instant, bool)>,
    /// Datagrams the flooder sent.
    sent: u64,
    /// When the flood began.
    started: Instant,
    /// Guard on: when the controller reported the flooder denied, the
    /// datagrams sent by then, and those the backend had received by then.
    detected: Option<(Instant, u64, u64)>,
}

fn round(bed: &Bed, flooder: &Netns, received: &Received, watch: bool) -> Round {
    let running = Arc::new(AtomicBool::new(true));
    let client = good_client(&bed.client, &running);
    // The client gets going before the flood starts.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = flood(flooder, &sent);
    let detected = watch
        .then(|| {
            wait_until(Duration::from_secs(10), || flooder_denied(bed)).then(|| {
                (
                    Instant::now(),
                    sent.load(Ordering::Relaxed),
                    flooded(received),
                )
            })
        })
        .flatten();
    flooding.join().expect("flood thread");
    if let Some((when, _, _)) = detected {
        std::thread::sleep(AFTER_DETECTION.saturating_sub(when.elapsed()));
    }
    running.store(false, Ordering::Relaxed);
    let results = client.join().expect("client thread");
    Round {
        results,
        sent: sent.load(Ordering::Relaxed),
        started,
        detected,
    }
}

/// The flooder: its own namespace behind the balancer's `eth2`, with
/// `lb_decap` on its end (frames redirected into a veth need an XDP
/// program on the peer). Drop the guard before the namespace.
fn flooder_namespace(bed: &Bed) -> (Netns, DecapGuard) {
    let flooder = Netns::new("fl");
    veth(&flooder, "eth0", &bed.lb, "eth2");
    flooder.addr("eth0", "203.0.113.130/25");
    flooder.ip(&["route", "add", "default", "via", "203.0.113.129"]);
    bed.lb.addr("eth2", "203.0.113.129/25");
    let decap = DecapGuard::attach(flooder.name(), "eth0");
    (flooder, decap)
}

/// `lb status` and `lb stats` show the automatic denial.
fn reports_show_the_denial(bed: &Bed) {
    let output = bed.lb_command(&["status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let denial = status["guard"]["denied"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["source"] == FLOODER))
        .expect("lb status lists the denied flooder")
        .clone();
    assert_eq!(denial["vip"], VIP);
    assert_eq!(denial["cause"], "packets");
    assert_eq!(status["guard"]["denials_total"]["packets"], 1);
    let output = bed.lb_command(&["guard", "list"]);
    let human = String::from_utf8_lossy(&output.stdout);
    assert!(
        human.contains("automatic:      on (1 denied now")
            && human
                .lines()
                .any(|l| l.contains(FLOODER) && l.contains("packets")),
        "lb guard list:\n{human}"
    );
    println!("lb guard list:\n{human}");
    let metrics = bed.lb.metrics_page();
    for line in [
        "lb_guard_denials_total{cause=\"packets\"} 1",
        "lb_guard_denied_sources 1",
        "lb_dropped_packets_total{reason=\"drop_guard_auto\"}",
    ] {
        assert!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
    }
    let output = bed.lb_command(&["stats", "--output", "json"]);
    let counters: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(counters["reasons"]["drop_guard_auto"].as_u64().unwrap_or(0) > 0);
}

/// `lb guard allow` lets the flooder in again, `lb guard deny` shuts it out
/// by hand, `lb guard allow` undoes that.
fn operator_commands(bed: &Bed, flooder: &Netns, received: &Received) {
    let one = || {
        let delivered = flooded(received);
        flooder.run(|| {
            let socket = UdpSocket::bind((FLOODER, 0)).unwrap();
            socket
                .send_to(b"one", SocketAddr::new(VIP.parse().unwrap(), SINK_PORT))
                .unwrap();
        });
        settle(&bed.client);
        flooded(received) - delivered
    };
    let output = bed.lb_command(&["guard", "allow", FLOODER]);
    assert!(output.status.success(), "lb guard allow: {output:?}");
    assert!(!flooder_denied(bed));
    assert_eq!(one(), 1, "allowed again, the flooder's datagram arrives");
    let output = bed.lb_command(&["guard", "deny", "203.0.113.128/25"]);
    assert!(output.status.success(), "lb guard deny: {output:?}");
    assert_eq!(bed.guard_list()["runtime"][0], "203.0.113.128/25");
    assert_eq!(one(), 0, "denied by hand, nothing arrives");
    let output = bed.lb_command(&["guard", "allow", "203.0.113.128/25"]);
    assert!(output.status.success(), "lb guard allow: {output:?}");
    assert_eq!(one(), 1);
    // Nothing left to allow: a user error.
    let output = bed.lb_command(&["guard", "allow", "203.0.113.128/25"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn a_flooding_source_is_denied_and_the_good_client_keeps_being_served() {
    let socket_path = format!("/run/lb/e2e-guard-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11]);
    let (flooder, decap) = flooder_namespace(&bed);
    let stop = Arc::new(AtomicBool::new(false));
    let (received, server) = counting_server(&bed.backends[0].ns, &stop);

    // Guard off.
    bed.start_lb(&config(&socket_path, ""));
    settle(&bed.client);
    let off = round(&bed, &flooder, &received, false);
    settle(&bed.client);
    println!(
        "guard off: flood of {} datagrams, {} reached the backend; good client {:.2} % of {} \
         requests succeeded",
        off.sent,
        flooded(&received),
        rate(&off.results),
        off.results.len()
    );
    assert!(bed.guard_list()["denied"].as_array().unwrap().is_empty());

    // Guard on, by reload.
    let file = bed
        .config
        .as_ref()
        .expect("config file")
        .path()
        .to_path_buf();
    std::fs::write(&file, config(&socket_path, AUTO)).unwrap();
    let output = bed.lb_command(&["reload"]);
    assert!(output.status.success(), "lb reload: {output:?}");
    let before = flooded(&received);
    let on = round(&bed, &flooder, &received, true);
    let (detected, sent_by_then, delivered_by_then) = on
        .detected
        .expect("the controller never reported the flooder denied (lb guard list)");
    settle(&bed.client);
    let after_detection: Vec<bool> = on
        .results
        .iter()
        .filter(|(when, _)| *when > detected)
        .map(|(_, ok)| *ok)
        .collect();
    println!(
        "guard on: flooder denied {} ms after the flood began (as the controller saw it; \
         {sent_by_then} datagrams sent by then); flood of {} datagrams, {} reached the backend; \
         good client {:.2} % of {} requests succeeded ({} after the detection, {} of them failed)",
        detected.duration_since(on.started).as_millis(),
        on.sent,
        flooded(&received) - before,
        rate(&on.results),
        on.results.len(),
        after_detection.len(),
        after_detection.iter().filter(|ok| !**ok).count()
    );
    assert_eq!(
        flooded(&received),
        delivered_by_then,
        "datagrams of the denied flooder reached the backend"
    );
    assert!(
        on.sent > sent_by_then,
        "the flood did not go on after the detection; nothing was shown"
    );
    assert!(
        !after_detection.is_empty() && after_detection.iter().all(|ok| *ok),
        "a good client's request failed after the detection"
    );
    reports_show_the_denial(&bed);
    operator_commands(&bed, &flooder, &received);

    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    drop(decap);
}

//! `guard.attack` against a real spoofed SYN flood through `lb run`: a
//! flooder in its own namespace (behind the balancer's `eth2`) sends SYNs
//! from random addresses of 198.51.100.128/25, random ports and sequence
//! numbers, through a raw socket (bounded in count and time), to a NAT
//! service. A raw socket on the backend counts the spoofed SYNs that reach
//! it. Asserted: the VIP is reported under attack within a second of the
//! flood's start (`lb status`), at most 1 % of the spoofed SYNs sent after
//! that reach the backend, a real client still connects (proven by its
//! handshake before the flood), the metrics and counters say
//! so, and the VIP leaves the attack state after `quiet_for`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bed::{Bed, DecapGuard, tcp_request},
    netns::{Netns, veth, wait_until},
};

const VIP: &str = "203.0.113.10";
/// The flood's bounds: this many SYNs, or this long, whichever first, at
/// about [`FLOOD_BURST`] SYNs every millisecond-ish pause.
const FLOOD_PACKETS: u64 = 12_000;
const FLOOD_TIME: Duration = Duration::from_secs(4);
const FLOOD_BURST: u64 = 30;
const FLOOD_PAUSE: Duration = Duration::from_millis(10);

fn config(socket: &str) -> String {
    format!(
        "instance: e2eattack{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}, {{ name: eth2 }}]\n\
         services:\n\
         \x20 - {{ name: web, vip: {VIP}, port: 80, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n\
         guard:\n  attack: {{ new_flows_per_second: 300, half_open_share: 0.5, quiet_for: 3s }}\n",
        std::process::id()
    )
}

/// Whether `ip` is one of the flood's spoofed sources.
fn spoofed(ip: [u8; 4]) -> bool {
    ip[0] == 198 && ip[1] == 51 && ip[2] == 100 && ip[3] >= 128
}

/// A raw socket on the backend counting bare SYNs to port 8080 from the
/// spoofed range, until `stop`.
fn syn_counter(
    ns: &Netns,
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let count = Arc::new(AtomicU64::new(0));
    let (seen, stop) = (Arc::clone(&count), Arc::clone(stop));
    let thread = ns.spawn_thread(move || {
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        assert!(fd >= 0, "raw socket on the backend");
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: `timeout` outlives the call; the length is its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(size_of::<libc::timeval>()).unwrap(),
            );
        }
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 20 {
                continue;
            }
            let src = [buf[12], buf[13], buf[14], buf[15]];
            let dport = u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]);
            let flags = buf[ihl + 13] & 0x12;
            if spoofed(src) && dport == 8080 && flags == 0x02 {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    });
    (count, thread)
}

/// The flood through a raw socket of `ns`, counted in `sent`.
fn flood(ns: &Netns, sent: &Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let sent = Arc::clone(sent);
    ns.spawn_thread(move || {
        // SAFETY: plain socket(2); closed below. IPPROTO_RAW implies
        // IP_HDRINCL: the packets carry their own (spoofed) source.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket on the flooder");
        let vip: Ipv4Addr = VIP.parse().unwrap();
        let target = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(vip.octets()),
            },
            sin_zero: [0; 8],
        };
        // xorshift64: the spoofed sources, ports and sequence numbers.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let start = Instant::now();
        let mut packet = Vec::with_capacity(64);
        while sent.load(Ordering::Relaxed) < FLOOD_PACKETS && start.elapsed() < FLOOD_TIME {
            for _ in 0..FLOOD_BURST {
                let r = next().to_le_bytes();
                let src = [198, 51, 100, 128 | (r[0] & 0x7f)];
                let sport = 1024 + u16::from_le_bytes([r[1], r[2]]) % 60_000;
                let seq = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                packet.clear();
                etherparse::PacketBuilder::ipv4(src, vip.octets(), 64)
                    .tcp(sport, 80, seq, 64240)
                    .syn()
                    .write(&mut packet, &[])
                    .expect("build a SYN");
                // SAFETY: `packet` and `target` are valid for their lengths.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const target).cast(),
                        u32::try_from(size_of::<libc::sockaddr_in>()).unwrap(),
                    )
                };
                if n > 0 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(FLOOD_PAUSE);
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    })
}

/// The flooder: its own namespace behind the balancer's `eth2`, with
/// `lb_decap` on its end. Drop the guard before the namespace.
fn flooder_namespace(bed: &Bed) -> (Netns, DecapGuard) {
    let flooder = Netns::new("fa");
    veth(&flooder, "eth0", &bed.lb, "eth2");
    flooder.addr("eth0", "203.0.113.130/25");
    flooder.ip(&["route", "add", "default", "via", "203.0.113.129"]);
    bed.lb.addr("eth2", "203.0.113.129/25");
    let decap = DecapGuard::attach(flooder.name(), "eth0");
    (flooder, decap)
}

/// The VIP's entry of `lb status`'s `attack` section.
fn vip_attack(bed: &Bed) -> serde_json::Value {
    let output = bed.lb_command(&["status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    status["attack"]["vips"]
        .as_array()
        .and_then(|vips| vips.iter().find(|v| v["vip"] == VIP))
        .cloned()
        .unwrap_or_default()
}

/// `lb trace --drops --limit 5 --output json`, running until five drops.
fn trace_drops(bed: &Bed, socket: &str) -> lb_tests::netns::ChildGuard {
    bed.lb.spawn(
        lb_tests::lb_binary().to_str().unwrap(),
        &[
            "trace", "--drops", "--limit", "5", "--output", "json", "--socket", socket,
        ],
    )
}

#[test]
fn a_spoofed_syn_flood_is_detected_and_kept_from_the_backend() {
    let socket_path = format!("/run/lb/e2e-attack-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11]);
    let (flooder, decap) = flooder_namespace(&bed);
    let stop = Arc::new(AtomicBool::new(false));
    let (reached, counter) = syn_counter(&bed.backends[0].ns, &stop);
    bed.start_lb(&config(&socket_path));
    let target = SocketAddr::new(VIP.parse().unwrap(), 80);
    let client = bed.client.run(move || tcp_request(target, None));
    assert!(client.is_some(), "the client connects before the flood");
    assert_ne!(
        vip_attack(&bed)["under_attack"],
        true,
        "not before the flood"
    );

    // `lb trace` shows the flood's drops with their reason.
    let trace = trace_drops(&bed, &socket_path);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flooding = flood(&flooder, &sent);
    let detected = wait_until(Duration::from_secs(3), || {
        vip_attack(&bed)["under_attack"] == true
    });
    let detection = started.elapsed();
    let (sent_by_then, reached_by_then) = (
        sent.load(Ordering::Relaxed),
        reached.load(Ordering::Relaxed),
    );
    assert!(detected, "the VIP was never reported under attack");
    // A real client during the flood: its handshake before the flood
    // proved it, so it connects at once.
    let connecting = Instant::now();
    let client = bed.client.run(move || tcp_request(target, None));
    let connect_time = connecting.elapsed();
    flooding.join().expect("flood thread");
    let flood_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let total_sent = sent.load(Ordering::Relaxed);
    let total_reached = reached.load(Ordering::Relaxed);
    let after_sent = total_sent - sent_by_then;
    let after_reached = total_reached - reached_by_then;
    let status = vip_attack(&bed);
    println!(
        "flood: {total_sent} spoofed SYNs in {flood_time:.1?}, {total_reached} reached the \
         backend; detected {} ms after the start ({sent_by_then} sent, {reached_by_then} \
         reached by then); after detection {after_sent} sent, {after_reached} reached; a real \
         client connected in {connect_time:.1?} ({client:?}); lb status: {status}",
        detection.as_millis()
    );
    assert!(
        detection <= Duration::from_secs(1),
        "detected after {detection:?}"
    );
    assert!(after_sent >= 1000, "the flood went on after the detection");
    assert!(
        after_reached * 100 <= after_sent,
        "{after_reached} of {after_sent} spoofed SYNs reached the backend after detection"
    );
    assert!(client.is_some(), "a real client connects during the flood");
    assert!(status["since_unix"].as_u64().is_some());
    let metrics = bed.lb.metrics_page();
    assert!(
        metrics.contains(&format!("lb_guard_attack{{vip=\"{VIP}\"}} 1")),
        "no attack gauge in /metrics:\n{metrics}"
    );
    let human = bed.lb_command(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(VIP) && human.contains("UNDER ATTACK"),
        "lb status does not say so:\n{human}"
    );
    let traced = trace.wait();
    let traced = String::from_utf8_lossy(&traced.stdout);
    assert!(
        traced.contains("drop_attack_unverified"),
        "lb trace --drops during the flood:\n{traced}"
    );
    let output = bed.lb_command(&["stats", "--output", "json"]);
    let counters: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let dropped = counters["reasons"]["drop_attack_unverified"]
        .as_u64()
        .unwrap_or(0);
    assert!(dropped >= after_sent - after_reached, "{dropped} dropped");

    // Quiet again: the attack state ends after quiet_for (3 s) once the
    // last second's rates fall.
    let quiet = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || vip_attack(&bed)["under_attack"]
            == false),
        "the VIP stayed under attack"
    );
    println!(
        "left the attack state {:.1?} after the flood",
        quiet.elapsed()
    );
    let client = bed.client.run(move || tcp_request(target, None));
    assert!(client.is_some(), "a client connects after the attack");

    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    drop(decap);
    drop(flooder);
}

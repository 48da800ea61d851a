//! Data-plane cost per packet, measured with `BPF_PROG_TEST_RUN` and a large
//! `repeat`. The kernel reports the mean time per run in whole nanoseconds.
//!
//! Rewriting paths would see their own output from the second run on, so
//! every case runs through `lb_bench`, which restores the frame and
//! tail-calls `lb_balancer`; `lb_bench_baseline` (restore only) is timed too
//! and subtracted (DESIGN.md §7.4). Forwarding cases measure an established
//! flow: the first run puts it in the connection table.
//! Run with `cargo xtask bench`.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::program_names;
use lb_tests::{frames, testrun::Harness};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

const CONFIG: &str = "\
instance: bench
interfaces: [{ name: lb0 }]
services:
  - { name: nat4, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }] }
  - { name: dsr4, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
  - { name: tun4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
  - { name: nat6, vip: '2001:db8:ff::10', port: 80, protocol: tcp, forwarding: nat, backends: [{ address: '2001:db8::11', port: 8080 }] }
  - { name: dsr6, vip: '2001:db8:ff::11', port: 53, protocol: udp, forwarding: dsr, backends: [{ address: '2001:db8::11' }] }
  - { name: tun6, vip: '2001:db8:ff::12', port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: '2001:db8::11' }] }
dataplane: { tunnel_source_v4: 198.51.100.128/28, tunnel_source_v6: '2001:db8:ee::/96' }
";

/// Best and median of `ROUNDS` timed runs of `program` on `frame`.
fn time(harness: &Harness, program: &'static str, frame: &[u8]) -> (u128, u128, u32) {
    let program = harness.dataplane.bench_program(program).unwrap();
    let mut action = 0;
    let mut samples: Vec<u128> = (0..ROUNDS)
        .map(|_| {
            let mut out = vec![0u8; frame.len() + 256];
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: REPEAT,
                ..TestRunOptions::default()
            };
            let result = program.test_run(opts).unwrap();
            action = result.return_value;
            result.duration.as_nanos()
        })
        .collect();
    samples.sort_unstable();
    (samples[0], samples[ROUNDS / 2], action)
}

fn main() {
    let mut harness = Harness::new(CONFIG);
    let client4 = Ipv4Addr::new(198, 51, 100, 7);
    let client6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
    let vip6 = |last: u16| Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, last);
    let mut echo = Vec::new();
    frames::eth()
        .ipv4(client4.octets(), [203, 0, 113, 10], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    let cases = [
        (
            "ARP (not IP): pass",
            frames::arp_request(client4, Ipv4Addr::new(203, 0, 113, 10)),
        ),
        (
            "IPv4 TCP, not a VIP: pass",
            frames::tcp4(client4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80),
        ),
        (
            "IPv4 TCP nat",
            frames::tcp4(client4, 40000, Ipv4Addr::new(203, 0, 113, 10), 80),
        ),
        (
            "IPv4 TCP dsr",
            frames::tcp4(client4, 40000, Ipv4Addr::new(203, 0, 113, 11), 80),
        ),
        (
            "IPv4 TCP tunnel (IPIP)",
            frames::tcp4(client4, 40000, Ipv4Addr::new(203, 0, 113, 12), 80),
        ),
        (
            "IPv4 TCP nat reply",
            frames::tcp4(Ipv4Addr::new(192, 0, 2, 11), 8080, client4, 40000),
        ),
        (
            "IPv4 TCP nat, VLAN",
            frames::tcp4_vlan(7, client4, 40000, Ipv4Addr::new(203, 0, 113, 10), 80),
        ),
        ("IPv6 TCP nat", frames::tcp6(client6, 40000, vip6(0x10), 80)),
        ("IPv6 UDP dsr", frames::udp6(client6, 40000, vip6(0x11), 53)),
        (
            "IPv6 TCP tunnel (IP6IP6)",
            frames::tcp6(client6, 40000, vip6(0x12), 80),
        ),
        ("ICMP echo to a VIP: reply", echo),
    ];
    println!(
        "lb_balancer via BPF_PROG_TEST_RUN, repeat {REPEAT}, {ROUNDS} rounds; \
         wrapper cost subtracted; established flows"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>9} {:>8}",
        "case", "best ns", "median", "wrapper", "verdict"
    );
    for (name, frame) in cases {
        measure(&mut harness, name, &frame);
    }
    // Without any NAT service, host traffic skips the reply-path lookups.
    let mut dsr_only = Harness::new(
        "instance: bench2\ninterfaces: [{ name: lb0 }]\nservices:\n\
         \x20 - { name: dsr4, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n",
    );
    let host = frames::tcp4(client4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80);
    measure(&mut dsr_only, "IPv4 TCP, not a VIP, no NAT: pass", &host);
}

/// Times one case through the wrapper and prints it.
fn measure(harness: &mut Harness, name: &str, frame: &[u8]) {
    {
        let padded = harness.dataplane.prepare_bench(frame).unwrap();
        let (base_best, base_median, _) = time(harness, program_names::BENCH_BASELINE, &padded);
        let (best, median, action) = time(harness, program_names::BENCH, &padded);
        let verdict = ["aborted", "drop", "pass", "tx", "redirect"]
            .get(action as usize)
            .copied()
            .unwrap_or("?");
        println!(
            "{name:<34} {:>8} {:>8} {:>9} {verdict:>8}",
            best.saturating_sub(base_best),
            median.saturating_sub(base_median),
            base_median
        );
    }
}

//! Data-plane cost per packet, measured with `BPF_PROG_TEST_RUN` and a large
//! `repeat`: the kernel reports the mean time per run in whole nanoseconds.
//! The paths here do not rewrite the frame, so repeating one buffer is exact.
//! Run with `cargo xtask bench`.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_tests::{frames, testrun::Harness};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn main() {
    let harness = Harness::new(
        "instance: bench\ninterfaces: [{ name: lb0 }]\nservices:\n\
         \x20 - { name: v4, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.11 }] }\n\
         \x20 - { name: v6, vip: '2001:db8::10', port: 80, protocol: tcp, backends: [{ address: '2001:db8::11' }] }\n",
    );
    let vip4 = Ipv4Addr::new(203, 0, 113, 10);
    let vip6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    let client4 = Ipv4Addr::new(198, 51, 100, 7);
    let client6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
    let cases = [
        ("ARP (non-IP, pass)", frames::arp_request(client4, vip4)),
        (
            "IPv4 TCP, no service (pass)",
            frames::tcp4(client4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80),
        ),
        (
            "IPv4 TCP to a service (match)",
            frames::tcp4(client4, 40000, vip4, 80),
        ),
        (
            "IPv6 TCP to a service (match)",
            frames::tcp6(client6, 40000, vip6, 80),
        ),
        (
            "IPv4 TCP, VLAN, to a service",
            frames::tcp4_vlan(7, client4, 40000, vip4, 80),
        ),
    ];
    println!("lb_balancer, BPF_PROG_TEST_RUN, repeat {REPEAT}, best and median of {ROUNDS} rounds");
    println!("{:<34} {:>8} {:>8}", "case", "best ns", "median");
    let program = harness.dataplane.program().unwrap();
    for (name, frame) in cases {
        let mut samples: Vec<u128> = (0..ROUNDS)
            .map(|_| {
                let mut out = vec![0u8; frame.len() + 256];
                let opts = TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    repeat: REPEAT,
                    ..TestRunOptions::default()
                };
                program.test_run(opts).unwrap().duration.as_nanos()
            })
            .collect();
        samples.sort_unstable();
        println!("{name:<34} {:>8} {:>8}", samples[0], samples[ROUNDS / 2]);
    }
}

//! The connection table read whole (`lb::conns`), as the controller's
//! reconciliation reads it without its lock: batched reads over more
//! entries than one batch, counted per backend exactly as the data plane
//! counted the flows it opened, and idle entries left out.

use std::{net::Ipv4Addr, time::Instant};

use lb_tests::{frames, testrun::Harness};

const CONFIG: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: pair4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }
dataplane: { ring_size: 1009, connection_table_size: 65536 }
";

#[test]
fn a_walk_counts_every_flow_per_backend() {
    let harness = Harness::new(CONFIG);
    let flows: u16 = 10_000;
    for n in 0..flows {
        let client = Ipv4Addr::new(198, 51, 100, u8::try_from(n % 200).unwrap() + 1);
        harness.run(&frames::tcp4(
            client,
            1024 + n,
            Ipv4Addr::new(203, 0, 113, 40),
            80,
        ));
    }
    let table = harness
        .dataplane
        .conn_table()
        .expect("a descriptor of CONNS");
    let now = lb::dataplane::monotonic_ns();
    let started = Instant::now();
    let active = table
        .count_active(now, u64::MAX, u64::MAX)
        .expect("reading CONNS");
    println!(
        "{} entries walked in {:?}: {active:?}",
        active.values().sum::<u64>(),
        started.elapsed()
    );
    assert_eq!(active.values().sum::<u64>(), u64::from(flows));
    for backend in &harness.planner.planned()[0].backends {
        let opened = harness
            .dataplane
            .backend_traffic(backend.id)
            .expect("counters")
            .new_flows;
        assert!(opened > 0, "{backend:?} got no flow");
        assert_eq!(
            active.get(&backend.id).copied().unwrap_or(0),
            opened,
            "{backend:?}"
        );
    }
    // An hour on, every entry is idle past its timeout.
    let later = now + 3_600 * 1_000_000_000;
    let idle = table
        .count_active(later, 1_000_000_000, 1_000_000_000)
        .expect("reading CONNS");
    assert!(idle.is_empty(), "{idle:?}");
    let mut seen = 0;
    assert_eq!(table.for_each(|_, _| seen += 1).unwrap(), u64::from(flows));
    assert_eq!(seen, flows);
}

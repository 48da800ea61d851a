//! The connection table read whole (`lb::conns`), as the controller's
//! reconciliation reads it without its lock: batched reads over more
//! entries than one batch, counted per backend exactly as the data plane
//! counted the flows it opened, and idle entries left out.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lb::conns::{Census, Evictions};
use lb_common::{FlowKey, FlowKeyV4, maps::ipv4_mapped};
use lb_tests::{
    frames,
    testrun::{Action, Harness, backend_mac},
};

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

const BOTH: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: web4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }] }
  - { name: web6, vip: '2001:db8::40', port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: '2001:db8:2::21' }] }
dataplane: { ring_size: 1009, connection_table_size: 64 }
";

/// IPv4 and IPv6 flows live in tables of their own (`CONNS_V4`, `CONNS`);
/// a walk reads both and gives every key in the wide form.
#[test]
fn a_walk_reads_the_ipv4_and_the_ipv6_table() {
    let harness = Harness::new(BOTH);
    let client4 = Ipv4Addr::new(198, 51, 100, 7);
    let client6: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
    harness.run(&frames::tcp4(
        client4,
        40_000,
        Ipv4Addr::new(203, 0, 113, 40),
        80,
    ));
    harness.run(&frames::tcp6(
        client6,
        40_001,
        "2001:db8::40".parse().unwrap(),
        80,
    ));
    let mut keys = Vec::new();
    let table = harness.dataplane.conn_table().expect("the tables");
    let seen = table
        .for_each(|key, _| keys.push(*key))
        .expect("reading the tables");
    assert_eq!(seen, 2, "{keys:?}");
    keys.sort_by_key(|k| k.sport);
    assert_eq!(keys[0].src, ipv4_mapped(client4.octets()));
    assert_eq!(keys[0].dst, ipv4_mapped([203, 0, 113, 40]));
    assert_eq!((keys[0].sport, keys[0].dport), (40_000, 80));
    assert_eq!(keys[1].src, client6.octets());
    assert_eq!(keys[1].sport, 40_001);
    // Each flow sits in its family's map: the IPv4 one with the 16-byte
    // key, the IPv6 one with the 40-byte key.
    let v4: Vec<FlowKeyV4> = harness
        .dataplane
        .conn_keys(lb_common::map_names::CONNS_V4)
        .expect("CONNS_V4");
    let v6: Vec<FlowKey> = harness
        .dataplane
        .conn_keys(lb_common::map_names::CONNS)
        .expect("CONNS");
    assert_eq!(v4, vec![keys[0].narrow().unwrap()]);
    assert_eq!(v6, vec![keys[1]]);
}

const TINY: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: pair4, vip: 203.0.113.40, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }
dataplane: { ring_size: 1009, connection_table_size: 64 }
";

/// A walk of the table as the controller's reconciliation makes one: its
/// key fingerprints and the flows scheduled by then.
fn census(harness: &Harness) -> Census {
    let table = harness.dataplane.conn_table().expect("CONNS");
    let (_, walked) = table
        .walk(lb::dataplane::monotonic_ns(), u64::MAX, u64::MAX)
        .expect("reading CONNS");
    Census::of(
        walked,
        harness.dataplane.scheduled_flows().expect("counters"),
    )
}

/// A table of 64 entries flooded with 1,000 flows: every new flow is still
/// forwarded, an established flow used all along keeps its entry (and
/// backend), evicted flows are rescheduled, and the controller's estimate
/// brackets the evictions the flood caused.
#[test]
fn a_flooded_table_serves_new_flows_and_estimates_its_evictions() {
    let harness = Harness::new(TINY);
    let vip = Ipv4Addr::new(203, 0, 113, 40);
    let backends = [backend_mac(21), backend_mac(22)];
    let scheduled = || {
        harness
            .dataplane
            .service_traffic(harness.planner.planned()[0].value.id)
            .expect("counters")
    };
    let forward = |frame: &[u8]| {
        let outcome = harness.run(frame);
        assert_eq!(outcome.action, Action::Redirect, "{frame:02x?}");
        assert_eq!(
            outcome.frame.len(),
            frame.len(),
            "dsr keeps the frame's size"
        );
        assert_eq!(outcome.frame[12..], frame[12..], "dsr keeps the packet");
        let mac: [u8; 6] = outcome.frame[..6].try_into().unwrap();
        assert!(backends.contains(&mac), "to a backend: {mac:02x?}");
        mac
    };

    let kept = frames::tcp4(Ipv4Addr::new(198, 51, 100, 250), 5000, vip, 80);
    let kept_backend = forward(&kept);
    let mut evictions = Evictions::default();
    let first = census(&harness);
    let entries_first = first.entries();
    evictions.record(first);
    let flood = |n: u16| {
        let client = Ipv4Addr::new(198, 51, 100, u8::try_from(n % 200).unwrap() + 1);
        frames::tcp4(client, 1024 + n, vip, 80)
    };
    let flows: u16 = 1000;
    let before = scheduled();
    let mut bytes = 0;
    for n in 0..flows {
        let frame = flood(n);
        forward(&frame);
        bytes += frame.len() as u64;
        if n % 10 == 9 {
            let opened = scheduled().new_flows;
            assert_eq!(forward(&kept), kept_backend, "after {n} flows");
            bytes += kept.len() as u64;
            assert_eq!(
                scheduled().new_flows,
                opened,
                "the established flow was rescheduled after {n} new flows"
            );
        }
        if n % 100 == 99 {
            evictions.record(census(&harness));
        }
    }
    let after = scheduled();
    assert_eq!(after.new_flows - before.new_flows, u64::from(flows));
    assert_eq!(after.bytes - before.bytes, bytes, "every byte forwarded");

    let report = evictions.report(64);
    let entries = report.entries.expect("walked");
    println!("{report:?}");
    assert!(entries <= 64, "{report:?}");
    // Nothing was rescheduled in place, so the upper bound is exact: the
    // flood's inserts minus what the table grew by.
    assert_eq!(
        report.evictions_at_most,
        u64::from(flows) + entries_first - entries,
        "{report:?}"
    );
    // Ten walks 100 flows apart, each after the table had turned over:
    // most of the previous walk's entries were seen gone.
    assert!(
        report.evictions_at_least >= 9 * 32
            && report.evictions_at_least <= report.evictions_at_most,
        "{report:?}"
    );

    // The first flood flow was evicted long ago: it is scheduled afresh.
    let opened = scheduled().new_flows;
    forward(&flood(0));
    assert_eq!(
        scheduled().new_flows,
        opened + 1,
        "an evicted flow is rescheduled"
    );
}

/// A table of 64 entries with four idle established flows (SYN, then
/// ACK: the kernel's LRU saw each entry used twice) and a flood of 5,000
/// bare SYNs from other sources: the flood's half-open entries evict one
/// another, never the established ones (the kernel's LRU moves an entry
/// found again to its active list; the flood refills only the inactive
/// one). Then 200 handshakes that complete: those do turn the established
/// entries over, and with `guard.attack` configured (which marks
/// half-open entries) the estimate counts the established evictions
/// apart.
#[test]
fn half_open_flows_do_not_evict_established_ones() {
    // One CPU: the kernel's LRU keeps free entries per CPU, and a thread
    // that moves between CPUs mid-flood spreads the table over their lists
    // (fewer entries resident, so fewer evictions seen between walks).
    lb_tests::testrun::pin_to_this_cpu();
    let config = format!("{TINY}guard:\n  attack: {{ new_flows_per_second: 100000 }}\n");
    let harness = Harness::new(&config);
    let vip = Ipv4Addr::new(203, 0, 113, 40);
    let client = Ipv4Addr::new(198, 51, 100, 250);
    let forward = |frame: Vec<u8>| assert_eq!(harness.run(&frame).action, Action::Redirect);
    for port in 5000..5004 {
        forward(frames::tcp4(client, port, vip, 80));
        forward(frames::tcp4_ack(client, port, vip, 80));
    }
    let established_left = || {
        let mut left = 0;
        harness
            .dataplane
            .conn_table()
            .expect("CONNS")
            .for_each(|key, _| {
                if (5000..5004).contains(&key.sport) {
                    left += 1;
                }
            })
            .expect("reading CONNS");
        left
    };
    let mut evictions = Evictions::default();
    evictions.record(census(&harness));
    let source = |n: u16| Ipv4Addr::new(198, 51, 100, u8::try_from(n % 200).unwrap() + 1);
    for n in 0..5000u16 {
        forward(frames::tcp4(source(n), 1024 + n, vip, 80));
        if n % 500 == 499 {
            evictions.record(census(&harness));
        }
    }
    let flooded = evictions.report(64);
    println!(
        "after 5,000 bare SYNs: {flooded:?}, established left {}",
        established_left()
    );
    assert_eq!(established_left(), 4, "{flooded:?}");
    assert!(flooded.evictions_at_least >= 400, "{flooded:?}");
    assert_eq!(flooded.established_evictions_at_least, 0, "{flooded:?}");

    for n in 0..200u16 {
        forward(frames::tcp4(source(n), 20_000 + n, vip, 80));
        forward(frames::tcp4_ack(source(n), 20_000 + n, vip, 80));
        if n % 20 == 19 {
            evictions.record(census(&harness));
        }
    }
    let turned = evictions.report(64);
    println!(
        "after 200 handshakes: {turned:?}, established left {}",
        established_left()
    );
    assert_eq!(established_left(), 0, "{turned:?}");
    assert!(
        turned.established_evictions_at_least >= 4
            && turned.established_evictions_at_least <= turned.evictions_at_least,
        "{turned:?}"
    );
}

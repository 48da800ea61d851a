//! The automatic guard (`guard.auto`) under `BPF_PROG_TEST_RUN`: the packet
//! that takes a source over a threshold of a VIP is dropped as
//! `drop_guard_auto`, and so is everything the source sends to any VIP
//! until the denial expires; other sources, and traffic that is not to a
//! VIP, are untouched.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb::guard::addr_ip;
use lb_common::{
    Reason,
    maps::{GUARD_CAUSE_NEW_FLOWS, GUARD_CAUSE_PACKETS, GUARD_CAUSE_SYN_ONLY},
};
use lb_tests::{
    frames,
    testrun::{Action, Harness},
};

const FLOODER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

fn config(auto: &str) -> String {
    format!(
        "instance: test
interfaces: [{{ name: lb0 }}]
services:
  - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
  - {{ name: dns, vip: 203.0.113.10, port: 53, protocol: udp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
  - {{ name: web2, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
  - {{ name: web6, vip: '2001:db8:ff::10', port: 80, protocol: tcp, forwarding: dsr, backends: [{{ address: '2001:db8::12' }}] }}
dataplane: {{ ring_size: 251 }}
guard:
  auto: {auto}
"
    )
}

/// The sources the data path denies, with the cause.
fn denied(harness: &Harness) -> Vec<(String, u32)> {
    harness
        .dataplane
        .guard_denials()
        .expect("read GUARD_DENIED")
        .iter()
        .map(|(source, denial)| (addr_ip(source).to_string(), denial.cause))
        .collect()
}

#[test]
fn the_syn_over_the_syn_only_threshold_is_dropped_and_its_source_denied_everywhere() {
    let harness = Harness::new(&config("{ syn_only_per_second: 3, deny_for: 60s }"));
    for port in 0..3 {
        let outcome = harness.run(&frames::tcp4(FLOODER, 30_000 + port, VIP, 80));
        assert_eq!(outcome.action, Action::Redirect, "SYN {port}");
    }
    assert!(denied(&harness).is_empty());
    let (outcome, moved) = harness.run_counted(&frames::tcp4(FLOODER, 30_003, VIP, 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    assert_eq!(
        denied(&harness),
        [(FLOODER.to_string(), GUARD_CAUSE_SYN_ONLY)]
    );
    // Denied: an established flow, another protocol, another VIP.
    for frame in [
        frames::tcp4_ack(FLOODER, 30_000, VIP, 80),
        frames::udp4(FLOODER, 40_000, VIP, 53),
        frames::tcp4(FLOODER, 30_000, OTHER_VIP, 80),
    ] {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Drop);
        assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    }
    // Not to a VIP: the stack's, as ever.
    let outcome = harness.run(&frames::tcp4(
        FLOODER,
        30_000,
        Ipv4Addr::new(192, 0, 2, 77),
        80,
    ));
    assert_eq!(outcome.action, Action::Pass);
    // Another source is unaffected.
    let (outcome, moved) = harness.run_counted(&frames::tcp4(CLIENT, 30_000, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
}

#[test]
fn syns_answered_by_acks_never_count_as_syn_only() {
    let harness = Harness::new(&config("{ syn_only_per_second: 2 }"));
    for port in 0..20 {
        for frame in [
            frames::tcp4(CLIENT, 30_000 + port, VIP, 80),
            frames::tcp4_ack(CLIENT, 30_000 + port, VIP, 80),
        ] {
            let outcome = harness.run(&frame);
            assert_eq!(outcome.action, Action::Redirect, "connection {port}");
        }
    }
    assert!(denied(&harness).is_empty());
}

#[test]
fn the_flow_over_the_new_flow_threshold_is_dropped_and_the_source_denied() {
    let harness = Harness::new(&config("{ new_flows_per_second: 4 }"));
    for port in 0..4 {
        let outcome = harness.run(&frames::udp4(FLOODER, 40_000 + port, VIP, 53));
        assert_eq!(outcome.action, Action::Redirect, "flow {port}");
    }
    // Packets of a flow already open are not new flows.
    let outcome = harness.run(&frames::udp4(FLOODER, 40_000, VIP, 53));
    assert_eq!(outcome.action, Action::Redirect);
    let (outcome, moved) = harness.run_counted(&frames::udp4(FLOODER, 40_004, VIP, 53));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    assert_eq!(
        denied(&harness),
        [(FLOODER.to_string(), GUARD_CAUSE_NEW_FLOWS)]
    );
    let (outcome, moved) = harness.run_counted(&frames::udp4(FLOODER, 40_000, VIP, 53));
    assert_eq!(outcome.action, Action::Drop, "established flows too");
    assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    // The controller lets it in (`lb guard allow`): a denial started its
    // counts afresh, so even a new flow in the same second passes.
    let mut harness = harness;
    let source = lb_common::maps::ipv4_mapped(FLOODER.octets());
    harness.dataplane.remove_guard_denial(&source).unwrap();
    assert!(denied(&harness).is_empty());
    let (outcome, moved) = harness.run_counted(&frames::udp4(FLOODER, 40_005, VIP, 53));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
}

#[test]
fn the_packet_over_the_packet_threshold_is_dropped_and_the_denial_expires() {
    let harness = Harness::new(&config("{ packets_per_second: 5, deny_for: 1s }"));
    let frame = frames::udp4(FLOODER, 40_000, VIP, 53);
    for n in 0..5 {
        assert_eq!(harness.run(&frame).action, Action::Redirect, "packet {n}");
    }
    let (outcome, moved) = harness.run_counted(&frame);
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    assert_eq!(
        denied(&harness),
        [(FLOODER.to_string(), GUARD_CAUSE_PACKETS)]
    );
    // The expiry is the feature: one denial of 1 s, then the source is
    // welcome again (with a fresh window) and its entry gone.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (outcome, moved) = harness.run_counted(&frame);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    assert!(denied(&harness).is_empty());
}

#[test]
fn without_guard_auto_nothing_is_counted_or_denied() {
    let harness = Harness::new(&config("null"));
    for port in 0..50 {
        let outcome = harness.run(&frames::tcp4(FLOODER, 30_000 + port, VIP, 80));
        assert_eq!(outcome.action, Action::Redirect, "SYN {port}");
    }
    assert!(denied(&harness).is_empty());
}

#[test]
fn ipv6_sources_are_counted_and_denied_alike() {
    let harness = Harness::new(&config("{ syn_only_per_second: 2 }"));
    let flooder: Ipv6Addr = "2001:db8:1::66".parse().unwrap();
    let vip: Ipv6Addr = "2001:db8:ff::10".parse().unwrap();
    for port in 0..2 {
        let outcome = harness.run(&frames::tcp6(flooder, 30_000 + port, vip, 80));
        assert_eq!(outcome.action, Action::Redirect, "SYN {port}");
    }
    let (outcome, moved) = harness.run_counted(&frames::tcp6(flooder, 30_002, vip, 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropGuardAuto, 1)].into());
    assert_eq!(
        denied(&harness),
        [(flooder.to_string(), GUARD_CAUSE_SYN_ONLY)]
    );
    // An IPv4 source is another source.
    let outcome = harness.run(&frames::tcp4(CLIENT, 30_000, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
}

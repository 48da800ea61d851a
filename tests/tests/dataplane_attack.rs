//! `guard.attack`'s admission under `BPF_PROG_TEST_RUN` (DESIGN.md §2.3):
//! while a VIP is marked under attack, a bare SYN opening a new flow is
//! dropped (`drop_attack_unverified`) unless its source proved itself; the
//! same tuple's SYN again 0.5 to 3 s later (the TCP retransmission) proves
//! it (a repeat with another sequence number does not), is forwarded, and
//! the source then passes at once on other ports.
//! Established flows never reach the check; an unmarked VIP and an
//! unconfigured guard change nothing. The counters the controller judges
//! attacks by count bare-SYN flows and those that went on.

use std::net::Ipv4Addr;

use lb_common::{Reason, attack::AttackVip, maps::ipv4_mapped};
use lb_tests::{
    frames,
    testrun::{Action, Harness},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const SPOOFED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

fn config(attack: &str) -> String {
    format!(
        "instance: test
interfaces: [{{ name: lb0 }}]
services:
  - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
  - {{ name: web2, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
dataplane: {{ ring_size: 251 }}
{attack}"
    )
}

const ATTACK: &str = "guard:\n  attack: { new_flows_per_second: 1000 }\n";

/// Marks `vip` under attack, as the controller does.
fn mark(harness: &mut Harness, vip: Ipv4Addr) {
    harness
        .dataplane
        .set_attack_vip(
            &ipv4_mapped(vip.octets()),
            &AttackVip {
                verified_ns: 600_000_000_000,
                since_ns: 1,
            },
        )
        .expect("mark the VIP");
}

/// Moves every pending SYN back in time by `ns`, as if that long had
/// passed since it was seen.
fn age_pending(harness: &mut Harness, ns: u64) {
    let pending = harness.dataplane.attack_pending().expect("read pending");
    assert!(!pending.is_empty(), "a SYN is pending");
    for (key, seen) in pending {
        harness
            .dataplane
            .set_attack_pending(key, seen.checked_sub(ns).expect("uptime"))
            .expect("age the entry");
    }
}

#[test]
fn under_attack_a_first_syn_is_dropped_and_its_retransmission_proves_the_source() {
    let mut harness = Harness::new(&config(ATTACK));
    mark(&mut harness, VIP);
    let syn = frames::tcp4(SPOOFED, 40_000, VIP, 80);
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
    // A repeat at once (not a retransmission) proves nothing.
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
    assert!(harness.dataplane.attack_verified().unwrap().is_empty());
    // The retransmission, a second later: forwarded, the source proven.
    age_pending(&mut harness, 1_000_000_000);
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    let verified = harness.dataplane.attack_verified().unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].0, ipv4_mapped(SPOOFED.octets()));
    // Proven: its other connections open at once, to any VIP.
    for (port, vip) in [(40_001, VIP), (40_002, OTHER_VIP)] {
        mark(&mut harness, vip);
        let (outcome, moved) = harness.run_counted(&frames::tcp4(SPOOFED, port, vip, 80));
        assert_eq!(outcome.action, Action::Redirect, "port {port}");
        assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    }
    // Another unknown source still is not.
    let (outcome, _) = harness.run_counted(&frames::tcp4(CLIENT, 40_000, VIP, 80));
    assert_eq!(outcome.action, Action::Drop);
}

/// A retransmission repeats the first SYN's sequence number; a spoofer's
/// repeat of the tuple with another one proves nothing.
#[test]
fn a_syn_of_the_same_tuple_with_another_sequence_number_is_no_retransmission() {
    let mut harness = Harness::new(&config(ATTACK));
    mark(&mut harness, VIP);
    assert_eq!(
        harness
            .run(&frames::tcp4_seq(SPOOFED, 40_000, VIP, 80, 7))
            .action,
        Action::Drop
    );
    age_pending(&mut harness, 1_000_000_000);
    let (outcome, moved) = harness.run_counted(&frames::tcp4_seq(SPOOFED, 40_000, VIP, 80, 8));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
    assert!(harness.dataplane.attack_verified().unwrap().is_empty());
    // The real retransmission (sequence number 7) still proves it.
    assert_eq!(
        harness
            .run(&frames::tcp4_seq(SPOOFED, 40_000, VIP, 80, 7))
            .action,
        Action::Redirect
    );
}

#[test]
fn a_syn_seen_again_after_the_window_starts_over() {
    let mut harness = Harness::new(&config(ATTACK));
    mark(&mut harness, VIP);
    let syn = frames::tcp4(SPOOFED, 40_000, VIP, 80);
    assert_eq!(harness.run(&syn).action, Action::Drop);
    age_pending(&mut harness, 4_000_000_000);
    assert_eq!(
        harness.run(&syn).action,
        Action::Drop,
        "too late: a first SYN"
    );
    age_pending(&mut harness, 1_000_000_000);
    assert_eq!(
        harness.run(&syn).action,
        Action::Redirect,
        "its retransmission"
    );
}

#[test]
fn established_flows_pass_and_an_unmarked_vip_is_untouched() {
    let mut harness = Harness::new(&config(ATTACK));
    // Opened before the attack.
    assert_eq!(
        harness.run(&frames::tcp4(CLIENT, 50_000, VIP, 80)).action,
        Action::Redirect
    );
    mark(&mut harness, VIP);
    // Its packets, a repeated SYN of its tuple included, never meet the
    // admission (which would drop that SYN: its source is not proven).
    for frame in [
        frames::tcp4(CLIENT, 50_000, VIP, 80),
        frames::tcp4_ack(CLIENT, 50_000, VIP, 80),
        frames::tcp4_ack(CLIENT, 50_000, VIP, 80),
    ] {
        let (outcome, moved) = harness.run_counted(&frame);
        assert_eq!(outcome.action, Action::Redirect);
        assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    }
    // The other VIP is not under attack: a new SYN opens at once.
    let (outcome, moved) = harness.run_counted(&frames::tcp4(SPOOFED, 40_000, OTHER_VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    assert!(harness.dataplane.attack_pending().unwrap().is_empty());
}

#[test]
fn without_guard_attack_a_marked_vip_changes_nothing() {
    let mut harness = Harness::new(&config(""));
    mark(&mut harness, VIP);
    let (outcome, moved) = harness.run_counted(&frames::tcp4(SPOOFED, 40_000, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    let id = harness.planner.planned()[0].value.id;
    assert_eq!(
        harness.dataplane.attack_counts(id).unwrap().new_flows,
        0,
        "nothing counted"
    );
}

#[test]
fn the_counters_tell_half_open_flows_from_completed_ones() {
    let harness = Harness::new(&config(ATTACK));
    let id = harness.planner.planned()[0].value.id;
    // Three handshakes that go on, five bare SYNs that do not, one flow
    // that begins with an ACK (no SYN: a new flow, not a half-open one).
    for port in 0..3 {
        harness.run(&frames::tcp4(CLIENT, 41_000 + port, VIP, 80));
        harness.run(&frames::tcp4_ack(CLIENT, 41_000 + port, VIP, 80));
        harness.run(&frames::tcp4_ack(CLIENT, 41_000 + port, VIP, 80));
    }
    for port in 0..5 {
        harness.run(&frames::tcp4(SPOOFED, 42_000 + port, VIP, 80));
    }
    harness.run(&frames::tcp4_ack(CLIENT, 43_000, VIP, 80));
    let counts = harness.dataplane.attack_counts(id).unwrap();
    assert_eq!(counts.new_flows, 9);
    assert_eq!(counts.syns, 8);
    assert_eq!(counts.completed, 3);
}

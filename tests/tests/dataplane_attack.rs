//! `guard.attack`'s admission under `BPF_PROG_TEST_RUN` (docs/DESIGN.md §2.3):
//! while a VIP is marked under attack, a bare SYN opening a new flow is
//! dropped (`drop_attack_unverified`) unless its source proved itself; the
//! same tuple's SYN again 0.5 to 3 s later (the TCP retransmission) proves
//! it (a repeat with another sequence number does not), is forwarded, and
//! the source then passes at once on other ports.
//! Established flows never reach the check; an unmarked VIP and an
//! unconfigured guard change nothing. The counters the controller judges
//! attacks by count bare-SYN flows and those that went on.

use std::net::Ipv4Addr;

use lb::route::Tables as _;
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
  - {{ name: dns, vip: 203.0.113.10, port: 53, protocol: udp, forwarding: dsr, backends: [{{ address: 192.0.2.12 }}] }}
dataplane: {{ ring_size: 251 }}
{attack}"
    )
}

const ATTACK: &str = "guard:\n  attack: { new_flows_per_second: 1000 }\n";

/// Marks `vip` under attack, as the controller does, with budgets too
/// large to matter.
fn mark(harness: &mut Harness, vip: Ipv4Addr) {
    mark_with(harness, vip, 1_000, 1_000);
}

/// Marks `vip` under attack with these per-CPU budgets: unknown UDP
/// sources' new flows a second, and one proven source's.
fn mark_with(harness: &mut Harness, vip: Ipv4Addr, unknown_budget: u32, source_budget: u32) {
    harness
        .dataplane
        .set_attack_vip(
            &ipv4_mapped(vip.octets()),
            &AttackVip {
                verified_ns: 600_000_000_000,
                since_ns: 1,
                unknown_budget,
                source_budget,
            },
        )
        .expect("mark the VIP");
}

/// Moves every pending SYN back in time by `ns`, as if that long had
/// passed since it was seen.
fn age_pending(harness: &mut Harness, ns: u64) {
    let pending = harness.dataplane.attack_pending().expect("read pending");
    assert!(!pending.is_empty(), "a SYN is pending");
    for (slot, value) in pending {
        harness
            .dataplane
            .set_attack_pending(slot, lb_common::attack::pending_aged(value, ns))
            .expect("age the slot");
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
    // Opened before the attack: a SYN, then an ACK (the handshake went on).
    for frame in [
        frames::tcp4(CLIENT, 50_000, VIP, 80),
        frames::tcp4_ack(CLIENT, 50_000, VIP, 80),
    ] {
        assert_eq!(harness.run(&frame).action, Action::Redirect);
    }
    // The verified entry its handshake wrote goes: the flow must pass on
    // its connection-table entry alone.
    harness.dataplane.clear_attack_verified().unwrap();
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

/// A half-open entry from before the attack (a bare SYN, nothing after it:
/// a spoofed SYN that won an entry before the attack was detected) proves
/// nothing: under attack a SYN on its tuple meets the admission — dropped,
/// and its retransmission proves the source and keeps the entry's backend.
#[test]
fn under_attack_a_syn_on_a_half_open_entry_meets_the_admission() {
    let mut harness = Harness::new(&config(ATTACK));
    let syn = frames::tcp4(SPOOFED, 51_000, VIP, 80);
    let before = harness.run(&syn);
    assert_eq!(before.action, Action::Redirect);
    mark(&mut harness, VIP);
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
    age_pending(&mut harness, 1_000_000_000);
    let (outcome, moved) = harness.run_counted(&syn);
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    assert_eq!(outcome.frame[..6], before.frame[..6], "the same backend");
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

/// A source whose handshake completed before the attack (its SYN, then
/// its ACK) is proven: under attack its new connections open at once.
#[test]
fn a_completed_handshake_proves_its_source() {
    let mut harness = Harness::new(&config(ATTACK));
    harness.run(&frames::tcp4(CLIENT, 44_000, VIP, 80));
    assert!(
        harness.dataplane.attack_verified().unwrap().is_empty(),
        "a bare SYN proves nothing"
    );
    harness.run(&frames::tcp4_ack(CLIENT, 44_000, VIP, 80));
    let verified = harness.dataplane.attack_verified().unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].0, ipv4_mapped(CLIENT.octets()));
    mark(&mut harness, VIP);
    let (outcome, moved) = harness.run_counted(&frames::tcp4(CLIENT, 44_001, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    // A source that sent only SYNs is not.
    harness.run(&frames::tcp4(SPOOFED, 44_000, OTHER_VIP, 80));
    let (outcome, moved) = harness.run_counted(&frames::tcp4(SPOOFED, 44_001, VIP, 80));
    assert_eq!(outcome.action, Action::Drop);
    assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
}

/// A proven source (a spoofer using a known client's address, say) opens
/// at most `source_budget` new flows a second to VIPs under attack.
#[test]
fn a_proven_source_opens_no_more_than_its_budget() {
    let mut harness = Harness::new(&config(ATTACK));
    harness.run(&frames::tcp4(CLIENT, 45_000, VIP, 80));
    harness.run(&frames::tcp4_ack(CLIENT, 45_000, VIP, 80));
    mark_with(&mut harness, VIP, 1_000, 3);
    let actions: Vec<Action> = (1..=5)
        .map(|port| {
            harness
                .run(&frames::tcp4(CLIENT, 45_000 + port, VIP, 80))
                .action
        })
        .collect();
    // The test runs take well under the second the budget counts in; a
    // second boundary between them could let one more through.
    let passed = actions.iter().filter(|a| **a == Action::Redirect).count();
    assert!((3..=4).contains(&passed), "{actions:?}");
    assert_eq!(actions[..3], [Action::Redirect; 3], "{actions:?}");
    // Its established flow goes on regardless.
    let (outcome, _) = harness.run_counted(&frames::tcp4_ack(CLIENT, 45_000, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
}

/// UDP under attack: unknown sources share the service's budget; a source
/// whose UDP flow went on (a datagram a second or more after its first)
/// before the attack passes beyond it; two datagrams a moment apart prove
/// nothing (a flood over a narrow range repeats tuples), and during the
/// attack every datagram of an unknown source's flow takes from the
/// budget.
#[test]
fn under_attack_unknown_udp_sources_share_a_budget_and_known_ones_pass() {
    let mut harness = Harness::new(&config(ATTACK));
    let repeated = Ipv4Addr::new(198, 51, 100, 60);
    for _ in 0..2 {
        harness.run(&frames::udp4(repeated, 46_000, VIP, 53));
    }
    assert!(
        harness.dataplane.attack_verified().unwrap().is_empty(),
        "two datagrams at once"
    );
    harness.run(&frames::udp4(CLIENT, 46_000, VIP, 53));
    started_ago(&mut harness, CLIENT, 46_000, 2_000_000_000);
    harness.run(&frames::udp4(CLIENT, 46_000, VIP, 53));
    let verified = harness.dataplane.attack_verified().unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].0, ipv4_mapped(CLIENT.octets()));
    mark_with(&mut harness, VIP, 4, 1_000);
    let unknown: Vec<Action> = (0..10u8)
        .map(|i| {
            let source = Ipv4Addr::new(198, 51, 100, 100 + i);
            harness.run(&frames::udp4(source, 46_000, VIP, 53)).action
        })
        .collect();
    // One shared counter a second: a second boundary between the runs
    // could let up to four more through.
    let passed = unknown.iter().filter(|a| **a == Action::Redirect).count();
    assert!((4..=8).contains(&passed), "{unknown:?}");
    assert_eq!(unknown[..4], [Action::Redirect; 4], "{unknown:?}");
    // The known source's new flows pass with the budget spent.
    for port in 46_001..46_004 {
        let (outcome, moved) = harness.run_counted(&frames::udp4(CLIENT, port, VIP, 53));
        assert_eq!(outcome.action, Action::Redirect, "port {port}");
        assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    }
    if passed == 4 {
        // Spent: a new unknown source, and the next datagram of an
        // admitted one (its entry is half-open), are dropped; the entry
        // the repeated source won before the attack proves nothing either.
        for source in [
            Ipv4Addr::new(198, 51, 100, 120),
            Ipv4Addr::new(198, 51, 100, 100),
            repeated,
        ] {
            let (outcome, moved) = harness.run_counted(&frames::udp4(source, 46_000, VIP, 53));
            assert_eq!(outcome.action, Action::Drop, "{source}");
            assert_eq!(moved, [(Reason::DropAttackUnverified, 1)].into());
        }
    }
    assert_eq!(
        harness.dataplane.attack_verified().unwrap().len(),
        1,
        "only the source known before the attack"
    );
}

/// Moves the `CONNS_V4` entry of `source:port` → the VIP's port 53 (UDP)
/// back in time by `ns`, as if its flow had begun that long ago.
fn started_ago(harness: &mut Harness, source: Ipv4Addr, port: u16, ns: u64) {
    let key = lb_common::FlowKeyV4 {
        src: source.octets(),
        dst: VIP.octets(),
        sport: port,
        dport: 53,
        proto: 17,
        pad: [0; 3],
    };
    let mut entry = lb::route::maps::MapTables::new(&harness.dataplane)
        .conn(&key.widen())
        .expect("read the connection table")
        .expect("the flow's entry");
    entry.last_seen_ns = entry.last_seen_ns.checked_sub(ns).expect("uptime");
    harness
        .dataplane
        .write_conn(lb_common::map_names::CONNS_V4, &key, &entry)
        .expect("write the entry");
}

/// A proven source's young UDP flow (half-open: less than a second old)
/// under attack: each further datagram passes without taking from the
/// source's budget, which counts new flows only.
#[test]
fn a_proven_sources_young_udp_flow_does_not_spend_its_budget() {
    let mut harness = Harness::new(&config(ATTACK));
    harness.run(&frames::tcp4(CLIENT, 47_000, VIP, 80));
    harness.run(&frames::tcp4_ack(CLIENT, 47_000, VIP, 80));
    mark_with(&mut harness, VIP, 0, 2);
    for n in 0..6 {
        let (outcome, moved) = harness.run_counted(&frames::udp4(CLIENT, 47_001, VIP, 53));
        assert_eq!(outcome.action, Action::Redirect, "datagram {n}");
        assert_eq!(moved, [(Reason::ForwardToBackend, 1)].into());
    }
    // Its budget still has room for one more new flow.
    let (outcome, _) = harness.run_counted(&frames::udp4(CLIENT, 47_002, VIP, 53));
    assert_eq!(outcome.action, Action::Redirect);
}

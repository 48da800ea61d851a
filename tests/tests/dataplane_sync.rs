//! Connection sync's side of the data path under `BPF_PROG_TEST_RUN`: with
//! `SETTINGS_SYNC` set, each flow the program schedules is reported to
//! `SYNC_EVENTS` with its key and backend, and so is each flow whose entry
//! a FIN or RST marks closed (once); the other packets of an established
//! flow, and everything while the flag is clear, report nothing.

use std::net::Ipv4Addr;

use lb::route::Tables as _;
use lb_common::maps::{
    CONN_CLOSED, SETTINGS_SYNC, SYNC_CLOSED, SYNC_OPENED, SyncEvent, ipv4_mapped,
};
use lb_tests::{
    frames,
    testrun::{Action, Harness},
};

const CONFIG: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: rr, vip: 203.0.113.50, port: 80, protocol: tcp, scheduler: round-robin, forwarding: dsr, backends: [{ address: 192.0.2.21 }, { address: 192.0.2.22 }] }
dataplane: { ring_size: 251 }
";

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);

fn set_sync(harness: &mut Harness, on: bool) {
    let mut settings = lb::route::maps::MapTables::new(&harness.dataplane)
        .settings()
        .expect("read the settings");
    if on {
        settings.flags |= SETTINGS_SYNC;
    } else {
        settings.flags &= !SETTINGS_SYNC;
    }
    harness
        .dataplane
        .set_settings(&settings)
        .expect("write the settings");
}

#[test]
fn scheduled_flows_are_reported_while_sync_is_on() {
    let mut harness = Harness::new(CONFIG);
    let mut sync = harness.dataplane.take_sync().expect("the sync ring");
    // Off: nothing.
    assert_eq!(
        harness.run(&frames::tcp4(CLIENT, 1000, VIP, 80)).action,
        Action::Redirect
    );
    assert_eq!(sync.drain(), []);

    set_sync(&mut harness, true);
    let mut expected = Vec::new();
    for port in [2000, 2001] {
        assert_eq!(
            harness.run(&frames::tcp4(CLIENT, port, VIP, 80)).action,
            Action::Redirect
        );
        let key = lb_common::FlowKey {
            src: ipv4_mapped(CLIENT.octets()),
            dst: ipv4_mapped(VIP.octets()),
            sport: port,
            dport: 80,
            proto: 6,
            pad: [0; 3],
        };
        let backend_id = lb::route::maps::MapTables::new(&harness.dataplane)
            .conn(&key)
            .expect("read the connection table")
            .expect("the flow's entry")
            .backend_id;
        expected.push(SyncEvent {
            flow: key,
            backend_id,
            kind: SYNC_OPENED,
        });
    }
    assert_ne!(
        expected[0].backend_id, expected[1].backend_id,
        "round robin: two backends"
    );
    // Packets of the established flows report nothing more.
    for port in [2000, 2001] {
        assert_eq!(
            harness.run(&frames::tcp4_ack(CLIENT, port, VIP, 80)).action,
            Action::Redirect
        );
    }
    assert_eq!(sync.drain(), expected);
    assert_eq!(sync.lost().expect("read SYNC_LOST"), 0);

    set_sync(&mut harness, false);
    assert_eq!(
        harness.run(&frames::tcp4(CLIENT, 3000, VIP, 80)).action,
        Action::Redirect
    );
    assert_eq!(sync.drain(), []);
}

/// A TCP FIN (with ACK) over IPv4: the client ends its connection.
fn tcp4_fin(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = frames::eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1001, 64240)
        .ack(1)
        .fin();
    let mut frame = Vec::with_capacity(builder.size(frames::PAYLOAD.len()));
    builder
        .write(&mut frame, frames::PAYLOAD)
        .expect("write frame");
    frame
}

fn key4(port: u16) -> lb_common::FlowKey {
    lb_common::FlowKey {
        src: ipv4_mapped(CLIENT.octets()),
        dst: ipv4_mapped(VIP.octets()),
        sport: port,
        dport: 80,
        proto: 6,
        pad: [0; 3],
    }
}

/// The FIN of an established IPv4 flow (the fast path, which keys the flow
/// by its `CONNS_V4` key only) is reported closed, with the flow's full key
/// and backend, exactly once: a second FIN finds the entry closed. Without
/// `SETTINGS_SYNC` a FIN reports nothing.
#[test]
fn a_fin_reports_the_close_once_while_sync_is_on() {
    let mut harness = Harness::new(CONFIG);
    let mut sync = harness.dataplane.take_sync().expect("the sync ring");
    // Off: a flow opened and closed reports nothing.
    for frame in [
        frames::tcp4(CLIENT, 5000, VIP, 80),
        tcp4_fin(CLIENT, 5000, VIP, 80),
    ] {
        assert_eq!(harness.run(&frame).action, Action::Redirect);
    }
    assert_eq!(sync.drain(), []);

    set_sync(&mut harness, true);
    assert_eq!(
        harness.run(&frames::tcp4(CLIENT, 5001, VIP, 80)).action,
        Action::Redirect
    );
    let conn = |harness: &Harness| {
        lb::route::maps::MapTables::new(&harness.dataplane)
            .conn(&key4(5001))
            .expect("read the connection table")
            .expect("the flow's entry")
    };
    let backend_id = conn(&harness).backend_id;
    let opened = SyncEvent {
        flow: key4(5001),
        backend_id,
        kind: SYNC_OPENED,
    };
    assert_eq!(sync.drain(), [opened]);
    assert_eq!(
        harness.run(&frames::tcp4_ack(CLIENT, 5001, VIP, 80)).action,
        Action::Redirect
    );
    assert_eq!(sync.drain(), [], "a packet of the flow");
    for _ in 0..2 {
        assert_eq!(
            harness.run(&tcp4_fin(CLIENT, 5001, VIP, 80)).action,
            Action::Redirect
        );
    }
    assert_ne!(conn(&harness).flags & CONN_CLOSED, 0, "the entry is closed");
    assert_eq!(
        sync.drain(),
        [SyncEvent {
            kind: SYNC_CLOSED,
            ..opened
        }],
        "one close for two FINs"
    );
    assert_eq!(sync.lost().expect("read SYNC_LOST"), 0);
}

/// A flow whose first packet here is a FIN (its earlier packets went
/// through another balancer) is scheduled with its entry closed and
/// reported opened, then closed: the peers that install it open learn of
/// the close too. Its next FIN reports nothing more.
#[test]
fn a_flow_first_seen_by_its_fin_is_reported_opened_then_closed() {
    let mut harness = Harness::new(CONFIG);
    let mut sync = harness.dataplane.take_sync().expect("the sync ring");
    set_sync(&mut harness, true);
    assert_eq!(
        harness.run(&tcp4_fin(CLIENT, 6000, VIP, 80)).action,
        Action::Redirect
    );
    let conn = lb::route::maps::MapTables::new(&harness.dataplane)
        .conn(&key4(6000))
        .expect("read the connection table")
        .expect("the flow's entry");
    assert_ne!(conn.flags & CONN_CLOSED, 0, "the entry is closed");
    let opened = SyncEvent {
        flow: key4(6000),
        backend_id: conn.backend_id,
        kind: SYNC_OPENED,
    };
    assert_eq!(
        sync.drain(),
        [
            opened,
            SyncEvent {
                kind: SYNC_CLOSED,
                ..opened
            }
        ]
    );
    assert_eq!(
        harness.run(&tcp4_fin(CLIENT, 6000, VIP, 80)).action,
        Action::Redirect
    );
    assert_eq!(sync.drain(), [], "the second FIN");
    assert_eq!(sync.lost().expect("read SYNC_LOST"), 0);
}

/// A bare SYN on a closed tuple opens a new flow on it: the entry, still
/// in the table, is rewritten in place (open, its time renewed, the
/// scheduler's backend), reported opened once, and the flow's next
/// packet goes the established way to that backend.
#[test]
fn a_syn_reopening_a_closed_tuple_rewrites_its_entry_open() {
    let mut harness = Harness::new(CONFIG);
    let mut sync = harness.dataplane.take_sync().expect("the sync ring");
    set_sync(&mut harness, true);
    let conn = |harness: &Harness| {
        lb::route::maps::MapTables::new(&harness.dataplane)
            .conn(&key4(7000))
            .expect("read the connection table")
            .expect("the flow's entry")
    };
    for frame in [
        frames::tcp4(CLIENT, 7000, VIP, 80),
        tcp4_fin(CLIENT, 7000, VIP, 80),
    ] {
        assert_eq!(harness.run(&frame).action, Action::Redirect);
    }
    let closed = conn(&harness);
    assert_ne!(closed.flags & CONN_CLOSED, 0, "the entry is closed");
    let entries = harness
        .dataplane
        .conn_keys::<lb_common::maps::FlowKeyV4>(lb_common::map_names::CONNS_V4)
        .expect("keys")
        .len();
    sync.drain();
    assert_eq!(
        harness.run(&frames::tcp4(CLIENT, 7000, VIP, 80)).action,
        Action::Redirect
    );
    let reopened = conn(&harness);
    assert_eq!(reopened.flags & CONN_CLOSED, 0, "the entry is open again");
    assert!(reopened.last_seen_ns >= closed.last_seen_ns);
    assert_eq!(
        harness
            .dataplane
            .conn_keys::<lb_common::maps::FlowKeyV4>(lb_common::map_names::CONNS_V4)
            .expect("keys")
            .len(),
        entries,
        "the same entry, rewritten"
    );
    assert_eq!(
        sync.drain(),
        [SyncEvent {
            flow: key4(7000),
            backend_id: reopened.backend_id,
            kind: SYNC_OPENED,
        }]
    );
    let (outcome, moved) = harness.run_counted(&frames::tcp4_ack(CLIENT, 7000, VIP, 80));
    assert_eq!(outcome.action, Action::Redirect);
    assert_eq!(moved, [(lb_common::Reason::ForwardToBackend, 1)].into());
    assert_eq!(conn(&harness), reopened, "the established way: untouched");
}

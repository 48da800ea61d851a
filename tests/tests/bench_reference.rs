//! The benchmark's reference balancer (`lb_ref_tunnel`, `lb_ref_nat`) does
//! the same work as lb on an established flow: for the same flow to the
//! same backend, its output frame is lb's, byte for byte. A ratio to it
//! (`cargo xtask bench`) compares like with like only if that holds.

use std::net::Ipv4Addr;

use lb_common::{
    maps::{RefKey, RefValue},
    program_names,
};
use lb_tests::{
    frames,
    testrun::{Action, Harness},
};

const CONFIG: &str = "\
instance: test
interfaces: [{ name: lb0 }]
services:
  - { name: nat4, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }] }
  - { name: tun4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
dataplane: { tunnel_source_v4: 198.51.100.128/28 }
";

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

/// lb's one-arm output for `frame` (arriving on `lb0`), which must be
/// `XDP_TX`.
fn lb_output(harness: &mut Harness, frame: &[u8]) -> Vec<u8> {
    let lb0 = lb::netlink::ifindex("lb0").expect("lb0");
    harness
        .dataplane
        .insert_iface(lb0, lb_tests::testrun::LB_MAC)
        .expect("register lb0");
    let outcome = harness.run_on(lb0, frame);
    assert_eq!(outcome.action, Action::Tx, "lb forwards one-arm by XDP_TX");
    outcome.frame
}

/// The reference's flow for `frame`'s tuple, to where lb sent it.
fn reference_flow(
    frame: &[u8],
    lb_out: &[u8],
    ip_at: usize,
    port_at: Option<usize>,
) -> (RefKey, RefValue) {
    let ip = &frame[14..];
    let out_ip = &lb_out[ip_at..];
    let key = RefKey {
        src: ip[12..16].try_into().unwrap(),
        dst: ip[16..20].try_into().unwrap(),
        ports: ip[20..24].try_into().unwrap(),
        proto: u32::from(ip[9]),
    };
    let value = RefValue {
        backend: out_ip[16..20].try_into().unwrap(),
        source: out_ip[12..16].try_into().unwrap(),
        port: port_at.map_or([0; 2], |at| lb_out[at..at + 2].try_into().unwrap()),
        pad: [0; 2],
        macs: lb_out[..12].try_into().unwrap(),
    };
    (key, value)
}

#[test]
fn the_reference_nat_writes_what_lb_writes() {
    let mut harness = Harness::new(CONFIG);
    let frame = frames::tcp4(CLIENT, 40000, Ipv4Addr::new(203, 0, 113, 10), 80);
    let lb_out = lb_output(&mut harness, &frame);
    // The destination port lb wrote: TCP's, 14 + 20 + 2.
    let (key, value) = reference_flow(&frame, &lb_out, 14, Some(36));
    assert_eq!(value.port, 8080u16.to_be_bytes(), "lb rewrote the port");
    harness
        .dataplane
        .set_reference_flow(&key, &value)
        .expect("the reference's flow");
    let reference = harness.run_program(program_names::REF_NAT, &frame);
    assert_eq!(reference.action, Action::Tx);
    assert_eq!(reference.frame, lb_out, "the same bytes as lb's nat");
}

#[test]
fn the_reference_tunnel_writes_what_lb_writes() {
    let mut harness = Harness::new(CONFIG);
    let frame = frames::tcp4(CLIENT, 40000, Ipv4Addr::new(203, 0, 113, 12), 80);
    let lb_out = lb_output(&mut harness, &frame);
    assert_eq!(lb_out.len(), frame.len() + 20, "an outer IPv4 header");
    let (key, value) = reference_flow(&frame, &lb_out, 14, None);
    harness
        .dataplane
        .set_reference_flow(&key, &value)
        .expect("the reference's flow");
    let reference = harness.run_program(program_names::REF_TUNNEL, &frame);
    assert_eq!(reference.action, Action::Tx);
    assert_eq!(reference.frame, lb_out, "the same bytes as lb's tunnel");
}

#[test]
fn the_reference_passes_what_it_does_not_know() {
    let mut harness = Harness::new(CONFIG);
    let frame = frames::tcp4(CLIENT, 40001, Ipv4Addr::new(203, 0, 113, 10), 80);
    for program in [program_names::REF_NAT, program_names::REF_TUNNEL] {
        let outcome = harness.run_program(program, &frame);
        assert_eq!(outcome.action, Action::Pass, "{program}: an unknown flow");
        assert_eq!(outcome.frame, frame, "{program}: untouched");
    }
    let arp = frames::arp_request(CLIENT, Ipv4Addr::new(203, 0, 113, 10));
    let outcome = harness.run_program(program_names::REF_NAT, &arp);
    assert_eq!(outcome.action, Action::Pass, "not IPv4");
}

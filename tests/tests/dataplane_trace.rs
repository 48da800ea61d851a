//! `lb trace`'s kernel side under `BPF_PROG_TEST_RUN`: with the trace flag
//! set, every verdict and output frame is what it is without it; the events
//! carry the decision (reason, action, 5-tuple, backend); the filters apply
//! in the kernel; and a flood is cut to the rate limit's burst, the rest
//! counted as lost rather than queued.

use std::net::Ipv4Addr;

use lb::controller::settings;
use lb_common::{
    Reason,
    maps::{SETTINGS_TRACE, ipv4_mapped},
    trace::{EVENT_BACKEND, EVENT_PORTS, TRACE_DROPS, TraceEvent, TraceSettings},
};
use lb_tests::{
    frames,
    testrun::{Harness, pin_to_this_cpu},
};

const CONFIG: &str = "\
instance: trace
interfaces: [{ name: lb0 }]
guard:
  deny: [198.51.100.240/28]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    forwarding: nat
    backends:
      - { address: 192.0.2.11, port: 8080 }
  - name: empty
    vip: 203.0.113.10
    port: 81
    protocol: tcp
    backends: []
dataplane:
  ring_size: 1009
  max_services: 8
  max_backends: 16
  connection_table_size: 4096
";

fn frames_to_check() -> Vec<(&'static str, Vec<u8>)> {
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let mut truncated = frames::tcp4(client, 40000, vip, 80);
    // An IPv4 header that claims more than the frame holds.
    truncated.truncate(14 + 20 + 8);
    vec![
        ("forward", frames::tcp4(client, 40000, vip, 80)),
        ("udp, no service", frames::udp4(client, 40000, vip, 80)),
        ("no backend", frames::tcp4(client, 40001, vip, 81)),
        (
            "denied",
            frames::tcp4(Ipv4Addr::new(198, 51, 100, 241), 40000, vip, 80),
        ),
        ("malformed", truncated),
        (
            "host",
            frames::tcp4(client, 40000, Ipv4Addr::new(192, 0, 2, 1), 22),
        ),
    ]
}

fn trace_on(harness: &mut Harness, trace: &TraceSettings) {
    harness
        .dataplane
        .set_trace_settings(trace)
        .expect("trace settings");
    let mut with_flag = settings(&harness.config);
    with_flag.flags |= SETTINGS_TRACE;
    harness
        .dataplane
        .set_settings(&with_flag)
        .expect("settings");
}

fn drain(kernel: &mut lb::trace::hub::Kernel) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    while let Some(item) = kernel.events.next() {
        assert_eq!(item.len(), std::mem::size_of::<TraceEvent>());
        // SAFETY: a whole TraceEvent written by the program; plain data.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    events
}

fn lost(kernel: &lb::trace::hub::Kernel) -> u64 {
    kernel
        .state
        .get(&0, 0)
        .expect("TRACE_STATE")
        .iter()
        .map(|s| s.lost)
        .sum()
}

#[test]
fn trace_changes_no_verdict_and_reports_each_decision() {
    let mut harness = Harness::new(CONFIG);
    // The rate limit is per CPU.
    pin_to_this_cpu();
    let mut kernel = harness.dataplane.take_trace().expect("trace maps");
    let frames = frames_to_check();
    let untraced: Vec<_> = frames.iter().map(|(_, f)| harness.run(f)).collect();
    assert!(drain(&mut kernel).is_empty(), "events without a trace");
    trace_on(&mut harness, &lb::trace::kernel_settings([]));
    for ((what, frame), before) in frames.iter().zip(&untraced) {
        assert_eq!(&harness.run(frame), before, "{what}: traced differs");
    }
    let events = drain(&mut kernel);
    let reasons: Vec<Reason> = events
        .iter()
        .map(|e| Reason::from_slot(e.reason).expect("a reason"))
        .collect();
    // Host traffic is not a decision: not traced.
    assert_eq!(
        reasons,
        [
            Reason::ForwardToBackend,
            Reason::PassNoService,
            Reason::DropNoBackend,
            Reason::DropDenied,
            Reason::DropMalformedIpv4,
        ]
    );
    let forward = &events[0];
    assert_eq!(forward.flags, EVENT_BACKEND | EVENT_PORTS);
    assert_eq!(forward.backend, ipv4_mapped([192, 0, 2, 11]));
    assert_eq!(forward.backend_port, 8080);
    assert_eq!(forward.src, ipv4_mapped([198, 51, 100, 7]));
    assert_eq!((forward.sport, forward.dport), (40000, 80));
    assert_eq!(forward.action, 4, "redirect");
    assert_eq!(events[2].flags & EVENT_BACKEND, 0, "no backend chosen");
    assert_eq!(events[4].flags & EVENT_PORTS, 0, "malformed: no ports");
    assert_eq!(lost(&kernel), 0);

    // Drops only, in the kernel.
    trace_on(
        &mut harness,
        &TraceSettings {
            flags: TRACE_DROPS,
            ..lb::trace::kernel_settings([])
        },
    );
    for (_, frame) in &frames {
        harness.run(frame);
    }
    let drops: Vec<Reason> = drain(&mut kernel)
        .iter()
        .map(|e| Reason::from_slot(e.reason).expect("a reason"))
        .collect();
    assert!(drops.iter().all(|r| r.is_drop()), "{drops:?}");
    assert_eq!(drops.len(), 3, "{drops:?}");

    // A flood: one event a second, bursts of nine more (and a half).
    trace_on(
        &mut harness,
        &TraceSettings {
            sample_every: 1,
            interval_ns: 1_000_000_000,
            burst_ns: 9_500_000_000,
            ..TraceSettings::default()
        },
    );
    let before = lost(&kernel);
    for _ in 0..100 {
        harness.run(&frames[0].1);
    }
    let flood = drain(&mut kernel);
    assert_eq!(flood.len(), 10, "the burst");
    assert_eq!(lost(&kernel) - before, 90, "the rest, counted");
}

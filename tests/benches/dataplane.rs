//! `cargo xtask bench`: the benchmark report (docs/DESIGN.md §7.4).
//!
//! 1. Per-packet cost of each data-plane path (`lb_tests::perpacket`):
//!    `BPF_PROG_TEST_RUN` with a large `repeat`; the kernel reports the mean
//!    per run in whole nanoseconds. Rewriting paths would see their own
//!    output from the second run on, so every case runs through `lb_bench`
//!    (restores the saved frame, tail-calls the program under test) and
//!    `lb_bench_baseline` (the restore alone) is subtracted, round by round.
//!    Every case of a configuration is timed in interleaved rounds (round 1
//!    of each, then round 2, ...), beside `lb_floor` (swap MACs, `XDP_TX`)
//!    and the reference balancer (`lb_ref_tunnel`, `lb_ref_nat`: parse, one
//!    LRU lookup, IPIP or a nat rewrite, `XDP_TX`, nothing else); each row's
//!    ratios to them (costs above the floor) are taken per round, and the
//!    report checks them against the targets ([`targets`]). Each forwarding
//!    path is timed one-arm (arriving on `lb0`, leaving by `XDP_TX`: the
//!    row named for the path) and two-arm (`<path>_2arm`: arriving on
//!    loopback, leaving by a devmap redirect).
//! 2. Packets per second through one core: live-frames `BPF_PROG_TEST_RUN`
//!    with the frames arriving on a veth, transmitted out of it and dropped by
//!    `lb_drop` on the peer. A kernel that refuses live frames (`EPERM` on
//!    some hosts) is found on the first warm-up run: one line says so, the
//!    report records the section as not measured (`not_measured.pps`), and
//!    the other sections go on.
//! 3. Maglev table builds; 4. control-plane reactions (plan + apply).
//! 5. End to end (`lb_tests::endtoend`): HTTP through `lb run` (nat, dsr),
//!    `haproxy`, an nftables DNAT, an XDP forwarding floor and no balancer,
//!    driven by `wrk` in network namespaces.
//! 6. Sync lag (`lb_tests::synclag`): two balancers in this process, each in
//!    a namespace with the real sync thread (`lb::sync::peer`), joined by a
//!    veth; A's program creates 10,000 new flows a second (fresh SYNs by
//!    `BPF_PROG_TEST_RUN`) for 3 s, and per flow the time until B counts it
//!    installed is taken (median, p99, max, and per batch of 1,000), with
//!    what was sent, received, installed, refused and lost.
//!
//! 1b. What `lb trace` costs with no trace attached: the object built
//!    without the feature (`LB_BENCH_NOTRACE_OBJECT`) against this one.
//! 1c. What connection sync costs the data path: established nat and dsr,
//!    and a new flow (Maglev, nat), each timed with `SETTINGS_SYNC` off and
//!    on in alternating pairs of rounds (rows `<case>_sync_off` /
//!    `_sync_on`, and their paired difference). The new flow (SYN+FIN)
//!    reports two events on every run (opened, closed), so its rounds are
//!    `SYNC_NEW_REPEAT` runs, whose events fit the 1 MiB `SYNC_EVENTS` ring, and the ring is drained between
//!    rounds (never during one); the events drained and `SYNC_LOST` are
//!    checked and reported.
//!
//! `LB_BENCH_ONLY=dataplane` (1 to 4), `LB_BENCH_ONLY=sync` (6) or
//! `LB_BENCH_ONLY=e2e` (5) runs one part; a comma list (`dataplane,sync`)
//! runs those. `LB_BENCH_PATHS=nat,dsr` times only those paths of section
//! 1 (and the floor and the references), for a quick A/B of a data-path change; `pps` among
//! them adds section 2, `trace` adds 1b, `sync` adds 1c and `scale` adds 1d
//! (1,000 services x 10 backends beside one: `nat_1000`, `new_flow_1000`
//! with their ratios to `nat_1`, `new_flow_1` in the same rounds, the plan
//! of every Maglev table, the tables' kernel memory), and nothing
//! else of sections 1 to 4 runs. `LB_BENCH_PPS=dsr` limits section 2 to
//! the floor and the cases named.
//!
//! Results go to `results/<UTC date-time>.{json,md,png}`; nothing here
//! asserts a timing. Needs root.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use aya::{
    programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions},
    sys::SyscallError,
};
use lb::{
    dataplane::{AttachMode, Dataplane, OBJECT, Sizes},
    maglev::{self, Weighted},
    plan::{BackendKey, BackendState, Write},
};
use lb_common::{Reason, program_names};
use lb_tests::{
    endtoend, frames,
    perpacket::{self, Arm, Case},
    report::{
        ControlPlaneRow, MaglevRow, PathCost, PpsRow, Report, SyncCostRow, Target, TraceCostRow,
    },
    synclag,
    testrun::{self, Harness, LB_MAC},
};

/// Runs per timed round (`BPF_PROG_TEST_RUN` repeat).
const REPEAT: u32 = 500_000;
/// Timed rounds per case, interleaved with every other case's.
const ROUNDS: usize = 9;
/// Frames per live-frames round, and rounds. Nine: one run's median ratio
/// to the floor moved by ±0.03 between runs with five.
const LIVE_FRAMES: u32 = 4_000_000;
const LIVE_ROUNDS: usize = 9;
/// Live frames are handed to the program in batches of this many (the
/// kernel's default, `NAPI_POLL_WEIGHT`), flushed after each batch.
const LIVE_BATCH: u32 = 64;
/// The CPU everything runs on: one core, whatever the machine has.
const BENCH_CPU: usize = 1;

const CONFIG: &str = "\
instance: bench
interfaces: [{ name: lb0 }]
services:
  - { name: nat4, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }] }
  - { name: dsr4, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
  - { name: tun4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
  - { name: rr4, vip: 203.0.113.13, port: 80, protocol: tcp, forwarding: nat, scheduler: round-robin, backends: [{ address: 192.0.2.13, port: 8080 }, { address: 192.0.2.14, port: 8080 }] }
  - { name: natu4, vip: 203.0.113.20, port: 53, protocol: udp, forwarding: nat, backends: [{ address: 192.0.2.13, port: 5353 }, { address: 192.0.2.14, port: 5353 }] }
  - { name: dsru4, vip: 203.0.113.21, port: 53, protocol: udp, forwarding: dsr, backends: [{ address: 192.0.2.13 }, { address: 192.0.2.14 }] }
  - { name: nat6, vip: '2001:db8:ff::10', port: 80, protocol: tcp, forwarding: nat, backends: [{ address: '2001:db8::11', port: 8080 }] }
  - { name: dsr6, vip: '2001:db8:ff::11', port: 53, protocol: udp, forwarding: dsr, backends: [{ address: '2001:db8::11' }] }
  - { name: tun6, vip: '2001:db8:ff::12', port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: '2001:db8::11' }] }
  - name: cp4
    vip: 203.0.113.30
    port: 80
    protocol: tcp
    forwarding: nat
    backends:
";
/// `cp4` (control-plane cases only, no traffic): this many backends,
/// `192.0.2.101`.. port 8080.
const CP_BACKENDS: u8 = 10;
const CONFIG_TAIL: &str =
    "dataplane: { tunnel_source_v4: 198.51.100.128/28, tunnel_source_v6: '2001:db8:ee::/96' }\n";

/// No NAT service: host traffic skips the reply-path lookups.
const CONFIG_NO_NAT: &str = "\
instance: bench-no-nat
interfaces: [{ name: lb0 }]
services:
  - { name: dsr4, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }
";

/// The guard: a denied prefix and a new-flow rate limit per source.
const CONFIG_GUARD: &str = "\
instance: bench-guard
interfaces: [{ name: lb0 }]
services:
  - { name: nat4, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }] }
guard: { deny: [198.51.100.0/28], rate_limit: { new_flows_per_second: 1, burst: 1 } }
";

/// `guard.attack` (`syn_spoofed`, `syn_verified`): `nat4` marked under
/// attack by the bench (`Dataplane::set_attack_vip`).
const CONFIG_ATTACK: &str = "\
instance: bench-attack
interfaces: [{ name: lb0 }]
services:
  - { name: nat4, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }] }
guard: { attack: { new_flows_per_second: 1000 } }
";

/// The cases of [`CONFIG_ATTACK`].
const ATTACK_PATHS: [&str; 2] = ["syn_spoofed", "syn_verified"];

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 77);

fn vip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, last)
}

fn vip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, last)
}

/// A TCP SYN+FIN (source port 41000, unlike the established cases' 40000):
/// every run takes the full new-flow path. The first inserts
/// the flow already closed (FIN: `ending`); every later one is a bare
/// opening (SYN without ACK) on a closed entry, which reschedules it
/// (`choose_backend`: `closed && opening`) — Maglev or round-robin lookup
/// and a connection-table write, each time.
fn syn_fin4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = frames::eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(41000, dport, 1000, 64240)
        .syn()
        .fin();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("write frame");
    frame
}

/// A 64-byte UDP frame (14 + 20 + 8 + 22 bytes of payload; no FCS).
fn udp4_64(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = frames::eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[0u8; 22]).expect("write frame");
    assert_eq!(frame.len(), 64);
    frame
}

fn main() {
    let total = Instant::now();
    pin_to_cpu(BENCH_CPU);
    let mut report = Report::new();
    println!(
        "lb benchmarks: {} / {} / {} CPUs (running on CPU {BENCH_CPU})",
        report.machine.kernel, report.machine.cpu, report.machine.nproc
    );
    let only = std::env::var("LB_BENCH_ONLY").unwrap_or_default();
    let part =
        |name: &str| only.trim().is_empty() || only.split(',').any(|part| part.trim() == name);
    if part("dataplane") {
        data_plane(&mut report);
        report.notes = notes();
    }
    if part("sync") {
        sync_lag(&mut report);
    }
    if part("e2e") {
        let (rows, notes) = endtoend::run();
        report.add_end_to_end(rows);
        report.notes.extend(notes);
    }
    let dir = results_dir();
    let written = report.write(&dir).expect("write the report");
    if std::env::var_os("LB_RESULTS_DIR").is_none() {
        let page = dir
            .parent()
            .expect("results/ is in the repository")
            .join(lb_tests::benchdoc::PAGE);
        std::fs::write(&page, lb_tests::benchdoc::render(&dir)).expect("write docs/BENCHMARKS.md");
        println!("  {} (regenerated from results/)", page.display());
    }
    println!(
        "\nbenchmarks took {:.0} s; report:",
        total.elapsed().as_secs_f64()
    );
    for path in written {
        println!("  {}", path.display());
    }
}

/// Sections 1 to 4: per-packet cost, packets per second, control plane,
/// Maglev builds.
fn data_plane(report: &mut Report) {
    println!(
        "\n== per-packet cost, ns: BPF_PROG_TEST_RUN, {ROUNDS} interleaved rounds x {REPEAT} \
         runs, wrapper subtracted; one-arm rows arrive on lb0 (XDP_TX), _2arm rows on lo \
         (redirect)"
    );
    perpacket::print_heading();
    let mut config = CONFIG.to_owned();
    for i in 0..CP_BACKENDS {
        let _ = writeln!(
            config,
            "      - {{ address: 192.0.2.{}, port: 8080 }}",
            101 + i
        );
    }
    config.push_str(CONFIG_TAIL);
    let mut harness = Harness::new(&config);
    set_reference_flows(&mut harness);
    let paths = std::env::var("LB_BENCH_PATHS").ok();
    let wanted = |name: &str| {
        paths
            .as_deref()
            .is_none_or(|list| list.split(',').any(|path| path.trim() == name))
    };
    let cases: Vec<Case> = main_cases(&harness)
        .into_iter()
        .filter(|case| {
            always_timed(&case.name)
                || wanted(&case.name)
                || wanted(case.name.trim_end_matches("_2arm"))
        })
        .collect();
    report
        .per_packet
        .extend(perpacket::time(&mut harness, &cases, ROUNDS, REPEAT));
    report.targets = targets();
    let floor_ns = report.floor_ns().expect("the floor row");
    if wanted("sync") {
        sync_cost(&mut harness, floor_ns, report);
    }
    if ATTACK_PATHS.iter().any(|name| wanted(name)) {
        attack_cases(&wanted, report);
    }
    if paths.is_some() {
        if wanted("pps") {
            pps_section(&mut harness, report);
        }
        if wanted("trace") {
            drop(harness);
            report.trace_cost = trace_cost(&config);
        } else if wanted("scale") {
            drop(harness);
        }
        if wanted("scale") {
            scale_section(report);
        }
        return;
    }
    fallback_cases(&mut harness, report);

    pps_section(&mut harness, report);
    control_plane(&mut harness, report);
    drop(harness);

    println!("\n== per-packet cost, continued: without NAT services; with the guard");
    let mut no_nat = Harness::new(CONFIG_NO_NAT);
    time_beside_floor(
        &mut no_nat,
        vec![Case::new(
            "pass_no_nat",
            "IPv4 TCP not to a VIP, no NAT service: pass",
            frames::tcp4(CLIENT4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80),
        )],
        report,
    );
    drop(no_nat);

    let mut guard = Harness::new(CONFIG_GUARD);
    time_beside_floor(
        &mut guard,
        vec![
            Case::new(
                "denied",
                "IPv4 TCP from a denied source: drop",
                frames::tcp4(Ipv4Addr::new(198, 51, 100, 5), 40000, vip4(10), 80),
            ),
            Case::new(
                "rate_limited",
                "IPv4 TCP new flows from one source over its rate: drop",
                syn_fin4(CLIENT4, vip4(10), 80, frames::PAYLOAD),
            ),
        ],
        report,
    );
    drop(guard);

    scale_section(report);

    report.trace_cost = trace_cost(&config);

    println!("\n== Maglev table builds");
    report.maglev = maglev_builds();
}

/// Services and backends per service of the scale section.
const SCALE_SERVICES: usize = 1000;
const SCALE_BACKENDS: usize = 10;
/// Its ring: prime, over 100 x the backends of a service.
const SCALE_RING: u32 = 16_381;

/// The scale section: 1,000 nat services of 10 backends each (10,000
/// backends, one VIP, ports 1000 to 1999) beside a configuration of only
/// the one service timed, the established and new-flow paths of both in
/// the same interleaved rounds (rows `nat_1`, `new_flow_1`, `nat_1000`,
/// `new_flow_1000`, the last two with their ratios to the first two, round
/// by round), the first plan and apply of all 1,000 Maglev tables, and the
/// kernel memory of the tables.
fn scale_section(report: &mut Report) {
    println!(
        "\n== scale: {SCALE_SERVICES} services x {SCALE_BACKENDS} backends (ring {SCALE_RING}) \
         beside one service of {SCALE_BACKENDS}, in the same interleaved rounds (two-arm)"
    );
    let one_config = scale_config(1, 500);
    let config = scale_config(SCALE_SERVICES, 0);
    let mut one = Harness::new(&one_config);
    let started = Instant::now();
    let mut many = Harness::new(&config);
    let first_plan = started.elapsed();
    let vip = Ipv4Addr::new(203, 0, 113, 50);
    let established = || frames::tcp4(CLIENT4, 40000, vip, 1500);
    let opening = || syn_fin4(CLIENT4, vip, 1500, frames::PAYLOAD);
    let arm = |case: Case| Case {
        arm: Arm::Two,
        ..case
    };
    let cases = vec![
        (1, perpacket::floor_case(floor_frame())),
        (
            0,
            arm(Case::new(
                "nat_1",
                "IPv4 TCP established, nat, 1 service x 10 backends (two-arm)",
                established(),
            )),
        ),
        (
            0,
            Case {
                new_flows_of: Some(perpacket::service_id(&one, "s500")),
                ..arm(Case::new(
                    "new_flow_1",
                    "IPv4 TCP new flow, Maglev, nat, 1 service x 10 backends (two-arm)",
                    opening(),
                ))
            },
        ),
        (
            1,
            arm(Case::new(
                "nat_1000",
                "IPv4 TCP established, nat, 1,000 services x 10 backends (two-arm)",
                established(),
            ))
            .compared_with(&["nat_1"]),
        ),
        (
            1,
            Case {
                new_flows_of: Some(perpacket::service_id(&many, "s500")),
                ..arm(Case::new(
                    "new_flow_1000",
                    "IPv4 TCP new flow, Maglev, nat, 1,000 services x 10 backends (two-arm)",
                    opening(),
                ))
                .compared_with(&["new_flow_1"])
            },
        ),
    ];
    let rows = perpacket::time_across(&mut [&mut one, &mut many], &cases, ROUNDS, REPEAT);
    report
        .per_packet
        .extend(rows.into_iter().filter(|row| row.name != perpacket::FLOOR));
    let sizes = many.dataplane.sizes();
    let planned = many.planner.planned().len();
    drop(many);
    drop(one);
    scale_plan_and_memory(&config, sizes, planned, first_plan, report);
}

/// A configuration of `services` nat services of [`SCALE_BACKENDS`]
/// backends on one VIP, the first named `s<first>` on port `1000 + first`
/// (so the service timed, `s500` on port 1500, has the same backends in
/// the one-service and the 1,000-service configuration).
fn scale_config(services: usize, first: usize) -> String {
    use std::fmt::Write as _;
    let mut config = format!(
        "instance: bench-scale\ninterfaces: [{{ name: lb0 }}]\n\
         dataplane: {{ max_services: 1024, max_backends: 10240, ring_size: {SCALE_RING} }}\n\
         services:\n"
    );
    let hosts = testrun::BACKEND_HOSTS;
    for service in first..first + services {
        let _ = write!(
            config,
            "  - {{ name: s{service}, vip: 203.0.113.50, port: {}, protocol: tcp, forwarding: nat, backends: [",
            1000 + service
        );
        for backend in 0..SCALE_BACKENDS {
            let n = service * SCALE_BACKENDS + backend;
            let _ = write!(
                config,
                "{}{{ address: 192.0.2.{}, port: {} }}",
                if backend == 0 { "" } else { ", " },
                hosts[n % hosts.len()],
                10_000 + n
            );
        }
        config.push_str("] }\n");
    }
    config
}

/// The scale section's plan of every Maglev table, timed alone, and the
/// kernel memory of its tables.
#[allow(clippy::cast_precision_loss, reason = "microseconds")]
fn scale_plan_and_memory(
    config: &str,
    sizes: Sizes,
    planned: usize,
    first_plan: std::time::Duration,
    report: &mut Report,
) {
    let memory = lb::dataplane::memory::TableMemory::of(
        &sizes,
        u32::try_from(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
            .unwrap_or(1),
    );
    // The plan alone, again, for its own figure: every Maglev table built.
    let parsed = lb::config::Config::parse(config).expect("the scale configuration");
    let plan_started = Instant::now();
    let mut fresh = lb::plan::Planner::new(SCALE_RING, 1024, 10_240);
    let writes = fresh
        .plan(&parsed, &BTreeMap::new())
        .expect("plan 1,000 services");
    let plan_us = plan_started.elapsed().as_secs_f64() * 1e6;
    println!(
        "  {planned} services planned; first plan of all Maglev tables {:.1} ms ({} writes, \
         {} map updates); harness start with plan and apply {:.0} ms; tables about {} of \
         kernel memory (Maglev {})",
        plan_us / 1e3,
        writes.len(),
        map_updates(&writes),
        first_plan.as_secs_f64() * 1e3,
        lb::dataplane::memory::human(memory.total()),
        lb::dataplane::memory::human(memory.maglev)
    );
    report.control_plane.push(ControlPlaneRow {
        name: "plan_1000_services".into(),
        description: format!(
            "first plan of {SCALE_SERVICES} services x {SCALE_BACKENDS} backends, ring {SCALE_RING} \
             (every Maglev table built)"
        ),
        median_us: plan_us,
        best_us: plan_us,
        max_us: plan_us,
        apply_us: 0.0,
        writes: writes.len() as u64,
        map_updates: map_updates(&writes),
    });
    report.notes.push(format!(
        "Scale ({SCALE_SERVICES} services x {SCALE_BACKENDS} backends, ring {SCALE_RING}): the \
         tables take about {} of kernel memory (Maglev {}, connection tables {}, the rest {}).",
        lb::dataplane::memory::human(memory.total()),
        lb::dataplane::memory::human(memory.maglev),
        lb::dataplane::memory::human(memory.connections),
        lb::dataplane::memory::human(memory.other)
    ));
}

/// Rows timed whatever `LB_BENCH_PATHS` names: the floor and the
/// references every ratio needs.
fn always_timed(name: &str) -> bool {
    [perpacket::FLOOR, "ref_tunnel", "ref_nat"].contains(&name)
}

/// Times `cases` of another harness in interleaved rounds beside that
/// harness's own floor (not reported again: the main floor is the row).
fn time_beside_floor(harness: &mut Harness, mut cases: Vec<Case>, report: &mut Report) {
    cases.insert(0, perpacket::floor_case(floor_frame()));
    let rows = perpacket::time(harness, &cases, ROUNDS, REPEAT);
    report
        .per_packet
        .extend(rows.into_iter().filter(|row| row.name != perpacket::FLOOR));
}

/// The reference balancer's flows: the `tunnel` and `nat` cases' tuples,
/// to the first backend, as lb sends them.
fn set_reference_flows(harness: &mut Harness) {
    use lb_common::maps::{RefKey, RefValue};
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&testrun::backend_mac(11));
    macs[6..].copy_from_slice(&testrun::EGRESS_MAC);
    for vip in [vip4(10), vip4(12)] {
        let key = RefKey {
            src: CLIENT4.octets(),
            dst: vip.octets(),
            ports: [40000u16.to_be_bytes(), 80u16.to_be_bytes()]
                .concat()
                .try_into()
                .expect("four bytes"),
            proto: 6,
        };
        let value = RefValue {
            backend: [192, 0, 2, 11],
            source: [198, 51, 100, 129],
            port: 8080u16.to_be_bytes(),
            pad: [0; 2],
            macs,
        };
        harness
            .dataplane
            .set_reference_flow(&key, &value)
            .expect("a reference flow");
    }
}

/// The targets the report checks (ratios in this run): every established
/// IPv4 path at or below the reference balancer of its kind, IPv6 within
/// 1.2x the IPv4 row of the same mode, pass at most half the reference.
fn targets() -> Vec<Target> {
    let target = |row: &str, to: &str, limit: f64| Target {
        row: row.to_owned(),
        to: to.to_owned(),
        limit,
    };
    vec![
        target("tunnel", "ref_tunnel", 1.0),
        target("dsr", "ref_tunnel", 1.0),
        target("nat", "ref_nat", 1.0),
        target("nat_reply", "ref_nat", 1.0),
        target("nat_v6", "nat", 1.2),
        target("tunnel_v6", "tunnel", 1.2),
        target("dsr_v6", "dsr", 1.2),
        target("pass", "ref_tunnel", 0.5),
        target("syn_spoofed", "attack_pass", 1.0),
        target("nat_1000", "nat_1", 1.1),
        target("new_flow_1000", "new_flow_1", 1.1),
    ]
}

/// Section 6: sync lag between two balancers (`lb_tests::synclag`), or
/// one line saying why not (recorded as not measured).
fn sync_lag(report: &mut Report) {
    println!(
        "\n== sync lag: balancer A creates {} new flows/s for {} s; time until balancer B \
         has installed each (two namespaces, lb::sync::peer threads)",
        synclag::RATE,
        synclag::SECONDS
    );
    match synclag::run() {
        Ok(lag) => {
            println!(
                "lag ms: median {:.2}, p99 {:.2}, max {:.2} over {} flows at {:.0} flows/s \
                 (B polled every {:.0} µs)",
                lag.median_ms, lag.p99_ms, lag.max_ms, lag.flows, lag.achieved_rate, lag.poll_us
            );
            println!(
                "per batch of {}, median/max ms: {}",
                lag.batch,
                lag.batches
                    .iter()
                    .map(|(median, max)| format!("{median:.2}/{max:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!(
                "A sent {}, B received {}, installed {}, existing {}, refused {:?}; \
                 events lost on A {}; not installed {}",
                lag.sent,
                lag.received,
                lag.installed,
                lag.existing,
                lag.refused,
                lag.events_lost,
                lag.not_installed
            );
            report.notes.push(format!(
                "Sync lag: two balancers in this process, each the real XDP object (a Maglev nat \
                 service) in a namespace of its own and the real sync thread \
                 (lb::sync::peer, started as lb run starts it), joined by a veth. A's program \
                 runs a fresh TCP SYN per flow by BPF_PROG_TEST_RUN, paced to {} a second for \
                 {} s; per flow, the time from that run's return (the event is in A's ring) \
                 until B's installed counter reaches it (B installs A's flows in order), B's \
                 counter read every {} µs. A's sync thread drains its ring every {} ms. All on \
                 the same machine's CPUs, shared.",
                synclag::RATE,
                synclag::SECONDS,
                synclag::POLL.as_micros(),
                lb::sync::peer::FLUSH_EVERY.as_millis()
            ));
            report.sync_lag = Some(lag);
        }
        Err(why) => {
            println!("sync lag not measured: {why}");
            report.not_measured.insert("sync_lag".to_owned(), why);
        }
    }
}

/// Paths timed on both builds for the trace-cost figure: host traffic,
/// and the two established paths the packets-per-second figure uses.
const TRACE_COST_PATHS: [&str; 3] = ["pass", "nat", "dsr"];
/// Pairs of loads (one per build, the order alternating) for that figure.
const TRACE_COST_PAIRS: usize = 32;

/// What `lb trace` costs a packet while no trace is attached: each path of
/// [`TRACE_COST_PATHS`] on this object and on the one built without the
/// feature (`LB_BENCH_NOTRACE_OBJECT`, which `cargo xtask bench` builds),
/// loaded afresh and alternately, so drift and one load's map placement
/// average out. The kernel reports whole nanoseconds per round; the mean of
/// many rounds resolves less than one.
#[allow(
    clippy::cast_precision_loss,
    reason = "counts of a few pairs and nanoseconds, far below 2^52"
)]
fn trace_cost(config: &str) -> Vec<TraceCostRow> {
    let Some(path) = std::env::var_os("LB_BENCH_NOTRACE_OBJECT") else {
        println!("\n(trace cost not measured: LB_BENCH_NOTRACE_OBJECT is not set)");
        return Vec::new();
    };
    let without = std::fs::read(&path).expect("read the object built without `lb trace`");
    println!(
        "\n== `lb trace` with no trace attached: {TRACE_COST_PAIRS} pairs of loads, \
         {ROUNDS} x {REPEAT} runs per path and load"
    );
    let cases: Vec<Case> = fixed_cases()
        .into_iter()
        .filter(|case| TRACE_COST_PATHS.contains(&case.name.as_str()))
        .collect();
    // Per case: (with, without) means of each pair.
    let mut pairs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    for pair in 0..TRACE_COST_PAIRS {
        let mut means = [vec![0.0; cases.len()], vec![0.0; cases.len()]];
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for build in order {
            let object = if build == 0 { OBJECT } else { &without[..] };
            let mut harness = Harness::with_object(config, object);
            for (i, case) in cases.iter().enumerate() {
                means[build][i] = mean_cost(&mut harness, &case.frame);
            }
        }
        for (i, samples) in pairs.iter_mut().enumerate() {
            samples.push((means[0][i], means[1][i]));
        }
        print!(".");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    println!();
    println!(
        "{:<8} {:>10} {:>12} {:>16}",
        "path", "with (ns)", "without (ns)", "difference (ns)"
    );
    cases
        .iter()
        .zip(pairs)
        .map(|(case, samples)| {
            let n = samples.len() as f64;
            let mean = |f: &dyn Fn(&(f64, f64)) -> f64| samples.iter().map(f).sum::<f64>() / n;
            let delta = mean(&|(with, without)| with - without);
            let variance = samples
                .iter()
                .map(|(with, without)| (with - without - delta).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            let row = TraceCostRow {
                name: case.name.clone(),
                with_ns: mean(&|(with, _)| *with),
                without_ns: mean(&|(_, without)| *without),
                delta_ns: delta,
                margin_ns: 2.0 * (variance / n).sqrt(),
                pairs: samples.len(),
            };
            println!(
                "{:<8} {:>10.1} {:>12.1} {:>+10.2} ± {:.2}",
                row.name, row.with_ns, row.without_ns, row.delta_ns, row.margin_ns
            );
            row
        })
        .collect()
}

/// The mean cost of `frame` on the balancer over [`ROUNDS`] rounds, the
/// wrapper subtracted round by round.
#[allow(
    clippy::cast_precision_loss,
    reason = "a sum of a few nanosecond figures, far below 2^52"
)]
fn mean_cost(harness: &mut Harness, frame: &[u8]) -> f64 {
    let padded = harness
        .dataplane
        .prepare_bench_of(program_names::BALANCER, frame)
        .expect("prepare the wrapper");
    run_repeated(harness, program_names::BENCH, &padded, 1);
    let mut sum = 0;
    for _ in 0..ROUNDS {
        let (base, _) = run_repeated(harness, program_names::BENCH_BASELINE, &padded, REPEAT);
        let (with, _) = run_repeated(harness, program_names::BENCH, &padded, REPEAT);
        sum += with - base;
    }
    sum as f64 / ROUNDS as f64
}

/// Runs per round for the new-flow case, which reports two sync events on
/// every run (a SYN+FIN: opened, then closed): one round's events (56
/// bytes each with the ring's header) must fit the 1 MiB `SYNC_EVENTS`
/// (about 18,700), or the ring fills and the rest are counted lost instead
/// of written, which costs less.
const SYNC_NEW_REPEAT: u32 = 5_000;
/// Sync events a new-flow run reports.
const SYNC_NEW_EVENTS: u64 = 2;
/// Pairs of rounds (off, on) per case.
const SYNC_NEW_PAIRS: usize = 200;
const SYNC_ESTABLISHED_PAIRS: usize = 10;

/// A case of connection sync's cost.
struct SyncCase {
    case: Case,
    repeat: u32,
    pairs: usize,
}

/// Connection sync's cost to the data path (1c): established nat and dsr
/// (expected: nothing, the flag is tested only on a closing packet) and a
/// new flow (Maglev, nat: one event per run), each with `SETTINGS_SYNC`
/// off and on in alternating pairs of rounds, the ring drained between
/// rounds. Leaves sync off.
fn sync_cost(harness: &mut Harness, floor_ns: i64, report: &mut Report) {
    let mut kernel = harness.dataplane.take_sync().expect("the sync ring");
    kernel.drain();
    let cases = [
        SyncCase {
            case: Case::new(
                "nat",
                "IPv4 TCP established, nat",
                frames::tcp4(CLIENT4, 40000, vip4(10), 80),
            ),
            repeat: REPEAT,
            pairs: SYNC_ESTABLISHED_PAIRS,
        },
        SyncCase {
            case: Case::new(
                "dsr",
                "IPv4 TCP established, dsr",
                frames::tcp4(CLIENT4, 40000, vip4(11), 80),
            ),
            repeat: REPEAT,
            pairs: SYNC_ESTABLISHED_PAIRS,
        },
        SyncCase {
            case: Case {
                new_flows_of: Some(perpacket::service_id(harness, "nat4")),
                ..Case::new(
                    "new_flow",
                    "IPv4 TCP new flow, Maglev, nat",
                    syn_fin4(CLIENT4, vip4(10), 80, frames::PAYLOAD),
                )
            },
            repeat: SYNC_NEW_REPEAT,
            pairs: SYNC_NEW_PAIRS,
        },
    ];
    println!(
        "\n== connection sync's data-path cost: SETTINGS_SYNC off / on in alternating pairs \
         of rounds, SYNC_EVENTS drained between rounds"
    );
    for sync_case in &cases {
        let (off, on, row) = sync_rounds(harness, &mut kernel, sync_case);
        perpacket::print_row(&off, floor_ns);
        perpacket::print_row(&on, floor_ns);
        println!(
            "  {}: on - off {:+.2} ± {:.2} ns ({} x {} runs per state); events {}, lost {}",
            row.name, row.delta_ns, row.margin_ns, row.pairs, row.repeat, row.events, row.lost
        );
        report.per_packet.push(off);
        report.per_packet.push(on);
        report.sync_cost.push(row);
    }
    harness.set_sync(false);
}

/// What one state (sync off or on) of a case gathered over its rounds.
#[derive(Default)]
struct SyncState {
    samples: Vec<i64>,
    wrapper: Vec<i64>,
    moved: BTreeMap<Reason, u64>,
    new_flows: u64,
    events: u64,
    action: u32,
}

/// The rounds of one sync case: per pair, one round off and one on (the
/// order alternating), each the baseline then the wrapper, the ring
/// drained after each. Returns the two per-packet rows and the comparison.
#[allow(
    clippy::cast_precision_loss,
    reason = "nanosecond figures and counts far below 2^52"
)]
fn sync_rounds(
    harness: &mut Harness,
    kernel: &mut lb::dataplane::SyncKernel,
    sync_case: &SyncCase,
) -> (PathCost, PathCost, SyncCostRow) {
    let case = &sync_case.case;
    let repeat = sync_case.repeat;
    let padded = harness
        .dataplane
        .prepare_bench_of(program_names::BALANCER, &case.frame)
        .expect("prepare the wrapper");
    let service = case.new_flows_of;
    // Untimed: the established flow's entry (if no earlier case made it).
    run_repeated(harness, program_names::BENCH, &padded, 1);
    kernel.drain();
    let lost_before = kernel.lost().expect("read SYNC_LOST");
    let mut states = [SyncState::default(), SyncState::default()];
    for pair in 0..sync_case.pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for on in order {
            harness.set_sync(on == 1);
            let state = &mut states[on];
            let before = harness.counters();
            let new_before = service.map(|id| perpacket::new_flows(harness, id));
            let (base, _) = run_repeated(harness, program_names::BENCH_BASELINE, &padded, repeat);
            let (with, verdict) = run_repeated(harness, program_names::BENCH, &padded, repeat);
            let after = harness.counters();
            for (reason, n) in &after {
                let grown = n - before.get(reason).copied().unwrap_or(0);
                *state.moved.entry(*reason).or_default() += grown;
            }
            if let (Some(id), Some(before)) = (service, new_before) {
                state.new_flows += perpacket::new_flows(harness, id) - before;
            }
            state.samples.push(with - base);
            state.wrapper.push(base);
            state.action = verdict;
            state.events += kernel.drain().len() as u64;
        }
    }
    let lost = kernel.lost().expect("read SYNC_LOST") - lost_before;
    let runs = sync_case.pairs as u64 * u64::from(repeat);
    print_sync_checks(&case.name, &states, runs, service.is_some(), lost);
    let differences: Vec<f64> = states[1]
        .samples
        .iter()
        .zip(&states[0].samples)
        .map(|(on, off)| (on - off) as f64)
        .collect();
    let n = differences.len() as f64;
    let delta = differences.iter().sum::<f64>() / n;
    let variance =
        differences.iter().map(|d| (d - delta).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let rows: Vec<PathCost> = states
        .iter_mut()
        .zip(["off", "on"])
        .map(|(state, label)| {
            state.samples.sort_unstable();
            state.wrapper.sort_unstable();
            let rounds = state.samples.len();
            PathCost {
                name: format!("{}_sync_{label}", case.name),
                description: format!(
                    "{}, sync {label} ({} rounds x {repeat} runs)",
                    case.description, sync_case.pairs
                ),
                best: state.samples[0],
                median: state.samples[rounds / 2],
                max: state.samples[rounds - 1],
                wrapper: state.wrapper[rounds / 2],
                verdict: perpacket::verdict(state.action).to_owned(),
                reason: perpacket::top_reason(&state.moved, runs),
                rounds: Vec::new(),
                ratios: Vec::new(),
            }
        })
        .collect();
    let row = SyncCostRow {
        name: case.name.clone(),
        description: case.description.clone(),
        off_ns: rows[0].median,
        on_ns: rows[1].median,
        delta_ns: delta,
        margin_ns: 2.0 * (variance / n).sqrt(),
        pairs: sync_case.pairs,
        repeat,
        events: states[1].events,
        lost,
    };
    let mut rows = rows.into_iter();
    let off = rows.next().expect("the off row");
    let on = rows.next().expect("the on row");
    (off, on, row)
}

/// The checks of one sync case: every run a new flow (for a new-flow
/// case), one event per run while on (none for an established flow, none
/// while off), nothing lost.
fn print_sync_checks(name: &str, states: &[SyncState; 2], runs: u64, new_flow: bool, lost: u64) {
    if new_flow {
        for (state, label) in states.iter().zip(["off", "on"]) {
            println!(
                "  check {name} sync {label}: the service's new_flows grew by {} over {runs} \
                 runs{}",
                state.new_flows,
                if state.new_flows == runs {
                    " (every run a new flow)"
                } else {
                    " (NOT every run!)"
                }
            );
        }
    }
    if states[0].events != 0 {
        println!(
            "  check {}: {} events with sync off (expected none!)",
            name, states[0].events
        );
    }
    let expected = if new_flow { SYNC_NEW_EVENTS * runs } else { 0 };
    println!(
        "  check {} sync on: {} events drained over {runs} runs, {lost} lost{}",
        name,
        states[1].events,
        if states[1].events == expected && lost == 0 {
            " (as expected)"
        } else {
            " (NOT as expected!)"
        }
    );
}

/// The established flows again with no cached next hop: what every packet
/// cost before the controller resolved hops (`bpf_fib_lookup`).
fn fallback_cases(harness: &mut Harness, report: &mut Report) {
    harness.clear_hops();
    time_beside_floor(
        harness,
        vec![
            Case::new(
                "fallback",
                "IPv4 TCP established, nat, uncached next hop (bpf_fib_lookup)",
                frames::tcp4(CLIENT4, 40000, vip4(10), 80),
            ),
            Case::new(
                "fallback_dsr",
                "IPv4 TCP established, dsr, uncached next hop (bpf_fib_lookup)",
                frames::tcp4(CLIENT4, 40000, vip4(11), 80),
            ),
        ],
        report,
    );
    harness.refresh_hops();
}

/// The per-packet cases of the main configuration, the floor and the
/// reference balancer first. Every forwarding path has a one-arm row (its
/// name) and a two-arm row (`<name>_2arm`).
fn main_cases(harness: &Harness) -> Vec<Case> {
    let nat4 = perpacket::service_id(harness, "nat4");
    let rr4 = perpacket::service_id(harness, "rr4");
    let mut cases = fixed_cases();
    let new_flows = vec![
        Case {
            new_flows_of: Some(nat4),
            ..Case::new(
                "new_flow",
                "IPv4 TCP new flow, Maglev, nat",
                syn_fin4(CLIENT4, vip4(10), 80, frames::PAYLOAD),
            )
        },
        Case {
            new_flows_of: Some(nat4),
            vary: 14,
            ..Case::new(
                "new_flow_fresh",
                "IPv4 TCP new flow, a fresh tuple each run (bare SYN), Maglev, nat",
                frames::tcp4(CLIENT4, 40000, vip4(10), 80),
            )
        },
        Case {
            new_flows_of: Some(rr4),
            ..Case::new(
                "new_flow_rr",
                "IPv4 TCP new flow, round-robin, nat",
                syn_fin4(CLIENT4, vip4(13), 80, frames::PAYLOAD),
            )
        },
    ];
    let two_arm: Vec<Case> = cases
        .iter()
        .chain(&new_flows)
        .filter(|case| case.target == program_names::BALANCER && forwards(&case.name))
        .map(Case::two_arm)
        .collect();
    cases.extend(new_flows);
    cases.extend(two_arm);
    cases
}

/// Whether the path named forwards to a backend (so has a two-arm row).
fn forwards(name: &str) -> bool {
    !["pass", "pass_non_ip", "icmp_echo"].contains(&name)
}

/// The cases that need no service id: the floor, the reference balancer,
/// pass, ICMP and the established paths.
fn fixed_cases() -> Vec<Case> {
    let mut echo = Vec::new();
    frames::eth()
        .ipv4(CLIENT4.octets(), vip4(10).octets(), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .expect("echo frame");
    let reference = |name: &str, description: &str, target, vip| Case {
        target,
        ..Case::new(name, description, frames::tcp4(CLIENT4, 40000, vip, 80))
    };
    let once = vec![
        perpacket::floor_case(floor_frame()),
        reference(
            "ref_tunnel",
            "reference balancer: IPv4 TCP, LRU lookup, IPIP, XDP_TX",
            program_names::REF_TUNNEL,
            vip4(12),
        ),
        reference(
            "ref_nat",
            "reference balancer: IPv4 TCP, LRU lookup, nat rewrite, XDP_TX",
            program_names::REF_NAT,
            vip4(10),
        ),
        Case::new(
            "pass",
            "IPv4 TCP not to a VIP (NAT services exist): pass",
            frames::tcp4(CLIENT4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80),
        )
        .compared_with(&["ref_tunnel"]),
        Case::new(
            "pass_non_ip",
            "ARP request: pass",
            frames::arp_request(CLIENT4, vip4(10)),
        ),
        Case::new("icmp_echo", "ICMP echo to a VIP: reply", echo),
    ];
    let forwarding = [
        Case::new(
            "nat",
            "IPv4 TCP established, nat",
            frames::tcp4(CLIENT4, 40000, vip4(10), 80),
        )
        .compared_with(&["ref_nat"]),
        Case::new(
            "dsr",
            "IPv4 TCP established, dsr",
            frames::tcp4(CLIENT4, 40000, vip4(11), 80),
        )
        .compared_with(&["ref_tunnel"]),
        Case::new(
            "tunnel",
            "IPv4 TCP established, tunnel (IPIP)",
            frames::tcp4(CLIENT4, 40000, vip4(12), 80),
        )
        .compared_with(&["ref_tunnel"]),
        Case::new(
            "nat_reply",
            "IPv4 TCP nat reply (backend to client)",
            frames::tcp4(Ipv4Addr::new(192, 0, 2, 11), 8080, CLIENT4, 40000),
        )
        .compared_with(&["ref_nat"]),
        Case::new(
            "nat_vlan",
            "IPv4 TCP established, nat, 802.1Q",
            frames::tcp4_vlan(7, CLIENT4, 40000, vip4(10), 80),
        )
        .compared_with(&["ref_nat"]),
        Case::new(
            "nat_v6",
            "IPv6 TCP established, nat",
            frames::tcp6(CLIENT6, 40000, vip6(0x10), 80),
        )
        .compared_with(&["nat"]),
        Case::new(
            "dsr_v6",
            "IPv6 UDP established, dsr",
            frames::udp6(CLIENT6, 40000, vip6(0x11), 53),
        )
        .compared_with(&["dsr"]),
        Case::new(
            "tunnel_v6",
            "IPv6 TCP established, tunnel (IP6IP6)",
            frames::tcp6(CLIENT6, 40000, vip6(0x12), 80),
        )
        .compared_with(&["tunnel"]),
    ];
    once.into_iter().chain(forwarding).collect()
}

/// `guard.attack` with `nat4`'s VIP under attack: a bare SYN from a fresh
/// spoofed source each run (dropped, remembered as pending), and a new
/// flow from a proven source (a completed handshake before the attack;
/// SYN+FIN, so every run reschedules, as `new_flow`), timed beside this
/// harness's floor and its pass path (`attack_pass`: dropping junk must
/// cost no more than ignoring it).
fn attack_cases(wanted: &dyn Fn(&str) -> bool, report: &mut Report) {
    let mut harness = Harness::new(CONFIG_ATTACK);
    // Proven: SYN, then the handshake's ACK, before the VIP is marked.
    let client = Ipv4Addr::new(198, 51, 100, 78);
    for frame in [
        frames::tcp4(client, 39000, vip4(10), 80),
        frames::tcp4_ack(client, 39000, vip4(10), 80),
    ] {
        harness.run(&frame);
    }
    let proven = harness
        .dataplane
        .attack_verified()
        .expect("ATTACK_VERIFIED");
    assert_eq!(proven.len(), 1, "the handshake proved its source");
    harness
        .dataplane
        .set_attack_vip(
            &lb_common::maps::ipv4_mapped(vip4(10).octets()),
            &lb_common::attack::AttackVip {
                verified_ns: 3_600_000_000_000,
                since_ns: 1,
                unknown_budget: 0,
                source_budget: 0,
            },
        )
        .expect("mark the VIP under attack");
    let nat4 = perpacket::service_id(&harness, "nat4");
    let cases = vec![
        Case::new(
            "attack_pass",
            "IPv4 TCP not to a VIP, guard.attack configured: pass",
            frames::tcp4(CLIENT4, 40000, Ipv4Addr::new(192, 0, 2, 9), 80),
        ),
        Case {
            vary: 14,
            ..Case::new(
                "syn_spoofed",
                "IPv4 TCP bare SYN, fresh spoofed source, VIP under attack: drop",
                frames::tcp4(CLIENT4, 40000, vip4(10), 80),
            )
            .compared_with(&["attack_pass"])
        },
        Case {
            new_flows_of: Some(nat4),
            ..Case::new(
                "syn_verified",
                "IPv4 TCP new flow from a proven source, VIP under attack, nat",
                syn_fin4(client, vip4(10), 80, frames::PAYLOAD),
            )
        },
    ];
    let cases = cases
        .into_iter()
        .filter(|case| case.name == "attack_pass" || wanted(&case.name))
        .collect();
    time_beside_floor(&mut harness, cases, report);
}

/// Any frame will do for the floor: it only swaps the MACs.
fn floor_frame() -> Vec<u8> {
    frames::tcp4(CLIENT4, 40000, vip4(11), 80)
}

/// One `BPF_PROG_TEST_RUN` of `program` with `repeat`, arriving on
/// loopback: mean ns per run and the verdict.
fn run_repeated(harness: &Harness, program: &'static str, frame: &[u8], repeat: u32) -> (i64, u32) {
    perpacket::run(harness, program, Arm::Two, frame, repeat)
}

/// A live-frames case: (name, description, program under test, frame).
type PpsCase = (&'static str, &'static str, &'static str, Vec<u8>);

/// Section 2, or one line saying why it was skipped (recorded in the report
/// as not measured): a kernel may refuse live frames (`EPERM` here), and
/// the other sections go on.
fn pps_section(harness: &mut Harness, report: &mut Report) {
    println!(
        "\n== packets per second, one core: live frames ({LIVE_ROUNDS} rounds x \
         {LIVE_FRAMES} frames, 64 bytes) into lb0 (native XDP), lb_drop on the peer"
    );
    match packets_per_second(harness) {
        Ok(rows) => report.pps = rows,
        Err(why) => {
            println!("packets per second not measured: {why}; section 2 skipped");
            report.not_measured.insert("pps".to_owned(), why);
        }
    }
}

/// Live frames: `lb_bench` (restore, tail call) runs on each frame as if it
/// arrived on `lb0`, where the balancer is attached in native mode; `XDP_TX`
/// sends it out of `lb0` to `peer0`, whose `lb_drop` discards it, so the
/// receiving stack is not measured. The kernel recycles pages that still
/// hold the previous output, hence the wrapper for the floor too.
///
/// # Errors
/// Live frames refused by the kernel (on the first warm-up run) or failing
/// later: why, for the report.
fn packets_per_second(harness: &mut Harness) -> Result<Vec<PpsRow>, String> {
    let lb0 = lb::netlink::ifindex("lb0").expect("lb0");
    harness
        .dataplane
        .insert_iface(lb0, LB_MAC)
        .expect("register lb0");
    harness
        .dataplane
        .attach("lb0", AttachMode::Native)
        .expect("attach lb_balancer to lb0 (native)");
    let mut sink = Dataplane::load_program(OBJECT, Sizes::MINIMAL, program_names::DROP)
        .expect("load lb_drop (is it in the XDP object?)");
    sink.attach("peer0", AttachMode::Native)
        .expect("attach lb_drop to peer0 (native)");

    // `LB_BENCH_PPS=dsr` runs the floor and the named cases only (for a
    // profile of one path under `perf`).
    let only = std::env::var("LB_BENCH_PPS").ok();
    let cases: Vec<_> = pps_cases()
        .into_iter()
        .filter(|(name, ..)| {
            *name == "floor"
                || only
                    .as_deref()
                    .is_none_or(|list| list.split(',').any(|case| case.trim() == *name))
        })
        .collect();
    pps_warm_up(harness, lb0, &cases)?;
    // The cases take turns round by round, so the machine's drift (the
    // floor alone moves by 10 % between runs here) falls on all of them
    // alike, and each round's ratio is taken to that round's floor.
    let mut pps = vec![Vec::with_capacity(LIVE_ROUNDS); cases.len()];
    let mut moved: Vec<BTreeMap<Reason, u64>> = vec![BTreeMap::new(); cases.len()];
    let mut delivered: Vec<Option<u64>> = vec![Some(0); cases.len()];
    for _ in 0..LIVE_ROUNDS {
        for (i, (_, _, target, frame)) in cases.iter().enumerate() {
            let padded = harness
                .dataplane
                .prepare_bench_of(target, frame)
                .expect("prepare the wrapper");
            let drops_before = xdp_drops(harness, "peer0");
            let before = harness.counters();
            pps[i].push(
                live_run(harness, lb0, &padded, LIVE_FRAMES).map_err(|error| {
                    format!("live frames failed mid-run ({})", describe_os_error(&error))
                })?,
            );
            let after = harness.counters();
            for (reason, n) in &after {
                let grown = n - before.get(reason).copied().unwrap_or(0);
                *moved[i].entry(*reason).or_default() += grown;
            }
            let sent = xdp_drops(harness, "peer0")
                .zip(drops_before)
                .map(|(after, before)| after - before);
            delivered[i] = delivered[i].zip(sent).map(|(sum, d)| sum + d);
        }
    }
    println!(
        "{:<8} {:>8} {:>40} {:>10} {:>7}  reason",
        "case", "Mpps", "rounds", "delivered", "floor x"
    );
    let mut rows: Vec<PpsRow> = Vec::new();
    for (i, (name, description, target, _)) in cases.iter().enumerate() {
        let frames = LIVE_ROUNDS as u64 * u64::from(LIVE_FRAMES);
        let reason = if *target == program_names::BALANCER {
            perpacket::top_reason(&moved[i], frames)
        } else {
            "-".to_owned()
        };
        let in_order = pps[i].clone();
        let mut ratios: Vec<f64> = in_order
            .iter()
            .zip(&pps[0])
            .map(|(case, floor)| case / floor)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[LIVE_ROUNDS / 2];
        let mut sorted = in_order.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[LIVE_ROUNDS / 2];
        println!(
            "{name:<8} {:>8.2} {:>40} {:>10} {:>7.2}  {reason}",
            median / 1e6,
            in_order
                .iter()
                .map(|p| format!("{:.2}", p / 1e6))
                .collect::<Vec<_>>()
                .join(" / "),
            delivered[i].map_or_else(|| "?".into(), |d| d.to_string()),
            ratio
        );
        rows.push(PpsRow {
            name: (*name).to_owned(),
            description: (*description).to_owned(),
            frames: u64::from(LIVE_FRAMES),
            pps: median,
            rounds: in_order,
            delivered: delivered[i],
            ratio_to_floor: ratio,
        });
    }
    drop(sink);
    Ok(rows)
}

/// Warm-up of section 2 (and the established flows' entries). The first
/// run tells whether this kernel takes live frames at all.
fn pps_warm_up(harness: &mut Harness, lb0: u32, cases: &[PpsCase]) -> Result<(), String> {
    for (i, (_, _, target, frame)) in cases.iter().enumerate() {
        let padded = harness
            .dataplane
            .prepare_bench_of(target, frame)
            .expect("prepare the wrapper");
        live_run(harness, lb0, &padded, 10_000).map_err(|error| {
            if i == 0 {
                format!(
                    "live frames refused by this kernel ({})",
                    describe_os_error(&error)
                )
            } else {
                format!("live frames failed ({})", describe_os_error(&error))
            }
        })?;
    }
    Ok(())
}

/// The live-frames cases: (name, description, program under test, frame).
fn pps_cases() -> [PpsCase; 5] {
    let tcp64 = |vip| {
        // 14 + 20 + 20 + 10 bytes of payload.
        let frame = syn_fin4(CLIENT4, vip, 80, &[0u8; 10]);
        assert_eq!(frame.len(), 64);
        frame
    };
    [
        (
            "floor",
            "lb_floor: swap MACs, XDP_TX",
            program_names::FLOOR,
            udp4_64(CLIENT4, vip4(21), 53),
        ),
        (
            "dsr",
            "UDP established, dsr",
            program_names::BALANCER,
            udp4_64(CLIENT4, vip4(21), 53),
        ),
        (
            "nat",
            "UDP established, nat",
            program_names::BALANCER,
            udp4_64(CLIENT4, vip4(20), 53),
        ),
        (
            "dsr_new",
            "TCP SYN+FIN, a new flow per frame, dsr",
            program_names::BALANCER,
            tcp64(vip4(11)),
        ),
        (
            "nat_new",
            "TCP SYN+FIN, a new flow per frame, nat",
            program_names::BALANCER,
            tcp64(vip4(10)),
        ),
    ]
}

/// One live-frames run of `frames` frames; forwarded frames per second of
/// wall time.
///
/// # Errors
/// The kernel's answer to `BPF_PROG_TEST_RUN` with live frames, when it
/// refuses them.
fn live_run(
    harness: &Harness,
    ifindex: u32,
    frame: &[u8],
    frames: u32,
) -> Result<f64, std::io::Error> {
    let program = harness
        .dataplane
        .bench_program(program_names::BENCH)
        .expect("lb_bench");
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. Live frames need a real ingress
    // interface; the kernel takes `data_end` as the frame length.
    let len = u32::try_from(frame.len()).expect("frame length");
    let mut ctx = Vec::with_capacity(24);
    for field in [0, len, 0, ifindex, 0, 0] {
        ctx.extend_from_slice(&u32::to_ne_bytes(field));
    }
    // Live frames: no data_out, and `repeat` is the number of frames.
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: frames,
        attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
        ..TestRunOptions::default()
    };
    let start = Instant::now();
    program.test_run(opts).map_err(|error| match error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error,
        other => std::io::Error::other(other.to_string()),
    })?;
    Ok(f64::from(frames) / start.elapsed().as_secs_f64())
}

/// `EPERM, Operation not permitted`: the errno's name and text.
fn describe_os_error(error: &std::io::Error) -> String {
    let name = match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOTSUP) => "EOPNOTSUPP",
        Some(libc::E2BIG) => "E2BIG",
        // The kernel's internal ENOTSUPP, which leaks to userspace.
        Some(524) => "ENOTSUPP",
        Some(_) | None => return error.to_string(),
    };
    format!("{name}: {error}")
}

/// Frames `lb_drop` discarded on `dev`: veth's per-queue `xdp_drops`
/// (`ethtool -S`), `None` if unreadable.
fn xdp_drops(harness: &Harness, dev: &str) -> Option<u64> {
    let output = harness.netns().exec("ethtool", &["-S", dev]);
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(name, _)| name.ends_with("xdp_drops"))
        .filter_map(|(_, value)| value.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Maglev: build time, balance and disruption for a few sizes.
fn maglev_builds() -> Vec<MaglevRow> {
    println!(
        "{:>7} {:>5} {:>10} {:>9} {:>10} {:>8}",
        "M", "N", "build ms", "max/mean", "moved %", "ideal %"
    );
    [(65_537_u32, 100_u32), (65_537, 1000), (655_373, 1000)]
        .into_iter()
        .map(|(m, n)| {
            assert!(maglev::is_prime(m), "{m} must be prime");
            let names: Vec<String> = (0..n)
                .map(|i| format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 0xff, i & 0xff))
                .collect();
            let all: Vec<Weighted<'_>> = names
                .iter()
                .zip(0u32..)
                .map(|(name, id)| Weighted {
                    id,
                    identity: name.as_bytes(),
                    weight: 100,
                })
                .collect();
            let mut times = Vec::new();
            let mut table = Vec::new();
            for _ in 0..3 {
                let start = Instant::now();
                table = maglev::build(&all, m);
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let mut share = vec![0u64; n as usize];
            for id in &table {
                if let Some(count) = share.get_mut(*id as usize) {
                    *count += 1;
                }
            }
            #[allow(clippy::cast_precision_loss, reason = "ratios")]
            let max_mean =
                share.iter().copied().max().unwrap_or(0) as f64 * f64::from(n) / f64::from(m);
            // One backend leaves (the middle one); the others keep their ids.
            let mut rest = all.clone();
            rest.remove(n as usize / 2);
            let after = maglev::build(&rest, m);
            let moved = table.iter().zip(&after).filter(|(a, b)| a != b).count();
            #[allow(clippy::cast_precision_loss, reason = "a percentage")]
            let moved_pct = moved as f64 * 100.0 / f64::from(m);
            let row = MaglevRow {
                m,
                n,
                build_ms: times[1],
                max_mean_share: max_mean,
                moved_pct,
            };
            println!(
                "{m:>7} {n:>5} {:>10.1} {:>9.3} {:>10.2} {:>8.2}",
                row.build_ms,
                row.max_mean_share,
                row.moved_pct,
                100.0 / f64::from(n)
            );
            row
        })
        .collect()
}

/// Control-plane reactions on `cp4`: a backend's check fails, or its weight
/// changes; each timed sample is `Planner::plan` + `Dataplane::apply`, from
/// the event to the new table live in the map. Between samples the service
/// goes back to its configured state (untimed), and each sample changes the
/// next backend: a toggle of one backend would find its table already in the
/// idle Maglev half and write nothing but the flip.
fn control_plane(harness: &mut Harness, report: &mut Report) {
    const SAMPLES: usize = 9;
    println!(
        "\n== control plane: plan + apply on a nat service with {CP_BACKENDS} backends \
         (ring {}, {} services planned), {SAMPLES} samples",
        harness.dataplane.sizes().ring_size,
        harness.planner.planned().len()
    );
    println!(
        "{:<15} {:>10} {:>9} {:>9} {:>10} {:>7} {:>11}",
        "case", "median µs", "best", "max", "apply µs", "writes", "map updates"
    );
    let cases = [
        (
            "backend_down",
            "one backend of 10 fails its check",
            BackendState {
                up: false,
                weight: None,
            },
        ),
        (
            "weight_change",
            "one backend of 10: weight 100 to 50",
            BackendState {
                up: true,
                weight: Some(50),
            },
        ),
    ];
    for (name, description, state) in cases {
        let mut total = Vec::with_capacity(SAMPLES);
        let mut apply = Vec::with_capacity(SAMPLES);
        let mut writes = Vec::with_capacity(SAMPLES);
        let mut updates = Vec::with_capacity(SAMPLES);
        for sample in 0..SAMPLES {
            let last = 101 + u8::try_from(sample).expect("few samples") % CP_BACKENDS;
            let key = BackendKey {
                service: "cp4".to_owned(),
                address: std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
                port: 8080,
            };
            let changed = BTreeMap::from([(key, state)]);
            let start = Instant::now();
            let planned = harness
                .planner
                .plan(&harness.config, &changed)
                .expect("plan");
            let planned_at = Instant::now();
            harness.dataplane.apply(&planned).expect("apply");
            total.push(start.elapsed().as_secs_f64() * 1e6);
            apply.push(planned_at.elapsed().as_secs_f64() * 1e6);
            writes.push(planned.len() as u64);
            updates.push(map_updates(&planned));
            harness.replan(&BTreeMap::new());
        }
        total.sort_by(f64::total_cmp);
        apply.sort_by(f64::total_cmp);
        writes.sort_unstable();
        updates.sort_unstable();
        let row = ControlPlaneRow {
            name: name.to_owned(),
            description: description.to_owned(),
            median_us: total[SAMPLES / 2],
            best_us: total[0],
            max_us: total[SAMPLES - 1],
            apply_us: apply[SAMPLES / 2],
            writes: writes[SAMPLES / 2],
            map_updates: updates[SAMPLES / 2],
        };
        println!(
            "{:<15} {:>10.0} {:>9.0} {:>9.0} {:>10.0} {:>7} {:>11}",
            row.name,
            row.median_us,
            row.best_us,
            row.max_us,
            row.apply_us,
            row.writes,
            row.map_updates
        );
        report.control_plane.push(row);
    }
}

/// Map element updates `writes` make: one per Maglev slot, one otherwise.
fn map_updates(writes: &[Write]) -> u64 {
    writes
        .iter()
        .map(|write| match write {
            Write::MaglevSlots { slots, .. } => slots.len() as u64,
            Write::MaglevRow { table, .. } => table.len() as u64,
            _ => 1,
        })
        .sum()
}

fn notes() -> Vec<String> {
    vec![
        format!(
            "Per-packet: BPF_PROG_TEST_RUN, {ROUNDS} rounds x {REPEAT} runs per path; each round \
             times lb_bench (restore the frame, tail-call the target) and lb_bench_baseline \
             (restore only) and keeps the difference; best / median / max over the rounds. \
             The floor is lb_floor (swap MACs, XDP_TX) through the same wrapper."
        ),
        "Forwarding cases use the next hop the controller resolved and cached per backend \
         (HOPS); the fallback rows are the same flows with that cache emptied, through \
         bpf_fib_lookup. Test-run frames arrive on lo and leave on lb0 (devmap redirect)."
            .to_owned(),
        "Established cases: the first (untimed) run puts the flow in the connection table. \
         New-flow cases send TCP SYN+FIN: every run reschedules the closed entry (checked \
         against the service's new_flows counter)."
            .to_owned(),
        format!(
            "Packets per second: BPF_PROG_TEST_RUN live frames (batch {LIVE_BATCH}), {LIVE_ROUNDS} \
             rounds x {LIVE_FRAMES} frames of 64 bytes arriving on a veth with lb_balancer \
             attached (native), XDP_TX to the peer, where lb_drop discards them; frames / wall \
             time of the call, median; one CPU. The cases take turns round by round; the ratio \
             to the floor is the median of each round's ratio to that round's floor."
        ),
        format!(
            "Connection sync's data-path cost: each case with SETTINGS_SYNC off and on, in pairs \
             of rounds whose order alternates (established: {SYNC_ESTABLISHED_PAIRS} pairs x \
             {REPEAT} runs; new flow: {SYNC_NEW_PAIRS} pairs x {SYNC_NEW_REPEAT} runs, so one \
             round's events fit the 1 MiB SYNC_EVENTS ring). The ring is drained by the \
             benchmark between rounds, not during them; events drained and SYNC_LOST are \
             reported. on - off is the mean of the paired round differences ± two standard \
             errors."
        ),
        "Control plane: Planner::plan with the change + Dataplane::apply, from the event to the \
         new table live in the map; each sample changes another backend and the service is \
         restored in between (untimed); writes and map updates are medians."
            .to_owned(),
    ]
}

/// `results/` at the workspace root, or `$LB_RESULTS_DIR`.
fn results_dir() -> PathBuf {
    let dir = std::env::var_os("LB_RESULTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the results directory");
    dir.canonicalize().unwrap_or(dir)
}

/// Runs this thread (and so every test run and live frame) on one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it, and sched_setaffinity(0) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            eprintln!(
                "could not pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

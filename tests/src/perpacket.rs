//! Per-packet timing for `cargo xtask bench` (section 1): every case of one
//! balancer timed in interleaved rounds — round 1 of every case, then
//! round 2, ... — so that whatever the machine does meanwhile falls on all
//! of them alike, and each case's ratios (to the floor, to the reference
//! balancer, to another row) are taken round by round, then the median.
//!
//! A round of a case is one `BPF_PROG_TEST_RUN` of the frame-restoring
//! wrapper alone (`lb_bench_baseline`) and one of the wrapper tail-calling
//! the program under test (`lb_bench`), `repeat` runs each; the sample is
//! the difference. One-arm cases arrive on `lb0` (a context with its
//! ifindex), so a frame forwarded to a backend behind `lb0` leaves by
//! `XDP_TX`; two-arm cases arrive on loopback and leave by a devmap
//! redirect to `lb0`.

use std::{collections::BTreeMap, fmt::Write as _};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Reason, program_names};

use crate::{
    report::{PathCost, Ratio},
    testrun::{Harness, LB_MAC},
};

/// Where a case's frames arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// On `lb0`, the interface the backends are behind: forwarded frames
    /// leave by `XDP_TX` (the common one-arm deployment).
    One,
    /// On loopback: forwarded frames leave by a redirect to `lb0`.
    Two,
}

/// One per-packet case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Report key.
    pub name: String,
    /// What the case is, for people.
    pub description: String,
    /// The frame.
    pub frame: Vec<u8>,
    /// The program under test (the balancer, the floor, a reference).
    pub target: &'static str,
    /// Where the frame arrives.
    pub arm: Arm,
    /// The service (by id) whose new-flow counter must grow by one per run.
    pub new_flows_of: Option<u32>,
    /// 0, or the offset of the frame's IPv4 header: each run then gets a
    /// fresh source address, port and sequence number (`BenchFrame::vary`).
    pub vary: u32,
    /// Rows whose cost above the floor this one's is divided by, per round
    /// (a reference balancer, the IPv4 row of the same mode, ...).
    pub compare: Vec<&'static str>,
}

impl Case {
    /// A balancer case, one-arm, compared with nothing but the floor.
    pub fn new(name: &str, description: &str, frame: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            frame,
            target: program_names::BALANCER,
            arm: Arm::One,
            new_flows_of: None,
            vary: 0,
            compare: Vec::new(),
        }
    }

    /// The same case arriving on loopback, leaving by redirect: `<name>_2arm`.
    #[must_use]
    pub fn two_arm(&self) -> Self {
        Self {
            name: format!("{}_2arm", self.name),
            description: format!("{} (two-arm: devmap redirect)", self.description),
            arm: Arm::Two,
            ..self.clone()
        }
    }

    /// With rows to compare against.
    #[must_use]
    pub fn compared_with(mut self, rows: &[&'static str]) -> Self {
        self.compare = rows.to_vec();
        self
    }
}

/// The floor's row name; every set of cases timed together holds one.
pub const FLOOR: &str = "floor";

/// The floor: swap MACs, `XDP_TX`, through the same wrapper.
pub fn floor_case(frame: Vec<u8>) -> Case {
    Case {
        target: program_names::FLOOR,
        ..Case::new(FLOOR, "floor: swap MACs, XDP_TX", frame)
    }
}

/// What one case gathered over its rounds.
#[derive(Default)]
struct Gathered {
    samples: Vec<i64>,
    wrapper: Vec<i64>,
    moved: BTreeMap<Reason, u64>,
    new_flows: u64,
    action: u32,
    runs: u64,
}

/// Times `cases` (one of them the floor, [`FLOOR`]) in `rounds`
/// interleaved rounds of `repeat` runs, the order rotating by one case per
/// round. Prints one line per case as it finishes, and returns a row per
/// case with its rounds and ratios. A new-flow case whose service did not
/// count one new flow per run says so in its row's reason.
pub fn time(harness: &mut Harness, cases: &[Case], rounds: usize, repeat: u32) -> Vec<PathCost> {
    let lb0 = lb::netlink::ifindex("lb0").expect("lb0");
    harness
        .dataplane
        .insert_iface(lb0, LB_MAC)
        .expect("register lb0 for one-arm cases");
    let owned: Vec<(usize, Case)> = cases.iter().cloned().map(|case| (0, case)).collect();
    time_across(&mut [harness], &owned, rounds, repeat)
}

/// As [`time`], each case on the balancer of its own harness (an index
/// into `harnesses`), so that rows of different configurations are timed
/// in the same interleaved rounds and their ratios paired round by round.
/// The floor is one of the cases. The thread stays in the namespace of the
/// harness made last: cases of the others should be two-arm (arriving on
/// loopback, whose ifindex is the same in every namespace) and leave by
/// their cached next hop (no FIB lookup).
pub fn time_across(
    harnesses: &mut [&mut Harness],
    cases: &[(usize, Case)],
    rounds: usize,
    repeat: u32,
) -> Vec<PathCost> {
    let mut gathered: Vec<Gathered> = cases.iter().map(|_| Gathered::default()).collect();
    // Untimed first run: puts established flows in the connection table.
    // Varied cases start their tuples far apart, so no two share one.
    for (index, ((owner, case), state)) in cases.iter().zip(&mut gathered).enumerate() {
        let harness = &mut *harnesses[*owner];
        let padded = prepare(harness, case, (index as u64) << 40);
        run(harness, program_names::BENCH, case.arm, &padded, 1);
        state.runs = harness.dataplane.bench_runs().expect("bench runs");
    }
    for round in 0..rounds {
        for offset in 0..cases.len() {
            let index = (round + offset) % cases.len();
            let ((owner, case), state) = (&cases[index], &mut gathered[index]);
            let harness = &mut *harnesses[*owner];
            let padded = prepare(harness, case, state.runs);
            let counters = harness.counters();
            let new_before = case.new_flows_of.map(|id| new_flows(harness, id));
            let (base, _) = run(
                harness,
                program_names::BENCH_BASELINE,
                case.arm,
                &padded,
                repeat,
            );
            let (with, action) = run(harness, program_names::BENCH, case.arm, &padded, repeat);
            state.samples.push(with - base);
            state.wrapper.push(base);
            state.action = action;
            for (reason, n) in harness.counters() {
                let moved = n - counters.get(&reason).copied().unwrap_or(0);
                if moved > 0 {
                    *state.moved.entry(reason).or_default() += moved;
                }
            }
            if let (Some(id), Some(before)) = (case.new_flows_of, new_before) {
                state.new_flows += new_flows(harness, id) - before;
            }
            state.runs = harness.dataplane.bench_runs().expect("bench runs");
        }
    }
    let cases: Vec<Case> = cases.iter().map(|(_, case)| case.clone()).collect();
    summarise(&cases, gathered, rounds, u64::from(repeat))
}

/// Each case's row from what its rounds gathered: ratios round by round.
fn summarise(cases: &[Case], gathered: Vec<Gathered>, rounds: usize, repeat: u64) -> Vec<PathCost> {
    let runs = rounds as u64 * repeat;
    let floor_rounds = cases
        .iter()
        .zip(&gathered)
        .find(|(case, _)| case.name == FLOOR)
        .map(|(_, state)| state.samples.clone())
        .expect("a floor among the cases");
    let by_name: BTreeMap<&str, Vec<i64>> = cases
        .iter()
        .zip(&gathered)
        .map(|(case, state)| (case.name.as_str(), state.samples.clone()))
        .collect();
    cases
        .iter()
        .zip(gathered)
        .map(|(case, state)| {
            let mut ratios = vec![Ratio::of_rounds(
                FLOOR,
                &state.samples,
                &floor_rounds,
                |c, f| c / f,
            )];
            for other in &case.compare {
                let theirs = by_name
                    .get(other)
                    .unwrap_or_else(|| panic!("{}: no row {other} to compare with", case.name));
                let above = |r: usize, samples: &[i64]| samples[r] - floor_rounds[r];
                let ours: Vec<i64> = (0..rounds).map(|r| above(r, &state.samples)).collect();
                let them: Vec<i64> = (0..rounds).map(|r| above(r, theirs)).collect();
                ratios.push(Ratio::of_rounds(other, &ours, &them, |a, b| a / b));
            }
            let mut reason = if case.target == program_names::BALANCER {
                top_reason(&state.moved, runs)
            } else {
                "-".to_owned()
            };
            if case.new_flows_of.is_some() && state.new_flows != runs {
                let _ = write!(
                    reason,
                    "; NOT every run a new flow: {} of {runs}",
                    state.new_flows
                );
            }
            let mut sorted = state.samples.clone();
            sorted.sort_unstable();
            let mut wrapper = state.wrapper.clone();
            wrapper.sort_unstable();
            let cost = PathCost {
                name: case.name.clone(),
                description: case.description.clone(),
                best: sorted[0],
                median: sorted[rounds / 2],
                max: sorted[rounds - 1],
                wrapper: wrapper[rounds / 2],
                verdict: verdict(state.action).to_owned(),
                reason,
                rounds: state.samples,
                ratios,
            };
            print_row(&cost, floor_rounds[rounds / 2]);
            cost
        })
        .collect()
}

/// The column heads [`print_row`] writes under.
pub fn print_heading() {
    println!(
        "{:<16} {:>6} {:>11} {:>7} {:>7}  {:<8} {:<28} reason (share of runs)",
        "path", "median", "min-max", "wrapper", "+floor", "verdict", "ratios (median of rounds)"
    );
}

/// One row as the bench prints it.
pub fn print_row(cost: &PathCost, floor: i64) {
    let ratios = cost
        .ratios
        .iter()
        .map(|ratio| format!("{:.2}x {}", ratio.median, ratio.to))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{:<16} {:>6} {:>11} {:>7} {:>7}  {:<8} {:<28} {}",
        cost.name,
        cost.median,
        format!("{}-{}", cost.best, cost.max),
        cost.wrapper,
        cost.median - floor,
        cost.verdict,
        ratios,
        cost.reason
    );
}

fn prepare(harness: &mut Harness, case: &Case, runs: u64) -> Vec<u8> {
    harness
        .dataplane
        .prepare_bench_varied(case.target, &case.frame, case.vary, runs)
        .expect("prepare the wrapper")
}

/// One `BPF_PROG_TEST_RUN` of `program` with `repeat`, the frame arriving
/// as `arm` says: mean ns per run and the verdict.
pub fn run(
    harness: &Harness,
    program: &'static str,
    arm: Arm,
    frame: &[u8],
    repeat: u32,
) -> (i64, u32) {
    let program = harness
        .dataplane
        .bench_program(program)
        .expect("bench program");
    // Room for encapsulation headers the program adds.
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = (arm == Arm::One)
        .then(|| ingress_ctx(frame.len(), lb::netlink::ifindex("lb0").expect("lb0")));
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx.as_deref(),
        repeat,
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (
        i64::try_from(result.duration.as_nanos()).unwrap_or(i64::MAX),
        result.return_value,
    )
}

/// A `struct xdp_md` for a frame of `len` bytes arriving on `ifindex`:
/// `data`, `data_end`, `data_meta`, `ingress_ifindex`, `rx_queue_index`,
/// `egress_ifindex` (the kernel takes `data_end` as the frame length).
pub fn ingress_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    let len = u32::try_from(len).expect("frame length");
    [0, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect()
}

/// The XDP verdict's name.
pub fn verdict(action: u32) -> &'static str {
    ["aborted", "drop", "pass", "tx", "redirect"]
        .get(action as usize)
        .copied()
        .unwrap_or("?")
}

/// The reason counter that moved most, with its share of `runs`.
pub fn top_reason(moved: &BTreeMap<Reason, u64>, runs: u64) -> String {
    moved.iter().max_by_key(|(_, moved)| **moved).map_or_else(
        || "none".to_owned(),
        |(reason, moved)| {
            #[allow(clippy::cast_precision_loss, reason = "a percentage")]
            let share = *moved as f64 * 100.0 / runs as f64;
            format!("{} ({share:.0}%)", reason.name())
        },
    )
}

/// The new-flow counter of the service with id `service`.
pub fn new_flows(harness: &Harness, service: u32) -> u64 {
    harness
        .dataplane
        .service_traffic(service)
        .expect("service counters")
        .new_flows
}

/// The id of the planned service `name`.
pub fn service_id(harness: &Harness, name: &str) -> u32 {
    harness
        .planner
        .planned()
        .iter()
        .find(|service| service.name == name)
        .unwrap_or_else(|| panic!("service {name} planned"))
        .value
        .id
}

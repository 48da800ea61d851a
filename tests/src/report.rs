//! The benchmark report: what `cargo xtask bench` measured, written as
//! `results/<UTC date-time>.json`, a Markdown page with one table per section
//! and a PNG bar chart of the per-packet cost above the floor.
//!
//! The measuring lives in `benches/dataplane.rs`; this module only holds the
//! numbers and renders them. End-to-end rows (connections and requests per
//! second through a running balancer, and through `haproxy`, `nftables` and no
//! balancer beside it) come from [`crate::endtoend`]: hand them over with
//! [`Report::add_end_to_end`] before [`Report::write`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

/// The machine the numbers were taken on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// Online CPUs (`nproc`).
    pub nproc: u64,
}

impl Machine {
    /// Reads the running machine's facts (`unknown` where one cannot be read).
    pub fn detect() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        // SAFETY: sysconf has no preconditions. Not the affinity mask: the
        // benchmark pins itself to one CPU.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Self {
            kernel,
            cpu,
            nproc: u64::try_from(online).unwrap_or(0),
        }
    }
}

/// The cost of one data-plane path, in nanoseconds per packet, with the
/// frame-restoring wrapper's own cost subtracted.
#[derive(Clone, Debug)]
pub struct PathCost {
    /// JSON key (`nat`, `new_flow`, ...).
    pub name: String,
    /// What the case is, for people.
    pub description: String,
    /// Best round.
    pub best: i64,
    /// Median round.
    pub median: i64,
    /// Worst round.
    pub max: i64,
    /// The wrapper's cost (median), already subtracted above.
    pub wrapper: i64,
    /// The XDP verdict (`tx`, `pass`, `drop`, ...).
    pub verdict: String,
    /// The reason counter that moved on every run (`-` for the floor).
    pub reason: String,
    /// Every round's figure, in the order timed (empty for rows that are
    /// not timed in interleaved rounds).
    pub rounds: Vec<i64>,
    /// Ratios taken round by round in the same run (the first to the
    /// floor; empty where not timed in interleaved rounds).
    pub ratios: Vec<Ratio>,
}

/// A row's ratio to another, taken in each round, then summarised.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// The row divided by: `floor` (whole costs), or another row (costs
    /// above the floor).
    pub to: String,
    /// Median over rounds.
    pub median: f64,
    /// Lowest round.
    pub low: f64,
    /// Highest round.
    pub high: f64,
}

impl Ratio {
    /// `ratio(ours[r], theirs[r])` for every round `r`, summarised.
    #[allow(clippy::cast_precision_loss, reason = "nanoseconds, far below 2^52")]
    pub fn of_rounds(
        to: &str,
        ours: &[i64],
        theirs: &[i64],
        ratio: impl Fn(f64, f64) -> f64,
    ) -> Self {
        let mut each: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| ratio(*a as f64, *b as f64))
            .collect();
        each.sort_by(f64::total_cmp);
        Self {
            to: to.to_owned(),
            median: each.get(each.len() / 2).copied().unwrap_or(f64::NAN),
            low: each.first().copied().unwrap_or(f64::NAN),
            high: each.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// A target on a ratio: `row` at most `limit` times `to`, in one run.
#[derive(Clone, Debug)]
pub struct Target {
    /// The row.
    pub row: String,
    /// What it is divided by (a [`Ratio::to`]).
    pub to: String,
    /// The most the ratio's median may be.
    pub limit: f64,
}

/// Forwarded packets per second through one core (live frames).
#[derive(Clone, Debug)]
pub struct PpsRow {
    /// JSON key (`floor`, `dsr`, `nat`, ...).
    pub name: String,
    /// What the case is.
    pub description: String,
    /// Frames sent per round.
    pub frames: u64,
    /// Median over the rounds.
    pub pps: f64,
    /// Every round's figure.
    pub rounds: Vec<f64>,
    /// Frames the receiving end saw, summed over the rounds (`None` when
    /// the counters could not be read).
    pub delivered: Option<u64>,
    /// Median over the rounds of this case's rate over the floor's in the
    /// same round (the cases take turns).
    pub ratio_to_floor: f64,
}

/// What `lb trace` costs a packet while no trace is attached: the same path
/// timed on the object built with the feature and without it, alternately.
#[derive(Clone, Debug)]
pub struct TraceCostRow {
    /// The per-packet path (`pass`, `nat`, ...).
    pub name: String,
    /// Mean ns per packet with the feature (wrapper subtracted).
    pub with_ns: f64,
    /// Mean ns per packet without it.
    pub without_ns: f64,
    /// Mean of the paired differences, with minus without.
    pub delta_ns: f64,
    /// Two standard errors of that mean: the difference is `delta_ns` ±
    /// this, at about 95 % confidence.
    pub margin_ns: f64,
    /// Pairs measured (each `ROUNDS` x `REPEAT` runs per build).
    pub pairs: usize,
}

/// Connection sync's cost to one data-path case: the same frame timed with
/// `SETTINGS_SYNC` off and on, in pairs of rounds whose order alternates;
/// the ring drained between rounds.
#[derive(Clone, Debug)]
pub struct SyncCostRow {
    /// The case (`nat`, `dsr`, `new_flow`); its rows in the per-packet table
    /// are `<name>_sync_off` and `<name>_sync_on`.
    pub name: String,
    /// What the case is.
    pub description: String,
    /// Median round with sync off, ns (wrapper subtracted, floor not).
    pub off_ns: i64,
    /// Median round with sync on.
    pub on_ns: i64,
    /// Mean of the paired differences, on minus off, ns.
    pub delta_ns: f64,
    /// Two standard errors of that mean.
    pub margin_ns: f64,
    /// Pairs of rounds.
    pub pairs: usize,
    /// Runs per round (`BPF_PROG_TEST_RUN` repeat).
    pub repeat: u32,
    /// Events drained from `SYNC_EVENTS` while on (expected: one per run
    /// for a new flow, none for an established one).
    pub events: u64,
    /// Events the ring refused (`SYNC_LOST` grew by this).
    pub lost: u64,
}

/// Sync lag: balancer A schedules new flows at a paced rate, its sync
/// thread sends them, balancer B's installs them; per flow, the time from
/// A's data path reporting it to B's counting it installed.
#[derive(Clone, Debug, Default)]
pub struct SyncLag {
    /// New flows per second asked for.
    pub rate: u32,
    /// New flows per second achieved (first to last flow).
    pub achieved_rate: f64,
    /// Flows created on A.
    pub flows: u64,
    /// Flows per batch for the per-batch figures.
    pub batch: usize,
    /// Per-flow lag: median, 99th percentile and maximum, milliseconds.
    pub median_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Per batch of [`SyncLag::batch`] flows: (median, max) lag, ms.
    pub batches: Vec<(f64, f64)>,
    /// How often B's counter was read (median interval), microseconds: the
    /// resolution of each lag.
    pub poll_us: f64,
    /// Entries A's sync thread sent to B.
    pub sent: u64,
    /// Entries B received from A.
    pub received: u64,
    /// Of those, installed in B's connection table.
    pub installed: u64,
    /// Of those, already in B's table.
    pub existing: u64,
    /// B's refusals by reason (only the reasons that counted).
    pub refused: BTreeMap<String, u64>,
    /// Events A's data path could not put in its full ring (`SYNC_LOST`).
    pub events_lost: u64,
    /// Flows created on A that B had not installed when the wait ended.
    pub not_installed: u64,
}

/// One Maglev table build.
#[derive(Clone, Debug)]
pub struct MaglevRow {
    /// Table size (prime).
    pub m: u32,
    /// Backends.
    pub n: u32,
    /// Median build time, milliseconds.
    pub build_ms: f64,
    /// Largest backend share over the mean share.
    pub max_mean_share: f64,
    /// Slots that change owner when one backend leaves, percent of `m`.
    pub moved_pct: f64,
}

/// One control-plane reaction: plan and apply.
#[derive(Clone, Debug)]
pub struct ControlPlaneRow {
    /// JSON key.
    pub name: String,
    /// What changed.
    pub description: String,
    /// Median, microseconds.
    pub median_us: f64,
    /// Best, microseconds.
    pub best_us: f64,
    /// Worst, microseconds.
    pub max_us: f64,
    /// The apply part alone (median), microseconds.
    pub apply_us: f64,
    /// Planner writes (`Write` values).
    pub writes: u64,
    /// Map element updates those writes make (each Maglev slot is one).
    pub map_updates: u64,
}

/// One end-to-end measurement through a running balancer (filled by
/// [`crate::endtoend`]): medians over the repetitions, with their spread.
#[derive(Clone, Debug, Default)]
pub struct EndToEndRow {
    /// Scenario name.
    pub name: String,
    /// New connections per second.
    pub conn_per_s: f64,
    /// Requests per second.
    pub req_per_s: f64,
    /// Median request latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile request latency, milliseconds.
    pub p99_ms: f64,
    /// What the scenario is, for people.
    pub description: String,
    /// Lowest and highest `conn_per_s` over the repetitions.
    pub conn_range: (f64, f64),
    /// Lowest and highest `req_per_s` over the repetitions.
    pub req_range: (f64, f64),
    /// Lowest and highest `p99_ms` over the repetitions.
    pub p99_range: (f64, f64),
    /// Repetitions that produced figures.
    pub runs: usize,
    /// Socket errors and non-2xx answers the load generator counted, summed
    /// over the runs.
    pub errors: u64,
}

/// Everything one `cargo xtask bench` measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// When the run started, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    /// Where.
    pub machine: Machine,
    /// Per-packet cost per path; the one named `floor` is the reference.
    pub per_packet: Vec<PathCost>,
    /// Packets per second.
    pub pps: Vec<PpsRow>,
    /// Maglev builds.
    pub maglev: Vec<MaglevRow>,
    /// Control-plane reactions.
    pub control_plane: Vec<ControlPlaneRow>,
    /// End-to-end rows (empty when not measured).
    pub end_to_end: Vec<EndToEndRow>,
    /// What the trace flag costs with no trace attached (empty when the
    /// object without the feature was not given).
    pub trace_cost: Vec<TraceCostRow>,
    /// Connection sync's data-path cost (empty when not measured).
    pub sync_cost: Vec<SyncCostRow>,
    /// Sync lag between two balancers (`None` when not measured).
    pub sync_lag: Option<SyncLag>,
    /// Targets on the per-packet ratios, checked in the report.
    pub targets: Vec<Target>,
    /// Sections that were asked for but could not be measured, by key
    /// (`pps`, ...): why (e.g. live frames refused by the kernel).
    pub not_measured: BTreeMap<String, String>,
    /// Method notes, printed under the tables.
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report for this machine, stamped now.
    pub fn new() -> Self {
        Self {
            started: utc_now(),
            machine: Machine::detect(),
            per_packet: Vec::new(),
            targets: Vec::new(),
            pps: Vec::new(),
            maglev: Vec::new(),
            control_plane: Vec::new(),
            end_to_end: Vec::new(),
            trace_cost: Vec::new(),
            sync_cost: Vec::new(),
            sync_lag: None,
            not_measured: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Adds end-to-end rows.
    pub fn add_end_to_end(&mut self, rows: impl IntoIterator<Item = EndToEndRow>) {
        self.end_to_end.extend(rows);
    }

    /// The floor's median, if measured.
    pub fn floor_ns(&self) -> Option<i64> {
        self.per_packet
            .iter()
            .find(|cost| cost.name == "floor")
            .map(|cost| cost.median)
    }

    fn above_floor(&self, cost: &PathCost) -> Option<i64> {
        self.floor_ns().map(|floor| cost.median - floor)
    }

    /// The ratio `row` / `to` measured in this run, if any.
    pub fn ratio(&self, row: &str, to: &str) -> Option<&Ratio> {
        self.per_packet
            .iter()
            .find(|cost| cost.name == row)?
            .ratios
            .iter()
            .find(|ratio| ratio.to == to)
    }

    /// Each target with its measured ratio (`None`: not measured) and
    /// whether the median meets it.
    pub fn target_results(&self) -> Vec<(&Target, Option<&Ratio>, bool)> {
        self.targets
            .iter()
            .map(|target| {
                let ratio = self.ratio(&target.row, &target.to);
                let met = ratio.is_some_and(|ratio| ratio.median <= target.limit);
                (target, ratio, met)
            })
            .collect()
    }

    /// `row`'s connection and request rates over those of the end-to-end
    /// row named `reference` (`haproxy`, `direct`), if both were measured.
    pub fn end_to_end_ratios(&self, row: &EndToEndRow, reference: &str) -> Option<(f64, f64)> {
        let base = self.end_to_end.iter().find(|r| r.name == reference)?;
        (base.conn_per_s > 0.0 && base.req_per_s > 0.0).then(|| {
            (
                row.conn_per_s / base.conn_per_s,
                row.req_per_s / base.req_per_s,
            )
        })
    }

    /// The `end_to_end` list: each row's medians (the stable keys `name`,
    /// `conn_per_s`, `req_per_s`, `p50_ms`, `p99_ms`), spread and ratios.
    fn end_to_end_json(&self) -> Vec<Value> {
        self.end_to_end
            .iter()
            .map(|row| {
                let ratio = |reference: &str| {
                    self.end_to_end_ratios(row, reference)
                        .map(|(conn, req)| json!({ "conn": round3(conn), "req": round3(req) }))
                };
                json!({
                    "name": row.name,
                    "conn_per_s": row.conn_per_s.round(),
                    "req_per_s": row.req_per_s.round(),
                    "p50_ms": round3(row.p50_ms),
                    "p99_ms": round3(row.p99_ms),
                    "description": row.description,
                    "conn_min": row.conn_range.0.round(),
                    "conn_max": row.conn_range.1.round(),
                    "req_min": row.req_range.0.round(),
                    "req_max": row.req_range.1.round(),
                    "p99_min_ms": round3(row.p99_range.0),
                    "p99_max_ms": round3(row.p99_range.1),
                    "runs": row.runs,
                    "errors": row.errors,
                    "ratio_to_haproxy": ratio("haproxy"),
                    "ratio_to_direct": ratio("direct"),
                })
            })
            .collect()
    }

    /// The `trace_cost` object: per path, the costs with and without the
    /// feature and their difference.
    fn trace_cost_json(&self) -> Map<String, Value> {
        self.trace_cost
            .iter()
            .map(|row| {
                (
                    row.name.clone(),
                    json!({
                        "with_ns": round3(row.with_ns),
                        "without_ns": round3(row.without_ns),
                        "delta_ns": round3(row.delta_ns),
                        "margin_ns": round3(row.margin_ns),
                        "pairs": row.pairs,
                    }),
                )
            })
            .collect()
    }

    /// The `sync_cost` object: per case, off and on (ns, and above the
    /// floor) and the paired difference.
    fn sync_cost_json(&self) -> Map<String, Value> {
        let floor = self.floor_ns();
        self.sync_cost
            .iter()
            .map(|row| {
                (
                    row.name.clone(),
                    json!({
                        "description": row.description,
                        "off_ns": row.off_ns,
                        "on_ns": row.on_ns,
                        "off_above_floor": floor.map(|f| row.off_ns - f),
                        "on_above_floor": floor.map(|f| row.on_ns - f),
                        "delta_ns": round3(row.delta_ns),
                        "margin_ns": round3(row.margin_ns),
                        "pairs": row.pairs,
                        "repeat": row.repeat,
                        "events": row.events,
                        "lost": row.lost,
                    }),
                )
            })
            .collect()
    }

    /// The `sync_lag` object, `null` when not measured.
    fn sync_lag_json(&self) -> Value {
        let Some(lag) = &self.sync_lag else {
            return Value::Null;
        };
        json!({
            "rate": lag.rate,
            "achieved_rate": lag.achieved_rate.round(),
            "flows": lag.flows,
            "median_ms": round3(lag.median_ms),
            "p99_ms": round3(lag.p99_ms),
            "max_ms": round3(lag.max_ms),
            "batch": lag.batch,
            "batches": lag
                .batches
                .iter()
                .map(|(median, max)| json!({ "median_ms": round3(*median), "max_ms": round3(*max) }))
                .collect::<Vec<_>>(),
            "poll_us": round3(lag.poll_us),
            "sent": lag.sent,
            "received": lag.received,
            "installed": lag.installed,
            "existing": lag.existing,
            "refused": lag.refused,
            "events_lost": lag.events_lost,
            "not_installed": lag.not_installed,
        })
    }

    /// `per_packet_ns` (medians) and `per_packet` (whole rows) of the JSON.
    fn per_packet_json(&self) -> (Map<String, Value>, Map<String, Value>) {
        let mut per_packet_ns = Map::new();
        let mut per_packet = Map::new();
        for cost in &self.per_packet {
            per_packet_ns.insert(cost.name.clone(), json!(cost.median));
            per_packet.insert(
                cost.name.clone(),
                json!({
                    "description": cost.description,
                    "best": cost.best,
                    "median": cost.median,
                    "max": cost.max,
                    "above_floor": self.above_floor(cost),
                    "wrapper": cost.wrapper,
                    "verdict": cost.verdict,
                    "reason": cost.reason,
                    "rounds": cost.rounds,
                    "ratios": cost.ratios.iter().map(|ratio| {
                        (ratio.to.clone(), json!({
                            "median": round3(ratio.median),
                            "low": round3(ratio.low),
                            "high": round3(ratio.high),
                        }))
                    }).collect::<Map<String, Value>>(),
                }),
            );
        }
        (per_packet_ns, per_packet)
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        let (per_packet_ns, per_packet) = self.per_packet_json();
        let pps: Map<String, Value> = self
            .pps
            .iter()
            .map(|row| {
                (
                    row.name.clone(),
                    json!({
                        "description": row.description,
                        "pps": row.pps.round(),
                        "rounds": row.rounds.iter().map(|p| p.round()).collect::<Vec<_>>(),
                        "frames": row.frames,
                        "delivered": row.delivered,
                        "ratio_to_floor": round3(row.ratio_to_floor),
                    }),
                )
            })
            .collect();
        let maglev: Map<String, Value> = self
            .maglev
            .iter()
            .map(|row| {
                (
                    format!("m{}_n{}", row.m, row.n),
                    json!({
                        "m": row.m,
                        "n": row.n,
                        "build_ms": round3(row.build_ms),
                        "max_mean_share": round3(row.max_mean_share),
                        "moved_pct": round3(row.moved_pct),
                    }),
                )
            })
            .collect();
        let control_plane: Map<String, Value> = self
            .control_plane
            .iter()
            .map(|row| {
                (
                    row.name.clone(),
                    json!({
                        "description": row.description,
                        "median_us": round3(row.median_us),
                        "best_us": round3(row.best_us),
                        "max_us": round3(row.max_us),
                        "apply_us": round3(row.apply_us),
                        "writes": row.writes,
                        "map_updates": row.map_updates,
                    }),
                )
            })
            .collect();
        let end_to_end = self.end_to_end_json();
        let trace_cost = self.trace_cost_json();
        let sync_cost = self.sync_cost_json();
        let sync_lag = self.sync_lag_json();
        json!({
            "started": self.started,
            "machine": {
                "kernel": self.machine.kernel,
                "cpu": self.machine.cpu,
                "nproc": self.machine.nproc,
            },
            "per_packet_ns": per_packet_ns,
            "per_packet": per_packet,
            "targets": self.target_results().iter().map(|(target, ratio, met)| json!({
                "row": target.row,
                "to": target.to,
                "limit": target.limit,
                "median": ratio.map(|ratio| round3(ratio.median)),
                "met": met,
            })).collect::<Vec<_>>(),
            "pps": pps,
            "maglev": maglev,
            "control_plane": control_plane,
            "end_to_end": end_to_end,
            "trace_cost": trace_cost,
            "sync_cost": sync_cost,
            "sync_lag": sync_lag,
            "not_measured": self.not_measured,
            "notes": self.notes,
        })
    }

    /// The Markdown page; `chart` is the PNG's file name, if one was drawn.
    pub fn to_markdown(&self, chart: Option<&str>) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# lb benchmarks, {}\n", self.started);
        let _ = writeln!(md, "| kernel | CPU | nproc |\n| --- | --- | --- |");
        let _ = writeln!(md, "| {} | {} | {} |\n", m.kernel, m.cpu, m.nproc);

        self.per_packet_markdown(&mut md, chart);
        self.trace_cost_markdown(&mut md);
        self.sync_cost_markdown(&mut md);
        self.pps_maglev_markdown(&mut md);
        let _ = writeln!(md, "\n## Control plane: plan + apply\n");
        let _ = writeln!(
            md,
            "| case | description | median (µs) | best | max | of which apply (median) | writes | map updates |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for row in &self.control_plane {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                row.name,
                row.description,
                row.median_us,
                row.best_us,
                row.max_us,
                row.apply_us,
                row.writes,
                row.map_updates
            );
        }

        self.sync_lag_markdown(&mut md);
        self.end_to_end_markdown(&mut md);
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Method\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }

    fn trace_cost_markdown(&self, md: &mut String) {
        if self.trace_cost.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## `lb trace` with no trace attached\n");
        let _ = writeln!(
            md,
            "The same paths on the object built with the feature and without it \
             (`--no-default-features`), loaded alternately; means of the rounds, and the \
             mean paired difference ± two standard errors.\n"
        );
        let _ = writeln!(
            md,
            "| path | with (ns) | without (ns) | difference (ns) | pairs |\n\
             | --- | ---: | ---: | ---: | ---: |"
        );
        for row in &self.trace_cost {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:+.2} ± {:.2} | {} |",
                row.name, row.with_ns, row.without_ns, row.delta_ns, row.margin_ns, row.pairs
            );
        }
    }

    fn sync_cost_markdown(&self, md: &mut String) {
        if self.sync_cost.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Connection sync's data-path cost\n");
        let _ = writeln!(
            md,
            "Each case timed with `SETTINGS_SYNC` off and on, in pairs of rounds whose \
             order alternates; `SYNC_EVENTS` drained between rounds (not during them), \
             each round's events fitting the 1 MiB ring. ns above the floor (medians), \
             and the mean paired difference ± two standard errors.\n"
        );
        let _ = writeln!(
            md,
            "| case | description | sync off | sync on | on − off (ns) | rounds × runs | \
             events | lost |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let floor = self.floor_ns().unwrap_or(0);
        for row in &self.sync_cost {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:+.2} ± {:.2} | {} × {} | {} | {} |",
                row.name,
                row.description,
                row.off_ns - floor,
                row.on_ns - floor,
                row.delta_ns,
                row.margin_ns,
                row.pairs,
                row.repeat,
                row.events,
                row.lost
            );
        }
    }

    fn sync_lag_markdown(&self, md: &mut String) {
        let Some(lag) = &self.sync_lag else {
            if let Some(why) = self.not_measured.get("sync_lag") {
                let _ = writeln!(md, "\n## Sync lag\n\nNot measured: {why}.");
            }
            return;
        };
        let _ = writeln!(md, "\n## Sync lag\n");
        let _ = writeln!(
            md,
            "Balancer A creates new flows at a paced rate; per flow, the time from A's data \
             path reporting it until balancer B counts it installed in its connection table \
             (B's counter read every {:.0} µs, median).\n",
            lag.poll_us
        );
        let _ = writeln!(
            md,
            "| new flows/s (asked) | achieved | flows | median (ms) | p99 (ms) | max (ms) | \
             sent | received | installed | existing | refused | events lost | not installed |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
        );
        let refused = if lag.refused.is_empty() {
            "0".to_owned()
        } else {
            lag.refused
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {refused} | {} | {} |",
            lag.rate,
            lag.achieved_rate,
            lag.flows,
            lag.median_ms,
            lag.p99_ms,
            lag.max_ms,
            lag.sent,
            lag.received,
            lag.installed,
            lag.existing,
            lag.events_lost,
            lag.not_installed
        );
        let batches = lag
            .batches
            .iter()
            .map(|(median, max)| format!("{median:.2}/{max:.2}"))
            .collect::<Vec<_>>()
            .join(" · ");
        let _ = writeln!(
            md,
            "\nPer batch of {} flows, median/max ms: {batches}",
            lag.batch
        );
    }

    fn end_to_end_markdown(&self, md: &mut String) {
        let _ = writeln!(md, "\n## End to end\n");
        if self.end_to_end.is_empty() {
            let _ = writeln!(md, "Not measured.");
            return;
        }
        let _ = writeln!(
            md,
            "Medians over the repetitions, min–max in brackets; × haproxy and × direct \
             are the ratios of the medians.\n"
        );
        let _ = writeln!(
            md,
            "| scenario | description | conn/s | × haproxy | × direct | keep-alive req/s | \
             × haproxy | × direct | p50 (ms) | p99 (ms) | errors |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let ratio = |row: &EndToEndRow, reference: &str| {
            self.end_to_end_ratios(row, reference).map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |(conn, req)| (format!("{conn:.2}"), format!("{req:.2}")),
            )
        };
        for row in &self.end_to_end {
            let (conn_h, req_h) = ratio(row, "haproxy");
            let (conn_d, req_d) = ratio(row, "direct");
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} ({:.0}–{:.0}) | {conn_h} | {conn_d} | {:.0} ({:.0}–{:.0}) | \
                 {req_h} | {req_d} | {:.2} | {:.2} ({:.2}–{:.2}) | {} |",
                row.name,
                row.description,
                row.conn_per_s,
                row.conn_range.0,
                row.conn_range.1,
                row.req_per_s,
                row.req_range.0,
                row.req_range.1,
                row.p50_ms,
                row.p99_ms,
                row.p99_range.0,
                row.p99_range.1,
                row.errors
            );
        }
    }

    fn per_packet_markdown(&self, md: &mut String, chart: Option<&str>) {
        let _ = writeln!(md, "## Per-packet cost (ns, BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            md,
            "| path | case | best | median | max | above floor | ratios (median of rounds, range) | verdict | reason |\n\
             | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |"
        );
        for cost in &self.per_packet {
            let above = self
                .above_floor(cost)
                .map_or_else(|| "-".into(), |ns| ns.to_string());
            let ratios = if cost.ratios.is_empty() {
                "-".to_owned()
            } else {
                cost.ratios
                    .iter()
                    .map(|r| format!("{:.2}x {} ({:.2}-{:.2})", r.median, r.to, r.low, r.high))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {above} | {ratios} | {} | {} |",
                cost.name,
                cost.description,
                cost.best,
                cost.median,
                cost.max,
                cost.verdict,
                cost.reason
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(
                md,
                "\n### Targets: ratios in this run\n\n\
                 | row | divided by | limit | median (range over rounds) | met |\n\
                 | --- | --- | ---: | --- | --- |"
            );
            for (target, ratio, met) in self.target_results() {
                let measured = ratio.map_or_else(
                    || "not measured".to_owned(),
                    |r| format!("{:.2} ({:.2}-{:.2})", r.median, r.low, r.high),
                );
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {measured} | {} |",
                    target.row,
                    target.to,
                    target.limit,
                    if met { "yes" } else { "no" }
                );
            }
        }
        if let Some(chart) = chart {
            let _ = writeln!(md, "\n![ns above the floor per path]({chart})");
        }
    }

    fn pps_maglev_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Packets per second, one core (live frames, native XDP on veth)\n"
        );
        if let Some(why) = self.not_measured.get("pps") {
            let _ = writeln!(md, "Not measured: {why}.");
        } else if self.pps.is_empty() {
            let _ = writeln!(md, "Not measured.");
        } else {
            self.pps_table(md);
        }

        let _ = writeln!(md, "\n## Maglev table builds\n");
        let _ = writeln!(
            md,
            "| M | N | build (ms) | max / mean share | slots moved when one backend leaves |\n\
             | ---: | ---: | ---: | ---: | ---: |"
        );
        for row in &self.maglev {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.3} | {:.2} % (ideal {:.2} %) |",
                row.m,
                row.n,
                row.build_ms,
                row.max_mean_share,
                row.moved_pct,
                100.0 / f64::from(row.n)
            );
        }
    }

    fn pps_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "| case | description | frames/round | Mpps (median) | rounds | ratio to floor |\n\
             | --- | --- | ---: | ---: | --- | ---: |"
        );
        for row in &self.pps {
            let rounds = row
                .rounds
                .iter()
                .map(|p| format!("{:.2}", p / 1e6))
                .collect::<Vec<_>>()
                .join(" / ");
            let ratio = format!("{:.2}", row.ratio_to_floor);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {rounds} | {ratio} |",
                row.name,
                row.description,
                row.frames,
                row.pps / 1e6
            );
        }
    }

    /// Draws the chart: ns above the floor per path, and requests per second
    /// per end-to-end scenario when there are any.
    #[allow(clippy::too_many_lines, reason = "one chart, drawn top to bottom")]
    pub fn draw_chart(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;

        register_font()?;
        let floor = self.floor_ns().unwrap_or(0);
        // Plotters counts segments from the bottom: reversed, the first
        // path is drawn at the top.
        let bars: Vec<(String, i64)> = self
            .per_packet
            .iter()
            .rev()
            .filter(|cost| cost.name != "floor")
            .map(|cost| (cost.name.clone(), cost.median - floor))
            .collect();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let label = |names: &[String], value: &SegmentValue<u32>| match value {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        };
        let height = 120
            + 26 * count(bars.len() + self.end_to_end.len())
            + if self.end_to_end.is_empty() { 0 } else { 120 };
        let root = BitMapBackend::new(path, (960, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = if self.end_to_end.is_empty() {
            (root.clone(), None)
        } else {
            let (top, bottom) = root.split_vertically(80 + 26 * count(bars.len()));
            (top, Some(bottom))
        };

        let names: Vec<String> = bars.iter().map(|(name, _)| name.clone()).collect();
        let low = bars.iter().map(|(_, v)| *v).min().unwrap_or(0).min(0);
        let high = bars.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!("lb: ns per packet above the floor ({floor} ns), median"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(110)
            .build_cartesian_2d(
                low..high + high / 8 + 1,
                (0..count(bars.len())).into_segmented(),
            )?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len())
            .y_label_formatter(&|value| label(&names, value))
            .x_desc("ns above floor")
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().zip(0..).map(|((_, value), i)| {
            let mut bar = Rectangle::new(
                [
                    (0, SegmentValue::Exact(i)),
                    (*value, SegmentValue::Exact(i + 1)),
                ],
                BLUE.mix(0.7).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))?;
        chart.draw_series(bars.iter().zip(0..).map(|((_, value), i)| {
            Text::new(
                format!(" {value}"),
                ((*value).max(0), SegmentValue::CenterOf(i)),
                ("sans-serif", 13),
            )
        }))?;

        if let Some(bottom) = bottom {
            let rows: Vec<&EndToEndRow> = self.end_to_end.iter().rev().collect();
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            let high = self
                .end_to_end
                .iter()
                .map(|r| r.req_per_s)
                .fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(&bottom)
                .caption("end to end: requests per second", ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(110)
                .build_cartesian_2d(0.0..high * 1.15, (0..count(names.len())).into_segmented())?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(names.len())
                .y_label_formatter(&|value| label(&names, value))
                .label_style(("sans-serif", 14))
                .draw()?;
            chart.draw_series(rows.iter().zip(0..).map(|(row, i)| {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (row.req_per_s, SegmentValue::Exact(i + 1)),
                    ],
                    GREEN.mix(0.7).filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))?;
        }
        root.present()?;
        Ok(())
    }

    /// Writes `<dir>/<started>.json`, `.md` and `.png` (the chart is skipped,
    /// with a note on stderr, if it cannot be drawn); returns the paths
    /// written.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let stem = self.started.replace(':', "");
        let json_path = dir.join(format!("{stem}.json"));
        let md_path = dir.join(format!("{stem}.md"));
        let png_path = dir.join(format!("{stem}.png"));
        let mut text = serde_json::to_string_pretty(&self.to_json())?;
        text.push('\n');
        std::fs::write(&json_path, text)?;
        let chart = match self.draw_chart(&png_path) {
            Ok(()) => true,
            Err(error) => {
                eprintln!("chart not drawn: {error:#}");
                false
            }
        };
        let chart_name = format!("{stem}.png");
        std::fs::write(
            &md_path,
            self.to_markdown(chart.then_some(chart_name.as_str())),
        )?;
        let mut written = vec![json_path, md_path];
        if chart {
            written.push(png_path);
        }
        Ok(written)
    }
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the chart's text font comes from (Debian's `fonts-dejavu-core`,
/// which `cargo xtask bench` installs).
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font as `sans-serif` for plotters' `ab_glyph` text (once).
pub fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        FONT_FILES
            .iter()
            .find_map(|file| std::fs::read(file).ok())
            .is_some_and(|bytes| {
                // Leaked once: plotters keeps fonts for the process's life.
                let bytes: &'static [u8] = Vec::leak(bytes);
                plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
            })
    });
    anyhow::ensure!(
        ok,
        "no usable font among {FONT_FILES:?} (apt-get install fonts-dejavu-core)"
    );
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn renders_every_section() {
        let mut report = Report::new();
        for (name, median) in [("floor", 20), ("nat", 75)] {
            report.per_packet.push(PathCost {
                name: name.into(),
                description: name.into(),
                best: median,
                median,
                max: median,
                wrapper: 10,
                verdict: "tx".into(),
                reason: "-".into(),
                rounds: vec![median; 3],
                ratios: vec![Ratio::of_rounds(
                    "floor",
                    &[median; 3],
                    &[20, 20, 20],
                    |a, b| a / b,
                )],
            });
        }
        report.targets.push(Target {
            row: "nat".into(),
            to: "floor".into(),
            limit: 3.0,
        });
        report.add_end_to_end([EndToEndRow {
            name: "http".into(),
            conn_per_s: 1.0,
            req_per_s: 2.0,
            p50_ms: 0.5,
            p99_ms: 1.5,
            ..EndToEndRow::default()
        }]);
        report.sync_cost.push(SyncCostRow {
            name: "new_flow".into(),
            description: "new flow".into(),
            off_ns: 300,
            on_ns: 340,
            delta_ns: 40.0,
            margin_ns: 5.0,
            pairs: 200,
            repeat: 10_000,
            events: 2_000_000,
            lost: 0,
        });
        report.sync_lag = Some(SyncLag {
            rate: 10_000,
            flows: 30_000,
            batch: 1_000,
            median_ms: 2.5,
            batches: vec![(2.5, 5.5)],
            ..SyncLag::default()
        });
        report.not_measured.insert(
            "pps".into(),
            "live frames refused by this kernel (EPERM)".into(),
        );
        let json = report.to_json();
        assert_eq!(
            json["not_measured"]["pps"],
            "live frames refused by this kernel (EPERM)"
        );
        assert_eq!(json["per_packet_ns"]["nat"], 75);
        assert_eq!(json["sync_cost"]["new_flow"]["on_above_floor"], 320);
        assert_eq!(json["sync_lag"]["median_ms"], 2.5);
        assert_eq!(json["sync_lag"]["batches"][0]["max_ms"], 5.5);
        assert_eq!(json["per_packet"]["nat"]["above_floor"], 55);
        assert_eq!(json["end_to_end"][0]["name"], "http");
        let md = report.to_markdown(Some("chart.png"));
        assert!(
            md.contains("| nat | nat | 75 | 75 | 75 | 55 | 3.75x floor (3.75-3.75) | tx | - |"),
            "{md}"
        );
        assert!(
            md.contains("| nat | floor | 3.00 | 3.75 (3.75-3.75) | no |"),
            "{md}"
        );
        assert_eq!(json["targets"][0]["met"], false);
        assert_eq!(json["per_packet"]["nat"]["ratios"]["floor"]["median"], 3.75);
        assert!(
            md.contains("Not measured: live frames refused by this kernel (EPERM)."),
            "{md}"
        );
        assert!(
            md.contains("| new_flow | new flow | 280 | 320 | +40.00 ± 5.00 | 200 × 10000 |"),
            "{md}"
        );
        assert!(md.contains("| 10000 | 0 | 30000 | 2.50 |"), "{md}");
        let dir = std::env::temp_dir().join(format!("lb-report-{}", std::process::id()));
        let written = report.write(&dir).expect("write");
        let has_font = FONT_FILES.iter().any(|f| Path::new(f).exists());
        assert_eq!(written.len(), if has_font { 3 } else { 2 }, "{written:?}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

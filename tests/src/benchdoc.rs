//! `docs/BENCHMARKS.md`, generated from the reports in `results/`: every
//! figure in it names the file it comes from, and each per-packet row gives
//! its range over every run that measured it. `cargo xtask bench` writes it
//! after each run; the docs test (`tests/tests/docs.rs`) checks it is what
//! `results/` says.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

/// The generated page's path, from the repository root.
pub const PAGE: &str = "docs/BENCHMARKS.md";

/// One report of `results/`.
struct Run {
    /// `results/<name>.json`.
    file: String,
    json: Value,
}

fn runs(results: &Path) -> Vec<Run> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(results)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                .collect()
        })
        .unwrap_or_default();
    // The names are UTC date-times: sorted, oldest first.
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            let name = path.file_name()?.to_str()?.to_owned();
            Some(Run {
                file: format!("results/{name}"),
                json,
            })
        })
        .collect()
}

/// The page for the reports in `results`.
pub fn render(results: &Path) -> String {
    let runs = runs(results);
    let mut page = String::new();
    let _ = writeln!(
        page,
        "# Benchmarks\n\n\
         Generated from `results/` by `cargo xtask bench` (`tests/src/benchdoc.rs`); do not \
         edit. Every figure names the report it comes from. How each is measured: the \
         benchmark's own description at the top of `tests/benches/dataplane.rs`, and the \
         notes under each report's tables.\n"
    );
    per_packet(&mut page, &runs);
    end_to_end(&mut page, &runs);
    sync_lag(&mut page, &runs);
    page
}

fn f64_of(value: &Value) -> Option<f64> {
    value.as_f64()
}

/// The latest run whose `nat` row has ratios (a whole section 1 in
/// interleaved rounds, not a run of a few paths), its table and targets,
/// and each row's range over every run that measured it.
fn per_packet(page: &mut String, runs: &[Run]) {
    let Some(latest) = runs
        .iter()
        .rev()
        .find(|run| run.json["per_packet"]["nat"]["ratios"].is_object())
    else {
        let _ = writeln!(
            page,
            "## Per packet\n\nNo report with ratios in `results/`.\n"
        );
        return;
    };
    let machine = &latest.json["machine"];
    let _ = writeln!(
        page,
        "## Per packet: ratios in one run\n\n\
         From `{}` ({}, {} CPUs, Linux {}). `BPF_PROG_TEST_RUN`, every case timed in \
         interleaved rounds beside the floor (swap MACs, `XDP_TX`) and the reference \
         balancer (`ref_tunnel`, `ref_nat`: parse, one LRU lookup, IPIP or a nat rewrite, \
         `XDP_TX`). A ratio to a row divides costs above the floor, per round; the median \
         of the rounds, and their range, are given. One-arm rows leave by `XDP_TX`, \
         `_2arm` rows by a devmap redirect. The last column is the row's \
         ns above the floor over every report in `results/` that has it (the machine and \
         the code changed between them).\n",
        latest.file,
        machine["cpu"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["kernel"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        page,
        "| path | ns above floor | ratios (median, range over rounds) | all reports: min–max (n) |\n\
         | --- | ---: | --- | ---: |"
    );
    let rows = latest.json["per_packet"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut history: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for run in runs {
        if let Some(all) = run.json["per_packet"].as_object() {
            for (name, row) in all {
                if let Some(above) = row["above_floor"].as_i64() {
                    history.entry(name.clone()).or_default().push(above);
                }
            }
        }
    }
    // By name (a path's one-arm and two-arm rows side by side).
    for (name, row) in &rows {
        if name == "floor" {
            continue;
        }
        let ratios = row["ratios"].as_object().map_or_else(
            || "-".to_owned(),
            |ratios| {
                ratios
                    .iter()
                    .filter(|(to, _)| to.as_str() != "floor")
                    .map(|(to, ratio)| {
                        format!(
                            "{:.2}× {to} ({:.2}–{:.2})",
                            f64_of(&ratio["median"]).unwrap_or(f64::NAN),
                            f64_of(&ratio["low"]).unwrap_or(f64::NAN),
                            f64_of(&ratio["high"]).unwrap_or(f64::NAN)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        );
        let ratios = if ratios.is_empty() {
            "-".to_owned()
        } else {
            ratios
        };
        let all = history.get(name).map_or_else(
            || "-".to_owned(),
            |values| {
                let min = values.iter().min().copied().unwrap_or(0);
                let max = values.iter().max().copied().unwrap_or(0);
                format!("{min}–{max} ({})", values.len())
            },
        );
        let _ = writeln!(
            page,
            "| {name} | {} | {ratios} | {all} |",
            row["above_floor"]
        );
    }
    targets(page, latest);
}

/// The run's targets, with what it measured.
fn targets(page: &mut String, latest: &Run) {
    if let Some(targets) = latest.json["targets"].as_array() {
        let _ = writeln!(
            page,
            "\n### Targets, in the same run (`{}`)\n\n\
             | row | divided by | limit | median | met |\n| --- | --- | ---: | ---: | --- |",
            latest.file
        );
        for target in targets {
            let _ = writeln!(
                page,
                "| {} | {} | {} | {} | {} |",
                target["row"].as_str().unwrap_or("?"),
                target["to"].as_str().unwrap_or("?"),
                target["limit"],
                target["median"],
                if target["met"] == true { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(page);
}

/// The latest run with end-to-end rows.
fn end_to_end(page: &mut String, runs: &[Run]) {
    let Some(latest) = runs.iter().rev().find(|run| {
        run.json["end_to_end"]
            .as_array()
            .is_some_and(|rows| !rows.is_empty())
    }) else {
        return;
    };
    let _ = writeln!(
        page,
        "## End to end\n\nFrom `{}`: HTTP through each balancer in network namespaces \
         (`lb_tests::endtoend`), medians over the repetitions.\n\n\
         | scenario | connections/s | requests/s | p50 ms | p99 ms |\n\
         | --- | ---: | ---: | ---: | ---: |",
        latest.file
    );
    for row in latest.json["end_to_end"].as_array().into_iter().flatten() {
        let _ = writeln!(
            page,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} |",
            row["name"].as_str().unwrap_or("?"),
            f64_of(&row["conn_per_s"]).unwrap_or(f64::NAN),
            f64_of(&row["req_per_s"]).unwrap_or(f64::NAN),
            f64_of(&row["p50_ms"]).unwrap_or(f64::NAN),
            f64_of(&row["p99_ms"]).unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(page);
}

/// The latest run with a sync-lag section.
fn sync_lag(page: &mut String, runs: &[Run]) {
    let Some(latest) = runs
        .iter()
        .rev()
        .find(|run| run.json["sync_lag"].is_object())
    else {
        return;
    };
    let lag = &latest.json["sync_lag"];
    let _ = writeln!(
        page,
        "## Connection sync lag\n\nFrom `{}`: balancer A creates {} new flows a second; the \
         time until balancer B installs each: median {} ms, p99 {} ms, max {} ms.\n",
        latest.file, lag["rate"], lag["median_ms"], lag["p99_ms"], lag["max_ms"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_ratios_becomes_a_table() {
        let dir = std::env::temp_dir().join(format!("lb-benchdoc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = serde_json::json!({"machine": {}, "per_packet": {
            "nat": {"above_floor": 70}}});
        let new = serde_json::json!({
            "machine": {"cpu": "AMD EPYC", "nproc": 2, "kernel": "6.18"},
            "per_packet": {
                "floor": {"above_floor": 0, "ratios": {"floor": {"median": 1.0, "low": 1.0, "high": 1.0}}},
                "nat": {"above_floor": 58, "ratios": {
                    "floor": {"median": 20.0, "low": 19.0, "high": 21.0},
                    "ref_nat": {"median": 1.63, "low": 1.5, "high": 1.7}}}},
            "targets": [{"row": "nat", "to": "ref_nat", "limit": 1.0, "median": 1.63, "met": false}],
        });
        std::fs::write(dir.join("2026-01-01T000000Z.json"), old.to_string()).unwrap();
        std::fs::write(dir.join("2026-01-02T000000Z.json"), new.to_string()).unwrap();
        let page = render(&dir);
        assert!(
            page.contains("From `results/2026-01-02T000000Z.json` (AMD EPYC, 2 CPUs"),
            "{page}"
        );
        assert!(
            page.contains("| nat | 58 | 1.63× ref_nat (1.50–1.70) | 58–70 (2) |"),
            "{page}"
        );
        assert!(
            page.contains("| nat | ref_nat | 1.0 | 1.63 | no |"),
            "{page}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

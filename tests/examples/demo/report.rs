//! The demo's results: the summary table, `summary.json` (what the demo
//! test checks) and the timeline chart (requests per second per backend,
//! failures, fault windows and events marked), drawn with plotters into a
//! PNG with a font file read at run time (no fontconfig).

use std::{fmt::Write as _, path::Path};

use crate::scenario::{Event, Outcome, count};

/// The verdicts the summary ends with.
#[derive(Debug)]
pub struct Checks {
    /// Failed requests that started outside every announced fault window.
    pub lost_outside: usize,
    /// Every fault detected within its bound.
    pub within_bounds: bool,
    /// The good client kept at least 99 % during the flood.
    pub flood_ok: bool,
    /// Every connection held across the takeover completed.
    pub held_ok: bool,
}

impl Checks {
    /// Evaluates `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        let lost_outside = outcome
            .samples
            .iter()
            .filter(|s| s.backend.is_none())
            .filter(|s| !outcome.events.iter().any(|e| e.covers(s.at)))
            .count();
        let within_bounds = outcome
            .events
            .iter()
            .all(|e| within_bound(e) != Some(false));
        Self {
            lost_outside,
            within_bounds,
            flood_ok: outcome.flood_success >= 99.0,
            held_ok: outcome.held.0 == outcome.held.1 && outcome.held.1 > 0,
        }
    }

    /// All passed.
    pub fn passed(&self) -> bool {
        self.lost_outside == 0 && self.within_bounds && self.flood_ok && self.held_ok
    }
}

/// Whether a fault was detected within its bound (`None`: no bound).
fn within_bound(event: &Event) -> Option<bool> {
    let bound = event.bound?;
    Some(event.detection().is_some_and(|d| d <= bound))
}

/// Served and failed requests in an event's phase; the interruption (the
/// last failure's start after the event, 0 without failures).
fn phase(outcome: &Outcome, event: &Event) -> (usize, usize, f64) {
    let from = if event.fault {
        event.at - crate::scenario::LEAD
    } else {
        event.at
    };
    let mut served = 0;
    let mut failed = 0;
    let mut last = 0.0_f64;
    for sample in outcome
        .samples
        .iter()
        .filter(|s| s.at >= from && s.at < event.end)
    {
        if sample.backend.is_some() {
            served += 1;
        } else {
            failed += 1;
            last = last.max(sample.at - event.at);
        }
    }
    (served, failed, last)
}

/// The summary table, for people.
pub fn table(outcome: &Outcome, checks: &Checks) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<42} {:>10} {:>9} {:>13} {:>8} {:>7}",
        "event", "detection", "bound", "interruption", "served", "failed"
    );
    for event in &outcome.events {
        let (served, failed, last) = phase(outcome, event);
        let ms =
            |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
        let _ = writeln!(
            out,
            "{:<42} {:>10} {:>9} {:>13} {served:>8} {failed:>7}",
            event.name,
            ms(event.detection()),
            ms(event.bound),
            if failed == 0 {
                "none".to_owned()
            } else {
                format!("{:.0} ms", last * 1000.0)
            },
        );
    }
    let total = outcome.samples.len();
    let failed = outcome
        .samples
        .iter()
        .filter(|s| s.backend.is_none())
        .count();
    let _ = writeln!(
        out,
        "\n{total} requests in {:.0} s, {failed} failed, all inside announced fault windows: {}",
        outcome.duration,
        if checks.lost_outside == 0 {
            "yes".to_owned()
        } else {
            format!("NO ({} outside)", checks.lost_outside)
        }
    );
    for sample in outcome
        .samples
        .iter()
        .filter(|s| s.backend.is_none())
        .filter(|s| !outcome.events.iter().any(|e| e.covers(s.at)))
    {
        let _ = writeln!(
            out,
            "  outside every window: a request at {:.2} s failed ({})",
            sample.at, sample.why
        );
    }
    let _ = writeln!(
        out,
        "every fault detected within its bound: {}; good client during the flood: {:.2} % \
         (needs >= 99 %); connections held across the takeover: {} of {}",
        if checks.within_bounds { "yes" } else { "NO" },
        outcome.flood_success,
        outcome.held.0,
        outcome.held.1
    );
    out
}

/// `summary.json`.
pub fn json(outcome: &Outcome, checks: &Checks, short: bool, chart: &Path) -> serde_json::Value {
    let events: Vec<serde_json::Value> = outcome
        .events
        .iter()
        .map(|event| {
            let (served, failed, last) = phase(outcome, event);
            serde_json::json!({
                "name": event.name,
                "at_s": event.at,
                "fault": event.fault,
                "detection_ms": event.detection().map(|d| d * 1000.0),
                "bound_ms": event.bound.map(|b| b * 1000.0),
                "within_bound": within_bound(event),
                "interruption_ms": last * 1000.0,
                "served": served,
                "failed": failed,
                "note": event.note,
            })
        })
        .collect();
    let failed = outcome
        .samples
        .iter()
        .filter(|s| s.backend.is_none())
        .count();
    let outside: Vec<serde_json::Value> = outcome
        .samples
        .iter()
        .filter(|s| s.backend.is_none())
        .filter(|s| !outcome.events.iter().any(|e| e.covers(s.at)))
        .map(|s| serde_json::json!({ "at_s": s.at, "why": s.why }))
        .collect();
    serde_json::json!({
        "failures_outside_windows": outside,
        "mode": if short { "short" } else { "full" },
        "duration_s": outcome.duration,
        "requests": outcome.samples.len(),
        "failed": failed,
        "failed_outside_windows": checks.lost_outside,
        "events": events,
        "held_connections": { "kept": outcome.held.0, "opened": outcome.held.1 },
        "flood": { "good_success_percent": outcome.flood_success },
        "chart": chart.display().to_string(),
        "passed": checks.passed(),
    })
}

/// Bucket width of the chart, seconds.
const BUCKET: f64 = 0.5;

/// Draws the timeline into `path` (PNG).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "bucket indices of a run lasting minutes; one chart, drawn top to bottom"
)]
pub fn chart(outcome: &Outcome, path: &Path) -> anyhow::Result<()> {
    use plotters::{
        prelude::*,
        style::text_anchor::{HPos, Pos, VPos},
    };

    lb_tests::report::register_font()?;
    // Whole buckets only: a last partial one would read as a drop to zero.
    let buckets = ((outcome.duration / BUCKET).floor() as usize).max(1);
    let start = outcome
        .events
        .first()
        .map_or(0.0, |e| (e.at - 1.0).max(0.0));
    let end = count(buckets) * BUCKET;
    let mut names: Vec<String> = outcome
        .samples
        .iter()
        .filter_map(|s| s.backend.clone())
        .collect();
    names.sort();
    names.dedup();
    let mut series: Vec<Vec<f64>> = vec![vec![0.0; buckets]; names.len() + 1];
    for sample in &outcome.samples {
        let bucket = (sample.at / BUCKET) as usize;
        if bucket >= buckets {
            continue;
        }
        let row = match &sample.backend {
            Some(name) => names.iter().position(|n| n == name).unwrap_or(0),
            None => names.len(),
        };
        series[row][bucket] += 1.0 / BUCKET;
    }
    let top = series.iter().flatten().copied().fold(10.0_f64, f64::max) * 1.35;

    let root = BitMapBackend::new(path, (1280, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "lb demo: requests per second per backend; faults shaded, events marked",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(start..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the demo started")
        .y_desc("requests / s")
        .light_line_style(WHITE)
        .draw()?;

    // Fault windows, shaded from the fault to its detection.
    for event in outcome.events.iter().filter(|e| e.fault) {
        let until = event.detected.unwrap_or(event.end).max(event.at + 0.05);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(event.at, 0.0), (until, top)],
            RED.mix(0.15).filled(),
        )))?;
    }
    // Event markers and labels, staggered so neighbours do not overlap.
    for (i, event) in outcome.events.iter().enumerate() {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(event.at, 0.0), (event.at, top)],
            BLACK.mix(0.4),
        )))?;
        let y = top * (0.97 - 0.05 * count(i % 4));
        let label = format!("{} {}", i + 1, short_name(&event.name));
        // Labels near the right edge go left of their marker.
        let near_end = event.at > start + (end - start) * 0.8;
        let style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(
            if near_end { HPos::Right } else { HPos::Left },
            VPos::Top,
        ));
        let x = if near_end {
            event.at - 0.1
        } else {
            event.at + 0.1
        };
        chart.draw_series(std::iter::once(Text::new(label, (x, y), style)))?;
    }

    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(23, 190, 207),
    ];
    for (row, values) in series.iter().enumerate() {
        let (label, color) = if row == names.len() {
            ("failed".to_owned(), RED)
        } else {
            (names[row].clone(), palette[row % palette.len()])
        };
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((count(i) + 0.5) * BUCKET, *v))
            .filter(|(x, _)| *x >= start);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

/// An event's name without its parenthesised detail, for the chart.
fn short_name(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}

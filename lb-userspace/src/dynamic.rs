//! Weights that follow the backends' state, for the `least-conn` and
//! `resource` schedulers. Pure: each function maps the last weights and a
//! measurement to the next weights.
//!
//! Both are Maglev underneath; only the weights change, so only new flows
//! are affected. Weights move halfway to their target per step (smooth, no
//! jumps), stay within a tenth and ten times the configured weight, and a
//! step that moves no weight by 5 % or more is not taken (no table churn).
//!
//! Weights are relative, and `weight: 1` is as usual as `weight: 100`. The
//! table of a dynamic service therefore counts in hundredths of a configured
//! unit ([`SCALE`]): a whole-number step of a few per cent exists whatever
//! unit the configuration uses. Scaling every weight of a service alike
//! leaves its Maglev table as it was; only the dynamic steps gain room.

use crate::config::Scheduler;

/// Table units per configured weight unit in a `least-conn` or `resource`
/// service: their effective weights are in hundredths of the configured
/// unit (`weight: 1` at full weight is 100 in the table).
pub const SCALE: u32 = 100;

/// The largest configured weight of a dynamic service: ten times it in
/// table units still fits the table's `u32` weights.
pub const MAX_WEIGHT: u32 = u32::MAX / SCALE / 10;

/// The table weight `configured` stands for in a service with `scheduler`:
/// itself for the static schedulers, [`SCALE`] times it for the dynamic
/// ones.
pub fn table_weight(scheduler: Scheduler, configured: u32) -> u32 {
    if scheduler.is_dynamic() {
        configured.saturating_mul(SCALE)
    } else {
        configured
    }
}

/// Steps below this fraction of the current weight are not worth a re-plan.
const MIN_CHANGE: f64 = 0.05;

/// One backend's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Configured weight, in the configuration's units.
    pub configured: u32,
    /// The weight in the table now, in table units ([`SCALE`] per
    /// configured unit).
    pub current: u32,
    /// `least-conn`: active flows. `resource`: load, 0.0 (idle) to 1.0
    /// (saturated) or more.
    pub measure: f64,
}

/// Fewer active flows than this in a service and `least-conn` keeps its
/// weights: too few to tell busy from idle.
const MIN_FLOWS: f64 = 4.0;
/// Damping of the `least-conn` target: how far above its fair share a
/// backend must be before it loses most of its weight.
const DAMPING: f64 = 0.25;

/// `least-conn`: each backend's load is its active flows over its fair share
/// (by configured weight); the target weight falls as the load rises above
/// 1 and grows as it falls below, so new flows go where flows are fewest.
/// The next weights are in table units.
pub fn least_conn(samples: &[Sample]) -> Option<Vec<u32>> {
    let total_weight: f64 = samples.iter().map(scaled).sum();
    let total_active: f64 = samples.iter().map(|s| s.measure).sum();
    if total_weight <= 0.0 || total_active < MIN_FLOWS {
        return None;
    }
    let targets: Vec<f64> = samples
        .iter()
        .map(|s| {
            let weight = scaled(s);
            let fair = total_active * weight / total_weight;
            let load = if fair > 0.0 { s.measure / fair } else { 1.0 };
            weight * (1.0 + DAMPING) / (load + DAMPING)
        })
        .collect();
    step(samples, &targets)
}

/// `resource`: targets shrink as the reported load grows, down to 5 % of the
/// configured weight at full load. The next weights are in table units.
pub fn resource(samples: &[Sample]) -> Option<Vec<u32>> {
    let targets: Vec<f64> = samples
        .iter()
        .map(|s| scaled(s) * (1.0 - s.measure).clamp(0.05, 1.0))
        .collect();
    step(samples, &targets)
}

/// A sample's configured weight in table units.
fn scaled(sample: &Sample) -> f64 {
    f64::from(sample.configured) * f64::from(SCALE)
}

/// Moves each weight halfway to its target within the bounds; `None` if no
/// weight would move by `MIN_CHANGE` or more.
fn step(samples: &[Sample], targets: &[f64]) -> Option<Vec<u32>> {
    let mut changed = false;
    let next = samples
        .iter()
        .zip(targets)
        .map(|(sample, target)| {
            if sample.configured == 0 {
                return 0;
            }
            let configured = scaled(sample);
            let current = f64::from(sample.current.max(1));
            let bounded = target.clamp(configured / 10.0, configured * 10.0);
            let next = current + (bounded - current) / 2.0;
            if (next - current).abs() >= current * MIN_CHANGE {
                changed = true;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "bounded to [1, 10 x SCALE x the weight]; the configuration \
                          keeps that within u32 (MAX_WEIGHT), else the cast saturates"
            )]
            let rounded = next.round().max(1.0) as u32;
            rounded
        })
        .collect();
    changed.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `configured` in configuration units, `current` in table units.
    fn sample(configured: u32, current: u32, measure: f64) -> Sample {
        Sample {
            configured,
            current,
            measure,
        }
    }

    #[test]
    fn least_conn_shifts_weight_to_the_idle_backend_smoothly() {
        let busy_idle = [sample(100, 10_000, 40.0), sample(100, 10_000, 0.0)];
        let next = least_conn(&busy_idle).unwrap();
        assert!(next[0] < 10_000 && next[1] > 10_000, "{next:?}");
        // Halfway, not all the way: no jumps.
        let again = least_conn(&[sample(100, next[0], 40.0), sample(100, next[1], 0.0)]).unwrap();
        assert!(again[0] < next[0] && again[1] > next[1], "{again:?}");
        assert!(
            next[1] - 10_000 > again[1] - next[1],
            "steps shrink: {next:?} {again:?}"
        );
    }

    #[test]
    fn balanced_load_changes_nothing() {
        assert_eq!(
            least_conn(&[sample(100, 10_000, 10.0), sample(200, 20_000, 20.0)]),
            None
        );
        assert_eq!(
            resource(&[sample(100, 10_000, 0.0), sample(100, 10_000, 0.0)]),
            None
        );
    }

    #[test]
    fn weights_stay_within_bounds() {
        let mut current = [10_000, 10_000];
        for _ in 0..50 {
            match least_conn(&[
                sample(100, current[0], 1000.0),
                sample(100, current[1], 0.0),
            ]) {
                Some(next) => current = [next[0], next[1]],
                None => break,
            }
        }
        assert!(current[0] >= 1000 && current[1] <= 100_000, "{current:?}");
    }

    #[test]
    fn resource_follows_reported_load() {
        let next = resource(&[sample(100, 10_000, 0.9), sample(100, 10_000, 0.1)]).unwrap();
        assert!(next[0] < next[1], "{next:?}");
        assert_eq!(next, [5500, 9500]);
        // A drained backend (configured 0) stays at 0.
        let next = resource(&[sample(0, 0, 0.0), sample(100, 10_000, 0.8)]).unwrap();
        assert_eq!(next[0], 0);
    }

    #[test]
    fn the_table_counts_hundredths_of_a_dynamic_weight_only() {
        assert_eq!(table_weight(Scheduler::Resource, 1), 100);
        assert_eq!(table_weight(Scheduler::LeastConn, 3), 300);
        for scheduler in [Scheduler::Maglev, Scheduler::IpHash, Scheduler::RoundRobin] {
            assert_eq!(table_weight(scheduler, 3), 3, "{scheduler:?}");
        }
        assert!(MAX_WEIGHT.checked_mul(SCALE * 10).is_some());
    }

    /// `least_conn` or `resource`.
    type Schedule = fn(&[Sample]) -> Option<Vec<u32>>;

    /// Steps `schedule` from every backend at `unit` until it stops (or
    /// 30 steps); the weights as fractions of the configured one.
    fn settled(schedule: Schedule, unit: u32, measures: &[f64]) -> Vec<f64> {
        let mut current = vec![unit * SCALE; measures.len()];
        for _ in 0..30 {
            let samples: Vec<Sample> = current
                .iter()
                .zip(measures)
                .map(|(&current, &measure)| sample(unit, current, measure))
                .collect();
            match schedule(&samples) {
                Some(next) => current = next,
                None => break,
            }
        }
        current
            .iter()
            .map(|&w| f64::from(w) / f64::from(unit * SCALE))
            .collect()
    }

    /// Weights are relative: `weight: 1`, 3 or 100 on every backend must
    /// balance alike. With the table in configured units, a weight of 1
    /// could not go down (its next whole number is 0) and barely up.
    #[test]
    fn any_weight_unit_balances_the_same_way() {
        let cases: [(&str, Schedule, [f64; 3]); 2] = [
            ("resource", resource, [0.1, 0.5, 0.9]),
            // Active flows: 12, 6 and 3, every one above the share where a
            // unit weight would have rounded up.
            ("least-conn", least_conn, [12.0, 6.0, 3.0]),
        ];
        for (name, schedule, measures) in cases {
            let reference = settled(schedule, 100, &measures);
            for unit in [1, 3] {
                let fractions = settled(schedule, unit, &measures);
                for (got, want) in fractions.iter().zip(&reference) {
                    assert!(
                        (got - want).abs() <= 0.03,
                        "{name}, weight {unit}: {fractions:?}, weight 100: {reference:?}"
                    );
                }
            }
            // And the outcome is the scheduler's, not the starting weights.
            let order = if name == "resource" {
                [0, 1, 2]
            } else {
                [2, 1, 0]
            };
            let [light, middle, heavy] = order.map(|i| reference[i]);
            assert!(
                light > 1.3 * middle && heavy < 0.7 * middle,
                "{name}: {reference:?}"
            );
        }
    }
}

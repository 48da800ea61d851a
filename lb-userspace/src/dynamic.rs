//! Weights that follow the backends' state, for the `least-conn` and
//! `resource` schedulers. Pure: each function maps the last weights and a
//! measurement to the next weights.
//!
//! Both are Maglev underneath; only the weights change, so only new flows
//! are affected. Weights move halfway to their target per step (smooth, no
//! jumps), stay within a tenth and ten times the configured weight, and a
//! step that moves no weight by 5 % or more is not taken (no table churn).

/// Steps below this fraction of the current weight are not worth a re-plan.
const MIN_CHANGE: f64 = 0.05;

/// One backend's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Configured weight.
    pub configured: u32,
    /// The weight in the table now.
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
pub fn least_conn(samples: &[Sample]) -> Option<Vec<u32>> {
    let total_weight: f64 = samples.iter().map(|s| f64::from(s.configured)).sum();
    let total_active: f64 = samples.iter().map(|s| s.measure).sum();
    if total_weight <= 0.0 || total_active < MIN_FLOWS {
        return None;
    }
    let targets: Vec<f64> = samples
        .iter()
        .map(|s| {
            let weight = f64::from(s.configured);
            let fair = total_active * weight / total_weight;
            let load = if fair > 0.0 { s.measure / fair } else { 1.0 };
            weight * (1.0 + DAMPING) / (load + DAMPING)
        })
        .collect();
    step(samples, &targets)
}

/// `resource`: targets shrink as the reported load grows, down to 5 % of the
/// configured weight at full load.
pub fn resource(samples: &[Sample]) -> Option<Vec<u32>> {
    let targets: Vec<f64> = samples
        .iter()
        .map(|s| f64::from(s.configured) * (1.0 - s.measure).clamp(0.05, 1.0))
        .collect();
    step(samples, &targets)
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
            let configured = f64::from(sample.configured);
            let current = f64::from(sample.current.max(1));
            let bounded = target.clamp(configured / 10.0, configured * 10.0);
            let next = current + (bounded - current) / 2.0;
            if (next - current).abs() >= current * MIN_CHANGE {
                changed = true;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "bounded to [1, 10 x a u32 weight]; saturating cast"
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

    fn sample(configured: u32, current: u32, measure: f64) -> Sample {
        Sample {
            configured,
            current,
            measure,
        }
    }

    #[test]
    fn least_conn_shifts_weight_to_the_idle_backend_smoothly() {
        let busy_idle = [sample(100, 100, 40.0), sample(100, 100, 0.0)];
        let next = least_conn(&busy_idle).unwrap();
        assert!(next[0] < 100 && next[1] > 100, "{next:?}");
        // Halfway, not all the way: no jumps.
        let again = least_conn(&[sample(100, next[0], 40.0), sample(100, next[1], 0.0)]).unwrap();
        assert!(again[0] < next[0] && again[1] > next[1], "{again:?}");
        assert!(
            next[1] - 100 > again[1] - next[1],
            "steps shrink: {next:?} {again:?}"
        );
    }

    #[test]
    fn balanced_load_changes_nothing() {
        assert_eq!(
            least_conn(&[sample(100, 100, 10.0), sample(200, 200, 20.0)]),
            None
        );
        assert_eq!(
            resource(&[sample(100, 100, 0.0), sample(100, 100, 0.0)]),
            None
        );
    }

    #[test]
    fn weights_stay_within_bounds() {
        let mut current = [100, 100];
        for _ in 0..50 {
            match least_conn(&[
                sample(100, current[0], 1000.0),
                sample(100, current[1], 0.0),
            ]) {
                Some(next) => current = [next[0], next[1]],
                None => break,
            }
        }
        assert!(current[0] >= 10 && current[1] <= 1000, "{current:?}");
    }

    #[test]
    fn resource_follows_reported_load() {
        let next = resource(&[sample(100, 100, 0.9), sample(100, 100, 0.1)]).unwrap();
        assert!(next[0] < next[1], "{next:?}");
        assert_eq!(next, [55, 95]);
        // A drained backend (configured 0) stays at 0.
        let next = resource(&[sample(0, 0, 0.0), sample(100, 100, 0.8)]).unwrap();
        assert_eq!(next[0], 0);
    }
}

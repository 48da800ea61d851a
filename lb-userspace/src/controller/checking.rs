//! Health checking: the checker started and restarted for the
//! configuration's targets, and each result folded into the backends'
//! states (a transition re-plans at once).

use std::{collections::BTreeMap, sync::mpsc::Sender};

use super::Controller;
use crate::{
    health::{Checker, Event, Health, Target, Tracker},
    plan::BackendKey,
};

impl Controller {
    /// Starts health checking; results arrive as [`Event`]s on `events`,
    /// to be fed to [`Controller::on_health`]. Backends start `unknown`,
    /// which carries traffic: a restarted controller must not pull flows
    /// off backends it has not checked yet.
    pub fn start_health(&mut self, events: Sender<Event>) {
        self.events = Some(events);
        self.restart_checker();
    }

    /// (Re)starts the checker for the current configuration, keeping the
    /// trackers of backends whose check did not change.
    pub(super) fn restart_checker(&mut self) {
        let targets = Target::for_config(&self.config);
        if self.checker.is_some() && targets == self.checked {
            return;
        }
        if let Some(checker) = self.checker.take() {
            // Stopping waits for the probes in flight (an exec check can
            // take seconds): not on the owner's thread. A result they
            // still send for a backend that is checked on is a real probe
            // of it, and is counted.
            std::thread::spawn(move || checker.stop());
        }
        let Some(events) = self.events.clone() else {
            return;
        };
        let mut trackers = BTreeMap::new();
        for target in &targets {
            let tracker = match self.trackers.remove(&target.key) {
                Some(tracker) if tracker.thresholds() == (target.check.rise, target.check.fall) => {
                    tracker
                }
                _ => Tracker::for_check(&target.check),
            };
            trackers.insert(target.key.clone(), tracker);
        }
        self.trackers = trackers;
        // Health of backends no longer checked is forgotten.
        for (key, state) in &mut self.states {
            if !self.trackers.contains_key(key) {
                state.up = true;
            }
        }
        self.checked.clone_from(&targets);
        self.checker = Some(Checker::start(targets, events));
    }

    /// One health-check result: on a transition, log it and re-plan, so a
    /// failed backend leaves the tables (and its flows move) at once.
    pub fn on_health(&mut self, event: &Event) -> anyhow::Result<()> {
        let Some(tracker) = self.trackers.get_mut(&event.key) else {
            return Ok(()); // a result from before a reload
        };
        self.check_latency
            .entry(event.key.clone())
            .or_insert_with(|| {
                // 1 ms to about 4 s.
                prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
                )
            })
            .observe(event.outcome.latency.as_secs_f64());
        let Some(transition) = tracker.observe(&event.outcome, event.at) else {
            return Ok(());
        };
        let key = &event.key;
        let up = transition.to != Health::Down;
        if up {
            tracing::info!(
                service = %key.service, backend = %key.address, port = key.port,
                from = %transition.from, to = %transition.to, reason = %transition.reason,
                "backend health changed"
            );
        } else {
            tracing::warn!(
                service = %key.service, backend = %key.address, port = key.port,
                from = %transition.from, reason = %transition.reason, "backend down"
            );
        }
        let state = self.states.entry(key.clone()).or_default();
        if state.up != up {
            state.up = up;
            self.track_health();
            self.replan()?;
        }
        // Health counts for announce follow the tracker (unknown is not
        // healthy there), so every transition may change an announcement.
        self.refresh_announce();
        Ok(())
    }

    /// Health-check latency histograms, by backend (for metrics).
    pub fn check_latency(
        &self,
    ) -> &BTreeMap<BackendKey, prometheus_client::metrics::histogram::Histogram> {
        &self.check_latency
    }
}

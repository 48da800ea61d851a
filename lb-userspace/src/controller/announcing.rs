//! The controller's side of `announce`: gathers what the decision needs
//! (attachment, health, the guard's denials, the stop), runs the pure
//! [`crate::announce`] decision, logs and counts what changed, and hands
//! the BIRD include to the [`crate::bird`] edge; and the `announce` part
//! of `lb status`.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use super::{Controller, status::unix_seconds};
use crate::dataplane::link_pin;
use crate::{
    health::Health,
    report::{AnnounceStatus, VipStatus},
};

/// The controller's `announce` state: the last decision per VIP, the text
/// last handed to BIRD, and per VIP since when and how often it changed.
#[derive(Debug, Default)]
pub(super) struct Announcing {
    announcer: Option<crate::bird::Announcer>,
    decided: Vec<crate::announce::VipAnnouncement>,
    submitted: Option<String>,
    since: BTreeMap<IpAddr, SystemTime>,
    changes: BTreeMap<IpAddr, u64>,
    diverts: BTreeMap<IpAddr, u64>,
    stopping: bool,
}

impl Controller {
    /// Starts telling BIRD what to announce, if the configuration has an
    /// `announce` section. Nothing is announced before health checks have
    /// found enough backends up.
    pub fn start_announce(&mut self) {
        if let Some(announce) = &self.config.announce {
            self.announce.announcer = Some(crate::bird::Announcer::start(
                announce.bird_socket.clone(),
                announce.bird_include.clone(),
            ));
            tracing::info!(bird_socket = %announce.bird_socket.display(),
                bird_include = %announce.bird_include.display(), "announce: telling BIRD");
            self.refresh_announce();
        }
    }

    /// After a reload: a changed socket or include gets a new announcer
    /// (the old include is emptied first); no `announce` any more
    /// withdraws everything.
    pub(super) fn restart_announce(&mut self, previous: Option<&crate::config::Announce>) {
        let moved = match (previous, self.config.announce.as_ref()) {
            (Some(old), Some(new)) => {
                old.bird_socket != new.bird_socket || old.bird_include != new.bird_include
            }
            (None, None) => false,
            _ => true,
        };
        if moved {
            if let Some(announcer) = self.announce.announcer.take() {
                let empty = crate::announce::render(self.config.instance.as_str(), &[]);
                if let Err(error) = announcer.apply_now(empty, std::time::Duration::from_secs(5)) {
                    tracing::warn!(%error, "announce: withdrawing from the old BIRD setup");
                }
            }
            self.announce.decided.clear();
            self.announce.submitted = None;
            self.start_announce();
        } else {
            self.refresh_announce();
        }
    }

    /// What the announce decision depends on, as of now.
    fn announce_inputs(&self) -> crate::announce::Inputs {
        let detached = self
            .config
            .interfaces
            .iter()
            .find(|iface| !link_pin(&self.pin_dir, &iface.name).exists())
            .map(|iface| format!("no attachment pinned for {}", iface.name));
        let healthy = self
            .planner
            .planned()
            .iter()
            .map(|planned| {
                let count = planned
                    .backends
                    .iter()
                    .filter(|b| {
                        let up = self
                            .trackers
                            .get(&b.key)
                            .is_none_or(|t| t.health() == Health::Up);
                        let drained = self.overrides.get(&b.key).is_some_and(|o| o.drained);
                        up && !drained && b.weight > 0
                    })
                    .count();
                (
                    planned.name.clone(),
                    u32::try_from(count).unwrap_or(u32::MAX),
                )
            })
            .collect();
        crate::announce::Inputs {
            stopping: self.announce.stopping,
            detached,
            healthy,
            denied: self.guard.denied_per_vip(crate::dataplane::monotonic_ns()),
            attacked: self.attacks.under_since().map(|(vip, _)| vip).collect(),
        }
    }

    /// Decides the announcements again; logs and counts what changed, and
    /// hands BIRD the include when it differs from the last one (or the
    /// last one failed).
    pub(super) fn refresh_announce(&mut self) {
        let Some(announce) = &self.config.announce else {
            return;
        };
        let Some(announcer) = &self.announce.announcer else {
            return;
        };
        let decided = crate::announce::decide(&self.config, announce, &self.announce_inputs());
        let now = SystemTime::now();
        for change in crate::announce::changes(&self.announce.decided, &decided) {
            let known = self.announce.decided.iter().any(|d| d.vip == change.vip);
            if known {
                *self.announce.changes.entry(change.vip).or_default() += 1;
            }
            if change.diverted {
                *self.announce.diverts.entry(change.vip).or_default() += 1;
            }
            self.announce.since.insert(change.vip, now);
            match (change.state, change.diverted) {
                (crate::announce::State::Announced, true) => tracing::warn!(
                    vip = %change.vip, reason = %change.reason, "announce: VIP diverted"
                ),
                (crate::announce::State::Announced, false) => tracing::info!(
                    vip = %change.vip, reason = %change.reason, "announce: VIP announced"
                ),
                (crate::announce::State::Withdrawn, _)
                    if known || change.cause != crate::announce::Cause::Unhealthy =>
                {
                    tracing::warn!(
                        vip = %change.vip, reason = %change.reason, "announce: VIP withdrawn"
                    );
                }
                (crate::announce::State::Withdrawn, _) => tracing::info!(
                    vip = %change.vip, reason = %change.reason,
                    "announce: VIP withdrawn until its backends are healthy"
                ),
            }
        }
        let text = crate::announce::render(self.config.instance.as_str(), &decided);
        self.announce.decided = decided;
        let failed = announcer.outcome().error.is_some();
        if failed || self.announce.submitted.as_ref() != Some(&text) {
            announcer.submit(text.clone());
            self.announce.submitted = Some(text);
        }
    }

    /// Withdraws every VIP and waits (5 s at most) until BIRD has taken
    /// it; returns how long to keep forwarding before detaching
    /// (`announce.withdraw_delay`), or `None` without `announce` or when
    /// nothing was announced.
    pub fn withdraw_all(&mut self) -> Option<std::time::Duration> {
        let announce = self.config.announce.as_ref()?;
        let delay = announce.withdraw_delay;
        // Nothing announced: nothing for the upstream to move, no wait.
        let was_announced = self
            .announce
            .decided
            .iter()
            .any(|d| d.state == crate::announce::State::Announced);
        self.announce.stopping = true;
        self.refresh_announce();
        let announcer = self.announce.announcer.as_ref()?;
        let text = self.announce.submitted.clone()?;
        match announcer.apply_now(text, std::time::Duration::from_secs(5)) {
            Ok(()) => tracing::info!("announce: every VIP withdrawn"),
            Err(error) => tracing::error!(%error, "announce: withdrawing on stop failed"),
        }
        was_announced.then_some(delay)
    }

    /// The `announce` part of `lb status`; `None` without the section.
    pub(super) fn announce_status(&self) -> Option<AnnounceStatus> {
        let announce = self.config.announce.as_ref()?;
        let outcome = self
            .announce
            .announcer
            .as_ref()
            .map(crate::bird::Announcer::outcome)
            .unwrap_or_default();
        Some(AnnounceStatus {
            bird_socket: announce.bird_socket.display().to_string(),
            bird_include: announce.bird_include.display().to_string(),
            bird_updates: outcome.applied,
            bird_error: outcome.error,
            vips: self
                .announce
                .decided
                .iter()
                .map(|decision| VipStatus {
                    announcement: decision.clone(),
                    since: self
                        .announce
                        .since
                        .get(&decision.vip)
                        .map_or(0, |t| unix_seconds(*t)),
                    changes: self
                        .announce
                        .changes
                        .get(&decision.vip)
                        .copied()
                        .unwrap_or(0),
                    diverts: self
                        .announce
                        .diverts
                        .get(&decision.vip)
                        .copied()
                        .unwrap_or(0),
                })
                .collect(),
        })
    }
}

//! Tracking for one instance's thread: every 100 ms it looks at the VRRP
//! interface (up, carrier, the address VRRP is sent from) and takes the
//! tracked services' health the controller sent, has
//! [`vrrp::assess`] judge them, and hands a changed verdict to the router
//! (fault, recovery, a new priority). The checks are one ioctl and one
//! address listing, nothing that blocks the advertisement timer.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    config::Track,
    netlink::{holds_address, link_up},
    vrrp::{self, Action, Assessment, Conditions, Refusal, Router, State, TrackHealth},
};

use super::status::TrackStatus;

/// How often the interface is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Healthy backends per service, as the controller last counted them.
pub type Healthy = BTreeMap<String, u32>;

pub(super) struct Watch {
    interface: String,
    local: IpAddr,
    configured: u8,
    tracks: Vec<Track>,
    healthy: Healthy,
    updates: mpsc::Receiver<Healthy>,
    checked: Option<Instant>,
    verdict: Option<Assessment>,
    /// The floating IPs' refusal as last given to [`Watch::poll`].
    refused: Option<Refusal>,
}

impl Watch {
    pub(super) fn new(
        interface: &str,
        local: IpAddr,
        configured: u8,
        tracks: Vec<Track>,
        updates: mpsc::Receiver<Healthy>,
    ) -> Self {
        Self {
            interface: interface.to_string(),
            local,
            configured,
            tracks,
            healthy: Healthy::new(),
            updates,
            checked: None,
            verdict: None,
            refused: None,
        }
    }

    /// Looks again if due (or if the controller sent news, or `refused`,
    /// the floating IPs' refusal whose hold-down runs, changed); applies a
    /// changed verdict to `router` and returns its actions; `None` when
    /// nothing changed that `lb status` shows.
    pub(super) fn poll(
        &mut self,
        router: &mut Router,
        refused: Option<&Refusal>,
        now: Instant,
    ) -> Option<Vec<Action>> {
        let mut news = false;
        if refused != self.refused.as_ref() {
            self.refused = refused.cloned();
            news = true;
        }
        while let Ok(healthy) = self.updates.try_recv() {
            self.healthy = healthy;
            news = true;
        }
        if !news && self.checked.is_some_and(|at| now < at + CHECK_EVERY) {
            return None;
        }
        self.checked = Some(now);
        let conditions = Conditions {
            interface: self.interface.clone(),
            link_up: link_up(&self.interface).unwrap_or(false),
            address_held: holds_address(&self.interface, self.local),
            refused: self.refused.clone(),
            tracks: self.track_health(),
        };
        let verdict = vrrp::assess(self.configured, &conditions);
        if self.verdict.as_ref() == Some(&verdict) {
            // New counts that change nothing still show in `lb status`.
            return news.then(Vec::new);
        }
        let actions = match &verdict {
            Assessment::Fault(cause) => {
                tracing::warn!(interface = %self.interface, %cause, "ha: fault");
                router.fault(cause.clone(), now)
            }
            Assessment::Run { priority, .. } => {
                let mut actions = router.set_priority(*priority, now);
                if router.state() == State::Fault {
                    tracing::info!(interface = %self.interface, "ha: fault cleared");
                    actions.extend(router.recover(now));
                }
                if Some(*priority) != self.verdict.as_ref().and_then(run_priority) {
                    tracing::info!(priority, why = %verdict.priority_reason(self.configured),
                        "ha: priority in effect");
                }
                actions
            }
        };
        self.verdict = Some(verdict);
        Some(actions)
    }

    /// Why the priority in effect is what it is.
    pub(super) fn priority_reason(&self) -> String {
        self.verdict.as_ref().map_or_else(
            || format!("configured {}", self.configured),
            |v| v.priority_reason(self.configured),
        )
    }

    /// The tracked services as last seen, for `lb status`.
    pub(super) fn tracks(&self) -> Vec<TrackStatus> {
        self.track_health()
            .into_iter()
            .map(|t| TrackStatus {
                failing: t.failing(),
                service: t.service,
                weight: t.weight,
                min_healthy: t.min_healthy,
                healthy: t.healthy,
            })
            .collect()
    }

    /// Each track with its service's healthy backends; a service not
    /// counted yet is taken as healthy (the controller counts before VRRP
    /// starts; this only covers the moment in between).
    fn track_health(&self) -> Vec<TrackHealth> {
        self.tracks
            .iter()
            .map(|track| {
                let min_healthy = track.min_healthy.unwrap_or(1);
                TrackHealth {
                    service: track.service.clone(),
                    weight: track.weight,
                    min_healthy,
                    healthy: self
                        .healthy
                        .get(&track.service)
                        .copied()
                        .unwrap_or(min_healthy),
                }
            })
            .collect()
    }
}

fn run_priority(verdict: &Assessment) -> Option<u8> {
    match verdict {
        Assessment::Run { priority, .. } => Some(*priority),
        Assessment::Fault(_) => None,
    }
}

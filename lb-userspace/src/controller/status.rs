//! `lb status` and `lb stats`: the reports the controller fills from its
//! plan, the trackers and the data plane's counters.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use lb_common::Reason;

use super::Controller;
use crate::{
    ha::HaStatus,
    report::{
        BackendStats, BackendStatus, LastCheck, OverrideError, ServiceFilter, ServiceStats,
        ServiceStatus, StatsReport, StatusReport,
    },
};

impl Controller {
    /// The status report (`lb status`).
    pub fn status(&self) -> StatusReport {
        self.status_of(&ServiceFilter::all())
    }

    /// `Err` (the message names the unknown ones and lists the services)
    /// unless every service `filter` names is configured.
    pub fn check_services(&self, filter: &ServiceFilter) -> Result<(), OverrideError> {
        filter
            .check(self.config.services.iter().map(|s| s.name.as_str()))
            .map_err(OverrideError::Unknown)
    }

    /// The status report of the services `filter` admits (`lb status
    /// NAME...`); the rest of the report as [`Self::status`] has it.
    pub fn status_of(&self, filter: &ServiceFilter) -> StatusReport {
        let active = self.active_flows_of(filter);
        let now = Instant::now();
        let services = self
            .planner
            .planned()
            .iter()
            .zip(&self.config.services)
            .filter(|(_, service)| filter.admits(&service.name))
            .map(|(planned, service)| ServiceStatus {
                name: service.name.clone(),
                vip: service.vip.to_string(),
                port: service.port,
                protocol: service.protocol.name().into(),
                scheduler: service.scheduler.name().into(),
                forwarding: service.forwarding.name().into(),
                active_tier: planned.active_tier,
                warnings: if service.backends.is_empty() {
                    vec!["no backends configured: packets are dropped (drop_no_backend)".into()]
                } else {
                    Vec::new()
                },
                backends: planned
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
                        address: b.key.address.to_string(),
                        port: b.key.port,
                        tier: b.tier,
                        weight: b.weight,
                        effective_weight: b.effective_weight,
                        health: self
                            .trackers
                            .get(&b.key)
                            .map_or("up", |t| t.health().as_str())
                            .into(),
                        last_check: self.trackers.get(&b.key).and_then(|tracker| {
                            let o = tracker.last()?;
                            let age = tracker
                                .last_at()
                                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                            Some(LastCheck {
                                ok: o.ok,
                                detail: o.detail.clone(),
                                latency_ms: o.latency.as_secs_f64() * 1000.0,
                                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                            })
                        }),
                        drained: self.overrides.get(&b.key).is_some_and(|o| o.drained),
                        active_flows: active.get(&b.id).copied(),
                    })
                    .collect(),
            })
            .collect();
        StatusReport {
            instance: self.config.instance.to_string(),
            services,
            ha: HaStatus::of(
                self.ha.iter().map(crate::ha::Ha::status).collect(),
                unix_seconds(self.started),
            ),
            guard: self.guard_report(),
            attack: self.attack_report(),
            announce: self.announce_status(),
            sync: self.sync_status(),
        }
    }

    /// The counters (`lb stats`).
    pub fn stats(&self) -> anyhow::Result<StatsReport> {
        self.stats_of(&ServiceFilter::all())
    }

    /// The counters of the services `filter` admits (`lb stats NAME...`);
    /// drops, reasons and the connection table as [`Self::stats`] has them.
    pub fn stats_of(&self, filter: &ServiceFilter) -> anyhow::Result<StatsReport> {
        let mut services = Vec::new();
        for planned in self.planner.planned() {
            if !filter.admits(&planned.name) {
                continue;
            }
            let traffic = self.dataplane.service_traffic(planned.value.id)?;
            let mut backends = Vec::new();
            for backend in &planned.backends {
                let traffic = self.dataplane.backend_traffic(backend.id)?;
                backends.push(BackendStats {
                    address: backend.key.address.to_string(),
                    port: backend.key.port,
                    packets: traffic.packets,
                    bytes: traffic.bytes,
                    new_flows: traffic.new_flows,
                });
            }
            services.push(ServiceStats {
                name: planned.name.clone(),
                packets: traffic.packets,
                bytes: traffic.bytes,
                new_flows: traffic.new_flows,
                backends,
            });
        }
        let reasons = self.dataplane.reason_counters()?;
        let drops = reasons
            .iter()
            .filter(|(reason, _)| reason.is_drop())
            .map(|(reason, n)| (reason.name().to_string(), *n))
            .collect();
        let verdicts = reasons
            .iter()
            .map(|(reason, n)| (reason.name().to_string(), *n))
            .collect();
        Ok(StatsReport {
            services,
            drops,
            reasons: verdicts,
            connection_table: self.conn_table_stats(),
        })
    }

    /// The reason counters, for the final report of `lb run`.
    pub fn reason_counters(&self) -> anyhow::Result<BTreeMap<Reason, u64>> {
        Ok(self.dataplane.reason_counters()?)
    }
}

pub(super) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

//! Active flows: the data path's open / close counters, corrected by the
//! periodic walk of the connection table (made off the owner's thread),
//! and the eviction estimate that walk feeds.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::{Controller, settings::settings};
use crate::report::ServiceFilter;

impl Controller {
    /// Map fill levels: (map, entries, capacity). The connection table's
    /// entries (live or not) are as counted by the last reconciliation.
    pub fn map_fill(&self) -> Vec<(&'static str, u64, u64)> {
        let sizes = self.dataplane.sizes();
        let services = self.planner.planned();
        let backends: usize = services.iter().map(|s| s.backends.len()).sum();
        vec![
            (
                lb_common::map_names::SERVICES,
                services.len() as u64,
                u64::from(sizes.services),
            ),
            (
                lb_common::map_names::BACKENDS,
                backends as u64,
                u64::from(sizes.backends),
            ),
            (
                lb_common::map_names::CONNS,
                self.conn_table_stats().entries.unwrap_or(0),
                u64::from(sizes.connections),
            ),
        ]
    }

    /// Active flows per backend id: the data plane's open / close counters,
    /// corrected by the last reconciliation with the connection table.
    pub fn active_flows(&self) -> BTreeMap<u32, u64> {
        self.active_flows_of(&ServiceFilter::all())
    }

    /// [`Self::active_flows`] of the services `filter` admits (one map read
    /// per backend of those).
    pub(super) fn active_flows_of(&self, filter: &ServiceFilter) -> BTreeMap<u32, u64> {
        let mut active = BTreeMap::new();
        for service in self.planner.planned() {
            if !filter.admits(&service.name) {
                continue;
            }
            for backend in &service.backends {
                let Ok(traffic) = self.dataplane.backend_traffic(backend.id) else {
                    continue;
                };
                let counted = flow_balance(&traffic);
                let offset = self.offsets.get(&backend.id).copied().unwrap_or(0);
                active.insert(backend.id, u64::try_from(counted + offset).unwrap_or(0));
            }
        }
        active
    }

    /// Re-counts active flows in the connection table, which also sees what
    /// the counters cannot (LRU evictions, UDP flows that just went quiet).
    /// The walk — a million entries by default — runs on the caller's
    /// thread: the owner only hands out a descriptor before it and folds
    /// the counts in after it, so health results, the API and signals never
    /// wait for it.
    pub fn reconcile(controller: &crate::owner::ControllerHandle) -> anyhow::Result<()> {
        let (table, settings) = controller.call(|controller| {
            anyhow::Ok((
                controller.dataplane.conn_table()?,
                settings(&controller.config),
            ))
        })??;
        let started = std::time::Instant::now();
        let (scanned, walked) = table
            .walk(
                crate::dataplane::monotonic_ns(),
                settings.tcp_idle_ns,
                settings.udp_idle_ns,
            )
            .context("reading the connection table")?;
        tracing::debug!(elapsed = ?started.elapsed(), flows = scanned.values().sum::<u64>(),
            entries = walked.keys.len(), "connection table walked");
        controller.call(move |controller| controller.fold_in_scan(&scanned, walked))?
    }

    /// Takes a walk's live flows per backend id as the truth: the offsets
    /// correct the open / close counters until the next walk. The walk's
    /// keys, with the flows scheduled by then, update the eviction
    /// estimate.
    pub(super) fn fold_in_scan(
        &mut self,
        scanned: &BTreeMap<u32, u64>,
        walked: crate::conns::Walked,
    ) -> anyhow::Result<()> {
        let scheduled = self.dataplane.scheduled_flows()?;
        self.evictions
            .record(crate::conns::Census::of(walked, scheduled));
        self.connections = scanned.values().sum();
        self.offsets.clear();
        for service in self.planner.planned() {
            for backend in &service.backends {
                let counted = flow_balance(&self.dataplane.backend_traffic(backend.id)?);
                let real = i64::try_from(scanned.get(&backend.id).copied().unwrap_or(0))
                    .unwrap_or(i64::MAX);
                self.offsets.insert(backend.id, real - counted);
            }
        }
        Ok(())
    }

    /// The connection table's fill and estimated evictions, as of the last
    /// reconciliation.
    pub fn conn_table_stats(&self) -> crate::conns::ConnTableStats {
        self.evictions
            .report(u64::from(self.dataplane.sizes().connections))
    }
}

/// New flows minus closed flows of a backend's counters.
pub(super) fn flow_balance(traffic: &lb_common::Traffic) -> i64 {
    i64::try_from(traffic.new_flows.saturating_sub(traffic.closed_flows)).unwrap_or(i64::MAX)
}

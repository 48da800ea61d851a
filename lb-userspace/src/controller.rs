//! The running balancer: owns the configuration, the planner, the data plane
//! and the backend states, and answers status and stats questions. `lb
//! run` drives it through its owner ([`crate::owner`]); the faces reach it
//! through their traits (`faces.rs`).
//!
//! Beside it in `controller/`, one concern a file: `start.rs` (start,
//! abandon, stop), `checking.rs` (health), `ha.rs` (VRRP), `flows.rs`
//! (active flows), `scheduling.rs` (dynamic weights, agents),
//! `overrides.rs` (drains and weights), `hopping.rs` (next hops),
//! `guarding.rs` (the guard), `status.rs` (status and stats), `reload.rs`,
//! `announcing.rs`, `attacking.rs`, `syncing.rs`, `routing.rs`, and the
//! pure helpers `apply.rs`, `settings.rs`, `weights.rs`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::SystemTime,
};

use lb_common::Settings;

mod announcing;
mod apply;
mod attacking;
mod checking;
mod faces;
mod flows;
mod guarding;
mod ha;
mod hopping;
mod overrides;
mod reload;
mod routing;
mod scheduling;
mod settings;
mod start;
mod status;
mod syncing;
mod weights;

use apply::apply_whole;
use overrides::BackendOverride;
pub use scheduling::AgentTarget;
pub use settings::{
    TunnelSources, default_tunnel_sources, guard_settings, settings, settings_with, sizes,
};
use start::Started;

use crate::{
    config::Config,
    dataplane::Dataplane,
    health::{Checker, Event, Target, Tracker},
    hops::HopCache,
    plan::{BackendKey, BackendState, Planner},
};

/// The running balancer.
#[derive(Debug)]
pub struct Controller {
    config: Config,
    config_path: PathBuf,
    dataplane: Dataplane,
    planner: Planner,
    states: BTreeMap<BackendKey, BackendState>,
    trackers: BTreeMap<BackendKey, Tracker>,
    overrides: BTreeMap<BackendKey, BackendOverride>,
    /// Weights set by `least-conn` / `resource`.
    dynamic: BTreeMap<BackendKey, u32>,
    /// Per backend id: connection-table count minus counters, at the last
    /// reconciliation.
    offsets: BTreeMap<u32, i64>,
    /// Loads reported by `lb agent`, by backend.
    loads: BTreeMap<BackendKey, f64>,
    /// Agents to poll (with their shared secret), handed to the poller
    /// ([`Controller::agents`]).
    agents: Vec<AgentTarget>,
    /// Health-check durations per backend, for metrics.
    check_latency: BTreeMap<BackendKey, prometheus_client::metrics::histogram::Histogram>,
    /// Active flows the last reconciliation found in the connection table.
    connections: u64,
    /// The connection table's LRU evictions, estimated from its walks.
    evictions: crate::conns::Evictions,
    /// VRRP, one per instance of the `ha` section (none without one).
    ha: Vec<crate::ha::Ha>,
    checker: Option<Checker>,
    /// What `checker` checks: a reload that leaves them as they are keeps
    /// it (and every backend's schedule) running.
    checked: Vec<Target>,
    events: Option<Sender<Event>>,
    /// Backends' next hops (none when netlink is unavailable: the data
    /// path then asks the FIB for every packet).
    hops: Option<HopCache>,
    /// The outer sources of tunnels whose `dataplane.tunnel_source_*` is
    /// unset, as last resolved and written.
    tunnel_sources: TunnelSources,
    pin_dir: PathBuf,
    started: SystemTime,
    /// What the start changed, for [`Controller::abandon`].
    started_with: Started,
    /// The operator's runtime deny list and the automatic guard's events.
    guard: crate::guard::Guard,
    /// `guard.attack`'s judgement per VIP.
    attacks: crate::attack::Attacks,
    /// `announce`: what BIRD was told, and the thread that tells it.
    announce: announcing::Announcing,
    /// A client is tracing (`lb trace`): `SETTINGS_TRACE` is set.
    trace: bool,
    /// Connection sync (`sync:`), once started: `SETTINGS_SYNC` is set.
    sync: Option<syncing::Syncing>,
}

impl Controller {
    /// Plans the current configuration and states and applies the writes,
    /// whole or not at all ([`apply_whole`]).
    fn replan(&mut self) -> anyhow::Result<()> {
        let writes = apply_whole(
            &mut self.planner,
            &mut self.dataplane,
            &self.config,
            &self.states,
        )?;
        tracing::debug!(writes, "re-planned");
        self.publish_directory();
        Ok(())
    }

    /// The configuration file in use.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loaded data plane, for readers of its maps (`lb route`).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The services and backends as last planned, with their map ids.
    pub fn planned(&self) -> &[crate::plan::PlannedService] {
        self.planner.planned()
    }

    /// The runtime settings for `config`: [`settings_with`], and the deny
    /// list's flag while the operator's runtime list has prefixes.
    fn settings_for(&self, config: &Config, sources: TunnelSources) -> Settings {
        let mut settings = settings_with(config, sources);
        if !self.guard.runtime().is_empty() {
            settings.flags |= lb_common::maps::SETTINGS_DENY;
        }
        if self.trace {
            settings.flags |= lb_common::maps::SETTINGS_TRACE;
        }
        if self.syncing() {
            settings.flags |= lb_common::maps::SETTINGS_SYNC;
        }
        settings
    }

    /// Turns the data path's trace on with `filter` (its filters and rate
    /// limit written first), or off (`None`).
    pub fn set_trace(
        &mut self,
        filter: Option<lb_common::trace::TraceSettings>,
    ) -> anyhow::Result<()> {
        if let Some(filter) = &filter {
            self.dataplane.set_trace_settings(filter)?;
        }
        self.trace = filter.is_some();
        let settings = self.settings_for(&self.config, self.tunnel_sources);
        self.dataplane.set_settings(&settings)?;
        tracing::info!(on = self.trace, "trace");
        Ok(())
    }

    /// The trace's ring buffer and state, for its reader thread.
    pub fn take_trace(&mut self) -> anyhow::Result<crate::trace::hub::Kernel> {
        Ok(self.dataplane.take_trace()?)
    }
}

/// Where an instance's maps and attachments are pinned.
pub fn pin_dir(config: &Config) -> PathBuf {
    Path::new(crate::dataplane::PIN_ROOT).join(config.instance.as_str())
}

#[cfg(test)]
mod tests;

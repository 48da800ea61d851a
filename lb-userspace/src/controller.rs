//! The running balancer: owns the configuration, the planner, the data plane
//! and the backend states, and answers status and stats questions. The
//! `lb run` command drives it; the API reads it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use lb_common::{Reason, Settings, maps::DENY_RUNTIME};

use std::{
    net::SocketAddr,
    sync::{Arc, mpsc::Sender},
};

mod announcing;
mod apply;
mod attacking;
mod report;
mod routing;
mod settings;
mod syncing;
mod weights;

use apply::apply_whole;
pub use apply::{UndoFailed, half_done, reload_failure};
use settings::{log_tunnel_sources, resolve_tunnel_sources, tunnel_targets};
use weights::{configured_backend, folded_weights, kept_dynamic};

pub use report::{
    BackendStats, BackendStatus, LastCheck, ServiceFilter, ServiceStats, ServiceStatus,
    StatsReport, StatusReport,
};
pub use settings::{
    TunnelSources, default_tunnel_sources, guard_settings, settings, settings_with, sizes,
};

pub use announcing::{AnnounceStatus, VipStatus};
pub use routing::RouteError;

use crate::{
    config::Scheduler,
    config::{Config, Interface, XdpModeSetting},
    dataplane::{AttachMode, Attachment, Dataplane, is_pinned, link_pin, unpin_all, unpin_link},
    dynamic::{self, Sample},
    ha::HaStatus,
    health::{Checker, Event, Health, Target, Tracker},
    hops::HopCache,
    netlink::{ifindex, mac_address},
    plan::{BackendKey, BackendState, Planner},
    sysctl::ForwardingSysctls,
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
    /// Loads the data plane for `config` — taking over the one pinned for
    /// its instance if a previous controller left it running — attaches it
    /// and writes the difference to its maps.
    ///
    /// Forwarding is turned on for the attached interfaces first
    /// ([`ForwardingSysctls`]), put back by a clean [`Controller::stop`].
    ///
    /// Transactional: a start that fails undoes what it did (attachments,
    /// pins, the forwarding sysctls it changed) before returning the error
    /// — except that a data plane taken over from an earlier lb stays
    /// attached and pinned, forwarding (it carries traffic; only what this
    /// start added to it is removed). The caller must hold the instance lock
    /// ([`crate::lock::InstanceLock`]), so no other lb uses these pins.
    pub fn start(config: Config, config_path: &Path) -> anyhow::Result<Self> {
        let pin_dir = pin_dir(&config);
        let mut started = Started::default();
        match Self::try_start(config, config_path, &mut started) {
            Ok(mut controller) => {
                controller.started_with = started;
                Ok(controller)
            }
            // The data plane handle (and any attachment not yet pinned) is
            // gone by now.
            Err(error) => Err(error.context(undo_start(&mut started, &pin_dir))),
        }
    }

    /// The steps of [`Controller::start`], recording each change in
    /// `started` as it is made. Interfaces new to the data plane are
    /// attached before its tables change (attaching is what fails, when
    /// something does: no native XDP, an interface held by another
    /// program); the interfaces of a taken-over data plane get the new
    /// program after its tables are written, as at any upgrade.
    fn try_start(
        config: Config,
        config_path: &Path,
        started: &mut Started,
    ) -> anyhow::Result<Self> {
        let interfaces: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
        let record = crate::sysctl::record_path(config.instance.as_str());
        started.forwarding = ForwardingSysctls::enable(&interfaces, record)?;
        let sizes = sizes(&config);
        let pin_dir = pin_dir(&config);
        started.origin = Some(if is_pinned(&pin_dir) {
            Origin::TakenOver
        } else {
            Origin::Created
        });
        let (mut dataplane, adopted) = Dataplane::load_pinned(sizes, &pin_dir)
            .context("loading the XDP program (root and a kernel with BTF are needed)")?;
        let mut planner = Planner::new(sizes.ring_size, sizes.services, sizes.backends);
        // The operator's `lb guard deny` prefixes outlive the controller.
        let mut guard = crate::guard::Guard::default();
        if adopted {
            let snapshot = dataplane.snapshot()?;
            for (addr, len) in &snapshot.runtime_deny {
                if let Some(prefix) = crate::plan::deny_prefix(addr, *len) {
                    guard.deny(prefix);
                }
            }
            if !guard.runtime().is_empty() {
                tracing::info!(
                    prefixes = guard.runtime().len(),
                    "kept the runtime deny list (lb guard deny)"
                );
            }
            planner.adopt(&config, snapshot);
            tracing::info!(pins = %pin_dir.display(), "took over the pinned data plane");
            // A data plane taken over from an older lb has no address
            // filters or service slots yet: derive them from the maps,
            // whatever wrote those, before this program runs on them.
            dataplane.rebuild_indexes()?;
        }
        let mut hops = match HopCache::open() {
            Ok(hops) => Some(hops),
            Err(error) => {
                tracing::warn!(%error, "no netlink: every packet will ask the FIB for its next hop");
                None
            }
        };
        // Resolved before the settings are written: a taken-over data plane
        // is live, and tunnels must not leave with no outer source meanwhile.
        let (tunnel_sources, others) = resolve_tunnel_sources(hops.as_mut(), &config);
        log_tunnel_sources(None, tunnel_sources, &others, &config);
        let states = BTreeMap::new();
        let writes = planner.plan(&config, &states)?;
        let (taken_over, new): (Vec<&Interface>, Vec<&Interface>) = config
            .interfaces
            .iter()
            .partition(|iface| link_pin(&pin_dir, &iface.name).exists());
        for iface in &config.interfaces {
            dataplane.insert_iface(ifindex(&iface.name)?, mac_address(&iface.name)?)?;
            dataplane.insert_devmap(ifindex(&iface.name)?)?;
        }
        attach(&mut dataplane, &new, &pin_dir, started)?;
        dataplane.set_guard_settings(&guard_settings(&config))?;
        let mut settings = settings_with(&config, tunnel_sources);
        if !guard.runtime().is_empty() {
            settings.flags |= lb_common::maps::SETTINGS_DENY;
        }
        dataplane.set_settings(&settings)?;
        dataplane.apply(&writes)?;
        dataplane.rebuild_indexes()?;
        tracing::info!(writes = writes.len(), "maps written");
        attach(&mut dataplane, &taken_over, &pin_dir, started)?;
        let agents = agent_targets(&config);
        let mut controller = Self {
            config,
            config_path: config_path.to_path_buf(),
            dataplane,
            planner,
            states,
            trackers: BTreeMap::new(),
            overrides: BTreeMap::new(),
            dynamic: BTreeMap::new(),
            offsets: BTreeMap::new(),
            loads: BTreeMap::new(),
            agents,
            check_latency: BTreeMap::new(),
            connections: 0,
            evictions: crate::conns::Evictions::default(),
            ha: Vec::new(),
            checker: None,
            checked: Vec::new(),
            events: None,
            hops,
            tunnel_sources,
            pin_dir,
            started: SystemTime::now(),
            started_with: Started::default(),
            guard,
            attacks: crate::attack::Attacks::default(),
            announce: announcing::Announcing::default(),
            trace: false,
            sync: None,
        };
        controller.refresh_hops();
        // The backends' neighbours the kernel was just asked to resolve
        // usually answer within milliseconds: waited for (a bounded time),
        // so the first packets take the cached path.
        controller.settle_hops(HOP_SETTLE);
        Ok(controller)
    }

    /// Undoes a start whose later steps failed (VRRP, a listener), as
    /// [`Controller::start`] undoes its own: everything this start added
    /// goes; a taken-over data plane stays, forwarding. Returns what became
    /// of the data plane, for the error message. The controller is of no
    /// further use (its maps are closed when it is dropped).
    pub fn abandon(&mut self) -> String {
        self.stop_ha();
        self.stop_sync();
        if let Some(checker) = self.checker.take() {
            checker.stop();
        }
        if self.started_with.origin == Some(Origin::Created)
            && let Some(mut hops) = self.hops.take()
        {
            hops.forget_managed();
        }
        // Every attachment of a finished start is pinned (none is held only
        // by this process's handle), so undoing the pins undoes them.
        undo_start(&mut std::mem::take(&mut self.started_with), &self.pin_dir)
    }

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
    fn restart_checker(&mut self) {
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

    /// The overrides that survive a change to `next`: those of backends
    /// whose configuration `next` changes (or removes) go, since an
    /// operator's drain or weight was about the old one.
    fn kept_overrides(&self, next: &Config) -> BTreeMap<BackendKey, BackendOverride> {
        self.overrides
            .iter()
            .filter(|(key, _)| {
                let before = configured_backend(&self.config, key);
                before.is_some() && before == configured_backend(next, key)
            })
            .map(|(key, change)| (key.clone(), *change))
            .collect()
    }

    /// Folds the dynamic weights and, over them, the operator's overrides
    /// into the planner's backend states.
    fn sync_weights(&mut self) {
        self.states = folded_weights(&self.states, &self.dynamic, &self.overrides, &self.config);
    }

    /// Health-check latency histograms, by backend (for metrics).
    pub fn check_latency(
        &self,
    ) -> &BTreeMap<BackendKey, prometheus_client::metrics::histogram::Histogram> {
        &self.check_latency
    }

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
    fn active_flows_of(&self, filter: &ServiceFilter) -> BTreeMap<u32, u64> {
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
    fn fold_in_scan(
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

    /// One step of the dynamic schedulers: `least-conn` weights follow the
    /// active flows, `resource` weights the agents' loads. Re-plans if a
    /// weight moved.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        // One map read per backend: only when a least-conn service needs it.
        let active = if self
            .config
            .services
            .iter()
            .any(|service| service.scheduler == Scheduler::LeastConn)
        {
            self.active_flows()
        } else {
            BTreeMap::new()
        };
        let loads = &self.loads;
        let mut changed = false;
        for (service, planned) in self.config.services.iter().zip(self.planner.planned()) {
            if !service.scheduler.is_dynamic() {
                continue;
            }
            let samples: Vec<(BackendKey, Sample)> = planned
                .backends
                .iter()
                .filter(|b| b.up)
                .map(|b| {
                    #[allow(clippy::cast_precision_loss, reason = "flow counts")]
                    let measure = if service.scheduler == Scheduler::LeastConn {
                        active.get(&b.id).copied().unwrap_or(0) as f64
                    } else {
                        loads.get(&b.key).copied().unwrap_or(0.0)
                    };
                    let sample =
                        Sample {
                            configured: b.weight,
                            current: self.dynamic.get(&b.key).copied().unwrap_or_else(|| {
                                dynamic::table_weight(service.scheduler, b.weight)
                            }),
                            measure,
                        };
                    (b.key.clone(), sample)
                })
                .collect();
            let just: Vec<Sample> = samples.iter().map(|(_, s)| *s).collect();
            let next = if service.scheduler == Scheduler::LeastConn {
                dynamic::least_conn(&just)
            } else {
                dynamic::resource(&just)
            };
            if let Some(next) = next {
                for ((key, _), weight) in samples.into_iter().zip(next) {
                    self.dynamic.insert(key, weight);
                }
                changed = true;
            }
        }
        if changed {
            self.sync_weights();
            self.replan()?;
        }
        Ok(())
    }

    /// The agents of the `resource` backends, for the poller that asks
    /// them for their loads once a second ([`Controller::set_load`]).
    pub fn agents(&self) -> Vec<AgentTarget> {
        self.agents.clone()
    }

    /// A backend's load as its agent reported it; `None`: the agent did
    /// not answer (the backend keeps its configured weight). Feeds
    /// [`Controller::tick`].
    pub fn set_load(&mut self, key: BackendKey, load: Option<f64>) {
        match load {
            Some(load) => self.loads.insert(key, load),
            None => self.loads.remove(&key),
        };
    }

    /// The agents of the current configuration's `resource` backends.
    fn update_agents(&mut self) {
        self.agents = agent_targets(&self.config);
    }

    /// Drains, undrains or re-weights one backend (`lb drain` and friends)
    /// and applies it at once. `backend` is `ADDR` or `ADDR:PORT`.
    pub fn override_backend(
        &mut self,
        service: &str,
        backend: &str,
        change: Override,
    ) -> Result<BackendStatus, OverrideError> {
        let key = self.find_backend(service, backend)?;
        // Restored if the change cannot be applied: an override the maps
        // do not carry must not show in `lb status`.
        let before = (self.overrides.clone(), self.states.clone());
        let entry = self.overrides.entry(key.clone()).or_default();
        match change {
            Override::Drain => entry.drained = true,
            Override::Undrain => entry.drained = false,
            Override::Weight(weight) => entry.weight = Some(weight),
        }
        if !entry.drained && entry.weight.is_none() {
            self.overrides.remove(&key);
        }
        tracing::info!(service, backend = %key.address, port = key.port, ?change, "operator override");
        self.sync_weights();
        if let Err(error) = self.replan() {
            (self.overrides, self.states) = before;
            return Err(OverrideError::Failed(error));
        }
        self.refresh_announce();
        let status = self.status();
        status
            .services
            .into_iter()
            .filter(|s| s.name == service)
            .flat_map(|s| s.backends)
            .find(|b| b.address == key.address.to_string() && b.port == key.port)
            .ok_or_else(|| OverrideError::Unknown("backend vanished".into()))
    }

    /// The backend `spec` (`ADDR` or `ADDR:PORT`) of `service`, or a message
    /// listing the valid names.
    fn find_backend(&self, service: &str, spec: &str) -> Result<BackendKey, OverrideError> {
        let Some(configured) = self.config.services.iter().find(|s| s.name == service) else {
            let names: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Err(OverrideError::Unknown(format!(
                "no service {service:?}; services: {}",
                names.join(", ")
            )));
        };
        let (address, port) = parse_backend(spec)
            .ok_or_else(|| OverrideError::Unknown(format!("{spec:?} is not ADDR or ADDR:PORT")))?;
        let matches: Vec<BackendKey> = configured
            .backends
            .iter()
            .filter(|b| b.address == address && port.is_none_or(|p| p == b.port_for(configured)))
            .map(|b| BackendKey {
                service: service.to_string(),
                address: b.address,
                port: b.port_for(configured),
            })
            .collect();
        if let [one] = matches.as_slice() {
            return Ok(one.clone());
        }
        let valid: Vec<String> = configured
            .backends
            .iter()
            .map(|b| format_backend(b.address, b.port_for(configured)))
            .collect();
        let how_many = if matches.is_empty() {
            "no"
        } else {
            "more than one"
        };
        Err(OverrideError::Unknown(format!(
            "{how_many} backend {spec:?} in service {service:?}; backends: {}",
            valid.join(", ")
        )))
    }

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

    /// Starts VRRP, one instance after the other, if the configuration
    /// asks for it; a failure stops those already started. `alarm` is
    /// raised when an instance can no longer run (one of its threads
    /// stopped).
    pub fn start_ha(&mut self, alarm: &crate::ha::Alarm) -> anyhow::Result<()> {
        let Some(section) = &self.config.ha else {
            return Ok(());
        };
        for mut instance in section.instances() {
            // An instance stepping down must not take another's addresses.
            match crate::sysctl::promote_secondaries(&instance.interface) {
                Ok(true) => tracing::info!(interface = %instance.interface,
                    "ha: set promote_secondaries, so removing one floating IP keeps the \
                     others of its subnet"),
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %format!("{error:#}"),
                    "ha: cannot set promote_secondaries: an instance stepping down may \
                     remove another's floating IPs of the same subnet"),
            }
            for track in &mut instance.track {
                let service = self
                    .config
                    .services
                    .iter()
                    .find(|s| s.name == track.service);
                track.min_healthy = track.min_healthy.or(service.map(|s| s.min_healthy));
            }
            let ha = match crate::ha::Ha::start(&instance, alarm.clone()) {
                Ok(ha) => ha,
                Err(error) => {
                    self.stop_ha();
                    return Err(error.context(format!(
                        "ha: the instance with virtual_router_id {}",
                        instance.virtual_router_id
                    )));
                }
            };
            ha.track(self.healthy_backends());
            self.ha.push(ha);
            tracing::info!(interface = %instance.interface, vrid = instance.virtual_router_id,
                priority = instance.priority, "ha: VRRP started");
        }
        Ok(())
    }

    /// Handles that start VRRP's hand-over of every instance from another
    /// thread at once (empty without HA); [`Controller::stop_ha`] waits for
    /// them.
    pub fn ha_hand_over(&self) -> Vec<crate::ha::HandOver> {
        self.ha.iter().map(crate::ha::Ha::hand_over).collect()
    }

    /// Hands over (a master sends priority 0 and drops its floating IPs),
    /// every instance at once.
    pub fn stop_ha(&mut self) {
        let stopping: Vec<_> = self
            .ha
            .drain(..)
            .map(|ha| std::thread::spawn(move || ha.stop()))
            .collect();
        for stop in stopping {
            let _ = stop.join();
        }
    }

    /// Healthy (not down) backends per service, for the HA tracks.
    fn healthy_backends(&self) -> crate::ha::Healthy {
        self.config
            .services
            .iter()
            .map(|service| {
                let healthy = service
                    .backends
                    .iter()
                    .filter(|b| {
                        let key = BackendKey {
                            service: service.name.clone(),
                            address: b.address,
                            port: b.port_for(service),
                        };
                        self.states.get(&key).is_none_or(|s| s.up)
                    })
                    .count();
                (
                    service.name.clone(),
                    u32::try_from(healthy).unwrap_or(u32::MAX),
                )
            })
            .collect()
    }

    /// Tells every HA instance the services' health (tracking).
    fn track_health(&self) {
        if self.ha.is_empty() {
            return;
        }
        let healthy = self.healthy_backends();
        for ha in &self.ha {
            ha.track(healthy.clone());
        }
    }

    /// Resolves every backend's next hop and writes the `HOPS` entries that
    /// changed (and clears those of backends that are gone); returns how
    /// many were written. Called at start and after a reload, on the
    /// calling thread; the hop follower does the same lookup on its own
    /// thread whenever the kernel's neighbours, routes or links change
    /// ([`Controller::write_hops`]). A backend whose hop cannot be
    /// resolved gets an empty entry: its packets ask the FIB. The default
    /// tunnel sources follow the routes too.
    pub fn refresh_hops(&mut self) -> usize {
        let Some(targets) = self.hop_targets() else {
            return 0;
        };
        let Some(hops) = self.hops.as_mut() else {
            return 0;
        };
        let lookup = hops.lookup(&targets);
        self.write_hops(lookup)
    }

    /// Waits at most `within` for the next hops still being resolved and
    /// writes them ([`crate::hops::HopCache::settle`]).
    fn settle_hops(&mut self, within: std::time::Duration) -> usize {
        let Some(targets) = self.hop_targets() else {
            return 0;
        };
        let Some(hops) = self.hops.as_mut() else {
            return 0;
        };
        hops.settle(&targets, &mut self.dataplane, within)
    }

    /// Writes the tunnels' default outer sources if they changed; returns
    /// the writes (0 or 1).
    fn write_tunnel_sources(
        &mut self,
        sources: TunnelSources,
        others: &[(std::net::IpAddr, std::net::IpAddr)],
    ) -> usize {
        if sources == self.tunnel_sources {
            return 0;
        }
        let settings = self.settings_for(&self.config, sources);
        match self.dataplane.set_settings(&settings) {
            Ok(()) => {
                log_tunnel_sources(Some(self.tunnel_sources), sources, others, &self.config);
                self.tunnel_sources = sources;
                1
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "writing the tunnel source");
                0
            }
        }
    }

    /// What the hop follower looks up (on its own thread): the backends'
    /// next hops, the routing table if a NAT service needs it, and the
    /// source towards each tunnel backend that takes a default outer
    /// source; `None` when netlink is unavailable (every packet asks the
    /// FIB).
    pub fn hop_targets(&self) -> Option<crate::hops::Targets> {
        self.hops.as_ref().map(|_| crate::hops::Targets {
            tunnels: tunnel_targets(&self.config),
            ..crate::hops::targets(self.planner.planned())
        })
    }

    /// Writes what a [`crate::hops::Resolver::lookup`] found (on the
    /// follower's thread, or at start and reload on this one): the next
    /// hops, the mirrored routes, and the tunnels' default outer sources,
    /// picked from the sources it found with no netlink request here.
    /// Returns how many entries were written. A lookup made for other
    /// targets than the current ones (a reload came between) is dropped:
    /// the reload refreshed the hops itself.
    pub fn write_hops(&mut self, lookup: crate::hops::Lookup) -> usize {
        if self.hop_targets().as_ref() != Some(&lookup.targets) {
            return 0;
        }
        let (sources, others) =
            default_tunnel_sources(&self.config, |tunnel| lookup.source_towards(tunnel));
        let written = match self.hops.as_mut() {
            Some(hops) => hops.write(lookup, &mut self.dataplane),
            None => 0,
        };
        written + self.write_tunnel_sources(sources, &others)
    }

    /// Detaches from every interface, removes the pinned maps and puts back
    /// the forwarding sysctls `lb run` turned on.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        // Taken, so a refresh racing the exit cannot manage them again.
        if let Some(mut hops) = self.hops.take() {
            hops.forget_managed();
        }
        let detached = unpin_all(&self.pin_dir);
        self.started_with.forwarding.restore();
        for interface in detached? {
            tracing::info!(%interface, "detached");
        }
        Ok(())
    }

    /// The loaded data plane, for readers of its maps (`lb route`).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The services and backends as last planned, with their map ids.
    pub fn planned(&self) -> &[crate::plan::PlannedService] {
        self.planner.planned()
    }

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
                scheduler: scheduler_name(service.scheduler),
                forwarding: forwarding_name(service.forwarding),
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
                        last_check: self.trackers.get(&b.key).and_then(Tracker::last).map(|o| {
                            LastCheck {
                                ok: o.ok,
                                detail: o.detail.clone(),
                                latency_ms: o.latency.as_secs_f64() * 1000.0,
                            }
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

    /// The connection table's fill and estimated evictions, as of the last
    /// reconciliation.
    pub fn conn_table_stats(&self) -> crate::conns::ConnTableStats {
        self.evictions
            .report(u64::from(self.dataplane.sizes().connections))
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

    /// Reads the automatic guard's denials from the data path: logs and
    /// counts the new ones, removes the expired ones. Called once a second.
    pub fn poll_guard(&mut self) -> anyhow::Result<()> {
        let entries = if self.config.guard.auto.is_some() {
            self.dataplane.guard_denials()?
        } else {
            Vec::new()
        };
        let now = crate::dataplane::monotonic_ns();
        for event in self.guard.observe(&entries, now) {
            let denial = &event.denial;
            tracing::warn!(
                source = %denial.source,
                vip = %denial.vip,
                cause = denial.cause.name(),
                deny_for_seconds = denial.expires_in_seconds,
                "guard: source denied automatically (drop_guard_auto)"
            );
        }
        for (source, denial) in &entries {
            if denial.until_ns <= now {
                self.dataplane.remove_guard_denial(source)?;
            }
        }
        // Once a second: attack state for divert, attachment, and a retry
        // of a text BIRD did not take.
        self.refresh_announce();
        Ok(())
    }

    /// `lb guard list`.
    pub fn guard_report(&self) -> crate::guard::GuardReport {
        self.guard.report(
            &self.config.guard.deny,
            self.config.guard.auto.is_some(),
            crate::dataplane::monotonic_ns(),
        )
    }

    /// Denials since start for `cause`, and sources denied now (metrics).
    pub fn guard_counts(&self) -> (Vec<(crate::guard::Cause, u64)>, usize) {
        let totals = crate::guard::Cause::ALL
            .iter()
            .map(|cause| (*cause, self.guard.total(*cause)))
            .collect();
        (
            totals,
            self.guard.denied_now(crate::dataplane::monotonic_ns()),
        )
    }

    /// `lb guard deny PREFIX`: packets from `prefix` to every VIP are
    /// dropped (`drop_denied`) until `lb guard allow`, across controller
    /// restarts (the prefix is marked `DENY_RUNTIME` in the pinned map),
    /// until the data plane is removed.
    pub fn guard_deny(
        &mut self,
        prefix: ipnet::IpNet,
    ) -> Result<crate::guard::GuardReport, OverrideError> {
        let prefix = prefix.trunc();
        if self.guard.runtime().contains(&prefix) {
            return Ok(self.guard_report());
        }
        if self.guard.runtime().len() + self.config.guard.deny.len() >= 1024 {
            return Err(OverrideError::Unknown(
                "the deny list is full (1024 prefixes)".into(),
            ));
        }
        // The settings once the prefix is listed: the deny list in force.
        let mut settings = self.settings_for(&self.config, self.tunnel_sources);
        settings.flags |= lb_common::maps::SETTINGS_DENY;
        apply::deny_runtime(&mut self.dataplane, &mut self.guard, prefix, &settings)?;
        tracing::info!(%prefix, "guard: denied by the operator");
        Ok(self.guard_report())
    }

    /// `lb guard allow PREFIX`: undoes `lb guard deny PREFIX`, and lets in
    /// the sources in `prefix` the automatic guard denied. Prefixes of the
    /// configuration file stay (the file is edited and reloaded for them).
    pub fn guard_allow(
        &mut self,
        prefix: ipnet::IpNet,
    ) -> Result<crate::guard::GuardReport, OverrideError> {
        let prefix = prefix.trunc();
        if self.config.guard.deny.iter().any(|p| p.trunc() == prefix) {
            return Err(OverrideError::Unknown(format!(
                "{prefix} is in guard.deny of {}: remove it there and reload",
                self.config_path.display()
            )));
        }
        let runtime = self.guard.allow(prefix);
        if runtime {
            let (addr, len) = crate::plan::deny_key(&prefix);
            let settings = self.settings_for(&self.config, self.tunnel_sources);
            if let Err(error) = self
                .dataplane
                .remove_deny(&addr, len, DENY_RUNTIME)
                .and_then(|()| self.dataplane.set_settings(&settings))
            {
                self.guard.deny(prefix);
                return Err(OverrideError::Failed(error.into()));
            }
        }
        let entries = self
            .dataplane
            .guard_denials()
            .map_err(|error| OverrideError::Failed(error.into()))?;
        let mut automatic = 0;
        for (source, _) in &entries {
            if prefix.contains(&crate::guard::addr_ip(source)) {
                self.dataplane
                    .remove_guard_denial(source)
                    .map_err(|error| OverrideError::Failed(error.into()))?;
                automatic += 1;
            }
        }
        self.guard.forget_within(&prefix);
        if !runtime && automatic == 0 {
            return Err(OverrideError::Unknown(format!(
                "nothing denies {prefix}: it is not on the runtime deny list and no source in \
                 it is denied automatically (see lb guard list)"
            )));
        }
        tracing::info!(%prefix, runtime, automatic, "guard: allowed by the operator");
        Ok(self.guard_report())
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

/// A backend's agent: whom it reports for, where, and the secret to show.
pub type AgentTarget = (BackendKey, SocketAddr, Option<Arc<String>>);

/// The agents of `config`'s `resource` backends. A secret file that cannot
/// be read is logged and left out: its agents then refuse the polls, and
/// their backends keep their configured weights.
fn agent_targets(config: &Config) -> Vec<AgentTarget> {
    let mut targets = Vec::new();
    for service in config
        .services
        .iter()
        .filter(|s| s.scheduler == Scheduler::Resource)
    {
        let secret = service.agent_secret_file.as_ref().and_then(|path| {
            crate::agent::read_secret(path)
                .map_err(|error| {
                    tracing::warn!(service = %service.name, error = %format!("{error:#}"),
                        "agent secret unreadable: polling without it");
                })
                .ok()
                .map(Arc::new)
        });
        for backend in &service.backends {
            let key = BackendKey {
                service: service.name.clone(),
                address: backend.address,
                port: backend.port_for(service),
            };
            let address = SocketAddr::new(backend.address, service.agent_port);
            targets.push((key, address, secret.clone()));
        }
    }
    targets
}

/// What a start changed so far, so that a failed one can be undone.
#[derive(Debug, Default)]
struct Started {
    /// The forwarding sysctls this start turned on (and those an earlier
    /// `lb run` left on, from its record): on failure only this start's own
    /// are put back ([`ForwardingSysctls::abandon`]); once started, all of
    /// them on a clean stop.
    forwarding: ForwardingSysctls,
    /// Where the data plane came from, once loaded.
    origin: Option<Origin>,
    /// Attachments this start pinned (on a taken-over data plane: the
    /// interfaces it did not have).
    links: Vec<PathBuf>,
}

/// Where a started controller's data plane came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Created and pinned by this start: undoing removes all of it.
    Created,
    /// Pinned by an earlier lb and taken over: it carries traffic, and
    /// undoing leaves it attached and pinned.
    TakenOver,
}

/// Undoes `started` (the data plane handle must be closed already, so that
/// attachments not yet pinned are gone with it); returns a sentence saying
/// what became of the data plane. Failures to undo are logged: the start's
/// own error is the one to report.
fn undo_start(started: &mut Started, pin_dir: &Path) -> String {
    let outcome = match started.origin {
        None => "lb run did not start; nothing was attached or pinned".to_string(),
        Some(Origin::Created) => match unpin_all(pin_dir) {
            Ok(detached) => {
                for interface in detached {
                    tracing::info!(%interface, "start failed: detached");
                }
                "lb run did not start; nothing was left attached or pinned".to_string()
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), pins = %pin_dir.display(),
                    "start failed, and removing its pins failed too");
                format!(
                    "lb run did not start, and could not remove its pins in {}: `lb detach` them",
                    pin_dir.display()
                )
            }
        },
        Some(Origin::TakenOver) => {
            for link in &started.links {
                if let Err(error) = unpin_link(link) {
                    tracing::error!(error = %format!("{error:#}"),
                    "start failed: removing an attachment it added");
                }
            }
            format!(
                "lb run did not start; the data plane it found pinned in {} is left attached \
                 and forwarding",
                pin_dir.display()
            )
        }
    };
    // A taken-over data plane keeps the forwarding an earlier lb run turned
    // on (it is still recorded); only this start's changes are put back.
    started.forwarding.abandon();
    outcome
}

/// Attaches to `interfaces` (see [`Dataplane::attach_pinned`]), recording
/// the attachments it pins in `started`.
fn attach(
    dataplane: &mut Dataplane,
    interfaces: &[&Interface],
    pin_dir: &Path,
    started: &mut Started,
) -> anyhow::Result<()> {
    for iface in interfaces {
        let mode = match iface.xdp_mode {
            XdpModeSetting::Auto => AttachMode::Auto,
            XdpModeSetting::Native => AttachMode::Native,
            XdpModeSetting::Generic => AttachMode::Generic,
        };
        let attachment = dataplane
            .attach_pinned(&iface.name, mode, pin_dir)
            .with_context(|| format!("attaching to {}", iface.name))?;
        match attachment {
            Attachment::Adopted => {
                tracing::info!(interface = %iface.name, "took over the attachment (no gap)");
            }
            Attachment::Attached(mode) => {
                started.links.push(link_pin(pin_dir, &iface.name));
                tracing::info!(interface = %iface.name, ?mode, "attached");
            }
        }
    }
    Ok(())
}

/// An operator's change to one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    /// Weight 0: no new flows; existing flows finish.
    Drain,
    /// Back to the weight it had.
    Undrain,
    /// A weight in place of the configured one.
    Weight(u32),
}

/// The overrides in force for one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BackendOverride {
    drained: bool,
    weight: Option<u32>,
}

/// Why an override was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverrideError {
    /// No such service or backend; the message lists the valid ones.
    #[error("{0}")]
    Unknown(String),
    /// Applying it failed.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// `ADDR`, `ADDR:PORT` or `[V6]:PORT`.
fn parse_backend(spec: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    if let Ok(address) = spec.parse() {
        return Some((address, None));
    }
    let socket: std::net::SocketAddr = spec.parse().ok()?;
    Some((socket.ip(), Some(socket.port())))
}

/// A backend as `lb status` writes it.
fn format_backend(address: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn scheduler_name(scheduler: crate::config::Scheduler) -> String {
    use crate::config::Scheduler;
    match scheduler {
        Scheduler::Maglev => "maglev",
        Scheduler::IpHash => "ip-hash",
        Scheduler::RoundRobin => "round-robin",
        Scheduler::LeastConn => "least-conn",
        Scheduler::Resource => "resource",
    }
    .into()
}

fn forwarding_name(forwarding: crate::config::Forwarding) -> String {
    use crate::config::Forwarding;
    match forwarding {
        Forwarding::Nat => "nat",
        Forwarding::Dsr => "dsr",
        Forwarding::Tunnel => "tunnel",
    }
    .into()
}

/// Where an instance's maps and attachments are pinned.
pub fn pin_dir(config: &Config) -> PathBuf {
    Path::new(PIN_ROOT).join(config.instance.as_str())
}

/// bpffs directory of every lb instance.
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb";

/// New flows minus closed flows of a backend's counters.
fn flow_balance(traffic: &lb_common::Traffic) -> i64 {
    i64::try_from(traffic.new_flows.saturating_sub(traffic.closed_flows)).unwrap_or(i64::MAX)
}

impl Controller {
    /// Re-reads the configuration file and applies the difference; returns
    /// the number of map writes. A reload applies whole or changes nothing:
    /// a file that does not validate, or that changes what only a restart
    /// applies (interfaces, map sizes, ha, control), is refused before
    /// anything moves; the new tables are planned on a copy of the planner;
    /// and if a map write fails, the writes already made are undone, so
    /// maps, planner, overrides and health state stay as they were.
    /// Operator overrides (drain, weight) stay unless the reload changes
    /// that backend's configuration.
    pub fn reload(&mut self) -> anyhow::Result<usize> {
        let (config, warnings) = Config::load_with_warnings(&self.config_path)?;
        if sizes(&config) != self.dataplane.sizes() {
            anyhow::bail!("dataplane sizes changed: restart lb run to apply them");
        }
        if let Some(what) = restart_needed(&self.config, &config) {
            anyhow::bail!("{what} changed: restart lb run to apply it");
        }
        // Service ids may move between VIPs: rates start afresh.
        self.attacks.forget_samples();
        let overrides = self.kept_overrides(&config);
        let dynamic = kept_dynamic(&self.config, &config, &self.dynamic);
        // Next hops are looked up again only if the backends (or tunnels)
        // changed: the follower keeps those of unchanged ones current.
        let hop_targets = self.hop_targets();
        let states = folded_weights(&self.states, &dynamic, &overrides, &config);
        let (tunnel_sources, others) = resolve_tunnel_sources(self.hops.as_mut(), &config);
        self.dataplane
            .set_guard_settings(&guard_settings(&config))?;
        self.dataplane
            .set_settings(&self.settings_for(&config, tunnel_sources))?;
        let writes = match apply_whole(&mut self.planner, &mut self.dataplane, &config, &states) {
            Ok(writes) => writes,
            Err(error) => {
                let before = self.settings_for(&self.config, self.tunnel_sources);
                if let Err(error) = self
                    .dataplane
                    .set_guard_settings(&guard_settings(&self.config))
                    .and_then(|()| self.dataplane.set_settings(&before))
                {
                    tracing::error!(error = %format!("{error:#}"), "restoring the settings");
                }
                return Err(error);
            }
        };
        // A prefix the file no longer names may still be the operator's.
        for prefix in self.guard.runtime() {
            let (addr, len) = crate::plan::deny_key(prefix);
            if let Err(error) = self.dataplane.insert_deny(&addr, len, DENY_RUNTIME) {
                tracing::error!(error = %format!("{error:#}"), %prefix, "keeping a runtime deny");
            }
        }
        tracing::info!(writes, "reloaded");
        log_tunnel_sources(Some(self.tunnel_sources), tunnel_sources, &others, &config);
        self.tunnel_sources = tunnel_sources;
        for warning in &warnings {
            tracing::warn!(path = %warning.path, line = ?warning.line, "{}", warning.message);
        }
        self.overrides = overrides;
        self.dynamic = dynamic;
        self.states = states;
        let previous_announce = std::mem::replace(&mut self.config, config).announce;
        self.publish_directory();
        if self.hop_targets() != hop_targets {
            self.refresh_hops();
        }
        self.restart_checker();
        self.update_agents();
        self.track_health();
        self.restart_announce(previous_announce.as_ref());
        Ok(writes)
    }
}

/// What `next` changes that only a restart applies (the sizes aside, which
/// the data plane knows); `None` if a reload can apply all of it.
/// How long a start waits for the backends' next hops to resolve.
const HOP_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

fn restart_needed(current: &Config, next: &Config) -> Option<&'static str> {
    if next.interfaces != current.interfaces {
        Some("interfaces")
    } else if next.ha != current.ha {
        Some("the ha section")
    } else if next.sync != current.sync {
        Some("the sync section")
    } else if next.control.socket != current.control.socket {
        Some("control.socket")
    } else if next.control.metrics != current.control.metrics {
        Some("control.metrics")
    } else if next.control.web != current.control.web {
        Some("control.web")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;

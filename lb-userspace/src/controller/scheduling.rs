//! The dynamic schedulers' step (`least-conn`, `resource`) and the agents
//! whose loads feed `resource`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::Controller;
use crate::{
    config::{Config, Scheduler},
    dynamic::{self, Sample},
    plan::BackendKey,
};

impl Controller {
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
    pub(super) fn update_agents(&mut self) {
        self.agents = agent_targets(&self.config);
    }
}

/// A backend's agent: whom it reports for, where, and the secret to show.
pub type AgentTarget = (BackendKey, SocketAddr, Option<Arc<String>>);

/// The agents of `config`'s `resource` backends. A secret file that cannot
/// be read is logged and left out: its agents then refuse the polls, and
/// their backends keep their configured weights.
pub(super) fn agent_targets(config: &Config) -> Vec<AgentTarget> {
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

//! The operator's drains and weights (`lb drain`, `lb undrain`, `lb
//! weight`): found by name, applied at once, kept across a reload unless
//! it changes that backend.

use std::collections::BTreeMap;

use super::{
    Controller,
    weights::{configured_backend, folded_weights},
};
use crate::{
    config::Config,
    plan::BackendKey,
    report::{BackendStatus, Override, OverrideError},
};

impl Controller {
    /// The overrides that survive a change to `next`: those of backends
    /// whose configuration `next` changes (or removes) go, since an
    /// operator's drain or weight was about the old one.
    pub(super) fn kept_overrides(&self, next: &Config) -> BTreeMap<BackendKey, BackendOverride> {
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
    pub(super) fn sync_weights(&mut self) {
        self.states = folded_weights(&self.states, &self.dynamic, &self.overrides, &self.config);
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
    pub(super) fn find_backend(
        &self,
        service: &str,
        spec: &str,
    ) -> Result<BackendKey, OverrideError> {
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
}

/// The overrides in force for one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BackendOverride {
    pub(super) drained: bool,
    pub(super) weight: Option<u32>,
}

/// `ADDR`, `ADDR:PORT` or `[V6]:PORT`.
pub(super) fn parse_backend(spec: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    if let Ok(address) = spec.parse() {
        return Some((address, None));
    }
    let socket: std::net::SocketAddr = spec.parse().ok()?;
    Some((socket.ip(), Some(socket.port())))
}

/// A backend as `lb status` writes it.
pub(super) fn format_backend(address: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

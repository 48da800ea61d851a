//! The weights the planner gets: the dynamic schedulers' (in table units)
//! with the operator's overrides over them, and which learnt weights a
//! reload keeps.

use std::collections::BTreeMap;

use crate::{
    config::{Backend, Config, Scheduler, Service},
    controller::BackendOverride,
    dynamic,
    plan::{BackendKey, BackendState},
};

/// The configuration of the backend `key` names in `config`, with its
/// service.
pub(super) fn configured_backend<'a>(
    config: &'a Config,
    key: &BackendKey,
) -> Option<(&'a Service, &'a Backend)> {
    config
        .services
        .iter()
        .filter(|s| s.name == key.service)
        .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
        .find(|(s, b)| b.address == key.address && b.port_for(s) == key.port)
}

/// The dynamic weights that survive a change from `current` to `next`:
/// those of backends whose configuration and scheduler stay. A weight
/// learnt for another configured weight, or in another scheduler's units,
/// would skew the new table.
pub(super) fn kept_dynamic(
    current: &Config,
    next: &Config,
    dynamic: &BTreeMap<BackendKey, u32>,
) -> BTreeMap<BackendKey, u32> {
    let same = |key: &BackendKey| match (
        configured_backend(current, key),
        configured_backend(next, key),
    ) {
        (Some((before, backend)), Some((after, next_backend))) => {
            before.scheduler == after.scheduler
                && after.scheduler.is_dynamic()
                && backend == next_backend
        }
        _ => false,
    };
    dynamic
        .iter()
        .filter(|(key, _)| same(key))
        .map(|(key, weight)| (key.clone(), *weight))
        .collect()
}

/// `states` with their weights set from the dynamic weights (in table
/// units) and, over them, the operator's overrides (in configured units,
/// scaled to the table units of their service's scheduler in `config`).
pub(super) fn folded_weights(
    states: &BTreeMap<BackendKey, BackendState>,
    dynamic: &BTreeMap<BackendKey, u32>,
    overrides: &BTreeMap<BackendKey, BackendOverride>,
    config: &Config,
) -> BTreeMap<BackendKey, BackendState> {
    let mut states = states.clone();
    for state in states.values_mut() {
        state.weight = None;
    }
    for (key, weight) in dynamic {
        states.entry(key.clone()).or_default().weight = Some(*weight);
    }
    for (key, change) in overrides {
        let state = states.entry(key.clone()).or_default();
        if change.drained {
            state.weight = Some(0);
        } else if let Some(weight) = change.weight {
            let scheduler = configured_backend(config, key)
                .map_or(Scheduler::Maglev, |(service, _)| service.scheduler);
            state.weight = Some(dynamic::table_weight(scheduler, weight));
        }
    }
    states
}

//! `lb reload` and SIGHUP: the file re-read and applied whole or not at
//! all.

use lb_common::maps::DENY_RUNTIME;

use super::{
    Controller,
    apply::apply_whole,
    settings::{guard_settings, log_tunnel_sources, resolve_tunnel_sources, sizes},
    weights::{folded_weights, kept_dynamic},
};
use crate::config::Config;

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
pub(super) fn restart_needed(current: &Config, next: &Config) -> Option<&'static str> {
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

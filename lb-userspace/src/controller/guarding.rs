//! The guard at run time: the automatic guard's denials polled, the
//! operator's `lb guard deny` / `allow`, and `lb guard list`.

use lb_common::maps::DENY_RUNTIME;

use super::{Controller, apply};
use crate::report::OverrideError;

impl Controller {
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
}

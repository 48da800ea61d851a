//! The controller's side of `guard.attack`: reads the data path's counters
//! per service, sums them per VIP, runs the pure [`crate::attack`] judge,
//! keeps `ATTACK_VIPS` in step with its verdicts and logs each start and
//! end.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use lb_common::{attack::AttackVip, maps::ipv4_mapped};

use super::{Controller, status::unix_seconds};
use crate::{
    attack::{Event, Totals},
    guard::addr_ip,
};

impl Controller {
    /// Reads `guard.attack`'s counters (every [`crate::attack::POLL`]),
    /// judges each VIP, and marks or unmarks it in the data path. Nothing
    /// without the section.
    pub fn poll_attack(&mut self) -> anyhow::Result<()> {
        let Some(attack) = self.config.guard.attack else {
            return Ok(());
        };
        let mut totals: BTreeMap<IpAddr, Totals> = BTreeMap::new();
        for planned in self.planner.planned() {
            let counts = self.dataplane.attack_counts(planned.value.id)?;
            let vip = totals.entry(addr_ip(&planned.key.addr)).or_default();
            *vip = vip.plus(Totals {
                new_flows: counts.new_flows,
                syns: counts.syns,
                completed: counts.completed,
            });
        }
        let now_ns = crate::dataplane::monotonic_ns();
        let now_unix = unix_seconds(SystemTime::now());
        let events = self.attacks.observe(&attack, &totals, now_ns, now_unix);
        let changed = !events.is_empty();
        for event in events {
            match event {
                Event::Started { vip, rates } => tracing::warn!(
                    %vip,
                    new_flows_per_second = rates.new_flows_per_second.round(),
                    half_open_share = format!("{:.2}", rates.half_open_share),
                    "guard: VIP under attack: new SYNs pass only from proven sources \
                     (drop_attack_unverified)"
                ),
                Event::Ended { vip, lasted } => tracing::warn!(
                    %vip,
                    lasted_seconds = lasted.as_secs(),
                    "guard: VIP no longer under attack"
                ),
            }
        }
        // The map follows the verdicts (an earlier controller's entries,
        // after adoption, included).
        let verified_ns = u64::try_from(attack.verified_for.as_nanos()).unwrap_or(u64::MAX);
        // Both budgets are counted once for all CPUs.
        let unknown_budget = attack.unknown_udp_per_second();
        let source_budget = attack.source_flows_per_second;
        let marked = self.dataplane.attack_vips()?;
        for addr in &marked {
            if !self.attacks.is_under(&addr_ip(addr)) {
                self.dataplane.remove_attack_vip(addr)?;
            }
        }
        let under: Vec<(IpAddr, u64)> = self.attacks.under_since().collect();
        for (vip, since_ns) in under {
            let addr = match vip {
                IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
                IpAddr::V6(v6) => v6.octets(),
            };
            if !marked.contains(&addr) {
                let value = AttackVip {
                    verified_ns,
                    since_ns,
                    unknown_budget,
                    source_budget,
                };
                self.dataplane.set_attack_vip(&addr, &value)?;
            }
        }
        // `announce.divert` follows at once.
        if changed {
            self.refresh_announce();
        }
        Ok(())
    }

    /// The `attack` part of `lb status`.
    pub fn attack_report(&self) -> crate::attack::AttackReport {
        self.attacks.report(self.config.guard.attack.is_some())
    }
}

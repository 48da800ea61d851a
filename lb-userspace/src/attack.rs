//! `guard.attack` in the controller (docs/DESIGN.md §2.3): from the data path's
//! running per-VIP totals (new flows, bare-SYN flows, those that went on),
//! read every [`POLL`], the rates over the last second, and the judgement
//! of each VIP: under attack while a threshold is crossed, until it has been
//! quiet for `quiet_for`. Pure: the controller reads the counters and
//! writes `ATTACK_VIPS` on the events.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::GuardAttack;

/// How often the controller reads the counters.
pub const POLL: Duration = Duration::from_millis(200);

/// The span rates are measured over.
const WINDOW_NS: u64 = 1_000_000_000;

/// Below this span the rates are not judged (the first reading, or one
/// right after the counters were reset).
const MIN_SPAN_NS: u64 = 100_000_000;

/// Running totals of one VIP (its services' `ATTACK_COUNTS`, summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// New flows.
    pub new_flows: u64,
    /// TCP flows opened by a bare SYN.
    pub syns: u64,
    /// Of those, flows whose handshake went on.
    pub completed: u64,
}

impl Totals {
    /// `self` plus `other` (the VIP's services summed).
    #[must_use]
    pub fn plus(self, other: Totals) -> Totals {
        Totals {
            new_flows: self.new_flows.wrapping_add(other.new_flows),
            syns: self.syns.wrapping_add(other.syns),
            completed: self.completed.wrapping_add(other.completed),
        }
    }
}

/// A VIP's rates over the last second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// New flows per second.
    pub new_flows_per_second: f64,
    /// Bare-SYN flows per second.
    pub syns_per_second: f64,
    /// Share of bare-SYN flows that did not go on (0 without any).
    pub half_open_share: f64,
}

/// The rates between two readings `span_ns` apart; `None` if the counters
/// went back (the data plane was replaced) or the span is too short.
pub fn rates(older: Totals, newer: Totals, span_ns: u64) -> Option<Rates> {
    if span_ns < MIN_SPAN_NS
        || newer.new_flows < older.new_flows
        || newer.syns < older.syns
        || newer.completed < older.completed
    {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "rates, not counts")]
    let per_second = |n: u64| n as f64 * 1e9 / span_ns as f64;
    let syns = newer.syns - older.syns;
    let completed = (newer.completed - older.completed).min(syns);
    Some(Rates {
        new_flows_per_second: per_second(newer.new_flows - older.new_flows),
        syns_per_second: per_second(syns),
        #[allow(clippy::cast_precision_loss, reason = "a share")]
        half_open_share: if syns == 0 {
            0.0
        } else {
            (syns - completed) as f64 / syns as f64
        },
    })
}

/// Whether `rates` cross `attack`'s thresholds: the new-flow rate, or the
/// half-open share once bare-SYN flows come at `share_min_rate` or more.
pub fn over(attack: &GuardAttack, rates: &Rates) -> bool {
    let by_rate = attack
        .new_flows_per_second
        .is_some_and(|limit| rates.new_flows_per_second > f64::from(limit));
    let by_share = attack.half_open_share.is_some_and(|share| {
        rates.syns_per_second >= f64::from(attack.share_min_rate()) && rates.half_open_share > share
    });
    by_rate || by_share
}

/// A change to log and act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `vip` is under attack from now on.
    Started {
        /// The VIP.
        vip: IpAddr,
        /// Its rates when it was judged so.
        rates: Rates,
    },
    /// `vip` has been quiet for `quiet_for`.
    Ended {
        /// The VIP.
        vip: IpAddr,
        /// How long the attack state lasted.
        lasted: Duration,
    },
}

/// One VIP in [`AttackReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipAttack {
    /// The VIP.
    pub vip: IpAddr,
    /// Whether it is under attack now.
    pub under_attack: bool,
    /// When the attack state began (Unix seconds), while under attack.
    pub since_unix: Option<u64>,
    /// The rates over the last second.
    pub rates: Rates,
}

/// The `attack` part of `lb status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// Whether `guard.attack` is configured.
    pub configured: bool,
    /// Every VIP with counts, under attack or not.
    pub vips: Vec<VipAttack>,
    /// Attacks started since the controller started.
    pub attacks_total: u64,
}

/// A VIP's attack state.
#[derive(Clone, Copy, Debug)]
struct Under {
    since_ns: u64,
    since_unix: u64,
    last_over_ns: u64,
}

/// The controller's attack bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct Attacks {
    /// Readings of the last second per VIP, oldest first.
    samples: BTreeMap<IpAddr, VecDeque<(u64, Totals)>>,
    /// The latest rates per VIP.
    latest: BTreeMap<IpAddr, Rates>,
    /// VIPs under attack.
    under: BTreeMap<IpAddr, Under>,
    /// Attacks started since start.
    started: u64,
}

impl Attacks {
    /// Takes in the totals per VIP read at `now_ns` (monotonic) and
    /// `now_unix` (wall clock, for the report); returns the VIPs that
    /// started or ended an attack. A VIP gone from `totals` (removed from
    /// the configuration) ends its attack at once.
    pub fn observe(
        &mut self,
        attack: &GuardAttack,
        totals: &BTreeMap<IpAddr, Totals>,
        now_ns: u64,
        now_unix: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        self.samples.retain(|vip, _| totals.contains_key(vip));
        self.latest.retain(|vip, _| totals.contains_key(vip));
        let gone: Vec<IpAddr> = self
            .under
            .keys()
            .filter(|vip| !totals.contains_key(vip))
            .copied()
            .collect();
        for vip in gone {
            if let Some(under) = self.under.remove(&vip) {
                events.push(Event::Ended {
                    vip,
                    lasted: Duration::from_nanos(now_ns.saturating_sub(under.since_ns)),
                });
            }
        }
        let quiet_ns = u64::try_from(attack.quiet_for.as_nanos()).unwrap_or(u64::MAX);
        for (vip, now_totals) in totals {
            let samples = self.samples.entry(*vip).or_default();
            samples.push_back((now_ns, *now_totals));
            while samples.len() > 2 && now_ns.saturating_sub(samples[1].0) >= WINDOW_NS {
                samples.pop_front();
            }
            let (then_ns, then) = samples[0];
            let Some(rates) = rates(then, *now_totals, now_ns.saturating_sub(then_ns)) else {
                if now_totals.new_flows < then.new_flows {
                    // Counters reset: measure afresh from this reading.
                    samples.clear();
                    samples.push_back((now_ns, *now_totals));
                }
                continue;
            };
            self.latest.insert(*vip, rates);
            let is_over = over(attack, &rates);
            match self.under.get_mut(vip) {
                None if is_over => {
                    self.under.insert(
                        *vip,
                        Under {
                            since_ns: now_ns,
                            since_unix: now_unix,
                            last_over_ns: now_ns,
                        },
                    );
                    self.started += 1;
                    events.push(Event::Started { vip: *vip, rates });
                }
                Some(under) if is_over => under.last_over_ns = now_ns,
                Some(under) if now_ns.saturating_sub(under.last_over_ns) >= quiet_ns => {
                    let lasted = Duration::from_nanos(now_ns.saturating_sub(under.since_ns));
                    self.under.remove(vip);
                    events.push(Event::Ended { vip: *vip, lasted });
                }
                None | Some(_) => {}
            }
        }
        events
    }

    /// Forgets the readings (the services' ids may have moved to other
    /// VIPs on a reload); the attack states stay.
    pub fn forget_samples(&mut self) {
        self.samples.clear();
    }

    /// Whether `vip` is under attack.
    pub fn is_under(&self, vip: &IpAddr) -> bool {
        self.under.contains_key(vip)
    }

    /// VIPs under attack, with the monotonic time each began.
    pub fn under_since(&self) -> impl Iterator<Item = (IpAddr, u64)> + '_ {
        self.under.iter().map(|(vip, under)| (*vip, under.since_ns))
    }

    /// The report.
    pub fn report(&self, configured: bool) -> AttackReport {
        AttackReport {
            configured,
            vips: self
                .latest
                .iter()
                .map(|(vip, rates)| VipAttack {
                    vip: *vip,
                    under_attack: self.under.contains_key(vip),
                    since_unix: self.under.get(vip).map(|under| under.since_unix),
                    rates: *rates,
                })
                .collect(),
            attacks_total: self.started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn config(rate: Option<u32>, share: Option<f64>) -> GuardAttack {
        GuardAttack {
            new_flows_per_second: rate,
            half_open_share: share,
            quiet_for: Duration::from_secs(2),
            verified_for: Duration::from_mins(10),
            source_flows_per_second: 100,
        }
    }

    fn totals(new_flows: u64, syns: u64, completed: u64) -> Totals {
        Totals {
            new_flows,
            syns,
            completed,
        }
    }

    #[test]
    fn rates_are_per_second_and_the_share_counts_syns_that_did_not_go_on() {
        let rates = rates(totals(0, 0, 0), totals(500, 400, 100), 500 * MS).unwrap();
        assert!((rates.new_flows_per_second - 1000.0).abs() < 1e-9);
        assert!((rates.syns_per_second - 800.0).abs() < 1e-9);
        assert!((rates.half_open_share - 0.75).abs() < 1e-9);
        // Too short a span to judge.
        assert_eq!(
            super::rates(totals(0, 0, 0), totals(10, 10, 0), 50 * MS),
            None
        );
        // Counters that went back (a new data plane) give no rates.
        assert_eq!(
            super::rates(totals(10, 0, 0), totals(5, 0, 0), 500 * MS),
            None
        );
    }

    #[test]
    fn the_share_needs_a_minimum_rate_and_the_rate_is_judged_alone() {
        let share_only = config(None, Some(0.5));
        let quiet = Rates {
            new_flows_per_second: 50.0,
            syns_per_second: 50.0,
            half_open_share: 1.0,
        };
        assert!(!over(&share_only, &quiet), "a few unanswered SYNs");
        let flood = Rates {
            syns_per_second: 5000.0,
            new_flows_per_second: 5000.0,
            ..quiet
        };
        assert!(over(&share_only, &flood));
        let healthy = Rates {
            half_open_share: 0.1,
            ..flood
        };
        assert!(!over(&share_only, &healthy));
        let rate_only = config(Some(1000), None);
        assert!(over(&rate_only, &healthy), "5000/s is over 1000/s");
        assert!(!over(&rate_only, &quiet));
    }

    #[test]
    fn an_attack_starts_over_a_threshold_and_ends_after_the_quiet_period() {
        let attack = config(Some(1000), Some(0.5));
        let vip: IpAddr = "203.0.113.10".parse().unwrap();
        let mut attacks = Attacks::default();
        let at = |attacks: &mut Attacks, ms: u64, t: Totals| {
            attacks.observe(
                &attack,
                &BTreeMap::from([(vip, t)]),
                ms * MS,
                1_000 + ms / 1000,
            )
        };
        assert!(at(&mut attacks, 0, totals(0, 0, 0)).is_empty());
        // 100 flows in 200 ms, all completed: 500/s, no attack.
        assert!(at(&mut attacks, 200, totals(100, 100, 100)).is_empty());
        assert!(!attacks.is_under(&vip));
        // 2,000 bare SYNs in the next 200 ms: 2,100 in 400 ms, over 1000/s.
        let events = at(&mut attacks, 400, totals(2_100, 2_100, 100));
        let [
            Event::Started {
                vip: started,
                rates,
            },
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!(*started, vip);
        assert!(rates.new_flows_per_second > 5000.0, "{rates:?}");
        assert!(rates.half_open_share > 0.9, "{rates:?}");
        let report = attacks.report(true);
        assert!(report.vips[0].under_attack);
        assert_eq!(report.vips[0].since_unix, Some(1_000));
        assert_eq!(report.attacks_total, 1);
        // The flood goes on until 1,000 ms, then stops.
        assert!(at(&mut attacks, 1_000, totals(8_100, 8_100, 100)).is_empty());
        // Quiet from here; the window still holds the flood until 2 s.
        let mut ms = 1_000;
        let mut ended = None;
        while ms < 6_000 {
            ms += 200;
            for event in at(&mut attacks, ms, totals(8_100, 8_100, 100)) {
                if let Event::Ended { lasted, .. } = event {
                    ended = Some((ms, lasted));
                }
            }
        }
        let (ended_at, lasted) = ended.expect("the attack ends");
        // Over until the window slid past the flood (~2 s), then 2 s quiet.
        assert!((3_800..=4_400).contains(&ended_at), "{ended_at}");
        assert_eq!(lasted, Duration::from_millis(ended_at - 400));
        assert!(!attacks.is_under(&vip));
        assert!(!attacks.report(true).vips[0].under_attack);
    }

    #[test]
    fn a_vip_that_disappears_ends_its_attack() {
        let attack = config(Some(10), None);
        let vip: IpAddr = "203.0.113.10".parse().unwrap();
        let mut attacks = Attacks::default();
        attacks.observe(&attack, &BTreeMap::from([(vip, totals(0, 0, 0))]), 0, 0);
        let events = attacks.observe(
            &attack,
            &BTreeMap::from([(vip, totals(1000, 0, 0))]),
            200 * MS,
            0,
        );
        assert!(matches!(events[..], [Event::Started { .. }]));
        let events = attacks.observe(&attack, &BTreeMap::new(), 400 * MS, 0);
        assert!(matches!(events[..], [Event::Ended { .. }]));
        assert!(attacks.report(true).vips.is_empty());
    }
}

//! Holding the floating IPs as master, as a pure decision (time is an
//! argument): when the router becomes master the I/O layer asks its
//! address thread to add them ([`Holding::start`]) and reports each
//! outcome here. A refused add is tried again with backoff
//! ([`HoldPolicy`]); when the addresses are still not all in place
//! [`HoldPolicy::bound`] after the first try, the verdict is a
//! [`Refusal`], which [`assess`](super::assess) turns into `fault` (a
//! priority-0 advertisement: the peer takes over) for a hold-down that
//! doubles with each refusal in a row. When the hold-down ends the router
//! recovers as a backup that does not preempt a live master
//! ([`Router::recover`](super::Router::recover)): a balancer that could
//! not hold the addresses takes them again only when nobody else holds
//! them.
//!
//! [`Holding::shown`] is the state `lb status` reports: master only once
//! the addresses are in place.

use std::{
    fmt,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::State;

/// How long refused adds are tried again, and how long a refusal keeps
/// the router in fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldPolicy {
    /// The wait before the first retry; each one doubles it.
    pub first_retry: Duration,
    /// The longest wait between two tries.
    pub max_retry: Duration,
    /// How long after the first try a failing one gives up (fault).
    pub bound: Duration,
    /// The first refusal's fault lasts this long; each refusal in a row
    /// doubles it.
    pub hold_down: Duration,
    /// The longest hold-down.
    pub max_hold_down: Duration,
}

impl HoldPolicy {
    /// Tries at 0, 50, 150, 350, 750 and 1,250 ms, then fault: a
    /// transient refusal (the kernel short of memory) clears within
    /// milliseconds, while a lasting one (IPv6 disabled on the interface,
    /// an address the kernel rejects) black-holes the refused addresses
    /// until the peer takes over, so the bound is short. 10 s of fault,
    /// then 20, 40, ... up to 5 minutes.
    pub const DEFAULT: Self = Self {
        first_retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(500),
        bound: Duration::from_secs(1),
        hold_down: Duration::from_secs(10),
        max_hold_down: Duration::from_mins(5),
    };
}

/// Floating IPs the kernel refused to add for longer than the bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The first refused address of the last try.
    pub address: IpNet,
    /// The kernel's answer.
    pub error: String,
    /// Tries made.
    pub attempts: u32,
    /// From the first try to the last.
    pub over: Duration,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "floating IP {} not added in {} tries over {} ms: {}",
            self.address,
            self.attempts,
            self.over.as_millis(),
            self.error
        )
    }
}

/// Where the floating IPs stand.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Not master: nothing to hold.
    Idle,
    /// Master, the addresses not all in place: a try is out (`retry`
    /// `None`) or the next is due at `retry`.
    Adding {
        started: Instant,
        attempts: u32,
        retry: Option<Instant>,
        /// The last try's first refusal, for `lb status`.
        last: Option<(IpNet, String)>,
    },
    /// Master, every address in place.
    Held,
    /// Given up: fault until `until`.
    Refused { refusal: Refusal, until: Instant },
}

/// The floating IPs of one router, as its address thread reports them.
#[derive(Clone, Debug)]
pub struct Holding {
    policy: HoldPolicy,
    phase: Phase,
    /// Refusals since the addresses were last held: each doubles the
    /// hold-down.
    refusals: u32,
    /// Tags each try, so that the outcome of one abandoned meanwhile (the
    /// router stepped down, or tried again) is ignored.
    seq: u64,
    /// Addresses refused, each address of each try counted.
    failures: u64,
}

impl Holding {
    /// Nothing held yet.
    pub fn new(policy: HoldPolicy) -> Self {
        Self {
            policy,
            phase: Phase::Idle,
            refusals: 0,
            seq: 0,
            failures: 0,
        }
    }

    /// The router became master: the first try, whose outcome must come
    /// back with the tag returned.
    pub fn start(&mut self, now: Instant) -> u64 {
        self.seq += 1;
        self.phase = Phase::Adding {
            started: now,
            attempts: 1,
            retry: None,
            last: None,
        };
        self.seq
    }

    /// The router left master (the addresses are being removed). A
    /// refusal's hold-down runs on.
    pub fn stop(&mut self) {
        if !matches!(self.phase, Phase::Refused { .. }) {
            self.phase = Phase::Idle;
        }
    }

    /// Try `seq` put every address in place; `true` when that is news
    /// (`lb status` now shows master).
    pub fn added(&mut self, seq: u64) -> bool {
        if seq != self.seq || !matches!(self.phase, Phase::Adding { .. }) {
            return false;
        }
        self.phase = Phase::Held;
        self.refusals = 0;
        true
    }

    /// Try `seq` had `refused` addresses refused, `first` the first of
    /// them with the kernel's answer. Within the bound a retry is
    /// scheduled ([`Holding::next_timer`]); past it, the [`Refusal`] that
    /// puts the router in fault.
    pub fn refused(
        &mut self,
        seq: u64,
        first: (IpNet, String),
        refused: u64,
        now: Instant,
    ) -> Option<Refusal> {
        if seq != self.seq {
            return None;
        }
        let Phase::Adding {
            started, attempts, ..
        } = self.phase
        else {
            return None;
        };
        self.failures += refused;
        let over = now.saturating_duration_since(started);
        if over >= self.policy.bound {
            let refusal = Refusal {
                address: first.0,
                error: first.1,
                attempts,
                over,
            };
            let hold_down = self
                .policy
                .hold_down
                .saturating_mul(1 << self.refusals.min(16))
                .min(self.policy.max_hold_down);
            self.refusals += 1;
            self.phase = Phase::Refused {
                refusal: refusal.clone(),
                until: now + hold_down,
            };
            return Some(refusal);
        }
        let wait = self
            .policy
            .first_retry
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(self.policy.max_retry);
        self.phase = Phase::Adding {
            started,
            attempts,
            retry: Some(now + wait),
            last: Some(first),
        };
        None
    }

    /// When [`Holding::on_timer`] must next be called: a retry, or the
    /// end of a hold-down.
    pub fn next_timer(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Adding { retry, .. } => *retry,
            Phase::Refused { until, .. } => Some(*until),
            Phase::Idle | Phase::Held => None,
        }
    }

    /// Timer event: a retry due returns the tag of the new try; a
    /// hold-down over ends the refusal ([`Holding::refusal`] is `None`
    /// again, and the router recovers).
    pub fn on_timer(&mut self, now: Instant) -> Option<u64> {
        match &mut self.phase {
            Phase::Adding {
                retry, attempts, ..
            } if retry.is_some_and(|at| at <= now) => {
                *retry = None;
                *attempts += 1;
                self.seq += 1;
                Some(self.seq)
            }
            Phase::Refused { until, .. } if *until <= now => {
                self.phase = Phase::Idle;
                None
            }
            _ => None,
        }
    }

    /// The refusal whose hold-down runs, if any.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.phase {
            Phase::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }

    /// Every floating IP in place.
    pub fn held(&self) -> bool {
        self.phase == Phase::Held
    }

    /// While adding: the tries so far and the last refusal.
    pub fn adding(&self) -> Option<(u32, Option<&(IpNet, String)>)> {
        match &self.phase {
            Phase::Adding { attempts, last, .. } => Some((*attempts, last.as_ref())),
            _ => None,
        }
    }

    /// Addresses refused so far, each address of each try counted.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The state `lb status` shows for a router in `state`: master only
    /// once every floating IP is in place; until then `None`, the state
    /// shown before stays.
    pub fn shown(&self, state: State) -> Option<State> {
        match state {
            State::Master if !self.held() => None,
            other => Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6() -> (IpNet, String) {
        (
            "2001:db8::fe/64".parse().unwrap(),
            "IPv6 is disabled on this device".into(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A lasting refusal is tried at 0, 50, 150, 350, 750 and 1,250 ms,
    /// then the refusal: fault for 10 s, after which the router may try
    /// again; each refusal in a row doubles the hold-down.
    #[test]
    fn refused_adds_back_off_then_fault_within_the_bound() {
        let t0 = Instant::now();
        let mut hold = Holding::new(HoldPolicy::DEFAULT);
        assert_eq!(hold.shown(State::Master), None, "master before the add");
        assert_eq!(hold.shown(State::Backup), Some(State::Backup));
        let mut seq = hold.start(t0);
        assert_eq!(hold.next_timer(), None, "the first try is out");
        let mut tries = vec![ms(0)];
        let mut now = t0;
        let refusal = loop {
            if let Some(refusal) = hold.refused(seq, v6(), 1, now) {
                break refusal;
            }
            let retry = hold.next_timer().expect("a retry");
            assert_eq!(
                hold.on_timer(retry.checked_sub(ms(1)).unwrap()),
                None,
                "not due yet"
            );
            seq = hold.on_timer(retry).expect("due");
            now = retry;
            tries.push(now - t0);
            assert!(hold.adding().is_some_and(|(_, last)| last == Some(&v6())));
        };
        assert_eq!(tries, [0, 50, 150, 350, 750, 1250].map(ms));
        assert_eq!(refusal.attempts, 6);
        assert_eq!(refusal.over, ms(1250));
        assert_eq!(
            refusal.to_string(),
            "floating IP 2001:db8::fe/64 not added in 6 tries over 1250 ms: \
             IPv6 is disabled on this device"
        );
        assert_eq!(hold.refusal(), Some(&refusal));
        assert_eq!(hold.failures(), 6);
        assert!(!hold.held());
        // The fault's actions remove the addresses: the hold-down runs on.
        hold.stop();
        assert_eq!(hold.refusal(), Some(&refusal));
        let end = now + Duration::from_secs(10);
        assert_eq!(hold.next_timer(), Some(end));
        assert_eq!(hold.on_timer(end.checked_sub(ms(1)).unwrap()), None);
        assert!(hold.refusal().is_some());
        assert_eq!(hold.on_timer(end), None);
        assert_eq!(hold.refusal(), None, "the hold-down is over");

        // Refused again: 20 s, then 40 s.
        for hold_down in [20, 40] {
            let started = end + Duration::from_secs(hold_down);
            let seq = hold.start(started);
            let late = started + Duration::from_secs(1);
            assert!(hold.refused(seq, v6(), 1, late).is_some(), "past the bound");
            assert_eq!(
                hold.next_timer(),
                Some(late + Duration::from_secs(hold_down))
            );
        }
    }

    #[test]
    fn the_hold_down_stops_doubling_at_its_maximum() {
        let t0 = Instant::now();
        let mut hold = Holding::new(HoldPolicy::DEFAULT);
        for _ in 0..40 {
            let seq = hold.start(t0);
            hold.refused(seq, v6(), 1, t0 + Duration::from_secs(1))
                .expect("past the bound");
        }
        assert_eq!(
            hold.next_timer(),
            Some(t0 + Duration::from_secs(1) + Duration::from_mins(5))
        );
    }

    /// A refusal that clears within the bound costs nothing: the retry
    /// holds the addresses, status shows master, and the next refusal's
    /// hold-down starts again from 10 s.
    #[test]
    fn a_refusal_that_clears_within_the_bound_holds_the_addresses() {
        let t0 = Instant::now();
        let mut hold = Holding::new(HoldPolicy::DEFAULT);
        // A refusal in an earlier spell as master doubles the next hold-down...
        let seq = hold.start(t0);
        assert!(hold.refused(seq, v6(), 1, t0 + ms(1000)).is_some());
        let back = t0 + Duration::from_secs(20);
        hold.on_timer(back);
        let first = hold.start(back);
        assert_eq!(hold.refused(first, v6(), 2, back), None);
        assert_eq!(hold.failures(), 3);
        let retry = hold.on_timer(back + ms(50)).expect("retry");
        // The first try's late outcome is ignored.
        assert!(!hold.added(first));
        assert!(hold.added(retry));
        assert!(hold.held());
        assert_eq!(hold.shown(State::Master), Some(State::Master));
        assert!(!hold.added(retry), "not news twice");
        assert_eq!(hold.next_timer(), None);
        // ...but holding them resets it.
        hold.stop();
        let later = back + Duration::from_mins(1);
        let seq = hold.start(later);
        let refused = later + ms(1000);
        assert!(hold.refused(seq, v6(), 1, refused).is_some());
        assert_eq!(hold.next_timer(), Some(refused + Duration::from_secs(10)));
    }

    /// Outcomes of a try the router abandoned (it stepped down) change
    /// nothing.
    #[test]
    fn outcomes_after_stepping_down_are_ignored() {
        let t0 = Instant::now();
        let mut hold = Holding::new(HoldPolicy::DEFAULT);
        let seq = hold.start(t0);
        hold.stop();
        assert!(!hold.added(seq));
        assert_eq!(hold.refused(seq, v6(), 1, t0 + ms(5000)), None);
        assert_eq!(hold.refusal(), None);
        assert_eq!(hold.failures(), 0, "an abandoned try is not counted");
        assert_eq!(hold.next_timer(), None);
        assert_eq!(hold.shown(State::Fault), Some(State::Fault));
    }
}

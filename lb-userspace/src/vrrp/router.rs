//! The RFC 5798 §6.4 state machine of one virtual router: events in
//! (start, timer, advertisement, shutdown, each with the time as an
//! argument), [`Action`]s out. No socket, no clock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{
    Action, AdvertInterval, Advertisement, ConfigError, Family, FaultCause, Ignored,
    PRIORITY_OWNER, PRIORITY_STOP, Reason, RouterConfig, State,
};
use crate::config::HaInstance;

/// One VRRP version 3 virtual router (RFC 5798 §6.4), as a pure state machine.
#[derive(Clone, Debug)]
pub struct Router {
    config: RouterConfig,
    /// The priority in effect: the configured one, less what tracking
    /// takes ([`Router::set_priority`]).
    priority: u8,
    state: State,
    since: Option<Instant>,
    reason: Reason,
    /// `Master_Adver_Interval`: ours until a master's advertisement says
    /// otherwise.
    master_advert_interval: AdvertInterval,
    /// `Master_Down_Timer` in Backup, `Adver_Timer` in Master.
    timer: Option<Instant>,
    /// Sender of the last advertisement accepted as the master's.
    peer: Option<IpAddr>,
    /// Set when a priority-0 advertisement shortened the down timer, so the
    /// takeover names the real cause.
    stopping_master: Option<IpAddr>,
    /// The lower-priority master whose advertisements a preempting backup
    /// ignores (priority, address), so the takeover names it.
    preempting: Option<(u8, IpAddr)>,
    /// keepalived's `preempt_time`: with a `preempt_delay`, when a backup
    /// may start to preempt. Set by the first lower-priority advertisement
    /// heard as backup, cleared by an equal or higher one and by every
    /// transition.
    preempt_after: Option<Instant>,
    /// Recovered from refused floating IPs: follow any live master, as
    /// with `preempt: false`, until it next becomes master (taking over
    /// from a silent one), so that a balancer that could not hold the
    /// addresses does not take them from one that can.
    yielding: bool,
}

impl Router {
    /// A router in `Initialize`, once `config` is checked.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        if config.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if config.priority == PRIORITY_STOP {
            return Err(ConfigError::ZeroPriority);
        }
        if let Some(&address) = config
            .addresses
            .iter()
            .find(|a| Family::of(**a) != Family::of(config.local_addr))
        {
            return Err(ConfigError::MixedFamilies {
                address,
                local: config.local_addr,
            });
        }
        if config.addresses.len() > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyAddresses {
                count: config.addresses.len(),
            });
        }
        Ok(Self {
            master_advert_interval: config.advert_interval,
            priority: config.priority,
            config,
            state: State::Initialize,
            since: None,
            reason: Reason::NotStarted,
            timer: None,
            peer: None,
            stopping_master: None,
            preempting: None,
            preempt_after: None,
            yielding: false,
        })
    }

    /// The router for one instance of the `ha:` section, speaking from
    /// `local_addr`.
    ///
    /// Only floating IPs of `local_addr`'s family are advertised: VRRP version 3
    /// runs one instance per family, so a dual-stack pair needs two
    /// routers (the same VRID may serve both).
    pub fn from_ha(ha: &HaInstance, local_addr: IpAddr) -> Result<Self, ConfigError> {
        Self::new(RouterConfig {
            vrid: ha.virtual_router_id,
            priority: ha.priority,
            advert_interval: AdvertInterval::from_duration(ha.advert_interval)?,
            preempt: ha.preempt,
            preempt_delay: ha.preempt_delay,
            local_addr,
            addresses: ha
                .floating_ips
                .iter()
                .map(ipnet::IpNet::addr)
                .filter(|a| Family::of(*a) == Family::of(local_addr))
                .collect(),
        })
    }

    /// The settings the router was built from.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The priority in effect (the configured one unless tracking lowered
    /// it).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the state last changed; `None` before [`Router::start`].
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Why the last transition happened.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The address of the master we last accepted an advertisement from.
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// When [`Router::on_timer`] must next be called; `None` in
    /// `Initialize`.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timer
    }

    /// With a `preempt_delay`: when this backup may start to preempt the
    /// lower-priority master it follows; `None` when no delay runs.
    pub fn preempt_after(&self) -> Option<Instant> {
        self.preempt_after
    }

    /// `Master_Adver_Interval`: the master's interval as last learnt.
    pub fn master_advert_interval(&self) -> AdvertInterval {
        self.master_advert_interval
    }

    /// `Skew_Time` = ((256 - priority) × `Master_Adver_Interval`) / 256.
    ///
    /// Computed on a [`Duration`] (nanoseconds) rather than whole
    /// centiseconds, as keepalived does in microseconds: in centiseconds
    /// the skew of a 10 ms interval would truncate to 0 for every priority,
    /// and both backups would take over at the same instant.
    pub fn skew_time(&self) -> Duration {
        self.master_advert_interval.duration() * (256 - u32::from(self.priority)) / 256
    }

    /// `Master_Down_Interval` = 3 × `Master_Adver_Interval` + `Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        self.master_advert_interval.duration() * 3 + self.skew_time()
    }

    /// The advertisement to send for [`Action::SendAdvertisement`].
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid,
            priority,
            max_advert_interval: self.config.advert_interval,
            addresses: self.config.addresses.clone(),
        }
    }

    /// Startup event: the owner becomes master at once, others backup.
    /// Does nothing unless in `Initialize`.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.peer = None;
        self.stopping_master = None;
        self.yielding = false;
        if self.config.priority == PRIORITY_OWNER {
            self.become_master(now, Reason::AddressOwner)
        } else {
            self.master_advert_interval = self.config.advert_interval;
            self.timer = Some(now + self.master_down_interval());
            self.transition(State::Backup, now, Reason::Started);
            vec![Action::BecomeBackup]
        }
    }

    /// Timer event: a backup whose master fell silent takes over; a master
    /// advertises. Does nothing before [`Router::next_timer`].
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.timer.is_none_or(|deadline| now < deadline) {
            return Vec::new();
        }
        match self.state {
            State::Initialize | State::Fault => Vec::new(),
            State::Backup => {
                let reason = match (self.stopping_master, self.preempting) {
                    (Some(from), _) => Reason::PriorityZero { from },
                    (None, Some((priority, from))) => Reason::Preempted { priority, from },
                    (None, None) => Reason::MasterDown,
                };
                self.become_master(now, reason)
            }
            State::Master => {
                // From `now`, not from the old deadline: RFC 5798 resets the
                // timer, and a late wakeup must not cause a burst.
                self.timer = Some(now + self.config.advert_interval.duration());
                vec![Action::SendAdvertisement {
                    priority: self.priority,
                }]
            }
        }
    }

    /// Receive event for an advertisement that passed
    /// [`parse`](super::parse), from IP source `from` (the sender's primary
    /// address).
    pub fn on_advertisement(
        &mut self,
        advert: &Advertisement,
        from: IpAddr,
        now: Instant,
    ) -> Result<Vec<Action>, Ignored> {
        if matches!(self.state, State::Initialize | State::Fault) {
            return Err(Ignored::NotRunning);
        }
        if advert.vrid != self.config.vrid {
            return Err(Ignored::OtherVrid { vrid: advert.vrid });
        }
        if Family::of(from) != Family::of(self.config.local_addr) {
            return Err(Ignored::OtherFamily { from });
        }
        if from == self.config.local_addr {
            return Err(Ignored::Own);
        }
        let priority = self.priority;
        match self.state {
            State::Initialize | State::Fault => Err(Ignored::NotRunning),
            State::Backup => {
                if advert.priority == PRIORITY_STOP {
                    // The master is leaving: wait only Skew_Time, so the
                    // highest-priority backup still goes first.
                    self.timer = Some(now + self.skew_time());
                    self.stopping_master = Some(from);
                } else if self.holds_back(advert.priority, now) {
                    self.follow(advert, from, now);
                } else {
                    // Preempting a lower master: ignore it and let the
                    // timer run out (keepalived: "discarding").
                    self.preempting = Some((advert.priority, from));
                }
                Ok(Vec::new())
            }
            State::Master => {
                if advert.priority == PRIORITY_STOP {
                    // Another master is stopping: reassert at once so its
                    // backups hear us before their Skew_Time runs out.
                    self.timer = Some(now + self.config.advert_interval.duration());
                    return Ok(vec![Action::SendAdvertisement { priority }]);
                }
                let reason = if advert.priority > priority {
                    Reason::HigherPriority {
                        priority: advert.priority,
                        from,
                    }
                } else if advert.priority == priority && from > self.config.local_addr {
                    Reason::HigherAddress { priority, from }
                } else {
                    // Lower priority, or equal from a lower address: another
                    // master, as when a partition heals. It steps down when
                    // it hears us, so advertise now, and announce the
                    // addresses again, as its announcements moved the
                    // neighbours' caches to it (keepalived does both).
                    self.timer = Some(now + self.config.advert_interval.duration());
                    return Ok(vec![
                        Action::SendAdvertisement { priority },
                        Action::Announce,
                    ]);
                };
                self.follow(advert, from, now);
                self.transition(State::Backup, now, reason);
                // One last advertisement at our priority: if the new master
                // has not heard us yet (its advertisement reached us first),
                // it now hears a lower master and announces the addresses,
                // moving the neighbours' caches back from us.
                Ok(vec![
                    Action::SendAdvertisement { priority },
                    Action::BecomeBackup,
                ])
            }
        }
    }

    /// Shutdown event: a master sends priority 0 so the backup takes over
    /// after `Skew_Time`; either way the router returns to `Initialize`.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        let actions = match self.state {
            State::Initialize => return Vec::new(),
            State::Backup | State::Fault => vec![Action::Stop],
            State::Master => vec![
                Action::SendAdvertisement {
                    priority: PRIORITY_STOP,
                },
                Action::Stop,
            ],
        };
        self.timer = None;
        self.transition(State::Initialize, now, Reason::Shutdown);
        actions
    }

    /// Tracking changed the priority in effect to `priority` (1..=254). A
    /// master advertises it at once, so that a backup now of higher
    /// priority starts to preempt without waiting for the next tick; a
    /// backup's new priority counts from its next timer (its `Skew_Time`)
    /// and from the next advertisement it hears (preemption).
    pub fn set_priority(&mut self, priority: u8, now: Instant) -> Vec<Action> {
        let priority = priority.clamp(1, PRIORITY_OWNER - 1);
        if priority == self.priority {
            return Vec::new();
        }
        self.priority = priority;
        if self.state == State::Master {
            self.timer = Some(now + self.config.advert_interval.duration());
            return vec![Action::SendAdvertisement { priority }];
        }
        Vec::new()
    }

    /// Fault event: the interface or a tracked service failed. A master
    /// sends priority 0 (its backup takes over after `Skew_Time`, if the
    /// advertisement can still leave) and drops its addresses; a backup
    /// stops watching. Either way no more advertisements until
    /// [`Router::recover`]. In fault already, only the cause is updated.
    pub fn fault(&mut self, cause: FaultCause, now: Instant) -> Vec<Action> {
        let actions = match self.state {
            State::Initialize => return Vec::new(),
            State::Fault => {
                self.reason = Reason::Fault(cause);
                return Vec::new();
            }
            State::Backup => vec![Action::Stop],
            State::Master => vec![
                Action::SendAdvertisement {
                    priority: PRIORITY_STOP,
                },
                Action::Stop,
            ],
        };
        self.timer = None;
        self.peer = None;
        self.stopping_master = None;
        self.transition(State::Fault, now, Reason::Fault(cause));
        actions
    }

    /// The fault cleared: back to backup (the owner to master), as at
    /// start; the master down timer decides the rest. After a
    /// [`FaultCause::Refused`] the backup does not preempt (see
    /// [`Reason::RefusalOver`]). Does nothing unless in `Fault`.
    pub fn recover(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Fault {
            return Vec::new();
        }
        self.peer = None;
        if self.config.priority == PRIORITY_OWNER {
            return self.become_master(now, Reason::FaultCleared);
        }
        self.yielding = matches!(self.reason, Reason::Fault(FaultCause::Refused(_)));
        let reason = if self.yielding {
            Reason::RefusalOver
        } else {
            Reason::FaultCleared
        };
        self.master_advert_interval = self.config.advert_interval;
        self.timer = Some(now + self.master_down_interval());
        self.transition(State::Backup, now, reason);
        vec![Action::BecomeBackup]
    }

    /// Whether a backup hearing a master of priority `heard` follows it
    /// rather than preempting: keepalived's `vrrp_state_backup`. It
    /// follows an equal or higher priority; with `preempt: false`
    /// (`nopreempt`) any priority; with a `preempt_delay`, a lower one too
    /// until the delay, started by the first such advertisement, has
    /// passed.
    fn holds_back(&mut self, heard: u8, now: Instant) -> bool {
        if !self.config.preempt || self.yielding {
            return true;
        }
        if heard >= self.priority {
            self.preempt_after = None;
            return true;
        }
        if self.config.preempt_delay.is_zero() {
            return false;
        }
        if let Some(after) = self.preempt_after {
            return now < after;
        }
        self.preempt_after = Some(now + self.config.preempt_delay);
        true
    }

    /// Accepts `from` as master: learn its interval, rearm the down timer.
    fn follow(&mut self, advert: &Advertisement, from: IpAddr, now: Instant) {
        self.master_advert_interval = advert.max_advert_interval;
        self.timer = Some(now + self.master_down_interval());
        self.peer = Some(from);
        self.stopping_master = None;
        self.preempting = None;
    }

    fn become_master(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        self.timer = Some(now + self.config.advert_interval.duration());
        self.stopping_master = None;
        self.peer = None;
        self.yielding = false;
        self.transition(State::Master, now, reason);
        // RFC 5798 order: advertise, then announce the addresses.
        vec![
            Action::SendAdvertisement {
                priority: self.priority,
            },
            Action::BecomeMaster,
        ]
    }

    fn transition(&mut self, state: State, now: Instant, reason: Reason) {
        // A preempt delay counts from the first lower advertisement heard in
        // this spell as backup (keepalived clears it on entering backup).
        self.preempt_after = None;
        self.preempting = None;
        self.state = state;
        self.since = Some(now);
        self.reason = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::{MULTICAST_V4, emit, parse};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn router(addr: &str, priority: u8, centis: u16, preempt: bool) -> Router {
        delayed(addr, priority, centis, preempt, Duration::ZERO)
    }

    fn delayed(
        addr: &str,
        priority: u8,
        centis: u16,
        preempt: bool,
        preempt_delay: Duration,
    ) -> Router {
        Router::new(RouterConfig {
            vrid: 51,
            priority,
            advert_interval: AdvertInterval::from_centis(centis).unwrap(),
            preempt,
            preempt_delay,
            local_addr: ip(addr),
            addresses: vec![ip("203.0.113.10")],
        })
        .unwrap()
    }

    fn advert_from(r: &Router, priority: u8) -> Advertisement {
        r.advertisement(priority)
    }

    const SEND_150: Action = Action::SendAdvertisement { priority: 150 };

    #[test]
    fn backup_becomes_master_after_master_down_interval() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 150, 100, true);
        assert_eq!(r.state(), State::Initialize);
        assert_eq!(r.next_timer(), None);
        assert_eq!(r.start(t0), [Action::BecomeBackup]);
        assert_eq!(r.state(), State::Backup);
        // Skew = 106/256 s = 414.0625 ms; down = 3 s + skew.
        assert_eq!(r.skew_time(), Duration::from_nanos(414_062_500));
        let deadline = t0 + Duration::from_nanos(3_414_062_500);
        assert_eq!(r.next_timer(), Some(deadline));
        assert!(
            r.on_timer(deadline.checked_sub(Duration::from_nanos(1)).unwrap())
                .is_empty()
        );
        assert_eq!(r.on_timer(deadline), [SEND_150, Action::BecomeMaster]);
        assert_eq!(r.state(), State::Master);
        assert_eq!(r.since(), Some(deadline));
        assert_eq!(r.reason().to_string(), "master down interval expired");
        // Then one advertisement per interval.
        let next = deadline + Duration::from_secs(1);
        assert_eq!(r.next_timer(), Some(next));
        assert_eq!(r.on_timer(next), [SEND_150]);
        assert_eq!(r.next_timer(), Some(next + Duration::from_secs(1)));
        // Starting twice does nothing.
        assert!(r.start(next).is_empty());
    }

    #[test]
    fn owner_becomes_master_at_once() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 255, 100, true);
        assert_eq!(
            r.start(t0),
            [
                Action::SendAdvertisement { priority: 255 },
                Action::BecomeMaster
            ]
        );
        assert_eq!(r.state(), State::Master);
        assert_eq!(r.reason(), &Reason::AddressOwner);
        assert_eq!(r.next_timer(), Some(t0 + Duration::from_secs(1)));
    }

    /// Two routers joined by a lossless, zero-delay wire that really
    /// encodes and decodes each advertisement.
    struct Wire {
        nodes: [Router; 2],
        /// A crashed node neither sends nor receives nor runs timers.
        alive: [bool; 2],
        /// Every transition: (when, node, new state).
        log: Vec<(Instant, usize, State)>,
    }

    impl Wire {
        fn new(a: Router, b: Router) -> Self {
            Self {
                nodes: [a, b],
                alive: [true, true],
                log: Vec::new(),
            }
        }

        fn start(&mut self, node: usize, now: Instant) {
            let actions = self.nodes[node].start(now);
            self.apply(node, &actions, now);
        }

        fn shutdown(&mut self, node: usize, now: Instant) {
            let actions = self.nodes[node].shutdown(now);
            self.apply(node, &actions, now);
            self.alive[node] = false;
        }

        fn apply(&mut self, node: usize, actions: &[Action], now: Instant) {
            for action in actions {
                match *action {
                    Action::SendAdvertisement { priority } => {
                        let sender = &self.nodes[node];
                        let src = sender.config().local_addr;
                        let dst = IpAddr::V4(MULTICAST_V4);
                        let bytes = emit(&sender.advertisement(priority), src, dst).unwrap();
                        let other = 1 - node;
                        if self.alive[other] {
                            let advert = parse(&bytes, src, dst).unwrap();
                            // A node that has not started yet hears nothing.
                            match self.nodes[other].on_advertisement(&advert, src, now) {
                                Ok(reply) => self.apply(other, &reply, now),
                                Err(Ignored::NotRunning) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    Action::Announce => {}
                    Action::BecomeMaster => self.log.push((now, node, State::Master)),
                    Action::BecomeBackup => self.log.push((now, node, State::Backup)),
                    Action::Stop => self.log.push((now, node, State::Initialize)),
                }
            }
        }

        /// Fires timers in time order until `until`.
        fn run_until(&mut self, until: Instant) {
            loop {
                let next = (0..2)
                    .filter(|&n| self.alive[n])
                    .filter_map(|n| self.nodes[n].next_timer().map(|t| (t, n)))
                    .min();
                match next {
                    Some((t, n)) if t <= until => {
                        let actions = self.nodes[n].on_timer(t);
                        self.apply(n, &actions, t);
                    }
                    _ => return,
                }
            }
        }

        fn states(&self) -> [State; 2] {
            [self.nodes[0].state(), self.nodes[1].state()]
        }
    }

    #[test]
    fn pair_converges_and_backup_takes_over_when_master_falls_silent() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(30));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        // Exactly one transition to master, by the higher priority, after
        // its own (shorter) Master_Down_Interval: 3 s + 56/256 s.
        let masters: Vec<_> = wire.log.iter().filter(|e| e.2 == State::Master).collect();
        assert_eq!(
            masters,
            [&(t0 + Duration::from_micros(3_218_750), 0, State::Master)]
        );
        assert_eq!(wire.nodes[1].peer(), Some(ip("192.0.2.1")));

        // Node 0 crashes without a word; its last advertisement went out
        // at the last timer it fired.
        let last_advert = wire.nodes[0]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_secs(1))
            .unwrap();
        wire.alive[0] = false;
        wire.run_until(t0 + Duration::from_mins(1));
        assert_eq!(wire.nodes[1].state(), State::Master);
        // 3 s + 156/256 s = 3.609375 s after the last advertisement heard.
        let takeover = last_advert + Duration::from_micros(3_609_375);
        assert_eq!(wire.nodes[1].since(), Some(takeover));
        assert_eq!(wire.nodes[1].reason(), &Reason::MasterDown);
    }

    #[test]
    fn preempting_backup_takes_over_from_lower_master() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        assert_eq!(wire.nodes[1].state(), State::Master);
        // The higher-priority node joins late: it ignores the lower master
        // and takes over after its own Master_Down_Interval.
        let joined = t0 + Duration::from_secs(10);
        wire.start(0, joined);
        wire.run_until(joined + Duration::from_secs(10));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        assert_eq!(
            wire.nodes[0].since(),
            Some(joined + Duration::from_micros(3_218_750))
        );
        assert_eq!(
            wire.nodes[1].reason().to_string(),
            "higher priority 200 from 192.0.2.1"
        );
        assert_eq!(
            wire.nodes[0].reason(),
            &Reason::Preempted {
                priority: 100,
                from: ip("192.0.2.2")
            }
        );
        assert_eq!(wire.nodes[1].since(), wire.nodes[0].since());
    }

    #[test]
    fn preempt_delay_holds_a_higher_backup_back_then_it_preempts() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(5);
        let mut wire = Wire::new(
            delayed("192.0.2.1", 200, 100, true, delay),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        assert_eq!(wire.nodes[1].state(), State::Master);
        let joined = t0 + Duration::from_secs(10);
        wire.start(0, joined);
        // The lower master's next advertisement is the first the new
        // backup hears: the delay starts there.
        let first = wire.nodes[1].next_timer().unwrap();
        wire.run_until(first);
        assert_eq!(wire.nodes[0].preempt_after(), Some(first + delay));
        assert_eq!(wire.nodes[0].peer(), Some(ip("192.0.2.2")));
        // Without the delay it would have taken over 3.21875 s after
        // joining (the test above); it follows until the delay is over.
        wire.run_until(
            (first + delay)
                .checked_sub(Duration::from_nanos(1))
                .unwrap(),
        );
        assert_eq!(wire.states(), [State::Backup, State::Master]);
        assert!(wire.log.iter().all(|e| e.2 != State::Master || e.1 != 0));
        // The advertisement at `first + delay` is ignored: the down timer
        // the one before it set runs out (3 s + 56/256 s later).
        wire.run_until(joined + Duration::from_secs(30));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        let takeover = first + Duration::from_secs(4) + Duration::from_micros(3_218_750);
        assert_eq!(wire.nodes[0].since(), Some(takeover));
        assert_eq!(
            wire.nodes[0].reason().to_string(),
            "preempted lower priority 100 master 192.0.2.2"
        );
        assert_eq!(wire.nodes[1].since(), Some(takeover));
        assert_eq!(
            wire.nodes[1].reason().to_string(),
            "higher priority 200 from 192.0.2.1"
        );
        assert_eq!(wire.nodes[0].preempt_after(), None);
    }

    #[test]
    fn preempt_delay_starts_at_a_lower_master_and_a_higher_one_clears_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = delayed("192.0.2.1", 200, 100, true, Duration::from_secs(5));
        let low = advert_from(&router("192.0.2.2", 100, 100, true), 100);
        let high = advert_from(&router("192.0.2.3", 250, 100, true), 250);
        r.start(t0);
        assert_eq!(r.preempt_after(), None);
        assert_eq!(r.on_advertisement(&low, ip("192.0.2.2"), at(1)), Ok(vec![]));
        assert_eq!(r.preempt_after(), Some(at(6)));
        assert_eq!(r.peer(), Some(ip("192.0.2.2")));
        // A higher master clears it (keepalived: "stop preempt delay")...
        assert_eq!(
            r.on_advertisement(&high, ip("192.0.2.3"), at(2)),
            Ok(vec![])
        );
        assert_eq!(r.preempt_after(), None);
        assert_eq!(r.peer(), Some(ip("192.0.2.3")));
        // ...and the next lower one starts it afresh.
        r.on_advertisement(&low, ip("192.0.2.2"), at(3)).unwrap();
        assert_eq!(r.preempt_after(), Some(at(8)));
        r.on_advertisement(&low, ip("192.0.2.2"), at(7)).unwrap();
        let down = at(7) + r.master_down_interval();
        assert_eq!(r.next_timer(), Some(down));
        // From then on the lower master is ignored: the timer runs on.
        r.on_advertisement(&low, ip("192.0.2.2"), at(8)).unwrap();
        r.on_advertisement(&low, ip("192.0.2.2"), at(9)).unwrap();
        assert_eq!(r.next_timer(), Some(down));
        assert_eq!(r.state(), State::Backup);
        assert_eq!(
            r.on_timer(down),
            [
                Action::SendAdvertisement { priority: 200 },
                Action::BecomeMaster
            ]
        );
        assert_eq!(
            r.reason(),
            &Reason::Preempted {
                priority: 100,
                from: ip("192.0.2.2")
            }
        );
        assert_eq!(r.preempt_after(), None);
        // Back to backup (a higher master: one last advertisement at our
        // own priority, so the winner announces), a new spell, a new delay.
        let back = down + Duration::from_secs(1);
        assert_eq!(
            r.on_advertisement(&high, ip("192.0.2.3"), back),
            Ok(vec![
                Action::SendAdvertisement { priority: 200 },
                Action::BecomeBackup
            ])
        );
        let later = back + Duration::from_secs(2);
        r.on_advertisement(&low, ip("192.0.2.2"), later).unwrap();
        assert_eq!(r.preempt_after(), Some(later + Duration::from_secs(5)));
    }

    #[test]
    fn non_preempting_backup_leaves_live_master_alone() {
        let t0 = Instant::now();
        // keepalived's `nopreempt`: a preempt_delay changes nothing.
        let mut wire = Wire::new(
            delayed("192.0.2.1", 200, 100, false, Duration::from_secs(5)),
            router("192.0.2.2", 100, 100, false),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        let joined = t0 + Duration::from_secs(10);
        wire.start(0, joined);
        wire.run_until(joined + Duration::from_mins(2));
        assert_eq!(wire.states(), [State::Backup, State::Master]);
        assert_eq!(wire.nodes[0].peer(), Some(ip("192.0.2.2")));
        assert_eq!(wire.nodes[0].preempt_after(), None);
        // preempt: false still lets it take over once the master dies.
        let last_advert = wire.nodes[1]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_secs(1))
            .unwrap();
        wire.alive[1] = false;
        wire.run_until(joined + Duration::from_mins(4));
        assert_eq!(wire.nodes[0].state(), State::Master);
        assert_eq!(
            wire.nodes[0].since(),
            Some(last_advert + Duration::from_micros(3_218_750))
        );
    }

    #[test]
    fn priority_zero_hands_over_after_skew_time() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        assert_eq!(wire.states(), [State::Master, State::Backup]);

        let stop = t0 + Duration::from_millis(10_500);
        wire.shutdown(0, stop);
        assert_eq!(wire.nodes[0].state(), State::Initialize);
        assert_eq!(wire.nodes[0].next_timer(), None);
        // Skew_Time of priority 100 at 1 s: 156/256 s.
        let takeover = stop + Duration::from_micros(609_375);
        assert_eq!(wire.nodes[1].next_timer(), Some(takeover));
        wire.run_until(t0 + Duration::from_secs(20));
        assert_eq!(wire.nodes[1].state(), State::Master);
        assert_eq!(wire.nodes[1].since(), Some(takeover));
        assert_eq!(
            wire.nodes[1].reason().to_string(),
            "priority 0 from master 192.0.2.1"
        );
        assert!(wire.log.contains(&(stop, 0, State::Initialize)));
    }

    #[test]
    fn shutdown_actions() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 150, 100, true);
        assert!(r.shutdown(t0).is_empty());
        r.start(t0);
        assert_eq!(r.shutdown(t0), [Action::Stop]);
        let mut owner = router("192.0.2.1", 255, 100, true);
        owner.start(t0);
        assert_eq!(
            owner.shutdown(t0),
            [Action::SendAdvertisement { priority: 0 }, Action::Stop]
        );
        assert_eq!(owner.reason(), &Reason::Shutdown);
        // A stopped router can start again.
        assert_eq!(owner.start(t0).last(), Some(&Action::BecomeMaster));
    }

    #[test]
    fn master_answers_priority_zero_at_once() {
        let t0 = Instant::now();
        let mut master = router("192.0.2.1", 150, 100, true);
        master.start(t0);
        let t1 = t0 + Duration::from_secs(4);
        master.on_timer(t1);
        assert_eq!(master.state(), State::Master);
        let other = router("192.0.2.2", 150, 100, true);
        let now = t1 + Duration::from_millis(300);
        assert_eq!(
            master.on_advertisement(&advert_from(&other, 0), ip("192.0.2.2"), now),
            Ok(vec![SEND_150])
        );
        assert_eq!(master.state(), State::Master);
        assert_eq!(master.next_timer(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn equal_priority_ties_break_on_address() {
        let t0 = Instant::now();
        let mut low = router("192.0.2.1", 150, 100, true);
        let mut high = router("192.0.2.2", 150, 100, true);
        for r in [&mut low, &mut high] {
            r.start(t0);
            r.on_timer(t0 + Duration::from_secs(4));
            assert_eq!(r.state(), State::Master);
        }
        let now = t0 + Duration::from_secs(5);
        // The higher address keeps mastership, advertises at once and
        // announces its addresses again...
        assert_eq!(
            high.on_advertisement(&advert_from(&low, 150), ip("192.0.2.1"), now),
            Ok(vec![SEND_150, Action::Announce])
        );
        assert_eq!(high.next_timer(), Some(now + Duration::from_secs(1)));
        assert_eq!(high.state(), State::Master);
        // ...the lower one steps down, advertising once more so that the
        // winner announces the addresses even when it did not hear it.
        assert_eq!(
            low.on_advertisement(&advert_from(&high, 150), ip("192.0.2.2"), now),
            Ok(vec![SEND_150, Action::BecomeBackup])
        );
        assert_eq!(low.state(), State::Backup);
        assert_eq!(
            low.reason().to_string(),
            "equal priority 150 from higher address 192.0.2.2"
        );
        assert_eq!(low.next_timer(), Some(now + low.master_down_interval()));

        // Converges the same way over the wire from a simultaneous start.
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 100, true),
            router("192.0.2.2", 150, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        // Same priority, same skew: both time out together; the first to
        // fire advertises and the other, still backup, follows it. Either
        // way exactly one master remains.
        wire.run_until(t0 + Duration::from_secs(30));
        let masters = wire
            .states()
            .iter()
            .filter(|s| **s == State::Master)
            .count();
        assert_eq!(masters, 1);
    }

    /// A healed partition: the master hears another master of lower
    /// priority, keeps mastership, and at once advertises (so the other
    /// steps down now, not at our next tick) and announces its addresses
    /// again (the other's announcements moved the neighbours to it).
    #[test]
    fn master_hearing_a_lower_master_reasserts_and_announces() {
        let t0 = Instant::now();
        let mut master = router("192.0.2.1", 150, 100, true);
        master.start(t0);
        master.on_timer(t0 + Duration::from_secs(4));
        assert_eq!(master.state(), State::Master);
        let lower = router("192.0.2.2", 100, 100, true);
        let now = t0 + Duration::from_millis(4_500);
        assert_eq!(
            master.on_advertisement(&advert_from(&lower, 100), ip("192.0.2.2"), now),
            Ok(vec![SEND_150, Action::Announce])
        );
        assert_eq!(master.state(), State::Master);
        assert_eq!(master.next_timer(), Some(now + Duration::from_secs(1)));

        // The other order: the lower master hears the higher first. It
        // steps down advertising once more, so the higher one announces.
        let mut lower = router("192.0.2.2", 100, 100, true);
        lower.start(t0);
        lower.on_timer(t0 + Duration::from_secs(4));
        assert_eq!(lower.state(), State::Master);
        let later = now + Duration::from_millis(100);
        let stepped_down =
            lower.on_advertisement(&advert_from(&master, 150), ip("192.0.2.1"), later);
        assert_eq!(
            stepped_down,
            Ok(vec![
                Action::SendAdvertisement { priority: 100 },
                Action::BecomeBackup
            ])
        );
        assert_eq!(lower.state(), State::Backup);
        assert_eq!(
            master.on_advertisement(&advert_from(&lower, 100), ip("192.0.2.2"), later),
            Ok(vec![SEND_150, Action::Announce])
        );
    }

    #[test]
    fn ten_millisecond_interval() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 1, true),
            router("192.0.2.2", 150, 1, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        // Priority 200: 30 ms + 10 ms × 56/256 = 32.1875 ms.
        wire.run_until(t0 + Duration::from_millis(100));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        assert_eq!(
            wire.nodes[0].since(),
            Some(t0 + Duration::from_nanos(32_187_500))
        );
        let last_advert = wire.nodes[0]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_millis(10))
            .unwrap();
        wire.alive[0] = false;
        wire.run_until(t0 + Duration::from_millis(500));
        // Priority 150: 30 ms + 10 ms × 106/256 = 34.140625 ms.
        assert_eq!(
            wire.nodes[1].since(),
            Some(last_advert + Duration::from_nanos(34_140_625))
        );
        assert_eq!(wire.nodes[1].state(), State::Master);
    }

    #[test]
    fn backup_learns_master_interval() {
        let t0 = Instant::now();
        let mut backup = router("192.0.2.1", 100, 100, true);
        backup.start(t0);
        let master = router("192.0.2.2", 200, 200, true);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            backup.on_advertisement(&advert_from(&master, 200), ip("192.0.2.2"), now),
            Ok(vec![])
        );
        assert_eq!(backup.master_advert_interval().centis(), 200);
        // 3 × 2 s + 2 s × 156/256 = 7.21875 s.
        assert_eq!(
            backup.next_timer(),
            Some(now + Duration::from_micros(7_218_750))
        );
        assert_eq!(backup.peer(), Some(ip("192.0.2.2")));
    }

    #[test]
    fn ignores_other_vrid_family_own_and_when_stopped() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 100, 100, true);
        let mut other = advert_from(&r, 200);
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.2"), t0),
            Err(Ignored::NotRunning)
        );
        r.start(t0);
        let deadline = r.next_timer();
        other.vrid = 52;
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.2"), t0 + Duration::from_secs(1)),
            Err(Ignored::OtherVrid { vrid: 52 })
        );
        other.vrid = 51;
        assert_eq!(
            r.on_advertisement(&other, ip("fe80::2"), t0),
            Err(Ignored::OtherFamily {
                from: ip("fe80::2")
            })
        );
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.1"), t0),
            Err(Ignored::Own)
        );
        // None of them touched the timer.
        assert_eq!(r.next_timer(), deadline);
        assert_eq!(r.peer(), None);
    }

    #[test]
    fn rejects_bad_config() {
        let config = RouterConfig {
            vrid: 51,
            priority: 150,
            advert_interval: AdvertInterval::DEFAULT,
            preempt: true,
            preempt_delay: Duration::ZERO,
            local_addr: ip("192.0.2.1"),
            addresses: vec![ip("203.0.113.10")],
        };
        let bad = |f: fn(&mut RouterConfig)| {
            let mut c = config.clone();
            f(&mut c);
            Router::new(c).unwrap_err()
        };
        assert_eq!(bad(|c| c.vrid = 0), ConfigError::ZeroVrid);
        assert_eq!(bad(|c| c.priority = 0), ConfigError::ZeroPriority);
        assert_eq!(
            bad(|c| c.addresses.push("2001:db8::1".parse().unwrap())),
            ConfigError::MixedFamilies {
                address: ip("2001:db8::1"),
                local: ip("192.0.2.1")
            }
        );
        assert_eq!(
            bad(|c| c.addresses = vec![c.local_addr; 256]),
            ConfigError::TooManyAddresses { count: 256 }
        );
    }

    #[test]
    fn from_ha_config() {
        let ha = HaInstance {
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 150,
            advert_interval: Duration::from_millis(100),
            preempt: true,
            preempt_delay: Duration::from_secs(30),
            unicast_peers: vec![ip("192.0.2.2")],
            floating_ips: vec![
                "203.0.113.10/24".parse().unwrap(),
                "2001:db8::10/64".parse().unwrap(),
            ],
            track: Vec::new(),
            garp_repeat: 3,
            garp_interval: Duration::from_millis(500),
        };
        let r = Router::from_ha(&ha, ip("192.0.2.1")).unwrap();
        assert_eq!(r.config().advert_interval.centis(), 10);
        assert_eq!(r.config().preempt_delay, Duration::from_secs(30));
        assert_eq!(r.config().addresses, [ip("203.0.113.10")]);
        assert_eq!(r.advertisement(150).addresses, [ip("203.0.113.10")]);
        let r6 = Router::from_ha(&ha, ip("2001:db8::1")).unwrap();
        assert_eq!(r6.config().addresses, [ip("2001:db8::10")]);
        let bad = HaInstance {
            advert_interval: Duration::from_millis(5),
            ..ha
        };
        assert_eq!(
            Router::from_ha(&bad, ip("192.0.2.1")).unwrap_err(),
            ConfigError::IntervalNotCentiseconds(Duration::from_millis(5))
        );
    }

    /// Tracking lowers the master's priority below the backup's: the
    /// master advertises it at once, the backup preempts after its
    /// `Master_Down_Interval`; restored, the first router preempts back.
    #[test]
    fn a_lowered_master_is_preempted_and_takes_over_again_when_restored() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 10, true),
            router("192.0.2.2", 100, 10, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(2));
        assert_eq!(wire.states(), [State::Master, State::Backup]);

        let lowered = t0 + Duration::from_millis(2_050);
        // The backup ignores the lowered master from now on: its down
        // timer, armed by the last advertisement it followed, runs out.
        let deadline = wire.nodes[1].next_timer();
        let actions = wire.nodes[0].set_priority(90, lowered);
        assert_eq!(actions, [Action::SendAdvertisement { priority: 90 }]);
        wire.apply(0, &actions, lowered);
        assert_eq!(wire.nodes[0].priority(), 90);
        // Setting it again changes nothing.
        assert!(wire.nodes[0].set_priority(90, lowered).is_empty());
        wire.run_until(t0 + Duration::from_secs(4));
        assert_eq!(wire.states(), [State::Backup, State::Master]);
        assert_eq!(wire.nodes[1].since(), deadline);
        assert!(matches!(
            wire.nodes[1].reason(),
            Reason::Preempted { priority: 90, .. }
        ));
        assert!(matches!(
            wire.nodes[0].reason(),
            Reason::HigherPriority { priority: 100, .. }
        ));

        // Restored: a backup's new priority acts on the next advertisement.
        let restored = t0 + Duration::from_secs(4);
        assert!(wire.nodes[0].set_priority(150, restored).is_empty());
        wire.run_until(t0 + Duration::from_secs(6));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
    }

    #[test]
    fn fault_silences_the_router_and_recovery_restarts_it_as_backup() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 10, true),
            router("192.0.2.2", 100, 10, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(2));
        let cause = FaultCause::LinkDown {
            interface: "eth0".into(),
        };
        let at = t0 + Duration::from_millis(2_010);
        let actions = wire.nodes[0].fault(cause.clone(), at);
        assert_eq!(
            actions,
            [Action::SendAdvertisement { priority: 0 }, Action::Stop]
        );
        wire.apply(0, &actions, at);
        assert_eq!(wire.nodes[0].state(), State::Fault);
        assert_eq!(wire.nodes[0].next_timer(), None);
        assert_eq!(
            wire.nodes[0].reason().to_string(),
            "fault: interface eth0 is down"
        );
        // The backup took the priority 0 and goes after Skew_Time.
        wire.run_until(t0 + Duration::from_secs(3));
        assert_eq!(wire.states(), [State::Fault, State::Master]);
        assert_eq!(
            wire.nodes[1].since(),
            Some(at + Duration::from_nanos(60_937_500))
        );
        // Faulty, it hears nothing; a second cause only renames it.
        let advert = wire.nodes[1].advertisement(100);
        assert_eq!(
            wire.nodes[0].on_advertisement(&advert, ip("192.0.2.2"), at),
            Err(Ignored::NotRunning)
        );
        assert!(wire.nodes[0].fault(cause, at).is_empty());
        assert!(wire.nodes[1].recover(at).is_empty(), "not in fault");

        let back = t0 + Duration::from_secs(3);
        assert_eq!(wire.nodes[0].recover(back), [Action::BecomeBackup]);
        assert_eq!(wire.nodes[0].reason(), &Reason::FaultCleared);
        // Backup first; then, hearing the lower master, it preempts.
        wire.run_until(t0 + Duration::from_secs(5));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        // A backup in fault just stops; shutdown from fault stops too.
        let later = t0 + Duration::from_secs(5);
        let link = FaultCause::NoAddress {
            interface: "eth0".into(),
        };
        assert_eq!(wire.nodes[1].fault(link, later), [Action::Stop]);
        assert_eq!(wire.nodes[1].shutdown(later), [Action::Stop]);
        assert_eq!(wire.nodes[1].state(), State::Initialize);
    }

    /// After its floating IPs were refused, the higher-priority router
    /// recovers as a backup that follows the lower live master instead of
    /// preempting it; it takes over only when that master stops. Another
    /// fault's recovery preempts as usual.
    #[test]
    fn a_router_whose_addresses_were_refused_does_not_preempt_when_it_recovers() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 10, true),
            router("192.0.2.2", 100, 10, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(2));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        let refusal = crate::vrrp::Refusal {
            address: "2001:db8::fe/64".parse().unwrap(),
            error: "IPv6 is disabled on this device".into(),
            attempts: 6,
            over: Duration::from_millis(1250),
        };
        let at = t0 + Duration::from_secs(2);
        let actions = wire.nodes[0].fault(FaultCause::Refused(refusal), at);
        assert_eq!(
            actions,
            [Action::SendAdvertisement { priority: 0 }, Action::Stop]
        );
        wire.apply(0, &actions, at);
        wire.run_until(t0 + Duration::from_secs(3));
        assert_eq!(wire.states(), [State::Fault, State::Master]);

        let over = t0 + Duration::from_secs(3);
        assert_eq!(wire.nodes[0].recover(over), [Action::BecomeBackup]);
        assert_eq!(wire.nodes[0].reason(), &Reason::RefusalOver);
        wire.run_until(t0 + Duration::from_secs(6));
        assert_eq!(
            wire.states(),
            [State::Backup, State::Master],
            "preempted a live master after a refusal"
        );
        assert_eq!(wire.nodes[0].peer(), Some(ip("192.0.2.2")));

        // The live master stops: nobody else holds the addresses now.
        let stop = t0 + Duration::from_secs(6);
        wire.shutdown(1, stop);
        wire.run_until(t0 + Duration::from_secs(7));
        assert_eq!(wire.nodes[0].state(), State::Master);
        assert!(matches!(
            wire.nodes[0].reason(),
            Reason::PriorityZero { .. }
        ));

        // A link fault's recovery preempts again.
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 10, true),
            router("192.0.2.2", 100, 10, true),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(1));
        wire.start(0, t0 + Duration::from_secs(1));
        let down = FaultCause::LinkDown {
            interface: "eth0".into(),
        };
        let at = t0 + Duration::from_millis(1_010);
        assert_eq!(wire.nodes[0].fault(down, at), [Action::Stop]);
        assert_eq!(wire.nodes[0].recover(at), [Action::BecomeBackup]);
        assert_eq!(wire.nodes[0].reason(), &Reason::FaultCleared);
        wire.run_until(t0 + Duration::from_secs(3));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
    }
}

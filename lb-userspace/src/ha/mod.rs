//! VRRP on the wire: runs a [`vrrp::Router`] per instance over a raw socket
//! (IP protocol 112) on the HA interface, and carries out its decisions —
//! the master holds the floating IPs (added by netlink, announced with
//! gratuitous ARP / unsolicited NA), a backup does not. The data plane
//! stays loaded and the health checks keep running in both roles (hot
//! standby).
//!
//! Advertisements go over IPv6 (to `ff02::12` or IPv6 peers, from the
//! interface's link-local address) when every floating IP of the instance
//! is IPv6, else over IPv4; in a mixed list the IPv6 addresses move with
//! the IPv4 ones (added with `nodad`) but are not listed in the
//! advertisements.
//!
//! The state machine is the sans-IO [`crate::vrrp`]; this folder is its I/O
//! edge: `socket` (the raw VRRP socket, the IP layer check, the eventfd
//! that wakes the thread), `announce` (gratuitous ARP, unsolicited NA),
//! `addresses` (the floating addresses, on a thread of their own so the
//! timer never waits for them), `watch` (the interface's state and the
//! tracked services, judged by [`vrrp::assess`]: fault, priority in
//! effect), `status` (what `lb status` shows). HA does not import the
//! controller: the controller starts an [`Ha`] per instance of the `ha`
//! section, sends it the tracked services' health ([`Ha::track`]) and
//! reads its [`InstanceStatus`].
//!
//! Never a silent master: the address thread reports each add, and
//! [`vrrp::Holding`] decides — retried with backoff, then `fault` (the
//! peer takes over); `lb status` says master only once the addresses are
//! in place. A thread that stops (a panic, its channel closed) puts the
//! instance in `fault`, its floating IPs removed, and raises the
//! [`Alarm`]: `lb run` then exits non-zero so that the service manager
//! restarts it.

mod addresses;
mod announce;
mod socket;
mod status;
mod watch;

pub use status::{HaStatus, InstanceStatus, TrackStatus};
pub use watch::Healthy;

use std::{
    fmt,
    net::IpAddr,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    config::HaInstance as HaConfig,
    netlink::{ifindex, mac_address},
    vrrp::{self, Action, Family, FaultCause, HoldPolicy, Holding, Ignored, Reason, Router, State},
};
use addresses::{Addresses, Announcements, Outcome};
use socket::{Received, VrrpSocket, Wake, parse_ipv4, parse_ipv6};
use watch::Watch;

/// How long [`Ha::start`] waits for the interface's IPv6 link-local
/// address to pass duplicate address detection (1 s by default, after a
/// random delay of up to 1 s).
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(5);

/// The longest the VRRP thread sleeps without looking at the interface and
/// the tracked services (`watch`); a stop wakes it at once.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Raised, from the instance's own thread, when the instance can no
/// longer run because one of its threads stopped; given what happened.
/// The instance is in `fault` by then, its floating IPs removed.
#[derive(Clone)]
pub struct Alarm(Arc<dyn Fn(&str) + Send + Sync>);

impl Alarm {
    /// An alarm that calls `raise`.
    pub fn new(raise: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(raise))
    }
}

impl fmt::Debug for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Alarm")
    }
}

/// A running VRRP instance; stop it with [`Ha::stop`] (hands over first).
#[derive(Debug)]
pub struct Ha {
    view: Arc<Mutex<InstanceStatus>>,
    stop: Arc<StopRequest>,
    health: mpsc::Sender<Healthy>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ha {
    /// Starts one VRRP instance on `config.interface`; its tracks'
    /// `min_healthy` must be resolved (the service's where unset).
    /// `alarm` is raised if the instance's threads stop.
    pub fn start(config: &HaConfig, alarm: Alarm) -> anyhow::Result<Self> {
        let family = Family::for_floating(config.floating_ips.iter().map(ipnet::IpNet::addr));
        let local = vrrp_source(&config.interface, family)?;
        let router = Router::from_ha(config, local).map_err(|e| anyhow::anyhow!("ha: {e}"))?;
        let index = ifindex(&config.interface)?;
        let socket = VrrpSocket::open(&config.interface, index, local)?;
        let news = Arc::new(Wake::new()?);
        let addresses = Addresses::start(
            index,
            mac_address(&config.interface)?,
            config.floating_ips.clone(),
            Announcements {
                repeat: config.garp_repeat.max(1),
                interval: config.garp_interval,
            },
            Arc::clone(&news),
        )?;
        let view = Arc::new(Mutex::new(starting(config)));
        let (health, updates) = mpsc::channel();
        let stop = Arc::new(StopRequest {
            wake: Wake::new()?,
            requested: AtomicBool::new(false),
        });
        let mut instance = Instance {
            router,
            socket,
            addresses,
            peers: if config.unicast_peers.is_empty() {
                vec![family.multicast()]
            } else {
                config
                    .unicast_peers
                    .iter()
                    .copied()
                    .filter(|p| Family::of(*p) == family)
                    .collect()
            },
            local,
            holding: Holding::new(HoldPolicy::DEFAULT),
            added: None,
            watch: Watch::new(
                &config.interface,
                local,
                config.priority,
                config.track.clone(),
                updates,
            ),
            view: Arc::clone(&view),
            stop: Arc::clone(&stop),
            news,
        };
        let thread = std::thread::Builder::new()
            .name(format!("ha-vrrp-{}", config.virtual_router_id))
            .spawn(move || {
                realtime("ha-vrrp");
                // The instance outlives a panic in its loop, so that its
                // end can still hand over and remove the addresses.
                let ended = std::panic::catch_unwind(AssertUnwindSafe(|| instance.run()));
                let cause = match ended {
                    // The release asked for by the shutdown, carried out
                    // before `Ha::stop` returns.
                    Ok(Ok(())) => return instance.addresses.finish(),
                    Ok(Err(why)) => FaultCause::ThreadStopped {
                        thread: "address".into(),
                        why,
                    },
                    Err(panic) => FaultCause::ThreadStopped {
                        thread: "VRRP".into(),
                        why: format!("panicked: {}", panic_message(&*panic)),
                    },
                };
                instance.give_up(&cause);
                alarm.0(&format!(
                    "VRRP instance {}: fault: {cause}",
                    instance.router.config().vrid
                ));
            })
            .context("ha: starting the VRRP thread")?;
        Ok(Self {
            view,
            stop,
            health,
            thread: Some(thread),
        })
    }

    /// The tracked services' healthy backends, counted by the controller
    /// after each health change; the instance's thread applies them.
    pub fn track(&self, healthy: Healthy) {
        // Only a thread that ended drops the receiver, and that thread
        // has put the instance in fault and raised the alarm itself.
        let _ = self.health.send(healthy);
    }

    /// The current state, as `lb status` and the metrics show it.
    pub fn status(&self) -> InstanceStatus {
        let mut status = self
            .view
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |v| v.clone());
        // The thread ends only when stopped, or after putting the view in
        // fault; anything else (its last words failed) is still a fault.
        if self
            .thread
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
            && !self.stop.requested.load(Ordering::Relaxed)
            && status.state != "fault"
        {
            status.state = "fault".into();
            status.reason = "fault: the VRRP thread ended".into();
            status.fault_cause = Some("thread_stopped".into());
            status.master = None;
            status.floating_ips_added_ms = None;
        }
        status
    }

    /// A handle that starts the hand-over from any thread, at once.
    pub fn hand_over(&self) -> HandOver {
        HandOver(Arc::clone(&self.stop))
    }

    /// Hands over (priority-0 advertisement, floating IPs removed) and ends.
    pub fn stop(mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            // The thread catches its own panics; nothing is left to report.
            let _ = thread.join();
        }
    }
}

/// Starts a running [`Ha`]'s hand-over (priority-0 advertisement, then
/// the floating IPs removed) without waiting for it: the signal thread
/// uses it so the hand-over does not queue behind the controller's work.
/// [`Ha::stop`] still waits for the end.
#[derive(Clone, Debug)]
pub struct HandOver(Arc<StopRequest>);

impl HandOver {
    /// Wakes the VRRP thread to hand over and end.
    pub fn request(&self) {
        self.0.set();
    }
}

/// A stop asked of the VRRP thread: the eventfd that wakes it, and a flag
/// that tells its end from a failure's.
#[derive(Debug)]
struct StopRequest {
    wake: Wake,
    requested: AtomicBool,
}

impl StopRequest {
    fn set(&self) {
        self.requested.store(true, Ordering::Relaxed);
        self.wake.set();
    }
}

/// The address VRRP speaks from: the interface's first IPv4 address, or
/// its IPv6 link-local one once duplicate address detection has passed
/// (waited for, up to [`LINK_LOCAL_WAIT`]).
fn vrrp_source(interface: &str, family: Family) -> anyhow::Result<IpAddr> {
    let family_name = match family {
        Family::V4 => crate::netlink::Family::V4,
        Family::V6 => crate::netlink::Family::V6,
    };
    let deadline = Instant::now() + LINK_LOCAL_WAIT;
    loop {
        let found = crate::netlink::primary_address(interface, family_name)?;
        match (found, family) {
            (Some(address), Family::V4) => return Ok(address.address.addr()),
            (Some(address), Family::V6) if !address.tentative() => {
                return Ok(address.address.addr());
            }
            (Some(_), Family::V6) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            (Some(address), Family::V6) => anyhow::bail!(
                "ha: the link-local address {} of {interface} is still tentative after {:?} \
                 (duplicate address detection)",
                address.address.addr(),
                LINK_LOCAL_WAIT
            ),
            (None, Family::V4) => {
                anyhow::bail!("ha: interface {interface} has no IPv4 address to send VRRP from")
            }
            (None, Family::V6) => anyhow::bail!(
                "ha: interface {interface} has no IPv6 link-local address to send VRRP from \
                 (its floating IPs are all IPv6, so VRRP runs over IPv6)"
            ),
        }
    }
}

/// One instance on its VRRP thread: the state machine and what it acts
/// on — the socket, the peers (or the group) for advertisements, the
/// address thread for the floating IPs — and what `lb status` shows.
struct Instance {
    router: Router,
    socket: VrrpSocket,
    addresses: Addresses,
    /// The multicast group, or the unicast peers.
    peers: Vec<IpAddr>,
    local: IpAddr,
    holding: Holding,
    /// When the floating IPs were last all in place, while master.
    added: Option<SystemTime>,
    watch: Watch,
    view: Arc<Mutex<InstanceStatus>>,
    /// Set to stop.
    stop: Arc<StopRequest>,
    /// Set by the address thread: outcomes to read.
    news: Arc<Wake>,
}

impl Instance {
    /// The event loop: advertisements in, timers, the address thread's
    /// outcomes, the interface and tracked services watched, until woken
    /// to stop (`Ok`) or the address thread ends (`Err`, why).
    fn run(&mut self) -> Result<(), String> {
        let actions = self.router.start(Instant::now());
        self.carry_out(&actions);
        self.publish();
        let mut buffer = [0u8; 1500];
        let mut last_warning: Option<Instant> = None;
        loop {
            let now = Instant::now();
            for outcome in self.addresses.outcomes()? {
                self.on_outcome(outcome, now);
            }
            if self.holding.next_timer().is_some_and(|t| t <= now)
                && let Some(seq) = self.holding.on_timer(now)
            {
                self.addresses.hold(seq);
            }
            let refused = self.holding.refusal().cloned();
            if let Some(actions) = self.watch.poll(&mut self.router, refused.as_ref(), now) {
                self.carry_out(&actions);
                if let Ok(mut view) = self.view.lock() {
                    view.effective_priority = self.router.priority();
                    view.priority_reason = self.watch.priority_reason();
                    view.tracks = self.watch.tracks();
                }
            }
            self.publish();
            let now = Instant::now();
            let router_due = self.router.next_timer();
            if router_due.is_some_and(|t| t <= now) {
                let actions = self.router.on_timer(now);
                self.carry_out(&actions);
                continue;
            }
            let holding_due = self.holding.next_timer();
            if holding_due.is_some_and(|t| t <= now) {
                continue;
            }
            let due = [router_due, holding_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + WATCH_EVERY);
            let wait = (due - now).min(WATCH_EVERY);
            let (parsed, src) =
                match self
                    .socket
                    .receive(&mut buffer, wait, &self.stop.wake, &self.news)
                {
                    Received::Woken => {
                        // The priority-0 advertisement goes out first, before
                        // the addresses are released.
                        let actions = self.router.shutdown(Instant::now());
                        self.carry_out(&actions);
                        self.publish();
                        return Ok(());
                    }
                    Received::Nothing | Received::News => continue,
                    Received::V4 { len, src } => (parse_ipv4(&buffer[..len], src), IpAddr::V4(src)),
                    Received::V6 {
                        len,
                        src,
                        dst,
                        hop_limit,
                    } => (
                        parse_ipv6(&buffer[..len], src, dst, hop_limit),
                        IpAddr::V6(src),
                    ),
                };
            let advertisement = match parsed {
                Ok(advertisement) => advertisement,
                Err(error) => {
                    let count = self.view.lock().map_or(0, |mut v| {
                        v.invalid_packets += 1;
                        v.invalid_packets
                    });
                    // Counted always, logged at most once a second.
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(%src, %error, count, "ha: invalid VRRP packet dropped");
                    }
                    continue;
                }
            };
            match self
                .router
                .on_advertisement(&advertisement, src, Instant::now())
            {
                // The master a backup hears can change without a
                // transition: published at the top of the loop.
                Ok(actions) => self.carry_out(&actions),
                Err(Ignored::OtherVrid { .. } | Ignored::OtherFamily { .. }) => {
                    if let Ok(mut view) = self.view.lock() {
                        view.ignored_packets += 1;
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// An add's outcome: master shown, a retry scheduled, or the refusal
    /// that the watch turns into a fault.
    fn on_outcome(&mut self, outcome: Outcome, now: Instant) {
        let vrid = self.router.config().vrid;
        match outcome {
            Outcome::Added { seq, at } => {
                if self.holding.added(seq) {
                    self.added = Some(at);
                    tracing::info!(vrid, "ha: floating IPs in place");
                    test_hook::panic_if("vrrp");
                }
            }
            Outcome::Refused { seq, refused } => {
                let count = u64::try_from(refused.len()).unwrap_or(u64::MAX);
                let Some(first) = refused.into_iter().next() else {
                    return;
                };
                if let Some(refusal) = self.holding.refused(seq, first, count, now) {
                    tracing::error!(vrid, %refusal,
                        "ha: floating IPs refused: fault, so that the peer takes over");
                }
            }
        }
    }

    fn carry_out(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::SendAdvertisement { priority } => self.advertise(*priority),
                Action::BecomeMaster => {
                    let seq = self.holding.start(Instant::now());
                    self.added = None;
                    self.addresses.hold(seq);
                }
                Action::Announce => self.addresses.announce(),
                Action::BecomeBackup | Action::Stop => {
                    self.holding.stop();
                    self.added = None;
                    self.addresses.release();
                }
            }
        }
    }

    fn advertise(&self, priority: u8) {
        let advertisement = self.router.advertisement(priority);
        for &target in &self.peers {
            match vrrp::emit(&advertisement, self.local, target) {
                Ok(payload) => self.socket.send(&payload, target),
                Err(error) => {
                    tracing::error!(%error, "ha: cannot build an advertisement");
                }
            }
        }
    }

    /// Brings what `lb status` shows up to date: the state (master only
    /// once the floating IPs are in place, see [`Holding::shown`]), why,
    /// the master, the add time and the failures.
    fn publish(&self) {
        let Ok(mut view) = self.view.lock() else {
            return;
        };
        let state = self.router.state();
        view.address_failures = self.holding.failures();
        view.peer = self.router.peer().map(|p| p.to_string());
        view.fault_cause = match self.router.reason() {
            Reason::Fault(cause) if state == State::Fault => Some(cause.kind().to_string()),
            _ => None,
        };
        let Some(shown) = self.holding.shown(state) else {
            // Master, the floating IPs not all in place yet.
            let tries = match self.holding.adding() {
                Some((tries, Some((address, error)))) if tries > 1 => {
                    format!(" (try {tries}; {address} refused: {error})")
                }
                _ => String::new(),
            };
            view.reason = format!(
                "becoming master ({}): adding the floating IPs{tries}",
                self.router.reason()
            );
            return;
        };
        let name = shown.to_string();
        if view.state != name {
            view.state.clone_from(&name);
            view.transitions += 1;
            view.since = match (shown, self.added) {
                (State::Master, Some(at)) => unix_secs(at),
                _ => unix_now(),
            };
            tracing::info!(vrid = self.router.config().vrid, state = %name,
                reason = %self.router.reason(), "ha: state changed");
        }
        view.reason = self.router.reason().to_string();
        view.master = match shown {
            State::Master => Some(self.local.to_string()),
            State::Backup => self.router.peer().map(|p| p.to_string()),
            State::Initialize | State::Fault => None,
        };
        view.floating_ips_added_ms = match shown {
            State::Master => self.added.map(unix_millis),
            _ => None,
        };
    }

    /// One of the instance's threads stopped (`cause`): it cannot run any
    /// more. Never a silent master: fault (a master sends priority 0, so
    /// the peer takes over after `Skew_Time`), the floating IPs removed —
    /// by the address thread if it still runs, else from here — and the
    /// view says why.
    fn give_up(&mut self, cause: &FaultCause) {
        let vrid = self.router.config().vrid;
        tracing::error!(vrid, %cause,
            "ha: the instance cannot run any more: fault, floating IPs removed");
        for action in self.router.fault(cause.clone(), Instant::now()) {
            if let Action::SendAdvertisement { priority } = action {
                self.advertise(priority);
            }
        }
        self.holding.stop();
        self.added = None;
        if self.addresses.alive() {
            // Carried out before the address thread ends: `Addresses`
            // waits for it when dropped.
            self.addresses.release();
        } else {
            self.addresses.remove_here();
        }
        // A panic may have poisoned the lock: the view must say fault all
        // the same.
        {
            let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
            if view.state != "fault" {
                view.state = "fault".into();
                view.transitions += 1;
                view.since = unix_now();
            }
            view.reason = format!("fault: {cause}");
            view.fault_cause = Some(cause.kind().to_string());
            view.master = None;
            view.floating_ips_added_ms = None;
        }
    }
}

/// What `lb status` shows of an instance before its thread runs.
fn starting(config: &HaConfig) -> InstanceStatus {
    InstanceStatus {
        virtual_router_id: config.virtual_router_id,
        interface: config.interface.clone(),
        state: "initialize".into(),
        priority: config.priority,
        effective_priority: config.priority,
        priority_reason: format!("configured {}", config.priority),
        master: None,
        peer: None,
        since: unix_now(),
        reason: "starting".into(),
        transitions: 0,
        invalid_packets: 0,
        ignored_packets: 0,
        floating_ips: config
            .floating_ips
            .iter()
            .map(ToString::to_string)
            .collect(),
        floating_ips_added_ms: None,
        address_failures: 0,
        fault_cause: None,
        tracks: Vec::new(),
    }
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A failure injection for the end-to-end tests of a stopped thread
/// (`tests/tests/e2e_ha_fault.rs`), compiled into debug builds only (the
/// tests run `target/debug/lb`): `LB_TEST_HA_PANIC=addresses` makes the
/// address thread panic right after it added the floating IPs, `vrrp`
/// the VRRP thread once they are in place. Only the panic is injected:
/// its detection and handling are the production code's.
mod test_hook {
    /// Panics if `LB_TEST_HA_PANIC` names `thread` (debug builds).
    #[cfg(debug_assertions)]
    pub(super) fn panic_if(thread: &str) {
        assert!(
            std::env::var("LB_TEST_HA_PANIC").ok().as_deref() != Some(thread),
            "LB_TEST_HA_PANIC={thread}: a panic injected for the tests"
        );
    }

    /// Nothing in release builds.
    #[cfg(not(debug_assertions))]
    pub(super) fn panic_if(_thread: &str) {}
}

/// Puts the calling thread in the lowest real-time class (`SCHED_FIFO`
/// priority 1), as keepalived's `vrrp_rt_priority` does for its VRRP
/// process: on a loaded host a normal thread can wait tens of
/// milliseconds for a CPU, which a takeover bounded by `Skew_Time` +
/// 20 ms cannot afford. The HA threads block in `ppoll` / `recv` between
/// events and do little work per event, so they cannot starve the host
/// (and the kernel throttles real-time threads at 95 % of a CPU anyway).
/// Best effort: without the privilege the thread stays as it was.
fn realtime(thread: &str) {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets the calling thread's own policy from a valid
    // sched_param.
    let rc = unsafe {
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &raw const param)
    };
    if rc != 0 {
        tracing::info!(thread, error = %std::io::Error::from_raw_os_error(rc),
            "ha: no real-time scheduling; takeover times depend on the host's load");
    }
}

fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

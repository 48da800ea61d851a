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

mod addresses;
mod announce;
mod socket;
mod status;
mod watch;

pub use status::{HaStatus, InstanceStatus, TrackStatus};
pub use watch::Healthy;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    config::HaInstance as HaConfig,
    netlink::{ifindex, mac_address},
    vrrp::{self, Action, Family, Ignored, Router, State},
};
use addresses::{Addresses, Announcements};
use socket::{Received, VrrpSocket, Wake, parse_ipv4, parse_ipv6};
use watch::Watch;

/// How long [`Ha::start`] waits for the interface's IPv6 link-local
/// address to pass duplicate address detection (1 s by default, after a
/// random delay of up to 1 s).
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(5);

/// The longest the VRRP thread sleeps without looking at the interface and
/// the tracked services (`watch`); a stop wakes it at once.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// A running VRRP instance; stop it with [`Ha::stop`] (hands over first).
#[derive(Debug)]
pub struct Ha {
    view: Arc<Mutex<InstanceStatus>>,
    wake: Arc<Wake>,
    health: mpsc::Sender<Healthy>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ha {
    /// Starts one VRRP instance on `config.interface`; its tracks'
    /// `min_healthy` must be resolved (the service's where unset).
    pub fn start(config: &HaConfig) -> anyhow::Result<Self> {
        let family = Family::for_floating(config.floating_ips.iter().map(ipnet::IpNet::addr));
        let local = vrrp_source(&config.interface, family)?;
        let mut router = Router::from_ha(config, local).map_err(|e| anyhow::anyhow!("ha: {e}"))?;
        let index = ifindex(&config.interface)?;
        let socket = VrrpSocket::open(&config.interface, index, local)?;
        let addresses = Addresses::start(
            index,
            mac_address(&config.interface)?,
            config.floating_ips.clone(),
            Announcements {
                repeat: config.garp_repeat.max(1),
                interval: config.garp_interval,
            },
        )?;
        let link = Link {
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
        };
        let view = Arc::new(Mutex::new(InstanceStatus {
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
            tracks: Vec::new(),
        }));
        let (health, updates) = mpsc::channel();
        let mut watch = Watch::new(
            &config.interface,
            local,
            config.priority,
            config.track.clone(),
            updates,
        );
        let wake = Arc::new(Wake::new()?);
        let shared = Arc::clone(&view);
        let woken = Arc::clone(&wake);
        let thread = std::thread::Builder::new()
            .name(format!("ha-vrrp-{}", config.virtual_router_id))
            .spawn(move || {
                realtime("ha-vrrp");
                let actions = router.start(Instant::now());
                link.carry_out(&socket, &router, &actions, &shared);
                run(&mut router, &socket, &link, &shared, &woken, &mut watch);
                // The release asked for by the shutdown, carried out before
                // `Ha::stop` returns.
                link.addresses.finish();
            })
            .context("ha: starting the VRRP thread")?;
        Ok(Self {
            view,
            wake,
            health,
            thread: Some(thread),
        })
    }

    /// The tracked services' healthy backends, counted by the controller
    /// after each health change; the instance's thread applies them.
    pub fn track(&self, healthy: Healthy) {
        let _ = self.health.send(healthy);
    }

    /// The current state, as `lb status` and the metrics show it.
    pub fn status(&self) -> InstanceStatus {
        self.view
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |v| v.clone())
    }

    /// A handle that starts the hand-over from any thread, at once.
    pub fn hand_over(&self) -> HandOver {
        HandOver(Arc::clone(&self.wake))
    }

    /// Hands over (priority-0 advertisement, floating IPs removed) and ends.
    pub fn stop(mut self) {
        self.wake.set();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a running [`Ha`]'s hand-over (priority-0 advertisement, then
/// the floating IPs removed) without waiting for it: the signal thread
/// uses it so the hand-over does not queue behind the controller's work.
/// [`Ha::stop`] still waits for the end.
#[derive(Clone, Debug)]
pub struct HandOver(Arc<Wake>);

impl HandOver {
    /// Wakes the VRRP thread to hand over and end.
    pub fn request(&self) {
        self.0.set();
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

/// The event loop: advertisements in, timers, the interface and tracked
/// services watched, until woken to stop.
fn run(
    router: &mut Router,
    socket: &VrrpSocket,
    link: &Link,
    view: &Arc<Mutex<InstanceStatus>>,
    wake: &Wake,
    watch: &mut Watch,
) {
    let mut buffer = [0u8; 1500];
    let mut last_warning: Option<Instant> = None;
    loop {
        if let Some(actions) = watch.poll(router, Instant::now()) {
            link.carry_out(socket, router, &actions, view);
            if let Ok(mut view) = view.lock() {
                view.effective_priority = router.priority();
                view.priority_reason = watch.priority_reason();
                // A fault's cause can change without a transition.
                view.reason = router.reason().to_string();
                view.tracks = watch.tracks();
            }
        }
        let now = Instant::now();
        let due = router.next_timer().unwrap_or(now + WATCH_EVERY);
        if due <= now {
            let actions = router.on_timer(now);
            link.carry_out(socket, router, &actions, view);
            continue;
        }
        let (parsed, src) = match socket.receive(&mut buffer, (due - now).min(WATCH_EVERY), wake) {
            Received::Woken => {
                // The priority-0 advertisement goes out first, before the
                // addresses are released.
                let actions = router.shutdown(Instant::now());
                link.carry_out(socket, router, &actions, view);
                return;
            }
            Received::Nothing => continue,
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
                let count = view.lock().map_or(0, |mut v| {
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
        match router.on_advertisement(&advertisement, src, Instant::now()) {
            Ok(actions) => {
                link.carry_out(socket, router, &actions, view);
                // The master a backup hears can change without a transition.
                if let Ok(mut view) = view.lock() {
                    view.peer = router.peer().map(|p| p.to_string());
                    view.master = link.master(router);
                }
            }
            Err(Ignored::OtherVrid { .. } | Ignored::OtherFamily { .. }) => {
                if let Ok(mut view) = view.lock() {
                    view.ignored_packets += 1;
                }
            }
            Err(_) => {}
        }
    }
}

/// Where the router's actions go: the peers (or the group) for
/// advertisements, the address thread for the floating IPs.
struct Link {
    addresses: Addresses,
    /// The multicast group, or the unicast peers.
    peers: Vec<IpAddr>,
    local: IpAddr,
}

impl Link {
    fn carry_out(
        &self,
        socket: &VrrpSocket,
        router: &Router,
        actions: &[Action],
        view: &Arc<Mutex<InstanceStatus>>,
    ) {
        for action in actions {
            match action {
                Action::SendAdvertisement { priority } => {
                    let advertisement = router.advertisement(*priority);
                    for &target in &self.peers {
                        match vrrp::emit(&advertisement, self.local, target) {
                            Ok(payload) => socket.send(&payload, target),
                            Err(error) => {
                                tracing::error!(%error, "ha: cannot build an advertisement");
                            }
                        }
                    }
                }
                Action::BecomeMaster => self.addresses.hold(),
                Action::Announce => self.addresses.announce(),
                Action::BecomeBackup | Action::Stop => self.addresses.release(),
            }
        }
        if actions.iter().any(|a| {
            matches!(
                a,
                Action::BecomeMaster | Action::BecomeBackup | Action::Stop
            )
        }) {
            let state = match router.state() {
                State::Master => "master",
                State::Backup => "backup",
                State::Initialize => "initialize",
                State::Fault => "fault",
            };
            tracing::info!(vrid = router.config().vrid, state, reason = %router.reason(), "ha: state changed");
            if let Ok(mut view) = view.lock() {
                view.state = state.into();
                view.peer = router.peer().map(|p| p.to_string());
                view.master = self.master(router);
                view.since = unix_now();
                view.reason = router.reason().to_string();
                view.transitions += 1;
            }
        }
    }

    /// The master as this instance sees it: itself, or the one it follows.
    fn master(&self, router: &Router) -> Option<String> {
        match router.state() {
            State::Master => Some(self.local.to_string()),
            State::Backup => router.peer().map(|p| p.to_string()),
            State::Initialize | State::Fault => None,
        }
    }
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
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

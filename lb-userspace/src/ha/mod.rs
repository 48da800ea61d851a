//! VRRP on the wire: runs a [`vrrp::Router`] over a raw IPv4 socket
//! (protocol 112) on the HA interface, and carries out its decisions — the
//! master holds the floating IPs (added with `ip addr`, announced with
//! gratuitous ARP), a backup does not. The data plane stays loaded and the
//! health checks keep running in both roles (hot standby).
//!
//! Advertisements go over IPv4; IPv6 floating addresses move with the
//! same router (added with `nodad`, announced with an unsolicited neighbour
//! advertisement) but are not listed in the advertisements.
//!
//! The state machine is the sans-IO [`crate::vrrp`]; this folder is its I/O
//! edge: `socket` (the raw VRRP socket and the IP header check), `announce`
//! (gratuitous ARP, unsolicited NA), `addresses` (the floating addresses on
//! the interface), `watch` (the interface's state and the tracked services,
//! judged by [`vrrp::assess`]: fault, priority in effect), `status` (what
//! `lb status` shows). HA does not import the controller: the controller
//! starts an [`Ha`] per instance of the `ha` section, sends it the tracked
//! services' health ([`Ha::track`]) and reads its [`InstanceStatus`].

mod addresses;
mod announce;
mod socket;
mod status;
mod watch;

pub use addresses::primary_ipv4;
pub use status::{HaStatus, InstanceStatus, TrackStatus};
pub use watch::Healthy;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    config::HaInstance as HaConfig,
    netlink::{ifindex, mac_address},
    vrrp::{self, Action, Router, State},
};
use addresses::ip_addr;
use announce::{gratuitous_arp, unsolicited_na};
use socket::{VrrpSocket, parse_ipv4};
use watch::Watch;

/// A running VRRP instance; stop it with [`Ha::stop`] (hands over first).
#[derive(Debug)]
pub struct Ha {
    view: Arc<Mutex<InstanceStatus>>,
    stop: mpsc::Sender<()>,
    health: mpsc::Sender<Healthy>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ha {
    /// Starts one VRRP instance on `config.interface`; its tracks'
    /// `min_healthy` must be resolved (the service's where unset).
    pub fn start(config: &HaConfig) -> anyhow::Result<Self> {
        let local = primary_ipv4(&config.interface)?.with_context(|| {
            format!(
                "ha: interface {} has no IPv4 address to send VRRP from",
                config.interface
            )
        })?;
        let mut router =
            Router::from_ha(config, IpAddr::V4(local)).map_err(|e| anyhow::anyhow!("ha: {e}"))?;
        let socket = VrrpSocket::open(&config.interface, local)?;
        let link = Link {
            interface: config.interface.clone(),
            ifindex: ifindex(&config.interface)?,
            mac: mac_address(&config.interface)?,
            floating: config
                .floating_ips
                .iter()
                .map(ToString::to_string)
                .collect(),
            peers: config
                .unicast_peers
                .iter()
                .filter_map(|p| match p {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
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
            floating_ips: link.floating.clone(),
            tracks: Vec::new(),
        }));
        let (stop, stopped) = mpsc::channel();
        let (health, updates) = mpsc::channel();
        let mut watch = Watch::new(
            &config.interface,
            IpAddr::V4(local),
            config.priority,
            config.track.clone(),
            updates,
        );
        let shared = Arc::clone(&view);
        let thread = std::thread::spawn(move || {
            let actions = router.start(Instant::now());
            link.carry_out(&socket, &router, &actions, &shared);
            run(&mut router, &socket, &link, &shared, &stopped, &mut watch);
        });
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
        let _ = self.health.send(healthy);
    }

    /// The current state, as `lb status` and the metrics show it.
    pub fn status(&self) -> InstanceStatus {
        self.view
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |v| v.clone())
    }

    /// Hands over (priority-0 advertisement, floating IPs removed) and ends.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The event loop: advertisements in, timers, until told to stop.
fn run(
    router: &mut Router,
    socket: &VrrpSocket,
    link: &Link,
    view: &Arc<Mutex<InstanceStatus>>,
    stopped: &mpsc::Receiver<()>,
    watch: &mut Watch,
) {
    let mut buffer = [0u8; 1500];
    let mut last_warning: Option<Instant> = None;
    loop {
        if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            let actions = router.shutdown(Instant::now());
            link.carry_out(socket, router, &actions, view);
            return;
        }
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
        let due = router
            .next_timer()
            .unwrap_or(now + Duration::from_millis(100));
        if due <= now {
            let actions = router.on_timer(now);
            link.carry_out(socket, router, &actions, view);
            continue;
        }
        // Wake for the timer, or every 50 ms to see a stop request.
        let wait = (due - now).min(Duration::from_millis(50));
        let Some((len, src)) = socket.receive(&mut buffer, wait) else {
            continue;
        };
        let advertisement = match parse_ipv4(&buffer[..len], src) {
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
        if let Ok(actions) =
            router.on_advertisement(&advertisement, IpAddr::V4(src), Instant::now())
        {
            link.carry_out(socket, router, &actions, view);
            // The master a backup hears can change without a transition.
            if let Ok(mut view) = view.lock() {
                view.peer = router.peer().map(|p| p.to_string());
                view.master = link.master(router);
            }
        }
    }
}

/// The interface and addresses the router's actions apply to.
struct Link {
    interface: String,
    ifindex: u32,
    mac: [u8; 6],
    floating: Vec<String>,
    peers: Vec<Ipv4Addr>,
    local: Ipv4Addr,
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
                    let targets: Vec<Ipv4Addr> = if self.peers.is_empty() {
                        vec![vrrp::MULTICAST_V4]
                    } else {
                        self.peers.clone()
                    };
                    for target in targets {
                        match vrrp::emit(&advertisement, IpAddr::V4(self.local), IpAddr::V4(target))
                        {
                            Ok(payload) => socket.send(&payload, target),
                            Err(error) => {
                                tracing::error!(%error, "ha: cannot build an advertisement");
                            }
                        }
                    }
                }
                Action::BecomeMaster | Action::Announce => {
                    for address in &self.floating {
                        if *action == Action::BecomeMaster {
                            ip_addr("replace", address, &self.interface);
                        }
                        match address.split('/').next().and_then(|a| a.parse().ok()) {
                            Some(IpAddr::V4(v4)) => gratuitous_arp(self.ifindex, self.mac, v4),
                            Some(IpAddr::V6(v6)) => unsolicited_na(self.ifindex, self.mac, v6),
                            None => {}
                        }
                    }
                }
                Action::BecomeBackup | Action::Stop => {
                    for address in &self.floating {
                        ip_addr("del", address, &self.interface);
                    }
                }
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
}

impl Link {
    /// The master as this instance sees it: itself, or the one it follows.
    fn master(&self, router: &Router) -> Option<String> {
        match router.state() {
            State::Master => Some(self.local.to_string()),
            State::Backup => router.peer().map(|p| p.to_string()),
            State::Initialize | State::Fault => None,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

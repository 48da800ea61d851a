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
//! the interface). HA does not import the controller: the controller starts
//! an [`Ha`] and reads its [`HaStatus`].

mod addresses;
mod announce;
mod socket;

pub use addresses::primary_ipv4;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    config::Ha as HaConfig,
    netlink::{ifindex, mac_address},
    vrrp::{self, Action, Router, State},
};
use addresses::ip_addr;
use announce::{gratuitous_arp, unsolicited_na};
use socket::{VrrpSocket, parse_ipv4};

/// A running VRRP instance; stop it with [`Ha::stop`] (hands over first).
#[derive(Debug)]
pub struct Ha {
    view: Arc<Mutex<HaStatus>>,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ha {
    /// Starts VRRP on `config.interface`.
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
        let view = Arc::new(Mutex::new(HaStatus {
            state: "initialize".into(),
            priority: Some(config.priority),
            peer: None,
            since: unix_now(),
            reason: "starting".into(),
            transitions: 0,
            invalid_packets: 0,
        }));
        let (stop, stopped) = mpsc::channel();
        let shared = Arc::clone(&view);
        let thread = std::thread::spawn(move || {
            let actions = router.start(Instant::now());
            link.carry_out(&socket, &router, &actions, &shared);
            run(&mut router, &socket, &link, &shared, &stopped);
        });
        Ok(Self {
            view,
            stop,
            thread: Some(thread),
        })
    }

    /// The current state, as `lb status` and the metrics show it.
    pub fn status(&self) -> HaStatus {
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

/// HA part of [`StatusReport`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct HaStatus {
    /// `master`, `backup`, `initialize` (VRRP starting or stopped) or
    /// `standalone` (no `ha` section).
    pub state: String,
    /// VRRP priority.
    pub priority: Option<u8>,
    /// The peer's address, when known.
    pub peer: Option<String>,
    /// Unix time of the last state change.
    pub since: u64,
    /// Why it is in this state.
    pub reason: String,
    /// State changes since the controller started.
    #[serde(default)]
    pub transitions: u64,
    /// Malformed VRRP packets dropped since the controller started.
    #[serde(default)]
    pub invalid_packets: u64,
}

/// The event loop: advertisements in, timers, until told to stop.
fn run(
    router: &mut Router,
    socket: &VrrpSocket,
    link: &Link,
    view: &Arc<Mutex<HaStatus>>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut buffer = [0u8; 1500];
    let mut last_warning: Option<Instant> = None;
    loop {
        if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            let actions = router.shutdown(Instant::now());
            link.carry_out(socket, router, &actions, view);
            return;
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
        view: &Arc<Mutex<HaStatus>>,
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
            };
            tracing::info!(state, reason = %router.reason(), "ha: state changed");
            if let Ok(mut view) = view.lock() {
                view.state = state.into();
                view.peer = router.peer().map(|p| p.to_string());
                view.since = unix_now();
                view.reason = router.reason().to_string();
                view.transitions += 1;
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

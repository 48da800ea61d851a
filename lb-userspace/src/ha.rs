//! VRRP on the wire: runs a [`vrrp::Router`] over a raw IPv4 socket
//! (protocol 112) on the HA interface, and carries out its decisions — the
//! master holds the floating IPs (added with `ip addr`, announced with
//! gratuitous ARP), a backup does not. The data plane stays loaded and the
//! health checks keep running in both roles (hot standby).
//!
//! Advertisements go over IPv4; IPv6 floating addresses move with the
//! same router (added with `nodad`, announced with an unsolicited neighbour
//! advertisement) but are not listed in the advertisements.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    config::Ha as HaConfig,
    controller::{HaStatus, ifindex, mac_address},
    vrrp::{self, Action, Router, State},
};

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

/// A received IPv4 packet's VRRP advertisement, if it is a valid one with
/// TTL 255 (RFC 5798 §7.1: anything else may have crossed a router).
fn parse_ipv4(packet: &[u8], src: Ipv4Addr) -> Result<vrrp::Advertisement, String> {
    let header_len = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
    if header_len < 20 || packet.len() < header_len {
        return Err(format!("truncated IPv4 header ({} bytes)", packet.len()));
    }
    if packet[9] != vrrp::PROTOCOL {
        return Err(format!("IP protocol {}, not VRRP", packet[9]));
    }
    if packet[8] != 255 {
        return Err(format!("TTL {} (must be 255)", packet[8]));
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    vrrp::parse(&packet[header_len..], IpAddr::V4(src), IpAddr::V4(dst)).map_err(|e| e.to_string())
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

/// `ip addr replace|del ADDRESS dev INTERFACE`; failures are logged.
fn ip_addr(verb: &str, address: &str, interface: &str) {
    let mut command = std::process::Command::new("ip");
    command.args(["addr", verb, address, "dev", interface]);
    if verb == "replace" && address.contains(':') {
        command.arg("nodad");
    }
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) if verb == "del" => {
            tracing::debug!(address, stderr = %String::from_utf8_lossy(&output.stderr), "ha: address already gone");
        }
        Ok(output) => {
            tracing::error!(address, stderr = %String::from_utf8_lossy(&output.stderr), "ha: ip addr {verb} failed");
        }
        Err(error) => tracing::error!(address, %error, "ha: cannot run ip"),
    }
}

/// Announces `address` at our MAC: a broadcast ARP request for it, from it.
fn gratuitous_arp(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    send_frame(ifindex, ETH_P_ARP, &frame, "gratuitous ARP");
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Announces `address` at our MAC (RFC 4861 §7.2.6): an unsolicited
/// neighbour advertisement to all nodes, from the address itself, with the
/// router and override flags and our link-layer address.
fn unsolicited_na(ifindex: u32, mac: [u8; 6], address: Ipv6Addr) {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // neighbour advertisement; checksum below
    icmp.extend_from_slice(&[0xa0, 0, 0, 0]); // router, override
    icmp.extend_from_slice(&address.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(address, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    send_frame(
        ifindex,
        ETH_P_IPV6,
        &frame,
        "unsolicited neighbour advertisement",
    );
}

/// The `ICMPv6` checksum over the pseudo-header and `message` (whose checksum
/// field is zero).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).unwrap_or(0);
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(message);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// Sends a whole Ethernet frame out of `ifindex` through a packet socket.
fn send_frame(ifindex: u32, ethertype: u16, frame: &[u8], what: &str) {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "ha: no packet socket for {what}");
        return;
    }
    // SAFETY: `fd` is a fresh socket we own from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    to.sll_protocol = ethertype.to_be();
    to.sll_ifindex = i32::try_from(ifindex).unwrap_or_default();
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `to` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default(),
        )
    };
    if sent < 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "ha: {what} not sent");
    }
}

/// The raw VRRP socket on one interface.
struct VrrpSocket(OwnedFd);

impl VrrpSocket {
    fn open(interface: &str, local: Ipv4Addr) -> anyhow::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(vrrp::PROTOCOL),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("ha: raw socket for VRRP (root needed)");
        }
        // SAFETY: `fd` is a fresh socket we own from here on.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let index = i32::try_from(ifindex(interface)?)?;
        socket.option(
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_bytes(),
        )?;
        socket.option(libc::IPPROTO_IP, libc::IP_TTL, &255i32.to_ne_bytes())?;
        socket.option(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            &255i32.to_ne_bytes(),
        )?;
        socket.option(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &0i32.to_ne_bytes(),
        )?;
        // SAFETY: ip_mreqn is plain data; zero is valid.
        let mut request: libc::ip_mreqn = unsafe { std::mem::zeroed() };
        request.imr_multiaddr.s_addr = u32::from_ne_bytes(vrrp::MULTICAST_V4.octets());
        request.imr_address.s_addr = u32::from_ne_bytes(local.octets());
        request.imr_ifindex = index;
        // SAFETY: reading the struct's own bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const request).cast::<u8>(),
                std::mem::size_of::<libc::ip_mreqn>(),
            )
        };
        socket.option(libc::IPPROTO_IP, libc::IP_MULTICAST_IF, bytes)?;
        socket.option(libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, bytes)?;
        Ok(socket)
    }

    fn option(&self, level: i32, name: i32, value: &[u8]) -> anyhow::Result<()> {
        // SAFETY: `value` is valid for its length.
        let rc = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                u32::try_from(value.len())?,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("ha: setsockopt {name}"));
        }
        Ok(())
    }

    fn send(&self, payload: &[u8], to: Ipv4Addr) {
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        address.sin_family = u16::try_from(libc::AF_INET).unwrap_or_default();
        address.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
        // SAFETY: `payload` and `address` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const address).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or_default(),
            )
        };
        if sent < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), %to, "ha: advertisement not sent");
        }
    }

    /// One packet (with its IPv4 header) and its source, or `None` after
    /// `wait`.
    fn receive(&self, buffer: &mut [u8], wait: Duration) -> Option<(usize, Ipv4Addr)> {
        let mut ready = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = i32::try_from(wait.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&raw mut ready, 1, wait_ms) } <= 0 {
            return None;
        }
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut from_len = u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).ok()?;
        // SAFETY: `buffer`, `from` and `from_len` are valid out-parameters.
        let received = unsafe {
            libc::recvfrom(
                self.0.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        let len = usize::try_from(received).ok()?;
        Some((len, Ipv4Addr::from(from.sin_addr.s_addr.to_ne_bytes())))
    }
}

/// The interface's first IPv4 address (`ip -4 -o addr show dev IFACE`),
/// `None` if it has none.
pub fn primary_ipv4(interface: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", interface])
        .output()
        .context("running ip")?;
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "inet"
                && let Some(address) = words.next().and_then(|a| a.split('/').next())
                && let Ok(address) = address.parse()
            {
                return Ok(Some(address));
            }
        }
    }
    Ok(None)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

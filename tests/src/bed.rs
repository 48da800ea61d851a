//! The end-to-end test bed: a client, a balancer running the real `lb run`,
//! and backends running small servers, each in its own network namespace.
//!
//! ```text
//!  client ── eth0 ┃ eth0  lb  eth1 ┃ plb ── br0 (switch) ── b11, b12, b13 ...
//!  198.51.100.2   198.51.100.1   192.0.2.1                  192.0.2.11 ...
//!  2001:db8:1::2  2001:db8:1::1  2001:db8::1                2001:db8::11 ...
//! ```
//!
//! The client reaches the VIPs through lb; backends route everything via lb
//! (so NAT replies come back through it) and hold the DSR / tunnel VIPs on
//! loopback. Frames lb redirects into a veth are only delivered when the
//! peer has an XDP program, so `lb_decap` (which passes anything that is not
//! a tunnel) sits on the client's `eth0` and the switch's `plb`; on backends
//! it also strips the tunnels. Every backend answers each TCP connection and
//! UDP datagram with its own name, so the client can tell who served it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    TempFile, lb_binary,
    netns::{ChildGuard, Netns, enslave, veth, wait_until},
};

/// Ports each backend serves on (TCP and UDP): the service port, for DSR
/// and tunnel, and the NAT target port.
pub const BACKEND_PORTS: [u16; 2] = [80, 8080];

/// A backend: its namespace and servers. Dropping it stops the servers,
/// detaches `lb_decap`, then deletes the namespace.
#[derive(Debug)]
pub struct Backend {
    /// Last byte of its addresses (`192.0.2.x`, `2001:db8::x`).
    pub host: u8,
    _decap: DecapGuard,
    /// Its namespace.
    pub ns: Netns,
    servers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

/// `lb_decap` attached to an interface in a namespace, detached on drop.
/// Drop it before the namespace (or the veth peer's namespace) goes: a
/// vanished interface leaves its pin behind.
#[derive(Debug)]
pub struct DecapGuard {
    netns: String,
    iface: String,
}

impl DecapGuard {
    /// `lb decap attach IFACE` inside `netns`. Frames redirected into a veth
    /// are only delivered when its peer has an XDP program; `lb_decap`
    /// passes anything that is not a tunnel.
    pub fn attach(netns: &str, iface: &str) -> Self {
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(lb_binary())
            .args(["decap", "attach", iface])
            .output()
            .expect("run lb decap");
        assert!(
            output.status.success(),
            "lb decap attach {iface}: {output:?}"
        );
        Self {
            netns: netns.to_string(),
            iface: iface.to_string(),
        }
    }
}

impl Drop for DecapGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(lb_binary())
            .args(["decap", "detach", &self.iface])
            .output();
    }
}

/// A backend `b<host>` on `switch`'s bridge `br0`: `192.0.2.<host>` and
/// `2001:db8::<host>`, default routes via `192.0.2.1` / `2001:db8::1`, the
/// DSR and tunnel VIPs on loopback, `lb_decap` on its `eth0`, and servers
/// on [`BACKEND_PORTS`] answering with its name.
pub fn backend(switch: &Netns, host: u8) -> Backend {
    let ns = Netns::new(&format!("b{host}"));
    let port = format!("p{host}");
    veth(&ns, "eth0", switch, &port);
    enslave(switch, &port, "br0");
    ns.addr("eth0", &format!("192.0.2.{host}/24"));
    ns.addr("eth0", &format!("2001:db8::{host}/64"));
    ns.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    ns.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"]);
    // DSR and tunnel VIPs live on loopback; their ARP / ND stays quiet.
    for vip in [
        "203.0.113.11/32",
        "203.0.113.12/32",
        "2001:db8:ff::11/128",
        "2001:db8:ff::12/128",
    ] {
        ns.addr("lo", vip);
    }
    for setting in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=0",
    ] {
        ns.sysctl(setting);
    }
    let decap = DecapGuard::attach(ns.name(), "eth0");
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&ns, host, &stop);
    Backend {
        host,
        _decap: decap,
        ns,
        servers,
        stop,
    }
}

/// The whole bed. Drop order: lb, decap pins, namespaces.
#[derive(Debug)]
pub struct Bed {
    /// The lb process (`lb run`), once started.
    pub lb_process: Option<ChildGuard>,
    /// The configuration file lb runs with.
    pub config: Option<TempFile>,
    /// Its control socket, removed on drop (a killed lb leaves it behind).
    socket: Option<std::path::PathBuf>,
    /// Its instance, detached on drop (a killed lb leaves it pinned).
    instance: Option<String>,
    /// On the client's `eth0` and the switch's `plb`; dropped before the
    /// namespaces.
    decaps: Vec<DecapGuard>,
    /// Backends.
    pub backends: Vec<Backend>,
    /// The client.
    pub client: Netns,
    /// The balancer.
    pub lb: Netns,
    /// The switch.
    pub switch: Netns,
}

impl Bed {
    /// Stops a backend's servers: its ports refuse connections from now on.
    pub fn stop_backend(&mut self, host: u8) {
        let backend = self.backend_mut(host);
        backend.stop.store(true, Ordering::Relaxed);
        for server in backend.servers.drain(..) {
            let _ = server.join();
        }
    }

    /// Starts a stopped backend's servers again.
    pub fn start_backend(&mut self, host: u8) {
        let backend = self.backend_mut(host);
        assert!(backend.servers.is_empty(), "b{host} is running");
        backend.stop = Arc::new(AtomicBool::new(false));
        backend.servers = serve(&backend.ns, host, &backend.stop);
    }

    fn backend_mut(&mut self, host: u8) -> &mut Backend {
        self.backends
            .iter_mut()
            .find(|b| b.host == host)
            .unwrap_or_else(|| panic!("no backend b{host}"))
    }
}

impl Bed {
    /// Builds the topology with backends `hosts` (last address bytes).
    pub fn new(hosts: &[u8]) -> Self {
        let client = Netns::new("cl");
        let lb = Netns::new("lb");
        let switch = Netns::new("sw");
        crate::netns::bridge(&switch, "br0");
        veth(&client, "eth0", &lb, "eth0");
        veth(&lb, "eth1", &switch, "plb");
        enslave(&switch, "plb", "br0");
        client.addr("eth0", "198.51.100.2/24");
        client.addr("eth0", "2001:db8:1::2/64");
        client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        lb.addr("eth0", "198.51.100.1/24");
        lb.addr("eth0", "2001:db8:1::1/64");
        lb.addr("eth1", "192.0.2.1/24");
        lb.addr("eth1", "2001:db8::1/64");
        for setting in [
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            lb.sysctl(setting);
        }
        let mut bed = Self {
            lb_process: None,
            config: None,
            socket: None,
            instance: None,
            decaps: Vec::new(),
            backends: Vec::new(),
            client,
            lb,
            switch,
        };
        for &host in hosts {
            bed.backends.push(backend(&bed.switch, host));
        }
        bed.decaps = vec![
            DecapGuard::attach(bed.client.name(), "eth0"),
            DecapGuard::attach(bed.switch.name(), "plb"),
        ];
        bed
    }

    /// Takes `lb_decap` off the switch's `plb`, so tunnelled frames cross
    /// the switch as the balancer sent them (a capture there sees the outer
    /// header) and the backends' own `lb_decap` strips them. GRO on `plb`
    /// gives its receive side the NAPI instance an XDP program would, which
    /// is what frames redirected into a veth need to be delivered.
    pub fn keep_tunnels_on_the_switch(&mut self) {
        self.decaps
            .retain(|decap| !(decap.netns == self.switch.name() && decap.iface == "plb"));
        let output = self.switch.exec("ethtool", &["-K", "plb", "gro", "on"]);
        assert!(output.status.success(), "ethtool -K plb gro on: {output:?}");
    }

    /// Starts `lb run` with `config` in the balancer namespace and waits
    /// until it has attached and its API answers; then makes sure the
    /// balancer has neighbour entries for every backend (see
    /// [`Bed::start_lb_cold`] for a start that leaves that to lb).
    pub fn start_lb(&mut self, config: &str) {
        self.start_lb_cold(config);
        self.prime_neighbours();
    }

    /// Starts `lb run` with `config` and waits until its API answers,
    /// leaving the balancer's neighbour table as it is.
    pub fn start_lb_cold(&mut self, config: &str) {
        self.start_lb_by(config, Netns::command);
    }

    /// [`Bed::start_lb_cold`] with the process started by the command
    /// `command` builds from the balancer's namespace, the `lb` binary and
    /// its arguments (`run -c FILE`): to run it under a sandbox.
    pub fn start_lb_by(
        &mut self,
        config: &str,
        command: impl FnOnce(&Netns, &str, &[&str]) -> std::process::Command,
    ) {
        let file = TempFile::new("lb.yaml", config);
        let lb = lb_binary();
        let mut child = Netns::spawn_command(command(
            &self.lb,
            lb.to_str().unwrap(),
            &["run", "-c", file.path().to_str().unwrap()],
        ));
        let parsed = lb::config::Config::parse(config).expect("test configuration");
        let socket = parsed.control.socket.clone();
        self.instance = Some(parsed.instance.to_string());
        let up = wait_until(Duration::from_secs(15), || {
            !child.running() || std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !(up && child.running()) {
            child.signal(libc::SIGKILL);
            panic!("lb run did not come up: {:?}", child.wait());
        }
        self.lb_process = Some(child);
        self.config = Some(file);
        self.socket = Some(socket);
    }

    /// Resolves the backends' neighbours on the balancer by sending each a
    /// datagram, as health checks would.
    pub fn prime_neighbours(&self) {
        for backend in &self.backends {
            for addr in [
                format!("192.0.2.{}", backend.host),
                format!("2001:db8::{}", backend.host),
            ] {
                let target: std::net::IpAddr = addr.parse().unwrap();
                self.lb.run(move || {
                    let socket =
                        UdpSocket::bind((if target.is_ipv4() { "0.0.0.0" } else { "::" }, 0))
                            .expect("bind");
                    let _ = socket.send_to(b"hello", (target, 80));
                });
                let resolved = wait_until(Duration::from_secs(5), || {
                    let output = self.lb.ip(&["neigh", "show", &addr]);
                    String::from_utf8_lossy(&output.stdout).contains("lladdr")
                });
                assert!(resolved, "no neighbour entry for {addr}");
            }
        }
    }

    /// The backends of the first service in `lb status`, by name (`b11`
    /// for `192.0.2.11` or `2001:db8::11`); empty if the controller does not
    /// answer.
    pub fn backend_status(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let output = self.lb_command(&["status", "--output", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["services"][0]["backends"]
            .as_array()
            .map(|backends| {
                backends
                    .iter()
                    .map(|b| {
                        let address = b["address"].as_str().unwrap_or("");
                        let host = address.rsplit(['.', ':']).next().unwrap_or("");
                        (format!("b{host}"), b.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `lb guard list --output json`; panics unless it succeeds.
    pub fn guard_list(&self) -> serde_json::Value {
        let output = self.lb_command(&["guard", "list", "--output", "json"]);
        assert!(output.status.success(), "lb guard list: {output:?}");
        serde_json::from_slice(&output.stdout).expect("lb guard list prints JSON")
    }

    /// Stops `lb run` with SIGINT and returns its output.
    pub fn stop_lb(&mut self) -> std::process::Output {
        let child = self.lb_process.take().expect("lb running");
        child.signal(libc::SIGINT);
        child.wait()
    }

    /// Runs an `lb` subcommand against the running controller (by its
    /// socket, so it works while the configuration file is broken).
    pub fn lb_command(&self, args: &[&str]) -> std::process::Output {
        let socket = self.socket.as_ref().expect("lb started");
        let lb = lb_binary();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--socket", socket.to_str().unwrap()]);
        self.lb.exec(lb.to_str().unwrap(), &full)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.lb_process.take());
        if let Some(socket) = self.socket.take() {
            let _ = std::fs::remove_file(socket);
        }
        let lb = lb_binary();
        // A test that failed with lb killed leaves its pinned data plane.
        if let Some(instance) = &self.instance {
            let _ = self.lb.exec(
                lb.to_str().unwrap_or("lb"),
                &["detach", "--instance", instance],
            );
        }
    }
}

/// TCP and UDP servers on every backend port, answering with `b<host>`.
/// They poll `stop` so the bed can end them.
fn serve(ns: &Netns, host: u8, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    let mut servers = Vec::new();
    for port in BACKEND_PORTS {
        let stop_tcp = Arc::clone(stop);
        let stop_udp = Arc::clone(stop);
        let listener = ns.run(move || {
            let listener = TcpListener::bind(("::", port)).expect("bind tcp");
            listener.set_nonblocking(true).unwrap();
            listener
        });
        servers.push(ns.spawn_thread(move || {
            let name = format!("b{host}");
            while !stop_tcp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        // One thread per connection: a client may hold its
                        // connection open across a failover.
                        std::thread::spawn(move || answer(stream, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
        let socket = ns.run(move || {
            let socket = UdpSocket::bind(("::", port)).expect("bind udp");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            socket
        });
        servers.push(ns.spawn_thread(move || {
            let name = format!("b{host}");
            let mut buf = [0u8; 512];
            while !stop_udp.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }
        }));
    }
    servers
}

/// The TCP exchange: the backend sends its name and a newline at once, waits
/// for the client's line (30 s at most), answers `ok`, closes. A client can
/// thus learn who serves it and hold the connection open before finishing.
fn answer(stream: TcpStream, name: &str) {
    use std::io::BufRead;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    // Lines of at most 64 bytes: `ping` is answered with the name again
    // and the connection stays; anything else gets `ok` and the end.
    let mut reader = std::io::BufReader::new(stream.take(64 * 1024));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > 64 => return,
            Ok(_) if line.trim_end() == "ping" => {
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Ok(_) => {
                let _ = writer.write_all(b"ok");
                return;
            }
        }
    }
}

/// A TCP connection that has learnt its backend's name and not finished yet.
#[derive(Debug)]
pub struct HeldConnection {
    reader: std::io::BufReader<TcpStream>,
    /// The backend serving it.
    pub backend: String,
}

impl HeldConnection {
    /// Connects and reads the backend's name; `None` on failure.
    pub fn open(target: SocketAddr) -> Option<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?;
        Self::start(stream)
    }

    /// Connects from `source` (with `SO_REUSEADDR`) and reads the backend's
    /// name; `None` on failure.
    pub fn open_from(source: SocketAddr, target: SocketAddr) -> Option<Self> {
        Self::start(connect_from(source, target)?)
    }

    /// The client's end: its address and port.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.reader.get_ref().local_addr().ok()
    }

    /// Ends the connection with a RST (`SO_LINGER` 0) instead of finishing
    /// it: the socket is gone at once, so its port can be bound again.
    pub fn abort(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let stream = self.reader.into_inner();
        // SAFETY: `linger` outlives the call; the length is its size; the
        // descriptor is the stream's, closed when it drops below.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                u32::try_from(std::mem::size_of::<libc::linger>()).expect("small"),
            );
        }
        drop(stream);
    }

    fn start(stream: TcpStream) -> Option<Self> {
        use std::io::BufRead;
        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut reader = std::io::BufReader::new(stream);
        let mut backend = String::new();
        reader.read_line(&mut backend).ok()?;
        let backend = backend.trim_end().to_string();
        (!backend.is_empty()).then_some(Self { reader, backend })
    }

    /// One request on the held connection: `ping`, answered with the
    /// backend's name. Whether the same backend answered (within the 3 s
    /// read timeout).
    pub fn ping(&mut self) -> bool {
        use std::io::BufRead;
        if self.reader.get_mut().write_all(b"ping\n").is_err() {
            return false;
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => line.trim_end() == self.backend,
            _ => false,
        }
    }

    /// Sends the request and expects `ok`; the backend's name if it came.
    pub fn finish(mut self) -> Option<String> {
        self.reader.get_mut().write_all(b"hi\n").ok()?;
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).ok()?;
        (rest == "ok").then_some(self.backend)
    }
}

/// One TCP request: connect (from `source`, if given, with `SO_REUSEADDR`
/// so runs can reuse ports), read the backend's name. `None` on any failure.
pub fn tcp_request(target: SocketAddr, source: Option<SocketAddr>) -> Option<String> {
    let stream = match source {
        None => TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?,
        Some(source) => connect_from(source, target)?,
    };
    HeldConnection::start(stream)?.finish()
}

/// A TCP connection from a chosen source address and port, given up after
/// 3 s like the others.
fn connect_from(source: SocketAddr, target: SocketAddr) -> Option<TcpStream> {
    use std::os::fd::FromRawFd;
    let (domain, addr) = sockaddr(source);
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh socket we own from here on.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call; the length is its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
    }
    // A blocking connect(2) waits as long as SO_SNDTIMEO (Linux), else for
    // every SYN retry (about two minutes): bound it like `connect_timeout`.
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    // SAFETY: `addr` is a valid sockaddr of the length given.
    let rc = unsafe { libc::bind(fd, addr.as_ptr().cast(), u32::try_from(addr.len()).ok()?) };
    if rc != 0 {
        return None;
    }
    let (_, target_addr) = sockaddr(target);
    // SAFETY: as above.
    let rc = unsafe {
        libc::connect(
            fd,
            target_addr.as_ptr().cast(),
            u32::try_from(target_addr.len()).ok()?,
        )
    };
    (rc == 0).then_some(stream)
}

/// A `sockaddr_in` / `sockaddr_in6` as bytes.
fn sockaddr(addr: SocketAddr) -> (i32, Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: plain data, zero is valid.
            let mut raw: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            raw.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
            raw.sin_port = v4.port().to_be();
            raw.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            // SAFETY: reading the struct's own bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw const raw).cast::<u8>(),
                    std::mem::size_of_val(&raw),
                )
            };
            (libc::AF_INET, bytes.to_vec())
        }
        SocketAddr::V6(v6) => {
            // SAFETY: plain data, zero is valid.
            let mut raw: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            raw.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap();
            raw.sin6_port = v6.port().to_be();
            raw.sin6_addr.s6_addr = v6.ip().octets();
            // SAFETY: reading the struct's own bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw const raw).cast::<u8>(),
                    std::mem::size_of_val(&raw),
                )
            };
            (libc::AF_INET6, bytes.to_vec())
        }
    }
}

/// One UDP request from `socket`: send, wait for the backend's name.
pub fn udp_request(socket: &UdpSocket, target: SocketAddr) -> Option<String> {
    socket.send_to(b"who", target).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Held connections each sending a request ([`HeldConnection::ping`])
/// every `every`, on a thread of its own, until [`Chatter::stop`]: the
/// traffic of live clients while a balancer fails, not connections that
/// stay silent until the failover is over.
#[derive(Debug)]
pub struct Chatter {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Chatted>>,
}

/// What one chatting connection saw.
#[derive(Debug)]
pub struct Chatted {
    /// The backend it began on.
    pub backend: String,
    /// Requests its backend answered.
    pub answered: u32,
    /// The connection, while every request was answered by its backend;
    /// `None` once one failed (reset, timeout or another backend).
    pub held: Option<HeldConnection>,
}

impl Chatter {
    /// Starts chatting on every connection of `held`. The sockets belong
    /// to their namespace already: the threads need not enter it.
    pub fn start(held: Vec<HeldConnection>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = held
            .into_iter()
            .map(|mut connection| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let backend = connection.backend.clone();
                    let mut answered = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if !connection.ping() {
                            return Chatted {
                                backend,
                                answered,
                                held: None,
                            };
                        }
                        answered += 1;
                        std::thread::sleep(every);
                    }
                    Chatted {
                        backend,
                        answered,
                        held: Some(connection),
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the requests; what each connection saw, in the order given.
    pub fn stop(mut self) -> Vec<Chatted> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|thread| thread.join().expect("a chatting thread panicked"))
            .collect()
    }
}

impl Drop for Chatter {
    /// Not stopped (a test failed on the way): the threads are told to
    /// stop, and end after their current request (3 s at most).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

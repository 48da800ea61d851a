//! The end-to-end benchmark: HTTP through lb and through the tools operators
//! use today, on one topology, with one load generator, in one run.
//!
//! ```text
//!  client ── router ── br0 (switch) ── balancer  192.0.2.1
//!  .100.2    .100.1    │               b11, b12, b13  192.0.2.11 ..
//!            192.0.2.254
//! ```
//!
//! One-arm: the router sends the VIPs (203.0.113.10 nat, .11 dsr, .12 dsr
//! with b11 only) to the balancer, which sends them on out of the same
//! interface. Backends run nginx (`return 200`) on ports 80 and 8080, hold
//! the DSR VIPs on loopback and route the client network via the balancer
//! for the NAT-style rows (lb nat, nftables) and via the router otherwise.
//!
//! Scenarios, interleaved (every scenario once, then again), each run with
//! `wrk` from the client: connections per second (`Connection: close`) and
//! keep-alive requests per second with their latency percentiles.
//! - `lb-nat`, `lb-dsr`, `lb-dsr-one`: the real `lb run`, XDP native on the
//!   balancer's veth, out by `XDP_TX` (`lb_decap` on the switch-side peer:
//!   frames XDP sends into a veth are only delivered when the peer has an
//!   XDP program);
//! - `haproxy`: `mode tcp`, `balance roundrobin`, the VIP on the balancer's
//!   loopback;
//! - `nft`: kernel forwarding with an nftables DNAT over `numgen inc mod 3`;
//! - `floor`: `lb_floor_fwd` (VIP frames to b11's MAC, `XDP_TX`), the least
//!   an XDP forwarder can do: compare it with `lb-dsr-one`, same backend;
//! - `direct`: the client talks to b11 through the router, no balancer.
//!
//! Every namespace, process, attachment and file is owned by a guard, so a
//! panic leaves nothing behind. Needs root, `wrk`, `nginx`, and for their
//! rows `haproxy` and `nft` (`cargo xtask bench` installs them).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb::dataplane::{AttachMode, Dataplane, OBJECT, Sizes};
use lb_common::program_names;

use crate::{
    bed::DecapGuard,
    lb_binary,
    netns::{ChildGuard, Netns, bridge, enslave, veth, wait_until},
    report::EndToEndRow,
};

/// Interleaved repetitions of every scenario.
pub const REPETITIONS: usize = 3;
/// Seconds per `wrk` run (two runs per scenario and repetition).
pub const SECONDS: u32 = 5;
/// `wrk` threads and connections.
pub const WRK_THREADS: u32 = 2;
/// Concurrent connections.
pub const WRK_CONNECTIONS: u32 = 32;

const VIP_NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const VIP_ONE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
const BALANCER: &str = "192.0.2.1";
const ROUTER: &str = "192.0.2.254";
const CLIENTS: &str = "198.51.100.0/24";
const HOSTS: [u8; 3] = [11, 12, 13];
/// The nftables table the `nft` scenario adds and removes.
const NFT_TABLE: &str = "lbe2e";

/// One configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    LbNat,
    LbDsr,
    LbDsrOne,
    Haproxy,
    Nft,
    Floor,
    Direct,
}

impl Scenario {
    /// Report order.
    const ALL: [Self; 7] = [
        Self::LbNat,
        Self::LbDsr,
        Self::LbDsrOne,
        Self::Haproxy,
        Self::Nft,
        Self::Floor,
        Self::Direct,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::LbNat => "lb-nat",
            Self::LbDsr => "lb-dsr",
            Self::LbDsrOne => "lb-dsr-one",
            Self::Haproxy => "haproxy",
            Self::Nft => "nft",
            Self::Floor => "floor",
            Self::Direct => "direct",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::LbNat => "lb run, nat, 3 backends (Maglev), XDP_TX",
            Self::LbDsr => "lb run, dsr, 3 backends (Maglev), XDP_TX",
            Self::LbDsrOne => "lb run, dsr, b11 only",
            Self::Haproxy => "HAProxy, mode tcp, roundrobin, 3 backends",
            Self::Nft => "nftables DNAT, numgen inc mod 3, kernel forwarding",
            Self::Floor => "lb_floor_fwd: VIP frames to b11's MAC, XDP_TX",
            Self::Direct => "no balancer: the client to b11 through the router",
        }
    }

    /// Where the client sends its requests.
    fn target(self) -> SocketAddrV4 {
        match self {
            Self::LbNat | Self::Haproxy | Self::Nft => SocketAddrV4::new(VIP_NAT, 80),
            Self::LbDsr | Self::Floor => SocketAddrV4::new(VIP_DSR, 80),
            Self::LbDsrOne => SocketAddrV4::new(VIP_ONE, 80),
            Self::Direct => SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 80),
        }
    }

    /// Whether backends must send replies to clients through the balancer
    /// (it rewrites them back), rather than straight to the router.
    fn replies_via_balancer(self) -> bool {
        matches!(self, Self::LbNat | Self::Nft)
    }

    /// The program the scenario needs besides `wrk` and `nginx`.
    fn tool(self) -> Option<&'static str> {
        match self {
            Self::Haproxy => Some("haproxy"),
            Self::Nft => Some("nft"),
            _ => None,
        }
    }
}

/// What one `wrk` run reported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WrkRun {
    /// Requests per second (with `Connection: close`, connections too).
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors plus non-2xx/3xx answers.
    errors: u64,
}

/// One repetition of one scenario.
#[derive(Clone, Copy, Debug)]
struct Sample {
    conn: WrkRun,
    keep_alive: WrkRun,
}

/// Runs the benchmark and returns its rows in report order (scenarios that
/// produced no figure are left out, with the reason on stderr), and notes on
/// the method. Runs on a thread of its own that may use every CPU (the
/// caller may be pinned; children inherit the mask), and turns a panic in
/// the set-up into an empty result.
pub fn run() -> (Vec<EndToEndRow>, Vec<String>) {
    let started = Instant::now();
    let result = std::thread::spawn(|| {
        unpin();
        measure_all()
    })
    .join();
    println!("end to end took {:.0} s", started.elapsed().as_secs_f64());
    match result {
        Ok((rows, failures)) => (rows, [notes(), failures].concat()),
        Err(panic) => {
            let message = panic_message(&*panic);
            eprintln!("end to end: not measured: {message}");
            (
                Vec::new(),
                vec![format!("End to end: not measured ({message}).")],
            )
        }
    }
}

fn notes() -> Vec<String> {
    vec![format!(
        "End to end: one-arm topology in network namespaces (client, router, a bridge with \
         the balancer and three nginx backends, worker_processes 1, `return 200`); wrk \
         -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{SECONDS}s from the client, once with \
         `Connection: close` (conn/s) and once keep-alive (req/s, p50 / p99 latency); \
         {REPETITIONS} interleaved repetitions, medians with min–max. Everything, load \
         generator included, shares the machine's CPUs, so the ratios matter more than the \
         absolute figures. floor and lb-dsr-one both send every connection to b11."
    )]
}

/// Lets the calling thread (and what it starts) run on every CPU.
fn unpin() {
    // SAFETY: sysconf has no preconditions; a zeroed cpu_set_t is a valid
    // empty set, and sched_setaffinity(0) changes only the calling thread.
    unsafe {
        let cpus = usize::try_from(libc::sysconf(libc::_SC_NPROCESSORS_CONF)).unwrap_or(1);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus.clamp(1, libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// Whether `program` is on `PATH` (or under the sbin directories, which a
/// non-login root shell may lack).
fn have(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .any(|dir| Path::new(dir).join(program).is_file())
}

fn measure_all() -> (Vec<EndToEndRow>, Vec<String>) {
    for tool in ["wrk", "nginx"] {
        assert!(
            have(tool),
            "{tool} is not installed (cargo xtask bench installs it)"
        );
    }
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|scenario| {
            let missing = scenario.tool().filter(|tool| !have(tool));
            if let Some(tool) = missing {
                eprintln!(
                    "end to end: {} skipped: {tool} is not installed",
                    scenario.name()
                );
            }
            missing.is_none()
        })
        .collect();
    println!(
        "\n== end to end: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{SECONDS}s, connection \
         rate (Connection: close) and keep-alive, {REPETITIONS} interleaved repetitions"
    );
    let topology = Topology::new();
    let mut collected = Collected::default();
    for repetition in 1..=REPETITIONS {
        println!("-- repetition {repetition}/{REPETITIONS}");
        collected.repetition(&topology, &scenarios);
    }
    drop(topology);
    let rows = scenarios
        .iter()
        .filter_map(|&scenario| {
            let mine: Vec<Sample> = collected
                .samples
                .iter()
                .filter(|(s, _)| *s == scenario)
                .map(|(_, sample)| *sample)
                .collect();
            if mine.is_empty() {
                eprintln!("end to end: {}: no figures", scenario.name());
                return None;
            }
            Some(summarise(scenario, &mine))
        })
        .collect();
    let failures = collected
        .failed
        .iter()
        .map(|(scenario, why)| {
            let first = why.lines().last().unwrap_or_default();
            format!("End to end: {} not measured: {first}", scenario.name())
        })
        .collect();
    (rows, failures)
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Runs `f`, turning a panic (a scenario's set-up failing; its guards have
/// cleaned up while unwinding) into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// What the repetitions collected: samples, and the scenarios that failed
/// (not tried again).
#[derive(Debug, Default)]
struct Collected {
    samples: Vec<(Scenario, Sample)>,
    failed: Vec<(Scenario, String)>,
}

impl Collected {
    fn has_failed(&self, scenario: Scenario) -> bool {
        self.failed.iter().any(|(s, _)| *s == scenario)
    }

    /// Every scenario once, in the order that needs the fewest changes:
    /// the three lb scenarios under one `lb run`, then the others.
    fn repetition(&mut self, topology: &Topology, scenarios: &[Scenario]) {
        let lb_scenarios = [Scenario::LbNat, Scenario::LbDsr, Scenario::LbDsrOne];
        let wanted: Vec<Scenario> = lb_scenarios
            .into_iter()
            .filter(|s| scenarios.contains(s) && !self.has_failed(*s))
            .collect();
        if !wanted.is_empty() {
            match guarded(|| LbRun::start(topology)) {
                Ok(lb) => {
                    for &scenario in &wanted {
                        self.measure(topology, scenario);
                    }
                    drop(lb);
                }
                Err(why) => {
                    eprintln!("end to end: lb run failed: {why}");
                    self.failed.extend(wanted.iter().map(|&s| (s, why.clone())));
                }
            }
        }
        for &scenario in scenarios.iter().filter(|s| !lb_scenarios.contains(s)) {
            if !self.has_failed(scenario) {
                self.measure(topology, scenario);
            }
        }
    }

    fn measure(&mut self, topology: &Topology, scenario: Scenario) {
        match guarded(|| scenario_sample(topology, scenario)) {
            Ok(Some(sample)) => self.samples.push((scenario, sample)),
            Ok(None) => {}
            Err(why) => {
                eprintln!("end to end: {} failed: {why}", scenario.name());
                self.failed.push((scenario, why));
            }
        }
    }
}

/// Sets `scenario` up, measures it, takes it down (on drop of its guards).
fn scenario_sample(topology: &Topology, scenario: Scenario) -> Option<Sample> {
    topology.route_replies(scenario.replies_via_balancer());
    let _floor = (scenario == Scenario::Floor).then(|| Floor::attach(topology));
    let _haproxy = (scenario == Scenario::Haproxy).then(|| Haproxy::start(topology));
    let _nft = (scenario == Scenario::Nft).then(|| NftDnat::add(&topology.balancer));
    let target = scenario.target();
    if !topology.ready(target) {
        eprintln!(
            "end to end: {}: no answer from {target} within 10 s, skipped",
            scenario.name()
        );
        return None;
    }
    let conn = topology.wrk(target, true);
    let keep_alive = topology.wrk(target, false);
    let (Some(conn), Some(keep_alive)) = (conn, keep_alive) else {
        eprintln!("end to end: {}: wrk failed, skipped", scenario.name());
        return None;
    };
    println!(
        "{:<11} {:>8.0} conn/s {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
        scenario.name(),
        conn.rate,
        keep_alive.rate,
        keep_alive.p50_ms,
        keep_alive.p99_ms,
        conn.errors + keep_alive.errors
    );
    Some(Sample { conn, keep_alive })
}

/// Medians and ranges over a scenario's samples.
fn summarise(scenario: Scenario, samples: &[Sample]) -> EndToEndRow {
    let stats = |f: &dyn Fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        (
            values[values.len() / 2],
            values[0],
            values[values.len() - 1],
        )
    };
    let (conn, conn_min, conn_max) = stats(&|s| s.conn.rate);
    let (req, req_min, req_max) = stats(&|s| s.keep_alive.rate);
    let (p50, _, _) = stats(&|s| s.keep_alive.p50_ms);
    let (p99, p99_min, p99_max) = stats(&|s| s.keep_alive.p99_ms);
    EndToEndRow {
        name: scenario.name().to_owned(),
        conn_per_s: conn,
        req_per_s: req,
        p50_ms: p50,
        p99_ms: p99,
        description: scenario.description().to_owned(),
        conn_range: (conn_min, conn_max),
        req_range: (req_min, req_max),
        p99_range: (p99_min, p99_max),
        runs: samples.len(),
        errors: samples
            .iter()
            .map(|s| s.conn.errors + s.keep_alive.errors)
            .sum(),
    }
}

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("lb-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the temp directory");
        Self(path)
    }

    /// `name` under it, as a string (the configurations embed it).
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `program` in `ns` with its output appended to `log`; the guard
/// holds the program's own pid (`nsenter` and `sh` both exec).
fn spawn_logged(ns: &Netns, log: &str, program: &str, args: &[&str]) -> ChildGuard {
    let script = format!("exec \"$0\" \"$@\" >>'{log}' 2>&1");
    let mut full = vec!["-c", script.as_str(), program];
    full.extend_from_slice(args);
    ns.spawn("sh", &full)
}

/// An nginx master (and its worker) in a backend's namespace.
#[derive(Debug)]
struct Nginx {
    master: ChildGuard,
}

impl Nginx {
    fn start(ns: &Netns, host: u8, dir: &TempDir) -> Self {
        let prefix = dir.file(&format!("nginx-b{host}"));
        std::fs::create_dir_all(&prefix).expect("nginx prefix");
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {prefix}/body;\n\
             \x20 proxy_temp_path {prefix}/proxy;\n\
             \x20 fastcgi_temp_path {prefix}/fastcgi;\n\
             \x20 keepalive_requests 1000000;\n\
             \x20 keepalive_timeout 60s;\n\
             \x20 server {{\n\
             \x20   listen 80 reuseport backlog=4096;\n\
             \x20   listen 8080 reuseport backlog=4096;\n\
             \x20   default_type text/plain;\n\
             \x20   location / {{ return 200 \"b{host}\\n\"; }}\n\
             \x20 }}\n\
             }}\n"
        );
        let file = format!("{prefix}/nginx.conf");
        std::fs::write(&file, config).expect("write nginx.conf");
        let log = format!("{prefix}/stderr.log");
        let mut master = spawn_logged(
            ns,
            &log,
            "nginx",
            &[
                "-p",
                &prefix,
                "-e",
                &format!("{prefix}/error.log"),
                "-c",
                &file,
            ],
        );
        let up = wait_until(Duration::from_secs(5), || {
            !master.running() || Path::new(&format!("{prefix}/nginx.pid")).exists()
        });
        assert!(
            up && master.running(),
            "nginx in b{host} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self { master }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its worker and exit; if it does not
        // within the time, its children are killed by pid before it is.
        let workers = children(self.master.id());
        self.master.signal(libc::SIGTERM);
        if !wait_until(Duration::from_secs(5), || !self.master.running()) {
            for pid in workers {
                // SAFETY: kill(2) on a child of our still unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The ChildGuard reaps (or kills) the master.
    }
}

/// A process's children, from `/proc/PID/task/PID/children`.
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The namespaces, the backends' nginx and `lb_decap` on the switch side
/// of the balancer's veth. Fields drop in order: processes, the decap pin,
/// namespaces, files.
#[derive(Debug)]
struct Topology {
    nginx: Vec<Nginx>,
    decap: Option<DecapGuard>,
    client: Netns,
    /// Only owned: it forwards, nothing here talks to it.
    _router: Netns,
    balancer: Netns,
    backends: Vec<Netns>,
    switch: Netns,
    dir: TempDir,
}

impl Topology {
    fn new() -> Self {
        let dir = TempDir::new();
        let switch = Netns::new("esw");
        bridge(&switch, "br0");
        let client = Netns::new("ecl");
        let router = Netns::new("ert");
        let balancer = Netns::new("elb");
        veth(&client, "eth0", &router, "eth0");
        veth(&router, "eth1", &switch, "prt");
        veth(&balancer, "eth0", &switch, "plb");
        enslave(&switch, "prt", "br0");
        enslave(&switch, "plb", "br0");
        client.addr("eth0", "198.51.100.2/24");
        client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        router.addr("eth0", "198.51.100.1/24");
        router.addr("eth1", &format!("{ROUTER}/24"));
        for vip in [VIP_NAT, VIP_DSR, VIP_ONE] {
            router.ip(&["route", "add", &format!("{vip}/32"), "via", BALANCER]);
        }
        balancer.addr("eth0", &format!("{BALANCER}/24"));
        balancer.ip(&["route", "add", "default", "via", ROUTER]);
        // XDP never resolves neighbours: NAT replies to clients go to the
        // router's MAC from the balancer's table, so that entry must stay.
        let router_mac = mac_text(router.mac("eth1"));
        balancer.ip(&[
            "neigh",
            "replace",
            ROUTER,
            "lladdr",
            &router_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        tune(&client, &router, &balancer);
        let backends = HOSTS.iter().map(|&host| backend(&switch, host)).collect();
        let mut topology = Self {
            nginx: Vec::new(),
            decap: None,
            client,
            _router: router,
            balancer,
            backends,
            switch,
            dir,
        };
        topology.decap = Some(DecapGuard::attach(topology.switch.name(), "plb"));
        for (ns, host) in topology.backends.iter().zip(HOSTS) {
            topology.nginx.push(Nginx::start(ns, host, &topology.dir));
        }
        topology.prime_neighbours();
        topology
    }

    /// Resolves every backend on the balancer (XDP sends only to resolved
    /// neighbours): one datagram each, then waits for the entries.
    fn prime_neighbours(&self) {
        for host in HOSTS {
            let address = format!("192.0.2.{host}");
            let target: Ipv4Addr = address.parse().expect("address");
            self.balancer.run(move || {
                if let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") {
                    let _ = socket.send_to(b"hello", (target, 9));
                }
            });
            let resolved = wait_until(Duration::from_secs(5), || {
                let output = self.balancer.ip(&["neigh", "show", &address]);
                String::from_utf8_lossy(&output.stdout).contains("lladdr")
            });
            assert!(resolved, "the balancer did not resolve {address}");
        }
    }

    /// Backends send replies to the client network via the balancer, or
    /// straight to the router.
    fn route_replies(&self, via_balancer: bool) {
        let via = if via_balancer { BALANCER } else { ROUTER };
        for ns in &self.backends {
            ns.ip(&["route", "replace", CLIENTS, "via", via]);
        }
    }

    /// Whether an HTTP request to `target` from the client succeeds within
    /// 10 s.
    fn ready(&self, target: SocketAddrV4) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.client.run(move || http_get(target).is_some())
        })
    }

    /// One `wrk` run against `target` (`close`: `Connection: close`);
    /// `None` if it failed or printed no rate.
    fn wrk(&self, target: SocketAddrV4, close: bool) -> Option<WrkRun> {
        let url = format!("http://{target}/");
        let threads = format!("-t{WRK_THREADS}");
        let connections = format!("-c{WRK_CONNECTIONS}");
        let duration = format!("-d{SECONDS}s");
        let limit = (SECONDS + 20).to_string();
        let mut args = vec![
            limit.as_str(),
            "wrk",
            &threads,
            &connections,
            &duration,
            "--latency",
        ];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        // `timeout` bounds the run whatever happens to the network.
        let output = self.client.exec("timeout", &args);
        let text = String::from_utf8_lossy(&output.stdout);
        let parsed = output.status.success().then(|| parse_wrk(&text)).flatten();
        if parsed.is_none() {
            eprintln!(
                "wrk {url} failed ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parsed
    }
}

/// Sysctls: forwarding where packets cross, no reverse-path filter (DSR
/// replies come from the VIP), room for many short connections.
fn tune(client: &Netns, router: &Netns, balancer: &Netns) {
    let sets: [(&Netns, &[&str]); 3] = [
        (
            client,
            &[
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        ),
        (
            router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        ),
        (
            balancer,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                // One-arm: forwarding out of the arrival interface must not
                // teach the router to bypass the balancer.
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        ),
    ];
    for (ns, settings) in sets {
        for setting in settings {
            ns.sysctl(setting);
        }
    }
}

/// Backend `b<host>` on the switch: `192.0.2.<host>`, replies via the
/// router until [`Topology::route_replies`] says otherwise, the DSR VIPs on
/// loopback with their ARP kept quiet.
fn backend(switch: &Netns, host: u8) -> Netns {
    let ns = Netns::new(&format!("eb{host}"));
    let port = format!("p{host}");
    veth(&ns, "eth0", switch, &port);
    enslave(switch, &port, "br0");
    ns.addr("eth0", &format!("192.0.2.{host}/24"));
    ns.ip(&["route", "add", "default", "via", ROUTER]);
    ns.ip(&["route", "add", CLIENTS, "via", ROUTER]);
    for vip in [VIP_DSR, VIP_ONE] {
        ns.addr("lo", &format!("{vip}/32"));
    }
    for setting in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.all.accept_redirects=0",
    ] {
        ns.sysctl(setting);
    }
    ns
}

/// `aa:bb:..` for `ip neigh`.
fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A one-shot `GET /` (1 s timeouts); the body of a 200 answer.
fn http_get(target: SocketAddrV4) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: e2e\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Parses `wrk --latency` output: `Requests/sec`, the 50 % and 99 % lines
/// of `Latency Distribution`, socket errors and non-2xx/3xx answers.
fn parse_wrk(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut rate = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rate = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("50%") {
            run.p50_ms = duration_ms(value.trim())?;
        } else if let Some(value) = line.strip_prefix("99%") {
            run.p99_ms = duration_ms(value.trim())?;
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            run.errors += counts
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += count.trim().parse::<u64>().unwrap_or(0);
        }
    }
    run.rate = rate?;
    Some(run)
}

/// `512.00us`, `1.23ms`, `2.00s`, `1.00m` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(value * scale)
}

/// `lb run` in the balancer namespace with the three lb services; stopped
/// with SIGINT on drop (which detaches it), or detached by instance if it
/// had to be killed.
struct LbRun<'a> {
    topology: &'a Topology,
    child: Option<ChildGuard>,
    instance: String,
    socket: PathBuf,
}

impl<'a> LbRun<'a> {
    fn start(topology: &'a Topology) -> Self {
        let pid = std::process::id();
        let instance = format!("e2e{pid}");
        let socket = PathBuf::from(format!("/run/lb/e2e-bench-{pid}.sock"));
        let backends = |port: Option<u16>, hosts: &[u8]| {
            let list: Vec<String> = hosts
                .iter()
                .map(|host| match port {
                    Some(port) => format!("{{ address: 192.0.2.{host}, port: {port} }}"),
                    None => format!("{{ address: 192.0.2.{host} }}"),
                })
                .collect();
            format!("[{}]", list.join(", "))
        };
        let mut config =
            format!("instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n");
        for (name, vip, forwarding, port, hosts) in [
            ("nat", VIP_NAT, "nat", Some(8080), &HOSTS[..]),
            ("dsr", VIP_DSR, "dsr", None, &HOSTS[..]),
            ("dsr-one", VIP_ONE, "dsr", None, &HOSTS[..1]),
        ] {
            let _ = writeln!(
                config,
                "  - {{ name: {name}, vip: {vip}, port: 80, protocol: tcp, forwarding: \
                 {forwarding}, backends: {} }}",
                backends(port, hosts)
            );
        }
        let _ = writeln!(config, "control: {{ socket: {} }}", socket.display());
        let file = topology.dir.file("lb.yaml");
        std::fs::write(&file, &config).expect("write lb.yaml");
        let lb = lb_binary();
        let log = topology.dir.file("lb.log");
        let mut child = spawn_logged(
            &topology.balancer,
            &log,
            lb.to_str().expect("utf-8 path"),
            &["run", "-c", &file],
        );
        let up = wait_until(Duration::from_secs(15), || {
            !child.running() || std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        let mut run = Self {
            topology,
            child: None,
            instance,
            socket,
        };
        assert!(
            up && child.running(),
            "lb run did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        run.child = Some(child);
        run
    }
}

impl Drop for LbRun<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGINT);
            wait_until(Duration::from_secs(10), || !child.running());
        }
        let balancer = &self.topology.balancer;
        if balancer.has_xdp("eth0") {
            let lb = lb_binary();
            let _ = balancer.exec(
                lb.to_str().unwrap_or("lb"),
                &["detach", "--instance", &self.instance],
            );
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `lb_floor_fwd` on the balancer's `eth0`, held by a thread inside the
/// balancer namespace (attaching by name resolves there); detached when
/// the guard drops and the thread drops the program.
struct Floor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    fn attach(topology: &Topology) -> Self {
        let smac = topology.balancer.mac("eth0");
        let dmac = topology.backends[0].mac("eth0");
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = topology.balancer.spawn_thread(move || {
            let loaded = Dataplane::load_program(OBJECT, Sizes::MINIMAL, program_names::FLOOR_FWD)
                .map_err(|e| format!("load {}: {e}", program_names::FLOOR_FWD))
                .and_then(|mut dataplane| {
                    dataplane
                        .set_floor_hop(VIP_DSR, smac, dmac)
                        .map_err(|e| format!("FLOOR_HOP: {e}"))?;
                    dataplane
                        .attach("eth0", AttachMode::Native)
                        .map_err(|e| format!("attach (native): {e}"))?;
                    Ok(dataplane)
                });
            match loaded {
                Ok(dataplane) => {
                    let _ = ready_tx.send(Ok(()));
                    // Until the guard drops (the sender goes away).
                    let _ = stop_rx.recv();
                    drop(dataplane);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                }
            }
        });
        let floor = Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => floor,
            Ok(Err(error)) => panic!("lb_floor_fwd: {error}"),
            Err(error) => panic!("lb_floor_fwd: no answer from the loading thread: {error}"),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `haproxy` in the balancer namespace, bound to the NAT VIP (put on the
/// balancer's loopback for the time being).
struct Haproxy<'a> {
    process: Option<ChildGuard>,
    balancer: &'a Netns,
}

impl<'a> Haproxy<'a> {
    fn start(topology: &'a Topology) -> Self {
        let balancer = &topology.balancer;
        balancer.addr("lo", &format!("{VIP_NAT}/32"));
        let mut guard = Self {
            process: None,
            balancer,
        };
        let mut config = format!(
            "global\n  maxconn 8000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend web\n  bind {VIP_NAT}:80\n  default_backend servers\n\
             backend servers\n  balance roundrobin\n"
        );
        for host in HOSTS {
            let _ = writeln!(config, "  server b{host} 192.0.2.{host}:8080");
        }
        let file = topology.dir.file("haproxy.cfg");
        std::fs::write(&file, config).expect("write haproxy.cfg");
        let log = topology.dir.file("haproxy.log");
        let mut process = spawn_logged(balancer, &log, "haproxy", &["-db", "-f", &file]);
        // Up once it accepts on the VIP (not after a guessed pause).
        let vip = std::net::SocketAddr::from(SocketAddrV4::new(VIP_NAT, 80));
        let up = wait_until(Duration::from_secs(10), || {
            !process.running()
                || balancer
                    .run(move || TcpStream::connect_timeout(&vip, Duration::from_secs(1)).is_ok())
        });
        assert!(
            up && process.running(),
            "haproxy did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        guard.process = Some(process);
        guard
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = self.balancer.exec(
            "ip",
            &["addr", "del", &format!("{VIP_NAT}/32"), "dev", "lo"],
        );
    }
}

/// The nftables DNAT in the balancer namespace, deleted on drop.
struct NftDnat<'a> {
    balancer: &'a Netns,
}

impl<'a> NftDnat<'a> {
    fn add(balancer: &'a Netns) -> Self {
        let targets: Vec<String> = HOSTS
            .iter()
            .zip(0..)
            .map(|(host, i)| format!("{i} : 192.0.2.{host}"))
            .collect();
        let rules = format!(
            "table ip {NFT_TABLE} {{\n\
             \x20 chain prerouting {{\n\
             \x20   type nat hook prerouting priority dstnat; policy accept;\n\
             \x20   ip daddr {VIP_NAT} tcp dport 80 dnat to numgen inc mod {} map {{ {} }} : 8080\n\
             \x20 }}\n\
             }}\n",
            HOSTS.len(),
            targets.join(", ")
        );
        let file = crate::TempFile::new("lb-e2e.nft", &rules);
        let guard = Self { balancer };
        let output = balancer.exec("nft", &["-f", file.path().to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "nft -f: {output:?}");
        guard
    }
}

impl Drop for NftDnat<'_> {
    fn drop(&mut self) {
        let _ = self
            .balancer
            .exec("nft", &["delete", "table", "ip", NFT_TABLE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 5s test @ http://203.0.113.10/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50ms  512.00us  20.01ms   90.00%
    Req/Sec     10.00k     1.00k   12.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.00ms
     99%    3.25ms
  100000 requests in 5.00s, 15.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:  19999.50
Transfer/sec:      3.00MB
";

    #[test]
    fn parses_wrk() {
        let run = parse_wrk(WRK_OUTPUT).expect("parsed");
        assert!((run.rate - 19_999.5).abs() < 1e-9);
        assert!((run.p50_ms - 0.812).abs() < 1e-9);
        assert!((run.p99_ms - 3.25).abs() < 1e-9);
        assert_eq!(run.errors, 6);
        assert_eq!(parse_wrk("unable to connect"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("1.00m"), Some(60_000.0));
        assert_eq!(duration_ms("12"), None);
    }
}

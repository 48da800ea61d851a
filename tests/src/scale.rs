//! A balancer with many services (issue 24): `lb run` with N services × M
//! backends in namespaces of its own, and what it costs — how long until it
//! is ready, its memory and threads, `lb status` and a one-weight reload.
//! Used by the bounded start test (`e2e_scale`) and by the measurement
//! (`cargo xtask bench --scale`, the ignored `scale_figures` test).
//!
//! Topology: client `cl` (198.51.100.2) — `eth0` lb `eth1` (192.0.2.1) —
//! backends `be`, one namespace holding every backend address
//! (192.0.2.20 on, at most 200 of them, shared round-robin by the
//! backends), where one listener on port 8080 answers every service port
//! (nftables redirects them; without nftables the backends refuse).

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    TempFile, lb_binary,
    lbrun::LbRun,
    netns::{Netns, veth, wait_until},
};

/// Distinct backend addresses at most.
const ADDRESSES: usize = 200;
/// The first service port (service n listens on `PORT + n`).
const PORT: usize = 10_000;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Services × backends per service.
    pub services: usize,
    /// Backends per service.
    pub backends: usize,
    /// From spawn until the control socket answers.
    pub socket: Duration,
    /// From spawn until a connection through the first and the last
    /// service's VIP succeeds (`None`: not within the bound).
    pub forwards: Option<Duration>,
    /// Resident memory once ready, MiB.
    pub rss_mib: f64,
    /// Threads once ready.
    pub threads: usize,
    /// `lb status --output json`: wall time and bytes.
    pub status: Duration,
    /// Bytes `lb status --output json` printed.
    pub status_bytes: usize,
    /// `lb reload` after one backend's weight changed.
    pub reload: Duration,
    /// Whether `lb reload` succeeded.
    pub reload_ok: bool,
    /// Whether the backends answer TCP (nftables redirect in place).
    pub backends_answer: bool,
    /// From spawn until `lb status` shows a check result for every backend
    /// (`None`: no health checks, or not within the bound).
    pub checked: Option<Duration>,
    /// `GET /metrics` on `control.metrics`: wall time (request to the
    /// last byte), once every backend is checked (with checks).
    pub metrics: Duration,
    /// Its status line (`HTTP/1.1 200 OK` when it worked).
    pub metrics_status: String,
    /// Bytes of the page.
    pub metrics_bytes: usize,
    /// Series on the page: its sample lines (histogram buckets included).
    pub metrics_series: usize,
}

/// The namespaces, the backends' listener, and the balancer.
#[derive(Debug)]
pub struct Scale {
    /// The balancer (dropped first: ends `lb run`, detaches).
    pub lb: LbRun,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
    /// The backends' namespace.
    pub be: Netns,
    /// The client's namespace.
    pub client: Netns,
    services: usize,
    backends: usize,
    check: Option<String>,
    ring_size: u32,
    /// Whether the backends answer TCP.
    pub backends_answer: bool,
}

impl Drop for Scale {
    fn drop(&mut self) {
        drop(self.lb.process.take());
        self.stop.store(true, Ordering::Relaxed);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}

impl Scale {
    /// The namespaces for `services` × `backends`; `check`: the health
    /// check of every service (YAML flow mapping), `None` for none.
    pub fn new(services: usize, backends: usize, check: Option<&str>, ring_size: u32) -> Self {
        let client = Netns::new("cl");
        let lbns = Netns::new("lb");
        let be = Netns::new("be");
        veth(&client, "eth0", &lbns, "eth0");
        veth(&lbns, "eth1", &be, "eth0");
        client.addr("eth0", "198.51.100.2/24");
        client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        lbns.addr("eth0", "198.51.100.1/24");
        lbns.addr("eth1", "192.0.2.1/24");
        lbns.sysctl("net.ipv4.conf.all.rp_filter=0");
        lbns.sysctl("net.ipv4.conf.default.rp_filter=0");
        let count = (services * backends).clamp(1, ADDRESSES);
        for n in 0..count {
            be.addr("eth0", &format!("{}/24", address(n)));
        }
        be.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        // Frames an XDP program redirects into a veth are delivered only if
        // the peer has a NAPI instance: GRO gives it one.
        for ns in [&client, &be] {
            let _ = ns.exec("ethtool", &["-K", "eth0", "gro", "on"]);
        }
        let rules = format!(
            "add table ip lbscale\n\
             add chain ip lbscale pre {{ type nat hook prerouting priority -100 ; }}\n\
             add rule ip lbscale pre tcp dport {PORT}-{} redirect to :8080\n",
            PORT + services
        );
        let file = TempFile::new("scale.nft", &rules);
        let backends_answer = be
            .exec("nft", &["-f", file.path().to_str().unwrap()])
            .status
            .success();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = {
            let stop = Arc::clone(&stop);
            be.spawn_thread(move || serve(&stop))
        };
        let instance = format!("scale{}", std::process::id());
        let socket = std::env::temp_dir()
            .join(format!("lbt-{instance}.sock"))
            .to_string_lossy()
            .into_owned();
        let mut scale = Self {
            lb: LbRun::new(lbns, TempFile::new("scale.yaml", ""), socket, instance),
            stop,
            listener: Some(listener),
            be,
            client,
            services,
            backends,
            check: check.map(str::to_string),
            ring_size,
            backends_answer,
        };
        scale.write_config(100);
        scale
    }

    /// The configuration, the first backend of the first service weighing
    /// `first_weight`.
    pub fn config(&self, first_weight: u32) -> String {
        let mut text = format!(
            "instance: {}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\n\
             control: {{ socket: {}, metrics: '127.0.0.1:9477' }}\n\
             dataplane: {{ max_services: {}, max_backends: {}, ring_size: {} }}\nservices:\n",
            self.lb.instance,
            self.lb.socket,
            self.services.max(64),
            (self.services * self.backends).max(1024),
            self.ring_size,
        );
        for s in 0..self.services {
            let check = self
                .check
                .as_ref()
                .map(|check| format!(", health_check: {check}"))
                .unwrap_or_default();
            let backends: Vec<String> = (0..self.backends)
                .map(|b| {
                    let weight = if s == 0 && b == 0 { first_weight } else { 100 };
                    format!(
                        "{{ address: {}, weight: {weight} }}",
                        address(s * self.backends + b)
                    )
                })
                .collect();
            let _ = writeln!(
                text,
                "  - {{ name: s{s}, vip: 203.0.113.10, port: {}, protocol: tcp, \
                 forwarding: nat{check}, backends: [{}] }}",
                PORT + s,
                backends.join(", ")
            );
        }
        text
    }

    fn write_config(&mut self, first_weight: u32) {
        std::fs::write(self.lb.config.path(), self.config(first_weight)).expect("config");
    }

    /// Starts `lb run` (the binary of `lb_binary`, `LB_BIN` to pick one)
    /// and measures, waiting at most `bound` for it to be ready.
    pub fn measure(&mut self, bound: Duration) -> Figures {
        let spawned = Instant::now();
        let mut child = self.lb.ns.spawn(
            lb_binary().to_str().unwrap(),
            &["run", "-c", self.lb.config.path().to_str().unwrap()],
        );
        let socket = self.lb.socket.clone();
        let up = wait_until(bound, || {
            !child.running() || std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !(up && child.running()) {
            child.signal(libc::SIGKILL);
            panic!(
                "lb run did not come up within {bound:?}: {:?}",
                child.wait()
            );
        }
        let socket_time = spawned.elapsed();
        let pid = child.id();
        self.lb.process = Some(child);
        let port = |n: usize| u16::try_from(PORT + n).expect("a port");
        let vips = [
            SocketAddr::from(([203, 0, 113, 10], port(0))),
            SocketAddr::from(([203, 0, 113, 10], port(self.services - 1))),
        ];
        let forwards = if self.backends_answer {
            let deadline = bound.saturating_sub(spawned.elapsed());
            let ok = wait_until(deadline, || {
                self.client.run(move || {
                    vips.iter().all(|vip| {
                        TcpStream::connect_timeout(vip, Duration::from_millis(200)).is_ok()
                    })
                })
            });
            ok.then(|| spawned.elapsed())
        } else {
            None
        };
        let (rss_mib, threads) = proc_status(pid);
        if std::env::var_os("LB_SCALE_LOG").is_some()
            && let Some(process) = &self.lb.process
        {
            eprintln!("{}", process.stderr_so_far());
        }
        let started = Instant::now();
        let status = self
            .lb
            .lb(&["status", "--output", "json", "--socket", &self.lb.socket]);
        let status_time = started.elapsed();
        assert!(status.status.success(), "lb status: {status:?}");
        self.write_config(300);
        let started = Instant::now();
        let reload = self.lb.lb(&["reload", "--socket", &self.lb.socket]);
        let reload_time = started.elapsed();
        let checked = self.check.as_ref().and_then(|_| {
            let all_checked = wait_until(bound.saturating_sub(spawned.elapsed()), || {
                let output =
                    self.lb
                        .lb(&["status", "--output", "json", "--socket", &self.lb.socket]);
                let status: serde_json::Value =
                    serde_json::from_slice(&output.stdout).unwrap_or_default();
                status["services"].as_array().is_some_and(|services| {
                    services.iter().all(|service| {
                        service["backends"].as_array().is_some_and(|backends| {
                            backends.iter().all(|b| !b["last_check"].is_null())
                        })
                    })
                })
            });
            all_checked.then(|| spawned.elapsed())
        });
        let started = Instant::now();
        let page = self.lb.ns.metrics_page();
        let metrics_time = started.elapsed();
        let (head, body) = page.split_once("\r\n\r\n").unwrap_or((&page, ""));
        let metrics_series = body
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count();
        Figures {
            services: self.services,
            backends: self.backends,
            socket: socket_time,
            forwards,
            rss_mib,
            threads,
            status: status_time,
            status_bytes: status.stdout.len(),
            reload: reload_time,
            reload_ok: reload.status.success(),
            backends_answer: self.backends_answer,
            checked,
            metrics: metrics_time,
            metrics_status: head.lines().next().unwrap_or("").to_string(),
            metrics_bytes: body.len(),
            metrics_series,
        }
    }
}

/// Backend address `n` (of [`ADDRESSES`]).
fn address(n: usize) -> String {
    let n = n % ADDRESSES;
    format!("192.0.2.{}", 20 + n)
}

/// Accepts and closes connections on port 8080 until `stop`.
fn serve(stop: &AtomicBool) {
    let Ok(listener) = TcpListener::bind("0.0.0.0:8080") else {
        return;
    };
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// `VmRSS` (MiB) and `Threads` of process `pid`.
pub fn proc_status(pid: u32) -> (f64, usize) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threads = field("Threads:") as usize;
    (field("VmRSS:") / 1024.0, threads)
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}: socket {:.2} s, forwards {}, RSS {:.0} MiB, threads {}, \
             lb status {:.0} ms ({} bytes), one-weight reload {:.0} ms, \
             every backend checked {}, /metrics {:.0} ms ({} bytes, {} series, {}){}{}",
            self.services,
            self.backends,
            self.socket.as_secs_f64(),
            self.forwards
                .map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.rss_mib,
            self.threads,
            self.status.as_secs_f64() * 1000.0,
            self.status_bytes,
            self.reload.as_secs_f64() * 1000.0,
            self.checked
                .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.metrics.as_secs_f64() * 1000.0,
            self.metrics_bytes,
            self.metrics_series,
            self.metrics_status,
            if self.reload_ok { "" } else { " (FAILED)" },
            if self.backends_answer {
                ""
            } else {
                " (backends do not answer: no nftables)"
            },
        )
    }
}

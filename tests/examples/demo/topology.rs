//! The demo's network, all in namespaces and documentation addresses:
//!
//! ```text
//!  client ──── router ──── switch (br0) ─┬─ lb1 192.0.2.1  ┐ HA pair: the master holds
//!  198.51.100.2    198.51.100.1          ├─ lb2 192.0.2.2  ┘ the floating 192.0.2.100
//!  198.51.100.66   192.0.2.253           ├─ b11 b12 b13    primary site (tier 0)
//!  (junk source)                         └─ b21 b22        standby site (tier 1)
//! ```
//!
//! The router sends the VIP 203.0.113.10 to the floating 192.0.2.100; the
//! backends' default route is the floating address too, so NAT replies come
//! back through whichever balancer is master. Each backend runs the demo's
//! web server as a process of its own. Field order is drop order: the XDP
//! programs on the switch's ports go while their veths exist, then the
//! balancers (stopped, their pins detached), the servers, the namespaces.

use std::{net::UdpSocket, time::Duration};

use lb_tests::{
    TempFile,
    bed::DecapGuard,
    lbrun::LbRun,
    netns::{ChildGuard, Netns, bridge, enslave, veth, wait_until},
};

/// The service's VIP and port, and the flood's target.
pub const VIP: &str = "203.0.113.10";
/// Where the good client connects.
pub const WEB: &str = "203.0.113.10:80";
/// The client's and the junk source's addresses.
pub const CLIENT: &str = "198.51.100.2";
pub const JUNK: &str = "198.51.100.66";
/// What the master holds.
const FLOATING: &str = "192.0.2.100";

/// Health checks: a killed server is out after `fall` failed checks.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(200);
pub const CHECK_FALL: u32 = 2;
pub const CHECK_RISE: u32 = 2;
/// VRRP: the backup takes over after 3 × the interval (+ skew) of silence.
pub const ADVERT_INTERVAL: Duration = Duration::from_millis(100);

/// The automatic guard's thresholds (per source and VIP, per second): far
/// above the good client, far below a flood.
const GUARD: &str = "guard:\n  auto: { packets_per_second: 5000, new_flows_per_second: 1000, \
                     syn_only_per_second: 200, deny_for: 60s }\n";

/// The backends: name, last address byte, tier.
pub const BACKENDS: [(&str, u8, u8); 5] = [
    ("b11", 11, 0),
    ("b12", 12, 0),
    ("b13", 13, 0),
    ("b21", 21, 1),
    ("b22", 22, 1),
];

/// One backend: its namespace and (while it runs) its server process.
#[derive(Debug)]
pub struct Backend {
    /// `b11`, ...
    pub name: &'static str,
    /// Last byte of its address.
    pub host: u8,
    server: Option<ChildGuard>,
    ns: Netns,
}

impl Backend {
    /// `192.0.2.<host>`.
    pub fn address(&self) -> String {
        format!("192.0.2.{}", self.host)
    }

    /// Starts the web server process and waits (5 s at most) until it listens.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "{} is running", self.name);
        let exe = std::env::current_exe().expect("the demo's own path");
        let server = self
            .ns
            .spawn(exe.to_str().expect("a UTF-8 path"), &["serve", self.name]);
        assert!(
            wait_until(Duration::from_secs(5), || server
                .stdout_so_far()
                .contains("listening")),
            "{}'s server did not start: {}",
            self.name,
            server.stderr_so_far()
        );
        self.server = Some(server);
    }

    /// SIGKILLs the server process, as a crash would.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.signal(libc::SIGKILL);
            let _ = server.wait();
        }
    }
}

/// The whole demo network.
#[derive(Debug)]
pub struct Network {
    _decaps: Vec<DecapGuard>,
    /// lb1 (priority 150, the master while it lives) and lb2 (100).
    pub balancers: Vec<LbRun>,
    /// The backends, primary site first.
    pub backends: Vec<Backend>,
    /// The client network's host.
    pub client: Netns,
    router: Netns,
    switch: Netns,
}

impl Network {
    /// Builds the namespaces, links and addresses and starts the backends'
    /// servers (the balancers are started by [`Network::start_balancer`]).
    pub fn build() -> Self {
        let switch = Netns::new("dsw");
        bridge(&switch, "br0");
        let client = Netns::new("dcl");
        let router = Netns::new("drt");
        veth(&client, "eth0", &router, "eth0");
        client.addr("eth0", &format!("{CLIENT}/24"));
        client.addr("eth0", &format!("{JUNK}/24"));
        client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        router.addr("eth0", "198.51.100.1/24");
        veth(&router, "eth1", &switch, "prt");
        enslave(&switch, "prt", "br0");
        router.addr("eth1", "192.0.2.253/24");
        router.route("203.0.113.0/24", FLOATING);
        for setting in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            router.sysctl(setting);
        }

        let mut decaps = Vec::new();
        let mut balancers = Vec::new();
        for (i, priority) in [(1u8, 150u8), (2, 100)] {
            let ns = Netns::new(&format!("dlb{i}"));
            let port = format!("pl{i}");
            veth(&ns, "eth0", &switch, &port);
            enslave(&switch, &port, "br0");
            ns.addr("eth0", &format!("192.0.2.{i}/24"));
            ns.route("198.51.100.0/24", "192.0.2.253");
            ns.sysctl("net.ipv4.conf.all.rp_filter=0");
            // Frames XDP_TX sends back into a veth are delivered only when
            // its peer has an XDP program (docs/DESIGN.md §7.3); lb_decap passes all.
            decaps.push(DecapGuard::attach(switch.name(), &port));
            let pid = std::process::id();
            let socket = format!("/run/lb/demo{i}-{pid}.sock");
            let instance = format!("demo{i}x{pid}");
            let config = TempFile::new(
                &format!("demo-lb{i}.yaml"),
                &config(&instance, &socket, priority),
            );
            balancers.push(LbRun::new(ns, config, socket, instance));
        }

        let mut backends = Vec::new();
        for (name, host, _) in BACKENDS {
            let ns = Netns::new(name);
            let port = format!("p{host}");
            veth(&ns, "eth0", &switch, &port);
            enslave(&switch, &port, "br0");
            ns.addr("eth0", &format!("192.0.2.{host}/24"));
            ns.ip(&["route", "add", "default", "via", FLOATING]);
            let mut backend = Backend {
                name,
                host,
                server: None,
                ns,
            };
            backend.start();
            backends.push(backend);
        }
        Self {
            _decaps: decaps,
            balancers,
            backends,
            client,
            router,
            switch,
        }
    }

    /// Starts balancer `i` (0 or 1) and fills its neighbour table (backends
    /// and router), as its health checks would shortly after.
    pub fn start_balancer(&mut self, i: usize) {
        let balancer = &mut self.balancers[i];
        balancer.start();
        let hosts: Vec<String> = self
            .backends
            .iter()
            .map(Backend::address)
            .chain(["192.0.2.253".to_owned()])
            .collect();
        balancer.ns.run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for host in hosts {
                let _ = socket.send_to(b"hello", (host.as_str(), 9));
            }
        });
    }

    /// The backend named `name`.
    pub fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// `lb ARGS --socket` of balancer `i`, in its namespace.
    pub fn lb(&self, i: usize, args: &[&str]) -> std::process::Output {
        let balancer = &self.balancers[i];
        let mut full = args.to_vec();
        full.extend(["--socket", balancer.socket.as_str()]);
        balancer.lb(&full)
    }

    /// `GET path` on balancer `i`'s control socket, straight from this
    /// process (no `lb` process per poll: the demo times what it polls);
    /// `null` when it does not answer.
    pub fn api(&self, i: usize, path: &str) -> serde_json::Value {
        lb::api::get(std::path::Path::new(&self.balancers[i].socket), path).unwrap_or_default()
    }

    /// Balancer `i`'s HA state ("" when it does not answer).
    pub fn ha_state(&self, i: usize) -> String {
        self.api(i, "/v1/status")["ha"]["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Health of each backend by name, from balancer `i`'s status.
    pub fn health(&self, i: usize) -> Vec<(String, String)> {
        let status = self.api(i, "/v1/status");
        status["services"][0]["backends"]
            .as_array()
            .map(|backends| {
                backends
                    .iter()
                    .map(|b| {
                        let address = b["address"].as_str().unwrap_or("");
                        let host = address.rsplit('.').next().unwrap_or("");
                        (
                            format!("b{host}"),
                            b["health"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The namespaces' names, for the opening lines.
    pub fn names(&self) -> String {
        let mut names = vec![self.client.name(), self.router.name(), self.switch.name()];
        names.extend(self.balancers.iter().map(|b| b.ns.name()));
        names.extend(self.backends.iter().map(|b| b.ns.name()));
        names.join(" ")
    }
}

/// One balancer's configuration: the web service over two tiers with HTTP
/// health checks, the flood's UDP sink, the automatic guard, and the HA
/// instance holding the floating address.
fn config(instance: &str, socket: &str, priority: u8) -> String {
    use std::fmt::Write as _;
    let mut backends = String::new();
    for (_, host, tier) in BACKENDS {
        let _ = write!(
            backends,
            "\n      - {{ address: 192.0.2.{host}, port: {http}, tier: {tier} }}",
            http = crate::server::HTTP_PORT
        );
    }
    let peer = if priority == 150 { 2 } else { 1 };
    format!(
        "instance: {instance}\n\
         interfaces: [{{ name: eth0 }}]\n\
         services:\n\
         \x20 - name: web\n\
         \x20   vip: {VIP}\n\
         \x20   port: 80\n\
         \x20   protocol: tcp\n\
         \x20   forwarding: nat\n\
         \x20   backends:{backends}\n\
         \x20   health_check: {{ kind: http, path: /healthz, expect_status: 200, \
         interval: {interval}ms, timeout: {timeout}ms, rise: {CHECK_RISE}, fall: {CHECK_FALL} }}\n\
         \x20 - name: sink\n\
         \x20   vip: {VIP}\n\
         \x20   port: {sink}\n\
         \x20   protocol: udp\n\
         \x20   forwarding: nat\n\
         \x20   backends: [{{ address: 192.0.2.11, port: {sink} }}]\n\
         {GUARD}\
         ha:\n\
         \x20 interface: eth0\n\
         \x20 virtual_router_id: 51\n\
         \x20 priority: {priority}\n\
         \x20 advert_interval: {advert}ms\n\
         \x20 preempt: true\n\
         \x20 unicast_peers: [192.0.2.{peer}]\n\
         \x20 floating_ips: [{FLOATING}/24]\n\
         control: {{ socket: {socket} }}\n",
        interval = CHECK_INTERVAL.as_millis(),
        timeout = CHECK_TIMEOUT.as_millis(),
        sink = crate::server::SINK_PORT,
        advert = ADVERT_INTERVAL.as_millis(),
    )
}

/// The first balancer's configuration, for the opening lines.
pub fn example_config() -> String {
    config("demo1", "/run/lb/demo1.sock", 150)
}

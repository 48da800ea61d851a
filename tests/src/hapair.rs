//! The HA tests' beds. [`pair`]: two balancers on one veth (eth0 to
//! eth0), VRRP over multicast, both families of floating IPs — the release
//! and fault tests. [`HaBed`]: a client, two balancers and two backends on
//! one switch, each test's own configuration in the balancers — the
//! handover, active-active, timing and sync tests.

use std::{
    net::UdpSocket,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::{
    TempFile,
    bed::{Backend, DecapGuard, backend},
    lbrun::LbRun,
    netns::{Netns, bridge, enslave, veth, wait_until},
};

/// What the master holds, both families (VRRP runs over IPv4; the IPv6
/// address moves with the others).
pub const FLOATING: [&str; 3] = ["198.51.100.1/24", "192.0.2.254/24", "2001:db8::fe/64"];

/// The floating IPs `balancer`'s interface holds.
pub fn holds(balancer: &LbRun) -> Vec<&'static str> {
    let listed = balancer.ns.ip(&["-o", "addr", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    FLOATING
        .into_iter()
        .filter(|ip| text.split_whitespace().any(|word| word == *ip))
        .collect()
}

/// Balancer 0 (192.0.2.1, priority 150) and 1 (192.0.2.2, 100), eth0 to
/// eth0, VRID 52, 100 ms advertisements, preempting; not started. Each
/// serves metrics on 127.0.0.1:9477 in its namespace.
pub fn pair(tag: &str) -> [LbRun; 2] {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    veth(&a, "eth0", &b, "eth0");
    let pid = std::process::id();
    [(1u8, 150u8, a), (2, 100, b)].map(|(i, priority, ns)| {
        ns.addr("eth0", &format!("192.0.2.{i}/24"));
        let socket = format!("/run/lb/rel-{tag}{i}-{pid}.sock");
        let instance = format!("rel{tag}{i}x{pid}");
        let floating = FLOATING.map(|f| format!("'{f}'")).join(", ");
        let config = TempFile::new(
            &format!("rel{i}.yaml"),
            &format!(
                "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
                 \x20 - {{ name: web, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
                 backends: [{{ address: 192.0.2.11 }}] }}\n\
                 ha: {{ interface: eth0, virtual_router_id: 52, priority: {priority}, \
                 advert_interval: 100ms, preempt: true, floating_ips: [{floating}] }}\n\
                 control: {{ socket: {socket}, metrics: 127.0.0.1:9477 }}\n"
            ),
        );
        LbRun::new(ns, config, socket, instance)
    })
}

/// What one test's [`HaBed`] is called and how its client reaches the
/// VIPs; the balancers' configuration is the test's own.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Namespace names begin with it: `{ns}sw` the switch, `{ns}cl` the
    /// client, `{ns}lb1` and `{ns}lb2` the balancers.
    pub ns: String,
    /// Instance, control socket and file names begin with it.
    pub name: String,
    /// Keeps the beds of tests that run at once apart (instances, pins,
    /// sockets).
    pub tag: String,
    /// The client's routes: (destination, floating gateway).
    pub routes: Vec<(&'static str, &'static str)>,
    /// IPv6 as well: the client `2001:db8:1::2/64`, the balancers
    /// `2001:db8::1/64` and `::2`, the backends' default route via the
    /// floating `2001:db8::fe`, and their IPv6 neighbours primed on start.
    pub ipv6: bool,
}

/// One balancer of an [`HaBed`], as its configuration names it.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// 1 (192.0.2.1) or 2 (192.0.2.2).
    pub index: u8,
    /// The other balancer's address, for `unicast_peers`.
    pub peer: &'a str,
    /// `instance`.
    pub instance: &'a str,
    /// `control.socket`.
    pub socket: &'a str,
}

/// Client, two balancers and two backends on one switch (bridge `br0`).
/// The client (198.51.100.2) reaches the VIPs through the floating
/// gateways of its [`Layout::routes`]; the backends' default route is the
/// floating 192.0.2.254. Field order is drop order: the switch-side decap
/// pins go while their veths still exist.
#[derive(Debug)]
pub struct HaBed {
    /// `lb_decap` on the balancers' switch ports: `XDP_TX` back into a
    /// veth needs an XDP program on its peer.
    pub decaps: Vec<DecapGuard>,
    /// Balancer 1 (`balancers[0]`) and 2, not started.
    pub balancers: Vec<LbRun>,
    /// Backends 192.0.2.11 and .12 (a test may add more).
    pub backends: Vec<Backend>,
    /// The client.
    pub client: Netns,
    /// The switch.
    pub switch: Netns,
    /// The backends whose neighbours [`HaBed::start`] resolves on the
    /// balancer (DSR needs them).
    pub primed: Vec<u8>,
    ipv6: bool,
}

impl HaBed {
    /// The bed of `layout`, balancer `i` configured with `config(member)`.
    pub fn new(layout: &Layout, config: impl Fn(&Member) -> String) -> Self {
        let ns = &layout.ns;
        let switch = Netns::new(&format!("{ns}sw"));
        bridge(&switch, "br0");
        let client = Netns::new(&format!("{ns}cl"));
        veth(&client, "eth0", &switch, "pc");
        enslave(&switch, "pc", "br0");
        client.addr("eth0", "198.51.100.2/24");
        if layout.ipv6 {
            client.addr("eth0", "2001:db8:1::2/64");
        }
        for (destination, gateway) in &layout.routes {
            client.route(destination, gateway);
        }
        let mut balancers = Vec::new();
        let mut decaps = Vec::new();
        let (name, tag, pid) = (&layout.name, &layout.tag, std::process::id());
        for i in [1u8, 2] {
            let ns = Netns::new(&format!("{}lb{i}", layout.ns));
            let port = format!("pl{i}");
            veth(&ns, "eth0", &switch, &port);
            enslave(&switch, &port, "br0");
            ns.addr("eth0", &format!("192.0.2.{i}/24"));
            if layout.ipv6 {
                ns.addr("eth0", &format!("2001:db8::{i}/64"));
            }
            ns.sysctl("net.ipv4.conf.all.rp_filter=0");
            decaps.push(DecapGuard::attach(switch.name(), &port));
            let socket = format!("/run/lb/{name}-{tag}{i}-{pid}.sock");
            let instance = format!("{name}{tag}{i}x{pid}");
            let member = Member {
                index: i,
                peer: if i == 1 { "192.0.2.2" } else { "192.0.2.1" },
                instance: &instance,
                socket: &socket,
            };
            let file = TempFile::new(&format!("{name}{i}.yaml"), &config(&member));
            balancers.push(LbRun::new(ns, file, socket, instance));
        }
        let backends: Vec<Backend> = [11, 12]
            .map(|host| backend(&switch, host))
            .into_iter()
            .collect();
        for backend in &backends {
            backend
                .ns
                .ip(&["route", "replace", "default", "via", "192.0.2.254"]);
            if layout.ipv6 {
                backend
                    .ns
                    .ip(&["-6", "route", "replace", "default", "via", "2001:db8::fe"]);
            }
        }
        Self {
            decaps,
            balancers,
            backends,
            client,
            switch,
            primed: vec![11, 12],
            ipv6: layout.ipv6,
        }
    }

    /// Starts balancer `i` (0 or 1) and resolves the neighbours of the
    /// [`HaBed::primed`] backends on it.
    pub fn start(&mut self, i: usize) {
        let balancer = &mut self.balancers[i];
        balancer.start();
        let ipv6 = self.ipv6;
        for host in self.primed.clone() {
            balancer.ns.run(move || {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                let _ = socket.send_to(b"hi", (format!("192.0.2.{host}"), 80));
                if ipv6 {
                    let socket = UdpSocket::bind("[::]:0").unwrap();
                    let _ = socket.send_to(b"hi", (format!("2001:db8::{host}"), 80));
                }
            });
        }
    }

    /// Starts both balancers and waits (10 s at most) until balancer 1 is
    /// master and 2 backup.
    pub fn start_pair(&mut self) {
        self.start(0);
        self.start(1);
        assert!(
            wait_until(Duration::from_secs(10), || self.ha_state(0) == "master"
                && self.ha_state(1) == "backup"),
            "no master/backup pair: {} / {}",
            self.ha_state(0),
            self.ha_state(1)
        );
    }

    /// Balancer `i`'s `ha` status (`null` when it does not answer).
    pub fn ha(&self, i: usize) -> serde_json::Value {
        self.balancers[i].status()["ha"].clone()
    }

    /// Balancer `i`'s HA state ("" when it does not answer).
    pub fn ha_state(&self, i: usize) -> String {
        self.ha(i)["state"].as_str().unwrap_or("").to_string()
    }
}

/// Waits until a test's steady client (a thread that counts its requests
/// in `made`) has made `more` requests beyond those counted now (each
/// bounded by its 3 s connect timeout).
pub fn wait_requests(made: &AtomicUsize, more: usize) {
    let from = made.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_mins(1), || made.load(Ordering::Relaxed)
            >= from + more),
        "the steady client made {} of {more} requests in 60 s",
        made.load(Ordering::Relaxed) - from
    );
}

//! `BPF_PROG_TEST_RUN` on the real balancer program, with its maps filled by
//! the real planner from a real configuration.
//!
//! The runs happen inside a private network namespace that the harness
//! builds, because `bpf_fib_lookup` answers from the caller's namespace: an
//! egress veth `lb0` (MAC [`EGRESS_MAC`]) with backends on-link (static
//! neighbours with [`backend_mac`]) and clients behind a router
//! ([`ROUTER_MAC`]). Test-run frames arrive on loopback, so forwarded frames
//! leave by redirect to `lb0`.

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use lb::{
    config::Config,
    controller::{guard_settings, settings, sizes},
    dataplane::Dataplane,
    hops::HopCache,
    plan::{BackendKey, BackendState, Planner},
};
use lb_common::Reason;

use crate::netns::Netns;

/// The MAC the balancer's receiving interface has (registered for lo,
/// where test-run frames arrive).
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// A client MAC address for frames built by tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The MAC of `lb0`, the egress interface: forwarded frames' source.
pub const EGRESS_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x03];
/// The MAC of the router towards the clients.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// The ifindex `BPF_PROG_TEST_RUN` reports for XDP without a context: lo.
pub const TEST_IFINDEX: u32 = 1;

/// The MAC of the backend whose address ends in `last` (`192.0.2.<last>`,
/// `2001:db8::<last>`).
pub const fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x00, 0x0b, last]
}

/// On-link backends the test bed has neighbours for: the last byte of
/// `192.0.2.x` and of `2001:db8::x`.
pub const BACKEND_HOSTS: [u8; 6] = [11, 12, 13, 14, 21, 22];

/// XDP verdicts, as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_ABORTED`.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`.
    Pass,
    /// `XDP_TX`.
    Tx,
    /// `XDP_REDIRECT`.
    Redirect,
}

impl Action {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => panic!("XDP program returned unknown action {other}"),
        }
    }
}

/// What one run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub action: Action,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// A loaded balancer ready for test runs, inside its own namespace.
#[derive(Debug)]
pub struct Harness {
    /// The data plane, for filling maps and reading counters.
    pub dataplane: Dataplane,
    /// The planner that filled the maps.
    pub planner: Planner,
    /// The configuration planned.
    pub config: Config,
    /// Backends' next hops, resolved from the test bed by the real resolver.
    pub hops: HopCache,
    ns: Netns,
}

/// A configuration with no services, for parser tests.
pub const EMPTY_CONFIG: &str = "instance: test\ninterfaces: [{ name: lb0 }]\n";

impl Harness {
    /// Builds the namespace, moves the calling thread into it, loads the
    /// balancer with `config`'s sizes and plans `config` into its maps.
    pub fn new(config: &str) -> Self {
        Self::with_object(config, lb::dataplane::OBJECT)
    }

    /// As [`Harness::new`], with another build of the XDP object (the
    /// benchmarks compare builds).
    pub fn with_object(config: &str, object: &[u8]) -> Self {
        let config = Config::parse(config).expect("test configuration");
        let ns = Netns::new("dp");
        ns.enter();
        build_test_bed(&ns);
        let mut dataplane =
            Dataplane::load_program(object, sizes(&config), lb_common::program_names::BALANCER)
                .expect("load the XDP object");
        dataplane
            .set_guard_settings(&guard_settings(&config))
            .expect("guard settings");
        dataplane
            .set_settings(&settings(&config))
            .expect("settings");
        dataplane
            .insert_iface(TEST_IFINDEX, LB_MAC)
            .expect("register the test interface");
        let egress = lb::netlink::ifindex("lb0").expect("lb0");
        dataplane.insert_devmap(egress).expect("devmap");
        let sizes = dataplane.sizes();
        let mut planner = Planner::new(sizes.ring_size, sizes.services, sizes.backends);
        let writes = planner.plan(&config, &BTreeMap::new()).expect("plan");
        dataplane.apply(&writes).expect("apply");
        let mut hops = HopCache::open().expect("netlink");
        hops.refresh(planner.planned(), &mut dataplane);
        Self {
            dataplane,
            planner,
            config,
            hops,
            ns,
        }
    }

    /// Re-plans with backend states (health, weights) and applies the writes.
    pub fn replan(&mut self, states: &BTreeMap<BackendKey, BackendState>) {
        let writes = self.planner.plan(&self.config, states).expect("plan");
        self.dataplane.apply(&writes).expect("apply");
        self.refresh_hops();
    }

    /// Resolves the backends' next hops again and writes what changed.
    pub fn refresh_hops(&mut self) -> usize {
        self.hops
            .refresh(self.planner.planned(), &mut self.dataplane)
    }

    /// Empties every backend's cached next hop and the mirrored routes, so
    /// packets take the FIB fallback (until the next
    /// [`Harness::refresh_hops`]).
    pub fn clear_hops(&mut self) {
        self.hops
            .clear(&mut self.dataplane)
            .expect("clear the next-hop cache");
    }

    /// Plans a new configuration (and its settings) and applies the writes,
    /// as a reload does.
    pub fn reconfigure(&mut self, config: &str) {
        self.config = Config::parse(config).expect("test configuration");
        self.dataplane
            .set_guard_settings(&guard_settings(&self.config))
            .expect("guard settings");
        self.dataplane
            .set_settings(&settings(&self.config))
            .expect("settings");
        self.replan(&BTreeMap::new());
    }

    /// Turns the data path's connection-sync reports on or off
    /// (`SETTINGS_SYNC`), the other settings as they are.
    pub fn set_sync(&mut self, on: bool) {
        use lb::route::Tables as _;
        let mut settings = lb::route::maps::MapTables::new(&self.dataplane)
            .settings()
            .expect("read the settings");
        if on {
            settings.flags |= lb_common::maps::SETTINGS_SYNC;
        } else {
            settings.flags &= !lb_common::maps::SETTINGS_SYNC;
        }
        self.dataplane
            .set_settings(&settings)
            .expect("write the settings");
    }

    /// The namespace the runs happen in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Runs `frame` through the balancer once (arriving on loopback).
    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.test_run(frame, None)
    }

    /// Runs `frame` as if it arrived on `ifindex` (an interface of the test
    /// bed's namespace), through a context: `data_end` must equal the frame
    /// length, everything else but the ingress interface zero.
    pub fn run_on(&self, ifindex: u32, frame: &[u8]) -> Outcome {
        let len = u32::try_from(frame.len()).expect("frame length");
        let mut ctx = Vec::with_capacity(24);
        for field in [0, len, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&u32::to_ne_bytes(field));
        }
        self.test_run(frame, Some(&ctx))
    }

    /// Runs `frame` once through another program of the object (a
    /// benchmark program: the floor, the reference balancer), loading it
    /// first if needed.
    pub fn run_program(&mut self, name: &'static str, frame: &[u8]) -> Outcome {
        self.dataplane
            .prepare_bench_of(name, frame)
            .expect("load the program");
        let program = self.dataplane.bench_program(name).expect("the program");
        test_run(program, frame, None)
    }

    fn test_run(&self, frame: &[u8], ctx: Option<&[u8]>) -> Outcome {
        test_run(
            self.dataplane.program().expect("balancer program"),
            frame,
            ctx,
        )
    }
}

/// One `BPF_PROG_TEST_RUN` of `program` on `frame`.
fn test_run(program: &aya::programs::Xdp, frame: &[u8], ctx: Option<&[u8]>) -> Outcome {
    // Room for encapsulation headers added by the program.
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    Outcome {
        action: Action::from_raw(result.return_value),
        frame: out,
    }
}

impl Harness {
    /// The reason counters, summed over CPUs.
    pub fn counters(&self) -> BTreeMap<Reason, u64> {
        self.dataplane.reason_counters().expect("read counters")
    }

    /// Runs `frame` and returns the outcome together with how much each
    /// reason counter moved.
    pub fn run_counted(&self, frame: &[u8]) -> (Outcome, BTreeMap<Reason, u64>) {
        let before = self.counters();
        let outcome = self.run(frame);
        let after = self.counters();
        let delta = after
            .into_iter()
            .filter_map(|(reason, n)| {
                let moved = n - before.get(&reason).copied().unwrap_or(0);
                (moved > 0).then_some((reason, moved))
            })
            .collect();
        (outcome, delta)
    }
}

/// `lb0` (the egress, peer `peer0`), on-link backends with static
/// neighbours, clients behind a router; forwarding on.
fn build_test_bed(ns: &Netns) {
    ns.ip(&[
        "link", "add", "lb0", "type", "veth", "peer", "name", "peer0",
    ]);
    ns.ip(&["link", "set", "lb0", "address", &mac_text(EGRESS_MAC)]);
    ns.ip(&["link", "set", "lb0", "up"]);
    ns.ip(&["link", "set", "peer0", "up"]);
    ns.addr("lb0", "192.0.2.1/24");
    ns.addr("lb0", "2001:db8::1/64");
    for last in BACKEND_HOSTS {
        let mac = mac_text(backend_mac(last));
        let v4 = format!("192.0.2.{last}");
        let v6 = format!("2001:db8::{last}");
        for addr in [v4.as_str(), v6.as_str()] {
            ns.ip(&[
                "neigh",
                "add",
                addr,
                "lladdr",
                &mac,
                "dev",
                "lb0",
                "nud",
                "permanent",
            ]);
        }
    }
    let router = mac_text(ROUTER_MAC);
    ns.ip(&[
        "neigh",
        "add",
        "192.0.2.254",
        "lladdr",
        &router,
        "dev",
        "lb0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "2001:db8::fe",
        "lladdr",
        &router,
        "dev",
        "lb0",
        "nud",
        "permanent",
    ]);
    ns.route("198.51.100.0/24", "192.0.2.254");
    ns.route("2001:db8:1::/64", "2001:db8::fe");
    ns.sysctl("net.ipv4.ip_forward=1");
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
}

/// Pins the calling thread to the CPU it runs on and returns that CPU: the
/// data path keeps per-CPU state (round-robin positions, rate limits), and a
/// test run happens on the caller's CPU.
pub fn pin_to_this_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).expect("sched_getcpu");
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (the kernel just ran us there).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) };
    assert_eq!(rc, 0, "sched_setaffinity");
    u32::try_from(cpu).expect("cpu")
}

/// `02:00:...` text form.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

//! `guard.attack` against real spoofed floods through `lb run` (issue 22).
//! A flooder in its own namespace (behind the balancer's `eth2`) runs the
//! project's flood generator ([`lb_tests::flood`]: random sources of
//! 198.51.100.128/25, random ports and sequence numbers, as fast as this
//! host allows, bounded to [`FLOOD_TIME`]). On every backend an
//! `AF_PACKET` counter ([`flood::Arrivals`]) counts the spoofed frames that
//! reach it, exactly. Detection is read from `lb status` (polled).
//!
//! A spoofed SYN flood against a NAT service: detected within a second,
//! at most 1 % of the SYNs sent after that reach the backend, a proven
//! client connects, metrics, `lb status`, `lb trace` and the counters say
//! so, and the VIP leaves the attack state after `quiet_for`.
//!
//! The tests take turns (one flood at a time on this 2-core machine).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    Addr, ConnValue, FlowKeyV4,
    attack::Proven,
    maps::{CONN_CLOSED, ipv4_mapped},
};
use lb_tests::{
    bed::{Bed, DecapGuard, tcp_request},
    flood::{self, Arrivals, Kind, Prefix, Spec, Stats},
    netns::{Netns, veth, wait_until},
};

/// One flood at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const VIP: &str = "203.0.113.10";
/// The spoofed sources.
const SPOOFED: &str = "198.51.100.128/25";
/// The flood's bounds: this long, or this many frames (far more than this
/// host sends in that time), whichever first.
const FLOOD_TIME: Duration = Duration::from_secs(10);
const FLOOD_COUNT: u64 = 50_000_000;
/// `guard.attack` of every test.
const NEW_FLOWS_PER_SECOND: u32 = 300;
const SOURCE_FLOWS_PER_SECOND: u32 = 100;
const QUIET_FOR: Duration = Duration::from_secs(3);

/// The client's addresses that connect before the flood (known sources).
fn known_sources() -> Vec<Ipv4Addr> {
    (10..20)
        .map(|host| Ipv4Addr::new(198, 51, 100, host))
        .collect()
}

/// The client's addresses that send nothing before the flood.
fn new_sources() -> Vec<Ipv4Addr> {
    (20..100)
        .map(|host| Ipv4Addr::new(198, 51, 100, host))
        .collect()
}

/// The balancer (with a flooder behind its `eth2`) running `services`.
/// Drop order: the flooder's decap pin, its namespace, then the bed.
struct AttackBed {
    decap: Option<DecapGuard>,
    flooder: Netns,
    bed: Bed,
    instance: String,
    socket: String,
}

impl Drop for AttackBed {
    fn drop(&mut self) {
        drop(self.decap.take());
    }
}

impl AttackBed {
    /// Backends `hosts`, the client's known and new addresses, the
    /// flooder, and `lb run` with `services` (YAML list items) and
    /// `guard.attack`.
    fn new(tag: &str, hosts: &[u8], services: &str) -> Self {
        let pid = std::process::id();
        let instance = format!("atk{pid}{tag}");
        let socket = format!("/run/lb/e2e-attack-{pid}-{tag}.sock");
        let mut bed = Bed::new(hosts);
        for addr in known_sources().into_iter().chain(new_sources()) {
            bed.client.addr("eth0", &format!("{addr}/24"));
        }
        let flooder = Netns::new("fa");
        veth(&flooder, "eth0", &bed.lb, "eth2");
        flooder.addr("eth0", "203.0.113.130/25");
        flooder.ip(&["route", "add", "default", "via", "203.0.113.129"]);
        bed.lb.addr("eth2", "203.0.113.129/25");
        let decap = DecapGuard::attach(flooder.name(), "eth0");
        bed.start_lb(&format!(
            "instance: {instance}\n\
             interfaces: [{{ name: eth0 }}, {{ name: eth1 }}, {{ name: eth2 }}]\n\
             services:\n{services}\
             control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n\
             guard:\n  attack: {{ new_flows_per_second: {NEW_FLOWS_PER_SECOND}, \
             half_open_share: 0.5, quiet_for: {}s, \
             source_flows_per_second: {SOURCE_FLOWS_PER_SECOND} }}\n",
            QUIET_FOR.as_secs()
        ));
        Self {
            decap: Some(decap),
            flooder,
            bed,
            instance,
            socket,
        }
    }

    /// A flood of `kind` from `from` to `to`, out of the flooder's `eth0`
    /// towards the balancer's `eth2`.
    fn spec(&self, kind: Kind, from: &str, to: SocketAddr) -> Spec {
        let SocketAddr::V4(to) = to else {
            panic!("IPv4 only")
        };
        Spec::new(
            "eth0",
            self.bed.lb.mac("eth2"),
            from.parse().unwrap(),
            to,
            kind,
            FLOOD_COUNT,
            FLOOD_TIME,
        )
    }

    /// Starts the flood; `sent` counts its frames as they go.
    fn flood(&self, spec: Spec, sent: &Arc<AtomicU64>) -> JoinHandle<Stats> {
        let sent = Arc::clone(sent);
        self.flooder
            .spawn_thread(move || flood::run(&spec, Some(&sent)).expect("the flood"))
    }

    /// Counters of `kind` frames from `from` on every backend's `eth0`.
    fn arrivals(&self, kind: Kind, from: &str) -> Counters {
        let from: Prefix = from.parse().unwrap();
        Counters(
            self.bed
                .backends
                .iter()
                .map(|backend| {
                    backend
                        .ns
                        .run(move || Arrivals::open("eth0", kind, from).expect("a counter"))
                })
                .collect(),
        )
    }

    /// `vip`'s entry of `lb status`'s `attack` section.
    fn attack(&self, vip: &str) -> serde_json::Value {
        let output = self.bed.lb_command(&["status", "--output", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["attack"]["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["vip"] == vip))
            .cloned()
            .unwrap_or_default()
    }

    fn under_attack(&self, vip: &str) -> bool {
        self.attack(vip)["under_attack"] == true
    }

    /// A verdict reason's counter (`lb stats`).
    fn reason(&self, name: &str) -> u64 {
        let output = self.bed.lb_command(&["stats", "--output", "json"]);
        let counters: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        counters["reasons"][name].as_u64().unwrap_or(0)
    }

    /// Polls `lb status` until `vip` is under attack (3 s at most); the
    /// time since `started` and the frames sent and arrived by then.
    fn detect(
        &self,
        vip: &str,
        started: Instant,
        sent: &AtomicU64,
        arrived: &mut Counters,
    ) -> Detection {
        let detected = wait_until(Duration::from_secs(3), || self.under_attack(vip));
        let after = started.elapsed();
        let sent = sent.load(Ordering::Relaxed);
        let arrived = arrived.total();
        assert!(detected, "{vip} was never reported under attack");
        Detection {
            after,
            sent,
            arrived,
        }
    }

    /// Waits (10 s at most) for `vip` to leave the attack state; how long
    /// it took.
    fn wait_quiet(&self, vip: &str) -> Duration {
        let quiet = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || !self.under_attack(vip)),
            "{vip} stayed under attack"
        );
        quiet.elapsed()
    }
}

/// One counter per backend.
struct Counters(Vec<Arrivals>);

impl Counters {
    fn total(&mut self) -> u64 {
        self.0.iter_mut().map(Arrivals::count).sum()
    }
}

/// When the attack was seen, and the flood's frames sent and arrived by
/// then.
#[derive(Debug)]
struct Detection {
    after: Duration,
    sent: u64,
    arrived: u64,
}

/// What a flood did after its detection.
#[derive(Debug)]
struct AfterDetection {
    sent: u64,
    arrived: u64,
    seconds: f64,
}

impl AfterDetection {
    /// Waits for the flood to end (and 300 ms for stragglers); what was
    /// sent and arrived after `detection`.
    fn measure(
        flooding: JoinHandle<Stats>,
        detection: &Detection,
        arrived: &mut Counters,
    ) -> (Stats, Self) {
        let stats = flooding.join().expect("the flood thread");
        std::thread::sleep(Duration::from_millis(300));
        let seconds = (stats.elapsed.as_secs_f64() - detection.after.as_secs_f64()).max(0.0);
        let after = Self {
            sent: stats.sent - detection.sent,
            arrived: arrived.total() - detection.arrived,
            seconds,
        };
        (stats, after)
    }

    #[allow(clippy::cast_precision_loss, reason = "a percentage")]
    fn percent(&self) -> f64 {
        self.arrived as f64 * 100.0 / self.sent.max(1) as f64
    }
}

/// What a flood left in the balancer's tables, from its pins: spoofed
/// sources (of `from`) proven (`ATTACK_VERIFIED`), and connection-table
/// entries from them (`CONNS_V4`), of which still open. Entries let later
/// packets of their tuple pass as established flows; proven sources pass
/// within their per-source budget.
#[derive(Debug)]
struct Census {
    proven: usize,
    entries: usize,
    open: usize,
}

impl Census {
    fn take(instance: &str, from: &str) -> Self {
        let from: Prefix = from.parse().unwrap();
        let pin = |name: &str| {
            MapData::from_pin(format!("/sys/fs/bpf/lb/{instance}/{name}"))
                .unwrap_or_else(|e| panic!("the pinned {name}: {e}"))
        };
        let verified: HashMap<MapData, Addr, Proven> =
            HashMap::try_from(Map::LruHashMap(pin("ATTACK_VERIFIED"))).expect("an LRU hash");
        let proven = verified
            .keys()
            .filter_map(Result::ok)
            .filter(|addr| {
                addr[..12] == ipv4_mapped([0; 4])[..12]
                    && from.contains(Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
            })
            .count();
        let conns: HashMap<MapData, FlowKeyV4, ConnValue> =
            HashMap::try_from(Map::LruHashMap(pin("CONNS_V4"))).expect("an LRU hash");
        let (mut entries, mut open) = (0, 0);
        for (key, conn) in conns.iter().filter_map(Result::ok) {
            if from.contains(Ipv4Addr::from(key.src)) {
                entries += 1;
                if conn.flags & CONN_CLOSED == 0 {
                    open += 1;
                }
            }
        }
        Self {
            proven,
            entries,
            open,
        }
    }
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} spoofed sources proven, {} connection-table entries from them ({} open)",
            self.proven, self.entries, self.open
        )
    }
}

#[test]
fn a_spoofed_syn_flood_is_detected_and_kept_from_the_backend() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let attack = AttackBed::new(
        "a",
        &[11],
        &format!(
            "  - {{ name: web, vip: {VIP}, port: 80, protocol: tcp, forwarding: nat, \
             backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n"
        ),
    );
    let bed = &attack.bed;
    let mut arrived = attack.arrivals(Kind::Syn, SPOOFED);
    let target = SocketAddr::new(VIP.parse().unwrap(), 80);
    let client = bed.client.run(move || tcp_request(target, None));
    assert!(client.is_some(), "the client connects before the flood");
    assert!(!attack.under_attack(VIP), "not before the flood");

    // `lb trace` shows the flood's drops with their reason.
    let trace = trace_drops(bed, &attack.socket);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flooding = attack.flood(attack.spec(Kind::Syn, SPOOFED, target), &sent);
    let detection = attack.detect(VIP, started, &sent, &mut arrived);
    // A real client during the flood: its handshake before the flood
    // proved it, so it connects at once.
    let connecting = Instant::now();
    let client = bed.client.run(move || tcp_request(target, None));
    let connect_time = connecting.elapsed();
    let (stats, after) = AfterDetection::measure(flooding, &detection, &mut arrived);
    let census = Census::take(&attack.instance, SPOOFED);
    let reported = attack.attack(VIP);
    println!(
        "flood: {stats}; {} reached the backend; detected {} ms after the start ({} sent, {} \
         reached by then); after detection {} sent in {:.1} s, {} reached ({:.4} %); a real client \
         connected in {connect_time:.1?} ({client:?}); lb status: {reported}; {census}",
        detection.arrived + after.arrived,
        detection.after.as_millis(),
        detection.sent,
        detection.arrived,
        after.sent,
        after.seconds,
        after.arrived,
        after.percent(),
    );
    assert!(
        detection.after <= Duration::from_secs(1),
        "detected after {:?}",
        detection.after
    );
    assert!(after.sent >= 1000, "the flood went on after the detection");
    assert!(
        after.arrived * 100 <= after.sent,
        "{} of {} spoofed SYNs reached the backend after detection",
        after.arrived,
        after.sent
    );
    assert!(client.is_some(), "a real client connects during the flood");
    assert!(reported["since_unix"].as_u64().is_some());
    let metrics = bed.lb.metrics_page();
    assert!(
        metrics.contains(&format!("lb_guard_attack{{vip=\"{VIP}\"}} 1")),
        "no attack gauge in /metrics:\n{metrics}"
    );
    let human = bed.lb_command(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(VIP) && human.contains("UNDER ATTACK"),
        "lb status does not say so:\n{human}"
    );
    let traced = trace.wait();
    let traced = String::from_utf8_lossy(&traced.stdout);
    assert!(
        traced.contains("drop_attack_unverified"),
        "lb trace --drops during the flood:\n{traced}"
    );
    let dropped = attack.reason("drop_attack_unverified");
    assert!(
        dropped >= after.sent - after.arrived,
        "{dropped} dropped of {} sent after detection",
        after.sent
    );

    // Quiet again: the attack state ends after quiet_for (3 s) once the
    // last second's rates fall.
    let quiet = attack.wait_quiet(VIP);
    println!("left the attack state {quiet:.1?} after the flood");
    let client = bed.client.run(move || tcp_request(target, None));
    assert!(client.is_some(), "a client connects after the attack");
}

/// `lb trace --drops --limit 5 --output json`, running until five drops.
fn trace_drops(bed: &Bed, socket: &str) -> lb_tests::netns::ChildGuard {
    bed.lb.spawn(
        lb_tests::lb_binary().to_str().unwrap(),
        &[
            "trace", "--drops", "--limit", "5", "--output", "json", "--socket", socket,
        ],
    )
}

//! The periodic walk of the connection table (every 10 s, to reconcile the
//! active-flow counts) runs off the controller's owner thread: with the
//! table full — a million entries — the API and health-driven failover,
//! which are jobs for the same owner, never wait for it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{ConnValue, FlowKeyV4};
use lb_tests::{bed::Bed, netns::wait_until};

const ENTRIES: u32 = 1 << 20;

/// `lb_map_entries{map="CONNS"}`: the count of the last walk (both
/// families' tables).
fn walked(bed: &Bed) -> u64 {
    let page = bed.lb.run(|| {
        let Ok(mut stream) = TcpStream::connect("127.0.0.1:9477") else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n");
        let mut page = String::new();
        let _ = stream.read_to_string(&mut page);
        page
    });
    page.lines()
        .find(|l| l.starts_with("lb_map_entries{map=\"CONNS\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_api_never_waits_for_the_connection_table_walk() {
    let pid = std::process::id();
    let socket = format!("/run/lb/reconcile-{pid}.sock");
    let instance = format!("rc{pid}");
    let mut bed = Bed::new(&[11]);
    bed.start_lb(&format!(
        "instance: {instance}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}], \
         health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }} }}\n\
         dataplane: {{ connection_table_size: {ENTRIES} }}\n\
         control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n"
    ));

    // Failovers with the table empty, for comparison.
    let empty = failovers(&mut bed, &socket, Duration::from_secs(3));
    let slowest_empty = empty.iter().max().copied().unwrap_or_default();
    println!("{} failovers with an empty table: {empty:?}", empty.len());

    // Fill the IPv4 table through its pin, as if a million clients were
    // served.
    let started = Instant::now();
    let pin = format!("/sys/fs/bpf/lb/{instance}/CONNS_V4");
    let data = MapData::from_pin(&pin).expect("the pinned CONNS_V4");
    let mut conns: HashMap<MapData, FlowKeyV4, ConnValue> =
        HashMap::try_from(Map::LruHashMap(data)).expect("CONNS_V4 is an LRU hash");
    let now = lb::dataplane::monotonic_ns();
    for n in 0..ENTRIES {
        let key = FlowKeyV4 {
            src: Ipv4Addr::from(0xc633_6400 | (n >> 16)).octets(),
            dst: [203, 0, 113, 10],
            sport: u16::try_from(n & 0xffff).unwrap(),
            dport: 80,
            proto: 6,
            pad: [0; 3],
        };
        let value = ConnValue {
            backend_id: 0,
            flags: 0,
            last_seen_ns: now,
        };
        conns.insert(key, value, 0).expect("a CONNS_V4 entry");
    }
    drop(conns);
    println!("{ENTRIES} entries written in {:?}", started.elapsed());

    // Ask for the status without pause until a walk has counted them
    // (the walk runs every 10 s), and a little after.
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    let mut seen_at = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let asked = Instant::now();
        lb::api::get(std::path::Path::new(&socket), "/v1/status").expect("lb status");
        slowest = slowest.max(asked.elapsed());
        calls += 1;
        if seen_at.is_none() && calls % 20 == 0 && walked(&bed) > u64::from(ENTRIES / 2) {
            seen_at = Some(Instant::now());
        }
        if seen_at.is_some_and(|at| at.elapsed() > Duration::from_secs(1)) {
            break;
        }
    }
    println!(
        "slowest of {calls} status calls across a walk of {} entries: {slowest:?}",
        walked(&bed)
    );
    assert!(seen_at.is_some(), "no walk counted the table within 30 s");
    assert!(
        slowest < Duration::from_secs(1),
        "a status call waited {slowest:?} for the walk"
    );

    // Health-driven failover across a whole walk period: stop the backend,
    // time until it is seen down, start it, wait until it is up; again and
    // again for 11 s, so some rounds overlap a walk. Compared with the
    // same measured before the table was filled.
    let failovers = failovers(&mut bed, &socket, Duration::from_secs(11));
    let slowest = failovers.iter().max().copied().unwrap_or_default();
    println!(
        "{} failovers (checks every 100 ms, fall 2) with a full table: slowest {slowest:?} \
         (empty table: {slowest_empty:?}), all {failovers:?}",
        failovers.len()
    );
    // The same as with an empty table, give or take a health-check round
    // and scheduling on a loaded machine; a failover queued behind a walk
    // of the old kind waited seconds.
    assert!(
        slowest < slowest_empty + Duration::from_millis(700),
        "a failover waited {slowest:?} with a full table, {slowest_empty:?} with an empty one"
    );
    assert!(bed.lb_process.as_mut().unwrap().running(), "lb run died");
}

/// Stops and restarts backend 11 again and again for `period`; returns how
/// long each stop took to be seen as `down` in `lb status`.
fn failovers(bed: &mut Bed, socket: &str, period: Duration) -> Vec<Duration> {
    let health = |socket: &str| -> String {
        lb::api::get(std::path::Path::new(socket), "/v1/status")
            .map(|s| s["services"][0]["backends"][0]["health"].to_string())
            .unwrap_or_default()
    };
    let mut failovers = Vec::new();
    let until = Instant::now() + period;
    while Instant::now() < until {
        bed.stop_backend(11);
        let stopped = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || health(socket) == "\"down\""),
            "the stopped backend was never seen down"
        );
        failovers.push(stopped.elapsed());
        bed.start_backend(11);
        assert!(
            wait_until(Duration::from_secs(10), || health(socket) == "\"up\""),
            "the backend never came back"
        );
    }
    failovers
}

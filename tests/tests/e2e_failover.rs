//! Backend failover with real traffic: health checks take a stopped backend
//! out of the tables and bring it back after `rise`; standby tiers take over
//! when the primary tier is down and hand back; a broken reload changes
//! nothing. Failover times are printed, and each is held to the bound its
//! health check's configuration gives (interval × fall + timeout to go,
//! interval × rise + timeout to come back) plus [`SLACK`].

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bed::{Bed, HeldConnection, tcp_request},
    netns::wait_until,
};

const VIP: &str = "203.0.113.10:80";

/// The health check's settings.
const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Slack added to each bound the configuration gives, as the demo's
/// (tests/examples/demo/scenario.rs): the change is seen by polling
/// `lb status` (a process started for each look, every 20 ms) on a shared
/// machine.
const SLACK: Duration = Duration::from_millis(500);

/// The longest a stopped backend can stay up: its last good check just
/// before the stop, then `fall` failed ones an interval apart, the last
/// taking up to the timeout.
fn down_bound() -> Duration {
    INTERVAL * FALL + TIMEOUT + SLACK
}

/// The longest a restarted backend can stay down: `rise` good checks an
/// interval apart, the first within an interval of the restart.
fn up_bound() -> Duration {
    INTERVAL * RISE + TIMEOUT + SLACK
}

/// Panics unless `took` (what `what` took) is within `bound`.
fn assert_within(what: &str, took: Duration, bound: Duration) {
    assert!(
        took <= bound,
        "{what} took {took:?}; the bound is {bound:?}"
    );
}

fn config(tag: &str, backends: &str) -> String {
    format!(
        "instance: fo{tag}{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - name: web\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n\
         \x20   backends: {backends}\n\
         \x20   health_check: {{ kind: tcp, interval: {interval}ms, timeout: {timeout}ms, \
         rise: {RISE}, fall: {FALL} }}\n\
         control: {{ socket: /run/lb/fo-{tag}-{pid}.sock }}\n",
        interval = INTERVAL.as_millis(),
        timeout = TIMEOUT.as_millis(),
        pid = std::process::id()
    )
}

/// The health of every backend by name (`b11`, ...), from `lb status`.
fn health(bed: &Bed) -> BTreeMap<String, String> {
    bed.backend_status()
        .into_iter()
        .map(|(name, b)| (name, b["health"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn wait_health(bed: &Bed, backend: &str, want: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        health(bed).get(backend).map(String::as_str) == Some(want)
    })
}

/// `n` requests; who served them (or "failed").
fn requests(bed: &Bed, n: u32) -> BTreeMap<String, u32> {
    let target: SocketAddr = VIP.parse().unwrap();
    bed.client.run(move || {
        let mut served = BTreeMap::new();
        for _ in 0..n {
            let name = tcp_request(target, None).unwrap_or_else(|| "failed".into());
            *served.entry(name).or_default() += 1;
        }
        served
    })
}

/// One result of the steady client: when it started, who answered.
type Sample = (Instant, Option<String>);

/// Requests until `stop`, counting them in `made` as they finish.
fn steady_client(
    bed: &Bed,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    let target: SocketAddr = VIP.parse().unwrap();
    bed.client.spawn_thread(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) && samples.len() < 50_000 {
            let at = Instant::now();
            samples.push((at, tcp_request(target, None)));
            made.fetch_add(1, Ordering::Relaxed);
        }
        samples
    })
}

/// Waits until the steady client has made `more` requests beyond those
/// counted now (each bounded by its connect timeout).
fn wait_requests(made: &AtomicUsize, more: usize) {
    let from = made.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(30), || made.load(Ordering::Relaxed)
            >= from + more),
        "the steady client made {} of {more} requests in 30 s",
        made.load(Ordering::Relaxed) - from
    );
}

#[test]
fn a_failed_backend_leaves_and_returns_after_rise() {
    let mut bed = Bed::new(&[11, 12, 13]);
    bed.start_lb(&config(
        "b",
        "[{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }, { address: 192.0.2.13, port: 8080 }]",
    ));
    for backend in ["b11", "b12", "b13"] {
        assert!(
            wait_health(&bed, backend, "up"),
            "{backend} never came up: {:?}",
            health(&bed)
        );
    }
    // Connections open across the failure, on every backend.
    let target: SocketAddr = VIP.parse().unwrap();
    let held: Vec<HeldConnection> = bed.client.run(move || {
        (0..30)
            .filter_map(|_| HeldConnection::open(target))
            .collect()
    });
    assert_eq!(held.len(), 30);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let client = steady_client(&bed, Arc::clone(&stop), Arc::clone(&made));
    wait_requests(&made, 20);

    let stopped = Instant::now();
    bed.stop_backend(12);
    assert!(wait_health(&bed, "b12", "down"), "b12 never marked down");
    // `lb status` showed it down: the tables were rewritten by then (under
    // the same lock), so every request started from now on avoids it.
    let seen_down = Instant::now();
    let detected = seen_down - stopped;
    wait_requests(&made, 100);
    stop.store(true, Ordering::Relaxed);
    let samples = client.join().unwrap();

    let last_failure = samples
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(at, _)| *at)
        .max();
    let failures = samples.iter().filter(|(_, r)| r.is_none()).count();
    let window = last_failure.map_or(Duration::ZERO, |at| at.saturating_duration_since(stopped));
    println!(
        "failover: b12 marked down {detected:?} after its server stopped; \
         last failed connection {window:?} after the stop; {failures} of {} failed",
        samples.len()
    );
    assert_within(
        "b12 marked down after its server stopped",
        detected,
        down_bound(),
    );
    // After detection no new connection goes to b12, and none fails.
    let after: Vec<&Sample> = samples.iter().filter(|(at, _)| *at > seen_down).collect();
    assert!(
        after.len() >= 100,
        "{} requests after detection",
        after.len()
    );
    for (at, result) in after {
        assert!(
            result.as_deref().is_some_and(|b| b != "b12"),
            "{result:?} at {:?}",
            at.duration_since(stopped)
        );
    }
    // Connections held on the other backends complete; b12's cannot.
    let mut held_results = BTreeMap::<String, (u32, u32)>::new();
    let finished: Vec<(String, bool)> = bed.client.run(move || {
        held.into_iter()
            .map(|c| {
                let backend = c.backend.clone();
                (backend, c.finish().is_some())
            })
            .collect()
    });
    for (backend, ok) in finished {
        let entry = held_results.entry(backend.clone()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        if backend != "b12" {
            assert!(
                ok,
                "a connection held on {backend} was broken by b12's failure"
            );
        }
    }
    println!("held connections (ok, broken) by backend: {held_results:?}");

    // Back: after `rise` good checks it gets flows again.
    let restarted = Instant::now();
    bed.start_backend(12);
    assert!(wait_health(&bed, "b12", "up"), "b12 never came back");
    let recovered = restarted.elapsed();
    println!(
        "recovery: b12 back in the table {recovered:?} after its server restarted (bound {:?})",
        up_bound()
    );
    assert_within("b12 back after its restart", recovered, up_bound());
    let served = requests(&bed, 300);
    assert!(!served.contains_key("failed"), "{served:?}");
    assert!(
        served.get("b12").copied().unwrap_or(0) > 50,
        "b12 gets no flows again: {served:?}"
    );
}

#[test]
fn standby_tier_takes_over_and_hands_back() {
    let mut bed = Bed::new(&[11, 12, 21]);
    bed.start_lb(&config(
        "t",
        "[{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }, { address: 192.0.2.21, port: 8080, tier: 1 }]",
    ));
    for backend in ["b11", "b12", "b21"] {
        assert!(
            wait_health(&bed, backend, "up"),
            "{backend}: {:?}",
            health(&bed)
        );
    }
    let served = requests(&bed, 200);
    assert!(
        !served.contains_key("b21") && !served.contains_key("failed"),
        "standby served: {served:?}"
    );

    let stopped = Instant::now();
    bed.stop_backend(11);
    bed.stop_backend(12);
    assert!(wait_health(&bed, "b11", "down") && wait_health(&bed, "b12", "down"));
    let took = stopped.elapsed();
    println!(
        "tier 0 down, tier 1 serving after {took:?} (bound {:?})",
        down_bound()
    );
    assert_within(
        "tier 0 marked down after its servers stopped",
        took,
        down_bound(),
    );
    let served = requests(&bed, 200);
    assert_eq!(
        served.get("b21"),
        Some(&200),
        "tier 1 did not take over: {served:?}"
    );

    bed.start_backend(11);
    bed.start_backend(12);
    assert!(wait_health(&bed, "b11", "up") && wait_health(&bed, "b12", "up"));
    let served = requests(&bed, 200);
    assert!(
        !served.contains_key("b21") && !served.contains_key("failed"),
        "no failback: {served:?}"
    );
}

#[test]
fn a_broken_reload_changes_nothing() {
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config(
        "r",
        "[{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }]",
    ));
    for backend in ["b11", "b12"] {
        assert!(
            wait_health(&bed, backend, "up"),
            "{backend}: {:?}",
            health(&bed)
        );
    }
    let before = bed.lb_command(&["status", "--output", "json"]).stdout;
    let path = bed.config.as_ref().unwrap().path().to_path_buf();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("port: 80\n", "port: eighty\n")).unwrap();
    let lb = bed.lb_process.as_ref().unwrap();
    lb.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || lb
            .stderr_so_far()
            .contains("reload refused")),
        "no refused reload logged in 10 s: {}",
        lb.stderr_so_far()
    );
    let after = bed.lb_command(&["status", "--output", "json"]).stdout;
    let strip = |json: &[u8]| -> serde_json::Value {
        let mut value: serde_json::Value = serde_json::from_slice(json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)));
        for backend in value["services"][0]["backends"].as_array_mut().unwrap() {
            backend["last_check"] = serde_json::Value::Null; // latencies move
        }
        value
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "a broken reload changed the state"
    );
    let served = requests(&bed, 100);
    assert!(!served.contains_key("failed"), "{served:?}");
    let output = bed.stop_lb();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("reload refused") && log.contains("services[0].port"),
        "{log}"
    );
}

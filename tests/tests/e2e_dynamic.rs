//! The dynamic schedulers with real traffic: `least-conn` moves new flows
//! towards the backend with fewer active flows; `resource` towards the
//! backend whose `lb agent` reports less load. Only new flows move.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_tests::{
    TempFile,
    bed::{Bed, HeldConnection, tcp_request},
    lb_binary,
    netns::wait_until,
};

fn config(tag: &str, scheduler: &str) -> String {
    config_with(
        tag,
        scheduler,
        "{ address: 192.0.2.11, port: 8080 }, { address: 192.0.2.12, port: 8080 }",
    )
}

fn config_with(tag: &str, scheduler: &str, backends: &str) -> String {
    format!(
        "instance: dyn{tag}{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: {scheduler}, \
         backends: [{backends}] }}\n\
         control: {{ socket: /run/lb/dyn-{tag}-{pid}.sock }}\n",
        pid = std::process::id()
    )
}

/// b11, b12 and b13 at `weight: 1`, as the users of keepalived and
/// `HAProxy` write it.
const UNIT_WEIGHTS: &str = "{ address: 192.0.2.11, port: 8080, weight: 1 }, \
     { address: 192.0.2.12, port: 8080, weight: 1 }, { address: 192.0.2.13, port: 8080, weight: 1 }";

/// Effective weights by backend name (`b11`, ...), from `lb status`.
fn weights(bed: &Bed) -> BTreeMap<String, u64> {
    bed.backend_status()
        .into_iter()
        .map(|(name, b)| (name, b["effective_weight"].as_u64().unwrap_or(0)))
        .collect()
}

/// `n` requests (60 s at most), counted by the backend that served each.
fn requests(bed: &Bed, n: u32) -> BTreeMap<String, u32> {
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    bed.client.run(move || {
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        let mut served = BTreeMap::new();
        for _ in 0..n {
            if std::time::Instant::now() > deadline {
                *served.entry("timed out".to_string()).or_default() += 1;
                break;
            }
            *served
                .entry(tcp_request(target, None).unwrap_or_else(|| "failed".into()))
                .or_default() += 1;
        }
        served
    })
}

#[test]
fn least_conn_sends_new_flows_to_the_less_busy_backend() {
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config("lc", "least-conn"));
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let held: Vec<HeldConnection> = bed.client.run(move || {
        (0..40)
            .filter_map(|_| HeldConnection::open(target))
            .collect()
    });
    assert_eq!(held.len(), 40);
    // Close b12's connections: b11 keeps about 20 active flows, b12 none.
    let (on_b11, on_b12): (Vec<_>, Vec<_>) = held.into_iter().partition(|c| c.backend == "b11");
    assert!(
        on_b11.len() >= 5 && !on_b12.is_empty(),
        "{} / {}",
        on_b11.len(),
        on_b12.len()
    );
    assert!(
        bed.client
            .run(move || on_b12.into_iter().all(|c| c.finish().is_some()))
    );
    let shifted = wait_until(Duration::from_secs(10), || {
        let w = weights(&bed);
        w.get("b12").copied().unwrap_or(0) > 2 * w.get("b11").copied().unwrap_or(0)
    });
    assert!(
        shifted,
        "weights did not follow the active flows: {:?}",
        weights(&bed)
    );
    println!("least-conn weights with b11 busy: {:?}", weights(&bed));
    let served = requests(&bed, 200);
    assert!(!served.contains_key("failed"), "{served:?}");
    assert!(
        served.get("b12").copied().unwrap_or(0) >= 120,
        "new flows not steered: {served:?}"
    );
    // The busy backend's established flows were never moved.
    assert!(
        bed.client
            .run(move || on_b11.into_iter().all(|c| c.finish().is_some()))
    );
}

#[test]
fn resource_follows_the_agents_reported_load() {
    let mut bed = Bed::new(&[11, 12]);
    let loads = [(11, "0.9"), (12, "0.1")]
        .map(|(host, load)| (host, TempFile::new(&format!("load{host}"), load)));
    let agents = start_agents(&bed, &loads);
    bed.start_lb(&config("rs", "resource"));
    let shifted = wait_until(Duration::from_secs(10), || {
        let w = weights(&bed);
        w.get("b12").copied().unwrap_or(0) > 2 * w.get("b11").copied().unwrap_or(0)
    });
    assert!(
        shifted,
        "weights did not follow the agents: {:?}",
        weights(&bed)
    );
    println!(
        "resource weights with b11 at load 0.9, b12 at 0.1: {:?}",
        weights(&bed)
    );
    let served = requests(&bed, 200);
    assert!(!served.contains_key("failed"), "{served:?}");
    assert!(
        served.get("b12").copied().unwrap_or(0) >= 120,
        "new flows not steered: {served:?}"
    );
    drop(agents);
}

/// An `lb agent` on every backend of `bed`, reporting the load in its file.
fn start_agents(bed: &Bed, loads: &[(u8, TempFile)]) -> Vec<lb_tests::netns::ChildGuard> {
    let lb = lb_binary();
    bed.backends
        .iter()
        .map(|backend| {
            let file = &loads.iter().find(|(h, _)| *h == backend.host).unwrap().1;
            backend.ns.spawn(
                lb.to_str().unwrap(),
                &[
                    "agent",
                    "--listen",
                    "0.0.0.0:9478",
                    "--load-file",
                    file.path().to_str().unwrap(),
                ],
            )
        })
        .collect()
}

/// 600 new connections to the unit-weight bed, every one served: how many
/// b11, b12 and b13 each took.
fn unit_weight_shares(bed: &Bed, scheduler: &str) -> [u32; 3] {
    let served = requests(bed, 600);
    println!("{scheduler} at weight 1, new flows: {served:?}");
    let count = |name: &str| served.get(name).copied().unwrap_or(0);
    let shares = [count("b11"), count("b12"), count("b13")];
    assert_eq!(shares.iter().sum::<u32>(), 600, "{served:?}");
    shares
}

/// `weight: 1` on every backend balances like `weight: 100`: the table
/// counts in hundredths, so a unit weight can go down. Before, every
/// effective weight stayed 1 and new flows split evenly (100 / 107 / 93).
#[test]
fn resource_balances_unit_weights() {
    let mut bed = Bed::new(&[11, 12, 13]);
    let loads = [(11, "0.1"), (12, "0.5"), (13, "0.9")]
        .map(|(host, load)| (host, TempFile::new(&format!("load{host}"), load)));
    let agents = start_agents(&bed, &loads);
    bed.start_lb(&config_with("ru", "resource", UNIT_WEIGHTS));
    // Targets 90 / 50 / 10 hundredths; halfway each second.
    let shifted = wait_until(Duration::from_secs(15), || {
        let w = weights(&bed);
        w.get("b11").copied().unwrap_or(0) > 5 * w.get("b13").copied().unwrap_or(u64::MAX / 8)
    });
    let status = weights(&bed);
    assert!(
        shifted,
        "weights did not follow the agents at weight 1: {status:?}"
    );
    println!("resource weights at weight 1, loads 0.1 / 0.5 / 0.9: {status:?}");
    // Shares about 58 / 33 / 9 %; even, they would be 200 each.
    let [b11, b12, b13] = unit_weight_shares(&bed, "resource");
    assert!(
        b11 >= 290 && b13 <= 100 && b11 > b12,
        "new flows not steered by load: {:?}",
        [b11, b12, b13]
    );
    drop(agents);
}

/// `least-conn` at `weight: 1` with 16 / 8 / 4 flows held: every backend
/// is above the share where a unit weight rounded up, so before the table
/// counted hundredths no weight moved.
#[test]
fn least_conn_balances_unit_weights() {
    let mut bed = Bed::new(&[11, 12, 13]);
    bed.start_lb(&config_with("lu", "least-conn", UNIT_WEIGHTS));
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let wanted = BTreeMap::from([("b11", 16_usize), ("b12", 8), ("b13", 4)]);
    let held: Vec<HeldConnection> = bed.client.run(move || {
        let mut held: Vec<HeldConnection> = Vec::new();
        let mut extra = Vec::new();
        // 150 at most: each backend gets about a third.
        for _ in 0..150 {
            if wanted
                .iter()
                .all(|(name, n)| held.iter().filter(|c| c.backend == *name).count() >= *n)
            {
                break;
            }
            let Some(connection) = HeldConnection::open(target) else {
                continue;
            };
            let have = held
                .iter()
                .filter(|c| c.backend == connection.backend)
                .count();
            if have
                < wanted
                    .get(connection.backend.as_str())
                    .copied()
                    .unwrap_or(0)
            {
                held.push(connection);
            } else {
                extra.push(connection);
            }
        }
        for connection in extra {
            let _ = connection.finish();
        }
        held
    });
    let per_backend = |name: &str| held.iter().filter(|c| c.backend == name).count();
    assert_eq!(
        (per_backend("b11"), per_backend("b12"), per_backend("b13")),
        (16, 8, 4)
    );
    // Targets about 0.68 / 1.11 / 1.74 of the configured weight.
    let shifted = wait_until(Duration::from_secs(15), || {
        let w = weights(&bed);
        w.get("b13").copied().unwrap_or(0) > 2 * w.get("b11").copied().unwrap_or(u64::MAX / 4)
    });
    let status = weights(&bed);
    assert!(
        shifted,
        "weights did not follow the active flows at weight 1: {status:?}"
    );
    println!("least-conn weights at weight 1, 16 / 8 / 4 flows: {status:?}");
    // Shares about 20 / 31 / 49 %; even, they would be 200 each.
    let [b11, b12, b13] = unit_weight_shares(&bed, "least-conn");
    assert!(
        b13 >= 230 && b11 <= 170 && b13 > b12,
        "new flows not steered to the fewest flows: {:?}",
        [b11, b12, b13]
    );
    assert!(
        bed.client
            .run(move || held.into_iter().all(|c| c.finish().is_some()))
    );
}

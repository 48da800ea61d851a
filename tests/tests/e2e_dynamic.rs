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
    format!(
        "instance: dyn{tag}{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: {scheduler}, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
         control: {{ socket: /run/lb/dyn-{tag}-{pid}.sock }}\n",
        pid = std::process::id()
    )
}

/// Effective weights by backend name (`b11`, ...), from `lb status`.
fn weights(bed: &Bed) -> BTreeMap<String, u64> {
    bed.backend_status()
        .into_iter()
        .map(|(name, b)| (name, b["effective_weight"].as_u64().unwrap_or(0)))
        .collect()
}

fn requests(bed: &Bed, n: u32) -> BTreeMap<String, u32> {
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    bed.client.run(move || {
        let mut served = BTreeMap::new();
        for _ in 0..n {
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
    let lb = lb_binary();
    let loads = [(11, "0.9"), (12, "0.1")]
        .map(|(host, load)| (host, TempFile::new(&format!("load{host}"), load)));
    let agents: Vec<_> = bed
        .backends
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
        .collect();
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

//! Active-active: two balancers, two VRRP instances (`ha.instances`). A is
//! master of instance 51 (the clients' gateway for the NAT VIP, and the
//! backends' gateway), B of instance 52 (the clients' gateway for the DSR
//! VIP), so both forward at once. When A dies, B holds both groups; when A
//! returns it takes its own back (preempt) — and established connections
//! in both groups carry on through every move; SIGTERM hands a group over. Tracking and fault: health
//! checks failing on one balancer (an nftables rule in its namespace only)
//! lower its priority, and the peer takes its group; its interface down,
//! or without the address VRRP is sent from, puts it in `fault` until it
//! comes back. Times are printed, not asserted.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    TempFile,
    bed::{HeldConnection, tcp_request},
    hapair::{HaBed, Layout, Member, wait_requests},
    lbrun::LbRun,
    netns::{Netns, wait_until},
};

/// Instance 51's VIP (nat) and instance 52's (dsr).
const NAT: &str = "203.0.113.10:80";
const DSR: &str = "203.0.113.11:80";

/// The bed ([`HaBed`]) with two VRRP instances: the client reaches the
/// NAT VIP through 198.51.100.1 (instance 51) and the DSR VIP through
/// 198.51.100.3 (instance 52); the backends' default route is 192.0.2.254
/// (instance 51).
struct ActiveBed(HaBed);

impl std::ops::Deref for ActiveBed {
    type Target = HaBed;
    fn deref(&self) -> &HaBed {
        &self.0
    }
}

impl std::ops::DerefMut for ActiveBed {
    fn deref_mut(&mut self) -> &mut HaBed {
        &mut self.0
    }
}

impl ActiveBed {
    /// `tag` keeps parallel tests apart; `checks` adds a TCP health check
    /// to both services (fast: 100 ms, fall 2, rise 2).
    fn new(tag: &str, checks: bool) -> Self {
        let check = if checks {
            ", health_check: { kind: tcp, interval: 100ms, timeout: 100ms, rise: 2, fall: 2 }"
        } else {
            ""
        };
        let layout = Layout {
            ns: "a".into(),
            name: "aa".into(),
            tag: tag.into(),
            routes: vec![
                ("203.0.113.10/32", "198.51.100.1"),
                ("203.0.113.11/32", "198.51.100.3"),
            ],
            ipv6: false,
        };
        Self(HaBed::new(&layout, |member| {
            let Member {
                index: i,
                peer,
                instance,
                socket,
            } = *member;
            let [first, second] = if i == 1 { [150, 100] } else { [100, 150] };
            format!(
                "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
                 \x20 - {{ name: nat, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, \
                 backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}]{check} }}\n\
                 \x20 - {{ name: dsr, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
                 backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}]{check} }}\n\
                 ha:\n\
                 \x20 interface: eth0\n\
                 \x20 advert_interval: 100ms\n\
                 \x20 unicast_peers: [{peer}]\n\
                 \x20 instances:\n\
                 \x20   - {{ virtual_router_id: 51, priority: {first}, \
                 floating_ips: [198.51.100.1/24, 192.0.2.254/24], \
                 track: [{{ service: nat, weight: 60 }}] }}\n\
                 \x20   - {{ virtual_router_id: 52, priority: {second}, \
                 floating_ips: [198.51.100.3/24], track: [{{ service: dsr, weight: 60 }}] }}\n\
                 control: {{ socket: {socket}, metrics: 127.0.0.1:9477 }}\n"
            )
        }))
    }

    /// Balancer `i`'s `ha.instances` entry for `vrid` (`null` if none).
    fn instance(&self, i: usize, vrid: u64) -> serde_json::Value {
        let status = self.balancers[i].status();
        status["ha"]["instances"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|x| x["virtual_router_id"].as_u64() == Some(vrid))
            })
            .cloned()
            .unwrap_or_default()
    }

    /// The states of instances 51 and 52 on balancer `i`.
    fn states(&self, i: usize) -> [String; 2] {
        [51, 52].map(|vrid| {
            self.instance(i, vrid)["state"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
    }

    /// Waits (10 s at most) until balancer 0 shows `a` and balancer 1
    /// shows `b` for instances 51 and 52; the time it took.
    fn wait_states(&self, a: [&str; 2], b: [&str; 2], what: &str) -> Duration {
        let from = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || self.states(0) == a
                && self.states(1) == b),
            "{what}: A {:?}, B {:?}; wanted {a:?} / {b:?}",
            self.states(0),
            self.states(1)
        );
        from.elapsed()
    }

    /// Neighbours, addresses and logs, for a failure message.
    fn diagnose(&mut self) -> String {
        let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
        let mut out = format!("client neigh:\n{}", text(self.client.ip(&["neigh"])));
        for backend in &self.backends {
            let _ = write!(out, "backend neigh:\n{}", text(backend.ns.ip(&["neigh"])));
        }
        for (i, b) in self.balancers.iter_mut().enumerate() {
            let _ = write!(
                out,
                "balancer {i} addr:\n{}neigh:\n{}stats:\n{}log:\n{}\n",
                text(b.ns.ip(&["-4", "addr", "show", "dev", "eth0"])),
                text(b.ns.ip(&["neigh"])),
                text(b.lb(&["stats", "--socket", &b.socket])),
                b.process
                    .as_ref()
                    .map(lb_tests::netns::ChildGuard::stderr_so_far)
                    .unwrap_or_default()
            );
        }
        out
    }

    /// Whether `vip` answers the client now.
    fn answers(&self, vip: &str) -> bool {
        let target: SocketAddr = vip.parse().unwrap();
        self.client.run(move || tcp_request(target, None)).is_some()
    }

    /// Ten connections to each VIP, opened now and held.
    fn hold(&self) -> Vec<HeldConnection> {
        self.client.run(|| {
            [NAT, DSR]
                .iter()
                .flat_map(|vip| {
                    let target: SocketAddr = vip.parse().unwrap();
                    (0..10).filter_map(move |_| HeldConnection::open(target))
                })
                .collect()
        })
    }

    /// Completes `held`; how many ended with the backend's answer.
    fn finish(&self, held: Vec<HeldConnection>) -> usize {
        self.client
            .run(move || held.into_iter().filter_map(HeldConnection::finish).count())
    }
}

/// `lb ha` (human and JSON) and the per-instance metrics of B, backup of
/// 51 and master of 52.
fn show_ha(b: &LbRun) {
    let json = b.lb(&["ha", "--output", "json", "--socket", &b.socket]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_default();
    assert_eq!(json["instances"][1]["virtual_router_id"], 52, "{json}");
    assert_eq!(json["instances"][1]["master"], "192.0.2.2", "{json}");
    let human = b.lb(&["ha", "--socket", &b.socket]);
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    println!("lb ha on B:\n{human}");
    for line in [
        "vrrp 51 on eth0: backup since ",
        "priority 100 (configured 100), master 192.0.2.1, peer 192.0.2.1",
        "vrrp 52 on eth0: master since ",
        "track dsr: 2 healthy (needs 1)",
    ] {
        assert!(human.contains(line), "no {line:?} in lb ha:\n{human}");
    }
    let metrics = b.ns.metrics_page();
    for line in [
        "lb_ha_instance_state{vrid=\"51\",state=\"backup\"} 1",
        "lb_ha_instance_state{vrid=\"52\",state=\"master\"} 1",
        "lb_ha_instance_priority{vrid=\"52\",kind=\"effective\"} 150",
        "lb_ha_instance_transitions_total{vrid=\"52\"} 2",
        "lb_ha_state{state=\"backup\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
    }
}

/// Connects to both VIPs in turn until `stop`; (start, answered) each.
fn steady_client(
    bed: &ActiveBed,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(Instant, bool)>> {
    let targets: Vec<SocketAddr> = [NAT, DSR].iter().map(|v| v.parse().unwrap()).collect();
    bed.client.spawn_thread(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) && samples.len() < 50_000 {
            let target = targets[samples.len() % 2];
            samples.push((Instant::now(), tcp_request(target, None).is_some()));
            made.fetch_add(1, Ordering::Relaxed);
        }
        samples
    })
}

/// Failed requests of `samples` after `from`, and how long after it the
/// last one started.
fn failures_after(samples: &[(Instant, bool)], from: Instant) -> (usize, Duration) {
    let failed: Vec<Duration> = samples
        .iter()
        .filter(|(at, ok)| *at >= from && !ok)
        .map(|(at, _)| *at - from)
        .collect();
    (
        failed.len(),
        failed.iter().max().copied().unwrap_or_default(),
    )
}

/// The pair as it should be once up: what each reports, what `lb ha` and
/// the metrics show, and each VIP answering through its own master.
fn check_pair(bed: &mut ActiveBed) {
    // Both forward: each VIP answers through its own master.
    let a = bed.instance(0, 51);
    assert_eq!(a["master"], "192.0.2.1", "{a}");
    assert_eq!(a["effective_priority"], 150, "{a}");
    let b = bed.instance(1, 51);
    assert_eq!(b["master"], "192.0.2.1", "{b}");
    assert_eq!(b["peer"], "192.0.2.1", "{b}");
    // The single-instance fields describe the first instance.
    let ha = bed.balancers[1].status()["ha"].clone();
    assert_eq!(ha["state"], "backup", "{ha}");
    assert_eq!(ha["priority"], 100, "{ha}");
    show_ha(&bed.balancers[1]);
    // Whichever instance took 198.51.100.0/24 first on A, its stepping
    // down must not take the other's address of that subnet with it.
    let promote = bed.balancers[0]
        .ns
        .exec("sysctl", &["-n", "net.ipv4.conf.eth0.promote_secondaries"]);
    assert_eq!(String::from_utf8_lossy(&promote.stdout).trim(), "1");
    assert!(
        wait_until(Duration::from_secs(10), || bed.answers(NAT)
            && bed.answers(DSR)),
        "the VIPs do not answer through their masters: nat {}, dsr {}\n{}",
        bed.answers(NAT),
        bed.answers(DSR),
        bed.diagnose()
    );
}

#[test]
fn each_balancer_masters_its_group_and_holds_both_while_the_other_is_down() {
    let mut bed = ActiveBed::new("k", false);
    bed.start(0);
    bed.start(1);
    bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "no active-active pair",
    );
    check_pair(&mut bed);
    let held = bed.hold();
    assert_eq!(held.len(), 20, "connections through both masters");
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let client = steady_client(&bed, Arc::clone(&stop), Arc::clone(&made));
    wait_requests(&made, 20);

    // A dies (SIGKILL) and the service manager releases its addresses.
    let killed = Instant::now();
    bed.balancers[0].stop(libc::SIGKILL);
    let release = bed.balancers[0].lb(&[
        "release",
        "-c",
        bed.balancers[0].config.path().to_str().unwrap(),
    ]);
    assert!(release.status.success(), "{release:?}");
    assert!(
        wait_until(Duration::from_secs(10), || bed.states(1)
            == ["master", "master"]),
        "B did not take instance 51: {:?}",
        bed.states(1)
    );
    let took = killed.elapsed();
    wait_requests(&made, 60);
    // Connections opened through A finish through B.
    assert_eq!(bed.finish(held), 20, "established flows broke when A died");
    let held = bed.hold();
    assert_eq!(held.len(), 20, "connections through B alone");

    // A returns and takes its group back; B keeps its own.
    let restarted = Instant::now();
    bed.start(0);
    bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "A did not take instance 51 back",
    );
    let back = restarted.elapsed();
    let back_at = Instant::now();
    wait_requests(&made, 60);
    stop.store(true, Ordering::Relaxed);
    let samples = client.join().unwrap();
    assert_eq!(
        bed.finish(held),
        20,
        "established flows broke when A returned"
    );
    let (failed_after_kill, last_failure) = failures_after(&samples, killed);
    let (lost_back, _) = failures_after(&samples, back_at);
    println!(
        "active-active: B master of both {took:?} after SIGKILL of A; A master of 51 again \
         {back:?} after its restart; {failed_after_kill} of {} requests failed, the last {last_failure:?} \
         after the kill, {lost_back} after A was back",
        samples.len()
    );
    assert_eq!(lost_back, 0, "requests failed after A took its group back");
    let ha = bed.instance(0, 51);
    assert!(
        ha["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("preempted lower priority 100"),
        "{ha}"
    );
    assert_eq!(bed.instance(1, 51)["transitions"], 3, "B flapped");

    // SIGTERM on B hands over its instance (priority 0) at once.
    let stopped = Instant::now();
    assert!(bed.balancers[1].stop(libc::SIGTERM).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || bed.states(0)
            == ["master", "master"]),
        "A did not take instance 52 from a stopping B: {:?}",
        bed.states(0)
    );
    println!(
        "active-active: A master of both {:?} after SIGTERM of B",
        stopped.elapsed()
    );
    assert!(bed.answers(DSR), "A does not serve instance 52's VIP");
}

/// Drops balancer `ns`'s health checks (TCP to the backends' port 8080
/// and 80 from its own stack; forwarded traffic is not touched).
fn fail_health_checks(ns: &Netns) {
    let rules = "table inet lbt_track {\n\
                 chain out { type filter hook output priority 0; \
                 ip daddr { 192.0.2.11, 192.0.2.12 } tcp dport { 80, 8080 } drop; }\n\
                 }\n";
    let file = TempFile::new("track.nft", rules);
    let output = ns.exec("nft", &["-f", file.path().to_str().unwrap()]);
    assert!(output.status.success(), "nft: {output:?}");
}

fn restore_health_checks(ns: &Netns) {
    let output = ns.exec("nft", &["delete", "table", "inet", "lbt_track"]);
    assert!(output.status.success(), "nft: {output:?}");
}

#[test]
fn failing_health_checks_lower_the_priority_and_a_lost_link_or_address_is_a_fault() {
    let mut bed = ActiveBed::new("t", true);
    bed.start(0);
    bed.start(1);
    bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "no active-active pair",
    );

    // A cannot reach the backends: both its tracks fail, its priorities
    // drop by 60 (150 -> 90 in 51, below B's 100), and B takes 51.
    fail_health_checks(&bed.balancers[0].ns);
    let took = bed.wait_states(
        ["backup", "backup"],
        ["master", "master"],
        "B did not take over from a balancer whose checks fail",
    );
    let a = bed.instance(0, 51);
    assert_eq!(a["effective_priority"], 90, "{a}");
    assert_eq!(a["priority"], 150, "{a}");
    let why = a["priority_reason"].as_str().unwrap_or("");
    assert!(
        why.contains("-60: service nat has 0 healthy backends (needs 1)"),
        "{a}"
    );
    assert_eq!(a["tracks"][0]["failing"], true, "{a}");
    assert_eq!(bed.instance(0, 52)["effective_priority"], 40);
    assert!(bed.answers(NAT), "B does not serve instance 51's VIP");

    // Checks pass again: A's priority returns and it preempts B in 51.
    restore_health_checks(&bed.balancers[0].ns);
    let back = bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "A did not take instance 51 back",
    );
    let a = bed.instance(0, 51);
    assert_eq!(a["effective_priority"], 150, "{a}");
    // Backup, master, backup (lowered), master: no flapping.
    assert_eq!(a["transitions"], 4, "{a}");
    println!(
        "tracking: B master of 51 {took:?} after A's checks failed, A again {back:?} after they passed"
    );

    // B's interface goes down: both its instances in fault, addresses
    // removed, A holds both groups.
    let b = &bed.balancers[1].ns;
    b.ip(&["link", "set", "eth0", "down"]);
    let fault = bed.wait_states(
        ["master", "master"],
        ["fault", "fault"],
        "link down did not put B in fault",
    );
    let b52 = bed.instance(1, 52);
    assert_eq!(b52["reason"], "fault: interface eth0 is down", "{b52}");
    assert_eq!(b52["master"], serde_json::Value::Null, "{b52}");
    let held =
        String::from_utf8_lossy(&b.ip(&["-4", "addr", "show", "dev", "eth0"]).stdout).to_string();
    assert!(
        !held.contains("198.51.100.3"),
        "B kept its floating IP in fault: {held}"
    );
    assert!(bed.answers(DSR), "A does not serve instance 52's VIP");

    // Up again: backup first, then B takes 52 back (preempt).
    b.ip(&["link", "set", "eth0", "up"]);
    let recovered = bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "B did not come back from fault",
    );
    println!(
        "fault: B in fault {fault:?} after link down, master of 52 again {recovered:?} after link up"
    );
    let b52 = bed.instance(1, 52);
    assert!(
        b52["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("preempted lower priority 100"),
        "{b52}"
    );
    assert!(bed.answers(DSR), "B does not serve instance 52's VIP again");

    // B's interface loses the address VRRP is sent from: fault again.
    let b = &bed.balancers[1].ns;
    b.ip(&["addr", "del", "192.0.2.2/24", "dev", "eth0"]);
    bed.wait_states(
        ["master", "master"],
        ["fault", "fault"],
        "losing its address did not put B in fault",
    );
    let b52 = bed.instance(1, 52);
    assert_eq!(
        b52["reason"], "fault: interface eth0 lost the address VRRP is sent from",
        "{b52}"
    );
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    bed.wait_states(
        ["master", "backup"],
        ["backup", "master"],
        "B did not come back when its address returned",
    );
}

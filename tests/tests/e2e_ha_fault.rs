//! Never a silent master (issue 20, item 3). Two balancers on one veth
//! (`lb_tests::hapair`), VRRP over IPv4, floating IPs of both families:
//!
//! - the kernel refuses the master's IPv6 floating IP (IPv6 disabled on
//!   its interface: `RTM_NEWADDR` answers `EACCES`): the adds are retried, then
//!   the instance goes to `fault` (priority 0) and the peer takes over and
//!   holds every address; `lb status` never said master, and it and
//!   `/metrics` say why. Once the hold-down is over and IPv6 is back, the
//!   balancer is a backup that does not preempt, and takes over (adding
//!   every address) when the peer stops;
//! - `lb status` says master only once the floating IPs are in place, with
//!   the time they were added;
//! - a stopped thread (the address thread, or the VRRP thread, made to
//!   panic through the debug builds' `LB_TEST_HA_PANIC`: only the panic is
//!   injected, its detection is the production code's): the instance
//!   removes its floating IPs, the peer takes over, and `lb run` exits 2
//!   saying why.

use std::time::{Duration, SystemTime};

use lb_tests::{
    hapair::{FLOATING, holds, pair},
    lbrun::LbRun,
    netns::wait_until,
};

fn ha(balancer: &LbRun) -> serde_json::Value {
    balancer.status()["ha"]["instances"][0].clone()
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Starts balancer 1 (priority 100) and waits until it is master holding
/// every floating IP.
fn start_lower(pair: &mut [LbRun; 2]) {
    pair[1].start();
    assert!(
        wait_until(Duration::from_secs(10), || pair[1].ha_state() == "master"),
        "balancer 1 alone never became master: {}",
        ha(&pair[1])
    );
    assert_eq!(holds(&pair[1]), FLOATING);
}

/// The line of the metrics page of `balancer` that starts with `name`.
fn metric(balancer: &LbRun, name: &str) -> Option<String> {
    balancer
        .ns
        .metrics_page()
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_string)
}

#[test]
fn a_master_whose_floating_ip_is_refused_goes_to_fault_and_the_peer_takes_over() {
    let mut pair = pair("fr");
    // The kernel refuses IPv6 addresses on an interface with IPv6
    // disabled ("IPv6 is disabled on this device"); IPv4 ones still go.
    pair[0].ns.sysctl("net.ipv6.conf.eth0.disable_ipv6=1");
    start_lower(&mut pair);
    // Balancer 0 (150) preempts, cannot add 2001:db8::fe, and must give
    // the addresses back: never reported master on the way.
    pair[0].start();
    let mut seen = Vec::new();
    let faulted = wait_until(Duration::from_secs(15), || {
        let state = pair[0].ha_state();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        state == "fault"
    });
    assert!(faulted, "balancer 0 never went to fault: states {seen:?}");
    assert!(
        !seen.iter().any(|s| s == "master"),
        "reported master without its floating IPs: states {seen:?}"
    );
    let status = ha(&pair[0]);
    assert_eq!(status["fault_cause"], "floating_ip_refused", "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("floating IP 2001:db8::fe/64 not added")
            && reason.contains("IPv6 is disabled"),
        "{status}"
    );
    let failures = status["address_failures"].as_u64().unwrap_or(0);
    assert!(failures >= 2, "refused adds not counted: {status}");
    assert_eq!(status["floating_ips_added_ms"], serde_json::Value::Null);
    // The top-level fields describe the first instance.
    let top = pair[0].status()["ha"].clone();
    assert_eq!(top["fault_cause"], "floating_ip_refused", "{top}");
    let log = pair[0].process.as_ref().unwrap().stderr_so_far();
    assert!(
        log.lines()
            .any(|l| l.contains("floating IPs refused") && l.contains("2001:db8::fe/64")),
        "the refusal is not logged:\n{log}"
    );

    // The peer took over (priority 0) and holds every address; the
    // faulty balancer holds none.
    assert!(
        wait_until(Duration::from_secs(5), || pair[1].ha_state() == "master"
            && holds(&pair[1]) == FLOATING),
        "the peer did not take over: {} holding {:?}",
        ha(&pair[1]),
        holds(&pair[1])
    );
    assert_eq!(holds(&pair[0]), [] as [&str; 0]);
    let fault = metric(&pair[0], "lb_ha_instance_fault{").unwrap_or_default();
    assert_eq!(
        fault, "lb_ha_instance_fault{vrid=\"52\",cause=\"floating_ip_refused\"} 1",
        "{fault}"
    );
    let counted = metric(
        &pair[0],
        "lb_ha_instance_address_failures_total{vrid=\"52\"}",
    )
    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    .unwrap_or(0);
    assert!(counted >= failures, "/metrics counted {counted} refusals");
    println!("refused: {status}");

    // IPv6 back. After the hold-down (10 s) the balancer recovers as a
    // backup that follows the lower live master instead of preempting it.
    pair[0].ns.sysctl("net.ipv6.conf.eth0.disable_ipv6=0");
    assert!(
        wait_until(Duration::from_secs(20), || pair[0].ha_state() == "backup"),
        "no recovery after the hold-down: {}",
        ha(&pair[0])
    );
    let status = ha(&pair[0]);
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not preempting"),
        "{status}"
    );
    assert_eq!(status["fault_cause"], serde_json::Value::Null, "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pair[0].ha_state(), "backup", "preempted after a refusal");
    assert_eq!(pair[1].ha_state(), "master");

    // The peer hands over: now the balancer takes the addresses, and
    // says master only with every one in place.
    let before = unix_ms();
    let stopped = pair[1].stop(libc::SIGTERM);
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        wait_until(Duration::from_secs(10), || pair[0].ha_state() == "master"),
        "no takeover once the peer stopped: {}",
        ha(&pair[0])
    );
    assert_eq!(holds(&pair[0]), FLOATING, "master without its addresses");
    let status = ha(&pair[0]);
    let added = status["floating_ips_added_ms"].as_u64().unwrap_or(0);
    assert!(
        (before..=unix_ms()).contains(&added),
        "add time {added} not after the hand-over at {before}: {status}"
    );
}

/// A balancer alone becomes master: every sample of `lb status` that says
/// master finds every floating IP in place, and gives the add time.
#[test]
fn lb_status_says_master_only_once_the_floating_ips_are_in_place() {
    let mut pair = pair("fm");
    let before = unix_ms();
    pair[0].start();
    let mut checked = 0;
    let mut missing = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checked < 5 && std::time::Instant::now() < deadline {
        let status = ha(&pair[0]);
        if status["state"] != "master" {
            continue;
        }
        // Read after the status: what it says must already hold.
        let held = holds(&pair[0]);
        if held != FLOATING {
            missing.push(format!("{held:?} with {status}"));
        }
        let added = status["floating_ips_added_ms"].as_u64().unwrap_or(0);
        assert!(
            (before..=unix_ms()).contains(&added),
            "add time {added} not since the start at {before}: {status}"
        );
        assert_eq!(
            status["since"].as_u64(),
            Some(added / 1000),
            "master since the add: {status}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "never master: {}", ha(&pair[0]));
    assert!(
        missing.is_empty(),
        "master reported before the addresses: {missing:?}"
    );
    let shown = pair[0].lb(&["ha", "--socket", &pair[0].socket]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("in place since"), "{text}");
}

/// Balancer 1 master, balancer 0 started with `LB_TEST_HA_PANIC=thread`
/// preempts it; the thread panics once the floating IPs are added. The
/// instance must go to fault with its addresses removed, the peer take
/// over, and `lb run` exit 2 saying which thread stopped.
fn a_stopped_thread_ends_lb_run(tag: &str, thread: &str, named: &str) {
    let mut pair = pair(tag);
    start_lower(&mut pair);
    pair[0].launch(&[("LB_TEST_HA_PANIC", thread)]);
    let output = pair[0].process.take().unwrap().wait();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "lb run did not exit 2:\n{log}"
    );
    assert!(
        log.contains(&format!("fault: the {named} thread stopped: panicked"))
            && log.contains("exits so that the service manager restarts it"),
        "the exit does not say why:\n{log}"
    );
    // It had the addresses (the panic came after the add), and left none.
    assert!(
        log.contains("LB_TEST_HA_PANIC"),
        "the thread never reached the add:\n{log}"
    );
    assert_eq!(
        holds(&pair[0]),
        [] as [&str; 0],
        "floating IPs left behind:\n{log}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pair[1].ha_state() == "master"
            && holds(&pair[1]) == FLOATING),
        "the peer does not hold the addresses: {} {:?}",
        ha(&pair[1]),
        holds(&pair[1])
    );
}

#[test]
fn a_stopped_address_thread_puts_the_instance_in_fault_and_lb_run_exits_2() {
    a_stopped_thread_ends_lb_run("fa", "addresses", "address");
}

#[test]
fn a_stopped_vrrp_thread_puts_the_instance_in_fault_and_lb_run_exits_2() {
    a_stopped_thread_ends_lb_run("fv", "vrrp", "VRRP");
}

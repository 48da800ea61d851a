//! A killed master must not keep the floating IPs. SIGKILL gives `lb run`
//! no chance to hand over: the backup takes over after
//! `Master_Down_Interval`, but the addresses stay on the dead controller's
//! interface (its kernel keeps answering ARP for them). `lb release` (the
//! unit's `ExecStopPost=`) removes them, refusing while the instance runs;
//! a restarted `lb run` removes them before VRRP starts, then stays backup
//! (`preempt: false`) or takes them back after its `preempt_delay`. Two
//! balancers on one veth, VRRP over multicast.

use std::time::Duration;

use lb_tests::{
    hapair::{FLOATING, holds, pair},
    lbrun::LbRun,
    netns::wait_until,
};

/// `lb release -c CONFIG`, in JSON if `json`.
fn release(balancer: &LbRun, json: bool) -> std::process::Output {
    let config = balancer.config.path().to_str().unwrap();
    if json {
        balancer.lb(&["release", "-c", config, "--output", "json"])
    } else {
        balancer.lb(&["release", "-c", config])
    }
}

/// Starts both; 0 is master, 1 backup.
fn start_pair(pair: &mut [LbRun; 2]) {
    pair[0].start();
    pair[1].start();
    assert!(
        wait_until(Duration::from_secs(10), || pair[0].ha_state() == "master"
            && pair[1].ha_state() == "backup"),
        "no master/backup pair: {} / {}",
        pair[0].ha_state(),
        pair[1].ha_state()
    );
    assert_eq!(holds(&pair[0]), FLOATING);
    assert_eq!(holds(&pair[1]), [] as [&str; 0]);
}

/// SIGKILL of the master: the backup takes over, and the dead one still
/// holds every floating IP (what this file is about).
fn kill_master(pair: &mut [LbRun; 2]) {
    let output = pair[0].stop(libc::SIGKILL);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        wait_until(Duration::from_secs(10), || pair[1].ha_state() == "master"),
        "the backup did not take over: {}",
        pair[1].ha_state()
    );
    assert!(wait_until(Duration::from_secs(5), || holds(&pair[1]) == FLOATING));
    assert_eq!(holds(&pair[0]), FLOATING, "SIGKILL removed the addresses");
}

#[test]
fn lb_release_removes_what_a_killed_master_left() {
    let mut pair = pair("k");
    start_pair(&mut pair);

    // While it runs, the addresses are its own to hand over.
    let refused = release(&pair[0], false);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    let pid = pair[0].process.as_ref().unwrap().id();
    assert!(
        said.contains("is running") && said.contains(&format!("PID {pid}")),
        "{said}"
    );
    assert_eq!(holds(&pair[0]), FLOATING);
    assert_eq!(pair[0].ha_state(), "master");

    kill_master(&mut pair);
    let released = release(&pair[0], true);
    assert!(released.status.success(), "{released:?}");
    let answer: serde_json::Value = serde_json::from_slice(&released.stdout).unwrap();
    assert_eq!(answer["instance"], pair[0].instance.as_str(), "{answer}");
    assert_eq!(answer["interface"], "eth0", "{answer}");
    assert_eq!(answer["removed"], serde_json::json!(FLOATING), "{answer}");
    assert_eq!(holds(&pair[0]), [] as [&str; 0]);
    // Its own address stays; the new master keeps the floating ones.
    let own = pair[0].ns.ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(String::from_utf8_lossy(&own.stdout).contains("192.0.2.1/24"));
    assert_eq!(holds(&pair[1]), FLOATING);
    assert_eq!(pair[1].ha_state(), "master");

    // Again (a clean stop already handed over): nothing to do, exit 0.
    let again = release(&pair[0], false);
    assert!(again.status.success(), "{again:?}");
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("nothing to do"), "{said}");
    let again = release(&pair[0], true);
    let answer: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(answer["removed"], serde_json::json!([]), "{answer}");
}

#[test]
fn a_restarted_lb_run_removes_what_a_killed_master_left() {
    let mut pair = pair("r");
    start_pair(&mut pair);
    kill_master(&mut pair);

    // Restarted without preemption (keepalived's nopreempt), so it stays
    // backup under the lower-priority master and can be watched there.
    let config = std::fs::read_to_string(pair[0].config.path()).unwrap();
    std::fs::write(
        pair[0].config.path(),
        config.replace("preempt: true", "preempt: false"),
    )
    .unwrap();
    pair[0].start();
    assert!(
        wait_until(Duration::from_secs(10), || pair[0].ha_state() == "backup"),
        "the restarted balancer is {:?}, not backup",
        pair[0].ha_state()
    );
    // Removed before VRRP ran, and said so, one line per address.
    assert_eq!(holds(&pair[0]), [] as [&str; 0]);
    let log = pair[0].process.as_ref().unwrap().stderr_so_far();
    for ip in FLOATING {
        assert!(
            log.lines().any(
                |l| l.contains("removed a floating IP left by a previous run") && l.contains(ip)
            ),
            "no removal of {ip} logged:\n{log}"
        );
    }
    // Only the master holds them, and (nopreempt) keeps them: three
    // Master_Down_Intervals later nothing has moved.
    assert_eq!(holds(&pair[1]), FLOATING);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pair[0].ha_state(), "backup");
    assert_eq!(pair[1].ha_state(), "master");
    assert_eq!(holds(&pair[0]), [] as [&str; 0]);

    // nopreempt still takes over when the master goes (SIGTERM hands over).
    let master = pair[1].process.take().unwrap();
    master.signal(libc::SIGTERM);
    assert!(master.wait().status.success());
    assert!(
        wait_until(Duration::from_secs(10), || pair[0].ha_state() == "master"),
        "the nopreempt backup did not take over: {}",
        pair[0].ha_state()
    );
    assert!(wait_until(Duration::from_secs(5), || holds(&pair[0]) == FLOATING));
    assert_eq!(holds(&pair[1]), [] as [&str; 0]);
}

#[test]
fn a_restarted_master_follows_for_its_preempt_delay_then_takes_back() {
    let mut pair = pair("d");
    start_pair(&mut pair);
    kill_master(&mut pair);

    let config = std::fs::read_to_string(pair[0].config.path()).unwrap();
    std::fs::write(
        pair[0].config.path(),
        config.replace("preempt: true", "preempt: true, preempt_delay: 5s"),
    )
    .unwrap();
    pair[0].start();
    // Backup first, without the addresses, following the lower master...
    let status = |b: &LbRun| b.status()["ha"].clone();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let ha = status(&pair[0]);
            ha["state"] == "backup" && ha["peer"] == "192.0.2.2"
        }),
        "the restarted balancer is not a backup following the master: {}",
        status(&pair[0])
    );
    assert_eq!(holds(&pair[0]), [] as [&str; 0]);
    // ...then preempts it (priority 150 over 100), and the floating IPs
    // move whole: one host holds them.
    assert!(
        wait_until(Duration::from_secs(15), || pair[0].ha_state() == "master"),
        "no preemption after the delay: {}",
        status(&pair[0])
    );
    let ha = status(&pair[0]);
    assert_eq!(
        ha["reason"], "preempted lower priority 100 master 192.0.2.2",
        "{ha}"
    );
    assert!(wait_until(Duration::from_secs(5), || pair[1].ha_state()
        == "backup"
        && holds(&pair[1]).is_empty()
        && holds(&pair[0]) == FLOATING));
}

//! `deploy/lb.service` claims a capability set: `lb run` with exactly the
//! unit's `CapabilityBoundingSet` (read from the file) loads, attaches,
//! pins, runs VRRP and holds the floating IP, and SIGTERM undoes it all.
//! (Run as uid 0 under `setpriv --bounding-set`, so the process's
//! effective set is that list; the rest of the unit's sandboxing is not
//! exercised here.)

use std::time::Duration;

use lb_tests::{
    TempFile, lb_binary,
    netns::{Netns, veth, wait_until},
};

/// `CAP_BPF CAP_NET_ADMIN` → `-all,+bpf,+net_admin` for `setpriv`.
fn unit_capabilities() -> String {
    let unit = include_str!("../../deploy/lb.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("lb.service has a CapabilityBoundingSet");
    let mut setpriv = vec!["-all".to_string()];
    for cap in line.split_whitespace() {
        let name = cap.strip_prefix("CAP_").expect("CAP_ name").to_lowercase();
        setpriv.push(format!("+{name}"));
    }
    setpriv.join(",")
}

#[test]
fn lb_runs_with_the_units_capabilities() {
    let caps = unit_capabilities();
    let ns = Netns::new("cap");
    let peer = Netns::new("capp");
    veth(&ns, "eth0", &peer, "eth0");
    ns.addr("eth0", "192.0.2.1/24");
    let pid = std::process::id();
    let socket = format!("/run/lb/cap-{pid}.sock");
    let instance = format!("cap{pid}");
    let config = TempFile::new(
        "cap.yaml",
        &format!(
            "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
             \x20 - {{ name: web, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
             backends: [{{ address: 192.0.2.11 }}] }}\n\
             ha: {{ interface: eth0, virtual_router_id: 51, priority: 150, \
             advert_interval: 100ms, floating_ips: [192.0.2.254/24] }}\n\
             control: {{ socket: {socket} }}\n"
        ),
    );
    let lb = lb_binary();
    let mut child = ns.spawn(
        "setpriv",
        &[
            "--bounding-set",
            &caps,
            "--",
            lb.to_str().unwrap(),
            "run",
            "-c",
            config.path().to_str().unwrap(),
        ],
    );
    let status = || {
        let output = ns.exec(
            lb.to_str().unwrap(),
            &["status", "--output", "json", "--socket", &socket],
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    let master = wait_until(Duration::from_secs(15), || {
        !child.running() || status()["ha"]["state"] == "master"
    });
    let floating = String::from_utf8_lossy(&ns.ip(&["-4", "addr", "show", "eth0"]).stdout)
        .contains("192.0.2.254/24");
    let attached = ns.has_xdp("eth0");
    let effective = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    child.signal(libc::SIGTERM);
    let output = child.wait();
    let _ = ns.exec(lb.to_str().unwrap(), &["detach", "--instance", &instance]);
    let _ = std::fs::remove_file(&socket);
    println!("capabilities {caps}: CapEff {effective}");
    assert!(master, "lb did not become master with {caps}: {output:?}");
    assert!(attached, "XDP not attached with {caps}");
    assert!(floating, "floating IP not added with {caps}");
    // Exactly the unit's set, not root's full set.
    assert_ne!(effective, "000001ffffffffff", "setpriv did not restrict");
    assert!(output.status.success(), "SIGTERM exit: {output:?}");
    let after = String::from_utf8_lossy(&ns.ip(&["-4", "addr", "show", "eth0"]).stdout)
        .contains("192.0.2.254");
    assert!(!after, "floating IP left behind");
    assert!(!ns.has_xdp("eth0"), "XDP left attached");
}

//! Start-up safety of `lb run`: a second start for an instance that is
//! running changes nothing and exits 1 naming it; a start that fails undoes
//! what it did (nothing left attached or pinned, forwarding as it was) —
//! except that a data plane taken over from an earlier lb stays attached,
//! pinned and forwarding (its interfaces' forwarding sysctls on, and
//! recorded for `lb detach` or the next clean stop).

use std::{path::Path, process::Output, time::Duration};

use lb_tests::{
    TempFile,
    bed::{Bed, tcp_request},
    lb_binary,
    netns::{Netns, wait_until},
};

/// `lb run -c FILE` in `ns`, to its end (at most 20 s).
fn run_to_end(ns: &Netns, config: &str) -> Output {
    let file = TempFile::new("lb.yaml", config);
    let mut child = ns.spawn(
        lb_binary().to_str().unwrap(),
        &["run", "-c", file.path().to_str().unwrap()],
    );
    if !wait_until(Duration::from_secs(20), || !child.running()) {
        child.signal(libc::SIGKILL);
        panic!("lb run did not end within 20 s: {:?}", child.wait());
    }
    child.wait()
}

/// One NAT service on `eth0` / `eth1` of the bed, to `backend`.
fn config(instance: &str, socket: &str, backend: &str) -> String {
    format!(
        "instance: {instance}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: \
         [{{ address: {backend}, port: 8080 }}] }}\n\
         control: {{ socket: {socket} }}\n"
    )
}

fn pins(instance: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/bpf/lb").join(instance)
}

/// Detaches an instance on drop, in case a failing test left it pinned.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = std::process::Command::new(lb_binary())
            .args(["detach", "--instance", &self.0])
            .output();
    }
}

/// The forwarding sysctls of the balancer's namespace — host-wide, and of
/// each of `interfaces` — as `name=value` (`name=-` where the interface
/// lacks it).
fn forwarding(bed: &Bed, interfaces: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ]
    .map(String::from)
    .to_vec();
    for interface in interfaces {
        names.push(format!("net.ipv4.conf.{interface}.forwarding"));
        names.push(format!("net.ipv6.conf.{interface}.forwarding"));
        names.push(format!("net.ipv6.conf.{interface}.force_forwarding"));
    }
    names
        .iter()
        .map(|name| {
            let output = bed.lb.exec("sysctl", &["-n", name]);
            let value = String::from_utf8_lossy(&output.stdout).trim().to_string();
            format!("{name}={}", if value.is_empty() { "-" } else { &value })
        })
        .collect()
}

/// The record of the forwarding sysctls `lb run` changed for `instance`.
fn forwarding_record(instance: &str) -> std::path::PathBuf {
    Path::new("/run/lb").join(format!("{instance}.forwarding"))
}

fn status(bed: &Bed) -> serde_json::Value {
    let output = bed.lb_command(&["status", "--output", "json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_second_start_of_a_running_instance_changes_nothing() {
    let pid = std::process::id();
    let instance = format!("second{pid}");
    let socket = format!("/run/lb/start-second-{pid}.sock");
    let mut bed = Bed::new(&[11, 12]);
    let first = config(&instance, &socket, "192.0.2.11");
    bed.start_lb(&first);
    let first_pid = bed.lb_process.as_ref().unwrap().id();
    let before = status(&bed);

    // The same instance, edited: another backend, and VRRP that would make
    // itself master at once and add a floating address.
    let edited = first.replace("192.0.2.11", "192.0.2.12")
        + "ha: { interface: eth1, virtual_router_id: 51, priority: 254, \
           advert_interval: 10ms, floating_ips: [192.0.2.254/24] }\n";
    let output = run_to_end(&bed.lb, &edited);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in [
        format!("instance \"{instance}\" is already running"),
        format!("PID {first_pid}"),
        socket.clone(),
        "changed nothing".into(),
    ] {
        assert!(stderr.contains(&expected), "no {expected:?} in: {stderr}");
    }

    assert_eq!(status(&bed), before, "lb status changed");
    let target = "203.0.113.10:80".parse().unwrap();
    let served = bed.client.run(move || {
        (0..20)
            .map(|_| tcp_request(target, None))
            .collect::<Vec<_>>()
    });
    assert!(
        served.iter().all(|s| s.as_deref() == Some("b11")),
        "the running tables changed: {served:?}"
    );
    let addresses = bed.lb.ip(&["-4", "addr", "show", "dev", "eth1"]);
    assert!(
        !String::from_utf8_lossy(&addresses.stdout).contains("192.0.2.254"),
        "the second start added a floating address"
    );
    assert!(bed.lb_process.as_mut().unwrap().running());
    // Nor does `lb detach` pull the data plane from under it.
    let output = bed.lb.exec(
        lb_binary().to_str().unwrap(),
        &["detach", "--instance", &instance],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "instance \"{instance}\" is running (PID {first_pid}"
        )),
        "{stderr}"
    );
    assert!(bed.lb.has_xdp("eth0") && pins(&instance).join("SERVICES").exists());

    // Another instance on another interface, but with the same control
    // socket: it fails last, at the socket, and undoes its start.
    bed.lb.ip(&["link", "add", "d0", "type", "bridge"]);
    bed.lb.ip(&["link", "set", "d0", "up"]);
    let d0_forwarding = forwarding(&bed, &["d0"]);
    let other = format!("other{pid}");
    let _detach = Detach(other.clone());
    let text = config(&other, &socket, "192.0.2.12").replace(
        "[{ name: eth0 }, { name: eth1 }]",
        "[{ name: d0, xdp_mode: generic }]",
    );
    let output = run_to_end(&bed.lb, &text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is in use") && stderr.contains("nothing was left attached or pinned"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interface=d0"),
        "d0 was attached first: {stderr}"
    );
    assert!(!pins(&other).exists(), "pins left");
    assert!(!bed.lb.has_xdp("d0"), "XDP left on d0");
    assert_eq!(
        forwarding(&bed, &["d0"]),
        d0_forwarding,
        "forwarding left on d0"
    );
    assert!(
        !forwarding_record(&other).exists(),
        "forwarding record left"
    );
    assert_eq!(status(&bed), before, "lb status changed");

    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    assert!(
        !Path::new(&format!("/run/lb/{instance}.lock")).exists(),
        "a clean stop leaves no lock file"
    );
}

#[test]
fn a_failed_start_leaves_nothing_attached_pinned_or_changed() {
    let pid = std::process::id();
    let bed = Bed::new(&[]);
    // A bridge: it exists, has no IPv4 address and no native XDP.
    bed.lb.ip(&["link", "add", "d0", "type", "bridge"]);
    bed.lb.ip(&["link", "set", "d0", "up"]);
    let interfaces = ["eth0", "eth1", "d0"];
    let forwarding_before = forwarding(&bed, &interfaces);
    assert!(
        forwarding_before
            .iter()
            .all(|setting| setting.ends_with("=0")),
        "a fresh namespace forwards already: {forwarding_before:?}"
    );
    let clean = |bed: &Bed, instance: &str, socket: &str| {
        assert!(!pins(instance).exists(), "{instance}: pins left");
        for dev in ["eth0", "eth1", "d0"] {
            assert!(!bed.lb.has_xdp(dev), "{instance}: XDP left on {dev}");
        }
        assert!(!Path::new(socket).exists(), "{instance}: socket left");
        assert!(
            !Path::new(&format!("/run/lb/{instance}.lock")).exists(),
            "{instance}: lock file left"
        );
        assert_eq!(
            forwarding(bed, &interfaces),
            forwarding_before,
            "{instance}: forwarding changed"
        );
        assert!(
            !forwarding_record(instance).exists(),
            "{instance}: forwarding record left"
        );
    };

    // An interface the host lacks: refused before anything is touched.
    let instance = format!("missing{pid}");
    let _detach = Detach(instance.clone());
    let socket = format!("/run/lb/start-missing-{pid}.sock");
    let text = config(&instance, &socket, "192.0.2.11")
        .replace("{ name: eth1 }]", "{ name: eth1 }, { name: nosuch0 }]");
    let output = run_to_end(&bed.lb, &text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "line 2, column 48: interfaces[2].name: no interface \"nosuch0\" on this host"
        ),
        "{stderr}"
    );
    clean(&bed, &instance, &socket);
    // `lb check` on this host passes the file, with a warning.
    let file = TempFile::new("check.yaml", &text);
    let check = bed.lb.exec(
        lb_binary().to_str().unwrap(),
        &["check", "-c", file.path().to_str().unwrap()],
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr)
            .contains("warning: line 2, column 48: interfaces[2].name"),
        "{check:?}"
    );

    // An HA interface without IPv4: refused before anything is touched.
    let instance = format!("noipv4{pid}");
    let _detach = Detach(instance.clone());
    let socket = format!("/run/lb/start-noipv4-{pid}.sock");
    let text = config(&instance, &socket, "192.0.2.11")
        + "ha: { interface: d0, virtual_router_id: 51, priority: 100, floating_ips: [192.0.2.254/24] }\n";
    let output = run_to_end(&bed.lb, &text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ha.interface: d0 has no IPv4 address"),
        "{stderr}"
    );
    clean(&bed, &instance, &socket);

    // Attaching fails on the third interface, after the first two were
    // attached and pinned: all of it is undone.
    let instance = format!("undo{pid}");
    let _detach = Detach(instance.clone());
    let socket = format!("/run/lb/start-undo-{pid}.sock");
    let text = config(&instance, &socket, "192.0.2.11").replace(
        "{ name: eth1 }]",
        "{ name: eth1 }, { name: d0, xdp_mode: native }]",
    );
    let output = run_to_end(&bed.lb, &text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nothing was left attached or pinned")
            && stderr.contains("attaching to d0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interface=eth0") && stderr.contains("attached"),
        "eth0 was attached first: {stderr}"
    );
    // Forwarding was turned on for all three first, and put back.
    assert!(
        stderr.contains("sysctl=net.ipv4.conf.d0.forwarding") && stderr.contains("restored"),
        "{stderr}"
    );
    clean(&bed, &instance, &socket);
}

#[test]
fn a_failed_start_keeps_a_taken_over_data_plane_forwarding() {
    let pid = std::process::id();
    let instance = format!("keep{pid}");
    let socket = format!("/run/lb/start-keep-{pid}.sock");
    let mut bed = Bed::new(&[11]);
    // A bridge: it exists, has no native XDP.
    bed.lb.ip(&["link", "add", "d0", "type", "bridge"]);
    bed.lb.ip(&["link", "set", "d0", "up"]);
    let interfaces = ["eth0", "eth1", "d0"];
    let forwarding_before = forwarding(&bed, &interfaces);
    let text = config(&instance, &socket, "192.0.2.11");
    bed.start_lb(&text);
    // SIGQUIT: the data plane stays, forwarding, for the next start.
    let process = bed.lb_process.take().unwrap();
    process.signal(libc::SIGQUIT);
    assert!(process.wait().status.success());
    let target = "203.0.113.10:80".parse().unwrap();
    assert_eq!(
        bed.client.run(move || tcp_request(target, None)).as_deref(),
        Some("b11")
    );
    let forwarding_left = forwarding(&bed, &interfaces);
    assert_ne!(
        forwarding_left, forwarding_before,
        "SIGQUIT put forwarding back"
    );

    // A start that takes it over and then fails on a new interface.
    let edited = text.replace(
        "{ name: eth1 }]",
        "{ name: eth1 }, { name: d0, xdp_mode: native }]",
    );
    let output = run_to_end(&bed.lb, &edited);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is left attached and forwarding"),
        "{stderr}"
    );
    for pin in ["SERVICES", "link-eth0", "link-eth1"] {
        assert!(pins(&instance).join(pin).exists(), "{pin} was removed");
    }
    assert!(!pins(&instance).join("link-d0").exists());
    assert!(bed.lb.has_xdp("eth0") && bed.lb.has_xdp("eth1"));
    assert!(!bed.lb.has_xdp("d0"));
    // The forwarding the taken-over data plane needs stays on (and
    // recorded, for whoever stops it); what this start turned on for d0
    // is put back.
    assert_eq!(
        forwarding(&bed, &interfaces),
        forwarding_left,
        "the failed start changed the taken-over data plane's forwarding"
    );
    let record = std::fs::read_to_string(forwarding_record(&instance)).unwrap_or_default();
    assert!(
        record.contains("/eth0/") && !record.contains("/d0/"),
        "forwarding record: {record:?}"
    );
    assert_eq!(
        bed.client.run(move || tcp_request(target, None)).as_deref(),
        Some("b11"),
        "the taken-over data plane stopped forwarding"
    );

    // And the next start takes it over as usual.
    bed.start_lb(&text);
    let served = bed.client.run(move || tcp_request(target, None));
    assert_eq!(served.as_deref(), Some("b11"));
    // Killed, it leaves its lock file (which blocks nothing) and its data
    // plane; `lb detach` removes both.
    let process = bed.lb_process.take().unwrap();
    process.signal(libc::SIGKILL);
    let output = process.wait();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("took over the pinned data plane"),
        "{output:?}"
    );
    let lock = format!("/run/lb/{instance}.lock");
    assert!(Path::new(&lock).exists());
    let output = bed.lb.exec(
        lb_binary().to_str().unwrap(),
        &["detach", "--instance", &instance],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(!pins(&instance).exists() && !Path::new(&lock).exists());
    assert!(!bed.lb.has_xdp("eth0") && !bed.lb.has_xdp("eth1"));
    assert_eq!(
        forwarding(&bed, &interfaces),
        forwarding_before,
        "lb detach did not put forwarding back"
    );
    assert!(!forwarding_record(&instance).exists());
}

//! Restart without loss: the maps and the XDP attachment are pinned, so a
//! controller killed with SIGKILL (or leaving with SIGQUIT) leaves the data
//! plane forwarding, and the next `lb run` takes it over without a gap.
//! A client keeps opening connections the whole time; none may fail.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bed::{Bed, tcp_request},
    netns::wait_until,
};

fn config(tag: &str) -> String {
    format!(
        "instance: restart{tag}{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: nat, vip: 203.0.113.10, port: 80, protocol: tcp, backends: \
         [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
         \x20 - {{ name: dsr, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: \
         [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
         control: {{ socket: /run/lb/restart-{tag}-{pid}.sock }}\n",
        pid = std::process::id()
    )
}

/// Keeps opening connections to both VIPs until `stop`; returns (requests,
/// failures). Bounded: at most 20,000 requests.
fn steady_traffic(
    bed: &Bed,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<(u32, u32)> {
    bed.client.spawn_thread(move || {
        let targets: [SocketAddr; 2] = [
            "203.0.113.10:80".parse().unwrap(),
            "203.0.113.11:80".parse().unwrap(),
        ];
        let (mut requests, mut failures) = (0, 0);
        while !stop.load(Ordering::Relaxed) && requests < 20_000 {
            for target in targets {
                requests += 1;
                if tcp_request(target, None).is_none() {
                    failures += 1;
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
        }
        (requests, failures)
    })
}

/// Waits until the traffic has made `more` requests beyond those counted
/// now (each bounded by its 3 s connect timeout).
fn wait_requests(made: &AtomicUsize, more: usize) {
    let from = made.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_mins(1), || made.load(Ordering::Relaxed)
            >= from + more),
        "the traffic made {} of {more} requests in 60 s",
        made.load(Ordering::Relaxed) - from
    );
}

fn restart_keeps_forwarding(signal: i32, tag: &str) {
    let mut bed = Bed::new(&[11, 12]);
    let config = config(tag);
    bed.start_lb(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let traffic = steady_traffic(&bed, Arc::clone(&stop), Arc::clone(&made));
    wait_requests(&made, 50);

    let killed = Instant::now();
    let process = bed.lb_process.take().unwrap();
    process.signal(signal);
    let output = process.wait();
    if signal == libc::SIGQUIT {
        assert!(output.status.success(), "SIGQUIT exit: {output:?}");
    }
    assert!(
        bed.lb.has_xdp("eth0") && bed.lb.has_xdp("eth1"),
        "the data plane went with the controller"
    );
    // Traffic flows with no controller at all for a while...
    wait_requests(&made, 100);
    // ...and the next controller takes it over.
    bed.start_lb(&config);
    println!("{tag}: controller gone for {:?}", killed.elapsed());
    wait_requests(&made, 100);
    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = traffic.join().unwrap();
    println!("{tag}: {requests} requests, {failures} failed");
    assert!(requests >= 250, "too little traffic to tell: {requests}");
    assert_eq!(
        failures, 0,
        "{failures} of {requests} requests failed across the restart"
    );

    let log = bed.stop_lb();
    let stderr = String::from_utf8_lossy(&log.stderr);
    assert!(
        stderr.contains("took over the pinned data plane"),
        "{stderr}"
    );
    assert!(!bed.lb.has_xdp("eth0"), "SIGINT must detach");
    assert!(
        !std::path::Path::new(&format!(
            "/sys/fs/bpf/lb/restart{tag}{}",
            std::process::id()
        ))
        .exists(),
        "pins left"
    );
}

#[test]
fn sigkill_and_restart_lose_no_request() {
    restart_keeps_forwarding(libc::SIGKILL, "kill");
}

#[test]
fn sigquit_leaves_the_data_plane_for_the_next_controller() {
    restart_keeps_forwarding(libc::SIGQUIT, "quit");
}

/// The forwarding sysctls of the balancer's namespace, as `name=value`.
fn forwarding(bed: &Bed) -> Vec<String> {
    [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.conf.eth0.forwarding",
        "net.ipv4.conf.eth1.forwarding",
        "net.ipv6.conf.eth0.forwarding",
        "net.ipv6.conf.eth1.forwarding",
        "net.ipv6.conf.eth0.force_forwarding",
        "net.ipv6.conf.eth1.force_forwarding",
    ]
    .iter()
    .map(|name| {
        let output = bed.lb.exec("sysctl", &["-n", name]);
        assert!(output.status.success(), "sysctl {name}: {output:?}");
        format!("{name}={}", String::from_utf8_lossy(&output.stdout).trim())
    })
    .collect()
}

/// `lb run` turns forwarding on only for the interfaces it attaches to
/// (never `all`: that would stop the host accepting router advertisements
/// everywhere), serves IPv4 and IPv6 with it, and puts the values back on a
/// clean stop; SIGQUIT leaves them for the data plane it leaves running.
#[test]
fn forwarding_is_enabled_per_interface_and_restored_on_stop() {
    let mut bed = Bed::new(&[11, 12]);
    let before = forwarding(&bed);
    assert!(
        before.iter().all(|setting| setting.ends_with("=0")),
        "a fresh namespace forwards already: {before:?}"
    );
    let nat6 = "\x20 - { name: nat6, vip: '2001:db8:ff::10', port: 80, protocol: tcp, backends: \
                [{ address: '2001:db8::11', port: 8080 }, { address: '2001:db8::12', port: 8080 }] }\n";
    let config = config("fwd").replace("control:", &format!("{nat6}control:"));
    bed.start_lb(&config);
    let running = forwarding(&bed);
    for setting in &running {
        let on = !setting.contains(".all.") && !setting.contains("ip_forward");
        assert!(
            setting.ends_with(if on { "=1" } else { "=0" }),
            "while running: {setting} ({running:?})"
        );
    }
    for target in ["203.0.113.10:80", "203.0.113.11:80", "[2001:db8:ff::10]:80"] {
        let target: SocketAddr = target.parse().unwrap();
        assert!(
            bed.client.run(move || tcp_request(target, None)).is_some(),
            "{target} not served with per-interface forwarding"
        );
    }
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(forwarding(&bed), before, "not restored on SIGINT");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("net.ipv6.conf.eth1.forwarding") && log.contains("restored"),
        "{log}"
    );

    // SIGQUIT leaves the data plane forwarding, so the settings stay; the
    // lb run that takes it over puts them back on its clean stop, though it
    // found them on.
    let quit = |bed: &mut Bed| {
        bed.start_lb(&config);
        let process = bed.lb_process.take().unwrap();
        process.signal(libc::SIGQUIT);
        assert!(process.wait().status.success());
        assert_eq!(forwarding(bed), running, "SIGQUIT changed forwarding");
        let target: SocketAddr = "203.0.113.11:80".parse().unwrap();
        assert!(bed.client.run(move || tcp_request(target, None)).is_some());
    };
    quit(&mut bed);
    bed.start_lb(&config);
    assert_eq!(forwarding(&bed), running, "the takeover changed forwarding");
    assert!(bed.stop_lb().status.success());
    assert_eq!(
        forwarding(&bed),
        before,
        "not restored by the lb run that took over"
    );
    // So does `lb detach` of a data plane SIGQUIT left.
    quit(&mut bed);
    let instance = format!("restartfwd{}", std::process::id());
    let detach = bed.lb.exec(
        lb_tests::lb_binary().to_str().unwrap(),
        &["detach", "--instance", &instance],
    );
    assert!(detach.status.success(), "{detach:?}");
    assert_eq!(forwarding(&bed), before, "not restored by lb detach");
    assert!(!lb::sysctl::record_path(&instance).exists(), "record left");
}

/// `lb guard deny` outlives the controller: a prefix the operator denied
/// is still denied, and listed, after a SIGKILL and a new `lb run`; a
/// prefix the old configuration denied and the new one drops is not taken
/// for the operator's.
#[test]
fn a_runtime_deny_outlives_a_restart() {
    let mut bed = Bed::new(&[11, 12]);
    let first = config("deny").replace(
        "control:",
        "guard: { deny: ['203.0.113.200/32'] }\ncontrol:",
    );
    bed.start_lb(&first);
    assert_eq!(bed.guard_list()["configured"][0], "203.0.113.200/32");
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let served = |bed: &Bed| bed.client.run(move || tcp_request(target, None).is_some());
    assert!(served(&bed), "not served before the deny");
    let output = bed.lb_command(&["guard", "deny", "198.51.100.2/32"]);
    assert!(output.status.success(), "lb guard deny: {output:?}");
    assert!(!served(&bed), "served while denied");

    let process = bed.lb_process.take().unwrap();
    process.signal(libc::SIGKILL);
    process.wait();
    bed.start_lb(&config("deny"));
    let list = bed.guard_list();
    assert_eq!(
        list["runtime"],
        serde_json::json!(["198.51.100.2/32"]),
        "{list}"
    );
    assert_eq!(list["configured"], serde_json::json!([]), "{list}");
    assert!(!served(&bed), "served after the restart, still denied");
    let output = bed.lb_command(&["guard", "allow", "198.51.100.2/32"]);
    assert!(output.status.success(), "lb guard allow: {output:?}");
    assert!(served(&bed), "not served once allowed again");
    let log = bed.stop_lb();
    let stderr = String::from_utf8_lossy(&log.stderr);
    assert!(stderr.contains("kept the runtime deny list"), "{stderr}");
}

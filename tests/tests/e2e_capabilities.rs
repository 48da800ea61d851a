//! `deploy/lb.service` claims a capability set and a sandbox:
//!
//! - `lb run` with exactly the unit's `CapabilityBoundingSet` (read from
//!   the file) loads, attaches, pins, runs VRRP and holds the floating IP,
//!   and SIGTERM undoes it all (run as uid 0 under `setpriv
//!   --bounding-set`, so the process's effective set is that list);
//! - `systemd-analyze security --offline=yes` rates the unit's exposure at
//!   most [`EXPOSURE_BOUND`];
//! - under the unit's kernel-enforced restrictions (its capability set,
//!   `NoNewPrivileges=`, `LimitRTPRIO=`, `UMask=` and the seccomp rules of
//!   `RestrictAddressFamilies=`, `RestrictNamespaces=`,
//!   `SystemCallArchitectures=`, `ProtectClock=` and the other `Protect*=`,
//!   `LockPersonality=`, `RestrictSUIDSGID=`: tests/src/sandbox.rs), lb
//!   starts, attaches, becomes VRRP master with its threads in real time,
//!   and serves a request through a VIP; the same rules do refuse what they
//!   claim to (a probe). The mount-based directives (`ProtectSystem=`,
//!   `PrivateDevices=`, ...) need systemd itself and are not exercised.

use std::time::Duration;

use lb_tests::{
    TempFile,
    bed::{Bed, tcp_request},
    lb_binary,
    netns::{Netns, veth, wait_until},
    sandbox::Sandbox,
};

/// The unit's exposure must stay at or below this
/// (`systemd-analyze security`: 0 is locked down, 10 is unprotected).
const EXPOSURE_BOUND: f64 = 4.5;

const UNIT: &str = include_str!("../../deploy/lb.service");

/// `CAP_BPF CAP_NET_ADMIN` → `-all,+bpf,+net_admin` for `setpriv`.
fn unit_capabilities() -> String {
    let line = UNIT
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

/// `systemd-analyze security --offline=yes deploy/lb.service`: the overall
/// exposure, at most [`EXPOSURE_BOUND`].
#[test]
fn the_units_exposure_is_low() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lb.service");
    let output = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for lb.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure in systemd-analyze's answer: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    println!("systemd-analyze security: lb.service exposure {exposure}");
    assert!(
        exposure <= EXPOSURE_BOUND,
        "lb.service exposure {exposure} > {EXPOSURE_BOUND}:\n{text}"
    );
}

/// The first address family outside the unit's list that this kernel
/// lets `socket()` create (the probe needs one the filter, not the kernel,
/// refuses).
fn unlisted_family(sandbox: &Sandbox) -> (libc::c_int, libc::c_int) {
    [
        (libc::AF_VSOCK, libc::SOCK_STREAM),
        (libc::AF_ALG, libc::SOCK_SEQPACKET),
        (libc::AF_KEY, libc::SOCK_RAW),
        (libc::AF_TIPC, libc::SOCK_RDM),
        (libc::AF_BLUETOOTH, libc::SOCK_STREAM),
    ]
    .into_iter()
    .filter(|(family, _)| !sandbox.families.contains(family))
    .find(|&(family, kind)| {
        let protocol = if family == libc::AF_KEY { 2 } else { 0 };
        // SAFETY: socket() with constant arguments; the descriptor is closed.
        let fd = unsafe { libc::socket(family, kind, protocol) };
        // SAFETY: closes only the descriptor just created.
        fd >= 0 && unsafe { libc::close(fd) } == 0
    })
    .expect("no address family outside the unit's list works on this kernel")
}

/// Under the sandbox, `true` is started after probes that must see the
/// unit's rules refuse: a listed family is created, an unlisted one is
/// not, no namespace can be made, the hostname cannot change, the
/// personality is locked. Each failed probe has its own code.
fn probes_refuse(sandbox: &Sandbox, ns: &Netns) {
    use std::os::unix::process::CommandExt as _;
    let (family, kind) = unlisted_family(sandbox);
    let mut command = sandbox.command(&ns.path(), "true", &[]);
    // SAFETY: runs after the sandbox's own pre_exec, in the forked child;
    // only system calls on constants, nothing allocated.
    unsafe {
        command.pre_exec(move || {
            let code = |n: i32| Err(std::io::Error::from_raw_os_error(n));
            let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return code(1000);
            }
            libc::close(fd);
            let protocol = if family == libc::AF_KEY { 2 } else { 0 };
            if libc::socket(family, kind, protocol) >= 0 || errno() != libc::EAFNOSUPPORT {
                return code(1001);
            }
            if libc::unshare(libc::CLONE_NEWNET) == 0 || errno() != libc::EPERM {
                return code(1002);
            }
            if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != libc::EPERM {
                return code(1003);
            }
            if libc::syscall(libc::SYS_sethostname, c"x".as_ptr(), 1) == 0 || errno() != libc::EPERM
            {
                return code(1004);
            }
            // PER_LINUX32.
            if libc::personality(0x0008) != -1 || errno() != libc::EPERM {
                return code(1005);
            }
            Ok(())
        });
    }
    let status = command.status();
    assert!(
        status.as_ref().is_ok_and(std::process::ExitStatus::success),
        "a probe under the unit's sandbox was not refused as the unit says \
         (1000: AF_INET refused, 1001: family {family} allowed, 1002: unshare(NEWNET) \
         allowed, 1003: unshare(NEWUSER) allowed, 1004: sethostname allowed, \
         1005: personality changed): {status:?}"
    );
}

/// The scheduling policy of each thread of `pid` (`/proc/PID/task/*/stat`,
/// field 41).
fn thread_policies(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            // After the parenthesised name, fields start at 3.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(41 - 3)?.parse().ok()
        })
        .collect()
}

#[test]
fn lb_serves_under_the_units_sandbox() {
    let sandbox = Sandbox::from_unit(UNIT);
    println!("applied: {}", sandbox.applied.join(" "));
    println!(
        "not applied (mounts): {}",
        Sandbox::unapplied(UNIT).join(" ")
    );
    for directive in [
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "SystemCallArchitectures",
    ] {
        assert!(
            sandbox.applied.iter().any(|a| a.starts_with(directive)),
            "lb.service has no {directive}"
        );
    }
    let mut bed = Bed::new(&[11]);
    probes_refuse(&sandbox, &bed.lb);

    let pid = std::process::id();
    let socket = format!("/run/lb/sbx-{pid}.sock");
    let config = format!(
        "instance: sbx{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: \
         [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         ha: {{ interface: eth1, virtual_router_id: 52, priority: 150, \
         advert_interval: 100ms, floating_ips: [192.0.2.254/24] }}\n\
         control: {{ socket: {socket} }}\n"
    );
    bed.start_lb_by(&config, |ns, program, args| {
        sandbox.command(&ns.path(), program, args)
    });
    let lb_pid = bed.lb_process.as_ref().unwrap().id();
    let ha_state = |bed: &Bed| {
        let output = bed.lb_command(&["status", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()["ha"]
            ["state"]
            .clone()
    };
    let master = wait_until(Duration::from_secs(15), || ha_state(&bed) == "master");
    assert!(master, "lb did not become master under the sandbox");
    bed.prime_neighbours();
    assert!(
        bed.lb.has_xdp("eth0") && bed.lb.has_xdp("eth1"),
        "XDP not attached"
    );

    let proc_status = std::fs::read_to_string(format!("/proc/{lb_pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    // 2: a seccomp filter is in force.
    assert_eq!(field("Seccomp:"), "2", "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{proc_status}");
    let expected: u64 = sandbox.capabilities.iter().map(|c| 1u64 << c).sum();
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        expected,
        "{proc_status}"
    );
    // The VRRP threads asked for SCHED_FIFO (1): LimitRTPRIO= grants it
    // without CAP_SYS_NICE, and RestrictRealtime= is off. Where this test
    // cannot raise the limit (no CAP_SYS_RESOURCE in its container), they
    // carry on without it, as they do on a host whose limit is 0.
    let policies = thread_policies(lb_pid);
    if sandbox.rtprio_applies() {
        assert!(
            policies.contains(&1),
            "no lb thread in SCHED_FIFO: policies {policies:?}"
        );
    } else {
        println!(
            "LimitRTPRIO not applied (this process cannot raise RLIMIT_RTPRIO); \
             thread policies {policies:?}"
        );
    }

    let target: std::net::SocketAddr = "203.0.113.10:80".parse().unwrap();
    let served = (0..20).find_map(|_| {
        let answer = bed.client.run(move || tcp_request(target, None));
        if answer.is_none() {
            std::thread::sleep(Duration::from_millis(250));
        }
        answer
    });
    assert_eq!(served.as_deref(), Some("b11"), "no answer through the VIP");

    let output = bed.stop_lb();
    assert!(
        output.status.success(),
        "SIGINT exit under the sandbox: {output:?}"
    );
    assert!(!bed.lb.has_xdp("eth0"), "XDP left attached");
}

//! `lb run` as an operator meets it: it attaches, answers `lb status` and
//! `lb stats` on its socket with the documented JSON shapes, counts what it
//! drops, serves Prometheus metrics, and detaches on SIGINT, printing its
//! counters.
#![allow(
    clippy::float_cmp,
    reason = "metric values here are small integers, exact in f64"
)]
#![allow(
    clippy::too_many_lines,
    reason = "one operator session, told start to end"
)]

use std::{net::UdpSocket, os::unix::fs::PermissionsExt, time::Duration};

use lb_tests::{bed::Bed, lb_binary};

#[test]
fn run_status_stats_and_stop() {
    let socket = format!("/run/lb/cli-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11]);
    // One service with a backend, one whose only backend is drained to 0.
    bed.start_lb(&format!(
        "instance: cli{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{{ address: 192.0.2.11, port: 8080 }}], \
         health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }} }}\n\
         \x20 - {{ name: empty, vip: 203.0.113.10, port: 53, protocol: udp, backends: [{{ address: 192.0.2.11, weight: 0 }}] }}\n\
         control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n",
        pid = std::process::id()
    ));

    // The checked backend, not the unchecked one (always up): its first
    // check comes somewhere in its first interval.
    let up = lb_tests::netns::wait_until(Duration::from_secs(5), || {
        let status = bed.lb_command(&["status", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .is_ok_and(|status| status["services"][0]["backends"][0]["health"] == "up")
    });
    assert!(up, "the checked backend never came up");
    let status = bed.lb_command(&["status", "--output", "json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let web = &status["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["vip"], "203.0.113.10");
    assert_eq!(web["port"], 80);
    assert_eq!(web["protocol"], "tcp");
    assert_eq!(web["scheduler"], "maglev");
    assert_eq!(web["forwarding"], "nat");
    let backend = &web["backends"][0];
    for key in [
        "address",
        "port",
        "tier",
        "weight",
        "effective_weight",
        "health",
        "drained",
        "active_flows",
    ] {
        assert!(
            backend.get(key).is_some(),
            "backend has no {key}: {backend}"
        );
    }
    assert_eq!(backend["address"], "192.0.2.11");
    assert_eq!(backend["port"], 8080);
    assert_eq!(backend["health"], "up");
    assert_eq!(
        status["services"][1]["active_tier"],
        serde_json::Value::Null
    );
    for key in ["state", "priority", "peer", "since", "reason"] {
        assert!(status["ha"].get(key).is_some(), "ha has no {key}");
    }

    // The human view, against a snapshot (instance name and check latency
    // masked: they change from run to run).
    let human = bed.lb_command(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout)
        .replace(&format!("cli{}", std::process::id()), "INSTANCE");
    let human: String = human
        .lines()
        .map(|line| match line.find("ok (") {
            Some(at) => format!("{}ok (N ms)\n", &line[..at]),
            None => format!("{line}\n"),
        })
        .collect();
    let snapshot = "\
instance INSTANCE   ha: standalone (no ha section in the configuration)

web  tcp 203.0.113.10:80  maglev / nat  active tier 0
  backend                          tier weight effective  health drained  flows  last check
  192.0.2.11:8080                     0    100       100      up      no      0  ok (N ms)

empty  udp 203.0.113.10:53  maglev / nat  active tier none: no usable backend
  backend                          tier weight effective  health drained  flows  last check
  192.0.2.11:53                       0      0         0      up      no      0  -
";
    assert_eq!(human, snapshot, "lb status, human");

    // Datagrams to the service with no usable backend are dropped, counted.
    bed.client.run(|| {
        let socket = UdpSocket::bind("198.51.100.2:0").unwrap();
        for _ in 0..5 {
            socket.send_to(b"q", "203.0.113.10:53").unwrap();
        }
    });
    // Counted once the frames crossed the veth: poll, then check the count
    // is exact.
    let read_stats = || {
        let output = bed.lb_command(&["stats", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    let counted = lb_tests::netns::wait_until(Duration::from_secs(5), || {
        read_stats()["drops"]["drop_no_backend"].as_u64() >= Some(5)
    });
    assert!(counted, "5 datagrams not counted in 5 s: {}", read_stats());
    let counters = bed.lb_command(&["stats", "--output", "json"]);
    let counters: serde_json::Value = serde_json::from_slice(&counters.stdout).unwrap();
    assert_eq!(counters["drops"]["drop_no_backend"], 5, "{counters}");
    // The connection table's fill and eviction estimate (no walk yet: the
    // first is 10 s after the start).
    let table = &counters["connection_table"];
    assert_eq!(table["capacity"], 1_048_576, "{counters}");
    assert!(table["evictions_at_least"].is_u64(), "{counters}");
    assert!(table["evictions_at_most"].is_u64(), "{counters}");
    let human = bed.lb_command(&["stats"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("drop_no_backend")
            && human.contains("192.0.2.11:8080")
            && human.contains("connection table:"),
        "{human}"
    );

    // The metrics page, fetched over HTTP inside the balancer's namespace and
    // read by a Prometheus text-format parser.
    let scrape = || {
        let response = bed.lb.metrics_page();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("no {name}{{{}={:?}}}", label.0, label.1));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected type"),
        }
    };
    let first = scrape();
    assert_eq!(
        value(
            &first,
            "lb_dropped_packets_total",
            ("reason", "drop_no_backend")
        ),
        5.0
    );
    assert_eq!(
        value(&first, "lb_backend_up", ("backend", "192.0.2.11:8080")),
        1.0
    );
    assert_eq!(
        value(&first, "lb_service_serving_backends", ("service", "empty")),
        0.0
    );
    assert_eq!(value(&first, "lb_ha_state", ("state", "standalone")), 1.0);
    assert_eq!(value(&first, "lb_map_entries", ("map", "SERVICES")), 2.0);
    assert_eq!(value(&first, "lb_map_capacity", ("map", "SERVICES")), 64.0);
    assert_eq!(
        value(
            &first,
            "lb_connection_table_evictions_estimated_total",
            ("bound", "upper")
        ),
        0.0
    );
    let checks = first
        .samples
        .iter()
        .find(|s| s.metric == "lb_health_check_duration_seconds")
        .expect("a check latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &checks.value else {
        panic!("not a histogram: {checks:?}");
    };
    assert!(
        buckets.iter().any(|b| b.count >= 1.0),
        "no check counted: {buckets:?}"
    );
    let before = value(&first, "lb_service_new_flows_total", ("service", "web"));
    let answered = bed
        .client
        .run(|| lb_tests::bed::tcp_request("203.0.113.10:80".parse().unwrap(), None));
    assert!(answered.is_some());
    let after = value(&scrape(), "lb_service_new_flows_total", ("service", "web"));
    assert_eq!(
        after,
        before + 1.0,
        "a new connection must count one new flow"
    );

    // The control socket is root's alone.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    // A copy nobody can execute, wherever the build tree lives.
    let copy = lb_tests::TempFile::new("lb-binary", "");
    std::fs::copy(lb_binary(), copy.path()).unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(copy.path())
        .args(["status", "--socket", &socket])
        .output()
        .unwrap();
    assert_eq!(as_nobody.status.code(), Some(2), "{as_nobody:?}");
    assert!(
        String::from_utf8_lossy(&as_nobody.stderr).contains("permission denied"),
        "{as_nobody:?}"
    );

    // The live view, as a script reads it: one object of rates per second.
    let watch = bed.lb_command(&["stats", "--watch", "--count", "2", "--output", "json"]);
    assert!(watch.status.success(), "{watch:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0]["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "web")
    );

    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("drop_no_backend"), "{text}");
    assert!(
        !bed.lb.has_xdp("eth0") && !bed.lb.has_xdp("eth1"),
        "XDP left attached"
    );
    assert!(
        !std::path::Path::new(&socket).exists(),
        "socket left behind"
    );
}

#[test]
fn client_commands_say_when_the_controller_is_not_running() {
    let socket = format!("/run/lb/absent-{}.sock", std::process::id());
    for command in ["status", "stats"] {
        let output = std::process::Command::new(lb_binary())
            .args([command, "--socket", &socket])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{command}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("not running") && stderr.contains(&socket),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_command_line_that_does_not_parse_exits_1_and_help_exits_0() {
    let run = |args: &[&str]| {
        std::process::Command::new(lb_binary())
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["drain"][..],
        &["weight", "web", "192.0.2.11"],
        &["no-such-command"],
        &["status", "--output", "yaml"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "lb {args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with("error:") && stderr.contains("--help"),
            "lb {args:?} says what is wrong and where help is: {stderr}"
        );
    }
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("drain"));
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let config = lb_tests::TempFile::new(
        "bad.yaml",
        "instance: bad\ninterfaces: [{ name: eth0 }]\nservices:\n\
         \x20 - { name: a, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11, port: 8080 }] }\n\
         \x20 - { name: a, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: '2001:db8::1' }] }\n",
    );
    let output = std::process::Command::new(lb_binary())
        .args(["check", "-c", config.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "services[0].backends[0].port",
        "services[1].name",
        "services[1]: tcp 203.0.113.10:80",
        "services[1].backends[0].address",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_refuses_announcing_a_nat_service_and_says_why() {
    let config = lb_tests::TempFile::new(
        "announce-nat.yaml",
        "instance: an\ninterfaces: [{ name: eth0 }]\nservices:\n\
         \x20 - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, backends: [{ address: 192.0.2.11 }] }\n\
         \x20 - { name: edge, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n\
         announce: { bird_socket: /run/bird/bird.ctl, min_healthy: 1 }\n",
    );
    for json in [false, true] {
        let mut args = vec!["check", "-c", config.path().to_str().unwrap()];
        if json {
            args.extend(["--output", "json"]);
        }
        let output = std::process::Command::new(lb_binary())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let text = String::from_utf8_lossy(if json { &output.stdout } else { &output.stderr })
            .into_owned();
        assert!(
            text.contains("services[0].forwarding")
                && text.contains("cannot be announced")
                && text.contains("VRRP pair"),
            "{text}"
        );
    }
    // Listing only the dsr VIP is accepted.
    let fixed = lb_tests::TempFile::new(
        "announce-dsr.yaml",
        &std::fs::read_to_string(config.path()).unwrap().replace(
            "min_healthy: 1 }",
            "min_healthy: 1, vips: [{ vip: 203.0.113.11 }] }",
        ),
    );
    let output = std::process::Command::new(lb_binary())
        .args(["check", "-c", fixed.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn drain_weight_and_reload_from_the_command_line() {
    use lb_tests::bed::{HeldConnection, tcp_request};
    let socket = format!("/run/lb/ops-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11, 12]);
    let config = format!(
        "instance: ops{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: \
         [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
         control: {{ socket: {socket} }}\n",
        pid = std::process::id()
    );
    bed.start_lb(&config);
    let target: std::net::SocketAddr = "203.0.113.10:80".parse().unwrap();
    let held = bed
        .client
        .run(move || HeldConnection::open(target))
        .expect("connect");
    let drained_host = held.backend.trim_start_matches('b').to_string();
    let drained = format!("192.0.2.{drained_host}");
    let other = if drained_host == "11" {
        "192.0.2.12"
    } else {
        "192.0.2.11"
    };

    let output = bed.lb_command(&["drain", "web", &drained, "--output", "json"]);
    assert!(output.status.success(), "{output:?}");
    let backend: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(backend["drained"], true);
    assert_eq!(backend["effective_weight"], 0);
    let served = bed.client.run(move || {
        (0..100)
            .map(|_| tcp_request(target, None))
            .collect::<Vec<_>>()
    });
    assert!(
        served.iter().all(|s| s.as_deref()
            == Some(&format!("b{}", if drained_host == "11" { "12" } else { "11" })[..])),
        "{served:?}"
    );
    // The drained backend's established connection finishes.
    assert!(
        bed.client.run(move || held.finish()).is_some(),
        "drain broke an established flow"
    );

    let output = bed.lb_command(&["weight", "web", &format!("{other}:8080"), "50"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("weight 100 (effective 50)"));

    // Unknown names: exit 1, the valid ones listed.
    let output = bed.lb_command(&["drain", "web", "192.0.2.99"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("192.0.2.11:8080") && stderr.contains("192.0.2.12:8080"),
        "{stderr}"
    );
    let output = bed.lb_command(&["undrain", "nosuch", "192.0.2.11"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("services: web"));

    // A reload that leaves the backend alone keeps the drain; one that
    // changes it drops it.
    let output = bed.lb_command(&["reload"]);
    assert!(output.status.success(), "{output:?}");
    let drained_now = |bed: &Bed| -> bool {
        let status = bed.lb_command(&["status", "--output", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        status["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["drained"] == true)
    };
    assert!(drained_now(&bed), "reload dropped the drain");
    let path = bed.config.as_ref().unwrap().path().to_path_buf();
    std::fs::write(
        &path,
        config.replace(
            &format!("{{ address: {drained}, port: 8080 }}"),
            &format!("{{ address: {drained}, port: 8080, weight: 120 }}"),
        ),
    )
    .unwrap();
    assert!(bed.lb_command(&["reload"]).status.success());
    assert!(!drained_now(&bed), "a changed backend kept its old drain");

    // A broken file: exit 1, the problem named, nothing changed.
    std::fs::write(&path, "instance: [\n").unwrap();
    let output = bed.lb_command(&["reload"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing changed"));
    assert!(bed.client.run(move || tcp_request(target, None)).is_some());
}

#[test]
fn check_lists_every_ha_and_type_problem_at_once_and_warns_about_the_host() {
    let check = |text: &str, json: bool| {
        let config = lb_tests::TempFile::new("check.yaml", text);
        let mut args = vec!["check", "-c", config.path().to_str().unwrap()];
        if json {
            args.extend(["--output", "json"]);
        }
        std::process::Command::new(lb_binary())
            .args(&args)
            .output()
            .unwrap()
    };
    let base = "instance: check\ninterfaces: [{ name: lo }]\nservices:\n\
                \x20 - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.11 }] }\n";
    // Everything `lb run` would refuse in the ha section, at once.
    let text = format!(
        "{base}ha:\n  interface: lo\n  virtual_router_id: 0\n  priority: 255\n  \
         advert_interval: 15ms\n  unicast_peers: ['2001:db8::2']\n"
    );
    let output = check(&text, false);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "4 problem(s)",
        "line 7, column 3: ha.virtual_router_id",
        "line 8, column 3: ha.priority",
        "line 9, column 3: ha.advert_interval",
        "line 10, column 19: ha.unicast_peers[0]: 2001:db8::2: this instance advertises over IPv4",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    let output = check(&text, true);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let problems = value["problems"].as_array().expect("a problems array");
    assert_eq!(problems.len(), 4, "{value}");
    assert_eq!(problems[0]["path"], "ha.virtual_router_id");
    assert_eq!(problems[0]["line"], 7);
    assert_eq!(problems[0]["column"], 3);

    // Two type errors in one service, and one in another section.
    let text = base
        .replace("port: 80", "port: eighty")
        .replace("protocol: tcp", "protocol: sctp")
        + "control: { metrics: nowhere }\n";
    let output = check(&text, false);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "services[0].port",
        "services[0].protocol",
        "line 5, column 12: control.metrics",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }

    // A file for another host: valid, with a warning per missing interface.
    let text = base.replace("{ name: lo }", "{ name: lo }, { name: lbt-nosuch0 }")
        + "ha: { interface: lbt-nosuch1, virtual_router_id: 51, priority: 100 }\n";
    let output = check(&text, false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "warning: line 2, column 30: interfaces[1].name: no interface \"lbt-nosuch0\" on this host"
        ) && stderr.contains("warning: line 5, column 7: ha.interface: no interface \"lbt-nosuch1\""),
        "{stderr}"
    );
    let output = check(&text, true);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(
        value["warnings"].as_array().map(Vec::len),
        Some(2),
        "{value}"
    );

    // Both kinds of warning at once: the file's own (a service with no
    // backends) and this host's, in one list.
    let text = base.replace("{ name: lo }", "{ name: lo }, { name: lbt-nosuch0 }")
        + "  - { name: spare, vip: 203.0.113.10, port: 53, protocol: udp, backends: [] }\n";
    let output = check(&text, false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "warning: line 5, column 64: services[1].backends: service \"spare\" has no backends"
        ) && stderr.contains(
            "warning: line 2, column 30: interfaces[1].name: no interface \"lbt-nosuch0\""
        ),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("2 warning(s)"),
        "{output:?}"
    );
    let output = check(&text, true);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let paths: Vec<&str> = value["warnings"]
        .as_array()
        .expect("a warnings array")
        .iter()
        .map(|w| w["path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        ["services[1].backends", "interfaces[1].name"],
        "{value}"
    );
    assert_eq!(value["warnings"][0]["line"], 5, "{value}");
    assert_eq!(value["warnings"][1]["line"], 2, "{value}");
}

/// A service with no backends is accepted, but never silently: `lb check`
/// warns (exit 0), `lb run` logs it, and `lb status` shows it in both forms;
/// its packets are dropped and counted.
#[test]
fn a_service_without_backends_is_accepted_with_a_warning() {
    let socket = format!("/run/lb/cli-empty-{}.sock", std::process::id());
    let config = format!(
        "instance: clie{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         \x20 - {{ name: spare, vip: 203.0.113.10, port: 53, protocol: udp, backends: [] }}\n\
         control: {{ socket: {socket} }}\n",
        pid = std::process::id()
    );
    let file = lb_tests::TempFile::new("empty.yaml", &config);
    // In the balancer's namespace, which has eth0 and eth1: no warning
    // about the host.
    let mut bed = Bed::new(&[11]);
    let check = |bed: &Bed, json: bool| {
        let mut args = vec!["check", "-c", file.path().to_str().unwrap()];
        if json {
            args.extend(["--output", "json"]);
        }
        bed.lb.exec(lb_binary().to_str().unwrap(), &args)
    };
    let output = check(&bed, false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "warning: line 5, column 64: services[1].backends: service \"spare\" has no backends"
        ),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 warning(s)"),
        "{output:?}"
    );
    let output = check(&bed, true);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(
        json["warnings"][0]["path"], "services[1].backends",
        "{json}"
    );

    bed.start_lb(&config);
    let status = bed.lb_command(&["status", "--output", "json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let spare = &status["services"][1];
    assert_eq!(spare["name"], "spare", "{status}");
    assert_eq!(spare["backends"], serde_json::json!([]), "{status}");
    assert_eq!(spare["active_tier"], serde_json::Value::Null, "{status}");
    assert!(
        spare["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("no backends")),
        "{status}"
    );
    assert_eq!(status["services"][0]["warnings"], serde_json::json!([]));
    let human = bed.lb_command(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("spare  udp 203.0.113.10:53")
            && human.contains("  warning: no backends configured"),
        "{human}"
    );
    bed.client.run(|| {
        let socket = UdpSocket::bind("198.51.100.2:0").unwrap();
        for _ in 0..3 {
            socket.send_to(b"q", "203.0.113.10:53").unwrap();
        }
    });
    let dropped = lb_tests::netns::wait_until(Duration::from_secs(5), || {
        let output = bed.lb_command(&["stats", "--output", "json"]);
        let counters: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_default();
        counters["drops"]["drop_no_backend"] == 3
    });
    assert!(
        dropped,
        "packets to the empty service not counted as drop_no_backend"
    );
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("\"spare\" has no backends"), "{log}");
}

/// `lb status NAME...` / `lb stats NAME...` and `?service=NAME` on the API
/// report only the services named, the rest of the report unchanged; an
/// unknown name is refused, naming it and listing the services.
#[test]
fn status_and_stats_of_named_services() {
    let socket = format!("/run/lb/cli-filter-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11]);
    bed.start_lb(&format!(
        "instance: clif{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         \x20 - {{ name: dns, vip: 203.0.113.10, port: 53, protocol: udp, backends: [{{ address: 192.0.2.11 }}] }}\n\
         \x20 - {{ name: mail, vip: 203.0.113.10, port: 25, protocol: tcp, backends: [{{ address: 192.0.2.11 }}] }}\n\
         control: {{ socket: {socket} }}\n",
        pid = std::process::id()
    ));
    let json = |args: &[&str]| -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let output = bed.lb_command(&args);
        assert!(output.status.success(), "lb {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let names = |report: &serde_json::Value| -> Vec<String> {
        report["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };

    let whole = json(&["status"]);
    assert_eq!(names(&whole), ["web", "dns", "mail"], "{whole}");
    let web = json(&["status", "web"]);
    assert_eq!(names(&web), ["web"], "{web}");
    assert_eq!(web["services"][0], whole["services"][0], "{web}");
    for key in ["instance", "ha", "guard", "attack", "announce", "sync"] {
        assert_eq!(web[key].is_null(), whole[key].is_null(), "{key}: {web}");
    }
    // In the configuration's order, whatever the order asked.
    let two = json(&["status", "mail", "web"]);
    assert_eq!(names(&two), ["web", "mail"], "{two}");
    let stats = json(&["stats", "dns"]);
    assert_eq!(names(&stats), ["dns"], "{stats}");
    assert!(
        stats["drops"].is_object() && stats["reasons"].is_object(),
        "{stats}"
    );
    assert!(stats["connection_table"].is_object(), "{stats}");

    let human = bed.lb_command(&["status", "dns"]);
    assert!(human.status.success(), "{human:?}");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("\ndns  udp 203.0.113.10:53"), "{human}");
    assert!(
        !human.contains("web  tcp") && !human.contains("mail  tcp"),
        "{human}"
    );
    let human = bed.lb_command(&["stats", "web"]);
    assert!(human.status.success(), "{human:?}");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("\nweb ") && human.contains("192.0.2.11:8080"),
        "{human}"
    );
    assert!(
        !human.contains("\ndns ") && !human.contains("\nmail "),
        "{human}"
    );
    let watch = bed.lb_command(&[
        "stats", "web", "--watch", "--count", "1", "--output", "json",
    ]);
    assert!(watch.status.success(), "{watch:?}");
    let watched: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&watch.stdout).trim()).unwrap();
    assert_eq!(names(&watched), ["web"], "{watched}");

    // An unknown name: exit 1 (a mistake to fix), naming it and the known
    // ones: on stderr, or with `--output json` as `{"error": ...}` on stdout.
    let refusal = "no service named \"nosuch\": the services are web, dns, mail";
    for command in ["status", "stats"] {
        let output = bed.lb_command(&[command, "nosuch"]);
        assert_eq!(output.status.code(), Some(1), "lb {command}: {output:?}");
        assert!(output.stdout.is_empty(), "lb {command}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(refusal), "lb {command}: {stderr}");
        let output = bed.lb_command(&[command, "web", "nosuch", "--output", "json"]);
        assert_eq!(output.status.code(), Some(1), "lb {command}: {output:?}");
        let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(refusal)),
            "lb {command}: {error}"
        );
    }

    // The API itself.
    let socket = std::path::Path::new(&socket);
    let answer = lb::api::get(socket, "/v1/stats?service=mail&service=dns").unwrap();
    assert_eq!(names(&answer), ["dns", "mail"], "{answer}");
    let answer = lb::api::get(socket, "/v1/status?service=web").unwrap();
    assert_eq!(names(&answer), ["web"], "{answer}");
    for path in [
        "/v1/status?service=nosuch",
        "/v1/stats?service=web&service=nosuch",
    ] {
        match lb::api::get(socket, path) {
            Err(lb::api::ClientError::Api { status, message }) => {
                assert_eq!(status, 404, "{path}: {message}");
                assert!(message.contains("\"nosuch\""), "{path}: {message}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    match lb::api::get(socket, "/v1/status?services=web") {
        Err(lb::api::ClientError::Api { status, .. }) => assert_eq!(status, 400),
        other => panic!("an unknown parameter: {other:?}"),
    }
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
}

/// `lb check` prints what the data path's tables cost the kernel (Maglev:
/// two rows of `ring_size` eight-byte elements per service), and a file
/// whose tables this host cannot hold gets a warning from `lb check` and is
/// refused by `lb run` before anything changes.
#[test]
fn check_prints_table_memory_and_run_refuses_tables_the_host_cannot_hold() {
    let pid = std::process::id();
    let small = lb_tests::TempFile::new(
        "tables-small.yaml",
        &format!(
            "instance: clim{pid}\ninterfaces: [{{ name: lo }}]\n\
             dataplane: {{ max_services: 100, ring_size: 65537 }}\n"
        ),
    );
    let output = std::process::Command::new(lb_binary())
        .args([
            "check",
            "-c",
            small.path().to_str().unwrap(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let memory = &json["table_memory"];
    assert_eq!(memory["maglev_bytes"], 100 * 2 * 65_537 * 8, "{json}");
    let part = |key: &str| memory[key].as_u64().unwrap();
    assert_eq!(
        part("total_bytes"),
        part("maglev_bytes") + part("connections_bytes") + part("other_bytes"),
        "{json}"
    );
    assert!(
        part("connections_bytes") > 0 && part("available_bytes") > 0,
        "{json}"
    );
    assert_eq!(json["warnings"], serde_json::json!([]), "{json}");
    let output = std::process::Command::new(lb_binary())
        .args(["check", "-c", small.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("tables: about ")
            && stdout.contains("(Maglev 100.0 MiB, connection tables"),
        "{stdout}"
    );

    // A million services with a million-slot ring: 16 TB of Maglev rows.
    let socket = format!("/run/lb/cli-huge-{pid}.sock");
    let huge = lb_tests::TempFile::new(
        "tables-huge.yaml",
        &format!(
            "instance: clih{pid}\ninterfaces: [{{ name: lo }}]\n\
             dataplane: {{ max_services: 1000000, ring_size: 1000003 }}\n\
             control: {{ socket: {socket} }}\n"
        ),
    );
    let output = std::process::Command::new(lb_binary())
        .args(["check", "-c", huge.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "a warning: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dataplane: the data path's tables need about 14901.8 GiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("lb run would refuse to start on this host"),
        "{stderr}"
    );
    let output = std::process::Command::new(lb_binary())
        .args(["run", "-c", huge.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nothing was changed") && stderr.contains("tables need about"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/lb/clih{pid}")).exists(),
        "no maps pinned"
    );
}

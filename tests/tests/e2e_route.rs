//! `lb route` against a running `lb run` and real traffic in namespaces:
//! for each of 40 client ports, `lb route` names a backend before the
//! connection is made, and the backend that then answers the connection is
//! that one; afterwards `lb route` finds the flow in the connection table on
//! the same backend. Bad arguments are refused with exit 1. On the same
//! bed, `lb stats --watch` is checked for scripts (pipes, JSON).

use std::net::{IpAddr, SocketAddr};

use lb_tests::bed::{Bed, tcp_request};

const CONNECTIONS: u16 = 40;

fn config(socket: &str) -> String {
    format!(
        "instance: e2eroute{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: maglev, \
         forwarding: nat, backends: [{{ address: 192.0.2.11, port: 8080 }}, \
         {{ address: 192.0.2.12, port: 8080 }}, {{ address: 192.0.2.13, port: 8080, weight: 300 }}] }}\n\
         control: {{ socket: {socket} }}\n",
        std::process::id()
    )
}

fn route(bed: &Bed, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["route"];
    full.extend(args);
    full.extend(["--output", "json"]);
    let output = bed.lb_command(&full);
    assert!(output.status.success(), "lb route {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).expect("lb route --output json")
}

/// `b11` for `192.0.2.11`.
fn name(backend: &serde_json::Value) -> String {
    let address = backend["address"].as_str().expect("backend address");
    format!("b{}", address.rsplit('.').next().unwrap_or(""))
}

/// `lb stats --watch` into a pipe: no terminal escapes; with `--output
/// json` one object per interval, services by name, backends as fields.
fn watch_for_scripts(bed: &Bed) {
    let text = bed.lb_command(&["stats", "--watch", "--count", "2"]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        !text.contains('\x1b'),
        "terminal escapes into a pipe: {text:?}"
    );
    assert_eq!(text.matches("service / backend").count(), 2, "{text}");
    assert!(text.contains("  192.0.2.13:8080"), "{text}");
    let json = bed.lb_command(&["stats", "--watch", "--count", "2", "--output", "json"]);
    assert!(json.status.success(), "{json:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let service = &line["services"][0];
        assert_eq!(service["name"], "web", "{line}");
        assert!(service["packets_per_second"].is_number(), "{line}");
        let addresses: Vec<&str> = service["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            addresses,
            ["192.0.2.11", "192.0.2.12", "192.0.2.13"],
            "{line}"
        );
        assert!(line["reasons"]["forward_to_backend"].is_number(), "{line}");
    }
}

#[test]
fn route_names_the_backend_real_connections_reach() {
    let socket = format!("/run/lb/e2e-route-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11, 12, 13]);
    bed.start_lb(&config(&socket));
    let client: IpAddr = "198.51.100.2".parse().unwrap();
    let vip = SocketAddr::new("203.0.113.10".parse().unwrap(), 80);
    let mut served = std::collections::BTreeSet::new();
    for i in 0..CONNECTIONS {
        let port = 30_000 + i;
        let flow = format!("198.51.100.2:{port}");
        let before = route(&bed, &[&flow, "203.0.113.10:80", "tcp"]);
        assert_eq!(before["verdict"], "forward_to_backend", "{before:#}");
        assert_eq!(before["service"]["name"], "web");
        assert_eq!(before["service"]["match"], "exact");
        assert_eq!(before["backend"]["source"], "scheduler", "{before:#}");
        assert_eq!(before["backend"]["health"], "up", "{before:#}");
        assert!(before["connection"].is_null(), "{before:#}");
        assert_eq!(before["next_hop"]["interface"], "eth1", "{before:#}");
        let predicted = name(&before["backend"]);
        let answered = bed
            .client
            .run(move || tcp_request(vip, Some(SocketAddr::new(client, port))))
            .unwrap_or_else(|| panic!("connection from port {port} failed"));
        assert_eq!(answered, predicted, "port {port}: {before:#}");
        served.insert(answered);
        let after = route(&bed, &[&flow, "203.0.113.10:80"]);
        assert_eq!(after["backend"]["source"], "connection", "{after:#}");
        assert_eq!(name(&after["backend"]), predicted, "{after:#}");
        assert_eq!(after["connection"]["kept"], true, "{after:#}");
    }
    assert!(served.len() > 1, "every connection went to {served:?}");
    // Without a client port, maglev cannot be named; the rest is answered.
    let bare = route(&bed, &["198.51.100.2", "203.0.113.10:80"]);
    assert!(bare["backend"].is_null(), "{bare:#}");
    assert_eq!(bare["scheduler"]["needs_client_port"], true, "{bare:#}");
    // A port with no service: the stack's.
    let none = route(&bed, &["198.51.100.2:1", "203.0.113.10:81"]);
    assert_eq!(none["verdict"], "pass_no_service", "{none:#}");
    // Human output, and a user error.
    let text = bed.lb_command(&["route", "198.51.100.2:30000", "203.0.113.10:80"]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("backend   192.0.2.1"), "{text}");
    let bad = bed.lb_command(&["route", "nonsense", "203.0.113.10:80"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    watch_for_scripts(&bed);
    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
}

//! The lb demo: the real `lb run` balancing real TCP traffic from a client
//! over three backends, in each forwarding mode (NAT, DSR, tunnel), all in
//! network namespaces; then `lb status`, `lb stats`, `lb route` and `lb
//! trace` as an operator sees them. Run with `cargo xtask demo` (as root). Everything it creates is
//! removed when it ends, also on failure.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_tests::bed::{Bed, tcp_request};

const CONNECTIONS: u16 = 300;

fn main() {
    println!("lb demo: client -> lb (XDP) -> backends b11, b12, b13 (weights 1:1:2)\n");
    let mut bed = Bed::new(&[11, 12, 13]);
    println!(
        "  namespaces: client {}, balancer {}, switch {}, backends {}",
        bed.client.name(),
        bed.lb.name(),
        bed.switch.name(),
        bed.backends
            .iter()
            .map(|b| b.ns.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let socket = format!("/run/lb/demo-{}.sock", std::process::id());
    let config = format!(
        "instance: demo{pid}\n\
         interfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\n\
         services:\n\
         \x20 - name: web-nat\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    forwarding: nat\n\
         \x20   backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}, {{ address: 192.0.2.13, port: 8080, weight: 200 }}]\n\
         \x20 - name: web-dsr\n    vip: 203.0.113.11\n    port: 80\n    protocol: tcp\n    forwarding: dsr\n\
         \x20   backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}, {{ address: 192.0.2.13, weight: 200 }}]\n\
         \x20 - name: web-tunnel\n    vip: 203.0.113.12\n    port: 80\n    protocol: tcp\n    forwarding: tunnel\n\
         \x20   backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}, {{ address: 192.0.2.13, weight: 200 }}]\n\
         control: {{ socket: {socket} }}\n\
         dataplane: {{ tunnel_source_v4: 192.0.2.240/28 }}\n",
        pid = std::process::id()
    );
    println!("\n  lb.yaml:\n{}", indent(&config));
    bed.start_lb(&config);
    println!("  lb run: attached to eth0 and eth1 in {}\n", bed.lb.name());

    for (mode, vip) in [
        ("nat", "203.0.113.10"),
        ("dsr", "203.0.113.11"),
        ("tunnel", "203.0.113.12"),
    ] {
        let target: SocketAddr = format!("{vip}:80").parse().unwrap();
        let served = bed.client.run(move || {
            let mut served: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..CONNECTIONS {
                let name = tcp_request(target, None).unwrap_or_else(|| "failed".into());
                *served.entry(name).or_default() += 1;
            }
            served
        });
        println!("  {mode:<6} {CONNECTIONS} connections to {vip}:80 -> {served:?}");
    }

    let status = bed.lb_command(&["status"]);
    println!(
        "\n  $ lb status\n{}",
        indent(&String::from_utf8_lossy(&status.stdout))
    );
    let counters = bed.lb_command(&["stats"]);
    println!(
        "  $ lb stats\n{}",
        indent(&String::from_utf8_lossy(&counters.stdout))
    );
    // Where one flow goes, then the same flow as it happens.
    let route = bed.lb_command(&["route", "198.51.100.2:40000", "203.0.113.10:80"]);
    println!(
        "  $ lb route 198.51.100.2:40000 203.0.113.10:80\n{}",
        indent(&String::from_utf8_lossy(&route.stdout))
    );
    let lb = lb_tests::lb_binary();
    let socket_arg = socket.clone();
    let trace = bed.lb.spawn(
        lb.to_str().unwrap(),
        &[
            "trace",
            "--vip",
            "203.0.113.10",
            "--limit",
            "4",
            "--socket",
            &socket_arg,
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    bed.client.run(|| {
        let from: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        tcp_request("203.0.113.10:80".parse().unwrap(), Some(from))
    });
    let traced = trace.wait();
    println!(
        "  $ lb trace --vip 203.0.113.10 --limit 4\n{}",
        indent(&String::from_utf8_lossy(&traced.stdout))
    );
    let output = bed.stop_lb();
    println!(
        "  lb run's log:\n{}",
        indent(&String::from_utf8_lossy(&output.stderr))
    );
    assert!(output.status.success(), "lb run failed");
    println!(
        "  XDP still attached after stop: {}",
        bed.lb.has_xdp("eth0")
    );
    println!("\ndemo done; namespaces removed.");
}

fn indent(text: &str) -> String {
    text.lines().fold(String::new(), |mut out, line| {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
        out
    })
}

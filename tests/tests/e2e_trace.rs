//! `lb trace --drops` against a running `lb run` in namespaces: a denied
//! source, a malformed TCP packet (a header cut short) and a connection to
//! a service with no backend each show up with their reason, interface and
//! 5-tuple; accepted traffic does not (drops only). When the trace ends,
//! the kernel's tracing is turned off again (the lease lapses). Without
//! `--drops`, forwarded packets show with their backend; `--limit` ends it.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{
    bed::{Bed, tcp_request},
    lb_binary,
    netns::wait_until,
};

fn config(socket: &str) -> String {
    format!(
        "instance: e2etrace{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\n\
         guard: {{ deny: [198.51.100.3/32] }}\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}] }}\n\
         \x20 - {{ name: empty, vip: 203.0.113.10, port: 81, protocol: tcp, forwarding: nat, \
         backends: [] }}\n\
         control: {{ socket: {socket} }}\n",
        std::process::id()
    )
}

/// Sends 8 bytes as a TCP "segment" (shorter than any TCP header) to
/// `target` through a raw socket: the kernel adds the IPv4 header.
fn send_truncated_tcp(target: IpAddr) {
    let IpAddr::V4(v4) = target else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET");
    addr.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
    let payload = [0x9c_u8, 0x40, 0, 80, 0, 0, 0, 1];
    // SAFETY: the buffer and address outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const addr).cast(),
            libc::socklen_t::try_from(std::mem::size_of_val(&addr)).expect("length"),
        )
    };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    assert_eq!(sent, 8, "sendto: {}", std::io::Error::last_os_error());
}

#[test]
fn trace_shows_drops_with_their_reasons() {
    let socket = format!("/run/lb/e2e-trace-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11]);
    bed.client.addr("eth0", "198.51.100.3/24");
    bed.start_lb(&config(&socket));
    let lb = lb_binary();
    let trace = bed.lb.spawn(
        lb.to_str().unwrap(),
        &["trace", "--drops", "--output", "json", "--socket", &socket],
    );
    let lb_log = |bed: &Bed| bed.lb_process.as_ref().unwrap().stderr_so_far();
    assert!(
        wait_until(Duration::from_secs(10), || lb_log(&bed).contains("on=true")),
        "the trace was not turned on: {}",
        lb_log(&bed)
    );
    let vip: IpAddr = "203.0.113.10".parse().unwrap();
    let reasons = ["drop_denied", "drop_malformed_tcp", "drop_no_backend"];
    let seen_all = wait_until(Duration::from_secs(20), || {
        bed.client.run(move || {
            // Accepted: must not show with --drops.
            assert!(tcp_request(SocketAddr::new(vip, 80), None).is_some());
            let denied = SocketAddr::new("198.51.100.3".parse().unwrap(), 0);
            let _ = tcp_request(SocketAddr::new(vip, 80), Some(denied));
            send_truncated_tcp(vip);
            let _ =
                TcpStream::connect_timeout(&SocketAddr::new(vip, 81), Duration::from_millis(300));
        });
        let out = trace.stdout_so_far();
        reasons.iter().all(|r| out.contains(r))
    });
    let out = trace.stdout_so_far();
    assert!(seen_all, "not every drop was traced:\n{out}");
    trace.signal(libc::SIGTERM);
    let _ = trace.wait();
    let mut found = std::collections::BTreeMap::new();
    for line in out.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if event.get("lost").is_some() {
            continue;
        }
        assert_eq!(event["drop"], true, "--drops printed {line}");
        assert_eq!(event["interface"], "eth0", "{line}");
        assert_eq!(event["destination"], "203.0.113.10", "{line}");
        found.insert(event["reason"].as_str().unwrap().to_string(), event);
    }
    let denied = &found["drop_denied"];
    assert_eq!(denied["source"], "198.51.100.3");
    assert_eq!(denied["destination_port"], 80);
    assert_eq!(denied["protocol"], "tcp");
    let malformed = &found["drop_malformed_tcp"];
    assert_eq!(malformed["source"], "198.51.100.2");
    assert!(malformed["destination_port"].is_null(), "{malformed}");
    let no_backend = &found["drop_no_backend"];
    assert_eq!(no_backend["destination_port"], 81);
    assert!(no_backend["backend"].is_null());
    assert!(
        wait_until(Duration::from_secs(15), || lb_log(&bed)
            .contains("on=false")),
        "the trace stayed on after its client left: {}",
        lb_log(&bed)
    );
    // A trace with a limit ends by itself.
    let limited = bed.lb.spawn(
        lb.to_str().unwrap(),
        &[
            "trace", "--limit", "5", "--output", "json", "--socket", &socket,
        ],
    );
    bed.client.run(move || {
        for _ in 0..20 {
            if tcp_request(SocketAddr::new(vip, 80), None).is_some() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let output = limited.wait();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .filter(|event: &serde_json::Value| event.get("lost").is_none())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines
            .iter()
            .any(|e| e["reason"] == "forward_to_backend" && e["backend"] == "192.0.2.11:8080"),
        "{text}"
    );
    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
}

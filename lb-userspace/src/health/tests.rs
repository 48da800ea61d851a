//! Trackers, probes and the checker, against real sockets on loopback.

use std::{
    collections::BTreeMap,
    net::{TcpListener, UdpSocket},
    sync::mpsc::{self, Receiver, Sender},
};

use super::*;
use crate::{config::Config, plan::BackendKey};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Slack allowed beyond a probe's timeout: scheduling on a busy
/// machine, not work. Generous, yet far below what an unbounded probe
/// takes (a silent peer: for ever; `sleep 5`: 5 s; a SYN never
/// answered: about two minutes).
const SLACK: Duration = Duration::from_secs(2);

fn ok(detail: &str) -> Outcome {
    Outcome::success(detail, Duration::from_millis(1))
}

fn fail(detail: &str) -> Outcome {
    Outcome::failure(detail, Duration::from_millis(2))
}

/// Feeds `outcomes` one second apart from `t0`; returns the transitions.
fn feed(tracker: &mut Tracker, t0: Instant, outcomes: &[Outcome]) -> Vec<Transition> {
    outcomes
        .iter()
        .zip(1..)
        .filter_map(|(outcome, second)| tracker.observe(outcome, t0 + Duration::from_secs(second)))
        .collect()
}

#[test]
fn unknown_settles_up_after_rise_successes() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(3, 2);
    assert_eq!(tracker.health(), Health::Unknown);
    assert!(tracker.last().is_none());
    assert!(feed(&mut tracker, t0, &[ok("ok"), ok("ok")]).is_empty());
    assert_eq!(tracker.health(), Health::Unknown);
    let transition = tracker.observe(&ok("ok"), t0 + Duration::from_secs(3));
    assert_eq!(
        transition,
        Some(Transition {
            from: Health::Unknown,
            to: Health::Up,
            reason: "ok".into(),
            at: t0 + Duration::from_secs(3),
        })
    );
    assert_eq!(tracker.since(), Some(t0 + Duration::from_secs(3)));
    // Further successes change nothing.
    assert!(feed(&mut tracker, t0, &[ok("ok"), ok("ok")]).is_empty());
}

#[test]
fn unknown_settles_down_after_fall_failures() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(2, 3);
    let transitions = feed(
        &mut tracker,
        t0,
        &[
            fail("connection refused"),
            fail("connection refused"),
            fail("timeout after 300ms"),
        ],
    );
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(transitions[0].from, Health::Unknown);
    assert_eq!(transitions[0].to, Health::Down);
    assert_eq!(transitions[0].reason, "timeout after 300ms");
    assert_eq!(transitions[0].at, t0 + Duration::from_secs(3));
}

#[test]
fn flapping_below_thresholds_does_not_transition() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(3, 3);
    let flapping = [ok("ok"), ok("ok"), fail("x"), fail("x"), ok("ok"), ok("ok")];
    assert!(feed(&mut tracker, t0, &flapping).is_empty());
    assert_eq!(tracker.health(), Health::Unknown);
    assert!(tracker.since().is_none());

    // Once up, two failures between successes never reach fall = 3.
    assert_eq!(feed(&mut tracker, t0, &[ok("ok")]).len(), 1);
    let flapping = [
        fail("x"),
        fail("x"),
        ok("ok"),
        fail("x"),
        fail("x"),
        ok("ok"),
    ];
    assert!(feed(&mut tracker, t0, &flapping).is_empty());
    assert_eq!(tracker.health(), Health::Up);
}

#[test]
fn exactly_fall_failures_go_down_with_the_last_reason() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(1, 3);
    assert_eq!(feed(&mut tracker, t0, &[ok("ok")]).len(), 1);
    assert!(feed(&mut tracker, t0, &[fail("status 500"), fail("status 502")]).is_empty());
    assert_eq!(tracker.health(), Health::Up);
    let at = t0 + Duration::from_secs(10);
    let transition = tracker.observe(&fail("status 503"), at);
    assert_eq!(
        transition,
        Some(Transition {
            from: Health::Up,
            to: Health::Down,
            reason: "status 503".into(),
            at,
        })
    );
    assert_eq!(tracker.since(), Some(at));
    assert!(feed(&mut tracker, t0, &[fail("status 503")]).is_empty());
}

#[test]
fn recovery_needs_rise_consecutive_successes() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(3, 1);
    assert_eq!(feed(&mut tracker, t0, &[fail("exit status 1")]).len(), 1);
    assert_eq!(tracker.health(), Health::Down);
    // Two successes, a failure: the run starts over.
    let interrupted = [
        ok("ok"),
        ok("ok"),
        fail("exit status 1"),
        ok("ok"),
        ok("ok"),
    ];
    assert!(feed(&mut tracker, t0, &interrupted).is_empty());
    assert_eq!(tracker.health(), Health::Down);
    let transitions = feed(&mut tracker, t0, &[ok("ok")]);
    assert_eq!(transitions.len(), 1);
    assert_eq!(
        (transitions[0].from, transitions[0].to),
        (Health::Down, Health::Up)
    );
    assert_eq!(transitions[0].reason, "ok");
}

#[test]
fn last_outcome_and_latency_are_kept() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(2, 2);
    tracker.observe(&ok("ok"), t0);
    tracker.observe(&fail("connection refused"), t0);
    let last = tracker.last().unwrap();
    assert!(!last.ok);
    assert_eq!(last.detail, "connection refused");
    assert_eq!(last.latency, Duration::from_millis(2));
}

#[test]
fn zero_thresholds_act_as_one() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(0, 0);
    assert_eq!(tracker.observe(&ok("ok"), t0).unwrap().to, Health::Up);
    assert_eq!(tracker.observe(&fail("x"), t0).unwrap().to, Health::Down);
}

#[test]
fn health_serializes_lowercase() {
    let json = serde_json::to_string(&[Health::Unknown, Health::Up, Health::Down]).unwrap();
    assert_eq!(json, r#"["unknown","up","down"]"#);
    assert_eq!(Health::Down.to_string(), "down");
}

fn check(kind: CheckKind, timeout_ms: u64) -> HealthCheck {
    HealthCheck {
        kind,
        path: None,
        expect_status: None,
        expect_body: None,
        host: None,
        port: None,
        send: None,
        expect: None,
        command: None,
        interval: Duration::from_millis(timeout_ms.max(50)),
        timeout: Duration::from_millis(timeout_ms),
        rise: 2,
        fall: 2,
    }
}

/// A port on 127.0.0.1 that nothing listens on (just released).
fn closed_tcp_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Probes and also measures the wall-clock time (printed), asserting
/// the probe was bounded: within its timeout plus [`SLACK`].
fn timed_probe(check: &HealthCheck, port: u16) -> Outcome {
    let start = Instant::now();
    let outcome = probe(check, LOCALHOST, port);
    let took = start.elapsed();
    println!(
        "probe took {took:?} (timeout {:?}): {outcome:?}",
        check.timeout
    );
    assert!(
        took <= check.timeout + SLACK,
        "probe took {took:?}: {outcome:?}"
    );
    assert!(outcome.latency <= took);
    outcome
}

#[test]
fn tcp_connect_succeeds_on_a_listener() {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = timed_probe(&check(CheckKind::Tcp, 500), port);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "ok"));
}

#[test]
fn tcp_connect_refused_on_a_closed_port() {
    let outcome = timed_probe(&check(CheckKind::Tcp, 500), closed_tcp_port());
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "connection refused")
    );
}

#[test]
fn check_port_overrides_the_traffic_port() {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let mut tcp = check(CheckKind::Tcp, 500);
    tcp.port = Some(listener.local_addr().unwrap().port());
    assert!(timed_probe(&tcp, closed_tcp_port()).ok);
}

#[test]
fn port_zero_without_a_check_port_fails() {
    let outcome = timed_probe(&check(CheckKind::Tcp, 500), 0);
    assert!(!outcome.ok);
    assert!(outcome.detail.contains("health_check.port"), "{outcome:?}");
}

/// A one-shot HTTP server: accepts one connection, reads the request
/// head, answers `response`, then holds the connection open until the
/// test is done (or 2 s), so the probe cannot rely on EOF. Returns the
/// port, the request it saw, and the sender that lets it finish.
fn http_server(response: &'static str) -> (u16, Receiver<String>, Sender<()>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (request_tx, request_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut request = Vec::new();
        let mut byte = [0; 1];
        while find(&request, b"\r\n\r\n").is_none() && request.len() < 4096 {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            request.push(byte[0]);
        }
        let _ = request_tx.send(String::from_utf8_lossy(&request).into_owned());
        let _ = stream.write_all(response.as_bytes());
        let _ = done_rx.recv_timeout(Duration::from_secs(2));
    });
    (port, request_rx, done_tx)
}

#[test]
fn http_200_is_ok_and_request_is_well_formed() {
    let (port, request, _done) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let mut http = check(CheckKind::Http, 1000);
    http.path = Some("/healthz".into());
    let outcome = timed_probe(&http, port);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "ok"));
    assert_eq!(
        request.recv_timeout(Duration::from_secs(1)).unwrap(),
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             User-Agent: lb-health\r\n\r\n"
    );
}

#[test]
fn http_host_header_and_default_path() {
    let (port, request, _done) = http_server("HTTP/1.0 200 OK\r\n\r\n");
    let mut http = check(CheckKind::Http, 1000);
    http.host = Some("www.example.com".into());
    assert!(timed_probe(&http, port).ok);
    let request = request.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("\r\nHost: www.example.com\r\n"),
        "{request}"
    );
}

#[test]
fn http_503_fails_with_the_status() {
    let (port, _request, _done) =
        http_server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    let outcome = timed_probe(&check(CheckKind::Http, 1000), port);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (false, "status 503"));
}

#[test]
fn http_expected_status_other_than_200() {
    let (port, _request, _done) = http_server("HTTP/1.1 204 No Content\r\n\r\n");
    let mut http = check(CheckKind::Http, 1000);
    http.expect_status = Some(204);
    assert!(timed_probe(&http, port).ok);
}

#[test]
fn http_body_substring_present() {
    let (port, _request, _done) =
        http_server("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}");
    let mut http = check(CheckKind::Http, 1000);
    http.expect_body = Some("\"ok\"".into());
    let outcome = timed_probe(&http, port);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "ok"));
}

#[test]
fn http_body_substring_absent_is_judged_by_content_length() {
    // The server keeps the connection open: the verdict must come from
    // Content-Length, not from the timeout (which would say so).
    let (port, _request, _done) =
        http_server("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndegraded");
    let mut http = check(CheckKind::Http, 10_000);
    http.expect_body = Some("ok".into());
    let outcome = timed_probe(&http, port);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "body lacks \"ok\"")
    );
}

#[test]
fn http_server_that_never_answers_times_out() {
    // The kernel completes the handshake from the backlog; nobody ever
    // accepts or answers.
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = timed_probe(&check(CheckKind::Http, 200), port);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "timeout after 200ms")
    );
    assert!(outcome.latency >= Duration::from_millis(200), "{outcome:?}");
}

#[test]
fn http_garbage_is_not_a_status() {
    let (port, _request, _done) = http_server("SSH-2.0-OpenSSH\r\n");
    let outcome = timed_probe(&check(CheckKind::Http, 1000), port);
    assert!(!outcome.ok);
    assert!(
        outcome.detail.starts_with("malformed status line"),
        "{outcome:?}"
    );
}

#[test]
fn http_expectation_needs_more_until_complete() {
    let expect = HttpExpectation {
        status: 200,
        body: Some("ok"),
    };
    assert_eq!(expect.judge(b"HTTP/1.1 200", false), None);
    assert_eq!(expect.judge(b"HTTP/1.1 200 OK\r\nA: b\r\n", false), None);
    assert_eq!(expect.judge(b"HTTP/1.1 200 OK\r\n\r\nnot yet", false), None);
    assert_eq!(
        expect.judge(b"HTTP/1.1 200 OK\r\n\r\nnot yet", true),
        Some(Err("body lacks \"ok\"".into()))
    );
    assert_eq!(
        expect.judge(b"HTTP/1.1 200 OK\r\n\r\nall ok", false),
        Some(Ok(()))
    );
    assert_eq!(
        expect.judge(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad", false),
        Some(Err("body lacks \"ok\"".into()))
    );
    assert_eq!(
        expect.judge(b"HTTP/1.1 200 OK\r\ncontent-length:  9 \r\n\r\nbad", false),
        None
    );
    assert_eq!(
        expect.judge(b"", true),
        Some(Err("no HTTP status line".into()))
    );
}

/// A one-shot HTTPS server with a fresh self-signed certificate:
/// answers `response` to one request, then closes (with `close_notify`).
fn https_server(response: &'static str) -> u16 {
    let key = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).unwrap();
    let cert = key.cert.der().clone();
    let private =
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], private)
    .unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let connection = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, stream);
        let mut request = Vec::new();
        let mut byte = [0; 1];
        while find(&request, b"\r\n\r\n").is_none() && request.len() < 4096 {
            if tls.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            request.push(byte[0]);
        }
        let _ = tls.write_all(response.as_bytes());
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    port
}

#[test]
fn https_checks_speak_tls_without_verifying_the_certificate() {
    let port = https_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let mut https = check(CheckKind::Https, 1000);
    https.expect_body = Some("ok".into());
    let outcome = timed_probe(&https, port);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (true, "ok"),
        "{outcome:?}"
    );
    let port = https_server("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
    let outcome = timed_probe(&check(CheckKind::Https, 1000), port);
    assert_eq!(outcome.detail, "status 503");
    // Plain HTTP on the other end: the handshake fails, clearly.
    let (port, _, _done) = http_server("HTTP/1.1 200 OK\r\n\r\n");
    let outcome = timed_probe(&check(CheckKind::Https, 500), port);
    assert!(!outcome.ok, "{outcome:?}");
}

#[test]
fn none_is_always_ok() {
    let outcome = timed_probe(&check(CheckKind::None, 500), 0);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "no check"));
}

/// A UDP server answering one datagram with "pong " + the payload.
fn udp_echo() -> u16 {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let port = socket.local_addr().unwrap().port();
    thread::spawn(move || {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buffer = [0; 1500];
        if let Ok((n, peer)) = socket.recv_from(&mut buffer) {
            let reply = [b"pong ", &buffer[..n]].concat();
            let _ = socket.send_to(&reply, peer);
        }
    });
    port
}

fn udp_check(expect: Option<&str>, timeout_ms: u64) -> HealthCheck {
    let mut udp = check(CheckKind::Udp, timeout_ms);
    udp.send = Some("ping".into());
    udp.expect = expect.map(Into::into);
    udp
}

#[test]
fn udp_reply_is_ok() {
    let outcome = timed_probe(&udp_check(Some("pong"), 1000), udp_echo());
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "ok"));
    let outcome = timed_probe(&udp_check(None, 1000), udp_echo());
    assert!(outcome.ok, "{outcome:?}");
}

#[test]
fn udp_reply_without_the_expected_text_fails() {
    let outcome = timed_probe(&udp_check(Some("healthy"), 1000), udp_echo());
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "reply lacks \"healthy\"")
    );
}

#[test]
fn udp_without_reply_times_out() {
    // Bound but never read: no ICMP error, no reply.
    let silent = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let outcome = timed_probe(&udp_check(None, 200), port);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "timeout after 200ms")
    );
}

#[test]
fn udp_to_a_closed_port_is_refused() {
    let port = UdpSocket::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outcome = timed_probe(&udp_check(None, 500), port);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "connection refused")
    );
}

fn exec_check(command: &[&str], timeout_ms: u64) -> HealthCheck {
    let mut exec = check(CheckKind::Exec, timeout_ms);
    exec.command = Some(command.iter().map(|&s| s.to_string()).collect());
    exec
}

#[test]
fn exec_exit_status_decides() {
    let outcome = timed_probe(&exec_check(&["true"], 2000), 80);
    assert_eq!((outcome.ok, outcome.detail.as_str()), (true, "ok"));
    let outcome = timed_probe(&exec_check(&["false"], 2000), 80);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "exit status 1")
    );
}

#[test]
fn exec_sees_the_backend_in_its_environment() {
    let script = r#"test "$LB_BACKEND_ADDRESS" = 127.0.0.1 && test "$LB_BACKEND_PORT" = 8080"#;
    let outcome = timed_probe(&exec_check(&["sh", "-c", script], 2000), 8080);
    assert!(outcome.ok, "{outcome:?}");
    let mut other_port = exec_check(&["sh", "-c", script], 2000);
    other_port.port = Some(9090);
    assert!(!timed_probe(&other_port, 8080).ok);
}

#[test]
fn exec_over_the_timeout_is_killed() {
    let outcome = timed_probe(&exec_check(&["sleep", "5"], 200), 80);
    assert_eq!(
        (outcome.ok, outcome.detail.as_str()),
        (false, "timed out, killed")
    );
    // A script whose child holds on is killed with its whole group.
    let outcome = timed_probe(&exec_check(&["sh", "-c", "sleep 5; true"], 200), 80);
    assert_eq!(outcome.detail, "timed out, killed");
}

#[test]
fn exec_that_cannot_start_says_so() {
    let outcome = timed_probe(&exec_check(&["/nonexistent/lb-check"], 500), 80);
    assert!(!outcome.ok);
    assert!(
        outcome.detail.starts_with("could not start: "),
        "{outcome:?}"
    );
    let mut empty = check(CheckKind::Exec, 500);
    empty.command = Some(Vec::new());
    assert_eq!(timed_probe(&empty, 80).detail, "no command configured");
}

#[test]
fn spacing_is_deterministic_first_within_the_interval_jitter_below_a_tenth() {
    let interval = Duration::from_millis(500);
    let mut firsts = Vec::new();
    for port in 1..200 {
        let key = BackendKey {
            service: "web".into(),
            address: LOCALHOST,
            port,
        };
        let (first, jitter) = spacing(&key, interval);
        assert_eq!(spacing(&key, interval), (first, jitter));
        assert!(first < interval && jitter < interval / 10);
        firsts.push(first);
    }
    // Spread over the whole interval, not bunched at its start.
    firsts.sort();
    assert!(firsts[0] < interval / 10, "{firsts:?}");
    assert!(firsts[firsts.len() - 1] > interval * 9 / 10, "{firsts:?}");
    assert_eq!(
        fraction(Duration::from_secs(1), 1 << 31),
        Duration::from_millis(500)
    );
}

fn target(port: u16, interval_ms: u64) -> Target {
    let mut tcp = check(CheckKind::Tcp, 50);
    tcp.interval = Duration::from_millis(interval_ms);
    Target {
        key: BackendKey {
            service: "web".into(),
            address: LOCALHOST,
            port,
        },
        address: LOCALHOST,
        port,
        check: tcp,
    }
}

#[test]
fn checker_reports_each_target_and_stops_quickly() {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let up = target(listener.local_addr().unwrap().port(), 50);
    let down = target(closed_tcp_port(), 50);
    let (tx, rx) = mpsc::channel();
    let checker = Checker::start(vec![up.clone(), down.clone()], tx);

    // Three results of each, 10 s at most (50 ms apart when idle).
    let mut seen: BTreeMap<BackendKey, Vec<bool>> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(10);
    let enough = |seen: &BTreeMap<BackendKey, Vec<bool>>| {
        [&up.key, &down.key]
            .iter()
            .all(|key| seen.get(*key).is_some_and(|r| r.len() >= 3))
    };
    while !enough(&seen)
        && let Some(left) = until.checked_duration_since(Instant::now())
    {
        match rx.recv_timeout(left) {
            Ok(event) => seen.entry(event.key).or_default().push(event.outcome.ok),
            Err(_) => break,
        }
    }
    // Stopping waits for probes in flight (50 ms timeouts), not for a
    // whole number of intervals.
    let start = Instant::now();
    checker.stop();
    println!("stopped in {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    let up_results = &seen[&up.key];
    let down_results = &seen[&down.key];
    assert!(up_results.len() >= 3, "{seen:?}");
    assert!(down_results.len() >= 3, "{seen:?}");
    assert!(up_results.iter().all(|&ok| ok), "{seen:?}");
    assert!(down_results.iter().all(|&ok| !ok), "{seen:?}");
    // Stopped threads send nothing more (their senders are gone).
    while rx.try_recv().is_ok() {}
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn checker_stop_interrupts_a_long_interval() {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let mut long = target(listener.local_addr().unwrap().port(), 30_000);
    // The first check comes somewhere in the first interval: pick a
    // service name whose first check is in its first tenth.
    let interval = long.check.interval;
    long.key.service = (0..10_000)
        .map(|i| format!("web{i}"))
        .find(|service| {
            let key = BackendKey {
                service: service.clone(),
                ..long.key.clone()
            };
            spacing(&key, interval).0 < interval / 10
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let checker = Checker::start(vec![long], tx);
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.outcome.ok, "{first:?}");
    // The next is half a minute away: stopping must not wait for it.
    let start = Instant::now();
    drop(checker);
    println!("stopped in {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn an_abandoned_checker_does_not_wait_for_the_probe_in_flight() {
    // A file the probe creates when it starts, so the test knows it runs.
    let marker = std::env::temp_dir().join(format!("lb-abandon-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("touch {}; sleep 5", marker.display());
    let mut slow = target(closed_tcp_port(), 50);
    slow.check = exec_check(&["sh", "-c", &script], 20_000);
    slow.check.interval = Duration::from_millis(50);
    let (tx, rx) = mpsc::channel();
    let checker = Checker::start(vec![slow], tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(marker.exists(), "the probe never started");
    let start = Instant::now();
    checker.abandon();
    let abandoned = start.elapsed();
    let _ = std::fs::remove_file(&marker);
    // Stopping would wait about 5 s for the probe; abandoning returns.
    assert!(abandoned < Duration::from_secs(1), "{abandoned:?}");
    // The task still ends by itself after its probe: the channel closes.
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(15)),
        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn targets_follow_the_config() {
    let config = Config::parse(
        "\
instance: t
interfaces: [{ name: lo }]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - { address: 192.0.2.11, port: 8080 }
      - { address: 192.0.2.12 }
    health_check: { kind: http, path: /healthz }
  - name: dns
    vip: 203.0.113.10
    port: 53
    protocol: udp
    backends:
      - { address: 192.0.2.11 }
",
    )
    .unwrap();
    let targets = Target::for_config(&config);
    let ports: Vec<(String, u16)> = targets
        .iter()
        .map(|t| (t.key.service.clone(), t.port))
        .collect();
    assert_eq!(ports, [("web".into(), 8080), ("web".into(), 80)]);
    assert_eq!(targets[0].check.path.as_deref(), Some("/healthz"));
}

/// Threads of this process, and those of them the health-check runtime
/// runs (by name).
fn threads() -> (usize, usize) {
    let mut all = 0;
    let mut health = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let Ok(task) = task else { continue };
        all += 1;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == checker::THREAD_NAME {
            health += 1;
        }
    }
    (all, health)
}

#[test]
fn two_thousand_backends_take_a_fixed_number_of_threads_and_all_report_in_time() {
    const BACKENDS: usize = 2_000;
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and drop, so the accept queue never fills and refuses SYNs.
    let stop_accepting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = thread::spawn({
        let stop = std::sync::Arc::clone(&stop_accepting);
        move || {
            for stream in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                drop(stream);
            }
        }
    });
    let interval = Duration::from_secs(2);
    let timeout = Duration::from_secs(1);
    let targets: Vec<Target> = (0..BACKENDS)
        .map(|i| {
            let mut t = target(port, 2_000);
            t.check.timeout = timeout;
            t.key.service = format!("svc{i}");
            t
        })
        .collect();
    let (before, _) = threads();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let checker = Checker::start(targets, tx);

    let mut first: BTreeMap<BackendKey, (Duration, bool)> = BTreeMap::new();
    let mut most = (0, 0);
    let until = start + interval + timeout + SLACK;
    while first.len() < BACKENDS
        && let Some(left) = until.checked_duration_since(Instant::now())
    {
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(event) => {
                first
                    .entry(event.key)
                    .or_insert((event.at.saturating_duration_since(start), event.outcome.ok));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = threads();
        most = (most.0.max(now.0), most.1.max(now.1));
    }
    let elapsed = start.elapsed();
    checker.stop();
    stop_accepting.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::net::TcpStream::connect((LOCALHOST, port));
    acceptor.join().unwrap();

    let arrivals: Vec<Duration> = first.values().map(|&(at, _)| at).collect();
    let (earliest, latest) = (
        arrivals.iter().min().copied().unwrap_or_default(),
        arrivals.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "{} of {BACKENDS} first results in {elapsed:?} (from {earliest:?} to {latest:?}); \
         threads {before} before, at most {} during, {} of them the runtime's",
        first.len(),
        most.0,
        most.1
    );
    assert_eq!(
        first.len(),
        BACKENDS,
        "every backend reports within interval + timeout"
    );
    assert!(
        first.values().all(|&(_, ok)| ok),
        "every check of a listener passes"
    );
    assert!(latest <= interval + timeout + SLACK, "{latest:?}");
    // A fixed number of threads: the runtime's workers and its bounded
    // blocking pool (which other tests' https and exec probes may have
    // started), and a margin for the tests running alongside, far below
    // one per backend.
    assert!(
        most.1 <= checker::WORKERS + 2 * checker::POOL_PERMITS,
        "{most:?}"
    );
    assert!(most.0 <= before + 64, "{most:?}, {before} before");
    // Spread over the interval, not all at once.
    assert!(
        latest.saturating_sub(earliest) >= interval / 2,
        "{earliest:?}..{latest:?}"
    );
}

//! The sockets `lb run` serves — the control API and `/metrics` — against a
//! client that stalls half-way through a request and one that sends too
//! much: `lb status` still answers, health checks carry on, the oversize
//! request gets an error, and the server stays up. (`lb agent` has the same
//! tests as unit tests of `lb::agent`, on loopback.)

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixStream},
    time::{Duration, Instant},
};

use lb_tests::{bed::Bed, netns::wait_until};

/// Writes `request` (the server may answer and close before taking all of
/// an oversize one) and reads the answer, 10 s at most.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> String {
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A head of 16 KiB (the limit is 8 KiB).
fn oversize_head(path: &str) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nX-Junk: ").into_bytes();
    head.extend(std::iter::repeat_n(b'a', 16 * 1024));
    head.extend(b"\r\n\r\n");
    head
}

/// Whether the server still holds `stream` open with nothing to read: a
/// stalled client not cut off yet.
fn still_open(stream: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) of at most one byte into `byte`, on a descriptor the
    // stream owns; MSG_PEEK | MSG_DONTWAIT neither consumes nor blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// A TCP connection to `address`, bounded like every other wait.
fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads `stream` to its end: the server closes it (FIN, or RST over
/// unread bytes) within 30 s, or it was kept (a read timeout).
fn assert_cut_off(name: &str, stream: &mut (impl Read + AsRawFd)) {
    let timeout = libc::timeval {
        tv_sec: 30,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) of a timeval that outlives the call on a
    // descriptor the stream owns.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    let started = Instant::now();
    let mut rest = Vec::new();
    let ended = stream.read_to_end(&mut rest);
    println!(
        "stalled {name} client cut off after {:?}",
        started.elapsed()
    );
    let timed_out = ended.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(!timed_out, "the stalled {name} client was kept: {ended:?}");
}

fn unix(socket: &str) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn a_stalled_or_oversize_client_delays_no_other() {
    let pid = std::process::id();
    let socket = format!("/run/lb/sockets-{pid}.sock");
    let metrics: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let mut bed = Bed::new(&[11]);
    bed.start_lb(&format!(
        "instance: sk{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}], \
         health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }} }}\n\
         control: {{ socket: {socket}, metrics: '{metrics}' }}\n"
    ));
    let health = |bed: &Bed| {
        bed.backend_status()
            .get("b11")
            .map(|b| b["health"].as_str().unwrap_or("").to_string())
    };
    assert!(
        wait_until(Duration::from_secs(5), || health(&bed).as_deref()
            == Some("up")),
        "the backend never came up"
    );

    // Half a request on each socket, held open.
    let mut api_stall = unix(&socket);
    api_stall
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: lb\r\nContent-Le")
        .unwrap();
    let mut metrics_stall = bed.lb.run(move || connect(metrics));
    metrics_stall.write_all(b"GET /metr").unwrap();
    // Answered beside them means answered while they are still held (they
    // are cut off after the 5 s read limit): an order, not a stopwatch.
    let stalls_held = |api: &UnixStream, metrics: &TcpStream| {
        assert!(
            still_open(api) && still_open(metrics),
            "a stalled client was cut off before the other client's answer \
             (API held: {}, metrics held: {}): the answer may have waited for it",
            still_open(api),
            still_open(metrics)
        );
    };

    // The API answers beside it.
    let started = Instant::now();
    let status = bed.lb_command(&["status", "--output", "json"]);
    println!(
        "lb status with a stalled API client and a stalled scrape: {:?}",
        started.elapsed()
    );
    assert!(status.status.success(), "{status:?}");
    stalls_held(&api_stall, &metrics_stall);

    // So does /metrics.
    let started = Instant::now();
    let scrape = bed.lb.run(move || {
        exchange(
            connect(metrics),
            b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n",
        )
    });
    println!(
        "a scrape beside the stalled clients: {:?}",
        started.elapsed()
    );
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("lb_backend_up"), "{scrape}");
    stalls_held(&api_stall, &metrics_stall);

    // Health checks carry on: a backend that stops is seen down.
    bed.stop_backend(11);
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || health(&bed).as_deref()
            == Some("down")),
        "the stopped backend was never seen down"
    );
    println!(
        "backend seen down {:?} after it stopped, with stalled clients",
        started.elapsed()
    );

    // Oversize requests get an error, and the servers stay up.
    let answer = exchange(unix(&socket), &oversize_head("/v1/status"));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let mut body =
        b"POST /v1/drain HTTP/1.1\r\nHost: lb\r\nContent-Length: 100000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b' ', 100_000));
    let answer = exchange(unix(&socket), &body);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = bed
        .lb
        .run(move || exchange(connect(metrics), &oversize_head("/metrics")));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let status = bed.lb_command(&["status", "--output", "json"]);
    assert!(status.status.success(), "{status:?}");

    // The stalled clients are cut off, not kept for ever.
    assert_cut_off("API", &mut api_stall);
    assert_cut_off("metrics", &mut metrics_stall);
    assert!(bed.lb_process.as_mut().unwrap().running(), "lb run died");
}

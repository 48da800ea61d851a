//! Backend health (docs/DESIGN.md §4): the probes that ask a backend whether it
//! is serving, the rise/fall state machine that turns their outcomes into
//! up / down, and the checker that runs the probes on every backend.
//!
//! The three layers are kept apart on purpose:
//!
//! - [`Tracker`] is pure: it sees outcomes and the time they were observed
//!   and decides transitions, so it is tested without sockets or sleeps
//!   (docs/STYLE.md §5). Thresholds count *consecutive* outcomes, as `HAProxy`'s
//!   `rise` / `fall` do.
//! - [`probe_async`] does one check, bounded by the check's timeout, and
//!   reports an [`Outcome`] whose `detail` is short enough to show an
//!   operator as the reason of a transition ("connection refused",
//!   "status 503", "timeout after 300ms", ...). `tcp`, `http` and `udp`
//!   wait on the event loop; `https` and `exec` block a thread of a bounded
//!   pool ([`probe`] is the same check for a caller outside the runtime).
//! - [`Checker`] runs every backend's checks as tasks of one small tokio
//!   runtime (a fixed number of threads whatever the number of backends,
//!   see `checker.rs`) and sends every outcome as an [`Event`] down a
//!   channel; the controller owns the trackers and the plan.
//!
//! HTTPS checks speak TLS (rustls) without verifying the certificate, by
//! choice: backends commonly serve self-signed or internal certificates, and
//! the check asks whether the service answers, not who it is.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::config::{CheckKind, HealthCheck};

/// What the health checks currently say about a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not enough consecutive outcomes yet to decide either way. What the
    /// controller does with such a backend (keep its last plan, treat it as
    /// up) is its policy, not this module's.
    #[default]
    Unknown,
    /// `rise` consecutive checks succeeded.
    Up,
    /// `fall` consecutive checks failed.
    Down,
}

impl Health {
    /// The lower-case name used in `lb status` and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the backend passed.
    pub ok: bool,
    /// A short description: "ok" on success, otherwise why it failed
    /// ("connection refused", "status 503", "exit status 1", ...).
    pub detail: String,
    /// How long the probe took, including any time spent waiting for the
    /// timeout.
    pub latency: Duration,
}

impl Outcome {
    /// A passed check.
    pub fn success(detail: impl Into<String>, latency: Duration) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
            latency,
        }
    }

    /// A failed check.
    pub fn failure(detail: impl Into<String>, latency: Duration) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
            latency,
        }
    }
}

/// A change of [`Health`] decided by a [`Tracker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: Health,
    /// The state after.
    pub to: Health,
    /// The detail of the outcome that completed the run of successes or
    /// failures, e.g. "connection refused" or "ok".
    pub reason: String,
    /// When that outcome was observed.
    pub at: Instant,
}

/// The rise/fall state machine of one backend.
///
/// A backend starts [`Health::Unknown`] and is settled by the same
/// thresholds as any later change: `rise` consecutive successes make it up,
/// `fall` consecutive failures make it down. A restarted controller thus
/// neither trusts one lucky probe nor condemns a backend for one lost
/// packet; a backend whose checks keep alternating stays unknown, which is
/// the honest answer. An outcome of the other kind resets the run.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    health: Health,
    /// Consecutive successes so far (0 after a failure).
    successes: u32,
    /// Consecutive failures so far (0 after a success).
    failures: u32,
    last: Option<Outcome>,
    /// When `last` was observed.
    last_at: Option<Instant>,
    since: Option<Instant>,
}

impl Tracker {
    /// A tracker in [`Health::Unknown`]. Thresholds of 0 are taken as 1
    /// (the configuration refuses them; this keeps the machine total).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            last: None,
            last_at: None,
            since: None,
        }
    }

    /// A tracker with the thresholds of `check`.
    pub fn for_check(check: &HealthCheck) -> Self {
        Self::new(check.rise, check.fall)
    }

    /// Feeds one outcome observed at `now`; returns the transition it
    /// caused, if any.
    pub fn observe(&mut self, outcome: &Outcome, now: Instant) -> Option<Transition> {
        let to = if outcome.ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            (self.successes >= self.rise).then_some(Health::Up)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            (self.failures >= self.fall).then_some(Health::Down)
        };
        self.last = Some(outcome.clone());
        self.last_at = Some(now);
        let to = to.filter(|&to| to != self.health)?;
        let from = std::mem::replace(&mut self.health, to);
        self.since = Some(now);
        Some(Transition {
            from,
            to,
            reason: outcome.detail.clone(),
            at: now,
        })
    }

    /// The (rise, fall) thresholds.
    pub fn thresholds(&self) -> (u32, u32) {
        (self.rise, self.fall)
    }

    /// The current state.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The most recent outcome (with its latency), if any was observed.
    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// When the last outcome was observed.
    pub fn last_at(&self) -> Option<Instant> {
        self.last_at
    }

    /// When the current state was entered; `None` while still unknown.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

/// Runs one check of `check.kind` against `address`, on `check.port` if set,
/// else on `port` (the backend's traffic port). Never takes much longer than
/// `check.timeout` (plus, for `https` and `exec`, any wait for a place in
/// their bounded pool).
///
/// Blocks the calling thread; it must not be called from inside an async
/// runtime (the checker calls [`probe_async`]).
pub fn probe(check: &HealthCheck, address: IpAddr, port: u16) -> Outcome {
    match checker::pool() {
        Ok(pool) => pool.runtime.block_on(probe_async(check, address, port)),
        Err(error) => Outcome::failure(format!("no health-check runtime: {error}"), Duration::ZERO),
    }
}

/// [`probe`] on the health-check runtime: `tcp`, `http` and `udp` run on its
/// event loop; `https` (rustls speaks to blocking sockets here) and `exec`
/// (a child process waited for) run on its blocking threads, each kind
/// through a semaphore of [`checker::POOL_PERMITS`] so that the number of
/// threads and processes stays bounded whatever the number of backends.
pub async fn probe_async(check: &HealthCheck, address: IpAddr, port: u16) -> Outcome {
    let pool = match checker::pool() {
        Ok(pool) => pool,
        Err(error) => {
            return Outcome::failure(format!("no health-check runtime: {error}"), Duration::ZERO);
        }
    };
    let semaphore = match check.kind {
        CheckKind::Https => &pool.tls,
        CheckKind::Exec => &pool.exec,
        CheckKind::Tcp | CheckKind::Http | CheckKind::Udp | CheckKind::None => {
            return probe_on_loop(check, address, port).await;
        }
    };
    let Ok(permit) = std::sync::Arc::clone(semaphore).acquire_owned().await else {
        // The semaphores live in a static and are never closed.
        return Outcome::failure("probe pool closed", Duration::ZERO);
    };
    let (check, started) = (check.clone(), Instant::now());
    let blocking = tokio::task::spawn_blocking(move || {
        let outcome = probe_blocking(&check, address, port);
        drop(permit);
        outcome
    });
    blocking.await.unwrap_or_else(|error| {
        Outcome::failure(format!("probe failed: {error}"), started.elapsed())
    })
}

/// The probes that run on the event loop.
async fn probe_on_loop(check: &HealthCheck, address: IpAddr, port: u16) -> Outcome {
    let start = Instant::now();
    let budget = Budget::new(start, check.timeout);
    let port = check.port.unwrap_or(port);
    let result = if port == 0 && check.kind != CheckKind::None {
        // An all-port service has no traffic port to fall back on.
        Err("no port to check: set health_check.port".to_string())
    } else {
        let target = SocketAddr::new(address, port);
        match check.kind {
            CheckKind::Tcp => probe_tcp(target, &budget).await.map(|_| "ok"),
            CheckKind::Http => probe_http(check, target, &budget).await,
            CheckKind::Udp => probe_udp(check, target, &budget).await,
            // `https` and `exec` go to the blocking pool (`probe_async`);
            // listed here to keep the match total.
            CheckKind::None | CheckKind::Https | CheckKind::Exec => Ok("no check"),
        }
    };
    verdict(result, start)
}

/// The probes that block a thread: `https` and `exec`.
fn probe_blocking(check: &HealthCheck, address: IpAddr, port: u16) -> Outcome {
    let start = Instant::now();
    let budget = Budget::new(start, check.timeout);
    let port = check.port.unwrap_or(port);
    let result = match check.kind {
        CheckKind::Https if port == 0 => Err("no port to check: set health_check.port".to_string()),
        CheckKind::Https => probe_https(check, SocketAddr::new(address, port), &budget),
        CheckKind::Exec => probe_exec(check, address, port, &budget),
        // Run on the event loop by `probe_async`; kept total.
        CheckKind::Tcp | CheckKind::Http | CheckKind::Udp | CheckKind::None => {
            Err("not a blocking probe".to_string())
        }
    };
    verdict(result, start)
}

fn verdict(result: Result<&'static str, String>, start: Instant) -> Outcome {
    let latency = start.elapsed();
    match result {
        Ok(detail) => Outcome::success(detail, latency),
        Err(detail) => Outcome::failure(detail, latency),
    }
}

/// The time a probe has left, and how to word running out of it.
struct Budget {
    deadline: Instant,
    timeout: Duration,
}

impl Budget {
    fn new(start: Instant, timeout: Duration) -> Self {
        Self {
            deadline: start + timeout,
            timeout,
        }
    }

    /// Time left, or the timeout failure when there is none: socket
    /// timeouts refuse a zero duration, and a probe past its deadline must
    /// stop anyway.
    fn remaining(&self) -> Result<Duration, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.timed_out())
        } else {
            Ok(left)
        }
    }

    fn timed_out(&self) -> String {
        format!("timeout after {}", humantime::format_duration(self.timeout))
    }

    /// A socket error in the words an operator expects; the OS error
    /// numbers add nothing in a transition reason.
    fn describe(&self, error: &io::Error) -> String {
        match error.kind() {
            // Linux reports an expired SO_RCVTIMEO / SO_SNDTIMEO as EAGAIN.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            io::ErrorKind::ConnectionReset => "connection reset".to_string(),
            io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
            io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
            _ => error.to_string(),
        }
    }
    /// Runs `io` until the deadline: its error, or running out of time, in
    /// an operator's words.
    async fn within<T>(&self, io: impl Future<Output = io::Result<T>>) -> Result<T, String> {
        match tokio::time::timeout_at(self.deadline.into(), io).await {
            Ok(result) => result.map_err(|e| self.describe(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }
}

async fn probe_tcp(target: SocketAddr, budget: &Budget) -> Result<tokio::net::TcpStream, String> {
    budget.remaining()?;
    budget.within(tokio::net::TcpStream::connect(target)).await
}

/// Longest header section read before the response is called malformed.
const HEADER_LIMIT: usize = 16 * 1024;
/// Longest body searched for `expect_body`.
const BODY_LIMIT: usize = 64 * 1024;

/// The request of an HTTP(S) check.
fn http_request(check: &HealthCheck, target: SocketAddr) -> String {
    let host = match (&check.host, target.ip()) {
        (Some(host), _) => host.clone(),
        (None, IpAddr::V4(address)) => address.to_string(),
        // RFC 9110 §7.2: an IPv6 literal in Host is bracketed.
        (None, IpAddr::V6(address)) => format!("[{address}]"),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lb-health\r\n\r\n",
        check.path.as_deref().unwrap_or("/"),
    )
}

fn expectation(check: &HealthCheck) -> HttpExpectation<'_> {
    HttpExpectation {
        status: check.expect_status.unwrap_or(200),
        body: check.expect_body.as_deref(),
    }
}

/// The verdict once the server closed the connection.
fn judge_closed(expect: &HttpExpectation<'_>, response: &[u8]) -> Result<&'static str, String> {
    expect
        .judge(response, true)
        .unwrap_or_else(|| Err("connection closed early".to_string()))
        .map(|()| "ok")
}

async fn probe_http(
    check: &HealthCheck,
    target: SocketAddr,
    budget: &Budget,
) -> Result<&'static str, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = probe_tcp(target, budget).await?;
    let request = http_request(check, target);
    budget.within(stream.write_all(request.as_bytes())).await?;
    let expect = expectation(check);
    let mut response = Vec::with_capacity(1024);
    let mut chunk = vec![0; 4096];
    // Each pass reads at least one byte or ends the probe (EOF, error, or
    // the deadline), and `judge` decides once the response reaches its size
    // limits, so the loop is bounded.
    loop {
        if let Some(verdict) = expect.judge(&response, false) {
            return verdict.map(|()| "ok");
        }
        match budget.within(stream.read(&mut chunk)).await? {
            0 => return judge_closed(&expect, &response),
            n => response.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTPS check, on a blocking socket: rustls's own I/O is blocking, and
/// the async adapter for it is not among the project's dependencies.
fn probe_https(
    check: &HealthCheck,
    target: SocketAddr,
    budget: &Budget,
) -> Result<&'static str, String> {
    let stream = TcpStream::connect_timeout(&target, budget.remaining()?)
        .map_err(|e| budget.describe(&e))?;
    let name = match &check.host {
        Some(host) => rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?,
        None => rustls::pki_types::ServerName::IpAddress(target.ip().into()),
    };
    let connection =
        rustls::ClientConnection::new(tls_config(), name).map_err(|e| format!("TLS setup: {e}"))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    https_exchange(&mut tls, check, &http_request(check, target), budget)
}

/// The TLS client for `https` checks. Certificates are not verified, by
/// choice (docs/DESIGN.md §4): backends commonly serve self-signed or internal
/// certificates, and the check is about the service answering, not about
/// its identity.
fn tls_config() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    std::sync::Arc::clone(CONFIG.get_or_init(|| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = std::sync::Arc::new(AnyCertificate(std::sync::Arc::clone(&provider)));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // The ring provider supports the default versions by construction.
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }))
}

/// Accepts any server certificate; signatures are still checked, so the
/// handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The HTTP exchange of an HTTPS check over TLS on a blocking socket, whose
/// timeouts, shrunk to the deadline, bound every read and write.
fn https_exchange(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    check: &HealthCheck,
    request: &str,
    budget: &Budget,
) -> Result<&'static str, String> {
    stream
        .sock
        .set_write_timeout(Some(budget.remaining()?))
        .map_err(|e| budget.describe(&e))?;
    stream
        .sock
        .set_read_timeout(Some(budget.remaining()?))
        .map_err(|e| budget.describe(&e))?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| budget.describe(&e))?;

    let expect = expectation(check);
    let mut response = Vec::with_capacity(1024);
    let mut chunk = [0; 4096];
    // Each pass reads at least one byte or ends the probe (EOF, error, or
    // the deadline through the read timeout), and `judge` decides once the
    // response reaches its size limits, so the loop is bounded.
    loop {
        if let Some(verdict) = expect.judge(&response, false) {
            return verdict.map(|()| "ok");
        }
        stream
            .sock
            .set_read_timeout(Some(budget.remaining()?))
            .map_err(|e| budget.describe(&e))?;
        match stream.read(&mut chunk) {
            Ok(0) => return judge_closed(&expect, &response),
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify: the response
            // ends there all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return judge_closed(&expect, &response);
            }
            Err(e) => return Err(budget.describe(&e)),
        }
    }
}

/// What an HTTP check wants to see.
struct HttpExpectation<'a> {
    status: u16,
    body: Option<&'a str>,
}

impl HttpExpectation<'_> {
    /// The verdict on the response read so far, or `None` while more is
    /// needed. `complete` is set once the server closed the connection.
    fn judge(&self, response: &[u8], complete: bool) -> Option<Result<(), String>> {
        let Some(line_end) = find(response, b"\r\n") else {
            return (complete || response.len() > HEADER_LIMIT)
                .then(|| Err("no HTTP status line".to_string()));
        };
        let line = String::from_utf8_lossy(&response[..line_end]);
        let mut words = line.split_ascii_whitespace();
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code)) if version.starts_with("HTTP/") && code.len() == 3 => {
                code.parse::<u16>().ok()
            }
            _ => None,
        };
        let Some(status) = status else {
            return Some(Err(format!("malformed status line {line:?}")));
        };
        if status != self.status {
            return Some(Err(format!("status {status}")));
        }
        let Some(expected) = self.body else {
            // Only the status matters: no need to wait for the rest.
            return Some(Ok(()));
        };
        let Some(headers_end) = find(response, b"\r\n\r\n") else {
            return (complete || response.len() > HEADER_LIMIT)
                .then(|| Err("incomplete HTTP headers".to_string()));
        };
        let body = &response[headers_end + 4..];
        let body = &body[..body.len().min(BODY_LIMIT)];
        if find(body, expected.as_bytes()).is_some() {
            return Some(Ok(()));
        }
        // Content-Length ends the body without waiting for the server to
        // close; a server that ignores `Connection: close` is still judged
        // before the timeout. (A chunked body is searched as it comes,
        // chunk-size lines included.) The header lines run from after the
        // status line to the blank line's first CRLF; `headers_end` is at
        // or after `line_end`, both being the first match of their pattern.
        let length = content_length(&response[line_end + 2..headers_end + 2]);
        let whole = complete
            || body.len() >= BODY_LIMIT
            || length.is_some_and(|length| body.len() >= length);
        whole.then(|| Err(format!("body lacks {expected:?}")))
    }
}

/// The verdict of an HTTP check that wants `status` (and `body` somewhere in
/// the body, if set) on the response bytes read so far, or `None` while more
/// are needed; `complete` once the server closed the connection. Fed a read
/// at a time, it decides before the response passes 16 KiB of status line
/// and headers, one read, and 64 KiB of body, so a probe's buffer stays
/// bounded. The probe's own parser, public for the fuzz tests.
pub fn judge_http_response(
    response: &[u8],
    complete: bool,
    status: u16,
    body: Option<&str>,
) -> Option<Result<(), String>> {
    HttpExpectation { status, body }.judge(response, complete)
}

/// The `Content-Length` among raw header lines, if present and valid.
fn content_length(headers: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(headers)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if name.trim().eq_ignore_ascii_case("content-length") {
                value.trim().parse().ok()
            } else {
                None
            }
        })
}

/// Where `needle` first occurs in `haystack`; an empty needle is at 0.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn probe_udp(
    check: &HealthCheck,
    target: SocketAddr,
    budget: &Budget,
) -> Result<&'static str, String> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("could not bind: {e}"))?;
    // Connecting filters replies to the backend's address and port, and
    // lets an ICMP port unreachable come back as "connection refused"
    // instead of a silent timeout.
    socket
        .connect(target)
        .await
        .map_err(|e| budget.describe(&e))?;
    let payload = check.send.as_deref().unwrap_or_default().as_bytes();
    budget.within(socket.send(payload)).await?;
    let mut reply = vec![0; 65_536];
    let n = budget.within(socket.recv(&mut reply)).await?;
    judge_udp_reply(&reply[..n], check.expect.as_deref()).map(|()| "ok")
}

/// The verdict on a UDP check's reply: it must contain `expect`, if set.
pub fn judge_udp_reply(reply: &[u8], expect: Option<&str>) -> Result<(), String> {
    match expect {
        Some(expected) if find(reply, expected.as_bytes()).is_none() => {
            Err(format!("reply lacks {expected:?}"))
        }
        _ => Ok(()),
    }
}

/// How often a running exec check is polled for its exit.
const EXEC_POLL: Duration = Duration::from_millis(10);

fn probe_exec(
    check: &HealthCheck,
    address: IpAddr,
    port: u16,
    budget: &Budget,
) -> Result<&'static str, String> {
    let Some((program, args)) = check.command.as_deref().and_then(<[String]>::split_first) else {
        return Err("no command configured".to_string());
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LB_BACKEND_ADDRESS", address.to_string())
        .env("LB_BACKEND_PORT", port.to_string())
        // Unread pipes could block the command; its output is not used.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills whatever a check
        // script started too, not only the script.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    // Bounded by the deadline: each pass sleeps at most until it.
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_verdict(status),
            Ok(None) => {}
            Err(e) => {
                kill(&mut child);
                return Err(format!("could not wait: {e}"));
            }
        }
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill(&mut child);
            return Err("timed out, killed".to_string());
        }
        thread::sleep(left.min(EXEC_POLL));
    }
}

fn exit_verdict(status: ExitStatus) -> Result<&'static str, String> {
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok("ok"),
        (Some(code), _) => Err(format!("exit status {code}")),
        (None, Some(signal)) => Err(format!("killed by signal {signal}")),
        (None, None) => Err(format!("{status}")),
    }
}

/// Kills an exec check's process group and reaps the leader.
fn kill(child: &mut Child) {
    match libc::pid_t::try_from(child.id()) {
        Ok(pid) => {
            // SAFETY: kill(2) only takes integers. The child leads its own
            // process group (`process_group(0)`) and has not been reaped,
            // so -pid cannot name anyone else's group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        Err(_) => {
            // Not reachable on Linux (pids fit pid_t); still kill the leader.
            let _ = child.kill();
        }
    }
    // SIGKILL cannot be caught, so this wait is short. Its error (already
    // reaped) leaves nothing to do.
    let _ = child.wait();
}

mod checker;

pub use checker::{Checker, Event, Target};
#[cfg(test)]
use checker::{fraction, spacing};

#[cfg(test)]
mod tests;

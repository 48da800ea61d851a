//! Backend health (DESIGN.md §4): the probes that ask a backend whether it
//! is serving, the rise/fall state machine that turns their outcomes into
//! up / down, and the threads that run the probes on every backend.
//!
//! The three layers are kept apart on purpose:
//!
//! - [`Tracker`] is pure: it sees outcomes and the time they were observed
//!   and decides transitions, so it is tested without sockets or sleeps
//!   (STYLE.md §5). Thresholds count *consecutive* outcomes, as `HAProxy`'s
//!   `rise` / `fall` do.
//! - [`probe`] does one blocking check, bounded by the check's timeout, and
//!   reports an [`Outcome`] whose `detail` is short enough to show an
//!   operator as the reason of a transition ("connection refused",
//!   "status 503", "timeout after 300ms", ...).
//! - [`Checker`] runs one thread per backend (no async runtime: a few
//!   hundred blocking probes a second are cheap, and a stuck probe cannot
//!   starve the others) and sends every outcome as an [`Event`] down a
//!   channel; the controller owns the trackers and the plan.
//!
//! HTTPS checks speak TLS (rustls) without verifying the certificate, by
//! choice: backends commonly serve self-signed or internal certificates, and
//! the check asks whether the service answers, not who it is.

use std::{
    collections::hash_map::DefaultHasher,
    fmt,
    hash::{Hash, Hasher},
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError, mpsc::Sender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    config::{CheckKind, Config, HealthCheck},
    plan::BackendKey,
};

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

    /// When the current state was entered; `None` while still unknown.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

/// Runs one check of `check.kind` against `address`, on `check.port` if set,
/// else on `port` (the backend's traffic port). Never takes much longer than
/// `check.timeout`.
pub fn probe(check: &HealthCheck, address: IpAddr, port: u16) -> Outcome {
    let start = Instant::now();
    let budget = Budget::new(start, check.timeout);
    let port = check.port.unwrap_or(port);
    let needs_port = matches!(
        check.kind,
        CheckKind::Tcp | CheckKind::Http | CheckKind::Udp
    );
    let result = if needs_port && port == 0 {
        // An all-port service has no traffic port to fall back on.
        Err("no port to check: set health_check.port".to_string())
    } else {
        match check.kind {
            CheckKind::Tcp => probe_tcp(SocketAddr::new(address, port), &budget).map(|_| "ok"),
            CheckKind::Http => probe_http(check, SocketAddr::new(address, port), &budget, false),
            CheckKind::Https => probe_http(check, SocketAddr::new(address, port), &budget, true),
            CheckKind::Udp => probe_udp(check, SocketAddr::new(address, port), &budget),
            CheckKind::Exec => probe_exec(check, address, port, &budget),
            CheckKind::None => Ok("no check"),
        }
    };
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
}

fn probe_tcp(target: SocketAddr, budget: &Budget) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&target, budget.remaining()?).map_err(|e| budget.describe(&e))
}

/// Longest header section read before the response is called malformed.
const HEADER_LIMIT: usize = 16 * 1024;
/// Longest body searched for `expect_body`.
const BODY_LIMIT: usize = 64 * 1024;

fn probe_http(
    check: &HealthCheck,
    target: SocketAddr,
    budget: &Budget,
    tls: bool,
) -> Result<&'static str, String> {
    let mut stream = probe_tcp(target, budget)?;
    let host = match (&check.host, target.ip()) {
        (Some(host), _) => host.clone(),
        (None, IpAddr::V4(address)) => address.to_string(),
        // RFC 9110 §7.2: an IPv6 literal in Host is bracketed.
        (None, IpAddr::V6(address)) => format!("[{address}]"),
    };
    if tls {
        let name = match &check.host {
            Some(host) => rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?,
            None => rustls::pki_types::ServerName::IpAddress(target.ip().into()),
        };
        let connection = rustls::ClientConnection::new(tls_config(), name)
            .map_err(|e| format!("TLS setup: {e}"))?;
        let mut tls = rustls::StreamOwned::new(connection, stream);
        return http_exchange(&mut tls, |s| &s.sock, check, &host, budget);
    }
    http_exchange(&mut stream, |s| s, check, &host, budget)
}

/// The TLS client for `https` checks. Certificates are not verified, by
/// choice (DESIGN.md §4): backends commonly serve self-signed or internal
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

/// One HTTP exchange over `stream` (plain or TLS); `socket` gives the TCP
/// socket underneath, whose timeouts bound every read and write.
fn http_exchange<S: Read + Write>(
    stream: &mut S,
    socket: impl Fn(&S) -> &TcpStream,
    check: &HealthCheck,
    host: &str,
    budget: &Budget,
) -> Result<&'static str, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lb-health\r\n\r\n",
        check.path.as_deref().unwrap_or("/"),
    );
    socket(stream)
        .set_write_timeout(Some(budget.remaining()?))
        .map_err(|e| budget.describe(&e))?;
    socket(stream)
        .set_read_timeout(Some(budget.remaining()?))
        .map_err(|e| budget.describe(&e))?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| budget.describe(&e))?;

    let expect = HttpExpectation {
        status: check.expect_status.unwrap_or(200),
        body: check.expect_body.as_deref(),
    };
    let mut response = Vec::with_capacity(1024);
    let mut chunk = [0; 4096];
    // Each pass reads at least one byte or ends the probe (EOF, error, or
    // the deadline through the read timeout), and `judge` decides once the
    // response reaches its size limits, so the loop is bounded.
    loop {
        if let Some(verdict) = expect.judge(&response, false) {
            return verdict.map(|()| "ok");
        }
        socket(stream)
            .set_read_timeout(Some(budget.remaining()?))
            .map_err(|e| budget.describe(&e))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return expect
                    .judge(&response, true)
                    .unwrap_or_else(|| Err("connection closed early".to_string()))
                    .map(|()| "ok");
            }
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify: the response
            // ends there all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return expect
                    .judge(&response, true)
                    .unwrap_or_else(|| Err("connection closed early".to_string()))
                    .map(|()| "ok");
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

fn probe_udp(
    check: &HealthCheck,
    target: SocketAddr,
    budget: &Budget,
) -> Result<&'static str, String> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("could not bind: {e}"))?;
    // Connecting filters replies to the backend's address and port, and
    // lets an ICMP port unreachable come back as "connection refused"
    // instead of a silent timeout.
    socket.connect(target).map_err(|e| budget.describe(&e))?;
    socket
        .send(check.send.as_deref().unwrap_or_default().as_bytes())
        .map_err(|e| budget.describe(&e))?;
    let mut reply = vec![0; 65_536];
    // Bounded: every pass either returns or was interrupted by a signal,
    // and the read timeout shrinks to the deadline.
    loop {
        socket
            .set_read_timeout(Some(budget.remaining()?))
            .map_err(|e| budget.describe(&e))?;
        match socket.recv(&mut reply) {
            Ok(n) => return judge_udp_reply(&reply[..n], check.expect.as_deref()).map(|()| "ok"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(budget.describe(&e)),
        }
    }
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

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which backend the outcomes are about.
    pub key: BackendKey,
    /// The address probed.
    pub address: IpAddr,
    /// The backend's traffic port; `check.port` overrides it.
    pub port: u16,
    /// The check to run.
    pub check: HealthCheck,
}

impl Target {
    /// One target per backend of every service that has a health check.
    /// Services without one are left out: their backends are always up.
    pub fn for_config(config: &Config) -> Vec<Target> {
        config
            .services
            .iter()
            .filter_map(|service| Some((service, service.health_check.as_ref()?)))
            .flat_map(|(service, check)| {
                service.backends.iter().map(move |backend| {
                    let port = backend.port_for(service);
                    Target {
                        key: BackendKey {
                            service: service.name.clone(),
                            address: backend.address,
                            port,
                        },
                        address: backend.address,
                        port,
                        check: check.clone(),
                    }
                })
            })
            .collect()
    }
}

/// One probe's outcome, as sent by a [`Checker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The backend probed.
    pub key: BackendKey,
    /// What the probe found.
    pub outcome: Outcome,
    /// When the probe finished.
    pub at: Instant,
}

/// Runs the checks of many backends, one thread each, until stopped or
/// dropped. Stopping takes at most about one probe timeout, never an
/// interval: the threads sleep on a condition variable that `stop` wakes.
#[derive(Debug)]
pub struct Checker {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
}

impl Checker {
    /// Starts checking every target, sending each outcome to `events`. A
    /// thread ends early if nobody receives its events any more.
    ///
    /// The first check of a target runs within the first tenth of its
    /// interval, and the pause after each check is the interval plus up to a
    /// tenth more; both offsets come from a hash of the backend's key, so
    /// checks of many backends are spread out rather than fired in lockstep,
    /// and the same backend keeps the same rhythm.
    pub fn start(targets: Vec<Target>, events: Sender<Event>) -> Checker {
        let stop = Arc::new(StopSignal::default());
        let mut threads = Vec::with_capacity(targets.len());
        for target in targets {
            let key = target.key.clone();
            let spawned = thread::Builder::new()
                // Linux keeps 15 bytes of a thread name; the address tells
                // threads apart in `top -H`.
                .name(format!("hc {}", target.address))
                .spawn({
                    let stop = Arc::clone(&stop);
                    let events = events.clone();
                    move || run(&target, &events, &stop)
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    // Report it as a failed check rather than leave the
                    // backend unknown with nothing in the log.
                    tracing::error!(%error, service = %key.service, address = %key.address,
                        "could not start a health-check thread");
                    let outcome =
                        Outcome::failure(format!("no check thread: {error}"), Duration::ZERO);
                    let _ = events.send(Event {
                        key,
                        outcome,
                        at: Instant::now(),
                    });
                }
            }
        }
        // Only the threads hold senders from here on, so the receiver sees
        // the channel disconnect once every thread has ended.
        drop(events);
        Checker { stop, threads }
    }

    /// Stops every thread and waits for them; returns once each has
    /// finished its current probe (bounded by that probe's timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.raise();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("a health-check thread panicked");
            }
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The loop of one target's thread.
fn run(target: &Target, events: &Sender<Event>, stop: &StopSignal) {
    let (first, jitter) = spacing(&target.key, target.check.interval);
    if stop.wait(first) {
        return;
    }
    loop {
        let outcome = probe(&target.check, target.address, target.port);
        let event = Event {
            key: target.key.clone(),
            outcome,
            at: Instant::now(),
        };
        if events.send(event).is_err() || stop.wait(target.check.interval + jitter) {
            return;
        }
    }
}

/// The delay before a target's first check and the extra pause after each,
/// both below a tenth of `interval`, derived from the key. `DefaultHasher`
/// is keyed with constants, so this is deterministic within a build.
fn spacing(key: &BackendKey, interval: Duration) -> (Duration, Duration) {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let hash = hasher.finish();
    let tenth = interval / 10;
    (
        fraction(tenth, hash & 0xffff_ffff),
        fraction(tenth, hash >> 32),
    )
}

/// `duration × parts / 2³²` for `parts < 2³²`: a fraction below 1.
fn fraction(duration: Duration, parts: u64) -> Duration {
    let nanos = (duration.as_nanos() * u128::from(parts)) >> 32;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A flag the checker raises once; sleeping threads wake on it at once.
#[derive(Debug, Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    fn raise(&self) {
        // A poisoned lock still guards a plain bool: use it.
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Sleeps for `duration` or until raised; returns whether raised.
    fn wait(&self, duration: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, duration, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::TcpListener,
        sync::mpsc::{self, Receiver},
    };

    use super::*;

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
            .filter_map(|(outcome, second)| {
                tracker.observe(outcome, t0 + Duration::from_secs(second))
            })
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
    fn spacing_is_deterministic_and_below_a_tenth() {
        let interval = Duration::from_millis(500);
        for port in 1..200 {
            let key = BackendKey {
                service: "web".into(),
                address: LOCALHOST,
                port,
            };
            let (first, jitter) = spacing(&key, interval);
            assert_eq!(spacing(&key, interval), (first, jitter));
            assert!(first < interval / 10 && jitter < interval / 10);
        }
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
        let (tx, rx) = mpsc::channel();
        let checker = Checker::start(
            vec![target(listener.local_addr().unwrap().port(), 30_000)],
            tx,
        );
        // The first check comes within a tenth of the interval.
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
}

//! `lb agent`: runs on a backend and reports its load for the `resource`
//! scheduler. The protocol is one HTTP request:
//!
//! ```text
//! GET /load HTTP/1.1            →   200, {"load": 0.42}
//! ```
//!
//! `load` is 0.0 when idle and 1.0 when saturated (more is allowed). By
//! default it is the 1-minute load average over the number of CPUs; with
//! `--load-file FILE` it is the number in FILE, so an operator can feed any
//! measure (queue depth, memory pressure, ...). The balancer polls each
//! backend's agent once a second on `agent_port` and moves weight away from
//! loaded backends smoothly; an agent that does not answer leaves the
//! backend at its configured weight.
//!
//! An agent listening beyond loopback should answer only its balancers:
//! `--allow ADDR` (repeatable; an address or a prefix) admits only those
//! peers, and `--secret-file FILE` requires `Authorization: Bearer SECRET`,
//! which the balancer sends from the service's `agent_secret_file`.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use ipnet::IpNet;

use crate::http::{Limits, Request, Response};

/// The load to report, read afresh for each request.
pub fn current_load(load_file: Option<&PathBuf>) -> anyhow::Result<f64> {
    if let Some(path) = load_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a number", path.display()));
    }
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let one_minute: f64 = text
        .split_whitespace()
        .next()
        .context("empty /proc/loadavg")?
        .parse()
        .context("malformed /proc/loadavg")?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    #[allow(clippy::cast_precision_loss, reason = "CPU counts")]
    Ok(one_minute / cpus as f64)
}

/// Who may ask an agent for its load.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Balancer addresses admitted (`--allow`); empty: any.
    pub allow: Vec<IpNet>,
    /// The shared secret (`--secret-file`): requests must carry
    /// `Authorization: Bearer SECRET`.
    pub secret: Option<String>,
}

/// Reads a shared secret: the file's text, trimmed; empty is refused.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{} holds no secret", path.display());
    anyhow::ensure!(
        secret.bytes().all(|b| b.is_ascii_graphic()),
        "{}: the secret must be printable ASCII without spaces",
        path.display()
    );
    Ok(secret.to_string())
}

/// Binds `listen`; [`serve`] then answers on it.
pub fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).with_context(|| format!("binding {listen}"))
}

/// Serves `GET /load` on `listener` until the process ends: clients
/// concurrently, heads bounded to 8 KiB, no body, 2 s to send a request and
/// 5 s for a whole exchange; only `access` is answered.
pub fn serve(
    listener: TcpListener,
    load_file: Option<PathBuf>,
    access: Access,
) -> anyhow::Result<()> {
    let listen = listener.local_addr().context("the agent's address")?;
    if access.allow.is_empty() && access.secret.is_none() {
        tracing::warn!(
            %listen,
            "anyone who reaches this address may read the load: \
             restrict it with --allow ADDR or --secret-file FILE"
        );
    }
    tracing::info!(%listen, allow = ?access.allow, secret = access.secret.is_some(), "lb agent serving GET /load");
    let limits = Limits {
        head: 8 * 1024,
        body: 0,
        read: Duration::from_secs(2),
        connection: Duration::from_secs(5),
        clients: 16,
        allow: access.allow.clone(),
    };
    let secret = access.secret;
    crate::http::block_on_tcp(
        listener,
        limits,
        Arc::new(move |request: Request| answer(&request, load_file.as_ref(), secret.as_deref())),
    )
}

fn answer(request: &Request, load_file: Option<&PathBuf>, secret: Option<&str>) -> Response {
    if let Some(secret) = secret {
        let offered = request
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(offered, secret) {
            return Response::error(401, "a shared secret is needed (agent_secret_file)");
        }
    }
    if request.method != "GET" || request.path != "/load" {
        return Response::error(404, "GET /load");
    }
    match current_load(load_file) {
        Ok(load) => Response::json(200, serde_json::json!({ "load": load }).to_string()),
        Err(error) => Response::error(500, &format!("{error:#}")),
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(offered: &str, secret: &str) -> bool {
    offered.len() == secret.len()
        && offered
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// How long one query may take, connection to last byte.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks agents for their load: hyper's HTTP/1 client on a runtime of its
/// own, for the thread that polls them (the controller's agent poller).
#[derive(Debug)]
pub struct AgentClient {
    runtime: tokio::runtime::Runtime,
}

impl AgentClient {
    /// A client with its runtime.
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the agent client's runtime")?;
        Ok(Self { runtime })
    }

    /// Asks the agent at `address` for its load (500 ms at most), with the
    /// shared secret if there is one.
    pub fn query(&self, address: SocketAddr, secret: Option<&str>) -> anyhow::Result<f64> {
        let (status, body) = self
            .runtime
            .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, fetch(address, secret)).await })
            .map_err(|_| anyhow::anyhow!("no answer within {} ms", QUERY_TIMEOUT.as_millis()))??;
        judge(status, &body)
    }
}

/// [`AgentClient::query`] with a client of its own (one-off queries).
pub fn query(address: SocketAddr, secret: Option<&str>) -> anyhow::Result<f64> {
    AgentClient::new()?.query(address, secret)
}

/// `GET /load` on `address`: the status and the body (at most
/// [`ANSWER_LIMIT`] bytes).
async fn fetch(address: SocketAddr, secret: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("talking HTTP to the agent")?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .uri("/load")
        .header(hyper::header::HOST, "lb-agent");
    if let Some(secret) = secret {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {secret}"));
    }
    let request = request
        .body(Empty::<hyper::body::Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("malformed answer")?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map_err(|error| anyhow::anyhow!("reading the answer: {error}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body.to_vec()))
}

/// The longest answer body [`AgentClient::query`] reads.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// The load in an agent's answer (its HTTP status and JSON body
/// `{"load": L}`): a finite number, 0 or more. Anything else is an error
/// saying what was wrong.
pub fn judge(status: u16, body: &[u8]) -> anyhow::Result<f64> {
    anyhow::ensure!(status == 200, "agent answered {status}");
    let body = std::str::from_utf8(body).context("answer is not UTF-8")?;
    let value: serde_json::Value = serde_json::from_str(body).context("answer is not JSON")?;
    let load = value["load"].as_f64().context("no load in the answer")?;
    anyhow::ensure!(
        load.is_finite() && load >= 0.0,
        "load {load} is not a number of 0 or more"
    );
    Ok(load)
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "0.25 is exact in f64 and in its decimal text"
)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    /// A load file, removed on drop.
    struct LoadFile(PathBuf);

    impl Drop for LoadFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn agent(access: Access) -> (SocketAddr, LoadFile) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let file = LoadFile(std::env::temp_dir().join(format!(
            "lb-agent-load-{}-{}",
            std::process::id(),
            address.port()
        )));
        std::fs::write(&file.0, "0.25").unwrap();
        let load = Some(file.0.clone());
        std::thread::spawn(move || serve(listener, load, access));
        (address, file)
    }

    fn raw(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Polls `query` until the agent thread is up (bounded).
    fn first_query(address: SocketAddr, secret: Option<&str>) -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match query(address, secret) {
                Err(error)
                    if Instant::now() < deadline && error.to_string().contains("refused") =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn answers_parse_to_their_load_and_garbage_to_an_error() {
        assert!((judge(200, b"{\"load\": 0.5}").unwrap() - 0.5).abs() < f64::EPSILON);
        for (status, body, error) in [
            (200, &b"{\"load\": -1}"[..], "0 or more"),
            (404, b"{}", "agent answered 404"),
            (200, b"{\"load\": \"x\"}", "no load"),
            (200, b"load", "not JSON"),
            (200, b"\xff\xfe", "not UTF-8"),
        ] {
            let message = format!("{:#}", judge(status, body).unwrap_err());
            assert!(message.contains(error), "{message}");
        }
    }

    #[test]
    fn answers_while_a_client_stalls_and_refuses_oversize_heads() {
        let (address, _file) = agent(Access::default());
        assert_eq!(first_query(address, None).unwrap(), 0.25);
        let mut stalled = TcpStream::connect(address).unwrap();
        stalled.write_all(b"GET /load HTTP/1.1\r\nHo").unwrap();
        let started = Instant::now();
        assert_eq!(query(address, None).unwrap(), 0.25);
        println!(
            "agent answered in {:?} beside a stalled client",
            started.elapsed()
        );
        let mut head = b"GET /load HTTP/1.1\r\nX-Junk: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 64 * 1024));
        let answer = raw(address, &head);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
        assert_eq!(query(address, None).unwrap(), 0.25);
        drop(stalled);
    }

    #[test]
    fn the_secret_is_required_when_set() {
        let (address, _file) = agent(Access {
            allow: Vec::new(),
            secret: Some("s3cret".into()),
        });
        assert_eq!(first_query(address, Some("s3cret")).unwrap(), 0.25);
        let refused = query(address, None).unwrap_err();
        assert!(refused.to_string().contains("401"), "{refused:#}");
        let refused = query(address, Some("s3creT")).unwrap_err();
        assert!(refused.to_string().contains("401"), "{refused:#}");
    }

    #[test]
    fn peers_outside_the_allow_list_get_nothing() {
        let (address, _file) = agent(Access {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            secret: None,
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(address).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(raw(address, b"GET /load HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
        assert!(query(address, None).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }
}

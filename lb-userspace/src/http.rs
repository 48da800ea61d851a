//! The HTTP/1.1 edge of every socket lb serves — the control API (Unix
//! socket), `/metrics` and `lb agent` (TCP): hyper on a small tokio runtime.
//! hyper parses and bounds the request head; this room adds the rest of what
//! a server facing a slow or hostile client needs:
//!
//! - every client is served on its own task, so one that stalls delays no
//!   other (at most [`Limits::clients`] at once; one more is closed at once);
//! - the request head is bounded ([`Limits::head`]: 431), so is the body
//!   ([`Limits::body`]: 413);
//! - the head and body must arrive within [`Limits::read`], and the whole
//!   exchange, answer written included, must end within
//!   [`Limits::connection`]; a client past either is disconnected;
//! - one request per connection (`Connection: close`), as the clients expect;
//! - TCP listeners may admit only some peers ([`Limits::allow`]).
//!
//! Handlers are plain blocking functions (they wait for the controller's
//! owner to answer): they run on tokio's blocking pool, never on the I/O
//! threads.

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::sync::Semaphore;

/// What a server accepts from its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest request head (request line and headers), bytes; at least
    /// 8 KiB (hyper's smallest read buffer).
    pub head: usize,
    /// Longest request body, bytes.
    pub body: usize,
    /// Time allowed to receive the head, and then the body.
    pub read: Duration,
    /// Time allowed for a whole exchange: request, handling, answer.
    pub connection: Duration,
    /// Clients served at once.
    pub clients: usize,
    /// TCP peers admitted (empty: any). Others are disconnected unread.
    pub allow: Vec<IpNet>,
}

/// A request as a handler sees it: the body is whole and within bounds.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The query (after `?`, still percent-encoded), if any.
    pub query: Option<String>,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// A handler's answer.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Further headers (lower-case names).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }).to_string())
    }
}

/// A blocking request handler.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// The runtime every server of this process runs on, made on first use:
/// two I/O threads (the servers only shuffle bytes; handlers run on the
/// blocking pool).
pub fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("lb-http")
        .enable_io()
        .enable_time()
        .build()
        .context("starting the HTTP runtime")?;
    // Two first calls racing: the loser's runtime is dropped unused.
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Serves `listener` (a bound Unix socket) on the runtime until the process
/// ends.
pub fn spawn_unix(
    listener: std::os::unix::net::UnixListener,
    limits: Limits,
    handler: Handler,
) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("making the control socket non-blocking")?;
    runtime()?.spawn(async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "serving the control socket");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(limits.clients));
        let limits = Arc::new(limits);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    admit(stream, &slots, &limits, &handler);
                }
                Err(error) => accept_failed(&error).await,
            }
        }
    });
    Ok(())
}

/// Serves `listener` (a bound TCP socket) on the runtime until the process
/// ends.
pub fn spawn_tcp(
    listener: std::net::TcpListener,
    limits: Limits,
    handler: Handler,
) -> anyhow::Result<()> {
    runtime()?.spawn(serve_tcp(listener, limits, handler));
    Ok(())
}

/// The bound on one connection of [`serve_tcp_at`]'s listeners.
const CONNECTION_BOUND: Duration = Duration::from_secs(30);

/// How long a handler of [`serve_tcp_at`] should wait for the controller's
/// owner: a request kept waiting by a busy owner gets a 503 before the
/// connection's bound cuts it off.
pub const OWNER_WAIT: Duration = CONNECTION_BOUND.saturating_sub(Duration::from_secs(5));

/// Binds `address` and serves it in the background with the limits lb's
/// TCP listeners for operators share (`/metrics`, the status page): heads
/// bounded to 8 KiB, bodies to `body` bytes, each read to 5 s, each
/// connection to 30 s, 16 clients at once. `what` names the listener in a
/// bind error.
pub fn serve_tcp_at(
    address: std::net::SocketAddr,
    what: &str,
    body: usize,
    handler: Handler,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding {what} {address}"))?;
    let limits = Limits {
        head: 8 * 1024,
        body,
        read: Duration::from_secs(5),
        connection: CONNECTION_BOUND,
        clients: 16,
        allow: Vec::new(),
    };
    spawn_tcp(listener, limits, handler)
}

/// Serves `listener` (a bound TCP socket) on the runtime, blocking the
/// calling thread for ever (`lb agent`).
pub fn block_on_tcp(
    listener: std::net::TcpListener,
    limits: Limits,
    handler: Handler,
) -> anyhow::Result<()> {
    runtime()?.block_on(serve_tcp(listener, limits, handler));
    Ok(())
}

async fn serve_tcp(listener: std::net::TcpListener, limits: Limits, handler: Handler) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "serving a TCP socket");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(limits.clients));
    let limits = Arc::new(limits);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if !admitted(&limits.allow, peer.ip()) {
                    tracing::debug!(%peer, "refused: not in the allow-list");
                    continue; // dropped: closed unread
                }
                let _ = stream.set_nodelay(true);
                admit(stream, &slots, &limits, &handler);
            }
            Err(error) => accept_failed(&error).await,
        }
    }
}

/// Whether `peer` may talk to a server whose allow-list is `allow`.
fn admitted(allow: &[IpNet], peer: IpAddr) -> bool {
    // A v4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        IpAddr::V4(_) => peer,
    };
    allow.is_empty() || allow.iter().any(|net| net.contains(&peer))
}

/// Out of descriptors, say: wait a little instead of spinning.
async fn accept_failed(error: &std::io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one client on its own task if a slot is free; closes it otherwise.
fn admit<S>(stream: S, slots: &Arc<Semaphore>, limits: &Arc<Limits>, handler: &Handler)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
        tracing::warn!(
            clients = limits.clients,
            "too many clients at once: connection closed"
        );
        return;
    };
    let limits = Arc::clone(limits);
    let handler = Arc::clone(handler);
    tokio::spawn(async move {
        let _slot = slot;
        let service_limits = Arc::clone(&limits);
        let service = hyper::service::service_fn(move |request| {
            let limits = Arc::clone(&service_limits);
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(exchange(request, &limits, handler).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.read)
            .max_buf_size(limits.head.max(8192))
            .max_header_size(limits.head)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        match tokio::time::timeout(limits.connection, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "HTTP connection failed"),
            Err(_) => tracing::debug!(
                limit = ?limits.connection,
                "HTTP client too slow: disconnected"
            ),
        }
    });
}

/// Reads the body (bounded in size and time), runs the handler on the
/// blocking pool, and builds the answer.
async fn exchange(
    request: hyper::Request<Incoming>,
    limits: &Limits,
    handler: Handler,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(limits.read, Limited::new(body, limits.body).collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(error)) => {
                return if error.is::<http_body_util::LengthLimitError>() {
                    respond(Response::error(
                        413,
                        &format!("request body longer than {} bytes", limits.body),
                    ))
                } else {
                    respond(Response::error(400, &format!("reading the body: {error}")))
                };
            }
            Err(_) => return respond(Response::error(408, "request body too slow")),
        };
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        authorization: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    };
    match tokio::task::spawn_blocking(move || handler(request)).await {
        Ok(response) => respond(response),
        Err(error) => respond(Response::error(500, &format!("handler failed: {error}"))),
    }
}

fn respond(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut answer = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *answer.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        headers.insert(
            hyper::header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    answer
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    fn limits() -> Limits {
        Limits {
            head: 8 * 1024,
            body: 1024,
            read: Duration::from_secs(2),
            connection: Duration::from_secs(5),
            clients: 8,
            allow: Vec::new(),
        }
    }

    fn echo() -> Handler {
        Arc::new(|request: Request| {
            Response::json(
                200,
                serde_json::json!({"path": request.path, "body": request.body.len()}).to_string(),
            )
        })
    }

    fn server(limits: Limits) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        spawn_tcp(listener, limits, echo()).unwrap();
        address
    }

    fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may answer and close before reading all of an oversize
        // request: a failed write is part of the answer.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn answers_while_another_client_stalls_and_refuses_oversize_requests() {
        // A read limit well beyond a loopback exchange on a busy machine.
        let address = server(Limits {
            read: Duration::from_secs(5),
            ..limits()
        });
        let mut stalled = TcpStream::connect(address).unwrap();
        stalled.write_all(b"GET /slow HTTP/1.1\r\nHost: x").unwrap();
        let started = Instant::now();
        let answer = exchange(address, b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
        println!(
            "answered in {:?} beside a stalled client",
            started.elapsed()
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"path\":\"/fast\""), "{answer}");
        // Concurrent: answered while the stalled client is still held (it
        // is cut off after the 5 s read limit), whatever the clock says.
        stalled.set_nonblocking(true).unwrap();
        let still_held = stalled.peek(&mut [0u8; 1]);
        assert!(
            still_held
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the stalled client was cut off before the other was answered: {still_held:?}"
        );
        stalled.set_nonblocking(false).unwrap();

        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 16 * 1024));
        head.extend(b"\r\n\r\n");
        let answer = exchange(address, &head);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        let mut body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'{', 4096));
        let answer = exchange(address, &body);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        // A line with no end at all is refused too, not buffered for ever.
        let answer = exchange(address, &vec![b'G'; 64 * 1024]);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );

        // The stalled client is cut off after the read limit.
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let ended = stalled.read_to_end(&mut rest);
        println!("stalled client cut off after {:?}", started.elapsed());
        // Cut off: the read ends (FIN, or RST over unread bytes); a timeout
        // means it was kept.
        assert!(
            !ended.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "never cut off: {ended:?}"
        );
        // And the server still answers.
        let answer = exchange(address, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[test]
    fn a_slow_body_is_cut_off() {
        let address = server(limits());
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[test]
    fn the_allow_list_admits_only_its_peers() {
        let mut only = limits();
        only.allow = vec!["192.0.2.0/24".parse().unwrap()];
        let address = server(only);
        let answer = exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.is_empty(), "{answer}");
        assert!(admitted(
            &["127.0.0.0/8".parse().unwrap()],
            "::ffff:127.0.0.1".parse().unwrap()
        ));
        assert!(admitted(&[], "198.51.100.1".parse().unwrap()));
        assert!(!admitted(
            &["127.0.0.1/32".parse().unwrap()],
            "127.0.0.2".parse().unwrap()
        ));
    }

    #[test]
    fn at_most_the_client_limit_is_served_at_once() {
        let mut two = limits();
        two.clients = 2;
        let address = server(two);
        let held: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(address).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        // Once the server has taken both, a third is closed unanswered.
        let mut refused = false;
        for _ in 0..50 {
            if exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty() {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(refused, "a third client was always served");
        drop(held);
    }
}

//! The control API: HTTP/1.1 with JSON bodies on a Unix socket that only root
//! can open (mode 0600). One request per connection. Endpoints:
//!
//! | method | path         | answer                                  |
//! |--------|--------------|-----------------------------------------|
//! | GET    | `/v1/status` | [`crate::report::StatusReport`]      |
//! | GET    | `/v1/stats`  | [`crate::report::StatsReport`]       |
//! | GET    | `/v1/status?service=NAME`, `/v1/stats?service=NAME` | the same, of the services named (repeatable); 404 naming an unknown one |
//! | POST   | `/v1/reload` | `{"reloaded": true, "writes": N}`; 400 with the problems, nothing changed; 500 if a write failed and so did its undo |
//! | POST   | `/v1/drain`, `/v1/undrain` | body [`BackendChange`]; answers the backend's status |
//! | POST   | `/v1/weight` | body [`BackendChange`] with `weight` |
//! | GET    | `/v1/guard`  | [`crate::guard::GuardReport`]            |
//! | POST   | `/v1/trace`  | body [`crate::trace::TracePoll`]; answers [`crate::trace::TraceBatch`] within a second |
//! | POST   | `/v1/route`  | body [`crate::route::report::RouteRequest`]; answers [`crate::route::report::RouteReport`]; 400 for a request that names no flow, 500 if a map could not be read |
//! | POST   | `/v1/guard/deny`, `/v1/guard/allow` | body [`GuardChange`]; answers the guard report |
//!
//! Errors come back as `{"error": "..."}` with a 4xx / 5xx status. The
//! socket is served by [`crate::http`]: clients concurrently, request heads
//! limited to 8 KiB (431) and bodies to 64 KiB (413), each read bounded by
//! 5 s and each connection by 60 s.

use std::{
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    guard::GuardReport,
    http::{Limits, Request, Response},
    owner::Handle,
    report::{
        BackendStatus, Override, OverrideError, RouteError, ServiceFilter, StatsReport,
        StatusReport,
    },
    route::report::{RouteReport, RouteRequest},
    trace::hub::Tracing,
};

/// What the control socket asks of the running balancer, each a job for
/// its owner ([`Handle::call`]). The controller implements it; the API
/// never names the controller (docs/STYLE.md §14).
pub trait Control: Tracing {
    /// `POST /v1/reload`: the number of map writes.
    ///
    /// # Errors
    /// A refused file, or writes that failed (see [`crate::report::half_done`]).
    fn reload(&mut self) -> anyhow::Result<usize>;
    /// `POST /v1/drain`, `/v1/undrain`, `/v1/weight`.
    ///
    /// # Errors
    /// An unknown service or backend, or writes that failed.
    fn override_backend(
        &mut self,
        service: &str,
        backend: &str,
        change: Override,
    ) -> Result<BackendStatus, OverrideError>;
    /// `POST /v1/route`.
    ///
    /// # Errors
    /// A request that names no flow, or a map that could not be read.
    fn route(&self, request: &RouteRequest) -> Result<RouteReport, RouteError>;
    /// `GET /v1/guard`.
    fn guard_report(&self) -> GuardReport;
    /// `POST /v1/guard/deny`.
    ///
    /// # Errors
    /// A full list, or writes that failed.
    fn guard_deny(&mut self, prefix: ipnet::IpNet) -> Result<GuardReport, OverrideError>;
    /// `POST /v1/guard/allow`.
    ///
    /// # Errors
    /// Nothing denies the prefix, it is the file's, or writes failed.
    fn guard_allow(&mut self, prefix: ipnet::IpNet) -> Result<GuardReport, OverrideError>;
    /// `Err` naming the services `filter` names that are not configured.
    ///
    /// # Errors
    /// [`OverrideError::Unknown`] listing the services.
    fn check_services(&self, filter: &ServiceFilter) -> Result<(), OverrideError>;
    /// `GET /v1/status`.
    fn status_of(&self, filter: &ServiceFilter) -> StatusReport;
    /// `GET /v1/stats`.
    ///
    /// # Errors
    /// A counter that could not be read.
    fn stats_of(&self, filter: &ServiceFilter) -> anyhow::Result<StatsReport>;
}

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Longest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// What the control socket accepts.
fn limits() -> Limits {
    Limits {
        head: MAX_HEAD,
        body: MAX_BODY,
        read: Duration::from_secs(5),
        // A reload re-reads the file and rewrites tables; the owner's
        // answer is awaited a little less (`crate::owner::CALL_TIMEOUT`).
        connection: Duration::from_mins(1),
        clients: 32,
        allow: Vec::new(),
    }
}

/// A bound control socket.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` (replacing a stale socket), mode 0600.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another lb run is active for this socket",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves requests in the background until the process ends; the
    /// returned guard removes the socket file when dropped.
    /// `trace` serves `lb trace` (`None`: refused, 503).
    pub fn spawn<C: Control>(
        self,
        controller: Handle<C>,
        trace: Option<Arc<crate::trace::hub::Hub>>,
    ) -> anyhow::Result<SocketGuard> {
        let guard = SocketGuard(self.path.clone());
        crate::http::spawn_unix(
            self.listener,
            limits(),
            Arc::new(move |request: Request| {
                if (request.method.as_str(), request.path.as_str()) == ("POST", "/v1/trace") {
                    return trace_poll(&request, &controller, trace.as_deref());
                }
                route(&request, &controller)
            }),
        )?;
        Ok(guard)
    }
}

/// Removes the control socket file on drop.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `POST /v1/trace`: one poll of the trace (waits up to a second).
fn trace_poll<C: Control>(
    request: &Request,
    controller: &Handle<C>,
    hub: Option<&crate::trace::hub::Hub>,
) -> Response {
    let Some(hub) = hub else {
        return Response::error(503, "tracing is not available in this lb run");
    };
    let poll: crate::trace::TracePoll = match serde_json::from_slice(&request.body) {
        Ok(poll) => poll,
        Err(error) => return Response::error(400, &format!("bad request body: {error}")),
    };
    match hub.poll(&poll, controller) {
        Ok(batch) => json(&batch),
        Err(error) => Response::error(500, &format!("{error:#}")),
    }
}

/// Answers one request. Bodies are parsed here, on the client's thread;
/// only the controller's part of the work is a job for its owner.
fn route<C: Control>(request: &Request, controller: &Handle<C>) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v1/status" | "/v1/stats") => report(request, controller),
        ("POST", "/v1/reload") => {
            answer(controller.call(C::reload), |reload| match reload {
                Ok(writes) => json(&serde_json::json!({ "reloaded": true, "writes": writes })),
                Err(error) => {
                    let what = crate::report::reload_failure(&error);
                    tracing::error!(error = %format!("{error:#}"), "{what}");
                    // The file is the operator's to fix (a client error),
                    // unless the maps are left half-changed.
                    let status = if crate::report::half_done(&error) {
                        500
                    } else {
                        400
                    };
                    Response::error(status, &format!("{what}: {error:#}"))
                }
            })
        }
        ("POST", "/v1/drain" | "/v1/undrain" | "/v1/weight") => {
            let change: BackendChange = match serde_json::from_slice(&request.body) {
                Ok(change) => change,
                Err(error) => return Response::error(400, &format!("bad request body: {error}")),
            };
            let weight = match request.path.as_str() {
                "/v1/drain" => Override::Drain,
                "/v1/undrain" => Override::Undrain,
                _ => match change.weight {
                    Some(weight) => Override::Weight(weight),
                    None => return Response::error(400, "a weight is needed"),
                },
            };
            let done = controller
                .call(move |c| c.override_backend(&change.service, &change.backend, weight));
            answer(done, overridden)
        }
        ("POST", "/v1/route") => {
            let request: crate::route::report::RouteRequest =
                match serde_json::from_slice(&request.body) {
                    Ok(request) => request,
                    Err(error) => {
                        return Response::error(400, &format!("bad request body: {error}"));
                    }
                };
            answer(
                controller.call(move |c| c.route(&request)),
                |report| match report {
                    Ok(report) => json(&report),
                    Err(RouteError::Request(error)) => Response::error(400, &error),
                    // A map read that failed: the controller's, not the
                    // request's, with its cause.
                    Err(error) => Response::error(500, &format!("{:#}", anyhow::Error::new(error))),
                },
            )
        }
        ("GET", "/v1/guard") => answer(controller.call(|c| c.guard_report()), |report| {
            json(&report)
        }),
        ("POST", "/v1/guard/deny" | "/v1/guard/allow") => {
            let change: GuardChange = match serde_json::from_slice(&request.body) {
                Ok(change) => change,
                Err(error) => return Response::error(400, &format!("bad request body: {error}")),
            };
            let Some(prefix) = parse_prefix(&change.prefix) else {
                return Response::error(
                    400,
                    &format!(
                        "{:?} is not an address or a prefix (like 198.51.100.0/24)",
                        change.prefix
                    ),
                );
            };
            let deny = request.path == "/v1/guard/deny";
            let done = controller.call(move |c| {
                if deny {
                    c.guard_deny(prefix)
                } else {
                    c.guard_allow(prefix)
                }
            });
            answer(done, overridden)
        }
        (
            _,
            "/v1/status" | "/v1/stats" | "/v1/reload" | "/v1/drain" | "/v1/undrain" | "/v1/weight"
            | "/v1/guard" | "/v1/guard/deny" | "/v1/guard/allow",
        ) => Response::error(405, "method not allowed"),
        (_, path) => Response::error(404, &format!("no endpoint {path}")),
    }
}

/// `GET /v1/status` or `/v1/stats`, of the services the query names.
pub(crate) fn report<C: Control>(request: &Request, controller: &Handle<C>) -> Response {
    let filter = match filter(request) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    if request.path == "/v1/status" {
        let done = controller.call(move |c| {
            c.check_services(&filter)?;
            Ok(c.status_of(&filter))
        });
        answer(done, overridden)
    } else {
        let done = controller.call(move |c| {
            c.check_services(&filter)?;
            c.stats_of(&filter).map_err(OverrideError::Failed)
        });
        answer(done, overridden)
    }
}

/// The services a report is asked for: `?service=NAME`, repeatable (none:
/// every service); 400 for any other parameter.
fn filter(request: &Request) -> Result<ServiceFilter, Response> {
    let mut names = Vec::new();
    for pair in request.query.as_deref().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "service" {
            return Err(Response::error(
                400,
                &format!("unknown query parameter {key:?} (only service=NAME)"),
            ));
        }
        match percent_decode(value) {
            Some(name) => names.push(name),
            None => {
                return Err(Response::error(
                    400,
                    &format!("service={value}: not percent-encoded UTF-8"),
                ));
            }
        }
    }
    Ok(ServiceFilter::new(names))
}

/// A query value decoded: `%XX` escapes and `+` for a space.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `path` asking for the services `names` (`?service=NAME&...`, each
/// name percent-encoded); `path` itself for none.
pub fn with_services(path: &str, names: &[String]) -> String {
    use std::fmt::Write as _;
    let mut url = path.to_string();
    for (n, name) in names.iter().enumerate() {
        url.push(if n == 0 { '?' } else { '&' });
        url.push_str("service=");
        for byte in name.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                let _ = write!(url, "%{byte:02X}");
            }
        }
    }
    url
}

/// The owner's answer made a response; 503 if it gave none.
fn answer<R>(
    result: Result<R, crate::owner::OwnerError>,
    respond: impl FnOnce(R) -> Response,
) -> Response {
    match result {
        Ok(value) => respond(value),
        Err(error) => Response::error(503, &error.to_string()),
    }
}

/// An override's or a guard change's outcome as a response.
fn overridden<T: serde::Serialize>(result: Result<T, OverrideError>) -> Response {
    match result {
        Ok(value) => json(&value),
        Err(OverrideError::Unknown(message)) => Response::error(404, &message),
        Err(OverrideError::Failed(error)) => Response::error(500, &format!("{error:#}")),
    }
}

/// Body of `/v1/drain`, `/v1/undrain` and `/v1/weight`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct BackendChange {
    /// Service name.
    pub service: String,
    /// Backend, `ADDR` or `ADDR:PORT` (`[v6]:PORT`).
    pub backend: String,
    /// New weight (`/v1/weight` only).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Body of `/v1/guard/deny` and `/v1/guard/allow`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct GuardChange {
    /// A prefix (`198.51.100.0/24`, `2001:db8::/48`) or one address.
    pub prefix: String,
}

/// A prefix, or one address as a full-length prefix.
pub fn parse_prefix(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => Response::json(200, body),
        Err(error) => Response::error(500, &error.to_string()),
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the lb controller is not running (nothing listens on {0}); start it with `lb run -c FILE`"
    )]
    NotRunning(PathBuf),
    /// The socket exists but may not be opened.
    #[error("permission denied on {0}: the control socket is root-only")]
    PermissionDenied(PathBuf),
    /// The controller answered with an error.
    #[error("the controller answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Anything else (I/O, malformed answer).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `GET path` on the socket at `socket`; the JSON body on success.
pub fn get(socket: &Path, path: &str) -> Result<serde_json::Value, ClientError> {
    request(socket, "GET", path, None)
}

/// `POST path` with a JSON body; the JSON answer on success.
pub fn post(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    request(socket, "POST", path, Some(body))
}

/// `GET path`; on success the JSON body as it came, unparsed: printed as
/// it is by `--output json`, or read straight into a typed report.
pub fn get_text(socket: &Path, path: &str) -> Result<String, ClientError> {
    request_text(socket, "GET", path, None)
}

fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let body = request_text(socket, method, path, body)?;
    Ok(serde_json::from_str(&body).context("the controller's answer is not JSON")?)
}

/// The longest answer read: status and stats of a large configuration fit
/// well within it.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// How long one request may take, connection to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One request on the control socket, through hyper's HTTP/1 client on a
/// runtime of its own (the CLI is synchronous): the answer's body when the
/// status is 200, else the controller's error.
fn request_text(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<String, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the client's runtime")?;
    let (status, body) = runtime.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, exchange(socket, method, path, body))
            .await
            .map_err(|_| {
                ClientError::Other(anyhow::anyhow!(
                    "the controller did not answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
    })?;
    if status != 200 {
        let value: serde_json::Value =
            serde_json::from_str(&body).context("the controller's answer is not JSON")?;
        let message = value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_string();
        return Err(ClientError::Api { status, message });
    }
    Ok(body)
}

/// Connects, sends the request and reads the whole answer (at most
/// [`MAX_ANSWER`] bytes).
async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String), ClientError> {
    use http_body_util::{BodyExt as _, Full, Limited};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.into()),
            _ => ClientError::NotRunning(socket.into()),
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("talking HTTP to the controller")?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "lb")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(hyper::body::Bytes::from(
            body.map(ToString::to_string).unwrap_or_default(),
        )))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|error| anyhow::anyhow!("reading the answer: {error}"))?
        .to_bytes();
    driver.abort();
    let text = String::from_utf8(bytes.to_vec()).context("the controller's answer is not UTF-8")?;
    Ok((status, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_survive_the_query() {
        let names: Vec<String> = ["web", "a b&c=d", "dns/53", "é%+"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let url = with_services("/v1/status", &names);
        assert!(
            url.starts_with("/v1/status?service=web&service=a%20b%26c%3Dd&"),
            "{url}"
        );
        let (path, query) = url.split_once('?').unwrap();
        let request = Request {
            method: "GET".into(),
            path: path.into(),
            query: Some(query.into()),
            authorization: None,
            body: hyper::body::Bytes::new(),
        };
        assert_eq!(filter(&request).unwrap(), ServiceFilter::new(names));
        assert_eq!(with_services("/v1/stats", &[]), "/v1/stats");
        let none = Request {
            query: None,
            ..request
        };
        assert_eq!(filter(&none).unwrap(), ServiceFilter::all());
        let other = Request {
            query: Some("services=web".into()),
            ..none
        };
        assert_eq!(filter(&other).unwrap_err().status, 400);
        assert_eq!(percent_decode("a+b%41"), Some("a bA".into()));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}

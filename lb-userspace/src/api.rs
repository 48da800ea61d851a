//! The control API: HTTP/1.1 with JSON bodies on a Unix socket that only root
//! can open (mode 0600). One request per connection. Endpoints:
//!
//! | method | path         | answer                                  |
//! |--------|--------------|-----------------------------------------|
//! | GET    | `/v1/status` | [`crate::controller::StatusReport`]      |
//! | GET    | `/v1/stats`  | [`crate::controller::StatsReport`]       |
//! | POST   | `/v1/reload` | `{"reloaded": true, "writes": N}`; 400 with the problems, nothing changed |
//! | POST   | `/v1/drain`, `/v1/undrain` | body [`BackendChange`]; answers the backend's status |
//! | POST   | `/v1/weight` | body [`BackendChange`] with `weight` |
//!
//! Errors come back as `{"error": "..."}` with a 4xx / 5xx status. Request
//! heads are limited to 8 KiB and bodies to 64 KiB.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::controller::{Controller, Override, OverrideError};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Longest request body accepted.
const MAX_BODY: usize = 64 * 1024;

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

    /// Serves requests on a background thread until the process ends; the
    /// returned guard removes the socket file when dropped.
    pub fn spawn(self, controller: Arc<Mutex<Controller>>) -> SocketGuard {
        let guard = SocketGuard(self.path.clone());
        let listener = self.listener;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(error) = serve(stream, &controller) {
                    tracing::debug!(error = %format!("{error:#}"), "control request failed");
                }
            }
        });
        guard
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

/// A parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn serve(stream: UnixStream, controller: &Mutex<Controller>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let request = match read_request(&mut reader) {
        Ok(request) => request,
        Err(error) => return respond(stream, 400, &error_body(&format!("{error:#}"))),
    };
    let (status, body) = route(&request, controller);
    respond(stream, status, &body)
}

fn route(request: &Request, controller: &Mutex<Controller>) -> (u16, String) {
    let Ok(mut controller) = controller.lock() else {
        return (500, error_body("controller state is poisoned"));
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v1/status") => json(&controller.status()),
        ("GET", "/v1/stats") => match controller.stats() {
            Ok(stats) => json(&stats),
            Err(error) => (500, error_body(&format!("{error:#}"))),
        },
        ("POST", "/v1/reload") => match controller.reload() {
            Ok(writes) => json(&serde_json::json!({ "reloaded": true, "writes": writes })),
            // The file is the operator's to fix: a client error.
            Err(error) => (
                400,
                error_body(&format!("reload refused, nothing changed: {error:#}")),
            ),
        },
        ("POST", "/v1/drain" | "/v1/undrain" | "/v1/weight") => {
            let change: BackendChange = match serde_json::from_slice(&request.body) {
                Ok(change) => change,
                Err(error) => return (400, error_body(&format!("bad request body: {error}"))),
            };
            let weight = match request.path.as_str() {
                "/v1/drain" => Override::Drain,
                "/v1/undrain" => Override::Undrain,
                _ => match change.weight {
                    Some(weight) => Override::Weight(weight),
                    None => return (400, error_body("a weight is needed")),
                },
            };
            match controller.override_backend(&change.service, &change.backend, weight) {
                Ok(status) => json(&status),
                Err(OverrideError::Unknown(message)) => (404, error_body(&message)),
                Err(OverrideError::Failed(error)) => (500, error_body(&format!("{error:#}"))),
            }
        }
        (
            _,
            "/v1/status" | "/v1/stats" | "/v1/reload" | "/v1/drain" | "/v1/undrain" | "/v1/weight",
        ) => (405, error_body("method not allowed")),
        (_, path) => (404, error_body(&format!("no endpoint {path}"))),
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

fn json<T: serde::Serialize>(value: &T) -> (u16, String) {
    match serde_json::to_string(value) {
        Ok(body) => (200, body),
        Err(error) => (500, error_body(&error.to_string())),
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn read_request(reader: &mut impl BufRead) -> anyhow::Result<Request> {
    let mut head_len = 0;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    head_len += line.len();
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        bail!("malformed request line");
    };
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        body: Vec::new(),
    };
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        head_len += header.len();
        if head_len > MAX_HEAD {
            bail!("request head longer than {MAX_HEAD} bytes");
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().context("bad Content-Length")?;
        }
    }
    if content_length > MAX_BODY {
        bail!("request body longer than {MAX_BODY} bytes");
    }
    request.body = vec![0; content_length];
    reader.read_exact(&mut request.body)?;
    Ok(request)
}

fn respond(mut stream: UnixStream, status: u16, body: &str) -> anyhow::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
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

fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|error| match error.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.into()),
        _ => ClientError::NotRunning(socket.into()),
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("socket timeout")?;
    let body = body.map(ToString::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .context("sending the request")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the answer")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed answer from the controller")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line from the controller")?;
    let value: serde_json::Value =
        serde_json::from_str(body).context("the controller's answer is not JSON")?;
    if status != 200 {
        let message = value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_string();
        return Err(ClientError::Api { status, message });
    }
    Ok(value)
}

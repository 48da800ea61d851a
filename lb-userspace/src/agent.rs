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

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;

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

/// Serves `GET /load` on `listen` until the process ends.
pub fn serve(listen: SocketAddr, load_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "lb agent serving GET /load");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(error) = answer(stream, load_file) {
            tracing::debug!(error = %format!("{error:#}"), "agent request failed");
        }
    }
    Ok(())
}

fn answer(stream: TcpStream, load_file: Option<&PathBuf>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    for _ in 0..100 {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = stream;
    let (status, body) = if request.starts_with("GET /load ") {
        match current_load(load_file) {
            Ok(load) => ("200 OK", serde_json::json!({ "load": load }).to_string()),
            Err(error) => (
                "500 Internal Server Error",
                serde_json::json!({ "error": format!("{error:#}") }).to_string(),
            ),
        }
    } else {
        (
            "404 Not Found",
            serde_json::json!({ "error": "GET /load" }).to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// Asks the agent at `address` for its load (500 ms at most).
pub fn query(address: SocketAddr) -> anyhow::Result<f64> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /load HTTP/1.1\r\nHost: lb-agent\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.take(64 * 1024).read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "agent answered {head:?}");
    let value: serde_json::Value = serde_json::from_str(body).context("answer is not JSON")?;
    value["load"].as_f64().context("no load in the answer")
}

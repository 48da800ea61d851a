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

/// The longest request head (request line and headers) the agent reads.
pub const REQUEST_LIMIT: u64 = 8 * 1024;

/// What a balancer asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /load`.
    Load,
    /// Anything else that is a request head: answered 404.
    Other,
}

/// Reads one request head (up to the blank line, the end of input, or
/// [`REQUEST_LIMIT`] bytes, whichever comes first) and says what it asks
/// for. Bytes past the limit are never read.
pub fn read_request(reader: impl BufRead) -> std::io::Result<Request> {
    let mut reader = reader.take(REQUEST_LIMIT);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    let request = if line.starts_with(b"GET /load ") {
        Request::Load
    } else {
        Request::Other
    };
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.trim_ascii().is_empty() {
            return Ok(request);
        }
    }
}

fn answer(stream: TcpStream, load_file: Option<&PathBuf>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let request = read_request(BufReader::new(stream.try_clone()?))?;
    let mut stream = stream;
    let (status, body) = if request == Request::Load {
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
    let mut response = Vec::new();
    stream
        .take(ANSWER_LIMIT as u64)
        .read_to_end(&mut response)?;
    parse_answer(&response)
}

/// The longest answer [`query`] reads.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// The load in an agent's answer (status line, headers, blank line, JSON
/// body `{"load": L}`): a finite number, 0 or more. Anything else is an
/// error saying what was wrong.
pub fn parse_answer(response: &[u8]) -> anyhow::Result<f64> {
    let response = std::str::from_utf8(response).context("answer is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "agent answered {:?}",
        head.lines().next().unwrap_or_default()
    );
    let value: serde_json::Value = serde_json::from_str(body).context("answer is not JSON")?;
    let load = value["load"].as_f64().context("no load in the answer")?;
    anyhow::ensure!(
        load.is_finite() && load >= 0.0,
        "load {load} is not a number of 0 or more"
    );
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_to_their_load_and_garbage_to_an_error() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"load\": 0.5}";
        assert!((parse_answer(ok).unwrap() - 0.5).abs() < f64::EPSILON);
        for (answer, error) in [
            (&b"HTTP/1.1 200 OK\r\n\r\n{\"load\": -1}"[..], "0 or more"),
            (b"HTTP/1.1 404 Not Found\r\n\r\n{}", "agent answered"),
            (b"HTTP/1.1 200 OK\r\n\r\n{\"load\": \"x\"}", "no load"),
            (b"HTTP/1.1 200 OK\r\n\r\nload", "not JSON"),
            (b"\xff\xfe", "not UTF-8"),
            (b"HTTP/1.1 200 OK", "malformed"),
        ] {
            let message = format!("{:#}", parse_answer(answer).unwrap_err());
            assert!(message.contains(error), "{message}");
        }
    }

    #[test]
    fn a_request_head_is_read_up_to_its_limit_only() {
        let request = b"GET /load HTTP/1.1\r\nHost: a\r\n\r\nleft";
        let mut reader = &request[..];
        assert_eq!(read_request(&mut reader).unwrap(), Request::Load);
        assert_eq!(reader, b"left", "the body is not read");
        let endless = vec![b'a'; 1 << 20];
        let mut reader = &endless[..];
        assert_eq!(read_request(&mut reader).unwrap(), Request::Other);
        assert_eq!(
            endless.len() - reader.len(),
            8 * 1024,
            "read past the limit"
        );
    }
}

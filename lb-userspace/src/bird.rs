//! The BIRD 2 edge of `announce`: writes the include [`crate::announce`]
//! rendered (to a temporary file, then renamed over the old one, so BIRD
//! never reads half of it) and asks BIRD to re-read its configuration with
//! `configure` on its control socket — what `birdc configure` does, without
//! needing birdc. BIRD applies a changed static protocol route by route, so
//! BGP sessions stay up and only the changed VIPs are announced or
//! withdrawn.
//!
//! [`Announcer`] does this on a thread of its own, so the controller's
//! owner never waits on BIRD: it submits the latest text and reads the
//! outcome; only the stop waits, bounded, for the withdrawal to be in.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{self, Receiver, Sender},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// How long one exchange with BIRD may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why BIRD was not told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BirdError {
    /// Writing the include failed.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The include.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// BIRD's control socket did not answer.
    #[error("BIRD's control socket {}: {source} (is bird running with -s {}?)", .path.display(), .path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// BIRD refused the configuration.
    #[error("BIRD refused `configure`: {0}")]
    Refused(String),
}

/// The outcome of BIRD's reply to `configure`, from its lines.
///
/// BIRD's control protocol: each line starts with a 4-digit code, then `-`
/// if more lines follow or a space on the last one; lines starting with a
/// space continue the previous one. Codes 0003 (reconfigured), 0004
/// (reconfiguration in progress), 0018 (confirmed) and 0019 (nothing to do)
/// are success; 8xxx and 9xxx are errors (a parse error names the file and
/// line).
pub fn configure_outcome(lines: &[String]) -> Result<(), BirdError> {
    let last = lines
        .iter()
        .rev()
        .find(|line| is_final(line))
        .ok_or_else(|| BirdError::Refused("no reply".into()))?;
    match &last[..4] {
        "0003" | "0004" | "0018" | "0019" => Ok(()),
        _ => {
            let text: Vec<&str> = lines
                .iter()
                .map(|line| line.get(5..).unwrap_or("").trim())
                .filter(|line| !line.is_empty())
                .collect();
            Err(BirdError::Refused(text.join("; ")))
        }
    }
}

/// BIRD's answer to `configure` as it arrives on the socket (the greeting
/// read already): its lines up to the last one, then [`configure_outcome`].
pub fn configure_reply(bytes: &[u8]) -> Result<(), BirdError> {
    let lines = read_reply(&mut std::io::Cursor::new(bytes))
        .map_err(|error| BirdError::Refused(format!("unreadable reply: {error}")))?;
    configure_outcome(&lines)
}

/// Whether `line` is the last line of a reply: a code and a space.
fn is_final(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b' '
}

/// Writes `text` to `include` (creating its directory) by rename, then
/// runs `configure` on BIRD's `socket`.
pub fn apply(socket: &Path, include: &Path, text: &str) -> Result<(), BirdError> {
    write_include(include, text).map_err(|source| BirdError::Write {
        path: include.to_path_buf(),
        source,
    })?;
    configure(socket)
}

fn write_include(include: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = include.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = include.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, include)
}

/// `configure` on BIRD's control socket.
pub fn configure(socket: &Path) -> Result<(), BirdError> {
    let failed = |source| BirdError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(failed)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(failed)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(failed)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(failed)?);
    // The greeting: "0001 BIRD 2.0.12 ready."
    read_reply(&mut reader).map_err(failed)?;
    (&stream).write_all(b"configure\n").map_err(failed)?;
    let lines = read_reply(&mut reader).map_err(failed)?;
    configure_outcome(&lines)
}

/// The longest line of a BIRD reply lb reads (BIRD's own are far shorter).
const LINE_LIMIT: u64 = 4096;

/// One reply's lines, up to its last (at most 1,000 lines of 4 KiB).
fn read_reply<R: std::io::BufRead>(reader: &mut R) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    while lines.len() < 1000 {
        let mut line = String::new();
        let n = std::io::Read::take(&mut *reader, LINE_LIMIT).read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "BIRD closed the connection mid-reply",
            ));
        }
        // A longer line is refused, not cut: the rest of it, read as a line
        // of its own, could start with a code and end the reply early.
        if n as u64 == LINE_LIMIT && !line.ends_with('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line of BIRD's reply is longer than {LINE_LIMIT} bytes"),
            ));
        }
        // Only the line's end goes: "8002 " (an error with no text) is
        // still a last line.
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        let last = is_final(&line);
        lines.push(line);
        if last {
            return Ok(lines);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "BIRD's reply does not end",
    ))
}

/// What the announcer last did, for `lb status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Texts BIRD took since start.
    pub applied: u64,
    /// The last failure, if the last attempt failed (it is retried).
    pub error: Option<String>,
}

enum Job {
    Apply(String),
    /// Apply, then answer.
    ApplyAndTell(String, Sender<Result<(), String>>),
}

/// Tells BIRD, on its own thread, the latest include text submitted.
#[derive(Debug)]
pub struct Announcer {
    jobs: Sender<Job>,
    outcome: Arc<Mutex<Outcome>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Announcer {
    /// Starts the thread for BIRD at `socket`, writing `include`.
    pub fn start(socket: PathBuf, include: PathBuf) -> Self {
        let (jobs, queue) = mpsc::channel();
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let shared = Arc::clone(&outcome);
        std::thread::spawn(move || run(&queue, &socket, &include, &shared));
        Self { jobs, outcome }
    }

    /// Queues `text` (an older one still queued is skipped).
    pub fn submit(&self, text: String) {
        let _ = self.jobs.send(Job::Apply(text));
    }

    /// Applies `text` and waits for BIRD's answer, `timeout` at most.
    pub fn apply_now(&self, text: String, timeout: Duration) -> Result<(), String> {
        let (tell, answer) = mpsc::channel();
        self.jobs
            .send(Job::ApplyAndTell(text, tell))
            .map_err(|_| "the announcer thread is gone".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("BIRD did not answer within {timeout:?}"))?
    }

    /// What it last did.
    pub fn outcome(&self) -> Outcome {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn run(queue: &Receiver<Job>, socket: &Path, include: &Path, outcome: &Mutex<Outcome>) {
    while let Ok(mut job) = queue.recv() {
        // Only the latest text matters; answers are kept.
        let mut tells = Vec::new();
        loop {
            if let Job::ApplyAndTell(_, tell) = &job {
                tells.push(tell.clone());
            }
            match queue.try_recv() {
                Ok(next) => job = next,
                Err(_) => break,
            }
        }
        let (Job::Apply(text) | Job::ApplyAndTell(text, _)) = job;
        let result = apply(socket, include, &text).map_err(|error| error.to_string());
        let before = {
            let mut outcome = outcome.lock().unwrap_or_else(PoisonError::into_inner);
            let before = outcome.error.clone();
            match &result {
                Ok(()) => {
                    outcome.applied += 1;
                    outcome.error = None;
                }
                Err(error) => outcome.error = Some(error.clone()),
            }
            before
        };
        // Retried every second while it fails: logged when the failure
        // starts, changes or ends, not every time.
        match (&result, before) {
            (Ok(()), None) => {
                tracing::debug!(include = %include.display(), "BIRD reconfigured");
            }
            (Ok(()), Some(_)) => tracing::info!("announce: BIRD took the include again"),
            (Err(error), before) if before.as_ref() != Some(error) => {
                tracing::warn!(%error, "announce: telling BIRD failed; retrying every second");
            }
            (Err(_), _) => {}
        }
        for tell in tells {
            let _ = tell.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn configure_replies_are_read_from_their_last_code() {
        // As BIRD 2.0.12 answers.
        let ok = lines("0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured");
        assert!(configure_outcome(&ok).is_ok());
        assert!(configure_outcome(&lines("0019 Nothing to do")).is_ok());
        assert!(configure_outcome(&lines("0004 Reconfiguration in progress")).is_ok());
        let refused = lines(
            "0002-Reading configuration from /etc/bird/bird.conf\n\
             8002 /run/lb-bird/announce.conf:4:9 syntax error, unexpected CF_SYM_UNDEFINED",
        );
        let error = configure_outcome(&refused).unwrap_err().to_string();
        assert!(
            error.contains("announce.conf:4:9 syntax error")
                && error.starts_with("BIRD refused `configure`"),
            "{error}"
        );
        assert!(configure_outcome(&lines("0002-Reading")).is_err());
        assert!(!is_final("0002-Reading"));
        assert!(!is_final(" continued"));
        assert!(is_final("9001 Access denied"));
        assert!(configure_reply(b"0002-Reading\n continued\n0003 Reconfigured\n").is_ok());
        assert!(configure_reply(b"0002-Reading\n").is_err());
        assert!(configure_reply(b"\xff\xfe\n").is_err());
        // An error with no text is still the last line (the fuzz target's
        // finds: trimmed to "8002" it was read past, to a success code).
        assert!(configure_reply(b"8002 \n0003 Reconfigured\n").is_err());
        // A line past 4 KiB is refused, not cut into a line that starts
        // with a success code.
        let mut long = b"0002-".to_vec();
        long.extend(std::iter::repeat_n(b'x', 4091));
        long.extend(b"0003 Reconfigured\n");
        assert!(configure_reply(&long).is_err());
    }

    #[test]
    fn a_missing_socket_says_which_and_the_include_is_still_written() {
        let dir = std::env::temp_dir().join(format!("lb-bird-{}", std::process::id()));
        let include = dir.join("sub/announce.conf");
        let socket = dir.join("none.ctl");
        let error = apply(&socket, &include, "protocol static lb4 { ipv4; }\n").unwrap_err();
        let text = std::fs::read_to_string(&include);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(error, BirdError::Socket { .. }), "{error}");
        assert!(error.to_string().contains("none.ctl"), "{error}");
        assert_eq!(text.unwrap(), "protocol static lb4 { ipv4; }\n");
    }
}

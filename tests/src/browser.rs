//! A headless Chromium inside a test's namespace, driven over its debugging
//! protocol (CDP) on `--remote-debugging-pipe` (file descriptors 3 and 4,
//! NUL-ended JSON messages): open a page, evaluate expressions in it, and
//! collect what it reports as errors (uncaught exceptions, `console.error`,
//! failed loads and CSP violations).
//!
//! Started by [`Netns::command`] in a namespace the test made, with every
//! background service of the browser turned off: it can reach only the
//! namespace's own addresses. On drop it is asked to close, then it and
//! every process it started are killed by pid, and its profile directory
//! is removed.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::{FromRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::netns::{ChildGuard, Netns, wait_until};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A running headless Chromium with one page attached.
#[derive(Debug)]
pub struct Browser {
    child: Option<ChildGuard>,
    to: File,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    errors: Vec<String>,
    profile: PathBuf,
}

/// A pipe's two ends, both close-on-exec and above 9 (so placing the
/// child's ends on 3 and 4 overwrites neither).
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-int array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    fds.map(|fd| {
        // SAFETY: fcntl on a descriptor this function just opened.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(high >= 10, "moving a pipe descriptor");
        // SAFETY: closing the original, now duplicated.
        unsafe { libc::close(fd) };
        high
    })
    .into()
}

impl Browser {
    /// Starts Chromium in `ns` and attaches to its blank page.
    pub fn start(ns: &Netns) -> Self {
        let profile =
            std::env::temp_dir().join(format!("lb-browser-{}-{}", std::process::id(), ns.name()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("creating the browser profile directory");
        let (ours_in, theirs_out) = pipe();
        let (theirs_in, ours_out) = pipe();
        let user_data = format!("--user-data-dir={}", profile.display());
        let mut command = ns.command(
            "chromium",
            &[
                "--headless",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--no-pings",
                "--disable-gpu",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--enable-logging=stderr",
                "--v=0",
                &user_data,
                "about:blank",
            ],
        );
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(theirs_in, 3), (theirs_out, 4)] {
                    if libc::dup2(from, to) != to {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = Netns::spawn_command(command);
        // SAFETY: the child's ends, no longer needed here.
        unsafe {
            libc::close(theirs_in);
            libc::close(theirs_out);
        }
        // SAFETY: descriptors this process owns from here on.
        let (to, from_file) = unsafe { (File::from_raw_fd(ours_out), File::from_raw_fd(ours_in)) };
        let (sender, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_file);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice(&message)
                    && sender.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child: Some(child),
            to,
            from,
            next: 0,
            session: String::new(),
            errors: Vec::new(),
            profile,
        };
        browser.attach();
        browser
    }

    /// Attaches to the page target and turns on the domains that report
    /// errors.
    fn attach(&mut self) {
        let mut page = None;
        let found = wait_until(Duration::from_secs(20), || {
            let targets = self.call("Target.getTargets", &json!({}));
            page = targets["targetInfos"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["targetId"].as_str())
                .map(str::to_string);
            page.is_some()
        });
        assert!(found, "Chromium shows no page: {}", self.stderr());
        let attached = self.call(
            "Target.attachToTarget",
            &json!({ "targetId": page, "flatten": true }),
        );
        self.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(domain, &json!({}));
        }
    }

    /// Sends `method` (on the page's session once attached) and waits for
    /// its result, noting the error events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: &Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("writing to Chromium: {e}; {}", self.stderr()));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(answer) = self.from.recv_timeout(left) else {
                panic!("Chromium did not answer {method}: {}", self.stderr());
            };
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
            self.note(&answer);
        }
    }

    /// Keeps an event that reports an error.
    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", params["exceptionDetails"])),
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors
                    .push(format!("console.{}: {}", params["type"], params["args"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", params["entry"]));
            }
            _ => {}
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        let answer = self.call("Page.navigate", &json!({ "url": url }));
        assert!(answer.get("errorText").is_none(), "opening {url}: {answer}");
    }

    /// The value of `expression` evaluated in the page (`null` if it threw).
    pub fn eval(&mut self, expression: &str) -> Value {
        let answer = self.call(
            "Runtime.evaluate",
            &json!({ "expression": expression, "returnByValue": true }),
        );
        answer["result"]["value"].clone()
    }

    /// The errors the page reported so far: from the protocol, and the
    /// console's error lines and uncaught exceptions in Chromium's log.
    pub fn errors(&mut self) -> Vec<String> {
        while let Ok(event) = self.from.try_recv() {
            self.note(&event);
        }
        let mut errors = self.errors.clone();
        for line in self.stderr().lines() {
            if line.contains("Uncaught") || (line.contains("CONSOLE") && line.contains("ERROR")) {
                errors.push(format!("stderr: {line}"));
            }
        }
        errors
    }

    /// What Chromium has written to stderr.
    pub fn stderr(&self) -> String {
        self.child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default()
    }

    /// Closes the browser and kills it and every process it started, by
    /// pid; returns the pids that were running.
    pub fn close(&mut self) -> BTreeSet<i32> {
        let Some(child) = self.child.take() else {
            return BTreeSet::new();
        };
        let root = i32::try_from(child.id()).expect("pid fits i32");
        let family = family(root);
        let mut bytes =
            serde_json::to_vec(&json!({ "id": 0, "method": "Browser.close" })).expect("JSON");
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        let _ = wait_until(Duration::from_secs(5), || !alive(root));
        for &pid in family.iter().filter(|&&pid| pid != root) {
            // SAFETY: kill(2) on a pid that was one of Chromium's processes
            // (its own, started by this test).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        drop(child); // kills and reaps the browser itself
        family
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.close();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `root` and its descendants, from `/proc`.
fn family(root: i32) -> BTreeSet<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((pid, parent.parse().ok()?))
        })
        .collect();
    let mut family = BTreeSet::from([root]);
    loop {
        let before = family.len();
        for &(pid, ppid) in &parents {
            if family.contains(&ppid) {
                family.insert(pid);
            }
        }
        if family.len() == before {
            return family;
        }
    }
}

/// Whether `pid` runs (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

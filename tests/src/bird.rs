//! BIRD 2 (Debian's `bird2`) in a test namespace: its own configuration,
//! control socket, pid file and include directory under a temporary
//! directory, run in the foreground so the test owns its PID. Dropped, it
//! is killed (by that PID) and its directory removed — also when the test
//! panics.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::netns::{ChildGuard, Netns, wait_until};

/// BGP timers short enough for tests: a session comes up within a second
/// or two of both ends running, and a dead peer is noticed in 3 s.
pub const FAST_TIMERS: &str = "connect delay time 1; connect retry time 1; \
                               error wait time 1, 2; hold time 3; keepalive time 1;";

/// One `bird -f` in a namespace.
#[derive(Debug)]
pub struct Bird {
    process: Option<ChildGuard>,
    dir: PathBuf,
}

/// Whether BIRD 2 is installed (`cargo xtask setup` installs `bird2`).
pub fn installed() -> bool {
    Command::new("bird")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("BIRD version 2"))
}

impl Bird {
    /// A directory for a BIRD's files: `lbt-bird-<pid>-<n>-<tag>/`, with an
    /// empty `include/`.
    pub fn dir(tag: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lbt-bird-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(dir.join("include")).expect("bird dir");
        dir
    }

    /// Starts BIRD in `ns` with `config` (written to `dir/bird.conf`) and
    /// waits (10 s at most) until its control socket answers.
    pub fn start(ns: &Netns, dir: PathBuf, config: &str) -> Self {
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let pid = dir.join("bird.pid");
        let mut process = ns.spawn(
            "bird",
            &[
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                socket.to_str().unwrap(),
                "-P",
                pid.to_str().unwrap(),
            ],
        );
        let mut bird = Self { process: None, dir };
        let up = wait_until(Duration::from_secs(10), || {
            !process.running() || bird.birdc(&["show", "status"]).contains("Daemon is up")
        });
        if !(up && process.running()) {
            process.signal(libc::SIGKILL);
            panic!("bird did not come up: {:?}", process.wait());
        }
        bird.process = Some(process);
        bird
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s SOCKET ARGS`, its stdout (empty if it failed to run).
    pub fn birdc(&self, args: &[&str]) -> String {
        birdc(&self.socket(), args)
    }

    /// `show route for PREFIX all`.
    pub fn routes(&self, prefix: &str) -> String {
        self.birdc(&["show", "route", "for", prefix, "all"])
    }

    /// What it has logged.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default()
    }

    /// Whether every BGP session is established.
    pub fn established(&self, sessions: usize) -> bool {
        self.birdc(&["show", "protocols"])
            .lines()
            .filter(|line| line.contains(" BGP ") && line.contains("Established"))
            .count()
            == sessions
    }
}

/// `birdc -s SOCKET ARGS`.
pub fn birdc(socket: &Path, args: &[&str]) -> String {
    Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for Bird {
    fn drop(&mut self) {
        // ChildGuard kills by PID and reaps.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

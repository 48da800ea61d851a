//! A real keepalived (VRRP only) in a test namespace: the reference VRRP
//! peer of the HA tests. Dropping it sends SIGTERM (keepalived hands over
//! and reaps its VRRP child), waits, and removes its pid and log files.

use std::{path::PathBuf, process::Child, time::Duration};

use crate::{
    TempFile,
    netns::{Netns, wait_until},
};

/// A running keepalived.
#[derive(Debug)]
pub struct Keepalived {
    child: Option<Child>,
    _config: TempFile,
    log: PathBuf,
    pid_files: [PathBuf; 3],
}

impl Keepalived {
    /// Starts keepalived in `ns` with `config` (its whole configuration
    /// file), logging to a file named after `tag`.
    pub fn start(ns: &Netns, tag: &str, config: &str) -> Self {
        let config = TempFile::new(&format!("keepalived-{tag}.conf"), config);
        let run = std::env::temp_dir();
        let pid = std::process::id();
        let pid_files = ["main", "vrrp", "checkers"]
            .map(|what| run.join(format!("lb-keepalived-{tag}-{pid}-{what}.pid")));
        let log = run.join(format!("lb-keepalived-{tag}-{pid}.log"));
        let out = std::fs::File::create(&log).expect("the keepalived log");
        let child = ns
            .command(
                "keepalived",
                &[
                    "--dont-fork",
                    "--log-console",
                    "--vrrp",
                    "--use-file",
                    config.path().to_str().unwrap_or_default(),
                    "--pid",
                    pid_files[0].to_str().unwrap_or_default(),
                    "--vrrp_pid",
                    pid_files[1].to_str().unwrap_or_default(),
                    "--checkers_pid",
                    pid_files[2].to_str().unwrap_or_default(),
                ],
            )
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("the keepalived log"))
            .stderr(out)
            .spawn()
            .expect("start keepalived (cargo xtask setup installs it)");
        Self {
            child: Some(child),
            _config: config,
            log,
            pid_files,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; true when it exited within 5 s.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not
            // reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let exited = wait_until(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
        for file in self.pid_files.iter().chain([&self.log]) {
            let _ = std::fs::remove_file(file);
        }
    }
}

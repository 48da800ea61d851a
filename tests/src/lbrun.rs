//! One `lb run` inside a network namespace, for tests that start, signal
//! and restart balancers (the HA pairs): its configuration, control socket
//! and instance name. Dropped, it ends the process, detaches whatever data
//! plane the instance left pinned (a killed run, or one ended by SIGQUIT, leaves one)
//! and removes the socket.

use std::{process::Output, time::Duration};

use crate::{
    TempFile, lb_binary,
    netns::{ChildGuard, Netns, wait_until},
};

/// A balancer: `lb run -c config` in `ns`, running or not.
#[derive(Debug)]
pub struct LbRun {
    /// The running `lb run`, if started.
    pub process: Option<ChildGuard>,
    /// Its configuration file.
    pub config: TempFile,
    /// `control.socket` of that configuration.
    pub socket: String,
    /// `instance` of that configuration.
    pub instance: String,
    /// Where it runs.
    pub ns: Netns,
}

impl Drop for LbRun {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = self.lb(&["detach", "--instance", &self.instance]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl LbRun {
    /// A balancer not started yet.
    pub fn new(ns: Netns, config: TempFile, socket: String, instance: String) -> Self {
        Self {
            process: None,
            config,
            socket,
            instance,
            ns,
        }
    }

    /// Runs `lb ARGS` in the namespace.
    pub fn lb(&self, args: &[&str]) -> Output {
        self.ns.exec(lb_binary().to_str().unwrap(), args)
    }

    /// Starts `lb run` and waits (15 s at most) until its control socket
    /// answers; panics with its output if it exits or never answers.
    pub fn start(&mut self) {
        let mut child = self.ns.spawn(
            lb_binary().to_str().unwrap(),
            &["run", "-c", self.config.path().to_str().unwrap()],
        );
        let socket = self.socket.clone();
        let up = wait_until(Duration::from_secs(15), || {
            !child.running() || std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !(up && child.running()) {
            child.signal(libc::SIGKILL);
            panic!("lb run did not come up: {:?}", child.wait());
        }
        self.process = Some(child);
    }

    /// Starts `lb run` with `env` added to its environment, without
    /// waiting for it: for a run expected to exit by itself.
    pub fn launch(&mut self, env: &[(&str, &str)]) {
        self.process = Some(self.ns.spawn_env(
            lb_binary().to_str().unwrap(),
            &["run", "-c", self.config.path().to_str().unwrap()],
            env,
        ));
    }

    /// Ends the running `lb run` with `signal` and returns its output.
    pub fn stop(&mut self, signal: i32) -> Output {
        let process = self.process.take().expect("lb run is running");
        process.signal(signal);
        process.wait()
    }

    /// `lb status --output json` (`null` when it does not answer).
    pub fn status(&self) -> serde_json::Value {
        let output = self.lb(&["status", "--output", "json", "--socket", &self.socket]);
        serde_json::from_slice(&output.stdout).unwrap_or_default()
    }

    /// The HA state `lb status` reports ("" when it does not answer).
    pub fn ha_state(&self) -> String {
        self.status()["ha"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

//! `lb run`'s life in one place (docs/STYLE.md §16): [`start`] brings the
//! balancer up in one visible order, [`Running::serve`] takes the signals,
//! and one of two stops ends it — the clean stop (SIGINT, SIGTERM: hand
//! over, withdraw, detach) or leaving the data plane running (SIGQUIT, an
//! HA instance that failed: the next `lb run` takes it over). The daemon
//! spawns, owns and joins its threads ([`threads::Threads`]); the command
//! line only parses and calls [`run`].
//!
//! Files: `start.rs` the start sequence, `stop.rs` the two stops (the
//! owner's last jobs), `threads.rs` the edge threads and their bounded
//! join, `signals.rs` the signal mask, `sigwait` and the HA alarm.

use std::{collections::BTreeMap, path::Path, sync::mpsc::Receiver};

use lb_common::Reason;

use crate::{
    api::SocketGuard,
    ha::HandOver,
    lock::InstanceLock,
    owner::{ControllerHandle, OwnerError},
};

mod signals;
mod start;
mod stop;
mod threads;

/// How `lb run` ended without an error.
#[derive(Debug)]
pub enum Exit {
    /// SIGINT / SIGTERM: detached and unpinned; the verdict counters of
    /// the whole run, for the final report.
    Stopped(BTreeMap<Reason, u64>),
    /// SIGQUIT: the data plane left attached, pinned and forwarding.
    LeftRunning,
}

/// Why `lb run` ended with an error, classified for the exit status.
#[derive(Debug)]
pub enum RunError {
    /// The operator's to fix: a bad configuration, an instance already
    /// running (exit 1).
    User(anyhow::Error),
    /// The host or the kernel refused, or the balancer cannot go on
    /// (exit 2).
    Runtime(anyhow::Error),
}

impl From<crate::config::ConfigError> for RunError {
    /// An unreadable or invalid configuration is the user's to fix.
    fn from(error: crate::config::ConfigError) -> Self {
        RunError::User(error.into())
    }
}

/// The controller's owner gave no answer: it is gone (it stopped, or a job
/// panicked) or busy past [`crate::owner::CALL_TIMEOUT`].
fn gone(error: OwnerError) -> RunError {
    RunError::Runtime(anyhow::anyhow!("{error}"))
}

/// `lb run -c PATH`: starts the balancer ([`start::start`]), serves until a
/// signal ends it, stops, and joins its threads.
///
/// # Errors
/// [`RunError::User`] for a bad configuration or a running instance;
/// [`RunError::Runtime`] for a start the host refused (undone before
/// returning) or an HA instance that can no longer run.
pub fn run(path: &Path) -> Result<Exit, RunError> {
    start::start(path)?.serve()
}

/// A started `lb run`: the handle to the controller's owner, the threads,
/// and what the signal loop needs. Fields drop in order: the instance lock
/// last.
struct Running {
    controller: ControllerHandle,
    threads: threads::Threads,
    signals: signals::Signals,
    /// Starts VRRP's hand-over from the signal thread at once: the owner
    /// may be busy.
    hand_over: Vec<HandOver>,
    /// Why an HA instance stopped, sent before it raises SIGUSR1.
    ha_stopped: Receiver<String>,
    /// Removes the control socket file when dropped.
    socket: SocketGuard,
    /// Held until the process ends: no second `lb run` of the instance.
    _lock: InstanceLock,
}

impl Running {
    /// Takes signals until one ends the run, stops the controller as that
    /// signal says, then joins the threads (bounded) and removes the
    /// control socket.
    fn serve(mut self) -> Result<Exit, RunError> {
        let exit = self.until_stopped();
        self.threads.stop();
        drop(self.socket);
        exit
    }

    /// The signal loop. SIGHUP reloads; SIGUSR1 (raised by the HA alarm)
    /// and SIGQUIT leave the data plane running; SIGINT and SIGTERM stop
    /// cleanly. The floating IPs are handed over first in every stop: the
    /// peer takes them, and two hosts must never answer ARP for one
    /// address.
    fn until_stopped(&mut self) -> Result<Exit, RunError> {
        loop {
            match self.signals.wait() {
                libc::SIGUSR1 => {
                    let Ok(why) = self.ha_stopped.try_recv() else {
                        tracing::info!(
                            "SIGUSR1 ignored (lb raises it itself when an HA thread stops)"
                        );
                        continue;
                    };
                    tracing::error!(%why, "ha: an instance cannot run any more; exiting with \
                        status 2 so that the service manager restarts lb (data plane left \
                        attached)");
                    self.hand_over();
                    self.controller.stop(stop::leave_running).map_err(gone)?;
                    return Err(RunError::Runtime(anyhow::anyhow!(
                        "ha: {why}; lb run exits so that the service manager restarts it"
                    )));
                }
                libc::SIGHUP => self.reload()?,
                libc::SIGQUIT => {
                    self.hand_over();
                    self.controller.stop(stop::leave_running).map_err(gone)?;
                    tracing::info!("SIGQUIT: exiting, data plane left attached and pinned");
                    return Ok(Exit::LeftRunning);
                }
                signal => {
                    tracing::info!(signal, "stopping");
                    self.hand_over();
                    let counters = self
                        .controller
                        .stop(stop::clean)
                        .map_err(gone)?
                        .map_err(RunError::Runtime)?;
                    return Ok(Exit::Stopped(counters));
                }
            }
        }
    }

    /// Starts every HA instance's hand-over at once; the owner's stop
    /// waits for them.
    fn hand_over(&self) {
        for hand_over in &self.hand_over {
            hand_over.request();
        }
    }

    /// SIGHUP: a reload, queued as an event like any other: applied in its
    /// turn, its outcome logged by the owner.
    fn reload(&self) -> Result<(), RunError> {
        tracing::info!("SIGHUP: reloading");
        self.controller
            .send(|c| {
                if let Err(error) = c.reload() {
                    let what = crate::report::reload_failure(&error);
                    tracing::error!(error = %format!("{error:#}"), "{what}");
                }
            })
            .map_err(gone)
    }
}

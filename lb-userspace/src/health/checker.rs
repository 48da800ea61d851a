//! The checker: every backend's checks as tasks of one small tokio runtime
//! (docs/DESIGN.md §4), so a balancer with ten thousand backends runs them on
//! [`WORKERS`] event-loop threads, plus at most [`POOL_PERMITS`] blocking
//! threads each for `https` and `exec` probes, instead of a thread per
//! backend.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::{Arc, OnceLock, mpsc::Sender},
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, watch};

use super::{Outcome, probe_async};
use crate::{
    config::{Config, HealthCheck},
    plan::BackendKey,
};

/// Event-loop threads of the health-check runtime, whatever the number of
/// backends: probes wait on sockets, not on the CPU.
pub const WORKERS: usize = 2;
/// Probes of one blocking kind (`https`, `exec`) running at once; more wait
/// for a place. Also bounds the processes that `exec` checks start.
pub const POOL_PERMITS: usize = 8;
/// The runtime's thread name, which `top -H` shows.
pub const THREAD_NAME: &str = "lb-health";

/// The health-check runtime and the bounds of its blocking probes.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) tls: Arc<Semaphore>,
    pub(super) exec: Arc<Semaphore>,
}

/// The process's one health-check runtime, built on first use and kept for
/// the life of the process (every checker, across reloads, shares it), or
/// why it could not be built.
pub(super) fn pool() -> Result<&'static Pool, &'static str> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            // Both blocking kinds at full use; nothing else of this
            // runtime blocks.
            .max_blocking_threads(2 * POOL_PERMITS)
            .thread_name(THREAD_NAME)
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Pool {
            runtime,
            tls: Arc::new(Semaphore::new(POOL_PERMITS)),
            exec: Arc::new(Semaphore::new(POOL_PERMITS)),
        })
    })
    .as_ref()
    .map_err(String::as_str)
}

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which backend the outcomes are about.
    pub key: BackendKey,
    /// The address probed.
    pub address: IpAddr,
    /// The backend's traffic port; `check.port` overrides it.
    pub port: u16,
    /// The check to run.
    pub check: HealthCheck,
}

impl Target {
    /// One target per backend of every service that has a health check.
    /// Services without one are left out: their backends are always up.
    pub fn for_config(config: &Config) -> Vec<Target> {
        config
            .services
            .iter()
            .filter_map(|service| Some((service, service.health_check.as_ref()?)))
            .flat_map(|(service, check)| {
                service.backends.iter().map(move |backend| {
                    let port = backend.port_for(service);
                    Target {
                        key: BackendKey {
                            service: service.name.clone(),
                            address: backend.address,
                            port,
                        },
                        address: backend.address,
                        port,
                        check: check.clone(),
                    }
                })
            })
            .collect()
    }
}

/// One probe's outcome, as sent by a [`Checker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The backend probed.
    pub key: BackendKey,
    /// What the probe found.
    pub outcome: Outcome,
    /// When the probe finished.
    pub at: Instant,
}

/// Runs the checks of many backends, one task each on the shared
/// health-check runtime, until stopped or dropped. Stopping takes at most
/// about one probe timeout, never an interval: a task waiting for its next
/// check wakes at once.
#[derive(Debug)]
pub struct Checker {
    stop: watch::Sender<bool>,
    /// Disconnects once every task has ended: each holds a sender. `None`
    /// once [`Checker::abandon`]ed: nothing to wait for.
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Checker {
    /// Starts checking every target, sending each outcome to `events`. A
    /// task ends early if nobody receives its events any more.
    ///
    /// The first check of a target runs somewhere in its first interval, and
    /// the pause after each check is the interval plus up to a tenth more;
    /// both offsets come from a hash of the backend's key, so checks of many
    /// backends are spread out rather than fired in lockstep (at start and
    /// after a reload), the same backend keeps the same rhythm, and its
    /// first result comes within one interval plus its timeout.
    pub fn start(targets: Vec<Target>, events: Sender<Event>) -> Checker {
        let (stop, stopped) = watch::channel(false);
        let (alive, done) = std::sync::mpsc::channel();
        match pool() {
            Ok(pool) => {
                for target in targets {
                    let (events, stopped, alive) = (events.clone(), stopped.clone(), alive.clone());
                    pool.runtime.spawn(async move {
                        run(&target, &events, stopped).await;
                        drop(alive);
                    });
                }
            }
            Err(error) => {
                // Report it as failed checks rather than leave the backends
                // unknown with nothing in the log.
                tracing::error!(%error, "could not start the health-check runtime");
                for target in targets {
                    let outcome =
                        Outcome::failure(format!("no check runtime: {error}"), Duration::ZERO);
                    let _ = events.send(Event {
                        key: target.key,
                        outcome,
                        at: Instant::now(),
                    });
                }
            }
        }
        // Only the tasks hold senders from here on, so the receiver sees
        // the channel disconnect once every task has ended.
        drop(events);
        Checker {
            stop,
            done: Some(done),
        }
    }

    /// Stops every task and waits for them; returns once each has finished
    /// its current probe (bounded by that probe's timeout). Blocks: not to
    /// be called from inside an async runtime.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops every task without waiting for them: each ends after its
    /// current probe (bounded by that probe's timeout), on the shared
    /// runtime, and the results it still sends go nowhere once the receiver
    /// is gone. For a process about to exit, which must not wait for an
    /// exec check of several seconds.
    pub fn abandon(mut self) {
        self.stop.send_replace(true);
        self.done = None;
    }

    fn shutdown(&mut self) {
        self.stop.send_replace(true);
        // Err once every task has dropped its sender (ended, or dropped
        // with the runtime); nothing is ever sent.
        if let Some(done) = &self.done {
            while done.recv().is_ok() {}
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The loop of one target's task.
async fn run(target: &Target, events: &Sender<Event>, mut stopped: watch::Receiver<bool>) {
    let (first, jitter) = spacing(&target.key, target.check.interval);
    if wait(&mut stopped, first).await {
        return;
    }
    loop {
        let outcome = probe_async(&target.check, target.address, target.port).await;
        let event = Event {
            key: target.key.clone(),
            outcome,
            at: Instant::now(),
        };
        if events.send(event).is_err() || wait(&mut stopped, target.check.interval + jitter).await {
            return;
        }
    }
}

/// Sleeps for `duration` or until the checker stops; returns whether it
/// stopped (or is gone).
async fn wait(stopped: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::time::timeout(duration, stopped.wait_for(|&stop| stop))
        .await
        .is_ok()
}

/// The delay before a target's first check, below `interval`, and the
/// extra pause after each, below a tenth of it, both derived from the key.
/// `DefaultHasher` is keyed with constants, so this is deterministic within
/// a build.
pub(super) fn spacing(key: &BackendKey, interval: Duration) -> (Duration, Duration) {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let hash = hasher.finish();
    (
        fraction(interval, hash & 0xffff_ffff),
        fraction(interval / 10, hash >> 32),
    )
}

/// `duration × parts / 2³²` for `parts < 2³²`: a fraction below 1.
pub(super) fn fraction(duration: Duration, parts: u64) -> Duration {
    let nanos = (duration.as_nanos() * u128::from(parts)) >> 32;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

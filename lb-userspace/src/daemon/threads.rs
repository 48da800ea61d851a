//! The threads `lb run` starts beside the controller's owner, and their
//! end. Each edge thread does its I/O (sleeps, netlink, agents, the
//! connection-table walk) on its own and hands only results to the owner
//! through its handle; each ends when the run stops ([`Stopping`]) or the
//! owner is gone. [`Threads::stop`] joins them all, the owner too, within
//! [`JOIN_BOUND`]: a thread still in a long probe or walk then is named in
//! the log and left to end with the process.

use std::{
    sync::{Arc, Condvar, Mutex, PoisonError, mpsc::Receiver},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    controller::Controller,
    owner::{ControllerHandle, OwnerError},
};

/// How long a stop waits for the threads to end. Each looks at
/// [`Stopping`] at least every [`SLICE`], so this is a bound for the
/// unusual case (an agent that does not answer, a long walk).
pub(super) const JOIN_BOUND: Duration = Duration::from_secs(2);

/// The longest an edge thread waits without looking at [`Stopping`].
const SLICE: Duration = Duration::from_millis(200);

/// Set once, when the run stops; every edge thread's sleep wakes on it.
#[derive(Clone, Debug, Default)]
pub(super) struct Stopping(Arc<(Mutex<bool>, Condvar)>);

impl Stopping {
    fn set(&self) {
        let (stopped, changed) = &*self.0;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }

    /// Whether the run is stopping.
    pub(super) fn is_set(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps `period`, or less if the stop comes first; `true` once
    /// stopping.
    fn sleep(&self, period: Duration) -> bool {
        let (stopped, changed) = &*self.0;
        let guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = changed
            .wait_timeout_while(guard, period, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

/// The threads of a run, by name, and the flag that ends them.
#[derive(Debug, Default)]
pub(super) struct Threads {
    stopping: Stopping,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Threads {
    /// The flag the threads look at, for a thread started elsewhere (the
    /// trace reader) and handed over with [`Threads::adopt`].
    pub(super) fn stopping(&self) -> Stopping {
        self.stopping.clone()
    }

    /// Starts `body` on a thread named `name`, owned by this set.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        body: impl FnOnce(&Stopping) + Send + 'static,
    ) -> std::io::Result<()> {
        let stopping = self.stopping.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&stopping))?;
        self.running.push((name, thread));
        Ok(())
    }

    /// Starts the edge thread `body`, with a handle of its own to the
    /// owner.
    pub(super) fn spawn_edge(
        &mut self,
        name: &'static str,
        controller: &ControllerHandle,
        body: fn(&ControllerHandle, &Stopping),
    ) -> std::io::Result<()> {
        let controller = controller.clone();
        self.spawn(name, move |stopping| body(&controller, stopping))
    }

    /// Takes a thread started elsewhere (the owner, the trace reader) into
    /// this set, to be joined with the others.
    pub(super) fn adopt(&mut self, name: &'static str, thread: JoinHandle<()>) {
        self.running.push((name, thread));
    }

    /// Tells every thread to end and joins them, waiting at most
    /// [`JOIN_BOUND`] in all; a thread not done by then is logged and left
    /// to end with the process (its handle dropped: the thread detaches).
    pub(super) fn stop(&mut self) {
        self.stopping.set();
        let deadline = Instant::now() + JOIN_BOUND;
        while self.running.iter().any(|(_, t)| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (name, thread) in self.running.drain(..) {
            if !thread.is_finished() {
                tracing::warn!(
                    thread = name,
                    bound = ?JOIN_BOUND,
                    "a thread did not end in time; left to end with the process"
                );
                continue;
            }
            if thread.join().is_err() {
                tracing::error!(thread = name, "a thread panicked");
            }
        }
    }
}

/// Health results are applied one at a time, in order, by the owner; the
/// checker's tasks only probe.
pub(super) fn apply_health(
    controller: &ControllerHandle,
    results: &Receiver<crate::health::Event>,
    stopping: &Stopping,
) {
    while !stopping.is_set() {
        let event = match results.recv_timeout(SLICE) {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let applied = controller.send(move |controller| {
            if let Err(error) = controller.on_health(&event) {
                tracing::error!(error = %format!("{error:#}"), "applying a health change failed");
            }
        });
        if applied.is_err() {
            return;
        }
    }
}

/// Reads `guard.attack`'s counters every `attack::POLL` (an attack must be
/// seen within a second).
pub(super) fn poll_attacks(controller: &ControllerHandle, stopping: &Stopping) {
    while !stopping.sleep(crate::attack::POLL) {
        let polled = controller.call(|controller| {
            if let Err(error) = controller.poll_attack() {
                tracing::warn!(error = %format!("{error:#}"), "reading the attack counters failed");
            }
        });
        if let Err(OwnerError::Gone) = polled {
            return;
        }
    }
}

/// Once a second: dynamic weights and the guard's denials; every tenth:
/// reconcile active flows with the connection table (walked on this
/// thread, not the owner's).
pub(super) fn tick(controller: &ControllerHandle, stopping: &Stopping) {
    for second in 0u64.. {
        if stopping.sleep(Duration::from_secs(1)) {
            return;
        }
        if second % 10 == 9
            && let Err(error) = Controller::reconcile(controller)
        {
            tracing::warn!(error = %format!("{error:#}"), "reconciling active flows failed");
        }
        let ticked = controller.call(|controller| {
            if let Err(error) = controller.tick() {
                tracing::warn!(error = %format!("{error:#}"), "dynamic weights failed");
            }
            if let Err(error) = controller.poll_guard() {
                tracing::warn!(error = %format!("{error:#}"), "reading the guard's denials failed");
            }
        });
        match ticked {
            Ok(()) => {}
            Err(OwnerError::Gone) => return,
            Err(error) => tracing::warn!(%error, "dynamic weights skipped"),
        }
    }
}

/// Keeps the cached next hops current: re-resolves them whenever the kernel
/// reports a neighbour, route, address or link change, and every two
/// seconds regardless (a hop still being resolved, a missed notification).
/// The netlink lookups (next hops, routes, and the tunnels' default outer
/// sources) run on this thread's own resolver; only reading the targets
/// and writing the answers are the owner's jobs.
pub(super) fn follow_hops(controller: &ControllerHandle, stopping: &Stopping) {
    let mut monitor = match crate::netlink::Monitor::open() {
        Ok(monitor) => Some(monitor),
        Err(error) => {
            tracing::warn!(%error, "no netlink notifications: next hops refreshed every 2 s only");
            None
        }
    };
    let mut resolver = match crate::hops::Resolver::open() {
        Ok(resolver) => resolver,
        Err(error) => {
            tracing::warn!(%error, "no netlink: next hops not followed");
            return;
        }
    };
    // The first lookup at once: a hop still being resolved when the start
    // looked is written as soon as it resolves, and the notification of its
    // resolution may have come before the monitor was open.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) && !wait_for_change(&mut monitor, stopping) {
            return;
        }
        let targets = match controller.call(|c| c.hop_targets()) {
            Ok(targets) => targets,
            Err(OwnerError::Gone) => return,
            Err(error) => {
                tracing::warn!(%error, "next hops not refreshed");
                continue;
            }
        };
        let Some(targets) = targets else {
            continue;
        };
        let lookup = resolver.lookup(&targets);
        if controller
            .send(move |c| {
                c.write_hops(lookup);
            })
            .is_err()
        {
            return;
        }
    }
}

/// Waits for a netlink notification, or two seconds; `false` once
/// stopping. Waits in [`SLICE`]s, so a stop is seen within one.
fn wait_for_change(monitor: &mut Option<crate::netlink::Monitor>, stopping: &Stopping) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if stopping.is_set() {
            return false;
        }
        if remaining.is_zero() {
            return true;
        }
        let slice = remaining.min(SLICE);
        match monitor.as_mut().map(|m| m.wait(slice)) {
            Some(Ok(0)) => {}
            Some(Ok(_)) => return true,
            Some(Err(error)) => {
                tracing::warn!(%error, "netlink notifications failed; polling instead");
                *monitor = None;
                return true;
            }
            None => {
                if stopping.sleep(slice) {
                    return false;
                }
            }
        }
    }
}

/// Asks the `lb agent` of every `resource` backend for its load once a
/// second, on this thread; each answer is an event for the owner, read by
/// [`Controller::tick`].
pub(super) fn poll_agents(controller: &ControllerHandle, stopping: &Stopping) {
    let client = match crate::agent::AgentClient::new() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "agent poller: no client, loads not polled");
            return;
        }
    };
    loop {
        let targets = match controller.call(|c| c.agents()) {
            Ok(targets) => targets,
            Err(OwnerError::Gone) => return,
            Err(_) => Vec::new(),
        };
        for (key, address, secret) in targets {
            if stopping.is_set() {
                return;
            }
            let load = client
                .query(address, secret.as_deref().map(String::as_str))
                .map_err(|error| {
                    tracing::debug!(%address, error = %format!("{error:#}"), "agent unreachable");
                })
                .ok();
            if controller.send(move |c| c.set_load(key, load)).is_err() {
                return;
            }
        }
        if stopping.sleep(Duration::from_secs(1)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wakes_every_sleeping_thread_and_joins_it() {
        let mut threads = Threads::default();
        let (woke, woken) = std::sync::mpsc::channel();
        for name in ["one", "two"] {
            let woke = woke.clone();
            threads
                .spawn(name, move |stopping| {
                    // An hour's sleep, cut short by the stop.
                    let stopped = stopping.sleep(Duration::from_hours(1));
                    let _ = woke.send((name, stopped));
                })
                .unwrap();
        }
        let started = Instant::now();
        threads.stop();
        assert!(started.elapsed() < JOIN_BOUND, "{:?}", started.elapsed());
        assert!(threads.running.is_empty());
        let mut seen: Vec<_> = woken.try_iter().collect();
        seen.sort_unstable();
        assert_eq!(seen, [("one", true), ("two", true)]);
    }

    #[test]
    fn a_thread_that_does_not_end_is_left_after_the_bound() {
        let mut threads = Threads::default();
        let (release, held) = std::sync::mpsc::channel::<()>();
        // Ignores the stop: ends only when released, after the bound.
        threads
            .spawn("stuck", move |_| {
                let _ = held.recv_timeout(Duration::from_secs(30));
            })
            .unwrap();
        let started = Instant::now();
        threads.stop();
        let waited = started.elapsed();
        assert!(waited >= JOIN_BOUND, "{waited:?}");
        assert!(waited < JOIN_BOUND + Duration::from_secs(1), "{waited:?}");
        assert!(threads.running.is_empty());
        drop(release);
    }

    #[test]
    fn a_sleep_without_a_stop_lasts_its_period() {
        let stopping = Stopping::default();
        let started = Instant::now();
        assert!(!stopping.sleep(Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        stopping.set();
        assert!(stopping.is_set() && stopping.sleep(Duration::from_hours(1)));
    }
}

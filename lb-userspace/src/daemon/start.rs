//! `lb run`'s start, each step once, in this order:
//!
//! 1. [`prepare`]: the configuration read and validated (a bad file: exit
//!    1; its warnings logged), the instance lock taken and held until the
//!    process ends (a running instance: exit 1), what the host must
//!    provide checked (exit 2). Nothing is changed before this passes.
//! 2. [`release_stale`]: floating IPs a killed run left on the HA
//!    interface removed — this run starts as backup.
//! 3. The signals blocked, before any thread starts: every thread inherits
//!    the mask, and only the signal loop takes them.
//! 4. [`Controller::start`]: the forwarding sysctls, the data plane loaded
//!    (or the pinned one taken over), the interfaces new to it attached,
//!    the settings and the tables written, the interfaces it already had
//!    given the new program, the next hops resolved. A failure undoes
//!    itself.
//! 5. Connection sync, before VRRP (a backup hears the master's flows from
//!    the start); then a bounded wait for a peer's table, so that a
//!    restarted balancer has it before it can become master or announce.
//! 6. VRRP, one instance after another.
//! 7. The trace's maps taken for its reader; health checks; announce.
//! 8. The controller moved to its owner's thread: from here on every other
//!    thread reaches it through a handle ([`crate::owner`]).
//! 9. The metrics listener and the status page (`control.web`), then the
//!    control socket bound.
//! 10. The edge threads: trace reader, ticker, attack poller, hop
//!     follower, agent poller, health applier; last the control socket
//!     served — once it answers, the data plane is ready.
//!
//! A failure from step 5 on is undone ([`Controller::abandon`]: what the
//! start added goes, a taken-over data plane stays forwarding) before
//! exit 2.

use std::{path::Path, sync::mpsc};

use super::{RunError, Running, signals, threads};
use crate::{
    api,
    config::Config,
    controller::Controller,
    lock::{InstanceLock, LOCK_ROOT, LockError},
    owner::ControllerHandle,
};

/// Steps 1 to 10 of the module's list; a [`Running`] balancer.
pub(super) fn start(path: &Path) -> Result<Running, RunError> {
    let (config, lock) = prepare(path)?; // 1
    release_stale(&config)?; // 2
    let signals = signals::Signals::block(); // 3
    let socket = config.control.socket.clone();
    let control = config.control.clone();
    // 4
    let mut controller = Controller::start(config, path).map_err(RunError::Runtime)?;
    let (alarm, ha_stopped) = signals::ha_alarm();
    let undone = |mut controller: Controller, error: anyhow::Error| {
        let outcome = controller.abandon();
        RunError::Runtime(error.context(outcome))
    };
    // 5
    if let Err(error) = controller.start_sync() {
        return Err(undone(controller, error));
    }
    controller.await_bulk(crate::sync::bulk::BULK_WAIT);
    // 6
    if let Err(error) = controller.start_ha(&alarm) {
        return Err(undone(controller, error));
    }
    // 7
    let trace = controller.take_trace().inspect_err(no_trace).ok();
    let hand_over = controller.ha_hand_over();
    let (events, results) = mpsc::channel();
    controller.start_health(events);
    controller.start_announce();
    // 8
    let mut threads = threads::Threads::default();
    let (controller, owner) = match crate::owner::spawn(controller) {
        Ok(spawned) => spawned,
        // The controller went down with the thread that could not start;
        // its start is not undone (as when the process dies).
        Err(error) => {
            return Err(RunError::Runtime(
                anyhow::Error::new(error).context("starting the controller thread"),
            ));
        }
    };
    threads.adopt("controller", owner);
    // 9, then 10.
    let served = listen(&control, &controller).and_then(|server| {
        let hub = trace.and_then(|kernel| {
            let stopping = threads.stopping();
            crate::trace::hub::spawn(kernel, controller.clone(), move || stopping.is_set())
                .map_err(anyhow::Error::new)
                .inspect_err(no_trace)
                .ok()
                .map(|(hub, reader)| {
                    threads.adopt("trace", reader);
                    hub
                })
        });
        spawn_edges(&mut threads, &controller, results)?;
        server.spawn(controller.clone(), hub)
    });
    let socket_guard = match served {
        Ok(guard) => guard,
        Err(error) => {
            let outcome = controller
                .stop(|mut c| c.abandon())
                .unwrap_or_else(|gone| format!("lb run did not start ({gone})"));
            threads.stop();
            return Err(RunError::Runtime(error.context(outcome)));
        }
    };
    tracing::info!(
        socket = %socket.display(),
        "running; SIGINT or SIGTERM stops, SIGHUP reloads, SIGQUIT exits leaving the data plane"
    );
    Ok(Running {
        controller,
        threads,
        signals,
        hand_over,
        ha_stopped,
        socket: socket_guard,
        _lock: lock,
    })
}

/// Step 1: what `lb run` does before it changes anything, in order: the
/// configuration (a bad file: exit 1; its warnings are logged); the
/// instance lock, held from here until the process ends (a running
/// instance: exit 1); what the host must provide (exit 2).
fn prepare(path: &Path) -> Result<(Config, InstanceLock), RunError> {
    let text = crate::config::read(path)?;
    let config = Config::parse(&text)?;
    let lock = InstanceLock::acquire(
        Path::new(LOCK_ROOT),
        config.instance.as_str(),
        &config.control.socket,
    )
    .map_err(|error| match error {
        LockError::Held { .. } => RunError::User(error.into()),
        _ => RunError::Runtime(error.into()),
    })?;
    let mut warnings = config.warnings();
    crate::config::locate(&text, &mut warnings);
    for warning in &warnings {
        tracing::warn!(
            path = %warning.path,
            line = ?warning.line,
            column = ?warning.column,
            "{}",
            warning.message
        );
    }
    let mut missing = crate::host::problems(&config);
    if !missing.is_empty() {
        crate::config::locate(&text, &mut missing);
        let list: Vec<String> = missing.iter().map(|p| format!("  {p}")).collect();
        return Err(RunError::Runtime(anyhow::anyhow!(
            "this host lacks what {} names; nothing was changed:\n{}",
            path.display(),
            list.join("\n")
        )));
    }
    Ok((config, lock))
}

/// Step 2, before VRRP runs: floating IPs on the HA interface were left by
/// a run that never handed over (SIGKILL, a crash); this one starts as
/// backup and must not answer for them. Each removal is logged.
fn release_stale(config: &Config) -> Result<(), RunError> {
    let Some(section) = &config.ha else {
        return Ok(());
    };
    for ha in section.instances() {
        let removed = crate::release::release(&ha).map_err(|error| {
            RunError::Runtime(anyhow::Error::new(error).context(
                "ha: a floating IP a previous run left could not be removed; nothing was started",
            ))
        })?;
        for address in removed {
            tracing::warn!(%address, interface = %ha.interface,
                "ha: removed a floating IP left by a previous run (killed without handing over)");
        }
    }
    Ok(())
}

/// Step 9: the metrics endpoint and the status page (if configured; one
/// listener when both have the same address), then the control socket.
fn listen(
    control: &crate::config::Control,
    controller: &ControllerHandle,
) -> anyhow::Result<api::Server> {
    let shared = control.web.is_some() && control.web == control.metrics;
    if let Some(address) = control.metrics
        && !shared
    {
        crate::metrics::serve(address, controller.clone())?;
        tracing::info!(%address, "metrics at /metrics");
    }
    if let Some(address) = control.web {
        crate::web::serve(address, controller.clone(), shared)?;
        if shared {
            tracing::info!(%address, "metrics at /metrics");
        }
        tracing::info!(%address, "status page at http://{address}/");
    }
    api::Server::bind(&control.socket)
}

/// Step 10's threads, each with its own handle to the owner.
fn spawn_edges(
    threads: &mut threads::Threads,
    controller: &ControllerHandle,
    results: mpsc::Receiver<crate::health::Event>,
) -> anyhow::Result<()> {
    threads.spawn_edge("ticker", controller, threads::tick)?;
    threads.spawn_edge("attacks", controller, threads::poll_attacks)?;
    threads.spawn_edge("hops", controller, threads::follow_hops)?;
    threads.spawn_edge("agents", controller, threads::poll_agents)?;
    let c = controller.clone();
    threads.spawn("health", move |stopping| {
        threads::apply_health(&c, &results, stopping);
    })?;
    Ok(())
}

/// `lb run` goes on without `lb trace`, saying why.
fn no_trace(error: &anyhow::Error) {
    tracing::warn!(error = %format!("{error:#}"), "lb trace unavailable");
}

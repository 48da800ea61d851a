//! The controller's start and its end: load (or take over) the data
//! plane, attach and write the first tables, a failed start undone
//! ([`Controller::abandon`]), and the clean stop that detaches.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;

use super::{
    Controller, announcing, pin_dir,
    scheduling::agent_targets,
    settings::{guard_settings, log_tunnel_sources, resolve_tunnel_sources, settings_with, sizes},
};
use crate::{
    config::{Config, Interface, XdpModeSetting},
    dataplane::{AttachMode, Attachment, Dataplane, is_pinned, link_pin, unpin_all, unpin_link},
    hops::HopCache,
    netlink::{ifindex, mac_address},
    plan::Planner,
    sysctl::ForwardingSysctls,
};

impl Controller {
    /// Loads the data plane for `config` — taking over the one pinned for
    /// its instance if a previous controller left it running — attaches it
    /// and writes the difference to its maps.
    ///
    /// Forwarding is turned on for the attached interfaces first
    /// ([`ForwardingSysctls`]), put back by a clean [`Controller::stop`].
    ///
    /// Transactional: a start that fails undoes what it did (attachments,
    /// pins, the forwarding sysctls it changed) before returning the error
    /// — except that a data plane taken over from an earlier lb stays
    /// attached and pinned, forwarding (it carries traffic; only what this
    /// start added to it is removed). The caller must hold the instance lock
    /// ([`crate::lock::InstanceLock`]), so no other lb uses these pins.
    pub fn start(config: Config, config_path: &Path) -> anyhow::Result<Self> {
        let pin_dir = pin_dir(&config);
        let mut started = Started::default();
        match Self::try_start(config, config_path, &mut started) {
            Ok(mut controller) => {
                controller.started_with = started;
                Ok(controller)
            }
            // The data plane handle (and any attachment not yet pinned) is
            // gone by now.
            Err(error) => Err(error.context(undo_start(&mut started, &pin_dir))),
        }
    }

    /// The steps of [`Controller::start`], recording each change in
    /// `started` as it is made. Interfaces new to the data plane are
    /// attached before its tables change (attaching is what fails, when
    /// something does: no native XDP, an interface held by another
    /// program); the interfaces of a taken-over data plane get the new
    /// program after its tables are written, as at any upgrade.
    pub(super) fn try_start(
        config: Config,
        config_path: &Path,
        started: &mut Started,
    ) -> anyhow::Result<Self> {
        let interfaces: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
        let record = crate::sysctl::record_path(config.instance.as_str());
        started.forwarding = ForwardingSysctls::enable(&interfaces, record)?;
        let sizes = sizes(&config);
        let pin_dir = pin_dir(&config);
        started.origin = Some(if is_pinned(&pin_dir) {
            Origin::TakenOver
        } else {
            Origin::Created
        });
        let (mut dataplane, adopted) = Dataplane::load_pinned(sizes, &pin_dir)
            .context("loading the XDP program (root and a kernel with BTF are needed)")?;
        let mut planner = Planner::new(sizes.ring_size, sizes.services, sizes.backends);
        // The operator's `lb guard deny` prefixes outlive the controller.
        let mut guard = crate::guard::Guard::default();
        if adopted {
            let snapshot = dataplane.snapshot()?;
            for (addr, len) in &snapshot.runtime_deny {
                if let Some(prefix) = crate::plan::deny_prefix(addr, *len) {
                    guard.deny(prefix);
                }
            }
            if !guard.runtime().is_empty() {
                tracing::info!(
                    prefixes = guard.runtime().len(),
                    "kept the runtime deny list (lb guard deny)"
                );
            }
            planner.adopt(&config, snapshot);
            tracing::info!(pins = %pin_dir.display(), "took over the pinned data plane");
            // A data plane taken over from an older lb has no address
            // filters or service slots yet: derive them from the maps,
            // whatever wrote those, before this program runs on them.
            dataplane.rebuild_indexes()?;
        }
        let mut hops = match HopCache::open() {
            Ok(hops) => Some(hops),
            Err(error) => {
                tracing::warn!(%error, "no netlink: every packet will ask the FIB for its next hop");
                None
            }
        };
        // Resolved before the settings are written: a taken-over data plane
        // is live, and tunnels must not leave with no outer source meanwhile.
        let (tunnel_sources, others) = resolve_tunnel_sources(hops.as_mut(), &config);
        log_tunnel_sources(None, tunnel_sources, &others, &config);
        let states = BTreeMap::new();
        let writes = planner.plan(&config, &states)?;
        let (taken_over, new): (Vec<&Interface>, Vec<&Interface>) = config
            .interfaces
            .iter()
            .partition(|iface| link_pin(&pin_dir, &iface.name).exists());
        for iface in &config.interfaces {
            dataplane.insert_iface(ifindex(&iface.name)?, mac_address(&iface.name)?)?;
            dataplane.insert_devmap(ifindex(&iface.name)?)?;
        }
        attach(&mut dataplane, &new, &pin_dir, started)?;
        dataplane.set_guard_settings(&guard_settings(&config))?;
        let mut settings = settings_with(&config, tunnel_sources);
        if !guard.runtime().is_empty() {
            settings.flags |= lb_common::maps::SETTINGS_DENY;
        }
        dataplane.set_settings(&settings)?;
        dataplane.apply(&writes)?;
        dataplane.rebuild_indexes()?;
        tracing::info!(writes = writes.len(), "maps written");
        attach(&mut dataplane, &taken_over, &pin_dir, started)?;
        let agents = agent_targets(&config);
        let mut controller = Self {
            config,
            config_path: config_path.to_path_buf(),
            dataplane,
            planner,
            states,
            trackers: BTreeMap::new(),
            overrides: BTreeMap::new(),
            dynamic: BTreeMap::new(),
            offsets: BTreeMap::new(),
            loads: BTreeMap::new(),
            agents,
            check_latency: BTreeMap::new(),
            connections: 0,
            evictions: crate::conns::Evictions::default(),
            ha: Vec::new(),
            checker: None,
            checked: Vec::new(),
            events: None,
            hops,
            tunnel_sources,
            pin_dir,
            started: SystemTime::now(),
            started_with: Started::default(),
            guard,
            attacks: crate::attack::Attacks::default(),
            announce: announcing::Announcing::default(),
            trace: false,
            sync: None,
        };
        controller.refresh_hops();
        // The backends' neighbours the kernel was just asked to resolve
        // usually answer within milliseconds: waited for (a bounded time),
        // so the first packets take the cached path.
        controller.settle_hops(HOP_SETTLE);
        Ok(controller)
    }

    /// Undoes a start whose later steps failed (VRRP, a listener), as
    /// [`Controller::start`] undoes its own: everything this start added
    /// goes; a taken-over data plane stays, forwarding. Returns what became
    /// of the data plane, for the error message. The controller is of no
    /// further use (its maps are closed when it is dropped).
    pub fn abandon(&mut self) -> String {
        self.stop_ha();
        self.stop_sync();
        if let Some(checker) = self.checker.take() {
            checker.stop();
        }
        if self.started_with.origin == Some(Origin::Created)
            && let Some(mut hops) = self.hops.take()
        {
            hops.forget_managed();
        }
        // Every attachment of a finished start is pinned (none is held only
        // by this process's handle), so undoing the pins undoes them.
        undo_start(&mut std::mem::take(&mut self.started_with), &self.pin_dir)
    }

    /// The clean stop's last step: detaches from every interface, removes
    /// the pinned maps, the managed neighbour entries and puts back the
    /// forwarding sysctls `lb run` turned on; then [`Controller::close`].
    pub fn stop(mut self) -> anyhow::Result<()> {
        // Taken, so a refresh racing the exit cannot manage them again.
        if let Some(mut hops) = self.hops.take() {
            hops.forget_managed();
        }
        let detached = unpin_all(&self.pin_dir);
        self.started_with.forwarding.restore();
        self.close();
        for interface in detached? {
            tracing::info!(%interface, "detached");
        }
        Ok(())
    }

    /// Lets go of everything this process holds, without waiting: the
    /// health checker is told to stop and its probes in flight are left to
    /// end on their own ([`crate::health::Checker::abandon`]: dropping a running checker
    /// would wait for them, and an exec check can take seconds); then every
    /// descriptor is closed. What is pinned outlives the descriptors: after
    /// [`Controller::stop`] nothing is, and the attachments go with them;
    /// without it (SIGQUIT, an HA instance that failed) the data plane
    /// stays attached, pinned and forwarding, with the managed neighbour
    /// entries and the forwarding sysctls the next `lb run` takes over.
    pub fn close(mut self) {
        if let Some(checker) = self.checker.take() {
            checker.abandon();
        }
        drop(self);
    }
}

/// What a start changed so far, so that a failed one can be undone.
#[derive(Debug, Default)]
pub(super) struct Started {
    /// The forwarding sysctls this start turned on (and those an earlier
    /// `lb run` left on, from its record): on failure only this start's own
    /// are put back ([`ForwardingSysctls::abandon`]); once started, all of
    /// them on a clean stop.
    forwarding: ForwardingSysctls,
    /// Where the data plane came from, once loaded.
    origin: Option<Origin>,
    /// Attachments this start pinned (on a taken-over data plane: the
    /// interfaces it did not have).
    links: Vec<PathBuf>,
}

/// Where a started controller's data plane came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// Created and pinned by this start: undoing removes all of it.
    Created,
    /// Pinned by an earlier lb and taken over: it carries traffic, and
    /// undoing leaves it attached and pinned.
    TakenOver,
}

/// Undoes `started` (the data plane handle must be closed already, so that
/// attachments not yet pinned are gone with it); returns a sentence saying
/// what became of the data plane. Failures to undo are logged: the start's
/// own error is the one to report.
pub(super) fn undo_start(started: &mut Started, pin_dir: &Path) -> String {
    let outcome = match started.origin {
        None => "lb run did not start; nothing was attached or pinned".to_string(),
        Some(Origin::Created) => match unpin_all(pin_dir) {
            Ok(detached) => {
                for interface in detached {
                    tracing::info!(%interface, "start failed: detached");
                }
                "lb run did not start; nothing was left attached or pinned".to_string()
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), pins = %pin_dir.display(),
                    "start failed, and removing its pins failed too");
                format!(
                    "lb run did not start, and could not remove its pins in {}: `lb detach` them",
                    pin_dir.display()
                )
            }
        },
        Some(Origin::TakenOver) => {
            for link in &started.links {
                if let Err(error) = unpin_link(link) {
                    tracing::error!(error = %format!("{error:#}"),
                    "start failed: removing an attachment it added");
                }
            }
            format!(
                "lb run did not start; the data plane it found pinned in {} is left attached \
                 and forwarding",
                pin_dir.display()
            )
        }
    };
    // A taken-over data plane keeps the forwarding an earlier lb run turned
    // on (it is still recorded); only this start's changes are put back.
    started.forwarding.abandon();
    outcome
}

/// Attaches to `interfaces` (see [`Dataplane::attach_pinned`]), recording
/// the attachments it pins in `started`.
pub(super) fn attach(
    dataplane: &mut Dataplane,
    interfaces: &[&Interface],
    pin_dir: &Path,
    started: &mut Started,
) -> anyhow::Result<()> {
    for iface in interfaces {
        let mode = match iface.xdp_mode {
            XdpModeSetting::Auto => AttachMode::Auto,
            XdpModeSetting::Native => AttachMode::Native,
            XdpModeSetting::Generic => AttachMode::Generic,
        };
        let attachment = dataplane
            .attach_pinned(&iface.name, mode, pin_dir)
            .with_context(|| format!("attaching to {}", iface.name))?;
        match attachment {
            Attachment::Adopted => {
                tracing::info!(interface = %iface.name, "took over the attachment (no gap)");
            }
            Attachment::Attached(mode) => {
                started.links.push(link_pin(pin_dir, &iface.name));
                tracing::info!(interface = %iface.name, ?mode, "attached");
            }
        }
    }
    Ok(())
}

/// How long a start waits for the backends' next hops to resolve.
pub(super) const HOP_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

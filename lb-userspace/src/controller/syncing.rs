//! The controller's side of connection sync (`sync:`): it starts the sync
//! thread (`crate::sync::peer`) with its own descriptors of the data
//! path's ring and connection table, sets `SETTINGS_SYNC` so the data path
//! reports new flows, publishes the directory of each plan, and stops it
//! all.

use std::sync::Arc;

use anyhow::Context as _;

use super::{Controller, settings};
use crate::sync::{
    directory::Directory,
    peer::{self, Setup, Shared, SyncThread},
    status::SyncStatus,
};

/// The running sync: what the thread shares, and the thread.
#[derive(Debug)]
pub(super) struct Syncing {
    shared: Arc<Shared>,
    thread: Option<SyncThread>,
}

impl Controller {
    /// Starts connection sync if the configuration asks for it: the
    /// thread first, then the data path's reports (`SETTINGS_SYNC`).
    pub fn start_sync(&mut self) -> anyhow::Result<()> {
        let Some(section) = &self.config.sync else {
            return Ok(());
        };
        let ha = self.config.ha.as_ref();
        let interface = section
            .interface_for(ha)
            .context("sync: no interface (sync.interface or ha.interface)")?;
        let peers = section.peers_for(ha);
        let key = crate::sync::read_key(&section.secret_file)
            .context("sync.secret_file: the pair's key")?;
        let size = self.dataplane.sizes().connections;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a share in (0, 1] of a u32 table size"
        )]
        let capacity = (section.peer_share * f64::from(size)) as u64;
        let status = SyncStatus::new(&interface, section.port, &peers, capacity);
        let shared = Arc::new(Shared::new(status));
        shared.publish(Directory::of_plan(self.planner.planned()));
        let setup = Setup {
            interface: interface.clone(),
            port: section.port,
            peers: peers.clone(),
            key,
            peer_rate: section.peer_rate,
            peer_capacity: capacity,
            window_ns: settings(&self.config).tcp_idle_ns,
            udp_idle_ns: settings(&self.config).udp_idle_ns,
        };
        let kernel = self.dataplane.take_sync()?;
        let conns = self.dataplane.conn_descriptors()?;
        let thread = peer::spawn(setup, kernel, conns, Arc::clone(&shared))?;
        self.sync = Some(Syncing {
            shared,
            thread: Some(thread),
        });
        let settings = self.settings_for(&self.config, self.tunnel_sources);
        if let Err(error) = self.dataplane.set_settings(&settings) {
            self.stop_sync();
            return Err(error.into());
        }
        tracing::info!(%interface, port = section.port, peers = ?peers, "sync: started");
        Ok(())
    }

    /// Waits, at most `wait`, for one peer's whole table (the sync thread
    /// asked for it as it started), and logs what came: called before
    /// VRRP and announce, so a restarted balancer that takes traffic at
    /// once knows the flows its peers carry. Returns at once without sync.
    pub fn await_bulk(&self, wait: std::time::Duration) {
        let Some(syncing) = &self.sync else {
            return;
        };
        let start = std::time::Instant::now();
        loop {
            if let Some(bulk) = syncing.shared.last_bulk() {
                tracing::info!(peer = %bulk.from, entries = bulk.entries,
                    installed = bulk.installed, took_ms = bulk.took_ms,
                    "sync: caught up with a peer's table before starting VRRP and announce");
                return;
            }
            if start.elapsed() >= wait {
                tracing::info!(
                    wait_ms = wait.as_millis(),
                    "sync: no peer sent its table in time (none up yet?); starting with the \
                     flows peers send from now on"
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Stops the data path's reports, then the thread (which sends what
    /// it drained last).
    pub fn stop_sync(&mut self) {
        let Some(mut syncing) = self.sync.take() else {
            return;
        };
        let settings = self.settings_for(&self.config, self.tunnel_sources);
        if let Err(error) = self.dataplane.set_settings(&settings) {
            tracing::warn!(error = %format!("{error:#}"), "sync: clearing SETTINGS_SYNC");
        }
        if let Some(thread) = syncing.thread.take() {
            thread.stop();
        }
    }

    /// Hands the sync thread the directory of the current plan.
    pub(super) fn publish_directory(&self) {
        if let Some(syncing) = &self.sync {
            syncing
                .shared
                .publish(Directory::of_plan(self.planner.planned()));
        }
    }

    /// Whether sync runs (`SETTINGS_SYNC` is set).
    pub(super) fn syncing(&self) -> bool {
        self.sync.is_some()
    }

    /// The `sync` part of the status; `None` without sync.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.sync.as_ref().map(|syncing| syncing.shared.status())
    }
}

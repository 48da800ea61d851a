//! Connection sync between balancers (docs/DESIGN.md §4, `sync:`): balancers of
//! one HA pair or ECMP group tell each other the flows they schedule, so a
//! flow keeps its backend whichever balancer receives it — needed where the
//! scheduler's pick is local (round-robin, least-conn, resource) and for
//! hash-scheduled flows that began before the backend set changed.
//!
//! - `wire.rs`: authenticated batches of flows, the replay window (pure);
//! - `directory.rs`: backend ids ↔ the names on the wire (service by VIP,
//!   port and protocol; backend by address and port), published by the
//!   controller after each plan (pure);
//! - `limit.rs`: what peers may install — a rate and a share of the
//!   table (pure, time injected);
//! - `status.rs`: the counters, and what `lb status` shows;
//! - `bulk.rs`: the whole table for a peer that starts — when to ask,
//!   whether to answer, the pace (pure), and the transfer's own thread;
//! - `peer.rs`: the thread that drains the data path's new-flow events,
//!   sends them to the peers and installs what the peers send.

pub mod bulk;
pub mod directory;
pub mod limit;
pub mod peer;
pub mod status;
pub mod wire;

use std::path::Path;

use anyhow::Context as _;

/// The pair's key from `secret_file`: its bytes, surrounding whitespace
/// ignored ([`wire::Key::new`]).
///
/// # Errors
/// The file cannot be read, or holds nothing but whitespace.
pub fn read_key(path: &Path) -> anyhow::Result<wire::Key> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        !bytes.trim_ascii().is_empty(),
        "{} holds no key (it is empty)",
        path.display()
    );
    Ok(wire::Key::new(&bytes))
}

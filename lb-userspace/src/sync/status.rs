//! What `lb status` and the metrics show of connection sync: counters the
//! sync thread keeps ([`SyncStatus`], behind a lock it shares with the
//! controller) and serves as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why something a peer sent was not installed. Datagram-level reasons
/// count datagrams; the others count entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The HMAC did not match (another key, forged, corrupted): a datagram.
    BadTag,
    /// A (sender, sequence) already accepted or too old: a datagram.
    Replay,
    /// From an address that is not a configured peer: a datagram.
    UnknownPeer,
    /// Authentic but not understood (version, kind, layout): a datagram.
    Malformed,
    /// No service here on the entry's VIP, port and protocol: an entry.
    UnknownService,
    /// The service here has no such backend: an entry.
    UnknownBackend,
    /// Over `sync.peer_rate`: an entry.
    Rate,
    /// Peers' flows fill `sync.peer_share` of the table: an entry.
    Share,
    /// The connection table refused the write: an entry.
    TableFull,
}

impl Refusal {
    /// Every reason, in the order shown.
    pub const ALL: [Refusal; 9] = [
        Refusal::BadTag,
        Refusal::Replay,
        Refusal::UnknownPeer,
        Refusal::Malformed,
        Refusal::UnknownService,
        Refusal::UnknownBackend,
        Refusal::Rate,
        Refusal::Share,
        Refusal::TableFull,
    ];

    /// Its name in the status and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::BadTag => "bad_tag",
            Refusal::Replay => "replay",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::Malformed => "malformed",
            Refusal::UnknownService => "unknown_service",
            Refusal::UnknownBackend => "unknown_backend",
            Refusal::Rate => "rate",
            Refusal::Share => "share",
            Refusal::TableFull => "table_full",
        }
    }
}

/// One peer as the status shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its address.
    pub address: String,
    /// Unix time in milliseconds of the last authentic datagram from it.
    pub last_message_ms: Option<u64>,
    /// Entries sent to it.
    pub sent: u64,
    /// Entries received from it (in authentic, fresh datagrams).
    pub received: u64,
    /// Of those, installed in the connection table.
    pub installed: u64,
    /// Of those, already in the table here (a local entry is never
    /// overwritten).
    pub existing: u64,
    /// Its closes that marked an entry here closed (same flow, same
    /// backend, open until then).
    #[serde(default)]
    pub closed: u64,
    /// Datagrams to it that the kernel refused to send.
    #[serde(default)]
    pub send_errors: u64,
}

/// The `sync` part of `lb status`; `null` without a `sync:` section.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStatus {
    /// The interface it runs on.
    pub interface: String,
    /// Its UDP port.
    pub port: u16,
    /// Every configured peer.
    pub peers: Vec<PeerStatus>,
    /// Refusals by reason ([`Refusal::name`]), every reason listed.
    pub refused: BTreeMap<String, u64>,
    /// New-flow events the data path could not report (its ring was full):
    /// flows the peers never heard of.
    pub events_lost: u64,
    /// Peers' entries installed within the TCP idle timeout, against
    /// `sync.peer_share` of the table.
    pub peer_entries: u64,
    /// The most the peers may hold (`peer_share` × table size).
    pub peer_capacity: u64,
    /// The last whole table a peer sent this balancer (bulk transfer);
    /// `None` before one came.
    #[serde(default)]
    pub last_bulk: Option<BulkReceived>,
    /// Whole tables this balancer sent to peers that asked.
    #[serde(default)]
    pub bulk_served: u64,
    /// Peers' requests for the whole table not answered: another transfer
    /// was running, or that peer had one within the last second.
    #[serde(default)]
    pub bulk_declined: u64,
}

/// A whole table received from a peer (its `BulkEnd` arrived).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BulkReceived {
    /// The peer's address.
    pub from: String,
    /// Unix time in milliseconds of its `BulkEnd`.
    pub at_ms: u64,
    /// Entries the transfer carried.
    pub entries: u64,
    /// Of those, installed here (the rest were here already or refused).
    pub installed: u64,
    /// Milliseconds from the sync thread's start (its first request) to
    /// the `BulkEnd`.
    pub took_ms: u64,
}

impl SyncStatus {
    /// A status with every counter at zero.
    pub fn new(interface: &str, port: u16, peers: &[std::net::IpAddr], capacity: u64) -> Self {
        Self {
            interface: interface.to_string(),
            port,
            peers: peers
                .iter()
                .map(|peer| PeerStatus {
                    address: peer.to_string(),
                    ..PeerStatus::default()
                })
                .collect(),
            refused: Refusal::ALL
                .iter()
                .map(|reason| (reason.name().to_string(), 0))
                .collect(),
            events_lost: 0,
            peer_entries: 0,
            peer_capacity: capacity,
            last_bulk: None,
            bulk_served: 0,
            bulk_declined: 0,
        }
    }

    /// Counts one refusal.
    pub fn refuse(&mut self, reason: Refusal) {
        *self.refused.entry(reason.name().to_string()).or_default() += 1;
    }

    /// Entries sent, received and installed over every peer.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.peers.iter().fold((0, 0, 0), |(s, r, i), peer| {
            (s + peer.sent, r + peer.received, i + peer.installed)
        })
    }
}

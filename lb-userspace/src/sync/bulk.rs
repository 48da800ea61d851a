//! Bulk transfer: a balancer that starts asks its peers for their whole
//! connection table (`BulkRequest`), and a peer answers with every live
//! flow it holds in `Bulk` datagrams, the last one `BulkEnd`, paced so the
//! transfer neither floods the link nor the requester's `peer_rate`.
//!
//! The decisions are pure ([`Requests`]: when to ask again; [`Answers`]:
//! whether to answer; [`Pace`]: when the next datagram may leave);
//! [`transfer`] is the I/O: it walks the table through descriptors of its
//! own (never the controller's) and sends, on a thread of its own, so the
//! sync thread keeps draining new-flow events meanwhile.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::{ConnValue, FlowKey, maps::CONN_CLOSED};

use super::{
    peer::{Shared, monotonic_coarse_ns},
    wire::{self, Key, Kind, Message},
};
use crate::conns::ConnTable;

/// How long `lb run` waits, before VRRP and announce start, for one peer's
/// whole table: a restarted balancer that becomes master at once should
/// know the flows its peer carries.
pub const BULK_WAIT: Duration = Duration::from_secs(2);

/// How often a balancer that starts asks a peer that has not answered.
pub const ASK_EVERY: Duration = Duration::from_millis(500);

/// The least time between two transfers to one peer (from the start of
/// one to the start of the next): a peer, or someone replaying its
/// requests within the replay window's reach, cannot keep this balancer
/// walking its table.
pub const ANSWER_EVERY: Duration = Duration::from_secs(1);

/// The lowest pace of a transfer, in entries a second, whatever
/// `peer_rate` is.
const MIN_RATE: u32 = 1_000;

/// The pace of a transfer: half of `sync.peer_rate` (configured alike on
/// the requester, it leaves the other half to new flows), at least
/// [`MIN_RATE`].
pub fn bulk_rate(peer_rate: u32) -> u32 {
    (peer_rate / 2).max(MIN_RATE)
}

/// A starting balancer's requests: asked every [`ASK_EVERY`] until the
/// peer's `BulkEnd` arrives or [`BULK_WAIT`] has passed since the start.
#[derive(Clone, Debug)]
pub struct Requests {
    started: Instant,
    /// Per peer: when it was last asked, and whether its table came.
    asked: Vec<(Option<Instant>, bool)>,
}

impl Requests {
    /// Nothing asked yet of `peers` peers; the wait runs from `now`.
    pub fn new(peers: usize, now: Instant) -> Self {
        Self {
            started: now,
            asked: vec![(None, false); peers],
        }
    }

    /// The peers to ask at `now` (their indices); they count as asked.
    pub fn due(&mut self, now: Instant) -> Vec<usize> {
        if now.duration_since(self.started) >= BULK_WAIT {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (i, (asked, answered)) in self.asked.iter_mut().enumerate() {
            let stale = asked.is_none_or(|at| now.duration_since(at) >= ASK_EVERY);
            if !*answered && stale {
                *asked = Some(now);
                due.push(i);
            }
        }
        due
    }

    /// Peer `peer`'s whole table arrived.
    pub fn answered(&mut self, peer: usize) {
        if let Some(slot) = self.asked.get_mut(peer) {
            slot.1 = true;
        }
    }

    /// When the first request went out (the transfer's time counts from
    /// there).
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// Why a peer's request is not answered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declined {
    /// A transfer (to any peer) is under way: one at a time.
    Busy,
    /// This peer had one less than [`ANSWER_EVERY`] ago.
    TooSoon,
}

/// Whether to answer a request: one transfer at a time, and at most one
/// per peer every [`ANSWER_EVERY`].
#[derive(Clone, Debug)]
pub struct Answers {
    last: Vec<Option<Instant>>,
}

impl Answers {
    /// No transfer yet to any of `peers` peers.
    pub fn new(peers: usize) -> Self {
        Self {
            last: vec![None; peers],
        }
    }

    /// Whether peer `peer`'s request at `now` is answered (`busy`: a
    /// transfer is running); if so it is recorded.
    ///
    /// # Errors
    /// [`Declined`] says why not.
    pub fn admit(&mut self, peer: usize, now: Instant, busy: bool) -> Result<(), Declined> {
        if busy {
            return Err(Declined::Busy);
        }
        let Some(last) = self.last.get_mut(peer) else {
            return Err(Declined::TooSoon);
        };
        if last.is_some_and(|at| now.duration_since(at) < ANSWER_EVERY) {
            return Err(Declined::TooSoon);
        }
        *last = Some(now);
        Ok(())
    }
}

/// A rate: after `sent` entries since `start`, the next datagram may leave
/// at `start + sent / rate`.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    rate: u32,
}

impl Pace {
    /// `rate` entries a second (at least one).
    pub fn new(rate: u32) -> Self {
        Self { rate: rate.max(1) }
    }

    /// How long after the start the next datagram may leave, `sent`
    /// entries having gone.
    pub fn due_after(&self, sent: u64) -> Duration {
        Duration::from_nanos(sent.saturating_mul(1_000_000_000) / u64::from(self.rate))
    }
}

/// Whether a table entry is worth sending: not closed, and seen within its
/// protocol's idle timeout (an older one is rescheduled by its next packet
/// anyway).
pub fn live(
    key: &FlowKey,
    conn: &ConnValue,
    now_ns: u64,
    tcp_idle_ns: u64,
    udp_idle_ns: u64,
) -> bool {
    let idle = if key.proto == lb_common::proto::TCP {
        tcp_idle_ns
    } else {
        udp_idle_ns
    };
    conn.flags & CONN_CLOSED == 0 && now_ns.saturating_sub(conn.last_seen_ns) <= idle
}

/// What one transfer needs: all of it owned, for its thread.
#[derive(Debug)]
pub struct Transfer {
    /// Descriptors of the connection table of the transfer's own.
    pub table: ConnTable,
    /// A clone of the sync socket.
    pub socket: UdpSocket,
    /// The requester, as the socket addresses it.
    pub to: SocketAddr,
    /// Its index among the configured peers (for the counters).
    pub peer: usize,
    /// The pair's key.
    pub key: Key,
    /// This balancer's sender id.
    pub sender: u32,
    /// The sequence numbers the sync thread shares.
    pub sequence: Arc<AtomicU64>,
    /// Entries a second.
    pub pace: Pace,
    /// The idle timeouts, for [`live`].
    pub tcp_idle_ns: u64,
    /// See `tcp_idle_ns`.
    pub udp_idle_ns: u64,
    /// The directory, counters.
    pub shared: Arc<Shared>,
    /// Set while the transfer runs; cleared at its end.
    pub busy: Arc<AtomicBool>,
}

impl Transfer {
    /// Walks the table and sends every live flow the directory can name,
    /// paced; the last datagram is `BulkEnd` (alone and empty when the
    /// table holds nothing). A walk that fails sends no `BulkEnd`: the
    /// requester must not take a part for the whole.
    pub fn run(self) {
        let started = Instant::now();
        let now_ns = monotonic_coarse_ns();
        let directory = self.shared.directory();
        let mut pending: Vec<wire::Entry> = Vec::with_capacity(wire::MAX_ENTRIES);
        let mut sent = 0u64;
        let walked = self.table.for_each(|key, conn| {
            if !live(key, conn, now_ns, self.tcp_idle_ns, self.udp_idle_ns) {
                return;
            }
            let Some(entry) = directory.entry_for(key, conn.backend_id) else {
                return;
            };
            pending.push(entry);
            if pending.len() == wire::MAX_ENTRIES {
                sent += self.send(Kind::Bulk, &mut pending, started, sent);
            }
        });
        match walked {
            Ok(_) => {
                sent += self.send(Kind::BulkEnd, &mut pending, started, sent);
                self.shared.with_status(|status| status.bulk_served += 1);
                tracing::info!(peer = %self.to.ip().to_canonical(), entries = sent,
                    took_ms = started.elapsed().as_millis(), "sync: sent the whole table to a peer");
            }
            Err(error) => {
                tracing::warn!(%error, peer = %self.to.ip().to_canonical(),
                    "sync: walking the connection table for a peer's bulk request failed");
            }
        }
        self.busy.store(false, Ordering::Release);
    }

    /// Sends `entries` (emptied) as one datagram of `kind` once the pace
    /// allows; returns how many entries went.
    fn send(&self, kind: Kind, entries: &mut Vec<wire::Entry>, started: Instant, sent: u64) -> u64 {
        let wait = self.pace.due_after(sent).saturating_sub(started.elapsed());
        if wait > Duration::ZERO {
            std::thread::sleep(wait);
        }
        let count = entries.len() as u64;
        let datagram = wire::emit(
            &Message {
                kind,
                sender: self.sender,
                sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                entries: std::mem::take(entries),
            },
            &self.key,
        );
        let outcome = self.socket.send_to(&datagram, self.to);
        self.shared.with_status(|status| {
            if let Some(peer) = status.peers.get_mut(self.peer) {
                match outcome {
                    Ok(_) => peer.sent += count,
                    Err(_) => peer.send_errors += 1,
                }
            }
        });
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_balancer_asks_until_answered_or_the_wait_is_over() {
        let t0 = Instant::now();
        let mut requests = Requests::new(2, t0);
        assert_eq!(requests.due(t0), [0, 1]);
        assert_eq!(
            requests.due(t0 + Duration::from_millis(100)),
            [] as [usize; 0]
        );
        requests.answered(1);
        assert_eq!(requests.due(t0 + ASK_EVERY), [0], "peer 1 answered");
        requests.answered(0);
        assert_eq!(requests.due(t0 + 2 * ASK_EVERY), [] as [usize; 0]);
        let mut unanswered = Requests::new(1, t0);
        assert_eq!(unanswered.due(t0), [0]);
        assert_eq!(
            unanswered.due(t0 + BULK_WAIT),
            [] as [usize; 0],
            "past the wait"
        );
    }

    #[test]
    fn one_transfer_at_a_time_and_one_per_peer_a_second() {
        let t0 = Instant::now();
        let mut answers = Answers::new(2);
        assert_eq!(answers.admit(0, t0, false), Ok(()));
        assert_eq!(answers.admit(1, t0, true), Err(Declined::Busy));
        assert_eq!(
            answers.admit(0, t0 + Duration::from_millis(500), false),
            Err(Declined::TooSoon)
        );
        assert_eq!(
            answers.admit(1, t0 + Duration::from_millis(500), false),
            Ok(())
        );
        assert_eq!(answers.admit(0, t0 + ANSWER_EVERY, false), Ok(()));
        assert_eq!(
            answers.admit(7, t0, false),
            Err(Declined::TooSoon),
            "no such peer"
        );
    }

    #[test]
    fn the_pace_spreads_entries_over_time() {
        let pace = Pace::new(bulk_rate(50_000));
        assert_eq!(pace.due_after(0), Duration::ZERO);
        assert_eq!(pace.due_after(25_000), Duration::from_secs(1));
        assert_eq!(bulk_rate(10), MIN_RATE);
    }

    #[test]
    fn only_live_entries_are_sent() {
        let key = |proto| FlowKey {
            proto,
            ..FlowKey::default()
        };
        let conn = |flags, last_seen_ns| ConnValue {
            backend_id: 1,
            flags,
            last_seen_ns,
        };
        assert!(live(&key(6), &conn(0, 900), 1_000, 100, 10));
        assert!(!live(&key(6), &conn(CONN_CLOSED, 900), 1_000, 100, 10));
        assert!(!live(&key(6), &conn(0, 800), 1_000, 100, 10), "idle");
        assert!(
            !live(&key(17), &conn(0, 900), 1_000, 100, 10),
            "UDP's timeout"
        );
    }
}

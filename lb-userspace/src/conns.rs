//! The connection table (`CONNS_V4` for IPv4 flows, `CONNS` for IPv6) read
//! whole, for reconciling the active
//! flow counts: `BPF_MAP_LOOKUP_BATCH`, thousands of entries per syscall
//! (aya 0.14 has no batched reads, so the one syscall is made here), with
//! aya's key-by-key walk as the fallback on kernels without it (before 5.6).
//! A [`ConnTable`] holds its own descriptors of the maps, so the controller
//! hands one out and the walk — a million entries by default — runs on
//! another thread than the controller's owner ([`crate::owner`]).
//!
//! The same walk estimates the table's silent LRU evictions
//! ([`Evictions`]): the data plane never deletes an entry and userspace
//! never writes one, so an entry gone between two walks was evicted.

use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
    os::fd::{AsRawFd as _, OwnedFd},
};

use lb_common::{
    ConnValue, FlowKey, FlowKeyV4,
    maps::{CONN_CLOSED, CONN_HALF_OPEN},
};

/// `BPF_MAP_LOOKUP_BATCH` (`include/uapi/linux/bpf.h`, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per batch (a hash map answers whole buckets).
const BATCH: u32 = 4096;

/// The `batch` member of `union bpf_attr` (batched lookups here, batched
/// updates in `dataplane`).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct BatchAttr {
    pub(crate) in_batch: u64,
    pub(crate) out_batch: u64,
    pub(crate) keys: u64,
    pub(crate) values: u64,
    pub(crate) count: u32,
    pub(crate) map_fd: u32,
    pub(crate) elem_flags: u64,
    pub(crate) flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

/// Descriptors of the connection table — its IPv4 and IPv6 maps —
/// independent of the controller.
#[derive(Debug)]
pub struct ConnTable {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl ConnTable {
    /// Wraps descriptors of `CONNS_V4` and `CONNS`.
    pub fn new(v4: OwnedFd, v6: OwnedFd) -> Self {
        Self { v4, v6 }
    }

    /// Live flows per backend id: entries not closed (FIN / RST) and seen
    /// within their protocol's idle timeout (`now_ns` on the clock of
    /// `bpf_ktime_get_ns`).
    pub fn count_active(
        &self,
        now_ns: u64,
        tcp_idle_ns: u64,
        udp_idle_ns: u64,
    ) -> std::io::Result<BTreeMap<u32, u64>> {
        Ok(self.walk(now_ns, tcp_idle_ns, udp_idle_ns)?.0)
    }

    /// [`ConnTable::count_active`], and the fingerprints of every key and
    /// of the established ones (sorted, deduplicated) for a [`Census`].
    pub fn walk(
        &self,
        now_ns: u64,
        tcp_idle_ns: u64,
        udp_idle_ns: u64,
    ) -> std::io::Result<(BTreeMap<u32, u64>, Walked)> {
        let mut active = BTreeMap::new();
        let mut keys = Vec::new();
        let mut established = Vec::new();
        self.for_each(|key, conn| {
            let print = fingerprint(key);
            keys.push(print);
            if conn.flags & (CONN_CLOSED | CONN_HALF_OPEN) == 0 {
                established.push(print);
            }
            let idle = if key.proto == lb_common::proto::TCP {
                tcp_idle_ns
            } else {
                udp_idle_ns
            };
            if conn.flags & CONN_CLOSED == 0 && now_ns.saturating_sub(conn.last_seen_ns) <= idle {
                *active.entry(conn.backend_id).or_default() += 1;
            }
        })?;
        // Sorted here, off the owner's thread ([`Census::new`] then
        // finds them in order).
        for prints in [&mut keys, &mut established] {
            prints.sort_unstable();
            prints.dedup();
        }
        Ok((active, Walked { keys, established }))
    }

    /// Calls `visit` for every entry, IPv4 keys widened to [`FlowKey`]
    /// (IPv4-mapped addresses); returns how many there were. Entries added
    /// or evicted during the walk may or may not be seen.
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, &ConnValue)) -> std::io::Result<u64> {
        let v4 = walk::<FlowKeyV4>(&self.v4, &mut |key, conn| visit(&key.widen(), conn))?;
        let v6 = walk::<FlowKey>(&self.v6, &mut visit)?;
        Ok(v4 + v6)
    }
}

/// The key fingerprints of one walk (sorted, deduplicated): every entry,
/// and the established ones — open, and past their first packet. An entry
/// is known to be half-open (`CONN_HALF_OPEN`) only while `guard.attack`
/// is configured; without it every open entry counts as established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    /// Every entry.
    pub keys: Vec<u64>,
    /// The established ones.
    pub established: Vec<u64>,
}

/// Every entry of one connection map, keyed by `K`.
fn walk<K: aya::Pod + Default>(
    fd: &OwnedFd,
    visit: &mut impl FnMut(&K, &ConnValue),
) -> std::io::Result<u64> {
    match batched(fd, visit) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("no batched map reads here: walking key by key");
            key_by_key(fd, visit)
        }
        other => other,
    }
}

fn batched<K: aya::Pod + Default>(
    fd: &OwnedFd,
    visit: &mut impl FnMut(&K, &ConnValue),
) -> std::io::Result<u64> {
    let mut size = BATCH;
    let mut keys = vec![K::default(); size as usize];
    let mut values = vec![ConnValue::default(); size as usize];
    // The kernel's cursor (a bucket index for hash maps).
    let mut cursor = 0u64;
    let mut next = 0u64;
    let mut first = true;
    let mut seen = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of!(cursor) as u64
            },
            out_batch: std::ptr::addr_of_mut!(next) as u64,
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` batch member of the size
        // passed; `keys` and `values` hold `count` elements of the map's
        // key and value sizes (`K` and ConnValue are the layouts the
        // program declares the map with), `cursor` and `next` outlive the
        // call, and the kernel writes no more than `count` entries.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(std::io::Error::last_os_error);
        // The count is written back on success and at the end (ENOENT).
        let filled = if error.is_none()
            || error.as_ref().and_then(std::io::Error::raw_os_error) == Some(libc::ENOENT)
        {
            attr.count.min(size) as usize
        } else {
            0
        };
        for (key, value) in keys.iter().zip(&values).take(filled) {
            visit(key, value);
        }
        seen += filled as u64;
        match error.as_ref().and_then(std::io::Error::raw_os_error) {
            None => {}
            Some(libc::ENOENT) => return Ok(seen),
            // One bucket holds more than a batch: ask for more at once.
            Some(libc::ENOSPC) if size < 1 << 20 => {
                size *= 2;
                keys.resize(size as usize, K::default());
                values.resize(size as usize, ConnValue::default());
                continue;
            }
            Some(_) => return Err(error.unwrap_or_else(std::io::Error::last_os_error)),
        }
        cursor = next;
        first = false;
    }
}

/// Two syscalls per entry; restarts from the first key when the current
/// one is evicted mid-walk.
fn key_by_key<K: aya::Pod>(
    fd: &OwnedFd,
    visit: &mut impl FnMut(&K, &ConnValue),
) -> std::io::Result<u64> {
    let data = aya::maps::MapData::from_fd(fd.try_clone()?)
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    let conns: aya::maps::HashMap<aya::maps::MapData, K, ConnValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(|error| std::io::Error::other(error.to_string()))?;
    let mut seen = 0;
    for entry in &conns {
        // Entries can vanish while the table is walked (LRU): skip them.
        let Ok((key, conn)) = entry else { continue };
        visit(&key, &conn);
        seen += 1;
    }
    Ok(seen)
}

/// A 64-bit fingerprint of a flow key: a walk keeps 8 bytes an entry, not
/// the key's 40 (collisions among a million keys: about one in 30 million).
fn fingerprint(key: &FlowKey) -> u64 {
    // SipHash with fixed keys: the same key gives the same fingerprint
    // across walks of one process, which is all that is compared.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// What one walk saw: the key fingerprints (sorted, deduplicated), and the
/// data plane's count of flows scheduled, summed over services, read after
/// the walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    keys: Vec<u64>,
    established: Vec<u64>,
    scheduled: u64,
}

impl Census {
    /// A census of `keys` (fingerprints from [`ConnTable::walk`]) and
    /// `scheduled`, the services' `new_flows` summed; none known
    /// established.
    pub fn new(mut keys: Vec<u64>, scheduled: u64) -> Self {
        keys.sort_unstable();
        keys.dedup();
        Self {
            keys,
            established: Vec::new(),
            scheduled,
        }
    }

    /// A census of a whole walk.
    pub fn of(walked: Walked, scheduled: u64) -> Self {
        let mut census = Self::new(walked.keys, scheduled);
        let mut established = walked.established;
        established.sort_unstable();
        established.dedup();
        census.established = established;
        census
    }

    /// Entries in the table.
    pub fn entries(&self) -> u64 {
        self.keys.len() as u64
    }
}

/// LRU evictions between two walks, bounded from both sides, or `None`
/// when the counters went back (the maps were replaced: nothing to compare).
///
/// - At least: entries of the first walk missing from the second. Nothing
///   but an eviction removes an entry, so each is one; flows that came and
///   were evicted between the walks are missed.
/// - At most: flows scheduled minus the table's growth. Every scheduled
///   flow inserts its key; a key that was not there grows the table unless
///   an eviction makes room. A flow rescheduled on a tuple still in the
///   table (idle past its timeout, a SYN reusing a closed tuple, its
///   backend gone) overwrites its entry and is counted here as well.
pub fn evictions_between(before: &Census, after: &Census) -> Option<(u64, u64)> {
    let scheduled = after.scheduled.checked_sub(before.scheduled)?;
    let gone = missing(&before.keys, &after.keys);
    let growth = i128::from(after.entries()) - i128::from(before.entries());
    let room = u64::try_from(i128::from(scheduled) - growth).unwrap_or(0);
    Some((gone, room.max(gone)))
}

/// Established entries of `before` missing from `after`: evictions of
/// flows that had gone past their first packet (a lower bound, like
/// [`evictions_between`]'s), or `None` when the counters went back.
pub fn established_evictions_between(before: &Census, after: &Census) -> Option<u64> {
    after.scheduled.checked_sub(before.scheduled)?;
    Some(missing(&before.established, &after.keys))
}

/// How many of `before` (sorted) are not in `after` (sorted).
fn missing(before: &[u64], after: &[u64]) -> u64 {
    let mut after = after.iter().peekable();
    let mut gone = 0;
    for key in before {
        while after.next_if(|k| *k < key).is_some() {}
        if after.next_if_eq(&key).is_none() {
            gone += 1;
        }
    }
    gone
}

/// The connection table's LRU evictions since the controller started, as
/// estimated from its walks (every reconciliation): the sums of
/// [`evictions_between`]'s bounds. It keeps the last [`Census`], 8 bytes a
/// table entry.
#[derive(Debug, Default)]
pub struct Evictions {
    last: Option<Census>,
    at_least: u64,
    at_most: u64,
    established_at_least: u64,
    walks: u64,
}

impl Evictions {
    /// Folds in a new walk.
    pub fn record(&mut self, census: Census) {
        if let Some((at_least, at_most)) = self
            .last
            .as_ref()
            .and_then(|last| evictions_between(last, &census))
        {
            self.at_least += at_least;
            self.at_most += at_most;
        }
        if let Some(established) = self
            .last
            .as_ref()
            .and_then(|last| established_evictions_between(last, &census))
        {
            self.established_at_least += established;
        }
        self.walks += 1;
        self.last = Some(census);
    }

    /// The report for a table of `capacity` entries.
    pub fn report(&self, capacity: u64) -> ConnTableStats {
        ConnTableStats {
            capacity,
            entries: self.last.as_ref().map(Census::entries),
            walks: self.walks,
            evictions_at_least: self.at_least,
            evictions_at_most: self.at_most,
            established_evictions_at_least: self.established_at_least,
        }
    }
}

/// The connection table in `lb stats`: its fill at the last walk and its
/// estimated LRU evictions (see [`evictions_between`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnTableStats {
    /// Entries it holds at most per address family
    /// (`dataplane.connection_table_size`: IPv4 and IPv6 flows have a map
    /// of that size each).
    pub capacity: u64,
    /// Entries at the last walk (none before the first).
    pub entries: Option<u64>,
    /// Walks since the controller started (every 10 s).
    pub walks: u64,
    /// Evictions since the controller started: at least this many (an
    /// estimate: flows evicted between two walks are not seen).
    pub evictions_at_least: u64,
    /// Evictions since the controller started: at most this many (an
    /// estimate: rescheduled flows whose tuple was still in the table are
    /// counted too).
    pub evictions_at_most: u64,
    /// Of those, entries of established flows (open and past their first
    /// packet) seen gone: at least this many. Half-open entries (a bare
    /// SYN, a first datagram) are told apart only with `guard.attack`.
    #[serde(default)]
    pub established_evictions_at_least: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(keys: &[u64], scheduled: u64) -> Census {
        Census::new(keys.to_vec(), scheduled)
    }

    #[test]
    fn a_table_that_only_grew_evicted_nothing() {
        let before = census(&[1, 2, 3], 3);
        let after = census(&[1, 2, 3, 4, 5], 5);
        assert_eq!(evictions_between(&before, &after), Some((0, 0)));
    }

    #[test]
    fn a_full_table_flooded_evicts_at_least_what_vanished() {
        // Four entries; ten new flows later, two of the old four remain
        // beside two new ones: two seen gone, and eight new keys could have
        // gone too (ten scheduled, the table did not grow).
        let before = census(&[10, 20, 30, 40], 100);
        let after = census(&[10, 30, 50, 60], 110);
        assert_eq!(evictions_between(&before, &after), Some((2, 10)));
    }

    #[test]
    fn reschedules_in_place_only_raise_the_upper_bound() {
        // Same keys, three flows rescheduled on their own tuples.
        let before = census(&[1, 2, 3], 7);
        let after = census(&[3, 2, 1], 10);
        assert_eq!(evictions_between(&before, &after), Some((0, 3)));
    }

    #[test]
    fn counters_going_back_compare_nothing() {
        let before = census(&[1, 2], 50);
        let after = census(&[3], 2);
        assert_eq!(evictions_between(&before, &after), None);
        let mut evictions = Evictions::default();
        evictions.record(before);
        evictions.record(after);
        let report = evictions.report(64);
        assert_eq!(
            (report.walks, report.entries, report.evictions_at_least),
            (2, Some(1), 0)
        );
    }

    #[test]
    fn evictions_of_established_flows_are_counted_apart() {
        let walked = |keys: &[u64], established: &[u64]| Walked {
            keys: keys.to_vec(),
            established: established.to_vec(),
        };
        let mut evictions = Evictions::default();
        // 1 and 2 established, 3 and 4 half-open; then 2 (established)
        // and 3, 4 (half-open) are gone.
        evictions.record(Census::of(walked(&[1, 2, 3, 4], &[1, 2]), 4));
        evictions.record(Census::of(walked(&[1, 5, 6, 7], &[1]), 7));
        let report = evictions.report(4);
        assert_eq!(report.evictions_at_least, 3);
        assert_eq!(report.established_evictions_at_least, 1);
    }

    #[test]
    fn evictions_add_up_over_walks() {
        let mut evictions = Evictions::default();
        evictions.record(census(&[1, 2], 2));
        evictions.record(census(&[2, 3], 3));
        evictions.record(census(&[4, 5], 5));
        let report = evictions.report(2);
        assert_eq!(report.evictions_at_least, 1 + 2);
        assert_eq!(report.evictions_at_most, 1 + 2);
        assert_eq!(report.entries, Some(2));
    }
}

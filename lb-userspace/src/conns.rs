//! The connection table (`CONNS`) read whole, for reconciling the active
//! flow counts: `BPF_MAP_LOOKUP_BATCH`, thousands of entries per syscall
//! (aya 0.14 has no batched reads, so the one syscall is made here), with
//! aya's key-by-key walk as the fallback on kernels without it (before 5.6).
//! A [`ConnTable`] holds its own descriptor of the map, so the controller
//! hands one out and the walk — a million entries by default — runs
//! without the controller lock.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, OwnedFd},
};

use lb_common::{ConnValue, FlowKey, maps::CONN_CLOSED};

/// `BPF_MAP_LOOKUP_BATCH` (`include/uapi/linux/bpf.h`, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per batch (a hash map answers whole buckets).
const BATCH: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

/// A descriptor of the connection table, independent of the controller.
#[derive(Debug)]
pub struct ConnTable {
    fd: OwnedFd,
}

impl ConnTable {
    /// Wraps a descriptor of `CONNS`.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
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
        let mut active = BTreeMap::new();
        self.for_each(|key, conn| {
            let idle = if key.proto == lb_common::proto::TCP {
                tcp_idle_ns
            } else {
                udp_idle_ns
            };
            if conn.flags & CONN_CLOSED == 0 && now_ns.saturating_sub(conn.last_seen_ns) <= idle {
                *active.entry(conn.backend_id).or_default() += 1;
            }
        })?;
        Ok(active)
    }

    /// Calls `visit` for every entry; returns how many there were. Entries
    /// added or evicted during the walk may or may not be seen.
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, &ConnValue)) -> std::io::Result<u64> {
        match self.batched(&mut visit) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("no batched map reads here: walking key by key");
                self.key_by_key(&mut visit)
            }
            other => other,
        }
    }

    fn batched(&self, visit: &mut impl FnMut(&FlowKey, &ConnValue)) -> std::io::Result<u64> {
        let mut size = BATCH;
        let mut keys = vec![FlowKey::default(); size as usize];
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
                map_fd: u32::try_from(self.fd.as_raw_fd()).unwrap_or(u32::MAX),
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: size,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` is a valid `bpf_attr` batch member of the size
            // passed; `keys` and `values` hold `count` elements of the map's
            // key and value sizes (FlowKey and ConnValue are the layouts the
            // program declares CONNS with), `cursor` and `next` outlive the
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
                    keys.resize(size as usize, FlowKey::default());
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
    fn key_by_key(&self, visit: &mut impl FnMut(&FlowKey, &ConnValue)) -> std::io::Result<u64> {
        let data = aya::maps::MapData::from_fd(self.fd.try_clone()?)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let conns: aya::maps::HashMap<aya::maps::MapData, FlowKey, ConnValue> =
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
}

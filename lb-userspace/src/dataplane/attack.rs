//! `guard.attack`'s maps seen from userspace: the per-service counters the
//! controller judges attacks by, and the VIPs it marks under attack.

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use lb_common::{
    Addr,
    attack::{AttackCounts, AttackVip, PENDING_SLOTS, Proven},
    map_names,
};

use super::{Dataplane, DataplaneError, map_error};

impl Dataplane {
    /// `ATTACK_COUNTS` of service `id`, summed over CPUs (running totals).
    pub fn attack_counts(&self, id: u32) -> Result<AttackCounts, DataplaneError> {
        let name = map_names::ATTACK_COUNTS;
        let array: PerCpuArray<&MapData, AttackCounts> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_error(name))?;
        let per_cpu = array.get(&id, 0).map_err(map_error(name))?;
        Ok(per_cpu
            .iter()
            .fold(AttackCounts::default(), |sum, cpu| AttackCounts {
                new_flows: sum.new_flows.wrapping_add(cpu.new_flows),
                syns: sum.syns.wrapping_add(cpu.syns),
                completed: sum.completed.wrapping_add(cpu.completed),
            }))
    }

    /// Marks `vip` under attack: bare SYNs of new flows to it are admitted
    /// only from proven sources.
    pub fn set_attack_vip(&mut self, vip: &Addr, value: &AttackVip) -> Result<(), DataplaneError> {
        let name = map_names::ATTACK_VIPS;
        self.hash_map::<Addr, AttackVip>(name)?
            .insert(vip, value, 0)
            .map_err(map_error(name))
    }

    /// Ends `vip`'s attack state (absent already is fine).
    pub fn remove_attack_vip(&mut self, vip: &Addr) -> Result<(), DataplaneError> {
        let name = map_names::ATTACK_VIPS;
        match self.hash_map::<Addr, AttackVip>(name)?.remove(vip) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    /// The VIPs marked under attack in the map (an earlier controller's
    /// included, after adoption).
    pub fn attack_vips(&self) -> Result<Vec<Addr>, DataplaneError> {
        let name = map_names::ATTACK_VIPS;
        let map: HashMap<&MapData, Addr, AttackVip> =
            HashMap::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }
}

impl Dataplane {
    /// `ATTACK_PENDING`'s slots that hold a first SYN waiting for its
    /// retransmission: (slot, value; see `lb_common::attack::pending_tag`
    /// and `pending_age`). Read through a memory mapping of the array: its
    /// four million slots in one pass, not one syscall each.
    pub fn attack_pending(&self) -> Result<Vec<(u32, u64)>, DataplaneError> {
        let name = map_names::ATTACK_PENDING;
        let aya::maps::Map::Array(data) = self.map(name)? else {
            return Err(DataplaneError::MissingMap(name));
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
        let len = PENDING_SLOTS as usize * std::mem::size_of::<u64>();
        // SAFETY: a shared, read-only mapping of the array's memory (the
        // map was created `BPF_F_MMAPABLE`), of its size, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(DataplaneError::Descriptor {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the mapping holds `PENDING_SLOTS` aligned u64s; the data
        // path may write them meanwhile (each read sees a whole value).
        let slots =
            unsafe { std::slice::from_raw_parts(base.cast::<u64>(), PENDING_SLOTS as usize) };
        let held = slots
            .iter()
            .zip(0u32..)
            .filter(|(value, _)| **value != 0)
            .map(|(value, slot)| (slot, *value))
            .collect();
        // SAFETY: the mapping made above, no longer borrowed.
        unsafe { libc::munmap(base, len) };
        Ok(held)
    }

    /// Rewrites slot `slot` of `ATTACK_PENDING` (tests age a SYN).
    pub fn set_attack_pending(&mut self, slot: u32, value: u64) -> Result<(), DataplaneError> {
        let name = map_names::ATTACK_PENDING;
        let mut array: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(slot, value, 0).map_err(map_error(name))
    }

    /// `ATTACK_VERIFIED`: proven sources, when each last proved itself
    /// and its flows in the current second.
    pub fn attack_verified(&self) -> Result<Vec<(Addr, Proven)>, DataplaneError> {
        let name = map_names::ATTACK_VERIFIED;
        let map: HashMap<&MapData, Addr, Proven> =
            HashMap::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Empties `ATTACK_VERIFIED` (tests).
    pub fn clear_attack_verified(&mut self) -> Result<(), DataplaneError> {
        let name = map_names::ATTACK_VERIFIED;
        let sources: Vec<Addr> = self
            .attack_verified()?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let mut map = self.hash_map::<Addr, Proven>(name)?;
        for source in sources {
            match map.remove(&source) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(DataplaneError::Map { name, source }),
            }
        }
        Ok(())
    }
}

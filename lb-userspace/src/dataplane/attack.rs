//! `guard.attack`'s maps seen from userspace: the per-service counters the
//! controller judges attacks by, and the VIPs it marks under attack.

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use lb_common::{
    Addr,
    attack::{AttackCounts, AttackVip, PendingKey, PendingSlot, Proven, pending_slot},
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
    /// `ATTACK_PENDING`: first SYNs waiting for their retransmission, by
    /// tuple hash and sequence number, with the data path's time each was
    /// seen (tests, `lb trace`-style inspection). Reads every slot: one
    /// system call each.
    pub fn attack_pending(&self) -> Result<Vec<(PendingKey, u64)>, DataplaneError> {
        let name = map_names::ATTACK_PENDING;
        let array: Array<&MapData, PendingSlot> =
            Array::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(array
            .iter()
            .filter_map(Result::ok)
            .filter(|slot| slot.seen_ns != 0)
            .map(|slot| (slot.key, slot.seen_ns))
            .collect())
    }

    /// Rewrites when the pending SYN `key` was seen (tests age it), in
    /// its slot.
    pub fn set_attack_pending(
        &mut self,
        key: PendingKey,
        seen_ns: u64,
    ) -> Result<(), DataplaneError> {
        let name = map_names::ATTACK_PENDING;
        let mut array: Array<&mut MapData, PendingSlot> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array
            .set(pending_slot(key), PendingSlot { key, seen_ns }, 0)
            .map_err(map_error(name))
    }

    /// `ATTACK_VERIFIED`: proven sources, when each last proved itself
    /// and its flows in the current second.
    pub fn attack_verified(&self) -> Result<Vec<(Addr, Proven)>, DataplaneError> {
        let name = map_names::ATTACK_VERIFIED;
        let map: HashMap<&MapData, Addr, Proven> =
            HashMap::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }
}

//! [`Tables`] over a loaded (or pinned and adopted) data plane: each read
//! is one map lookup, as the kernel makes it. A map that cannot be read
//! reads as empty: the decision then says "none", never guesses.

use aya::maps::{Array, HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie};
use lb_common::{
    Addr, BackendValue, ConnValue, FlowKey, HopValue, RateValue, ServiceKey, ServiceValue,
    Settings, VipValue, map_names,
    maps::{GuardDenial, ServiceSlot},
};

use super::Tables;
use crate::dataplane::{Dataplane, monotonic_ns};

/// The maps of `dataplane`, read for [`super::decide`].
#[derive(Debug)]
pub struct MapTables<'a> {
    dataplane: &'a Dataplane,
}

impl<'a> MapTables<'a> {
    /// Reads `dataplane`'s maps.
    pub fn new(dataplane: &'a Dataplane) -> Self {
        Self { dataplane }
    }

    fn array<V: aya::Pod>(&self, name: &'static str, index: u32) -> Option<V> {
        let array: Array<&MapData, V> = Array::try_from(self.dataplane.map(name).ok()?).ok()?;
        array.get(&index, 0).ok()
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, key: &K) -> Option<V> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.dataplane.map(name).ok()?).ok()?;
        map.get(key, 0).ok()
    }
}

impl Tables for MapTables<'_> {
    fn settings(&self) -> Settings {
        self.array(map_names::SETTINGS, 0).unwrap_or_default()
    }

    fn is_vip(&self, addr: &Addr) -> bool {
        self.hash::<Addr, VipValue>(map_names::VIPS, addr).is_some()
    }

    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.hash(map_names::SERVICES, key)
    }

    fn service_slot(&self, id: u32) -> Option<ServiceSlot> {
        self.array(map_names::SERVICE_IDS, id)
    }

    fn backend(&self, id: u32) -> Option<BackendValue> {
        self.array(map_names::BACKENDS, id)
    }

    fn slot(&self, index: u32) -> Option<u32> {
        self.array(map_names::MAGLEV, index)
    }

    fn rr_positions(&self, service_id: u32) -> Vec<u32> {
        let Ok(map) = self.dataplane.map(map_names::RR_POS) else {
            return Vec::new();
        };
        let Ok(array) = PerCpuArray::<&MapData, u32>::try_from(map) else {
            return Vec::new();
        };
        array
            .get(&service_id, 0)
            .map(|values| values.iter().copied().collect())
            .unwrap_or_default()
    }

    fn conn(&self, flow: &FlowKey) -> Option<ConnValue> {
        // IPv4 flows have their own table, keyed narrower (as the kernel's).
        match flow.narrow() {
            Some(v4) => self.hash(map_names::CONNS_V4, &v4),
            None => self.hash(map_names::CONNS, flow),
        }
    }

    fn hop(&self, id: u32) -> Option<HopValue> {
        self.array(map_names::HOPS, id)
    }

    fn deny_prefixes(&self) -> Vec<(Addr, u32)> {
        let Ok(map) = self.dataplane.map(map_names::DENY) else {
            return Vec::new();
        };
        let Ok(trie) = LpmTrie::<&MapData, Addr, u8>::try_from(map) else {
            return Vec::new();
        };
        trie.keys()
            .filter_map(Result::ok)
            .map(|key| (key.data(), key.prefix_len()))
            .collect()
    }

    fn guard_denial(&self, src: &Addr) -> Option<GuardDenial> {
        self.hash(map_names::GUARD_DENIED, src)
    }

    fn rate_bucket(&self, src: &Addr) -> Option<RateValue> {
        self.hash(map_names::RATE, src)
    }

    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// The name of interface `ifindex` in this network namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buffer = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buffer` has the IF_NAMESIZE bytes if_indextoname may write.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buffer.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

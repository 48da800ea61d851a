//! [`Tables`] over a loaded (or pinned and adopted) data plane: each read
//! is one map lookup, as the kernel makes it. An entry the kernel's lookup
//! would not find (a key absent, an index past the end) reads as `None`;
//! any other failure is a [`ReadError`] naming the map, so the decision is
//! an error rather than a "none" it did not see.

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, lpm_trie::LpmTrie};
use lb_common::{
    Addr, BackendValue, ConnValue, FlowKey, HopValue, RateValue, ServiceKey, ServiceValue,
    Settings, VipValue, map_names,
    maps::{GuardDenial, ServiceSlot},
};

use super::{Read, ReadError, Tables};
use crate::dataplane::{Dataplane, found, monotonic_ns};

/// The maps of `dataplane`, read for [`super::decide`].
#[derive(Debug)]
pub struct MapTables<'a> {
    dataplane: &'a Dataplane,
}

/// A failure reading `map`, as the decision reports it.
fn read_error<E: std::error::Error + Send + Sync + 'static>(
    map: &'static str,
) -> impl Fn(E) -> ReadError {
    move |source| ReadError {
        map,
        source: Box::new(source),
    }
}

impl<'a> MapTables<'a> {
    /// Reads `dataplane`'s maps.
    pub fn new(dataplane: &'a Dataplane) -> Self {
        Self { dataplane }
    }

    fn map(&self, name: &'static str) -> Read<&'a aya::maps::Map> {
        self.dataplane.map(name).map_err(read_error(name))
    }

    fn array<V: aya::Pod>(&self, name: &'static str, index: u32) -> Read<Option<V>> {
        let array: Array<&MapData, V> =
            Array::try_from(self.map(name)?).map_err(read_error(name))?;
        found(array.get(&index, 0)).map_err(read_error(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, key: &K) -> Read<Option<V>> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(read_error(name))?;
        found(map.get(key, 0)).map_err(read_error(name))
    }
}

impl Tables for MapTables<'_> {
    fn settings(&self) -> Read<Settings> {
        Ok(self.array(map_names::SETTINGS, 0)?.unwrap_or_default())
    }

    fn is_vip(&self, addr: &Addr) -> Read<bool> {
        Ok(self
            .hash::<Addr, VipValue>(map_names::VIPS, addr)?
            .is_some())
    }

    fn service(&self, key: &ServiceKey) -> Read<Option<ServiceValue>> {
        self.hash(map_names::SERVICES, key)
    }

    fn service_slot(&self, id: u32) -> Read<Option<ServiceSlot>> {
        self.array(map_names::SERVICE_IDS, id)
    }

    fn backend(&self, id: u32) -> Read<Option<BackendValue>> {
        self.array(map_names::BACKENDS, id)
    }

    fn slot(&self, index: u32) -> Read<Option<u32>> {
        self.array(map_names::MAGLEV, index)
    }

    fn rr_positions(&self, service_id: u32) -> Read<Vec<u32>> {
        let name = map_names::RR_POS;
        let array =
            PerCpuArray::<&MapData, u32>::try_from(self.map(name)?).map_err(read_error(name))?;
        Ok(found(array.get(&service_id, 0))
            .map_err(read_error(name))?
            .map(|values| values.iter().copied().collect())
            .unwrap_or_default())
    }

    fn conn(&self, flow: &FlowKey) -> Read<Option<ConnValue>> {
        // IPv4 flows have their own table, keyed narrower (as the kernel's).
        match flow.narrow() {
            Some(v4) => self.hash(map_names::CONNS_V4, &v4),
            None => self.hash(map_names::CONNS, flow),
        }
    }

    fn hop(&self, id: u32) -> Read<Option<HopValue>> {
        self.array(map_names::HOPS, id)
    }

    fn deny_prefixes(&self) -> Read<Vec<(Addr, u32)>> {
        let name = map_names::DENY;
        let trie =
            LpmTrie::<&MapData, Addr, u8>::try_from(self.map(name)?).map_err(read_error(name))?;
        trie.keys()
            .map(|key| key.map(|key| (key.data(), key.prefix_len())))
            .collect::<Result<_, MapError>>()
            .map_err(read_error(name))
    }

    fn guard_denial(&self, src: &Addr) -> Read<Option<GuardDenial>> {
        self.hash(map_names::GUARD_DENIED, src)
    }

    fn rate_bucket(&self, src: &Addr) -> Read<Option<RateValue>> {
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

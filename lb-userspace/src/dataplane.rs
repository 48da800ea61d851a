//! The kernel side, seen from userspace: loads the embedded XDP object with
//! map sizes chosen at load time, writes the maps, reads the counters, and
//! attaches the programs to interfaces. No decisions are made here; callers
//! pass fully formed keys and values (see `plan`).

mod attack;
pub mod memory;

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
        xdp::DevMapHash,
    },
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Addr, BackendValue, Endpoint, HopValue, IfaceValue, NatValue, Reason, ServiceKey, ServiceValue,
    Settings, Traffic, VipValue, map_names,
    maps::{
        DENY_CONFIGURED, DENY_RUNTIME, FILTER_WORDS, GuardDenial, GuardSettings, IfaceSlot,
        ServiceSlot, filter_bit,
    },
    program_names,
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// Errors from loading, writing or attaching the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// The object could not be loaded (verifier rejection, missing BTF, no
    /// privileges, ...).
    #[error("loading the XDP object")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or failed to load or attach.
    #[error("program {name}")]
    Program {
        /// Which program.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object.
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    /// A devmap write failed.
    #[error("map DEVMAP")]
    Devmap(#[from] aya::maps::xdp::XdpMapError),
    /// A map read or write failed.
    #[error("map {name}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: MapError,
    },
    /// A map's descriptor could not be duplicated.
    #[error("duplicating the descriptor of map {name}")]
    Descriptor {
        /// Which map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Map sizes, set at load time rather than compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Services (and VIPs) at most.
    pub services: u32,
    /// Backends at most, over all services.
    pub backends: u32,
    /// Maglev ring size M, prime; each service holds two rows of M slots.
    pub ring_size: u32,
    /// Connection-table entries.
    pub connections: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: 64,
            backends: 1024,
            ring_size: 65_537,
            connections: 1 << 20,
        }
    }
}

impl Sizes {
    /// The sizes `config`'s `dataplane` section asks for.
    pub fn of(config: &crate::config::Config) -> Self {
        let dataplane = &config.dataplane;
        Self {
            services: dataplane.max_services,
            backends: dataplane.max_backends,
            ring_size: dataplane.ring_size,
            connections: dataplane.connection_table_size,
        }
    }

    /// The maps whose entry count the sizes set, with that count (every
    /// other map keeps the object's).
    pub fn resized_maps(&self) -> [(&'static str, u32); 14] {
        [
            (map_names::HOPS, self.backends),
            (map_names::SERVICE_IDS, self.services),
            (map_names::SERVICES, self.services),
            (map_names::VIPS, self.services),
            (map_names::RR_POS, self.services),
            (map_names::STATS_SERVICES, self.services),
            (map_names::ATTACK_COUNTS, self.services),
            (map_names::ATTACK_BUDGET, self.services),
            (map_names::BACKENDS, self.backends),
            (map_names::NAT, self.backends),
            (map_names::STATS_BACKENDS, self.backends),
            (map_names::MAGLEV, self.maglev_entries()),
            (map_names::CONNS, self.connections),
            (map_names::CONNS_V4, self.connections),
        ]
    }

    /// Entries of `MAGLEV`: two rows of `ring_size` per service.
    pub fn maglev_entries(&self) -> u32 {
        self.services
            .saturating_mul(2)
            .saturating_mul(self.ring_size)
    }

    /// The smallest sizes that still load: for `lb_decap`, which uses none.
    pub const MINIMAL: Sizes = Sizes {
        services: 1,
        backends: 1,
        ring_size: 2,
        connections: 1,
    };
}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic where the driver has none.
    #[default]
    Auto,
    /// Native XDP or fail.
    Native,
    /// Generic (SKB) XDP.
    Generic,
}

/// Which mode an attachment ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver.
    Native,
    /// In the kernel stack.
    Generic,
}

/// Traffic counters summed over CPUs.
pub type TrafficCounters = Traffic;

/// The loaded XDP object and its maps.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    sizes: Sizes,
    program: &'static str,
}

impl Dataplane {
    /// Loads the embedded object with `sizes`, and loads (verifies) the
    /// balancer program. Nothing is attached yet.
    pub fn load(sizes: Sizes) -> Result<Self, DataplaneError> {
        Self::load_program(OBJECT, sizes, program_names::BALANCER)
    }

    /// Loads the embedded object with minimal map sizes and verifies
    /// `lb_decap`, for backends.
    pub fn load_decap() -> Result<Self, DataplaneError> {
        Self::load_program(OBJECT, Sizes::MINIMAL, program_names::DECAP)
    }

    /// Loads `program` of `object` (tests, benchmarks).
    pub fn load_program(
        object: &[u8],
        sizes: Sizes,
        program: &'static str,
    ) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.resized_maps() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(object)?;
        xdp_mut(&mut ebpf, program)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program,
                source,
            })?;
        Ok(Self {
            ebpf,
            sizes,
            program,
        })
    }

    /// The sizes the maps were created with.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    /// The loaded program, for attaching or `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        let name = self.program;
        let program = self.ebpf.program(name).ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attaches the program to `interface`.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachedMode), DataplaneError> {
        let name = self.program;
        let program = xdp_mut(&mut self.ebpf, name)?;
        let wrap = |source| DataplaneError::Program { name, source };
        match mode {
            AttachMode::Native => program
                .attach(interface, XdpMode::Driver)
                .map(|id| (id, AttachedMode::Native))
                .map_err(wrap),
            AttachMode::Generic => program
                .attach(interface, XdpMode::Skb)
                .map(|id| (id, AttachedMode::Generic))
                .map_err(wrap),
            AttachMode::Auto => match program.attach(interface, XdpMode::Driver) {
                Ok(id) => Ok((id, AttachedMode::Native)),
                Err(native) => {
                    tracing::warn!(
                        interface,
                        error = %native,
                        "native XDP unavailable, falling back to generic (slower) mode"
                    );
                    program
                        .attach(interface, XdpMode::Skb)
                        .map(|id| (id, AttachedMode::Generic))
                        .map_err(wrap)
                }
            },
        }
    }

    /// Writes the runtime settings.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError> {
        let name = map_names::SETTINGS;
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(0, settings, 0).map_err(map_error(name))
    }

    /// Adds or replaces a service (and its `SERVICE_IDS` slot, which the
    /// data path reads for established flows).
    pub fn insert_service(
        &mut self,
        key: &ServiceKey,
        value: &ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.hash_map::<ServiceKey, ServiceValue>(map_names::SERVICES)?
            .insert(key, value, 0)
            .map_err(map_error(map_names::SERVICES))?;
        self.set_service_slot(
            value.id,
            &ServiceSlot {
                key: *key,
                value: *value,
            },
        )
    }

    /// Removes a service, and empties its `SERVICE_IDS` slot. A failed read
    /// of the service (for its id) fails the removal before anything is
    /// removed: taken for an absent service, it would leave the slot naming
    /// a removed service.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let mut services = self.hash_map::<ServiceKey, ServiceValue>(map_names::SERVICES)?;
        let id = found(services.get(key, 0))
            .map_err(map_error(map_names::SERVICES))?
            .map(|value| value.id);
        removed(services.remove(key)).map_err(map_error(map_names::SERVICES))?;
        match id {
            Some(id) => self.set_service_slot(id, &ServiceSlot::default()),
            None => Ok(()),
        }
    }

    fn set_service_slot(&mut self, id: u32, slot: &ServiceSlot) -> Result<(), DataplaneError> {
        let name = map_names::SERVICE_IDS;
        let mut slots: Array<&mut MapData, ServiceSlot> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        slots.set(id, slot, 0).map_err(map_error(name))
    }

    /// Adds or replaces a VIP entry (its `VIP_FILTER` bit first, so the
    /// filter never hides a VIP the map holds).
    pub fn insert_vip(&mut self, vip: &Addr, value: &VipValue) -> Result<(), DataplaneError> {
        self.set_filter_bit(map_names::VIP_FILTER, vip)?;
        self.hash_map::<Addr, VipValue>(map_names::VIPS)?
            .insert(vip, value, 0)
            .map_err(map_error(map_names::VIPS))
    }

    /// Removes a VIP entry.
    pub fn remove_vip(&mut self, vip: &Addr) -> Result<(), DataplaneError> {
        removed(
            self.hash_map::<Addr, VipValue>(map_names::VIPS)?
                .remove(vip),
        )
        .map_err(map_error(map_names::VIPS))
    }

    /// Writes backend `id`.
    pub fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), DataplaneError> {
        let name = map_names::BACKENDS;
        let mut array: Array<&mut MapData, BackendValue> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(id, value, 0).map_err(map_error(name))
    }

    /// Writes `slots` (slot, backend id) of MAGLEV row `row`.
    pub fn set_maglev_slots(
        &mut self,
        row: u32,
        slots: impl IntoIterator<Item = (u32, u32)>,
    ) -> Result<(), DataplaneError> {
        let name = map_names::MAGLEV;
        let ring_size = self.sizes.ring_size;
        let (keys, values): (Vec<u32>, Vec<u32>) = slots
            .into_iter()
            .map(|(slot, id)| (row * ring_size + slot, id))
            .unzip();
        if keys.is_empty() {
            return Ok(());
        }
        // One system call for the whole row (a start writes every slot of
        // every service: one call per slot took minutes for a thousand
        // services); per slot where the kernel has no batch updates.
        if let aya::maps::Map::Array(data) = self.map(name)? {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = data.fd().as_fd().as_raw_fd();
            // Through memory where the map allows it (a map pinned by an
            // older lb does not), else one call per row.
            if write_mapped(fd, &keys, &values).is_ok() || update_batch(fd, &keys, &values).is_ok()
            {
                return Ok(());
            }
        }
        let mut array: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        for (slot, id) in keys
            .into_iter()
            .zip(values)
            .map(|(key, id)| (key - row * ring_size, id))
        {
            array
                .set(row * ring_size + slot, id, 0)
                .map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Adds or replaces a reply-path entry (its `NAT_FILTER` bit first).
    pub fn insert_nat(&mut self, key: &Endpoint, value: &NatValue) -> Result<(), DataplaneError> {
        self.set_filter_bit(map_names::NAT_FILTER, &key.addr)?;
        self.hash_map::<Endpoint, NatValue>(map_names::NAT)?
            .insert(key, value, 0)
            .map_err(map_error(map_names::NAT))
    }

    /// Removes a reply-path entry.
    pub fn remove_nat(&mut self, key: &Endpoint) -> Result<(), DataplaneError> {
        removed(
            self.hash_map::<Endpoint, NatValue>(map_names::NAT)?
                .remove(key),
        )
        .map_err(map_error(map_names::NAT))
    }

    /// Sets `addr`'s bit in the address filter `name`.
    fn set_filter_bit(&mut self, name: &'static str, addr: &Addr) -> Result<(), DataplaneError> {
        let bit = filter_bit(addr);
        let mut array: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        let word = array.get(&(bit >> 6), 0).map_err(map_error(name))?;
        let set = word | (1u64 << (bit & 63));
        if set != word {
            array.set(bit >> 6, set, 0).map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Recomputes what the data path derives from other maps: the
    /// `SERVICE_IDS` slots from `SERVICES` (for a data plane taken over from
    /// an lb that had none; `insert_service` / `remove_service` keep them
    /// after that), and the address filters (see
    /// `rebuild_filters`).
    pub fn rebuild_indexes(&mut self) -> Result<(), DataplaneError> {
        let services: Vec<(ServiceKey, ServiceValue)> = self
            .hash_map::<ServiceKey, ServiceValue>(map_names::SERVICES)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(map_names::SERVICES))?;
        let mut slots = vec![ServiceSlot::default(); self.sizes.services as usize];
        for (key, value) in services {
            if let Some(slot) = slots.get_mut(value.id as usize) {
                *slot = ServiceSlot { key, value };
            }
        }
        for (id, slot) in (0u32..).zip(&slots) {
            self.set_service_slot(id, slot)?;
        }
        self.rebuild_filters()
    }

    /// Recomputes both address filters from the maps they cover, clearing
    /// the bits of removed VIPs and NAT backends (a stale bit only costs a
    /// hash lookup; a missing one would hide an entry, so bits are set
    /// before entries are added and cleared only here, after removals).
    fn rebuild_filters(&mut self) -> Result<(), DataplaneError> {
        let vips: Vec<Addr> = self
            .hash_map::<Addr, VipValue>(map_names::VIPS)?
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(map_names::VIPS))?;
        let nat: Vec<Addr> = self
            .hash_map::<Endpoint, NatValue>(map_names::NAT)?
            .keys()
            .map(|key| key.map(|key| key.addr))
            .collect::<Result<_, _>>()
            .map_err(map_error(map_names::NAT))?;
        for (name, addrs) in [(map_names::VIP_FILTER, vips), (map_names::NAT_FILTER, nat)] {
            let mut words = vec![0u64; FILTER_WORDS as usize];
            for addr in &addrs {
                let bit = filter_bit(addr);
                words[(bit >> 6) as usize] |= 1u64 << (bit & 63);
            }
            let mut array: Array<&mut MapData, u64> =
                Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
            for (index, want) in (0u32..).zip(words) {
                if array.get(&index, 0).map_err(map_error(name))? != want {
                    array.set(index, want, 0).map_err(map_error(name))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the cached next hop of backend `id` (`HopValue::default()`
    /// clears it: the data path then asks the FIB).
    pub fn set_hop(&mut self, id: u32, hop: &HopValue) -> Result<(), DataplaneError> {
        let name = map_names::HOPS;
        let mut array: Array<&mut MapData, HopValue> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(id, hop, 0).map_err(map_error(name))
    }

    /// Writes a `ROUTES` prefix (map form: IPv4 mapped, length + 96) and its
    /// hop (`HopValue::default()`: the FIB decides for it).
    pub fn set_route(
        &mut self,
        prefix: &Addr,
        prefix_len: u32,
        hop: &HopValue,
    ) -> Result<(), DataplaneError> {
        let name = map_names::ROUTES;
        let mut routes: LpmTrie<&mut MapData, Addr, HopValue> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        routes
            .insert(&LpmKey::new(prefix_len, *prefix), hop, 0)
            .map_err(map_error(name))
    }

    /// Removes a `ROUTES` prefix.
    pub fn remove_route(&mut self, prefix: &Addr, prefix_len: u32) -> Result<(), DataplaneError> {
        let name = map_names::ROUTES;
        let mut routes: LpmTrie<&mut MapData, Addr, HopValue> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        removed(routes.remove(&LpmKey::new(prefix_len, *prefix))).map_err(map_error(name))
    }

    /// The cached next hop of backend `id`.
    pub fn hop(&self, id: u32) -> Result<HopValue, DataplaneError> {
        let name = map_names::HOPS;
        let array: Array<&MapData, HopValue> =
            Array::try_from(self.map(name)?).map_err(map_error(name))?;
        array.get(&id, 0).map_err(map_error(name))
    }

    /// Adds a deny-list prefix for `origin` (`DENY_CONFIGURED` or
    /// `DENY_RUNTIME`), keeping any other origin's bit.
    pub fn insert_deny(
        &mut self,
        addr: &Addr,
        prefix_len: u32,
        origin: u8,
    ) -> Result<(), DataplaneError> {
        let key = LpmKey::new(prefix_len, *addr);
        let mut trie = self.deny_trie()?;
        let value = deny_origins(&trie, &key)? | origin;
        trie.insert(&key, value, 0)
            .map_err(map_error(map_names::DENY))
    }

    /// Takes `origin`'s bit off a deny-list prefix; the prefix goes when no
    /// origin is left.
    pub fn remove_deny(
        &mut self,
        addr: &Addr,
        prefix_len: u32,
        origin: u8,
    ) -> Result<(), DataplaneError> {
        let key = LpmKey::new(prefix_len, *addr);
        let mut trie = self.deny_trie()?;
        let origins = deny_origins(&trie, &key)?;
        if origins == 0 {
            return Ok(());
        }
        let left = origins & !origin;
        if left == 0 {
            trie.remove(&key)
        } else {
            trie.insert(&key, left, 0)
        }
        .map_err(map_error(map_names::DENY))
    }

    /// Writes the automatic guard's thresholds (read by the data path only
    /// while `SETTINGS_GUARD` is set).
    pub fn set_guard_settings(&mut self, guard: &GuardSettings) -> Result<(), DataplaneError> {
        let name = map_names::GUARD_SETTINGS;
        let mut array: Array<&mut MapData, GuardSettings> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(0, guard, 0).map_err(map_error(name))
    }

    /// The automatic guard's current denials (`GUARD_DENIED`), expired
    /// ones included. An entry evicted during the walk is skipped.
    pub fn guard_denials(&self) -> Result<Vec<(Addr, GuardDenial)>, DataplaneError> {
        let name = map_names::GUARD_DENIED;
        let map: HashMap<&MapData, Addr, GuardDenial> =
            HashMap::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Lets `source` in again before its denial expires.
    pub fn remove_guard_denial(&mut self, source: &Addr) -> Result<(), DataplaneError> {
        let name = map_names::GUARD_DENIED;
        // Gone already (expired and removed by the data path) is done.
        removed(self.hash_map::<Addr, GuardDenial>(name)?.remove(source)).map_err(map_error(name))
    }

    fn deny_trie(&mut self) -> Result<LpmTrie<&mut MapData, Addr, u8>, DataplaneError> {
        let name = map_names::DENY;
        LpmTrie::try_from(self.map_mut(name)?).map_err(map_error(name))
    }

    /// Records the MAC address of an interface the balancer is attached to:
    /// in `IFACES`, and in its `IFACE_SLOTS` slot unless another interface
    /// holds that one (the data path then asks `IFACES`).
    pub fn insert_iface(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.hash_map::<u32, IfaceValue>(map_names::IFACES)?
            .insert(ifindex, IfaceValue { mac, pad: [0; 2] }, 0)
            .map_err(map_error(map_names::IFACES))?;
        let name = map_names::IFACE_SLOTS;
        let mut slots: Array<&mut MapData, IfaceSlot> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        let index = ifindex % lb_common::maps::IFACE_SLOTS;
        let held = slots.get(&index, 0).map_err(map_error(name))?;
        if held.ifindex == 0 || held.ifindex == ifindex {
            let slot = IfaceSlot {
                ifindex,
                mac,
                pad: [0; 2],
            };
            slots.set(index, slot, 0).map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Allows redirects to `ifindex`.
    pub fn insert_devmap(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let name = map_names::DEVMAP;
        let mut devmap: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        Ok(devmap.insert(ifindex, ifindex, None, 0)?)
    }

    /// Writes `lb trace`'s filters and rate limit (read by the data path
    /// only while `SETTINGS_TRACE` is set).
    pub fn set_trace_settings(
        &mut self,
        trace: &lb_common::trace::TraceSettings,
    ) -> Result<(), DataplaneError> {
        let name = map_names::TRACE_SETTINGS;
        let mut array: Array<&mut MapData, lb_common::trace::TraceSettings> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        array.set(0, trace, 0).map_err(map_error(name))
    }

    /// Takes the trace's ring buffer and state out of the object, for the
    /// thread that reads them (`crate::trace::hub`); once only.
    pub fn take_trace(&mut self) -> Result<crate::trace::hub::Kernel, DataplaneError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
        };
        let events = take(&mut self.ebpf, map_names::TRACE_EVENTS)?;
        let state = take(&mut self.ebpf, map_names::TRACE_STATE)?;
        Ok(crate::trace::hub::Kernel {
            events: aya::maps::RingBuf::try_from(events)
                .map_err(map_error(map_names::TRACE_EVENTS))?,
            state: PerCpuArray::try_from(state).map_err(map_error(map_names::TRACE_STATE))?,
        })
    }

    /// Takes connection sync's ring buffer and lost-event counter out of
    /// the object, for the thread that reads them; once only.
    pub fn take_sync(&mut self) -> Result<SyncKernel, DataplaneError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
        };
        let events = take(&mut self.ebpf, map_names::SYNC_EVENTS)?;
        let lost = take(&mut self.ebpf, map_names::SYNC_LOST)?;
        Ok(SyncKernel {
            events: aya::maps::RingBuf::try_from(events)
                .map_err(map_error(map_names::SYNC_EVENTS))?,
            lost: PerCpuArray::try_from(lost).map_err(map_error(map_names::SYNC_LOST))?,
        })
    }

    /// The verdict-reason counters, summed over CPUs.
    pub fn reason_counters(&self) -> Result<BTreeMap<Reason, u64>, DataplaneError> {
        let name = map_names::STATS_REASONS;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_error(name))?;
        let mut counters = BTreeMap::new();
        for &reason in Reason::ALL {
            if reason as u32 >= array.len() {
                // A data plane pinned by an lb with fewer reasons (adopted):
                // its program never counts this one.
                counters.insert(reason, 0);
                continue;
            }
            let per_cpu = array.get(&(reason as u32), 0).map_err(map_error(name))?;
            counters.insert(reason, per_cpu.iter().sum());
        }
        Ok(counters)
    }

    /// Traffic of service `id`, summed over CPUs.
    pub fn service_traffic(&self, id: u32) -> Result<Traffic, DataplaneError> {
        self.traffic(map_names::STATS_SERVICES, id)
    }

    /// Traffic of backend `id`, summed over CPUs.
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic, DataplaneError> {
        self.traffic(map_names::STATS_BACKENDS, id)
    }

    /// Flows scheduled over every service slot (`new_flows` of
    /// `STATS_SERVICES`, summed over CPUs and ids, whether planned now or
    /// not): each inserted a key into the connection table.
    pub fn scheduled_flows(&self) -> Result<u64, DataplaneError> {
        let name = map_names::STATS_SERVICES;
        let array: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_error(name))?;
        let mut sum = 0u64;
        for id in 0..array.len() {
            let per_cpu = array.get(&id, 0).map_err(map_error(name))?;
            sum = per_cpu
                .iter()
                .fold(sum, |sum, cpu| sum.wrapping_add(cpu.new_flows));
        }
        Ok(sum)
    }

    fn traffic(&self, name: &'static str, id: u32) -> Result<Traffic, DataplaneError> {
        let array: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_error(name))?;
        let per_cpu = array.get(&id, 0).map_err(map_error(name))?;
        Ok(per_cpu.iter().fold(Traffic::default(), |sum, cpu| Traffic {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
            new_flows: sum.new_flows + cpu.new_flows,
            closed_flows: sum.closed_flows + cpu.closed_flows,
        }))
    }

    /// Map `name` of the loaded object, for readers outside this module
    /// (`crate::route::maps`).
    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    pub(crate) fn map_mut(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        HashMap::try_from(self.map_mut(name)?).map_err(map_error(name))
    }
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Program {
        name,
        source: ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// The origins (`DENY_*` bits) of a deny-list prefix; 0 if it is absent.
fn deny_origins(
    trie: &LpmTrie<&mut MapData, Addr, u8>,
    key: &LpmKey<Addr>,
) -> Result<u8, DataplaneError> {
    match trie.get(key, 0) {
        Ok(origins) => Ok(origins),
        Err(MapError::KeyNotFound) => Ok(0),
        Err(source) => Err(DataplaneError::Map {
            name: map_names::DENY,
            source,
        }),
    }
}
/// A lookup's answer: the value, `None` where the kernel's own lookup finds
/// nothing (a hash key absent, an array index past its end), or the error:
/// a failed read is never taken for an absent entry.
pub(crate) fn found<V>(result: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound | MapError::OutOfBounds { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A removal's outcome, an entry already absent counting as removed: the
/// undo of a write that failed removes what that write never added, and
/// the data path may have removed an entry first. `bpf_map_delete_elem`
/// says ENOENT, which aya passes on as a syscall error.
fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Applies planned writes in order.
    pub fn apply(&mut self, writes: &[crate::plan::Write]) -> Result<(), DataplaneError> {
        use crate::plan::Write;
        let mut removed_address = false;
        for write in writes {
            removed_address |= matches!(write, Write::RemoveVip(_) | Write::RemoveNat(_));
            match write {
                Write::Backend(id, value) => self.set_backend(*id, value)?,
                Write::MaglevSlots { row, slots } => {
                    self.set_maglev_slots(*row, slots.iter().copied())?;
                }
                Write::MaglevRow { row, table } => {
                    self.set_maglev_slots(*row, (0u32..).zip(table.iter()))?;
                }
                Write::Service(key, value) => self.insert_service(key, value)?,
                Write::RemoveService(key) => self.remove_service(key)?,
                Write::Vip(addr, value) => self.insert_vip(addr, value)?,
                Write::RemoveVip(addr) => self.remove_vip(addr)?,
                Write::Nat(key, value) => self.insert_nat(key, value)?,
                Write::RemoveNat(key) => self.remove_nat(key)?,
                Write::Deny(addr, len) => self.insert_deny(addr, *len, DENY_CONFIGURED)?,
                Write::RemoveDeny(addr, len) => self.remove_deny(addr, *len, DENY_CONFIGURED)?,
            }
        }
        if removed_address {
            self.rebuild_filters()?;
        }
        Ok(())
    }
}

/// Writes `u32` `values` at `keys` of the `BPF_F_MMAPABLE` array `fd`
/// through a shared mapping of just the pages they fall in (mapped for the
/// call only, so the map's memory never counts in this process's). Each
/// slot is one aligned 4-byte store, as a map update is. An error if the
/// map cannot be mapped (not mappable: the caller uses system calls).
fn write_mapped(fd: std::os::fd::RawFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    /// An array's element stride: the value size rounded up to 8.
    const STRIDE: usize = 8;
    let (Some(&low), Some(&high)) = (keys.iter().min(), keys.iter().max()) else {
        return Ok(());
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let start = low as usize * STRIDE / page * page;
    let end = (high as usize + 1) * STRIDE;
    let len = end - start;
    let offset = libc::off_t::try_from(start)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a fresh shared mapping of the map's pages [start, end); the
    // kernel refuses one past the map's end or of a map not mappable.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "the mapping is page-aligned and each slot 8-aligned in it"
    )]
    let slots = base.cast::<u32>();
    for (&key, &value) in keys.iter().zip(values) {
        let at = (key as usize * STRIDE - start) / 4;
        // SAFETY: `at` is within the mapping (keys lie in [low, high]) and
        // 8-aligned; the data path reads the slot concurrently, as it does
        // during a map update.
        unsafe { std::ptr::write_volatile(slots.add(at), value) };
    }
    // SAFETY: the mapping made above, of `len` bytes.
    unsafe { libc::munmap(base, len) };
    Ok(())
}

/// `BPF_MAP_UPDATE_BATCH` of `u32` keys to `u32` values on the map `fd`
/// (kernels from 5.6 on), in chunks; an error if the kernel refuses it
/// (the caller then writes element by element, which is always right:
/// a partial batch wrote only values the caller writes again).
fn update_batch(fd: std::os::fd::RawFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    use crate::conns::BatchAttr;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const CHUNK: usize = 1 << 16;
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) reads `count` keys and values from the two
        // slices, which outlive the call, and writes back `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Dataplane {
    /// Moves an attachment into bpffs at `path`, so it outlives this process
    /// (`lb decap attach` exits, the program stays).
    pub fn pin_link(&mut self, link: XdpLinkId, path: &std::path::Path) -> anyhow::Result<()> {
        let name = self.program;
        let link = xdp_mut(&mut self.ebpf, name)?
            .take_link(link)
            .map_err(|source| DataplaneError::Program { name, source })?;
        let fd_link: aya::programs::links::FdLink = link
            .try_into()
            .map_err(|e| anyhow::anyhow!("the attachment is not a bpf_link: {e}"))?;
        fd_link
            .pin(path)
            .map_err(|e| anyhow::anyhow!("pinning {}: {e}", path.display()))?;
        Ok(())
    }
}

/// Removes an attachment pinned by [`Dataplane::pin_link`]: the program
/// detaches when the last reference goes.
pub fn unpin_link(path: &std::path::Path) -> anyhow::Result<()> {
    let pinned = aya::programs::links::PinnedLink::from_pin(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let link = pinned
        .unpin()
        .map_err(|e| anyhow::anyhow!("unpinning {}: {e}", path.display()))?;
    drop(link);
    Ok(())
}

impl Dataplane {
    /// Benchmarks: loads `lb_bench` and `lb_bench_baseline` next to the
    /// program under test, points the wrapper at it and saves `frame` (at
    /// most `BENCH_WORDS * 8` bytes; zero-padded to a multiple of 8) for the
    /// wrapper to restore before every run. Returns the padded frame.
    pub fn prepare_bench(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.prepare_bench_of(self.program, frame)
    }

    /// As [`Dataplane::prepare_bench`], with the wrapper pointed at the
    /// program `target` of the same object (the balancer, or `lb_floor`).
    pub fn prepare_bench_of(
        &mut self,
        target: &'static str,
        frame: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        self.prepare_bench_varied(target, frame, 0, 0)
    }

    /// As [`Dataplane::prepare_bench_of`]; with `vary` (the offset of the
    /// frame's IPv4 header, followed by TCP) non-zero, every restore gives
    /// the frame a fresh source address, source port and sequence number
    /// (`BenchFrame::vary`): each run is a new tuple. `runs` is where the
    /// tuples start: a case timed again after others passes what
    /// [`Dataplane::bench_runs`] said when it last stopped, so no tuple
    /// repeats.
    pub fn prepare_bench_varied(
        &mut self,
        target: &'static str,
        frame: &[u8],
        vary: u32,
        runs: u64,
    ) -> anyhow::Result<Vec<u8>> {
        use lb_common::maps::{BENCH_WORDS, BenchFrame};
        let mut padded = frame.to_vec();
        padded.resize(frame.len().div_ceil(8) * 8, 0);
        anyhow::ensure!(padded.len() <= BENCH_WORDS * 8, "bench frame too long");
        let mut words = [0u64; BENCH_WORDS];
        for (word, chunk) in words.iter_mut().zip(padded.chunks(8)) {
            *word = u64::from_ne_bytes(chunk.try_into()?);
        }
        let saved = BenchFrame {
            len: u32::try_from(padded.len())?,
            vary,
            runs,
            words,
        };
        for name in [
            program_names::BENCH,
            program_names::BENCH_BASELINE,
            program_names::FLOOR,
            target,
        ] {
            let program = xdp_mut(&mut self.ebpf, name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .map_err(|source| DataplaneError::Program { name, source })?;
            }
        }
        let target = self.bench_program(target)?.fd()?.try_clone()?;
        let mut targets: aya::maps::ProgramArray<&mut MapData> =
            aya::maps::ProgramArray::try_from(self.map_mut(map_names::BENCH_TARGET)?)?;
        targets.set(0, &target, 0)?;
        let mut frames: Array<&mut MapData, BenchFrame> =
            Array::try_from(self.map_mut(map_names::BENCH_FRAME)?)?;
        frames.set(0, saved, 0)?;
        Ok(padded)
    }

    /// Benchmarks: restores of the saved frame so far (counted while it
    /// varies; see [`Dataplane::prepare_bench_varied`]).
    pub fn bench_runs(&self) -> anyhow::Result<u64> {
        use lb_common::maps::BenchFrame;
        let frames: Array<&MapData, BenchFrame> =
            Array::try_from(self.map(map_names::BENCH_FRAME)?)?;
        Ok(frames.get(&0, 0)?.runs)
    }

    /// Benchmarks: puts one flow in the reference balancer's table
    /// (`lb_ref_tunnel`, `lb_ref_nat`).
    pub fn set_reference_flow(
        &mut self,
        key: &lb_common::maps::RefKey,
        value: &lb_common::maps::RefValue,
    ) -> Result<(), DataplaneError> {
        self.hash_map::<lb_common::maps::RefKey, lb_common::maps::RefValue>(map_names::REF_FLOWS)?
            .insert(key, value, 0)
            .map_err(map_error(map_names::REF_FLOWS))
    }

    /// Benchmarks: where `lb_floor_fwd` (loaded with
    /// [`Dataplane::load_program`]) sends frames for `vip`.
    pub fn set_floor_hop(
        &mut self,
        vip: std::net::Ipv4Addr,
        smac: [u8; 6],
        dmac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        let name = map_names::FLOOR_HOP;
        let mut array: Array<&mut MapData, lb_common::maps::FloorHop> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        let hop = lb_common::maps::FloorHop {
            vip: vip.octets(),
            dmac,
            smac,
        };
        array.set(0, hop, 0).map_err(map_error(name))
    }

    /// A benchmark program loaded by [`Dataplane::prepare_bench`].
    pub fn bench_program(&self, name: &'static str) -> Result<&Xdp, DataplaneError> {
        let program = self.ebpf.program(name).ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }
}

/// Connection sync's side of the data path ([`Dataplane::take_sync`]).
pub struct SyncKernel {
    /// `SYNC_EVENTS`: a [`lb_common::maps::SyncEvent`] per flow scheduled
    /// while `SETTINGS_SYNC` is set.
    pub events: aya::maps::RingBuf<MapData>,
    /// `SYNC_LOST`: events a full ring refused, per CPU.
    pub lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for SyncKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncKernel").finish_non_exhaustive()
    }
}

impl SyncKernel {
    /// The events waiting in the ring, oldest first.
    pub fn drain(&mut self) -> Vec<lb_common::maps::SyncEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<lb_common::maps::SyncEvent>() {
                // SAFETY: the record is a `SyncEvent` the program wrote
                // (size checked); read unaligned from the ring's bytes.
                events.push(unsafe {
                    item.as_ptr()
                        .cast::<lb_common::maps::SyncEvent>()
                        .read_unaligned()
                });
            }
        }
        events
    }

    /// Events lost to a full ring, summed over CPUs.
    ///
    /// # Errors
    /// The map could not be read.
    pub fn lost(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .lost
            .get(&0, 0)
            .map_err(map_error(map_names::SYNC_LOST))?;
        Ok(per_cpu.iter().sum())
    }
}

/// Every map of the object, pinned by `lb run` so the data plane outlives
/// the controller.
const PINNED_MAPS: &[&str] = &[
    map_names::SERVICES,
    map_names::VIPS,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::CONNS,
    map_names::CONNS_V4,
    map_names::NAT,
    map_names::NAT_OUTBOUND,
    map_names::RR_POS,
    map_names::SETTINGS,
    map_names::DEVMAP,
    map_names::IFACES,
    map_names::STATS_REASONS,
    map_names::STATS_SERVICES,
    map_names::STATS_BACKENDS,
    map_names::DENY,
    map_names::RATE,
    map_names::GUARD_SETTINGS,
    map_names::GUARD_COUNTS,
    map_names::GUARD_DENIED,
    map_names::HOPS,
    map_names::ROUTES,
    map_names::SERVICE_IDS,
    map_names::IFACE_SLOTS,
    map_names::VIP_FILTER,
    map_names::NAT_FILTER,
    map_names::ATTACK_COUNTS,
    map_names::ATTACK_VIPS,
    map_names::ATTACK_VERIFIED,
    map_names::ATTACK_PENDING,
    map_names::ATTACK_BUDGET,
];

/// What [`Dataplane::attach_pinned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Took over a pinned attachment: the new program replaced the old one
    /// atomically, no packet saw an unattached interface.
    Adopted,
    /// Attached afresh (and pinned) in this mode.
    Attached(AttachedMode),
}

/// bpffs directory of every lb instance (`<PIN_ROOT>/<instance>`).
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb";

/// The pin path of the attachment to `interface` under `pin_dir`.
pub fn link_pin(pin_dir: &std::path::Path, interface: &str) -> std::path::PathBuf {
    pin_dir.join(format!("link-{interface}"))
}

/// Whether `pin_dir` holds a pinned data plane (its maps) to take over.
pub fn is_pinned(pin_dir: &std::path::Path) -> bool {
    pin_dir.join(map_names::SERVICES).exists()
}

impl Dataplane {
    /// Loads the balancer with its maps pinned under `pin_dir`. Maps already
    /// pinned there (a previous controller's, still forwarding) are reused
    /// with their contents; returns whether that was the case. Pinned maps
    /// of other sizes are refused: resizing needs `lb detach` first.
    pub fn load_pinned(sizes: Sizes, pin_dir: &std::path::Path) -> anyhow::Result<(Self, bool)> {
        use anyhow::Context as _;
        let adopted = is_pinned(pin_dir);
        if adopted {
            for (name, want) in [
                (map_names::SERVICES, sizes.services),
                (map_names::BACKENDS, sizes.backends),
                (map_names::MAGLEV, sizes.maglev_entries()),
                (map_names::CONNS, sizes.connections),
                (map_names::CONNS_V4, sizes.connections),
            ] {
                let path = pin_dir.join(name);
                // A data plane pinned by an lb without this map (CONNS_V4
                // came later) gets it created by the loader.
                if !path.exists() {
                    continue;
                }
                let info = aya::maps::MapInfo::from_pin(path)
                    .with_context(|| format!("reading pinned map {name}"))?;
                anyhow::ensure!(
                    info.max_entries() == want,
                    "the pinned data plane in {} was created with other sizes ({name}: {} \
                     entries, configured {want}); restore the sizes, or `lb detach` it first \
                     (interrupts traffic)",
                    pin_dir.display(),
                    info.max_entries()
                );
            }
            // ATTACK_PENDING was an LRU hash before it became an array of
            // `PENDING_SLOTS`: an older lb's pin is dropped (seconds' worth
            // of pending SYNs, whose retransmissions then count as first
            // SYNs) and the loader creates the array.
            let pending = pin_dir.join(map_names::ATTACK_PENDING);
            if pending.exists() {
                let info = aya::maps::MapInfo::from_pin(&pending)
                    .with_context(|| format!("reading pinned map {}", pending.display()))?;
                if !matches!(info.map_type(), Ok(aya::maps::MapType::Array))
                    || info.max_entries() != lb_common::attack::PENDING_SLOTS
                {
                    std::fs::remove_file(&pending)
                        .with_context(|| format!("removing {}", pending.display()))?;
                }
            }
        } else {
            std::fs::create_dir_all(pin_dir)
                .with_context(|| format!("creating {}", pin_dir.display()))?;
        }
        let paths: Vec<(&str, std::path::PathBuf)> = PINNED_MAPS
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.resized_maps() {
            loader.map_max_entries(name, entries);
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let program = program_names::BALANCER;
        xdp_mut(&mut ebpf, program)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program,
                source,
            })?;
        Ok((
            Self {
                ebpf,
                sizes,
                program,
            },
            adopted,
        ))
    }

    /// Attaches to `interface`, or takes over the attachment pinned there by
    /// an earlier controller (atomic program replacement). Fresh attachments
    /// are pinned so they outlive this process.
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
        pin_dir: &std::path::Path,
    ) -> anyhow::Result<Attachment> {
        use aya::programs::links::{FdLink, PinnedLink};
        let pin = link_pin(pin_dir, interface);
        let name = self.program;
        if pin.exists() {
            let pinned = PinnedLink::from_pin(&pin)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", pin.display()))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| anyhow::anyhow!("{} is not an XDP link: {e}", pin.display()))?;
            xdp_mut(&mut self.ebpf, name)?
                .attach_to_link(link)
                .map_err(|source| DataplaneError::Program { name, source })?;
            return Ok(Attachment::Adopted);
        }
        let (link, mode) = self.attach(interface, mode)?;
        self.pin_link(link, &pin)?;
        Ok(Attachment::Attached(mode))
    }

    /// Reads the maps back, for a planner taking over a pinned data plane.
    pub fn snapshot(&self) -> Result<crate::plan::Snapshot, DataplaneError> {
        let mut snapshot = crate::plan::Snapshot::default();
        let services: HashMap<&MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.map(map_names::SERVICES)?)
                .map_err(map_error(map_names::SERVICES))?;
        for entry in &services {
            let (key, value) = entry.map_err(map_error(map_names::SERVICES))?;
            snapshot.services.push((key, value));
        }
        let backends: Array<&MapData, BackendValue> =
            Array::try_from(self.map(map_names::BACKENDS)?)
                .map_err(map_error(map_names::BACKENDS))?;
        for id in 0..self.sizes.backends {
            let value = backends
                .get(&id, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            if value != BackendValue::default() {
                snapshot.backends.push((id, value));
            }
        }
        let vips: HashMap<&MapData, Addr, VipValue> =
            HashMap::try_from(self.map(map_names::VIPS)?).map_err(map_error(map_names::VIPS))?;
        for entry in &vips {
            snapshot
                .vips
                .push(entry.map_err(map_error(map_names::VIPS))?);
        }
        let nat: HashMap<&MapData, Endpoint, NatValue> =
            HashMap::try_from(self.map(map_names::NAT)?).map_err(map_error(map_names::NAT))?;
        for entry in &nat {
            snapshot.nat.push(entry.map_err(map_error(map_names::NAT))?);
        }
        let deny: LpmTrie<&MapData, Addr, u8> =
            LpmTrie::try_from(self.map(map_names::DENY)?).map_err(map_error(map_names::DENY))?;
        for entry in &deny {
            let (key, origin) = entry.map_err(map_error(map_names::DENY))?;
            let prefix = (key.data(), key.prefix_len());
            // An older lb wrote 1 (`DENY_CONFIGURED`) for either origin.
            if origin & DENY_CONFIGURED != 0 {
                snapshot.deny.push(prefix);
            }
            if origin & DENY_RUNTIME != 0 {
                snapshot.runtime_deny.push(prefix);
            }
        }
        let maglev: Array<&MapData, u32> =
            Array::try_from(self.map(map_names::MAGLEV)?).map_err(map_error(map_names::MAGLEV))?;
        let ring = self.sizes.ring_size;
        for (_, service) in &snapshot.services {
            for half in 0..2 {
                let row = service.id * 2 + half;
                let mut slots = Vec::with_capacity(ring as usize);
                for slot in 0..ring {
                    slots.push(
                        maglev
                            .get(&(row * ring + slot), 0)
                            .map_err(map_error(map_names::MAGLEV))?,
                    );
                }
                snapshot.rows.push((row, slots));
            }
        }
        Ok(snapshot)
    }
}

/// Removes the pinned data plane of an instance: its attachments first
/// (which detaches the program), then its maps. Returns the interfaces it
/// detached from. Nothing pinned: nothing to do.
pub fn unpin_all(pin_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    let mut detached = Vec::new();
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(detached);
    };
    let mut maps = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", pin_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix("link-") {
            unpin_link(&entry.path())?;
            detached.push(interface.to_string());
        } else {
            maps.push(entry.path());
        }
    }
    for map in maps {
        std::fs::remove_file(&map).with_context(|| format!("removing {}", map.display()))?;
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(detached)
}

impl Dataplane {
    /// Descriptors of the connection tables (IPv4 and IPv6) of their own,
    /// so they can be walked (`ConnTable::count_active`) without holding
    /// the controller.
    pub fn conn_table(&self) -> Result<crate::conns::ConnTable, DataplaneError> {
        Ok(crate::conns::ConnTable::new(
            self.lru_descriptor(map_names::CONNS_V4)?,
            self.lru_descriptor(map_names::CONNS)?,
        ))
    }

    /// Descriptors of `CONNS_V4` and `CONNS` of their own, for the sync
    /// thread that installs the peers' flows.
    pub fn conn_descriptors(
        &self,
    ) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), DataplaneError> {
        Ok((
            self.lru_descriptor(map_names::CONNS_V4)?,
            self.lru_descriptor(map_names::CONNS)?,
        ))
    }

    /// The keys of one connection map (`CONNS_V4` with [`lb_common::FlowKeyV4`],
    /// `CONNS` with [`lb_common::FlowKey`]), read key by key: for
    /// inspecting a small table.
    pub fn conn_keys<K: aya::Pod>(&self, name: &'static str) -> Result<Vec<K>, DataplaneError> {
        let map = self.map(name)?;
        let table: aya::maps::HashMap<&aya::maps::MapData, K, lb_common::ConnValue> =
            aya::maps::HashMap::try_from(map)
                .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(table.keys().filter_map(Result::ok).collect())
    }

    /// Writes one entry of a connection map (`CONNS_V4` with
    /// [`lb_common::FlowKeyV4`], `CONNS` with [`lb_common::FlowKey`]): for
    /// tests that need an entry as another CPU would have left it.
    pub fn write_conn<K: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
        value: &lb_common::ConnValue,
    ) -> Result<(), DataplaneError> {
        let map = self.map_mut(name)?;
        let mut table: aya::maps::HashMap<&mut aya::maps::MapData, K, lb_common::ConnValue> =
            aya::maps::HashMap::try_from(map)
                .map_err(|source| DataplaneError::Map { name, source })?;
        table
            .insert(key, value, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    fn lru_descriptor(&self, name: &'static str) -> Result<std::os::fd::OwnedFd, DataplaneError> {
        let aya::maps::Map::LruHashMap(data) = self.map(name)? else {
            return Err(DataplaneError::MissingMap(name));
        };
        std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Descriptor { name, source })
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills the timespec it is given.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use aya::sys::SyscallError;

    use super::*;

    fn syscall(call: &'static str, errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call,
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn an_absent_entry_is_none_and_a_failed_read_an_error() {
        assert_eq!(found(Ok::<u32, MapError>(7)).unwrap(), Some(7));
        assert_eq!(found::<u32>(Err(MapError::KeyNotFound)).unwrap(), None);
        let past_the_end = MapError::OutOfBounds {
            index: 9,
            max_entries: 8,
        };
        assert_eq!(found::<u32>(Err(past_the_end)).unwrap(), None);
        // What `.ok()` took for an absent service (and so left its
        // SERVICE_IDS slot behind): a lookup that failed.
        for errno in [libc::EPERM, libc::EFAULT, libc::ENOMEM] {
            let error = found::<u32>(Err(syscall("bpf_map_lookup_elem", errno))).unwrap_err();
            assert!(
                matches!(error, MapError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(errno)),
                "{error:?}"
            );
        }
    }

    #[test]
    fn removing_an_absent_entry_is_done_and_any_other_failure_is_an_error() {
        assert!(removed(Ok(())).is_ok());
        assert!(removed(Err(syscall("bpf_map_delete_elem", libc::ENOENT))).is_ok());
        assert!(removed(Err(MapError::KeyNotFound)).is_ok());
        for errno in [libc::EPERM, libc::EINVAL, libc::E2BIG] {
            assert!(
                removed(Err(syscall("bpf_map_delete_elem", errno))).is_err(),
                "{errno}"
            );
        }
    }
}

//! The kernel side, seen from userspace: loads the embedded XDP object with
//! map sizes chosen at load time, writes the maps, reads the counters, and
//! attaches the balancer to interfaces. No decisions are made here; callers
//! pass fully formed keys and values.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Addr, IfaceValue, Reason, ServiceKey, ServiceValue, VipValue, map_names, program_names,
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// Errors from loading, writing or attaching the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// The object could not be loaded (verifier rejection, missing BTF, no
    /// privileges, ...).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or failed to load or attach.
    #[error("program {name}: {source}")]
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
    /// A map read or write failed.
    #[error("map {name}: {source}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: MapError,
    },
}

/// Map sizes, set at load time rather than compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Entries in `SERVICES`.
    pub services: u32,
    /// Entries in `VIPS`.
    pub vips: u32,
    /// Entries in `IFACES`.
    pub ifaces: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: 256,
            vips: 256,
            ifaces: 64,
        }
    }
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

/// The loaded XDP object and its maps.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the embedded object with `sizes`, and loads (verifies) the
    /// balancer program. Nothing is attached yet.
    pub fn load(sizes: Sizes) -> Result<Self, DataplaneError> {
        Self::load_object(OBJECT, sizes)
    }

    /// As [`Dataplane::load`], for a given object (tests, benchmarks).
    pub fn load_object(object: &[u8], sizes: Sizes) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::VIPS, sizes.vips)
            .map_max_entries(map_names::IFACES, sizes.ifaces)
            .load(object)?;
        let program = balancer_mut(&mut ebpf)?;
        program.load().map_err(|source| DataplaneError::Program {
            name: program_names::BALANCER,
            source,
        })?;
        Ok(Self { ebpf })
    }

    /// The balancer program, for attaching or `BPF_PROG_TEST_RUN`.
    pub fn balancer(&self) -> Result<&Xdp, DataplaneError> {
        let program =
            self.ebpf
                .program(program_names::BALANCER)
                .ok_or(DataplaneError::Program {
                    name: program_names::BALANCER,
                    source: ProgramError::NotLoaded,
                })?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: program_names::BALANCER,
                source,
            })
    }

    /// Attaches the balancer to `interface`.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachedMode), DataplaneError> {
        let program = balancer_mut(&mut self.ebpf)?;
        let wrap = |source| DataplaneError::Program {
            name: program_names::BALANCER,
            source,
        };
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

    /// Detaches one attachment made by [`Dataplane::attach`].
    pub fn detach(&mut self, link: XdpLinkId) -> Result<(), DataplaneError> {
        balancer_mut(&mut self.ebpf)?
            .detach(link)
            .map_err(|source| DataplaneError::Program {
                name: program_names::BALANCER,
                source,
            })
    }

    /// Adds or replaces a service.
    pub fn insert_service(
        &mut self,
        key: ServiceKey,
        value: ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.hash_map::<ServiceKey, ServiceValue>(map_names::SERVICES)?
            .insert(key, value, 0)
            .map_err(map_error(map_names::SERVICES))
    }

    /// Removes a service.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        self.hash_map::<ServiceKey, ServiceValue>(map_names::SERVICES)?
            .remove(key)
            .map_err(map_error(map_names::SERVICES))
    }

    /// Marks `vip` as carrying `services` services.
    pub fn insert_vip(&mut self, vip: Addr, services: u32) -> Result<(), DataplaneError> {
        self.hash_map::<Addr, VipValue>(map_names::VIPS)?
            .insert(vip, VipValue { services }, 0)
            .map_err(map_error(map_names::VIPS))
    }

    /// Records the MAC address of an interface the balancer is attached to.
    pub fn insert_iface(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.hash_map::<u32, IfaceValue>(map_names::IFACES)?
            .insert(ifindex, IfaceValue { mac, pad: [0; 2] }, 0)
            .map_err(map_error(map_names::IFACES))
    }

    /// The verdict-reason counters, summed over CPUs.
    pub fn reason_counters(&self) -> Result<BTreeMap<Reason, u64>, DataplaneError> {
        let name = map_names::STATS_REASONS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error(name))?;
        let mut counters = BTreeMap::new();
        for &reason in Reason::ALL {
            let per_cpu = array.get(&(reason as u32), 0).map_err(map_error(name))?;
            counters.insert(reason, per_cpu.iter().sum());
        }
        Ok(counters)
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        HashMap::try_from(map).map_err(map_error(name))
    }
}

fn balancer_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program = ebpf
        .program_mut(program_names::BALANCER)
        .ok_or(DataplaneError::Program {
            name: program_names::BALANCER,
            source: ProgramError::NotLoaded,
        })?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program {
            name: program_names::BALANCER,
            source,
        })
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

//! Desired state → map contents → the smallest set of map writes.
//!
//! Pure: the [`Planner`] keeps stable ids for services and backends and a
//! shadow of what the maps hold, and turns a [`Config`] plus each
//! backend's [`BackendState`] (health, and a weight override from a drain,
//! `lb weight` or a dynamic scheduler) into a list of [`Write`]s. Applying
//! them is the caller's business (`dataplane`). Per service the writes are
//! ordered so the switch is atomic: the idle Maglev row is filled first,
//! then one write to `SERVICES` flips the live row.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{
    Addr, BackendValue, Endpoint, NO_BACKEND, NatValue, ServiceKey, ServiceValue, VipValue,
    maps::{
        BACKEND_DRAINING, BACKEND_USABLE, FWD_DSR, FWD_NAT, FWD_TUNNEL, SCHED_IP_HASH,
        SCHED_MAGLEV, SCHED_ROUND_ROBIN, VIP_FRAGMENTS_TCP, VIP_FRAGMENTS_UDP, ipv4_mapped,
    },
};

use crate::{
    config::{Config, Forwarding, Protocol, Scheduler, Service},
    maglev::{self, Weighted},
};

/// The identity of a backend across reloads: service name, address, port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    /// The service's name.
    pub service: String,
    /// The backend's address.
    pub address: IpAddr,
    /// The port traffic goes to.
    pub port: u16,
}

/// Runtime facts about a backend that the configuration does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendState {
    /// Health: a down backend carries no traffic and its flows move.
    pub up: bool,
    /// Weight override (drain = 0, `lb weight`, dynamic schedulers), in
    /// table units ([`crate::dynamic::table_weight`]).
    pub weight: Option<u32>,
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            up: true,
            weight: None,
        }
    }
}

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `BACKENDS[id] = value`.
    Backend(u32, BackendValue),
    /// Slots of one MAGLEV row: (slot, backend id).
    MaglevSlots {
        /// Row: `2 * service id + half`.
        row: u32,
        /// The slots that change.
        slots: Vec<(u32, u32)>,
    },
    /// Every slot of a row the maps hold zeros in (a new service's): the
    /// table itself, shared with the planner (a thousand services' start
    /// would otherwise hold a gigabyte of slot lists at once).
    MaglevRow {
        /// Row: `2 * service id + half`.
        row: u32,
        /// Its slots, in order.
        table: Arc<Slots>,
    },
    /// Insert or replace a service.
    Service(ServiceKey, ServiceValue),
    /// Remove a service.
    RemoveService(ServiceKey),
    /// Insert or replace a VIP entry.
    Vip(Addr, VipValue),
    /// Remove a VIP entry.
    RemoveVip(Addr),
    /// Insert or replace a reply-path entry.
    Nat(Endpoint, NatValue),
    /// Remove a reply-path entry.
    RemoveNat(Endpoint),
    /// Add a deny-list prefix (address in map form, prefix length over it).
    Deny(Addr, u32),
    /// Remove a deny-list prefix.
    RemoveDeny(Addr, u32),
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// More services than `SERVICES` holds.
    #[error("more than {0} services: raise dataplane.max_services (needs a restart)")]
    TooManyServices(u32),
    /// More backends than `BACKENDS` holds.
    #[error("more than {0} backends: raise dataplane.max_backends (needs a restart)")]
    TooManyBackends(u32),
}

/// What the planner decided for one backend (for status and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBackend {
    /// Its identity.
    pub key: BackendKey,
    /// Its id in `BACKENDS`.
    pub id: u32,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the live table (0: drained, down, or in a standby tier).
    /// In table units: the configured units for the static schedulers,
    /// hundredths of them for `least-conn` and `resource`
    /// ([`crate::dynamic::SCALE`]).
    pub effective_weight: u32,
    /// Tier.
    pub tier: u8,
    /// Health as given.
    pub up: bool,
}

/// What the planner decided for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    /// Name.
    pub name: String,
    /// Key in `SERVICES`.
    pub key: ServiceKey,
    /// Value in `SERVICES` (with the live half).
    pub value: ServiceValue,
    /// Its backends, in configuration order.
    pub backends: Vec<PlannedBackend>,
    /// The tier serving new flows, if any backend can.
    pub active_tier: Option<u8>,
}

/// What the maps of a pinned data plane hold, read back by a controller that
/// takes it over (`Dataplane::snapshot`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `SERVICES`.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Non-empty `BACKENDS` slots.
    pub backends: Vec<(u32, BackendValue)>,
    /// `VIPS`.
    pub vips: Vec<(Addr, VipValue)>,
    /// `NAT`.
    pub nat: Vec<(Endpoint, NatValue)>,
    /// `DENY` prefixes of the configuration (`DENY_CONFIGURED`).
    pub deny: Vec<(Addr, u32)>,
    /// `DENY` prefixes the operator added (`DENY_RUNTIME`): not the
    /// planner's, the controller's guard takes them back.
    pub runtime_deny: Vec<(Addr, u32)>,
    /// Both MAGLEV rows of every service.
    pub rows: Vec<(u32, Vec<u32>)>,
}

/// Stable ids and the shadow of the maps. Cloned to plan a change that
/// must apply whole or not at all (a reload): the clone plans, and is kept
/// only once its writes are in the maps.
#[derive(Clone, Debug)]
pub struct Planner {
    ring_size: u32,
    max_services: u32,
    max_backends: u32,
    service_ids: BTreeMap<String, u32>,
    free_service_ids: VecDeque<u32>,
    next_service_id: u32,
    backend_ids: BTreeMap<BackendKey, u32>,
    free_backend_ids: VecDeque<u32>,
    next_backend_id: u32,
    /// What the maps hold, as far as this planner wrote them.
    services: BTreeMap<ServiceKey, ServiceValue>,
    /// Shared between clones until one writes a row: cloning a planner
    /// (to plan a change that must apply whole) copies no table.
    rows: BTreeMap<u32, Arc<Slots>>,
    backends: BTreeMap<u32, BackendValue>,
    vips: BTreeMap<Addr, VipValue>,
    nat: BTreeMap<Endpoint, NatValue>,
    deny: std::collections::BTreeSet<(Addr, u32)>,
    planned: Vec<PlannedService>,
    /// Each service's last table and what it was built from, by service
    /// id: a plan rebuilds only the tables whose inputs changed, so one
    /// backend's health or weight costs one service's Maglev build, not
    /// every service's. Shared between clones, as the rows are.
    tables: BTreeMap<u32, Arc<CachedTable>>,
    /// Tables built since this planner was made (for tests and logs).
    built: u64,
}

/// What a service's table is built from, and the table.
#[derive(Debug, PartialEq, Eq)]
struct CachedTable {
    /// Round robin (else Maglev).
    round_robin: bool,
    /// Per backend, in configuration order: id, address, port, weight in
    /// the live table.
    inputs: Vec<(u32, IpAddr, u16, u32)>,
    /// The table.
    table: Arc<Slots>,
}

/// A row's slots (backend ids), two bytes each while every id fits in
/// them: a thousand services' tables of the default 65,537 slots take
/// 128 MiB rather than 256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slots {
    /// Ids up to `u16::MAX - 1`; `u16::MAX` stands for `NO_BACKEND`.
    Narrow(Vec<u16>),
    /// Any ids.
    Wide(Vec<u32>),
}

impl Slots {
    /// `ids`, narrow if they all fit.
    pub fn from_ids(ids: Vec<u32>) -> Self {
        if ids
            .iter()
            .all(|&id| id < u32::from(u16::MAX) || id == NO_BACKEND)
        {
            Slots::Narrow(ids.into_iter().map(narrow).collect())
        } else {
            Slots::Wide(ids)
        }
    }

    /// `len` zeroed slots (a fresh map's).
    pub fn zeros(len: usize) -> Self {
        Slots::Narrow(vec![0; len])
    }

    /// How many slots.
    pub fn len(&self) -> usize {
        match self {
            Slots::Narrow(slots) => slots.len(),
            Slots::Wide(slots) => slots.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slot `index`.
    pub fn get(&self, index: usize) -> u32 {
        match self {
            Slots::Narrow(slots) => wide(slots[index]),
            Slots::Wide(slots) => slots[index],
        }
    }

    /// Every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (narrow, wide_slots): (&[u16], &[u32]) = match self {
            Slots::Narrow(slots) => (slots, &[]),
            Slots::Wide(slots) => (&[], slots),
        };
        narrow
            .iter()
            .map(|&id| wide(id))
            .chain(wide_slots.iter().copied())
    }

    /// Sets slot `index` (widening if `id` does not fit).
    pub fn set(&mut self, index: usize, id: u32) {
        if let Slots::Narrow(slots) = self {
            if id < u32::from(u16::MAX) || id == NO_BACKEND {
                slots[index] = narrow(id);
                return;
            }
            *self = Slots::Wide(slots.iter().map(|&id| wide(id)).collect());
        }
        if let Slots::Wide(slots) = self {
            slots[index] = id;
        }
    }

    /// The slots as ids.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

#[allow(clippy::cast_possible_truncation, reason = "checked by the callers")]
fn narrow(id: u32) -> u16 {
    if id == NO_BACKEND {
        u16::MAX
    } else {
        id as u16
    }
}

fn wide(id: u16) -> u32 {
    if id == u16::MAX {
        NO_BACKEND
    } else {
        u32::from(id)
    }
}

impl Planner {
    /// A planner for maps of these sizes, all empty (zeroed).
    pub fn new(ring_size: u32, max_services: u32, max_backends: u32) -> Self {
        Self {
            ring_size,
            max_services,
            max_backends,
            service_ids: BTreeMap::new(),
            free_service_ids: VecDeque::new(),
            next_service_id: 0,
            backend_ids: BTreeMap::new(),
            free_backend_ids: VecDeque::new(),
            next_backend_id: 0,
            services: BTreeMap::new(),
            rows: BTreeMap::new(),
            backends: BTreeMap::new(),
            vips: BTreeMap::new(),
            nat: BTreeMap::new(),
            deny: std::collections::BTreeSet::new(),
            planned: Vec::new(),
            tables: BTreeMap::new(),
            built: 0,
        }
    }

    /// Takes over maps another planner filled (a controller restarted over
    /// a pinned data plane): the shadow becomes what the maps hold, and the
    /// ids of services and backends still in `config` stay what they were,
    /// so connection-table entries keep naming the same backends. The next
    /// [`Planner::plan`] then writes only what differs.
    pub fn adopt(&mut self, config: &Config, snapshot: Snapshot) {
        let mut names = BTreeMap::new();
        for (key, value) in &snapshot.services {
            let name = config.services.iter().find(|service| {
                ServiceKey::new(
                    map_addr(service.vip),
                    service.port,
                    service.protocol.number(),
                ) == *key
            });
            if let Some(service) = name {
                self.service_ids.insert(service.name.clone(), value.id);
                names.insert(value.id, service.name.clone());
            }
            self.next_service_id = self.next_service_id.max(value.id + 1);
        }
        for (id, value) in &snapshot.backends {
            if let Some(service) = names.get(&value.service_id) {
                let key = BackendKey {
                    service: service.clone(),
                    address: unmap_addr(value.addr),
                    port: value.port,
                };
                self.backend_ids.entry(key).or_insert(*id);
            }
            self.next_backend_id = self.next_backend_id.max(id + 1);
        }
        let used_services: Vec<u32> = self.service_ids.values().copied().collect();
        self.free_service_ids = (0..self.next_service_id)
            .filter(|id| !used_services.contains(id))
            .collect();
        let used_backends: Vec<u32> = self.backend_ids.values().copied().collect();
        self.free_backend_ids = (0..self.next_backend_id)
            .filter(|id| !used_backends.contains(id))
            .collect();
        self.services = snapshot.services.into_iter().collect();
        self.backends = snapshot.backends.into_iter().collect();
        self.vips = snapshot.vips.into_iter().collect();
        self.nat = snapshot.nat.into_iter().collect();
        self.deny = snapshot.deny.into_iter().collect();
        self.rows = snapshot
            .rows
            .into_iter()
            .map(|(row, slots)| (row, Arc::new(Slots::from_ids(slots))))
            .collect();
    }

    /// The services as last planned.
    pub fn planned(&self) -> &[PlannedService] {
        &self.planned
    }

    /// The live table of a service as last planned (maglev slots or the
    /// round-robin sequence), for reference models and tests.
    pub fn live_table(&self, key: &ServiceKey) -> Option<Vec<u32>> {
        let value = self.services.get(key)?;
        let row = self
            .rows
            .get(&(value.id * 2 + u32::from(value.active_half)))?;
        let len = if value.scheduler == SCHED_ROUND_ROBIN {
            value.rr_len as usize
        } else {
            row.len()
        };
        Some(row.iter().take(len).collect())
    }

    /// How many tables (Maglev or round robin) this planner has built:
    /// a plan builds only those of services whose inputs changed.
    pub fn tables_built(&self) -> u64 {
        self.built
    }

    /// Backend `id` as last planned.
    pub fn backend(&self, id: u32) -> Option<&BackendValue> {
        self.backends.get(&id)
    }

    /// Plans `config` with backend `states` (absent: up, configured weight)
    /// and returns the writes that take the maps there.
    pub fn plan(
        &mut self,
        config: &Config,
        states: &BTreeMap<BackendKey, BackendState>,
    ) -> Result<Vec<Write>, PlanError> {
        self.assign_ids(config)?;
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        let mut desired_backends = BTreeMap::new();
        let mut desired_vips: BTreeMap<Addr, VipValue> = BTreeMap::new();
        let mut desired_nat = BTreeMap::new();
        let mut service_writes = Vec::new();
        for service in &config.services {
            let planned_service = self.plan_service(
                service,
                states,
                &mut desired_backends,
                &mut desired_nat,
                &mut desired_vips,
                &mut service_writes,
            );
            planned.push(planned_service);
        }
        // Backends first: a table must never name a backend not yet written.
        for (id, value) in &desired_backends {
            if self.backends.get(id) != Some(value) {
                writes.push(Write::Backend(*id, *value));
                self.backends.insert(*id, *value);
            }
        }
        writes.extend(service_writes);
        // Services that are gone: VIP entry first, so nothing looks them up.
        let planned_keys: std::collections::BTreeSet<ServiceKey> =
            planned.iter().map(|p| p.key).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|key| !planned_keys.contains(key))
            .copied()
            .collect();
        sync_map(
            &mut self.vips,
            &desired_vips,
            &mut writes,
            Write::Vip,
            Write::RemoveVip,
        );
        for key in gone {
            self.services.remove(&key);
            writes.push(Write::RemoveService(key));
        }
        sync_map(
            &mut self.nat,
            &desired_nat,
            &mut writes,
            Write::Nat,
            Write::RemoveNat,
        );
        // Backends that are gone: unusable, so their flows move.
        let stale: Vec<u32> = self
            .backends
            .iter()
            .filter(|(id, value)| !desired_backends.contains_key(id) && value.flags != 0)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let value = BackendValue {
                flags: 0,
                ..self.backends[&id]
            };
            writes.push(Write::Backend(id, value));
            self.backends.insert(id, value);
        }
        self.plan_deny(config, &mut writes);
        // Tables of services that are gone are not kept.
        let ids: std::collections::BTreeSet<u32> = planned.iter().map(|p| p.value.id).collect();
        self.tables.retain(|id, _| ids.contains(id));
        self.planned = planned;
        Ok(writes)
    }

    /// Plans one service: its backends, its table (filling the idle half
    /// and flipping when the live one differs), its VIP entry.
    fn plan_service(
        &mut self,
        service: &Service,
        states: &BTreeMap<BackendKey, BackendState>,
        desired_backends: &mut BTreeMap<u32, BackendValue>,
        desired_nat: &mut BTreeMap<Endpoint, NatValue>,
        desired_vips: &mut BTreeMap<Addr, VipValue>,
        service_writes: &mut Vec<Write>,
    ) -> PlannedService {
        let id = self.service_ids[&service.name];
        let key = ServiceKey::new(
            map_addr(service.vip),
            service.port,
            service.protocol.number(),
        );
        let backends = self.plan_backends(service, id, states, desired_backends, desired_nat);
        let active_tier = backends
            .iter()
            .filter(|b| b.effective_weight > 0)
            .map(|b| b.tier)
            .min();
        let table = self.table(id, service, &backends);
        let rr_len = if service.scheduler == Scheduler::RoundRobin {
            u32::try_from(table.len()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let previous = self.services.get(&key).copied();
        let live_half = previous.map_or(1, |v| v.active_half);
        let live_row = id * 2 + u32::from(live_half);
        let mut value = ServiceValue {
            id,
            scheduler: scheduler_code(service.scheduler),
            forwarding: forwarding_code(service.forwarding),
            active_half: live_half,
            pad: 0,
            rr_len,
        };
        // The same table as the live row's (as most are, in a plan after
        // one backend's change) is seen without comparing the slots.
        let live_matches = previous.is_some_and(|p| p.id == id)
            && self
                .rows
                .get(&live_row)
                .is_some_and(|row| Arc::ptr_eq(row, &table) || row_matches(row, &table));
        if !live_matches {
            // Fill the idle half, then flip to it in one write.
            let idle_half = 1 - live_half;
            let row = id * 2 + u32::from(idle_half);
            self.fill_row(row, &table, service_writes);
            value.active_half = idle_half;
        }
        if previous != Some(value) {
            service_writes.push(Write::Service(key, value));
            self.services.insert(key, value);
        }
        if previous.is_none() {
            // A new service: give the other half the same table too, after
            // the flip. Later changes then write only the slots that move
            // (about 1/N of the ring) instead of a whole fresh row, which
            // keeps failover fast.
            let row = id * 2 + u32::from(1 - value.active_half);
            self.fill_row(row, &table, service_writes);
        }
        let vip = desired_vips.entry(key.addr).or_default();
        vip.services += 1;
        if service.scheduler == Scheduler::IpHash {
            match service.protocol {
                Protocol::Tcp if vip.fragments & VIP_FRAGMENTS_TCP == 0 => {
                    vip.fragments |= VIP_FRAGMENTS_TCP;
                    vip.fragment_tcp_port = service.port;
                }
                Protocol::Udp if vip.fragments & VIP_FRAGMENTS_UDP == 0 => {
                    vip.fragments |= VIP_FRAGMENTS_UDP;
                    vip.fragment_udp_port = service.port;
                }
                _ => {}
            }
        }
        PlannedService {
            name: service.name.clone(),
            key,
            value,
            backends,
            active_tier,
        }
    }

    /// The deny list, IPv4 prefixes in IPv4-mapped form (96 more bits).
    fn plan_deny(&mut self, config: &Config, writes: &mut Vec<Write>) {
        let desired: std::collections::BTreeSet<(Addr, u32)> =
            config.guard.deny.iter().map(deny_key).collect();
        for &(addr, len) in desired.difference(&self.deny) {
            writes.push(Write::Deny(addr, len));
        }
        for &(addr, len) in self.deny.difference(&desired) {
            writes.push(Write::RemoveDeny(addr, len));
        }
        self.deny = desired;
    }

    /// The writes that take maps holding `applied`'s shadow (or any part of
    /// the way there from this planner's) back to this planner's shadow:
    /// how a change that failed half-way is undone. Backends this shadow
    /// names come first and backends only `applied` knows are cleared last,
    /// so no table names a backend that is not written.
    pub fn undo(&self, applied: &Planner) -> Vec<Write> {
        let mut writes = Vec::new();
        for (id, value) in &self.backends {
            if applied.backends.get(id) != Some(value) {
                writes.push(Write::Backend(*id, *value));
            }
        }
        let zeros = Slots::zeros(self.ring_size as usize);
        for (row, now) in &applied.rows {
            if self.rows.get(row).is_some_and(|was| Arc::ptr_eq(was, now)) {
                continue;
            }
            let was = self.rows.get(row).map_or(&zeros, |row| &**row);
            let slots: Vec<(u32, u32)> = (0u32..)
                .zip(was.iter().zip(now.iter()))
                .filter(|(_, (was, now))| was != now)
                .map(|(slot, (was, _))| (slot, was))
                .collect();
            if !slots.is_empty() {
                writes.push(Write::MaglevSlots { row: *row, slots });
            }
        }
        for (key, value) in &self.vips {
            if applied.vips.get(key) != Some(value) {
                writes.push(Write::Vip(*key, *value));
            }
        }
        for key in applied.vips.keys().filter(|k| !self.vips.contains_key(*k)) {
            writes.push(Write::RemoveVip(*key));
        }
        for (key, value) in &self.services {
            if applied.services.get(key) != Some(value) {
                writes.push(Write::Service(*key, *value));
            }
        }
        for key in applied
            .services
            .keys()
            .filter(|k| !self.services.contains_key(*k))
        {
            writes.push(Write::RemoveService(*key));
        }
        for (key, value) in &self.nat {
            if applied.nat.get(key) != Some(value) {
                writes.push(Write::Nat(*key, *value));
            }
        }
        for key in applied.nat.keys().filter(|k| !self.nat.contains_key(*k)) {
            writes.push(Write::RemoveNat(*key));
        }
        for &(addr, len) in self.deny.difference(&applied.deny) {
            writes.push(Write::Deny(addr, len));
        }
        for &(addr, len) in applied.deny.difference(&self.deny) {
            writes.push(Write::RemoveDeny(addr, len));
        }
        for id in applied
            .backends
            .keys()
            .filter(|id| !self.backends.contains_key(*id))
        {
            // Never written before: back to the zeroed slot of a fresh map.
            writes.push(Write::Backend(*id, BackendValue::default()));
        }
        writes
    }

    /// Keeps ids of services and backends that remain; frees the others
    /// (oldest freed reused first); gives new ones fresh ids.
    fn assign_ids(&mut self, config: &Config) -> Result<(), PlanError> {
        let names: std::collections::BTreeSet<&str> =
            config.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .service_ids
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(id) = self.service_ids.remove(&name) {
                self.free_service_ids.push_back(id);
            }
        }
        let keys: Vec<BackendKey> = config
            .services
            .iter()
            .flat_map(|service| {
                service.backends.iter().map(|b| BackendKey {
                    service: service.name.clone(),
                    address: b.address,
                    port: b.port_for(service),
                })
            })
            .collect();
        let wanted: std::collections::BTreeSet<&BackendKey> = keys.iter().collect();
        let gone: Vec<BackendKey> = self
            .backend_ids
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(id) = self.backend_ids.remove(&key) {
                self.free_backend_ids.push_back(id);
            }
        }
        for service in &config.services {
            if !self.service_ids.contains_key(&service.name) {
                let id = take_id(
                    &mut self.free_service_ids,
                    &mut self.next_service_id,
                    self.max_services,
                )
                .ok_or(PlanError::TooManyServices(self.max_services))?;
                self.service_ids.insert(service.name.clone(), id);
            }
        }
        for key in keys {
            if !self.backend_ids.contains_key(&key) {
                let id = take_id(
                    &mut self.free_backend_ids,
                    &mut self.next_backend_id,
                    self.max_backends,
                )
                .ok_or(PlanError::TooManyBackends(self.max_backends))?;
                self.backend_ids.insert(key, id);
            }
        }
        Ok(())
    }

    /// The backends of `service`, their effective weights (lowest tier with
    /// a healthy, weighted backend serves), and their map values.
    fn plan_backends(
        &self,
        service: &Service,
        service_id: u32,
        states: &BTreeMap<BackendKey, BackendState>,
        desired: &mut BTreeMap<u32, BackendValue>,
        nat: &mut BTreeMap<Endpoint, NatValue>,
    ) -> Vec<PlannedBackend> {
        let mut backends: Vec<PlannedBackend> = service
            .backends
            .iter()
            .map(|backend| {
                let key = BackendKey {
                    service: service.name.clone(),
                    address: backend.address,
                    port: backend.port_for(service),
                };
                let state = states.get(&key).copied().unwrap_or_default();
                PlannedBackend {
                    id: self.backend_ids[&key],
                    weight: backend.weight,
                    // In table units: hundredths for the dynamic schedulers,
                    // as the controller's dynamic and override weights are.
                    effective_weight: if state.up {
                        state.weight.unwrap_or_else(|| {
                            crate::dynamic::table_weight(service.scheduler, backend.weight)
                        })
                    } else {
                        0
                    },
                    tier: backend.tier,
                    up: state.up,
                    key,
                }
            })
            .collect();
        let serving_tier = serving_tier(&backends, service.min_healthy);
        for backend in &mut backends {
            if Some(backend.tier) != serving_tier {
                backend.effective_weight = 0;
            }
            let addr = map_addr(backend.key.address);
            desired.insert(
                backend.id,
                BackendValue {
                    addr,
                    port: backend.key.port,
                    // Drained and standby backends keep their flows (but
                    // not a tuple a new SYN reuses); only a down backend
                    // loses them.
                    flags: match (backend.up, backend.effective_weight) {
                        (false, _) => 0,
                        (true, 0) => BACKEND_USABLE | BACKEND_DRAINING,
                        (true, _) => BACKEND_USABLE,
                    },
                    pad: 0,
                    service_id,
                },
            );
            if service.forwarding == Forwarding::Nat {
                nat.insert(
                    Endpoint::new(addr, backend.key.port, service.protocol.number()),
                    NatValue {
                        vip: map_addr(service.vip),
                        port: service.port,
                        pad: 0,
                        service_id,
                    },
                );
            }
        }
        backends
    }

    /// The table a service's row holds: the Maglev table, or for round robin
    /// the smooth weighted sequence.
    /// Built only if its inputs differ from the last plan's for this
    /// service id; otherwise the last table, shared.
    fn table(
        &mut self,
        service_id: u32,
        service: &Service,
        backends: &[PlannedBackend],
    ) -> Arc<Slots> {
        let round_robin = service.scheduler == Scheduler::RoundRobin;
        let inputs: Vec<(u32, IpAddr, u16, u32)> = backends
            .iter()
            .map(|b| (b.id, b.key.address, b.key.port, b.effective_weight))
            .collect();
        if let Some(cached) = self.tables.get(&service_id)
            && cached.round_robin == round_robin
            && cached.inputs == inputs
        {
            return Arc::clone(&cached.table);
        }
        let table = Arc::new(Slots::from_ids(self.build_table(service, backends)));
        self.built += 1;
        self.tables.insert(
            service_id,
            Arc::new(CachedTable {
                round_robin,
                inputs,
                table: Arc::clone(&table),
            }),
        );
        table
    }

    /// Builds the table of [`Planner::table`].
    fn build_table(&self, service: &Service, backends: &[PlannedBackend]) -> Vec<u32> {
        if service.scheduler == Scheduler::RoundRobin {
            let weights: Vec<(u32, u32)> = backends
                .iter()
                .map(|b| (b.id, b.effective_weight))
                .collect();
            return maglev::smooth_round_robin(&weights, self.ring_size as usize);
        }
        let identities: Vec<Vec<u8>> = backends
            .iter()
            .map(|b| format!("{}:{}", b.key.address, b.key.port).into_bytes())
            .collect();
        let weighted: Vec<Weighted<'_>> = backends
            .iter()
            .zip(&identities)
            .map(|(b, identity)| Weighted {
                id: b.id,
                identity,
                weight: b.effective_weight,
            })
            .collect();
        maglev::build(&weighted, self.ring_size)
    }

    /// The writes that make `row` hold `table`: the whole table if the row
    /// was never written (and the table fills it), else the slots that
    /// differ.
    fn fill_row(&mut self, row: u32, table: &Arc<Slots>, writes: &mut Vec<Write>) {
        if !self.rows.contains_key(&row) && table.len() == self.ring_size as usize {
            self.rows.insert(row, Arc::clone(table));
            writes.push(Write::MaglevRow {
                row,
                table: Arc::clone(table),
            });
            return;
        }
        let slots = self.diff_row(row, table);
        self.share_row(row, table);
        if !slots.is_empty() {
            writes.push(Write::MaglevSlots { row, slots });
        }
    }

    /// Once `row` holds `table` whole (a Maglev table fills the row), the
    /// shadow shares the table's allocation: the next plan sees the row
    /// unchanged by pointer, and a later write copies it first.
    fn share_row(&mut self, row: u32, table: &Arc<Slots>) {
        if table.len() == self.ring_size as usize {
            debug_assert!(
                self.rows
                    .get(&row)
                    .is_some_and(|r| r.iter().eq(table.iter()))
            );
            self.rows.insert(row, Arc::clone(table));
        }
    }

    /// The slots of `row` that must change to hold `table`; updates the
    /// shadow. Slots past the table's end are left as they are.
    fn diff_row(&mut self, row: u32, table: &Slots) -> Vec<(u32, u32)> {
        let ring_size = self.ring_size as usize;
        // A fresh map is zero-filled.
        let zeros;
        let current: &Slots = if let Some(shadow) = self.rows.get(&row) {
            shadow
        } else {
            zeros = Slots::zeros(ring_size);
            &zeros
        };
        let slots: Vec<(u32, u32)> = (0u32..)
            .zip(current.iter().zip(table.iter()))
            .filter(|(_, (current, wanted))| current != wanted)
            .map(|(slot, (_, wanted))| (slot, wanted))
            .collect();
        if !slots.is_empty() || !self.rows.contains_key(&row) {
            // Copied here if a clone still shares it.
            let shadow = Arc::make_mut(
                self.rows
                    .entry(row)
                    .or_insert_with(|| Arc::new(Slots::zeros(ring_size))),
            );
            for &(slot, id) in &slots {
                shadow.set(slot as usize, id);
            }
        }
        slots
    }
}

/// The tier new flows go to: the lowest with at least `min_healthy` healthy,
/// weighted backends; if no tier has that many, the lowest with any (better
/// a thin tier than none); `None` when no backend can take traffic.
fn serving_tier(backends: &[PlannedBackend], min_healthy: u32) -> Option<u8> {
    let mut counts: BTreeMap<u8, u32> = BTreeMap::new();
    for backend in backends.iter().filter(|b| b.effective_weight > 0) {
        *counts.entry(backend.tier).or_default() += 1;
    }
    counts
        .iter()
        .find(|&(_, &count)| count >= min_healthy)
        .or_else(|| counts.iter().next())
        .map(|(&tier, _)| tier)
}

/// Whether `row` holds `table` (over the table's length).
fn row_matches(row: &Slots, table: &Slots) -> bool {
    row.len() >= table.len() && row.iter().zip(table.iter()).all(|(a, b)| a == b)
}

fn take_id(free: &mut VecDeque<u32>, next: &mut u32, max: u32) -> Option<u32> {
    if let Some(id) = free.pop_front() {
        return Some(id);
    }
    if *next >= max {
        return None;
    }
    *next += 1;
    Some(*next - 1)
}

/// Brings `current` to `desired`, recording the writes.
fn sync_map<K: Ord + Copy, V: PartialEq + Copy>(
    current: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    writes: &mut Vec<Write>,
    insert: impl Fn(K, V) -> Write,
    remove: impl Fn(K) -> Write,
) {
    for (key, value) in desired {
        if current.get(key) != Some(value) {
            writes.push(insert(*key, *value));
            current.insert(*key, *value);
        }
    }
    let gone: Vec<K> = current
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    for key in gone {
        current.remove(&key);
        writes.push(remove(key));
    }
}

/// The address a map-form address stands for.
pub fn unmap_addr(addr: Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An address in map form (IPv4 as IPv4-mapped IPv6).
pub fn map_addr(addr: IpAddr) -> Addr {
    match addr {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `ServiceValue::scheduler` for a configured scheduler. `least-conn` and
/// `resource` are Maglev whose weights the controller adjusts.
pub fn scheduler_code(scheduler: Scheduler) -> u8 {
    match scheduler {
        Scheduler::Maglev | Scheduler::LeastConn | Scheduler::Resource => SCHED_MAGLEV,
        Scheduler::IpHash => SCHED_IP_HASH,
        Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
    }
}

/// `ServiceValue::forwarding` for a configured mode.
pub fn forwarding_code(forwarding: Forwarding) -> u8 {
    match forwarding {
        Forwarding::Nat => FWD_NAT,
        Forwarding::Dsr => FWD_DSR,
        Forwarding::Tunnel => FWD_TUNNEL,
    }
}

/// A `DENY` key as the prefix it stands for: the inverse of [`deny_key`].
pub fn deny_prefix(addr: &Addr, len: u32) -> Option<ipnet::IpNet> {
    let v6 = std::net::Ipv6Addr::from(*addr);
    let net = match (v6.to_ipv4_mapped(), len.checked_sub(96)) {
        (Some(v4), Some(v4_len)) => {
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(v4, u8::try_from(v4_len).ok()?).ok()?)
        }
        _ => ipnet::IpNet::V6(ipnet::Ipv6Net::new(v6, u8::try_from(len).ok()?).ok()?),
    };
    Some(net.trunc())
}

/// A deny-list prefix as its `DENY` key: IPv4 in IPv4-mapped form, the
/// prefix length 96 more.
pub fn deny_key(net: &ipnet::IpNet) -> (Addr, u32) {
    match net {
        ipnet::IpNet::V4(v4) => (
            ipv4_mapped(v4.network().octets()),
            96 + u32::from(v4.prefix_len()),
        ),
        ipnet::IpNet::V6(v6) => (v6.network().octets(), u32::from(v6.prefix_len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: u32 = 251;

    fn config(extra_backend: bool, scheduler: &str) -> Config {
        let mut text = format!(
            "instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
             \x20 - name: web\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n\
             \x20   scheduler: {scheduler}\n    backends:\n\
             \x20     - {{ address: 192.0.2.11, port: 8080 }}\n\
             \x20     - {{ address: 192.0.2.12, port: 8080, weight: 200 }}\n\
             \x20     - {{ address: 192.0.2.21, port: 8080, tier: 1 }}\n"
        );
        if extra_backend {
            text.push_str("      - { address: 192.0.2.13, port: 8080 }\n");
        }
        text.push_str("dataplane: { ring_size: 251 }\n");
        Config::parse(&text).unwrap()
    }

    fn planner() -> Planner {
        Planner::new(RING, 8, 64)
    }

    #[test]
    fn first_plan_writes_backends_then_the_row_then_the_service() {
        let mut planner = planner();
        let writes = planner
            .plan(&config(false, "maglev"), &BTreeMap::new())
            .unwrap();
        let kinds: Vec<&str> = writes
            .iter()
            .map(|w| match w {
                Write::Backend(..) => "backend",
                Write::MaglevSlots { .. } | Write::MaglevRow { .. } => "slots",
                Write::Service(..) => "service",
                Write::Vip(..) => "vip",
                Write::Nat(..) => "nat",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "backend", "backend", "backend", "slots", "service", "slots", "vip", "nat", "nat",
                "nat"
            ]
        );
        let Write::Service(_, value) = &writes[4] else {
            panic!()
        };
        assert_eq!(value.active_half, 0, "first row filled is half 0");
        // Tier 1 is standby: no slot names it; weights 100:200 share the ring.
        let table = planner.live_table(&writes_key(&writes)).unwrap();
        let count = |id| table.iter().filter(|&&b| b == id).count();
        assert_eq!(count(2), 0);
        assert!(count(1) > count(0) * 19 / 10 && count(1) < count(0) * 21 / 10);
    }

    /// `services` services of 3 backends each (maglev), `dataplane`
    /// sized for them.
    fn many(services: usize, weight_of_first: u32) -> Config {
        use std::fmt::Write as _;
        let mut text = String::from("instance: t\ninterfaces: [{ name: eth0 }]\nservices:\n");
        for n in 0..services {
            let weight = if n == 0 { weight_of_first } else { 100 };
            writeln!(
                text,
                "  - {{ name: s{n}, vip: 203.0.113.10, port: {}, protocol: tcp, backends: \
                 [{{ address: 192.0.2.11, weight: {weight} }}, {{ address: 192.0.2.12 }}, \
                 {{ address: 192.0.2.13 }}] }}",
                1000 + n
            )
            .unwrap();
        }
        text.push_str("dataplane: { ring_size: 251 }\n");
        Config::parse(&text).unwrap()
    }

    /// The service ids and backend ids a list of writes touches.
    fn touched(writes: &[Write]) -> (Vec<u32>, Vec<u32>) {
        let mut services = Vec::new();
        let mut backends = Vec::new();
        for write in writes {
            match write {
                Write::MaglevSlots { row, .. } | Write::MaglevRow { row, .. } => {
                    services.push(row / 2);
                }
                Write::Service(_, value) => services.push(value.id),
                Write::Backend(id, _) => backends.push(*id),
                other => panic!("unexpected write {other:?}"),
            }
        }
        services.sort_unstable();
        services.dedup();
        (services, backends)
    }

    #[test]
    fn slots_stay_narrow_while_ids_fit_and_widen_when_one_does_not() {
        let mut slots = Slots::from_ids(vec![0, 7, NO_BACKEND, 65_534]);
        assert!(matches!(slots, Slots::Narrow(_)));
        assert_eq!(slots.to_vec(), [0, 7, NO_BACKEND, 65_534]);
        slots.set(1, 65_535);
        assert!(matches!(slots, Slots::Wide(_)));
        assert_eq!(slots.to_vec(), [0, 65_535, NO_BACKEND, 65_534]);
        assert!(matches!(Slots::from_ids(vec![1, 70_000]), Slots::Wide(_)));
    }

    #[test]
    fn one_backends_change_builds_and_writes_one_service_only() {
        let config = many(50, 100);
        let mut planner = Planner::new(RING, 64, 256);
        planner.plan(&config, &BTreeMap::new()).unwrap();
        assert_eq!(
            planner.tables_built(),
            50,
            "start-up builds each table once"
        );
        // The same input again: nothing built, nothing written.
        assert!(planner.plan(&config, &BTreeMap::new()).unwrap().is_empty());
        assert_eq!(planner.tables_built(), 50);
        // One backend of service s7 goes down.
        let s7 = planner.planned()[7].clone();
        let down = s7.backends[1].clone();
        let mut states = BTreeMap::new();
        states.insert(
            down.key.clone(),
            BackendState {
                up: false,
                weight: None,
            },
        );
        let writes = planner.plan(&config, &states).unwrap();
        assert_eq!(planner.tables_built(), 51, "one table rebuilt");
        let (services, backends) = touched(&writes);
        assert_eq!(services, [s7.value.id], "{writes:?}");
        assert_eq!(backends, [down.id], "{writes:?}");
        // A planner that never saw the change plans the same maps.
        let mut fresh = Planner::new(RING, 64, 256);
        fresh.plan(&config, &states).unwrap();
        assert_eq!(
            fresh.live_table(&s7.key).unwrap(),
            planner.live_table(&s7.key).unwrap()
        );
        // Back up: one more build, the same service only.
        let writes = planner.plan(&config, &BTreeMap::new()).unwrap();
        assert_eq!(planner.tables_built(), 52);
        assert_eq!(touched(&writes).0, [s7.value.id]);
    }

    #[test]
    fn a_reload_that_changes_one_weight_touches_one_service() {
        let mut planner = Planner::new(RING, 64, 256);
        planner.plan(&many(40, 100), &BTreeMap::new()).unwrap();
        // As a reload does: a clone plans the new configuration.
        let mut next = planner.clone();
        let writes = next.plan(&many(40, 300), &BTreeMap::new()).unwrap();
        assert_eq!(next.tables_built(), 41);
        let (services, backends) = touched(&writes);
        assert_eq!(services, [planner.planned()[0].value.id], "{writes:?}");
        assert!(backends.is_empty(), "{writes:?}");
        // Undoing it touches the same service's rows only.
        let undo = planner.undo(&next);
        assert_eq!(
            touched(&undo).0,
            [planner.planned()[0].value.id],
            "{undo:?}"
        );
    }

    fn writes_key(writes: &[Write]) -> ServiceKey {
        writes
            .iter()
            .find_map(|w| match w {
                Write::Service(key, _) => Some(*key),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_dynamic_service_counts_hundredths_and_keeps_the_static_table() {
        let mut tables = Vec::new();
        for scheduler in ["maglev", "resource", "least-conn"] {
            let mut planner = planner();
            let writes = planner
                .plan(&config(false, scheduler), &BTreeMap::new())
                .unwrap();
            let weights: Vec<u32> = planner.planned()[0]
                .backends
                .iter()
                .map(|b| b.effective_weight)
                .collect();
            let expected: [u32; 3] = if scheduler == "maglev" {
                [100, 200, 0]
            } else {
                [10_000, 20_000, 0]
            };
            assert_eq!(weights, expected, "{scheduler}");
            tables.push(planner.live_table(&writes_key(&writes)).unwrap());
        }
        // Scaling every weight alike moves no slot.
        assert_eq!(tables[0], tables[1]);
        assert_eq!(tables[0], tables[2]);
    }

    #[test]
    fn same_input_plans_nothing_more() {
        let mut planner = planner();
        let config = config(false, "maglev");
        planner.plan(&config, &BTreeMap::new()).unwrap();
        assert_eq!(planner.plan(&config, &BTreeMap::new()).unwrap(), []);
    }

    #[test]
    fn a_change_fills_the_idle_half_and_flips_in_one_write() {
        let mut planner = planner();
        planner
            .plan(&config(false, "maglev"), &BTreeMap::new())
            .unwrap();
        let writes = planner
            .plan(&config(true, "maglev"), &BTreeMap::new())
            .unwrap();
        // New backend, its NAT entry, the idle row (all of it: never written),
        // then the flip.
        let slots = writes
            .iter()
            .find_map(|w| match w {
                Write::MaglevSlots { row, slots } => Some((*row, slots.len())),
                _ => None,
            })
            .unwrap();
        assert_eq!(slots.0, 1, "row of half 1");
        let service = writes
            .iter()
            .position(|w| matches!(w, Write::Service(_, v) if v.active_half == 1))
            .unwrap();
        let row = writes
            .iter()
            .position(|w| matches!(w, Write::MaglevSlots { .. }))
            .unwrap();
        assert!(row < service, "row before flip");
        // Back to the first config: half 0 already holds that table except
        // for nothing — only the flip is needed.
        let writes = planner
            .plan(&config(false, "maglev"), &BTreeMap::new())
            .unwrap();
        let slot_writes: usize = writes
            .iter()
            .map(|w| match w {
                Write::MaglevSlots { slots, .. } => slots.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(slot_writes, 0, "{writes:?}");
        assert!(
            writes
                .iter()
                .any(|w| matches!(w, Write::Service(_, v) if v.active_half == 0))
        );
    }

    #[test]
    fn ids_are_stable_across_plans() {
        let mut planner = planner();
        planner
            .plan(&config(false, "maglev"), &BTreeMap::new())
            .unwrap();
        let before: Vec<u32> = planner.planned()[0].backends.iter().map(|b| b.id).collect();
        planner
            .plan(&config(true, "maglev"), &BTreeMap::new())
            .unwrap();
        let after: Vec<u32> = planner.planned()[0].backends.iter().map(|b| b.id).collect();
        assert_eq!(&after[..3], &before[..]);
        assert_eq!(after[3], 3);
    }

    #[test]
    fn tier_one_serves_when_tier_zero_is_down_and_hands_back() {
        let mut planner = planner();
        let config = config(false, "maglev");
        let key = |address: &str| BackendKey {
            service: "web".into(),
            address: address.parse().unwrap(),
            port: 8080,
        };
        let down = BackendState {
            up: false,
            weight: None,
        };
        let states: BTreeMap<_, _> = [(key("192.0.2.11"), down), (key("192.0.2.12"), down)].into();
        planner.plan(&config, &states).unwrap();
        let service = &planner.planned()[0];
        assert_eq!(service.active_tier, Some(1));
        let table = planner.live_table(&service.key).unwrap();
        assert!(table.iter().all(|&id| id == 2));
        // The down backends are unusable: their flows move.
        assert_eq!(planner.backend(0).unwrap().flags, 0);
        planner.plan(&config, &BTreeMap::new()).unwrap();
        assert_eq!(planner.planned()[0].active_tier, Some(0));
        assert_eq!(planner.backend(0).unwrap().flags, BACKEND_USABLE);
    }

    #[test]
    fn min_healthy_moves_traffic_to_a_fuller_tier() {
        let mut planner = planner();
        let mut config = config(false, "maglev");
        config.services[0].min_healthy = 2;
        let down = BackendState {
            up: false,
            weight: None,
        };
        let key = BackendKey {
            service: "web".into(),
            address: "192.0.2.11".parse().unwrap(),
            port: 8080,
        };
        // Tier 0 keeps one healthy backend of two: below min_healthy 2, but
        // tier 1 has only one too, so tier 0 still serves.
        planner
            .plan(&config, &[(key.clone(), down)].into())
            .unwrap();
        assert_eq!(planner.planned()[0].active_tier, Some(0));
        // With min_healthy 1 everything stays on tier 0 as well; with a
        // second tier-1 backend, tier 1 would take over at min_healthy 2.
        config.services[0].backends.push(crate::config::Backend {
            address: "192.0.2.22".parse().unwrap(),
            port: Some(8080),
            weight: 100,
            tier: 1,
        });
        planner.plan(&config, &[(key, down)].into()).unwrap();
        assert_eq!(planner.planned()[0].active_tier, Some(1));
    }

    #[test]
    fn drained_backend_gets_no_slots_but_stays_usable() {
        let mut planner = planner();
        let drained = BackendState {
            up: true,
            weight: Some(0),
        };
        let key = BackendKey {
            service: "web".into(),
            address: "192.0.2.11".parse().unwrap(),
            port: 8080,
        };
        planner
            .plan(&config(false, "maglev"), &[(key, drained)].into())
            .unwrap();
        let service = &planner.planned()[0];
        assert!(
            planner
                .live_table(&service.key)
                .unwrap()
                .iter()
                .all(|&id| id == 1)
        );
        assert_eq!(
            planner.backend(0).unwrap().flags,
            BACKEND_USABLE | BACKEND_DRAINING
        );
        assert_eq!(planner.backend(1).unwrap().flags, BACKEND_USABLE);
    }

    #[test]
    fn everything_down_leaves_an_empty_table() {
        let mut planner = planner();
        let down = BackendState {
            up: false,
            weight: None,
        };
        let states: BTreeMap<_, _> = ["192.0.2.11", "192.0.2.12", "192.0.2.21"]
            .into_iter()
            .map(|a| {
                (
                    BackendKey {
                        service: "web".into(),
                        address: a.parse().unwrap(),
                        port: 8080,
                    },
                    down,
                )
            })
            .collect();
        planner.plan(&config(false, "maglev"), &states).unwrap();
        let service = &planner.planned()[0];
        assert_eq!(service.active_tier, None);
        let table = planner.live_table(&service.key).unwrap();
        assert!(table.iter().all(|&id| id == lb_common::NO_BACKEND));
    }

    #[test]
    fn round_robin_sequence_follows_weights() {
        let mut planner = planner();
        planner
            .plan(&config(false, "round-robin"), &BTreeMap::new())
            .unwrap();
        let service = &planner.planned()[0];
        assert_eq!(service.value.rr_len, 3, "weights 100:200 reduce to 1:2");
        let table = planner.live_table(&service.key).unwrap();
        assert_eq!(table.iter().filter(|&&id| id == 1).count(), 2);
    }

    #[test]
    fn a_deny_key_reads_back_as_its_prefix() {
        for text in [
            "198.51.100.0/24",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
        ] {
            let prefix: ipnet::IpNet = text.parse().unwrap();
            let (addr, len) = deny_key(&prefix);
            assert_eq!(deny_prefix(&addr, len), Some(prefix), "{text}");
        }
        // An IPv4-mapped key shorter than the mapping is an IPv6 prefix.
        let (addr, _) = deny_key(&"192.0.2.7/32".parse().unwrap());
        assert_eq!(deny_prefix(&addr, 80), Some("::/80".parse().unwrap()));
        assert_eq!(deny_prefix(&addr, 129), None);
    }

    #[test]
    fn an_adopting_planner_keeps_ids_and_writes_nothing_for_the_same_config() {
        let config = config(true, "maglev");
        let mut first = planner();
        first.plan(&config, &BTreeMap::new()).unwrap();
        let snapshot = Snapshot {
            services: first.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: first.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            vips: first.vips.iter().map(|(k, v)| (*k, *v)).collect(),
            nat: first.nat.iter().map(|(k, v)| (*k, *v)).collect(),
            deny: first.deny.iter().copied().collect(),
            runtime_deny: Vec::new(),
            rows: first.rows.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        };
        let mut second = planner();
        second.adopt(&config, snapshot);
        assert_eq!(second.plan(&config, &BTreeMap::new()).unwrap(), []);
        let ids =
            |p: &Planner| -> Vec<u32> { p.planned()[0].backends.iter().map(|b| b.id).collect() };
        assert_eq!(ids(&second), ids(&first));
        // A new backend after the takeover gets a fresh id, not a taken one.
        let mut grown = config.clone();
        grown.services[0].backends.push(crate::config::Backend {
            address: "192.0.2.14".parse().unwrap(),
            port: Some(8080),
            weight: 100,
            tier: 0,
        });
        second.plan(&grown, &BTreeMap::new()).unwrap();
        assert_eq!(second.planned()[0].backends[4].id, 4);
    }

    #[test]
    fn removed_service_goes_vip_first() {
        let mut planner = planner();
        planner
            .plan(&config(false, "maglev"), &BTreeMap::new())
            .unwrap();
        let empty = Config::parse("instance: t\ninterfaces: [{ name: eth0 }]\n").unwrap();
        let writes = planner.plan(&empty, &BTreeMap::new()).unwrap();
        let vip = writes
            .iter()
            .position(|w| matches!(w, Write::RemoveVip(_)))
            .unwrap();
        let service = writes
            .iter()
            .position(|w| matches!(w, Write::RemoveService(_)))
            .unwrap();
        assert!(vip < service);
        assert_eq!(
            writes
                .iter()
                .filter(|w| matches!(w, Write::Backend(_, v) if v.flags == 0))
                .count(),
            3
        );
    }

    /// Maps as a sequence of writes leaves them (absent = a fresh map).
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Maps {
        backends: BTreeMap<u32, BackendValue>,
        rows: BTreeMap<u32, BTreeMap<u32, u32>>,
        services: BTreeMap<ServiceKey, ServiceValue>,
        vips: BTreeMap<Addr, VipValue>,
        nat: BTreeMap<Endpoint, NatValue>,
        deny: std::collections::BTreeSet<(Addr, u32)>,
    }

    impl Maps {
        fn apply(&mut self, writes: &[Write]) {
            for write in writes {
                match write {
                    Write::Backend(id, value) if *value == BackendValue::default() => {
                        self.backends.remove(id);
                    }
                    Write::Backend(id, value) => {
                        self.backends.insert(*id, *value);
                    }
                    Write::MaglevRow { row, table } => {
                        let row = self.rows.entry(*row).or_default();
                        for (slot, id) in (0u32..).zip(table.iter()) {
                            if id == 0 {
                                row.remove(&slot);
                            } else {
                                row.insert(slot, id);
                            }
                        }
                    }
                    Write::MaglevSlots { row, slots } => {
                        let row = self.rows.entry(*row).or_default();
                        for (slot, id) in slots {
                            if *id == 0 {
                                row.remove(slot);
                            } else {
                                row.insert(*slot, *id);
                            }
                        }
                    }
                    Write::Service(key, value) => {
                        self.services.insert(*key, *value);
                    }
                    Write::RemoveService(key) => {
                        self.services.remove(key);
                    }
                    Write::Vip(key, value) => {
                        self.vips.insert(*key, *value);
                    }
                    Write::RemoveVip(key) => {
                        self.vips.remove(key);
                    }
                    Write::Nat(key, value) => {
                        self.nat.insert(*key, *value);
                    }
                    Write::RemoveNat(key) => {
                        self.nat.remove(key);
                    }
                    Write::Deny(addr, len) => {
                        self.deny.insert((*addr, *len));
                    }
                    Write::RemoveDeny(addr, len) => {
                        self.deny.remove(&(*addr, *len));
                    }
                }
            }
            self.rows.retain(|_, row| !row.is_empty());
        }
    }

    #[test]
    fn undo_takes_half_written_maps_back_to_the_old_plan() {
        let before = config(false, "maglev");
        let text = String::from(
            "instance: t\ninterfaces: [{ name: eth0 }]\nservices:\n\
             \x20 - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: round-robin, \
             backends: [{ address: 192.0.2.11, port: 8080, weight: 7 }, { address: 192.0.2.14, port: 8080 }] }\n\
             \x20 - { name: dns, vip: 203.0.113.53, port: 53, protocol: udp, \
             backends: [{ address: 192.0.2.31 }] }\n\
             guard: { deny: [198.51.100.0/24] }\ndataplane: { ring_size: 251 }\n",
        );
        let after = Config::parse(&text).unwrap();
        let mut old = planner();
        let mut maps = Maps::default();
        maps.apply(&old.plan(&before, &BTreeMap::new()).unwrap());
        let settled = std::mem::take(&mut maps);
        let mut next = old.clone();
        let writes = next.plan(&after, &BTreeMap::new()).unwrap();
        assert!(writes.len() > 4, "{writes:?}");
        let undo = old.undo(&next);
        // Fail after every possible number of writes: undoing always lands
        // on the maps of the old plan.
        for done in 0..=writes.len() {
            let mut half = settled.clone();
            half.apply(&writes[..done]);
            half.apply(&undo);
            assert_eq!(half, settled, "after {done} of {} writes", writes.len());
        }
    }
}

//! Next hops of backends, resolved from the kernel's routes and neighbours
//! (over netlink) into `HOPS` entries, so the data path need not ask the FIB
//! for every packet (docs/DESIGN.md §2.8).
//!
//! An edge: it asks the kernel and answers with [`HopValue`]s; the
//! controller decides when to ask and writes the answers. The kernel is
//! also made to resolve every backend's neighbour itself — a "managed"
//! neighbour entry, which it keeps resolved — because an XDP data path never
//! triggers ARP / ND: without it a DSR backend nobody else talks to would
//! never get a neighbour entry, and its packets would be dropped for ever.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    Addr, HopValue,
    maps::{HOP_RESOLVED, ROUTES_MAX},
};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    netlink::{Family, Neighbour, Netlink, NetlinkError, RouteKind},
    plan::{PlannedService, map_addr},
};

/// `ROUTES` entries by (prefix, length), both in map form.
pub type Routes = BTreeMap<(Addr, u32), HopValue>;

/// What the kernel says about the way to one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A next hop with a resolved MAC: the data path may use it.
    Resolved(HopValue),
    /// A route, but no usable neighbour entry yet (being resolved): the data
    /// path asks the FIB meanwhile.
    Pending,
    /// No unicast route (unreachable, local, blackhole): the FIB decides.
    NoRoute,
}

impl Resolution {
    /// The `HOPS` entry to write: the hop, or an empty entry (FIB fallback).
    pub fn entry(self) -> HopValue {
        match self {
            Resolution::Resolved(hop) => hop,
            Resolution::Pending | Resolution::NoRoute => HopValue::default(),
        }
    }
}

/// Resolves backends' next hops; remembers the neighbour entries it asked
/// the kernel to manage, so a clean stop can remove them.
#[derive(Debug)]
pub struct Resolver {
    netlink: Netlink,
    managed: BTreeSet<(IpAddr, u32)>,
    /// Whether the last lookup found a routing table too large to mirror.
    routes_too_many: bool,
}

impl Resolver {
    /// Opens the netlink socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: Netlink::open()?,
            managed: BTreeSet::new(),
            routes_too_many: false,
        })
    }

    /// Looks up the next hop of every backend of `targets`, the routing
    /// table when a NAT service needs it (only the NAT reply path reads
    /// `ROUTES`), and this host's source address towards each of its
    /// tunnel backends: netlink I/O only, nothing written, so it runs
    /// without the controller.
    pub fn lookup(&mut self, targets: &Targets) -> Lookup {
        let mut by_address: BTreeMap<IpAddr, HopValue> = BTreeMap::new();
        let mut hops = BTreeMap::new();
        let mut pending = BTreeSet::new();
        for &(id, address) in &targets.backends {
            let hop = *by_address
                .entry(address)
                .or_insert_with(|| match self.resolve(address) {
                    Ok(resolution) => {
                        if resolution == Resolution::Pending {
                            pending.insert(address);
                        }
                        resolution.entry()
                    }
                    Err(error) => {
                        tracing::warn!(%address, %error, "resolving the next hop");
                        HopValue::default()
                    }
                });
            hops.insert(id, hop);
        }
        let routes = if targets.nat {
            match self.routes() {
                Ok(Some(routes)) => {
                    self.routes_too_many = false;
                    Some(routes)
                }
                Ok(None) => {
                    if !self.routes_too_many {
                        tracing::warn!(
                            max = ROUTES_MAX,
                            "routing table too large to mirror: NAT replies ask the FIB"
                        );
                    }
                    self.routes_too_many = true;
                    Some(BTreeMap::new())
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the routing table; keeping the last copy");
                    None
                }
            }
        } else {
            Some(BTreeMap::new())
        };
        let sources = targets
            .tunnels
            .iter()
            .map(|&tunnel| {
                let source = self.source_towards(tunnel).unwrap_or_else(|error| {
                    tracing::debug!(backend = %tunnel, %error, "no route to a tunnel backend");
                    None
                });
                (tunnel, source)
            })
            .collect();
        Lookup {
            targets: targets.clone(),
            hops,
            routes,
            managed: self.managed.clone(),
            sources,
            pending,
        }
    }

    /// The next hop of packets to `backend`: the route's egress interface
    /// and MTU, our MAC there, and the MAC of the gateway (or of the backend
    /// itself when it is on-link). A next hop without a usable neighbour
    /// entry is handed to the kernel to resolve (and keep resolved).
    pub fn resolve(&mut self, backend: IpAddr) -> Result<Resolution, NetlinkError> {
        let route = self.netlink.route_get(backend)?;
        if route.kind != RouteKind::Unicast || route.oif == 0 {
            return Ok(Resolution::NoRoute);
        }
        let next = route.gateway.unwrap_or(backend);
        self.through(backend, next, route.oif, route.mtu)
    }

    /// The hop to `target` through the neighbour `next` on `oif`: resolved
    /// if the neighbour's MAC is known (else handed to the kernel to
    /// resolve), with the interface's MAC and MTU (or `route_mtu` when
    /// smaller).
    fn through(
        &mut self,
        target: IpAddr,
        next: IpAddr,
        oif: u32,
        route_mtu: Option<u32>,
    ) -> Result<Resolution, NetlinkError> {
        let neighbour = self.netlink.neighbour_get(next, oif)?;
        let Some(mac) = neighbour.filter(Neighbour::usable).and_then(|n| n.mac) else {
            if !self.managed.contains(&(next, oif)) && self.netlink.neighbour_manage(next, oif)? {
                tracing::info!(%target, next_hop = %next, ifindex = oif,
                               "asked the kernel to resolve the next hop");
                self.managed.insert((next, oif));
            }
            return Ok(Resolution::Pending);
        };
        let link = self.netlink.link(oif)?;
        // An interface without a MAC (a tunnel device) takes no Ethernet
        // header from us: the FIB path decides for it.
        let Some(smac) = link.mac else {
            return Ok(Resolution::NoRoute);
        };
        let mtu = route_mtu.unwrap_or(link.mtu).min(link.mtu);
        Ok(Resolution::Resolved(HopValue {
            addr: map_addr(target),
            ifindex: oif,
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            flags: HOP_RESOLVED,
            pad: 0,
            dmac: mac,
            smac,
        }))
    }

    /// This host's preferred source address for packets to `target` (the
    /// `src` of `ip route get TARGET`): its own address on the egress
    /// interface. `None` without a unicast route.
    pub fn source_towards(&mut self, target: IpAddr) -> Result<Option<IpAddr>, NetlinkError> {
        let route = self.netlink.route_get(target)?;
        if route.kind != RouteKind::Unicast {
            return Ok(None);
        }
        Ok(route.source)
    }

    /// The `ROUTES` content: every prefix of the main routing table (and
    /// this host's own addresses, as /32 and /128), with a resolved hop for
    /// single-gateway unicast routes and an empty one (FIB) for the rest —
    /// connected prefixes (every host its own MAC), multipath, unreachable
    /// and local ones. `None` when the table is larger than `ROUTES` holds.
    pub fn routes(&mut self) -> Result<Option<Routes>, NetlinkError> {
        let mut routes = BTreeMap::new();
        for family in [Family::V4, Family::V6] {
            let limit = ROUTES_MAX as usize + 1;
            let dump = match self.netlink.route_dump_at_most(family, limit) {
                Err(NetlinkError::TooLarge { .. }) => return Ok(None),
                dump => dump?,
            };
            for route in dump {
                let hop = match route.gateway {
                    Some(gateway)
                        if route.kind == RouteKind::Unicast
                            && !route.multipath
                            && route.oif != 0 =>
                    {
                        self.through(route.dst, gateway, route.oif, route.mtu)?
                            .entry()
                    }
                    _ => HopValue::default(),
                };
                routes.insert(map_prefix(route.dst, route.prefix_len), hop);
            }
        }
        for address in local_addresses() {
            routes.insert(map_prefix(address, 128), HopValue::default());
        }
        if routes.len() > ROUTES_MAX as usize {
            return Ok(None);
        }
        Ok(Some(routes))
    }

    /// Removes the managed neighbour entries this resolver created (on a
    /// clean stop; after SIGQUIT the data plane still needs them).
    pub fn forget_managed(&mut self) {
        for (addr, ifindex) in std::mem::take(&mut self.managed) {
            if let Err(error) = self.netlink.neighbour_forget(addr, ifindex) {
                tracing::warn!(%addr, ifindex, %error, "removing a managed neighbour entry");
            }
        }
    }
}

/// What a [`Resolver::lookup`] looks up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// (backend id, address) of every planned backend: their next hops.
    pub backends: Vec<(u32, IpAddr)>,
    /// Whether a NAT service needs the routing table mirrored.
    pub nat: bool,
    /// Tunnel backends whose outer source is this host's address towards
    /// them (no `dataplane.tunnel_source_*` for their family): the source
    /// towards each.
    pub tunnels: Vec<IpAddr>,
}

/// What a [`Resolver::lookup`] found, to be written by [`HopCache::write`]
/// (and, for the tunnel sources, by the controller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// What was looked up.
    pub targets: Targets,
    /// `HOPS` entries by backend id.
    hops: BTreeMap<u32, HopValue>,
    /// `ROUTES` content; `None`: keep the last copy (the dump failed).
    routes: Option<Routes>,
    /// Neighbour entries the resolver asked the kernel to manage.
    managed: BTreeSet<(IpAddr, u32)>,
    /// This host's source address towards each of `targets.tunnels`;
    /// `None`: no unicast route (or the lookup failed).
    sources: BTreeMap<IpAddr, Option<IpAddr>>,
    /// Backend addresses with a route but no usable neighbour entry yet
    /// (handed to the kernel to resolve).
    pending: BTreeSet<IpAddr>,
}

impl Lookup {
    /// This host's source address towards the tunnel backend `tunnel`, as
    /// looked up; `None` without a route, or if `tunnel` was not a target.
    pub fn source_towards(&self, tunnel: IpAddr) -> Option<IpAddr> {
        self.sources.get(&tunnel).copied().flatten()
    }
}

/// The backends of `planned` and whether a NAT service exists: what a
/// lookup of next hops needs (no tunnel sources; the controller adds
/// those from its configuration).
pub fn targets(planned: &[PlannedService]) -> Targets {
    let backends = planned
        .iter()
        .flat_map(|service| &service.backends)
        .map(|backend| (backend.id, backend.key.address))
        .collect();
    let nat = planned
        .iter()
        .any(|service| service.value.forwarding == lb_common::maps::FWD_NAT);
    Targets {
        backends,
        nat,
        tunnels: Vec::new(),
    }
}

/// A [`Resolver`] and the `HOPS` entries it last wrote.
#[derive(Debug)]
pub struct HopCache {
    resolver: Resolver,
    written: BTreeMap<u32, HopValue>,
    /// Addresses the last lookup found still being resolved.
    pending: BTreeSet<IpAddr>,
    /// The `ROUTES` entries written.
    routes: Routes,
}

impl HopCache {
    /// Opens the resolver; nothing is written yet.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            resolver: Resolver::open()?,
            written: BTreeMap::new(),
            pending: BTreeSet::new(),
            routes: BTreeMap::new(),
        })
    }

    /// Resolves the next hop of every backend in `planned` and writes the
    /// `HOPS` entries that changed (and clears those of backends that are
    /// gone); returns how many were written. A backend whose hop cannot be
    /// resolved gets an empty entry: its packets ask the FIB.
    pub fn refresh(&mut self, planned: &[PlannedService], dataplane: &mut Dataplane) -> usize {
        let lookup = self.lookup(&targets(planned));
        self.write(lookup, dataplane)
    }

    /// See [`Resolver::lookup`]: on the caller's thread, with this cache's
    /// resolver (at start and reload; the follower has its own).
    pub fn lookup(&mut self, targets: &Targets) -> Lookup {
        self.resolver.lookup(targets)
    }

    /// Writes what `lookup` found and this cache has not written yet (and
    /// clears the entries of backends it no longer names); returns how
    /// many entries were written or removed.
    pub fn write(&mut self, lookup: Lookup, dataplane: &mut Dataplane) -> usize {
        // Neighbour entries another resolver asked for are removed on a
        // clean stop too.
        self.resolver.managed.extend(lookup.managed);
        self.pending = lookup.pending;
        let mut desired = lookup.hops;
        let gone = self
            .written
            .keys()
            .filter(|id| !desired.contains_key(id))
            .map(|id| (*id, HopValue::default()));
        let changes: Vec<(u32, HopValue)> = desired
            .iter()
            .filter(|(id, hop)| self.written.get(id) != Some(hop))
            .map(|(id, hop)| (*id, *hop))
            .chain(gone)
            .collect();
        let mut written = 0;
        for (id, hop) in changes {
            match dataplane.set_hop(id, &hop) {
                Ok(()) => {
                    written += 1;
                    if hop.flags & HOP_RESOLVED == 0 {
                        tracing::debug!(id, "next hop not resolved: FIB fallback");
                    } else {
                        tracing::debug!(id, ifindex = hop.ifindex, dmac = ?hop.dmac, "next hop cached");
                    }
                }
                Err(error) => {
                    tracing::warn!(id, error = %format!("{error:#}"), "writing a next hop");
                    // Not remembered, so the next refresh writes it again.
                    desired.remove(&id);
                }
            }
        }
        self.written = desired;
        match lookup.routes {
            Some(routes) => written + self.write_routes(routes, dataplane),
            None => written,
        }
    }

    /// Waits (at most `within`) for the next hops the last lookup found
    /// still being resolved — the kernel resolves a managed neighbour
    /// entry at once, in a few milliseconds on a LAN — re-resolving only
    /// those, and writes each as it resolves: so the first packets after
    /// a start take the cached path rather than the FIB's. Returns how
    /// many entries were written; what is still pending when time is up
    /// is left to the follower.
    pub fn settle(
        &mut self,
        targets: &Targets,
        dataplane: &mut Dataplane,
        within: std::time::Duration,
    ) -> usize {
        let start = std::time::Instant::now();
        let mut written = 0;
        let mut pause = std::time::Duration::from_millis(2);
        while !self.pending.is_empty() && start.elapsed() < within {
            std::thread::sleep(pause.min(within.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
            let pending: Vec<IpAddr> = self.pending.iter().copied().collect();
            for address in pending {
                let hop = match self.resolver.resolve(address) {
                    Ok(Resolution::Pending) => continue,
                    Ok(resolution) => resolution.entry(),
                    Err(error) => {
                        tracing::debug!(%address, %error, "resolving the next hop");
                        continue;
                    }
                };
                self.pending.remove(&address);
                for &(id, _) in targets.backends.iter().filter(|(_, a)| *a == address) {
                    if self.written.get(&id) == Some(&hop) {
                        continue;
                    }
                    match dataplane.set_hop(id, &hop) {
                        Ok(()) => {
                            self.written.insert(id, hop);
                            written += 1;
                        }
                        Err(error) => {
                            tracing::warn!(id, error = %format!("{error:#}"), "writing a next hop");
                        }
                    }
                }
            }
        }
        if !self.pending.is_empty() {
            tracing::info!(
                pending = self.pending.len(),
                "next hops still being resolved at start: their packets ask the FIB meanwhile"
            );
        }
        written
    }

    /// Mirrors the routing table into `ROUTES` for the reply path; returns
    /// how many prefixes were written or removed.
    fn write_routes(&mut self, desired: Routes, dataplane: &mut Dataplane) -> usize {
        let mut changed = 0;
        let gone: Vec<(Addr, u32)> = self
            .routes
            .keys()
            .filter(|key| !desired.contains_key(key))
            .copied()
            .collect();
        // Removals first would briefly expose a shorter, cached prefix for a
        // longer one that is going; additions first are harmless.
        for (key, hop) in &desired {
            if self.routes.get(key) != Some(hop) {
                match dataplane.set_route(&key.0, key.1, hop) {
                    Ok(()) => changed += 1,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "writing a route");
                    }
                }
            }
        }
        for key in gone {
            match dataplane.remove_route(&key.0, key.1) {
                Ok(()) => changed += 1,
                Err(error) => tracing::warn!(error = %format!("{error:#}"), "removing a route"),
            }
        }
        self.routes = desired;
        changed
    }

    /// Empties every `HOPS` entry and `ROUTES` prefix this cache wrote, so
    /// packets ask the FIB until the next refresh (tests and benchmarks of
    /// the fallback).
    pub fn clear(&mut self, dataplane: &mut Dataplane) -> Result<(), DataplaneError> {
        for id in std::mem::take(&mut self.written).into_keys() {
            dataplane.set_hop(id, &HopValue::default())?;
        }
        for (prefix, len) in std::mem::take(&mut self.routes).into_keys() {
            dataplane.remove_route(&prefix, len)?;
        }
        Ok(())
    }

    /// See [`Resolver::source_towards`].
    pub fn source_towards(&mut self, target: IpAddr) -> Result<Option<IpAddr>, NetlinkError> {
        self.resolver.source_towards(target)
    }

    /// See [`Resolver::forget_managed`].
    pub fn forget_managed(&mut self) {
        self.resolver.forget_managed();
    }
}

/// A prefix in map form: IPv4 as IPv4-mapped with its length + 96.
fn map_prefix(address: IpAddr, prefix_len: u8) -> (Addr, u32) {
    let len = u32::from(prefix_len);
    match address {
        IpAddr::V4(_) => (map_addr(address), (len + 96).min(128)),
        IpAddr::V6(_) => (map_addr(address), len.min(128)),
    }
}

/// This host's own addresses (in the calling thread's network namespace).
fn local_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return addresses;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it states.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in (read
                // unaligned: a sockaddr is only 2-byte aligned).
                let sin = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
                addresses.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6 (as above).
                let sin6 = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                addresses.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

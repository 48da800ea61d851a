//! Next hops of backends, resolved from the kernel's routes and neighbours
//! (over netlink) into `HOPS` entries, so the data path need not ask the FIB
//! for every packet (DESIGN.md §2.8).
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

use lb_common::{HopValue, maps::HOP_RESOLVED};

use crate::{
    dataplane::Dataplane,
    netlink::{Neighbour, Netlink, NetlinkError, RouteKind},
    plan::{PlannedService, map_addr},
};

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
}

impl Resolver {
    /// Opens the netlink socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: Netlink::open()?,
            managed: BTreeSet::new(),
        })
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
        let neighbour = self.netlink.neighbour_get(next, route.oif)?;
        let Some(mac) = neighbour.filter(Neighbour::usable).and_then(|n| n.mac) else {
            if !self.managed.contains(&(next, route.oif))
                && self.netlink.neighbour_manage(next, route.oif)?
            {
                tracing::info!(%backend, next_hop = %next, ifindex = route.oif,
                               "asked the kernel to resolve the next hop");
                self.managed.insert((next, route.oif));
            }
            return Ok(Resolution::Pending);
        };
        let link = self.netlink.link(route.oif)?;
        // An interface without a MAC (a tunnel device) takes no Ethernet
        // header from us: the FIB path decides for it.
        let Some(smac) = link.mac else {
            return Ok(Resolution::NoRoute);
        };
        let mtu = route.mtu.unwrap_or(link.mtu).min(link.mtu);
        Ok(Resolution::Resolved(HopValue {
            addr: map_addr(backend),
            ifindex: route.oif,
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            flags: HOP_RESOLVED,
            pad: 0,
            dmac: mac,
            smac,
        }))
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

/// A [`Resolver`] and the `HOPS` entries it last wrote.
#[derive(Debug)]
pub struct HopCache {
    resolver: Resolver,
    written: BTreeMap<u32, HopValue>,
}

impl HopCache {
    /// Opens the resolver; nothing is written yet.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            resolver: Resolver::open()?,
            written: BTreeMap::new(),
        })
    }

    /// Resolves the next hop of every backend in `planned` and writes the
    /// `HOPS` entries that changed (and clears those of backends that are
    /// gone); returns how many were written. A backend whose hop cannot be
    /// resolved gets an empty entry: its packets ask the FIB.
    pub fn refresh(&mut self, planned: &[PlannedService], dataplane: &mut Dataplane) -> usize {
        let mut by_address: BTreeMap<IpAddr, HopValue> = BTreeMap::new();
        let mut desired: BTreeMap<u32, HopValue> = BTreeMap::new();
        for backend in planned.iter().flat_map(|service| &service.backends) {
            let address = backend.key.address;
            let resolver = &mut self.resolver;
            let hop =
                *by_address
                    .entry(address)
                    .or_insert_with(|| match resolver.resolve(address) {
                        Ok(resolution) => resolution.entry(),
                        Err(error) => {
                            tracing::warn!(%address, %error, "resolving the next hop");
                            HopValue::default()
                        }
                    });
            desired.insert(backend.id, hop);
        }
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
        written
    }

    /// See [`Resolver::forget_managed`].
    pub fn forget_managed(&mut self) {
        self.resolver.forget_managed();
    }
}

//! Backend ids ↔ the names sync puts on the wire. Two balancers number
//! services and backends as their own plans go, so an entry names its
//! service by (VIP, port, protocol) and its backend by (address, port);
//! the [`Directory`] of a plan translates both ways. Pure.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{FlowKey, maps::ipv4_mapped};

use super::wire::Entry;

/// One planned service as the directory needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryService {
    /// The VIP.
    pub vip: IpAddr,
    /// The service port (0: every port).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Its backends: (address, configured port, id in `BACKENDS`).
    pub backends: Vec<(IpAddr, u16, u32)>,
}

/// Why a peer's entry names nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// No service on (VIP, port, protocol), nor an all-port one on the VIP.
    Service,
    /// The service has no backend of that address and port.
    Backend,
}

/// Where a backend id points: its service's key and its own name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Named {
    backend: IpAddr,
    port: u16,
}

/// A service's backends by (address, configured port): their ids.
type Backends = HashMap<(IpAddr, u16), u32>;

/// The translation tables of one plan.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_id: HashMap<u32, Named>,
    services: HashMap<(IpAddr, u16, u8), Backends>,
}

impl Directory {
    /// The directory of `services`.
    pub fn new(services: impl IntoIterator<Item = DirectoryService>) -> Self {
        let mut directory = Self::default();
        for service in services {
            let backends = directory
                .services
                .entry((service.vip, service.port, service.proto))
                .or_default();
            for (backend, port, id) in service.backends {
                backends.insert((backend, port), id);
                directory.by_id.insert(id, Named { backend, port });
            }
        }
        directory
    }

    /// The directory of a plan: each service's key and its backends by
    /// configured address and port.
    pub fn of_plan(planned: &[crate::plan::PlannedService]) -> Self {
        Self::new(planned.iter().map(|service| {
            DirectoryService {
                vip: crate::guard::addr_ip(&service.key.addr),
                port: service.key.port,
                proto: service.key.proto,
                backends: service
                    .backends
                    .iter()
                    .map(|b| (b.key.address, b.key.port, b.id))
                    .collect(),
            }
        }))
    }

    /// The wire entry of a flow this balancer scheduled to `backend_id`;
    /// `None` for an id the plan no longer has (a reload in between).
    pub fn entry_for(&self, flow: &FlowKey, backend_id: u32) -> Option<Entry> {
        let named = self.by_id.get(&backend_id)?;
        Some(Entry {
            client: addr_ip(&flow.src),
            client_port: flow.sport,
            vip: addr_ip(&flow.dst),
            vip_port: flow.dport,
            proto: flow.proto,
            backend: named.backend,
            backend_port: named.port,
        })
    }

    /// A peer's entry as this balancer's flow key and backend id: the
    /// service of the exact port first, then the VIP's all-port service.
    ///
    /// # Errors
    /// [`Unresolved`] says what is missing here.
    pub fn resolve(&self, entry: &Entry) -> Result<(FlowKey, u32), Unresolved> {
        let backends = self
            .services
            .get(&(entry.vip, entry.vip_port, entry.proto))
            .or_else(|| self.services.get(&(entry.vip, 0, entry.proto)))
            .ok_or(Unresolved::Service)?;
        let id = backends
            .get(&(entry.backend, entry.backend_port))
            .ok_or(Unresolved::Backend)?;
        let flow = FlowKey {
            src: wide(entry.client),
            dst: wide(entry.vip),
            sport: entry.client_port,
            dport: entry.vip_port,
            proto: entry.proto,
            pad: [0; 3],
        };
        Ok((flow, *id))
    }

    /// Whether the plan has no backends (nothing can be sent or installed).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A map address as an [`IpAddr`] (IPv4-mapped ones as IPv4).
fn addr_ip(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An [`IpAddr`] as the maps store it.
fn wide(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => ipv4_mapped(Ipv4Addr::octets(&v4)),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn directory() -> Directory {
        Directory::new([
            DirectoryService {
                vip: ip("203.0.113.10"),
                port: 80,
                proto: 6,
                backends: vec![(ip("192.0.2.11"), 8080, 4), (ip("192.0.2.12"), 8080, 5)],
            },
            DirectoryService {
                vip: ip("203.0.113.10"),
                port: 0,
                proto: 6,
                backends: vec![(ip("192.0.2.11"), 0, 9)],
            },
            DirectoryService {
                vip: ip("2001:db8:ff::10"),
                port: 53,
                proto: 17,
                backends: vec![(ip("2001:db8::11"), 53, 1)],
            },
        ])
    }

    fn flow(src: IpAddr, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: wide(src),
            dst: wide(dst),
            sport: 40000,
            dport,
            proto,
            pad: [0; 3],
        }
    }

    /// What one balancer sends, another with other ids resolves to its own.
    #[test]
    fn entries_round_trip_between_numberings() {
        let here = directory();
        let there = Directory::new([DirectoryService {
            vip: ip("203.0.113.10"),
            port: 80,
            proto: 6,
            backends: vec![(ip("192.0.2.12"), 8080, 17), (ip("192.0.2.11"), 8080, 16)],
        }]);
        let key = flow(ip("198.51.100.2"), ip("203.0.113.10"), 80, 6);
        let entry = here.entry_for(&key, 5).unwrap();
        assert_eq!(entry.client, ip("198.51.100.2"));
        assert_eq!(entry.backend, ip("192.0.2.12"));
        assert_eq!(entry.backend_port, 8080);
        assert_eq!(there.resolve(&entry), Ok((key, 17)));
        assert_eq!(here.resolve(&entry), Ok((key, 5)));
        assert_eq!(here.entry_for(&key, 99), None, "an id the plan lost");
        let key6 = flow(ip("2001:db8:1::2"), ip("2001:db8:ff::10"), 53, 17);
        let entry6 = here.entry_for(&key6, 1).unwrap();
        assert_eq!(entry6.vip, ip("2001:db8:ff::10"));
        assert_eq!(here.resolve(&entry6), Ok((key6, 1)));
    }

    #[test]
    fn the_all_port_service_and_what_is_unknown() {
        let here = directory();
        let mut entry = here
            .entry_for(&flow(ip("198.51.100.2"), ip("203.0.113.10"), 443, 6), 9)
            .unwrap();
        // Port 443 has no service of its own: the all-port one.
        assert_eq!(here.resolve(&entry).map(|(_, id)| id), Ok(9));
        entry.backend = ip("192.0.2.99");
        assert_eq!(here.resolve(&entry), Err(Unresolved::Backend));
        entry.proto = 17;
        assert_eq!(here.resolve(&entry), Err(Unresolved::Service));
        entry.proto = 6;
        entry.vip = ip("203.0.113.99");
        assert_eq!(here.resolve(&entry), Err(Unresolved::Service));
        assert!(Directory::default().is_empty());
    }
}

//! `decide` over in-memory tables laid out as the planner lays out the maps.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    Addr, BackendValue, ConnValue, FlowKey, HopValue, RateValue, Reason, ServiceKey, ServiceValue,
    Settings, map_names,
    maps::{
        BACKEND_USABLE, CONN_CLOSED, Endpoint, GuardDenial, HOP_RESOLVED, SCHED_IP_HASH,
        SCHED_ROUND_ROBIN, SETTINGS_DENY, SETTINGS_GUARD, ServiceSlot,
    },
    proto,
};

use super::{Decision, HopView, Query, Read, ReadError, Source, Tables, map_addr};

/// [`super::decide`] over tables whose every read works.
fn decide(query: &Query, tables: &impl Tables) -> Decision {
    super::decide(query, tables).expect("every map reads")
}

const RING: u32 = 7;

#[derive(Default)]
struct Memory {
    settings: Settings,
    services: BTreeMap<(Addr, u16, u8), ServiceValue>,
    backends: BTreeMap<u32, BackendValue>,
    slots: BTreeMap<u32, u32>,
    rr: BTreeMap<u32, Vec<u32>>,
    conns: Vec<(FlowKey, ConnValue)>,
    hops: BTreeMap<u32, HopValue>,
    deny: Vec<(Addr, u32)>,
    rate: Option<RateValue>,
    now: u64,
}

impl Tables for Memory {
    fn settings(&self) -> Read<Settings> {
        Ok(self.settings)
    }
    fn is_vip(&self, addr: &Addr) -> Read<bool> {
        Ok(self.services.keys().any(|(a, _, _)| a == addr))
    }
    fn service(&self, key: &ServiceKey) -> Read<Option<ServiceValue>> {
        Ok(self.services.get(&(key.addr, key.port, key.proto)).copied())
    }
    fn service_slot(&self, id: u32) -> Read<Option<ServiceSlot>> {
        Ok(self
            .services
            .iter()
            .find(|(_, v)| v.id == id)
            .map(|((addr, port, proto), value)| ServiceSlot {
                key: Endpoint::new(*addr, *port, *proto),
                value: *value,
            }))
    }
    fn backend(&self, id: u32) -> Read<Option<BackendValue>> {
        Ok(self.backends.get(&id).copied())
    }
    fn slot(&self, index: u32) -> Read<Option<u32>> {
        Ok(self.slots.get(&index).copied())
    }
    fn rr_positions(&self, id: u32) -> Read<Vec<u32>> {
        Ok(self.rr.get(&id).cloned().unwrap_or_default())
    }
    fn conn(&self, flow: &FlowKey) -> Read<Option<ConnValue>> {
        Ok(self.conns.iter().find(|(k, _)| k == flow).map(|(_, v)| *v))
    }
    fn hop(&self, id: u32) -> Read<Option<HopValue>> {
        Ok(self.hops.get(&id).copied())
    }
    fn deny_prefixes(&self) -> Read<Vec<(Addr, u32)>> {
        Ok(self.deny.clone())
    }
    fn guard_denial(&self, _: &Addr) -> Read<Option<GuardDenial>> {
        Ok(None)
    }
    fn rate_bucket(&self, _: &Addr) -> Read<Option<RateValue>> {
        Ok(self.rate)
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
}

/// [`Memory`] with one map whose reads fail, as a lookup the kernel
/// refused (`MapTables` passes such a failure on; only an absent key or an
/// index past the end reads as `None`).
struct Failing<'a> {
    memory: &'a Memory,
    map: &'static str,
}

impl Failing<'_> {
    fn read(&self, map: &'static str) -> Read<()> {
        if map == self.map {
            return Err(ReadError {
                map,
                source: "`bpf_map_lookup_elem` failed: Operation not permitted".into(),
            });
        }
        Ok(())
    }
}

impl Tables for Failing<'_> {
    fn settings(&self) -> Read<Settings> {
        self.read(map_names::SETTINGS)?;
        self.memory.settings()
    }
    fn is_vip(&self, addr: &Addr) -> Read<bool> {
        self.read(map_names::VIPS)?;
        self.memory.is_vip(addr)
    }
    fn service(&self, key: &ServiceKey) -> Read<Option<ServiceValue>> {
        self.read(map_names::SERVICES)?;
        self.memory.service(key)
    }
    fn service_slot(&self, id: u32) -> Read<Option<ServiceSlot>> {
        self.read(map_names::SERVICE_IDS)?;
        self.memory.service_slot(id)
    }
    fn backend(&self, id: u32) -> Read<Option<BackendValue>> {
        self.read(map_names::BACKENDS)?;
        self.memory.backend(id)
    }
    fn slot(&self, index: u32) -> Read<Option<u32>> {
        self.read(map_names::MAGLEV)?;
        self.memory.slot(index)
    }
    fn rr_positions(&self, id: u32) -> Read<Vec<u32>> {
        self.read(map_names::RR_POS)?;
        self.memory.rr_positions(id)
    }
    fn conn(&self, flow: &FlowKey) -> Read<Option<ConnValue>> {
        self.read(map_names::CONNS_V4)?;
        self.memory.conn(flow)
    }
    fn hop(&self, id: u32) -> Read<Option<HopValue>> {
        self.read(map_names::HOPS)?;
        self.memory.hop(id)
    }
    fn deny_prefixes(&self) -> Read<Vec<(Addr, u32)>> {
        self.read(map_names::DENY)?;
        self.memory.deny_prefixes()
    }
    fn guard_denial(&self, src: &Addr) -> Read<Option<GuardDenial>> {
        self.read(map_names::GUARD_DENIED)?;
        self.memory.guard_denial(src)
    }
    fn rate_bucket(&self, src: &Addr) -> Read<Option<RateValue>> {
        self.read(map_names::RATE)?;
        self.memory.rate_bucket(src)
    }
    fn now_ns(&self) -> u64 {
        self.memory.now_ns()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// Service 0: 203.0.113.10:80/tcp, `scheduler`, every slot of its live
/// row (half 0) holding backend 1 (192.0.2.11) but slot 0, backend 2.
/// Service 1: 203.0.113.10:0/tcp (all ports), ip-hash, all slots backend 3.
fn memory(scheduler: u8) -> Memory {
    let vip = map_addr(ip("203.0.113.10"));
    let mut m = Memory {
        now: 100_000_000_000,
        ..Memory::default()
    };
    m.settings.ring_size = RING;
    m.settings.tcp_idle_ns = 60_000_000_000;
    let rr_len = if scheduler == SCHED_ROUND_ROBIN { 2 } else { 0 };
    m.services.insert(
        (vip, 80, proto::TCP),
        ServiceValue {
            id: 0,
            scheduler,
            rr_len,
            ..ServiceValue::default()
        },
    );
    m.services.insert(
        (vip, 0, proto::TCP),
        ServiceValue {
            id: 1,
            scheduler: SCHED_IP_HASH,
            ..ServiceValue::default()
        },
    );
    for (id, last, service_id) in [(1, 11, 0), (2, 12, 0), (3, 13, 1)] {
        m.backends.insert(
            id,
            BackendValue {
                addr: map_addr(ip(&format!("192.0.2.{last}"))),
                port: 8080,
                flags: BACKEND_USABLE,
                pad: 0,
                service_id,
            },
        );
    }
    for slot in 0..RING {
        m.slots.insert(slot, if slot == 0 { 2 } else { 1 });
        m.slots.insert(2 * RING + slot, 3);
    }
    m
}

fn query(client: &str, port: Option<u16>, vip_port: u16) -> Query {
    Query {
        client: ip(client),
        client_port: port,
        vip: ip("203.0.113.10"),
        port: vip_port,
        proto: proto::TCP,
        syn: false,
        cpu: None,
    }
}

#[test]
fn exact_service_then_all_port() {
    let m = memory(SCHED_IP_HASH);
    let exact = decide(&query("198.51.100.7", None, 80), &m);
    assert!(!exact.service.expect("service").all_ports);
    let all = decide(&query("198.51.100.7", None, 8443), &m);
    let service = all.service.expect("service");
    assert!(service.all_ports);
    assert_eq!(all.backend.map(|(id, _, _)| id), Some(3));
    assert_eq!(all.verdict, Some(Reason::ForwardUncachedHop));
    assert_eq!(all.hop, Some(HopView::Fib));
}

#[test]
fn not_a_vip_passes() {
    let m = memory(SCHED_IP_HASH);
    let mut q = query("198.51.100.7", None, 80);
    q.vip = ip("203.0.113.99");
    let d = decide(&q, &m);
    assert_eq!(d.verdict, Some(Reason::PassNoService));
    assert!(d.backend.is_none());
}

#[test]
fn maglev_needs_the_client_port() {
    let m = memory(0);
    let d = decide(&query("198.51.100.7", None, 80), &m);
    assert!(d.schedule.needs_client_port);
    assert!(d.backend.is_none() && d.verdict.is_none());
    let d = decide(&query("198.51.100.7", Some(40000), 80), &m);
    assert_eq!(d.backend.map(|(_, _, s)| s), Some(Source::Scheduler));
}

#[test]
fn connection_entry_is_kept_unless_closed_and_reopened() {
    let mut m = memory(0);
    let q = query("198.51.100.7", Some(40000), 80);
    let flow = decide(&q, &m).flow;
    m.conns.push((
        flow,
        ConnValue {
            backend_id: 2,
            flags: CONN_CLOSED,
            last_seen_ns: m.now - 1_000_000_000,
        },
    ));
    m.hops.insert(
        2,
        HopValue {
            addr: map_addr(ip("192.0.2.12")),
            ifindex: 3,
            mtu: 1500,
            flags: HOP_RESOLVED,
            ..HopValue::default()
        },
    );
    let later = decide(&q, &m);
    assert_eq!(
        later.backend.map(|(id, _, s)| (id, s)),
        Some((2, Source::Connection))
    );
    assert_eq!(later.verdict, Some(Reason::ForwardToBackend));
    let syn = decide(&Query { syn: true, ..q }, &m);
    assert!(!syn.connection.expect("entry").kept);
    assert_eq!(syn.backend.map(|(_, _, s)| s), Some(Source::Scheduler));
    // An unusable backend (down, drained away) loses its flows.
    m.backends.get_mut(&2).expect("backend").flags = 0;
    let moved = decide(&q, &m);
    assert!(!moved.connection.expect("entry").kept);
    assert_ne!(moved.backend.map(|(id, _, _)| id), Some(2));
}

#[test]
fn round_robin_names_each_cpus_next_pick() {
    let mut m = memory(SCHED_ROUND_ROBIN);
    m.rr.insert(0, vec![0, 1, 2]);
    let d = decide(&query("198.51.100.7", Some(1), 80), &m);
    assert_eq!(d.schedule.next_picks, vec![2, 1, 2]);
    assert!(d.backend.is_none() && d.verdict.is_none());
    let on_cpu1 = decide(
        &Query {
            cpu: Some(1),
            ..query("198.51.100.7", Some(1), 80)
        },
        &m,
    );
    assert_eq!(
        on_cpu1.backend.map(|(id, _, s)| (id, s)),
        Some((1, Source::NextPick))
    );
}

#[test]
fn deny_list_and_empty_slots() {
    let mut m = memory(SCHED_IP_HASH);
    m.deny.push((map_addr(ip("198.51.100.0")), 96 + 28));
    let d = decide(&query("198.51.100.7", None, 80), &m);
    // Listed, but the list is not in force without its settings flag.
    assert_ne!(d.verdict, Some(Reason::DropDenied));
    m.settings.flags = SETTINGS_DENY;
    let denied = decide(&query("198.51.100.7", None, 80), &m);
    assert_eq!(denied.verdict, Some(Reason::DropDenied));
    let outside = decide(&query("198.51.100.17", None, 80), &m);
    assert_ne!(outside.verdict, Some(Reason::DropDenied));
    for slot in 0..RING {
        m.slots.insert(slot, lb_common::NO_BACKEND);
    }
    let empty = decide(&query("198.51.100.17", None, 80), &m);
    assert_eq!(empty.verdict, Some(Reason::DropNoBackend));
}

#[test]
fn an_empty_bucket_refuses_new_flows_but_not_established_ones() {
    let mut m = memory(SCHED_IP_HASH);
    m.settings.rate_per_second = 10;
    m.settings.rate_burst = 5;
    let q = query("198.51.100.7", Some(40000), 80);
    // Half a flow's worth left, refilled 10 ms ago: 0.5 + 0.1 < 1.
    m.rate = Some(RateValue {
        milli_tokens: 500,
        last_ns: m.now - 10_000_000,
    });
    let d = decide(&q, &m);
    assert_eq!(d.guard.rate_tokens_milli, Some(600));
    assert_eq!(d.verdict, Some(Reason::DropRateLimited));
    // 50 ms later the bucket holds a flow again.
    m.rate = Some(RateValue {
        milli_tokens: 500,
        last_ns: m.now - 50_000_000,
    });
    assert_eq!(decide(&q, &m).verdict, Some(Reason::ForwardUncachedHop));
    // An established flow never asks the bucket.
    m.rate = Some(RateValue {
        milli_tokens: 0,
        last_ns: m.now,
    });
    let flow = decide(&q, &m).flow;
    m.conns.push((
        flow,
        ConnValue {
            backend_id: 1,
            flags: 0,
            last_seen_ns: m.now,
        },
    ));
    assert_eq!(
        decide(&q, &m).backend.map(|(id, _, s)| (id, s)),
        Some((1, Source::Connection))
    );
}

#[test]
fn a_map_that_cannot_be_read_is_an_error_naming_it_not_an_absent_entry() {
    // An established flow (CONNS_V4, BACKENDS, SERVICE_IDS, HOPS) of a
    // maglev service, with the deny list, the automatic guard and the rate
    // limit in force: every map the decision reads is read.
    let mut m = memory(0);
    m.settings.flags = SETTINGS_DENY | SETTINGS_GUARD;
    m.settings.rate_per_second = 10;
    let q = query("198.51.100.7", Some(40000), 80);
    let flow = decide(&q, &m).flow;
    m.conns.push((
        flow,
        ConnValue {
            backend_id: 1,
            flags: 0,
            last_seen_ns: m.now,
        },
    ));
    assert_eq!(
        decide(&q, &m).backend.map(|(id, _, s)| (id, s)),
        Some((1, Source::Connection))
    );
    let maps = [
        map_names::SETTINGS,
        map_names::VIPS,
        map_names::SERVICES,
        map_names::MAGLEV,
        map_names::DENY,
        map_names::GUARD_DENIED,
        map_names::RATE,
        map_names::CONNS_V4,
        map_names::BACKENDS,
        map_names::SERVICE_IDS,
        map_names::HOPS,
    ];
    for map in maps {
        let failing = Failing { memory: &m, map };
        match super::decide(&q, &failing) {
            Err(error) => assert_eq!(error.map, map),
            Ok(decision) => panic!("{map} unreadable, yet decided: {decision:?}"),
        }
    }
    // Round robin reads RR_POS.
    let mut rr = memory(SCHED_ROUND_ROBIN);
    rr.rr.insert(0, vec![0, 1]);
    let failing = Failing {
        memory: &rr,
        map: map_names::RR_POS,
    };
    let error = super::decide(&query("198.51.100.7", Some(1), 80), &failing).unwrap_err();
    assert_eq!(error.map, map_names::RR_POS);
    let text = format!("{:#}", anyhow::Error::new(error));
    assert!(
        text.contains("reading map RR_POS") && text.contains("Operation not permitted"),
        "{text}"
    );
}

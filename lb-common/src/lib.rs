//! Plain-old-data shared by the XDP programs (`lb-ebpf`) and the controller
//! (`lb-userspace`): map keys and values, verdict reasons, constants.
//!
//! Everything here is `#[repr(C)]`, built from integers and byte arrays only,
//! with explicit padding fields and a size assertion per struct: a map lookup
//! compares keys byte for byte, so uninitialised padding would make lookups
//! miss. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod attack;
pub mod hash;
pub mod maps;
pub mod reason;
pub mod trace;

pub use maps::{
    Addr, BackendValue, ConnValue, Endpoint, FlowKey, FlowKeyV4, HopValue, IfaceValue, NO_BACKEND,
    NatKey, NatValue, RateValue, ServiceKey, ServiceValue, Settings, Traffic, VipValue,
};
pub use reason::Reason;

/// IP protocol numbers the data path understands.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv4 in IP (IPIP).
    pub const IPIP: u8 = 4;
    /// IPv6 in IP (IP6IP6, or IPv6 in IPv4).
    pub const IPV6: u8 = 41;
}

/// Names of the maps, shared so the loader and the program never disagree.
pub mod map_names {
    /// Services by (vip, port, proto).
    pub const SERVICES: &str = "SERVICES";
    /// Every address that carries at least one service.
    pub const VIPS: &str = "VIPS";
    /// Backends by id.
    pub const BACKENDS: &str = "BACKENDS";
    /// Maglev rows (and round-robin sequences), two per service.
    pub const MAGLEV: &str = "MAGLEV";
    /// Connection table of IPv6 flows (LRU).
    pub const CONNS: &str = "CONNS";
    /// Connection table of IPv4 flows (LRU), same size as `CONNS`.
    pub const CONNS_V4: &str = "CONNS_V4";
    /// Reply path: backend (addr, port, proto) to the VIP to restore.
    pub const NAT: &str = "NAT";
    /// TCP connections all-port NAT backends opened themselves (LRU).
    pub const NAT_OUTBOUND: &str = "NAT_OUTBOUND";
    /// Per-CPU round-robin positions, per service.
    pub const RR_POS: &str = "RR_POS";
    /// Runtime settings, one entry.
    pub const SETTINGS: &str = "SETTINGS";
    /// Egress interfaces for `bpf_redirect_map`, keyed by ifindex.
    pub const DEVMAP: &str = "DEVMAP";
    /// The interfaces lb is attached to, by ifindex.
    pub const IFACES: &str = "IFACES";
    /// Per-CPU counters, one slot per [`crate::Reason`].
    pub const STATS_REASONS: &str = "STATS_REASONS";
    /// Per-CPU traffic counters per service id.
    pub const STATS_SERVICES: &str = "STATS_SERVICES";
    /// Per-CPU traffic counters per backend id.
    pub const STATS_BACKENDS: &str = "STATS_BACKENDS";
    /// Deny list: source prefixes (LPM trie).
    pub const DENY: &str = "DENY";
    /// Per-source new-flow token buckets (LRU).
    pub const RATE: &str = "RATE";
    /// The automatic guard's thresholds, one entry.
    pub const GUARD_SETTINGS: &str = "GUARD_SETTINGS";
    /// The automatic guard's per-(source, VIP) counts (LRU).
    pub const GUARD_COUNTS: &str = "GUARD_COUNTS";
    /// Sources the automatic guard denied, with their expiry (LRU).
    pub const GUARD_DENIED: &str = "GUARD_DENIED";
    /// The main routing table's prefixes with resolved gateway hops (LPM).
    pub const ROUTES: &str = "ROUTES";
    /// Services by id, with their keys (established flows skip `SERVICES`).
    pub const SERVICE_IDS: &str = "SERVICE_IDS";
    /// Attached interfaces' MACs by `ifindex % 256`, without a hash lookup.
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    /// Next hop per backend id, resolved by the controller.
    pub const HOPS: &str = "HOPS";
    /// Bitset over VIP addresses: a clear bit means "not a VIP".
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// Bitset over NAT backend addresses: a clear bit means "not a reply".
    pub const NAT_FILTER: &str = "NAT_FILTER";
    /// `lb trace`: decisions, emitted only while a trace is attached.
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// `lb trace`: filters and rate limit, one entry.
    pub const TRACE_SETTINGS: &str = "TRACE_SETTINGS";
    /// `lb trace`: per-CPU rate-limit state and lost events.
    pub const TRACE_STATE: &str = "TRACE_STATE";
    /// Connection sync: the flows the data path scheduled (ring buffer),
    /// written only while `sync:` is on.
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Connection sync: per-CPU count of events lost to a full ring.
    pub const SYNC_LOST: &str = "SYNC_LOST";
    /// Benchmarks: `lb_floor_fwd`'s VIP and MACs (one entry).
    pub const FLOOR_HOP: &str = "FLOOR_HOP";
    /// Benchmarks: the reference balancer's flows (LRU hash).
    pub const REF_FLOWS: &str = "REF_FLOWS";
    /// Benchmarks: the frame to restore before each run.
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Benchmarks: the program under test (program array).
    pub const BENCH_TARGET: &str = "BENCH_TARGET";
    /// `guard.attack`: per-CPU counters per service id.
    pub const ATTACK_COUNTS: &str = "ATTACK_COUNTS";
    /// `guard.attack`: VIPs under attack.
    pub const ATTACK_VIPS: &str = "ATTACK_VIPS";
    /// `guard.attack`: sources that proved themselves.
    pub const ATTACK_VERIFIED: &str = "ATTACK_VERIFIED";
    /// `guard.attack`: first SYNs waiting for their retransmission.
    pub const ATTACK_PENDING: &str = "ATTACK_PENDING";
    /// `guard.attack`: budget of unknown UDP sources per service.
    pub const ATTACK_BUDGET: &str = "ATTACK_BUDGET";
}

/// Names of the XDP programs in the object.
pub mod program_names {
    /// The load balancer.
    pub const BALANCER: &str = "lb_balancer";
    /// The backend-side decapsulator (tunnel mode).
    pub const DECAP: &str = "lb_decap";
    /// Benchmarks: restore the frame, tail-call the program under test.
    pub const BENCH: &str = "lb_bench";
    /// Benchmarks: restore the frame only.
    pub const BENCH_BASELINE: &str = "lb_bench_baseline";
    /// Benchmarks: the floor (swap MACs, `XDP_TX`), timed like the balancer.
    pub const FLOOR: &str = "lb_floor";
    /// Benchmarks: drops every frame (the receiving end of a veth).
    pub const DROP: &str = "lb_drop";
    /// Benchmarks: sends IPv4 frames for one VIP to one backend's MAC
    /// (`XDP_TX`), passes the rest — the floor of any one-arm DSR balancer.
    pub const FLOOR_FWD: &str = "lb_floor_fwd";
    /// Benchmarks: the reference balancer, IPIP (parse, one LRU lookup on
    /// the 5-tuple, encapsulate, `XDP_TX`).
    pub const REF_TUNNEL: &str = "lb_ref_tunnel";
    /// Benchmarks: the reference balancer, nat (parse, one LRU lookup,
    /// rewrite with checksums, `XDP_TX`).
    pub const REF_NAT: &str = "lb_ref_nat";
}

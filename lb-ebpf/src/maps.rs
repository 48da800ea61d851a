//! The maps, declared once. Sizes here are defaults: the loader overrides
//! `max_entries` from the configuration at load time.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use lb_common::{
    Addr, BackendValue, ConnValue, Endpoint, FlowKey, FlowKeyV4, HopValue, IfaceValue, NatKey,
    NatValue, RateValue, Reason, ServiceKey, ServiceValue, Settings, Traffic, VipValue,
    maps::{GuardCounts, GuardDenial, GuardKey, GuardSettings},
};

use crate::{
    forward::{FibQuery, Hop},
    icmp::Quoted,
    parse::Packet,
};

/// Services by (vip, port, proto); port 0 is an all-port service.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(64, 0);

/// Services by id, with their keys: an established flow reaches its
/// service from its backend through arrays, never hashing the key.
#[map]
pub static SERVICE_IDS: Array<lb_common::maps::ServiceSlot> = Array::with_max_entries(64, 0);

/// Every address that carries a service.
#[map]
pub static VIPS: HashMap<Addr, VipValue> = HashMap::with_max_entries(64, 0);

/// Backends by id.
#[map]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(1024, 0);

/// Two rows of `ring_size` backend ids per service: row `2 * id + half`.
/// Mappable (`BPF_F_MMAPABLE`): the controller writes whole rows through
/// memory rather than a system call per slot (a thousand services' rows
/// are 65 million slots).
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(64 * 2 * 65537, 1 << 10);

/// The connection table of IPv6 flows: flow to backend, least recently
/// used evicted.
#[map]
pub static CONNS: LruHashMap<FlowKey, ConnValue> = LruHashMap::with_max_entries(65536, 0);

/// The connection table of IPv4 flows, keyed in 16 bytes (see
/// [`FlowKeyV4`]); same size as `CONNS`.
#[map]
pub static CONNS_V4: LruHashMap<FlowKeyV4, ConnValue> = LruHashMap::with_max_entries(65536, 0);

/// Reply path: a backend's (addr, port, proto) to the VIP and port to restore.
#[map]
pub static NAT: HashMap<NatKey, NatValue> = HashMap::with_max_entries(1024, 0);

/// TCP connections that backends of all-port NAT services opened
/// themselves, by the backend's (src, dst, sport, dport, proto) for either
/// family: their packets keep the backend's source (see
/// `balancer::backend_outbound`). The value is unused.
#[map]
pub static NAT_OUTBOUND: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Next hop per backend id, resolved by the controller (the FIB is asked
/// only for backends without one).
#[map]
pub static HOPS: Array<HopValue> = Array::with_max_entries(1024, 0);

/// The main routing table's prefixes (IPv4 as IPv4-mapped, prefix length
/// + 96), with the resolved next hop of gateway routes: the reply path's
/// cached hop. Unresolved entries send packets to the FIB.
#[map]
pub static ROUTES: LpmTrie<Addr, HopValue> =
    LpmTrie::with_max_entries(lb_common::maps::ROUTES_MAX, 0);

/// Bitset over VIP addresses (`lb_common::maps::filter_bit`): a clear bit
/// sends host traffic on without a hash-map lookup. Array lookups are
/// inlined by the verifier; hash lookups cost a helper call and a hash.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(lb_common::maps::FILTER_WORDS, 0);

/// Bitset over the addresses of NAT backends: a clear bit means the packet
/// cannot be a reply to translate.
#[map]
pub static NAT_FILTER: Array<u64> = Array::with_max_entries(lb_common::maps::FILTER_WORDS, 0);

/// Whether `addr` may be in the set `filter` covers (false: surely not).
#[inline(always)]
pub fn may_contain(filter: &Array<u64>, addr: &Addr) -> bool {
    let bit = lb_common::maps::filter_bit(addr);
    filter
        .get(bit >> 6)
        .is_some_and(|word| word & (1u64 << (bit & 63)) != 0)
}

/// Round-robin position per service, per CPU.
#[map]
pub static RR_POS: PerCpuArray<u32> = PerCpuArray::with_max_entries(64, 0);

/// Runtime settings, one entry.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Egress interfaces for redirects, keyed by ifindex.
#[map]
pub static DEVMAP: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// The interfaces the program is attached to, by ifindex.
#[map]
pub static IFACES: HashMap<u32, IfaceValue> = HashMap::with_max_entries(64, 0);

/// The interfaces the program is attached to, by `ifindex % IFACE_SLOTS`:
/// an array lookup (inlined by the verifier) where `IFACES` costs a hash.
#[map]
pub static IFACE_SLOTS: Array<lb_common::maps::IfaceSlot> =
    Array::with_max_entries(lb_common::maps::IFACE_SLOTS, 0);

/// One counter per verdict reason, per CPU; userspace sums them.
#[map]
pub static STATS_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Traffic per service id, per CPU.
#[map]
pub static STATS_SERVICES: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(64, 0);

/// Traffic per backend id, per CPU.
#[map]
pub static STATS_BACKENDS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(1024, 0);

/// Deny list: source prefixes (IPv4 as IPv4-mapped, prefix length + 96);
/// the value says who added the prefix (`DENY_CONFIGURED`, `DENY_RUNTIME`).
#[map]
pub static DENY: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1024, 0);

/// Per-source new-flow token buckets; the least recently seen sources are
/// forgotten first.
#[map]
pub static RATE: LruHashMap<Addr, RateValue> = LruHashMap::with_max_entries(65536, 0);

/// The automatic guard's thresholds, one entry (read only when
/// `SETTINGS_GUARD` is set).
#[map]
pub static GUARD_SETTINGS: Array<GuardSettings> = Array::with_max_entries(1, 0);

/// What each source sent each VIP in its current one-second window; the
/// least recently seen pairs are forgotten first.
#[map]
pub static GUARD_COUNTS: LruHashMap<GuardKey, GuardCounts> = LruHashMap::with_max_entries(65536, 0);

/// Sources the automatic guard denied, with the time the denial ends.
#[map]
pub static GUARD_DENIED: LruHashMap<Addr, GuardDenial> = LruHashMap::with_max_entries(16384, 0);

/// Working memory of one program run, per CPU: everything too large for the
/// verifier's 512-byte stack. XDP runs with preemption off, so nothing else
/// uses this CPU's entry while a run is in progress.
pub struct Scratch {
    /// The parsed packet.
    pub packet: Packet,
    /// Its VIP entry, when it is addressed to a VIP (filled on the slow
    /// path only: the fast path finds the service directly).
    pub vip: VipValue,
    /// For `Parsed::Malformed`: the reason slot to drop under, if the
    /// destination is a VIP.
    pub malformed: u32,
    /// The flow, as the client sent it: the `CONNS` key.
    pub flow: FlowKey,
    /// For IPv4 (`!packet.v6`), the same flow as the `CONNS_V4` key.
    pub flow4: FlowKeyV4,
    /// A `SERVICES` / `NAT` key being looked up.
    pub lookup: Endpoint,
    /// The FIB query and the kernel's parameter block for it.
    pub query: FibQuery,
    /// `bpf_fib_lookup`'s parameters.
    pub fib: FibParams,
    /// Its answer.
    pub hop: Hop,
    /// The backend chosen for the packet.
    pub backend: BackendValue,
    /// Its id.
    pub backend_id: u32,
    /// What the fast path learnt of the flow's `CONNS` entry, so the slow
    /// path need not look again: `CONN_UNKNOWN`, `CONN_MISSING`, or
    /// `CONN_STALE` (an entry that cannot be kept: `stale` holds it).
    pub conn_state: u8,
    /// For `CONN_STALE`: the entry's backend id and whether it was closed.
    pub stale: (u32, bool),
    /// The flow quoted in an ICMP error.
    pub quoted: Quoted,
    /// An ICMP error being built (`icmp::too_big_to_client`).
    pub too_big: crate::icmp::TooBig,
    /// A `DENY` lookup key.
    pub deny_key: Key<Addr>,
    /// A `ROUTES` lookup key.
    pub route_key: Key<Addr>,
    /// A `GUARD_COUNTS` lookup key.
    pub guard_key: GuardKey,
    /// A `GUARD_DENIED` value being written.
    pub denial: GuardDenial,
    /// The coarse clock as last read on this CPU (`balancer::now`), and
    /// jiffies then. Kept from one run to the next.
    pub clock_ns: u64,
    /// See `clock_ns`.
    pub clock_jiffies: u64,
}

/// `Scratch::conn_state`: not looked up yet.
pub const CONN_UNKNOWN: u8 = 0;
/// `Scratch::conn_state`: the flow has no `CONNS` entry.
pub const CONN_MISSING: u8 = 1;
/// `Scratch::conn_state`: the flow's entry must be rescheduled.
pub const CONN_STALE: u8 = 2;

/// The per-CPU [`Scratch`] entry.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's entry of a per-CPU array, used by one program run
    // at a time (see `Scratch`); the map lives as long as the program.
    SCRATCH.get_ptr_mut(0).map(|ptr| unsafe { &mut *ptr })
}

/// Adds one to `reason`'s counter on this CPU.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = STATS_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, which
        // nothing else touches while this program runs on this CPU.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

/// Counts one ended flow of backend `id`.
#[inline(always)]
pub fn count_closed(id: u32) {
    if let Some(slot) = STATS_BACKENDS.get_ptr_mut(id) {
        // SAFETY: this CPU's slot of a per-CPU array, as in `count`.
        unsafe { (*slot).closed_flows = (*slot).closed_flows.wrapping_add(1) };
    }
}

/// Adds a new flow, without a packet, to `traffic[id]`.
#[inline(always)]
pub fn count_new_flow(traffic: &PerCpuArray<Traffic>, id: u32) {
    if let Some(slot) = traffic.get_ptr_mut(id) {
        // SAFETY: this CPU's slot of a per-CPU array, as in `count`.
        unsafe { (*slot).new_flows = (*slot).new_flows.wrapping_add(1) };
    }
}

/// Adds a packet of `bytes` (and a new flow, if `new_flow`) to `traffic[id]`.
#[inline(always)]
pub fn count_traffic(traffic: &PerCpuArray<Traffic>, id: u32, bytes: u64, new_flow: bool) {
    if let Some(slot) = traffic.get_ptr_mut(id) {
        // SAFETY: this CPU's slot of a per-CPU array, as in `count`.
        unsafe {
            (*slot).packets = (*slot).packets.wrapping_add(1);
            (*slot).bytes = (*slot).bytes.wrapping_add(bytes);
            if new_flow {
                (*slot).new_flows = (*slot).new_flows.wrapping_add(1);
            }
        }
    }
}

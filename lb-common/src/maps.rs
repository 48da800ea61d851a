//! Keys and values of the BPF maps.

/// An IP address as the maps store it: IPv6 as is, IPv4 as an IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`), so one key type serves both families.
pub type Addr = [u8; 16];

/// The IPv4-mapped form of an IPv4 address.
pub const fn ipv4_mapped(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether `addr` is an IPv4-mapped address.
pub const fn is_ipv4_mapped(addr: &Addr) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

/// The value in MAGLEV slots (and backend-id fields) that names no backend.
pub const NO_BACKEND: u32 = u32::MAX;

/// An (address, port, protocol) triple: the key of `SERVICES` (a VIP) and of
/// `NAT` (a backend, for the reply path).
///
/// `port` is in host byte order; 0 means "every port".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Endpoint {
    /// Address, see [`Addr`].
    pub addr: Addr,
    /// Port in host byte order, 0 for all ports.
    pub port: u16,
    /// IP protocol number ([`crate::proto`]).
    pub proto: u8,
    /// Always zero: map keys are compared byte for byte.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

impl Endpoint {
    /// An endpoint with its padding zeroed.
    pub const fn new(addr: Addr, port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            pad: 0,
        }
    }
}

/// Key of `SERVICES`.
pub type ServiceKey = Endpoint;
/// Key of `NAT`: a backend's (address, port, protocol).
pub type NatKey = Endpoint;

/// `ServiceValue::scheduler`: Maglev over the 5-tuple (also used by
/// `least-conn` and `resource`, whose weights the controller adjusts).
pub const SCHED_MAGLEV: u8 = 0;
/// `ServiceValue::scheduler`: Maglev over the source address only.
pub const SCHED_IP_HASH: u8 = 1;
/// `ServiceValue::scheduler`: the precomputed smooth weighted sequence.
pub const SCHED_ROUND_ROBIN: u8 = 2;

/// `ServiceValue::forwarding`: destination (and port) rewrite.
pub const FWD_NAT: u8 = 0;
/// `ServiceValue::forwarding`: MAC rewrite only.
pub const FWD_DSR: u8 = 1;
/// `ServiceValue::forwarding`: IPIP / IP6IP6 encapsulation.
pub const FWD_TUNNEL: u8 = 2;

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the service in `MAGLEV`, `RR_POS` and `STATS_SERVICES`.
    pub id: u32,
    /// How new flows pick a backend (`SCHED_*`).
    pub scheduler: u8,
    /// How packets reach the backend (`FWD_*`).
    pub forwarding: u8,
    /// Which half of the service's `MAGLEV` rows is live (0 or 1). The
    /// controller fills the other half, then flips this in one write.
    pub active_half: u8,
    /// Always zero.
    pub pad: u8,
    /// Round robin: the length of the sequence in the live half. Otherwise 0.
    pub rr_len: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 12);

/// Value of `SERVICE_IDS`, indexed by service id: the service and its key,
/// so an established flow reaches its service from its backend without
/// hashing the key. A slot whose `key.proto` is 0 is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceSlot {
    /// The service's `SERVICES` key.
    pub key: Endpoint,
    /// Its `SERVICES` value.
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 32);

/// `BackendValue::flags`: the backend may carry traffic. Flows pinned to a
/// backend without it are rescheduled on their next packet.
pub const BACKEND_USABLE: u8 = 1;

/// `BackendValue::flags`: the backend takes no new flows (drained, weight 0,
/// or of a standby tier) but keeps the ones it has. A bare SYN on a tuple
/// whose entry still names it is a new connection, and goes to the
/// scheduler instead (a client reusing its port before the old entry closed
/// or expired).
pub const BACKEND_DRAINING: u8 = 2;

/// Value of `BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendValue {
    /// Address, see [`Addr`].
    pub addr: Addr,
    /// Port in host byte order; 0 keeps the client's destination port.
    pub port: u16,
    /// `BACKEND_*` flags.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// The service this backend belongs to.
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<BackendValue>() == 24);

/// `VipValue::fragments`: TCP fragments go to the `ip-hash` service on
/// `fragment_tcp_port`.
pub const VIP_FRAGMENTS_TCP: u8 = 1;
/// `VipValue::fragments`: UDP fragments go to the `ip-hash` service on
/// `fragment_udp_port`.
pub const VIP_FRAGMENTS_UDP: u8 = 2;

/// Value of `VIPS`: present for every address that carries a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipValue {
    /// How many services use this address.
    pub services: u32,
    /// Fragments carry no ports (only the first has them), so they can only
    /// be sent consistently by source address: the port of the `ip-hash`
    /// TCP service on this VIP that takes TCP fragments.
    pub fragment_tcp_port: u16,
    /// As `fragment_tcp_port`, for UDP.
    pub fragment_udp_port: u16,
    /// `VIP_FRAGMENTS_*` bits: which of the two ports above are set.
    pub fragments: u8,
    /// Always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 12);

/// Value of `NAT`: what a reply from a backend must look like to the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    /// The VIP to restore as source.
    pub vip: Addr,
    /// The service port to restore as source port; 0 keeps the port
    /// (all-port services).
    pub port: u16,
    /// Always zero.
    pub pad: u16,
    /// The service, for its counters.
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 24);

/// Key of `CONNS` (IPv6 flows): a flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client address.
    pub src: Addr,
    /// VIP.
    pub dst: Addr,
    /// Client port (0 for ICMP).
    pub sport: u16,
    /// Service port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Key of `CONNS_V4` (IPv4 flows): a flow as the client sent it, in 16
/// bytes. The kernel hashes every key of a hash map whole (jhash over its
/// 32-bit words): four words cost about half of [`FlowKey`]'s ten, and
/// IPv4 is most of the traffic, so IPv4 flows have a table of their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyV4 {
    /// Client address.
    pub src: [u8; 4],
    /// VIP.
    pub dst: [u8; 4],
    /// Client port (0 for ICMP).
    pub sport: u16,
    /// Service port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);

impl FlowKeyV4 {
    /// The same flow as a [`FlowKey`] (IPv4-mapped addresses), the form
    /// every other map and the controller use.
    pub const fn widen(&self) -> FlowKey {
        FlowKey {
            src: ipv4_mapped(self.src),
            dst: ipv4_mapped(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

impl FlowKey {
    /// The `CONNS_V4` key of an IPv4 flow (addresses IPv4-mapped), `None`
    /// for an IPv6 one.
    pub fn narrow(&self) -> Option<FlowKeyV4> {
        if !is_ipv4_mapped(&self.src) || !is_ipv4_mapped(&self.dst) {
            return None;
        }
        Some(FlowKeyV4 {
            src: [self.src[12], self.src[13], self.src[14], self.src[15]],
            dst: [self.dst[12], self.dst[13], self.dst[14], self.dst[15]],
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        })
    }
}

/// `ConnValue::flags`: a FIN or RST was seen; the flow is no longer active
/// (it keeps its backend until it goes idle or a new SYN reuses the tuple).
pub const CONN_CLOSED: u32 = 1;

/// `ConnValue::flags`: the flow began with a bare SYN and nothing else of
/// it was seen yet (written only while `SETTINGS_ATTACK` is set): its
/// first later packet counts it as completed for `guard.attack`.
pub const CONN_HALF_OPEN: u32 = 2;

/// Value of `CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnValue {
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// `CONN_*` flags.
    pub flags: u32,
    /// `bpf_ktime_get_ns` when the flow was last seen; idle flows expire.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ConnValue>() == 16);

/// Value of the one-entry `SETTINGS` array: knobs that change without a
/// reload of the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Idle TCP flows older than this are rescheduled.
    pub tcp_idle_ns: u64,
    /// Idle UDP (and ICMP) flows older than this are rescheduled.
    pub udp_idle_ns: u64,
    /// Maglev ring size M (prime); each service has two rows of M slots.
    pub ring_size: u32,
    /// Host bits of the IPv4 tunnel source prefix varied per flow (RSS).
    pub tunnel_v4_host_bits: u32,
    /// IPv4 tunnel source prefix (network order bytes).
    pub tunnel_v4_source: [u8; 4],
    /// Host bits of the IPv6 tunnel source prefix varied per flow.
    pub tunnel_v6_host_bits: u32,
    /// IPv6 tunnel source prefix.
    pub tunnel_v6_source: [u8; 16],
    /// New flows per second each source may open; 0 turns the limit off.
    pub rate_per_second: u32,
    /// How many new flows a source may open at once before the rate applies.
    pub rate_burst: u32,
    /// `SETTINGS_*` flags.
    pub flags: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 64);

/// `Settings::flags`: some service uses NAT, so packets from backends may be
/// replies to translate. Without it host traffic skips the reply-path
/// lookups.
pub const SETTINGS_NAT: u32 = 1;

/// `Settings::flags`: the deny list has entries. Without it packets to a
/// VIP skip the `DENY` lookup, so an empty deny list costs nothing.
pub const SETTINGS_DENY: u32 = 2;

/// A `DENY` value bit: the prefix is in the configuration's `guard.deny`.
/// The data path only tests a prefix's presence; the bits tell the next
/// controller which entries were the operator's (`lb guard deny`), so they
/// outlive a restart, and which the file's, so a prefix the new file drops
/// goes. An older lb wrote 1 for both.
pub const DENY_CONFIGURED: u8 = 1;
/// A `DENY` value bit: the prefix was added with `lb guard deny`.
pub const DENY_RUNTIME: u8 = 2;

/// `Settings::flags`: the automatic guard is on (`guard.auto`). Without it
/// packets to a VIP skip the guard's per-source accounting and its
/// `GUARD_DENIED` lookup, so an unconfigured guard costs nothing.
pub const SETTINGS_GUARD: u32 = 4;

/// `Settings::flags`: a trace is attached (`lb trace`): the data path
/// emits its decisions to `TRACE_EVENTS`. Without it, that costs the test
/// of this bit.
pub const SETTINGS_TRACE: u32 = 8;

/// `Settings::flags`: connection sync is on (`sync:`): the data path
/// reports each flow it schedules to `SYNC_EVENTS`, for the controller to
/// tell the peers. Without it, that costs the test of this bit on the
/// new-flow path; the established path never looks.
pub const SETTINGS_SYNC: u32 = 16;

/// `Settings::flags`: `guard.attack` is configured: the new-flow path
/// counts per service (`ATTACK_COUNTS`) and asks `ATTACK_VIPS` about bare
/// SYNs. Without it, that costs the test of this bit.
pub const SETTINGS_ATTACK: u32 = 32;

/// A `SYNC_EVENTS` record: a flow the data path scheduled, as the client
/// sent it, and the backend it chose.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncEvent {
    /// The flow (IPv4 addresses IPv4-mapped).
    pub flow: FlowKey,
    /// The backend's id in this balancer's `BACKENDS`.
    pub backend_id: u32,
    /// `SYNC_OPENED` or `SYNC_CLOSED`.
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<SyncEvent>() == 48);

/// `SyncEvent::kind`: the flow was scheduled (its entry written).
pub const SYNC_OPENED: u32 = 1;

/// `SyncEvent::kind`: the flow's entry was marked closed (`CONN_CLOSED`: a
/// FIN or RST of an established flow), reported once.
pub const SYNC_CLOSED: u32 = 2;

/// Value of the one-entry `GUARD_SETTINGS` array: the automatic guard's
/// thresholds, each counted per source and VIP over a one-second window
/// that starts with the source's first packet to that VIP. 0 turns a
/// threshold off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GuardSettings {
    /// New flows a source may open to one VIP per second.
    pub new_flows: u32,
    /// TCP SYNs without an ACK to match (bare SYNs minus ACK-carrying
    /// packets) a source may send to one VIP per second.
    pub syn_only: u32,
    /// Packets a source may send to one VIP per second.
    pub packets: u32,
    /// Always zero.
    pub pad: u32,
    /// How long a source that crossed a threshold stays denied.
    pub deny_ns: u64,
}
const _: () = assert!(core::mem::size_of::<GuardSettings>() == 24);

/// Key of `GUARD_COUNTS`: a source and the VIP it sends to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GuardKey {
    /// The client address, see [`Addr`].
    pub src: Addr,
    /// The destination (a VIP, or a `VIP_FILTER` false positive, which is
    /// counted but never denied).
    pub vip: Addr,
}
const _: () = assert!(core::mem::size_of::<GuardKey>() == 32);

/// Value of `GUARD_COUNTS`: what a source sent to a VIP in the current
/// one-second window. Updated without atomics from every CPU: the counts
/// are approximate under races, which only delays a denial.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GuardCounts {
    /// `bpf_ktime_get_coarse_ns` when the window began.
    pub window_ns: u64,
    /// Packets.
    pub packets: u32,
    /// New flows scheduled.
    pub new_flows: u32,
    /// TCP packets with SYN and without ACK.
    pub syns: u32,
    /// TCP packets with ACK and without SYN.
    pub acks: u32,
}
const _: () = assert!(core::mem::size_of::<GuardCounts>() == 24);

/// `GuardDenial::cause`: too many new flows.
pub const GUARD_CAUSE_NEW_FLOWS: u32 = 1;
/// `GuardDenial::cause`: too many SYNs left without an ACK.
pub const GUARD_CAUSE_SYN_ONLY: u32 = 2;
/// `GuardDenial::cause`: too many packets.
pub const GUARD_CAUSE_PACKETS: u32 = 3;

/// Value of `GUARD_DENIED`, keyed by source address: a source the
/// automatic guard denied, until `until_ns`. The data path drops its
/// packets to every VIP until then, and deletes the entry when it finds it
/// expired (so does the controller).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GuardDenial {
    /// `bpf_ktime_get_coarse_ns` when the denial ends.
    pub until_ns: u64,
    /// When it began.
    pub since_ns: u64,
    /// The VIP whose threshold the source crossed.
    pub vip: Addr,
    /// `GUARD_CAUSE_*`.
    pub cause: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<GuardDenial>() == 40);

/// `HopValue::flags`: the entry holds a resolved next hop.
pub const HOP_RESOLVED: u8 = 1;

/// Value of `HOPS`, indexed by backend id: the next hop of packets to that
/// backend, resolved by the controller from the kernel's routes and
/// neighbours, so the data path need not ask the FIB per packet. Valid only
/// for the backend address it was resolved for (ids are reused).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HopValue {
    /// The backend address this hop was resolved for, see [`Addr`].
    pub addr: Addr,
    /// Egress interface.
    pub ifindex: u32,
    /// Largest IP packet the egress interface (or route) takes; longer ones
    /// take the FIB path, which refuses them as it always did.
    pub mtu: u16,
    /// `HOP_*` flags.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// The next hop's MAC (the backend's, or its gateway's).
    pub dmac: [u8; 6],
    /// Our MAC on the egress interface.
    pub smac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<HopValue>() == 36);

/// Most prefixes `ROUTES` holds; a larger routing table is not mirrored
/// (replies then ask the FIB).
pub const ROUTES_MAX: u32 = 16384;

/// Bits in `VIP_FILTER` and `NAT_FILTER`: 1024 words of 64.
pub const FILTER_WORDS: u32 = 1024;

/// The bit an address sets in an address filter (`VIP_FILTER`,
/// `NAT_FILTER`): a 16-bit multiplicative hash of the address, word
/// `bit / 64`, bit `bit % 64`. A clear bit proves the address is not in the
/// map the filter covers, without a hash-map lookup; a set bit may be a
/// false positive (the map lookup decides).
#[allow(clippy::inline_always, reason = "the XDP program needs it inlined")]
#[inline(always)]
pub fn filter_bit(addr: &Addr) -> u32 {
    let word = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = word(0) ^ word(4) ^ word(8).rotate_left(7) ^ word(12);
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// Value of `RATE`, keyed by source address: a token bucket of new flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateValue {
    /// Tokens left, in thousandths of a new flow.
    pub milli_tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RateValue>() == 16);

/// Value of `IFACES`, keyed by ifindex: what the program needs to know about
/// an interface it is attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceValue {
    /// The interface's own MAC address; frames for any other unicast MAC are
    /// not ours to forward (a promiscuous NIC or a flooding switch).
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<IfaceValue>() == 8);

/// Slots in `IFACE_SLOTS`.
pub const IFACE_SLOTS: u32 = 256;

/// Value of `IFACE_SLOTS`, indexed by `ifindex % IFACE_SLOTS`: the
/// interface's MAC without a hash lookup. A slot holding another ifindex (a
/// collision) sends the data path to `IFACES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceSlot {
    /// The interface in this slot (0: none).
    pub ifindex: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<IfaceSlot>() == 12);

/// Per-service and per-backend traffic counters (per CPU, summed in
/// userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (as received).
    pub bytes: u64,
    /// Flows scheduled (first packet, or rescheduled).
    pub new_flows: u64,
    /// Flows that ended: FIN or RST seen, or rescheduled away (idle, backend
    /// gone). `new_flows - closed_flows` is the active count, up to the
    /// connection table's silent LRU evictions (the controller reconciles).
    pub closed_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 32);

/// Value of `FLOOR_HOP` (benchmarks only): where `lb_floor_fwd` sends
/// frames for `vip` — the least an XDP DSR balancer with one backend does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloorHop {
    /// The IPv4 VIP (network order bytes).
    pub vip: [u8; 4],
    /// The backend's MAC.
    pub dmac: [u8; 6],
    /// Our MAC.
    pub smac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<FloorHop>() == 16);

/// Key of `REF_FLOWS` (benchmarks only): the reference balancer's IPv4
/// 5-tuple, as the bytes sit in the headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefKey {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address (the VIP).
    pub dst: [u8; 4],
    /// Source then destination port.
    pub ports: [u8; 4],
    /// IP protocol number; the rest zero.
    pub proto: u32,
}
const _: () = assert!(core::mem::size_of::<RefKey>() == 16);

/// Value of `REF_FLOWS` (benchmarks only): where the reference balancer
/// sends a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefValue {
    /// The backend's address.
    pub backend: [u8; 4],
    /// The outer source address (tunnel).
    pub source: [u8; 4],
    /// The backend's port (nat).
    pub port: [u8; 2],
    /// Zero.
    pub pad: [u8; 2],
    /// The next hop's MAC, then ours.
    pub macs: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<RefValue>() == 24);

/// Longest frame the benchmark wrapper restores, in 8-byte words.
pub const BENCH_WORDS: usize = 32;

/// Value of `BENCH_FRAME` (benchmarks only): the frame `lb_bench` restores
/// before each run of the program under test.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    /// Length in bytes, a multiple of 8 (benchmark frames are padded).
    pub len: u32,
    /// 0, or the offset of an IPv4 header followed by TCP: then every
    /// restore gives the frame a source address (in 10.0.0.0/8), source
    /// port and sequence number of its own, derived from `runs`, so each
    /// run is a fresh tuple (a SYN flood from spoofed sources).
    pub vary: u32,
    /// Restores so far (counted only while `vary` is set).
    pub runs: u64,
    /// The bytes, as native-endian words.
    pub words: [u64; BENCH_WORDS],
}
const _: () = assert!(core::mem::size_of::<BenchFrame>() == 16 + 8 * BENCH_WORDS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls below): each type is `#[repr(C)]`, made of integers
    // and byte arrays only, with every padding byte an explicit field (the
    // size asserts above prove there is no implicit padding), so any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::SyncEvent {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::ConnValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::IfaceValue {}
    unsafe impl aya::Pod for super::RateValue {}
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::HopValue {}
    unsafe impl aya::Pod for super::IfaceSlot {}
    unsafe impl aya::Pod for super::FloorHop {}
    unsafe impl aya::Pod for super::RefKey {}
    unsafe impl aya::Pod for super::RefValue {}
    unsafe impl aya::Pod for super::ServiceSlot {}
    unsafe impl aya::Pod for super::GuardSettings {}
    unsafe impl aya::Pod for super::GuardKey {}
    unsafe impl aya::Pod for super::GuardCounts {}
    unsafe impl aya::Pod for super::GuardDenial {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_layout() {
        let mapped = ipv4_mapped([192, 0, 2, 1]);
        assert_eq!(
            mapped,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
        assert!(is_ipv4_mapped(&mapped));
        let mut v6 = mapped;
        v6[0] = 0x20;
        assert!(!is_ipv4_mapped(&v6));
    }

    #[test]
    fn an_ipv4_flow_key_narrows_and_widens_back() {
        let wide = FlowKey {
            src: ipv4_mapped([198, 51, 100, 7]),
            dst: ipv4_mapped([203, 0, 113, 10]),
            sport: 40_000,
            dport: 443,
            proto: crate::proto::TCP,
            pad: [0; 3],
        };
        let narrow = wide.narrow().expect("an IPv4 flow");
        assert_eq!(narrow.src, [198, 51, 100, 7]);
        assert_eq!(narrow.dst, [203, 0, 113, 10]);
        assert_eq!(
            (narrow.sport, narrow.dport, narrow.pad),
            (40_000, 443, [0; 3])
        );
        assert_eq!(narrow.widen(), wide);
        let mut v6 = wide;
        v6.src[0] = 0x20;
        assert_eq!(v6.narrow(), None);
    }

    #[test]
    fn endpoint_padding_is_zero() {
        let key = Endpoint::new(ipv4_mapped([203, 0, 113, 10]), 80, crate::proto::TCP);
        assert_eq!(key.pad, 0);
        assert_eq!(key.port, 80);
    }
}

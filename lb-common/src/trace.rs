//! `lb trace`: what the data path emits, and how, while a trace is
//! attached. With no trace attached the program checks one flag
//! (`SETTINGS_TRACE`, in the settings it reads anyway) and nothing else.

use crate::maps::Addr;

/// `TraceSettings::flags`: only drops.
pub const TRACE_DROPS: u32 = 1;
/// `TraceSettings::flags`: only packets to `TraceSettings::vip`.
pub const TRACE_VIP: u32 = 2;
/// `TraceSettings::flags`: only packets from `TraceSettings::source` /
/// `source_len`.
pub const TRACE_SOURCE: u32 = 4;

/// Value of the one-entry `TRACE_SETTINGS` array: which decisions to emit,
/// and how many. Read only while `SETTINGS_TRACE` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceSettings {
    /// `TRACE_*` filters.
    pub flags: u32,
    /// Prefix length of `source` (map form: IPv4 + 96).
    pub source_len: u32,
    /// The VIP of `TRACE_VIP`.
    pub vip: Addr,
    /// The source prefix of `TRACE_SOURCE`.
    pub source: Addr,
    /// Emit one decision in this many that pass the filters (0 or 1: all).
    pub sample_every: u32,
    /// Always zero.
    pub pad: u32,
    /// Per CPU, at most one event per this many nanoseconds on average...
    pub interval_ns: u64,
    /// ... with bursts of this many nanoseconds' worth of events.
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TraceSettings>() == 64);

/// Value of the one-entry per-CPU `TRACE_STATE` array: the rate limit's
/// state, and what was not emitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceState {
    /// When the next event is due (a virtual clock: GCRA).
    pub next_ns: u64,
    /// Decisions that passed the filters, for sampling.
    pub seen: u64,
    /// Events dropped by the rate limit or a full ring buffer.
    pub lost: u64,
}
const _: () = assert!(core::mem::size_of::<TraceState>() == 24);

/// `TraceEvent::flags`: `backend` / `backend_port` name the backend chosen.
pub const EVENT_BACKEND: u8 = 1;
/// `TraceEvent::flags`: `sport` / `dport` were parsed from this packet.
pub const EVENT_PORTS: u8 = 2;

/// One decision, as written to the `TRACE_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// The verdict reason (`crate::Reason` slot).
    pub reason: u32,
    /// Source address (map form).
    pub src: Addr,
    /// Destination address (map form).
    pub dst: Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// The XDP action.
    pub action: u8,
    /// `EVENT_*` flags.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// The backend chosen (map form).
    pub backend: Addr,
    /// Its port (0: the client's destination port).
    pub backend_port: u16,
    /// Always zero.
    pub pad2: u16,
    /// Its id.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and byte arrays only, padding explicit
    // (see the size asserts), so every bit pattern is valid.
    unsafe impl aya::Pod for super::TraceSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceEvent {}
}

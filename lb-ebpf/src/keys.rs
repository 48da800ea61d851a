//! Map keys written in whole words.
//!
//! The kernel hashes a key (jhash) and compares it by loading it in 32- or
//! 64-bit words right after the program stored it. A word loaded from
//! several narrower stores (a `u16` port beside a `u8` protocol and padding)
//! cannot be forwarded from the store buffer: the load waits until the
//! stores reach the cache, a stall of some ten cycles per word. So the
//! small fields of each key are packed in a register and stored as one
//! word, in the key's little-endian layout.

use lb_common::{Addr, Endpoint, FlowKey, FlowKeyV4};

/// `key`'s `port`, `proto` and `pad` as the one 32-bit word they occupy.
#[inline(always)]
const fn endpoint_tail(port: u16, proto: u8) -> u32 {
    port as u32 | (proto as u32) << 16
}

/// Sets `key` to (addr, port, proto), padding zeroed.
#[inline(always)]
pub fn set_endpoint(key: &mut Endpoint, addr: &Addr, port: u16, proto: u8) {
    key.addr = *addr;
    set_endpoint_port(key, port, proto);
}

/// Sets `key`'s port and protocol (padding zeroed), keeping its address.
#[inline(always)]
pub fn set_endpoint_port(key: &mut Endpoint, port: u16, proto: u8) {
    const _: () = assert!(core::mem::offset_of!(Endpoint, port) == 16);
    store::<16, _, _>(key, endpoint_tail(port, proto));
}

/// Which of a flow's keys [`set_flow`] writes.
#[derive(Clone, Copy)]
pub enum Keys {
    /// Only the connection table's: `flow4` for IPv4, `flow` for IPv6. The
    /// established path needs no more; an IPv4 `flow` is left as it was.
    ConnTable,
    /// `flow`, and for IPv4 `flow4` too.
    All,
}

/// Sets the flow's `keys` to (src, dst, sport, dport, proto), padding
/// zeroed: `flow`, and for an IPv4 flow `flow4`, its `CONNS_V4` key.
#[inline(always)]
pub fn set_flow(
    flow: &mut FlowKey,
    flow4: &mut FlowKeyV4,
    (v6, keys): (bool, Keys),
    addrs: (&Addr, &Addr),
    ports: (u16, u16, u8),
) {
    match keys {
        Keys::All => {
            set_wide(flow, addrs, ports);
            if !v6 {
                set_narrow(flow4, addrs, ports);
            }
        }
        Keys::ConnTable if v6 => set_wide(flow, addrs, ports),
        Keys::ConnTable => set_narrow(flow4, addrs, ports),
    }
}

/// The ports, protocol and padding as the one 64-bit word they occupy in
/// both flow keys.
#[inline(always)]
fn flow_tail((sport, dport, proto): (u16, u16, u8)) -> u64 {
    const _: () = assert!(core::mem::offset_of!(FlowKey, sport) == 32);
    const _: () = assert!(core::mem::offset_of!(FlowKeyV4, sport) == 8);
    u64::from(sport) | u64::from(dport) << 16 | u64::from(proto) << 32
}

/// Sets `flow` (a `CONNS`-shaped key, for either family) to (src, dst,
/// sport, dport, proto), padding zeroed.
#[inline(always)]
pub fn set_flow_key(flow: &mut FlowKey, addrs: (&Addr, &Addr), ports: (u16, u16, u8)) {
    set_wide(flow, addrs, ports);
}

#[inline(always)]
fn set_wide(flow: &mut FlowKey, (src, dst): (&Addr, &Addr), ports: (u16, u16, u8)) {
    flow.src = *src;
    flow.dst = *dst;
    store::<32, _, _>(flow, flow_tail(ports));
}

#[inline(always)]
fn set_narrow(flow4: &mut FlowKeyV4, (src, dst): (&Addr, &Addr), ports: (u16, u16, u8)) {
    let head = u64::from(word(src)) | u64::from(word(dst)) << 32;
    store::<0, _, _>(flow4, [head, flow_tail(ports)]);
}

/// The IPv4 address in an IPv4-mapped `addr`, as stored (native order).
#[inline(always)]
fn word(addr: &Addr) -> u32 {
    u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])
}

/// Sets `addr` to the IPv4-mapped form of `v4` (`ipv4_mapped`), in two
/// 64-bit stores: built byte by byte, the address would be loaded back in
/// words (into a flow key, by the kernel's hash) from narrower stores.
#[inline(always)]
pub fn set_mapped(addr: &mut Addr, v4: [u8; 4]) {
    let high = u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]);
    store::<0, _, _>(addr, [0u64, high]);
}

/// Marks the key types [`store`] may write into: plain integers and byte
/// arrays, `repr(C)`, valid for every bit pattern.
trait Plain {}
impl Plain for Addr {}
impl Plain for Endpoint {}
impl Plain for FlowKey {}
impl Plain for FlowKeyV4 {}

/// Writes `value` over bytes `OFF..OFF + size_of::<T>()` of `base`, in
/// whole words (unaligned: the keys are aligned to 2 bytes at most).
#[inline(always)]
fn store<const OFF: usize, B: Plain, T: Copy>(base: &mut B, value: T) {
    const { assert!(OFF + size_of::<T>() <= size_of::<B>()) };
    #[allow(clippy::cast_ptr_alignment, reason = "written unaligned")]
    // SAFETY: the bytes lie inside `*base` (asserted above), whose type
    // takes any bit pattern (`Plain`).
    unsafe {
        core::ptr::from_mut(base)
            .cast::<u8>()
            .add(OFF)
            .cast::<T>()
            .write_unaligned(value);
    }
}

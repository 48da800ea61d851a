//! Connection sync (`sync:`): each flow the data path schedules, and each
//! flow whose entry a FIN / RST marks closed, reported to a ring buffer
//! that the controller drains and sends to the peer balancers. Only while
//! `SETTINGS_SYNC` is set: the established path tests the flag only on the
//! packet that closes a flow. A full ring drops the event and counts it in
//! `SYNC_LOST` (the flow still goes; only its peers miss it).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lb_common::maps::{SYNC_CLOSED, SYNC_OPENED, SyncEvent};

use crate::maps::Scratch;

/// The events: 1 MiB, room for over 18,000 of them (56 bytes each with the
/// ring's header) — seconds of new flows at the rates a balancer sees,
/// drained every few milliseconds.
#[map]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Events lost to a full ring, per CPU (one entry).
#[map]
pub static SYNC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Reports `scratch.flow`, just scheduled to `backend_id`. Out of line: the
/// new-flow path pays a call only while sync is on.
#[inline(never)]
pub fn report_opened(scratch: &Scratch, backend_id: u32) {
    report(scratch, backend_id, SYNC_OPENED);
}

/// Reports the flow of `scratch` (its entry on `backend_id` just marked
/// closed). Out of line like [`report_opened`]: the closing packet pays a
/// call only while sync is on.
#[inline(never)]
pub fn report_closed(scratch: &Scratch, backend_id: u32) {
    report(scratch, backend_id, SYNC_CLOSED);
}

/// The event itself, written in place into the reserved record: built on
/// the stack first, it took 264 bytes of this function's frame, and the
/// deepest call chain (the ICMP too-big path into a new flow) went past the
/// verifier's 512-byte limit. The established path sets only the key of
/// the flow's own table (`flow4` for IPv4), so an IPv4 flow is widened from
/// that.
#[inline(always)]
fn report(scratch: &Scratch, backend_id: u32, kind: u32) {
    let Some(mut entry) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        if let Some(lost) = SYNC_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *lost = (*lost).wrapping_add(1) };
        }
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted, sized for a
    // `SyncEvent`; every field is written (plain data, nothing to drop).
    unsafe {
        if scratch.packet.v6 {
            core::ptr::addr_of_mut!((*event).flow).write(scratch.flow);
        } else {
            core::ptr::addr_of_mut!((*event).flow).write(scratch.flow4.widen());
        }
        core::ptr::addr_of_mut!((*event).backend_id).write(backend_id);
        core::ptr::addr_of_mut!((*event).kind).write(kind);
    }
    entry.submit(0);
}

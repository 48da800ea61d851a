//! Connection sync (`sync:`): each flow the data path schedules, reported to
//! a ring buffer that the controller drains and sends to the peer balancers.
//! Only the new-flow path reports, and only while `SETTINGS_SYNC` is set:
//! the established path never looks. A full ring drops the event and
//! counts it in `SYNC_LOST` (the flow still goes; only its peers miss it).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lb_common::maps::{SYNC_OPENED, SyncEvent};

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
    if let Some(mut entry) = SYNC_EVENTS.reserve::<SyncEvent>(0) {
        entry.write(SyncEvent {
            flow: scratch.flow,
            backend_id,
            kind: SYNC_OPENED,
        });
        entry.submit(0);
    } else if let Some(lost) = SYNC_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *lost = (*lost).wrapping_add(1) };
    }
}

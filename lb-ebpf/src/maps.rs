//! The maps, declared once. Sizes here are defaults: the loader overrides
//! `max_entries` from the configuration at load time.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::{IfaceValue, Reason, ServiceKey, ServiceValue, VipValue};

/// Services by (vip, port, proto); port 0 is an all-port service.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(256, 0);

/// Every address that carries a service, with how many.
#[map]
pub static VIPS: HashMap<[u8; 16], VipValue> = HashMap::with_max_entries(256, 0);

/// The interfaces the program is attached to, by ifindex.
#[map]
pub static IFACES: HashMap<u32, IfaceValue> = HashMap::with_max_entries(64, 0);

/// One counter per verdict reason, per CPU; userspace sums them.
#[map]
pub static STATS_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Adds one to `reason`'s counter on this CPU.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = STATS_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, which
        // nothing else touches while this program runs on this CPU.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

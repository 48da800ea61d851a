//! Plain-old-data shared by the XDP programs (`lb-ebpf`) and the controller
//! (`lb-userspace`): map keys and values, verdict reasons, constants.
//!
//! Everything here is `#[repr(C)]`, built from integers and byte arrays only,
//! with explicit padding fields and a size assertion per struct: a map lookup
//! compares keys byte for byte, so uninitialised padding would make lookups
//! miss. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod maps;
pub mod reason;

pub use maps::{Addr, IfaceValue, ServiceKey, ServiceValue, VipValue};
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
}

/// Names of the maps, shared so the loader and the program never disagree.
pub mod map_names {
    /// Services by (vip, port, proto).
    pub const SERVICES: &str = "SERVICES";
    /// Every address that carries at least one service.
    pub const VIPS: &str = "VIPS";
    /// The interfaces lb is attached to, by ifindex.
    pub const IFACES: &str = "IFACES";
    /// Per-CPU counters, one slot per [`crate::Reason`].
    pub const STATS_REASONS: &str = "STATS_REASONS";
}

/// Names of the XDP programs in the object.
pub mod program_names {
    /// The load balancer.
    pub const BALANCER: &str = "lb_balancer";
}

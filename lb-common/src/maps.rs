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

/// Key of `SERVICES`: which service a packet is addressed to.
///
/// `port` is in host byte order; 0 means "every port" (an all-port service).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Virtual IP, see [`Addr`].
    pub vip: Addr,
    /// Destination port in host byte order, 0 for all ports.
    pub port: u16,
    /// IP protocol number ([`crate::proto`]).
    pub proto: u8,
    /// Always zero: map keys are compared byte for byte.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

impl ServiceKey {
    /// A key with its padding zeroed.
    pub const fn new(vip: Addr, port: u16, proto: u8) -> Self {
        Self {
            vip,
            port,
            proto,
            pad: 0,
        }
    }
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the service in the per-service tables and counters.
    pub id: u32,
    /// Reserved for flags; always zero for now.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

/// Value of `VIPS`: present for every address that carries a service, so a
/// malformed packet to a VIP can be dropped even when its ports are unreadable.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipValue {
    /// How many services use this address.
    pub services: u32,
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 4);

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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made of integers and byte arrays only,
    // with every padding byte an explicit field (the size asserts above prove
    // there is no implicit padding), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_layout() {
        assert_eq!(
            ipv4_mapped([192, 0, 2, 1]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
    }

    #[test]
    fn service_key_padding_is_zero() {
        let key = ServiceKey::new(ipv4_mapped([203, 0, 113, 10]), 80, crate::proto::TCP);
        assert_eq!(key.pad, 0);
        assert_eq!(key.port, 80);
    }
}

//! Why the data path returned the verdict it did: one per-CPU counter each.

/// Declares [`Reason`] once: slot, variant, stable name, whether it drops.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $slot:literal, $name:literal, $drop:literal; )*) => {
        /// A verdict reason. The discriminant is the slot in `STATS_REASONS`;
        /// new reasons are appended so slots stay stable across upgrades.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant = $slot, )*
        }

        impl Reason {
            /// Every reason, in slot order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// Number of reasons, the size of `STATS_REASONS`.
            #[allow(clippy::cast_possible_truncation, reason = "a handful of reasons")]
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable `snake_case` name, used by `lb stats`, JSON and metrics.
            pub const fn name(self) -> &'static str {
                match self { $( Reason::$variant => $name, )* }
            }

            /// Whether packets counted under this reason were dropped.
            pub const fn is_drop(self) -> bool {
                match self { $( Reason::$variant => $drop, )* }
            }
        }
    };
}

reasons! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the stack.
    PassNonIp = 0, "pass_non_ip", false;
    /// Unicast frame for another MAC address: passed to the stack.
    PassOtherMac = 1, "pass_other_mac", false;
    /// IP packet for no service: passed to the stack untouched.
    PassNoService = 2, "pass_no_service", false;
    /// A packet for a service, matched; forwarding is not wired yet, so it
    /// goes to the stack.
    PassServiceMatched = 3, "pass_service_matched", false;
    /// ICMP / `ICMPv6` to a VIP: passed to the stack.
    PassIcmpToVip = 4, "pass_icmp_to_vip", false;
    /// Ethernet or VLAN header cut short.
    DropMalformedEth = 5, "drop_malformed_eth", true;
    /// IPv4 header cut short or inconsistent (version, IHL, total length).
    DropMalformedIpv4 = 6, "drop_malformed_ipv4", true;
    /// IPv6 header cut short or inconsistent, or too many extension headers.
    DropMalformedIpv6 = 7, "drop_malformed_ipv6", true;
    /// TCP header to a VIP cut short or with a bad data offset.
    DropMalformedTcp = 8, "drop_malformed_tcp", true;
    /// UDP header to a VIP cut short.
    DropMalformedUdp = 9, "drop_malformed_udp", true;
    /// ICMP / `ICMPv6` header to a VIP cut short.
    DropMalformedIcmp = 10, "drop_malformed_icmp", true;
    /// A fragment to a VIP.
    DropFragment = 11, "drop_fragment", true;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_slot_order() {
        for (slot, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, slot, "{reason:?}");
        }
        assert_eq!(Reason::COUNT as usize, Reason::ALL.len());
    }

    #[test]
    fn names_are_unique_and_drops_say_so() {
        for a in Reason::ALL {
            assert_eq!(a.is_drop(), a.name().starts_with("drop_"), "{a:?}");
            for b in Reason::ALL {
                assert!(
                    a == b || a.name() != b.name(),
                    "{a:?} and {b:?} share a name"
                );
            }
        }
    }
}

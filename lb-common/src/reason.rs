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

            /// The reason in `slot`, if any.
            pub const fn from_slot(slot: u32) -> Option<Reason> {
                match slot {
                    $( $slot => Some(Reason::$variant), )*
                    _ => None,
                }
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
    /// ICMP / `ICMPv6` to a VIP other than echo and too-big: to the stack.
    PassIcmpToVip = 3, "pass_icmp_to_vip", false;
    /// Forwarded packet whose next hop has no neighbour entry yet: handed to
    /// the stack, which resolves it and forwards the packet.
    PassNoNeighbour = 4, "pass_no_neighbour", false;
    /// A client packet sent on to its backend.
    ForwardToBackend = 5, "forward_to_backend", false;
    /// A backend's reply, VIP restored, sent on to the client (NAT).
    ReplyToClient = 6, "reply_to_client", false;
    /// ICMP / `ICMPv6` echo request to a VIP, answered here.
    IcmpEchoReply = 7, "icmp_echo_reply", false;
    /// ICMP fragmentation-needed / packet-too-big about a VIP flow, sent to
    /// the backend that owns the flow.
    IcmpToBackend = 8, "icmp_to_backend", false;
    /// Ethernet or VLAN header cut short.
    DropMalformedEth = 9, "drop_malformed_eth", true;
    /// IPv4 header cut short or inconsistent (version, IHL, total length).
    DropMalformedIpv4 = 10, "drop_malformed_ipv4", true;
    /// IPv6 header cut short or inconsistent, or too many extension headers.
    DropMalformedIpv6 = 11, "drop_malformed_ipv6", true;
    /// TCP header to a VIP cut short or with a bad data offset.
    DropMalformedTcp = 12, "drop_malformed_tcp", true;
    /// UDP header to a VIP cut short.
    DropMalformedUdp = 13, "drop_malformed_udp", true;
    /// ICMP / `ICMPv6` header to a VIP cut short.
    DropMalformedIcmp = 14, "drop_malformed_icmp", true;
    /// A fragment to a VIP with no `ip-hash` service to take it.
    DropFragment = 15, "drop_fragment", true;
    /// The service has no usable backend.
    DropNoBackend = 16, "drop_no_backend", true;
    /// No route to the backend or client (unreachable, blackhole, prohibited,
    /// forwarding disabled).
    DropNoRoute = 17, "drop_no_route", true;
    /// DSR packet whose backend has no neighbour entry: it cannot be handed
    /// to the stack, whose destination would be the VIP.
    DropNoNeighbour = 18, "drop_no_neighbour", true;
    /// The egress interface is not in `DEVMAP`.
    DropRedirect = 19, "drop_redirect", true;
    /// `bpf_xdp_adjust_head` failed (no headroom for encapsulation).
    DropNoHeadroom = 20, "drop_no_headroom", true;
    /// The source is on the deny list.
    DropDenied = 21, "drop_denied", true;
    /// The source opened new flows faster than the per-source limit.
    DropRateLimited = 22, "drop_rate_limited", true;
    /// A client packet sent on to its backend through `bpf_fib_lookup`:
    /// the backend had no resolved next hop cached (or the packet is longer
    /// than the cached hop's MTU).
    ForwardUncachedHop = 23, "forward_uncached_hop", false;
    /// A backend's reply sent on to the client through `bpf_fib_lookup`:
    /// no resolved hop is cached for the route that covers the client
    /// (connected, multipath or unmirrored routes, an unresolved gateway).
    ReplyUncachedHop = 24, "reply_uncached_hop", false;
    /// A client packet too big for the egress towards its backend (a
    /// tunnel's header added): not forwarded; the client is sent ICMP
    /// "fragmentation needed" / `ICMPv6` "packet too big" with the MTU that
    /// fits, for path-MTU discovery.
    IcmpTooBig = 25, "icmp_too_big", false;
    /// The automatic guard (`guard.auto`): the source crossed a threshold
    /// with this packet, or was denied for crossing one earlier.
    DropGuardAuto = 26, "drop_guard_auto", true;
    /// A packet from a backend of an all-port NAT service that is not a
    /// reply in a flow lb forwarded but the backend's own traffic (a
    /// connection or datagram it sent itself): passed to the stack with its
    /// own source address.
    PassBackendOutbound = 27, "pass_backend_outbound", false;
    /// `guard.attack`: a new flow to a VIP under attack that the admission
    /// refused: a bare SYN from a source that has not proved itself (the
    /// first SYN of its tuple, remembered, or a repeat too soon after it),
    /// a proven source over its per-second budget, or an unknown source's
    /// UDP datagram over its service's budget.
    DropAttackUnverified = 28, "drop_attack_unverified", true;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_slot_order() {
        for (slot, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, slot, "{reason:?}");
            assert_eq!(Reason::from_slot(*reason as u32), Some(*reason));
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

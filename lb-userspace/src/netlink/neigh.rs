//! Neighbour messages: get, create a managed entry (what `ip neigh replace
//! ADDR dev DEV managed` sends) and delete one entry, and the
//! `RTM_NEWNEIGH` reply decoded into a [`Neighbour`].

use std::net::IpAddr;

use super::codec::{Request, addr_bytes, attributes, decode_u32, family, split_header, u16_at};
use super::{DecodeError, Neighbour, uapi};

/// `struct ndmsg`.
fn ndmsg(addr: IpAddr, ifindex: u32, state: u16) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[0] = family(addr); // then 3 bytes of padding
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    header[8..10].copy_from_slice(&state.to_ne_bytes());
    // ndm_flags and ndm_type stay 0
    header
}

/// `RTM_GETNEIGH` for one entry, answered with `RTM_NEWNEIGH` or `ENOENT`.
pub(super) fn encode_neighbour_get(seq: u32, addr: IpAddr, ifindex: u32) -> Vec<u8> {
    Request::new(
        uapi::RTM_GETNEIGH,
        uapi::NLM_F_REQUEST,
        seq,
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .finish()
}

/// `RTM_NEWNEIGH` making a managed entry, byte for byte what iproute2 sends
/// for `ip neigh replace ADDR dev DEV managed` — except that `replace` is
/// false when no entry exists, so that a permanent entry added meanwhile
/// makes the kernel answer `EEXIST` instead of being downgraded.
pub(super) fn encode_neighbour_manage(
    seq: u32,
    addr: IpAddr,
    ifindex: u32,
    replace: bool,
) -> Vec<u8> {
    let existing = if replace {
        uapi::NLM_F_REPLACE
    } else {
        uapi::NLM_F_EXCL
    };
    Request::new(
        uapi::RTM_NEWNEIGH,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK | uapi::NLM_F_CREATE | existing,
        seq,
        // NUD_NONE: no address given, the kernel resolves it.
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .attr(uapi::NDA_FLAGS_EXT, &uapi::NTF_EXT_MANAGED.to_ne_bytes())
    .finish()
}

/// `RTM_DELNEIGH` for one entry, acknowledged.
pub(super) fn encode_neighbour_delete(seq: u32, addr: IpAddr, ifindex: u32) -> Vec<u8> {
    Request::new(
        uapi::RTM_DELNEIGH,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK,
        seq,
        &ndmsg(addr, ifindex, 0),
    )
    .attr(uapi::NDA_DST, &addr_bytes(&addr))
    .finish()
}

/// The payload of an `RTM_NEWNEIGH` reply.
pub(super) fn decode_neighbour(payload: &[u8]) -> Result<Neighbour, DecodeError> {
    let (header, attrs) = split_header(payload, 12, "ndmsg")?;
    let state = u16_at(header, 8).ok_or(DecodeError::Truncated("ndmsg"))?;
    let mut neighbour = Neighbour {
        mac: None,
        state,
        managed: false,
        extern_learned: header[10] & uapi::NTF_EXT_LEARNED != 0,
    };
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            // Other lengths are other link layers; no MAC for us there.
            uapi::NDA_LLADDR => neighbour.mac = <[u8; 6]>::try_from(value).ok(),
            uapi::NDA_FLAGS_EXT => {
                let flags = decode_u32(value, "NDA_FLAGS_EXT")?;
                neighbour.managed = flags & uapi::NTF_EXT_MANAGED != 0;
            }
            _ => {}
        }
    }
    Ok(neighbour)
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::codec::messages;
    use crate::netlink::fixtures::*;
    use crate::netlink::link::encode_link_get;
    use crate::netlink::nud;

    #[test]
    fn neighbour_manage_request_is_what_iproute2_sends() {
        // strace of `ip neigh replace 192.0.2.11 dev va managed` (va = #2):
        // nlmsg_len=44, RTM_NEWNEIGH, REQUEST|ACK|REPLACE|CREATE,
        // ndm_state=NUD_NONE, NDA_DST, NDA_FLAGS_EXT=NTF_EXT_MANAGED.
        let bytes = encode_neighbour_manage(7, v4("192.0.2.11"), 2, true);
        #[rustfmt::skip]
        let expected = [
            44, 0, 0, 0,  28, 0,  0x05, 0x05,  7, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,  2, 0, 0, 0,  0, 0,  0,  0,         // ndmsg
            8, 0, 1, 0,  192, 0, 2, 11,                     // NDA_DST
            8, 0, 15, 0,  1, 0, 0, 0,                       // NDA_FLAGS_EXT
        ];
        assert_eq!(bytes, expected);
        // Without an entry: CREATE|EXCL instead of REPLACE.
        let bytes = encode_neighbour_manage(7, v4("192.0.2.11"), 2, false);
        assert_eq!(bytes[6..8], [0x05, 0x06]);
    }

    #[test]
    fn neighbour_get_and_delete_and_link_request_bytes() {
        let v6: IpAddr = "2001:db8::11".parse().expect("test address");
        #[rustfmt::skip]
        let expected = [
            48, 0, 0, 0,  30, 0,  0x01, 0,  3, 0, 0, 0,  0, 0, 0, 0,
            10, 0, 0, 0,  5, 0, 0, 0,  0, 0,  0,  0,
            20, 0, 1, 0,  0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        ];
        assert_eq!(encode_neighbour_get(3, v6, 5), expected);
        let delete = encode_neighbour_delete(4, v4("192.0.2.11"), 2);
        assert_eq!(delete[4..8], [29, 0, 0x05, 0]);
        assert_eq!(delete.len(), 36);
        #[rustfmt::skip]
        let link = [
            32, 0, 0, 0,  18, 0,  0x01, 0,  9, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(encode_link_get(9, 2), link);
    }

    #[test]
    fn decodes_a_neighbour_reply() {
        let message = messages(&NEIGHBOUR_REPLY)
            .next()
            .expect("one message")
            .expect("parses");
        assert_eq!(message.kind, uapi::RTM_NEWNEIGH);
        let neighbour = decode_neighbour(message.payload).expect("neighbour");
        assert_eq!(
            neighbour,
            Neighbour {
                mac: Some([2, 0, 0, 0, 0, 0x99]),
                state: nud::PERMANENT,
                managed: false,
                extern_learned: false,
            }
        );
        assert!(neighbour.usable() && neighbour.owned_elsewhere());
    }

    #[test]
    fn decodes_a_managed_neighbour_and_usability() {
        #[rustfmt::skip]
        let incomplete = [
            10, 0, 0, 0,  2, 0, 0, 0,  0x01, 0,  0, 1,
            8, 0, 15, 0,  1, 0, 0, 0,
        ];
        let neighbour = decode_neighbour(&incomplete).expect("neighbour");
        assert!(neighbour.managed && !neighbour.usable() && !neighbour.owned_elsewhere());
        let stale_without_mac = Neighbour {
            mac: None,
            state: nud::STALE,
            managed: false,
            extern_learned: false,
        };
        assert!(!stale_without_mac.usable());
        let failed = Neighbour {
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: nud::FAILED,
            ..stale_without_mac
        };
        assert!(!failed.usable());
        assert!(
            Neighbour {
                state: nud::DELAY,
                ..failed
            }
            .usable()
        );
    }
}

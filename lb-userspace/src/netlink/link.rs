//! Link messages: `RTM_GETLINK` by index, and the `RTM_NEWLINK` reply
//! decoded into a [`Link`] (MAC, MTU, up and running).

use super::codec::{Request, attributes, decode_u32, split_header, u32_at};
use super::{DecodeError, Link, uapi};

/// `RTM_GETLINK` by index, answered with one `RTM_NEWLINK`.
pub(super) fn encode_link_get(seq: u32, ifindex: u32) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change
    let mut header = [0u8; 16];
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    Request::new(uapi::RTM_GETLINK, uapi::NLM_F_REQUEST, seq, &header).finish()
}

/// The payload of an `RTM_NEWLINK` reply.
pub(super) fn decode_link(payload: &[u8]) -> Result<Link, DecodeError> {
    let (header, attrs) = split_header(payload, 16, "ifinfomsg")?;
    let flags = u32_at(header, 8).ok_or(DecodeError::Truncated("ifinfomsg"))?;
    let mut mac = None;
    let mut mtu = None;
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            uapi::IFLA_ADDRESS => mac = <[u8; 6]>::try_from(value).ok(),
            uapi::IFLA_MTU => mtu = Some(decode_u32(value, "IFLA_MTU")?),
            _ => {}
        }
    }
    Ok(Link {
        mac,
        mtu: mtu.ok_or(DecodeError::Truncated("link without IFLA_MTU"))?,
        up: flags & uapi::IFF_UP != 0 && flags & uapi::IFF_RUNNING != 0,
    })
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_link_reply() {
        // Head of the kernel's RTM_NEWLINK for a veth: ifinfomsg (ARPHRD_ETHER,
        // #2, UP|BROADCAST|RUNNING|MULTICAST|LOWER_UP), IFLA_IFNAME "va",
        // IFLA_MTU 1400, IFLA_ADDRESS, IFLA_BROADCAST.
        #[rustfmt::skip]
        let payload = [
            0, 0, 1, 0,  2, 0, 0, 0,  0x43, 0x10, 1, 0,  0, 0, 0, 0,
            7, 0, 3, 0,  b'v', b'a', 0, 0,
            8, 0, 4, 0,  0x78, 0x05, 0, 0,
            10, 0, 1, 0,  0x76, 0xa3, 0x28, 0x8e, 0xde, 0x98,  0, 0,
            10, 0, 2, 0,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  0, 0,
        ];
        let link = decode_link(&payload).expect("link");
        assert_eq!(
            link,
            Link {
                mac: Some([0x76, 0xa3, 0x28, 0x8e, 0xde, 0x98]),
                mtu: 1400,
                up: true,
            }
        );
        let mut down = payload;
        down[8] = 0x02; // BROADCAST only
        assert!(!decode_link(&down).expect("link").up);
    }
}

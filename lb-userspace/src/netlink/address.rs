//! Address messages: add (what `ip addr replace ADDR/LEN dev DEV [nodad]`
//! sends), delete, and the dump of every address (`ip addr show`), its
//! `RTM_NEWADDR` messages decoded into [`Address`]es.

use std::net::IpAddr;

use ipnet::IpNet;

use super::codec::{Request, addr_bytes, attributes, decode_ip, decode_u32, family, split_header};
use super::dump::DumpFailure;
use super::{Address, DecodeError, Family, uapi};

/// `struct ifaddrmsg`: family, prefix length, flags (u8), scope, index.
fn ifaddrmsg(af: u8, prefix_len: u8, flags: u8, ifindex: u32) -> [u8; 8] {
    let mut header = [0u8; 8];
    header[0] = af;
    header[1] = prefix_len;
    header[2] = flags;
    // ifa_scope 0: RT_SCOPE_UNIVERSE, what iproute2 sends for a global address.
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    header
}

/// `RTM_NEWADDR` adding (or replacing) `address` on `ifindex`, byte for
/// byte what iproute2 sends for `ip addr replace`: `IFA_LOCAL` and
/// `IFA_ADDRESS` both the address; `nodad` (IPv6) skips duplicate address
/// detection, so the address is usable at once.
pub(super) fn encode_address_add(seq: u32, ifindex: u32, address: IpNet, nodad: bool) -> Vec<u8> {
    let flags = if nodad { uapi::IFA_F_NODAD } else { 0 };
    let addr = address.addr();
    Request::new(
        uapi::RTM_NEWADDR,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK | uapi::NLM_F_REPLACE | uapi::NLM_F_CREATE,
        seq,
        &ifaddrmsg(family(addr), address.prefix_len(), flags, ifindex),
    )
    .attr(uapi::IFA_LOCAL, &addr_bytes(&addr))
    .attr(uapi::IFA_ADDRESS, &addr_bytes(&addr))
    .finish()
}

/// `RTM_DELADDR` for `address` on `ifindex` (`ip addr del`); the kernel
/// matches the prefix length too, and answers `EADDRNOTAVAIL` when the
/// interface does not hold it.
pub(super) fn encode_address_delete(seq: u32, ifindex: u32, address: IpNet) -> Vec<u8> {
    let addr = address.addr();
    Request::new(
        uapi::RTM_DELADDR,
        uapi::NLM_F_REQUEST | uapi::NLM_F_ACK,
        seq,
        &ifaddrmsg(family(addr), address.prefix_len(), 0, ifindex),
    )
    .attr(uapi::IFA_LOCAL, &addr_bytes(&addr))
    .attr(uapi::IFA_ADDRESS, &addr_bytes(&addr))
    .finish()
}

/// `RTM_GETADDR` dumping every address of `family` on every interface
/// (the kernel filters by interface only with strict checking, which
/// these sockets do not ask for).
pub(super) fn encode_address_dump(seq: u32, family: Family) -> Vec<u8> {
    Request::new(
        uapi::RTM_GETADDR,
        uapi::NLM_F_REQUEST | uapi::NLM_F_DUMP,
        seq,
        &ifaddrmsg(family.af(), 0, 0, 0),
    )
    .finish()
}

/// The payload of an `RTM_NEWADDR` message. The address is `IFA_LOCAL`
/// when present (for IPv4 `IFA_ADDRESS` is the peer of a point-to-point
/// link), else `IFA_ADDRESS`; `IFA_FLAGS`, when present, holds the flags
/// that do not fit the header's byte.
pub(super) fn decode_address(payload: &[u8]) -> Result<Address, DecodeError> {
    let (header, attrs) = split_header(payload, 8, "ifaddrmsg")?;
    let prefix_len = header[1];
    let mut flags = u32::from(header[2]);
    let scope = header[3];
    let ifindex = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let (mut local, mut address) = (None, None);
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            uapi::IFA_ADDRESS => address = Some(decode_ip(value, "IFA_ADDRESS")?),
            uapi::IFA_LOCAL => local = Some(decode_ip(value, "IFA_LOCAL")?),
            uapi::IFA_FLAGS => flags = decode_u32(value, "IFA_FLAGS")?,
            _ => {}
        }
    }
    let addr: IpAddr = local.or(address).ok_or(DecodeError::Truncated(
        "address without IFA_LOCAL or IFA_ADDRESS",
    ))?;
    let net = IpNet::new(addr, prefix_len).map_err(|_| DecodeError::OutOfRange {
        what: "ifa_prefixlen",
        value: u32::from(prefix_len),
    })?;
    Ok(Address {
        ifindex,
        address: net,
        scope,
        flags,
    })
}

/// Collects the addresses of one interface from a dump of every one.
pub(super) struct AddressCollector {
    ifindex: u32,
    limit: usize,
    pub(super) addresses: Vec<Address>,
}

impl AddressCollector {
    pub(super) fn new(ifindex: u32, limit: usize) -> Self {
        Self {
            ifindex,
            limit,
            addresses: Vec::new(),
        }
    }

    pub(super) fn take(&mut self, kind: u16, payload: &[u8]) -> Result<(), DumpFailure> {
        if kind != uapi::RTM_NEWADDR {
            return Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(kind)));
        }
        let address = decode_address(payload).map_err(DumpFailure::Malformed)?;
        if address.ifindex != self.ifindex {
            return Ok(());
        }
        if self.addresses.len() >= self.limit {
            return Err(DumpFailure::TooLarge(self.limit));
        }
        self.addresses.push(address);
        Ok(())
    }
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::codec::messages;
    use crate::netlink::dump::{DumpProgress, DumpReader};
    use crate::netlink::fixtures::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    #[test]
    fn address_requests_are_what_iproute2_sends() {
        // strace of `ip addr replace 198.51.100.1/24 dev d0` (d0 = #3):
        // RTM_NEWADDR, REQUEST|ACK|REPLACE|CREATE, ifaddrmsg AF_INET /24
        // scope universe, IFA_LOCAL and IFA_ADDRESS the address.
        #[rustfmt::skip]
        let expected = [
            40, 0, 0, 0,  20, 0,  0x05, 0x05,  9, 0, 0, 0,  0, 0, 0, 0,
            2, 24, 0, 0,  3, 0, 0, 0,                       // ifaddrmsg
            8, 0, 2, 0,  198, 51, 100, 1,                   // IFA_LOCAL
            8, 0, 1, 0,  198, 51, 100, 1,                   // IFA_ADDRESS
        ];
        assert_eq!(
            encode_address_add(9, 3, net("198.51.100.1/24"), false),
            expected
        );
        // `ip addr del 198.51.100.1/24 dev d0`: RTM_DELADDR, REQUEST|ACK.
        let mut delete = expected;
        delete[4] = 21;
        delete[6..8].copy_from_slice(&[0x05, 0]);
        assert_eq!(encode_address_delete(9, 3, net("198.51.100.1/24")), delete);

        // `ip addr replace 2001:db8::fe/64 dev d0 nodad`: 64 bytes,
        // AF_INET6, ifa_flags IFA_F_NODAD.
        let bytes = encode_address_add(9, 3, net("2001:db8::fe/64"), true);
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[..4], [64, 0, 0, 0]);
        assert_eq!(bytes[16..24], [10, 64, 0x02, 0, 3, 0, 0, 0]);
        #[rustfmt::skip]
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
        assert_eq!(bytes[24..28], [20, 0, 2, 0]);
        assert_eq!(bytes[28..44], v6);
        assert_eq!(bytes[44..48], [20, 0, 1, 0]);
        assert_eq!(bytes[48..64], v6);
        let parsed: Vec<_> = messages(&bytes).collect();
        assert_eq!(parsed.len(), 1);
    }

    #[test]
    fn address_dump_request_bytes() {
        // `ip -o -4 addr show`: RTM_GETADDR, REQUEST|DUMP, ifaddrmsg AF_INET.
        #[rustfmt::skip]
        let expected = [
            24, 0, 0, 0,  22, 0,  0x01, 0x03,  5, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(encode_address_dump(5, Family::V4), expected);
        assert_eq!(encode_address_dump(5, Family::V6)[16], 10);
    }

    #[test]
    fn decodes_the_kernels_addresses() {
        let address = decode_address(&ADDRESS_V4_SECONDARY[16..]).expect("IPv4 address");
        assert_eq!(
            address,
            Address {
                ifindex: 3,
                address: net("192.0.2.254/24"),
                scope: 0,
                flags: 0x81, // IFA_F_SECONDARY | IFA_F_PERMANENT
            }
        );
        assert!(!address.tentative());
        let address = decode_address(&ADDRESS_V6_LINK_LOCAL[16..]).expect("IPv6 address");
        assert_eq!(
            address,
            Address {
                ifindex: 3,
                address: net("fe80::ff:fe00:1/64"),
                scope: uapi::RT_SCOPE_LINK,
                flags: 0x80, // IFA_F_PERMANENT
            }
        );
        // Still in duplicate address detection: not usable yet.
        let mut tentative = ADDRESS_V6_LINK_LOCAL;
        tentative[68] |= 0x40; // IFA_FLAGS |= IFA_F_TENTATIVE
        assert!(decode_address(&tentative[16..]).unwrap().tentative());

        // Cut anywhere: an error or an address, never a panic.
        for cut in 0..ADDRESS_V6_LINK_LOCAL.len() {
            let _ = decode_address(ADDRESS_V6_LINK_LOCAL.get(16..cut).unwrap_or_default());
        }
        assert_eq!(
            decode_address(&[2, 24, 0]),
            Err(DecodeError::Truncated("ifaddrmsg"))
        );
        // A prefix longer than the address.
        let mut long = ADDRESS_V4_SECONDARY;
        long[17] = 33;
        assert!(matches!(
            decode_address(&long[16..]),
            Err(DecodeError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_dump_keeps_the_interfaces_addresses() {
        let mut other = ADDRESS_V4_SECONDARY;
        other[20] = 7; // on interface #7
        let datagram = concat(&[&other, &ADDRESS_V4_SECONDARY, &ADDRESS_DUMP_DONE]);
        let mut reader = DumpReader::new(ADDRESS_DUMP_SEQ);
        let mut collector = AddressCollector::new(3, 10);
        let progress = reader.feed(&datagram, &mut |kind, payload| {
            collector.take(kind, payload)
        });
        assert_eq!(progress, Ok(DumpProgress::Done));
        assert_eq!(collector.addresses.len(), 1);
        assert_eq!(collector.addresses[0].address, net("192.0.2.254/24"));

        let mut reader = DumpReader::new(ADDRESS_DUMP_SEQ);
        let mut collector = AddressCollector::new(3, 0);
        assert_eq!(
            reader.feed(&datagram, &mut |kind, payload| collector
                .take(kind, payload)),
            Err(DumpFailure::TooLarge(0))
        );
    }
}

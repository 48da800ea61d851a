//! Netlink framing, pure: requests built header, family header and
//! attributes in turn; a datagram read as its messages, a payload as its
//! `rtattr`s, each through a bounds check; and the `NLMSG_ERROR` /
//! `NLMSG_DONE` replies with their extended-ack messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{DecodeError, uapi};

/// Rounds a length up to netlink's 4-byte alignment.
const fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// A request under construction: netlink header, family header, attributes.
pub(super) struct Request {
    bytes: Vec<u8>,
}

impl Request {
    pub(super) fn new(kind: u16, flags: u16, seq: u32, family_header: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        bytes.extend_from_slice(family_header);
        bytes.resize(align(bytes.len()), 0);
        Self { bytes }
    }

    pub(super) fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        let length = u16::try_from(uapi::NLA_HDRLEN + value.len())
            .expect("attribute values sent here are addresses or u32s, at most 16 bytes");
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(align(self.bytes.len()), 0);
        self
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let length = u32::try_from(self.bytes.len())
            .expect("requests built here are well under 4 GiB (at most 64 bytes)");
        self.bytes[..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes
    }
}

pub(super) fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => uapi::AF_INET,
        IpAddr::V6(_) => uapi::AF_INET6,
    }
}

pub(super) fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub(super) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let field = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes(field.try_into().ok()?))
}

pub(super) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(field.try_into().ok()?))
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    /// Everything after the 16-byte header.
    pub(super) payload: &'a [u8],
}

/// The messages of one datagram, in order. After an error it yields nothing
/// more.
#[derive(Debug)]
pub(super) struct Messages<'a> {
    rest: &'a [u8],
}

pub(super) fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let (Some(length), Some(kind), Some(flags), Some(seq)) = (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
        ) else {
            return Some(Err(DecodeError::Truncated("netlink header")));
        };
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length < uapi::NLMSG_HDRLEN || length > rest.len() {
            return Some(Err(DecodeError::BadLength {
                what: "netlink message",
                length,
                available: rest.len(),
            }));
        }
        let payload = rest.get(uapi::NLMSG_HDRLEN..length)?;
        self.rest = rest.get(align(length)..).unwrap_or_default();
        Some(Ok(Message {
            kind,
            flags,
            seq,
            payload,
        }))
    }
}

/// The `rtattr`s in `bytes`, as (type without flag bits, value). After an
/// error it yields nothing more.
#[derive(Debug)]
pub(super) struct Attributes<'a> {
    rest: &'a [u8],
}

pub(super) fn attributes(bytes: &[u8]) -> Attributes<'_> {
    Attributes { rest: bytes }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let (Some(length), Some(kind)) = (u16_at(rest, 0), u16_at(rest, 2)) else {
            return Some(Err(DecodeError::Truncated("attribute header")));
        };
        let length = usize::from(length);
        if length < uapi::NLA_HDRLEN || length > rest.len() {
            return Some(Err(DecodeError::BadLength {
                what: "attribute",
                length,
                available: rest.len(),
            }));
        }
        let value = rest.get(uapi::NLA_HDRLEN..length)?;
        self.rest = rest.get(align(length)..).unwrap_or_default();
        Some(Ok((kind & uapi::NLA_TYPE_MASK, value)))
    }
}

/// The fixed family header at the start of a payload, and the attributes
/// after it.
pub(super) fn split_header<'a>(
    payload: &'a [u8],
    length: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let header = payload.get(..length).ok_or(DecodeError::Truncated(what))?;
    let rest = payload.get(align(length)..).unwrap_or_default();
    Ok((header, rest))
}

pub(super) fn decode_ip(value: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(DecodeError::BadValue {
            what,
            length: value.len(),
        })
    }
}

pub(super) fn decode_u32(value: &[u8], what: &'static str) -> Result<u32, DecodeError> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_ne_bytes)
        .map_err(|_| DecodeError::BadValue {
            what,
            length: value.len(),
        })
}

/// An `NLMSG_ERROR`: an ack when `errno` is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ErrorReply {
    /// Positive errno, or 0.
    pub(super) errno: i32,
    /// The extended-ack message (`NLMSGERR_ATTR_MSG`).
    pub(super) message: Option<String>,
}

/// The payload of an `NLMSG_ERROR` whose header had `flags`.
pub(super) fn decode_error(flags: u16, payload: &[u8]) -> Result<ErrorReply, DecodeError> {
    let error = u32_at(payload, 0).ok_or(DecodeError::Truncated("nlmsgerr"))?;
    let errno = i32::from_ne_bytes(error.to_ne_bytes()).wrapping_neg();
    // The request is echoed: its header only when capped, else all of it.
    let echoed = if flags & uapi::NLM_F_CAPPED != 0 {
        uapi::NLMSG_HDRLEN
    } else {
        let length = u32_at(payload, 4).ok_or(DecodeError::Truncated("nlmsgerr"))?;
        usize::try_from(length).unwrap_or(usize::MAX)
    };
    let tlvs = payload.get(4 + align(echoed)..).unwrap_or_default();
    let message = ext_ack_message(flags, tlvs)?;
    Ok(ErrorReply { errno, message })
}

/// The payload of the `NLMSG_DONE` ending a dump, whose header had `flags`:
/// an errno (0 when the dump is complete), then extended-ack attributes.
pub(super) fn decode_done(flags: u16, payload: &[u8]) -> Result<ErrorReply, DecodeError> {
    if payload.is_empty() {
        return Ok(ErrorReply {
            errno: 0,
            message: None,
        });
    }
    let error = u32_at(payload, 0).ok_or(DecodeError::Truncated("NLMSG_DONE"))?;
    let errno = i32::from_ne_bytes(error.to_ne_bytes()).wrapping_neg();
    let message = ext_ack_message(flags, payload.get(4..).unwrap_or_default())?;
    Ok(ErrorReply { errno, message })
}

/// The extended-ack message (`NLMSGERR_ATTR_MSG`) among `tlvs`, when the
/// header's `flags` say there are any.
fn ext_ack_message(flags: u16, tlvs: &[u8]) -> Result<Option<String>, DecodeError> {
    let mut message = None;
    if flags & uapi::NLM_F_ACK_TLVS != 0 {
        for attr in attributes(tlvs) {
            let (kind, value) = attr?;
            if kind == uapi::NLMSGERR_ATTR_MSG {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Ok(message)
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::fixtures::*;

    #[test]
    fn decodes_errors_and_acks() {
        let message = messages(&ENOENT_REPLY)
            .next()
            .expect("one message")
            .expect("parses");
        assert_eq!(message.kind, uapi::NLMSG_ERROR);
        let reply = decode_error(message.flags, message.payload).expect("error");
        assert_eq!(
            reply,
            ErrorReply {
                errno: libc::ENOENT,
                message: None
            }
        );

        // Capped (header only) with an extended-ack message: EINVAL.
        #[rustfmt::skip]
        let capped = [
            0xea, 0xff, 0xff, 0xff,
            44, 0, 0, 0,  28, 0,  0x05, 0x05,  7, 0, 0, 0,  0, 0, 0, 0,
            12, 0, 1, 0,  b'b', b'a', b'd', b' ', b'!', 0, 0, 0,
        ];
        let reply =
            decode_error(uapi::NLM_F_CAPPED | uapi::NLM_F_ACK_TLVS, &capped).expect("error");
        assert_eq!(
            reply,
            ErrorReply {
                errno: libc::EINVAL,
                message: Some("bad !".into())
            }
        );

        let ack = [0u8; 20];
        assert_eq!(
            decode_error(uapi::NLM_F_CAPPED, &ack).expect("ack").errno,
            0
        );
    }
}

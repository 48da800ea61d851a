//! Reading a dump, pure: the replies to one dump request, fed datagram by
//! datagram, each data message handed on, until `NLMSG_DONE`; replies to
//! other requests skipped, an interrupted dump noticed, the kernel's
//! errors kept.

use std::io;

use super::codec::{ErrorReply, decode_done, decode_error, messages};
use super::{DecodeError, NetlinkError, malformed, uapi};

/// Why a dump stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DumpFailure {
    /// A datagram or message did not parse.
    Malformed(DecodeError),
    /// The kernel refused the dump or failed during it.
    Kernel(ErrorReply),
    /// More entries than the limit.
    TooLarge(usize),
}

impl DumpFailure {
    pub(super) fn into_error(self, op: &'static str, target: String) -> NetlinkError {
        match self {
            Self::Malformed(source) => malformed(op, target, source),
            Self::Kernel(reply) => NetlinkError::Kernel {
                op,
                target,
                source: io::Error::from_raw_os_error(reply.errno),
                message: reply.message,
            },
            Self::TooLarge(limit) => NetlinkError::TooLarge { op, target, limit },
        }
    }
}

/// What a dump does with each of its data messages (type, payload).
pub(super) type TakeMessage<'a> = dyn FnMut(u16, &[u8]) -> Result<(), DumpFailure> + 'a;

/// Where a dump stands after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DumpProgress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` arrived: every entry was seen.
    Done,
}

/// The replies to one dump request, read datagram by datagram.
#[derive(Debug)]
pub(super) struct DumpReader {
    seq: u32,
    /// Some message carried `NLM_F_DUMP_INTR`: the table changed during
    /// the dump, which may have missed or repeated entries.
    pub(super) interrupted: bool,
}

impl DumpReader {
    pub(super) fn new(seq: u32) -> Self {
        Self {
            seq,
            interrupted: false,
        }
    }

    /// Hands each data message of `datagram` that answers this dump to
    /// `take` (type, payload), skipping other sequence numbers (replies to
    /// abandoned requests) and no-ops. `NLMSG_DONE` ends the dump, or fails
    /// it when it carries an errno; so does an `NLMSG_ERROR`.
    pub(super) fn feed(
        &mut self,
        datagram: &[u8],
        take: &mut TakeMessage<'_>,
    ) -> Result<DumpProgress, DumpFailure> {
        for message in messages(datagram) {
            let message = message.map_err(DumpFailure::Malformed)?;
            if message.seq != self.seq {
                continue;
            }
            if message.flags & uapi::NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.kind {
                uapi::NLMSG_DONE => {
                    let reply = decode_done(message.flags, message.payload)
                        .map_err(DumpFailure::Malformed)?;
                    return if reply.errno == 0 {
                        Ok(DumpProgress::Done)
                    } else {
                        Err(DumpFailure::Kernel(reply))
                    };
                }
                uapi::NLMSG_ERROR => {
                    let reply = decode_error(message.flags, message.payload)
                        .map_err(DumpFailure::Malformed)?;
                    return Err(if reply.errno == 0 {
                        DumpFailure::Malformed(DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR))
                    } else {
                        DumpFailure::Kernel(reply)
                    });
                }
                uapi::NLMSG_NOOP => {}
                kind => take(kind, message.payload)?,
            }
        }
        Ok(DumpProgress::More)
    }
}

/// Whether `datagram` holds the last message (`NLMSG_DONE` or
/// `NLMSG_ERROR`) of the dump with sequence `seq`.
pub(super) fn ends_dump(datagram: &[u8], seq: u32) -> bool {
    messages(datagram)
        .map_while(Result::ok)
        .any(|m| m.seq == seq && matches!(m.kind, uapi::NLMSG_DONE | uapi::NLMSG_ERROR))
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::Family;
    use crate::netlink::fixtures::*;
    use crate::netlink::route::decode_route_entry;

    #[test]
    fn route_dump_errors_interruptions_and_limits() {
        // Replies to other requests are skipped, their NLMSG_DONE too.
        let mut stale_done = DUMP_DONE;
        stale_done[8] = 0x7c;
        let mut stale_route = DUMP_DEFAULT;
        stale_route[8] = 0x7c;
        let datagram = concat(&[&stale_route, &stale_done, &DUMP_CONNECTED, &DUMP_DONE]);
        let (routes, _) = dump_of(&[&datagram], Family::V4, 10).expect("dump");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst, v4("192.0.2.0"));

        // NLM_F_DUMP_INTR: complete but inconsistent.
        let mut interrupted = DUMP_CONNECTED;
        interrupted[6] |= 0x10;
        let (routes, consistent) =
            dump_of(&[&interrupted, &DUMP_DONE], Family::V4, 10).expect("dump");
        assert_eq!((routes.len(), consistent), (1, false));

        // An errno in NLMSG_DONE, with an extended-ack message.
        #[rustfmt::skip]
        let failed_done = [
            28, 0, 0, 0,  3, 0,  0x02, 0x02,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
            0xf0, 0xff, 0xff, 0xff, // -EBUSY
            8, 0, 1, 0,  b'n', b'o', b'!', 0,
        ];
        assert_eq!(
            dump_of(&[&DUMP_DEFAULT, &failed_done], Family::V4, 10),
            Err(DumpFailure::Kernel(ErrorReply {
                errno: libc::EBUSY,
                message: Some("no!".into())
            }))
        );

        // NLMSG_ERROR instead of the dump (ENOENT_REPLY answers seq 3).
        let mut refused = ENOENT_REPLY;
        refused[8..12].copy_from_slice(&DUMP_SEQ.to_ne_bytes());
        assert_eq!(
            dump_of(&[&refused], Family::V4, 10),
            Err(DumpFailure::Kernel(ErrorReply {
                errno: libc::ENOENT,
                message: None
            }))
        );
        // An ack is not an answer to a dump.
        #[rustfmt::skip]
        let ack = [
            36, 0, 0, 0,  2, 0,  0x00, 0x01,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
            0, 0, 0, 0,  0x1c, 0, 0, 0,  26, 0, 1, 3,  0x7d, 0x7e, 0x0d, 0x6b,  0, 0, 0, 0,
        ];
        assert_eq!(
            dump_of(&[&ack], Family::V4, 10),
            Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(
                uapi::NLMSG_ERROR
            )))
        );
        // Nor is another kind of message.
        let mut neighbour = NEIGHBOUR_REPLY;
        neighbour[8..12].copy_from_slice(&DUMP_SEQ.to_ne_bytes());
        assert_eq!(
            dump_of(&[&neighbour], Family::V4, 10),
            Err(DumpFailure::Malformed(DecodeError::UnexpectedMessage(
                uapi::RTM_NEWNEIGH
            )))
        );

        // The limit counts kept routes only.
        let datagram = concat(&[&DUMP_LOCAL, &DUMP_DEFAULT, &DUMP_CONNECTED, &DUMP_DONE]);
        assert!(dump_of(&[&datagram], Family::V4, 2).is_ok());
        assert_eq!(
            dump_of(&[&datagram], Family::V4, 1),
            Err(DumpFailure::TooLarge(1))
        );

        // Header fields out of range, addresses of the wrong family.
        let mut long_prefix = DUMP_CONNECTED[16..].to_vec();
        long_prefix[1] = 33;
        assert_eq!(
            decode_route_entry(&long_prefix, Family::V4),
            Err(DecodeError::OutOfRange {
                what: "rtm_dst_len",
                value: 33
            })
        );
        let mut v6_dst_in_v4 = DUMP_V6_CONNECTED[16..].to_vec();
        v6_dst_in_v4[0] = 2;
        v6_dst_in_v4[1] = 24;
        assert_eq!(
            decode_route_entry(&v6_dst_in_v4, Family::V4),
            Err(DecodeError::BadValue {
                what: "RTA_DST",
                length: 16
            })
        );
    }

    #[test]
    fn truncated_route_dumps_are_an_error_never_a_panic() {
        let whole = concat(&[
            &DUMP_DEFAULT,
            &DUMP_CONNECTED,
            &DUMP_MTU,
            &DUMP_MULTIPATH,
            &DUMP_V6_DEFAULT,
            &DUMP_DONE,
        ]);
        for cut in 0..whole.len() {
            // One datagram cut short: a bad length, or no NLMSG_DONE.
            assert!(
                dump_of(&[&whole[..cut]], Family::V4, 10).is_err(),
                "cut at {cut} parsed"
            );
            let _ = dump_of(&[&whole[..cut]], Family::V6, 10);
            // Any payload cut anywhere: may fail, never panics.
            for start in [16, 68, 136] {
                let payload = whole.get(start..cut).unwrap_or_default();
                let _ = decode_route_entry(payload, Family::V4);
                let _ = decode_route_entry(payload, Family::V6);
            }
            let _ = decode_done(
                uapi::NLM_F_ACK_TLVS,
                DUMP_DONE.get(16..cut.min(20)).unwrap_or_default(),
            );
            let _ = ends_dump(&whole[..cut], DUMP_SEQ);
        }
        for garbage in [&[0xffu8; 40][..], &[0u8; 40][..], &[0x10, 0, 0][..]] {
            let _ = dump_of(&[garbage], Family::V4, 10);
            let _ = decode_route_entry(garbage, Family::V6);
            let _ = decode_done(uapi::NLM_F_ACK_TLVS, garbage);
        }
        assert_eq!(
            decode_done(0, &[0, 0]),
            Err(DecodeError::Truncated("NLMSG_DONE"))
        );
        assert_eq!(decode_done(0, &[]).map(|reply| reply.errno), Ok(0));
        // The end of a dump is found in a datagram, whatever precedes it.
        let datagram = concat(&[&DUMP_DEFAULT, &DUMP_DONE]);
        assert!(ends_dump(&datagram, DUMP_SEQ));
        assert!(!ends_dump(&datagram, DUMP_SEQ + 1));
        assert!(!ends_dump(&DUMP_DEFAULT, DUMP_SEQ));
    }
}

//! The connection-sync message on the wire: one UDP datagram carries a batch
//! of flows (new, closed, or a bulk transfer's), authenticated with
//! HMAC-SHA256 under the pair's shared key. [`emit`] and [`parse`]
//! round-trip; [`parse`] checks the tag before it reads anything else, in
//! constant time, so a forged datagram costs one HMAC and says nothing.
//!
//! ```text
//!  0      4    5     6         8           12            20      22      24
//!  | LBS1 | v1 | kind | reserved | sender id | sequence    | count | rsvd  | entries (56 B each) | HMAC-SHA256 (32 B)
//! ```
//!
//! An entry names a flow by its 5-tuple as the client sent it and its
//! backend by address and port, never by a balancer's internal id: two
//! balancers may number backends differently.
//!
//! Freshness is the receiver's business ([`ReplayWindow`]): a sender picks a
//! random id when it starts and numbers its datagrams; a receiver accepts
//! each (sender, sequence) once, within a window of the highest seen.

use std::net::{IpAddr, Ipv6Addr};

use ring::hmac;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"LBS1";
/// The only version this module speaks.
pub const VERSION: u8 = 1;
/// Bytes before the first entry.
pub const HEADER_LEN: usize = 24;
/// Bytes per entry.
pub const ENTRY_LEN: usize = 56;
/// Bytes of the tag at the end.
pub const TAG_LEN: usize = 32;
/// Largest datagram lb sends: fits a 1,500-byte MTU with IPv6 and UDP
/// headers (1,452) with room to spare.
pub const MAX_DATAGRAM: usize = 1400;
/// Entries that fit one datagram.
pub const MAX_ENTRIES: usize = (MAX_DATAGRAM - HEADER_LEN - TAG_LEN) / ENTRY_LEN;

/// What a message says about its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Flows the sender scheduled.
    Opened,
    /// Flows that ended at the sender (FIN / RST seen).
    Closed,
    /// A peer asks for the sender's whole table (no entries).
    BulkRequest,
    /// Part of a bulk transfer answering a request.
    Bulk,
    /// The last part of a bulk transfer (entries may follow in it).
    BulkEnd,
}

impl Kind {
    const fn code(self) -> u8 {
        match self {
            Kind::Opened => 1,
            Kind::Closed => 2,
            Kind::BulkRequest => 3,
            Kind::Bulk => 4,
            Kind::BulkEnd => 5,
        }
    }

    const fn of(code: u8) -> Option<Self> {
        match code {
            1 => Some(Kind::Opened),
            2 => Some(Kind::Closed),
            3 => Some(Kind::BulkRequest),
            4 => Some(Kind::Bulk),
            5 => Some(Kind::BulkEnd),
            _ => None,
        }
    }
}

/// One flow and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The client's address (source of the flow).
    pub client: IpAddr,
    /// The client's port.
    pub client_port: u16,
    /// The VIP (destination of the flow).
    pub vip: IpAddr,
    /// The destination port the client used.
    pub vip_port: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    /// The backend's address.
    pub backend: IpAddr,
    /// The backend's port (0: the flow's own port, all-port services).
    pub backend_port: u16,
}

/// A message: its header fields and entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the entries are.
    pub kind: Kind,
    /// The sender's id, random per start.
    pub sender: u32,
    /// The sender's message number, from 1, one per datagram.
    pub sequence: u64,
    /// At most [`MAX_ENTRIES`].
    pub entries: Vec<Entry>,
}

/// Why a datagram was refused; each is counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than a header and a tag, or longer than lb sends, or its
    /// length is not a whole number of entries.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The tag does not match: another key, or forged or corrupted.
    #[error("authentication failed")]
    BadTag,
    /// Authentic, but of another version or kind this lb does not know.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// The shared key of a pair, from its `secret_file`.
#[derive(Clone, Debug)]
pub struct Key(hmac::Key);

impl Key {
    /// The key for `secret` (the file's bytes, surrounding whitespace
    /// ignored, so an editor's newline does not change it).
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.trim_ascii()))
    }
}

/// `message` as a datagram, tagged with `key`.
///
/// # Panics
/// If `message` has more than [`MAX_ENTRIES`] entries (a caller's bug: the
/// batcher splits).
pub fn emit(message: &Message, key: &Key) -> Vec<u8> {
    assert!(message.entries.len() <= MAX_ENTRIES, "too many entries");
    let mut out = Vec::with_capacity(HEADER_LEN + message.entries.len() * ENTRY_LEN + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(message.kind.code());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&message.sender.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    let count = u16::try_from(message.entries.len()).expect("at most MAX_ENTRIES");
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for entry in &message.entries {
        emit_entry(entry, &mut out);
    }
    seal(out, key)
}

/// `body` with its tag under `key` appended: what [`emit`] does last (and
/// what the fuzz target uses to reach the parser behind the tag).
pub fn seal(mut body: Vec<u8>, key: &Key) -> Vec<u8> {
    let tag = hmac::sign(&key.0, &body);
    body.extend_from_slice(tag.as_ref());
    body
}

fn emit_entry(entry: &Entry, out: &mut Vec<u8>) {
    let family = if entry.client.is_ipv4() { 4 } else { 6 };
    out.push(family);
    out.push(entry.proto);
    out.extend_from_slice(&entry.client_port.to_be_bytes());
    out.extend_from_slice(&entry.vip_port.to_be_bytes());
    out.extend_from_slice(&entry.backend_port.to_be_bytes());
    for addr in [entry.client, entry.vip, entry.backend] {
        out.extend_from_slice(&wide(addr));
    }
}

/// `addr` in 16 bytes: IPv6 as is, IPv4 IPv4-mapped.
fn wide(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Reads a datagram: the tag first (with `key`, in constant time), then the
/// header and entries.
///
/// # Errors
/// [`WireError`] says why it was refused.
pub fn parse(datagram: &[u8], key: &Key) -> Result<Message, WireError> {
    if datagram.len() < HEADER_LEN + TAG_LEN {
        return Err(WireError::Malformed("shorter than a header"));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::Malformed("longer than lb sends"));
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    hmac::verify(&key.0, body, tag).map_err(|_| WireError::BadTag)?;
    if body[..4] != MAGIC {
        return Err(WireError::Malformed("no LBS1 magic"));
    }
    if body[4] != VERSION {
        return Err(WireError::Unsupported("version"));
    }
    let kind = Kind::of(body[5]).ok_or(WireError::Unsupported("kind"))?;
    let sender = u32::from_be_bytes(array(&body[8..12]));
    let sequence = u64::from_be_bytes(array(&body[12..20]));
    let count = usize::from(u16::from_be_bytes(array(&body[20..22])));
    let rest = &body[HEADER_LEN..];
    if rest.len() != count * ENTRY_LEN {
        return Err(WireError::Malformed(
            "length does not match the entry count",
        ));
    }
    if kind == Kind::BulkRequest && count != 0 {
        return Err(WireError::Malformed("a bulk request carries no entries"));
    }
    let entries = rest
        .chunks_exact(ENTRY_LEN)
        .map(parse_entry)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Message {
        kind,
        sender,
        sequence,
        entries,
    })
}

fn parse_entry(bytes: &[u8]) -> Result<Entry, WireError> {
    let v4 = match bytes[0] {
        4 => true,
        6 => false,
        _ => return Err(WireError::Malformed("entry family is neither 4 nor 6")),
    };
    let addr = |at: usize| -> Result<IpAddr, WireError> {
        let v6 = Ipv6Addr::from(array::<16>(&bytes[at..at + 16]));
        match (v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => Ok(IpAddr::V4(v4)),
            (true, None) => Err(WireError::Malformed("IPv4 entry with an IPv6 address")),
            (false, Some(_)) => Err(WireError::Malformed("IPv6 entry with an IPv4 address")),
            (false, None) => Ok(IpAddr::V6(v6)),
        }
    };
    let proto = bytes[1];
    if proto != 6 && proto != 17 {
        return Err(WireError::Malformed(
            "entry protocol is neither TCP nor UDP",
        ));
    }
    Ok(Entry {
        proto,
        client_port: u16::from_be_bytes(array(&bytes[2..4])),
        vip_port: u16::from_be_bytes(array(&bytes[4..6])),
        backend_port: u16::from_be_bytes(array(&bytes[6..8])),
        client: addr(8)?,
        vip: addr(24)?,
        backend: addr(40)?,
    })
}

/// The first `N` bytes of `bytes` (the callers pass exact slices).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Which (sender, sequence) pairs a receiver has accepted: the highest
/// sequence of the current sender and a 64-wide bitmap below it (RFC 4303
/// §3.4.3's anti-replay window). A new sender id (the peer restarted)
/// starts afresh, and the id it replaces is retired: datagrams of a
/// retired id are refused for good, so datagrams captured from two runs of
/// a peer cannot be replayed alternately (each switch would otherwise
/// reset the window). The last [`RETIRED`] ids are kept; a peer restarts
/// with a random id, so a live one is retired only by chance (2⁻³²).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    sender: Option<u32>,
    highest: u64,
    /// Bit `i`: `highest - i` was accepted.
    seen: u64,
    /// Senders replaced by a newer one, the oldest overwritten first.
    retired: [Option<u32>; RETIRED],
    /// Where the next retired id goes.
    next_retired: usize,
}

/// How many retired sender ids a window remembers per peer: replays from
/// that many earlier runs of the peer are refused.
pub const RETIRED: usize = 16;

/// How far below the highest sequence a late datagram is still accepted.
pub const REPLAY_WINDOW: u64 = 64;

impl ReplayWindow {
    /// Whether (sender, sequence) is new; if so it is recorded. Sequence 0
    /// is never valid (senders count from 1).
    pub fn accept(&mut self, sender: u32, sequence: u64) -> bool {
        if sequence == 0 {
            return false;
        }
        if self.sender != Some(sender) {
            if self.retired.contains(&Some(sender)) {
                return false;
            }
            if let Some(current) = self.sender {
                self.retired[self.next_retired] = Some(current);
                self.next_retired = (self.next_retired + 1) % RETIRED;
            }
            self.sender = Some(sender);
            self.highest = sequence;
            self.seen = 1;
            return true;
        }
        if sequence > self.highest {
            let shift = sequence - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = sequence;
            return true;
        }
        let age = self.highest - sequence;
        if age >= REPLAY_WINDOW || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn entry4(client_port: u16) -> Entry {
        Entry {
            client: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            client_port,
            vip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            vip_port: 80,
            proto: 6,
            backend: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
            backend_port: 8080,
        }
    }

    fn entry6() -> Entry {
        Entry {
            client: "2001:db8:1::2".parse().unwrap(),
            client_port: 40000,
            vip: "2001:db8:ff::10".parse().unwrap(),
            vip_port: 53,
            proto: 17,
            backend: "2001:db8::11".parse().unwrap(),
            backend_port: 0,
        }
    }

    #[test]
    fn messages_round_trip_with_literal_bytes() {
        let key = Key::new(b"secret\n");
        let message = Message {
            kind: Kind::Opened,
            sender: 0x0102_0304,
            sequence: 7,
            entries: vec![entry4(40000), entry6()],
        };
        let datagram = emit(&message, &key);
        assert_eq!(datagram.len(), HEADER_LEN + 2 * ENTRY_LEN + TAG_LEN);
        assert_eq!(
            datagram[..HEADER_LEN],
            [
                b'L', b'B', b'S', b'1', 1, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, 0, 0
            ]
        );
        // The first entry: IPv4, TCP, ports 40000 / 80 / 8080, then the
        // client as an IPv4-mapped address.
        assert_eq!(
            datagram[HEADER_LEN..HEADER_LEN + 24],
            [
                4, 6, 0x9c, 0x40, 0, 80, 0x1f, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198,
                51, 100, 2
            ]
        );
        assert_eq!(parse(&datagram, &key), Ok(message));
        // The same secret without the newline is the same key.
        assert!(parse(&datagram, &Key::new(b"secret")).is_ok());
    }

    #[test]
    fn the_tag_is_checked_first_and_everything_else_after() {
        let key = Key::new(b"secret");
        let message = Message {
            kind: Kind::Closed,
            sender: 9,
            sequence: 1,
            entries: vec![entry4(1)],
        };
        let datagram = emit(&message, &key);
        assert_eq!(
            parse(&datagram, &Key::new(b"other")),
            Err(WireError::BadTag)
        );
        for at in [0, 5, 13, HEADER_LEN + 3, datagram.len() - 1] {
            let mut flipped = datagram.clone();
            flipped[at] ^= 1;
            assert_eq!(parse(&flipped, &key), Err(WireError::BadTag), "byte {at}");
        }
        assert_eq!(
            parse(&datagram[..datagram.len() - 1], &key),
            Err(WireError::BadTag)
        );
        assert!(matches!(
            parse(&datagram[..HEADER_LEN], &key),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            parse(&vec![0; MAX_DATAGRAM + 1], &key),
            Err(WireError::Malformed(_))
        ));
    }

    /// Authentic but inconsistent datagrams (a buggy peer with the key):
    /// refused, never a panic.
    #[test]
    fn authentic_nonsense_is_refused() {
        let key = Key::new(b"secret");
        let retag = |body: Vec<u8>| seal(body, &key);
        let good = emit(
            &Message {
                kind: Kind::Opened,
                sender: 1,
                sequence: 1,
                entries: vec![entry4(1)],
            },
            &key,
        );
        let body = good[..good.len() - TAG_LEN].to_vec();
        let mut cases: Vec<(&str, Vec<u8>, WireError)> = Vec::new();
        let mut wrong_count = body.clone();
        wrong_count[21] = 2;
        cases.push((
            "count",
            wrong_count,
            WireError::Malformed("length does not match the entry count"),
        ));
        let mut version = body.clone();
        version[4] = 2;
        cases.push(("version", version, WireError::Unsupported("version")));
        let mut kind = body.clone();
        kind[5] = 9;
        cases.push(("kind", kind, WireError::Unsupported("kind")));
        let mut family = body.clone();
        family[HEADER_LEN] = 5;
        cases.push((
            "family",
            family,
            WireError::Malformed("entry family is neither 4 nor 6"),
        ));
        let mut proto = body.clone();
        proto[HEADER_LEN + 1] = 1;
        cases.push((
            "protocol",
            proto,
            WireError::Malformed("entry protocol is neither TCP nor UDP"),
        ));
        let mut mixed = body.clone();
        mixed[HEADER_LEN + 8 + 10] = 0;
        cases.push((
            "IPv4 entry, IPv6 address",
            mixed,
            WireError::Malformed("IPv4 entry with an IPv6 address"),
        ));
        let mut request = body;
        request[5] = Kind::BulkRequest.code();
        cases.push((
            "bulk request with entries",
            request,
            WireError::Malformed("a bulk request carries no entries"),
        ));
        for (what, body, expected) in cases {
            assert_eq!(parse(&retag(body), &key), Err(expected), "{what}");
        }
    }

    #[test]
    fn the_replay_window_accepts_each_sequence_once() {
        let mut window = ReplayWindow::default();
        assert!(!window.accept(1, 0), "sequence 0");
        assert!(window.accept(1, 5));
        assert!(!window.accept(1, 5), "replayed");
        assert!(window.accept(1, 3), "late, inside the window");
        assert!(!window.accept(1, 3), "late, replayed");
        assert!(window.accept(1, 100));
        assert!(!window.accept(1, 36), "64 behind the highest");
        assert!(window.accept(1, 37), "63 behind");
        assert!(!window.accept(1, 5), "far behind");
        // The peer restarted: a new sender id starts afresh.
        assert!(window.accept(2, 1));
        assert!(!window.accept(2, 1));
        assert!(window.accept(2, 200));
        assert!(window.accept(2, 199));
    }

    /// Datagrams captured from two runs of a peer (sender ids 1 and 2),
    /// replayed alternately: once 2 replaced 1, nothing of 1 is accepted
    /// again — not even sequences 1 never used — and 2's own replays are
    /// refused by its window. Before the fix each switch reset the window
    /// and every replay went through.
    #[test]
    fn a_retired_sender_is_refused_for_good() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 1));
        assert!(window.accept(1, 2));
        assert!(window.accept(2, 1), "the peer restarted");
        for _ in 0..3 {
            assert!(!window.accept(1, 1), "run 1 replayed");
            assert!(!window.accept(1, 3), "run 1, a fresh sequence");
            assert!(!window.accept(2, 1), "run 2 replayed");
        }
        assert!(window.accept(2, 2), "the live run goes on");
        // A third run retires the second as well; the set is bounded.
        assert!(window.accept(3, 1));
        assert!(!window.accept(2, 3));
        assert!(!window.accept(1, 4));
        let retired = u32::try_from(RETIRED).unwrap();
        for id in 4..(4 + retired) {
            assert!(window.accept(id, 1));
        }
        // The current id is 3 + RETIRED; the one before is retired.
        assert!(!window.accept(2 + retired, 2), "a recent run");
    }
}

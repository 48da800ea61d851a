//! The VRRP version 3 advertisement on the wire (RFC 5798 §5): a
//! smoltcp-style view over the payload, [`parse`] and [`emit`] (which
//! round-trip), and the checksum over the IPv4 or IPv6 pseudo-header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::ConfigError;

/// IP protocol number of VRRP, used in the checksum pseudo-header.
pub const PROTOCOL: u8 = 112;

/// The IPv4 multicast group advertisements go to when no unicast peers are
/// configured.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// The IPv6 multicast group advertisements go to when no unicast peers are
/// configured.
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The only VRRP version this module speaks.
pub const VERSION: u8 = 3;

/// The only message type RFC 5798 defines.
pub const TYPE_ADVERTISEMENT: u8 = 1;

/// Priority of the router that owns the virtual addresses: it becomes
/// master at once, without waiting for `Master_Down_Interval`.
pub const PRIORITY_OWNER: u8 = 255;

/// Priority a master sends when it stops, so the backup takes over after
/// `Skew_Time` instead of `Master_Down_Interval`.
pub const PRIORITY_STOP: u8 = 0;

/// Length of the fixed header before the address list.
pub const HEADER_LEN: usize = 8;

/// Field offsets of the fixed header (RFC 5798 §5.1).
mod field {
    use std::ops::Range;

    /// Version (high nibble) and type (low nibble).
    pub const VERSION_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    /// Four reserved bits, then the 12-bit Max Adver Int.
    pub const MAX_ADVER_INT: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const ADDRESSES: usize = 8;
}

/// Address family of an advertisement: it decides the address width and
/// the checksum pseudo-header, and comes from the IP header, not from the
/// VRRP payload (which does not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4: 4-byte addresses.
    V4,
    /// IPv6: 16-byte addresses.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub const fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family an instance with these floating IPs advertises in: IPv6
    /// (to `ff02::12`, from the interface's link-local address) when every
    /// one is IPv6, else IPv4. VRRP version 3 runs one instance per
    /// family, so a mixed list is advertised over IPv4, its IPv6 addresses
    /// moving with the IPv4 ones without being listed.
    pub fn for_floating(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut any = false;
        for address in addresses {
            if address.is_ipv4() {
                return Self::V4;
            }
            any = true;
        }
        if any { Self::V6 } else { Self::V4 }
    }

    /// The multicast group advertisements of this family go to.
    pub const fn multicast(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(MULTICAST_V4),
            Self::V6 => IpAddr::V6(MULTICAST_V6),
        }
    }

    /// Width of one address in the address list.
    pub const fn address_len(self) -> usize {
        match self {
            Self::V4 => 4,
            Self::V6 => 16,
        }
    }
}

/// The advertisement interval as it goes on the wire: whole centiseconds,
/// 1..=4095 (the field has 12 bits, and 0 would make every timer expire at
/// once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdvertInterval(u16);

impl AdvertInterval {
    /// The shortest interval, 10 ms.
    pub const MIN: Self = Self(1);
    /// The longest interval the 12-bit field holds, 40.95 s.
    pub const MAX: Self = Self(0x0fff);
    /// RFC 5798's default, 1 s.
    pub const DEFAULT: Self = Self(100);

    /// The interval of `centis` centiseconds, if it fits the wire field.
    pub const fn from_centis(centis: u16) -> Option<Self> {
        if centis >= Self::MIN.0 && centis <= Self::MAX.0 {
            Some(Self(centis))
        } else {
            None
        }
    }

    /// The interval equal to `duration`, which must be a whole number of
    /// centiseconds between 10 ms and 40.95 s: rounding silently would make
    /// the pair time out at a different moment than the config says.
    pub fn from_duration(duration: Duration) -> Result<Self, ConfigError> {
        const CENTISECOND_NANOS: u128 = 10_000_000;
        let nanos = duration.as_nanos();
        if !nanos.is_multiple_of(CENTISECOND_NANOS) {
            return Err(ConfigError::IntervalNotCentiseconds(duration));
        }
        u16::try_from(nanos / CENTISECOND_NANOS)
            .ok()
            .and_then(Self::from_centis)
            .ok_or(ConfigError::IntervalOutOfRange(duration))
    }

    /// The interval in centiseconds, as on the wire.
    pub const fn centis(self) -> u16 {
        self.0
    }

    /// The interval as a [`Duration`].
    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

/// A decoded VRRP version 3 advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Sender's priority: 0 = master stopping, 255 = address owner.
    pub priority: u8,
    /// The sender's advertisement interval; a backup adopts it.
    pub max_advert_interval: AdvertInterval,
    /// The virtual addresses, all of the family of the IP header.
    pub addresses: Vec<IpAddr>,
}

/// Why a received VRRP payload was rejected; one variant per malformation
/// so the I/O layer can count each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VrrpError {
    /// Shorter than the 8-byte fixed header.
    #[error("truncated: {len} bytes, the header alone is 8")]
    Truncated {
        /// Payload length.
        len: usize,
    },
    /// Not VRRP version 3 (keepalived's `version 2` sends 2).
    #[error("version {version}, expected 3")]
    Version {
        /// Version nibble found.
        version: u8,
    },
    /// Not an advertisement, the only type RFC 5798 defines.
    #[error("type {kind}, expected 1 (advertisement)")]
    Type {
        /// Type nibble found.
        kind: u8,
    },
    /// The payload length disagrees with the address count.
    #[error("{count} addresses need {expected} bytes, got {len}")]
    AddressCount {
        /// Count field.
        count: u8,
        /// Length the count implies.
        expected: usize,
        /// Payload length.
        len: usize,
    },
    /// The checksum does not match the payload and pseudo-header.
    #[error("checksum {found:#06x}, computed {computed:#06x}")]
    Checksum {
        /// Checksum field.
        found: u16,
        /// Checksum of the payload and pseudo-header.
        computed: u16,
    },
    /// Max Adver Int of 0, which no timer can work with.
    #[error("advertisement interval 0")]
    ZeroInterval,
    /// IP source and destination of different families.
    #[error("source {src} and destination {dst} are of different families")]
    FamilyMismatch {
        /// IP source.
        src: IpAddr,
        /// IP destination.
        dst: IpAddr,
    },
}

/// Why an advertisement cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// An address, or the source or destination, is not of one family.
    #[error("addresses of mixed families")]
    MixedFamilies,
    /// More addresses than the 8-bit count holds.
    #[error("{count} addresses, at most 255 fit")]
    TooManyAddresses {
        /// Number of addresses.
        count: usize,
    },
}

/// Read-only view over a VRRP version 3 payload (smoltcp style, docs/STYLE.md §3).
///
/// [`Packet::new_checked`] verifies the length against the address count,
/// after which every accessor is panic-free. It checks nothing else: the
/// version, type and checksum are [`parse`]'s business.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    family: Family,
}

impl<'a> Packet<'a> {
    /// A view over `bytes`, if they hold the fixed header and exactly the
    /// addresses the count field announces.
    pub fn new_checked(bytes: &'a [u8], family: Family) -> Result<Self, VrrpError> {
        if bytes.len() < HEADER_LEN {
            return Err(VrrpError::Truncated { len: bytes.len() });
        }
        let count = bytes[field::COUNT];
        let expected = HEADER_LEN + usize::from(count) * family.address_len();
        // Exact match rather than "at least": the checksum covers the whole
        // payload, and keepalived rejects trailing bytes too.
        if bytes.len() != expected {
            return Err(VrrpError::AddressCount {
                count,
                expected,
                len: bytes.len(),
            });
        }
        Ok(Self { bytes, family })
    }

    /// The version nibble.
    pub fn version(&self) -> u8 {
        self.bytes[field::VERSION_TYPE] >> 4
    }

    /// The type nibble.
    pub fn kind(&self) -> u8 {
        self.bytes[field::VERSION_TYPE] & 0x0f
    }

    /// The virtual router id.
    pub fn vrid(&self) -> u8 {
        self.bytes[field::VRID]
    }

    /// The sender's priority.
    pub fn priority(&self) -> u8 {
        self.bytes[field::PRIORITY]
    }

    /// The count of addresses.
    pub fn count(&self) -> u8 {
        self.bytes[field::COUNT]
    }

    /// Max Adver Int in centiseconds; the four reserved bits above it are
    /// ignored, as RFC 5798 §5.2.6 requires of receivers.
    pub fn max_advert_interval(&self) -> u16 {
        let [hi, lo] = self.word(field::MAX_ADVER_INT.start);
        u16::from_be_bytes([hi & 0x0f, lo])
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(self.word(field::CHECKSUM.start))
    }

    /// The family the view was built for.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The virtual addresses, in wire order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + 'a {
        let family = self.family;
        self.bytes[field::ADDRESSES..]
            .chunks_exact(family.address_len())
            .filter_map(move |chunk| match family {
                Family::V4 => <[u8; 4]>::try_from(chunk)
                    .ok()
                    .map(|a| IpAddr::from(Ipv4Addr::from(a))),
                Family::V6 => <[u8; 16]>::try_from(chunk)
                    .ok()
                    .map(|a| IpAddr::from(Ipv6Addr::from(a))),
            })
    }

    /// The payload the view covers.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn word(&self, at: usize) -> [u8; 2] {
        [self.bytes[at], self.bytes[at + 1]]
    }
}

/// Decodes and validates the VRRP payload of a packet from `src` to `dst`
/// (the IP header's addresses, needed for the checksum pseudo-header).
///
/// Checks, in the order keepalived does: length, version, type, address
/// count, checksum, then a non-zero interval. TTL/hop limit 255 and the VRID
/// are checked elsewhere (the I/O layer and [`Router`](super::Router)).
pub fn parse(payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advertisement, VrrpError> {
    let family = Family::of(src);
    if Family::of(dst) != family {
        return Err(VrrpError::FamilyMismatch { src, dst });
    }
    // Version and type come before the length/count check: a VRRPv2 packet
    // has a different layout, and "wrong version" is the useful diagnosis.
    let Some(&version_type) = payload.first() else {
        return Err(VrrpError::Truncated { len: 0 });
    };
    if payload.len() < HEADER_LEN {
        return Err(VrrpError::Truncated { len: payload.len() });
    }
    if version_type >> 4 != VERSION {
        return Err(VrrpError::Version {
            version: version_type >> 4,
        });
    }
    if version_type & 0x0f != TYPE_ADVERTISEMENT {
        return Err(VrrpError::Type {
            kind: version_type & 0x0f,
        });
    }
    let packet = Packet::new_checked(payload, family)?;
    // Summing the packet with its own checksum field gives 0 when intact;
    // the "computed" value reported is what the field should have held.
    if checksum(src, dst, payload) != 0 {
        return Err(VrrpError::Checksum {
            found: packet.checksum(),
            computed: checksum(src, dst, &with_zero_checksum(payload)),
        });
    }
    let max_advert_interval =
        AdvertInterval::from_centis(packet.max_advert_interval()).ok_or(VrrpError::ZeroInterval)?;
    Ok(Advertisement {
        vrid: packet.vrid(),
        priority: packet.priority(),
        max_advert_interval,
        addresses: packet.addresses().collect(),
    })
}

/// Encodes `advert` as sent from `src` to `dst`, checksum included.
pub fn emit(advert: &Advertisement, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, EmitError> {
    let family = Family::of(src);
    if Family::of(dst) != family || advert.addresses.iter().any(|a| Family::of(*a) != family) {
        return Err(EmitError::MixedFamilies);
    }
    let count = u8::try_from(advert.addresses.len()).map_err(|_| EmitError::TooManyAddresses {
        count: advert.addresses.len(),
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + usize::from(count) * family.address_len());
    out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
    out.push(advert.vrid);
    out.push(advert.priority);
    out.push(count);
    // The reserved nibble is zero because AdvertInterval never exceeds 0xfff.
    out.extend_from_slice(&advert.max_advert_interval.centis().to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for address in &advert.addresses {
        match address {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    let sum = checksum(src, dst, &out);
    out[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
    Ok(out)
}

/// The Internet checksum (RFC 1071) of the pseudo-header and `payload`:
/// 0 for an intact packet, or the value to store when the field is 0.
///
/// RFC 5798 §5.2.8 defines it with the IPv6 pseudo-header; for IPv4,
/// keepalived and the RFC's intent use the IPv4 (UDP-like) one: source,
/// destination, zero, protocol 112, upper-layer length.
fn checksum(src: IpAddr, dst: IpAddr, payload: &[u8]) -> u16 {
    // Callers pass at most 8 + 255 * 16 bytes (validated or built that
    // way), so the length always fits.
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut sum: u64 = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = add_words(sum, &s.octets());
            sum = add_words(sum, &d.octets());
            sum = add_words(sum, &[0, PROTOCOL]);
            sum = add_words(sum, &len.to_be_bytes());
        }
        (s, d) => {
            sum = add_words(sum, &ipv6_octets(s));
            sum = add_words(sum, &ipv6_octets(d));
            sum = add_words(sum, &u32::from(len).to_be_bytes());
            sum = add_words(sum, &[0, 0, 0, PROTOCOL]);
        }
    }
    sum = add_words(sum, payload);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves sum <= 0xffff.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Mixed pairs never reach [`checksum`] (parse and emit reject them); map
/// IPv4 into IPv6 anyway rather than panic.
fn ipv6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn add_words(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn with_zero_checksum(payload: &[u8]) -> Vec<u8> {
    let mut copy = payload.to_vec();
    if let Some(field) = copy.get_mut(field::CHECKSUM) {
        field.fill(0);
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// keepalived `version 3`, VRID 51, priority 150, `advert_int` 1 (100 cs),
    /// one VIP 203.0.113.10, from 192.0.2.1 to 224.0.0.18.
    ///
    /// Checksum by hand: pseudo-header words c000 0201 e000 0012 0070 000c
    /// (src, dst, zero+proto 112, length 12) plus payload words 3133 9601
    /// 0064 0000 cb00 710a sum to 0x3a631; folded 0xa631 + 3 = 0xa634;
    /// complement 0x59cb. Cross-checked with an independent Python RFC 1071
    /// implementation.
    const KEEPALIVED_V4: [u8; 12] = [
        0x31, 0x33, 0x96, 0x01, // v3 advert, VRID 51, prio 150, 1 address
        0x00, 0x64, 0x59, 0xcb, // 100 cs, checksum
        0xcb, 0x00, 0x71, 0x0a, // 203.0.113.10
    ];

    /// VRID 51, priority 100, 100 cs, one address `fe80::1`, from `fe80::2` to
    /// `ff02::12`. Checksum by hand: fe80 0002 ff02 0012 0018 0070 (src, dst,
    /// 32-bit length 24, next header 112) + 3133 6401 0064 fe80 0001 =
    /// 0x39237; 0x9237 + 3 = 0x923a; complement 0x6dc5 (and by Python).
    const V6: [u8; 24] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x6d, 0xc5, // header
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // fe80::1
    ];

    fn keepalived_v4_advert() -> Advertisement {
        Advertisement {
            vrid: 51,
            priority: 150,
            max_advert_interval: AdvertInterval::DEFAULT,
            addresses: vec![ip("203.0.113.10")],
        }
    }

    #[test]
    fn parses_and_emits_keepalived_v4() {
        let (src, dst) = (ip("192.0.2.1"), IpAddr::V4(MULTICAST_V4));
        let packet = Packet::new_checked(&KEEPALIVED_V4, Family::V4).unwrap();
        assert_eq!(packet.version(), 3);
        assert_eq!(packet.kind(), 1);
        assert_eq!(packet.vrid(), 51);
        assert_eq!(packet.priority(), 150);
        assert_eq!(packet.count(), 1);
        assert_eq!(packet.max_advert_interval(), 100);
        assert_eq!(packet.checksum(), 0x59cb);
        assert_eq!(packet.addresses().collect::<Vec<_>>(), [ip("203.0.113.10")]);
        assert_eq!(parse(&KEEPALIVED_V4, src, dst), Ok(keepalived_v4_advert()));
        assert_eq!(
            emit(&keepalived_v4_advert(), src, dst).unwrap(),
            KEEPALIVED_V4
        );
    }

    #[test]
    fn parses_and_emits_v6() {
        let (src, dst) = (ip("fe80::2"), IpAddr::V6(MULTICAST_V6));
        let advert = Advertisement {
            vrid: 51,
            priority: 100,
            max_advert_interval: AdvertInterval::DEFAULT,
            addresses: vec![ip("fe80::1")],
        };
        assert_eq!(parse(&V6, src, dst), Ok(advert.clone()));
        assert_eq!(emit(&advert, src, dst).unwrap(), V6);
    }

    #[test]
    fn rejects_garbage() {
        let (src, dst) = (ip("192.0.2.1"), IpAddr::V4(MULTICAST_V4));
        let with = |at: usize, byte: u8| {
            let mut p = KEEPALIVED_V4;
            p[at] = byte;
            p
        };
        let cases: &[(&str, &[u8], VrrpError)] = &[
            ("empty", &[], VrrpError::Truncated { len: 0 }),
            (
                "short",
                &KEEPALIVED_V4[..7],
                VrrpError::Truncated { len: 7 },
            ),
            ("VRRPv2", &with(0, 0x21), VrrpError::Version { version: 2 }),
            ("type 2", &with(0, 0x32), VrrpError::Type { kind: 2 }),
            (
                "count 2, one address",
                &with(3, 2),
                VrrpError::AddressCount {
                    count: 2,
                    expected: 16,
                    len: 12,
                },
            ),
            (
                "trailing byte",
                &[&KEEPALIVED_V4[..], &[0]].concat(),
                VrrpError::AddressCount {
                    count: 1,
                    expected: 12,
                    len: 13,
                },
            ),
            (
                "bad checksum",
                &with(7, 0xcc),
                VrrpError::Checksum {
                    found: 0x59cc,
                    computed: 0x59cb,
                },
            ),
            (
                "priority changed in flight",
                &with(2, 0x97),
                VrrpError::Checksum {
                    found: 0x59cb,
                    computed: 0x58cb,
                },
            ),
        ];
        for (what, input, error) in cases {
            assert_eq!(parse(input, src, dst).as_ref(), Err(error), "{what}");
        }
        assert_eq!(
            parse(&KEEPALIVED_V4, src, ip("ff02::12")),
            Err(VrrpError::FamilyMismatch {
                src,
                dst: ip("ff02::12")
            })
        );
        // Right bytes, wrong pseudo-header: a spoofed or NATed source.
        assert!(matches!(
            parse(&KEEPALIVED_V4, ip("192.0.2.2"), dst),
            Err(VrrpError::Checksum { .. })
        ));
    }

    #[test]
    fn zero_interval_is_rejected_and_reserved_bits_ignored() {
        let (src, dst) = (ip("192.0.2.1"), IpAddr::V4(MULTICAST_V4));
        let mut zero = KEEPALIVED_V4;
        zero[4..8].fill(0);
        let sum = checksum(src, dst, &zero);
        zero[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&zero, src, dst), Err(VrrpError::ZeroInterval));

        let mut reserved = KEEPALIVED_V4;
        reserved[4] = 0xf0;
        reserved[6..8].fill(0);
        let sum = checksum(src, dst, &reserved);
        reserved[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&reserved, src, dst), Ok(keepalived_v4_advert()));
    }

    #[test]
    fn round_trips() {
        let v4_src = (ip("10.0.0.1"), ip("10.0.0.2"));
        let v6_src = (ip("2001:db8::1"), ip("2001:db8::2"));
        let adverts = [
            (Vec::new(), v4_src),
            (vec![ip("203.0.113.10"), ip("198.51.100.7")], v4_src),
            (
                (0..=254u8).map(|i| ip(&format!("10.1.0.{i}"))).collect(),
                v4_src,
            ),
            (vec![ip("2001:db8::10"), ip("fe80::1")], v6_src),
        ];
        for (addresses, (src, dst)) in adverts {
            for (priority, interval) in [(0, 1), (1, 4095), (255, 100)] {
                let advert = Advertisement {
                    vrid: 255,
                    priority,
                    max_advert_interval: AdvertInterval::from_centis(interval).unwrap(),
                    addresses: addresses.clone(),
                };
                let bytes = emit(&advert, src, dst).unwrap();
                assert_eq!(parse(&bytes, src, dst), Ok(advert));
            }
        }
    }

    #[test]
    fn emit_rejects_what_cannot_be_encoded() {
        let mut advert = keepalived_v4_advert();
        advert.addresses.push(ip("2001:db8::1"));
        assert_eq!(
            emit(&advert, ip("10.0.0.1"), ip("10.0.0.2")),
            Err(EmitError::MixedFamilies)
        );
        advert.addresses = vec![ip("10.0.0.9"); 256];
        assert_eq!(
            emit(&advert, ip("10.0.0.1"), ip("10.0.0.2")),
            Err(EmitError::TooManyAddresses { count: 256 })
        );
    }

    #[test]
    fn the_floating_ips_choose_the_family() {
        let of = |list: &[&str]| Family::for_floating(list.iter().map(|a| ip(a)));
        assert_eq!(of(&[]), Family::V4);
        assert_eq!(of(&["203.0.113.10"]), Family::V4);
        assert_eq!(of(&["2001:db8::fe", "203.0.113.10"]), Family::V4);
        assert_eq!(of(&["2001:db8::fe", "2001:db8:1::1"]), Family::V6);
        assert_eq!(Family::V6.multicast(), ip("ff02::12"));
        assert_eq!(Family::V4.multicast(), ip("224.0.0.18"));
    }

    #[test]
    fn interval_from_duration() {
        let ms = Duration::from_millis;
        assert_eq!(AdvertInterval::from_duration(ms(10)).unwrap().centis(), 1);
        assert_eq!(
            AdvertInterval::from_duration(ms(1000)).unwrap().centis(),
            100
        );
        assert_eq!(
            AdvertInterval::from_duration(ms(40_950)).unwrap(),
            AdvertInterval::MAX
        );
        assert_eq!(
            AdvertInterval::from_duration(ms(15)),
            Err(ConfigError::IntervalNotCentiseconds(ms(15)))
        );
        assert_eq!(
            AdvertInterval::from_duration(ms(0)),
            Err(ConfigError::IntervalOutOfRange(ms(0)))
        );
        assert_eq!(
            AdvertInterval::from_duration(ms(40_960)),
            Err(ConfigError::IntervalOutOfRange(ms(40_960)))
        );
    }
}

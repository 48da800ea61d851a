//! VRRP version 3 (RFC 5798) for the HA pair: the advertisement wire format
//! and the §6.4 state machine that decides which balancer holds the floating
//! IPs.
//!
//! This room is sans-IO (STYLE.md §5): nothing here opens a socket, reads a
//! clock or touches netlink. The I/O layer receives a packet, hands the VRRP
//! payload to [`parse`] together with the IP source and destination (the
//! checksum covers a pseudo-header), feeds the result to
//! [`Router::on_advertisement`], calls [`Router::on_timer`] when
//! [`Router::next_timer`] is due, and carries out the returned [`Action`]s
//! (send an advertisement built by [`Router::advertisement`] and [`emit`],
//! add or remove the floating IPs). Time is always an argument, so the
//! timing rules are tested to the nanosecond without sleeping.
//!
//! The wire format is the one keepalived speaks with `version 3`: IPv4
//! advertisements checksummed over the IPv4 pseudo-header (as for UDP, with
//! protocol 112), IPv6 ones over the RFC 8200 pseudo-header.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::config::Ha;

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

/// Read-only view over a VRRP version 3 payload (smoltcp style, STYLE.md §3).
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
/// are checked elsewhere (the I/O layer and [`Router`]).
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

/// Why the router settings are unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// VRID 0 is reserved.
    #[error("virtual router id 0 is reserved")]
    ZeroVrid,
    /// Priority 0 is reserved for "master stopping".
    #[error("priority 0 is reserved for a stopping master")]
    ZeroPriority,
    /// The interval is not a whole number of centiseconds.
    #[error("advertisement interval {0:?} is not a whole number of centiseconds")]
    IntervalNotCentiseconds(Duration),
    /// The interval is outside 10 ms..=40.95 s.
    #[error("advertisement interval {0:?} is outside 10ms..=40.95s")]
    IntervalOutOfRange(Duration),
    /// A virtual address is not of the local address's family.
    #[error("virtual address {address} is not of the family of {local}")]
    MixedFamilies {
        /// The offending virtual address.
        address: IpAddr,
        /// The local primary address.
        local: IpAddr,
    },
    /// More virtual addresses than one advertisement holds.
    #[error("{count} virtual addresses, at most 255 fit")]
    TooManyAddresses {
        /// Number of addresses.
        count: usize,
    },
}

/// Settings of one virtual router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Local priority, 1..=255; 255 means this router owns the addresses.
    pub priority: u8,
    /// How often a master advertises.
    pub advert_interval: AdvertInterval,
    /// Whether a backup takes over from a live lower-priority master.
    pub preempt: bool,
    /// This router's primary address on the VRRP interface: the source of
    /// its advertisements and its tie-breaker on equal priority.
    pub local_addr: IpAddr,
    /// The virtual (floating) addresses, listed in advertisements.
    pub addresses: Vec<IpAddr>,
}

/// State of the RFC 5798 §6.4 state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or shut down.
    Initialize,
    /// Watching the master; takes over when it falls silent.
    Backup,
    /// Holding the floating IPs and advertising.
    Master,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initialize => "initialize",
            Self::Backup => "backup",
            Self::Master => "master",
        })
    }
}

/// Why the router is in its current state, for `lb status` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Never started.
    NotStarted,
    /// Started below priority 255: backups first, masters by election.
    Started,
    /// Started with priority 255, the address owner.
    AddressOwner,
    /// No advertisement within `Master_Down_Interval`.
    MasterDown,
    /// The master sent priority 0 and `Skew_Time` passed.
    PriorityZero {
        /// The stopping master.
        from: IpAddr,
    },
    /// Stepped down for a higher-priority master.
    HigherPriority {
        /// Its priority.
        priority: u8,
        /// Its address.
        from: IpAddr,
    },
    /// Stepped down for an equal-priority master with a higher address.
    HigherAddress {
        /// The shared priority.
        priority: u8,
        /// Its address.
        from: IpAddr,
    },
    /// [`Router::shutdown`] was called.
    Shutdown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotStarted => f.write_str("not started"),
            Self::Started => f.write_str("started"),
            Self::AddressOwner => f.write_str("address owner (priority 255)"),
            Self::MasterDown => f.write_str("master down interval expired"),
            Self::PriorityZero { from } => write!(f, "priority 0 from master {from}"),
            Self::HigherPriority { priority, from } => {
                write!(f, "higher priority {priority} from {from}")
            }
            Self::HigherAddress { priority, from } => {
                write!(f, "equal priority {priority} from higher address {from}")
            }
            Self::Shutdown => f.write_str("shut down"),
        }
    }
}

/// What the I/O layer must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send [`Router::advertisement`]`(priority)` to the group or peers.
    SendAdvertisement {
        /// Priority to advertise: the local one, or 0 when stopping.
        priority: u8,
    },
    /// Add the floating IPs and send gratuitous ARP / unsolicited NA.
    BecomeMaster,
    /// Remove the floating IPs (if held); keep the data plane loaded.
    BecomeBackup,
    /// The router stopped: remove the floating IPs if held, send nothing.
    Stop,
}

/// Why a received advertisement was not applied; worth a counter, not a
/// log line per packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// The router is not running.
    #[error("router not running")]
    NotRunning,
    /// Another virtual router's advertisement (RFC 5798 §7.1 discard).
    #[error("advertisement for virtual router {vrid}")]
    OtherVrid {
        /// Its VRID.
        vrid: u8,
    },
    /// Sent from the other address family (VRRP version 3 runs one instance
    /// per family).
    #[error("advertisement from {from}, another address family")]
    OtherFamily {
        /// Its sender.
        from: IpAddr,
    },
    /// Our own advertisement, looped back by multicast.
    #[error("own advertisement looped back")]
    Own,
}

/// One VRRP version 3 virtual router (RFC 5798 §6.4), as a pure state machine.
#[derive(Clone, Debug)]
pub struct Router {
    config: RouterConfig,
    state: State,
    since: Option<Instant>,
    reason: Reason,
    /// `Master_Adver_Interval`: ours until a master's advertisement says
    /// otherwise.
    master_advert_interval: AdvertInterval,
    /// `Master_Down_Timer` in Backup, `Adver_Timer` in Master.
    timer: Option<Instant>,
    /// Sender of the last advertisement accepted as the master's.
    peer: Option<IpAddr>,
    /// Set when a priority-0 advertisement shortened the down timer, so the
    /// takeover names the real cause.
    stopping_master: Option<IpAddr>,
}

impl Router {
    /// A router in `Initialize`, once `config` is checked.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        if config.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if config.priority == PRIORITY_STOP {
            return Err(ConfigError::ZeroPriority);
        }
        if let Some(&address) = config
            .addresses
            .iter()
            .find(|a| Family::of(**a) != Family::of(config.local_addr))
        {
            return Err(ConfigError::MixedFamilies {
                address,
                local: config.local_addr,
            });
        }
        if config.addresses.len() > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyAddresses {
                count: config.addresses.len(),
            });
        }
        Ok(Self {
            master_advert_interval: config.advert_interval,
            config,
            state: State::Initialize,
            since: None,
            reason: Reason::NotStarted,
            timer: None,
            peer: None,
            stopping_master: None,
        })
    }

    /// The router for the `ha:` section, speaking from `local_addr`.
    ///
    /// Only floating IPs of `local_addr`'s family are advertised: VRRP version 3
    /// runs one instance per family, so a dual-stack pair needs two
    /// routers (the same VRID may serve both).
    pub fn from_ha(ha: &Ha, local_addr: IpAddr) -> Result<Self, ConfigError> {
        Self::new(RouterConfig {
            vrid: ha.virtual_router_id,
            priority: ha.priority,
            advert_interval: AdvertInterval::from_duration(ha.advert_interval)?,
            preempt: ha.preempt,
            local_addr,
            addresses: ha
                .floating_ips
                .iter()
                .map(ipnet::IpNet::addr)
                .filter(|a| Family::of(*a) == Family::of(local_addr))
                .collect(),
        })
    }

    /// The settings the router was built from.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the state last changed; `None` before [`Router::start`].
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Why the last transition happened.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The address of the master we last accepted an advertisement from.
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// When [`Router::on_timer`] must next be called; `None` in
    /// `Initialize`.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timer
    }

    /// `Master_Adver_Interval`: the master's interval as last learnt.
    pub fn master_advert_interval(&self) -> AdvertInterval {
        self.master_advert_interval
    }

    /// `Skew_Time` = ((256 - priority) × `Master_Adver_Interval`) / 256.
    ///
    /// Computed on a [`Duration`] (nanoseconds) rather than whole
    /// centiseconds, as keepalived does in microseconds: in centiseconds
    /// the skew of a 10 ms interval would truncate to 0 for every priority,
    /// and both backups would take over at the same instant.
    pub fn skew_time(&self) -> Duration {
        self.master_advert_interval.duration() * (256 - u32::from(self.config.priority)) / 256
    }

    /// `Master_Down_Interval` = 3 × `Master_Adver_Interval` + `Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        self.master_advert_interval.duration() * 3 + self.skew_time()
    }

    /// The advertisement to send for [`Action::SendAdvertisement`].
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid,
            priority,
            max_advert_interval: self.config.advert_interval,
            addresses: self.config.addresses.clone(),
        }
    }

    /// Startup event: the owner becomes master at once, others backup.
    /// Does nothing unless in `Initialize`.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.peer = None;
        self.stopping_master = None;
        if self.config.priority == PRIORITY_OWNER {
            self.become_master(now, Reason::AddressOwner)
        } else {
            self.master_advert_interval = self.config.advert_interval;
            self.timer = Some(now + self.master_down_interval());
            self.transition(State::Backup, now, Reason::Started);
            vec![Action::BecomeBackup]
        }
    }

    /// Timer event: a backup whose master fell silent takes over; a master
    /// advertises. Does nothing before [`Router::next_timer`].
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.timer.is_none_or(|deadline| now < deadline) {
            return Vec::new();
        }
        match self.state {
            State::Initialize => Vec::new(),
            State::Backup => {
                let reason = match self.stopping_master {
                    Some(from) => Reason::PriorityZero { from },
                    None => Reason::MasterDown,
                };
                self.become_master(now, reason)
            }
            State::Master => {
                // From `now`, not from the old deadline: RFC 5798 resets the
                // timer, and a late wakeup must not cause a burst.
                self.timer = Some(now + self.config.advert_interval.duration());
                vec![Action::SendAdvertisement {
                    priority: self.config.priority,
                }]
            }
        }
    }

    /// Receive event for an advertisement that passed [`parse`], from IP
    /// source `from` (the sender's primary address).
    pub fn on_advertisement(
        &mut self,
        advert: &Advertisement,
        from: IpAddr,
        now: Instant,
    ) -> Result<Vec<Action>, Ignored> {
        if self.state == State::Initialize {
            return Err(Ignored::NotRunning);
        }
        if advert.vrid != self.config.vrid {
            return Err(Ignored::OtherVrid { vrid: advert.vrid });
        }
        if Family::of(from) != Family::of(self.config.local_addr) {
            return Err(Ignored::OtherFamily { from });
        }
        if from == self.config.local_addr {
            return Err(Ignored::Own);
        }
        let priority = self.config.priority;
        match self.state {
            State::Initialize => Err(Ignored::NotRunning),
            State::Backup => {
                if advert.priority == PRIORITY_STOP {
                    // The master is leaving: wait only Skew_Time, so the
                    // highest-priority backup still goes first.
                    self.timer = Some(now + self.skew_time());
                    self.stopping_master = Some(from);
                } else if !self.config.preempt || advert.priority >= priority {
                    self.follow(advert, from, now);
                }
                // Otherwise preempting a lower master: let the timer run out.
                Ok(Vec::new())
            }
            State::Master => {
                if advert.priority == PRIORITY_STOP {
                    // Another master is stopping: reassert at once so its
                    // backups hear us before their Skew_Time runs out.
                    self.timer = Some(now + self.config.advert_interval.duration());
                    return Ok(vec![Action::SendAdvertisement { priority }]);
                }
                let reason = if advert.priority > priority {
                    Reason::HigherPriority {
                        priority: advert.priority,
                        from,
                    }
                } else if advert.priority == priority && from > self.config.local_addr {
                    Reason::HigherAddress { priority, from }
                } else {
                    // Lower priority, or equal from a lower address: it will
                    // step down when it hears us.
                    return Ok(Vec::new());
                };
                self.follow(advert, from, now);
                self.transition(State::Backup, now, reason);
                Ok(vec![Action::BecomeBackup])
            }
        }
    }

    /// Shutdown event: a master sends priority 0 so the backup takes over
    /// after `Skew_Time`; either way the router returns to `Initialize`.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        let actions = match self.state {
            State::Initialize => return Vec::new(),
            State::Backup => vec![Action::Stop],
            State::Master => vec![
                Action::SendAdvertisement {
                    priority: PRIORITY_STOP,
                },
                Action::Stop,
            ],
        };
        self.timer = None;
        self.transition(State::Initialize, now, Reason::Shutdown);
        actions
    }

    /// Accepts `from` as master: learn its interval, rearm the down timer.
    fn follow(&mut self, advert: &Advertisement, from: IpAddr, now: Instant) {
        self.master_advert_interval = advert.max_advert_interval;
        self.timer = Some(now + self.master_down_interval());
        self.peer = Some(from);
        self.stopping_master = None;
    }

    fn become_master(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        self.timer = Some(now + self.config.advert_interval.duration());
        self.stopping_master = None;
        self.peer = None;
        self.transition(State::Master, now, reason);
        // RFC 5798 order: advertise, then announce the addresses.
        vec![
            Action::SendAdvertisement {
                priority: self.config.priority,
            },
            Action::BecomeMaster,
        ]
    }

    fn transition(&mut self, state: State, now: Instant, reason: Reason) {
        self.state = state;
        self.since = Some(now);
        self.reason = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // ---- wire format -------------------------------------------------

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

    // ---- state machine -----------------------------------------------

    fn router(addr: &str, priority: u8, centis: u16, preempt: bool) -> Router {
        Router::new(RouterConfig {
            vrid: 51,
            priority,
            advert_interval: AdvertInterval::from_centis(centis).unwrap(),
            preempt,
            local_addr: ip(addr),
            addresses: vec![ip("203.0.113.10")],
        })
        .unwrap()
    }

    fn advert_from(r: &Router, priority: u8) -> Advertisement {
        r.advertisement(priority)
    }

    const SEND_150: Action = Action::SendAdvertisement { priority: 150 };

    #[test]
    fn backup_becomes_master_after_master_down_interval() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 150, 100, true);
        assert_eq!(r.state(), State::Initialize);
        assert_eq!(r.next_timer(), None);
        assert_eq!(r.start(t0), [Action::BecomeBackup]);
        assert_eq!(r.state(), State::Backup);
        // Skew = 106/256 s = 414.0625 ms; down = 3 s + skew.
        assert_eq!(r.skew_time(), Duration::from_nanos(414_062_500));
        let deadline = t0 + Duration::from_nanos(3_414_062_500);
        assert_eq!(r.next_timer(), Some(deadline));
        assert!(
            r.on_timer(deadline.checked_sub(Duration::from_nanos(1)).unwrap())
                .is_empty()
        );
        assert_eq!(r.on_timer(deadline), [SEND_150, Action::BecomeMaster]);
        assert_eq!(r.state(), State::Master);
        assert_eq!(r.since(), Some(deadline));
        assert_eq!(r.reason().to_string(), "master down interval expired");
        // Then one advertisement per interval.
        let next = deadline + Duration::from_secs(1);
        assert_eq!(r.next_timer(), Some(next));
        assert_eq!(r.on_timer(next), [SEND_150]);
        assert_eq!(r.next_timer(), Some(next + Duration::from_secs(1)));
        // Starting twice does nothing.
        assert!(r.start(next).is_empty());
    }

    #[test]
    fn owner_becomes_master_at_once() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 255, 100, true);
        assert_eq!(
            r.start(t0),
            [
                Action::SendAdvertisement { priority: 255 },
                Action::BecomeMaster
            ]
        );
        assert_eq!(r.state(), State::Master);
        assert_eq!(r.reason(), &Reason::AddressOwner);
        assert_eq!(r.next_timer(), Some(t0 + Duration::from_secs(1)));
    }

    /// Two routers joined by a lossless, zero-delay wire that really
    /// encodes and decodes each advertisement.
    struct Wire {
        nodes: [Router; 2],
        /// A crashed node neither sends nor receives nor runs timers.
        alive: [bool; 2],
        /// Every transition: (when, node, new state).
        log: Vec<(Instant, usize, State)>,
    }

    impl Wire {
        fn new(a: Router, b: Router) -> Self {
            Self {
                nodes: [a, b],
                alive: [true, true],
                log: Vec::new(),
            }
        }

        fn start(&mut self, node: usize, now: Instant) {
            let actions = self.nodes[node].start(now);
            self.apply(node, &actions, now);
        }

        fn shutdown(&mut self, node: usize, now: Instant) {
            let actions = self.nodes[node].shutdown(now);
            self.apply(node, &actions, now);
            self.alive[node] = false;
        }

        fn apply(&mut self, node: usize, actions: &[Action], now: Instant) {
            for action in actions {
                match *action {
                    Action::SendAdvertisement { priority } => {
                        let sender = &self.nodes[node];
                        let src = sender.config().local_addr;
                        let dst = IpAddr::V4(MULTICAST_V4);
                        let bytes = emit(&sender.advertisement(priority), src, dst).unwrap();
                        let other = 1 - node;
                        if self.alive[other] {
                            let advert = parse(&bytes, src, dst).unwrap();
                            // A node that has not started yet hears nothing.
                            match self.nodes[other].on_advertisement(&advert, src, now) {
                                Ok(reply) => self.apply(other, &reply, now),
                                Err(Ignored::NotRunning) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    Action::BecomeMaster => self.log.push((now, node, State::Master)),
                    Action::BecomeBackup => self.log.push((now, node, State::Backup)),
                    Action::Stop => self.log.push((now, node, State::Initialize)),
                }
            }
        }

        /// Fires timers in time order until `until`.
        fn run_until(&mut self, until: Instant) {
            loop {
                let next = (0..2)
                    .filter(|&n| self.alive[n])
                    .filter_map(|n| self.nodes[n].next_timer().map(|t| (t, n)))
                    .min();
                match next {
                    Some((t, n)) if t <= until => {
                        let actions = self.nodes[n].on_timer(t);
                        self.apply(n, &actions, t);
                    }
                    _ => return,
                }
            }
        }

        fn states(&self) -> [State; 2] {
            [self.nodes[0].state(), self.nodes[1].state()]
        }
    }

    #[test]
    fn pair_converges_and_backup_takes_over_when_master_falls_silent() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(30));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        // Exactly one transition to master, by the higher priority, after
        // its own (shorter) Master_Down_Interval: 3 s + 56/256 s.
        let masters: Vec<_> = wire.log.iter().filter(|e| e.2 == State::Master).collect();
        assert_eq!(
            masters,
            [&(t0 + Duration::from_micros(3_218_750), 0, State::Master)]
        );
        assert_eq!(wire.nodes[1].peer(), Some(ip("192.0.2.1")));

        // Node 0 crashes without a word; its last advertisement went out
        // at the last timer it fired.
        let last_advert = wire.nodes[0]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_secs(1))
            .unwrap();
        wire.alive[0] = false;
        wire.run_until(t0 + Duration::from_mins(1));
        assert_eq!(wire.nodes[1].state(), State::Master);
        // 3 s + 156/256 s = 3.609375 s after the last advertisement heard.
        let takeover = last_advert + Duration::from_micros(3_609_375);
        assert_eq!(wire.nodes[1].since(), Some(takeover));
        assert_eq!(wire.nodes[1].reason(), &Reason::MasterDown);
    }

    #[test]
    fn preempting_backup_takes_over_from_lower_master() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        assert_eq!(wire.nodes[1].state(), State::Master);
        // The higher-priority node joins late: it ignores the lower master
        // and takes over after its own Master_Down_Interval.
        let joined = t0 + Duration::from_secs(10);
        wire.start(0, joined);
        wire.run_until(joined + Duration::from_secs(10));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        assert_eq!(
            wire.nodes[0].since(),
            Some(joined + Duration::from_micros(3_218_750))
        );
        assert_eq!(
            wire.nodes[1].reason().to_string(),
            "higher priority 200 from 192.0.2.1"
        );
        assert_eq!(wire.nodes[1].since(), wire.nodes[0].since());
    }

    #[test]
    fn non_preempting_backup_leaves_live_master_alone() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, false),
            router("192.0.2.2", 100, 100, false),
        );
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        let joined = t0 + Duration::from_secs(10);
        wire.start(0, joined);
        wire.run_until(joined + Duration::from_mins(2));
        assert_eq!(wire.states(), [State::Backup, State::Master]);
        assert_eq!(wire.nodes[0].peer(), Some(ip("192.0.2.2")));
        // preempt: false still lets it take over once the master dies.
        let last_advert = wire.nodes[1]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_secs(1))
            .unwrap();
        wire.alive[1] = false;
        wire.run_until(joined + Duration::from_mins(4));
        assert_eq!(wire.nodes[0].state(), State::Master);
        assert_eq!(
            wire.nodes[0].since(),
            Some(last_advert + Duration::from_micros(3_218_750))
        );
    }

    #[test]
    fn priority_zero_hands_over_after_skew_time() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 100, true),
            router("192.0.2.2", 100, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        wire.run_until(t0 + Duration::from_secs(10));
        assert_eq!(wire.states(), [State::Master, State::Backup]);

        let stop = t0 + Duration::from_millis(10_500);
        wire.shutdown(0, stop);
        assert_eq!(wire.nodes[0].state(), State::Initialize);
        assert_eq!(wire.nodes[0].next_timer(), None);
        // Skew_Time of priority 100 at 1 s: 156/256 s.
        let takeover = stop + Duration::from_micros(609_375);
        assert_eq!(wire.nodes[1].next_timer(), Some(takeover));
        wire.run_until(t0 + Duration::from_secs(20));
        assert_eq!(wire.nodes[1].state(), State::Master);
        assert_eq!(wire.nodes[1].since(), Some(takeover));
        assert_eq!(
            wire.nodes[1].reason().to_string(),
            "priority 0 from master 192.0.2.1"
        );
        assert!(wire.log.contains(&(stop, 0, State::Initialize)));
    }

    #[test]
    fn shutdown_actions() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 150, 100, true);
        assert!(r.shutdown(t0).is_empty());
        r.start(t0);
        assert_eq!(r.shutdown(t0), [Action::Stop]);
        let mut owner = router("192.0.2.1", 255, 100, true);
        owner.start(t0);
        assert_eq!(
            owner.shutdown(t0),
            [Action::SendAdvertisement { priority: 0 }, Action::Stop]
        );
        assert_eq!(owner.reason(), &Reason::Shutdown);
        // A stopped router can start again.
        assert_eq!(owner.start(t0).last(), Some(&Action::BecomeMaster));
    }

    #[test]
    fn master_answers_priority_zero_at_once() {
        let t0 = Instant::now();
        let mut master = router("192.0.2.1", 150, 100, true);
        master.start(t0);
        let t1 = t0 + Duration::from_secs(4);
        master.on_timer(t1);
        assert_eq!(master.state(), State::Master);
        let other = router("192.0.2.2", 150, 100, true);
        let now = t1 + Duration::from_millis(300);
        assert_eq!(
            master.on_advertisement(&advert_from(&other, 0), ip("192.0.2.2"), now),
            Ok(vec![SEND_150])
        );
        assert_eq!(master.state(), State::Master);
        assert_eq!(master.next_timer(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn equal_priority_ties_break_on_address() {
        let t0 = Instant::now();
        let mut low = router("192.0.2.1", 150, 100, true);
        let mut high = router("192.0.2.2", 150, 100, true);
        for r in [&mut low, &mut high] {
            r.start(t0);
            r.on_timer(t0 + Duration::from_secs(4));
            assert_eq!(r.state(), State::Master);
        }
        let now = t0 + Duration::from_secs(5);
        // The higher address keeps mastership...
        assert_eq!(
            high.on_advertisement(&advert_from(&low, 150), ip("192.0.2.1"), now),
            Ok(vec![])
        );
        assert_eq!(high.state(), State::Master);
        // ...the lower one steps down.
        assert_eq!(
            low.on_advertisement(&advert_from(&high, 150), ip("192.0.2.2"), now),
            Ok(vec![Action::BecomeBackup])
        );
        assert_eq!(low.state(), State::Backup);
        assert_eq!(
            low.reason().to_string(),
            "equal priority 150 from higher address 192.0.2.2"
        );
        assert_eq!(low.next_timer(), Some(now + low.master_down_interval()));

        // Converges the same way over the wire from a simultaneous start.
        let mut wire = Wire::new(
            router("192.0.2.1", 150, 100, true),
            router("192.0.2.2", 150, 100, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        // Same priority, same skew: both time out together; the first to
        // fire advertises and the other, still backup, follows it. Either
        // way exactly one master remains.
        wire.run_until(t0 + Duration::from_secs(30));
        let masters = wire
            .states()
            .iter()
            .filter(|s| **s == State::Master)
            .count();
        assert_eq!(masters, 1);
    }

    #[test]
    fn ten_millisecond_interval() {
        let t0 = Instant::now();
        let mut wire = Wire::new(
            router("192.0.2.1", 200, 1, true),
            router("192.0.2.2", 150, 1, true),
        );
        wire.start(0, t0);
        wire.start(1, t0);
        // Priority 200: 30 ms + 10 ms × 56/256 = 32.1875 ms.
        wire.run_until(t0 + Duration::from_millis(100));
        assert_eq!(wire.states(), [State::Master, State::Backup]);
        assert_eq!(
            wire.nodes[0].since(),
            Some(t0 + Duration::from_nanos(32_187_500))
        );
        let last_advert = wire.nodes[0]
            .next_timer()
            .unwrap()
            .checked_sub(Duration::from_millis(10))
            .unwrap();
        wire.alive[0] = false;
        wire.run_until(t0 + Duration::from_millis(500));
        // Priority 150: 30 ms + 10 ms × 106/256 = 34.140625 ms.
        assert_eq!(
            wire.nodes[1].since(),
            Some(last_advert + Duration::from_nanos(34_140_625))
        );
        assert_eq!(wire.nodes[1].state(), State::Master);
    }

    #[test]
    fn backup_learns_master_interval() {
        let t0 = Instant::now();
        let mut backup = router("192.0.2.1", 100, 100, true);
        backup.start(t0);
        let master = router("192.0.2.2", 200, 200, true);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            backup.on_advertisement(&advert_from(&master, 200), ip("192.0.2.2"), now),
            Ok(vec![])
        );
        assert_eq!(backup.master_advert_interval().centis(), 200);
        // 3 × 2 s + 2 s × 156/256 = 7.21875 s.
        assert_eq!(
            backup.next_timer(),
            Some(now + Duration::from_micros(7_218_750))
        );
        assert_eq!(backup.peer(), Some(ip("192.0.2.2")));
    }

    #[test]
    fn ignores_other_vrid_family_own_and_when_stopped() {
        let t0 = Instant::now();
        let mut r = router("192.0.2.1", 100, 100, true);
        let mut other = advert_from(&r, 200);
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.2"), t0),
            Err(Ignored::NotRunning)
        );
        r.start(t0);
        let deadline = r.next_timer();
        other.vrid = 52;
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.2"), t0 + Duration::from_secs(1)),
            Err(Ignored::OtherVrid { vrid: 52 })
        );
        other.vrid = 51;
        assert_eq!(
            r.on_advertisement(&other, ip("fe80::2"), t0),
            Err(Ignored::OtherFamily {
                from: ip("fe80::2")
            })
        );
        assert_eq!(
            r.on_advertisement(&other, ip("192.0.2.1"), t0),
            Err(Ignored::Own)
        );
        // None of them touched the timer.
        assert_eq!(r.next_timer(), deadline);
        assert_eq!(r.peer(), None);
    }

    #[test]
    fn rejects_bad_config() {
        let config = RouterConfig {
            vrid: 51,
            priority: 150,
            advert_interval: AdvertInterval::DEFAULT,
            preempt: true,
            local_addr: ip("192.0.2.1"),
            addresses: vec![ip("203.0.113.10")],
        };
        let bad = |f: fn(&mut RouterConfig)| {
            let mut c = config.clone();
            f(&mut c);
            Router::new(c).unwrap_err()
        };
        assert_eq!(bad(|c| c.vrid = 0), ConfigError::ZeroVrid);
        assert_eq!(bad(|c| c.priority = 0), ConfigError::ZeroPriority);
        assert_eq!(
            bad(|c| c.addresses.push("2001:db8::1".parse().unwrap())),
            ConfigError::MixedFamilies {
                address: ip("2001:db8::1"),
                local: ip("192.0.2.1")
            }
        );
        assert_eq!(
            bad(|c| c.addresses = vec![c.local_addr; 256]),
            ConfigError::TooManyAddresses { count: 256 }
        );
    }

    #[test]
    fn from_ha_config() {
        let ha = Ha {
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 150,
            advert_interval: Duration::from_millis(100),
            preempt: true,
            unicast_peers: vec![ip("192.0.2.2")],
            floating_ips: vec![
                "203.0.113.10/24".parse().unwrap(),
                "2001:db8::10/64".parse().unwrap(),
            ],
        };
        let r = Router::from_ha(&ha, ip("192.0.2.1")).unwrap();
        assert_eq!(r.config().advert_interval.centis(), 10);
        assert_eq!(r.config().addresses, [ip("203.0.113.10")]);
        assert_eq!(r.advertisement(150).addresses, [ip("203.0.113.10")]);
        let r6 = Router::from_ha(&ha, ip("2001:db8::1")).unwrap();
        assert_eq!(r6.config().addresses, [ip("2001:db8::10")]);
        let bad = Ha {
            advert_interval: Duration::from_millis(5),
            ..ha
        };
        assert_eq!(
            Router::from_ha(&bad, ip("192.0.2.1")).unwrap_err(),
            ConfigError::IntervalNotCentiseconds(Duration::from_millis(5))
        );
    }
}

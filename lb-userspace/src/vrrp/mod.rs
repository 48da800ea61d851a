//! VRRP version 3 (RFC 5798) for the HA pair: the advertisement wire format
//! and the §6.4 state machine that decides which balancer holds the floating
//! IPs.
//!
//! This room is sans-IO (docs/STYLE.md §5): nothing here opens a socket, reads a
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
//!
//! `wire` is the advertisement codec ([`Packet`], [`parse`], [`emit`]),
//! `router` the state machine ([`Router`]), `track` the verdict of its
//! surroundings ([`assess`]) and `hold` the floating IPs' adds as master
//! ([`Holding`]: retried, then fault). This file holds what the router
//! is given and what it answers: its settings, states, reasons, actions and
//! refusals.

mod hold;
mod router;
mod track;
mod wire;

pub use hold::{HoldPolicy, Holding, Refusal};
pub use router::Router;
pub use track::{Assessment, Conditions, FaultCause, TrackHealth, assess};
pub use wire::{
    AdvertInterval, Advertisement, EmitError, Family, HEADER_LEN, MULTICAST_V4, MULTICAST_V6,
    PRIORITY_OWNER, PRIORITY_STOP, PROTOCOL, Packet, TYPE_ADVERTISEMENT, VERSION, VrrpError, emit,
    parse,
};

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

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
    /// Whether a backup takes over from a live lower-priority master
    /// (`false` is keepalived's `nopreempt`).
    pub preempt: bool,
    /// keepalived's `preempt_delay`: how long a preempting backup follows a
    /// lower-priority master, counted from the first of its advertisements
    /// heard since the router became backup, before it preempts. Zero
    /// preempts at once.
    pub preempt_delay: Duration,
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
    /// Kept out by its surroundings ([`FaultCause`]): no advertisements,
    /// no floating IPs, until [`Router::recover`].
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initialize => "initialize",
            Self::Backup => "backup",
            Self::Master => "master",
            Self::Fault => "fault",
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
    /// Took over from a live master of lower priority (preemption), its
    /// advertisements ignored for `Master_Down_Interval`.
    Preempted {
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
    /// [`Router::fault`]: its interface or a tracked service failed.
    Fault(FaultCause),
    /// [`Router::recover`]: the fault cleared; backup first, as at start.
    FaultCleared,
    /// [`Router::recover`] from a [`FaultCause::Refused`]: backup, and it
    /// follows any live master (no preemption) until it next becomes
    /// master, when nobody else holds the addresses.
    RefusalOver,
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
            Self::Preempted { priority, from } => {
                write!(f, "preempted lower priority {priority} master {from}")
            }
            Self::HigherAddress { priority, from } => {
                write!(f, "equal priority {priority} from higher address {from}")
            }
            Self::Shutdown => f.write_str("shut down"),
            Self::Fault(cause) => write!(f, "fault: {cause}"),
            Self::FaultCleared => f.write_str("fault cleared"),
            Self::RefusalOver => f.write_str(
                "fault cleared after its floating IPs were refused: backup, not preempting a \
                 live master",
            ),
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
    /// Send gratuitous ARP / unsolicited NA for the floating IPs again
    /// (held already): another master was heard, and its announcements may
    /// have moved the neighbours' caches to it.
    Announce,
    /// Remove the floating IPs (if held); keep the data plane loaded.
    BecomeBackup,
    /// The router stopped or is in fault: remove the floating IPs if
    /// held, send nothing more.
    Stop,
}

/// Why a received advertisement was not applied; worth a counter, not a
/// log line per packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// The router is not running (`Initialize` or `Fault`).
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

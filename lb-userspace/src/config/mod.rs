//! The YAML configuration (docs/DESIGN.md §5), parsed into types that cannot hold
//! a bad value. Unknown keys are rejected; every error names its field path
//! and, where it is written in the file, its line and column.
//!
//! This file holds the schema (the types serde builds) and the entry points
//! ([`Config::parse`], [`Config::load`]); only [`read`] and the `load`
//! functions touch the file system. The checks sit beside it, all pure, in
//! the order a parse runs them:
//! - `limits`: YAML that would keep a parser busy for minutes (deep
//!   flow nesting) is refused before it runs;
//! - `yaml`: the text read into an ordered tree (one document, merge keys
//!   applied, aliases within a node budget), and where each field is
//!   written;
//! - `sections`: type errors, section by section and service by service,
//!   so that one run lists them all;
//! - `validate`: the cross-field checks the types alone cannot express.
//!
//! `problems` says what a problem is, how many are listed, and on which
//! line and column each one is written.

mod attack;
mod ha;
mod limits;
mod problems;
mod sections;
mod sync;
mod validate;
mod yaml;

pub use attack::{GuardAttack, SHARE_MIN_RATE};
pub use ha::{HaInstance, HaInstanceSpec, Track};
pub use problems::{ConfigError, ConfigProblem, locate};
pub use sync::ConnSync;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use limits::nesting_problem;
use problems::cap;
use sections::section_problems;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this balancer instance: the pin directory under
    /// `/sys/fs/bpf/lb/`.
    pub instance: InstanceName,
    /// Interfaces the balancer attaches to.
    pub interfaces: Vec<Interface>,
    /// The services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// High availability (VRRP), optional.
    #[serde(default)]
    pub ha: Option<Ha>,
    /// Where the control API and metrics listen.
    #[serde(default)]
    pub control: Control,
    /// Data-plane sizes and timeouts.
    #[serde(default)]
    pub dataplane: DataplaneSettings,
    /// Deny list and per-source rate limit for traffic to the VIPs.
    #[serde(default)]
    pub guard: Guard,
    /// Scale-out: the VIPs this balancer can serve, told to BIRD 2.
    #[serde(default)]
    pub announce: Option<Announce>,
    /// Connection sync with the other balancers of the pair or group.
    #[serde(default)]
    pub sync: Option<ConnSync>,
}

/// `announce:` (docs/DESIGN.md §4): lb keeps BIRD 2 told which VIPs this balancer
/// can serve — a generated `include` with one static route per announced
/// VIP, and `configure` on BIRD's control socket — so that N balancers
/// behind an ECMP router (or sites announcing one anycast VIP) share the
/// traffic. tunnel and dsr services only: nat replies must come back
/// through the balancer that forwarded the flow.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// BIRD's control socket (`bird -s`).
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// A VIP is announced only while each of its services has at least
    /// this many healthy (checked up, not drained) backends.
    #[serde(default = "default_min_healthy")]
    pub min_healthy: u32,
    /// The file lb writes and BIRD's configuration includes (protocols
    /// `lb4` and `lb6`, static routes of the announced VIPs).
    #[serde(default = "default_bird_include")]
    pub bird_include: PathBuf,
    /// On SIGTERM / SIGINT: how long lb keeps forwarding after the
    /// withdrawal, so the upstream moves the flows before it detaches.
    #[serde(default = "default_withdraw_delay", with = "duration")]
    pub withdraw_delay: Duration,
    /// BGP communities (`ASN:VALUE`, or large `ASN:A:B`) on every VIP.
    #[serde(default)]
    pub communities: Vec<Community>,
    /// MED on every VIP (eBGP: lower wins; a standby site sets a higher one).
    #[serde(default)]
    pub med: Option<u32>,
    /// Local preference on every VIP (iBGP only: higher wins).
    #[serde(default)]
    pub local_pref: Option<u32>,
    /// The VIPs to announce, with their own attributes; empty: every VIP.
    #[serde(default)]
    pub vips: Vec<AnnouncedVip>,
    /// Under attack, announce the VIP with an extra community.
    #[serde(default)]
    pub divert: Option<Divert>,
}

/// `announce.vips[]`: one VIP and what it is announced with (added to, or
/// in place of, the section's defaults).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnnouncedVip {
    /// A VIP of a tunnel or dsr service.
    pub vip: IpAddr,
    /// Communities added to `announce.communities`.
    #[serde(default)]
    pub communities: Vec<Community>,
    /// In place of `announce.med`.
    #[serde(default)]
    pub med: Option<u32>,
    /// In place of `announce.local_pref`.
    #[serde(default)]
    pub local_pref: Option<u32>,
}

/// `announce.divert`: while the automatic guard (`guard.auto`) denies at
/// least `min_sources` sources for a VIP, or `guard.attack` judges it under
/// attack, the VIP is announced with `community` too (the upstream's
/// scrubbing-divert or blackhole community), and without it again once
/// those denials expire and the attack ends.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Divert {
    /// The community added under attack.
    pub community: Community,
    /// Denied sources for one VIP that make it "under attack".
    #[serde(default = "default_min_healthy")]
    pub min_sources: u32,
}

/// A BGP community: standard (RFC 1997, `ASN:VALUE`, 16 bits each) or
/// large (RFC 8092, `ASN:A:B`, 32 bits each).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "yaml::Value")]
pub enum Community {
    /// `ASN:VALUE`.
    Standard(u16, u16),
    /// `ASN:A:B`.
    Large(u32, u32, u32),
}

impl TryFrom<yaml::Value> for Community {
    type Error = String;
    fn try_from(value: yaml::Value) -> Result<Self, Self::Error> {
        let Some(text) = value.as_str() else {
            return Err(format!(
                "{value} is not a community: write it as a string, '64512:100' or \
                 '64512:1:2'"
            ));
        };
        text.parse()
    }
}

impl std::str::FromStr for Community {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || {
            format!(
                "{text:?} is not a community like 64512:100 (16-bit numbers) or \
                 64512:1:2 (large, 32-bit numbers)"
            )
        };
        match parts.as_slice() {
            [asn, value] => Ok(Community::Standard(
                asn.parse().map_err(|_| bad())?,
                value.parse().map_err(|_| bad())?,
            )),
            [asn, a, b] => Ok(Community::Large(
                asn.parse().map_err(|_| bad())?,
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(asn, value) => write!(f, "{asn}:{value}"),
            Community::Large(asn, a, b) => write!(f, "{asn}:{a}:{b}"),
        }
    }
}

impl serde::Serialize for Community {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}

fn default_bird_include() -> PathBuf {
    PathBuf::from("/run/lb-bird/announce.conf")
}

const fn default_withdraw_delay() -> Duration {
    Duration::from_secs(2)
}

/// `guard:`: what is refused before any service sees it. Both count what
/// they drop (`drop_denied`, `drop_rate_limited`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Source prefixes whose packets to any VIP are dropped.
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Per-source limit on new flows (established flows are never limited).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Automatic detection: sources over a threshold are denied for a while.
    #[serde(default)]
    pub auto: Option<GuardAuto>,
    /// Per VIP: floods from spoofed sources (see [`GuardAttack`]).
    #[serde(default)]
    pub attack: Option<GuardAttack>,
}

/// `guard.auto`: thresholds the data path watches per source and VIP, over
/// one-second windows; a source that crosses one is denied (every VIP,
/// every packet, established flows too) for `deny_for`, then let in again.
/// Counted as `drop_guard_auto`. At least one threshold is needed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardAuto {
    /// New flows one source may open to one VIP per second.
    #[serde(default)]
    pub new_flows_per_second: Option<u32>,
    /// TCP SYNs not followed by an ACK (bare SYNs minus ACK-carrying
    /// packets) one source may send to one VIP per second.
    #[serde(default)]
    pub syn_only_per_second: Option<u32>,
    /// Packets one source may send to one VIP per second.
    #[serde(default)]
    pub packets_per_second: Option<u32>,
    /// How long a source that crossed a threshold stays denied.
    #[serde(default = "default_deny_for", with = "duration")]
    pub deny_for: Duration,
}

const fn default_deny_for() -> Duration {
    Duration::from_mins(1)
}

/// `guard.rate_limit`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// New flows per second each source address may open.
    pub new_flows_per_second: u32,
    /// New flows a source may open at once; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `dataplane:`: map sizes (fixed when the program is loaded), idle timeouts
/// and the tunnel source prefixes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSettings {
    /// Services at most.
    #[serde(default = "default_max_services")]
    pub max_services: u32,
    /// Backends at most, over all services.
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    /// Maglev ring size M, a prime; keep it above 100 × backends per service.
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// Connection-table entries (LRU).
    #[serde(default = "default_connection_table_size")]
    pub connection_table_size: u32,
    /// Idle TCP flows older than this are rescheduled.
    #[serde(default = "default_tcp_idle", with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// Idle UDP flows older than this are rescheduled.
    #[serde(default = "default_udp_idle", with = "duration")]
    pub udp_idle_timeout: Duration,
    /// Outer source prefix of IPv4 tunnels; host bits vary per flow (RSS).
    /// Unset: this host's own address towards the tunnel backends.
    #[serde(default)]
    pub tunnel_source_v4: Option<ipnet::Ipv4Net>,
    /// Outer source prefix of IPv6 tunnels; up to 32 host bits vary per flow.
    /// Unset: this host's own address towards the tunnel backends.
    #[serde(default)]
    pub tunnel_source_v6: Option<ipnet::Ipv6Net>,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            max_services: default_max_services(),
            max_backends: default_max_backends(),
            ring_size: default_ring_size(),
            connection_table_size: default_connection_table_size(),
            tcp_idle_timeout: default_tcp_idle(),
            udp_idle_timeout: default_udp_idle(),
            tunnel_source_v4: None,
            tunnel_source_v6: None,
        }
    }
}

const fn default_max_services() -> u32 {
    64
}
const fn default_max_backends() -> u32 {
    1024
}
const fn default_ring_size() -> u32 {
    65_537
}
const fn default_connection_table_size() -> u32 {
    1 << 20
}
const fn default_tcp_idle() -> Duration {
    Duration::from_mins(15)
}
const fn default_udp_idle() -> Duration {
    Duration::from_secs(30)
}

/// A pin-directory-safe instance name: `[A-Za-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct InstanceName(String);

impl InstanceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(name))
        } else {
            Err(format!(
                "instance name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_'"
            ))
        }
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An interface to attach to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// How to attach.
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
}

/// `interfaces[].xdp_mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native, falling back to generic with a log line.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
        }
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How new flows pick a backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Consistent hash of the 5-tuple, weighted.
    #[default]
    Maglev,
    /// Consistent hash of the source address, weighted.
    IpHash,
    /// Weighted round robin per new flow.
    RoundRobin,
    /// Maglev with weights following active flow counts.
    LeastConn,
    /// Maglev with weights following agent-reported load.
    Resource,
}

impl Scheduler {
    /// The name the configuration writes it by.
    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::IpHash => "ip-hash",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConn => "least-conn",
            Scheduler::Resource => "resource",
        }
    }

    /// Whether the controller moves the weights (`least-conn`, `resource`).
    pub const fn is_dynamic(self) -> bool {
        matches!(self, Scheduler::LeastConn | Scheduler::Resource)
    }
}

/// How packets reach the backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Destination rewrite; replies come back through the balancer.
    #[default]
    Nat,
    /// MAC rewrite; backends answer clients directly.
    Dsr,
    /// IPIP / IP6IP6 encapsulation.
    Tunnel,
}

impl Forwarding {
    /// The name the configuration writes it by.
    pub const fn name(self) -> &'static str {
        match self {
            Forwarding::Nat => "nat",
            Forwarding::Dsr => "dsr",
            Forwarding::Tunnel => "tunnel",
        }
    }
}

/// One service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Virtual IP.
    pub vip: IpAddr,
    /// Port, 0 for all ports.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Scheduler.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Forwarding mode.
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Health check; none means backends are always up.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Traffic goes to the lowest tier with at least this many healthy,
    /// weighted backends.
    #[serde(default = "default_min_healthy")]
    pub min_healthy: u32,
    /// `resource` scheduler: the port of each backend's `lb agent`.
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
    /// `resource` scheduler: a file holding the secret the agents were
    /// started with (`lb agent --secret-file`); sent with every poll.
    #[serde(default)]
    pub agent_secret_file: Option<PathBuf>,
}

const fn default_agent_port() -> u16 {
    9478
}

const fn default_min_healthy() -> u32 {
    1
}

/// One backend of a service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Address.
    pub address: IpAddr,
    /// Port; defaults to the service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight; 0 drains.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Tier, 0 = primary.
    #[serde(default)]
    pub tier: u8,
}

const fn default_weight() -> u32 {
    100
}

impl Backend {
    /// The port traffic is sent to: the backend's own, else the service's
    /// (0 for all-port services: the client's destination port is kept).
    pub fn port_for(&self, service: &Service) -> u16 {
        self.port.unwrap_or(service.port)
    }
}

/// `health_check.kind`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect.
    #[default]
    Tcp,
    /// HTTP GET.
    Http,
    /// HTTPS GET (certificate not verified).
    Https,
    /// UDP send / expect.
    Udp,
    /// Command exit status.
    Exec,
    /// No checks: always up.
    None,
}

/// A health check.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Which check.
    #[serde(default)]
    pub kind: CheckKind,
    /// HTTP path.
    #[serde(default)]
    pub path: Option<String>,
    /// Expected HTTP status (default 200).
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// HTTP: a substring the response body must contain.
    #[serde(default)]
    pub expect_body: Option<String>,
    /// HTTP: the `Host` header (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Port to check, when not the backend's traffic port.
    #[serde(default)]
    pub port: Option<u16>,
    /// UDP: the payload to send.
    #[serde(default)]
    pub send: Option<String>,
    /// UDP: a substring the reply must contain (any reply, if absent).
    #[serde(default)]
    pub expect: Option<String>,
    /// Exec: the command and its arguments. `LB_BACKEND_ADDRESS` and
    /// `LB_BACKEND_PORT` are set in its environment; exit status 0 is up.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Time between checks.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Successes before up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures before down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

const fn default_interval() -> Duration {
    Duration::from_secs(1)
}
const fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
const fn default_rise() -> u32 {
    2
}
const fn default_fall() -> u32 {
    2
}

/// VRRP settings: one instance written out here, or several in
/// `instances` (an active-active pair), for which the other keys here are
/// defaults. [`Ha::instances`] resolves either form.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ha {
    /// Interface VRRP runs on.
    pub interface: String,
    /// VRID, 1..=255; required unless `instances` is given (then absent).
    #[serde(default)]
    pub virtual_router_id: Option<u8>,
    /// Priority, 1..=254; required unless `instances` is given (then
    /// absent).
    #[serde(default)]
    pub priority: Option<u8>,
    /// Advertisement interval.
    #[serde(default = "default_advert", with = "duration")]
    pub advert_interval: Duration,
    /// Whether a higher-priority backup takes over from a lower master
    /// (`false` is keepalived's `nopreempt`: it takes over only when the
    /// master is gone).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// keepalived's `preempt_delay`: how long a higher-priority backup
    /// follows a lower-priority master, from the first advertisement of it
    /// heard as backup (at start-up, the first one), before preempting it.
    /// 0 (the default) preempts at once; ignored with `preempt: false`.
    #[serde(default, with = "duration")]
    pub preempt_delay: Duration,
    /// Unicast peers; empty means multicast.
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Floating addresses the master holds (with `instances`: absent).
    #[serde(default)]
    pub floating_ips: Vec<IpNet>,
    /// Services whose health lowers the priority (keepalived's
    /// `track_script` with `weight`).
    #[serde(default)]
    pub track: Vec<Track>,
    /// Several VRRP instances (an active-active pair: each balancer master
    /// of its own group of floating IPs, backup of the other's).
    #[serde(default)]
    pub instances: Vec<HaInstanceSpec>,
    /// keepalived's `garp_master_repeat` (for every instance): how many gratuitous ARPs /
    /// unsolicited neighbour advertisements announce each floating IP when
    /// this balancer becomes master of an instance (the first as soon as the address is in
    /// place), 1 to 100.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    /// The spacing of those announcements (keepalived's
    /// `garp_master_delay` for the repeats), at most 60 s.
    #[serde(default = "default_garp_interval", with = "duration")]
    pub garp_interval: Duration,
}

const fn default_garp_repeat() -> u32 {
    3
}
const fn default_garp_interval() -> Duration {
    Duration::from_millis(500)
}

const fn default_advert() -> Duration {
    Duration::from_secs(1)
}
const fn default_true() -> bool {
    true
}

/// Control API and metrics.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket of the control API.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Prometheus listen address.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Listen address of the read-only status page (`GET /`,
    /// `/status.json`, `/stats.json`); the same address as `metrics` shares
    /// that listener. None: no page.
    #[serde(default)]
    pub web: Option<SocketAddr>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            metrics: None,
            web: None,
        }
    }
}

/// The default control socket.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/lb/lb.sock")
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("{text:?} is not a duration like 500ms: {e}")))
    }
}

/// The text of the configuration file `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?)
    }

    /// Reads and validates `path`, and lists what is valid but probably
    /// not meant ([`Config::warnings`], with lines): `lb check` prints
    /// them, `lb run` logs them.
    pub fn load_with_warnings(path: &Path) -> Result<(Self, Vec<ConfigProblem>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text)?;
        let mut warnings = config.warnings();
        locate(&text, &mut warnings);
        Ok((config, warnings))
    }

    /// What is accepted but probably not meant. A service with no backends
    /// is valid (a placeholder, or one being emptied for maintenance), but
    /// every packet to it is dropped (`drop_no_backend`), so say so. A
    /// `preempt_delay` with `preempt: false` does nothing (as in keepalived).
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut ha: Vec<ConfigProblem> = Vec::new();
        if let Some(section) = &self.ha {
            for (i, instance) in section.instances().iter().enumerate() {
                let path = section.path_of(i, "preempt_delay");
                if !instance.preempt
                    && !instance.preempt_delay.is_zero()
                    && !ha.iter().any(|w| w.path == path)
                {
                    ha.push(ConfigProblem {
                        path,
                        line: None,
                        column: None,
                        message: format!(
                            "{} has no effect with preempt: false (a backup never preempts)",
                            humantime::format_duration(instance.preempt_delay)
                        ),
                    });
                }
            }
        }
        let local = self.local_schedulers();
        self.services
            .iter()
            .enumerate()
            .filter(|(_, service)| service.backends.is_empty())
            .map(|(i, service)| ConfigProblem {
                path: format!("services[{i}].backends"),
                line: None,
                column: None,
                message: format!(
                    "service {:?} has no backends: packets to {} {}:{} are dropped \
                     (drop_no_backend)",
                    service.name,
                    service.protocol.name(),
                    service.vip,
                    service.port
                ),
            })
            .chain(ha)
            .chain(local)
            .collect()
    }

    /// Services whose flows a balancer failover breaks: their scheduler's
    /// pick is local (round-robin's position, least-conn's and resource's
    /// weights, measured here), so a peer that takes over a flow it never
    /// saw — VRRP, or an ECMP rehash for `announce` — picks again, likely
    /// another backend, which resets the connection. Only where a peer can
    /// take over: under `ha:`, or announced; and not with `sync:`, which
    /// tells the peers every flow's backend.
    fn local_schedulers(&self) -> Vec<ConfigProblem> {
        if self.sync.is_some() {
            return Vec::new();
        }
        let announced = |vip: IpAddr| {
            self.announce
                .as_ref()
                .is_some_and(|a| a.vips.is_empty() || a.vips.iter().any(|v| v.vip == vip))
        };
        self.services
            .iter()
            .enumerate()
            .filter(|(_, service)| {
                matches!(
                    service.scheduler,
                    Scheduler::RoundRobin | Scheduler::LeastConn | Scheduler::Resource
                ) && (self.ha.is_some() || announced(service.vip))
            })
            .map(|(i, service)| ConfigProblem {
                path: format!("services[{i}].scheduler"),
                line: None,
                column: None,
                message: format!(
                    "the established flows of service {:?} do not survive a balancer \
                     failover: its scheduler's pick is local to the balancer that saw the \
                     first packet, and the {} that takes over picks again; configure sync: so \
                     that the balancers share their connection tables (maglev and ip-hash \
                     flows survive without it while the backends do not change)",
                    service.name,
                    if self.ha.is_some() {
                        "VRRP peer"
                    } else {
                        "ECMP peer"
                    }
                ),
            })
            .collect()
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if let Some(problem) = nesting_problem(text) {
            return Err(ConfigError::Invalid(vec![problem]));
        }
        let value = yaml::parse(text).map_err(|problem| ConfigError::Invalid(vec![problem]))?;
        // The whole file at once; section by section only on failure (each
        // service on its own, so one run reports every type error, not
        // just the first): a file of a thousand services is parsed once.
        let config: Config = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let sections = section_problems(text, &value);
            if !sections.is_empty() {
                return ConfigError::Invalid(sections);
            }
            let mut problems = vec![ConfigProblem {
                path: e.path().to_string(),
                line: None,
                column: None,
                message: e.into_inner().to_string(),
            }];
            locate(text, &mut problems);
            ConfigError::Invalid(problems)
        })?;
        let mut problems = config.problems();
        cap(&mut problems);
        locate(text, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MINIMAL: &str = "\
instance: edge1
interfaces:
  - name: eth0
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - { address: 192.0.2.11, port: 8080 }
";

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.instance.as_str(), "edge1");
        assert_eq!(config.interfaces[0].xdp_mode, XdpModeSetting::Auto);
        let web = &config.services[0];
        assert_eq!(web.scheduler, Scheduler::Maglev);
        assert_eq!(web.forwarding, Forwarding::Nat);
        assert_eq!(web.backends[0].weight, 100);
        assert_eq!(config.control.socket, PathBuf::from("/run/lb/lb.sock"));
    }

    #[test]
    fn control_web_is_an_address_and_a_bad_one_is_placed() {
        assert_eq!(Config::parse(MINIMAL).unwrap().control.web, None);
        let on = Config::parse(&format!("{MINIMAL}control: {{ web: 127.0.0.1:9181 }}\n")).unwrap();
        assert_eq!(on.control.web, Some("127.0.0.1:9181".parse().unwrap()));
        for bad in ["localhost:9181", "127.0.0.1", "127.0.0.1:70000", "[::1]:x"] {
            let text = format!("{MINIMAL}control:\n  web: '{bad}'\n");
            let Err(ConfigError::Invalid(problems)) = Config::parse(&text) else {
                panic!("control.web {bad:?} accepted");
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].path, "control.web", "{problems:?}");
            assert_eq!(problems[0].line, Some(12), "{problems:?}");
            assert_eq!(problems[0].column, Some(3), "{problems:?}");
        }
    }

    #[test]
    fn local_schedulers_under_ha_or_announce_are_warned_about() {
        let services = "instance: t\ninterfaces: [{ name: eth0 }]\nservices:\n\
            \x20 - { name: rr, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: round-robin, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n\
            \x20 - { name: lc, vip: 203.0.113.11, port: 80, protocol: tcp, scheduler: least-conn, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n\
            \x20 - { name: hash, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n";
        // Alone, no peer takes over: nothing to say.
        assert!(Config::parse(services).unwrap().warnings().is_empty());
        let ha = "ha: { interface: eth0, virtual_router_id: 51, priority: 100, \
                  floating_ips: [203.0.113.10/24] }\n";
        let warnings = Config::parse(&format!("{services}{ha}"))
            .unwrap()
            .warnings();
        let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            ["services[0].scheduler", "services[1].scheduler"],
            "{warnings:?}"
        );
        assert!(
            warnings[0]
                .message
                .contains("\"rr\" do not survive a balancer failover")
                && warnings[0].message.contains("VRRP peer"),
            "{warnings:?}"
        );
        // Announced: only the VIPs announced.
        let announce = "announce: { vips: [{ vip: 203.0.113.11 }] }\n";
        let warnings = Config::parse(&format!("{services}{announce}"))
            .unwrap()
            .warnings();
        let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["services[1].scheduler"], "{warnings:?}");
        assert!(warnings[0].message.contains("ECMP peer"), "{warnings:?}");
    }

    #[test]
    fn a_service_without_backends_is_accepted_with_a_warning() {
        let text = format!(
            "{MINIMAL}  - name: spare\n    vip: 203.0.113.11\n    port: 80\n    protocol: tcp\n    backends: []\n  - {{ name: bare, vip: 203.0.113.12, port: 80, protocol: udp }}\n"
        );
        let config = Config::parse(&text).unwrap();
        let warnings = config.warnings();
        let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["services[1].backends", "services[2].backends"]);
        assert!(
            warnings[0].message.contains("\"spare\" has no backends")
                && warnings[1].message.contains("udp 203.0.113.12:80"),
            "{warnings:?}"
        );
        assert!(Config::parse(MINIMAL).unwrap().warnings().is_empty());
        let ha = "ha: { interface: eth0, virtual_router_id: 51, priority: 100, \
                  preempt: false, preempt_delay: 30s }\n";
        let warnings = Config::parse(&format!("{MINIMAL}{ha}")).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].path, "ha.preempt_delay");
        assert!(
            warnings[0]
                .message
                .contains("no effect with preempt: false"),
            "{warnings:?}"
        );
        let ha = ha.replace("preempt: false", "preempt: true");
        assert!(
            Config::parse(&format!("{MINIMAL}{ha}"))
                .unwrap()
                .warnings()
                .is_empty()
        );
        let file = std::env::temp_dir().join(format!("lb-warn-{}.yaml", std::process::id()));
        std::fs::write(&file, &text).unwrap();
        let loaded = Config::load_with_warnings(&file);
        std::fs::remove_file(&file).unwrap();
        let (_, warnings) = loaded.unwrap();
        assert_eq!(warnings[0].line, Some(15), "{warnings:?}");
    }

    #[test]
    fn bad_enum_value_is_refused() {
        let text = MINIMAL.replace("protocol: tcp", "protocol: sctp");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("services[0].protocol"), "{err}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let config = Config::parse(include_str!("../../../deploy/lb.example.yaml")).unwrap();
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].backends[2].tier, 1);
        let interval = config.services[0].health_check.as_ref().unwrap().interval;
        assert_eq!(interval, Duration::from_millis(500)); // Its status page line is valid uncommented.
        let web = include_str!("../../../deploy/lb.example.yaml").replace("  # web:", "  web:");
        let config = Config::parse(&web).unwrap();
        assert_eq!(config.control.web, Some("127.0.0.1:9181".parse().unwrap()));
    }

    #[test]
    fn shipped_modes_config_is_valid() {
        let config = Config::parse(include_str!("../../../deploy/lb.modes.yaml")).unwrap();
        let modes: Vec<Forwarding> = config.services.iter().map(|s| s.forwarding).collect();
        assert_eq!(
            modes,
            [Forwarding::Nat, Forwarding::Dsr, Forwarding::Tunnel]
        );
    }

    #[test]
    fn shipped_ha_pair_configs_are_valid_twins() {
        let a = Config::parse(include_str!("../../../deploy/lb.ha-a.yaml")).unwrap();
        let b = Config::parse(include_str!("../../../deploy/lb.ha-b.yaml")).unwrap();
        // Same services, so both balancers build the same tables.
        assert_eq!(a.services, b.services);
        let (ha_a, ha_b) = (a.ha.unwrap(), b.ha.unwrap());
        assert_eq!(ha_a.virtual_router_id, ha_b.virtual_router_id);
        assert_eq!(ha_a.floating_ips, ha_b.floating_ips);
        assert_eq!(ha_a.preempt_delay, Duration::from_secs(5));
        assert_eq!(ha_a.preempt_delay, ha_b.preempt_delay);
        assert!(ha_a.priority > ha_b.priority);
        assert_ne!(a.instance, b.instance);
        assert_eq!(ha_a.unicast_peers.len(), 1);
        assert_ne!(ha_a.unicast_peers, ha_b.unicast_peers);
    }

    #[test]
    fn shipped_active_active_configs_are_valid_twins() {
        let a = Config::parse(include_str!("../../../deploy/lb.aa-a.yaml")).unwrap();
        let b = Config::parse(include_str!("../../../deploy/lb.aa-b.yaml")).unwrap();
        assert_eq!(a.services, b.services);
        let (a, b) = (a.ha.unwrap().instances(), b.ha.unwrap().instances());
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.virtual_router_id, y.virtual_router_id);
            assert_eq!(x.floating_ips, y.floating_ips);
            assert_eq!(x.track, y.track);
            assert_ne!(x.unicast_peers, y.unicast_peers);
        }
        // Each is master of one instance: the priorities are swapped.
        assert!(a[0].priority > b[0].priority && a[1].priority < b[1].priority);
        // A failing track takes the master below its backup.
        assert!(a[0].priority - a[0].track[0].weight < b[0].priority);
        assert!(b[1].priority - b[1].track[0].weight < a[1].priority);
    }

    #[test]
    fn the_example_announce_block_is_valid_uncommented() {
        let mut text = String::new();
        let mut inside = false;
        for line in include_str!("../../../deploy/lb.example.yaml").lines() {
            if line.starts_with("# announce:") {
                inside = true;
            } else if !line.starts_with('#') {
                inside = false;
            }
            text.push_str(if inside {
                line.strip_prefix("# ").unwrap_or(line)
            } else {
                line
            });
            text.push('\n');
        }
        // The example's dns service as a tunnel one, the VIP announced.
        let text = text
            .replace(
                "    protocol: udp\n    backends:",
                "    protocol: udp\n    forwarding: tunnel\n    backends:",
            )
            .replace("vip: 203.0.113.11,", "vip: '2001:db8::53',");
        let config = Config::parse(&text).unwrap();
        let announce = config.announce.unwrap();
        assert_eq!(announce.vips[0].med, Some(20));
        assert_eq!(
            announce.divert.unwrap().community,
            Community::Standard(65535, 666)
        );
    }

    #[test]
    fn shipped_two_site_configs_differ_only_in_med() {
        let a = Config::parse(include_str!("../../../deploy/lb.site-a.yaml")).unwrap();
        let b = Config::parse(include_str!("../../../deploy/lb.site-b.yaml")).unwrap();
        assert_eq!(a.services, b.services);
        let (mut announce_a, announce_b) = (a.announce.unwrap(), b.announce.unwrap());
        assert_eq!((announce_a.med, announce_b.med), (Some(10), Some(100)));
        assert!(announce_a.divert.is_some());
        announce_a.med = announce_b.med;
        assert_eq!(announce_a, announce_b);
    }

    #[test]
    fn bad_instance_name_is_refused() {
        let text = MINIMAL.replace("edge1", "../etc");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("instance"), "{err}");
    }
}

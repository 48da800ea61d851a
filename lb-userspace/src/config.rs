//! The YAML configuration (DESIGN.md §5), parsed into types that cannot hold
//! a bad value. Unknown keys are rejected; every error names its field path
//! and, where the YAML parser knows it, the line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

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
}

/// `guard:`: what is refused before any service sees it. Both count what
/// they drop (`drop_denied`, `drop_rate_limited`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
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

/// VRRP settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ha {
    /// Interface VRRP runs on.
    pub interface: String,
    /// VRID, 1..=255.
    pub virtual_router_id: u8,
    /// Priority, 1..=254.
    pub priority: u8,
    /// Advertisement interval.
    #[serde(default = "default_advert", with = "duration")]
    pub advert_interval: Duration,
    /// Whether a higher-priority backup takes over from a lower master.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// Unicast peers; empty means multicast.
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Floating addresses the master holds.
    #[serde(default)]
    pub floating_ips: Vec<IpNet>,
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
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            metrics: None,
        }
    }
}

/// `guard.auto`: some threshold, none of them 0, and a denial of at least
/// a second (the data path's window) and at most a day.
fn check_guard_auto(auto: &GuardAuto, problems: &mut Problems) {
    let thresholds = [
        ("new_flows_per_second", auto.new_flows_per_second),
        ("syn_only_per_second", auto.syn_only_per_second),
        ("packets_per_second", auto.packets_per_second),
    ];
    if thresholds.iter().all(|(_, value)| value.is_none()) {
        problems.push(
            "guard.auto",
            "set at least one of new_flows_per_second, syn_only_per_second, \
             packets_per_second (or omit auto to turn it off)"
                .into(),
        );
    }
    for (name, value) in thresholds {
        if value == Some(0) {
            problems.push(
                format!("guard.auto.{name}"),
                "must be at least 1 (omit it to turn it off)".into(),
            );
        }
    }
    if auto.deny_for < Duration::from_secs(1) || auto.deny_for > Duration::from_hours(24) {
        problems.push(
            "guard.auto.deny_for",
            format!(
                "{} is outside 1s..24h",
                humantime::format_duration(auto.deny_for)
            ),
        );
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

/// One problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Field path, e.g. `services[0].backends[1].weight`.
    pub path: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid for the schema.
    #[error("{} problem(s):\n{}", .0.len(), ProblemList(.0))]
    Invalid(Vec<ConfigProblem>),
}

struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// The text of the configuration file `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Fills in the line of each problem whose field path is found in `text`
/// (for problems found outside the parser, such as the host's).
pub fn locate(text: &str, problems: &mut [ConfigProblem]) {
    for problem in problems {
        if problem.line.is_none() {
            problem.line = line_of(text, &problem.path);
        }
    }
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
        for warning in &mut warnings {
            warning.line = line_of(&text, &warning.path);
        }
        Ok((config, warnings))
    }

    /// What is accepted but probably not meant. A service with no backends
    /// is valid (a placeholder, or one being emptied for maintenance), but
    /// every packet to it is dropped (`drop_no_backend`), so say so.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, service)| service.backends.is_empty())
            .map(|(i, service)| ConfigProblem {
                path: format!("services[{i}].backends"),
                line: None,
                message: format!(
                    "service {:?} has no backends: packets to {} {}:{} are dropped \
                     (drop_no_backend)",
                    service.name,
                    service.protocol.name(),
                    service.vip,
                    service.port
                ),
            })
            .collect()
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if let Some(problem) = nesting_problem(text).or_else(|| alias_problem(text)) {
            return Err(ConfigError::Invalid(vec![problem]));
        }
        // Section by section first (each service on its own), so one run
        // reports every type error, not just the first.
        let sections = section_problems(text);
        if !sections.is_empty() {
            return Err(ConfigError::Invalid(sections));
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = strip_location(&inner.to_string());
            // serde_yaml may lead with the path too; it is reported apart.
            let message = message
                .strip_prefix(&format!("{path}: "))
                .map_or(message.clone(), str::to_string);
            ConfigError::Invalid(vec![ConfigProblem {
                path,
                line: inner.location().map(|l| l.line()),
                message,
            }])
        })?;
        let mut problems = config.problems();
        cap(&mut problems);
        for problem in &mut problems {
            problem.line = line_of(text, &problem.path);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Cross-field checks the types alone cannot express.
    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Problems::default();
        if self.interfaces.is_empty() {
            problems.push("interfaces", "at least one interface is needed".into());
        }
        self.check_dataplane(&mut problems);
        if self.guard.deny.len() > 1024 {
            problems.push(
                "guard.deny",
                format!(
                    "{} prefixes exceed the deny list's 1024",
                    self.guard.deny.len()
                ),
            );
        }
        if let Some(limit) = self.guard.rate_limit {
            if limit.new_flows_per_second == 0 {
                problems.push(
                    "guard.rate_limit.new_flows_per_second",
                    "must be at least 1 (omit rate_limit to turn it off)".into(),
                );
            }
            if limit.burst == Some(0) {
                problems.push("guard.rate_limit.burst", "must be at least 1".into());
            }
        }
        if let Some(auto) = self.guard.auto {
            check_guard_auto(&auto, &mut problems);
        }
        if let Some(ha) = &self.ha {
            check_ha(ha, &mut problems);
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut nat_endpoints = BTreeMap::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if service.name.is_empty() {
                problems.push(format!("{at}.name"), "must not be empty".into());
            }
            if !names.insert(service.name.as_str()) {
                problems.push(
                    format!("{at}.name"),
                    format!("{:?} is used by an earlier service", service.name),
                );
            }
            if !keys.insert((service.vip, service.port, service.protocol)) {
                problems.push(
                    at.clone(),
                    format!(
                        "{} {}:{} is already used by an earlier service",
                        service.protocol.name(),
                        service.vip,
                        service.port
                    ),
                );
            }
            if let Some(check) = &service.health_check {
                check_health(&format!("{at}.health_check"), check, &mut problems);
            }
            if service.min_healthy == 0 {
                problems.push(format!("{at}.min_healthy"), "must be at least 1".into());
            }
            let mut seen = BTreeSet::new();
            for (j, backend) in service.backends.iter().enumerate() {
                let at = format!("{at}.backends[{j}]");
                if !seen.insert((backend.address, backend.port_for(service))) {
                    problems.push(
                        at.clone(),
                        format!(
                            "{}:{} is listed twice",
                            backend.address,
                            backend.port_for(service)
                        ),
                    );
                }
                check_backend(&at, service, backend, &mut nat_endpoints, &mut problems);
            }
        }
        problems.0
    }

    fn check_dataplane(&self, problems: &mut Problems) {
        let dataplane = &self.dataplane;
        if !crate::maglev::is_prime(dataplane.ring_size) || dataplane.ring_size > 1 << 20 {
            problems.push(
                "dataplane.ring_size",
                format!(
                    "{} must be a prime of at most 1048576 (e.g. 65537)",
                    dataplane.ring_size
                ),
            );
        }
        if self.services.len() > dataplane.max_services as usize {
            problems.push(
                "services",
                format!(
                    "{} services exceed dataplane.max_services {}",
                    self.services.len(),
                    dataplane.max_services
                ),
            );
        }
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        if backends > dataplane.max_backends as usize {
            problems.push(
                "services",
                format!(
                    "{backends} backends exceed dataplane.max_backends {}",
                    dataplane.max_backends
                ),
            );
        }
    }
}

/// Checks a health check's settings against its kind.
fn check_health(at: &str, check: &HealthCheck, problems: &mut Problems) {
    if check.rise == 0 {
        problems.push(format!("{at}.rise"), "must be at least 1".into());
    }
    if check.fall == 0 {
        problems.push(format!("{at}.fall"), "must be at least 1".into());
    }
    if check.interval.is_zero() {
        problems.push(format!("{at}.interval"), "must be more than 0".into());
    }
    if check.timeout.is_zero() || check.timeout > check.interval {
        problems.push(
            format!("{at}.timeout"),
            format!(
                "must be more than 0 and at most the interval ({})",
                humantime::format_duration(check.interval)
            ),
        );
    }
    match check.kind {
        CheckKind::Exec if check.command.as_ref().is_none_or(Vec::is_empty) => {
            problems.push(format!("{at}.command"), "exec checks need a command".into());
        }
        CheckKind::Udp if check.send.is_none() => {
            problems.push(
                format!("{at}.send"),
                "udp checks need a payload to send".into(),
            );
        }
        CheckKind::Http | CheckKind::Https => {
            if let Some(path) = &check.path
                && !path.starts_with('/')
            {
                problems.push(
                    format!("{at}.path"),
                    format!("{path:?} must start with '/'"),
                );
            }
        }
        _ => {}
    }
}

/// Checks the `ha` section as `lb run` would use it: `VRRPv3` (RFC 5798)
/// field ranges, and what this implementation carries (advertisements over
/// IPv4 only).
fn check_ha(ha: &Ha, problems: &mut Problems) {
    if ha.interface.is_empty() {
        problems.push(
            "ha.interface",
            "must name the interface VRRP runs on".into(),
        );
    }
    if ha.virtual_router_id == 0 {
        problems.push(
            "ha.virtual_router_id",
            "0 is reserved: use 1 to 255 (the same on both balancers, unique on the segment)"
                .into(),
        );
    }
    if ha.priority == 0 || ha.priority == 255 {
        problems.push(
            "ha.priority",
            format!(
                "{} is reserved (0: a master stepping down, 255: the owner of the addresses, \
                 which lb never is): use 1 to 254",
                ha.priority
            ),
        );
    }
    if let Err(error) = crate::vrrp::AdvertInterval::from_duration(ha.advert_interval) {
        let why = match error {
            crate::vrrp::ConfigError::IntervalNotCentiseconds(_) => "is not a multiple of 10ms",
            _ => "is outside 10ms to 40.95s",
        };
        problems.push(
            "ha.advert_interval",
            format!(
                "{} {why}: VRRPv3 carries the interval in centiseconds, 10ms to 40.95s",
                humantime::format_duration(ha.advert_interval)
            ),
        );
    }
    for (i, peer) in ha.unicast_peers.iter().enumerate() {
        let at = format!("ha.unicast_peers[{i}]");
        if peer.is_ipv6() {
            problems.push(
                at,
                format!(
                    "{peer}: IPv6 peers are not supported, lb sends VRRP advertisements over \
                     IPv4 only; give the peer's IPv4 address on ha.interface"
                ),
            );
        } else if peer.is_unspecified() || peer.is_multicast() || peer.is_loopback() {
            problems.push(
                at,
                format!(
                    "{peer} is not a peer's unicast address (omit unicast_peers for multicast)"
                ),
            );
        }
    }
    let v4 = ha
        .floating_ips
        .iter()
        .filter(|ip| ip.addr().is_ipv4())
        .count();
    if v4 > 255 {
        problems.push(
            "ha.floating_ips",
            format!("{v4} IPv4 addresses: one VRRP advertisement holds at most 255"),
        );
    }
}

/// Problems found so far.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: String) {
        self.0.push(ConfigProblem {
            path: path.into(),
            line: None,
            message,
        });
    }
}

/// Checks one backend of `service`; `nat_endpoints` remembers which service
/// each NAT backend (address, port, protocol) belongs to, since the reply
/// path tells services apart by it.
fn check_backend<'a>(
    at: &str,
    service: &'a Service,
    backend: &Backend,
    nat_endpoints: &mut BTreeMap<(IpAddr, u16, Protocol), &'a str>,
    problems: &mut Problems,
) {
    let port = backend.port_for(service);
    if backend.address.is_ipv4() != service.vip.is_ipv4() {
        problems.push(
            format!("{at}.address"),
            format!("{} is not of the VIP's address family", backend.address),
        );
    }
    if service.port == 0 && port != 0 {
        problems.push(
            format!("{at}.port"),
            "an all-port service (port 0) keeps the client's port: omit the backend port".into(),
        );
    }
    if service.forwarding != Forwarding::Nat && port != service.port {
        let mode = if service.forwarding == Forwarding::Dsr {
            "dsr"
        } else {
            "tunnel"
        };
        problems.push(
            format!("{at}.port"),
            format!(
                "{mode} forwarding cannot change the port: omit it or use {}",
                service.port
            ),
        );
    }
    if service.forwarding == Forwarding::Nat {
        check_nat_endpoint(at, service, backend.address, port, nat_endpoints, problems);
    }
}

/// The reply path finds a NAT reply's service by (backend address, port,
/// protocol), then by (address, 0, protocol) for all-port services
/// (DESIGN §2.2): each such key must name one service. An all-port NAT
/// backend collides with every port of the same address and protocol that
/// another NAT service uses — a reply from that port would get the other
/// service's VIP.
fn check_nat_endpoint<'a>(
    at: &str,
    service: &'a Service,
    address: IpAddr,
    port: u16,
    nat_endpoints: &mut BTreeMap<(IpAddr, u16, Protocol), &'a str>,
    problems: &mut Problems,
) {
    let protocol = service.protocol;
    let name = service.name.as_str();
    let collision = if port == 0 {
        nat_endpoints
            .iter()
            .find(|((a, _, p), other)| *a == address && *p == protocol && **other != name)
            .map(|((_, other_port, _), other)| (*other_port, *other))
    } else {
        [port, 0].iter().find_map(|key_port| {
            nat_endpoints
                .get(&(address, *key_port, protocol))
                .filter(|other| **other != name)
                .map(|other| (*key_port, *other))
        })
    };
    if let Some((other_port, other)) = collision {
        let message = if port == other_port {
            format!(
                "{address}:{port} is also a NAT backend of {other:?}: replies could not be \
                 told apart"
            )
        } else {
            let (all, specific, specific_port) = if port == 0 {
                (name, other, other_port)
            } else {
                (other, name, port)
            };
            format!(
                "{address} is a NAT backend of the all-port service {all:?} and, on port \
                 {specific_port}, of {specific:?}: replies from that port could not be told \
                 apart; give the services different backend addresses"
            )
        };
        problems.push(at, message);
    }
    nat_endpoints
        .entry((address, port, protocol))
        .or_insert(name);
}

/// The most problems listed; finding each one's line reads the whole text,
/// and nobody fixes a thousand problems from one listing.
const MAX_PROBLEMS: usize = 100;

/// Keeps the first [`MAX_PROBLEMS`] problems and says how many more there
/// were.
fn cap(problems: &mut Vec<ConfigProblem>) {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(ConfigProblem {
            path: String::new(),
            line: None,
            message: format!("and {more} more problem(s) not listed"),
        });
    }
}

/// How deep `[` / `{` may nest; a configuration needs three.
const MAX_FLOW_NESTING: usize = 64;

/// Deeply nested flow collections (`[[[[...`), refused before the YAML
/// parser sees them: its scanner spends time proportional to the depth on
/// every token, so a few hundred kilobytes of brackets would take minutes
/// (found by the fuzz tests). Brackets are counted everywhere outside
/// comments, quoted ones too: a real configuration never gets near the
/// limit either way.
fn nesting_problem(text: &str) -> Option<ConfigProblem> {
    let mut depth: usize = 0;
    for (number, line) in text.lines().enumerate() {
        let mut previous = ' ';
        for c in line.chars() {
            match c {
                '#' if previous.is_whitespace() => break,
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_FLOW_NESTING {
                return Some(ConfigProblem {
                    path: String::new(),
                    line: Some(number + 1),
                    message: format!("`[` and `{{` nest more than {MAX_FLOW_NESTING} deep"),
                });
            }
            previous = c;
        }
    }
    None
}

/// How many nodes YAML aliases (`*name`) may add to the configuration:
/// sharing a health check or a backend list between a thousand services
/// stays far below it.
const MAX_ALIAS_NODES: u64 = 100_000;

/// Aliases that expand the configuration by more than about
/// [`MAX_ALIAS_NODES`] nodes ("billion laughs"), refused before anything is
/// built from them: `serde_yaml`'s own limit grows with the file, so a
/// 100 KB file could keep it busy for minutes (found by the fuzz tests).
/// The nodes are counted as `serde_yaml` replays them, and the count stops
/// at the budget: the text's length (no node is shorter than a byte) plus
/// the aliases' allowance. A syntax error ends the count; the parse proper
/// reports it.
fn alias_problem(text: &str) -> Option<ConfigProblem> {
    use serde::de::{DeserializeSeed, Deserializer as _, Error, MapAccess, SeqAccess, Visitor};

    /// Counts nodes down from a budget, failing once it is spent.
    #[derive(Clone, Copy)]
    struct Nodes<'a>(&'a std::cell::Cell<u64>);

    impl Nodes<'_> {
        fn take<E: Error>(self) -> Result<(), E> {
            match self.0.get().checked_sub(1) {
                Some(left) => {
                    self.0.set(left);
                    Ok(())
                }
                None => Err(E::custom("alias budget spent")),
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Nodes<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Nodes<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any YAML node")
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            self.take()
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            self.take()
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            self.take()
        }
        fn visit_i128<E: Error>(self, _: i128) -> Result<(), E> {
            self.take()
        }
        fn visit_u128<E: Error>(self, _: u128) -> Result<(), E> {
            self.take()
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            self.take()
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            self.take()
        }
        fn visit_bytes<E: Error>(self, _: &[u8]) -> Result<(), E> {
            self.take()
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_none<E: Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            // A tagged node (`!tag value`): the tag, then its value.
            use serde::de::VariantAccess as _;
            let ((), variant) = data.variant_seed(self)?;
            variant.newtype_variant_seed(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.take()?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.take()?;
            while map.next_entry_seed(self, self)?.is_some() {}
            Ok(())
        }
    }

    let budget = std::cell::Cell::new((text.len() as u64).saturating_add(MAX_ALIAS_NODES));
    // Only a spent budget matters here; any other error is the parse's
    // (which, like this, reads the first document only).
    let result = serde_yaml::Deserializer::from_str(text).deserialize_any(Nodes(&budget));
    // serde_yaml's own limit on alias jumps may strike first.
    let repetition = result.is_err_and(|e| e.to_string().contains("repetition limit"));
    (budget.get() == 0 || repetition).then(|| ConfigProblem {
        path: String::new(),
        line: None,
        message: format!(
            "aliases (`*name`) expand the configuration by more than {MAX_ALIAS_NODES} nodes"
        ),
    })
}

/// Type errors of each top-level section and each service, separately; a
/// YAML syntax error is reported once, with its position. Empty when every
/// part deserializes (the whole is then parsed as one).
fn section_problems(text: &str) -> Vec<ConfigProblem> {
    let value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            return vec![ConfigProblem {
                path: String::new(),
                line: error.location().map(|l| l.line()),
                message: strip_location(&error.to_string()),
            }];
        }
    };
    let Some(map) = value.as_mapping() else {
        return vec![ConfigProblem {
            path: String::new(),
            line: Some(1),
            message: "the configuration must be a mapping (instance: ..., services: ...)".into(),
        }];
    };
    let mut problems = Vec::new();
    for (key, section) in map {
        let name = key.as_str().unwrap_or("");
        match name {
            "instance" => check_part::<InstanceName>(section, name, &mut problems),
            "interfaces" => check_part::<Vec<Interface>>(section, name, &mut problems),
            "ha" => check_part::<Option<Ha>>(section, name, &mut problems),
            "control" => check_part::<Control>(section, name, &mut problems),
            "dataplane" => check_part::<DataplaneSettings>(section, name, &mut problems),
            "guard" => check_part::<Guard>(section, name, &mut problems),
            "services" => match section.as_sequence() {
                Some(services) => {
                    for (i, service) in services.iter().enumerate() {
                        check_part::<Service>(service, &format!("services[{i}]"), &mut problems);
                    }
                }
                None => check_part::<Vec<Service>>(section, name, &mut problems),
            },
            other => problems.push(ConfigProblem {
                path: other.to_string(),
                line: None,
                message: format!(
                    "unknown field `{other}`, expected one of `instance`, `interfaces`, \
                     `services`, `ha`, `control`, `dataplane`, `guard`"
                ),
            }),
        }
    }
    // The whole file is checked only once every part parses; a section
    // whose checks need nothing else is checked now, so its problems come
    // with the type errors rather than after they are fixed.
    if !problems.is_empty()
        && let Some(Ok(Some(ha))) = map
            .get("ha")
            .map(|section| serde_yaml::from_value::<Option<Ha>>(section.clone()))
    {
        let mut more = Problems::default();
        check_ha(&ha, &mut more);
        problems.extend(more.0);
    }
    for required in ["instance", "interfaces"] {
        if !map.contains_key(required) {
            problems.push(ConfigProblem {
                path: String::new(),
                line: None,
                message: format!("missing field `{required}`"),
            });
        }
    }
    cap(&mut problems);
    for problem in &mut problems {
        if problem.line.is_none() && !problem.path.is_empty() {
            problem.line = line_of(text, &problem.path);
        }
    }
    problems
}

/// Deserializes one part of the configuration as `T`, recording a problem
/// (with its full field path) for each part of it that does not fit. serde
/// stops at the first error, so each offending key is taken out and the
/// part tried again: entries are visited in order and missing fields are
/// noticed only at the end of their mapping, so this finds every bad entry
/// (a "missing field" for a key taken out here is not reported).
fn check_part<T: serde::de::DeserializeOwned>(
    value: &serde_yaml::Value,
    prefix: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    /// Passes per part at most: a bound on the work, not on what is useful.
    const PASSES: usize = 32;
    let mut value = value.clone();
    let mut taken_out: Vec<(String, String)> = Vec::new();
    for _ in 0..PASSES {
        let Err(error) = serde_path_to_error::deserialize::<_, T>(value.clone()) else {
            return;
        };
        let inner = error.path().to_string();
        let message = strip_location(&error.inner().to_string());
        if let Some(field) = missing_field(&message)
            && taken_out.contains(&(inner.clone(), field.to_string()))
        {
            return;
        }
        let path = match inner.as_str() {
            "." | "" => prefix.to_string(),
            rest if rest.starts_with('[') => format!("{prefix}{rest}"),
            rest => format!("{prefix}.{rest}"),
        };
        problems.push(ConfigProblem {
            path,
            line: None,
            message,
        });
        match take_out(&mut value, error.path()) {
            Some(key) => {
                let parent = match inner.rsplit_once('.') {
                    Some((parent, _)) => parent.to_string(),
                    None => ".".to_string(),
                };
                taken_out.push((parent, key));
            }
            None => return,
        }
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the mapping entry at `path` from `value`; returns its key, or
/// `None` if the path does not end in a mapping key that is there.
fn take_out(value: &mut serde_yaml::Value, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let (last, parents) = segments.split_last()?;
    let mut at = value;
    for segment in parents {
        at = match segment {
            Segment::Seq { index } => at.as_sequence_mut()?.get_mut(*index)?,
            Segment::Map { key } => at.as_mapping_mut()?.get_mut(key.as_str())?,
            _ => return None,
        };
    }
    let Segment::Map { key } = last else {
        return None;
    };
    // In place: the entries after it keep their order.
    at.as_mapping_mut()?.shift_remove(key.as_str())?;
    Some(key.clone())
}

/// The 1-based line where the field at `path` (`services[1].backends[0].port`)
/// is written, as far as it can be followed: block mappings and sequences are
/// walked by indentation; inside flow style (`{ ... }`, `[ ... ]`) the line
/// of the enclosing entry is the answer.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut segments = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segments.push(Segment::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                segments.push(Segment::Index(rest[1..close].parse().ok()?));
                rest = &rest[close + 1..];
            }
        } else {
            segments.push(Segment::Key(rest));
        }
    }
    // (line index, the column where the current node's children start)
    let (mut at, mut indent): (Option<usize>, usize) = (None, 0);
    for segment in segments {
        let from = at.map_or(0, |line| line + 1);
        let found = match segment {
            Segment::Key(key) => {
                // Flow style on the current line: stay there.
                if at.is_some_and(|line| lines[line].contains('{')) {
                    return at.map(|line| line + 1);
                }
                lines.iter().enumerate().skip(from).find_map(|(i, line)| {
                    let content = line.trim_start().trim_start_matches("- ");
                    let column = line.len() - content.len();
                    (column >= indent && content.starts_with(&format!("{key}:")))
                        .then_some((i, column))
                })
            }
            Segment::Index(index) => {
                if at.is_some_and(|line| lines[line].contains('[')) {
                    return at.map(|line| line + 1);
                }
                // The sequence's items sit at the column of its first "- ".
                let column_of = |line: &str| line.len() - line.trim_start().len();
                let first = lines.iter().skip(from).find(|line| {
                    line.trim_start().starts_with("- ") && column_of(line) >= indent
                })?;
                let column = column_of(first);
                lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .take_while(|(_, line)| line.trim().is_empty() || column_of(line) >= column)
                    .filter(|(_, line)| {
                        line.trim_start().starts_with("- ") && column_of(line) == column
                    })
                    .nth(index)
                    .map(|(i, _)| (i, column + 2))
            }
        };
        let (line, column) = found?;
        at = Some(line);
        indent = column;
    }
    at.map(|line| line + 1)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `serde_yaml` appends " at line L column C"; the line is reported separately.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_that_multiply_are_refused_before_expansion() {
        use std::fmt::Write as _;
        // Nine to the sixth power nodes; the fuzz tests' 100 KB variant kept
        // serde_yaml busy for minutes.
        let mut text = String::from(
            "instance: a\ninterfaces: [{ name: lb0 }]\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
        );
        for level in 1..7 {
            let previous = format!("*a{}", level - 1);
            let items = [previous.as_str(); 9].join(", ");
            writeln!(text, "x{level}: &a{level} [{items}]").unwrap();
        }
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("aliases (`*name`) expand"), "{error}");
        // Sharing a block is what aliases are for.
        let shared = "instance: a\ninterfaces: [{ name: lb0 }]\nservices:\n\
                      - name: a\n  vip: 203.0.113.1\n  port: 80\n  protocol: tcp\n  forwarding: dsr\n  \
                      backends: &b [{ address: 192.0.2.1 }]\n\
                      - name: b\n  vip: 203.0.113.2\n  port: 80\n  protocol: tcp\n  forwarding: dsr\n  \
                      backends: *b\n";
        Config::parse(shared).unwrap();
    }

    #[test]
    fn a_thousand_problems_are_listed_as_a_hundred_and_a_count() {
        let mut text = String::from("instance: a\ninterfaces: [{ name: lb0 }]\nservices:\n");
        for _ in 0..1000 {
            text += "  - { bogus: 1 }\n";
        }
        let Err(ConfigError::Invalid(problems)) = Config::parse(&text) else {
            panic!("a thousand bad services accepted");
        };
        assert_eq!(problems.len(), 101);
        assert!(
            problems[100].message.contains("900 more"),
            "{:?}",
            problems[100]
        );
    }

    #[test]
    fn deep_flow_nesting_is_refused_at_once() {
        // 128 KiB of brackets kept the YAML scanner busy for minutes.
        let text = format!("instance: {}{}\n", "[".repeat(65_536), "]".repeat(65_536));
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("nest more than 64 deep"), "{error}");
        assert!(error.contains("line 1"), "{error}");
        let fine = format!(
            "instance: a # {}\ninterfaces: [{{ name: lb0 }}]\n",
            "[".repeat(100)
        );
        Config::parse(&fine).unwrap();
    }

    const MINIMAL: &str = "\
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
        let file = std::env::temp_dir().join(format!("lb-warn-{}.yaml", std::process::id()));
        std::fs::write(&file, &text).unwrap();
        let loaded = Config::load_with_warnings(&file);
        std::fs::remove_file(&file).unwrap();
        let (_, warnings) = loaded.unwrap();
        assert_eq!(warnings[0].line, Some(15), "{warnings:?}");
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = MINIMAL.replace("    port: 80\n", "    port: 80\n    prot: 1\n");
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "services[0].prot");
        assert_eq!(problems[0].line, Some(8));
        assert!(
            problems[0].message.contains("unknown field `prot`"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn bad_enum_value_is_refused() {
        let text = MINIMAL.replace("protocol: tcp", "protocol: sctp");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("services[0].protocol"), "{err}");
    }

    #[test]
    fn duplicate_service_is_refused() {
        let text = format!(
            "{MINIMAL}  - name: web\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n"
        );
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, "services[1].name");
        assert_eq!(problems[1].path, "services[1]");
    }

    /// The problems `Config::parse` finds in `services` (YAML list items).
    fn service_problems(services: &str) -> Vec<ConfigProblem> {
        let text = format!("instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n{services}");
        match Config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn nat_backends_must_name_one_service_each_for_the_reply_path() {
        let all_port = "  - { name: any, vip: 203.0.113.20, port: 0, protocol: tcp, backends: [{ address: 192.0.2.11 }] }\n";
        let web = "  - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.11, port: 8080 }] }\n";
        // Either order: an all-port NAT service and a port-specific one on
        // the same backend address and protocol collide.
        for services in [format!("{all_port}{web}"), format!("{web}{all_port}")] {
            let problems = service_problems(&services);
            assert_eq!(problems.len(), 1, "{problems:?}");
            let message = &problems[0].message;
            assert!(
                message.contains("\"any\"")
                    && message.contains("\"web\"")
                    && message.contains("8080"),
                "names both services and the port: {message}"
            );
            assert_eq!(problems[0].path, "services[1].backends[0]");
        }
        // The same (address, port, protocol) in two NAT services.
        let twice = web.replace(
            "name: web, vip: 203.0.113.10",
            "name: web2, vip: 203.0.113.11",
        );
        let problems = service_problems(&format!("{web}{twice}"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("also a NAT backend of \"web\"")
        );
        // No collision: another protocol, another address, or not NAT.
        for other in [
            all_port.replace("protocol: tcp", "protocol: udp"),
            all_port.replace("192.0.2.11", "192.0.2.12"),
            all_port.replace("backends:", "forwarding: dsr, backends:"),
        ] {
            let problems = service_problems(&format!("{web}{other}"));
            assert!(problems.is_empty(), "{other}: {problems:?}");
        }
    }

    #[test]
    fn guard_auto_parses_with_a_default_denial_and_refuses_bad_thresholds() {
        let text = format!(
            "{MINIMAL}guard:\n  auto: {{ syn_only_per_second: 200, packets_per_second: 20000 }}\n"
        );
        let auto = Config::parse(&text).unwrap().guard.auto.unwrap();
        assert_eq!(auto.syn_only_per_second, Some(200));
        assert_eq!(auto.packets_per_second, Some(20_000));
        assert_eq!(auto.new_flows_per_second, None);
        assert_eq!(auto.deny_for, Duration::from_mins(1));
        for (auto, path) in [
            ("{ deny_for: 30s }", "guard.auto"),
            (
                "{ new_flows_per_second: 0 }",
                "guard.auto.new_flows_per_second",
            ),
            (
                "{ packets_per_second: 10, deny_for: 500ms }",
                "guard.auto.deny_for",
            ),
            (
                "{ packets_per_second: 10, deny_for: 2d }",
                "guard.auto.deny_for",
            ),
        ] {
            let text = format!("{MINIMAL}guard:\n  auto: {auto}\n");
            let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
                panic!("expected Invalid for {auto}");
            };
            assert_eq!(problems.len(), 1, "{auto}: {problems:?}");
            assert_eq!(problems[0].path, path, "{auto}");
        }
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let config = Config::parse(include_str!("../../deploy/lb.example.yaml")).unwrap();
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].backends[2].tier, 1);
        let interval = config.services[0].health_check.as_ref().unwrap().interval;
        assert_eq!(interval, Duration::from_millis(500));
    }

    #[test]
    fn shipped_modes_config_is_valid() {
        let config = Config::parse(include_str!("../../deploy/lb.modes.yaml")).unwrap();
        let modes: Vec<Forwarding> = config.services.iter().map(|s| s.forwarding).collect();
        assert_eq!(
            modes,
            [Forwarding::Nat, Forwarding::Dsr, Forwarding::Tunnel]
        );
    }

    #[test]
    fn shipped_ha_pair_configs_are_valid_twins() {
        let a = Config::parse(include_str!("../../deploy/lb.ha-a.yaml")).unwrap();
        let b = Config::parse(include_str!("../../deploy/lb.ha-b.yaml")).unwrap();
        // Same services, so both balancers build the same tables.
        assert_eq!(a.services, b.services);
        let (ha_a, ha_b) = (a.ha.unwrap(), b.ha.unwrap());
        assert_eq!(ha_a.virtual_router_id, ha_b.virtual_router_id);
        assert_eq!(ha_a.floating_ips, ha_b.floating_ips);
        assert!(ha_a.priority > ha_b.priority);
        assert_ne!(a.instance, b.instance);
        assert_eq!(ha_a.unicast_peers.len(), 1);
        assert_ne!(ha_a.unicast_peers, ha_b.unicast_peers);
    }

    #[test]
    fn semantic_problems_carry_their_line() {
        let text = "\
instance: edge1
interfaces:
  - name: eth0
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    forwarding: dsr
    backends:
      - address: 192.0.2.11
        port: 8080
      - { address: '2001:db8::1' }
";
        let ConfigError::Invalid(problems) = Config::parse(text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let lines: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert!(
            lines.contains(&("services[0].backends[0].port".into(), Some(12))),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("services[0].backends[1].address".into(), Some(13))),
            "{lines:?}"
        );
    }

    #[test]
    fn every_type_error_is_listed_with_its_line() {
        let text = MINIMAL.replace("protocol: tcp", "protocol: sctp").replace(
            "      - { address: 192.0.2.11, port: 8080 }\n",
            "      - { address: 192.0.2.11, port: 8080 }\n  - name: dns\n    vip: 203.0.113.10\n    port: fifty-three\n    protocol: udp\n",
        ) + "colour: blue\n";
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let found: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert!(
            found.contains(&("services[0].protocol".into(), Some(8))),
            "{found:?}"
        );
        assert!(
            found.contains(&("services[1].port".into(), Some(13))),
            "{found:?}"
        );
        assert!(found.contains(&("colour".into(), Some(15))), "{found:?}");
    }

    /// MINIMAL with an `ha` section (block style, lines 11 to 18).
    const HA: &str = "\
ha:
  interface: eth0
  virtual_router_id: 51
  priority: 150
  advert_interval: 100ms
  preempt: true
  unicast_peers: [192.0.2.2]
  floating_ips: [203.0.113.10/24]
";

    /// The problems of MINIMAL plus [`HA`] with `edit` applied: (path, line,
    /// message).
    fn ha_problems(edit: impl Fn(&str) -> String) -> Vec<(String, Option<usize>, String)> {
        let text = format!("{MINIMAL}{}", edit(HA));
        match Config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems
                .into_iter()
                .map(|p| (p.path, p.line, p.message))
                .collect(),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn a_valid_ha_section_passes() {
        assert_eq!(ha_problems(str::to_string), []);
        for interval in ["10ms", "40950ms", "1s"] {
            let problems = ha_problems(|ha| ha.replace("100ms", interval));
            assert_eq!(problems, [], "{interval}");
        }
        for priority in ["1", "254"] {
            let problems =
                ha_problems(|ha| ha.replace("priority: 150", &format!("priority: {priority}")));
            assert_eq!(problems, [], "priority {priority}");
        }
    }

    #[test]
    fn ha_virtual_router_id_0_is_refused() {
        let problems =
            ha_problems(|ha| ha.replace("virtual_router_id: 51", "virtual_router_id: 0"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.virtual_router_id");
        assert_eq!(problems[0].1, Some(13));
        assert!(problems[0].2.contains("1 to 255"), "{}", problems[0].2);
        // Over 255 does not fit the field at all.
        let problems =
            ha_problems(|ha| ha.replace("virtual_router_id: 51", "virtual_router_id: 256"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.virtual_router_id");
        assert_eq!(problems[0].1, Some(13));
    }

    #[test]
    fn ha_priority_0_and_255_are_refused() {
        for priority in ["0", "255"] {
            let problems =
                ha_problems(|ha| ha.replace("priority: 150", &format!("priority: {priority}")));
            assert_eq!(problems.len(), 1, "{priority}: {problems:?}");
            assert_eq!(problems[0].0, "ha.priority");
            assert_eq!(problems[0].1, Some(14));
            assert!(problems[0].2.contains("1 to 254"), "{}", problems[0].2);
        }
    }

    #[test]
    fn ha_advert_interval_must_be_whole_centiseconds_in_range() {
        for (interval, why) in [
            ("15ms", "not a multiple of 10ms"),
            ("5ms", "not a multiple of 10ms"),
            ("0s", "outside 10ms to 40.95s"),
            ("41s", "outside 10ms to 40.95s"),
        ] {
            let problems = ha_problems(|ha| ha.replace("100ms", interval));
            assert_eq!(problems.len(), 1, "{interval}: {problems:?}");
            assert_eq!(problems[0].0, "ha.advert_interval");
            assert_eq!(problems[0].1, Some(15));
            assert!(problems[0].2.contains(why), "{interval}: {}", problems[0].2);
        }
    }

    #[test]
    fn ha_ipv6_unicast_peers_are_refused_not_dropped() {
        let problems = ha_problems(|ha| ha.replace("[192.0.2.2]", "[192.0.2.2, '2001:db8::2']"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.unicast_peers[1]");
        assert_eq!(problems[0].1, Some(17));
        assert!(
            problems[0].2.contains("IPv6 peers are not supported"),
            "{}",
            problems[0].2
        );
        let problems = ha_problems(|ha| ha.replace("[192.0.2.2]", "[224.0.0.18]"));
        assert_eq!(problems[0].0, "ha.unicast_peers[0]", "{problems:?}");
    }

    #[test]
    fn ha_interface_must_be_named_and_addresses_fit_an_advertisement() {
        let problems = ha_problems(|ha| ha.replace("interface: eth0", "interface: ''"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.interface");
        let many: Vec<String> = (0..256)
            .map(|i| format!("10.0.{}.{}/32", i / 250, i % 250 + 1))
            .collect();
        let problems =
            ha_problems(|ha| ha.replace("[203.0.113.10/24]", &format!("[{}]", many.join(", "))));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.floating_ips");
        assert!(problems[0].2.contains("at most 255"), "{}", problems[0].2);
    }

    #[test]
    fn every_ha_problem_is_listed_at_once() {
        let problems = ha_problems(|ha| {
            ha.replace("virtual_router_id: 51", "virtual_router_id: 0")
                .replace("priority: 150", "priority: 255")
                .replace("100ms", "5ms")
                .replace("[192.0.2.2]", "['2001:db8::2']")
        });
        let paths: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ha.virtual_router_id",
                "ha.priority",
                "ha.advert_interval",
                "ha.unicast_peers[0]"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn every_type_error_of_one_entry_is_listed() {
        let text = MINIMAL
            .replace("port: 80\n", "port: eighty\n")
            .replace("protocol: tcp", "protocol: sctp")
            .replace("port: 8080 }", "port: 8080, weight: heavy, colour: red }");
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let found: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("services[0].port".into(), Some(7)),
                ("services[0].protocol".into(), Some(8)),
                ("services[0].backends[0].weight".into(), Some(10)),
                ("services[0].backends[0].colour".into(), Some(10)),
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn ha_problems_come_with_type_errors_elsewhere() {
        let problems = ha_problems(|ha| {
            ha.replace("priority: 150", "priority: 0")
                .replace("preempt: true", "preempt: maybe")
        });
        let paths: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(paths, ["ha.preempt"], "{problems:?}");
        let text = format!("{}{HA}", MINIMAL.replace("port: 80\n", "port: eighty\n"))
            .replace("priority: 150", "priority: 0");
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [("services[0].port", Some(7)), ("ha.priority", Some(14))],
            "{problems:?}"
        );
    }

    #[test]
    fn bad_instance_name_is_refused() {
        let text = MINIMAL.replace("edge1", "../etc");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("instance"), "{err}");
    }
}

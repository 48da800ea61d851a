//! keepalived's statements translated into lb's configuration: each
//! `virtual_server` (or member of its `virtual_server_group`) a service,
//! each `real_server` a backend and its checker the service's health
//! check, each `vrrp_instance` an entry of `ha.instances`, IPVS's sync
//! daemon `sync:`. Whatever has no counterpart, or a different one, is
//! noted with what lb does instead.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use ipnet::IpNet;

use super::{ImportError, Note, Options, Position, Statement};
use crate::config::{CheckKind, Forwarding, Protocol, Scheduler};

/// The configuration to write.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Draft {
    /// `instance`.
    pub instance: String,
    /// `interfaces[].name`.
    pub interfaces: Vec<String>,
    /// `services`.
    pub services: Vec<DraftService>,
    /// `ha`.
    pub ha: Option<DraftHa>,
    /// `sync`.
    pub sync: Option<DraftSync>,
}

/// One service.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct DraftService {
    pub at: Position,
    pub comments: Vec<String>,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub backends: Vec<DraftBackend>,
    pub check: Option<DraftCheck>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DraftBackend {
    pub at: Position,
    pub comments: Vec<String>,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub weight: u32,
    pub tier: u8,
}

/// A health check, as `services[].health_check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DraftCheck {
    pub kind: CheckKind,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub send: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: Option<u32>,
}

/// `ha:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DraftHa {
    pub interface: String,
    pub garp_repeat: Option<u32>,
    pub garp_interval: Option<Duration>,
    pub instances: Vec<DraftInstance>,
}

/// One entry of `ha.instances`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DraftInstance {
    pub at: Position,
    pub comments: Vec<String>,
    /// keepalived's name for it (`VI_1`), written as a comment.
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub advert_interval: Option<Duration>,
    pub preempt: bool,
    pub preempt_delay: Option<Duration>,
    pub unicast_peers: Vec<IpAddr>,
    pub floating_ips: Vec<IpNet>,
}

/// `sync:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DraftSync {
    pub at: Position,
    pub interface: String,
    pub port: Option<u16>,
    pub secret_file: String,
}

/// The key file an imported `sync:` names; the operator creates it.
pub(super) const SYNC_SECRET_FILE: &str = "/etc/lb/sync.key";

impl Draft {
    /// The keepalived statement a field of the configuration came from:
    /// `services[2].backends[1]...` its `real_server`, `services[2]...` its
    /// `virtual_server`, `ha.instances[0]...` its `vrrp_instance`.
    pub fn source_of(&self, path: &str) -> Option<Position> {
        fn index(rest: &str) -> Option<(usize, &str)> {
            let (number, rest) = rest.split_once(']')?;
            Some((number.parse().ok()?, rest))
        }
        if let Some(rest) = path.strip_prefix("services[") {
            let (i, rest) = index(rest)?;
            let service = self.services.get(i)?;
            if let Some(rest) = rest.strip_prefix(".backends[")
                && let Some((j, _)) = index(rest)
                && let Some(backend) = service.backends.get(j)
            {
                return Some(backend.at.clone());
            }
            return Some(service.at.clone());
        }
        if let Some(rest) = path.strip_prefix("ha.instances[") {
            let (i, _) = index(rest)?;
            return self.ha.as_ref()?.instances.get(i).map(|i| i.at.clone());
        }
        if path.starts_with("sync") {
            return self.sync.as_ref().map(|s| s.at.clone());
        }
        if path.starts_with("ha") {
            return self.ha.as_ref()?.instances.first().map(|i| i.at.clone());
        }
        None
    }
}

/// keepalived's defaults, where lb's differ.
const KEEPALIVED_DELAY_LOOP: Duration = Duration::from_mins(1);
const KEEPALIVED_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVED_PRIORITY: u8 = 100;
/// The weight keepalived gives a real server without one.
const KEEPALIVED_WEIGHT: u32 = 1;

struct Translator<'a> {
    notes: &'a mut Vec<Note>,
    groups: Vec<&'a Statement>,
}

impl Translator<'_> {
    fn note(&mut self, statement: &Statement, note: impl Into<String>) {
        self.notes.push(Note {
            at: statement.at.clone(),
            directive: statement.words.join(" "),
            note: note.into(),
        });
    }
}

/// Statements of the top level lb has no counterpart for, and why.
const TOP_LEVEL_NOTES: &[(&str, &str)] = &[
    (
        "static_ipaddress",
        "lb adds no addresses but the floating IPs of its VRRP instances: keep these in the \
         host's network configuration",
    ),
    (
        "static_routes",
        "lb adds no routes: keep these in the host's network configuration",
    ),
    (
        "static_rules",
        "lb adds no routing rules: keep these in the host's network configuration",
    ),
    (
        "vrrp_sync_group",
        "lb has no sync groups: each entry of ha.instances changes state on its own; give the \
         instances that must move together the same priorities and tracks, or make them one \
         instance with all their floating IPs",
    ),
    (
        "garp_group",
        "lb announces each floating IP on becoming master (ha.garp_repeat, ha.garp_interval); \
         no periodic announcements",
    ),
    (
        "linkbeat_interfaces",
        "lb follows link state over netlink; nothing to configure",
    ),
    (
        "net_namespace",
        "lb runs in the namespace it is started in (start it with nsenter)",
    ),
    (
        "net_namespace_ipvs",
        "lb runs in the namespace it is started in",
    ),
    (
        "instance",
        "lb's instance name is the top-level instance: key",
    ),
    ("use_pid_dir", "lb keeps no PID files"),
    ("child_wait_time", "lb has one process"),
    (
        "vrrp_track_process",
        "lb tracks services' healthy backends (ha.track), not processes",
    ),
    (
        "vrrp_track_file",
        "lb tracks services' healthy backends (ha.track), not files",
    ),
    (
        "track_file",
        "lb tracks services' healthy backends (ha.track), not files",
    ),
    ("bfd_instance", "lb has no BFD"),
];

/// The statements translated; `Err` only for what keepalived itself would
/// refuse (an unknown top-level keyword).
pub(super) fn translate(
    root: &Path,
    statements: &[Statement],
    options: &Options,
    notes: &mut Vec<Note>,
) -> Result<Draft, ImportError> {
    let mut t = Translator {
        notes,
        groups: Vec::new(),
    };
    let mut router_id: Option<&Statement> = None;
    let mut lvs_sync: Option<&Statement> = None;
    for statement in statements {
        match statement.keyword() {
            "global_defs" => {
                for child in statement.children() {
                    match child.keyword() {
                        "router_id" => router_id = Some(child),
                        "lvs_sync_daemon" => lvs_sync = Some(child),
                        _ => global_note(&mut t, child),
                    }
                }
            }
            "virtual_server_group" => t.groups.push(statement),
            "virtual_server" | "vrrp_instance" => {}
            "vrrp_script" => t.note(
                statement,
                "lb runs no scripts for VRRP: ha.track lowers an instance's priority (or puts it \
                 in fault) while a service has too few healthy backends; the instances tracking \
                 this script are imported without it",
            ),
            keyword => {
                if let Some((_, why)) = TOP_LEVEL_NOTES.iter().find(|(k, _)| *k == keyword) {
                    t.note(statement, *why);
                } else {
                    return Err(ImportError::Syntax {
                        at: statement.at.clone(),
                        message: format!(
                            "unknown keepalived keyword `{keyword}` at the top level (expected \
                             global_defs, vrrp_instance, virtual_server, ...)"
                        ),
                    });
                }
            }
        }
    }
    let mut services = Vec::new();
    let mut instances = Vec::new();
    let mut sync_interfaces = Vec::new();
    let mut garp = vrrp::Garp::default();
    for statement in statements {
        match statement.keyword() {
            "virtual_server" => services.extend(virtual_server(&mut t, statement)),
            "vrrp_instance" => {
                if let Some(instance) =
                    vrrp::instance(&mut t, statement, &mut sync_interfaces, &mut garp)
                {
                    instances.push(instance);
                }
            }
            _ => {}
        }
    }
    for group in t.groups.clone() {
        let used = statements.iter().any(|s| {
            s.keyword() == "virtual_server"
                && s.args().first().map(String::as_str) == Some("group")
                && s.args().get(1) == group.args().first()
        });
        if !used {
            t.note(
                group,
                "no virtual_server uses this group: nothing imported from it",
            );
        }
    }
    unique_names(&mut services);
    let ha = vrrp::section(instances, garp);
    let sync = sync_section(&mut t, lvs_sync, &sync_interfaces, ha.as_ref());
    let instance = instance_name(&mut t, root, options, router_id);
    let interfaces = interfaces(&mut t, statements, options, ha.as_ref());
    Ok(Draft {
        instance,
        interfaces,
        services,
        ha,
        sync,
    })
}

/// `interfaces:`: `--interface`, else the VRRP instances' interfaces, else
/// `eth0`, noted.
fn interfaces(
    t: &mut Translator<'_>,
    statements: &[Statement],
    options: &Options,
    ha: Option<&DraftHa>,
) -> Vec<String> {
    if !options.interfaces.is_empty() {
        return options.interfaces.clone();
    }
    let mut names: Vec<String> = Vec::new();
    for instance in ha.iter().flat_map(|ha| &ha.instances) {
        if !names.contains(&instance.interface) {
            names.push(instance.interface.clone());
        }
    }
    if names.is_empty() {
        names.push("eth0".into());
        if let Some(first) = statements.first() {
            t.notes.push(Note {
                at: first.at.clone(),
                directive: "interfaces".into(),
                note: "keepalived does not name the interfaces traffic arrives on: eth0 \
                       written; give --interface NAME (repeatable) for yours"
                    .into(),
            });
        }
    }
    names
}

/// `global_defs` entries other than `router_id` and `lvs_sync_daemon`.
fn global_note(t: &mut Translator<'_>, child: &Statement) {
    let why = match child.keyword() {
        "notification_email"
        | "notification_email_from"
        | "smtp_server"
        | "smtp_connect_timeout"
        | "smtp_helo_name"
        | "smtp_alert"
        | "smtp_alert_vrrp"
        | "smtp_alert_checker" => {
            "lb sends no mail: lb status, lb ha and the metrics (control.metrics) report changes"
        }
        "vrrp_strict" => {
            "lb always speaks strict VRRPv3 (no authentication, version 3); nothing to set"
        }
        "vrrp_garp_interval"
        | "vrrp_gna_interval"
        | "vrrp_garp_master_repeat"
        | "vrrp_garp_master_delay"
        | "vrrp_garp_master_refresh" => {
            "per-instance announcements are ha.garp_repeat and ha.garp_interval; not set from \
             the global default"
        }
        "enable_script_security" | "script_user" => "lb runs no VRRP scripts",
        "vrrp_version" => {
            "lb speaks VRRPv3 only: a keepalived peer must run `vrrp_version 3` (or `version 3` \
             per instance)"
        }
        _ => "no counterpart in lb: not carried over",
    };
    t.note(child, why);
}

/// `instance:` from `--instance`, else `router_id` with the characters a pin
/// directory cannot hold replaced.
fn instance_name(
    t: &mut Translator<'_>,
    root: &Path,
    options: &Options,
    router_id: Option<&Statement>,
) -> String {
    if let Some(name) = &options.instance {
        return name.clone();
    }
    let Some(router_id) = router_id else {
        t.notes.push(Note {
            at: Position {
                file: std::sync::Arc::from(root),
                line: 1,
            },
            directive: "router_id".into(),
            note: "no router_id: instance named `keepalived`; give --instance NAME".into(),
        });
        return "keepalived".into();
    };
    let written = router_id.args().join(" ");
    let mut name: String = written
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name = "keepalived".into();
    }
    if name != written {
        t.note(
            router_id,
            format!("instance named {name:?} (an instance name is A-Z, a-z, 0-9, '-', '_')"),
        );
    }
    name
}

/// `lvs_sync_daemon IFACE INSTANCE [id N] [port N] ...` (`global_defs`), or
/// an instance's `lvs_sync_daemon_interface IFACE`: lb's `sync:`, whose peers
/// default to the VRRP unicast peers.
fn sync_section(
    t: &mut Translator<'_>,
    global: Option<&Statement>,
    per_instance: &[(Statement, String)],
    ha: Option<&DraftHa>,
) -> Option<DraftSync> {
    let (statement, interface, port) = match (global, per_instance.first()) {
        (Some(statement), _) => {
            let args = statement.args();
            let mut port = None;
            let mut rest = args.get(2..).unwrap_or_default().iter();
            while let Some(key) = rest.next() {
                let value = rest.next();
                match (key.as_str(), value) {
                    ("port", Some(value)) => port = value.parse::<u16>().ok(),
                    (other, _) => t.note(
                        statement,
                        format!("{other}: IPVS sync daemon option with no counterpart in sync:"),
                    ),
                }
            }
            (statement.clone(), args.first().cloned()?, port)
        }
        (None, Some((statement, interface))) => (statement.clone(), interface.clone(), None),
        (None, None) => return None,
    };
    let peers = ha.is_some_and(|ha| ha.instances.iter().any(|i| !i.unicast_peers.is_empty()));
    if !peers {
        t.note(
            &statement,
            "lb's connection sync sends to its peers' addresses, and these VRRP instances are \
             multicast: add a sync: section with peers: [the other balancer] and secret_file",
        );
        return None;
    }
    t.note(
        &statement,
        format!(
            "sync: on {interface}, to the VRRP unicast peers, authenticated with the key in \
             {SYNC_SECRET_FILE} (create it, the same on every balancer); IPVS's sync daemon \
             had no authentication"
        ),
    );
    Some(DraftSync {
        at: statement.at.clone(),
        interface,
        port,
        secret_file: SYNC_SECRET_FILE.into(),
    })
}

/// Service names unique: the second `tcp-10.0.0.1-80` (a duplicate
/// `virtual_server`, which `lb check` then refuses for its address) is
/// `tcp-10.0.0.1-80-2`.
fn unique_names(services: &mut [DraftService]) {
    let mut seen: Vec<String> = Vec::new();
    for service in services.iter_mut() {
        let base = service.name.clone();
        let mut n = 1;
        while seen.contains(&service.name) {
            n += 1;
            service.name = format!("{base}-{n}");
        }
        seen.push(service.name.clone());
    }
}

/// A keepalived duration: seconds, decimals allowed.
pub(super) fn seconds(text: &str) -> Option<Duration> {
    let value: f64 = text.parse().ok()?;
    (0.0..1e9)
        .contains(&value)
        .then(|| Duration::from_secs_f64(value))
}

/// The service key(s) a `virtual_server` names: `ADDR PORT`, or each
/// member of `group NAME`; `fwmark` is refused.
fn service_keys(t: &mut Translator<'_>, statement: &Statement) -> Vec<(IpAddr, u16, Position)> {
    let args = statement.args();
    match args {
        [kind, mark] if kind == "fwmark" => {
            t.note(
                statement,
                format!(
                    "refused: firewall-mark services (fwmark {mark}) are not supported; lb \
                     matches a VIP, a port (or every port with port 0) and a protocol"
                ),
            );
            Vec::new()
        }
        [kind, name] if kind == "group" => {
            let Some(group) = t
                .groups
                .iter()
                .find(|g| g.args() == std::slice::from_ref(name))
                .copied()
            else {
                t.note(
                    statement,
                    format!("refused: no virtual_server_group named {name:?}"),
                );
                return Vec::new();
            };
            let mut keys = Vec::new();
            for member in group.children() {
                keys.extend(group_member(t, member));
            }
            keys
        }
        [address, port]
            if let (Ok(address), Ok(port)) = (address.parse::<IpAddr>(), port.parse::<u16>()) =>
        {
            vec![(address, port, statement.at.clone())]
        }
        _ => {
            t.note(
                statement,
                "refused: not `virtual_server ADDRESS PORT`, `fwmark N` or `group NAME`",
            );
            Vec::new()
        }
    }
}

/// A `virtual_server_group` member: `ADDR PORT`, `ADDR-LAST PORT` (a range
/// of the last IPv4 byte or IPv6 group), or `fwmark N` (refused).
fn group_member(t: &mut Translator<'_>, member: &Statement) -> Vec<(IpAddr, u16, Position)> {
    let words = &member.words;
    if words.first().map(String::as_str) == Some("fwmark") {
        t.note(
            member,
            "refused: firewall-mark members are not supported (lb matches VIP, port, protocol)",
        );
        return Vec::new();
    }
    let (Some(address), port) = (words.first(), words.get(1)) else {
        return Vec::new();
    };
    let Some(port) = port.and_then(|p| p.parse::<u16>().ok()) else {
        t.note(
            member,
            "refused: a member needs an address and a port (lb services are VIP, port, protocol)",
        );
        return Vec::new();
    };
    let addresses = match address.split_once('-') {
        None => address.parse::<IpAddr>().ok().map(|a| vec![a]),
        Some((first, last)) => range(first, last),
    };
    let Some(addresses) = addresses else {
        t.note(
            member,
            "refused: not an address or an address range (of at most 256 addresses)",
        );
        return Vec::new();
    };
    addresses
        .into_iter()
        .map(|address| (address, port, member.at.clone()))
        .collect()
}

/// `10.0.0.3-10` → 10.0.0.3 to 10.0.0.10; `ae00::2-9` → `ae00::2` to `ae00::9`
/// (the last group, hexadecimal); at most 256 addresses.
fn range(first: &str, last: &str) -> Option<Vec<IpAddr>> {
    match first.parse::<IpAddr>().ok()? {
        IpAddr::V4(start) => {
            let end: u8 = last.parse().ok()?;
            let [a, b, c, d] = start.octets();
            (d..=end)
                .map(|x| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, x))))
                .collect()
        }
        IpAddr::V6(start) => {
            let end = u16::from_str_radix(last, 16).ok()?;
            let mut segments = start.segments();
            let first = segments[7];
            if end.saturating_sub(first) > 255 {
                return None;
            }
            (first..=end)
                .map(|x| {
                    segments[7] = x;
                    Some(IpAddr::V6(Ipv6Addr::from(segments)))
                })
                .collect()
        }
    }
}

/// The settings of a `virtual_server` shared by the services it names.
struct ServiceSettings {
    protocol: Protocol,
    scheduler: Scheduler,
    forwarding: Forwarding,
    /// `lb_algo fo`: tiers by weight.
    failover: bool,
    delay_loop: Duration,
    virtualhost: Option<String>,
    /// keepalived 2's checker defaults written in the `virtual_server`.
    connect_timeout: Option<Duration>,
    retry: Option<u32>,
}

#[allow(
    clippy::too_many_lines,
    reason = "one match arm per keepalived directive"
)]
fn virtual_server(t: &mut Translator<'_>, statement: &Statement) -> Vec<DraftService> {
    let keys = service_keys(t, statement);
    let mut settings = ServiceSettings {
        protocol: Protocol::Tcp,
        scheduler: Scheduler::LeastConn,
        forwarding: Forwarding::Nat,
        failover: false,
        delay_loop: KEEPALIVED_DELAY_LOOP,
        virtualhost: None,
        connect_timeout: None,
        retry: None,
    };
    let mut algo: Option<&Statement> = None;
    let mut persistence: Option<&Statement> = None;
    let mut real_servers = Vec::new();
    let mut sorry: Option<&Statement> = None;
    let mut refused = keys.is_empty();
    for child in statement.children() {
        let arg = child.args().first().map(String::as_str);
        match (child.keyword(), arg) {
            ("protocol", Some(p)) => match p.to_ascii_uppercase().as_str() {
                "TCP" => settings.protocol = Protocol::Tcp,
                "UDP" => settings.protocol = Protocol::Udp,
                _ => {
                    t.note(
                        child,
                        "refused: lb balances TCP and UDP only; this virtual_server is not \
                         imported",
                    );
                    refused = true;
                }
            },
            ("lb_algo" | "lvs_sched", Some(_)) => algo = Some(child),
            ("lb_kind" | "lvs_method", Some(kind)) => match kind.to_ascii_uppercase().as_str() {
                "NAT" => settings.forwarding = Forwarding::Nat,
                "DR" => settings.forwarding = Forwarding::Dsr,
                "TUN" => settings.forwarding = Forwarding::Tunnel,
                _ => t.note(child, "unknown forwarding method: nat written"),
            },
            ("delay_loop", Some(value)) => match seconds(value) {
                Some(d) if !d.is_zero() => settings.delay_loop = d,
                _ => t.note(child, "not a duration in seconds: keepalived's 60 s used"),
            },
            ("persistence_timeout" | "persistence_granularity", _) => {
                persistence = Some(child);
            }
            ("virtualhost", Some(host)) => settings.virtualhost = Some(host.to_string()),
            ("connect_timeout", Some(value)) => settings.connect_timeout = seconds(value),
            ("retry", Some(value)) => settings.retry = value.parse().ok(),
            ("delay_before_retry" | "warmup" | "inhibit_on_failure", _) => {
                check::timing_note(t, child);
            }
            ("real_server", _) => real_servers.push(child),
            ("sorry_server", _) => sorry = Some(child),
            _ => service_note(t, child),
        }
    }
    if refused {
        return Vec::new();
    }
    settings.scheduler = scheduler(t, algo, &mut settings.failover);
    if let Some(persistence) = persistence {
        persistent(t, persistence, &mut settings.scheduler);
    }
    let (backends, check) = pool(
        t,
        &real_servers,
        sorry,
        &settings,
        keys.first().map(|k| k.1),
    );
    keys.into_iter()
        .enumerate()
        .map(|(i, (vip, port, at))| {
            let mut backends = backends.clone();
            if port == 0 {
                for backend in &mut backends {
                    backend.port = None;
                }
            }
            DraftService {
                at,
                comments: if i == 0 {
                    statement.comments.clone()
                } else {
                    Vec::new()
                },
                name: format!("{}-{vip}-{port}", settings.protocol.name()),
                vip,
                port,
                protocol: settings.protocol,
                scheduler: settings.scheduler,
                forwarding: settings.forwarding,
                backends: backends
                    .into_iter()
                    .map(|mut b| {
                        if b.port == Some(port) {
                            b.port = None;
                        }
                        b
                    })
                    .collect(),
                check: check.clone(),
            }
        })
        .collect()
}

/// The `virtual_server` settings that only have a note.
fn service_note(t: &mut Translator<'_>, child: &Statement) {
    match (child.keyword(), ()) {
        ("quorum" | "hysteresis" | "quorum_up" | "quorum_down", ()) => t.note(
            child,
            "no quorum scripts: a tier serves while it has min_healthy healthy backends \
                 (services[].min_healthy), and a VRRP instance can track a service's healthy \
                 backends (ha.track)",
        ),
        ("alpha", ()) => t.note(
            child,
            "lb starts every backend unknown and gives it traffic until a check fails \
                 (rise / fall count consecutive results)",
        ),
        ("omega", ()) => t.note(child, "lb runs no quorum scripts"),
        ("ha_suspend", ()) => t.note(
            child,
            "lb checks backends on the backup balancer too, so a takeover starts with \
                 known health",
        ),
        ("sorry_server_inhibit" | "sorry_server_lvs_method", ()) => t.note(
            child,
            "the sorry server is a tier-1 backend of the service, forwarded like the others",
        ),
        ("ops", ()) => t.note(
            child,
            "no one-packet scheduling: every UDP flow stays on its backend until idle \
                 (dataplane.udp_idle_timeout)",
        ),
        _ => t.note(child, "no counterpart in lb: not carried over"),
    }
}

/// The backends of a `virtual_server` (its real servers, then the sorry
/// server) and its health check.
fn pool(
    t: &mut Translator<'_>,
    real_servers: &[&Statement],
    sorry: Option<&Statement>,
    settings: &ServiceSettings,
    service_port: Option<u16>,
) -> (Vec<DraftBackend>, Option<DraftCheck>) {
    let mut backends = Vec::new();
    let mut check: Option<(DraftCheck, Position)> = None;
    for real_server in real_servers {
        let Some(backend) = backend(t, real_server, settings, service_port) else {
            continue;
        };
        let found = checker(t, real_server, settings);
        match (&check, found) {
            (None, Some(found)) => check = Some((found, real_server.at.clone())),
            (Some((first, at)), Some(found)) if *first != found => t.note(
                real_server,
                format!(
                    "its checker differs from the one at {at}: lb has one health check per \
                     service, the first one's"
                ),
            ),
            (Some((_, at)), None) => t.note(
                real_server,
                format!("no checker here: lb checks every backend with the one at {at}"),
            ),
            _ => {}
        }
        backends.push(backend);
    }
    if settings.failover {
        failover_tiers(&mut backends);
    }
    if let Some(sorry) = sorry {
        sorry_server(t, sorry, settings, &mut backends, service_port);
    }
    (backends, check.map(|(check, _)| check))
}

/// `lb_algo`: rr / wrr → round-robin, lc / wlc → least-conn, sh → ip-hash,
/// mh → maglev; the others to the nearest, noted. keepalived's default is
/// IPVS's, wlc.
fn scheduler(t: &mut Translator<'_>, algo: Option<&Statement>, failover: &mut bool) -> Scheduler {
    let Some(algo) = algo else {
        return Scheduler::LeastConn;
    };
    let name = algo.args().first().map_or("", String::as_str);
    let (scheduler, why) = match name {
        "rr" | "wrr" => (Scheduler::RoundRobin, None),
        "lc" | "wlc" => (Scheduler::LeastConn, None),
        "sh" => (Scheduler::IpHash, None),
        "mh" => (Scheduler::Maglev, None),
        "dh" => (
            Scheduler::Maglev,
            Some("destination hashing has no counterpart: maglev (a consistent hash of the flow)"),
        ),
        "lblc" | "lblcr" => (
            Scheduler::LeastConn,
            Some("locality-based scheduling has no counterpart: least-conn"),
        ),
        "sed" | "nq" => (
            Scheduler::LeastConn,
            Some("least-conn (weighted by active flows) is the nearest"),
        ),
        "ovf" => (
            Scheduler::LeastConn,
            Some("overflow scheduling has no counterpart: least-conn"),
        ),
        "fo" => {
            *failover = true;
            (
                Scheduler::Maglev,
                Some(
                    "weighted failover as tiers: the highest weight is tier 0, the next tier 1, \
                     ... (new flows go to the lowest tier with a healthy backend); maglev within \
                     a tier",
                ),
            )
        }
        _ => (
            Scheduler::LeastConn,
            Some("unknown scheduler: least-conn (keepalived's default is wlc)"),
        ),
    };
    if let Some(why) = why {
        t.note(algo, why);
    }
    scheduler
}

/// `persistence_timeout`: lb keeps no per-client timer; ip-hash sends a
/// client to the same backend as long as the backends do not change.
fn persistent(t: &mut Translator<'_>, statement: &Statement, scheduler: &mut Scheduler) {
    if statement.keyword() == "persistence_granularity" {
        t.note(
            statement,
            "ip-hash hashes the whole source address; no granularity",
        );
        return;
    }
    if statement.args().first().map(String::as_str) == Some("0") {
        return;
    }
    let was = *scheduler;
    *scheduler = Scheduler::IpHash;
    t.note(
        statement,
        format!(
            "lb keeps no persistence timer: scheduler ip-hash{} sends each client to the same \
             backend for as long as the backends do not change (and keeps its flows there \
             across a failover)",
            if was == Scheduler::IpHash {
                String::new()
            } else {
                format!(" instead of {}", was.name())
            }
        ),
    );
}

/// A `real_server ADDR [PORT]`'s backend.
fn backend(
    t: &mut Translator<'_>,
    statement: &Statement,
    settings: &ServiceSettings,
    service_port: Option<u16>,
) -> Option<DraftBackend> {
    let args = statement.args();
    let Some(address) = args.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
        t.note(statement, "not `real_server ADDRESS PORT`: left out");
        return None;
    };
    let mut port = args.get(1).and_then(|p| p.parse::<u16>().ok());
    if settings.forwarding != Forwarding::Nat
        && let Some(written) = port
        && Some(written) != service_port
    {
        t.note(
            statement,
            "dsr and tunnel forwarding keep the client's destination port: the backend port is \
             left out",
        );
        port = None;
    }
    let mut weight = KEEPALIVED_WEIGHT;
    for child in statement.children() {
        match child.keyword() {
            "weight" => match child.args().first().and_then(|w| w.parse().ok()) {
                Some(w) => weight = w,
                None => t.note(child, "not a number: weight 1 written"),
            },
            "inhibit_on_failure" => t.note(
                child,
                "lb takes a failed backend out of the tables; its established flows are \
                 scheduled again (keepalived's inhibit_on_failure left them on it at weight 0)",
            ),
            "lvs_method" => t.note(
                child,
                "lb forwards every backend of a service the same way: the virtual_server's \
                 lb_kind",
            ),
            "notify_up" | "notify_down" => t.note(
                child,
                "lb runs no scripts on health changes: lb status and the metrics show them",
            ),
            "uthreshold" | "lthreshold" => t.note(
                child,
                "no connection thresholds per backend: least-conn spreads flows by active count",
            ),
            "TCP_CHECK" | "HTTP_GET" | "SSL_GET" | "MISC_CHECK" | "UDP_CHECK" | "SMTP_CHECK"
            | "PING_CHECK" | "DNS_CHECK" | "BFD_CHECK" | "FILE_CHECK" | "delay_loop"
            | "connect_timeout" | "retry" | "delay_before_retry" | "warmup" | "alpha" => {}
            _ => t.note(child, "no counterpart in lb: not carried over"),
        }
    }
    Some(DraftBackend {
        at: statement.at.clone(),
        comments: statement.comments.clone(),
        address,
        port,
        weight,
        tier: 0,
    })
}

/// `sorry_server ADDR PORT`: a backend of the tier above every other, so
/// it takes new flows only while no lower tier has a healthy backend.
fn sorry_server(
    t: &mut Translator<'_>,
    statement: &Statement,
    settings: &ServiceSettings,
    backends: &mut Vec<DraftBackend>,
    service_port: Option<u16>,
) {
    let Some(mut sorry) = backend(t, statement, settings, service_port) else {
        return;
    };
    sorry.tier = backends
        .iter()
        .map(|b| b.tier)
        .max()
        .map_or(0, |t| t.saturating_add(1));
    t.note(
        statement,
        format!(
            "a standby backend (tier {}): it takes new flows while no lower tier has a \
             healthy backend, and is health-checked like the others",
            sorry.tier
        ),
    );
    backends.push(sorry);
}

/// `lb_algo fo`: each distinct weight a tier, the highest first.
fn failover_tiers(backends: &mut [DraftBackend]) {
    let mut weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    weights.sort_unstable_by(|a, b| b.cmp(a));
    weights.dedup();
    for backend in backends {
        let rank = weights
            .iter()
            .position(|w| *w == backend.weight)
            .unwrap_or(0);
        backend.tier = u8::try_from(rank).unwrap_or(u8::MAX);
    }
}

mod check;
pub(super) mod vrrp;

use check::checker;

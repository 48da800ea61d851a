//! The cross-field checks the types alone cannot express: unique service
//! names and addresses, backends that fit their service's family and
//! forwarding, NAT reply keys that name one service each, and the ranges
//! of `guard`, `ha` and `dataplane`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use super::problems::Problems;
use super::{
    Announce, Backend, CheckKind, Config, ConfigProblem, Forwarding, GuardAuto, Ha, HealthCheck,
    Protocol, Service,
};

/// The longest `ha.preempt_delay`, keepalived's (1,000 s).
pub const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);

/// The most announcements (`ha.garp_repeat`) of a floating IP.
pub const MAX_GARP_REPEAT: u32 = 100;

/// The longest spacing (`ha.garp_interval`) of those announcements.
pub const MAX_GARP_INTERVAL: Duration = Duration::from_mins(1);

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

impl Config {
    /// Cross-field checks the types alone cannot express.
    pub(super) fn problems(&self) -> Vec<ConfigProblem> {
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
        if let Some(attack) = &self.guard.attack {
            super::attack::check_guard_attack(attack, &mut problems);
        }
        if let Some(ha) = &self.ha {
            check_ha(ha, &mut problems);
            check_track(self, ha, &mut problems);
        }
        if let Some(announce) = &self.announce {
            self.check_announce(announce, &mut problems);
        }
        if let Some(sync) = &self.sync {
            super::sync::check_sync(self, sync, &mut problems);
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

    /// `announce`: only VIPs every balancer can serve without the others'
    /// state. A nat flow's replies must come back through the balancer that
    /// rewrote it, which ECMP does not promise (the upstream may send the
    /// next packet of a flow to another balancer, and the backends' replies
    /// go to their one gateway), so nat VIPs are refused with the way out.
    fn check_announce(&self, announce: &Announce, problems: &mut Problems) {
        if announce.min_healthy == 0 {
            problems.push("announce.min_healthy", "must be at least 1".into());
        }
        if announce.withdraw_delay > Duration::from_mins(1) {
            problems.push(
                "announce.withdraw_delay",
                format!(
                    "{} is more than 1m",
                    humantime::format_duration(announce.withdraw_delay)
                ),
            );
        }
        if let Some(divert) = &announce.divert {
            if divert.min_sources == 0 {
                problems.push("announce.divert.min_sources", "must be at least 1".into());
            }
            if self.guard.auto.is_none() {
                problems.push(
                    "announce.divert",
                    "needs guard.auto: the automatic guard's denials are what mark a VIP \
                     under attack"
                        .into(),
                );
            }
        }
        let nat_refusal = |vip: IpAddr| {
            format!(
                "{vip} has a nat service, which cannot be announced: its replies must come \
                 back through the balancer that forwarded the flow, and ECMP or anycast may \
                 send the flow's next packet to another one. Use tunnel or dsr for \
                 announced VIPs, and keep nat services on a VRRP pair (ha)"
            )
        };
        if announce.vips.is_empty() {
            for (i, service) in self.services.iter().enumerate() {
                if service.forwarding == Forwarding::Nat {
                    problems.push(
                        format!("services[{i}].forwarding"),
                        format!(
                            "service {:?}: {} (with announce.vips empty every VIP is \
                             announced; list the ones to announce there)",
                            service.name,
                            nat_refusal(service.vip)
                        ),
                    );
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in announce.vips.iter().enumerate() {
            let at = format!("announce.vips[{i}].vip");
            if !seen.insert(entry.vip) {
                problems.push(at.clone(), format!("{} is listed twice", entry.vip));
            }
            let services: Vec<&Service> = self
                .services
                .iter()
                .filter(|s| s.vip == entry.vip)
                .collect();
            if services.is_empty() {
                problems.push(at, format!("{} is the VIP of no service", entry.vip));
            } else if services.iter().any(|s| s.forwarding == Forwarding::Nat) {
                problems.push(at, nat_refusal(entry.vip));
            }
        }
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
        for (key, timeout) in [
            ("dataplane.tcp_idle_timeout", dataplane.tcp_idle_timeout),
            ("dataplane.udp_idle_timeout", dataplane.udp_idle_timeout),
        ] {
            if timeout < MIN_IDLE_TIMEOUT {
                problems.push(
                    key,
                    format!(
                        "{} is too short: at least {}s, since the data path refreshes a \
                         flow's last-seen time at most once a second (one write per packet \
                         would bounce it between CPUs), so a shorter timeout would reschedule \
                         flows that are still busy",
                        humantime_ms(timeout),
                        MIN_IDLE_TIMEOUT.as_secs()
                    ),
                );
            }
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

/// The shortest idle timeout the data path honours: an established flow's
/// last-seen time is refreshed at most once a second (`Entry::keep` in
/// `lb-ebpf/src/balancer.rs`), so it may lag a busy flow by a second, plus
/// the gap between its packets and a clock tick.
const MIN_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `duration` as an operator wrote it: whole seconds, else milliseconds.
fn humantime_ms(duration: std::time::Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
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
/// IPv4, or IPv6 when every floating IP is IPv6). Each value is checked where it is written: in the section,
/// or in the `instances` entry that sets it.
pub(super) fn check_ha(ha: &Ha, problems: &mut Problems) {
    if ha.interface.is_empty() {
        problems.push(
            "ha.interface",
            "must name the interface VRRP runs on".into(),
        );
    }
    check_ha_form(ha, problems);
    if let Some(vrid) = ha.virtual_router_id {
        check_vrid("ha.virtual_router_id", vrid, problems);
    }
    if let Some(priority) = ha.priority {
        check_priority("ha.priority", priority, problems);
    }
    check_advert_interval("ha.advert_interval", ha.advert_interval, problems);
    check_preempt_delay("ha.preempt_delay", ha.preempt_delay, problems);
    check_ha_announcements(ha, problems);
    check_floating("ha.floating_ips", &ha.floating_ips, problems);
    // Peers are checked against the family each instance advertises in;
    // the section's, shared by several instances, once.
    let mut peers_checked = Vec::new();
    for (i, instance) in ha.instances().iter().enumerate() {
        let at = ha.path_of(i, "unicast_peers");
        if peers_checked.contains(&at) {
            continue;
        }
        let family =
            crate::vrrp::Family::for_floating(instance.floating_ips.iter().map(ipnet::IpNet::addr));
        check_peers(&at, &instance.unicast_peers, family, problems);
        peers_checked.push(at);
    }
    let mut seen: BTreeMap<(&str, u8), usize> = BTreeMap::new();
    let mut floating: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, spec) in ha.instances.iter().enumerate() {
        let at = format!("ha.instances[{i}]");
        check_vrid(
            &format!("{at}.virtual_router_id"),
            spec.virtual_router_id,
            problems,
        );
        check_priority(&format!("{at}.priority"), spec.priority, problems);
        if let Some(interval) = spec.advert_interval {
            check_advert_interval(&format!("{at}.advert_interval"), interval, problems);
        }
        if let Some(delay) = spec.preempt_delay {
            check_preempt_delay(&format!("{at}.preempt_delay"), delay, problems);
        }
        check_floating(&format!("{at}.floating_ips"), &spec.floating_ips, problems);
        if let Some(interface) = &spec.interface
            && interface.is_empty()
        {
            problems.push(
                format!("{at}.interface"),
                "must name the interface VRRP runs on (or omit it for ha.interface)".into(),
            );
        }
        let interface = spec.interface.as_deref().unwrap_or(&ha.interface);
        if let Some(first) = seen.insert((interface, spec.virtual_router_id), i) {
            problems.push(
                format!("{at}.virtual_router_id"),
                format!(
                    "{} is used by ha.instances[{first}] on {interface} too: each instance \
                     needs its own",
                    spec.virtual_router_id
                ),
            );
        }
        for address in &spec.floating_ips {
            if let Some(first) = floating.insert(address.addr(), i)
                && first != i
            {
                problems.push(
                    format!("{at}.floating_ips"),
                    format!(
                        "{} is a floating IP of ha.instances[{first}] too: an address \
                         belongs to one instance",
                        address.addr()
                    ),
                );
            }
        }
    }
}

/// The section holds one instance (its VRID and priority) or lists
/// `instances`, not both.
fn check_ha_form(ha: &Ha, problems: &mut Problems) {
    let written = [
        ("virtual_router_id", ha.virtual_router_id.is_some()),
        ("priority", ha.priority.is_some()),
        ("floating_ips", !ha.floating_ips.is_empty()),
    ];
    for (key, given) in written {
        if ha.instances.is_empty() && !given && key != "floating_ips" {
            problems.push(
                format!("ha.{key}"),
                format!("missing: give ha.{key}, or list the instances in ha.instances"),
            );
        } else if !ha.instances.is_empty() && given {
            problems.push(
                format!("ha.{key}"),
                format!(
                    "set it in each entry of ha.instances, not here (with instances, the \
                     section's {key} would be ambiguous)"
                ),
            );
        }
    }
}

fn check_vrid(at: &str, vrid: u8, problems: &mut Problems) {
    if vrid == 0 {
        problems.push(
            at,
            "0 is reserved: use 1 to 255 (the same on both balancers, unique on the segment)"
                .into(),
        );
    }
}

fn check_priority(at: &str, priority: u8, problems: &mut Problems) {
    if priority == 0 || priority == 255 {
        problems.push(
            at,
            format!(
                "{priority} is reserved (0: a master stepping down, 255: the owner of the \
                 addresses, which lb never is): use 1 to 254"
            ),
        );
    }
}

fn check_advert_interval(at: &str, interval: Duration, problems: &mut Problems) {
    if let Err(error) = crate::vrrp::AdvertInterval::from_duration(interval) {
        let why = match error {
            crate::vrrp::ConfigError::IntervalNotCentiseconds(_) => "is not a multiple of 10ms",
            _ => "is outside 10ms to 40.95s",
        };
        problems.push(
            at,
            format!(
                "{} {why}: VRRPv3 carries the interval in centiseconds, 10ms to 40.95s",
                humantime::format_duration(interval)
            ),
        );
    }
}

fn check_preempt_delay(at: &str, delay: Duration, problems: &mut Problems) {
    if delay > MAX_PREEMPT_DELAY {
        problems.push(
            at,
            format!(
                "{} is over {} (keepalived's limit too): a backup that waits longer \
                 is better left with preempt: false",
                humantime::format_duration(delay),
                humantime::format_duration(MAX_PREEMPT_DELAY)
            ),
        );
    }
}

/// `unicast_peers` of the section or entry at `at` (`…unicast_peers`):
/// unicast addresses of the family the instance advertises in.
fn check_peers(at: &str, peers: &[IpAddr], family: crate::vrrp::Family, problems: &mut Problems) {
    for (i, peer) in peers.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if crate::vrrp::Family::of(*peer) != family {
            let why = match family {
                crate::vrrp::Family::V4 => {
                    "this instance advertises over IPv4 (its floating IPs are not all IPv6): \
                     give the peer's IPv4 address on ha.interface"
                }
                crate::vrrp::Family::V6 => {
                    "this instance advertises over IPv6 (its floating IPs are all IPv6): \
                     give the peer's IPv6 address on ha.interface"
                }
            };
            problems.push(at, format!("{peer}: {why}"));
        } else if peer.is_unspecified() || peer.is_multicast() || peer.is_loopback() {
            problems.push(
                at,
                format!(
                    "{peer} is not a peer's unicast address (omit unicast_peers for multicast)"
                ),
            );
        }
    }
}

/// `ha.garp_repeat` and `ha.garp_interval`.
fn check_ha_announcements(ha: &Ha, problems: &mut Problems) {
    if ha.garp_repeat == 0 || ha.garp_repeat > MAX_GARP_REPEAT {
        problems.push(
            "ha.garp_repeat",
            format!(
                "{} announcements: use 1 to {MAX_GARP_REPEAT} (a new master announces each \
                 floating IP this many times)",
                ha.garp_repeat
            ),
        );
    }
    if ha.garp_interval > MAX_GARP_INTERVAL {
        problems.push(
            "ha.garp_interval",
            format!(
                "{} is over {}",
                humantime::format_duration(ha.garp_interval),
                humantime::format_duration(MAX_GARP_INTERVAL)
            ),
        );
    }
}

/// The floating IPs at `at`: one advertisement lists at most 255 of the
/// family it is sent in.
fn check_floating(at: &str, floating: &[ipnet::IpNet], problems: &mut Problems) {
    let family = crate::vrrp::Family::for_floating(floating.iter().map(ipnet::IpNet::addr));
    let advertised = floating
        .iter()
        .filter(|ip| crate::vrrp::Family::of(ip.addr()) == family)
        .count();
    if advertised > 255 {
        let name = if family == crate::vrrp::Family::V4 {
            "IPv4"
        } else {
            "IPv6"
        };
        problems.push(
            at,
            format!("{advertised} {name} addresses: one VRRP advertisement holds at most 255"),
        );
    }
}

/// Each instance's `track` entries: a service of this file, a weight a
/// priority can lose (keepalived's range), at least one healthy backend.
pub(super) fn check_track(config: &Config, ha: &Ha, problems: &mut Problems) {
    let mut section_checked = false;
    for (i, instance) in ha.instances().iter().enumerate() {
        let at = ha.path_of(i, "track");
        // A section-level track shared by instances is reported once.
        if at == "ha.track" {
            if section_checked {
                continue;
            }
            section_checked = true;
        }
        for (j, track) in instance.track.iter().enumerate() {
            let at = format!("{at}[{j}]");
            if !config.services.iter().any(|s| s.name == track.service) {
                problems.push(
                    format!("{at}.service"),
                    format!("no service named {:?} in this file", track.service),
                );
            }
            if track.weight > 253 {
                problems.push(
                    format!("{at}.weight"),
                    format!(
                        "{} is over 253 (a priority of 254 can drop to 1 at most); 0 puts \
                         the instance in fault instead",
                        track.weight
                    ),
                );
            }
            if track.min_healthy == Some(0) {
                problems.push(format!("{at}.min_healthy"), "must be at least 1".into());
            }
        }
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
    if service.scheduler.is_dynamic() && backend.weight > crate::dynamic::MAX_WEIGHT {
        // The dynamic table counts in hundredths and goes up to ten times.
        problems.push(
            format!("{at}.weight"),
            format!(
                "{} is over {}, the most a least-conn or resource service can scale",
                backend.weight,
                crate::dynamic::MAX_WEIGHT
            ),
        );
    }
    if service.forwarding == Forwarding::Nat {
        check_nat_endpoint(at, service, backend.address, port, nat_endpoints, problems);
    }
}

/// The reply path finds a NAT reply's service by (backend address, port,
/// protocol), then by (address, 0, protocol) for all-port services
/// (docs/DESIGN.md §2.2): each such key must name one service. An all-port NAT
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::config::tests::MINIMAL;

    const ANNOUNCED: &str = "instance: t\ninterfaces: [{ name: eth0 }]\nservices:\n\
        \x20 - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.11 }] }\n\
        \x20 - { name: dsr, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, backends: [{ address: 192.0.2.11 }] }\n\
        \x20 - { name: tun, vip: 203.0.113.12, port: 0, protocol: udp, forwarding: tunnel, backends: [{ address: 192.0.2.11 }] }\n";

    fn problems_of(text: &str) -> Vec<(String, Option<usize>, String)> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems
                .into_iter()
                .map(|p| (p.path, p.line, p.message))
                .collect(),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn idle_timeouts_the_data_path_cannot_honour_are_refused() {
        let problems = problems_of(&format!(
            "{MINIMAL}dataplane: {{ tcp_idle_timeout: 1500ms, udp_idle_timeout: 1s }}\n"
        ));
        let paths: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            paths,
            ["dataplane.tcp_idle_timeout", "dataplane.udp_idle_timeout"],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .2
                .starts_with("1500ms is too short: at least 2s")
                && problems[0].2.contains("at most once a second"),
            "{}",
            problems[0].2
        );
        assert!(
            problems[1].2.starts_with("1s is too short"),
            "{}",
            problems[1].2
        );
        // The shortest the data path honours is accepted.
        let problems = problems_of(&format!(
            "{MINIMAL}dataplane: {{ tcp_idle_timeout: 2s, udp_idle_timeout: 2s }}\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn announce_refuses_nat_services_and_says_why() {
        // Every VIP announced (no list): the nat service is named.
        let problems = problems_of(&format!("{ANNOUNCED}announce: {{ min_healthy: 1 }}\n"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "services[0].forwarding");
        assert_eq!(problems[0].1, Some(4));
        let message = &problems[0].2;
        assert!(
            message.contains("\"web\"")
                && message.contains("replies must come back through the balancer")
                && message.contains("VRRP pair")
                && message.contains("announce.vips"),
            "{message}"
        );
        // Listed: a nat VIP, a VIP twice, a VIP of no service.
        let problems = problems_of(&format!(
            "{ANNOUNCED}announce:\n  vips:\n    - {{ vip: 203.0.113.11 }}\n    - {{ vip: 203.0.113.10 }}\n\
             \x20   - {{ vip: 203.0.113.11 }}\n    - {{ vip: 203.0.113.99 }}\n"
        ));
        let paths: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "announce.vips[1].vip",
                "announce.vips[2].vip",
                "announce.vips[3].vip"
            ],
            "{problems:?}"
        );
        assert!(problems[0].2.contains("nat service"), "{problems:?}");
        assert!(problems[1].2.contains("listed twice"), "{problems:?}");
        assert!(problems[2].2.contains("VIP of no service"), "{problems:?}");
        // Only the tunnel and dsr VIPs: valid, with the defaults.
        let config = Config::parse(&format!(
            "{ANNOUNCED}announce:\n  bird_socket: /run/bird/b.ctl\n  communities: ['64512:100', '64512:1:2']\n  med: 10\n\
             \x20 vips: [{{ vip: 203.0.113.11, med: 50 }}, {{ vip: 203.0.113.12 }}]\n"
        ))
        .unwrap();
        let announce = config.announce.unwrap();
        assert_eq!(announce.min_healthy, 1);
        assert_eq!(
            announce.bird_socket,
            std::path::Path::new("/run/bird/b.ctl")
        );
        assert_eq!(
            announce.communities,
            [
                super::super::Community::Standard(64512, 100),
                super::super::Community::Large(64512, 1, 2)
            ]
        );
        assert_eq!(announce.withdraw_delay, Duration::from_secs(2));
        assert_eq!(announce.vips[0].med, Some(50));
    }

    #[test]
    fn announce_values_are_checked() {
        let problems = problems_of(&format!(
            "{ANNOUNCED}announce:\n  min_healthy: 0\n  withdraw_delay: 5m\n  vips: [{{ vip: 203.0.113.11 }}]\n\
             \x20 divert: {{ community: '65535:666', min_sources: 0 }}\n"
        ));
        let paths: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "announce.min_healthy",
                "announce.withdraw_delay",
                "announce.divert.min_sources",
                "announce.divert"
            ],
            "{problems:?}"
        );
        assert!(problems[3].2.contains("needs guard.auto"), "{problems:?}");
        for bad in ["'65536:1'", "'1:2:3:4'", "64512", "'x:1'"] {
            let problems = problems_of(&format!(
                "{ANNOUNCED}announce: {{ vips: [{{ vip: 203.0.113.11 }}], communities: [{bad}] }}\n"
            ));
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].0, "announce.communities[0]", "{bad}");
            assert!(problems[0].2.contains("community"), "{bad}: {problems:?}");
        }
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
    fn dynamic_weights_are_bounded_so_their_table_units_fit() {
        let service = |scheduler: &str, weight: u32| {
            format!(
                "  - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, \
                 scheduler: {scheduler}, backends: [{{ address: 192.0.2.11, weight: {weight} }}] }}\n"
            )
        };
        let max = crate::dynamic::MAX_WEIGHT;
        for scheduler in ["least-conn", "resource"] {
            assert!(service_problems(&service(scheduler, max)).is_empty());
            let problems = service_problems(&service(scheduler, max + 1));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].path, "services[0].backends[0].weight");
        }
        // Static tables take the weight as it is.
        assert!(service_problems(&service("maglev", u32::MAX)).is_empty());
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
    fn ha_preempt_delay_defaults_to_0_and_is_at_most_1000s() {
        let config = Config::parse(&format!("{MINIMAL}{HA}")).unwrap();
        assert_eq!(config.ha.unwrap().preempt_delay, Duration::ZERO);
        for delay in ["0s", "300ms", "5m", "1000s"] {
            let problems = ha_problems(|ha| format!("{ha}  preempt_delay: {delay}\n"));
            assert_eq!(problems, [], "{delay}");
        }
        let text = format!("{MINIMAL}{HA}  preempt_delay: 2s\n");
        let ha = Config::parse(&text).unwrap().ha.unwrap();
        assert_eq!(ha.preempt_delay, Duration::from_secs(2));
        let problems = ha_problems(|ha| format!("{ha}  preempt_delay: 1001s\n"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.preempt_delay");
        assert_eq!(problems[0].1, Some(19));
        assert!(problems[0].2.contains("over 16m 40s"), "{}", problems[0].2);
        // Not a duration at all.
        let problems = ha_problems(|ha| format!("{ha}  preempt_delay: thirty\n"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.preempt_delay");
        assert!(
            problems[0].2.contains("not a duration"),
            "{}",
            problems[0].2
        );
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
    fn ha_unicast_peers_are_of_the_advertisements_family() {
        // IPv4 floating IPs: VRRP over IPv4, an IPv6 peer is refused.
        let problems = ha_problems(|ha| ha.replace("[192.0.2.2]", "[192.0.2.2, '2001:db8::2']"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.unicast_peers[1]");
        assert_eq!(problems[0].1, Some(17));
        assert!(
            problems[0].2.contains("advertises over IPv4"),
            "{}",
            problems[0].2
        );
        // IPv6 floating IPs: VRRP over IPv6, IPv6 peers accepted (global or
        // link-local), an IPv4 one refused.
        let v6 = |ha: &str| ha.replace("[203.0.113.10/24]", "['2001:db8::fe/64']");
        let problems =
            ha_problems(|ha| v6(ha).replace("[192.0.2.2]", "['2001:db8::2', 'fe80::2']"));
        assert_eq!(problems, [], "{problems:?}");
        let problems =
            ha_problems(|ha| v6(ha).replace("[192.0.2.2]", "['2001:db8::2', 192.0.2.2]"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ha.unicast_peers[1]");
        assert!(
            problems[0].2.contains("advertises over IPv6"),
            "{}",
            problems[0].2
        );
        let problems = ha_problems(|ha| v6(ha).replace("[192.0.2.2]", "['ff02::12']"));
        assert_eq!(problems[0].0, "ha.unicast_peers[0]", "{problems:?}");
        let problems = ha_problems(|ha| ha.replace("[192.0.2.2]", "[224.0.0.18]"));
        assert_eq!(problems[0].0, "ha.unicast_peers[0]", "{problems:?}");
    }

    #[test]
    fn ha_garp_repeat_and_interval_are_bounded() {
        let garp = |repeat: &str, interval: &str| {
            ha_problems(|ha| {
                ha.replace(
                    "preempt: true",
                    &format!("preempt: true\n  garp_repeat: {repeat}\n  garp_interval: {interval}"),
                )
            })
        };
        assert_eq!(garp("5", "100ms"), []);
        assert_eq!(garp("1", "0s"), []);
        for (repeat, interval, path) in [
            ("0", "100ms", "ha.garp_repeat"),
            ("101", "100ms", "ha.garp_repeat"),
            ("3", "61s", "ha.garp_interval"),
        ] {
            let problems = garp(repeat, interval);
            assert_eq!(problems.len(), 1, "{repeat} {interval}: {problems:?}");
            assert_eq!(problems[0].0, path);
        }
        let config = Config::parse(&format!("{MINIMAL}{HA}")).unwrap();
        let ha = config.ha.unwrap();
        assert_eq!(
            (ha.garp_repeat, ha.garp_interval),
            (3, Duration::from_millis(500))
        );
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
}

//! Which VIPs this balancer announces through BIRD, with which BGP
//! attributes, and why (`announce`, docs/DESIGN.md §4). Pure: the controller
//! gathers the inputs (attachment, health, the guard's denials, whether it
//! is stopping) and hands the BIRD include this renders to the `bird` edge.
//!
//! A VIP is announced while the data plane is attached and each of its
//! services has at least `announce.min_healthy` healthy backends: the route
//! draws traffic for every port of the VIP, so one service that this
//! balancer cannot serve withdraws it (the other balancers, with the same
//! view, carry it; when none can, the VIP is unreachable either way).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::config::{Announce, Community, Config};

/// What the controller knows that the decision depends on.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// `lb run` is stopping (SIGTERM, SIGINT, SIGQUIT): everything goes.
    pub stopping: bool,
    /// Why the data plane is not attached (an interface's attachment is
    /// gone); `None` when it is.
    pub detached: Option<String>,
    /// Healthy backends (checked up, or unchecked, and not drained) per
    /// service name.
    pub healthy: BTreeMap<String, u32>,
    /// Sources the automatic guard denies now, per VIP.
    pub denied: BTreeMap<IpAddr, u32>,
    /// VIPs `guard.attack` judges under attack now.
    pub attacked: std::collections::BTreeSet<IpAddr>,
}

/// Announced or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// BIRD has the route: the upstream may send this VIP's traffic here.
    Announced,
    /// No route.
    Withdrawn,
}

impl State {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            State::Announced => "announced",
            State::Withdrawn => "withdrawn",
        }
    }
}

/// Why, in one word (metrics label; the reason says it in words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Attached, enough healthy backends: announced.
    Serving,
    /// `lb run` is stopping.
    Stopping,
    /// The data plane is not attached.
    Detached,
    /// A service of the VIP has fewer than `min_healthy` healthy backends.
    Unhealthy,
}

impl Cause {
    /// Stable name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Serving => "serving",
            Cause::Stopping => "stopping",
            Cause::Detached => "detached",
            Cause::Unhealthy => "unhealthy",
        }
    }
}

/// The decision for one VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    /// The VIP (a /32 or /128 route).
    pub vip: IpAddr,
    /// Announced or withdrawn.
    pub state: State,
    /// Why, in one word.
    pub cause: Cause,
    /// Why, in words.
    pub reason: String,
    /// Announced with the divert community (the guard sees an attack).
    pub diverted: bool,
    /// Communities the route carries (the divert one included).
    pub communities: Vec<Community>,
    /// MED, if set.
    pub med: Option<u32>,
    /// Local preference, if set.
    pub local_pref: Option<u32>,
}

/// The VIPs `announce` covers, in configuration order (of `announce.vips`,
/// else of the services), each once.
pub fn vips(config: &Config, announce: &Announce) -> Vec<IpAddr> {
    if announce.vips.is_empty() {
        let mut vips: Vec<IpAddr> = Vec::new();
        for service in &config.services {
            if !vips.contains(&service.vip) {
                vips.push(service.vip);
            }
        }
        vips
    } else {
        announce.vips.iter().map(|v| v.vip).collect()
    }
}

/// Decides every VIP of `announce`.
pub fn decide(config: &Config, announce: &Announce, inputs: &Inputs) -> Vec<VipAnnouncement> {
    vips(config, announce)
        .into_iter()
        .map(|vip| decide_vip(config, announce, inputs, vip))
        .collect()
}

fn decide_vip(
    config: &Config,
    announce: &Announce,
    inputs: &Inputs,
    vip: IpAddr,
) -> VipAnnouncement {
    let own = announce.vips.iter().find(|v| v.vip == vip);
    let mut communities = announce.communities.clone();
    if let Some(own) = own {
        for community in &own.communities {
            if !communities.contains(community) {
                communities.push(*community);
            }
        }
    }
    let med = own.and_then(|v| v.med).or(announce.med);
    let local_pref = own.and_then(|v| v.local_pref).or(announce.local_pref);
    let withdrawn = |cause: Cause, reason: String| VipAnnouncement {
        vip,
        state: State::Withdrawn,
        cause,
        reason,
        diverted: false,
        communities: communities.clone(),
        med,
        local_pref,
    };
    if inputs.stopping {
        return withdrawn(Cause::Stopping, "lb run is stopping".into());
    }
    if let Some(why) = &inputs.detached {
        return withdrawn(
            Cause::Detached,
            format!("the data plane is not attached: {why}"),
        );
    }
    let needed = announce.min_healthy;
    let short: Vec<String> = config
        .services
        .iter()
        .filter(|s| s.vip == vip)
        .filter_map(|s| {
            let healthy = inputs.healthy.get(&s.name).copied().unwrap_or(0);
            (healthy < needed).then(|| format!("service {:?} has {healthy}", s.name))
        })
        .collect();
    if !short.is_empty() {
        return withdrawn(
            Cause::Unhealthy,
            format!(
                "fewer than min_healthy {needed} healthy backends: {}",
                short.join(", ")
            ),
        );
    }
    let denied = inputs.denied.get(&vip).copied().unwrap_or(0);
    let attacked = inputs.attacked.contains(&vip);
    let divert = announce
        .divert
        .filter(|divert| denied >= divert.min_sources || attacked);
    let mut reason = format!("attached, every service has at least {needed} healthy backends");
    if let Some(divert) = divert {
        let why = if attacked {
            "guard.attack: a flood of new flows".to_string()
        } else {
            format!("{denied} sources denied by the guard")
        };
        let _ = write!(
            reason,
            "; under attack ({why}): diverted with {}",
            divert.community
        );
        if !communities.contains(&divert.community) {
            communities.push(divert.community);
        }
    }
    VipAnnouncement {
        vip,
        state: State::Announced,
        cause: Cause::Serving,
        reason,
        diverted: divert.is_some(),
        communities,
        med,
        local_pref,
    }
}

/// The BIRD include for `decisions`: static protocols `lb4` and `lb6`
/// (always both, empty when nothing of that family is announced) with one
/// blackhole route per announced VIP, and the filter `lb_export` for the
/// operator's BGP channels (`export filter lb_export;`), which passes only
/// those routes and sets their attributes. The attributes are set in the
/// export filter because BIRD sends MED to an eBGP peer only when the
/// export filter set it. BGP exports the routes with next hop self; the
/// balancer's kernel never sees them (the data plane answers the VIPs).
/// Withdrawn VIPs are listed in comments with their reason.
pub fn render(instance: &str, decisions: &[VipAnnouncement]) -> String {
    let mut text = format!(
        "# Written by lb (instance {instance}): the VIPs this balancer announces.\n\
         # BIRD includes this file; lb rewrites it and runs `configure` on every change.\n"
    );
    for decision in decisions {
        let _ = writeln!(
            text,
            "# {} {}: {}",
            decision.vip,
            decision.state.name(),
            decision.reason
        );
    }
    let announced: Vec<&VipAnnouncement> = decisions
        .iter()
        .filter(|d| d.state == State::Announced)
        .collect();
    for (name, channel, v6) in [("lb4", "ipv4", false), ("lb6", "ipv6", true)] {
        let _ = writeln!(text, "protocol static {name} {{\n  {channel};");
        for decision in announced.iter().filter(|d| d.vip.is_ipv6() == v6) {
            let _ = writeln!(text, "  route {} blackhole;", prefix(decision.vip));
        }
        text.push_str("}\n");
    }
    text.push_str("filter lb_export {\n  if proto != \"lb4\" && proto != \"lb6\" then reject;\n");
    for decision in &announced {
        let _ = writeln!(
            text,
            "  if net = {} then {{{} accept; }}",
            prefix(decision.vip),
            attributes(decision)
        );
    }
    text.push_str("  reject;\n}\n");
    text
}

/// The VIP as a host route.
fn prefix(vip: IpAddr) -> String {
    format!("{vip}/{}", if vip.is_ipv6() { 128 } else { 32 })
}

/// ` bgp_community.add((a,b)); ...` for a route, or nothing.
fn attributes(decision: &VipAnnouncement) -> String {
    let mut body = String::new();
    for community in &decision.communities {
        let _ = match community {
            Community::Standard(asn, value) => {
                write!(body, " bgp_community.add(({asn},{value}));")
            }
            Community::Large(asn, a, b) => {
                write!(body, " bgp_large_community.add(({asn},{a},{b}));")
            }
        };
    }
    if let Some(med) = decision.med {
        let _ = write!(body, " bgp_med = {med};");
    }
    if let Some(local_pref) = decision.local_pref {
        let _ = write!(body, " bgp_local_pref = {local_pref};");
    }
    body
}

/// How the VIPs changed from `before` to `after`: (vip, new decision) for
/// each whose state or divert changed, or that is new.
pub fn changes<'a>(
    before: &[VipAnnouncement],
    after: &'a [VipAnnouncement],
) -> Vec<&'a VipAnnouncement> {
    after
        .iter()
        .filter(|now| {
            before
                .iter()
                .find(|old| old.vip == now.vip)
                .is_none_or(|old| old.state != now.state || old.diverted != now.diverted)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
instance: edge1
interfaces: [{ name: eth0 }]
services:
  - { name: web, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr,
      backends: [{ address: 192.0.2.11 }, { address: 192.0.2.12 }] }
  - { name: web-tls, vip: 203.0.113.11, port: 443, protocol: tcp, forwarding: dsr,
      backends: [{ address: 192.0.2.11 }] }
  - { name: dns, vip: '2001:db8:ff::12', port: 53, protocol: udp, forwarding: tunnel,
      backends: [{ address: '2001:db8::11' }] }
guard: { auto: { new_flows_per_second: 10 } }
announce:
  min_healthy: 1
  communities: ['64512:100']
  med: 10
  vips:
    - { vip: 203.0.113.11, communities: ['64512:1:2'], local_pref: 200 }
    - { vip: '2001:db8:ff::12', med: 50 }
  divert: { community: '65535:666', min_sources: 2 }
";

    fn setup() -> (Config, Announce) {
        let config = Config::parse(CONFIG).unwrap();
        let announce = config.announce.clone().unwrap();
        (config, announce)
    }

    fn healthy(web: u32, tls: u32, dns: u32) -> Inputs {
        Inputs {
            healthy: BTreeMap::from([
                ("web".to_string(), web),
                ("web-tls".to_string(), tls),
                ("dns".to_string(), dns),
            ]),
            ..Inputs::default()
        }
    }

    #[test]
    fn a_vip_is_announced_while_each_of_its_services_has_enough_healthy_backends() {
        let (config, announce) = setup();
        let all = decide(&config, &announce, &healthy(2, 1, 1));
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|d| d.state == State::Announced), "{all:?}");
        assert_eq!(
            all[0].communities,
            [
                Community::Standard(64512, 100),
                Community::Large(64512, 1, 2)
            ]
        );
        assert_eq!((all[0].med, all[0].local_pref), (Some(10), Some(200)));
        assert_eq!((all[1].med, all[1].local_pref), (Some(50), None));
        // One service of the VIP with none: the VIP goes, the other stays.
        let some = decide(&config, &announce, &healthy(2, 0, 1));
        assert_eq!(some[0].state, State::Withdrawn);
        assert!(
            some[0].reason.contains("\"web-tls\" has 0")
                && some[0].reason.contains("min_healthy 1"),
            "{}",
            some[0].reason
        );
        assert_eq!(some[1].state, State::Announced);
        assert_eq!(changes(&all, &some), [&some[0]]);
        assert!(changes(&all, &all).is_empty());
        // min_healthy 2.
        let mut two = announce.clone();
        two.min_healthy = 2;
        let decided = decide(&config, &two, &healthy(2, 2, 1));
        assert_eq!(decided[0].state, State::Announced);
        assert_eq!(decided[1].state, State::Withdrawn);
    }

    #[test]
    fn stopping_and_detached_withdraw_everything() {
        let (config, announce) = setup();
        let mut inputs = healthy(2, 1, 1);
        inputs.detached = Some("no attachment pinned for eth0".into());
        let decided = decide(&config, &announce, &inputs);
        assert!(decided.iter().all(|d| d.state == State::Withdrawn));
        assert!(
            decided[0]
                .reason
                .contains("not attached: no attachment pinned for eth0")
        );
        inputs.stopping = true;
        let decided = decide(&config, &announce, &inputs);
        assert!(decided.iter().all(|d| d.reason == "lb run is stopping"));
    }

    #[test]
    fn an_attack_adds_the_divert_community_and_its_end_removes_it() {
        let (config, announce) = setup();
        let mut inputs = healthy(2, 1, 1);
        inputs.denied.insert("203.0.113.11".parse().unwrap(), 1);
        let calm = decide(&config, &announce, &inputs);
        assert!(!calm[0].diverted, "below min_sources");
        inputs.denied.insert("203.0.113.11".parse().unwrap(), 2);
        let attacked = decide(&config, &announce, &inputs);
        assert!(attacked[0].diverted && !attacked[1].diverted);
        assert_eq!(
            attacked[0].communities.last(),
            Some(&Community::Standard(65535, 666))
        );
        assert!(
            attacked[0].reason.contains("under attack (2 sources"),
            "{}",
            attacked[0].reason
        );
        assert_eq!(changes(&calm, &attacked), [&attacked[0]]);
        let text = render("edge1", &attacked);
        assert!(text.contains("bgp_community.add((65535,666));"), "{text}");
        // An attacked VIP that cannot be served is withdrawn, not diverted.
        inputs.healthy.insert("web".into(), 0);
        assert!(!decide(&config, &announce, &inputs)[0].diverted);
    }

    #[test]
    fn a_vip_guard_attack_judges_under_attack_is_diverted_too() {
        let (config, announce) = setup();
        let mut inputs = healthy(2, 1, 1);
        inputs.attacked.insert("203.0.113.11".parse().unwrap());
        let attacked = decide(&config, &announce, &inputs);
        assert!(attacked[0].diverted && !attacked[1].diverted);
        assert_eq!(
            attacked[0].communities.last(),
            Some(&Community::Standard(65535, 666))
        );
        assert!(
            attacked[0]
                .reason
                .contains("under attack (guard.attack: a flood of new flows)"),
            "{}",
            attacked[0].reason
        );
        inputs.attacked.clear();
        assert!(!decide(&config, &announce, &inputs)[0].diverted, "it ended");
    }

    #[test]
    fn the_include_has_one_route_per_announced_vip_in_each_family() {
        let (config, announce) = setup();
        let decided = decide(&config, &announce, &healthy(2, 0, 1));
        let text = render("edge1", &decided);
        let expected = "\
# Written by lb (instance edge1): the VIPs this balancer announces.
# BIRD includes this file; lb rewrites it and runs `configure` on every change.
# 203.0.113.11 withdrawn: fewer than min_healthy 1 healthy backends: service \"web-tls\" has 0
# 2001:db8:ff::12 announced: attached, every service has at least 1 healthy backends
protocol static lb4 {
  ipv4;
}
protocol static lb6 {
  ipv6;
  route 2001:db8:ff::12/128 blackhole;
}
filter lb_export {
  if proto != \"lb4\" && proto != \"lb6\" then reject;
  if net = 2001:db8:ff::12/128 then { bgp_community.add((64512,100)); bgp_med = 50; accept; }
  reject;
}
";
        assert_eq!(text, expected);
        let decided = decide(&config, &announce, &healthy(1, 1, 1));
        let text = render("edge1", &decided);
        assert!(
            text.contains("  route 203.0.113.11/32 blackhole;\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  if net = 203.0.113.11/32 then { bgp_community.add((64512,100)); \
             bgp_large_community.add((64512,1,2)); bgp_med = 10; bgp_local_pref = 200; accept; }\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_shipped_empty_include_is_what_lb_writes_for_nothing() {
        let code = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            code(include_str!("../../deploy/bird/announce-empty.conf")),
            code(&render("edge1", &[]))
        );
    }

    #[test]
    fn without_a_list_every_vip_is_covered_once() {
        let text = CONFIG
            .split("announce:")
            .next()
            .unwrap()
            .replace("forwarding: tunnel", "forwarding: dsr")
            + "announce: {}\n";
        let config = Config::parse(&text).unwrap();
        let announce = config.announce.clone().unwrap();
        assert_eq!(
            vips(&config, &announce),
            [
                "203.0.113.11".parse::<IpAddr>().unwrap(),
                "2001:db8:ff::12".parse().unwrap()
            ]
        );
        let decided = decide(&config, &announce, &healthy(1, 1, 1));
        assert!(
            decided
                .iter()
                .all(|d| d.communities.is_empty() && d.med.is_none())
        );
        let text = render("edge1", &decided);
        assert!(
            text.contains("  route 203.0.113.11/32 blackhole;\n"),
            "{text}"
        );
        assert!(
            text.contains("  if net = 203.0.113.11/32 then { accept; }\n"),
            "{text}"
        );
    }
}

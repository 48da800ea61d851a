//! `vrrp_instance` blocks as entries of `ha.instances`: VRID, priority,
//! interval, preemption, unicast peers and floating IPs; the section's
//! interface is the first instance's.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{DraftHa, DraftInstance, KEEPALIVED_PRIORITY, Statement, Translator, seconds};

/// The bounds `lb check` puts on `ha.garp_repeat` and `ha.garp_interval`.
const MAX_GARP_REPEAT: u32 = 100;
const MAX_GARP_INTERVAL: Duration = Duration::from_mins(1);

/// Announcement settings the section holds once for every instance.
#[derive(Default)]
pub(super) struct Garp {
    repeat: Option<(u32, Statement)>,
    interval: Option<(Duration, Statement)>,
}

/// One `vrrp_instance NAME { ... }`; `None` (noted) without a usable
/// `virtual_router_id` or `interface`. An `lvs_sync_daemon_interface` in it
/// is handed back in `sync`.
#[allow(
    clippy::too_many_lines,
    reason = "one match arm per keepalived directive"
)]
pub(super) fn instance(
    t: &mut Translator<'_>,
    statement: &Statement,
    sync: &mut Vec<(Statement, String)>,
    garp: &mut Garp,
) -> Option<DraftInstance> {
    let name = statement.args().join(" ");
    let mut interface = None;
    let mut virtual_router_id = None;
    let mut priority = KEEPALIVED_PRIORITY;
    let mut devices = Vec::new();
    let mut instance = DraftInstance {
        at: statement.at.clone(),
        comments: statement.comments.clone(),
        name: name.clone(),
        interface: String::new(),
        virtual_router_id: 0,
        priority,
        advert_interval: None,
        preempt: true,
        preempt_delay: None,
        unicast_peers: Vec::new(),
        floating_ips: Vec::new(),
    };
    for child in statement.children() {
        let arg = child.args().first().map(String::as_str);
        match (child.keyword(), arg) {
            ("interface", Some(name)) => interface = Some(name.to_string()),
            ("virtual_router_id", Some(vrid)) => match vrid.parse::<u8>() {
                Ok(vrid) if vrid > 0 => virtual_router_id = Some(vrid),
                _ => t.note(child, "not a VRID of 1 to 255"),
            },
            ("priority", Some(value)) => match value.parse::<u16>() {
                Ok(255) => {
                    priority = 254;
                    t.note(
                        child,
                        "255 (the address owner) is reserved in lb, which never owns the \
                         floating IPs: 254 written",
                    );
                }
                Ok(p @ 1..=254) => priority = u8::try_from(p).unwrap_or(254),
                _ => t.note(child, "not a priority of 1 to 255: 100 written"),
            },
            ("advert_int", Some(value)) => match seconds(value) {
                Some(d) => instance.advert_interval = Some(d),
                None => t.note(child, "not a duration in seconds: 1 s written"),
            },
            ("nopreempt", _) => instance.preempt = false,
            ("preempt", _) => instance.preempt = true,
            ("preempt_delay", Some(value)) => instance.preempt_delay = seconds(value),
            ("state", _) => t.note(
                child,
                "lb has no initial state: every instance starts as backup and the priorities \
                 decide (a master is elected within 3 advertisement intervals)",
            ),
            ("unicast_peer", _) => {
                for peer in child.children() {
                    match peer.keyword().parse::<IpAddr>() {
                        Ok(peer) => instance.unicast_peers.push(peer),
                        Err(_) => t.note(peer, "not an address: left out"),
                    }
                    if !peer.args().is_empty() {
                        t.note(
                            peer,
                            "per-peer options have no counterpart: the address is kept",
                        );
                    }
                }
            }
            ("unicast_src_ip" | "mcast_src_ip", _) => t.note(
                child,
                "lb sends advertisements from the interface's own address",
            ),
            ("virtual_ipaddress", _) => {
                floating(t, child, &mut instance.floating_ips, &mut devices, false);
            }
            ("virtual_ipaddress_excluded", _) => {
                floating(t, child, &mut instance.floating_ips, &mut devices, true);
            }
            ("authentication", _) => t.note(
                child,
                "VRRPv3 has no authentication (RFC 5798); lb speaks VRRPv3 only, so a \
                 keepalived peer must use `version 3` without authentication",
            ),
            ("version", Some(version)) if version != "3" => t.note(
                child,
                "lb speaks VRRPv3 only: a keepalived peer must use `version 3`",
            ),
            ("version", _) => {}
            ("track_script", _) => t.note(
                child,
                "lb runs no scripts: ha.track lowers the priority (weight) or puts the \
                 instance in fault (weight 0) while a service has too few healthy backends",
            ),
            ("track_interface", _) => t.note(
                child,
                "lb puts an instance in fault when its own interface goes down; other \
                 interfaces are not tracked",
            ),
            ("track_process" | "track_file" | "track_bfd", _) => t.note(
                child,
                "lb tracks services' healthy backends (ha.track), nothing else",
            ),
            ("garp_master_repeat", Some(value)) => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_GARP_REPEAT).contains(&n) => {
                    set_once(t, &mut garp.repeat, n, child, "garp_repeat");
                }
                _ => t.note(child, format!("lb announces 1 to {MAX_GARP_REPEAT} times")),
            },
            ("garp_master_delay", Some(value)) => match seconds(value) {
                Some(d) if d <= MAX_GARP_INTERVAL => {
                    set_once(t, &mut garp.interval, d, child, "garp_interval");
                }
                _ => t.note(
                    child,
                    "lb spaces announcements by at most 60 s: not carried over",
                ),
            },
            ("lvs_sync_daemon_interface", Some(name)) => sync.push((child.clone(), name.into())),
            (
                "notify"
                | "notify_master"
                | "notify_backup"
                | "notify_fault"
                | "notify_stop"
                | "notify_master_rx_lower_pri",
                _,
            ) => t.note(
                child,
                "lb runs no scripts on state changes: lb ha and the metrics report them",
            ),
            ("smtp_alert", _) => t.note(child, "lb sends no mail"),
            ("use_vmac" | "vmac_xmit_base", _) => t.note(
                child,
                "lb uses the interface's own MAC address (gratuitous ARP moves the floating IPs)",
            ),
            ("virtual_routes" | "virtual_rules", _) => t.note(
                child,
                "lb adds no routes or rules on becoming master: keep them in the host's network \
                 configuration",
            ),
            _ => t.note(child, "no counterpart in lb: not carried over"),
        }
    }
    let Some(interface) = interface else {
        t.note(statement, "refused: no interface");
        return None;
    };
    let Some(virtual_router_id) = virtual_router_id else {
        t.note(statement, "refused: no virtual_router_id");
        return None;
    };
    for (entry, dev) in devices {
        if dev != interface {
            t.note(
                &entry,
                format!(
                    "lb adds floating IPs to the instance's interface ({interface}), not to {dev}"
                ),
            );
        }
    }
    instance.interface = interface;
    instance.virtual_router_id = virtual_router_id;
    instance.priority = priority;
    Some(instance)
}

/// A section-wide setting, from the first instance that writes it.
fn set_once<T: PartialEq + Copy + std::fmt::Debug>(
    t: &mut Translator<'_>,
    slot: &mut Option<(T, Statement)>,
    value: T,
    statement: &Statement,
    key: &str,
) {
    match slot {
        None => *slot = Some((value, statement.clone())),
        Some((first, at)) if *first != value => {
            let at = at.at.clone();
            t.note(
                statement,
                format!("ha.{key} holds for every instance: the one at {at} is written"),
            );
        }
        Some(_) => {}
    }
}

/// `virtual_ipaddress { ADDR[/LEN] [dev IF] [label L] ... }`.
/// `devices` gets each `dev` written, to compare with the interface.
fn floating(
    t: &mut Translator<'_>,
    block: &Statement,
    out: &mut Vec<IpNet>,
    devices: &mut Vec<(Statement, String)>,
    excluded: bool,
) {
    if excluded {
        t.note(
            block,
            "lb advertises every floating IP: these are added to the instance's floating_ips",
        );
    }
    for entry in block.children() {
        let written = entry.keyword();
        let parsed = written
            .parse::<IpNet>()
            .ok()
            .or_else(|| written.parse::<IpAddr>().ok().map(IpNet::from));
        let Some(address) = parsed else {
            t.note(entry, "not an address: left out");
            continue;
        };
        let mut options = entry.args().iter();
        while let Some(option) = options.next() {
            match option.as_str() {
                "dev" => {
                    let dev = options.next().cloned().unwrap_or_default();
                    devices.push((entry.clone(), dev));
                }
                "label" | "scope" | "brd" | "broadcast" => {
                    options.next();
                    t.note(
                        entry,
                        format!("{option}: not carried over (lb adds the address plain)"),
                    );
                }
                other => t.note(entry, format!("{other}: not carried over")),
            }
        }
        if out.contains(&address) {
            t.note(entry, "listed twice: written once");
        } else {
            out.push(address);
        }
    }
}

/// `ha:` from the instances (none: no section).
pub(super) fn section(instances: Vec<DraftInstance>, garp: Garp) -> Option<DraftHa> {
    let interface = instances.first()?.interface.clone();
    Some(DraftHa {
        interface,
        garp_repeat: garp.repeat.map(|(n, _)| n),
        garp_interval: garp.interval.map(|(d, _)| d),
        instances,
    })
}

//! What a configuration asks of the host it runs on: the interfaces it
//! names exist, and the HA interface has an address to send VRRP from
//! (IPv4, or IPv6 link-local for an instance whose floating IPs are all
//! IPv6). `lb check` prints these as warnings (it may be run on another
//! machine than the balancer); `lb run` refuses to start on them, before it
//! changes anything.

use crate::config::{Config, ConfigProblem};

/// The problems of `config` on this host, in the current network
/// namespace; lines are not filled in (see [`crate::config::locate`]).
pub fn problems(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut push = |path: String, message: String| {
        problems.push(ConfigProblem {
            path,
            line: None,
            message,
        });
    };
    for (i, interface) in config.interfaces.iter().enumerate() {
        if crate::netlink::ifindex(&interface.name).is_err() {
            push(
                format!("interfaces[{i}].name"),
                format!("no interface {:?} on this host", interface.name),
            );
        }
    }
    if let Some(ha) = &config.ha {
        if crate::netlink::ifindex(&ha.interface).is_err() {
            push(
                "ha.interface".into(),
                format!("no interface {:?} on this host", ha.interface),
            );
        } else {
            let family =
                crate::vrrp::Family::for_floating(ha.floating_ips.iter().map(ipnet::IpNet::addr));
            let (netlink_family, what) = match family {
                crate::vrrp::Family::V4 => (crate::netlink::Family::V4, "IPv4 address"),
                crate::vrrp::Family::V6 => (
                    crate::netlink::Family::V6,
                    "IPv6 link-local address (its floating IPs are all IPv6, so VRRP runs \
                     over IPv6)",
                ),
            };
            match crate::netlink::primary_address(&ha.interface, netlink_family) {
                Ok(Some(_)) => {}
                Ok(None) => push(
                    "ha.interface".into(),
                    format!(
                        "{} has no {what}: VRRP advertisements are sent from it",
                        ha.interface
                    ),
                ),
                Err(error) => push("ha.interface".into(), format!("{error:#}")),
            }
        }
    }
    problems
}

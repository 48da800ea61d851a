//! What a configuration asks of the host it runs on: the interfaces it
//! names exist, and the HA interface has an IPv4 address to send VRRP
//! from. `lb check` prints these as warnings (it may be run on another
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
    let sections = config.ha.iter().map(|ha| (ha, ha.instances()));
    let mut seen: Vec<String> = Vec::new();
    for (ha, instances) in sections {
        for (i, instance) in instances.iter().enumerate() {
            let interface = &instance.interface;
            if seen.contains(interface) {
                continue;
            }
            seen.push(interface.clone());
            let path = ha.path_of(i, "interface");
            if crate::netlink::ifindex(interface).is_err() {
                push(path, format!("no interface {interface:?} on this host"));
            } else {
                match crate::ha::primary_ipv4(interface) {
                    Ok(Some(_)) => {}
                    Ok(None) => push(
                        path,
                        format!(
                            "{interface} has no IPv4 address: VRRP advertisements are sent from its \
                         first IPv4 address"
                        ),
                    ),
                    Err(error) => push(path, format!("{error:#}")),
                }
            }
        }
    }
    problems
}

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
    if let Some(ha) = &config.ha {
        if crate::netlink::ifindex(&ha.interface).is_err() {
            push(
                "ha.interface".into(),
                format!("no interface {:?} on this host", ha.interface),
            );
        } else {
            match crate::ha::primary_ipv4(&ha.interface) {
                Ok(Some(_)) => {}
                Ok(None) => push(
                    "ha.interface".into(),
                    format!(
                        "{} has no IPv4 address: VRRP advertisements are sent from its first \
                         IPv4 address",
                        ha.interface
                    ),
                ),
                Err(error) => push("ha.interface".into(), format!("{error:#}")),
            }
        }
    }
    problems
}

//! The operator documentation keeps up with the code: every verdict reason
//! the data plane counts (`lb stats`, `lb_verdicts_total`) is explained in
//! deploy/TROUBLESHOOTING.md's table, and the NAT default-route advice in
//! deploy/README.md names the gateway each example configuration uses.

use lb_common::Reason;

const TROUBLESHOOTING: &str = include_str!("../../deploy/TROUBLESHOOTING.md");
const DEPLOY: &str = include_str!("../../deploy/README.md");

/// The table rows' first cells, e.g. "`drop_denied`, `drop_rate_limited`".
fn explained() -> Vec<String> {
    TROUBLESHOOTING
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" |").next())
        .flat_map(|cell| cell.split(", "))
        .map(|name| name.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn troubleshooting_explains_every_verdict_reason() {
    let explained = explained();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|reason| reason.name())
        .filter(|name| {
            !explained.iter().any(|row| {
                row == name
                    || row
                        .strip_suffix('*')
                        .is_some_and(|prefix| name.starts_with(prefix))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/TROUBLESHOOTING.md does not explain {missing:?}"
    );
}

#[test]
fn nat_gateway_advice_matches_the_examples() {
    let ha = include_str!("../../deploy/lb.ha-a.yaml");
    assert!(ha.contains("floating_ips: [192.0.2.254/24]"), "{ha}");
    assert!(
        DEPLOY.contains("ip route replace default via 192.0.2.254"),
        "deploy/README.md: the HA pair's NAT backends route via the floating IP"
    );
    let modes = include_str!("../../deploy/lb.modes.yaml");
    assert!(modes.contains("eth1 (192.0.2.1/24)"), "{modes}");
    assert!(
        DEPLOY.contains("ip route replace default via 192.0.2.1 "),
        "deploy/README.md: a single balancer's NAT backends route via its eth1"
    );
}

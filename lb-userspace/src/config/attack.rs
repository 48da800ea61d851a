//! `guard.attack` (docs/DESIGN.md §2.3, §5): floods from spoofed sources, met per
//! VIP. A VIP whose new flows cross a rate, or whose new TCP flows are
//! mostly left half-open, is "under attack" until it has been quiet for a
//! while; meanwhile a bare SYN that would open a new flow to it passes only
//! from a source that proved itself (see `lb-ebpf/src/attack.rs`).

use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;

/// `guard.attack`. At least one threshold is needed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardAttack {
    /// New flows per second to one VIP (all its services, every source
    /// together) over which it is under attack.
    #[serde(default)]
    pub new_flows_per_second: Option<u32>,
    /// Share (0 to 1, exclusive) of a VIP's new TCP flows left half-open
    /// (a bare SYN and nothing after it) over which it is under attack,
    /// once its new flows reach [`GuardAttack::share_min_rate`].
    #[serde(default)]
    pub half_open_share: Option<f64>,
    /// How long a VIP must stay under both thresholds to leave the attack
    /// state.
    #[serde(default = "default_quiet_for", with = "super::duration")]
    pub quiet_for: Duration,
    /// How long a source that proved itself (a retransmitted SYN, a
    /// completed handshake, a UDP flow that went on before the attack)
    /// passes while a VIP is under attack.
    #[serde(default = "default_verified_for", with = "super::duration")]
    pub verified_for: Duration,
    /// New flows a second one proven source may open to a VIP under
    /// attack: a spoofer using a known client's address gets no more.
    #[serde(default = "default_source_flows")]
    pub source_flows_per_second: u32,
}

/// New flows per second a VIP needs before its half-open share is judged
/// at all (when `new_flows_per_second` is unset): a handful of clients
/// whose SYNs go unanswered is no attack.
pub const SHARE_MIN_RATE: u32 = 100;

const fn default_quiet_for() -> Duration {
    Duration::from_secs(30)
}

const fn default_verified_for() -> Duration {
    Duration::from_mins(10)
}

const fn default_source_flows() -> u32 {
    100
}

impl GuardAttack {
    /// New UDP flows a second from unknown sources that each service of a
    /// VIP under attack still admits: a tenth of `new_flows_per_second`,
    /// else [`SHARE_MIN_RATE`] — enough for new clients to get through,
    /// far under the rate that made it an attack.
    pub fn unknown_udp_per_second(&self) -> u32 {
        self.new_flows_per_second
            .map_or(SHARE_MIN_RATE, |rate| (rate / 10).max(1))
    }

    /// The new-flow rate a VIP needs before its half-open share counts: a
    /// tenth of `new_flows_per_second`, at least [`SHARE_MIN_RATE`].
    pub fn share_min_rate(&self) -> u32 {
        self.new_flows_per_second
            .map_or(SHARE_MIN_RATE, |rate| (rate / 10).max(SHARE_MIN_RATE))
    }
}

/// `guard.attack`: some threshold; a rate of at least 1, a share strictly
/// between 0 and 1; `quiet_for` 1s..1h; `verified_for` 1s..24h;
/// `source_flows_per_second` at least 1.
pub(super) fn check_guard_attack(attack: &GuardAttack, problems: &mut Problems) {
    if attack.new_flows_per_second.is_none() && attack.half_open_share.is_none() {
        problems.push(
            "guard.attack",
            "set new_flows_per_second, half_open_share or both (or omit attack to turn it off)"
                .into(),
        );
    }
    if attack.new_flows_per_second == Some(0) {
        problems.push(
            "guard.attack.new_flows_per_second",
            "must be at least 1 (omit it to turn it off)".into(),
        );
    }
    if let Some(share) = attack.half_open_share
        && !(share > 0.0 && share < 1.0)
    {
        problems.push(
            "guard.attack.half_open_share",
            format!("{share} is not between 0 and 1 (exclusive)"),
        );
    }
    if attack.source_flows_per_second == 0 {
        problems.push(
            "guard.attack.source_flows_per_second",
            "must be at least 1: a proven client must be able to connect".into(),
        );
    }
    for (name, value, max) in [
        ("quiet_for", attack.quiet_for, Duration::from_hours(1)),
        (
            "verified_for",
            attack.verified_for,
            Duration::from_hours(24),
        ),
    ] {
        if value < Duration::from_secs(1) || value > max {
            problems.push(
                format!("guard.attack.{name}"),
                format!(
                    "{} is outside 1s..{}",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, tests::MINIMAL};

    #[test]
    fn guard_attack_parses_with_defaults_and_refuses_bad_values() {
        let text = format!("{MINIMAL}guard:\n  attack: {{ new_flows_per_second: 20000 }}\n");
        let attack = Config::parse(&text).unwrap().guard.attack.unwrap();
        assert_eq!(attack.new_flows_per_second, Some(20_000));
        assert_eq!(attack.half_open_share, None);
        assert_eq!(attack.quiet_for, Duration::from_secs(30));
        assert_eq!(attack.verified_for, Duration::from_mins(10));
        assert_eq!(attack.share_min_rate(), 2_000);
        assert_eq!(attack.source_flows_per_second, 100);
        assert_eq!(attack.unknown_udp_per_second(), 2_000);
        for (attack, path) in [
            ("{ quiet_for: 10s }", "guard.attack"),
            (
                "{ new_flows_per_second: 0 }",
                "guard.attack.new_flows_per_second",
            ),
            ("{ half_open_share: 1.0 }", "guard.attack.half_open_share"),
            ("{ half_open_share: 0 }", "guard.attack.half_open_share"),
            (
                "{ half_open_share: 0.5, quiet_for: 500ms }",
                "guard.attack.quiet_for",
            ),
            (
                "{ half_open_share: 0.5, verified_for: 2d }",
                "guard.attack.verified_for",
            ),
            (
                "{ half_open_share: 0.5, source_flows_per_second: 0 }",
                "guard.attack.source_flows_per_second",
            ),
        ] {
            let text = format!("{MINIMAL}guard:\n  attack: {attack}\n");
            let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
                panic!("expected Invalid for {attack}");
            };
            assert_eq!(problems.len(), 1, "{attack}: {problems:?}");
            assert_eq!(problems[0].path, path, "{attack}");
        }
    }
}

//! `lb stats --watch`: per-second rates between two `lb stats` reports, as
//! one JSON object per interval (services with their backends nested, the
//! verdict reasons by name) or as a text table. Pure: the CLI fetches, times
//! and decides whether the terminal is redrawn in place.
//!
//! Rates only where they mean something: packets, bytes and new flows for
//! services and backends; packets only for verdict reasons (they count
//! packets); none (`null`) for a counter that went backwards — the
//! controller restarted or a backend came and went — rather than a bogus
//! figure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::{BackendStats, ServiceStats, StatsReport};

/// One interval of `lb stats --watch --output json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchReport {
    /// Seconds the rates are measured over.
    pub interval_seconds: f64,
    /// Per service, in configuration order.
    pub services: Vec<ServiceRates>,
    /// Packets per second per verdict reason.
    pub reasons: BTreeMap<String, Option<f64>>,
}

/// A service's rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRates {
    /// Name.
    pub name: String,
    /// Packets forwarded per second.
    pub packets_per_second: Option<f64>,
    /// Bytes forwarded per second.
    pub bytes_per_second: Option<f64>,
    /// Flows scheduled per second.
    pub new_flows_per_second: Option<f64>,
    /// Its backends.
    pub backends: Vec<BackendRates>,
}

/// A backend's rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendRates {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Packets forwarded per second.
    pub packets_per_second: Option<f64>,
    /// Bytes forwarded per second.
    pub bytes_per_second: Option<f64>,
    /// Flows scheduled per second.
    pub new_flows_per_second: Option<f64>,
}

/// `(now - before) / seconds`, one decimal; `None` when the counter went
/// backwards, or was not there before.
fn rate(before: Option<u64>, now: u64, seconds: f64) -> Option<f64> {
    let before = before?;
    let delta = now.checked_sub(before)?;
    #[allow(clippy::cast_precision_loss, reason = "rates are shown to one decimal")]
    let per_second = delta as f64 / seconds;
    Some((per_second * 10.0).round() / 10.0)
}

fn backend_rates(before: Option<&BackendStats>, now: &BackendStats, s: f64) -> BackendRates {
    BackendRates {
        address: now.address.clone(),
        port: now.port,
        packets_per_second: rate(before.map(|b| b.packets), now.packets, s),
        bytes_per_second: rate(before.map(|b| b.bytes), now.bytes, s),
        new_flows_per_second: rate(before.map(|b| b.new_flows), now.new_flows, s),
    }
}

fn service_rates(before: Option<&ServiceStats>, now: &ServiceStats, s: f64) -> ServiceRates {
    ServiceRates {
        name: now.name.clone(),
        packets_per_second: rate(before.map(|b| b.packets), now.packets, s),
        bytes_per_second: rate(before.map(|b| b.bytes), now.bytes, s),
        new_flows_per_second: rate(before.map(|b| b.new_flows), now.new_flows, s),
        backends: now
            .backends
            .iter()
            .map(|backend| {
                let was = before.and_then(|b| {
                    b.backends
                        .iter()
                        .find(|x| x.address == backend.address && x.port == backend.port)
                });
                backend_rates(was, backend, s)
            })
            .collect(),
    }
}

/// The rates between `previous` and `current`, `seconds` apart.
pub fn rates(previous: &StatsReport, current: &StatsReport, seconds: f64) -> WatchReport {
    let seconds = seconds.max(1e-3);
    WatchReport {
        interval_seconds: (seconds * 1000.0).round() / 1000.0,
        services: current
            .services
            .iter()
            .map(|service| {
                let was = previous.services.iter().find(|s| s.name == service.name);
                service_rates(was, service, seconds)
            })
            .collect(),
        reasons: current
            .reasons
            .iter()
            .map(|(reason, packets)| {
                let was = previous.reasons.get(reason).copied();
                (reason.clone(), rate(was, *packets, seconds))
            })
            .collect(),
    }
}

fn cell(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

/// The text table: services, their backends indented under them, then the
/// verdict reasons that moved. No terminal escapes.
pub fn render(report: &WatchReport) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<44} {:>12} {:>14} {:>10}",
        "service / backend", "packets/s", "bytes/s", "flows/s"
    );
    for s in &report.services {
        let _ = writeln!(
            text,
            "{:<44} {:>12} {:>14} {:>10}",
            s.name,
            cell(s.packets_per_second),
            cell(s.bytes_per_second),
            cell(s.new_flows_per_second)
        );
        for b in &s.backends {
            let _ = writeln!(
                text,
                "  {:<42} {:>12} {:>14} {:>10}",
                format!("{}:{}", b.address, b.port),
                cell(b.packets_per_second),
                cell(b.bytes_per_second),
                cell(b.new_flows_per_second)
            );
        }
    }
    let moved: Vec<_> = report
        .reasons
        .iter()
        .filter(|(_, rate)| rate.is_none_or(|r| r > 0.0))
        .collect();
    if !moved.is_empty() {
        let _ = writeln!(text, "\n{:<44} {:>12}", "verdict reason", "packets/s");
        for (reason, rate) in moved {
            let _ = writeln!(text, "{reason:<44} {:>12}", cell(*rate));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(packets: u64, backend_packets: u64, denied: u64) -> StatsReport {
        StatsReport {
            services: vec![ServiceStats {
                name: "web".into(),
                packets,
                bytes: packets * 100,
                new_flows: packets / 10,
                backends: vec![BackendStats {
                    address: "192.0.2.11".into(),
                    port: 8080,
                    packets: backend_packets,
                    bytes: backend_packets * 100,
                    new_flows: backend_packets / 10,
                }],
            }],
            drops: BTreeMap::from([("drop_denied".into(), denied)]),
            reasons: BTreeMap::from([
                ("drop_denied".into(), denied),
                ("pass_no_service".into(), 7),
            ]),
            connection_table: crate::conns::ConnTableStats::default(),
        }
    }

    #[test]
    fn services_and_backends_are_fields() {
        let watch = rates(&report(100, 50, 0), &report(300, 250, 10), 2.0);
        let json = serde_json::to_value(&watch).unwrap();
        assert_eq!(json["services"][0]["name"], "web");
        assert_eq!(json["services"][0]["packets_per_second"], 100.0);
        assert_eq!(json["services"][0]["bytes_per_second"], 10_000.0);
        let backend = &json["services"][0]["backends"][0];
        assert_eq!(backend["address"], "192.0.2.11");
        assert_eq!(backend["port"], 8080);
        assert_eq!(backend["new_flows_per_second"], 10.0);
        assert_eq!(json["reasons"]["drop_denied"], 5.0);
        // Reasons count packets: no bytes or flows to show.
        assert!(json["reasons"]["drop_denied"].is_number());
    }

    #[test]
    fn a_counter_that_went_backwards_has_no_rate() {
        let watch = rates(&report(300, 250, 10), &report(5, 5, 0), 1.0);
        assert_eq!(watch.services[0].packets_per_second, None);
        assert_eq!(watch.services[0].backends[0].packets_per_second, None);
        let text = render(&watch);
        assert!(text.contains("web"), "{text}");
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains(" -")),
            "{text}"
        );
    }

    #[test]
    fn text_has_no_escapes_and_only_moving_reasons() {
        let text = render(&rates(&report(100, 50, 0), &report(300, 250, 10), 1.0));
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("  192.0.2.11:8080"), "{text}");
        assert!(text.contains("drop_denied"), "{text}");
        assert!(!text.contains("pass_no_service"), "{text}");
    }
}

//! The Grafana dashboard (`deploy/grafana/lb.json`) and the Prometheus alert
//! rules (`deploy/prometheus/lb-alerts.yaml`) name only metrics lb serves:
//! a real `lb run` with every feature whose metrics they use (health checks,
//! a standby tier, VRRP, the automatic guard and `guard.attack`) is scraped,
//! and every `lb_...` name in either file (in expressions, variables and
//! annotations alike) must be on its `/metrics` page. `promtool check rules`
//! accepts the rules; the dashboard has the rows and the datasource input
//! it claims; each rule has a summary and a description.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    bed::{Bed, tcp_request},
    netns::wait_until,
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(deploy("grafana/lb.json")).expect("deploy/grafana/lb.json");
    serde_json::from_str(&text).expect("lb.json is JSON")
}

fn rules() -> serde_json::Value {
    let text = std::fs::read_to_string(deploy("prometheus/lb-alerts.yaml"))
        .expect("deploy/prometheus/lb-alerts.yaml");
    serde_saphyr::from_str(&text).expect("lb-alerts.yaml is YAML")
}

/// Every string in a JSON / YAML document.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The identifiers in `text` that start with `lb_` (a `PromQL` metric name
/// is `[a-zA-Z_:][a-zA-Z0-9_:]*`; one preceded by a name character is part
/// of another identifier).
fn lb_names(text: &str) -> BTreeSet<String> {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("lb_") {
        if text[..at].ends_with(name) {
            continue;
        }
        let end = text[at..]
            .find(|c: char| !name(c))
            .map_or(text.len(), |n| at + n);
        found.insert(text[at..end].to_string());
    }
    found
}

/// Every `lb_` name the dashboard and the rules reference.
fn referenced() -> BTreeMap<String, &'static str> {
    let mut names = BTreeMap::new();
    for (file, document) in [("lb.json", dashboard()), ("lb-alerts.yaml", rules())] {
        let mut texts = Vec::new();
        strings(&document, &mut texts);
        for text in texts {
            for name in lb_names(&text) {
                names.insert(name, file);
            }
        }
    }
    names
}

/// The sample names a `/metrics` page (`OpenMetrics` text) serves: every
/// sample line's name, and for each declared family (`# TYPE`) the names
/// its samples take (`_total` for a counter, `_bucket` / `_sum` / `_count`
/// for a histogram), so a family with no series yet (no denial so far)
/// still counts as served.
fn served(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut fields = rest.split_whitespace();
            let (Some(family), Some(kind)) = (fields.next(), fields.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The referenced names `page` does not serve.
fn unserved(referenced: &BTreeMap<String, &'static str>, page: &str) -> Vec<String> {
    let served = served(page);
    referenced
        .iter()
        .filter(|(name, _)| !served.contains(*name))
        .map(|(name, file)| format!("{name} (in {file})"))
        .collect()
}

/// The check catches a misspelt name: a page serving `lb_backend_up` and a
/// counter family does not serve `lb_backend_upp` nor the counter without
/// `_total`.
#[test]
fn a_misspelt_name_is_caught() {
    let page = "# TYPE lb_backend_up gauge\nlb_backend_up{service=\"web\"} 1\n\
                # TYPE lb_guard_denials counter\n# EOF\n";
    let mut names = BTreeMap::new();
    for name in [
        "lb_backend_up",
        "lb_backend_upp",
        "lb_guard_denials_total",
        "lb_guard_denials",
    ] {
        names.insert(name.to_string(), "test");
    }
    assert_eq!(
        unserved(&names, page),
        ["lb_backend_upp (in test)", "lb_guard_denials (in test)"]
    );
    assert_eq!(
        lb_names("sum(rate(lb_a_total[5m])) / lb_b{x=\"lb_c\"} + xlb_d"),
        ["lb_a_total", "lb_b", "lb_c"].map(String::from).into()
    );
}

/// `promtool check rules` accepts the rules; each has a summary and a
/// description; the alerts the deploy guide lists are there.
#[test]
fn promtool_accepts_the_rules() {
    let output = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/lb-alerts.yaml"))
        .output()
        .expect("promtool (package prometheus; `cargo xtask setup` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool check rules: {text}");
    println!("{text}");

    let rules = rules();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("an alert rule");
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{alert} has no {annotation}"
                );
            }
            alerts.insert(alert.to_string());
        }
    }
    for expected in [
        "LbBackendDown",
        "LbTierFailover",
        "LbNoHealthyBackend",
        "LbHaFlapping",
        "LbHaSplitBrain",
        "LbUnderAttack",
        "LbConnectionTableEvictions",
    ] {
        assert!(alerts.contains(expected), "no {expected}: {alerts:?}");
    }
}

/// The dashboard: schema 39, a `DS_PROMETHEUS` input every panel and
/// target uses, and a row for each part of lb.
#[test]
fn the_dashboard_has_its_rows_and_datasource_input() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Services",
            "Backends",
            "Drops",
            "High availability",
            "Guard",
            "Connection table"
        ]
    );
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                target["expr"].as_str().is_some_and(|e| e.contains("lb_")),
                "{title}: {target}"
            );
        }
    }
}

#[test]
fn every_metric_the_dashboard_and_rules_name_is_served() {
    let referenced = referenced();
    assert!(referenced.len() >= 20, "{referenced:?}");
    let mut bed = Bed::new(&[11, 21]);
    let pid = std::process::id();
    let socket = format!("/run/lb/gra-{pid}.sock");
    bed.start_lb(&format!(
        "instance: gra{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - name: web\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n\
         \x20   health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n\
         \x20   backends:\n\
         \x20     - {{ address: 192.0.2.11, port: 8080 }}\n\
         \x20     - {{ address: 192.0.2.21, port: 8080, tier: 1 }}\n\
         ha: {{ interface: eth1, virtual_router_id: 53, priority: 150, \
         advert_interval: 100ms, floating_ips: [192.0.2.254/24] }}\n\
         control: {{ socket: {socket}, metrics: '127.0.0.1:9477' }}\n\
         guard:\n\
         \x20 auto: {{ packets_per_second: 5000, new_flows_per_second: 1000, \
         syn_only_per_second: 200, deny_for: 60s }}\n\
         \x20 attack: {{ new_flows_per_second: 5000, half_open_share: 0.5, quiet_for: 5s, \
         source_flows_per_second: 1000 }}\n"
    ));
    let target: std::net::SocketAddr = "203.0.113.10:80".parse().unwrap();
    let served_once = wait_until(Duration::from_secs(15), || {
        bed.client.run(move || tcp_request(target, None)).is_some()
    });
    assert!(served_once, "no answer through the VIP");
    // Health checks have run (their latency is on the page) and VRRP has
    // settled.
    let ready = wait_until(Duration::from_secs(15), || {
        let page = bed.lb.metrics_page();
        page.contains("lb_backend_check_latency_microseconds{")
            && page.contains("lb_ha_instance_state{vrid=\"53\",state=\"master\"} 1")
    });
    let page = bed.lb.metrics_page();
    assert!(
        ready,
        "health checks or VRRP never showed on /metrics:\n{page}"
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");

    let missing = unserved(&referenced, &page);
    println!(
        "{} names referenced, all served: {:?}",
        referenced.len(),
        referenced.keys().collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "referenced but not served by lb's /metrics: {missing:?}\n{page}"
    );
}

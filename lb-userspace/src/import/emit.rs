//! The draft written as lb's YAML (docs/DESIGN.md §5): block style, one
//! backend per line, the keepalived comments before the services and
//! backends they described, and every string quoted unless it plainly
//! reads as itself.

use std::{fmt::Write as _, path::Path, time::Duration};

use super::keepalived::{Draft, DraftCheck, DraftHa, DraftService};
use crate::config::CheckKind;

/// The configuration file's text.
pub(super) fn yaml(draft: &Draft, root: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `lb import keepalived` from {}; its notes say what was not carried over.",
        root.display()
    );
    let _ = writeln!(out, "instance: {}", scalar(&draft.instance));
    out.push_str("interfaces:\n");
    for name in &draft.interfaces {
        let _ = writeln!(out, "  - name: {}", scalar(name));
    }
    if draft.services.is_empty() {
        out.push_str("services: []\n");
    } else {
        out.push_str("services:\n");
        for service in &draft.services {
            write_service(&mut out, service);
        }
    }
    if let Some(ha) = &draft.ha {
        write_ha(&mut out, ha);
    }
    if let Some(sync) = &draft.sync {
        out.push_str("sync:\n");
        let _ = writeln!(out, "  interface: {}", scalar(&sync.interface));
        if let Some(port) = sync.port {
            let _ = writeln!(out, "  port: {port}");
        }
        let _ = writeln!(out, "  secret_file: {}", scalar(&sync.secret_file));
    }
    out
}

fn comments(out: &mut String, indent: &str, lines: &[String]) {
    for line in lines {
        if line.is_empty() {
            let _ = writeln!(out, "{indent}#");
        } else {
            let _ = writeln!(out, "{indent}# {line}");
        }
    }
}

fn write_service(out: &mut String, service: &DraftService) {
    comments(out, "  ", &service.comments);
    let _ = writeln!(out, "  - name: {}", scalar(&service.name));
    let _ = writeln!(out, "    vip: {}", scalar(&service.vip.to_string()));
    let _ = writeln!(out, "    port: {}", service.port);
    let _ = writeln!(out, "    protocol: {}", service.protocol.name());
    let _ = writeln!(out, "    scheduler: {}", service.scheduler.name());
    let _ = writeln!(out, "    forwarding: {}", service.forwarding.name());
    if service.backends.is_empty() {
        out.push_str("    backends: []\n");
    } else {
        out.push_str("    backends:\n");
    }
    for backend in &service.backends {
        comments(out, "      ", &backend.comments);
        let mut fields = vec![format!("address: {}", scalar(&backend.address.to_string()))];
        if let Some(port) = backend.port {
            fields.push(format!("port: {port}"));
        }
        fields.push(format!("weight: {}", backend.weight));
        if backend.tier != 0 {
            fields.push(format!("tier: {}", backend.tier));
        }
        let _ = writeln!(out, "      - {{ {} }}", fields.join(", "));
    }
    if let Some(check) = &service.check {
        write_check(out, check);
    }
}

fn write_check(out: &mut String, check: &DraftCheck) {
    out.push_str("    health_check:\n");
    let kind = match check.kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Http => "http",
        CheckKind::Https => "https",
        CheckKind::Udp => "udp",
        CheckKind::Exec => "exec",
        CheckKind::None => "none",
    };
    let _ = writeln!(out, "      kind: {kind}");
    if let Some(path) = &check.path {
        let _ = writeln!(out, "      path: {}", scalar(path));
    }
    if let Some(status) = check.expect_status {
        let _ = writeln!(out, "      expect_status: {status}");
    }
    if let Some(host) = &check.host {
        let _ = writeln!(out, "      host: {}", scalar(host));
    }
    if let Some(port) = check.port {
        let _ = writeln!(out, "      port: {port}");
    }
    if let Some(send) = &check.send {
        let _ = writeln!(out, "      send: {}", quoted(send));
    }
    if let Some(command) = &check.command {
        let words: Vec<String> = command.iter().map(|w| quoted(w)).collect();
        let _ = writeln!(out, "      command: [{}]", words.join(", "));
    }
    let _ = writeln!(out, "      interval: {}", duration(check.interval));
    let _ = writeln!(out, "      timeout: {}", duration(check.timeout));
    let _ = writeln!(out, "      rise: {}", check.rise);
    if let Some(fall) = check.fall {
        let _ = writeln!(out, "      fall: {fall}");
    }
}

fn write_ha(out: &mut String, ha: &DraftHa) {
    out.push_str("ha:\n");
    let _ = writeln!(out, "  interface: {}", scalar(&ha.interface));
    if let Some(repeat) = ha.garp_repeat {
        let _ = writeln!(out, "  garp_repeat: {repeat}");
    }
    if let Some(interval) = ha.garp_interval {
        let _ = writeln!(out, "  garp_interval: {}", duration(interval));
    }
    out.push_str("  instances:\n");
    for instance in &ha.instances {
        comments(out, "    ", &instance.comments);
        let _ = writeln!(out, "    # vrrp_instance {}", instance.name);
        let _ = writeln!(
            out,
            "    - virtual_router_id: {}",
            instance.virtual_router_id
        );
        let _ = writeln!(out, "      priority: {}", instance.priority);
        if instance.interface != ha.interface {
            let _ = writeln!(out, "      interface: {}", scalar(&instance.interface));
        }
        if let Some(interval) = instance.advert_interval {
            let _ = writeln!(out, "      advert_interval: {}", duration(interval));
        }
        if !instance.preempt {
            out.push_str("      preempt: false\n");
        }
        if let Some(delay) = instance.preempt_delay {
            let _ = writeln!(out, "      preempt_delay: {}", duration(delay));
        }
        if !instance.unicast_peers.is_empty() {
            let peers: Vec<String> = instance
                .unicast_peers
                .iter()
                .map(|p| scalar(&p.to_string()))
                .collect();
            let _ = writeln!(out, "      unicast_peers: [{}]", peers.join(", "));
        }
        let floating: Vec<String> = instance
            .floating_ips
            .iter()
            .map(|ip| scalar(&ip.to_string()))
            .collect();
        let _ = writeln!(out, "      floating_ips: [{}]", floating.join(", "));
    }
}

/// `6s`, `500ms`, `1m`: as lb's durations are written.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A string as a YAML scalar: plain when it cannot be read as anything
/// else, double-quoted otherwise.
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && !text.starts_with(['-', '.'])
        && text.parse::<f64>().is_err()
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        text.to_string()
    } else {
        quoted(text)
    }
}

/// Double-quoted: a JSON string is a valid YAML double-quoted scalar.
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_when_they_could_read_otherwise() {
        for (text, expected) in [
            ("LVS_DEVEL", "LVS_DEVEL"),
            ("192.0.2.1", "192.0.2.1"),
            ("/health", "/health"),
            ("2001:db8::1", "\"2001:db8::1\""),
            ("192.0.2.0/24", "192.0.2.0/24"),
            ("yes", "\"yes\""),
            ("1.5", "\"1.5\""),
            ("-x", "\"-x\""),
            ("a b", "\"a b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("", "\"\""),
        ] {
            assert_eq!(scalar(text), expected, "{text}");
        }
        assert_eq!(duration(Duration::from_secs(6)), "6s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
    }
}

//! A `real_server`'s checker as the service's `health_check`: the kind,
//! what it asks for, and keepalived's timing (`delay_loop`,
//! `connect_timeout`, `retry`) as lb's (`interval`, `timeout`, `fall`).

use std::time::Duration;

use super::{
    DraftCheck, KEEPALIVED_CONNECT_TIMEOUT, ServiceSettings, Statement, Translator, seconds,
};
use crate::config::CheckKind;

const CHECKERS: &[&str] = &[
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "MISC_CHECK",
    "UDP_CHECK",
    "SMTP_CHECK",
    "PING_CHECK",
    "DNS_CHECK",
    "BFD_CHECK",
    "FILE_CHECK",
];

/// Timing settings noted wherever they are written.
pub(super) fn timing_note(t: &mut Translator<'_>, statement: &Statement) {
    let why = match statement.keyword() {
        "delay_before_retry" => {
            "lb spaces every check by the interval (delay_loop), failed or not; a failure is \
             confirmed by fall consecutive failures"
        }
        "warmup" => "lb starts all checks at once, spread by a small jitter",
        "inhibit_on_failure" => {
            "lb takes a failed backend out of the tables; its established flows are scheduled \
             again (keepalived's inhibit_on_failure left them on it at weight 0)"
        }
        _ => "no counterpart in lb: not carried over",
    };
    t.note(statement, why);
}

/// The first checker of `real_server` as a health check; further
/// checkers, and what a check cannot express, are noted.
#[allow(
    clippy::too_many_lines,
    reason = "one match arm per keepalived directive"
)]
pub(super) fn checker(
    t: &mut Translator<'_>,
    real_server: &Statement,
    settings: &ServiceSettings,
) -> Option<DraftCheck> {
    let mut found = None;
    let mut delay_loop = settings.delay_loop;
    let mut connect_timeout = settings.connect_timeout;
    let mut retry = settings.retry;
    for child in real_server.children() {
        let arg = child.args().first().map(String::as_str);
        match (child.keyword(), arg) {
            ("delay_loop", Some(value)) => {
                if let Some(d) = seconds(value).filter(|d| !d.is_zero()) {
                    delay_loop = d;
                }
            }
            ("connect_timeout", Some(value)) => connect_timeout = seconds(value),
            ("retry", Some(value)) => retry = value.parse().ok(),
            ("delay_before_retry" | "warmup", _) => timing_note(t, child),
            (keyword, _) if CHECKERS.contains(&keyword) => {
                if found.is_none() {
                    found = Some(child);
                } else {
                    t.note(
                        child,
                        "lb runs one health check per service: the first checker of the first \
                         real_server",
                    );
                }
            }
            _ => {}
        }
    }
    let checker = found?;
    let mut check = DraftCheck {
        kind: CheckKind::Tcp,
        path: None,
        expect_status: None,
        host: None,
        port: None,
        send: None,
        command: None,
        interval: delay_loop,
        timeout: Duration::ZERO,
        rise: 1,
        fall: None,
    };
    let mut misc_timeout = None;
    for child in checker.children() {
        let arg = child.args().first().map(String::as_str);
        match (child.keyword(), arg) {
            ("connect_port", Some(port)) => match port.parse() {
                Ok(port) => check.port = Some(port),
                Err(_) => t.note(child, "not a port: the backend's port is checked"),
            },
            ("connect_timeout", Some(value)) => connect_timeout = seconds(value),
            ("delay_loop", Some(value)) => {
                if let Some(d) = seconds(value).filter(|d| !d.is_zero()) {
                    check.interval = d;
                }
            }
            ("retry" | "nb_get_retry", Some(value)) => retry = value.parse().ok(),
            ("delay_before_retry" | "warmup", _) => timing_note(t, child),
            ("connect_ip", Some(ip))
                if real_server.args().first().map(String::as_str) != Some(ip) =>
            {
                t.note(child, "lb checks the backend's own address");
            }
            ("bindto" | "bind_port" | "bind_if", _) => t.note(
                child,
                "lb's checks leave from the address the host's routing picks",
            ),
            (
                "connect_ip" | "url" | "virtualhost" | "http_protocol" | "misc_path"
                | "misc_timeout" | "misc_dynamic" | "payload" | "require_reply" | "helo_name"
                | "host",
                _,
            ) => {}
            _ => t.note(
                child,
                "no counterpart in lb's health checks: not carried over",
            ),
        }
        if child.keyword() == "misc_timeout" {
            misc_timeout = arg.and_then(seconds);
        }
    }
    match checker.keyword() {
        "TCP_CHECK" => {}
        "HTTP_GET" | "SSL_GET" => http(t, checker, settings, &mut check),
        "MISC_CHECK" => {
            misc(t, checker, &mut check);
            // keepalived's default: the delay loop.
            connect_timeout = Some(misc_timeout.unwrap_or(check.interval));
        }
        "UDP_CHECK" => udp(t, checker, &mut check),
        "SMTP_CHECK" => t.note(
            checker,
            "lb has no SMTP check: tcp (the port accepts connections); the SMTP dialogue, \
             helo_name and host blocks are not checked",
        ),
        "PING_CHECK" => {
            check.kind = CheckKind::Exec;
            let wait = connect_timeout
                .unwrap_or(KEEPALIVED_CONNECT_TIMEOUT)
                .as_secs()
                .max(1);
            check.command = Some(vec![
                "sh".into(),
                "-c".into(),
                format!("exec ping -c 1 -W {wait} -- \"$LB_BACKEND_ADDRESS\""),
            ]);
            t.note(
                checker,
                "an exec check running ping once (lb has no ICMP check of its own; ping must be \
                 installed)",
            );
        }
        _ => {
            t.note(
                checker,
                "lb has no such check: the service gets none, and its backends are always up",
            );
            return None;
        }
    }
    check.timeout = connect_timeout.unwrap_or(KEEPALIVED_CONNECT_TIMEOUT);
    if check.timeout > check.interval {
        t.note(
            checker,
            format!(
                "timeout {} is longer than the interval: lb's timeout is at most the \
                 interval, {} written",
                humantime::format_duration(check.timeout),
                humantime::format_duration(check.interval)
            ),
        );
        check.timeout = check.interval;
    }
    if check.timeout.is_zero() {
        check.timeout = check.interval;
    }
    // keepalived marks a backend down after the first failure and `retry`
    // more (IPVS default 1).
    check.fall = Some(retry.unwrap_or(1).saturating_add(1));
    Some(check)
}

/// `HTTP_GET` / `SSL_GET`: the first `url`'s path and status.
fn http(
    t: &mut Translator<'_>,
    checker: &Statement,
    settings: &ServiceSettings,
    check: &mut DraftCheck,
) {
    check.kind = if checker.keyword() == "SSL_GET" {
        CheckKind::Https
    } else {
        CheckKind::Http
    };
    check.host.clone_from(&settings.virtualhost);
    let mut urls = 0;
    for child in checker.children() {
        match child.keyword() {
            "virtualhost" => check.host = child.args().first().cloned(),
            "http_protocol" => t.note(child, "lb sends HTTP/1.1 requests"),
            "url" => {
                urls += 1;
                if urls > 1 {
                    t.note(
                        child,
                        "lb checks one path per service: the first url's; this one is left out",
                    );
                    continue;
                }
                for part in child.children() {
                    match part.keyword() {
                        "path" => check.path = part.args().first().cloned(),
                        "status_code" => check.expect_status = status(t, part),
                        "digest" => t.note(
                            part,
                            "lb does not hash the body: it checks the status (and can check \
                             that the body contains a text, health_check.expect_body)",
                        ),
                        _ => t.note(part, "no counterpart in lb's http check: not carried over"),
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(path) = &check.path
        && !path.starts_with('/')
    {
        check.path = Some(format!("/{path}"));
    }
}

/// `status_code 200` → 200; a list or a range → its first code, noted.
fn status(t: &mut Translator<'_>, statement: &Statement) -> Option<u16> {
    let args = statement.args();
    let first = args
        .first()
        .and_then(|code| code.split('-').next())
        .and_then(|code| code.parse::<u16>().ok());
    if args.len() != 1 || args.first().is_some_and(|a| a.contains('-')) {
        t.note(
            statement,
            format!(
                "lb expects one status code: {} written",
                first.map_or_else(|| "none (200)".into(), |c| c.to_string())
            ),
        );
    }
    first
}

/// `MISC_CHECK`: `misc_path` as an exec check's command.
fn misc(t: &mut Translator<'_>, checker: &Statement, check: &mut DraftCheck) {
    check.kind = CheckKind::Exec;
    for child in checker.children() {
        match child.keyword() {
            "misc_path" => check.command = Some(split_command(&child.args().join(" "))),
            "misc_dynamic" => t.note(
                child,
                "an exec check's exit status is up (0) or down; it does not set the weight",
            ),
            "user" => t.note(child, "lb runs exec checks as its own user"),
            _ => {}
        }
    }
    if check.command.as_ref().is_none_or(Vec::is_empty) {
        t.note(
            checker,
            "no misc_path: the check has no command (lb check refuses it)",
        );
    }
}

/// `UDP_CHECK`: lb's udp check sends `payload` and waits for a reply.
fn udp(t: &mut Translator<'_>, checker: &Statement, check: &mut DraftCheck) {
    check.kind = CheckKind::Udp;
    check.send = Some(String::new());
    let mut reply = false;
    for child in checker.children() {
        match child.keyword() {
            "payload" => match hex_text(&child.args().concat()) {
                Some(text) => check.send = Some(text),
                None => t.note(
                    child,
                    "lb sends a text payload: these bytes are not text, an empty datagram is sent",
                ),
            },
            "require_reply" => {
                reply = true;
                if !child.args().is_empty() {
                    t.note(
                        child,
                        "lb accepts any reply (health_check.expect can ask for a text in it)",
                    );
                }
            }
            "min_reply_length" | "max_reply_length" => {
                t.note(child, "lb does not check a reply's length");
            }
            _ => {}
        }
    }
    if !reply {
        t.note(
            checker,
            "lb's udp check needs a reply from the backend (keepalived's, without \
             require_reply, only needed no ICMP error)",
        );
    }
}

/// Hexadecimal bytes as text, if they are UTF-8.
fn hex_text(hex: &str) -> Option<String> {
    let hex = hex.trim_start_matches("0x");
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A command line split into words as keepalived splits a script's:
/// whitespace separates, `'...'` and `"..."` keep spaces.
pub(super) fn split_command(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

//! The importer on keepalived configurations held in memory: each result
//! is read back with lb's own configuration parser.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;
use crate::config::{CheckKind, Forwarding, Protocol, Scheduler};

/// Files in memory.
pub(crate) struct Memory(BTreeMap<PathBuf, String>);

impl Files for Memory {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, bool)>> {
        let mut names = Vec::new();
        for path in self.0.keys() {
            if let Ok(rest) = path.strip_prefix(dir) {
                let mut parts = rest.components();
                if let Some(first) = parts.next() {
                    let entry = (
                        first.as_os_str().to_string_lossy().into_owned(),
                        parts.next().is_some(),
                    );
                    if !names.contains(&entry) {
                        names.push(entry);
                    }
                }
            }
        }
        Ok(names)
    }
}

/// `(path, text)` pairs as files.
pub(crate) fn memory(files: &[(&str, &str)]) -> Memory {
    Memory(
        files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_string()))
            .collect(),
    )
}

const ROOT: &str = "/etc/keepalived/keepalived.conf";

fn import(files: &[(&str, &str)]) -> Result<Import, ImportError> {
    keepalived(Path::new(ROOT), &memory(files), &Options::default())
}

/// The import of one file, read back as lb reads it.
fn config(text: &str) -> (Config, Vec<Note>) {
    let imported = import(&[(ROOT, text)]).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::parse(&imported.yaml).unwrap();
    (config, imported.notes)
}

fn noted(notes: &[Note], line: u32, directive: &str, text: &str) -> bool {
    notes
        .iter()
        .any(|n| n.at.line == line && n.directive == directive && n.note.contains(text))
}

#[test]
fn an_operator_config_with_includes_comments_and_ipv6() {
    let main = "\
! edge balancer, site A
global_defs {
   router_id edge_a
   notification_email { ops@example.com }
}

vrrp_instance VI_WEB {
    state MASTER
    interface   eth1
    virtual_router_id 51
    priority 150
    advert_int 0.5
    nopreempt
    unicast_peer {
        192.0.2.3
    }
    authentication {
        auth_type PASS
        auth_pass secret
    }
    virtual_ipaddress {
        203.0.113.10/24 dev eth1
        2001:db8:ff::10 dev eth0
    }
    track_script { chk_web }
}

include conf.d/*.conf
";
    let web = "\
# The shop's front end.
# Two web servers; one standby.
virtual_server 203.0.113.10 80 {
    delay_loop 2
    lb_algo wrr
    lb_kind NAT
    protocol TCP
    sorry_server 192.0.2.30 8080

    real_server 192.0.2.11 8080 {
        weight 3
        HTTP_GET {
            url { path /healthz
                  status_code 204 }
            connect_port 8081
            connect_timeout 1
            retry 2
        }
    }
    real_server 192.0.2.12 8080 {
        weight 1
        HTTP_GET {
            url { path /healthz
                  status_code 204 }
            connect_port 8081
            connect_timeout 1
            retry 2
        }
    }
}
";
    let dns = "\
virtual_server 2001:db8:ff::10 53
{
\tlb_algo   sh
  lb_kind\tDR
\tprotocol UDP
\treal_server 2001:db8::21 53 { MISC_CHECK { misc_path \"/usr/lib/lb/dig-check '-q a'\"\n\t\tmisc_timeout 3 } }
\treal_server 2001:db8::22 53 { MISC_CHECK { misc_path \"/usr/lib/lb/dig-check '-q a'\"\n\t\tmisc_timeout 3 } }
}
";
    let files = [
        (ROOT, main),
        ("/etc/keepalived/conf.d/10-web.conf", web),
        ("/etc/keepalived/conf.d/20-dns.conf", dns),
        ("/etc/keepalived/conf.d/README", "not a config {"),
    ];
    let imported = import(&files).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::parse(&imported.yaml).unwrap();
    assert_eq!(config.instance.as_str(), "edge_a");
    assert_eq!(config.interfaces[0].name, "eth1");
    let [web, dns] = <[_; 2]>::try_from(config.services).unwrap();
    assert_eq!(
        (
            web.vip,
            web.port,
            web.protocol,
            web.scheduler,
            web.forwarding
        ),
        (
            "203.0.113.10".parse().unwrap(),
            80,
            Protocol::Tcp,
            Scheduler::RoundRobin,
            Forwarding::Nat
        )
    );
    let backends: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.port_for(&web), b.weight, b.tier))
        .collect();
    assert_eq!(
        backends,
        [
            ("192.0.2.11".into(), 8080, 3, 0),
            ("192.0.2.12".into(), 8080, 1, 0),
            ("192.0.2.30".into(), 8080, 1, 1),
        ]
    );
    let check = web.health_check.unwrap();
    assert_eq!(check.kind, CheckKind::Http);
    assert_eq!(check.path.as_deref(), Some("/healthz"));
    assert_eq!(check.expect_status, Some(204));
    assert_eq!(check.port, Some(8081));
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 1, 3)
    );
    assert_eq!(
        (
            dns.vip,
            dns.port,
            dns.protocol,
            dns.scheduler,
            dns.forwarding
        ),
        (
            "2001:db8:ff::10".parse().unwrap(),
            53,
            Protocol::Udp,
            Scheduler::IpHash,
            Forwarding::Dsr
        )
    );
    let check = dns.health_check.unwrap();
    assert_eq!(check.kind, CheckKind::Exec);
    assert_eq!(check.command.unwrap(), ["/usr/lib/lb/dig-check", "-q a"]);
    // keepalived's default delay_loop, 60 s; misc_timeout 3 s.
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_mins(1), Duration::from_secs(3))
    );
    let ha = config.ha.unwrap();
    let [instance] = <[_; 1]>::try_from(ha.instances()).unwrap();
    assert_eq!((instance.virtual_router_id, instance.priority), (51, 150));
    assert_eq!(instance.interface, "eth1");
    assert_eq!(instance.advert_interval, Duration::from_millis(500));
    assert!(!instance.preempt);
    assert_eq!(
        instance.unicast_peers,
        ["192.0.2.3".parse::<IpAddr>().unwrap()]
    );
    let floating: Vec<String> = instance
        .floating_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(floating, ["203.0.113.10/24", "2001:db8:ff::10/128"]);
    // The comments before the web service are kept before it.
    assert!(
        imported
            .yaml
            .contains("  # The shop's front end.\n  # Two web servers; one standby.\n  - name: tcp-203.0.113.10-80\n"),
        "{}",
        imported.yaml
    );
    let notes = &imported.notes;
    for (file, line, directive, text) in [
        (ROOT, 4, "notification_email", "lb sends no mail"),
        (ROOT, 8, "state MASTER", "no initial state"),
        (ROOT, 17, "authentication", "VRRPv3 has no authentication"),
        (ROOT, 23, "2001:db8:ff::10 dev eth0", "not to eth0"),
        (ROOT, 25, "track_script", "lb runs no scripts"),
        (
            "/etc/keepalived/conf.d/10-web.conf",
            8,
            "sorry_server 192.0.2.30 8080",
            "tier 1",
        ),
    ] {
        assert!(
            notes.iter().any(|n| &*n.at.file == Path::new(file)
                && n.at.line == line
                && n.directive.starts_with(directive)
                && n.note.contains(text)),
            "no note {file}:{line} {directive}: {text} in {notes:#?}"
        );
    }
}

/// `lb_algo`, `lb_kind`, a persistence line; the scheduler and forwarding
/// they give, and a note that must say so (none: no note on them).
type SchedulerCase = (
    &'static str,
    &'static str,
    &'static str,
    Scheduler,
    Forwarding,
    Option<&'static str>,
);

const SCHEDULER_CASES: &[SchedulerCase] = &[
    (
        "rr",
        "NAT",
        "",
        Scheduler::RoundRobin,
        Forwarding::Nat,
        None,
    ),
    (
        "wrr",
        "DR",
        "",
        Scheduler::RoundRobin,
        Forwarding::Dsr,
        None,
    ),
    (
        "lc",
        "TUN",
        "",
        Scheduler::LeastConn,
        Forwarding::Tunnel,
        None,
    ),
    (
        "wlc",
        "NAT",
        "",
        Scheduler::LeastConn,
        Forwarding::Nat,
        None,
    ),
    ("sh", "NAT", "", Scheduler::IpHash, Forwarding::Nat, None),
    ("mh", "NAT", "", Scheduler::Maglev, Forwarding::Nat, None),
    (
        "dh",
        "NAT",
        "",
        Scheduler::Maglev,
        Forwarding::Nat,
        Some("destination hashing"),
    ),
    (
        "sed",
        "NAT",
        "",
        Scheduler::LeastConn,
        Forwarding::Nat,
        Some("nearest"),
    ),
    (
        "nq",
        "NAT",
        "",
        Scheduler::LeastConn,
        Forwarding::Nat,
        Some("nearest"),
    ),
    (
        "lblc",
        "NAT",
        "",
        Scheduler::LeastConn,
        Forwarding::Nat,
        Some("locality"),
    ),
    (
        "ovf",
        "NAT",
        "",
        Scheduler::LeastConn,
        Forwarding::Nat,
        Some("overflow"),
    ),
    (
        "rr",
        "NAT",
        "persistence_timeout 300",
        Scheduler::IpHash,
        Forwarding::Nat,
        Some("ip-hash instead of round-robin"),
    ),
    (
        "rr",
        "NAT",
        "persistence_timeout 0",
        Scheduler::RoundRobin,
        Forwarding::Nat,
        None,
    ),
];

#[test]
fn schedulers_and_forwarding_map_to_lbs() {
    for &(algo, kind, persistence, scheduler, forwarding, note) in SCHEDULER_CASES {
        let text = format!(
            "virtual_server 203.0.113.10 80 {{\n lb_algo {algo}\n lb_kind {kind}\n {persistence}\n\
             real_server 192.0.2.11 80 {{\n }}\n}}\n"
        );
        let (config, notes) = config(&text);
        let service = &config.services[0];
        assert_eq!(
            (service.scheduler, service.forwarding),
            (scheduler, forwarding),
            "{algo} {kind} {persistence}"
        );
        match note {
            Some(text) => assert!(
                notes.iter().any(|n| n.note.contains(text)),
                "{algo}: no note {text:?} in {notes:#?}"
            ),
            None => assert!(
                !notes.iter().any(|n| (2..=4).contains(&n.at.line)),
                "{algo}: {notes:#?}"
            ),
        }
    }
}

#[test]
fn failover_scheduling_becomes_tiers() {
    let (config, notes) = config(
        "virtual_server 203.0.113.10 80 {\n lb_algo fo\n lb_kind DR\n\
         real_server 192.0.2.11 80 { weight 100 }\n real_server 192.0.2.12 80 { weight 50 }\n\
         real_server 192.0.2.13 80 { weight 100 }\n}\n",
    );
    let tiers: Vec<u8> = config.services[0].backends.iter().map(|b| b.tier).collect();
    assert_eq!(tiers, [0, 1, 0]);
    assert!(noted(&notes, 2, "lb_algo fo", "tiers"), "{notes:#?}");
}

#[test]
fn checkers_map_to_health_checks() {
    let service = |checker: &str| {
        let text = format!(
            "virtual_server 203.0.113.10 80 {{\n delay_loop 10\n protocol UDP\n lb_algo rr\n\
             real_server 192.0.2.11 80 {{\n{checker}\n }}\n}}\n"
        );
        let (config, notes) = config(&text);
        (
            config.services[0].health_check.clone(),
            notes.iter().map(|n| n.note.clone()).collect::<Vec<_>>(),
        )
    };
    let (check, notes) = service(
        "SSL_GET { url { path status\n status_code 200-299\n digest 0123 }\n url { path /b }\n\
         virtualhost www.example.com\n connect_timeout 20\n nb_get_retry 4\n delay_before_retry 2 }",
    );
    let check = check.unwrap();
    assert_eq!(check.kind, CheckKind::Https);
    assert_eq!(check.path.as_deref(), Some("/status"));
    assert_eq!(check.expect_status, Some(200));
    assert_eq!(check.host.as_deref(), Some("www.example.com"));
    assert_eq!(check.fall, 5);
    // The timeout may not exceed the interval.
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_secs(10), Duration::from_secs(10))
    );
    for expected in [
        "one status code: 200",
        "does not hash the body",
        "the first url's",
        "spaces every check",
        "at most the interval",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(expected)),
            "{expected}: {notes:#?}"
        );
    }
    let (check, notes) = service("UDP_CHECK { payload 68656c6c6f\n connect_timeout 2 }");
    let check = check.unwrap();
    assert_eq!(
        (check.kind, check.send.as_deref()),
        (CheckKind::Udp, Some("hello"))
    );
    assert!(
        notes.iter().any(|n| n.contains("needs a reply")),
        "{notes:#?}"
    );
    let (check, _) = service("PING_CHECK { retry 4 }");
    let check = check.unwrap();
    assert_eq!(check.kind, CheckKind::Exec);
    assert_eq!(check.command.unwrap()[..2], ["sh", "-c"]);
    assert_eq!(check.fall, 5);
    let (check, notes) = service("SMTP_CHECK { helo_name x }");
    assert_eq!(check.unwrap().kind, CheckKind::Tcp);
    assert!(
        notes.iter().any(|n| n.contains("no SMTP check")),
        "{notes:#?}"
    );
    let (check, notes) = service("DNS_CHECK { type A }");
    assert_eq!(check, None);
    assert!(notes.iter().any(|n| n.contains("always up")), "{notes:#?}");
    let (check, _) = service("TCP_CHECK { }");
    let check = check.unwrap();
    // keepalived's defaults: 5 s connect timeout, one retry.
    assert_eq!(
        (check.kind, check.timeout, check.fall),
        (CheckKind::Tcp, Duration::from_secs(5), 2)
    );
}

#[test]
fn groups_expand_and_firewall_marks_are_refused() {
    let text = "virtual_server_group G {\n 203.0.113.10-12 80\n 2001:db8:ff::a-b 80\n fwmark 7\n}\n\
                virtual_server group G {\n lb_kind DR\n lb_algo mh\n\
                real_server 192.0.2.11 80 { TCP_CHECK { } }\n}\n\
                virtual_server fwmark 1 {\n real_server 192.0.2.12 80 { }\n}\n";
    let imported = import(&[(ROOT, text)]).unwrap_err();
    // Both families in one group cannot share backends: lb check says so,
    // at the real_server's line.
    let ImportError::Invalid {
        problems, notes, ..
    } = imported
    else {
        panic!("{imported}");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.at.as_ref().is_some_and(|at| at.line == 9)
                && p.path == "services[3].backends[0].address"
                && p.message.contains("address family")),
        "{problems:#?}"
    );
    assert!(noted(&notes, 4, "fwmark 7", "refused"), "{notes:#?}");
    assert!(
        noted(&notes, 11, "virtual_server fwmark 1", "refused"),
        "{notes:#?}"
    );
    let text = text.replace(" 2001:db8:ff::a-b 80\n", "");
    let (config, _) = config(&text);
    let vips: Vec<String> = config
        .services
        .iter()
        .map(|s| format!("{}:{}", s.vip, s.port))
        .collect();
    assert_eq!(
        vips,
        ["203.0.113.10:80", "203.0.113.11:80", "203.0.113.12:80"]
    );
    assert!(
        config
            .services
            .iter()
            .all(|s| s.backends.len() == 1 && s.health_check.is_some())
    );
}

#[test]
fn a_result_lb_refuses_is_placed_at_the_keepalived_line() {
    // One NAT backend in two services: lb could not tell their replies
    // apart (docs/DESIGN.md §2.2).
    let text = "virtual_server 203.0.113.10 80 {\n real_server 192.0.2.11 80 { }\n}\n\
                virtual_server 203.0.113.11 80 {\n real_server 192.0.2.11 80 { }\n}\n";
    let error = import(&[(ROOT, text)]).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "{ROOT}:5: services[1].backends[0]: 192.0.2.11:80 is also a NAT backend"
        )),
        "{message}"
    );
}

#[test]
fn nothing_importable_is_refused() {
    let text = "virtual_server fwmark 1 {\n real_server 192.0.2.11 80 { }\n}\n";
    let error = import(&[(ROOT, text)]).unwrap_err();
    let ImportError::Nothing { notes } = &error else {
        panic!("{error}");
    };
    assert!(
        noted(notes, 1, "virtual_server fwmark 1", "not supported"),
        "{notes:#?}"
    );
}

#[test]
fn bad_input_names_file_and_line() {
    for (files, expected) in [
        (
            vec![(ROOT, "global_defs {\n router_id x\n}\nvrrp_thing {\n}\n")],
            format!("{ROOT}:4: unknown keepalived keyword `vrrp_thing`"),
        ),
        (
            vec![(ROOT, "virtual_server 203.0.113.10 80 {\n")],
            format!("{ROOT}:1: the block of `virtual_server 203.0.113.10 80`"),
        ),
        (
            vec![(ROOT, "global_defs {\n}\ninclude other.conf\n")],
            format!("{ROOT}:3: include /etc/keepalived/other.conf: cannot read"),
        ),
    ] {
        let error = import(&files).unwrap_err().to_string();
        assert!(
            error.starts_with(&expected),
            "{error:?} is not {expected:?}"
        );
    }
    let error = keepalived(
        Path::new("/nowhere.conf"),
        &memory(&[]),
        &Options::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("cannot read /nowhere.conf"), "{error}");
}

#[test]
fn vrrp_instances_and_sync() {
    let text = "global_defs {\n lvs_sync_daemon eth2 VI_1 id 5 port 7000\n}\n\
                vrrp_instance VI_1 {\n interface eth1\n virtual_router_id 51\n priority 255\n\
                garp_master_repeat 5\n garp_master_delay 2\n unicast_peer { 192.0.2.3 }\n\
                virtual_ipaddress { 203.0.113.10 }\n}\n\
                vrrp_instance VI_2 {\n interface eth2\n virtual_router_id 52\n preempt_delay 30\n\
                unicast_peer { 192.0.2.3 }\n virtual_ipaddress { 203.0.113.20/24\n 203.0.113.20/24 }\n}\n";
    let (config, notes) = config(text);
    let ha = config.ha.as_ref().unwrap();
    assert_eq!(
        (ha.garp_repeat, ha.garp_interval),
        (5, Duration::from_secs(2))
    );
    let instances = ha.instances();
    let summary: Vec<_> = instances
        .iter()
        .map(|i| {
            (
                i.interface.as_str(),
                i.virtual_router_id,
                i.priority,
                i.preempt_delay,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("eth1", 51, 254, Duration::ZERO),
            ("eth2", 52, 100, Duration::from_secs(30))
        ]
    );
    assert_eq!(instances[1].floating_ips.len(), 1);
    let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth1", "eth2"]);
    let sync = config.sync.as_ref().unwrap();
    assert_eq!((sync.interface.as_deref(), sync.port), (Some("eth2"), 7000));
    assert_eq!(
        sync.peers_for(config.ha.as_ref()),
        ["192.0.2.3".parse::<IpAddr>().unwrap()]
    );
    assert!(
        noted(
            &notes,
            2,
            "lvs_sync_daemon eth2 VI_1 id 5 port 7000",
            "id: IPVS sync daemon option"
        ),
        "{notes:#?}"
    );
    assert!(
        noted(&notes, 7, "priority 255", "254 written"),
        "{notes:#?}"
    );
    assert!(
        noted(&notes, 19, "203.0.113.20/24", "listed twice"),
        "{notes:#?}"
    );
}

//! `lb import keepalived`: every sample configuration Debian's keepalived
//! ships is imported into a file `lb check` accepts, or refused with a
//! report that names the line; operator-style files (includes, comments,
//! odd spacing, IPv6, VRRP) come out as the services and checks they
//! describe; bad input exits 1 naming the file and line; and an imported
//! configuration runs: `lb run` serves its service through the VIP.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use lb::config::{CheckKind, Config, Forwarding, Protocol, Scheduler};
use lb_tests::{
    TempFile,
    bed::{Bed, tcp_request},
    lb_binary,
    netns::wait_until,
};

/// The samples of Debian's keepalived package (`cargo xtask setup`
/// installs it).
const SAMPLES: &str = "/usr/share/doc/keepalived/samples";
const ETC_SAMPLE: &str = "/etc/keepalived/keepalived.conf.sample";

/// What becomes of a sample.
enum Outcome {
    /// Imported: this many services and VRRP instances.
    Imported(usize, usize),
    /// Refused: exit 1, stderr naming this.
    Refused(&'static str),
}

/// Every sample, and what becomes of it.
const TABLE: &[(&str, Outcome)] = &[
    ("keepalived.conf.HTTP_GET.port", Outcome::Imported(1, 0)),
    ("keepalived.conf.IPv6", Outcome::Imported(1, 0)),
    ("keepalived.conf.PING_CHECK", Outcome::Imported(1, 0)),
    ("keepalived.conf.SMTP_CHECK", Outcome::Imported(1, 0)),
    ("keepalived.conf.SSL_GET", Outcome::Imported(2, 1)),
    ("keepalived.conf.UDP_CHECK", Outcome::Imported(1, 0)),
    ("keepalived.conf.conditional_conf", Outcome::Imported(0, 1)),
    // Its only virtual_server is a firewall-mark one.
    (
        "keepalived.conf.fwmark",
        Outcome::Refused(
            "keepalived.conf.fwmark:7: virtual_server fwmark 1: refused: firewall-mark services",
        ),
    ),
    ("keepalived.conf.inhibit", Outcome::Imported(1, 0)),
    ("keepalived.conf.misc_check", Outcome::Imported(1, 0)),
    ("keepalived.conf.misc_check_arg", Outcome::Imported(1, 0)),
    ("keepalived.conf.quorum", Outcome::Imported(1, 0)),
    ("keepalived.conf.sample", Outcome::Imported(1, 1)),
    ("keepalived.conf.status_code", Outcome::Imported(1, 0)),
    ("keepalived.conf.track_interface", Outcome::Imported(0, 1)),
    // Its group's VIPs share NAT backends, whose replies lb could not
    // tell apart (docs/DESIGN.md §2.2).
    (
        "keepalived.conf.virtual_server_group",
        Outcome::Refused(
            "keepalived.conf.virtual_server_group:29: services[1].backends[0]: \
             192.168.200.1:1358 is also a NAT backend of \"tcp-10.0.0.1-8080\"",
        ),
    ),
    ("keepalived.conf.virtualhost", Outcome::Imported(1, 0)),
    ("keepalived.conf.vrrp", Outcome::Imported(0, 4)),
    ("keepalived.conf.vrrp.localcheck", Outcome::Imported(0, 9)),
    ("keepalived.conf.vrrp.lvs_syncd", Outcome::Imported(1, 3)),
    ("keepalived.conf.vrrp.routes", Outcome::Imported(0, 1)),
    ("keepalived.conf.vrrp.rules", Outcome::Imported(0, 1)),
    ("keepalived.conf.vrrp.scripts", Outcome::Imported(0, 3)),
    (
        "keepalived.conf.vrrp.static_ipaddress",
        Outcome::Imported(0, 1),
    ),
    ("keepalived.conf.vrrp.sync", Outcome::Imported(0, 9)),
    (ETC_SAMPLE, Outcome::Imported(3, 1)),
];

fn lb(args: &[&str]) -> Output {
    std::process::Command::new(lb_binary())
        .args(args)
        .output()
        .expect("run lb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `lb check -c` on `yaml`, written to a file: must exit 0.
fn assert_checks(yaml: &str, what: &str) {
    let file = TempFile::new("imported.yaml", yaml);
    let output = lb(&["check", "-c", file.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "lb check refused the import of {what}: {}\n{yaml}",
        text(&output.stderr)
    );
}

#[test]
fn every_keepalived_sample_imports_or_is_refused_precisely() {
    assert!(
        Path::new(SAMPLES).is_dir() && Path::new(ETC_SAMPLE).is_file(),
        "{SAMPLES} or {ETC_SAMPLE} is missing: install keepalived (`cargo xtask setup` does)"
    );
    let mut shipped: Vec<String> = std::fs::read_dir(SAMPLES)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("keepalived.conf"))
        .collect();
    shipped.push(ETC_SAMPLE.into());
    shipped.sort();
    let mut listed: Vec<String> = TABLE.iter().map(|(name, _)| (*name).to_string()).collect();
    listed.sort();
    assert_eq!(shipped, listed, "every sample has a row in TABLE");
    for (name, outcome) in TABLE {
        let path = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            Path::new(SAMPLES).join(name)
        };
        let output = lb(&["import", "keepalived", path.to_str().unwrap()]);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        match outcome {
            Outcome::Imported(services, instances) => {
                assert_eq!(output.status.code(), Some(0), "{name}: {stderr}");
                let config = Config::parse(&stdout).unwrap_or_else(|e| panic!("{name}: {e}"));
                let found = (
                    config.services.len(),
                    config.ha.map_or(0, |ha| ha.instances().len()),
                );
                assert_eq!(found, (*services, *instances), "{name}:\n{stdout}");
                assert!(
                    stderr
                        .lines()
                        .all(|l| l.starts_with("note: ") || l.ends_with("note(s) above")),
                    "{name}: {stderr}"
                );
                assert_checks(&stdout, name);
            }
            Outcome::Refused(expected) => {
                assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
                assert!(stdout.is_empty(), "{name}: refused, yet printed {stdout}");
                assert!(
                    stderr.contains(&format!("{SAMPLES}/{expected}")),
                    "{name}: no {expected:?} in:\n{stderr}"
                );
            }
        }
    }
}

/// A directory of files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("lbt-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, contents) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Self(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const OPERATOR_MAIN: &str = "\
! Balancer pair, site A: keepalived.conf
global_defs {
    router_id   site-a.lb1
    script_user root
}

vrrp_instance VI_EDGE {
  state BACKUP
  interface eth1
  virtual_router_id 61
  priority 120
  advert_int 1
  preempt_delay 10
  unicast_peer {
    192.0.2.3
  }
  virtual_ipaddress {
    203.0.113.10/24
    2001:db8:ff::10/64
  }
}

include services/*.conf
";

const OPERATOR_WEB: &str = "\
# Public web: two servers, health on /ping.
virtual_server 203.0.113.10 443 {
\tdelay_loop 3
\tlb_algo    mh
\tlb_kind    NAT
\tprotocol   TCP

\treal_server 192.0.2.11 8443 {
\t\tweight 2
\t\tSSL_GET {
\t\t\turl {
\t\t\t\tpath /ping
\t\t\t\tstatus_code 200
\t\t\t}
\t\t\tconnect_timeout 2
\t\t\tretry 1
\t\t}
\t}
\treal_server 192.0.2.12 8443
\t{
\t\tweight 1
\t\tSSL_GET { url { path /ping
\t\t\t\tstatus_code 200 }
\t\t\tconnect_timeout 2
\t\t\tretry 1 }
\t}
}
";

const OPERATOR_DNS: &str = "\
! DNS over IPv6, direct return.
virtual_server 2001:db8:ff::10 53 {
    lb_algo wlc
    lb_kind DR
    protocol UDP
    real_server 2001:db8::21 53 {
        UDP_CHECK {
            payload 7374617475730a
            require_reply
            connect_timeout 1
        }
    }
    real_server 2001:db8::22 53 {
        UDP_CHECK {
            payload 7374617475730a
            require_reply
            connect_timeout 1
        }
    }
}
";

/// The operator config's health checks and VRRP instance, as written.
fn assert_checks_and_ha(config: &Config) {
    let web = config.services[0].health_check.as_ref().unwrap();
    assert_eq!(
        (
            web.kind,
            web.path.as_deref(),
            web.expect_status,
            web.interval,
            web.timeout,
            web.rise,
            web.fall
        ),
        (
            CheckKind::Https,
            Some("/ping"),
            Some(200),
            Duration::from_secs(3),
            Duration::from_secs(2),
            1,
            2
        )
    );
    let dns = config.services[1].health_check.as_ref().unwrap();
    assert_eq!(
        (dns.kind, dns.send.as_deref(), dns.interval, dns.timeout),
        (
            CheckKind::Udp,
            Some("status\n"),
            Duration::from_mins(1),
            Duration::from_secs(1)
        )
    );
    let ha = config.ha.as_ref().unwrap();
    let [edge] = <[_; 1]>::try_from(ha.instances()).unwrap();
    assert_eq!(
        (
            edge.interface.as_str(),
            edge.virtual_router_id,
            edge.priority,
            edge.preempt,
            edge.preempt_delay
        ),
        ("eth1", 61, 120, true, Duration::from_secs(10))
    );
    let floating: Vec<String> = edge.floating_ips.iter().map(ToString::to_string).collect();
    assert_eq!(floating, ["203.0.113.10/24", "2001:db8:ff::10/64"]);
    assert_eq!(edge.unicast_peers.len(), 1);
}

#[test]
fn an_operator_config_comes_out_as_written() {
    let dir = Dir::new(
        "import-operator",
        &[
            ("keepalived.conf", OPERATOR_MAIN),
            ("services/10-web.conf", OPERATOR_WEB),
            ("services/20-dns.conf", OPERATOR_DNS),
            ("services/notes.txt", "not { a config"),
        ],
    );
    let output = lb(&["import", "keepalived", &dir.file("keepalived.conf")]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_checks(&stdout, "the operator config");
    let config = Config::parse(&stdout).unwrap();
    assert_eq!(config.instance.as_str(), "site-a-lb1");
    let services: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.vip.to_string(),
                s.port,
                s.protocol,
                s.scheduler,
                s.forwarding,
            )
        })
        .collect();
    assert_eq!(
        services,
        [
            (
                "tcp-203.0.113.10-443",
                "203.0.113.10".to_string(),
                443,
                Protocol::Tcp,
                Scheduler::Maglev,
                Forwarding::Nat
            ),
            (
                "udp-2001:db8:ff::10-53",
                "2001:db8:ff::10".to_string(),
                53,
                Protocol::Udp,
                Scheduler::LeastConn,
                Forwarding::Dsr
            ),
        ]
    );
    let backends = |i: usize| -> Vec<(String, u16, u32, u8)> {
        let service = &config.services[i];
        service
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.port_for(service), b.weight, b.tier))
            .collect()
    };
    assert_eq!(
        backends(0),
        [
            ("192.0.2.11".to_string(), 8443, 2, 0),
            ("192.0.2.12".to_string(), 8443, 1, 0)
        ]
    );
    assert_eq!(
        backends(1),
        [
            ("2001:db8::21".to_string(), 53, 1, 0),
            ("2001:db8::22".to_string(), 53, 1, 0)
        ]
    );
    assert_checks_and_ha(&config);
    // The comments before each virtual_server stay before its service.
    assert!(
        stdout.contains(
            "  # Public web: two servers, health on /ping.\n  - name: tcp-203.0.113.10-443\n"
        ) && stdout
            .contains("  # DNS over IPv6, direct return.\n  - name: \"udp-2001:db8:ff::10-53\"\n"),
        "{stdout}"
    );
    for expected in [
        format!(
            "{}:4: script_user root: lb runs no VRRP scripts",
            dir.file("keepalived.conf")
        ),
        format!(
            "{}:8: state BACKUP: lb has no initial state",
            dir.file("keepalived.conf")
        ),
        format!(
            "{}:3: router_id site-a.lb1: instance named \"site-a-lb1\"",
            dir.file("keepalived.conf")
        ),
    ] {
        assert!(stderr.contains(&expected), "no {expected:?} in:\n{stderr}");
    }
}

/// `--output json`: the configuration and the notes in one object; the
/// options name the instance and the interfaces.
#[test]
fn the_json_output_holds_the_config_and_the_notes() {
    let dir = Dir::new(
        "import-json",
        &[
            ("keepalived.conf", OPERATOR_MAIN),
            ("services/10-web.conf", OPERATOR_WEB),
        ],
    );
    let output = lb(&[
        "import",
        "keepalived",
        &dir.file("keepalived.conf"),
        "--output",
        "json",
        "--instance",
        "edge1",
        "--interface",
        "eth0",
        "--interface",
        "eth1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let config = Config::parse(json["config"].as_str().unwrap()).unwrap();
    assert_eq!(config.instance.as_str(), "edge1");
    let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0", "eth1"]);
    let notes = json["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["file"] == dir.file("keepalived.conf")
                && n["line"] == 8
                && n["directive"] == "state BACKUP"
                && n["note"].as_str().unwrap().contains("no initial state")),
        "{notes:#?}"
    );
}

#[test]
fn bad_input_exits_1_naming_file_and_line() {
    let dir = Dir::new(
        "import-bad",
        &[
            (
                "braces.conf",
                "global_defs {\n  router_id x\n}\nvirtual_server 203.0.113.10 80 {\n  \
                 real_server 192.0.2.11 80 {\n    weight 1\n  }\n",
            ),
            ("extra.conf", "global_defs {\n}\n}\n"),
            (
                "unknown.conf",
                "global_defs {\n}\n\nvirtual_service 203.0.113.10 80 {\n}\n",
            ),
            ("include.conf", "global_defs {\n}\ninclude missing.conf\n"),
        ],
    );
    for (file, expected) in [
        (
            "braces.conf",
            format!(
                "{}:4: the block of `virtual_server 203.0.113.10 80` opened here is never closed",
                dir.file("braces.conf")
            ),
        ),
        (
            "extra.conf",
            format!("{}:3: `}}` closes no block", dir.file("extra.conf")),
        ),
        (
            "unknown.conf",
            format!(
                "{}:4: unknown keepalived keyword `virtual_service`",
                dir.file("unknown.conf")
            ),
        ),
        (
            "include.conf",
            format!(
                "{}:3: include {}: cannot read",
                dir.file("include.conf"),
                dir.file("missing.conf")
            ),
        ),
        (
            "absent.conf",
            format!("cannot read {}", dir.file("absent.conf")),
        ),
    ] {
        let output = lb(&["import", "keepalived", &dir.file(file)]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}: {stderr}");
        assert!(output.stdout.is_empty(), "{file}: {output:?}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{file}: {stderr:?} is not {expected:?}"
        );
        let output = lb(&["import", "keepalived", &dir.file(file), "--output", "json"]);
        assert_eq!(output.status.code(), Some(1), "{file}: {output:?}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            json["error"].as_str().unwrap().starts_with(&expected),
            "{file}: {json}"
        );
    }
}

/// The bed's backends answer on port 8080 with their name.
fn keepalived_conf(pid: u32) -> String {
    format!(
        "\
global_defs {{
    router_id imp{pid}
}}

# Web, NAT to two backends.
virtual_server 203.0.113.10 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 192.0.2.11 8080 {{
        weight 1
        TCP_CHECK {{
            connect_timeout 1
        }}
    }}
    real_server 192.0.2.12 8080 {{
        weight 1
        TCP_CHECK {{
            connect_timeout 1
        }}
    }}
}}
"
    )
}

#[test]
fn an_imported_configuration_runs() {
    let pid = std::process::id();
    let source = TempFile::new("keepalived.conf", &keepalived_conf(pid));
    let output = lb(&[
        "import",
        "keepalived",
        source.path().to_str().unwrap(),
        "--interface",
        "eth0",
        "--interface",
        "eth1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let socket = format!("/run/lb/import-{pid}.sock");
    let yaml = format!("{}control: {{ socket: {socket} }}\n", text(&output.stdout));
    assert_checks(&yaml, "the round-trip config");
    let imported = Config::parse(&yaml).unwrap();

    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&yaml);
    let status = || -> serde_json::Value {
        let output = bed.lb_command(&["status", "--output", "json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_default()
    };
    let up = wait_until(Duration::from_secs(15), || {
        status()["services"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["health"] == "up"))
    });
    let status = status();
    assert!(up, "the backends did not come up: {status}");
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), imported.services.len(), "{status}");
    let service = &services[0];
    let expected = &imported.services[0];
    assert_eq!(service["name"], expected.name.as_str());
    assert_eq!(service["name"], "tcp-203.0.113.10-80");
    assert_eq!(service["vip"], "203.0.113.10");
    assert_eq!(service["port"], 80);
    assert_eq!(service["protocol"], "tcp");
    assert_eq!(service["scheduler"], "round-robin");
    assert_eq!(service["forwarding"], "nat");
    let backends: Vec<String> = service["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"]))
        .collect();
    assert_eq!(backends, ["192.0.2.11:8080", "192.0.2.12:8080"]);

    let target = "203.0.113.10:80".parse().unwrap();
    let served = bed.client.run(move || {
        (0..4)
            .map(|_| tcp_request(target, None))
            .collect::<Vec<_>>()
    });
    assert!(
        served
            .iter()
            .all(|s| matches!(s.as_deref(), Some("b11" | "b12")))
            && served.contains(&Some("b11".into()))
            && served.contains(&Some("b12".into())),
        "round robin over both backends through the VIP: {served:?}"
    );
    let output = bed.stop_lb();
    assert!(output.status.success(), "{output:?}");
}

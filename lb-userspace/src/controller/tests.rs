//! The controller's unit tests: planning from health, settings, and reloads.

use super::*;
use super::{
    reload::restart_needed,
    scheduling::agent_targets,
    settings::tunnel_targets,
    weights::{folded_weights, kept_dynamic},
};

fn config(extra: &str) -> Config {
    Config::parse(&format!(
        "instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, \
         backends: [{{ address: 192.0.2.11 }}] }}\n{extra}"
    ))
    .unwrap()
}

#[test]
fn a_reload_refuses_what_only_a_restart_applies() {
    let running = config("control: { metrics: '127.0.0.1:9477' }\n");
    assert_eq!(restart_needed(&running, &running), None);
    let cases = [
        (
            "control: { metrics: '127.0.0.1:9478' }\n",
            "control.metrics",
        ),
        ("", "control.metrics"),
        (
            "control: { socket: /run/lb/other.sock, metrics: '127.0.0.1:9477' }\n",
            "control.socket",
        ),
        (
            "control: { metrics: '127.0.0.1:9477', web: '127.0.0.1:9181' }\n",
            "control.web",
        ),
    ];
    for (extra, what) in cases {
        assert_eq!(
            restart_needed(&running, &config(extra)),
            Some(what),
            "{extra}"
        );
    }
    let moved = Config::parse(
        "instance: t\ninterfaces: [{ name: eth1 }]\nservices: []\n\
         control: { metrics: '127.0.0.1:9477' }\n",
    )
    .unwrap();
    assert_eq!(restart_needed(&running, &moved), Some("interfaces"));
}

#[test]
fn resource_agents_are_polled_with_the_services_secret() {
    let secret = std::env::temp_dir().join(format!("lb-agent-secret-{}", std::process::id()));
    std::fs::write(&secret, "s3cret\n").unwrap();
    let config = Config::parse(&format!(
        "instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: resource, \
         agent_port: 9999, agent_secret_file: {}, \
         backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
         \x20 - {{ name: plain, vip: 203.0.113.10, port: 81, protocol: tcp, scheduler: resource, \
         backends: [{{ address: 192.0.2.13 }}] }}\n\
         \x20 - {{ name: other, vip: 203.0.113.10, port: 82, protocol: tcp, \
         backends: [{{ address: 192.0.2.14 }}] }}\n",
        secret.display()
    ))
    .unwrap();
    let targets = agent_targets(&config);
    let _ = std::fs::remove_file(&secret);
    let shown: Vec<(String, Option<&str>)> = targets
        .iter()
        .map(|(_, address, secret)| (address.to_string(), secret.as_deref().map(String::as_str)))
        .collect();
    assert_eq!(
        shown,
        [
            ("192.0.2.11:9999".to_string(), Some("s3cret")),
            ("192.0.2.12:9999".to_string(), Some("s3cret")),
            ("192.0.2.13:9478".to_string(), None),
        ]
    );
}

#[test]
fn overrides_fold_over_dynamic_weights() {
    let key = |a: &str| BackendKey {
        service: "web".into(),
        address: a.parse().unwrap(),
        port: 80,
    };
    let states = BTreeMap::from([(
        key("192.0.2.11"),
        BackendState {
            up: false,
            weight: Some(9),
        },
    )]);
    let dynamic = BTreeMap::from([(key("192.0.2.11"), 40), (key("192.0.2.12"), 60)]);
    let overrides = BTreeMap::from([(
        key("192.0.2.12"),
        BackendOverride {
            drained: true,
            weight: None,
        },
    )]);
    let folded = folded_weights(&states, &dynamic, &overrides, &config(""));
    assert_eq!(folded[&key("192.0.2.11")].weight, Some(40));
    assert!(!folded[&key("192.0.2.11")].up, "health is kept");
    assert_eq!(folded[&key("192.0.2.12")].weight, Some(0));
    assert_eq!(
        states[&key("192.0.2.11")].weight,
        Some(9),
        "input untouched"
    );
}

/// A `scheduler` service whose first backend has `weight`, its second 1.
fn two_backends(scheduler: &str, weight: u32) -> Config {
    Config::parse(&format!(
        "instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, scheduler: {scheduler}, \
         backends: [{{ address: 192.0.2.11, weight: {weight} }}, {{ address: 192.0.2.12, weight: 1 }}] }}\n"
    ))
    .unwrap()
}

#[test]
fn a_dynamic_service_counts_overrides_in_hundredths_and_a_reload_drops_stale_weights() {
    let key = |a: &str| BackendKey {
        service: "web".into(),
        address: a.parse().unwrap(),
        port: 80,
    };
    let overrides = BTreeMap::from([(
        key("192.0.2.11"),
        BackendOverride {
            drained: false,
            weight: Some(2),
        },
    )]);
    let dynamic = BTreeMap::from([(key("192.0.2.12"), 55)]);
    // `lb weight ... 2` beside a dynamic weight of 0.55 (55 hundredths).
    let resource = two_backends("resource", 1);
    let folded = folded_weights(&BTreeMap::new(), &dynamic, &overrides, &resource);
    assert_eq!(folded[&key("192.0.2.11")].weight, Some(200));
    assert_eq!(folded[&key("192.0.2.12")].weight, Some(55));
    // A static service takes the override as it is.
    let maglev = two_backends("maglev", 1);
    let folded = folded_weights(&BTreeMap::new(), &BTreeMap::new(), &overrides, &maglev);
    assert_eq!(folded[&key("192.0.2.11")].weight, Some(2));

    let dynamic = BTreeMap::from([(key("192.0.2.11"), 40), (key("192.0.2.12"), 55)]);
    assert_eq!(kept_dynamic(&resource, &resource, &dynamic), dynamic);
    // Another scheduler, or another configured weight: learnt anew.
    assert!(kept_dynamic(&resource, &maglev, &dynamic).is_empty());
    let reweighted = two_backends("resource", 3);
    assert_eq!(
        kept_dynamic(&resource, &reweighted, &dynamic),
        BTreeMap::from([(key("192.0.2.12"), 55)])
    );
}

mod reload_tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    const TUNNELS: &str = "\
instance: t
interfaces: [{ name: eth0 }]
services:
  - { name: nat, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{ address: 192.0.2.9 }] }
  - { name: t4, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel,
      backends: [{ address: 192.0.2.11 }, { address: 198.51.100.11 }, { address: 192.0.2.12 }] }
  - { name: t6, vip: '2001:db8:ff::12', port: 80, protocol: tcp, forwarding: tunnel,
      backends: [{ address: '2001:db8::11' }] }
";

    /// `ip route get` of a balancer with 192.0.2.1 on one interface and
    /// 198.51.100.1 on another.
    fn routes(backend: IpAddr) -> Option<IpAddr> {
        match backend.to_string().as_str() {
            "192.0.2.11" | "192.0.2.12" => Some("192.0.2.1".parse().unwrap()),
            "198.51.100.11" => Some("198.51.100.1".parse().unwrap()),
            "2001:db8::11" => Some("2001:db8::1".parse().unwrap()),
            _ => None,
        }
    }

    #[test]
    fn tunnels_default_to_the_address_towards_their_first_backend() {
        let config = Config::parse(TUNNELS).unwrap();
        let mut asked = Vec::new();
        let (sources, others) = default_tunnel_sources(&config, |backend| {
            asked.push(backend);
            routes(backend)
        });
        assert_eq!(sources.v4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(sources.v6, Some("2001:db8::1".parse().unwrap()));
        // The backend reached from another address is reported; NAT
        // backends are never asked.
        assert_eq!(
            others,
            [(
                "198.51.100.11".parse().unwrap(),
                "198.51.100.1".parse().unwrap()
            )]
        );
        assert!(!asked.contains(&"192.0.2.9".parse().unwrap()), "{asked:?}");
        // All it asks is what the hop follower looked up.
        assert_eq!(asked, tunnel_targets(&config));

        let settings = settings_with(&config, sources);
        assert_eq!(settings.tunnel_v4_source, [192, 0, 2, 1]);
        assert_eq!(settings.tunnel_v4_host_bits, 0);
        assert_eq!(
            settings.tunnel_v6_source,
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    /// The follower looks up the source towards each tunnel backend of a
    /// family without a configured prefix, once, in configuration order
    /// (the first with a route is the default).
    #[test]
    fn the_hop_follower_looks_up_the_tunnel_backends_without_a_prefix() {
        let addresses =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        let config = Config::parse(TUNNELS).unwrap();
        assert_eq!(
            tunnel_targets(&config),
            addresses(&["192.0.2.11", "198.51.100.11", "192.0.2.12", "2001:db8::11"])
        );
        let again = TUNNELS.replace(
            "backends: [{ address: '2001:db8::11' }]",
            "backends: [{ address: '2001:db8::11' }] }\n  - { name: t6b, vip: '2001:db8:ff::13', \
             port: 80, protocol: tcp, forwarding: tunnel, backends: [{ address: '2001:db8::11' }]",
        );
        assert_eq!(
            tunnel_targets(&Config::parse(&again).unwrap()),
            tunnel_targets(&config),
            "a backend of two tunnel services once"
        );
        let prefixed = format!("{TUNNELS}dataplane: {{ tunnel_source_v4: 192.0.2.240/28 }}\n");
        assert_eq!(
            tunnel_targets(&Config::parse(&prefixed).unwrap()),
            addresses(&["2001:db8::11"])
        );
        assert!(tunnel_targets(&super::config("")).is_empty(), "no tunnels");
    }

    #[test]
    fn a_configured_prefix_wins_and_no_route_means_no_default() {
        let text = format!("{TUNNELS}dataplane: {{ tunnel_source_v4: 192.0.2.240/28 }}\n");
        let config = Config::parse(&text).unwrap();
        let (sources, _) = default_tunnel_sources(&config, |backend| {
            assert!(backend.is_ipv6(), "asked for {backend} despite the prefix");
            None
        });
        assert_eq!(sources, TunnelSources::default());
        let settings = settings_with(
            &config,
            TunnelSources {
                v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
                v6: None,
            },
        );
        assert_eq!(settings.tunnel_v4_source, [192, 0, 2, 240]);
        assert_eq!(settings.tunnel_v4_host_bits, 4);
        assert_eq!(settings.tunnel_v6_source, [0; 16]);
    }
}

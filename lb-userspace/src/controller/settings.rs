//! From the configuration to what the data plane is loaded and run with:
//! map sizes, the `SETTINGS` entry (idle timeouts, ring size, tunnel
//! sources, rate limit, flags) and the automatic guard's thresholds; and
//! the default tunnel sources, found from the egress interfaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    config::{Config, Forwarding},
    dataplane::Sizes,
    hops::HopCache,
};
use lb_common::Settings;

/// Map sizes from the configuration.
pub fn sizes(config: &Config) -> Sizes {
    Sizes::of(config)
}

/// The automatic guard's thresholds from the configuration (all zero
/// without `guard.auto`).
pub fn guard_settings(config: &Config) -> lb_common::maps::GuardSettings {
    let Some(auto) = config.guard.auto else {
        return lb_common::maps::GuardSettings::default();
    };
    lb_common::maps::GuardSettings {
        new_flows: auto.new_flows_per_second.unwrap_or(0),
        syn_only: auto.syn_only_per_second.unwrap_or(0),
        packets: auto.packets_per_second.unwrap_or(0),
        pad: 0,
        deny_ns: u64::try_from(auto.deny_for.as_nanos()).unwrap_or(u64::MAX),
    }
}

/// Runtime settings from the configuration.
pub fn settings(config: &Config) -> Settings {
    let dataplane = &config.dataplane;
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut settings = Settings {
        tcp_idle_ns: nanos(dataplane.tcp_idle_timeout),
        udp_idle_ns: nanos(dataplane.udp_idle_timeout),
        ring_size: dataplane.ring_size,
        ..Settings::default()
    };
    if config
        .services
        .iter()
        .any(|s| s.forwarding == crate::config::Forwarding::Nat)
    {
        settings.flags |= lb_common::maps::SETTINGS_NAT;
    }
    if !config.guard.deny.is_empty() {
        settings.flags |= lb_common::maps::SETTINGS_DENY;
    }
    if config.guard.auto.is_some() {
        settings.flags |= lb_common::maps::SETTINGS_GUARD;
    }
    if config.guard.attack.is_some() {
        settings.flags |= lb_common::maps::SETTINGS_ATTACK;
    }
    if let Some(limit) = config.guard.rate_limit {
        settings.rate_per_second = limit.new_flows_per_second;
        settings.rate_burst = limit.burst.unwrap_or(limit.new_flows_per_second);
    }
    if let Some(net) = dataplane.tunnel_source_v4 {
        settings.tunnel_v4_source = net.network().octets();
        settings.tunnel_v4_host_bits = u32::from(32 - net.prefix_len());
    }
    if let Some(net) = dataplane.tunnel_source_v6 {
        settings.tunnel_v6_source = net.network().octets();
        settings.tunnel_v6_host_bits = u32::from(128 - net.prefix_len()).min(32);
    }
    settings
}

/// The outer source addresses of tunnels for the families whose
/// `dataplane.tunnel_source_*` prefix is unset: this host's own address
/// towards the backends (`ip route get BACKEND` → `src`).
///
/// One address per family, in `SETTINGS`: correct when the tunnel backends
/// of a family leave by one interface. Backends reached from different
/// addresses all get the first one (see [`default_tunnel_sources`]); a
/// configured prefix chooses instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelSources {
    /// For IPv4 (IPIP) tunnels.
    pub v4: Option<Ipv4Addr>,
    /// For IPv6 (IP6IP6) tunnels.
    pub v6: Option<Ipv6Addr>,
}

/// Whether tunnels of one family (`v6` or not) need a default source: a
/// tunnel service of that family and no configured prefix.
pub(super) fn needs_default_source(config: &Config, v6: bool) -> bool {
    let configured = if v6 {
        config.dataplane.tunnel_source_v6.is_some()
    } else {
        config.dataplane.tunnel_source_v4.is_some()
    };
    !configured
        && config
            .services
            .iter()
            .any(|s| s.forwarding == Forwarding::Tunnel && s.vip.is_ipv6() == v6)
}

/// The tunnel backends whose outer source is this host's address towards
/// them: those of a family with no configured prefix, once each, in
/// configuration order. What the hop follower looks the sources up for,
/// and all that [`default_tunnel_sources`] asks.
pub(super) fn tunnel_targets(config: &Config) -> Vec<IpAddr> {
    let mut seen = std::collections::BTreeSet::new();
    config
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Tunnel)
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .filter(|backend| needs_default_source(config, backend.is_ipv6()) && seen.insert(*backend))
        .collect()
}

/// Picks the default tunnel sources for `config` (pure: `source_towards`
/// answers `ip route get`'s `src` for a backend of [`tunnel_targets`]).
/// Per family that needs one, the source towards the first tunnel backend,
/// in configuration order, that has a route; also returns every other
/// (backend, source) that differs from the one picked, for a warning.
pub fn default_tunnel_sources(
    config: &Config,
    mut source_towards: impl FnMut(IpAddr) -> Option<IpAddr>,
) -> (TunnelSources, Vec<(IpAddr, IpAddr)>) {
    let mut sources = TunnelSources::default();
    let mut others = Vec::new();
    for backend in tunnel_targets(config) {
        match (backend, source_towards(backend)) {
            (IpAddr::V4(_), Some(IpAddr::V4(source))) => match sources.v4 {
                None => sources.v4 = Some(source),
                Some(picked) if picked != source => others.push((backend, IpAddr::V4(source))),
                Some(_) => {}
            },
            (IpAddr::V6(_), Some(IpAddr::V6(source))) => match sources.v6 {
                None => sources.v6 = Some(source),
                Some(picked) if picked != source => others.push((backend, IpAddr::V6(source))),
                Some(_) => {}
            },
            _ => {}
        }
    }
    (sources, others)
}

/// [`default_tunnel_sources`] asked of the kernel's routes on the calling
/// thread (at start, and for a reload's new configuration); none without
/// netlink. The hop follower asks them off the owner's thread instead
/// ([`crate::hops::Resolver::lookup`]).
pub(super) fn resolve_tunnel_sources(
    hops: Option<&mut HopCache>,
    config: &Config,
) -> (TunnelSources, Vec<(IpAddr, IpAddr)>) {
    let Some(hops) = hops else {
        return (TunnelSources::default(), Vec::new());
    };
    default_tunnel_sources(config, |backend| match hops.source_towards(backend) {
        Ok(source) => source,
        Err(error) => {
            tracing::debug!(%backend, %error, "no route to a tunnel backend");
            None
        }
    })
}

/// Logs the default tunnel sources when they change (`before` is `None` at
/// start): the address picked, backends that would want another, or that
/// there is none yet.
pub(super) fn log_tunnel_sources(
    before: Option<TunnelSources>,
    now: TunnelSources,
    others: &[(IpAddr, IpAddr)],
    config: &Config,
) {
    let families = [
        (
            false,
            before.map(|b| b.v4.map(IpAddr::V4)),
            now.v4.map(IpAddr::V4),
        ),
        (
            true,
            before.map(|b| b.v6.map(IpAddr::V6)),
            now.v6.map(IpAddr::V6),
        ),
    ];
    for (v6, before, now) in families {
        if !needs_default_source(config, v6) || before == Some(now) {
            continue;
        }
        let key = if v6 {
            "tunnel_source_v6"
        } else {
            "tunnel_source_v4"
        };
        let Some(source) = now else {
            tracing::warn!(
                "no route to any {} tunnel backend: no outer source for those tunnels \
                 until one appears (or set dataplane.{key})",
                if v6 { "IPv6" } else { "IPv4" }
            );
            continue;
        };
        tracing::info!(
            %source,
            "tunnel outer source: this host's address towards the backends (dataplane.{key} unset)"
        );
        let differ: Vec<String> = others
            .iter()
            .filter(|(backend, _)| backend.is_ipv6() == v6)
            .map(|(backend, own)| format!("{backend} (from {own})"))
            .collect();
        if !differ.is_empty() {
            tracing::warn!(
                %source,
                backends = %differ.join(", "),
                "these tunnel backends are reached from other addresses, yet every tunnel \
                 leaves from {source}; set dataplane.{key} to choose"
            );
        }
    }
}

/// Runtime settings from the configuration, with `defaults` as the tunnel
/// source of each family whose prefix the configuration leaves unset (all
/// host bits fixed: one address).
pub fn settings_with(config: &Config, defaults: TunnelSources) -> Settings {
    let mut settings = settings(config);
    if config.dataplane.tunnel_source_v4.is_none()
        && let Some(source) = defaults.v4
    {
        settings.tunnel_v4_source = source.octets();
        settings.tunnel_v4_host_bits = 0;
    }
    if config.dataplane.tunnel_source_v6.is_none()
        && let Some(source) = defaults.v6
    {
        settings.tunnel_v6_source = source.octets();
        settings.tunnel_v6_host_bits = 0;
    }
    settings
}

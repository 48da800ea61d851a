//! What a configuration asks of the host it runs on: the interfaces it
//! names exist, and the HA interface has an address to send VRRP from
//! (IPv4, or IPv6 link-local for an instance whose floating IPs are all
//! IPv6). `lb check` prints these as warnings (it may be run on another
//! machine than the balancer); `lb run` refuses to start on them, before it
//! changes anything.

use crate::{
    config::{Config, ConfigProblem},
    dataplane::memory::{TableMemory, human},
};

/// The problems of `config` on this host, in the current network
/// namespace; lines are not filled in (see [`crate::config::locate`]).
pub fn problems(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut push = |path: String, message: String| {
        problems.push(ConfigProblem {
            path,
            line: None,
            column: None,
            message,
        });
    };
    for (i, interface) in config.interfaces.iter().enumerate() {
        if crate::netlink::ifindex(&interface.name).is_err() {
            push(
                format!("interfaces[{i}].name"),
                format!("no interface {:?} on this host", interface.name),
            );
        }
    }
    let sections = config.ha.iter().map(|ha| (ha, ha.instances()));
    let mut seen: Vec<(String, crate::vrrp::Family)> = Vec::new();
    for (ha, instances) in sections {
        for (i, instance) in instances.iter().enumerate() {
            let interface = &instance.interface;
            let family = crate::vrrp::Family::for_floating(
                instance.floating_ips.iter().map(ipnet::IpNet::addr),
            );
            if seen.contains(&(interface.clone(), family)) {
                continue;
            }
            seen.push((interface.clone(), family));
            let path = ha.path_of(i, "interface");
            if crate::netlink::ifindex(interface).is_err() {
                push(path, format!("no interface {interface:?} on this host"));
                continue;
            }
            let (netlink_family, what) = match family {
                crate::vrrp::Family::V4 => (crate::netlink::Family::V4, "IPv4 address"),
                crate::vrrp::Family::V6 => (
                    crate::netlink::Family::V6,
                    "IPv6 link-local address (the instance's floating IPs are all IPv6, so \
                     VRRP runs over IPv6)",
                ),
            };
            match crate::netlink::primary_address(interface, netlink_family) {
                Ok(Some(_)) => {}
                Ok(None) => push(
                    path,
                    format!("{interface} has no {what}: VRRP advertisements are sent from it"),
                ),
                Err(error) => push(path, format!("{error:#}")),
            }
        }
    }
    if let Some(sync) = &config.sync {
        if let Some(interface) = sync.interface_for(config.ha.as_ref())
            && crate::netlink::ifindex(&interface).is_err()
        {
            let path = if sync.interface.is_some() {
                "sync.interface"
            } else {
                "ha.interface"
            };
            push(
                path.into(),
                format!("no interface {interface:?} on this host (connection sync runs on it)"),
            );
        }
        if let Err(error) = crate::sync::read_key(&sync.secret_file) {
            push("sync.secret_file".into(), format!("{error:#}"));
        }
    }
    let memory = table_memory(config);
    if let Some(available) = available_memory()
        && memory.total() > available
    {
        push(
            "dataplane".into(),
            format!(
                "the data path's tables need about {} of kernel memory (Maglev {}, \
                 connection tables {}, the rest {}) and this host has {} available: lower \
                 dataplane.max_services, ring_size or connection_table_size",
                human(memory.total()),
                human(memory.maglev),
                human(memory.connections),
                human(memory.other),
                human(available)
            ),
        );
    }
    problems
}

/// The kernel memory `config`'s tables take on this host's CPUs.
pub fn table_memory(config: &Config) -> TableMemory {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    TableMemory::of(
        &crate::dataplane::Sizes::of(config),
        u32::try_from(cpus).unwrap_or(u32::MAX),
    )
}

/// Memory the kernel can still give this process's maps: the system's
/// `MemAvailable`, or less if the memory cgroup's `memory.max` leaves less.
/// BPF maps are charged to the memory cgroup (Linux 5.11 on); the
/// locked-memory rlimit no longer applies to them. `None` when neither can
/// be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("MemAvailable:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
            let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            let max = read("memory.max")?.trim().parse::<u64>().ok()?;
            let current = read("memory.current")?.trim().parse::<u64>().ok()?;
            Some(max.saturating_sub(current))
        });
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

//! Floating IPs a dead `lb run` left behind. A master killed by SIGKILL
//! (or crashing) never hands over: its floating IPs stay on the HA
//! interface, and the kernel keeps answering ARP / neighbour solicitations
//! for them while the peer, now master, holds them too. So `lb run`
//! removes them when it starts, before VRRP runs, and `lb release` (the
//! unit's `ExecStopPost=`) removes them however the process ended.
//!
//! [`stale`] decides (pure); [`release`] lists the interface's addresses
//! and removes the stale ones by netlink, as [`crate::ha`] adds them.

use ipnet::IpNet;

use crate::config::HaInstance;
use crate::netlink::{Family, Netlink, NetlinkError, ifindex};

/// Why the floating IPs could not be listed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The HA interface does not exist.
    #[error("{0:#}")]
    Interface(anyhow::Error),
    /// Listing the addresses failed.
    #[error("listing the addresses of {interface}: {source}")]
    List {
        /// The HA interface.
        interface: String,
        /// What netlink said.
        #[source]
        source: NetlinkError,
    },
    /// Removing an address failed.
    #[error("removing {address} from {interface}: {source}")]
    Remove {
        /// The floating IP, as the interface holds it.
        address: IpNet,
        /// The HA interface.
        interface: String,
        /// What netlink said.
        #[source]
        source: NetlinkError,
    },
}

/// The addresses in `present` (an interface's, with their prefix lengths)
/// that are floating IPs of `floating`. An address counts whatever its
/// prefix length: it is the address that answers ARP.
pub fn stale(floating: &[IpNet], present: &[IpNet]) -> Vec<IpNet> {
    present
        .iter()
        .filter(|held| floating.iter().any(|f| f.addr() == held.addr()))
        .copied()
        .collect()
}

/// The addresses the interface `index` holds, both families.
fn addresses(
    netlink: &mut Netlink,
    index: u32,
    interface: &str,
) -> Result<Vec<IpNet>, ReleaseError> {
    let mut all = Vec::new();
    for family in [Family::V4, Family::V6] {
        let held = netlink
            .addresses(index, family)
            .map_err(|source| ReleaseError::List {
                interface: interface.to_string(),
                source,
            })?;
        all.extend(held.iter().map(|a| a.address));
    }
    Ok(all)
}

/// Removes the floating IPs of the instance `ha` that `ha.interface` holds; returns
/// them (empty: nothing to do). Stops at the first one that cannot be
/// removed; one gone meanwhile is what was wanted.
pub fn release(ha: &HaInstance) -> Result<Vec<IpNet>, ReleaseError> {
    let index = ifindex(&ha.interface).map_err(ReleaseError::Interface)?;
    let mut netlink = Netlink::open().map_err(|source| ReleaseError::List {
        interface: ha.interface.clone(),
        source,
    })?;
    let held = stale(
        &ha.floating_ips,
        &addresses(&mut netlink, index, &ha.interface)?,
    );
    for address in &held {
        netlink
            .address_delete(index, *address)
            .map_err(|source| ReleaseError::Remove {
                address: *address,
                interface: ha.interface.clone(),
                source,
            })?;
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn only_floating_ips_are_stale_whatever_their_prefix() {
        // What a balancer a master killed by SIGKILL left holds: its own
        // addresses, two floating IPs (one with another prefix length).
        let present = nets(&[
            "192.0.2.1/24",
            "198.51.100.1/24",
            "192.0.2.254/24",
            "2001:db8::fe/64",
            "2001:db8::1/64",
            "fe80::8c1f:5aff:fe0e:1/64",
        ]);
        let floating = nets(&["198.51.100.1/24", "192.0.2.254/32", "2001:db8::fe/64"]);
        assert_eq!(
            stale(&floating, &present),
            nets(&["198.51.100.1/24", "192.0.2.254/24", "2001:db8::fe/64"])
        );
        // The interface's own addresses are never touched.
        assert_eq!(stale(&nets(&["203.0.113.10/24"]), &present), []);
        assert_eq!(stale(&[], &present), []);
    }
}

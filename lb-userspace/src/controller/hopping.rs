//! Next hops and the tunnels' default outer sources: looked up at start
//! and reload on the calling thread, by the hop follower on its own, and
//! written by the owner.

use super::{
    Controller,
    settings::{TunnelSources, default_tunnel_sources, log_tunnel_sources, tunnel_targets},
};

impl Controller {
    /// Resolves every backend's next hop and writes the `HOPS` entries that
    /// changed (and clears those of backends that are gone); returns how
    /// many were written. Called at start and after a reload, on the
    /// calling thread; the hop follower does the same lookup on its own
    /// thread whenever the kernel's neighbours, routes or links change
    /// ([`Controller::write_hops`]). A backend whose hop cannot be
    /// resolved gets an empty entry: its packets ask the FIB. The default
    /// tunnel sources follow the routes too.
    pub fn refresh_hops(&mut self) -> usize {
        let Some(targets) = self.hop_targets() else {
            return 0;
        };
        let Some(hops) = self.hops.as_mut() else {
            return 0;
        };
        let lookup = hops.lookup(&targets);
        self.write_hops(lookup)
    }

    /// Waits at most `within` for the next hops still being resolved and
    /// writes them ([`crate::hops::HopCache::settle`]).
    pub(super) fn settle_hops(&mut self, within: std::time::Duration) -> usize {
        let Some(targets) = self.hop_targets() else {
            return 0;
        };
        let Some(hops) = self.hops.as_mut() else {
            return 0;
        };
        hops.settle(&targets, &mut self.dataplane, within)
    }

    /// Writes the tunnels' default outer sources if they changed; returns
    /// the writes (0 or 1).
    pub(super) fn write_tunnel_sources(
        &mut self,
        sources: TunnelSources,
        others: &[(std::net::IpAddr, std::net::IpAddr)],
    ) -> usize {
        if sources == self.tunnel_sources {
            return 0;
        }
        let settings = self.settings_for(&self.config, sources);
        match self.dataplane.set_settings(&settings) {
            Ok(()) => {
                log_tunnel_sources(Some(self.tunnel_sources), sources, others, &self.config);
                self.tunnel_sources = sources;
                1
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "writing the tunnel source");
                0
            }
        }
    }

    /// What the hop follower looks up (on its own thread): the backends'
    /// next hops, the routing table if a NAT service needs it, and the
    /// source towards each tunnel backend that takes a default outer
    /// source; `None` when netlink is unavailable (every packet asks the
    /// FIB).
    pub fn hop_targets(&self) -> Option<crate::hops::Targets> {
        self.hops.as_ref().map(|_| crate::hops::Targets {
            tunnels: tunnel_targets(&self.config),
            ..crate::hops::targets(self.planner.planned())
        })
    }

    /// Writes what a [`crate::hops::Resolver::lookup`] found (on the
    /// follower's thread, or at start and reload on this one): the next
    /// hops, the mirrored routes, and the tunnels' default outer sources,
    /// picked from the sources it found with no netlink request here.
    /// Returns how many entries were written. A lookup made for other
    /// targets than the current ones (a reload came between) is dropped:
    /// the reload refreshed the hops itself.
    pub fn write_hops(&mut self, lookup: crate::hops::Lookup) -> usize {
        if self.hop_targets().as_ref() != Some(&lookup.targets) {
            return 0;
        }
        let (sources, others) =
            default_tunnel_sources(&self.config, |tunnel| lookup.source_towards(tunnel));
        let written = match self.hops.as_mut() {
            Some(hops) => hops.write(lookup, &mut self.dataplane),
            None => 0,
        };
        written + self.write_tunnel_sources(sources, &others)
    }
}

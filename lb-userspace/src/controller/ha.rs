//! The controller's side of VRRP: the instances started from the `ha`
//! section, told the services' health (tracking), and handed over.

use super::Controller;
use crate::plan::BackendKey;

impl Controller {
    /// Starts VRRP, one instance after the other, if the configuration
    /// asks for it; a failure stops those already started. `alarm` is
    /// raised when an instance can no longer run (one of its threads
    /// stopped).
    pub fn start_ha(&mut self, alarm: &crate::ha::Alarm) -> anyhow::Result<()> {
        let Some(section) = &self.config.ha else {
            return Ok(());
        };
        for mut instance in section.instances() {
            // An instance stepping down must not take another's addresses.
            match crate::sysctl::promote_secondaries(&instance.interface) {
                Ok(true) => tracing::info!(interface = %instance.interface,
                    "ha: set promote_secondaries, so removing one floating IP keeps the \
                     others of its subnet"),
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %format!("{error:#}"),
                    "ha: cannot set promote_secondaries: an instance stepping down may \
                     remove another's floating IPs of the same subnet"),
            }
            for track in &mut instance.track {
                let service = self
                    .config
                    .services
                    .iter()
                    .find(|s| s.name == track.service);
                track.min_healthy = track.min_healthy.or(service.map(|s| s.min_healthy));
            }
            let ha = match crate::ha::Ha::start(&instance, alarm.clone()) {
                Ok(ha) => ha,
                Err(error) => {
                    self.stop_ha();
                    return Err(error.context(format!(
                        "ha: the instance with virtual_router_id {}",
                        instance.virtual_router_id
                    )));
                }
            };
            ha.track(self.healthy_backends());
            self.ha.push(ha);
            tracing::info!(interface = %instance.interface, vrid = instance.virtual_router_id,
                priority = instance.priority, "ha: VRRP started");
        }
        Ok(())
    }

    /// Handles that start VRRP's hand-over of every instance from another
    /// thread at once (empty without HA); [`Controller::stop_ha`] waits for
    /// them.
    pub fn ha_hand_over(&self) -> Vec<crate::ha::HandOver> {
        self.ha.iter().map(crate::ha::Ha::hand_over).collect()
    }

    /// Hands over (a master sends priority 0 and drops its floating IPs),
    /// every instance at once.
    pub fn stop_ha(&mut self) {
        let stopping: Vec<_> = self
            .ha
            .drain(..)
            .map(|ha| std::thread::spawn(move || ha.stop()))
            .collect();
        for stop in stopping {
            let _ = stop.join();
        }
    }

    /// Healthy (not down) backends per service, for the HA tracks.
    pub(super) fn healthy_backends(&self) -> crate::ha::Healthy {
        self.config
            .services
            .iter()
            .map(|service| {
                let healthy = service
                    .backends
                    .iter()
                    .filter(|b| {
                        let key = BackendKey {
                            service: service.name.clone(),
                            address: b.address,
                            port: b.port_for(service),
                        };
                        self.states.get(&key).is_none_or(|s| s.up)
                    })
                    .count();
                (
                    service.name.clone(),
                    u32::try_from(healthy).unwrap_or(u32::MAX),
                )
            })
            .collect()
    }

    /// Tells every HA instance the services' health (tracking).
    pub(super) fn track_health(&self) {
        if self.ha.is_empty() {
            return;
        }
        let healthy = self.healthy_backends();
        for ha in &self.ha {
            ha.track(healthy.clone());
        }
    }
}

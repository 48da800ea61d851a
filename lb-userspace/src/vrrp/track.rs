//! What the world around a virtual router does to it (keepalived's
//! tracking): its interface down or without its address, or floating IPs
//! the kernel refused to add ([`Refusal`], from [`Holding`](super::Holding)),
//! put it in `fault`; a tracked service short of healthy backends lowers
//! its priority by the track's weight, or, with weight 0, puts it in
//! `fault` too. [`assess`] turns what the I/O layer observed into that verdict;
//! [`Router::set_priority`](super::Router::set_priority),
//! [`Router::fault`](super::Router::fault) and
//! [`Router::recover`](super::Router::recover) apply it. Pure, no I/O.

use std::fmt;

use super::Refusal;

/// Why a router is in `fault`: no advertisements, no floating IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultCause {
    /// The VRRP interface is down (administratively or no carrier).
    LinkDown {
        /// The interface.
        interface: String,
    },
    /// The VRRP interface lost the address advertisements are sent from.
    NoAddress {
        /// The interface.
        interface: String,
    },
    /// A track with weight 0 failed.
    Tracked(TrackHealth),
    /// As master, its floating IPs could not all be added within the
    /// bound ([`HoldPolicy::bound`](super::HoldPolicy::bound)).
    Refused(Refusal),
    /// A thread of the instance (the VRRP thread or the address thread)
    /// stopped: the instance cannot run any more (`lb run` exits so that
    /// the service manager restarts it).
    ThreadStopped {
        /// Which thread.
        thread: String,
        /// Why, as far as known (a panic's message).
        why: String,
    },
}

impl FaultCause {
    /// A short name of the kind of cause, for a metric's label:
    /// `link_down`, `no_address`, `track`, `floating_ip_refused`,
    /// `thread_stopped`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LinkDown { .. } => "link_down",
            Self::NoAddress { .. } => "no_address",
            Self::Tracked(_) => "track",
            Self::Refused(_) => "floating_ip_refused",
            Self::ThreadStopped { .. } => "thread_stopped",
        }
    }
}

impl fmt::Display for FaultCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkDown { interface } => write!(f, "interface {interface} is down"),
            Self::NoAddress { interface } => {
                write!(
                    f,
                    "interface {interface} lost the address VRRP is sent from"
                )
            }
            Self::Tracked(track) => write!(f, "{track}"),
            Self::Refused(refusal) => write!(f, "{refusal}"),
            Self::ThreadStopped { thread, why } => write!(f, "the {thread} thread stopped: {why}"),
        }
    }
}

/// One tracked service as last seen: its settings and its healthy
/// backends on this balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackHealth {
    /// The service.
    pub service: String,
    /// How much the priority drops while failing; 0: fault instead.
    pub weight: u8,
    /// Healthy backends needed.
    pub min_healthy: u32,
    /// Healthy backends now.
    pub healthy: u32,
}

impl TrackHealth {
    /// Fewer healthy backends than needed.
    pub fn failing(&self) -> bool {
        self.healthy < self.min_healthy
    }
}

impl fmt::Display for TrackHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} has {} healthy backends (needs {})",
            self.service, self.healthy, self.min_healthy
        )
    }
}

/// What the I/O layer observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// The VRRP interface.
    pub interface: String,
    /// It is up and has carrier.
    pub link_up: bool,
    /// It holds the address advertisements are sent from.
    pub address_held: bool,
    /// Its floating IPs were refused and the hold-down has not ended.
    pub refused: Option<Refusal>,
    /// Each tracked service.
    pub tracks: Vec<TrackHealth>,
}

/// The verdict on a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// It must not run: no advertisements, no addresses.
    Fault(FaultCause),
    /// It runs at `priority`: the configured one less the weights of the
    /// failing tracks (`lowered_by`), never below 1.
    Run {
        /// The priority in effect.
        priority: u8,
        /// The failing tracks that lowered it.
        lowered_by: Vec<TrackHealth>,
    },
}

impl Assessment {
    /// Why the priority in effect is what it is, for `lb status`.
    pub fn priority_reason(&self, configured: u8) -> String {
        match self {
            Self::Fault(cause) => format!("fault: {cause}"),
            Self::Run { lowered_by, .. } if lowered_by.is_empty() => {
                format!("configured {configured}")
            }
            Self::Run { lowered_by, .. } => {
                let why: Vec<String> = lowered_by
                    .iter()
                    .map(|t| format!("-{}: {t}", t.weight))
                    .collect();
                format!("configured {configured}, {}", why.join(", "))
            }
        }
    }
}

/// The verdict for a router of `configured` priority under `conditions`:
/// the link first, then the address, then refused floating IPs (a link
/// down is the likelier cause of a refusal, so it is named first), then
/// weight-0 tracks (fault), then
/// the weights of the failing tracks, summed (keepalived's
/// `vrrp_set_effective_priority`, clamped to 1..=254 as it does).
pub fn assess(configured: u8, conditions: &Conditions) -> Assessment {
    if !conditions.link_up {
        return Assessment::Fault(FaultCause::LinkDown {
            interface: conditions.interface.clone(),
        });
    }
    if !conditions.address_held {
        return Assessment::Fault(FaultCause::NoAddress {
            interface: conditions.interface.clone(),
        });
    }
    if let Some(refusal) = &conditions.refused {
        return Assessment::Fault(FaultCause::Refused(refusal.clone()));
    }
    let failing: Vec<&TrackHealth> = conditions.tracks.iter().filter(|t| t.failing()).collect();
    if let Some(fatal) = failing.iter().find(|t| t.weight == 0) {
        return Assessment::Fault(FaultCause::Tracked((*fatal).clone()));
    }
    let lowered: u32 = failing.iter().map(|t| u32::from(t.weight)).sum();
    let priority = u32::from(configured).saturating_sub(lowered).clamp(1, 254);
    Assessment::Run {
        priority: u8::try_from(priority).unwrap_or(1),
        lowered_by: failing.into_iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(service: &str, weight: u8, min_healthy: u32, healthy: u32) -> TrackHealth {
        TrackHealth {
            service: service.into(),
            weight,
            min_healthy,
            healthy,
        }
    }

    fn conditions(tracks: Vec<TrackHealth>) -> Conditions {
        Conditions {
            interface: "eth0".into(),
            link_up: true,
            address_held: true,
            refused: None,
            tracks,
        }
    }

    #[test]
    fn healthy_tracks_leave_the_configured_priority() {
        let verdict = assess(150, &conditions(vec![track("web", 60, 1, 2)]));
        assert_eq!(
            verdict,
            Assessment::Run {
                priority: 150,
                lowered_by: vec![]
            }
        );
        assert_eq!(verdict.priority_reason(150), "configured 150");
        assert_eq!(assess(150, &conditions(vec![])), verdict);
    }

    #[test]
    fn failing_tracks_lower_by_their_weights_never_below_one() {
        let web = track("web", 60, 2, 1);
        let verdict = assess(150, &conditions(vec![web.clone(), track("dns", 30, 1, 1)]));
        assert_eq!(
            verdict,
            Assessment::Run {
                priority: 90,
                lowered_by: vec![web.clone()]
            }
        );
        assert_eq!(
            verdict.priority_reason(150),
            "configured 150, -60: service web has 1 healthy backends (needs 2)"
        );
        let both = assess(150, &conditions(vec![web, track("dns", 100, 1, 0)]));
        assert!(
            matches!(both, Assessment::Run { priority: 1, ref lowered_by } if lowered_by.len() == 2)
        );
    }

    #[test]
    fn link_address_and_weightless_tracks_mean_fault_in_that_order() {
        let mut seen = conditions(vec![track("web", 0, 1, 0), track("dns", 50, 1, 0)]);
        assert_eq!(
            assess(150, &seen),
            Assessment::Fault(FaultCause::Tracked(track("web", 0, 1, 0)))
        );
        let refusal = Refusal {
            address: "2001:db8::fe/64".parse().unwrap(),
            error: "Permission denied".into(),
            attempts: 6,
            over: std::time::Duration::from_millis(1250),
        };
        seen.refused = Some(refusal.clone());
        let verdict = assess(150, &seen);
        assert_eq!(verdict, Assessment::Fault(FaultCause::Refused(refusal)));
        assert_eq!(
            verdict.priority_reason(150),
            "fault: floating IP 2001:db8::fe/64 not added in 6 tries over 1250 ms: \
             Permission denied"
        );
        seen.address_held = false;
        assert_eq!(
            assess(150, &seen).priority_reason(150),
            "fault: interface eth0 lost the address VRRP is sent from"
        );
        seen.link_up = false;
        assert_eq!(
            assess(150, &seen),
            Assessment::Fault(FaultCause::LinkDown {
                interface: "eth0".into()
            })
        );
        // A weight-0 track that is healthy is no fault.
        let fine = conditions(vec![track("web", 0, 1, 1)]);
        assert!(matches!(
            assess(150, &fine),
            Assessment::Run { priority: 150, .. }
        ));
    }
}

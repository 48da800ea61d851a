//! The two ways `lb run` ends, each the owner's last job (it gets the
//! controller by value, after the jobs already queued). Both hand VRRP over
//! first (the signal loop has already asked every instance to), stop
//! connection sync and withdraw the announced VIPs; then they part.

use std::collections::BTreeMap;

use lb_common::Reason;

use crate::controller::Controller;

/// The clean stop (SIGINT, SIGTERM): hand over, withdraw and wait for the
/// upstream to move the VIPs' traffic (the data plane keeps forwarding the
/// flows it still sends here meanwhile), read the verdict counters for the
/// final report, then detach and unpin ([`Controller::stop`]).
pub(super) fn clean(mut c: Controller) -> anyhow::Result<BTreeMap<Reason, u64>> {
    c.stop_ha();
    c.stop_sync();
    if let Some(delay) = c.withdraw_all() {
        std::thread::sleep(delay);
    }
    match c.reason_counters() {
        Ok(counters) => c.stop().map(|()| counters),
        Err(error) => {
            // Nothing detached: the next `lb run`, or `lb detach`, finds the
            // data plane as it was.
            c.close();
            Err(error)
        }
    }
}

/// SIGQUIT, and an HA instance that can no longer run: leaves the data
/// plane attached, pinned and forwarding with its last tables, for the
/// next `lb run` to take over (an upgrade, a restart by the service
/// manager). VRRP hands over and the announced VIPs are withdrawn (no
/// controller follows health from here on: the upstream sends them to the
/// other balancers), and the trace is turned off (the data plane must not
/// go on emitting events nobody reads). [`Controller::close`] then lets go
/// of the descriptors without detaching anything: the pins hold the data
/// plane, not this process.
pub(super) fn leave_running(mut c: Controller) {
    c.stop_ha();
    c.stop_sync();
    c.withdraw_all();
    if let Err(error) = c.set_trace(None) {
        tracing::warn!(error = %format!("{error:#}"), "turning the trace off");
    }
    c.close();
}

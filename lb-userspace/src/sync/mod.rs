//! Connection sync between balancers (DESIGN.md §4, `sync:`): balancers of
//! one HA pair or ECMP group tell each other the flows they schedule, so a
//! flow keeps its backend whichever balancer receives it — needed where the
//! scheduler's pick is local (round-robin, least-conn, resource) and for
//! hash-scheduled flows that began before the backend set changed.
//!
//! So far this holds the wire format (`wire.rs`: authenticated batches of
//! flows, the replay window); the data path's new-flow events, the
//! exchange with peers and the `sync:` section come next.

pub mod wire;

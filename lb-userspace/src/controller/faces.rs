//! The controller behind the faces' traits: what the control socket
//! ([`crate::api::Control`]), the metrics endpoint
//! ([`crate::metrics::Source`]) and the trace reader
//! ([`crate::trace::hub::Tracing`]) ask of it, answered by its own methods.
//! The faces name only their traits, never the controller.

use std::collections::BTreeMap;

use prometheus_client::metrics::histogram::Histogram;

use super::Controller;
use crate::{
    guard::GuardReport,
    plan::BackendKey,
    report::{
        BackendStatus, Override, OverrideError, RouteError, ServiceFilter, StatsReport,
        StatusReport,
    },
    route::report::{RouteReport, RouteRequest},
};

impl crate::trace::hub::Tracing for Controller {
    fn set_trace(&mut self, filter: Option<lb_common::trace::TraceSettings>) -> anyhow::Result<()> {
        Controller::set_trace(self, filter)
    }
}

impl crate::api::Control for Controller {
    fn reload(&mut self) -> anyhow::Result<usize> {
        Controller::reload(self)
    }
    fn override_backend(
        &mut self,
        service: &str,
        backend: &str,
        change: Override,
    ) -> Result<BackendStatus, OverrideError> {
        Controller::override_backend(self, service, backend, change)
    }
    fn route(&self, request: &RouteRequest) -> Result<RouteReport, RouteError> {
        Controller::route(self, request)
    }
    fn guard_report(&self) -> GuardReport {
        Controller::guard_report(self)
    }
    fn guard_deny(&mut self, prefix: ipnet::IpNet) -> Result<GuardReport, OverrideError> {
        Controller::guard_deny(self, prefix)
    }
    fn guard_allow(&mut self, prefix: ipnet::IpNet) -> Result<GuardReport, OverrideError> {
        Controller::guard_allow(self, prefix)
    }
    fn check_services(&self, filter: &ServiceFilter) -> Result<(), OverrideError> {
        Controller::check_services(self, filter)
    }
    fn status_of(&self, filter: &ServiceFilter) -> StatusReport {
        Controller::status_of(self, filter)
    }
    fn stats_of(&self, filter: &ServiceFilter) -> anyhow::Result<StatsReport> {
        Controller::stats_of(self, filter)
    }
}

impl crate::metrics::Source for Controller {
    fn status(&self) -> StatusReport {
        Controller::status(self)
    }
    fn stats(&self) -> anyhow::Result<StatsReport> {
        Controller::stats(self)
    }
    fn check_latency(&self) -> &BTreeMap<BackendKey, Histogram> {
        Controller::check_latency(self)
    }
    fn map_fill(&self) -> Vec<(&'static str, u64, u64)> {
        Controller::map_fill(self)
    }
}

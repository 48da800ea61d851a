//! `lb route` from a running controller: the decision read from its data
//! plane's maps (`crate::route`), named with its plan and status.

use super::Controller;
use crate::report::RouteError;
use crate::route::{
    self,
    maps::{MapTables, interface_name},
    report::{RouteReport, RouteRequest},
};

impl Controller {
    /// Where the flow of `request` goes and why. An operator's bad request
    /// is a [`RouteError::Request`]; a map that could not be read, a
    /// [`RouteError::Read`] (never an answer that takes it for empty).
    pub fn route(&self, request: &RouteRequest) -> Result<RouteReport, RouteError> {
        let query = request.query().map_err(RouteError::Request)?;
        let decision = route::decide(&query, &MapTables::new(self.dataplane()))?;
        Ok(route::report::build(
            request,
            &decision,
            self.planned(),
            &self.status(),
            interface_name,
        ))
    }
}

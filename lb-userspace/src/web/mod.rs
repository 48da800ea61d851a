//! The read-only status page on `control.web`: one HTML page (inline CSS
//! and script, compiled in from `page.html`) that polls the JSON beside it.
//!
//! | Method | Path           | Answer                                             |
//! |--------|----------------|----------------------------------------------------|
//! | GET    | `/`            | the page                                           |
//! | GET    | `/status.json` | what `GET /v1/status` answers on the control socket (`lb status --output json`) |
//! | GET    | `/stats.json`  | what `GET /v1/stats` answers (`lb stats --output json`) |
//! | GET    | `/metrics`     | the metrics, when `control.metrics` is the same address |
//! | GET    | `/favicon.ico` | 204, empty (browsers ask for it)                   |
//!
//! Both JSON paths take `?service=NAME` as the control API does. Any other
//! method is refused with 405 (a body over [`MAX_BODY`] bytes is refused
//! with 413 before the method is looked at); any other path is 404. Every answer
//! carries a Content-Security-Policy that lets the page load nothing from
//! anywhere but this listener.
//!
//! The routing (`route.rs`) is pure; [`serve`] here is the I/O edge.

use std::{net::SocketAddr, sync::Arc};

use hyper::body::Bytes;

pub use route::{CSP, HEADERS, PAGE, Route, route};

use crate::{
    http::{Request, Response},
    owner::ControllerHandle,
};

mod route;

/// The longest request body read (only to be refused: no request here has
/// one).
pub const MAX_BODY: usize = 4 * 1024;

/// Serves the page on `address` in the background (and `/metrics` too when
/// `metrics`), through [`crate::http`]: heads bounded to 8 KiB, bodies to
/// [`MAX_BODY`], each read bounded by 5 s and each connection by 30 s.
pub fn serve(
    address: SocketAddr,
    controller: ControllerHandle,
    metrics: bool,
) -> anyhow::Result<()> {
    let controller = controller.with_timeout(crate::http::OWNER_WAIT);
    crate::http::serve_tcp_at(
        address,
        "the status page address (control.web)",
        MAX_BODY,
        Arc::new(move |request: Request| answer(&request, &controller, metrics)),
    )
}

fn answer(request: &Request, controller: &ControllerHandle, metrics: bool) -> Response {
    let mut response = match route(&request.method, &request.path, metrics) {
        Route::Page => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: PAGE.to_string(),
            headers: Vec::new(),
        },
        Route::Status | Route::Stats => {
            let path = if request.path == "/status.json" {
                "/v1/status"
            } else {
                "/v1/stats"
            };
            crate::api::report(
                &Request {
                    method: "GET".into(),
                    path: path.into(),
                    query: request.query.clone(),
                    authorization: None,
                    body: Bytes::new(),
                },
                controller,
            )
        }
        Route::Metrics => crate::metrics::answer(request, controller),
        Route::Icon => Response {
            status: 204,
            content_type: "text/plain",
            body: String::new(),
            headers: Vec::new(),
        },
        Route::NotAllowed => {
            let mut refused = Response::error(405, "the status page is read-only: GET only");
            refused.headers.push(("allow", "GET"));
            refused
        }
        Route::NotFound => Response::error(
            404,
            "the status page is at /, its data at /status.json and /stats.json",
        ),
    };
    response.headers.extend(HEADERS);
    response
}

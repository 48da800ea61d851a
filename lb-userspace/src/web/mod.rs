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
//! method is refused with 405 (a request with a body is refused with 413
//! before its method is looked at); any other path is 404. Every answer
//! carries a Content-Security-Policy that lets the page load nothing from
//! anywhere but this listener.
//!
//! The routing ([`route`]) is pure; [`serve`] is the I/O edge.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use hyper::body::Bytes;

use crate::{
    http::{Limits, Request, Response},
    owner::ControllerHandle,
};

/// The page, compiled in.
pub const PAGE: &str = include_str!("page.html");

/// The page's own script and styles, and requests to this listener only.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
                       style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// Headers on every answer of the listener.
const HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
];

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`.
    Page,
    /// `GET /status.json`.
    Status,
    /// `GET /stats.json`.
    Stats,
    /// `GET /metrics` on a listener shared with `control.metrics`.
    Metrics,
    /// `GET /favicon.ico`, which browsers ask for unbidden: 204, nothing.
    Icon,
    /// A method other than GET.
    NotAllowed,
    /// A path not served.
    NotFound,
}

/// What `method` and `path` ask for; `metrics`: the listener also serves
/// `control.metrics`.
pub fn route(method: &str, path: &str, metrics: bool) -> Route {
    if method != "GET" {
        return Route::NotAllowed;
    }
    match path {
        "/" | "/index.html" => Route::Page,
        "/status.json" => Route::Status,
        "/stats.json" => Route::Stats,
        "/metrics" if metrics => Route::Metrics,
        "/favicon.ico" => Route::Icon,
        _ => Route::NotFound,
    }
}

/// Serves the page on `address` in the background (and `/metrics` too when
/// `metrics`), through [`crate::http`]: heads bounded to 8 KiB, no body,
/// each read bounded by 5 s and each connection by 30 s.
pub fn serve(
    address: SocketAddr,
    controller: ControllerHandle,
    metrics: bool,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding the status page address {address} (control.web)"))?;
    let limits = Limits {
        head: 8 * 1024,
        body: 0,
        read: Duration::from_secs(5),
        connection: Duration::from_secs(30),
        clients: 16,
        allow: Vec::new(),
    };
    let controller =
        controller.with_timeout(limits.connection.saturating_sub(Duration::from_secs(5)));
    crate::http::spawn_tcp(
        listener,
        limits,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_is_answered_and_metrics_only_when_shared() {
        assert_eq!(route("GET", "/", false), Route::Page);
        assert_eq!(route("GET", "/status.json", false), Route::Status);
        assert_eq!(route("GET", "/stats.json", true), Route::Stats);
        assert_eq!(route("GET", "/metrics", true), Route::Metrics);
        assert_eq!(route("GET", "/metrics", false), Route::NotFound);
        assert_eq!(route("GET", "/v1/status", false), Route::NotFound);
        for method in ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
            assert_eq!(route(method, "/", true), Route::NotAllowed, "{method}");
            assert_eq!(
                route(method, "/status.json", true),
                Route::NotAllowed,
                "{method}"
            );
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Inline script and style only: no URL the browser would fetch
        // but the listener's own JSON.
        for foreign in ["http://", "https://", "<link", "src=", "@import", "url("] {
            // The SVG namespace is a name, never fetched.
            let found = PAGE
                .match_indices(foreign)
                .find(|(at, _)| !PAGE[*at..].starts_with("http://www.w3.org/2000/svg"));
            assert!(found.is_none(), "the page names {foreign:?}: {found:?}");
        }
        assert!(PAGE.contains("fetch(\"/status.json\""));
        assert!(PAGE.contains("fetch(\"/stats.json\""));
        assert!(CSP.starts_with("default-src 'self'"));
    }
}

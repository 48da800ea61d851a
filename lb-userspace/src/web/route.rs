//! What a request to the status page asks for, and what every answer
//! carries: pure, no I/O (the listener is in `mod.rs`).

/// The page, compiled in.
pub const PAGE: &str = include_str!("page.html");

/// The page's own script and styles, and requests to this listener only.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
                       style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// Headers on every answer of the listener.
pub const HEADERS: [(&str, &str); 4] = [
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

//! A thousand services on one balancer (issue 24): a start with 1,000
//! services × 10 backends becomes ready and answers `lb status` within a
//! generous bound, so that a step quadratic in services or backends cannot
//! come back unseen; `/metrics` answers with every backend's series. Not
//! timed beyond the bound; the figures are the measurement's
//! (`scale_figures`, run by `cargo xtask bench --scale`).

use std::time::Duration;

use lb_tests::scale::Scale;

#[test]
fn a_thousand_services_of_ten_backends_start_and_answer_status() {
    // No health checks (the backends need not answer); a small ring keeps
    // the debug build's Maglev builds cheap: what is bounded here is the
    // work per service and per backend.
    let mut scale = Scale::new(1000, 10, None, 1021);
    let figures = scale.measure(Duration::from_mins(1));
    println!("{figures}");
    assert!(
        figures.socket < Duration::from_mins(1),
        "ready within 60 s: {figures}"
    );
    assert!(
        figures.status_bytes > 1000 * 10 * 20,
        "lb status lists every backend: {figures}"
    );
    assert!(
        figures.status < Duration::from_secs(10),
        "lb status within 10 s: {figures}"
    );
    assert!(
        figures.reload_ok && figures.reload < Duration::from_secs(20),
        "a one-weight reload within 20 s: {figures}"
    );
    // The scrape works at this size (its time is printed, not bounded: a
    // debug build on a shared machine; the release figure is in the docs).
    assert!(
        figures.metrics_status.starts_with("HTTP/1.1 200"),
        "/metrics answers: {figures}"
    );
    assert!(
        figures.metrics_series >= 1000 * 10 * 6,
        "/metrics has the backends' series: {figures}"
    );
}

/// The measurement: `LB_SCALE` (e.g. `100x10,1000x10`) services ×
/// backends, nat services with TCP checks every 5 s and the default ring,
/// all backends answering; `LB_BIN` picks the binary (the release one).
#[test]
#[ignore = "a measurement: cargo xtask bench --scale"]
fn scale_figures() {
    let sizes = std::env::var("LB_SCALE").unwrap_or_else(|_| "100x10,1000x10".into());
    for size in sizes.split(',') {
        let (services, backends) = size.split_once('x').expect("LB_SCALE: NxM,...");
        let mut scale = Scale::new(
            services.parse().expect("services"),
            backends.parse().expect("backends"),
            Some("{ kind: tcp, interval: 5s, timeout: 1s }"),
            65_537,
        );
        let figures = scale.measure(Duration::from_mins(5));
        println!("scale: {figures}");
    }
}

//! The demo's short mode, run as `cargo xtask demo` runs it (CI=true, no
//! progress line), with its summary checked: no request lost outside the
//! faults it announced, each fault detected within its bound (the
//! configured health-check or VRRP interval, plus scheduling slack), the good
//! client above 99 % during the flood, the connections held across the
//! master's death completed, and the timeline chart a PNG. The demo removes
//! everything it built; so does this test's guard if the demo is killed.

use std::{path::PathBuf, process::Command, time::Duration};

use lb_tests::{lb_binary, netns::wait_until};

/// The demo example (`cargo test` and `cargo xtask demo` build it).
fn demo_binary() -> PathBuf {
    let demo = lb_binary().with_file_name("examples").join("demo");
    assert!(
        demo.is_file(),
        "{} is missing: `cargo build -p lb-tests --example demo` (cargo test builds it)",
        demo.display()
    );
    demo
}

/// Removes the output directory.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_demo_survives_every_fault_it_announces() {
    let out = OutDir(std::env::temp_dir().join(format!("lbt-demo-{}", std::process::id())));
    let mut child = Command::new(demo_binary())
        .args(["--short", "--out", out.0.to_str().unwrap()])
        .env("CI", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    let pid = child.id();
    // Three minutes is the demo's promise in CI; its short mode takes ~30 s.
    let finished = wait_until(Duration::from_mins(3), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !finished {
        // SIGINT: the demo tears its namespaces down before it exits.
        // SAFETY: kill(2) on the pid of the child spawned above, not reaped.
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGINT) };
        let _ = wait_until(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("demo output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(finished, "the demo ran over 3 minutes:\n{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}{stderr}",
        output.status
    );

    // The operator's view after the flood: `lb route` names the guard's
    // verdict for the junk source, and `lb trace --drops` saw it dropped.
    let view = stdout
        .lines()
        .find(|l| l.contains("operator view"))
        .unwrap_or_else(|| panic!("no operator view line:\n{stdout}"));
    assert!(
        view.contains("198.51.100.66:40000 203.0.113.10:80`: drop_guard_auto")
            && view.contains("forward_to_backend -> 192.0.2.")
            && view.ends_with("--source 198.51.100.66`: drop_guard_auto"),
        "{view}"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.0.join("summary.json")).expect("summary.json"))
            .expect("summary.json is JSON");
    assert_eq!(summary["mode"], "short");
    assert_eq!(
        summary["failed_outside_windows"], 0,
        "requests lost outside the announced fault windows: {summary:#}"
    );
    let events = summary["events"].as_array().expect("events");
    for name in [
        "backend b12 killed",
        "primary site down",
        "primary site back",
        "b13 drained",
        "junk flood",
        "master lb1 killed",
        "lb1 restarted",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["name"].as_str().is_some_and(|n| n.starts_with(name))),
            "no event {name}: {summary:#}"
        );
    }
    for event in events.iter().filter(|e| e["fault"] == true) {
        let detection = event["detection_ms"].as_f64().expect("a fault detected");
        let bound = event["bound_ms"].as_f64().expect("a fault's bound");
        assert!(
            detection <= bound,
            "{} detected after {detection} ms, bound {bound} ms",
            event["name"]
        );
    }
    let flood = summary["flood"]["good_success_percent"].as_f64().unwrap();
    assert!(flood >= 99.0, "good client during the flood: {flood} %");
    assert_eq!(
        summary["held_connections"]["kept"], summary["held_connections"]["opened"],
        "{summary:#}"
    );
    assert_eq!(summary["passed"], true, "{summary:#}");
    let png = std::fs::read(out.0.join("timeline.png")).expect("timeline.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "timeline.png is not a PNG"
    );
    // The demo left no namespace behind (its names carry its pid).
    let namespaces = lb_tests::netns::sh("ip", &["netns", "list"]);
    let prefix = format!("lbt{pid}x");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&prefix),
        "the demo left namespaces: {}",
        String::from_utf8_lossy(&namespaces.stdout)
    );
}

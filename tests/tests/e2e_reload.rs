//! A reload applies whole or changes nothing. The failing write is a real
//! one: with `max_backends: 2` the reply-path table (`NAT`, sized like
//! `BACKENDS`) is full with two NAT backends, so a reload that swaps one of
//! them for a new backend fails when it inserts the new entry — after it has
//! already written the new backend into the slot the old one had, and the
//! new tables. The old tables, overrides and health must all survive, and
//! the next reload must plan from them.

use std::time::Duration;

use lb_tests::{
    bed::{Bed, tcp_request},
    netns::wait_until,
};

fn config(socket: &str, backends: &str, extra: &str) -> String {
    format!(
        "instance: rl{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, backends: [{backends}], \
         health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }} }}\n\
         dataplane: {{ max_backends: 2 }}\ncontrol: {{ socket: {socket}{extra} }}\n",
        pid = std::process::id()
    )
}

/// Which backend answers each of `n` new connections.
fn served(bed: &Bed, n: usize) -> Vec<Option<String>> {
    let target = "203.0.113.10:80".parse().unwrap();
    bed.client
        .run(move || (0..n).map(|_| tcp_request(target, None)).collect())
}

#[test]
fn a_reload_whose_write_fails_changes_nothing() {
    let socket = format!("/run/lb/reload-{}.sock", std::process::id());
    let b11 = "{ address: 192.0.2.11, port: 8080 }";
    let b12 = "{ address: 192.0.2.12, port: 8080 }";
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config(&socket, &format!("{b11}, {b12}"), ""));
    let all_up = |bed: &Bed| {
        let status = bed.backend_status();
        status.len() == 2 && status.values().all(|b| b["health"] == "up")
    };
    assert!(
        wait_until(Duration::from_secs(5), || all_up(&bed)),
        "{:?}",
        bed.backend_status()
    );
    let output = bed.lb_command(&["drain", "web", "192.0.2.12"]);
    assert!(output.status.success(), "{output:?}");
    let before = bed.backend_status();

    // b11 out, b13 in (b12 re-weighted, which would drop its drain).
    let path = bed.config.as_ref().unwrap().path().to_path_buf();
    let b12_50 = "{ address: 192.0.2.12, port: 8080, weight: 50 }";
    let b13 = "{ address: 192.0.2.13, port: 8080 }";
    std::fs::write(&path, config(&socket, &format!("{b12_50}, {b13}"), "")).unwrap();
    let output = bed.lb_command(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("refused reload: {stderr}");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr.contains("the old ones are back"), "{stderr}");

    // Status, overrides and health as before.
    let after = bed.backend_status();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, backend) in &after {
        for key in ["drained", "weight", "effective_weight", "health"] {
            assert_eq!(backend[key], before[name][key], "{name} {key}");
        }
    }
    // The maps as before: every new flow to b11 (b12 is drained; without
    // the undo, b11's slot names the absent b13).
    let answers = served(&bed, 40);
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("b11")),
        "{answers:?}"
    );

    // A reload that changes what only a restart applies is refused.
    std::fs::write(
        &path,
        config(
            &socket,
            &format!("{b11}, {b12}"),
            ", metrics: '127.0.0.1:9477'",
        ),
    )
    .unwrap();
    let output = bed.lb_command(&["reload"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("control.metrics changed"),
        "{output:?}"
    );

    // The planner stayed in step: a reload that fits applies, and drops
    // the drain of the backend it re-weights.
    std::fs::write(&path, config(&socket, &format!("{b11}, {b12_50}"), "")).unwrap();
    let output = bed.lb_command(&["reload"]);
    assert!(output.status.success(), "{output:?}");
    let status = bed.backend_status();
    assert_eq!(status["b12"]["drained"], false, "{status:?}");
    assert_eq!(status["b12"]["effective_weight"], 50, "{status:?}");
    let answers = served(&bed, 60);
    assert!(answers.iter().all(Option::is_some), "{answers:?}");
    assert!(
        answers.iter().any(|a| a.as_deref() == Some("b12")),
        "{answers:?}"
    );

    // Refused through the API, logged as on SIGHUP.
    let output = bed.stop_lb();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        log.matches("reload refused; nothing changed").count(),
        2,
        "{log}"
    );
}

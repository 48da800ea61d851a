//! The status page (`control.web`) in a real browser: a real `lb run` with
//! two services of two health-checked backends each, its page opened by a
//! headless Chromium started inside the balancer's namespace (it reaches
//! nothing but that namespace's addresses). The page shows every backend
//! up; a backend stopped shows down on the page within a second of
//! `lb status` saying so; the page reports no errors; the listener is
//! read-only; `lb check` places a bad address.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::{bed::Bed, browser::Browser, lb_binary, netns::wait_until};
use serde_json::Value;

/// The page's address, on the balancer's loopback; `/metrics` shares it.
const WEB: &str = "127.0.0.1:9181";

fn config() -> String {
    let pid = std::process::id();
    let check = "health_check: { kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }";
    format!(
        "instance: web{pid}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n\
         \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, {check}, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
         \x20 - {{ name: api, vip: 203.0.113.11, port: 80, protocol: tcp, {check}, \
         backends: [{{ address: 192.0.2.11, port: 80 }}, {{ address: 192.0.2.12, port: 80, tier: 1 }}] }}\n\
         ha: {{ interface: eth1, virtual_router_id: 51, priority: 150, advert_interval: 100ms, \
         floating_ips: [192.0.2.254/24] }}\n\
         control: {{ socket: /run/lb/web-{pid}.sock, web: '{WEB}', metrics: '{WEB}' }}\n"
    )
}

/// Health per `service/address:port`, from `lb status --output json`.
fn lb_health(bed: &Bed) -> BTreeMap<String, String> {
    let output = bed.lb_command(&["status", "--output", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let mut health = BTreeMap::new();
    for service in status["services"].as_array().into_iter().flatten() {
        for backend in service["backends"].as_array().into_iter().flatten() {
            health.insert(
                format!(
                    "{}/{}:{}",
                    service["name"].as_str().unwrap_or(""),
                    backend["address"].as_str().unwrap_or(""),
                    backend["port"]
                ),
                backend["health"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    health
}

/// One raw HTTP/1.1 exchange with the page's listener, from inside the
/// balancer's namespace: (status line, whole answer).
fn http(bed: &Bed, request: String) -> (String, String) {
    let answer = bed.lb.run(move || {
        let mut stream = TcpStream::connect(WEB).expect("connecting to the page");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    (answer.lines().next().unwrap_or("").to_string(), answer)
}

fn get(bed: &Bed, path: &str) -> (String, String) {
    http(bed, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

/// The JSON body of an answer.
fn body(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `value`'s shape: its keys, all the way down (array items by position).
fn shape(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                out.push(format!("{at}.{key}"));
                shape(v, &format!("{at}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                shape(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The state the page shows per `service/backend`.
const ROWS: &str = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('tr[data-backend]')]\
                    .map(r => [r.dataset.service + '/' + r.dataset.backend, r.dataset.state])))";

fn page_rows(browser: &mut Browser) -> BTreeMap<String, String> {
    browser
        .eval(ROWS)
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The listener: the page with its policy, the same JSON as the control
/// API, the metrics beside it, and nothing but GET.
fn check_listener(bed: &Bed) {
    let (status, page) = get(bed, "/");
    assert!(status.starts_with("HTTP/1.1 200"), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    assert!(lower.contains("content-type: text/html"), "{page}");
    let (status, answer) = get(bed, "/status.json");
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    let from_cli: Value =
        serde_json::from_slice(&bed.lb_command(&["status", "--output", "json"]).stdout)
            .expect("lb status prints JSON");
    let (mut web_shape, mut cli_shape) = (Vec::new(), Vec::new());
    shape(&body(&answer), "", &mut web_shape);
    shape(&from_cli, "", &mut cli_shape);
    assert_eq!(web_shape, cli_shape, "/status.json and lb status differ");
    assert_eq!(body(&answer)["services"][1]["name"], "api");
    // Checks every 100 ms: each backend's last result is recent.
    for service in body(&answer)["services"].as_array().expect("services") {
        for backend in service["backends"].as_array().expect("backends") {
            let age = backend["last_check"]["age_ms"].as_u64();
            assert!(age.is_some_and(|ms| ms < 2_000), "{backend}");
        }
    }
    let (status, answer) = get(bed, "/stats.json");
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(body(&answer)["services"][0]["name"], "web");
    let (status, answer) = get(bed, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("lb_"), "{answer}");
    for request in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST /status.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "PUT /status.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (status, answer) = http(bed, request.to_string());
        assert!(status.starts_with("HTTP/1.1 405"), "{request:?}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("allow: get"),
            "{answer}"
        );
    }
    let (status, answer) = get(bed, "/v1/reload");
    assert!(status.starts_with("HTTP/1.1 404"), "{answer}");
}

#[test]
fn the_status_page_shows_a_backend_going_down_live() {
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config());
    let all = [
        "web/192.0.2.11:8080",
        "web/192.0.2.12:8080",
        "api/192.0.2.11:80",
        "api/192.0.2.12:80",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let health = lb_health(&bed);
            all.iter()
                .all(|b| health.get(*b).map(String::as_str) == Some("up"))
        }),
        "the backends never came up: {:?}",
        lb_health(&bed)
    );

    check_listener(&bed);

    // The page in a browser: every backend up.
    let mut browser = Browser::start(&bed.lb);
    browser.navigate(&format!("http://{WEB}/"));
    let mut rows = BTreeMap::new();
    let shown = wait_until(Duration::from_secs(10), || {
        rows = page_rows(&mut browser);
        rows.len() == all.len() && rows.values().all(|state| state == "up")
    });
    assert!(shown, "the page never showed all four up: {rows:?}");
    assert_eq!(
        browser.eval("document.getElementById('conn').dataset.state"),
        "live"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('svg.spark polyline').length"),
        4
    );
    check_ha_and_rate(&bed, &mut browser);

    // A backend stops: the page follows `lb status` within a second.
    bed.stop_backend(12);
    let target = "web/192.0.2.12:8080";
    let started = Instant::now();
    let mut said_down_ms = 0.0;
    let said = wait_until(Duration::from_secs(10), || {
        let down = lb_health(&bed).get(target).map(String::as_str) == Some("down");
        said_down_ms = now_ms();
        down
    });
    assert!(said, "lb status never said {target} is down");
    let lb_took = started.elapsed();
    let row =
        "document.querySelector('tr[data-service=\"web\"][data-backend=\"192.0.2.12:8080\"]')";
    let mut changed_ms = None;
    wait_until(Duration::from_secs(3), || {
        let state = browser.eval(&format!("{row}.dataset.state"));
        if state == "down" {
            changed_ms = browser
                .eval(&format!("Number({row}.dataset.changed)"))
                .as_f64();
        }
        changed_ms.is_some()
    });
    let changed_ms = changed_ms.unwrap_or_else(|| {
        panic!(
            "the page never showed {target} down: {:?}",
            page_rows(&mut browser)
        )
    });
    let lag = changed_ms - said_down_ms;
    println!(
        "lb status said down {lb_took:?} after the stop; the page showed it {lag:.0} ms after that"
    );
    assert!(
        lag <= 1000.0,
        "the page showed {target} down {lag:.0} ms after lb status"
    );
    assert!(
        wait_until(Duration::from_secs(3), || {
            let rows = page_rows(&mut browser);
            rows.get("api/192.0.2.12:80").map(String::as_str) == Some("down")
                && rows.get("web/192.0.2.11:8080").map(String::as_str) == Some("up")
                && rows.get("api/192.0.2.11:80").map(String::as_str) == Some("up")
        }),
        "the other rows: {:?}",
        page_rows(&mut browser)
    );

    check_errors(&mut browser);

    // Every process of the browser ends.
    let family = browser.close();
    assert!(!family.is_empty());
    let gone = wait_until(Duration::from_secs(5), || {
        family.iter().all(|&pid| !lb_tests::browser::alive(pid))
    });
    assert!(gone, "browser processes left: {family:?}");
}

/// The page shows the VRRP instance, and a rate once traffic flows.
fn check_ha_and_rate(bed: &Bed, browser: &mut Browser) {
    // The VRRP instance, master once its timer runs out with no peer.
    let mut ha = Value::Null;
    let master = wait_until(Duration::from_secs(10), || {
        ha = browser
            .eval("document.querySelector('#ha tr[data-vrid=\"51\"]')?.dataset.state ?? null");
        ha == "master"
    });
    assert!(master, "the page never showed VRID 51 master: {ha}");
    // Traffic through the first service shows as a rate on its sparkline.
    let target: std::net::SocketAddr = "203.0.113.10:80".parse().unwrap();
    let served = bed.client.run(move || {
        (0..40)
            .filter(|_| lb_tests::bed::tcp_request(target, None).is_some())
            .count()
    });
    assert!(served > 0, "no request through the VIP was served");
    let rate = "Math.max(...[...document.querySelectorAll('tr[data-service=\"web\"]')]\
                .map(r => Number(r.dataset.rate) || 0))";
    let mut shown = Value::Null;
    let moving = wait_until(Duration::from_secs(5), || {
        shown = browser.eval(rate);
        shown.as_f64().is_some_and(|r| r > 0.0)
    });
    assert!(
        moving,
        "{served} requests served, the page's rate stayed {shown}"
    );
    assert_eq!(
        browser.eval("document.getElementById('denials-total').textContent"),
        "0"
    );
}

/// No errors on the page; and the collector does see one.
fn check_errors(browser: &mut Browser) {
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    browser.eval("console.error('lb-probe-console'); setTimeout(() => { throw new Error('lb-probe-throw'); }, 0); 1");
    let mut errors = Vec::new();
    wait_until(Duration::from_secs(5), || {
        errors = browser.errors();
        errors.iter().any(|e| e.contains("lb-probe-console"))
            && errors.iter().any(|e| e.contains("lb-probe-throw"))
    });
    assert!(
        errors.iter().any(|e| e.contains("lb-probe-console"))
            && errors.iter().any(|e| e.contains("lb-probe-throw")),
        "the error collector missed the probes: {errors:#?}"
    );
}

#[test]
fn check_places_a_bad_web_address() {
    let config = lb_tests::TempFile::new(
        "web.yaml",
        "instance: webcheck\ninterfaces: [{ name: eth0 }]\nservices: []\n\
         control:\n  web: 'localhost:9181'\n",
    );
    let output = std::process::Command::new(lb_binary())
        .args(["check", "-c", config.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 5, column 3: control.web: invalid socket address syntax"),
        "{stderr}"
    );
}

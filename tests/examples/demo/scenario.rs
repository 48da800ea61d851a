//! The demo's story: steady traffic, then one fault or operation after
//! another, each narrated in one line with what it measurably did. A fault
//! opens an announced window (from the moment it strikes until lb reports
//! it handled, plus a short grace for requests in flight); the summary
//! checks that no request failed outside those windows and that each
//! window closed within its detection bound.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    interrupted,
    topology::{
        ADVERT_INTERVAL, CHECK_FALL, CHECK_INTERVAL, CHECK_RISE, CHECK_TIMEOUT, CLIENT, JUNK,
        Network, VIP, WEB,
    },
    traffic::{Held, Load, Sample, flood},
};

/// A window opens this long before the fault is injected (a request in
/// flight on a server that is killed fails with it) ...
pub const LEAD: f64 = 0.05;
/// ... and closes this long after lb reported the fault handled (requests
/// sent just before the new tables or the new master's ARP took effect).
pub const GRACE: f64 = 0.3;
/// Scheduling slack added to each configured detection bound: the demo
/// polls `lb status` (a process start each time) on a shared machine.
pub const SLACK: f64 = 0.5;

/// How the demo runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Shorter phases (the test, and CI).
    pub short: bool,
    /// A live progress line (an interactive terminal).
    pub progress: bool,
}

impl Options {
    /// How long each phase is watched after its event.
    fn observe(self) -> Duration {
        if self.short {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(4)
        }
    }
}

/// The steady client's rate and workers.
pub const RATE: u32 = 100;
const WORKERS: usize = 16;

/// One narrated event.
#[derive(Clone, Debug)]
pub struct Event {
    /// What happened.
    pub name: String,
    /// When (seconds since the start).
    pub at: f64,
    /// A fault: failures inside its window are announced, not lost.
    pub fault: bool,
    /// When lb reported it handled (seconds since the start).
    pub detected: Option<f64>,
    /// How long detection may take (seconds after `at`).
    pub bound: Option<f64>,
    /// The measured effect, as narrated.
    pub note: String,
    /// The end of its phase (the next event's start).
    pub end: f64,
}

impl Event {
    /// Detection time in seconds, if detected.
    pub fn detection(&self) -> Option<f64> {
        self.detected.map(|d| d - self.at)
    }

    /// Whether a request started at `t` falls in this fault's window.
    pub fn covers(&self, t: f64) -> bool {
        self.fault && t >= self.at - LEAD && t <= self.detected.unwrap_or(self.end) + GRACE
    }
}

/// Everything the summary and the chart are made from.
#[derive(Debug)]
pub struct Outcome {
    /// The events, in order.
    pub events: Vec<Event>,
    /// Every request of the steady client, by start time.
    pub samples: Vec<Sample>,
    /// Seconds from the start to the end of the traffic.
    pub duration: f64,
    /// Connections held across the master's death: (completed, opened).
    pub held: (usize, usize),
    /// The good client's success during the flood, percent.
    pub flood_success: f64,
}

/// Prints narration and the progress line without tearing each other.
#[derive(Debug, Clone)]
struct Printer {
    t0: Instant,
    progress: bool,
    lock: Arc<Mutex<()>>,
    phase: Arc<Mutex<String>>,
}

impl Printer {
    fn say(&self, line: &str) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let clear = if self.progress { "\r\x1b[K" } else { "" };
        println!("{clear}[{:6.1}s] {line}", self.t0.elapsed().as_secs_f64());
    }

    fn phase(&self, phase: &str) {
        phase.clone_into(&mut self.phase.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Redraws the progress line four times a second until `stop`.
    fn spawn_progress(&self, load: &Load, stop: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
        if !self.progress {
            return None;
        }
        let printer = self.clone();
        let samples = load.shared();
        Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let now = printer.t0.elapsed().as_secs_f64();
                let (ok, failed, last) = {
                    let samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
                    let failed = samples.iter().filter(|s| s.backend.is_none()).count();
                    let last = samples.iter().filter(|s| s.at > now - 1.0).count();
                    (samples.len() - failed, failed, last)
                };
                let phase = printer
                    .phase
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let _guard = printer.lock.lock().unwrap_or_else(PoisonError::into_inner);
                print!(
                    "\r\x1b[K  {now:5.1}s  {phase:<28} {last:>4} req/s   served {ok}   failed {failed}"
                );
                let _ = std::io::stdout().flush();
            }
            let _guard = printer.lock.lock().unwrap_or_else(PoisonError::into_inner);
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }))
    }
}

/// Sleeps `d`, waking early (with an error) when interrupted.
fn pause(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if interrupted() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    Ok(())
}

/// Polls `condition` until it holds (the time then, seconds since `t0`);
/// fails after `timeout` naming `what`, or when interrupted.
fn wait_for(
    t0: Instant,
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        if condition() {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Requests per second per backend over `[from, to)`, and failures there.
pub fn rates(samples: &[Sample], from: f64, to: f64) -> (Vec<(String, f64)>, usize) {
    let span = (to - from).max(0.001);
    let mut per: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut failed = 0;
    for sample in samples.iter().filter(|s| s.at >= from && s.at < to) {
        match &sample.backend {
            Some(name) => *per.entry(name.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    let rates = per
        .into_iter()
        .map(|(name, n)| (name, count(n) / span))
        .collect();
    (rates, failed)
}

/// A count as a float, for rates and percentages.
#[allow(
    clippy::cast_precision_loss,
    reason = "request counts stay far below 2^52"
)]
pub fn count(n: usize) -> f64 {
    n as f64
}

fn rate_line(rates: &[(String, f64)]) -> String {
    if rates.is_empty() {
        return "nobody".to_owned();
    }
    rates
        .iter()
        .map(|(name, r)| format!("{name} {r:.0}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The story itself; the network is torn down when it returns (also on
/// error or interruption).
pub fn run(options: Options) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let printer = Printer {
        t0,
        progress: options.progress,
        lock: Arc::new(Mutex::new(())),
        phase: Arc::new(Mutex::new("starting".to_owned())),
    };
    let observe = options.observe();
    printer.say("building the network: client, router, switch, lb1 + lb2, five backends");
    let mut net = Network::build();
    printer.say(&format!("namespaces: {}", net.names()));
    net.start_balancer(0);
    wait_for(t0, "lb1 master", Duration::from_secs(10), || {
        net.ha_state(0) == "master"
    })?;
    net.start_balancer(1);
    wait_for(t0, "lb2 backup", Duration::from_secs(10), || {
        net.ha_state(1) == "backup"
    })?;
    for i in 0..2 {
        wait_for(t0, "every backend up", Duration::from_secs(15), || {
            let health = net.health(i);
            health.len() == 5 && health.iter().all(|(_, h)| h == "up")
        })?;
    }
    printer.say(
        "lb1 is master (holds 192.0.2.100), lb2 is backup; backends up: \
         b11 b12 b13 (primary site), b21 b22 (standby site)",
    );
    printer.say(&format!(
        "health checks: HTTP GET /healthz every {} ms, timeout {} ms, out after {CHECK_FALL} \
         failures, back after {CHECK_RISE}; VRRP adverts every {} ms",
        CHECK_INTERVAL.as_millis(),
        CHECK_TIMEOUT.as_millis(),
        ADVERT_INTERVAL.as_millis()
    ));

    let web: SocketAddr = WEB.parse().context("the web address")?;
    let load = Load::start(&net.client, web, RATE, WORKERS, t0);
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress = printer.spawn_progress(&load, Arc::clone(&stop_progress));
    let story = Story {
        t0,
        printer: printer.clone(),
        observe,
        events: Vec::new(),
    };
    let result = story.tell(&mut net, &load, web);
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let samples = load.finish();
    let duration = t0.elapsed().as_secs_f64();
    let (mut events, held, flood_success) = result?;
    if let Some(last) = events.last_mut() {
        last.end = duration;
    }
    printer.say("tearing down: balancers stopped and detached, namespaces removed");
    drop(net);
    Ok(Outcome {
        events,
        samples,
        duration,
        held,
        flood_success,
    })
}

/// The events after the network is up and the client running.
struct Story {
    t0: Instant,
    printer: Printer,
    observe: Duration,
    events: Vec<Event>,
}

type Told = (Vec<Event>, (usize, usize), f64);

impl Story {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Opens an event (closing the previous one's phase).
    fn begin(&mut self, name: &str, fault: bool, bound: Option<f64>) -> f64 {
        let at = self.now();
        if let Some(last) = self.events.last_mut() {
            last.end = at;
        }
        self.printer.phase(name);
        self.events.push(Event {
            name: name.to_owned(),
            at,
            fault,
            detected: None,
            bound,
            note: String::new(),
            end: at,
        });
        at
    }

    /// Records the measured effect of the current event and narrates it.
    fn end(&mut self, detected: Option<f64>, note: String) {
        let event = self.events.last_mut().expect("an event begun");
        event.detected = detected;
        self.printer.say(&format!("{}: {note}", event.name));
        event.note = note;
    }

    fn ms(seconds: f64) -> String {
        format!("{:.0} ms", seconds * 1000.0)
    }

    #[allow(clippy::too_many_lines, reason = "the story, told top to bottom")]
    fn tell(mut self, net: &mut Network, load: &Load, web: SocketAddr) -> anyhow::Result<Told> {
        let t0 = self.t0;
        let health_bound = (CHECK_INTERVAL * CHECK_FALL + CHECK_TIMEOUT).as_secs_f64() + SLACK;
        let vrrp_bound = (ADVERT_INTERVAL * 3 + ADVERT_INTERVAL).as_secs_f64() + SLACK;
        let down = |net: &Network, names: &[&str]| {
            let health = net.health(0);
            names
                .iter()
                .all(|name| health.iter().any(|(n, h)| n == name && h == "down"))
        };
        let up = |net: &Network, names: &[&str]| {
            let health = net.health(0);
            names
                .iter()
                .all(|name| health.iter().any(|(n, h)| n == name && h == "up"))
        };

        // Steady state.
        let at = self.begin("steady traffic", false, None);
        pause(self.observe)?;
        let (per, failed) = rates(&load.samples(), at, self.now());
        self.end(
            None,
            format!(
                "{RATE} requests/s to {WEB}: {}; standby idle; {failed} failed",
                rate_line(&per)
            ),
        );

        // One backend dies.
        let at = self.begin("backend b12 killed (SIGKILL)", true, Some(health_bound));
        net.backend("b12").kill();
        let detected = wait_for(t0, "b12 down", Duration::from_secs(10), || {
            down(net, &["b12"])
        })?;
        pause(self.observe)?;
        let samples = load.samples();
        let (_, failed) = rates(&samples, at - LEAD, self.now());
        let last_failure = samples
            .iter()
            .filter(|s| s.at >= at - LEAD && s.backend.is_none())
            .map(|s| s.at - at)
            .fold(0.0_f64, f64::max);
        let (after, _) = rates_after(&samples, detected + GRACE, self.now());
        self.end(
            Some(detected),
            format!(
                "out of rotation after {}; {failed} requests failed, the last {} after the kill; \
                 its share moved: {}",
                Self::ms(detected - at),
                Self::ms(last_failure),
                rate_line(&after)
            ),
        );

        // It comes back.
        let at = self.begin("b12 restarted", false, None);
        net.backend("b12").start();
        let detected = wait_for(t0, "b12 up", Duration::from_secs(10), || up(net, &["b12"]))?;
        pause(self.observe / 2)?;
        let (per, failed) = rates(&load.samples(), detected, self.now());
        self.end(
            Some(detected),
            format!(
                "back in rotation {} later (after {CHECK_RISE} good checks); {}; {failed} failed",
                Self::ms(detected - at),
                rate_line(&per)
            ),
        );

        // The whole primary site goes.
        let at = self.begin(
            "primary site down (b11 b12 b13 killed)",
            true,
            Some(health_bound),
        );
        for name in ["b11", "b12", "b13"] {
            net.backend(name).kill();
        }
        let detected = wait_for(t0, "primary site down", Duration::from_secs(10), || {
            down(net, &["b11", "b12", "b13"])
        })?;
        pause(self.observe)?;
        let samples = load.samples();
        let (_, failed) = rates(&samples, at - LEAD, self.now());
        let first_standby = samples
            .iter()
            .filter(|s| s.at >= at && s.backend.as_deref().is_some_and(|b| b.starts_with("b2")))
            .map(|s| s.at - at)
            .fold(f64::INFINITY, f64::min);
        let (after, _) = rates_after(&samples, detected + GRACE, self.now());
        self.end(
            Some(detected),
            format!(
                "standby site serves {} after the kill ({failed} requests failed): {}",
                Self::ms(first_standby),
                rate_line(&after)
            ),
        );

        // And comes back.
        let at = self.begin("primary site back", false, None);
        for name in ["b11", "b12", "b13"] {
            net.backend(name).start();
        }
        let detected = wait_for(
            t0,
            "traffic back on the primary site",
            Duration::from_secs(10),
            || {
                load.samples()
                    .iter()
                    .any(|s| s.at > at && s.backend.as_deref().is_some_and(|b| b.starts_with("b1")))
            },
        )?;
        pause(self.observe)?;
        let (after, failed) = rates_after(&load.samples(), detected + GRACE, self.now());
        self.end(
            Some(detected),
            format!(
                "traffic returned {} after the restart; {}; {failed} failed",
                Self::ms(detected - at),
                rate_line(&after)
            ),
        );

        // A drain.
        let at = self.begin("b13 drained (lb drain web 192.0.2.13)", false, None);
        for i in 0..2 {
            let out = net.lb(i, &["drain", "web", "192.0.2.13"]);
            anyhow::ensure!(out.status.success(), "lb drain: {out:?}");
        }
        let drained = self.now();
        pause(self.observe)?;
        let samples = load.samples();
        let late: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= drained && s.backend.is_some())
            .collect();
        let on_b13 = late
            .iter()
            .filter(|s| s.backend.as_deref() == Some("b13"))
            .count();
        let (after, failed) = rates_after(&samples, drained, self.now());
        for i in 0..2 {
            let out = net.lb(i, &["undrain", "web", "192.0.2.13"]);
            anyhow::ensure!(out.status.success(), "lb undrain: {out:?}");
        }
        // Counted, not hidden: a client port reused while the connection
        // table still maps that 5-tuple to b13 follows the old entry.
        self.end(
            None,
            format!(
                "drained in {}; {on_b13} of {} new requests reached b13 after it; {}; \
                 {failed} failed; undrained",
                Self::ms(drained - at),
                late.len(),
                rate_line(&after)
            ),
        );

        // A junk flood from one source in the client network.
        let flood_time = if self.observe > Duration::from_secs(2) {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(2)
        };
        let at = self.begin(
            "junk flood from 198.51.100.66 (UDP)",
            true,
            Some(2.0 + SLACK),
        );
        let stop_flood = Arc::new(AtomicBool::new(false));
        let flooder = flood(
            &net.client,
            JUNK.parse().context("the junk address")?,
            SocketAddr::new(VIP.parse().context("the VIP")?, crate::server::SINK_PORT),
            3_000_000,
            flood_time,
            Arc::clone(&stop_flood),
        );
        let detected = wait_for(
            t0,
            "the guard denying the flood",
            Duration::from_secs(10),
            || {
                net.api(0, "/v1/guard")["denied"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["source"].as_str() == Some(JUNK)))
            },
        );
        let sent = {
            if detected.is_err() {
                stop_flood.store(true, Ordering::Relaxed);
            }
            flooder.join().unwrap_or(0)
        };
        let detected = detected?;
        pause(self.observe / 2)?;
        let (_, failed) = rates(&load.samples(), at, self.now());
        let served: usize = load
            .samples()
            .iter()
            .filter(|s| s.at >= at && s.backend.is_some())
            .count();
        let flood_success = 100.0 * count(served) / count(served + failed).max(1.0);
        let dropped = guard_drops(net);
        self.end(
            Some(detected),
            format!(
                "{sent} datagrams; the guard denied the source after {}, {dropped} packets shed \
                 in XDP; the good client kept {flood_success:.2} % success ({failed} failed)",
                Self::ms(detected - at)
            ),
        );

        // What an operator asks while the source is denied: `lb route`
        // for it and for the good client, and `lb trace --drops`.
        self.printer.say(&operator_view(net));

        // The master balancer dies.
        let held: Vec<Held> = net
            .client
            .run(move || (0..10).filter_map(|_| Held::open(web)).collect());
        let opened = held.len();
        let at = self.begin("master lb1 killed (SIGKILL)", true, Some(vrrp_bound));
        let _ = net.balancers[0].stop(libc::SIGKILL);
        let detected = wait_for(t0, "lb2 taking over", Duration::from_secs(10), || {
            net.ha_state(1) == "master"
        })?;
        let kept = net.client.run(move || {
            held.into_iter()
                .map(Held::finish)
                .filter(|kept| *kept)
                .count()
        });
        // What systemd does next: ExecStopPost, then Restart= after 1 s.
        let release = net.balancers[0].lb(&[
            "release",
            "-c",
            net.balancers[0].config.path().to_str().unwrap_or(""),
        ]);
        anyhow::ensure!(release.status.success(), "lb release: {release:?}");
        pause(self.observe / 2)?;
        let (after, failed) = rates(&load.samples(), at - LEAD, self.now());
        self.end(
            Some(detected),
            format!(
                "lb2 took the floating IP after {}; {kept} of {opened} established connections \
                 kept; {failed} requests failed; {}",
                Self::ms(detected - at),
                rate_line(&after)
            ),
        );

        // systemd restarts it; it takes its role back (preempt).
        pause(Duration::from_secs(1))?;
        net.start_balancer(0);
        let at = self.begin("lb1 restarted", true, Some(vrrp_bound));
        let detected = wait_for(t0, "lb1 master again", Duration::from_secs(10), || {
            net.ha_state(0) == "master"
        })?;
        wait_for(t0, "lb2 backup again", Duration::from_secs(5), || {
            net.ha_state(1) == "backup"
        })?;
        pause(self.observe / 2)?;
        let (after, failed) = rates(&load.samples(), at - LEAD, self.now());
        self.end(
            Some(detected),
            format!(
                "master again {} after it answered (lb2 back to backup); {failed} requests \
                 failed; {}",
                Self::ms(detected - at),
                rate_line(&after)
            ),
        );
        Ok((self.events, (kept, opened), flood_success))
    }
}

/// [`rates`] from `from` (clamped to not pass `to`).
fn rates_after(samples: &[Sample], from: f64, to: f64) -> (Vec<(String, f64)>, usize) {
    rates(samples, from.min(to - 0.5), to)
}

/// Packets lb1 dropped for the automatic guard (`lb stats`).
fn guard_drops(net: &Network) -> u64 {
    net.api(0, "/v1/stats")["drops"]
        .as_object()
        .map_or(0, |drops| {
            drops
                .iter()
                .filter(|(reason, _)| reason.contains("guard"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
}

/// `lb route` for the junk source and for the good client, and the first
/// drops `lb trace --drops` shows, each summed up in a line.
fn operator_view(net: &Network) -> String {
    let route = |client: &str| {
        let out = net.lb(0, &["route", client, WEB, "--output", "json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let verdict = report["verdict"].as_str().unwrap_or("?").to_owned();
        let backend = report["backend"]["address"]
            .as_str()
            .map_or_else(String::new, |b| format!(" -> {b}"));
        let denied = report["guard"]["auto_denied_ms"]
            .as_u64()
            .map_or_else(String::new, |ms| format!(" (auto-denied {ms} ms more)"));
        format!("{verdict}{backend}{denied}")
    };
    let junk = route(&format!("{JUNK}:40000"));
    let good = route(&format!("{CLIENT}:40000"));
    // The flood is over but the source is still denied: a trace attached,
    // then a few junk datagrams, each dropped (the trace ends at the first,
    // or is stopped after 3 s).
    let trace = std::process::Command::new(lb_tests::lb_binary())
        .args([
            "trace", "--drops", "--source", JUNK, "--limit", "1", "--output", "json",
        ])
        .args(["--socket", net.balancers[0].socket.as_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut trace) = trace else {
        return format!(
            "operator view: `lb route {JUNK}:40000 {WEB}`: {junk}; \
                        `lb route {CLIENT}:40000 {WEB}`: {good}"
        );
    };
    std::thread::sleep(Duration::from_millis(300));
    if let (Ok(junk), Ok(vip)) = (JUNK.parse(), VIP.parse()) {
        let target = SocketAddr::new(vip, crate::server::SINK_PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let _ = flood(
            &net.client,
            junk,
            target,
            20,
            Duration::from_millis(200),
            stop,
        )
        .join();
    }
    let started = Instant::now();
    while matches!(trace.try_wait(), Ok(None)) && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = trace.kill();
    let output = trace.wait_with_output().ok();
    let event: serde_json::Value = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_default();
    let traced = event["reason"].as_str().unwrap_or("none seen").to_owned();
    format!(
        "operator view: `lb route {JUNK}:40000 {WEB}`: {junk}; `lb route {CLIENT}:40000 {WEB}`: \
         {good}; `lb trace --drops --source {JUNK}`: {traced}"
    )
}

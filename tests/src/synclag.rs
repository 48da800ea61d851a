//! The sync-lag benchmark (`benches/dataplane.rs`, section 6): how long a
//! new flow takes from balancer A's data path reporting it until balancer
//! B has installed it in its connection table, while A creates
//! [`RATE`] new flows a second.
//!
//! Both balancers live in this process, each a [`Harness`] (the real XDP
//! object, maps planned from a configuration with a `sync:` section) in a
//! namespace of its own, joined by a veth (`sync0`, `2001:db8:5::1` and
//! `::2`). Each runs the real sync thread (`lb::sync::peer::spawn`),
//! started as `lb run`'s controller starts it (`start_sync`): the section's
//! interface, peers, port, key file and bounds, the plan's directory, its
//! own descriptors of the ring and the connection table; then
//! `SETTINGS_SYNC` on A. Once the two have exchanged their (empty) tables,
//! A's program runs one fresh TCP SYN per flow (`BPF_PROG_TEST_RUN`,
//! paced to [`RATE`] a second for [`SECONDS`] seconds, each flow stamped
//! when its run returns, the event then in the ring), while another thread
//! reads B's `installed` counter every [`POLL`]. B installs A's flows in
//! the order A reported them, so flow *i* is installed when that counter
//! first reaches *i* + 1: its lag is that reading's time minus its stamp
//! (resolution: the polling interval, reported).
//!
//! Everything runs on every CPU (not the benchmark's one): A's and B's
//! sync threads, the generator and the poller share the machine, where two
//! balancers would each have their own. Namespaces, the veth and the sync
//! threads go when the section ends, also when it fails.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb::sync::{
    directory::Directory,
    peer::{self, Setup, Shared, SyncThread},
    status::SyncStatus,
};

use crate::{TempFile, frames, netns::veth, report::SyncLag, testrun::Harness};

/// New flows per second on A.
pub const RATE: u32 = 10_000;
/// For this long.
pub const SECONDS: u32 = 3;
/// Flows per batch of the per-batch figures.
pub const BATCH: usize = 1_000;
/// How often B's counter is read.
pub const POLL: Duration = Duration::from_micros(100);
/// How long B may take, after A's last flow, to install the rest.
const SETTLE: Duration = Duration::from_secs(5);

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SECRET: &str = "bench-sync-lag-key\n";
const A_ADDR: &str = "2001:db8:5::1";
const B_ADDR: &str = "2001:db8:5::2";

/// One balancer's configuration: a Maglev nat service, a table of 2^17
/// flows (peers may fill half), sync towards `peer` on `sync0`.
fn config(instance: &str, peer: &str, secret: &TempFile) -> String {
    format!(
        "instance: {instance}\n\
         interfaces: [{{ name: lb0 }}]\n\
         services:\n  \
         - {{ name: nat4, vip: {VIP}, port: 80, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
         dataplane: {{ connection_table_size: 131072 }}\n\
         sync: {{ interface: sync0, peers: ['{peer}'], secret_file: {} }}\n",
        secret.path().display()
    )
}

/// Runs the section on a thread of its own (every CPU allowed); a failure
/// (a panic: everything it made is gone by then) comes back as why.
///
/// # Errors
/// Why the lag could not be measured.
pub fn run() -> Result<SyncLag, String> {
    thread::Builder::new()
        .name("sync-lag".into())
        .spawn(|| {
            allow_every_cpu();
            measure()
        })
        .map_err(|error| format!("cannot start the thread: {error}"))?
        .join()
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "it panicked".to_owned())
        })
}

/// Stops a sync thread when dropped (also on a panic).
struct Running(Option<SyncThread>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            thread.stop();
        }
    }
}

/// Sets a flag when dropped: the poller's stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts `harness`'s sync thread as `Controller::start_sync` does, in the
/// harness's namespace (the socket is made there), and, on `report`, sets
/// `SETTINGS_SYNC` after it.
fn start_sync(harness: &mut Harness, report: bool) -> (Arc<Shared>, Running) {
    harness.netns().enter();
    let section = harness.config.sync.clone().expect("the sync section");
    let interface = section.interface_for(None).expect("sync.interface");
    let peers = section.peers_for(None);
    let key = lb::sync::read_key(&section.secret_file).expect("the key");
    let size = harness.dataplane.sizes().connections;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a share in (0, 1] of a u32 table size"
    )]
    let capacity = (section.peer_share * f64::from(size)) as u64;
    let shared = Arc::new(Shared::new(SyncStatus::new(
        &interface,
        section.port,
        &peers,
        capacity,
    )));
    shared.publish(Directory::of_plan(harness.planner.planned()));
    let settings = lb::controller::settings(&harness.config);
    let setup = Setup {
        interface,
        port: section.port,
        peers,
        key,
        peer_rate: section.peer_rate,
        peer_capacity: capacity,
        window_ns: settings.tcp_idle_ns,
        udp_idle_ns: settings.udp_idle_ns,
    };
    let kernel = harness.dataplane.take_sync().expect("the sync ring");
    let conns = harness
        .dataplane
        .conn_descriptors()
        .expect("the connection tables");
    let thread = peer::spawn(setup, kernel, conns, Arc::clone(&shared)).expect("the sync thread");
    if report {
        harness.set_sync(true);
    }
    (shared, Running(Some(thread)))
}

/// Whether `shared`'s thread had an authentic datagram from its peer.
fn heard(shared: &Shared) -> bool {
    shared
        .status()
        .peers
        .first()
        .is_some_and(|peer| peer.last_message_ms.is_some())
}

/// Flow `i`'s SYN: from `198.51.100.10` up, ports 10000 to 59999.
fn syn(i: usize) -> Vec<u8> {
    let host = u8::try_from(10 + i / 50_000).expect("fewer than 12 million flows");
    let port = u16::try_from(10_000 + i % 50_000).expect("a port");
    frames::tcp4(Ipv4Addr::new(198, 51, 100, host), port, VIP, 80)
}

#[allow(
    clippy::too_many_lines,
    reason = "one bed, one run, its figures: in order"
)]
#[allow(
    clippy::cast_precision_loss,
    reason = "flow counts and nanoseconds far below 2^52"
)]
fn measure() -> SyncLag {
    let secret = TempFile::new("sync-lag.key", SECRET);
    let mut a = Harness::new(&config("bench-sync-a", B_ADDR, &secret));
    let mut b = Harness::new(&config("bench-sync-b", A_ADDR, &secret));
    veth(a.netns(), "sync0", b.netns(), "sync0");
    a.netns().addr("sync0", &format!("{A_ADDR}/64"));
    b.netns().addr("sync0", &format!("{B_ADDR}/64"));
    let (shared_b, _running_b) = start_sync(&mut b, false);
    let (shared_a, _running_a) = start_sync(&mut a, true);
    // Each asks the other for its table as it starts: wait for both
    // (empty) answers, so nothing but the flows below counts as installed.
    let bulk_deadline = Instant::now() + Duration::from_secs(10);
    while (shared_a.last_bulk().is_none() || shared_b.last_bulk().is_none())
        && Instant::now() < bulk_deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        shared_a.last_bulk().is_some() && shared_b.last_bulk().is_some(),
        "the two sync threads did not exchange their tables within 10 s (A heard from B: \
         {}; B heard from A: {})",
        heard(&shared_a),
        heard(&shared_b)
    );

    let flows = (RATE * SECONDS) as usize;
    let frames: Vec<Vec<u8>> = (0..flows).map(syn).collect();
    let installed = |shared: &Shared| shared.status().peers.first().map_or(0, |p| p.installed);
    let start_installed = installed(&shared_b);

    // The poller: (time, installed) at every change, and its intervals.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_poller = StopOnDrop(Arc::clone(&stop));
    let poller = {
        let shared = Arc::clone(&shared_b);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut changes: Vec<(Instant, u64)> = Vec::new();
            let mut intervals: Vec<Duration> = Vec::new();
            let mut last = Instant::now();
            let mut seen = start_installed;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                intervals.push(now - last);
                last = now;
                let count = installed(&shared);
                if count != seen {
                    changes.push((now, count - start_installed));
                    seen = count;
                }
                thread::sleep(POLL);
            }
            (changes, intervals)
        })
    };

    // A's new flows, paced: flow i is due i / RATE seconds after the start
    // (a late one goes at once, so the rate holds on average).
    a.netns().enter();
    let mut stamps = Vec::with_capacity(flows);
    let mut not_forwarded = 0u64;
    let start = Instant::now();
    let step_ns = 1_000_000_000 / u64::from(RATE);
    for (i, frame) in frames.iter().enumerate() {
        let due = start + Duration::from_nanos(i as u64 * step_ns);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let outcome = a.run(frame);
        stamps.push(Instant::now());
        if outcome.action != crate::testrun::Action::Redirect {
            not_forwarded += 1;
        }
    }
    let last_flow = Instant::now();
    // B installs the rest; A's thread reads SYNC_LOST once a second, so
    // wait at least that long too.
    let settled = |shared_b: &Shared| {
        let status = shared_b.status();
        let peer = status.peers.first().cloned().unwrap_or_default();
        let refused: u64 = status.refused.values().sum();
        peer.installed + peer.existing + refused - start_installed >= flows as u64
    };
    while !(settled(&shared_b) && last_flow.elapsed() > Duration::from_millis(1_100))
        && last_flow.elapsed() < SETTLE
    {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let (changes, mut intervals) = poller.join().expect("the poller");
    let status_a = shared_a.status();
    let status_b = shared_b.status();
    if not_forwarded > 0 {
        println!("  ({not_forwarded} of A's new flows were not forwarded)");
    }

    // Flow i is installed at the first reading that counts i + 1.
    let mut lags: Vec<Option<f64>> = Vec::with_capacity(flows);
    let mut change = changes.iter().peekable();
    for (i, stamp) in stamps.iter().enumerate() {
        while change.next_if(|(_, count)| *count < i as u64 + 1).is_some() {}
        lags.push(
            change
                .peek()
                .map(|(at, _)| at.saturating_duration_since(*stamp).as_secs_f64() * 1e3),
        );
    }
    let mut all: Vec<f64> = lags.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let quantile = |sorted: &[f64], q: f64| {
        if sorted.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an index into the slice"
        )]
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    };
    let batches = lags
        .chunks(BATCH)
        .map(|batch| {
            let mut lags: Vec<f64> = batch.iter().flatten().copied().collect();
            lags.sort_by(f64::total_cmp);
            (
                quantile(&lags, 0.5),
                lags.last().copied().unwrap_or(f64::NAN),
            )
        })
        .collect();
    intervals.sort_unstable();
    let poll_us = intervals
        .get(intervals.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    let peer_a = status_a.peers.first().cloned().unwrap_or_default();
    let peer_b = status_b.peers.first().cloned().unwrap_or_default();
    let span = stamps
        .last()
        .zip(stamps.first())
        .map_or(0.0, |(last, first)| (*last - *first).as_secs_f64());
    SyncLag {
        rate: RATE,
        achieved_rate: if span > 0.0 {
            (flows - 1) as f64 / span
        } else {
            0.0
        },
        flows: flows as u64,
        batch: BATCH,
        median_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        batches,
        poll_us,
        sent: peer_a.sent,
        received: peer_b.received,
        installed: peer_b.installed - start_installed,
        existing: peer_b.existing,
        refused: status_b
            .refused
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect::<BTreeMap<_, _>>(),
        events_lost: status_a.events_lost,
        not_installed: lags.iter().filter(|lag| lag.is_none()).count() as u64,
    }
}

/// Lets the calling thread (and the threads it starts) run on every
/// online CPU: the benchmark pins its main thread to one.
fn allow_every_cpu() {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..usize::try_from(online).unwrap_or(1) {
        // SAFETY: CPU_SET writes within the set for cpu < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) };
    if rc != 0 {
        eprintln!(
            "sync lag: could not allow every CPU: {}",
            std::io::Error::last_os_error()
        );
    }
}

//! The lb demo: every promise of lb, survived live. In network namespaces
//! (documentation addresses only) it builds a client network behind a
//! router, an HA pair of balancers running the real `lb run`, and web
//! servers in a primary and a standby site; it drives steady HTTP traffic
//! and, one after another, kills a backend, takes the primary site down and
//! back, drains a backend, floods junk at the VIP and SIGKILLs the master
//! balancer, narrating what each did to the traffic. It ends with a summary
//! table, `summary.json` and a timeline chart (PNG).
//!
//! `cargo xtask demo` builds and runs it (as root). Options: `--short`
//! (shorter phases; also the test's mode), `--out DIR` (default
//! target/demo). `CI=true`: no progress line. Ctrl-C tears everything down.
//! Internally, `demo serve NAME` is a backend's web server process.

mod report;
mod scenario;
mod server;
mod topology;
mod traffic;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (SIGINT) or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is zeroed and then filled in.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        server::serve(args.get(1).map_or("backend", String::as_str));
    }
    let mut short = false;
    let mut out = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--short" => short = true,
            "--out" => out = rest.next().map(PathBuf::from),
            other => {
                eprintln!("demo: unknown argument {other} (use --short, --out DIR)");
                return ExitCode::from(1);
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: run as root (network namespaces, XDP): sudo cargo xtask demo");
        return ExitCode::from(1);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    // SAFETY: isatty on the process's own stdout descriptor.
    let tty = unsafe { libc::isatty(1) } == 1;
    let options = scenario::Options {
        short,
        progress: tty && !ci,
    };
    let out = out.unwrap_or_else(|| {
        // target/debug/examples/demo -> target/demo
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("demo")))
            .unwrap_or_else(|| PathBuf::from("demo"))
    });
    catch_signals();

    println!(
        "lb demo{}: a client network behind a router, an HA pair of balancers (lb1, lb2), \
         a primary site (b11 b12 b13) and a standby site (b21 b22), all in network namespaces\n",
        if short { " (short)" } else { "" }
    );
    println!("lb1's configuration (lb2's differs in priority and peer):");
    for line in topology::example_config().lines() {
        println!("    {line}");
    }
    println!();

    let outcome = match scenario::run(options) {
        Ok(outcome) => outcome,
        Err(_) if interrupted() => {
            eprintln!("\ndemo: interrupted; everything it built is removed");
            return ExitCode::from(130);
        }
        Err(error) => {
            eprintln!("\ndemo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let checks = report::Checks::of(&outcome);
    println!("\nsummary\n\n{}", report::table(&outcome, &checks));
    if let Err(error) = std::fs::create_dir_all(&out) {
        eprintln!("demo: creating {}: {error}", out.display());
        return ExitCode::from(2);
    }
    let chart = out.join("timeline.png");
    match report::chart(&outcome, &chart) {
        Ok(()) => println!("timeline chart: {}", chart.display()),
        Err(error) => eprintln!("demo: no chart ({error:#})"),
    }
    let summary = out.join("summary.json");
    let json = report::json(&outcome, &checks, short, &chart);
    if let Err(error) = std::fs::write(&summary, format!("{json:#}\n")) {
        eprintln!("demo: writing {}: {error}", summary.display());
        return ExitCode::from(2);
    }
    println!("summary:        {}", summary.display());
    if checks.passed() {
        println!("\nlb survived every fault.");
        ExitCode::SUCCESS
    } else {
        println!("\nsome checks failed (see the summary)");
        ExitCode::from(1)
    }
}

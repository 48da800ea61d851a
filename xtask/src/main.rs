//! `cargo xtask`: everything a newcomer needs, from a fresh Debian/Ubuntu
//! machine to a tested build. `build`, `test`, `demo`, `bench`, `fuzz` and
//! `package` run `setup` first, so nobody has to remember it.

mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo lb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, the eBPF toolchain,
    /// bpf-linker; mount bpffs. Idempotent.
    Setup,
    /// Build the XDP object for bpfel-unknown-none.
    BuildEbpf,
    /// Build everything (release `lb` with the XDP object embedded).
    Build,
    /// Lint (fmt, clippy on host and eBPF crates) and run every test.
    Test {
        /// Extra arguments for `cargo test` (a filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint only: `cargo fmt --check` and clippy with warnings denied.
    Lint,
    /// Run the demo: an HA pair, two sites of web servers and a client in
    /// network namespaces, surviving one fault after another, with a summary
    /// and a timeline chart (target/demo/). Ctrl-C tears it all down.
    Demo {
        /// Shorter phases (what the demo test runs).
        #[arg(long)]
        short: bool,
    },
    /// Run the benchmarks.
    Bench {
        /// Only the scale measurement: release `lb run` with N services × M
        /// backends (`LB_SCALE`, default `100x10,1000x10`): ready time,
        /// RSS, threads, `lb status` and a one-weight reload.
        #[arg(long)]
        scale: bool,
    },
    /// Build the Debian package (`target/package/lb_VERSION_ARCH.deb`): the
    /// binary, the systemd unit, example configurations, man pages and shell
    /// completions.
    Package {
        /// Package this `lb` binary instead of building a release one (and
        /// skip setup): the package test uses the debug build.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the `.deb` goes (default: target/package).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Compress the payload with gzip instead of xz (faster; for tests).
        #[arg(long)]
        gzip: bool,
    },
    /// Fuzz every parser of untrusted input (configuration, VRRP, health
    /// replies, agent protocol, BIRD replies, sync messages) for longer than `cargo test` does, from the
    /// seeds in fuzz/corpus/.
    Fuzz {
        /// Seconds per target (eight targets).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only the targets whose test name contains this (e.g. `config`).
        filter: Option<String>,
    },
    /// Send a spoofed SYN or UDP flood, to test `guard.attack` on a test
    /// setup: random source addresses of `--from`, random ports (and
    /// sequence numbers), valid checksums, as fast as the host allows
    /// (XDP live frames where the kernel allows them, else `sendmmsg` on
    /// an `AF_PACKET` socket), bounded by `--count` and `--seconds`; prints
    /// the rate reached. Safety rule: the destination and the source prefix
    /// must lie in the documentation ranges 192.0.2.0/24, 198.51.100.0/24,
    /// 203.0.113.0/24 (RFC 5737); anything else is refused, so it cannot
    /// be aimed at a real service. Needs root.
    Flood(FloodArgs),
}

/// `cargo xtask flood`'s arguments (passed on to the `flood` example of
/// lb-tests, which checks them again).
#[derive(Debug, clap::Args)]
struct FloodArgs {
    /// The network namespace to send from (`ip netns` name or a path);
    /// default: this one.
    #[arg(long)]
    netns: Option<String>,
    /// The interface to send out of.
    #[arg(long)]
    interface: String,
    /// The next hop's MAC (the balancer's interface), `aa:bb:cc:dd:ee:ff`.
    #[arg(long)]
    dst_mac: String,
    /// The target, `ADDRESS:PORT` (IPv4, in a documentation range).
    #[arg(long)]
    to: std::net::SocketAddrV4,
    /// The spoofed sources: an IPv4 prefix inside one documentation range.
    #[arg(long, default_value = "198.51.100.128/25")]
    from: String,
    /// `syn` (bare TCP SYNs) or `udp` (datagrams with `--payload` bytes).
    #[arg(long, default_value = "syn", value_parser = ["syn", "udp"])]
    kind: String,
    /// At most this many frames.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// For at most this long (at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 18)]
    payload: usize,
    /// Skip the XDP live-frames attempt.
    #[arg(long)]
    packet_only: bool,
    /// At most this many frames a second (default: as fast as the host
    /// allows).
    #[arg(long)]
    rate: Option<u64>,
}

/// Whether `ip` is in 192.0.2.0/24, 198.51.100.0/24 or 203.0.113.0/24.
fn documentation_range(ip: std::net::Ipv4Addr) -> bool {
    matches!(
        ip.octets(),
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run().map(|_| ()),
        Task::BuildEbpf => setup::run().and_then(|tools| build_ebpf(&tools)),
        Task::Build => setup::run().and_then(|tools| build(&tools)),
        Task::Test { args } => setup::run().and_then(|tools| test(&tools, &args)),
        Task::Lint => setup::run().and_then(|tools| lint(&tools)),
        Task::Demo { short } => setup::run().and_then(|tools| demo(&tools, short)),
        Task::Bench { scale: false } => setup::run().and_then(|tools| bench(&tools)),
        Task::Bench { scale: true } => setup::run().and_then(|tools| bench_scale(&tools)),
        Task::Package {
            binary,
            output,
            gzip,
        } => package(binary, output, gzip),
        Task::Fuzz { seconds, filter } => {
            setup::run().and_then(|tools| fuzz(&tools, seconds, filter.as_deref()))
        }
        Task::Flood(args) => flood(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where the eBPF build puts its artefacts: apart from the host's, so the
/// two rustc versions never invalidate each other's caches.
fn ebpf_target_dir() -> PathBuf {
    root().join("target/ebpf")
}

/// The built XDP object.
fn ebpf_object() -> PathBuf {
    ebpf_target_dir().join("bpfel-unknown-none/release/lb-ebpf")
}

/// Prints a step header.
fn step(what: &str) {
    println!("==> {what}");
}

/// Runs a command in the workspace root, failing on a non-zero exit.
fn run(command: &mut Command) -> anyhow::Result<()> {
    command.current_dir(root());
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Runs `command`, echoing its output, and sums the `test result:` lines.
fn run_counting_tests(
    command: &mut Command,
) -> anyhow::Result<(u64, u64, std::process::ExitStatus)> {
    use std::io::{BufRead, BufReader};
    command
        .current_dir(root())
        .stdout(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                match kind {
                    "passed" => passed += count,
                    "failed" => failed += count,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((passed, failed, status))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The host build finds the XDP object here (see lb-userspace/build.rs).
    command.env("LB_EBPF_OBJECT", ebpf_object());
    command
}

/// Code generation flags for the eBPF crate. `allows-misaligned-mem-access`
/// (LLVM 22's BPF backend, through bpf-linker) lets LLVM load and store a
/// `[u8; N]` field (addresses, MACs) a word at a time where it would
/// otherwise go byte by byte: a tenth fewer instructions in the object and
/// 10 to 20 ns less per packet on every path here (`cargo xtask bench`).
/// The verifier accepts misaligned packet and map-value accesses on
/// machines with efficient unaligned access (x86-64, arm64); stack accesses
/// stay aligned.
///
/// `--disable-expand-memcpy-in-order`: by default bpf-linker asks LLVM to
/// expand only `memcpy` itself (in order, for JITs that pattern-match it),
/// which turns every `memmove` and `memset` — a struct copy, a zeroed
/// padding field — into a call to a byte-at-a-time loop. Without it LLVM
/// expands all three into a few word-sized loads and stores: 25 ns less per
/// established packet, 8 ns less for host traffic (`cargo xtask bench`).
///
/// `-C target-cpu=v3`: 32-bit ALU and jump instructions (Linux 5.1 and
/// later), so 32-bit values need no zero-extending shift pairs: 5 % fewer
/// instructions in the object, nat 1.5 ns less per packet (A/B, 4 rounds).
/// v4 (Linux 6.6) was not measurably faster.
///
/// `LB_EBPF_RUSTFLAGS` adds flags, for experiments.
fn ebpf_rustflags() -> String {
    let mut flags = "-C target-cpu=v3 \
                     -C link-arg=--cpu-features=+allows-misaligned-mem-access \
                     -C link-arg=--disable-expand-memcpy-in-order"
        .to_owned();
    if let Ok(extra) = std::env::var("LB_EBPF_RUSTFLAGS") {
        flags.push(' ');
        flags.push_str(&extra);
    }
    flags
}

fn build_ebpf(tools: &setup::Tools) -> anyhow::Result<()> {
    step("building lb-ebpf for bpfel-unknown-none");
    build_ebpf_into(tools, &ebpf_target_dir(), &[])?;
    println!("    object: {}", ebpf_object().display());
    Ok(())
}

/// Builds the eBPF crate into `target_dir` with extra cargo `args`.
fn build_ebpf_into(tools: &setup::Tools, target_dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut command = tools.ebpf_cargo();
    command
        .args(["build", "--release", "--package", "lb-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(args)
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            ebpf_rustflags(),
        )
        .arg("--target-dir")
        .arg(target_dir);
    run(&mut command)
}

/// The object built without the `trace` feature, for the benchmark that
/// measures what `lb trace` costs while no trace is attached.
fn build_ebpf_without_trace(tools: &setup::Tools) -> anyhow::Result<PathBuf> {
    step("building lb-ebpf without `lb trace` (for the trace-cost benchmark)");
    let dir = root().join("target/ebpf-notrace");
    build_ebpf_into(tools, &dir, &["--no-default-features"])?;
    let object = dir.join("bpfel-unknown-none/release/lb-ebpf");
    println!("    object: {}", object.display());
    Ok(object)
}

fn build(tools: &setup::Tools) -> anyhow::Result<()> {
    build_ebpf(tools)?;
    step("building lb (release)");
    run(cargo().args(["build", "--release", "--package", "lb-userspace"]))?;
    println!("    binary: {}", root().join("target/release/lb").display());
    Ok(())
}

fn lint(tools: &setup::Tools) -> anyhow::Result<()> {
    build_ebpf(tools)?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy: host crates");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("clippy: eBPF crate (type-checked for the host)");
    run(cargo().args(["clippy", "--package", "lb-ebpf", "--", "-D", "warnings"]))?;
    Ok(())
}

fn test(tools: &setup::Tools, args: &[String]) -> anyhow::Result<()> {
    lint(tools)?;
    step("building lb (debug) for the end-to-end tests");
    run(cargo().args(["build", "--package", "lb-userspace"]))?;
    step("cargo test (unit, BPF_PROG_TEST_RUN and network-namespace tests)");
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    let (passed, failed, status) = run_counting_tests(&mut command)?;
    // One closing line for the whole run: the per-binary lines end with the
    // (empty) doc-test run, which says nothing about the suite.
    println!("\nall tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

fn demo(tools: &setup::Tools, short: bool) -> anyhow::Result<()> {
    build_ebpf(tools)?;
    step("building lb and the demo");
    run(cargo().args(["build", "--package", "lb-userspace"]))?;
    run(cargo().args(["build", "--package", "lb-tests", "--example", "demo"]))?;
    step("running the demo (Ctrl-C stops it and removes everything it built)");
    let mut command = Command::new(root().join("target/debug/examples/demo"));
    if short {
        command.arg("--short");
    }
    // Ctrl-C reaches the demo too (same process group); it tears down its
    // namespaces and exits. This process waits for that instead of dying
    // first and handing the terminal back mid-teardown.
    // SAFETY: ignoring SIGINT in this process; the demo installs its own
    // handler, so it does not inherit the disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = command
        .current_dir(root())
        .status()
        .context("starting the demo")?;
    if !status.success() {
        bail!("the demo ended with {status}");
    }
    Ok(())
}

/// `cargo xtask package`: a release build (after setup) unless a binary is
/// given, then the `.deb` (see [`package`]).
fn package(binary: Option<PathBuf>, output: Option<PathBuf>, gzip: bool) -> anyhow::Result<()> {
    let binary = if let Some(binary) = binary {
        std::path::absolute(binary)?
    } else {
        let tools = setup::run()?;
        build(&tools)?;
        root().join("target/release/lb")
    };
    let output = match output {
        Some(output) => std::path::absolute(output)?,
        None => root().join("target/package"),
    };
    package::build(&package::Request {
        binary,
        output,
        gzip,
    })
    .map(|_| ())
}

/// Debian packages only the benchmarks use (not the tests): for the
/// end-to-end section the load generator, the backends' web server and the
/// balancers lb is compared with. Each entry lists alternatives, the first
/// one apt knows is installed.
const BENCH_PACKAGES: &[&[&str]] = &[
    &["wrk"],
    &["nginx-light", "nginx"],
    &["haproxy"],
    &["nftables"],
];

/// Installs what [`BENCH_PACKAGES`] lists and is missing (with apt-get, where
/// there is one; without, the end-to-end rows whose tools are missing are
/// left out and say so).
fn bench_packages() -> anyhow::Result<()> {
    if !Path::new("/usr/bin/apt-get").exists() {
        println!("    no apt-get: install wrk, nginx, haproxy and nft for the end-to-end rows");
        return Ok(());
    }
    let missing: Vec<&[&str]> = BENCH_PACKAGES
        .iter()
        .copied()
        .filter(|names| !names.iter().any(|name| setup::installed(name)))
        .collect();
    if missing.is_empty() {
        println!("    benchmark packages: all present");
        return Ok(());
    }
    step("apt-get update");
    setup::sudo_free_run(Command::new("apt-get").args(["update", "-q"]))?;
    let known = |name: &&&str| {
        Command::new("apt-cache")
            .args(["show", "-q", name])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    let chosen: Vec<&str> = missing
        .iter()
        .map(|names| names.iter().find(known).unwrap_or(&names[0]))
        .copied()
        .collect();
    step(&format!(
        "apt-get install {} (benchmarks only)",
        chosen.join(" ")
    ));
    setup::sudo_free_run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&chosen),
    )
}

fn bench(tools: &setup::Tools) -> anyhow::Result<()> {
    build_ebpf(tools)?;
    let without_trace = build_ebpf_without_trace(tools)?;
    bench_packages()?;
    // The end-to-end section runs `lb run`: the benchmark finds the binary
    // next to its own profile directory (target/release/lb).
    step("building lb (release) for the end-to-end section");
    run(cargo().args(["build", "--release", "--package", "lb-userspace"]))?;
    step(
        "benchmarks: per-packet cost, packets per second, Maglev, control plane, sync lag, \
         end to end (lb, HAProxy, nftables, no balancer)",
    );
    println!("    report: results/<UTC date-time>.{{json,md,png}}");
    run(cargo().env("LB_BENCH_NOTRACE_OBJECT", without_trace).args([
        "bench",
        "--package",
        "lb-tests",
        "--bench",
        "dataplane",
    ]))
}

/// `cargo xtask bench --scale`: the release `lb` measured with many
/// services (tests/src/scale.rs), its figures printed.
fn bench_scale(tools: &setup::Tools) -> anyhow::Result<()> {
    build_ebpf(tools)?;
    step("building lb (release) for the scale measurement");
    run(cargo().args(["build", "--release", "--package", "lb-userspace"]))?;
    step("scale: services x backends (LB_SCALE, default 100x10,1000x10)");
    let lb = root().join("target/release/lb");
    run(cargo().env("LB_BIN", lb).args([
        "test",
        "--package",
        "lb-tests",
        "--test",
        "e2e_scale",
        "--",
        "--ignored",
        "--exact",
        "scale_figures",
        "--nocapture",
    ]))
}

/// Runs the fuzz tests (tests/tests/fuzz.rs) with a time budget per target,
/// in a release build (many more cases per second). They print their
/// progress and the number of cases run.
fn fuzz(tools: &setup::Tools, seconds: u64, filter: Option<&str>) -> anyhow::Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    build_ebpf(tools)?;
    step(&format!(
        "fuzzing for {seconds} s per target (corpus: fuzz/corpus/<target>/)"
    ));
    let mut command = cargo();
    command
        .env("LB_FUZZ_SECONDS", seconds.to_string())
        .args([
            "test",
            "--release",
            "--package",
            "lb-tests",
            "--test",
            "fuzz",
        ])
        .args(["--", "--nocapture", "--test-threads", "1"]);
    if let Some(filter) = filter {
        command.arg(filter);
    }
    run(&mut command)
}

/// `cargo xtask flood`: refuses a destination outside the documentation
/// ranges before building anything, then builds and runs the `flood`
/// example (which refuses it too, and checks the source prefix).
fn flood(args: &FloodArgs) -> anyhow::Result<()> {
    if !documentation_range(*args.to.ip()) {
        bail!(
            "refusing to flood {}: destinations must lie in 192.0.2.0/24, 198.51.100.0/24 or \
             203.0.113.0/24",
            args.to.ip()
        );
    }
    let tools = setup::run()?;
    build_ebpf(&tools)?;
    step("building the flood generator");
    run(cargo().args(["build", "--package", "lb-tests", "--example", "flood"]))?;
    let mut command = Command::new(root().join("target/debug/examples/flood"));
    if let Some(netns) = &args.netns {
        command.args(["--netns", netns]);
    }
    command
        .args(["--interface", &args.interface])
        .args(["--dst-mac", &args.dst_mac])
        .args(["--to", &args.to.to_string()])
        .args(["--from", &args.from])
        .args(["--kind", &args.kind])
        .args(["--count", &args.count.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--payload", &args.payload.to_string()]);
    if args.packet_only {
        command.arg("--packet-only");
    }
    if let Some(rate) = args.rate {
        command.args(["--rate", &rate.to_string()]);
    }
    run(&mut command)
}

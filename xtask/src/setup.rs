//! `cargo xtask setup`: bring a fresh Debian/Ubuntu root machine to the point
//! where lb builds and its tests run. Every step checks first and prints what
//! it found or did, so running it twice is cheap and quiet about changes.
//!
//! The eBPF crate needs a nightly-capable rustc with the library source
//! (`-Z build-std=core`) and bpf-linker built against the same LLVM major.
//! Two recipes (docs/DESIGN.md §8):
//! - Debian's `rustc-web` + `rust-web-src` (Rust 1.96, LLVM 22) with
//!   `RUSTC_BOOTSTRAP=1`, and bpf-linker 0.13 against Debian's libLLVM 22;
//! - or a rustup `nightly` toolchain with `rust-src`, where one is installed,
//!   and whatever bpf-linker is on PATH.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::step;

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    "rustc-web",         // rustc 1.96 for the eBPF crate
    "rust-web-src",      // its library source, for -Z build-std=core
    "libllvm22",         // what bpf-linker links against at run time
    "llvm-22-dev",       // and builds against
    "iproute2",          // ip netns / link / addr in tests and demo
    "ethtool",           // veth TX checksum offload off in test beds
    "util-linux",        // nsenter
    "procps",            // sysctl
    "keepalived",        // the reference VRRP peer in the HA tests
    "man-db",            // `man -l` in the package test
    "bird2",             // BGP for `announce`: the balancers' and the upstream's in e2e_announce
    "nftables",          // nft: the partitions and dropped health checks of the HA tests
    "fonts-dejavu-core", // the text of the demo's and the benchmarks' charts
    "git",               // git ls-files: the docs test's list of tracked files
    "dpkg-dev",          // dpkg-shlibdeps: the package's Depends, from the binary's libraries
    "binutils",          // strip: the packaged binary
    "lintian",           // cargo xtask package checks the .deb; the package test too
    "prometheus",        // promtool: the alert rules' check (its service is turned off)
    "systemd",           // systemd-analyze security: the unit's exposure, in e2e_capabilities
    "chromium",          // headless, the status page's browser in e2e_web
];

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where a prefix with `lib/libLLVM.so` is laid out for bpf-linker's build.
const LLVM_PREFIX: &str = "/opt/lb-llvm22";
const DEBIAN_LIBLLVM: &str = "/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1";

/// The tools found or installed by setup.
#[derive(Debug)]
pub enum Tools {
    /// Debian's rustc-web with `RUSTC_BOOTSTRAP`.
    Debian,
    /// A rustup nightly with rust-src.
    Nightly,
}

impl Tools {
    /// A `cargo` command set up to build the eBPF crate.
    pub fn ebpf_cargo(&self) -> Command {
        match self {
            Tools::Debian => {
                let mut command = Command::new("cargo");
                command
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env_remove("RUSTC_WORKSPACE_WRAPPER")
                    .env_remove("RUSTFLAGS");
                command
            }
            Tools::Nightly => {
                let mut command = Command::new("rustup");
                command.args(["run", "nightly", "cargo"]);
                command.env_remove("RUSTC").env_remove("RUSTFLAGS");
                command
            }
        }
    }
}

/// Runs every setup step.
pub fn run() -> anyhow::Result<Tools> {
    step("setup: checking the machine");
    if !is_root() {
        println!("    warning: not root; loading XDP programs and the tests need root");
    }
    let tools = if Path::new("/usr/bin/apt-get").exists() {
        apt_packages()?;
        bpf_linker()?;
        Tools::Debian
    } else if nightly_with_rust_src() {
        println!("    no apt-get; using the rustup nightly toolchain with rust-src");
        if !command_ok("bpf-linker", &["--version"]) {
            bail!(
                "bpf-linker is not on PATH: `cargo install bpf-linker` (same LLVM major as nightly)"
            );
        }
        Tools::Nightly
    } else {
        bail!(
            "neither apt-get (for Debian's rustc-web) nor a rustup nightly with rust-src \
             is available; see README.md, Requirements"
        );
    };
    bpffs()?;
    service_off("bird", "bird2", "the tests run their own BIRDs");
    service_off("prometheus", "prometheus", "only its promtool is wanted");
    println!("    setup complete");
    Ok(tools)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn command_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether dpkg has `package` installed.
pub(crate) fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    Debian packages: all present");
        return Ok(());
    }
    println!("    Debian packages missing: {}", missing.join(" "));
    step("apt-get update");
    sudo_free_run(Command::new("apt-get").args(["update", "-q"]))?;
    step(&format!("apt-get install {}", missing.join(" ")));
    sudo_free_run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Runs a command (as the current user, which setup expects to be root).
pub(crate) fn sudo_free_run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status} (setup needs root)");
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(version) = &current
        && version.ends_with(BPF_LINKER_VERSION)
    {
        println!("    {version}: present");
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (a minute or two)"
    ));
    let lib = Path::new(LLVM_PREFIX).join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(DEBIAN_LIBLLVM, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    sudo_free_run(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}

fn nightly_with_rust_src() -> bool {
    Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src")
        })
}

/// A package whose service starts when installed: `bird2` enables a `bird`
/// service with the distribution's configuration (the tests run their own
/// BIRDs in namespaces; a host BIRD would only be in the way), and
/// `prometheus` a Prometheus server scraping this host (setup wants its
/// `promtool`). Each is disabled and stopped: by systemd where it runs,
/// else by the package's init script where that left one running.
fn service_off(service: &str, package: &str, why: &str) {
    if !installed(package) {
        return;
    }
    if Path::new("/run/systemd/system").exists() {
        if command_ok("systemctl", &["is-enabled", "--quiet", service])
            || command_ok("systemctl", &["is-active", "--quiet", service])
        {
            step(&format!("systemctl disable --now {service} ({why})"));
            if !command_ok("systemctl", &["disable", "--now", service]) {
                println!("    warning: could not disable the {service} service");
            }
        }
        return;
    }
    let script = format!("/etc/init.d/{service}");
    if Path::new(&script).exists() && command_ok(&script, &["status"]) {
        step(&format!("{script} stop ({why})"));
        if !command_ok(&script, &["stop"]) {
            println!("    warning: could not stop {service}");
        }
    }
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"/sys/fs/bpf") && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        println!("    bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    step("mounting bpffs at /sys/fs/bpf");
    sudo_free_run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

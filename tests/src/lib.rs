//! Test harness shared by every integration test of lb:
//!
//! - [`testrun`]: the real XDP object, loaded by the real loader, maps filled
//!   through the userspace API, frames run through `BPF_PROG_TEST_RUN`;
//! - [`netns`]: network namespaces, veth pairs, bridges, addresses, routes and
//!   processes inside them, all torn down on drop — also when a test panics;
//! - [`frames`]: typed builders for the frames the tests send;
//! - [`lbrun`]: one `lb run` in a namespace, started, signalled, cleaned up;
//! - [`sandbox`]: `deploy/lb.service`'s capability set and seccomp rules
//!   applied to a process, for running `lb run` as the unit would;
//! - [`bird`]: BIRD 2 in a namespace, for the `announce` tests;
//! - [`browser`]: a headless Chromium in a namespace, driven over the
//!   debugging protocol (CDP), for the status page's test;
//! - [`flood`]: a spoofed SYN / UDP flood generator (XDP live frames, else
//!   `sendmmsg` on an `AF_PACKET` socket), for the `guard.attack` tests and
//!   `cargo xtask flood`;
//! - [`perpacket`]: the benchmark's per-packet timing, every case in
//!   interleaved rounds with its ratios to the floor and the reference
//!   balancer;
//! - [`endtoend`]: the end-to-end benchmark (lb beside `haproxy`, `nftables`
//!   and no balancer, driven by `wrk`);
//! - [`synclag`]: the sync-lag benchmark (two balancers' sync threads, one
//!   creating new flows at a paced rate).
//!
//! Everything here needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`).
#![allow(
    clippy::missing_panics_doc,
    reason = "a test harness: panicking with a clear message is its error handling"
)]

pub mod bed;
pub mod benchdoc;
pub mod bird;
pub mod browser;
pub mod endtoend;
pub mod flood;
pub mod frames;
pub mod fuzz;
pub mod hapair;
pub mod keepalived;
pub mod lbrun;
pub mod model;
pub mod netns;
pub mod perpacket;
pub mod report;
pub mod sandbox;
pub mod scale;
pub mod synclag;
pub mod tables;
pub mod testrun;

use std::path::PathBuf;

/// The `lb` binary under test: `$LB_BIN`, or `lb` next to the test
/// executable's `deps/` directory (where `cargo build` puts it).
pub fn lb_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>");
    let lb = profile_dir.join("lb");
    assert!(
        lb.is_file(),
        "{} is missing: build it first (`cargo xtask test` does)",
        lb.display()
    );
    lb
}

/// A file removed on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file under the temp directory.
    pub fn new(tag: &str, contents: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lbt-{}-{n}-{tag}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

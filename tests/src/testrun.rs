//! `BPF_PROG_TEST_RUN` on the real balancer program.

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use lb::dataplane::{Dataplane, Sizes};
use lb_common::Reason;

/// The MAC address the harness gives the test-run interface (loopback, whose
/// rx queue `BPF_PROG_TEST_RUN` uses when no ifindex is passed).
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// A client MAC address for frames built by tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The ifindex `BPF_PROG_TEST_RUN` reports for XDP without a context: lo.
pub const TEST_IFINDEX: u32 = 1;

/// XDP verdicts, as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_ABORTED`.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`.
    Pass,
    /// `XDP_TX`.
    Tx,
    /// `XDP_REDIRECT`.
    Redirect,
}

impl Action {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => panic!("XDP program returned unknown action {other}"),
        }
    }
}

/// What one run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub action: Action,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// A loaded balancer ready for test runs.
#[derive(Debug)]
pub struct Harness {
    /// The data plane, for filling maps and reading counters.
    pub dataplane: Dataplane,
}

impl Harness {
    /// Loads the balancer with default sizes and registers [`LB_MAC`] as the
    /// receiving interface's address.
    pub fn new() -> Self {
        let mut dataplane = Dataplane::load(Sizes::default()).expect("load the XDP object");
        dataplane
            .insert_iface(TEST_IFINDEX, LB_MAC)
            .expect("register the test interface");
        Self { dataplane }
    }

    /// Runs `frame` through the balancer once.
    pub fn run(&self, frame: &[u8]) -> Outcome {
        // Room for encapsulation headers added by the program.
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = self
            .dataplane
            .balancer()
            .expect("balancer program")
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        Outcome {
            action: Action::from_raw(result.return_value),
            frame: out,
        }
    }

    /// The reason counters, summed over CPUs.
    pub fn counters(&self) -> BTreeMap<Reason, u64> {
        self.dataplane.reason_counters().expect("read counters")
    }

    /// Runs `frame` and returns the outcome together with how much each
    /// reason counter moved.
    pub fn run_counted(&self, frame: &[u8]) -> (Outcome, BTreeMap<Reason, u64>) {
        let before = self.counters();
        let outcome = self.run(frame);
        let after = self.counters();
        let delta = after
            .into_iter()
            .filter_map(|(reason, n)| {
                let moved = n - before.get(&reason).copied().unwrap_or(0);
                (moved > 0).then_some((reason, moved))
            })
            .collect();
        (outcome, delta)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

//! The floating addresses on the HA interface, added and removed by
//! netlink and announced (gratuitous ARP, unsolicited NA) on a thread of
//! their own, so that the VRRP thread's timer and receive path never wait
//! for the kernel or for the announcements' spacing. Commands run in the
//! order given; an address is announced only once it is in place, then
//! again `garp_repeat - 1` times `garp_interval` apart, unless a newer
//! command (a release) ends the series.
//!
//! Each add's [`Outcome`] goes back to the VRRP thread (which retries or
//! faults, see [`crate::vrrp::Holding`]), and wakes it. A thread that ends
//! is noticed there: its channels close ([`Addresses::outcomes`]). One
//! whose commands close without a release (the VRRP thread died) removes
//! the addresses it added before it ends, so no floating IP stays behind.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use ipnet::IpNet;

use super::{
    announce::{Announcer, announcement},
    socket::Wake,
};
use crate::netlink::Netlink;

/// What the address thread is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// Add the floating IPs (try `seq` of [`crate::vrrp::Holding`]), then
    /// announce those in place.
    Hold { seq: u64 },
    /// Announce the floating IPs held again.
    Announce,
    /// Remove the floating IPs.
    Release,
}

/// What came of a [`Command::Hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every floating IP is in place, since `at`.
    Added { seq: u64, at: SystemTime },
    /// These were refused, with the kernel's answer; the others are in
    /// place.
    Refused {
        seq: u64,
        refused: Vec<(IpNet, String)>,
    },
}

/// How a new master announces its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Announcements {
    /// Announcements of each address, at least 1.
    pub(super) repeat: u32,
    /// Their spacing.
    pub(super) interval: Duration,
}

/// The thread that holds and releases the floating IPs.
pub(super) struct Addresses {
    commands: Option<mpsc::Sender<Command>>,
    outcomes: mpsc::Receiver<Outcome>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// For [`Addresses::remove_here`], once the thread is gone.
    ifindex: u32,
    floating: Vec<IpNet>,
    /// A command could not be sent: the thread is gone.
    gone: bool,
}

impl Addresses {
    /// Opens the netlink and packet sockets (failing here, not later) and
    /// starts the thread; it sets `news` after each [`Outcome`] and when
    /// it ends.
    pub(super) fn start(
        ifindex: u32,
        mac: [u8; 6],
        floating: Vec<IpNet>,
        announcements: Announcements,
        news: Arc<Wake>,
    ) -> anyhow::Result<Self> {
        let netlink = Netlink::open().context("ha: netlink socket for the floating IPs")?;
        let announcer = Announcer::open(ifindex)
            .context("ha: packet socket for gratuitous ARP (root needed)")?;
        let (commands, received) = mpsc::channel();
        let (report, outcomes) = mpsc::channel();
        let worker = Worker {
            ifindex,
            mac,
            floating: floating.clone(),
            announcements,
            netlink,
            announcer,
            held: Vec::new(),
            added: false,
            report,
            news: Arc::clone(&news),
        };
        let thread = std::thread::Builder::new()
            .name("ha-addresses".into())
            .spawn(move || {
                // Dropped last, also when the worker panics: the VRRP
                // thread wakes and finds the outcomes closed.
                let _wake = WakeOnEnd(news);
                super::realtime("ha-addresses");
                worker.run(&received);
            })
            .context("ha: starting the address thread")?;
        Ok(Self {
            commands: Some(commands),
            outcomes,
            thread: Some(thread),
            ifindex,
            floating,
            gone: false,
        })
    }

    /// Adds the floating IPs (try `seq`) and announces them.
    pub(super) fn hold(&mut self, seq: u64) {
        self.send(Command::Hold { seq });
    }

    /// Announces the floating IPs again.
    pub(super) fn announce(&mut self) {
        self.send(Command::Announce);
    }

    /// Removes the floating IPs.
    pub(super) fn release(&mut self) {
        self.send(Command::Release);
    }

    /// The outcomes reported since the last call; `Err` with the cause
    /// once the thread has ended (it only ends when told to, so this is a
    /// panic or a lost channel).
    pub(super) fn outcomes(&mut self) -> Result<Vec<Outcome>, String> {
        let mut outcomes = Vec::new();
        loop {
            match self.outcomes.try_recv() {
                Ok(outcome) => outcomes.push(outcome),
                Err(mpsc::TryRecvError::Empty) if !self.gone => return Ok(outcomes),
                Err(mpsc::TryRecvError::Empty | mpsc::TryRecvError::Disconnected) => {
                    return Err(self.end());
                }
            }
        }
    }

    /// The thread still runs (a command can reach it).
    pub(super) fn alive(&self) -> bool {
        !self.gone
            && self
                .thread
                .as_ref()
                .is_some_and(|thread| !thread.is_finished())
    }

    /// Carries out the commands given so far and ends the thread.
    pub(super) fn finish(mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Removes the floating IPs from this thread, through a netlink socket
    /// of its own: the address thread is gone and may have left them.
    pub(super) fn remove_here(&self) {
        let mut netlink = match Netlink::open() {
            Ok(netlink) => netlink,
            Err(error) => {
                tracing::error!(%error, "ha: no netlink socket to remove the floating IPs; \
                    `lb release` removes them once lb has exited");
                return;
            }
        };
        remove(&mut netlink, self.ifindex, &self.floating);
    }

    fn send(&mut self, command: Command) {
        if let Some(commands) = &self.commands
            && commands.send(command).is_err()
        {
            // Only a thread that ended drops the receiver: the next
            // `outcomes` reports it.
            self.gone = true;
        }
    }

    /// Why the thread ended: its panic's message if it panicked.
    fn end(&mut self) -> String {
        self.gone = true;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Err(panic)) => format!("panicked: {}", super::panic_message(&*panic)),
            Some(Ok(())) => "ended".to_string(),
            None => "gone".to_string(),
        }
    }
}

/// Sets the VRRP thread's news eventfd when dropped.
struct WakeOnEnd(Arc<Wake>);

impl Drop for WakeOnEnd {
    fn drop(&mut self) {
        self.0.set();
    }
}

impl Drop for Addresses {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the address thread waits for next.
enum Next {
    Command(Command),
    /// The next announcement of the series.
    Due,
    /// The VRRP thread dropped its sender.
    Closed,
}

/// Removes `floating` from `ifindex`, logging what fails.
fn remove(netlink: &mut Netlink, ifindex: u32, floating: &[IpNet]) {
    for &address in floating {
        match netlink.address_delete(ifindex, address) {
            Ok(true) => {}
            Ok(false) => tracing::debug!(%address, "ha: floating IP already gone"),
            Err(error) => tracing::error!(%address, %error, "ha: floating IP not removed"),
        }
    }
}

/// The address thread's state.
struct Worker {
    ifindex: u32,
    mac: [u8; 6],
    floating: Vec<IpNet>,
    announcements: Announcements,
    netlink: Netlink,
    announcer: Announcer,
    /// The floating IPs added successfully, the ones announced.
    held: Vec<IpNet>,
    /// Adds were tried since the last release: an end without a release
    /// removes them.
    added: bool,
    report: mpsc::Sender<Outcome>,
    news: Arc<Wake>,
}

impl Worker {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        // The announcements still to send, and when the next is due.
        let mut series: Option<(u32, Instant)> = None;
        loop {
            let next = match series {
                None => commands.recv().map_or(Next::Closed, Next::Command),
                Some((_, due)) => {
                    match commands.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(command) => Next::Command(command),
                        Err(mpsc::RecvTimeoutError::Timeout) => Next::Due,
                        Err(mpsc::RecvTimeoutError::Disconnected) => Next::Closed,
                    }
                }
            };
            series = match next {
                Next::Closed => {
                    self.end();
                    return;
                }
                Next::Command(Command::Hold { seq }) => {
                    let outcome = self.add(seq);
                    super::test_hook::panic_if("addresses");
                    // The VRRP thread only stops taking outcomes when it
                    // ends, and then this thread ends next (`Next::Closed`).
                    let _ = self.report.send(outcome);
                    self.news.set();
                    self.start_series()
                }
                Next::Command(Command::Announce) => self.start_series(),
                Next::Command(Command::Release) => {
                    self.remove();
                    None
                }
                Next::Due => {
                    self.announce();
                    series.and_then(|(left, due)| {
                        let left = left - 1;
                        (left > 0).then(|| (left, due + self.announcements.interval))
                    })
                }
            };
        }
    }

    /// Announces now, and schedules the rest of the series.
    fn start_series(&self) -> Option<(u32, Instant)> {
        self.announce();
        let left = self.announcements.repeat.saturating_sub(1);
        (left > 0).then(|| (left, Instant::now() + self.announcements.interval))
    }

    /// Adds every floating IP (replacing one already there), and says
    /// which the kernel refused.
    fn add(&mut self, seq: u64) -> Outcome {
        self.held.clear();
        self.added = true;
        let mut refused = Vec::new();
        for &address in &self.floating {
            match self.netlink.address_add(self.ifindex, address) {
                Ok(()) => self.held.push(address),
                Err(error) => {
                    tracing::warn!(%address, %error, "ha: floating IP not added");
                    refused.push((address, error.to_string()));
                }
            }
        }
        if refused.is_empty() {
            Outcome::Added {
                seq,
                at: SystemTime::now(),
            }
        } else {
            Outcome::Refused { seq, refused }
        }
    }

    fn remove(&mut self) {
        self.held.clear();
        self.added = false;
        remove(&mut self.netlink, self.ifindex, &self.floating);
    }

    /// The commands closed: the VRRP thread ended. Without a release
    /// first (it died), the addresses go now.
    fn end(&mut self) {
        if self.added {
            tracing::error!(
                "ha: the VRRP thread ended without releasing the floating IPs; \
                removing them"
            );
            self.remove();
        }
    }

    fn announce(&self) {
        for address in &self.held {
            let (ethertype, frame) = announcement(self.mac, address.addr());
            if let Err(error) = self.announcer.send(ethertype, &frame) {
                tracing::warn!(address = %address.addr(), %error, "ha: announcement not sent");
            }
        }
    }
}

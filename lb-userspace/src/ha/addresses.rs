//! The floating addresses on the HA interface, added and removed by
//! netlink and announced (gratuitous ARP, unsolicited NA) on a thread of
//! their own, so that the VRRP thread's timer and receive path never wait
//! for the kernel or for the announcements' spacing. Commands run in the
//! order given; an address is announced only once it is in place, then
//! again `garp_repeat - 1` times `garp_interval` apart, unless a newer
//! command (a release) ends the series.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ipnet::IpNet;

use super::announce::{Announcer, announcement};
use crate::netlink::Netlink;

/// What the address thread is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// Add the floating IPs, then announce them.
    Hold,
    /// Announce the floating IPs held again.
    Announce,
    /// Remove the floating IPs.
    Release,
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
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Addresses {
    /// Opens the netlink and packet sockets (failing here, not later) and
    /// starts the thread.
    pub(super) fn start(
        ifindex: u32,
        mac: [u8; 6],
        floating: Vec<IpNet>,
        announcements: Announcements,
    ) -> anyhow::Result<Self> {
        let netlink = Netlink::open().context("ha: netlink socket for the floating IPs")?;
        let announcer = Announcer::open(ifindex)
            .context("ha: packet socket for gratuitous ARP (root needed)")?;
        let (commands, received) = mpsc::channel();
        let worker = Worker {
            ifindex,
            mac,
            floating,
            announcements,
            netlink,
            announcer,
            held: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("ha-addresses".into())
            .spawn(move || {
                super::realtime("ha-addresses");
                worker.run(&received);
            })
            .context("ha: starting the address thread")?;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Adds the floating IPs and announces them.
    pub(super) fn hold(&self) {
        self.send(Command::Hold);
    }

    /// Announces the floating IPs again.
    pub(super) fn announce(&self) {
        self.send(Command::Announce);
    }

    /// Removes the floating IPs.
    pub(super) fn release(&self) {
        self.send(Command::Release);
    }

    /// Carries out the commands given so far and ends the thread.
    pub(super) fn finish(mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn send(&self, command: Command) {
        if let Some(commands) = &self.commands {
            // The thread only ends when this sender is dropped.
            let _ = commands.send(command);
        }
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
}

impl Worker {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        // The announcements still to send, and when the next is due.
        let mut series: Option<(u32, Instant)> = None;
        loop {
            let command = match series {
                None => match commands.recv() {
                    Ok(command) => Some(command),
                    Err(mpsc::RecvError) => return,
                },
                Some((_, due)) => {
                    match commands.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(command) => Some(command),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            series = match command {
                Some(Command::Hold) => {
                    self.add();
                    self.start_series()
                }
                Some(Command::Announce) => self.start_series(),
                Some(Command::Release) => {
                    self.remove();
                    None
                }
                None => {
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

    fn add(&mut self) {
        self.held.clear();
        for &address in &self.floating {
            match self.netlink.address_add(self.ifindex, address) {
                Ok(()) => self.held.push(address),
                Err(error) => tracing::error!(%address, %error, "ha: floating IP not added"),
            }
        }
    }

    fn remove(&mut self) {
        self.held.clear();
        for &address in &self.floating {
            match self.netlink.address_delete(self.ifindex, address) {
                Ok(true) => {}
                Ok(false) => tracing::debug!(%address, "ha: floating IP already gone"),
                Err(error) => tracing::error!(%address, %error, "ha: floating IP not removed"),
            }
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

//! The signals `lb run` takes synchronously: blocked in every thread
//! before the first one starts, and taken with `sigwait` by the signal
//! loop alone. SIGUSR1 is lb's own: the HA alarm raises it.

use std::sync::mpsc::{Receiver, channel};

/// The blocked set, for [`Signals::wait`].
pub(super) struct Signals(libc::sigset_t);

impl Signals {
    /// Blocks SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGUSR1 in this (and
    /// every later) thread so they can be taken synchronously with
    /// `sigwait`.
    pub(super) fn block() -> Self {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before
        // use, and pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, libc::SIGINT);
            libc::sigaddset(&raw mut set, libc::SIGTERM);
            libc::sigaddset(&raw mut set, libc::SIGHUP);
            libc::sigaddset(&raw mut set, libc::SIGQUIT);
            // Raised by the HA alarm (`ha_alarm`).
            libc::sigaddset(&raw mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
            Self(set)
        }
    }

    /// Waits for the next of the blocked signals.
    pub(super) fn wait(&self) -> i32 {
        let mut signal = 0;
        // SAFETY: the set was initialised by `block`; `signal` is a valid
        // out-pointer.
        unsafe { libc::sigwait(&raw const self.0, &raw mut signal) };
        signal
    }
}

/// The alarm an HA instance raises when it can no longer run (one of its
/// threads stopped; it is in fault, its floating IPs removed), and where
/// the signal loop reads why: it cannot run again in this process, so `lb
/// run` exits non-zero for the service manager to restart it.
pub(super) fn ha_alarm() -> (crate::ha::Alarm, Receiver<String>) {
    let (stopped, ha_stopped) = channel::<String>();
    let alarm = crate::ha::Alarm::new(move |why| {
        // The receiver lives as long as the run, which only ends after the
        // instances' threads have.
        let _ = stopped.send(why.to_string());
        // SAFETY: kill(2) on our own pid; SIGUSR1 is blocked in every
        // thread (`Signals::block`) and taken by `Signals::wait`.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    });
    (alarm, ha_stopped)
}

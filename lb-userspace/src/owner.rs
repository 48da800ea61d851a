//! The single owner of the running controller. One thread holds the
//! [`Controller`] and applies jobs to it one at a time, in the order they
//! arrive: health results, API requests, agent loads, hop lookups, the
//! periodic tick and reconciliation, reloads and signals. Everything else —
//! sockets, probes, netlink lookups, walks of the connection table — runs
//! on the edges' own threads, which reach the controller only through a
//! cloneable [`Handle`]: no thread ever holds the controller across its
//! own I/O, because no thread but the owner ever holds it at all.
//!
//! `handle.call(|c| c.status())` waits (bounded) for the answer;
//! `handle.send(|c| ...)` queues an event and returns at once;
//! `handle.stop(|c| ...)` ends the loop, handing the controller by value to
//! its last job (the clean-stop sequence). Jobs still queued behind a stop
//! are dropped, and their callers told the owner is gone.

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

use crate::controller::Controller;

/// How long [`Handle::call`] waits for an answer. The longest job is a
/// reload (re-reads the file, rewrites every table). A little under the
/// control socket's minute per exchange, so that a client kept waiting by
/// a busy owner is told so (503) rather than cut off.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(50);

/// The handle the edges of `lb run` hold.
pub type ControllerHandle = Handle<Controller>;

/// A job the owner applies to its state.
type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// The last job, which takes the state by value.
type Finish<T> = Box<dyn FnOnce(T) + Send>;

enum Message<T> {
    Job(Job<T>),
    Stop(Finish<T>),
}

/// Why a job got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The owner has stopped (or a job panicked and ended it).
    #[error("the controller has stopped")]
    Gone,
    /// The owner is busy with earlier jobs for longer than the bound.
    #[error("the controller did not answer within {0:?}")]
    Timeout(Duration),
}

/// The way to the owner of a `T`; cloned freely, one per edge.
pub struct Handle<T> {
    sender: mpsc::Sender<Message<T>>,
    timeout: Duration,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            timeout: self.timeout,
        }
    }
}

impl<T> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Moves `state` to a new thread that owns it until a [`Handle::stop`]
/// (or until every handle is dropped); returns the first handle and the
/// thread.
pub fn spawn<T: Send + 'static>(state: T) -> std::io::Result<(Handle<T>, JoinHandle<()>)> {
    let (sender, inbox) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || run(state, &inbox))?;
    let handle = Handle {
        sender,
        timeout: CALL_TIMEOUT,
    };
    Ok((handle, thread))
}

/// The owner's loop: jobs in arrival order until a stop. Returning drops
/// the inbox, and with it the jobs queued behind the stop.
fn run<T>(mut state: T, inbox: &mpsc::Receiver<Message<T>>) {
    for message in inbox {
        match message {
            Message::Job(job) => job(&mut state),
            Message::Stop(finish) => {
                finish(state);
                return;
            }
        }
    }
}

impl<T: 'static> Handle<T> {
    /// The same handle with another bound on [`Handle::call`] waits.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Queues `job` behind the ones already sent and returns at once.
    ///
    /// # Errors
    /// [`OwnerError::Gone`] if the owner has stopped.
    pub fn send(&self, job: impl FnOnce(&mut T) + Send + 'static) -> Result<(), OwnerError> {
        self.sender
            .send(Message::Job(Box::new(job)))
            .map_err(|_| OwnerError::Gone)
    }

    /// Runs `job` on the owner's thread, in turn, and returns its answer.
    ///
    /// # Errors
    /// [`OwnerError::Gone`] if the owner has stopped (also before getting
    /// to the job); [`OwnerError::Timeout`] if no answer came within the
    /// bound (the job still runs when its turn comes).
    pub fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, OwnerError> {
        let answer = self.ask(job)?;
        self.wait(&answer)
    }

    /// Queues `job`; its answer will come on the returned receiver.
    fn ask<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<mpsc::Receiver<R>, OwnerError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(move |state| {
            // The caller may have given up waiting: nobody to tell.
            let _ = reply.send(job(state));
        })?;
        Ok(answer)
    }

    /// Ends the owner's loop after the jobs already queued: `finish` gets
    /// the state by value, and its answer is returned.
    ///
    /// # Errors
    /// As [`Handle::call`].
    pub fn stop<R: Send + 'static>(
        &self,
        finish: impl FnOnce(T) -> R + Send + 'static,
    ) -> Result<R, OwnerError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender
            .send(Message::Stop(Box::new(move |state| {
                let _ = reply.send(finish(state));
            })))
            .map_err(|_| OwnerError::Gone)?;
        self.wait(&answer)
    }

    fn wait<R>(&self, answer: &mpsc::Receiver<R>) -> Result<R, OwnerError> {
        answer
            .recv_timeout(self.timeout)
            .map_err(|error| match error {
                RecvTimeoutError::Timeout => OwnerError::Timeout(self.timeout),
                RecvTimeoutError::Disconnected => OwnerError::Gone,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn jobs_apply_in_the_order_they_were_sent() {
        let (handle, owner) = spawn(Vec::new()).unwrap();
        let other = handle.clone();
        for i in 0..100 {
            // Events and calls from two handles, interleaved.
            if i % 2 == 0 {
                handle.send(move |v: &mut Vec<u32>| v.push(i)).unwrap();
            } else {
                assert_eq!(other.call(move |v| v.push(i)).ok(), Some(()));
            }
        }
        let seen = handle.call(|v| v.clone()).unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        let last = handle.stop(|v| v.len()).unwrap();
        assert_eq!(last, 100);
        owner.join().unwrap();
    }

    #[test]
    fn a_call_after_the_owner_ended_is_an_error_not_a_hang() {
        let (handle, owner) = spawn(0u32).unwrap();
        let handle = handle.with_timeout(Duration::from_secs(30));
        assert_eq!(handle.stop(|n| n).unwrap(), 0);
        owner.join().unwrap();
        assert!(matches!(handle.call(|n| *n), Err(OwnerError::Gone)));
        assert!(matches!(handle.send(|n| *n += 1), Err(OwnerError::Gone)));
        assert!(matches!(handle.stop(|n| n), Err(OwnerError::Gone)));
    }

    #[test]
    fn jobs_queued_behind_a_stop_are_told_the_owner_is_gone() {
        let (handle, owner) = spawn(0u32).unwrap();
        let handle = handle.with_timeout(Duration::from_secs(30));
        // Hold the owner in a job while a stop and then a call queue up.
        let (release, held) = mpsc::channel::<()>();
        handle
            .send(move |_| {
                let _ = held.recv_timeout(Duration::from_secs(30));
            })
            .unwrap();
        let (reply, stopped) = mpsc::sync_channel(1);
        let finish = move |n| {
            let _ = reply.send(n);
        };
        handle.sender.send(Message::Stop(Box::new(finish))).unwrap();
        let late = handle.ask(|n| *n).unwrap();
        release.send(()).unwrap();
        assert_eq!(handle.wait(&stopped).unwrap(), 0);
        assert!(matches!(handle.wait(&late), Err(OwnerError::Gone)));
        owner.join().unwrap();
    }

    #[test]
    fn a_busy_owner_is_reported_after_the_bound() {
        let (handle, owner) = spawn(0u32).unwrap();
        let (release, held) = mpsc::channel::<()>();
        handle
            .send(move |_| {
                let _ = held.recv_timeout(Duration::from_secs(30));
            })
            .unwrap();
        let short = handle.clone().with_timeout(Duration::from_millis(50));
        assert!(matches!(
            short.call(|n| *n),
            Err(OwnerError::Timeout(bound)) if bound == Duration::from_millis(50)
        ));
        release.send(()).unwrap();
        // The owner carries on: the timed-out job ran, and later ones too.
        assert_eq!(handle.call(|n| *n + 1).unwrap(), 1);
        drop((handle, short));
        owner.join().unwrap();
    }

    #[test]
    fn dropping_every_handle_ends_the_owner() {
        struct Flag(mpsc::Sender<()>);
        impl Drop for Flag {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped, was_dropped) = mpsc::channel();
        let (handle, owner) = spawn(Flag(dropped)).unwrap();
        drop(handle);
        owner.join().unwrap();
        assert!(was_dropped.try_recv().is_ok());
    }
}

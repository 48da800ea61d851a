//! The instance lock: one `lb run` per instance on a host. The first thing
//! `lb run` takes, before it touches pins, maps, XDP attachments, addresses
//! or VRRP, so a second start for a running instance (say, with an edited
//! file) changes nothing and names the one that runs.
//!
//! `flock(2)` on `/run/lb/<instance>.lock`, held for the life of the
//! process: the kernel releases it however the process ends (SIGKILL, a
//! crash), so a stale file never blocks a start. The file says who holds it
//! (PID and control socket) for the refusal message and for operators.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

/// Where instance locks live (beside the default control socket).
pub const LOCK_ROOT: &str = "/run/lb";

/// A held instance lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it: the instance is running.
    #[error(
        "instance {instance:?} is already running ({holder}); this start changed nothing. \
         Stop it first (SIGTERM; SIGQUIT leaves its data plane forwarding for the next \
         start), or apply an edited file to it with `lb reload`"
    )]
    Held {
        /// The instance.
        instance: String,
        /// Who holds it, as its lock file says.
        holder: Holder,
    },
    /// The lock file could not be created or locked.
    #[error("instance lock {}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The process holding an instance lock, as its lock file records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its PID, if recorded yet.
    pub pid: Option<u32>,
    /// Its control socket, if recorded yet.
    pub socket: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "PID {pid}")?,
            None => write!(f, "PID unknown")?,
        }
        match &self.socket {
            Some(socket) => write!(f, ", control socket {socket}"),
            None => Ok(()),
        }
    }
}

impl Holder {
    /// Reads `pid=N` and `socket=PATH` lines.
    fn parse(text: &str) -> Self {
        let mut holder = Self::default();
        for line in text.lines() {
            if let Some(pid) = line.strip_prefix("pid=") {
                holder.pid = pid.trim().parse().ok();
            } else if let Some(socket) = line.strip_prefix("socket=")
                && !socket.is_empty()
            {
                holder.socket = Some(socket.to_string());
            }
        }
        holder
    }
}

impl InstanceLock {
    /// Takes the lock of `instance` under `dir` (normally [`LOCK_ROOT`]) and
    /// records this process and its control `socket` in it. Never waits:
    /// a held lock is [`LockError::Held`].
    pub fn acquire(dir: &Path, instance: &str, socket: &Path) -> Result<Self, LockError> {
        let path = dir.join(format!("{instance}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(io)?;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(io(error));
                }
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    instance: instance.to_string(),
                    holder: Holder::parse(&text),
                });
            }
            // The holder before us removes the file when it ends, after we
            // may have opened it: a lock on a removed file guards nothing.
            // Locked and still the file at `path`: it is ours.
            let same = std::fs::metadata(&path)
                .ok()
                .zip(file.metadata().ok())
                .is_some_and(|(named, held)| {
                    named.ino() == held.ino() && named.dev() == held.dev()
                });
            if !same {
                continue;
            }
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            write!(
                file,
                "pid={}\nsocket={}\n",
                std::process::id(),
                socket.display()
            )
            .map_err(io)?;
            return Ok(Self { file, path });
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    /// Removes the file while still holding the lock (a process that opened
    /// it meanwhile notices, see [`InstanceLock::acquire`]); closing the
    /// file releases the lock.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_holder_is_refused_and_told_who_runs() {
        let dir = scratch("second");
        let socket = Path::new("/run/lb/edge1.sock");
        let first = InstanceLock::acquire(&dir, "edge1", socket).unwrap();
        let Err(LockError::Held { instance, holder }) =
            InstanceLock::acquire(&dir, "edge1", Path::new("/run/lb/other.sock"))
        else {
            panic!("a second lock was granted");
        };
        assert_eq!(instance, "edge1");
        assert_eq!(
            holder,
            Holder {
                pid: Some(std::process::id()),
                socket: Some("/run/lb/edge1.sock".into()),
            }
        );
        let message = LockError::Held { instance, holder }.to_string();
        assert!(
            message.contains("\"edge1\" is already running")
                && message.contains(&format!("PID {}", std::process::id()))
                && message.contains("/run/lb/edge1.sock"),
            "{message}"
        );
        // Another instance is not held up.
        let other = InstanceLock::acquire(&dir, "edge2", socket).unwrap();
        drop((first, other));
        assert!(!dir.join("edge1.lock").exists(), "lock file left behind");
        let again = InstanceLock::acquire(&dir, "edge1", socket).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        // What a SIGKILLed lb leaves: the file, no lock.
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("edge1.lock"), "pid=999999\nsocket=/old.sock\n").unwrap();
        let lock = InstanceLock::acquire(&dir, "edge1", Path::new("/new.sock")).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(
            text,
            format!("pid={}\nsocket=/new.sock\n", std::process::id())
        );
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

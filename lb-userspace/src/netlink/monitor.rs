//! [`Monitor`], the change-notification socket: it says *that* a
//! neighbour, route, link or address changed, and how many times, never
//! what.

use std::{
    fmt, io,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::codec::messages;
use super::socket::{BUFFER, open_socket, receive, set_option};
use super::{NetlinkError, uapi};

/// A socket subscribed to neighbour, route, link and address changes
/// (`RTMGRP_NEIGH`, `RTMGRP_IPV4_ROUTE`, `RTMGRP_IPV6_ROUTE`, `RTMGRP_LINK`,
/// `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`). It only says *that*
/// something changed; the caller re-resolves what it cares about.
pub struct Monitor {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let groups = uapi::RTMGRP_NEIGH
            | uapi::RTMGRP_IPV4_ROUTE
            | uapi::RTMGRP_IPV6_ROUTE
            | uapi::RTMGRP_LINK
            | uapi::RTMGRP_IPV4_IFADDR
            | uapi::RTMGRP_IPV6_IFADDR;
        let fd = open_socket(groups, true).map_err(NetlinkError::Open)?;
        // Best effort: a bigger queue makes overruns (ENOBUFS) rarer when a
        // link flap floods route and neighbour events. FORCE needs
        // CAP_NET_ADMIN and ignores rmem_max; the plain option is the fallback.
        let size = 4 * 1024 * 1024;
        if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        Ok(Self {
            fd,
            buffer: vec![0; BUFFER],
        })
    }

    /// Waits up to `timeout` for change notifications and returns how many
    /// arrived (0 on timeout). Once one arrives it drains everything queued
    /// without waiting further. An overrun (`ENOBUFS`: notifications were
    /// lost) counts as a change, so the caller re-resolves everything.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, NetlinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = libc::c_int::try_from(remaining.as_micros().div_ceil(1000))
                .unwrap_or(libc::c_int::MAX);
            let mut poll_fd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the count given.
            let rc = unsafe { libc::poll(&raw mut poll_fd, 1, millis) };
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.error(error));
            }
            if rc > 0 {
                let count = self.drain()?;
                if count > 0 {
                    return Ok(count);
                }
            }
            if Instant::now() >= deadline {
                return Ok(0);
            }
        }
    }

    /// Reads every queued datagram without blocking; counts notifications.
    fn drain(&mut self) -> Result<usize, NetlinkError> {
        let mut count = 0usize;
        loop {
            match receive(&self.fd, &mut self.buffer, libc::MSG_DONTWAIT) {
                Ok((length, true)) => {
                    count += count_notifications(self.buffer.get(..length).unwrap_or_default());
                }
                Ok((_, false)) => {}
                Err(error) => match error.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(count),
                    Some(libc::ENOBUFS) => count += 1,
                    Some(libc::EINTR) => {}
                    _ => return Err(self.error(error)),
                },
            }
        }
    }

    fn error(&self, source: io::Error) -> NetlinkError {
        NetlinkError::Io {
            op: "monitor",
            target: format!("fd {}", self.fd.as_raw_fd()),
            source,
        }
    }
}

/// How many change notifications a datagram holds (`NLMSG_DONE` and no-ops
/// aside). A datagram that does not parse counts as one change: the caller
/// re-resolves, which is always safe.
pub(super) fn count_notifications(datagram: &[u8]) -> usize {
    let mut count = 0;
    for message in messages(datagram) {
        match message {
            Ok(m) if matches!(m.kind, uapi::NLMSG_DONE | uapi::NLMSG_NOOP) => {}
            Ok(_) => count += 1,
            Err(_) => return count + 1,
        }
    }
    count
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::fixtures::*;

    #[test]
    fn counts_notifications_in_a_datagram() {
        let mut two = NEIGHBOUR_REPLY.to_vec();
        two.extend_from_slice(&ROUTE_REPLY);
        assert_eq!(count_notifications(&two), 2);
        #[rustfmt::skip]
        let done = [20, 0, 0, 0,  3, 0,  2, 0,  1, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0];
        assert_eq!(count_notifications(&done), 0);
        // Garbage after a good message still says "something changed".
        two.truncate(NEIGHBOUR_REPLY.len() + 10);
        assert_eq!(count_notifications(&two), 2);
    }
}

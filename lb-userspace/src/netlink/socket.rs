//! The raw `NETLINK_ROUTE` socket calls that [`Netlink`](super::Netlink)
//! and [`Monitor`](super::Monitor) share: open and bind, set an option,
//! receive one datagram. The only `unsafe` of the module.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Receive buffer size: replies to single gets are a few KiB at most, and
/// the kernel fills dump datagrams up to the largest buffer `recvmsg` was
/// given, capped near 32 KiB.
pub(super) const BUFFER: usize = 64 * 1024;

pub(super) fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("socket option and address structs are tiny")
}

/// A bound `NETLINK_ROUTE` socket, close-on-exec, subscribed to `groups`.
pub(super) fn open_socket(groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2); the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, kind, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Best effort (Linux 4.3 / 4.12): errors echo only the request's header
    // and carry the kernel's message, e.g. "Invalid NTF_* flag ...".
    let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
    let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).expect("AF_NETLINK is 16");
    address.nl_groups = groups;
    // SAFETY: `address` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            socklen_of::<libc::sockaddr_nl>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receives one datagram into `buffer`; returns its length and whether the
/// kernel sent it (port id 0), not another process. A datagram larger than
/// the buffer is an error, not a silent truncation.
pub(super) fn receive(
    fd: &OwnedFd,
    buffer: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, bool)> {
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut from_len = socklen_of::<libc::sockaddr_nl>();
    // SAFETY: `buffer`, `from` and `from_len` are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            flags | libc::MSG_TRUNC,
            (&raw mut from).cast(),
            &raw mut from_len,
        )
    };
    let length = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if length > buffer.len() {
        return Err(io::Error::other(format!(
            "a {length}-byte netlink datagram overflowed the {}-byte buffer",
            buffer.len()
        )));
    }
    Ok((length, from.nl_pid == 0))
}

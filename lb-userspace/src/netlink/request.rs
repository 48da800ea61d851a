//! [`Netlink`], the request socket: one request at a time, each answered
//! before the next, and route dumps read to their end. The codec does the
//! bytes; this file sends, receives, times out and turns the kernel's
//! answers into results.

use std::{
    fmt, io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use ipnet::IpNet;

use super::address::{
    AddressCollector, encode_address_add, encode_address_delete, encode_address_dump,
};
use super::codec::{decode_error, messages};
use super::dump::{DumpFailure, DumpProgress, DumpReader, TakeMessage, ends_dump};
use super::link::{decode_link, encode_link_get};
use super::neigh::{
    decode_neighbour, encode_neighbour_delete, encode_neighbour_get, encode_neighbour_manage,
};
use super::route::{RouteCollector, decode_route, encode_route_dump, encode_route_get};
use super::socket::{BUFFER, open_socket, receive, socklen_of};
use super::{
    Address, DecodeError, Family, Link, Neighbour, NetlinkError, Route, RouteEntry, RouteKind,
    malformed, uapi,
};

/// How long a request waits for the kernel's reply (each datagram of a
/// dump) before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most routes [`Netlink::route_dump`] returns.
const MAX_ROUTES: usize = 1_000_000;

/// The most addresses [`Netlink::addresses`] returns for one interface.
const MAX_ADDRESSES: usize = 100_000;

/// How many times a dump runs when the table keeps changing under it.
const DUMP_ATTEMPTS: usize = 3;

/// What a request got back.
enum Reply {
    /// An `NLMSG_ERROR` with errno 0.
    Ack,
    /// A data message: its type and payload.
    Message(u16, Vec<u8>),
}

/// A request socket: one request at a time, each answered before the next.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buffer: Vec<u8>,
    /// The sequence number of a dump given up before its end (an error
    /// mid-way). The kernel runs one dump per socket, refusing another with
    /// `EBUSY` until that one is read to its end.
    unfinished_dump: Option<u32>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.fd)
            .field("seq", &self.seq)
            .field("unfinished_dump", &self.unfinished_dump)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a request socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let fd = open_socket(0, false).map_err(NetlinkError::Open)?;
        let timeout = libc::timeval {
            tv_sec: libc::time_t::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: 0,
        };
        // SAFETY: `timeout` lives for the call and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                socklen_of::<libc::timeval>(),
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            seq: 1,
            buffer: vec![0; BUFFER],
            unfinished_dump: None,
        })
    }

    /// Like `ip route get DST`: the route the kernel would use.
    /// Unreachable, blackhole and prohibit routes (and no route) come back
    /// as a [`Route`] of that kind, not as an error. Link-local IPv6
    /// destinations need an interface and are not supported.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Route, NetlinkError> {
        const OP: &str = "route get";
        let seq = self.next_seq();
        let request = encode_route_get(seq, dst);
        let target = || dst.to_string();
        let unroutable = |kind| Route {
            kind,
            oif: 0,
            gateway: None,
            source: None,
            mtu: None,
        };
        match self.exchange(&request, seq, OP, &target) {
            Ok(Reply::Message(uapi::RTM_NEWROUTE, payload)) => {
                decode_route(&payload).map_err(|source| malformed(OP, target(), source))
            }
            Ok(Reply::Message(kind, _)) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Ok(Reply::Ack) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
            Err(error) => match error.errno() {
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                    Ok(unroutable(RouteKind::Unreachable))
                }
                // The request is well-formed (see the tests below), so
                // EINVAL is the kernel's answer for a blackhole route.
                Some(libc::EINVAL) => Ok(unroutable(RouteKind::Blackhole)),
                Some(libc::EACCES) => Ok(unroutable(RouteKind::Prohibit)),
                _ => Err(error),
            },
        }
    }

    /// The routes of the main table (`RT_TABLE_MAIN`) for `family`, as
    /// `ip route show` / `ip -6 route show` lists them: unicast routes and
    /// also unreachable, blackhole and prohibit ones (and, for IPv4, any
    /// other kind an administrator put there), without cached clones. See
    /// [`RouteEntry`] for what each field holds. At most 1,000,000 routes
    /// (else [`NetlinkError::TooLarge`]); a dump the table's changes keep
    /// interrupting is tried 3 times, then fails with an
    /// [`io::ErrorKind::Interrupted`] I/O error.
    pub fn route_dump(&mut self, family: Family) -> Result<Vec<RouteEntry>, NetlinkError> {
        self.route_dump_at_most(family, MAX_ROUTES)
    }

    /// [`Netlink::route_dump`] keeping at most `limit` routes: one more is
    /// [`NetlinkError::TooLarge`], without collecting the rest (for a
    /// caller whose own table is smaller).
    pub fn route_dump_at_most(
        &mut self,
        family: Family,
        limit: usize,
    ) -> Result<Vec<RouteEntry>, NetlinkError> {
        const OP: &str = "route dump";
        let target = || format!("{family} main table");
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.next_seq();
            let request = encode_route_dump(seq, family);
            let mut collector = RouteCollector::new(family, limit);
            let complete = self.dump(&request, seq, OP, &target, &mut |kind, payload| {
                collector.take(kind, payload)
            })?;
            if complete {
                return Ok(collector.routes);
            }
        }
        Err(NetlinkError::Io {
            op: OP,
            target: target(),
            source: io::Error::new(
                io::ErrorKind::Interrupted,
                format!("the table changed during each of {DUMP_ATTEMPTS} dumps"),
            ),
        })
    }

    /// Like `ip neigh get ADDR dev IFINDEX`; `None` when there is no entry.
    pub fn neighbour_get(
        &mut self,
        addr: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        self.neighbour_get_as("neighbour get", addr, ifindex)
    }

    /// Makes the kernel resolve `addr` on `ifindex` now and keep it
    /// resolved: a managed entry (`NTF_EXT_MANAGED`, Linux 5.16+; `ip neigh
    /// replace ADDR dev DEV managed`). Leaves entries someone else owns
    /// (permanent, no-ARP, externally learned) alone, since the kernel would
    /// silently turn them into dynamic ones. Returns `true` when it created
    /// or changed an entry, `false` when it left one as it was (already
    /// managed, or owned elsewhere).
    pub fn neighbour_manage(&mut self, addr: IpAddr, ifindex: u32) -> Result<bool, NetlinkError> {
        const OP: &str = "neighbour manage";
        // Two rounds: an entry may appear between our look and our create.
        for _ in 0..2 {
            let existing = self.neighbour_get_as(OP, addr, ifindex)?;
            if existing.is_some_and(|n| n.managed || n.owned_elsewhere()) {
                return Ok(false);
            }
            let seq = self.next_seq();
            let request = encode_neighbour_manage(seq, addr, ifindex, existing.is_some());
            match self.exchange(&request, seq, OP, &|| neighbour_target(addr, ifindex)) {
                Ok(_) => return Ok(true),
                Err(error) if error.errno() == Some(libc::EEXIST) => {}
                Err(error) => return Err(error),
            }
        }
        Err(NetlinkError::Kernel {
            op: OP,
            target: neighbour_target(addr, ifindex),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            message: Some("entry keeps reappearing".into()),
        })
    }

    /// Removes a managed entry this process made. A missing entry is not an
    /// error; an entry that is no longer managed (an administrator replaced
    /// it) is left alone.
    pub fn neighbour_forget(&mut self, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
        const OP: &str = "neighbour forget";
        match self.neighbour_get_as(OP, addr, ifindex)? {
            Some(neighbour) if neighbour.managed => {}
            _ => return Ok(()),
        }
        let seq = self.next_seq();
        let request = encode_neighbour_delete(seq, addr, ifindex);
        match self.exchange(&request, seq, OP, &|| neighbour_target(addr, ifindex)) {
            Ok(_) => Ok(()),
            Err(error) if error.errno() == Some(libc::ENOENT) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// MAC address, MTU and state of an interface (`RTM_GETLINK` by index).
    pub fn link(&mut self, ifindex: u32) -> Result<Link, NetlinkError> {
        const OP: &str = "link get";
        let seq = self.next_seq();
        let request = encode_link_get(seq, ifindex);
        let target = || format!("#{ifindex}");
        match self.exchange(&request, seq, OP, &target)? {
            Reply::Message(uapi::RTM_NEWLINK, payload) => {
                decode_link(&payload).map_err(|source| malformed(OP, target(), source))
            }
            Reply::Message(kind, _) => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Reply::Ack => Err(malformed(
                OP,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
        }
    }

    /// Like `ip addr replace ADDRESS dev IFINDEX`, with `nodad` for IPv6 (a
    /// floating address moves between hosts that agreed who holds it, and
    /// must be usable at once): adds `address`, or leaves it as it is.
    pub fn address_add(&mut self, ifindex: u32, address: IpNet) -> Result<(), NetlinkError> {
        const OP: &str = "address add";
        let seq = self.next_seq();
        let request = encode_address_add(seq, ifindex, address, address.addr().is_ipv6());
        self.exchange(&request, seq, OP, &|| address_target(address, ifindex))
            .map(|_| ())
    }

    /// Like `ip addr del ADDRESS dev IFINDEX` (the prefix length must match
    /// too). Returns `false` when the interface did not hold it.
    pub fn address_delete(&mut self, ifindex: u32, address: IpNet) -> Result<bool, NetlinkError> {
        const OP: &str = "address delete";
        let seq = self.next_seq();
        let request = encode_address_delete(seq, ifindex, address);
        match self.exchange(&request, seq, OP, &|| address_target(address, ifindex)) {
            Ok(_) => Ok(true),
            Err(error) if error.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The `family` addresses `ifindex` holds, in the kernel's order (`ip
    /// addr show`: for IPv4 the primary addresses first). A dump the
    /// changes keep interrupting is tried 3 times, then fails with an
    /// [`io::ErrorKind::Interrupted`] I/O error.
    pub fn addresses(
        &mut self,
        ifindex: u32,
        family: Family,
    ) -> Result<Vec<Address>, NetlinkError> {
        const OP: &str = "address dump";
        let target = || format!("{family} dev #{ifindex}");
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.next_seq();
            let request = encode_address_dump(seq, family);
            let mut collector = AddressCollector::new(ifindex, MAX_ADDRESSES);
            let complete = self.dump(&request, seq, OP, &target, &mut |kind, payload| {
                collector.take(kind, payload)
            })?;
            if complete {
                return Ok(collector.addresses);
            }
        }
        Err(NetlinkError::Io {
            op: OP,
            target: target(),
            source: io::Error::new(
                io::ErrorKind::Interrupted,
                format!("the addresses changed during each of {DUMP_ATTEMPTS} dumps"),
            ),
        })
    }

    fn neighbour_get_as(
        &mut self,
        op: &'static str,
        addr: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let seq = self.next_seq();
        let request = encode_neighbour_get(seq, addr, ifindex);
        let target = || neighbour_target(addr, ifindex);
        match self.exchange(&request, seq, op, &target) {
            Ok(Reply::Message(uapi::RTM_NEWNEIGH, payload)) => decode_neighbour(&payload)
                .map(Some)
                .map_err(|source| malformed(op, target(), source)),
            Ok(Reply::Message(kind, _)) => Err(malformed(
                op,
                target(),
                DecodeError::UnexpectedMessage(kind),
            )),
            Ok(Reply::Ack) => Err(malformed(
                op,
                target(),
                DecodeError::UnexpectedMessage(uapi::NLMSG_ERROR),
            )),
            Err(error) if error.errno() == Some(libc::ENOENT) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` and reads until the answer with sequence `seq`
    /// arrives; replies to earlier, abandoned requests are skipped.
    fn exchange(
        &mut self,
        request: &[u8],
        seq: u32,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<Reply, NetlinkError> {
        self.send(request, op, target)?;
        loop {
            let length = self.receive_datagram(op, target)?;
            let datagram = self.buffer.get(..length).unwrap_or_default();
            for message in messages(datagram) {
                let message = message.map_err(|source| malformed(op, target(), source))?;
                if message.seq != seq {
                    continue;
                }
                if message.kind != uapi::NLMSG_ERROR {
                    return Ok(Reply::Message(message.kind, message.payload.to_vec()));
                }
                let reply = decode_error(message.flags, message.payload)
                    .map_err(|source| malformed(op, target(), source))?;
                if reply.errno == 0 {
                    return Ok(Reply::Ack);
                }
                return Err(NetlinkError::Kernel {
                    op,
                    target: target(),
                    source: io::Error::from_raw_os_error(reply.errno),
                    message: reply.message,
                });
            }
        }
    }

    /// Sends the dump `request` (sequence `seq`) and hands every data
    /// message of its reply to `take`, until `NLMSG_DONE`. Returns whether
    /// the dump is consistent (no `NLM_F_DUMP_INTR`). A dump given up
    /// before its end is read to its end before the next one starts.
    fn dump(
        &mut self,
        request: &[u8],
        seq: u32,
        op: &'static str,
        target: &dyn Fn() -> String,
        take: &mut TakeMessage<'_>,
    ) -> Result<bool, NetlinkError> {
        self.finish_unfinished_dump(op, target)?;
        self.send(request, op, target)?;
        self.unfinished_dump = Some(seq);
        let mut reader = DumpReader::new(seq);
        loop {
            let length = self.receive_datagram(op, target)?;
            let datagram = self.buffer.get(..length).unwrap_or_default();
            match reader.feed(datagram, take) {
                Ok(DumpProgress::More) => {}
                Ok(DumpProgress::Done) => {
                    self.unfinished_dump = None;
                    return Ok(!reader.interrupted);
                }
                Err(failure) => {
                    // The kernel's error ends the dump; ours do not.
                    if matches!(failure, DumpFailure::Kernel(_)) {
                        self.unfinished_dump = None;
                    }
                    return Err(failure.into_error(op, target()));
                }
            }
        }
    }

    /// Reads a dump given up earlier to its end (discarding it), so that the
    /// kernel accepts a new one. A silent socket (the end was lost) is
    /// taken as the end.
    fn finish_unfinished_dump(
        &mut self,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        while self.unfinished_dump.is_some() {
            match self.receive_datagram(op, target) {
                Ok(_) => {}
                Err(NetlinkError::Io { source, .. })
                    if source.kind() == io::ErrorKind::TimedOut =>
                {
                    self.unfinished_dump = None;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn send(
        &self,
        request: &[u8],
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        loop {
            // SAFETY: `request` is valid for its length; the kernel is the
            // default destination of an unconnected netlink socket.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(io_error(op, target, error));
            }
        }
    }

    /// Receives the kernel's next datagram into the buffer and returns its
    /// length. Notes the end of an unfinished dump on the way.
    fn receive_datagram(
        &mut self,
        op: &'static str,
        target: &dyn Fn() -> String,
    ) -> Result<usize, NetlinkError> {
        loop {
            let (length, from_kernel) = match receive(&self.fd, &mut self.buffer, 0) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // SO_RCVTIMEO expired.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io_error(
                        op,
                        target,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no reply within {REPLY_TIMEOUT:?}"),
                        ),
                    ));
                }
                Err(error) => return Err(io_error(op, target, error)),
            };
            if !from_kernel {
                continue;
            }
            if let Some(seq) = self.unfinished_dump
                && ends_dump(self.buffer.get(..length).unwrap_or_default(), seq)
            {
                self.unfinished_dump = None;
            }
            return Ok(length);
        }
    }
}

fn io_error(op: &'static str, target: &dyn Fn() -> String, source: io::Error) -> NetlinkError {
    NetlinkError::Io {
        op,
        target: target(),
        source,
    }
}

fn address_target(address: IpNet, ifindex: u32) -> String {
    format!("{address} dev #{ifindex}")
}

fn neighbour_target(addr: IpAddr, ifindex: u32) -> String {
    format!("{addr} dev #{ifindex}")
}

// Literal bytes are little-endian: netlink uses the host's byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::fixtures::*;

    #[test]
    fn errors_name_the_operation_and_address() {
        let error = NetlinkError::Kernel {
            op: "neighbour manage",
            target: neighbour_target(v4("192.0.2.11"), 2),
            source: io::Error::from_raw_os_error(libc::EINVAL),
            message: Some("Invalid NTF_* flag for permanent entry".into()),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("netlink neighbour manage 192.0.2.11 dev #2: "),
            "{text}"
        );
        assert!(
            text.ends_with("(Invalid NTF_* flag for permanent entry)"),
            "{text}"
        );
        assert_eq!(error.errno(), Some(libc::EINVAL));

        let error = DumpFailure::TooLarge(MAX_ROUTES)
            .into_error("route dump", format!("{} main table", Family::V6));
        assert_eq!(
            error.to_string(),
            "netlink route dump IPv6 main table: more than 1000000 entries"
        );
        assert_eq!(error.errno(), None);
    }
}

//! The sync thread: the I/O edge of connection sync. Every few
//! milliseconds it drains the data path's new-flow events
//! (`SYNC_EVENTS`), names their backends through the controller's
//! [`Directory`] and sends them in batches to every peer; between, it
//! receives the peers' datagrams — from configured peers only, tag and
//! freshness checked, bounded by a [`Limiter`] — and installs their flows
//! in its own descriptors of the connection table, never over an entry
//! that is there (`BPF_NOEXIST`). Everything refused is counted.
//!
//! At its start it asks every peer for its whole table (`BulkRequest`,
//! [`super::bulk`]), and it answers a peer's request with a transfer on a
//! thread of its own.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use lb_common::{
    ConnValue, FlowKey,
    maps::{CONN_CLOSED, SYNC_CLOSED, SYNC_OPENED},
};

use super::{
    bulk::{self, Answers, Pace, Requests, Transfer},
    directory::{Directory, Unresolved},
    limit::{Limited, Limiter},
    status::BulkReceived,
    status::{Refusal, SyncStatus},
    wire::{self, Key, Kind, Message, ReplayWindow, WireError},
};
use crate::{conns::ConnTable, dataplane::SyncKernel};

/// How often the new-flow events are drained and sent: the sync lag a
/// peer sees, at most, beyond the network's.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// Datagrams read per socket wake-up before the events get their turn.
const READS_PER_ROUND: usize = 256;

/// What the thread needs to know.
#[derive(Debug)]
pub struct Setup {
    /// The interface the socket is bound to (`SO_BINDTODEVICE`).
    pub interface: String,
    /// The UDP port, here and at every peer.
    pub port: u16,
    /// The peers; datagrams from anyone else are refused.
    pub peers: Vec<IpAddr>,
    /// The pair's key.
    pub key: Key,
    /// `sync.peer_rate`.
    pub peer_rate: u32,
    /// `sync.peer_share` × the connection table's size.
    pub peer_capacity: u64,
    /// The TCP idle timeout, over which the peers' share is counted (and
    /// past which a TCP flow is not sent in a bulk transfer).
    pub window_ns: u64,
    /// The UDP idle timeout (past it a UDP flow is not sent in a bulk
    /// transfer).
    pub udp_idle_ns: u64,
}

/// What the thread and the controller share: the directory the controller
/// publishes after each plan, and the counters the thread keeps.
#[derive(Debug)]
pub struct Shared {
    directory: RwLock<Arc<Directory>>,
    status: Mutex<SyncStatus>,
}

impl Shared {
    /// Shared state starting from `status`, with an empty directory.
    pub fn new(status: SyncStatus) -> Self {
        Self {
            directory: RwLock::new(Arc::new(Directory::default())),
            status: Mutex::new(status),
        }
    }

    /// Replaces the directory (after a plan).
    pub fn publish(&self, directory: Directory) {
        let mut current = self
            .directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Arc::new(directory);
    }

    /// The counters now.
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The whole table a peer last sent, if one came.
    pub fn last_bulk(&self) -> Option<BulkReceived> {
        self.status().last_bulk
    }

    pub(super) fn directory(&self) -> Arc<Directory> {
        Arc::clone(
            &self
                .directory
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(super) fn with_status<T>(&self, change: impl FnOnce(&mut SyncStatus) -> T) -> T {
        change(
            &mut self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The running thread; [`SyncThread::stop`] ends it.
#[derive(Debug)]
pub struct SyncThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SyncThread {
    /// Asks the thread to end and waits for it (a few milliseconds).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Binds the socket and starts the thread. `conns` are descriptors of
/// `CONNS_V4` and `CONNS` of the thread's own.
///
/// # Errors
/// The socket cannot be bound to the port or the interface, or the thread
/// cannot start.
pub fn spawn(
    setup: Setup,
    kernel: SyncKernel,
    conns: (OwnedFd, OwnedFd),
    shared: Arc<Shared>,
) -> anyhow::Result<SyncThread> {
    let socket = bind(&setup)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sender_id = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut sender_id)
        .map_err(|_| anyhow::anyhow!("no randomness for the sync sender id"))?;
    let peers = setup.peers.len();
    let mut worker = Worker {
        limiter: Limiter::new(setup.peer_rate, setup.peer_capacity, setup.window_ns),
        windows: vec![ReplayWindow::default(); peers],
        sender: u32::from_ne_bytes(sender_id),
        sequence: Arc::new(AtomicU64::new(0)),
        requests: Requests::new(peers, Instant::now()),
        answers: Answers::new(peers),
        transferring: Arc::new(AtomicBool::new(false)),
        incoming: vec![Incoming::default(); peers],
        setup,
        kernel,
        conns,
        socket,
        shared,
    };
    let stopping = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("lb-sync".into())
        .spawn(move || worker.run(&stopping))
        .context("starting the sync thread")?;
    Ok(SyncThread {
        stop,
        handle: Some(handle),
    })
}

/// One socket for both families when a peer is IPv6 (IPv4 peers then
/// appear IPv4-mapped), bound to the port on every address of the
/// interface and to the interface itself.
fn bind(setup: &Setup) -> anyhow::Result<UdpSocket> {
    let any: IpAddr = if setup.peers.iter().any(IpAddr::is_ipv6) {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let address = SocketAddr::new(any, setup.port);
    let socket = UdpSocket::bind(address).with_context(|| format!("sync: binding {address}"))?;
    let name = setup.interface.as_bytes();
    // SAFETY: `name` outlives the call and its length is given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            libc::socklen_t::try_from(name.len()).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sync: binding to interface {}", setup.interface));
    }
    socket
        .set_nonblocking(true)
        .context("sync: a non-blocking socket")?;
    Ok(socket)
}

struct Worker {
    setup: Setup,
    kernel: SyncKernel,
    conns: (OwnedFd, OwnedFd),
    socket: UdpSocket,
    shared: Arc<Shared>,
    limiter: Limiter,
    /// One per peer, in the order of `setup.peers`.
    windows: Vec<ReplayWindow>,
    sender: u32,
    /// Shared with a running transfer: one numbering per sender id.
    sequence: Arc<AtomicU64>,
    /// This start's requests for the peers' tables.
    requests: Requests,
    /// Which peers' requests are answered.
    answers: Answers,
    /// Set while a transfer to a peer runs.
    transferring: Arc<AtomicBool>,
    /// Per peer, the bulk transfer arriving (entries, installed so far).
    incoming: Vec<Incoming>,
}

/// A peer's bulk transfer as it arrives.
#[derive(Clone, Copy, Debug, Default)]
struct Incoming {
    entries: u64,
    installed: u64,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut flushed = Instant::now();
        let mut counted_lost = Instant::now();
        let mut buf = [0u8; wire::MAX_DATAGRAM + 1];
        while !stop.load(Ordering::Relaxed) {
            let wait = FLUSH_EVERY.saturating_sub(flushed.elapsed());
            if wait > Duration::ZERO && readable(&self.socket, wait) {
                for _ in 0..READS_PER_ROUND {
                    match self.socket.recv_from(&mut buf) {
                        Ok((len, from)) => self.receive(from.ip().to_canonical(), &buf[..len]),
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(error) => {
                            tracing::debug!(%error, "sync: receiving");
                            break;
                        }
                    }
                }
            }
            if flushed.elapsed() >= FLUSH_EVERY {
                self.ask();
                self.flush();
                flushed = Instant::now();
            }
            if counted_lost.elapsed() >= Duration::from_secs(1) {
                if let Ok(lost) = self.kernel.lost() {
                    self.shared.with_status(|status| status.events_lost = lost);
                }
                counted_lost = Instant::now();
            }
        }
        // The last events go out before the thread ends.
        self.flush();
    }

    /// Sends the flows scheduled since the last flush to every peer.
    fn flush(&mut self) {
        let events = self.kernel.drain();
        if events.is_empty() {
            return;
        }
        let directory = self.shared.directory();
        for (code, kind) in [(SYNC_OPENED, Kind::Opened), (SYNC_CLOSED, Kind::Closed)] {
            let entries: Vec<wire::Entry> = events
                .iter()
                .filter(|event| event.kind == code)
                .filter_map(|event| directory.entry_for(&event.flow, event.backend_id))
                .collect();
            self.send_all(kind, &entries);
        }
    }

    /// `entries` of `kind` to every peer, in as many datagrams as needed.
    fn send_all(&mut self, kind: Kind, entries: &[wire::Entry]) {
        for batch in entries.chunks(wire::MAX_ENTRIES) {
            let datagram = wire::emit(
                &Message {
                    kind,
                    sender: self.sender,
                    sequence: self.next_sequence(),
                    entries: batch.to_vec(),
                },
                &self.setup.key,
            );
            for (i, peer) in self.setup.peers.iter().enumerate() {
                let to = SocketAddr::new(self.target(*peer), self.setup.port);
                let sent = self.socket.send_to(&datagram, to);
                self.shared.with_status(|status| {
                    if let Some(peer) = status.peers.get_mut(i) {
                        match sent {
                            Ok(_) => peer.sent += batch.len() as u64,
                            Err(_) => peer.send_errors += 1,
                        }
                    }
                });
            }
        }
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Asks the peers whose tables have not come yet (while this start
    /// still waits for them).
    fn ask(&mut self) {
        for i in self.requests.due(Instant::now()) {
            let datagram = wire::emit(
                &Message {
                    kind: Kind::BulkRequest,
                    sender: self.sender,
                    sequence: self.next_sequence(),
                    entries: Vec::new(),
                },
                &self.setup.key,
            );
            let to = SocketAddr::new(self.target(self.setup.peers[i]), self.setup.port);
            if let Err(error) = self.socket.send_to(&datagram, to) {
                tracing::debug!(%error, peer = %self.setup.peers[i], "sync: asking for the table");
                self.shared.with_status(|status| {
                    if let Some(peer) = status.peers.get_mut(i) {
                        peer.send_errors += 1;
                    }
                });
            }
        }
    }

    /// A peer asks for the whole table: a transfer starts on its own
    /// thread unless one runs or this peer had one just now.
    fn answer(&mut self, index: usize) {
        let busy = self.transferring.load(Ordering::Acquire);
        match self.answers.admit(index, Instant::now(), busy) {
            Ok(()) => {}
            Err(why) => {
                tracing::debug!(peer = %self.setup.peers[index], ?why, "sync: bulk request declined");
                self.shared.with_status(|status| status.bulk_declined += 1);
                return;
            }
        }
        let transfer = match self.transfer_to(index) {
            Ok(transfer) => transfer,
            Err(error) => {
                tracing::warn!(%error, "sync: cannot answer a bulk request");
                return;
            }
        };
        self.transferring.store(true, Ordering::Release);
        let started = std::thread::Builder::new()
            .name("lb-sync-bulk".into())
            .spawn(move || transfer.run());
        if let Err(error) = started {
            tracing::warn!(%error, "sync: starting a bulk transfer");
            self.transferring.store(false, Ordering::Release);
        }
    }

    fn transfer_to(&self, index: usize) -> std::io::Result<Transfer> {
        Ok(Transfer {
            table: ConnTable::new(self.conns.0.try_clone()?, self.conns.1.try_clone()?),
            socket: self.socket.try_clone()?,
            to: SocketAddr::new(self.target(self.setup.peers[index]), self.setup.port),
            peer: index,
            key: self.setup.key.clone(),
            sender: self.sender,
            sequence: Arc::clone(&self.sequence),
            pace: Pace::new(bulk::bulk_rate(self.setup.peer_rate)),
            tcp_idle_ns: self.setup.window_ns,
            udp_idle_ns: self.setup.udp_idle_ns,
            shared: Arc::clone(&self.shared),
            busy: Arc::clone(&self.transferring),
        })
    }

    /// `peer` as the socket's family addresses it.
    fn target(&self, peer: IpAddr) -> IpAddr {
        match (self.socket.local_addr().map(|a| a.is_ipv6()), peer) {
            (Ok(true), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => peer,
        }
    }

    /// One datagram from `from`: checked, then its flows installed.
    fn receive(&mut self, from: IpAddr, datagram: &[u8]) {
        let Some(index) = self.setup.peers.iter().position(|peer| *peer == from) else {
            self.shared
                .with_status(|status| status.refuse(Refusal::UnknownPeer));
            return;
        };
        let message = match wire::parse(datagram, &self.setup.key) {
            Ok(message) => message,
            Err(error) => {
                let reason = match error {
                    WireError::BadTag => Refusal::BadTag,
                    _ => Refusal::Malformed,
                };
                self.shared.with_status(|status| status.refuse(reason));
                return;
            }
        };
        if !self.windows[index].accept(message.sender, message.sequence) {
            self.shared
                .with_status(|status| status.refuse(Refusal::Replay));
            return;
        }
        let directory = self.shared.directory();
        let now = monotonic_coarse_ns();
        let mut outcomes = Vec::with_capacity(message.entries.len());
        match message.kind {
            Kind::Opened | Kind::Bulk | Kind::BulkEnd => {
                for entry in &message.entries {
                    outcomes.push(self.install(&directory, entry, now));
                }
            }
            Kind::Closed => {
                for entry in &message.entries {
                    outcomes.push(self.close(&directory, entry, now));
                }
            }
            Kind::BulkRequest => self.answer(index),
        }
        let bulk = matches!(message.kind, Kind::Bulk | Kind::BulkEnd);
        if bulk {
            let incoming = &mut self.incoming[index];
            incoming.entries += message.entries.len() as u64;
            incoming.installed += outcomes
                .iter()
                .filter(|outcome| matches!(outcome, Installed::Yes))
                .count() as u64;
        }
        let finished = (message.kind == Kind::BulkEnd).then(|| {
            let incoming = std::mem::take(&mut self.incoming[index]);
            self.requests.answered(index);
            let took_ms =
                u64::try_from(self.requests.started().elapsed().as_millis()).unwrap_or(u64::MAX);
            BulkReceived {
                from: from.to_string(),
                at_ms: unix_ms(),
                entries: incoming.entries,
                installed: incoming.installed,
                took_ms,
            }
        });
        if let Some(received) = &finished {
            tracing::info!(peer = %received.from, entries = received.entries,
                installed = received.installed, took_ms = ?received.took_ms,
                "sync: a peer's whole table arrived");
        }
        let peer_entries = self.limiter.in_window();
        self.shared.with_status(|status| {
            if finished.is_some() {
                status.last_bulk = finished;
            }
            status.peer_entries = peer_entries;
            if let Some(peer) = status.peers.get_mut(index) {
                peer.last_message_ms = Some(unix_ms());
                peer.received += message.entries.len() as u64;
            }
            for outcome in outcomes {
                match outcome {
                    Installed::Yes => {
                        if let Some(peer) = status.peers.get_mut(index) {
                            peer.installed += 1;
                        }
                    }
                    Installed::Existing => {
                        if let Some(peer) = status.peers.get_mut(index) {
                            peer.existing += 1;
                        }
                    }
                    Installed::Closed => {
                        if let Some(peer) = status.peers.get_mut(index) {
                            peer.closed += 1;
                        }
                    }
                    Installed::Nothing => {}
                    Installed::No(reason) => status.refuse(reason),
                }
            }
        });
    }

    /// A peer's close: the entry here, if it holds the flow on the same
    /// backend and is open, gets `CONN_CLOSED` (a SYN reusing the tuple is
    /// then scheduled afresh, and the flow stops counting as active). A
    /// close never creates an entry; it draws on `peer_rate` like an
    /// install.
    fn close(&mut self, directory: &Directory, entry: &wire::Entry, now: u64) -> Installed {
        let (flow, backend_id) = match directory.resolve(entry) {
            Ok(resolved) => resolved,
            Err(Unresolved::Service) => return Installed::No(Refusal::UnknownService),
            Err(Unresolved::Backend) => return Installed::No(Refusal::UnknownBackend),
        };
        if self.limiter.admit_close(now).is_err() {
            return Installed::No(Refusal::Rate);
        }
        let marked = match flow.narrow() {
            Some(v4) => mark_closed(&self.conns.0, &v4, backend_id),
            None => mark_closed::<FlowKey>(&self.conns.1, &flow, backend_id),
        };
        match marked {
            Ok(true) => Installed::Closed,
            Ok(false) => Installed::Nothing,
            Err(error) => {
                tracing::debug!(%error, "sync: marking a peer's closed flow");
                Installed::Nothing
            }
        }
    }

    fn install(&mut self, directory: &Directory, entry: &wire::Entry, now: u64) -> Installed {
        let (flow, backend_id) = match directory.resolve(entry) {
            Ok(resolved) => resolved,
            Err(Unresolved::Service) => return Installed::No(Refusal::UnknownService),
            Err(Unresolved::Backend) => return Installed::No(Refusal::UnknownBackend),
        };
        match self.limiter.admit(now) {
            Ok(()) => {}
            Err(Limited::Rate) => return Installed::No(Refusal::Rate),
            Err(Limited::Share) => return Installed::No(Refusal::Share),
        }
        let value = ConnValue {
            backend_id,
            flags: 0,
            last_seen_ns: now,
        };
        let written = match flow.narrow() {
            Some(v4) => insert_new(&self.conns.0, &v4, &value),
            None => insert_new::<FlowKey>(&self.conns.1, &flow, &value),
        };
        match written {
            Ok(()) => {
                self.limiter.installed(now);
                Installed::Yes
            }
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => Installed::Existing,
            Err(error) => {
                tracing::debug!(%error, "sync: the connection table refused a peer's flow");
                Installed::No(Refusal::TableFull)
            }
        }
    }
}

/// What became of one peer's entry.
enum Installed {
    Yes,
    /// A local entry was there and stays.
    Existing,
    /// A close: the entry here (same backend) is marked closed.
    Closed,
    /// A close of a flow this table does not hold on that backend (gone,
    /// already closed, or on another backend): nothing to do.
    Nothing,
    No(Refusal),
}

/// Whether `socket` has something to read within `wait`.
fn readable(socket: &UdpSocket, wait: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of one pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    rc > 0 && fds[0].revents & libc::POLLIN != 0
}

/// `BPF_MAP_LOOKUP_ELEM` (`include/uapi/linux/bpf.h`, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
/// `BPF_MAP_UPDATE_ELEM` (`include/uapi/linux/bpf.h`, `enum bpf_cmd`).
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_NOEXIST`: create only; an existing key fails with `EEXIST`.
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only; a missing key fails with `ENOENT`.
const BPF_EXIST: u64 = 2;

/// The element members of `union bpf_attr`.
#[repr(C)]
struct UpdateAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writes `key` → `value` unless the key is there (`EEXIST` then): the
/// one syscall, so the errno tells an existing entry from a failure.
fn insert_new<K: aya::Pod>(fd: &OwnedFd, key: &K, value: &ConnValue) -> std::io::Result<()> {
    element(
        fd,
        BPF_MAP_UPDATE_ELEM,
        key,
        std::ptr::from_ref(value) as u64,
        BPF_NOEXIST,
    )
}

/// Sets `CONN_CLOSED` on `key`'s entry if it is there, open, and on
/// `backend_id`; whether it did. A packet may refresh the entry between
/// the read and the write: its time then goes back at most a second.
fn mark_closed<K: aya::Pod>(fd: &OwnedFd, key: &K, backend_id: u32) -> std::io::Result<bool> {
    let mut conn = ConnValue::default();
    match element(
        fd,
        BPF_MAP_LOOKUP_ELEM,
        key,
        std::ptr::addr_of_mut!(conn) as u64,
        0,
    ) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(error) => return Err(error),
    }
    if conn.backend_id != backend_id || conn.flags & CONN_CLOSED != 0 {
        return Ok(false);
    }
    conn.flags |= CONN_CLOSED;
    match element(
        fd,
        BPF_MAP_UPDATE_ELEM,
        key,
        std::ptr::from_ref(&conn) as u64,
        BPF_EXIST,
    ) {
        Ok(()) => Ok(true),
        // Evicted in between: nothing to close.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => Err(error),
    }
}

/// One element command on the connection map behind `fd`: `value` is the
/// address of a [`ConnValue`] (read for a lookup, written from otherwise).
fn element<K: aya::Pod>(
    fd: &OwnedFd,
    command: libc::c_long,
    key: &K,
    value: u64,
    flags: u64,
) -> std::io::Result<()> {
    let mut attr = UpdateAttr {
        map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value,
        flags,
    };
    // SAFETY: `attr` is a valid element `bpf_attr` of the size passed; key
    // and value point to the map's key and value layouts (`K` is the key
    // type of the map behind `fd`; `value` is, by this function's contract,
    // the address of a `ConnValue`, its value type, the caller holds) and
    // outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<UpdateAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: what the data path's
/// `bpf_ktime_get_coarse_ns` reads for `last_seen_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    // SAFETY: clock_gettime fills the timespec it is given.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Unix time in milliseconds.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

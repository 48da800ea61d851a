//! A flood generator: spoofed TCP SYNs or UDP datagrams from random
//! addresses of a source prefix, random source ports (and, for SYNs, random
//! sequence numbers), with valid IPv4 and TCP / UDP checksums, sent out of
//! one interface as fast as the host allows, bounded in count and time.
//!
//! Two ways to send, tried in this order:
//!
//! 1. **XDP live frames**: `BPF_PROG_TEST_RUN` with
//!    `BPF_F_TEST_XDP_LIVE_FRAMES` runs a small XDP program (loaded from
//!    instructions built here, [`xdp_program`]) on each of `repeat` copies
//!    of the template frame as if it arrived on the interface; the program
//!    rewrites the source address, port and sequence number from
//!    `bpf_get_prandom_u32` with incremental checksum updates and returns
//!    `XDP_TX`, so the kernel transmits it out of that interface without a
//!    system call per batch. Kernels or sandboxes that refuse it (`EPERM`
//!    here) make [`run`] fall back, and its [`Stats::note`] says so.
//! 2. **`sendmmsg` on an `AF_PACKET` socket** bound to the interface
//!    (qdisc bypassed): batches of [`BATCH`] prebuilt frames, each rewritten
//!    in place between batches by the same incremental update
//!    ([`Generator::next_into`]).
//!
//! Safety rule: the destination and the source prefix must lie in the
//! documentation ranges ([`DOCUMENTATION_RANGES`]); anything else is refused
//! ([`Spec::check`]). The caller chooses the network namespace (the thread
//! that calls [`run`] sends from its own).

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 256;

/// The longest flood [`Spec::check`] accepts.
pub const MAX_DURATION: Duration = Duration::from_mins(10);

/// The ranges a flood may come from and go to (RFC 5737, RFC 3849).
pub const DOCUMENTATION_RANGES: &str =
    "192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32";

/// Whether `ip` lies in one of [`DOCUMENTATION_RANGES`].
pub fn documentation_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
        ),
        IpAddr::V6(v6) => {
            v6.segments()[..2] == Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).segments()[..2]
        }
    }
}

/// What the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bare TCP SYNs (no options).
    Syn,
    /// UDP datagrams carrying [`Spec::payload`] bytes.
    Udp,
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "syn" => Ok(Self::Syn),
            "udp" => Ok(Self::Udp),
            other => Err(format!("unknown kind {other:?}: syn or udp")),
        }
    }
}

/// An IPv4 prefix (`198.51.100.128/25`); a `/32` is one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Its length.
    pub len: u8,
}

impl Prefix {
    /// The host bits (`0x7f` for a `/25`).
    pub fn host_mask(self) -> u32 {
        u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0)
    }

    /// Whether `ip` lies inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !self.host_mask() == u32::from(self.network)
    }

    /// Its highest address (the broadcast address of a subnet).
    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | self.host_mask())
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s}: {e}"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("{s}: a prefix length is 0 to 32"))?;
        let prefix = Self { network: addr, len };
        let network = Ipv4Addr::from(u32::from(addr) & !prefix.host_mask());
        Ok(Self { network, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// Which way to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `BPF_PROG_TEST_RUN` with XDP live frames.
    LiveFrames,
    /// `sendmmsg` on an `AF_PACKET` socket.
    PacketMmsg,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LiveFrames => "XDP live frames (BPF_PROG_TEST_RUN)",
            Self::PacketMmsg => "AF_PACKET sendmmsg",
        })
    }
}

/// One flood.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The interface to send out of (in the caller's namespace).
    pub interface: String,
    /// The next hop's MAC (the balancer's interface).
    pub dst_mac: [u8; 6],
    /// The frames' source MAC; `None`: the interface's.
    pub src_mac: Option<[u8; 6]>,
    /// Where the spoofed sources come from.
    pub from: Prefix,
    /// The target (a VIP and port).
    pub to: SocketAddrV4,
    /// SYNs or datagrams.
    pub kind: Kind,
    /// UDP payload bytes (ignored for SYNs).
    pub payload: usize,
    /// At most this many frames...
    pub count: u64,
    /// ... and for at most this long.
    pub duration: Duration,
    /// Skip the live-frames attempt.
    pub packet_only: bool,
    /// At most this many frames a second (`None`: as fast as the host
    /// allows).
    pub rate: Option<u64>,
}

impl Spec {
    /// A flood of `kind` from `from` to `to` out of `interface`, towards
    /// `dst_mac`, of at most `count` frames and `duration`.
    pub fn new(
        interface: &str,
        dst_mac: [u8; 6],
        from: Prefix,
        to: SocketAddrV4,
        kind: Kind,
        count: u64,
        duration: Duration,
    ) -> Self {
        Self {
            interface: interface.to_owned(),
            dst_mac,
            src_mac: None,
            from,
            to,
            kind,
            payload: 18,
            count,
            duration,
            packet_only: false,
            rate: None,
        }
    }

    /// Refuses what the safety rule forbids: a destination or a source
    /// prefix outside [`DOCUMENTATION_RANGES`]; and an unbounded flood.
    pub fn check(&self) -> Result<(), String> {
        if !documentation_range(IpAddr::V4(*self.to.ip())) {
            return Err(format!(
                "refusing to flood {}: destinations must lie in the documentation ranges \
                 ({DOCUMENTATION_RANGES})",
                self.to.ip()
            ));
        }
        let inside = self.from.len >= 24
            && documentation_range(IpAddr::V4(self.from.network))
            && documentation_range(IpAddr::V4(self.from.last()));
        if !inside {
            return Err(format!(
                "refusing the source prefix {}: it must lie in the documentation ranges \
                 ({DOCUMENTATION_RANGES})",
                self.from
            ));
        }
        if self.count == 0 || self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(format!(
                "a flood is bounded: a count of at least 1 and a duration of at most {} s",
                MAX_DURATION.as_secs()
            ));
        }
        if self.payload > 1400 {
            return Err("a payload of at most 1400 bytes".into());
        }
        Ok(())
    }
}

/// What a flood did.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Frames the kernel took.
    pub sent: u64,
    /// From the first frame to the last.
    pub elapsed: Duration,
    /// How they were sent.
    pub method: Method,
    /// Why live frames were not used (said once, here), if they were not.
    pub note: Option<String>,
}

impl Stats {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "a rate")]
        let sent = self.sent as f64;
        sent / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames in {:.2} s: {:.0} frames/s by {}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.method
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

// Frame layout: Ethernet, IPv4 without options, TCP without options or UDP.
const IP: usize = 14;
const IP_CSUM: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const L4: usize = IP + 20;
const SPORT: usize = L4;
const TCP_SEQ: usize = L4 + 4;
const TCP_CSUM: usize = L4 + 16;
const TCP_END: usize = L4 + 20;
const UDP_CSUM: usize = L4 + 6;
const UDP_END: usize = L4 + 8;

/// Random source ports: `PORT_BASE ..= PORT_BASE + PORT_SPAN - 1`.
const PORT_BASE: u16 = 1024;
const PORT_SPAN: u16 = 64512;

/// The frames' template and the random state that rewrites them.
#[derive(Clone, Debug)]
pub struct Generator {
    template: Vec<u8>,
    kind: Kind,
    network: u32,
    host_mask: u32,
    state: u64,
}

impl Generator {
    /// The template (valid checksums, the prefix's first address, port
    /// [`PORT_BASE`]) and a random state from `seed`.
    pub fn new(spec: &Spec, src_mac: [u8; 6], seed: u64) -> Self {
        let builder = etherparse::PacketBuilder::ethernet2(src_mac, spec.dst_mac).ipv4(
            spec.from.network.octets(),
            spec.to.ip().octets(),
            64,
        );
        let mut template = Vec::new();
        match spec.kind {
            Kind::Syn => builder
                .tcp(PORT_BASE, spec.to.port(), 0, 64240)
                .syn()
                .write(&mut template, &[]),
            Kind::Udp => {
                let payload: Vec<u8> = b"lb flood "
                    .iter()
                    .copied()
                    .cycle()
                    .take(spec.payload)
                    .collect();
                builder
                    .udp(PORT_BASE, spec.to.port())
                    .write(&mut template, &payload)
            }
        }
        .expect("build the template frame");
        Self {
            template,
            kind: spec.kind,
            network: u32::from(spec.from.network),
            host_mask: spec.from.host_mask(),
            // xorshift never leaves zero.
            state: seed | 1,
        }
    }

    /// The template frame.
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Rewrites `frame` (the template, or a frame this generator wrote)
    /// with a new random source address, port and sequence number, and
    /// updates the checksums incrementally (RFC 1624).
    pub fn next_into(&mut self, frame: &mut [u8]) {
        let r = self.next_random();
        #[allow(clippy::cast_possible_truncation, reason = "the low 32 random bits")]
        let src = self.network | (r as u32 & self.host_mask);
        #[allow(clippy::cast_possible_truncation, reason = "below PORT_SPAN")]
        let port = PORT_BASE + ((r >> 32) % u64::from(PORT_SPAN)) as u16;
        let mut ip_delta = Delta::default();
        ip_delta.replace(frame, IP_SRC, &src.to_be_bytes());
        ip_delta.apply(frame, IP_CSUM, false);
        let mut l4_delta = ip_delta;
        l4_delta.replace(frame, SPORT, &port.to_be_bytes());
        match self.kind {
            Kind::Syn => {
                #[allow(clippy::cast_possible_truncation, reason = "32 random bits")]
                let seq = (self.next_random() >> 32) as u32;
                l4_delta.replace(frame, TCP_SEQ, &seq.to_be_bytes());
                l4_delta.apply(frame, TCP_CSUM, false);
            }
            Kind::Udp => l4_delta.apply(frame, UDP_CSUM, true),
        }
    }
}

/// A one's complement sum of what was taken out (complemented) and put in.
#[derive(Clone, Copy, Debug, Default)]
struct Delta(u32);

impl Delta {
    /// Writes `new` (16-bit aligned, an even length) at `at`, adding the
    /// change to the sum.
    fn replace(&mut self, frame: &mut [u8], at: usize, new: &[u8]) {
        for (i, word) in new.chunks_exact(2).enumerate() {
            let old = u16::from_be_bytes([frame[at + 2 * i], frame[at + 2 * i + 1]]);
            let new = u16::from_be_bytes([word[0], word[1]]);
            self.0 += u32::from(!old) + u32::from(new);
        }
        frame[at..at + new.len()].copy_from_slice(new);
    }

    /// HC' = ~(~HC + sum) for the checksum at `at`; a UDP checksum that
    /// comes out zero is sent as all ones (zero means none).
    fn apply(self, frame: &mut [u8], at: usize, udp: bool) {
        let old = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mut sum = u32::from(!old) + self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        #[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
        let mut new = !(sum as u16);
        if udp && new == 0 {
            new = 0xffff;
        }
        frame[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }
}

/// Sends the flood `spec` describes from the calling thread's namespace:
/// XDP live frames if the kernel lets us, else `sendmmsg` on an
/// `AF_PACKET` socket. `progress`, if given, counts the frames sent so far
/// (batch by batch).
pub fn run(spec: &Spec, progress: Option<&AtomicU64>) -> io::Result<Stats> {
    spec.check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let ifindex = ifindex(&spec.interface)?;
    let src_mac = match spec.src_mac {
        Some(mac) => mac,
        None => interface_mac(&spec.interface)?,
    };
    let seed = seed();
    let mut generator = Generator::new(spec, src_mac, seed);
    let note = if spec.packet_only {
        None
    } else {
        match live_frames(spec, &generator, ifindex, seed, progress) {
            Ok(stats) => return Ok(stats),
            Err(refused) => Some(format!("XDP live frames refused: {refused}; fell back")),
        }
    };
    let mut stats = packet_mmsg(spec, &mut generator, ifindex, progress)?;
    stats.note = note;
    Ok(stats)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[allow(clippy::cast_possible_truncation, reason = "any bits will do")]
    let nanos = nanos as u64;
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// The interface's index in the caller's namespace.
pub fn ifindex(interface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {interface}: {}", io::Error::last_os_error()),
        ));
    }
    Ok(index)
}

/// The interface's MAC address (`SIOCGIFHWADDR`).
pub fn interface_mac(interface: &str) -> io::Result<[u8; 6]> {
    let socket = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: plain data, zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if interface.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(interface.bytes()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    // SAFETY: `request` is a valid ifreq for SIOCGIFHWADDR.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the union's address.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (byte, raw) in mac.iter_mut().zip(data) {
        *byte = raw.to_ne_bytes()[0];
    }
    Ok(mac)
}

fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `sendmmsg` sender: [`BATCH`] frames rewritten in place per call.
fn packet_mmsg(
    spec: &Spec,
    generator: &mut Generator,
    ifindex: u32,
    progress: Option<&AtomicU64>,
) -> io::Result<Stats> {
    // Protocol 0: this socket receives nothing.
    let socket = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    let fd = socket.as_raw_fd();
    // SAFETY: plain data, zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = u16::try_from(libc::AF_PACKET).expect("small");
    address.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
    // SAFETY: `address` is a valid sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const address).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Straight to the driver: no qdisc. Best effort.
    set_int(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);

    let len = generator.template().len();
    let mut frames = generator.template().repeat(BATCH);
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        iovecs.push(libc::iovec {
            iov_base: frames[i * len..].as_mut_ptr().cast(),
            iov_len: len,
        });
    }
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: plain data, zero is valid.
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();

    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut sent = 0u64;
    // The frames not yet taken from the current batch start here.
    let mut pending = 0usize;
    let mut fresh = 0usize;
    while sent < spec.count && Instant::now() < deadline {
        if pending == fresh {
            pace(spec.rate, sent, start);
            for frame in frames.chunks_exact_mut(len) {
                generator.next_into(frame);
            }
            pending = 0;
            fresh = BATCH;
        }
        let want = usize::try_from(spec.count - sent)
            .unwrap_or(usize::MAX)
            .min(fresh - pending);
        // SAFETY: `messages[pending..]` point into `iovecs` and `frames`,
        // which outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                messages[pending..].as_mut_ptr(),
                u32::try_from(want).expect("at most BATCH"),
                0,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            pending += n;
            sent += n as u64;
            if let Some(progress) = progress {
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
        } else {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                // The device's queue is full: let it drain.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => std::thread::yield_now(),
                _ => return Err(error),
            }
        }
    }
    Ok(Stats {
        sent,
        elapsed: start.elapsed(),
        method: Method::PacketMmsg,
        note: None,
    })
}

/// Sleeps while `sent` frames are ahead of `rate` a second since `start`.
fn pace(rate: Option<u64>, sent: u64, start: Instant) {
    let Some(rate) = rate.filter(|rate| *rate > 0) else {
        return;
    };
    #[allow(clippy::cast_precision_loss, reason = "a time")]
    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
    if let Some(ahead) = due.checked_sub(start.elapsed()) {
        std::thread::sleep(ahead);
    }
}

fn set_int(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: `value` outlives the call; the length is its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            u32::try_from(size_of::<i32>()).expect("small"),
        );
    }
}

/// Counts a flood's frames arriving on an interface (where it reaches a
/// backend): an `AF_PACKET` socket with a classic BPF filter (IPv4 from
/// `from`, then bare SYNs — SYN without ACK — or UDP) that nobody reads.
/// The kernel counts every frame the filter passes, queued or dropped for
/// want of room (`PACKET_STATISTICS`), so the count is exact however busy
/// the machine is.
#[derive(Debug)]
pub struct Arrivals {
    socket: OwnedFd,
    counted: u64,
}

impl Arrivals {
    /// Starts counting on `interface` of the calling thread's namespace.
    pub fn open(interface: &str, kind: Kind, from: Prefix) -> io::Result<Self> {
        let ifindex = ifindex(interface)?;
        // Protocol 0 until the filter is on: nothing is counted before.
        let socket = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let fd = socket.as_raw_fd();
        let mut filter = arrivals_filter(kind, from);
        let program = libc::sock_fprog {
            len: u16::try_from(filter.len()).expect("short"),
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: `program` and the filter it points to outlive the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const program).cast(),
                u32::try_from(size_of::<libc::sock_fprog>()).expect("small"),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Nothing is read: the smallest queue.
        set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 0);
        // SAFETY: plain data, zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = u16::try_from(libc::AF_PACKET).expect("small");
        address.sll_protocol = u16::try_from(libc::ETH_P_ALL).expect("small").to_be();
        address.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
        // SAFETY: `address` is a valid sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const address).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { socket, counted: 0 })
    }

    /// Frames that matched since [`Arrivals::open`].
    pub fn count(&mut self) -> u64 {
        // SAFETY: plain data, zero is valid.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = u32::try_from(size_of::<libc::tpacket_stats>()).expect("small");
        // SAFETY: `stats` is valid for `len` bytes. The kernel hands over
        // the counts since the last call (and adds the drops in).
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "PACKET_STATISTICS: {}", io::Error::last_os_error());
        self.counted += u64::from(stats.tp_packets);
        self.counted
    }
}

/// The classic BPF filter of [`Arrivals`]: accept (the first 96 bytes of)
/// IPv4 frames from `from` of `kind`'s protocol, for SYNs only those with
/// SYN set and ACK clear.
fn arrivals_filter(kind: Kind, from: Prefix) -> Vec<libc::sock_filter> {
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const LD_W_ABS: u16 = 0x20;
    const LDX_B_MSH: u16 = 0xb1;
    const LD_B_IND: u16 = 0x50;
    const AND_K: u16 = 0x54;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let protocol = match kind {
        Kind::Syn => 6,
        Kind::Udp => 17,
    };
    let mut p = vec![
        op(LD_H_ABS, 12),
        op(JEQ_K, 0x0800),
        op(LD_B_ABS, 23),
        op(JEQ_K, protocol),
        op(LD_W_ABS, 26),
        op(AND_K, !from.host_mask()),
        op(JEQ_K, u32::from(from.network)),
    ];
    if kind == Kind::Syn {
        p.extend([
            op(LDX_B_MSH, 14),
            op(LD_B_IND, 14 + 13),
            op(AND_K, 0x12),
            op(JEQ_K, 0x02),
        ]);
    }
    p.push(op(RET_K, 96));
    let drop = p.len();
    p.push(op(RET_K, 0));
    // Every test jumps to the drop when it fails.
    for (i, insn) in p.iter_mut().enumerate() {
        if insn.code == JEQ_K {
            insn.jf = u8::try_from(drop - i - 1).expect("short");
        }
    }
    p
}

// --- XDP live frames -------------------------------------------------------

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per live-frames call (bounds the time between checks).
const LIVE_CHUNK: u32 = 1 << 16;
/// Frames per batch inside the kernel.
const LIVE_BATCH: u32 = 64;

/// An XDP program loaded from [`xdp_program`]'s instructions.
#[derive(Debug)]
pub struct FloodProgram(OwnedFd);

impl FloodProgram {
    /// Loads [`xdp_program`] for `spec`'s prefix and kind; the verifier's
    /// log in the error if it refuses.
    pub fn load(spec: &Spec) -> io::Result<Self> {
        let insns = xdp_program(spec.kind, spec.from);
        let license = c"GPL";
        let mut log = vec![0u8; 1 << 16];
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put_u32(&mut attr, 4, u32::try_from(insns.len()).expect("short"));
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        put_u32(&mut attr, 24, 1);
        put_u32(&mut attr, 28, u32::try_from(log.len()).expect("small"));
        put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        attr[48..56].copy_from_slice(b"lb_flood");
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|error| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            io::Error::new(
                error.kind(),
                format!(
                    "loading the flood program: {error}\n{}",
                    String::from_utf8_lossy(&log[..end])
                ),
            )
        })?;
        // SAFETY: BPF_PROG_LOAD returned a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One ordinary (not live) run on `frame`: the verdict and the frame
    /// the program left.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 64];
        let mut attr = [0u8; 80];
        put_u32(&mut attr, 0, u32::try_from(self.0.as_raw_fd()).expect("fd"));
        put_u32(&mut attr, 8, u32::try_from(frame.len()).expect("short"));
        put_u32(&mut attr, 12, u32::try_from(out.len()).expect("short"));
        put_u64(&mut attr, 16, frame.as_ptr() as u64);
        put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
        put_u32(&mut attr, 32, 1);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        let verdict = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(attr[12..16].try_into().expect("4 bytes"));
        out.truncate(len as usize);
        Ok((verdict, out))
    }

    /// `repeat` live frames of `frame`, as if arriving on `ifindex`: each
    /// one the program rewrites and sends back out of it.
    pub fn live_run(&self, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<()> {
        let len = u32::try_from(frame.len()).expect("short");
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = Vec::with_capacity(24);
        for field in [0, len, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&u32::to_ne_bytes(field));
        }
        let mut attr = [0u8; 80];
        put_u32(&mut attr, 0, u32::try_from(self.0.as_raw_fd()).expect("fd"));
        put_u32(&mut attr, 8, len);
        put_u64(&mut attr, 16, frame.as_ptr() as u64);
        put_u32(&mut attr, 32, repeat);
        put_u32(&mut attr, 40, u32::try_from(ctx.len()).expect("small"));
        put_u64(&mut attr, 48, ctx.as_ptr() as u64);
        put_u32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
        put_u32(&mut attr, 72, LIVE_BATCH);
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }
}

fn put_u32(attr: &mut [u8], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn bpf(command: i64, attr: &mut [u8]) -> io::Result<i32> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the length given,
    // whose pointers point at buffers the caller keeps alive.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            u32::try_from(attr.len()).expect("small"),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::try_from(rc).expect("a descriptor"))
}

/// The live-frames sender; `Err` with the reason if the kernel refuses
/// (before anything was sent).
fn live_frames(
    spec: &Spec,
    generator: &Generator,
    ifindex: u32,
    seed: u64,
    progress: Option<&AtomicU64>,
) -> Result<Stats, String> {
    let program = FloodProgram::load(spec).map_err(|e| e.to_string())?;
    // The template, already rewritten once: the kernel copies it into
    // each page once and the program rewrites it from there.
    let mut frame = generator.template().to_vec();
    let mut first = generator.clone();
    first.state = seed.rotate_left(17) | 1;
    first.next_into(&mut frame);
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut sent = 0u64;
    while sent < spec.count && Instant::now() < deadline {
        pace(spec.rate, sent, start);
        let chunk = u32::try_from(spec.count - sent)
            .unwrap_or(u32::MAX)
            .min(LIVE_CHUNK);
        if let Err(error) = program.live_run(&frame, ifindex, chunk) {
            if sent == 0 {
                return Err(match error.raw_os_error() {
                    Some(libc::EPERM) => "EPERM".to_owned(),
                    _ => error.to_string(),
                });
            }
            break;
        }
        sent += u64::from(chunk);
        if let Some(progress) = progress {
            progress.fetch_add(u64::from(chunk), Ordering::Relaxed);
        }
    }
    Ok(Stats {
        sent,
        elapsed: start.elapsed(),
        method: Method::LiveFrames,
        note: None,
    })
}

/// BPF instructions, one 8-byte `struct bpf_insn` each.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut raw = [0u8; 8];
    raw[0] = code;
    raw[1] = (src << 4) | dst;
    raw[2..4].copy_from_slice(&off.to_le_bytes());
    raw[4..8].copy_from_slice(&imm.to_le_bytes());
    raw
}

// Opcodes (class | operation | source).
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const MOV32_X: u8 = 0xbc;
const ADD64_X: u8 = 0x0f;
const ADD64_K: u8 = 0x07;
const ADD32_K: u8 = 0x04;
const AND64_K: u8 = 0x57;
const AND32_K: u8 = 0x54;
const OR32_K: u8 = 0x44;
const XOR32_K: u8 = 0xa4;
const RSH64_K: u8 = 0x77;
const MOD32_K: u8 = 0x94;
const TO_BE: u8 = 0xdc;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const STX_W: u8 = 0x63;
const STX_H: u8 = 0x6b;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const GET_PRANDOM_U32: i32 = 7;
const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;

/// The live-frames program, with the prefix as immediates: for each frame
/// (Ethernet, IPv4 without options, then TCP or UDP), a random source
/// address inside `from`, a random source port and (TCP) sequence number,
/// the IPv4 and TCP / UDP checksums updated incrementally, `XDP_TX`.
/// Register use: r6 context, r7 data, r8 data end, r9 the running
/// checksum delta (all kept across helper calls).
pub fn xdp_program(kind: Kind, from: Prefix) -> Vec<[u8; 8]> {
    let (end, csum) = match kind {
        Kind::Syn => (TCP_END, TCP_CSUM),
        Kind::Udp => (UDP_END, UDP_CSUM),
    };
    let off = |at: usize| i16::try_from(at).expect("short");
    let mut p = vec![
        insn(MOV64_X, 6, 1, 0, 0),
        insn(LDX_W, 7, 6, 0, 0),
        insn(LDX_W, 8, 6, 4, 0),
        insn(MOV64_X, 2, 7, 0, 0),
        insn(ADD64_K, 2, 0, 0, i32::try_from(end).expect("short")),
    ];
    // Filled in below: the jump to the drop at the end.
    let bounds = p.len();
    p.push(insn(JGT_X, 2, 8, 0, 0));
    // The source address: the prefix's network | random host bits.
    p.extend([
        insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
        insn(AND32_K, 0, 0, 0, from.host_mask().cast_signed()),
        insn(OR32_K, 0, 0, 0, u32::from(from.network).cast_signed()),
        insn(TO_BE, 0, 0, 0, 32),
        insn(LDX_W, 1, 7, off(IP_SRC), 0),
        insn(STX_W, 7, 0, off(IP_SRC), 0),
        insn(MOV64_K, 9, 0, 0, 0),
    ]);
    p.extend(delta32());
    p.extend(update_checksum(IP_CSUM, false));
    // The source port.
    p.extend([
        insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
        insn(MOV32_X, 2, 0, 0, 0),
        insn(MOD32_K, 2, 0, 0, i32::from(PORT_SPAN)),
        insn(ADD32_K, 2, 0, 0, i32::from(PORT_BASE)),
        insn(TO_BE, 2, 0, 0, 16),
        insn(LDX_H, 3, 7, off(SPORT), 0),
        insn(STX_H, 7, 2, off(SPORT), 0),
        insn(XOR32_K, 3, 0, 0, 0xffff),
        insn(ADD64_X, 9, 3, 0, 0),
        insn(ADD64_X, 9, 2, 0, 0),
    ]);
    if kind == Kind::Syn {
        p.extend([
            insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
            insn(MOV32_X, 0, 0, 0, 0),
            insn(LDX_W, 1, 7, off(TCP_SEQ), 0),
            insn(STX_W, 7, 0, off(TCP_SEQ), 0),
        ]);
        p.extend(delta32());
    }
    p.extend(update_checksum(csum, kind == Kind::Udp));
    p.extend([insn(MOV64_K, 0, 0, 0, XDP_TX), insn(EXIT, 0, 0, 0, 0)]);
    let drop_at = p.len();
    p[bounds] = insn(JGT_X, 2, 8, off(drop_at - bounds - 1), 0);
    p.extend([insn(MOV64_K, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)]);
    p
}

/// r9 += ~r1 (both 16-bit halves) + r0 (both halves): a 32-bit field that
/// was r1 and is now r0. Clobbers r0 to r2.
fn delta32() -> [[u8; 8]; 11] {
    [
        insn(XOR32_K, 1, 0, 0, -1),
        insn(MOV64_X, 2, 1, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(ADD64_X, 9, 2, 0, 0),
        insn(RSH64_K, 1, 0, 0, 16),
        insn(ADD64_X, 9, 1, 0, 0),
        insn(MOV64_X, 2, 0, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(ADD64_X, 9, 2, 0, 0),
        insn(RSH64_K, 0, 0, 0, 16),
        insn(ADD64_X, 9, 0, 0, 0),
    ]
}

/// The checksum at `at` becomes ~(~old + r9), folded; a UDP one that comes
/// out zero becomes all ones. Clobbers r1 and r2.
fn update_checksum(at: usize, udp: bool) -> Vec<[u8; 8]> {
    let off = i16::try_from(at).expect("short");
    let mut p = vec![
        insn(LDX_H, 1, 7, off, 0),
        insn(XOR32_K, 1, 0, 0, 0xffff),
        insn(ADD64_X, 1, 9, 0, 0),
    ];
    for _ in 0..3 {
        p.extend([
            insn(MOV64_X, 2, 1, 0, 0),
            insn(RSH64_K, 2, 0, 0, 16),
            insn(AND64_K, 1, 0, 0, 0xffff),
            insn(ADD64_X, 1, 2, 0, 0),
        ]);
    }
    p.push(insn(XOR32_K, 1, 0, 0, 0xffff));
    if udp {
        p.extend([insn(JNE_K, 1, 0, 1, 0), insn(MOV64_K, 1, 0, 0, 0xffff)]);
    }
    p.push(insn(STX_H, 7, 1, off, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

    fn spec(kind: Kind, from: &str) -> Spec {
        Spec::new(
            "eth0",
            DST_MAC,
            from.parse().unwrap(),
            SocketAddrV4::new(VIP, 80),
            kind,
            1000,
            Duration::from_secs(1),
        )
    }

    /// RFC 1071, written out again: the one's complement sum of 16-bit
    /// words, folded.
    fn ones_sum(bytes: &[u8], mut sum: u32) -> u16 {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u16::try_from(sum).unwrap()
    }

    /// Checks `frame`'s checksums twice over: a packet whose checksums are
    /// right sums to all ones (RFC 1071), and etherparse's own
    /// computation agrees (up to one's complement's two zeros).
    fn assert_valid(frame: &[u8], kind: Kind, from: Prefix) -> (Ipv4Addr, u16, Option<u32>) {
        let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).expect("parses");
        let Some(etherparse::NetHeaders::Ipv4(ip, _)) = headers.net else {
            panic!("not IPv4")
        };
        let ip_bytes = &frame[IP..L4];
        assert_eq!(ones_sum(ip_bytes, 0), 0xffff, "IPv4 header checksum");
        assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
        let src = Ipv4Addr::from(ip.source);
        assert!(from.contains(src), "{src} outside {from}");
        assert_eq!(Ipv4Addr::from(ip.destination), VIP);
        let l4 = &frame[L4..];
        let len = u32::try_from(l4.len()).unwrap();
        let protocol = match kind {
            Kind::Syn => 6,
            Kind::Udp => 17,
        };
        let pseudo = ones_sum(&ip.source, 0);
        let pseudo = u32::from(ones_sum(&ip.destination, u32::from(pseudo))) + protocol + len;
        assert_eq!(ones_sum(l4, pseudo), 0xffff, "transport checksum");
        let same = |ours: u16, theirs: u16| {
            ours == theirs || (ours | theirs == 0xffff && ours & theirs == 0)
        };
        match (kind, headers.transport.expect("transport")) {
            (Kind::Syn, etherparse::TransportHeader::Tcp(tcp)) => {
                assert!(tcp.syn && !tcp.ack && !tcp.rst && !tcp.fin);
                assert_eq!(tcp.destination_port, 80);
                assert!(tcp.source_port >= PORT_BASE);
                let theirs = tcp
                    .calc_checksum_ipv4(&ip, headers.payload.slice())
                    .unwrap();
                assert!(
                    same(tcp.checksum, theirs),
                    "{:#x} vs {theirs:#x}",
                    tcp.checksum
                );
                (src, tcp.source_port, Some(tcp.sequence_number))
            }
            (Kind::Udp, etherparse::TransportHeader::Udp(udp)) => {
                assert_ne!(udp.checksum, 0, "a UDP checksum of zero means none");
                assert_eq!(udp.destination_port, 80);
                assert!(udp.source_port >= PORT_BASE);
                let theirs = udp
                    .calc_checksum_ipv4(&ip, headers.payload.slice())
                    .unwrap();
                assert!(
                    same(udp.checksum, theirs),
                    "{:#x} vs {theirs:#x}",
                    udp.checksum
                );
                (src, udp.source_port, None)
            }
            (_, other) => panic!("unexpected transport {other:?}"),
        }
    }

    #[test]
    fn prefixes_parse_and_contain() {
        let prefix: Prefix = "198.51.100.200/25".parse().unwrap();
        assert_eq!(prefix.network, Ipv4Addr::new(198, 51, 100, 128));
        assert_eq!(prefix.host_mask(), 0x7f);
        assert_eq!(prefix.last(), Ipv4Addr::new(198, 51, 100, 255));
        assert!(prefix.contains(Ipv4Addr::new(198, 51, 100, 128)));
        assert!(!prefix.contains(Ipv4Addr::new(198, 51, 100, 127)));
        let one: Prefix = "198.51.100.7".parse().unwrap();
        assert_eq!((one.len, one.host_mask()), (32, 0));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.host_mask(), u32::MAX);
        assert!("198.51.100.0/33".parse::<Prefix>().is_err());
    }

    #[test]
    fn only_documentation_ranges_are_flooded() {
        assert!(spec(Kind::Syn, "198.51.100.128/25").check().is_ok());
        let mut outside = spec(Kind::Syn, "198.51.100.128/25");
        outside.to = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        assert!(
            outside
                .check()
                .unwrap_err()
                .contains("documentation ranges")
        );
        outside.to = SocketAddrV4::new(Ipv4Addr::new(203, 0, 114, 1), 80);
        assert!(outside.check().is_err());
        // A source prefix wider than one documentation range is refused.
        assert!(spec(Kind::Syn, "198.51.0.0/16").check().is_err());
        assert!(spec(Kind::Syn, "10.0.0.0/25").check().is_err());
        let mut unbounded = spec(Kind::Udp, "192.0.2.0/24");
        unbounded.duration = Duration::ZERO;
        assert!(unbounded.check().is_err());
        assert!(documentation_range("2001:db8:5::1".parse().unwrap()));
        assert!(!documentation_range("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn generated_frames_have_valid_checksums_and_sources_inside_the_prefix() {
        for (kind, from) in [
            (Kind::Syn, "198.51.100.128/25"),
            (Kind::Udp, "198.51.100.128/25"),
            (Kind::Syn, "203.0.113.77/32"),
            (Kind::Udp, "192.0.2.0/24"),
        ] {
            let spec = spec(kind, from);
            let mut generator = Generator::new(&spec, SRC_MAC, 42);
            assert_valid(generator.template(), kind, spec.from);
            let mut frame = generator.template().to_vec();
            let (mut sources, mut ports, mut seqs) = (
                std::collections::BTreeSet::new(),
                std::collections::BTreeSet::new(),
                std::collections::BTreeSet::new(),
            );
            // Each frame rewritten from the previous one, as the sender does.
            for _ in 0..20_000 {
                generator.next_into(&mut frame);
                let (src, port, seq) = assert_valid(&frame, kind, spec.from);
                sources.insert(src);
                ports.insert(port);
                seqs.insert(seq);
            }
            let hosts = spec.from.host_mask() as usize + 1;
            assert_eq!(sources.len(), hosts, "{from}: every address of the prefix");
            assert!(ports.len() > 10_000, "{from}: {} ports", ports.len());
            if kind == Kind::Syn {
                assert!(
                    seqs.len() > 19_000,
                    "{from}: {} sequence numbers",
                    seqs.len()
                );
            }
            assert_eq!(&frame[..12], &[DST_MAC, SRC_MAC].concat()[..]);
        }
    }

    /// A whole flood into a veth pair: as many frames arrive at the peer
    /// (counted by [`Arrivals`] there) as the flood says it sent, all from
    /// the prefix; a count bound is kept exactly.
    #[test]
    fn a_flood_arrives_as_counted() {
        use crate::netns::{Netns, veth};
        let sender = Netns::new("fls");
        let receiver = Netns::new("flr");
        veth(&sender, "eth0", &receiver, "eth0");
        let dst_mac = receiver.mac("eth0");
        for (kind, count) in [(Kind::Syn, 20_000), (Kind::Udp, 5_000)] {
            let (mut inside, mut outside) = receiver.run(move || {
                (
                    Arrivals::open("eth0", kind, "198.51.100.128/25".parse().unwrap()).unwrap(),
                    Arrivals::open("eth0", kind, "198.51.100.0/25".parse().unwrap()).unwrap(),
                )
            });
            let mut spec = spec(kind, "198.51.100.128/25");
            spec.interface = "eth0".into();
            spec.dst_mac = dst_mac;
            spec.count = count;
            spec.duration = Duration::from_secs(10);
            let stats = sender.run(move || run(&spec, None)).expect("flood");
            println!("{kind:?}: {stats}");
            assert_eq!(stats.sent, count);
            assert!(
                crate::netns::wait_until(Duration::from_secs(2), || inside.count() == count),
                "{} of {count} arrived",
                inside.count()
            );
            assert_eq!(outside.count(), 0);
        }
    }

    /// The live-frames program run once per frame the ordinary way (not
    /// live, which needs no permission beyond loading it): what it leaves
    /// must pass the same checks. Needs root (`CAP_BPF`).
    #[test]
    fn the_xdp_program_writes_valid_frames() {
        for (kind, from) in [
            (Kind::Syn, "198.51.100.128/25"),
            (Kind::Udp, "192.0.2.0/24"),
        ] {
            let spec = spec(kind, from);
            let program = FloodProgram::load(&spec).expect("load the flood program");
            let mut frame = Generator::new(&spec, SRC_MAC, 7).template().to_vec();
            let mut sources = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                let (verdict, out) = program.test_run(&frame).expect("test run");
                assert_eq!(verdict, 3, "XDP_TX");
                assert_eq!(out.len(), frame.len());
                let (src, ..) = assert_valid(&out, kind, spec.from);
                sources.insert(src);
                frame = out;
            }
            assert_eq!(sources.len(), spec.from.host_mask() as usize + 1);
            // Too short a frame is dropped, never read past its end.
            let (verdict, _) = program.test_run(&frame[..L4 + 4]).expect("test run");
            assert_eq!(verdict, 1, "XDP_DROP");
        }
    }
}

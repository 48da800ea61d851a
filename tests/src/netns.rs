//! Network-namespace test beds: namespaces, veth pairs, bridges, addresses,
//! routes, and processes inside them. Every resource is owned by a guard whose
//! `Drop` removes it, so a failing (panicking) test leaves nothing behind.
//! Names carry the process id and a counter, so tests run in parallel.

use std::{
    fs::File,
    io::Read,
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name no other live test bed uses: `lbt<pid>x<n><tag>`.
fn unique(tag: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("lbt{}x{n}{tag}", std::process::id())
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `tag`, with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs a command inside the namespace and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// A command that will run inside the namespace. `nsenter --net` keeps the
    /// host's mount namespace (unlike `ip netns exec`, which remounts /sys and
    /// hides the host's bpffs).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program)
            .args(args);
        command
    }

    /// Starts `command` (stdin closed, output captured); it is killed on
    /// drop. For a process that enters a namespace by other means than
    /// [`Netns::command`].
    pub fn spawn_command(mut command: Command) -> ChildGuard {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        ChildGuard::new(child)
    }

    /// Starts a process inside the namespace; it is killed on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> ChildGuard {
        self.spawn_env(program, args, &[])
    }

    /// [`Netns::spawn`] with `env` added to the process's environment.
    pub fn spawn_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
        let child = self
            .command(program, args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {}: {e}", self.name));
        ChildGuard::new(child)
    }

    /// Runs `f` on a thread that has joined this namespace, so std sockets
    /// opened in `f` live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).expect("open netns");
        thread::spawn(move || {
            // SAFETY: `file` is an open namespace file descriptor; setns only
            // changes this freshly spawned thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The HTTP response (status line, headers, body) of `GET /metrics` from
    /// an `lb run` in this namespace serving metrics on 127.0.0.1:9477.
    pub fn metrics_page(&self) -> String {
        self.run(|| {
            use std::io::{Read, Write};
            let mut stream =
                std::net::TcpStream::connect("127.0.0.1:9477").expect("connect to /metrics");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("read timeout");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                .expect("request /metrics");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("read /metrics");
            response
        })
    }

    /// Starts `f` on a thread inside the namespace and returns at once.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let file = File::open(self.path()).expect("open netns");
        thread::spawn(move || {
            // SAFETY: as in `run`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Moves the calling thread into this namespace for good (the rest of a
    /// test body: sockets, `BPF_PROG_TEST_RUN`, whose FIB lookups use the
    /// caller's namespace). Test threads end with their test, so nothing else
    /// is affected.
    pub fn enter(&self) {
        let file = File::open(self.path()).expect("open netns");
        // SAFETY: `file` is an open namespace descriptor; setns changes only
        // the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Adds `cidr` (e.g. `192.0.2.1/24`) to `dev`.
    pub fn addr(&self, dev: &str, cidr: &str) {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "addr", "add", cidr, "dev", dev, "nodad"]);
    }

    /// Adds a route.
    pub fn route(&self, dst: &str, via: &str) {
        let family = if dst.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", dst, "via", via]);
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, setting: &str) {
        let output = self.exec("sysctl", &["-qw", setting]);
        assert!(output.status.success(), "sysctl {setting}: {output:?}");
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let output = self.ip(&["-o", "link", "show", "dev", dev]);
        let text = String::from_utf8_lossy(&output.stdout);
        let hex = text
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {text}"));
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(hex.split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("mac");
        }
        mac
    }

    /// Whether an XDP program is attached to `dev`.
    pub fn has_xdp(&self, dev: &str) -> bool {
        let output = self.ip(&["link", "show", "dev", dev]);
        String::from_utf8_lossy(&output.stdout).contains("xdp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces (and so the veth
        // peers elsewhere) and detaches their XDP programs.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether a namespace called `name` exists.
pub fn netns_exists(name: &str) -> bool {
    let output = sh("ip", &["netns", "list"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

/// Creates a veth pair with one end in each namespace, both up, with TX
/// checksum offload off (XDP would otherwise see partial checksums).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    sh(
        "ip",
        &[
            "link",
            "add",
            a_dev,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            b.name(),
        ],
    );
    for (ns, dev) in [(a, a_dev), (b, b_dev)] {
        ns.ip(&["link", "set", dev, "up"]);
        let output = ns.exec("ethtool", &["-K", dev, "tx", "off"]);
        assert!(output.status.success(), "ethtool on {dev}: {output:?}");
    }
}

/// Creates a bridge `name` in `ns`, up.
pub fn bridge(ns: &Netns, name: &str) {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    ns.ip(&["link", "set", name, "up"]);
}

/// Puts `dev` into bridge `bridge`, both in `ns`.
pub fn enslave(ns: &Netns, dev: &str, bridge: &str) {
    ns.ip(&["link", "set", dev, "master", bridge]);
}

/// A child process, killed and reaped on drop. Its stdout and stderr are
/// read as it writes them (a pipe nobody reads fills at 64 KiB and blocks
/// the writer: a chatty lb would stall on its own log).
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    stdout: Drained,
    stderr: Drained,
}

/// A pipe read to its end on a thread of its own, into a buffer.
#[derive(Debug)]
struct Drained {
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Drained {
    fn new(pipe: Option<impl Read + Send + 'static>) -> Self {
        let text = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let text = Arc::clone(&text);
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    text.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&chunk[..n]);
                }
            })
        });
        Self { text, reader }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Everything, once the writer closed the pipe (waiting at most
    /// `timeout`: a grandchild may hold it open).
    fn finish(&mut self, timeout: Duration) -> Vec<u8> {
        if let Some(reader) = self.reader.take()
            && wait_until(timeout, || reader.is_finished())
        {
            let _ = reader.join();
        }
        self.snapshot()
    }
}

/// How long [`ChildGuard::wait`] waits for the process to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_mins(1);

impl ChildGuard {
    fn new(mut child: Child) -> Self {
        let stdout = Drained::new(child.stdout.take());
        let stderr = Drained::new(child.stderr.take());
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the process (by its own pid only).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).expect("pid fits i32");
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// What it has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.snapshot()).into_owned()
    }

    /// What it has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.snapshot()).into_owned()
    }

    /// Waits for the process to end and returns its output. Panics (having
    /// killed it) if it is still running after [`EXIT_TIMEOUT`].
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().expect("child present until waited");
        let mut status = None;
        let exited = wait_until(EXIT_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} still running {EXIT_TIMEOUT:?} after it was waited for; \
                 killed. Its stderr:\n{}",
                child.id(),
                self.stderr_so_far()
            );
        }
        Output {
            status: status.expect("exited"),
            stdout: self.stdout.finish(Duration::from_secs(5)),
            stderr: self.stderr.finish(Duration::from_secs(5)),
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 20 ms for at most `timeout`.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    condition()
}

//! The demo's traffic: a paced HTTP client (a steady, bounded request rate
//! from a pool of workers in the client's namespace, every request a new
//! connection, every result recorded with its start time), connections held
//! open across a fault, and the junk flood.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::netns::Netns;

/// How long one request may take (connect, and then the answer) before it
/// counts as failed. A lost SYN is retransmitted after 1 s, so a request
/// that rides out a short gap succeeds, late.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One request of the steady client.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it started, seconds since the demo's start.
    pub at: f64,
    /// The backend that answered; `None`: failed.
    pub backend: Option<String>,
    /// Why it failed ("" when it did not).
    pub why: &'static str,
}

/// The steady client: `rate` requests per second to `target`, from
/// `workers` threads. A request more than a second behind its slot is
/// skipped (not sent, not counted), so a stall never turns into a burst.
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the workers in `client`; times are measured from `t0`.
    pub fn start(
        client: &Netns,
        target: SocketAddr,
        rate: u32,
        workers: usize,
        t0: Instant,
    ) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs(1) / rate;
        let begin = Instant::now();
        let workers = (0..workers)
            .map(|_| {
                let (samples, stop, next) =
                    (Arc::clone(&samples), Arc::clone(&stop), Arc::clone(&next));
                client.spawn_thread(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let slot = next.fetch_add(1, Ordering::Relaxed);
                        let due = begin + period * u32::try_from(slot).unwrap_or(u32::MAX);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        } else if now - due > Duration::from_secs(1) {
                            continue;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let at = t0.elapsed().as_secs_f64();
                        let (backend, why) = match http_get(target) {
                            Ok(name) => (Some(name), ""),
                            Err(why) => (None, why),
                        };
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Sample { at, backend, why });
                    }
                })
            })
            .collect();
        Self {
            samples,
            stop,
            workers,
        }
    }

    /// The samples as they are recorded (for the progress line).
    pub fn shared(&self) -> Arc<Mutex<Vec<Sample>>> {
        Arc::clone(&self.samples)
    }

    /// Every sample so far (in completion order).
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the workers and returns every sample, sorted by start.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut samples = self.samples();
        samples.sort_by(|a, b| a.at.total_cmp(&b.at));
        samples
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One HTTP request on a new connection; the name of the backend that
/// answered, or what went wrong.
pub fn http_get(target: SocketAddr) -> Result<String, &'static str> {
    let mut stream =
        TcpStream::connect_timeout(&target, REQUEST_TIMEOUT).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused",
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "connect timeout",
            _ => "connect failed",
        })?;
    let setup = stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| {
            stream.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        });
    setup.map_err(|_| "send failed")?;
    read_answer(stream)
}

/// The body of a `200` answer read to its end: the backend's name.
fn read_answer(mut stream: TcpStream) -> Result<String, &'static str> {
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset => "reset",
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "answer timeout",
            _ => "read failed",
        })?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err("no 200 answer");
    }
    let (_, body) = answer.split_once("\r\n\r\n").ok_or("no body")?;
    let name = body.trim();
    if name.is_empty() {
        Err("empty body")
    } else {
        Ok(name.to_owned())
    }
}

/// A connection whose request is half sent: established through the
/// balancer now, finished later (across a takeover).
#[derive(Debug)]
pub struct Held(TcpStream);

impl Held {
    /// Connects and sends all but the request's final blank line.
    pub fn open(target: SocketAddr) -> Option<Self> {
        let mut stream = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n")
            .ok()?;
        Some(Self(stream))
    }

    /// Completes the request; true when the backend answered.
    pub fn finish(mut self) -> bool {
        self.0.write_all(b"\r\n").is_ok() && read_answer(self.0).is_ok()
    }
}

/// The junk flood: UDP datagrams from `source` to `target`, as fast as one
/// socket sends them, until `packets` are sent, `time` has passed or `stop`
/// is set. Returns how many were sent.
pub fn flood(
    client: &Netns,
    source: IpAddr,
    target: SocketAddr,
    packets: u64,
    time: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    client.spawn_thread(move || {
        let Ok(socket) = UdpSocket::bind((source, 0)) else {
            return 0;
        };
        let start = Instant::now();
        let mut sent = 0;
        let payload = [0x5a_u8; 64];
        while sent < packets && start.elapsed() < time && !stop.load(Ordering::Relaxed) {
            if socket.send_to(&payload, target).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

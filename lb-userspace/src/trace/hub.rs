//! The trace's I/O: a thread reads the kernel's ring buffer into a bounded
//! buffer of decoded events ([`Hub`]) that API clients poll. A client's
//! poll keeps its filter in force for [`LEASE`]; while any client holds
//! one, the kernel emits (the owner writes `SETTINGS_TRACE` and the merged
//! filter); when the last lease lapses — `lb trace` ended, killed or not —
//! the reader thread turns the kernel's tracing off again.

use std::{
    collections::{BTreeMap, VecDeque},
    os::fd::AsRawFd,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use lb_common::trace::{TraceEvent, TraceSettings, TraceState};

use super::{Filter, TraceBatch, TraceLine, TracePoll, decode, kernel_settings};
use crate::owner::Handle;

/// What the hub needs of the data path's owner: the kernel's trace turned
/// on with a filter, or off (`None`). The controller implements it; the
/// hub reaches it only through its owner's [`Handle`].
pub trait Tracing: 'static {
    /// Writes `filter` and sets `SETTINGS_TRACE`, or clears it (`None`).
    ///
    /// # Errors
    /// A map write that failed.
    fn set_trace(&mut self, filter: Option<TraceSettings>) -> anyhow::Result<()>;
}

/// How long a poll keeps a client's filter in force.
pub const LEASE: Duration = Duration::from_secs(5);
/// Events kept for clients to poll.
const CAPACITY: usize = 16_384;
/// Most events in one answer.
const BATCH: usize = 1_000;
/// How long a poll waits for an event.
const WAIT: Duration = Duration::from_secs(1);

/// A client tracing.
#[derive(Debug)]
struct Client {
    filter: Filter,
    seen: Instant,
    /// The kernel's lost count when the client started.
    lost_base: u64,
    /// Events gone from the buffer before the client read them.
    missed: u64,
}

#[derive(Debug, Default)]
struct State {
    /// (sequence number, event), oldest first.
    events: VecDeque<(u64, TraceLine)>,
    /// The last sequence number given.
    last: u64,
    /// Kernel events lost, summed over CPUs, since the object was loaded.
    lost: u64,
    clients: BTreeMap<String, Client>,
    /// The kernel settings in force (`None`: tracing off).
    kernel: Option<TraceSettings>,
}

/// Events for clients, and the clients' filters.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
    arrived: Condvar,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers a client's poll: registers or refreshes its filter (turning
    /// the kernel's tracing on or changing its filter through the owner),
    /// then waits up to a second for events after `poll.after`.
    pub fn poll<T: Tracing>(
        &self,
        poll: &TracePoll,
        controller: &Handle<T>,
    ) -> anyhow::Result<TraceBatch> {
        let wanted = {
            let mut state = self.lock();
            let lost = state.lost;
            let client = state.clients.entry(poll.client.clone()).or_insert(Client {
                filter: poll.filter.clone(),
                seen: Instant::now(),
                lost_base: lost,
                missed: 0,
            });
            client.filter = poll.filter.clone();
            client.seen = Instant::now();
            let wanted = kernel_settings(state.clients.values().map(|c| &c.filter));
            (state.kernel != Some(wanted)).then_some(wanted)
        };
        if let Some(settings) = wanted {
            controller
                .call(move |c| c.set_trace(Some(settings)))
                .map_err(|gone| anyhow::anyhow!("{gone}"))??;
            self.lock().kernel = Some(settings);
        }
        let deadline = Instant::now() + WAIT;
        let mut state = self.lock();
        let after = poll.after.unwrap_or(state.last);
        loop {
            let oldest = state.events.front().map_or(state.last + 1, |(seq, _)| *seq);
            let missed = oldest.saturating_sub(after + 1);
            let events: Vec<TraceLine> = state
                .events
                .iter()
                .filter(|(seq, line)| *seq > after && poll.filter.matches(line))
                .take(BATCH)
                .map(|(_, line)| line.clone())
                .collect();
            let now = Instant::now();
            if !events.is_empty() || now >= deadline {
                let next = if events.len() == BATCH {
                    // Resume after the last event returned.
                    let mut count = 0;
                    state
                        .events
                        .iter()
                        .filter(|(seq, line)| *seq > after && poll.filter.matches(line))
                        .map(|(seq, _)| *seq)
                        .find(|_| {
                            count += 1;
                            count == BATCH
                        })
                        .unwrap_or(state.last)
                } else {
                    state.last
                };
                let lost = state.lost;
                // Registered above; if a slow owner call let the lease lapse
                // meanwhile, the client starts again from here.
                let client = state
                    .clients
                    .entry(poll.client.clone())
                    .or_insert_with(|| Client {
                        filter: poll.filter.clone(),
                        seen: Instant::now(),
                        lost_base: lost,
                        missed: 0,
                    });
                client.missed += missed;
                return Ok(TraceBatch {
                    events,
                    next,
                    lost: lost.saturating_sub(client.lost_base) + client.missed,
                });
            }
            state = self
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn push(&self, lines: Vec<TraceLine>) {
        if lines.is_empty() {
            return;
        }
        let mut state = self.lock();
        for line in lines {
            state.last += 1;
            let seq = state.last;
            state.events.push_back((seq, line));
        }
        while state.events.len() > CAPACITY {
            state.events.pop_front();
        }
        drop(state);
        self.arrived.notify_all();
    }
}

/// The kernel's side of the trace, taken from the data plane.
pub struct Kernel {
    /// `TRACE_EVENTS`.
    pub events: RingBuf<MapData>,
    /// `TRACE_STATE`.
    pub state: PerCpuArray<MapData, TraceState>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").finish_non_exhaustive()
    }
}

/// Starts the thread that reads `kernel` into a new hub; returns the hub
/// and the thread, which ends once `stopping` says so (asked every 200 ms)
/// or the owner is gone.
pub fn spawn<T: Tracing>(
    kernel: Kernel,
    controller: Handle<T>,
    stopping: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<(Arc<Hub>, std::thread::JoinHandle<()>)> {
    let hub = Arc::new(Hub::default());
    let reader = hub.clone();
    let thread = std::thread::Builder::new()
        .name("trace".into())
        .spawn(move || read(kernel, &reader, &controller, &stopping))?;
    Ok((hub, thread))
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC`, in nanoseconds.
fn clock_offset() -> i128 {
    let realtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    i128::try_from(realtime).unwrap_or(0) - i128::from(crate::dataplane::monotonic_ns())
}

fn read<T: Tracing>(
    mut kernel: Kernel,
    hub: &Hub,
    controller: &Handle<T>,
    stopping: &dyn Fn() -> bool,
) {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut last_check = Instant::now();
    while !stopping() {
        let mut fd = libc::pollfd {
            fd: kernel.events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a timeout bounds the wait.
        unsafe { libc::poll(&raw mut fd, 1, 200) };
        let offset = clock_offset();
        let mut lines = Vec::new();
        while let Some(item) = kernel.events.next() {
            if item.len() < std::mem::size_of::<TraceEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `TraceEvent` (plain data, any
            // bit pattern valid); read unaligned from the ring's bytes.
            let event: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let name = names.entry(event.ifindex).or_insert_with(|| {
                crate::route::maps::interface_name(event.ifindex)
                    .unwrap_or_else(|| format!("if{}", event.ifindex))
            });
            lines.push(decode(&event, offset, name));
        }
        hub.push(lines);
        if last_check.elapsed() < Duration::from_millis(500) {
            continue;
        }
        last_check = Instant::now();
        let lost = kernel
            .state
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().map(|s| s.lost).sum());
        let off = {
            let mut state = hub.lock();
            state.lost = lost;
            state.clients.retain(|_, c| c.seen.elapsed() < LEASE);
            let off = state.clients.is_empty() && state.kernel.is_some();
            if off {
                state.kernel = None;
            }
            off
        };
        if off && controller.call(|c| c.set_trace(None)).is_err() {
            // The owner is gone: lb run is stopping.
            return;
        }
    }
}

//! Webhooks (issue 7): connection events POSTed to a system's `webhookUrl`, off the data path.
//!
//! ```text
//!  core 0 ─┐ emit(): one allocation, try_push          ┌─ sender 1 ─ POST ─> receiver A
//!  core 1 ─┼──> ArrayQueue (WebhookQueue) ──> batcher ──┼─ sender 2 ─ POST ─> receiver B
//!  core N ─┘    full: drop + count + warn   (one thread)└─ ...  (WebhookWorkers threads)
//! ```
//!
//! - **Cores** call [`emit`] (through `Shard::webhook_event`) from the core that owns the connection, so every
//!   event is sent by the node that owns it. Nothing happens, not even an allocation, when the
//!   system has no webhook URL. Otherwise the event is packed into one allocation and offered to a
//!   bounded lock-free queue with a non-blocking push; a full queue drops the event, counts it and
//!   logs at most one warn line a second. A core never waits for the webhook threads. Besides
//!   the event count, the bytes the webhook side holds (event strings, batch bodies) are bounded
//!   by `WebhookBytes`: an event that would go beyond is dropped the same way.
//! - **The batcher** ("wspush-webhook", one std thread) drains that queue into one buffer per
//!   destination (system, URL), cuts batches of up to [`batch::MAX_BATCH`] events (or what
//!   arrived within [`batch::WINDOW`] of the oldest), and hands each to a sender. A destination has
//!   at most one batch in flight, so its events arrive in order; a failed batch is resent as it
//!   was, with exponential backoff, while newer events wait in the destination's bounded buffer.
//!   The batching and retry rules are the pure [`batch::Batcher`].
//! - **Senders** (`WebhookWorkers` std threads) POST with the blocking client of [`client`]. A
//!   slow or dead receiver holds one sender for at most its timeouts, and never more than one at a
//!   time (one batch in flight per destination), so the other destinations keep flowing on the
//!   other senders; only as many simultaneously stuck receivers as there are senders can delay the
//!   rest. Unless `WebhookAllowPrivate` is on, a sender resolves the host (on a helper thread,
//!   under the timeout) and connects only to public addresses: a name that resolves to
//!   loopback, link-local or private ranges gets its batch dropped and counted as `refused`.
//!
//! Delivery is at least once: a batch whose 2xx answer is lost is sent again. `docs/webhooks.md`
//! is the user-facing contract (request shape, signature, retries, drops).

pub mod batch;
pub mod client;
pub mod event;

use event::{count_drop, epoch, log_drops_if_due, ACCEPTED, DELIVERED, POSTS_FAILED};
pub use event::{dropped, held_bytes, stats, DropReason, Event, Kind, Stats};

use crate::config::Config;
use crate::types::SystemInfo;
use crossbeam_queue::ArrayQueue;
use std::net::SocketAddrV4;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---- the cores' side ------------------------------------------------------------------------

/// What the cores share with the batcher. Process-wide: set once by [`start`].
struct Hub {
    /// Allocated by the first event: a process whose systems have no webhook never pays for
    /// `capacity` slots.
    queue: OnceLock<ArrayQueue<Event>>,
    capacity: usize,
    /// `WebhookBytes`: the most [`held_bytes`] may reach by a new event.
    budget: usize,
    /// The batcher thread, set by the batcher itself when it starts (it drains the queue right
    /// after, so an event pushed before that is not missed).
    batcher: OnceLock<Thread>,
    /// Set by the batcher just before it parks with an empty queue; a core that pushes while it
    /// is set wakes the batcher (one futex call per idle-to-busy transition, not per event).
    sleeping: AtomicBool,
}

static HUB: OnceLock<Hub> = OnceLock::new();

/// Events the batcher takes from the queue before it looks at batches and outcomes again.
const DRAIN_AT_ONCE: usize = 4096;

/// Offers one event to the batcher. Never blocks: a full queue drops the event and counts it.
/// Does nothing (and allocates nothing) when `info` has no webhook URL or webhooks are not
/// started (unit tests, benches).
pub fn emit(
    info: &Arc<SystemInfo>,
    kind: Kind,
    system: &str,
    client_id: &str,
    user_id: &str,
    group: &str,
    extend: &str,
) {
    if info.webhook_url.is_none() {
        return;
    }
    let Some(hub) = HUB.get() else {
        return;
    };
    // Two cores may both pass this check at once and overshoot by an event each: the budget
    // bounds memory, it is not an exact ledger.
    let size = system.len() + client_id.len() + user_id.len() + group.len() + extend.len();
    if held_bytes().saturating_add(size) > hub.budget {
        count_drop(DropReason::BytesFull, 1);
        return;
    }
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let Some(event) = Event::new(
        kind,
        info.clone(),
        system,
        client_id,
        user_id,
        group,
        extend,
        time_ms,
    ) else {
        count_drop(DropReason::Undeliverable, 1);
        return;
    };
    let queue = hub.queue.get_or_init(|| ArrayQueue::new(hub.capacity));
    if queue.push(event).is_err() {
        count_drop(DropReason::QueueFull, 1);
        return;
    }
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    // Pairs with the fence in the batcher between setting `sleeping` and checking the queue:
    // either it sees this event, or this core sees it asleep and wakes it.
    fence(Ordering::SeqCst);
    if hub.sleeping.load(Ordering::Relaxed) && hub.sleeping.swap(false, Ordering::AcqRel) {
        if let Some(batcher) = hub.batcher.get() {
            batcher.unpark();
        }
    }
}

// ---- the threads ----------------------------------------------------------------------------

/// Tunables of the webhook threads, from `[wspush]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `WebhookQueue`: events the cores may have queued for the batcher.
    pub queue: usize,
    /// `WebhookBuffer`: events one destination may have waiting while it fails or lags.
    pub buffer: usize,
    /// `WebhookBytes`: bytes of events and batch bodies the webhook side may hold in all.
    pub bytes: usize,
    /// `WebhookAllowPrivate`: whether POSTs may go to private, loopback and link-local addresses.
    pub allow_private: bool,
    /// `WebhookWorkers`: sender threads, i.e. POSTs in flight at once.
    pub workers: usize,
    /// `WebhookTimeoutMs`: connect, write and read timeout of one POST.
    pub timeout: Duration,
    /// This node's `host:RPCPort`, the `"node"` of every batch.
    pub node: String,
    /// `ShutdownGrace`: how long the final flush may take once the cores have stopped.
    pub grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config, node: SocketAddrV4) -> Settings {
        Settings {
            queue: config.webhook_queue,
            buffer: config.webhook_buffer,
            bytes: config.webhook_bytes,
            allow_private: config.webhook_allow_private,
            workers: config.webhook_workers,
            timeout: config.webhook_timeout,
            node: node.to_string(),
            grace: config.shutdown_grace,
        }
    }
}

/// A message to the batcher from a sender or from [`Webhooks::stop`].
enum ToBatcher {
    Done(batch::Outcome),
    Stop(Instant),
}

/// The running webhook threads.
pub struct Webhooks {
    to_batcher: mpsc::Sender<ToBatcher>,
    batcher: JoinHandle<()>,
    grace: Duration,
}

/// Starts the batcher and the senders. Call once per process, before the cores start; a second
/// call fails.
pub fn start(settings: Settings) -> std::io::Result<Webhooks> {
    let hub = Hub {
        queue: OnceLock::new(),
        capacity: settings.queue.max(1),
        budget: settings.bytes,
        batcher: OnceLock::new(),
        sleeping: AtomicBool::new(false),
    };
    if HUB.set(hub).is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "webhook threads started twice",
        ));
    }
    let _ = epoch();
    let (to_batcher, inbox) = mpsc::channel::<ToBatcher>();
    let (jobs_tx, jobs_rx) = mpsc::channel::<batch::Job>();
    let workers = settings.workers.max(1);
    let timeout = settings.timeout;
    let allow_private = settings.allow_private;
    let grace = settings.grace;
    let batcher = std::thread::Builder::new()
        .name("wspush-webhook".into())
        .spawn(move || run_batcher(settings, inbox, jobs_tx))?;
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    for i in 0..workers {
        let jobs = jobs_rx.clone();
        let done = to_batcher.clone();
        let wake = batcher.thread().clone();
        std::thread::Builder::new()
            .name(format!("wspush-webhook-{i}"))
            // The client needs a few KiB of stack; no need to reserve the default 2 MiB.
            .stack_size(256 << 10)
            .spawn(move || run_sender(jobs, done, wake, timeout, allow_private))?;
    }
    Ok(Webhooks {
        to_batcher,
        batcher,
        grace,
    })
}

impl Webhooks {
    /// Sends what is buffered (ignoring batch windows and backoff), waits until it is delivered
    /// or `ShutdownGrace` has passed, and stops the batcher. Call it once the cores have stopped,
    /// so their last offline events are in. Events still undelivered are counted as dropped and
    /// logged. Senders stuck on a receiver are left to the process exit.
    pub fn stop(self) {
        let deadline = Instant::now() + self.grace;
        if self.to_batcher.send(ToBatcher::Stop(deadline)).is_ok() {
            self.batcher.thread().unpark();
            let _ = self.batcher.join();
        }
    }
}

/// The batcher thread: queue -> per-destination buffers -> batches -> senders; outcomes back.
fn run_batcher(
    settings: Settings,
    inbox: mpsc::Receiver<ToBatcher>,
    jobs: mpsc::Sender<batch::Job>,
) {
    let Some(hub) = HUB.get() else {
        tracing::error!("bug: webhook batcher started without its hub");
        return;
    };
    let _ = hub.batcher.set(std::thread::current());
    let mut batcher = batch::Batcher::new(
        batch::Limits {
            buffer: settings.buffer,
            ..batch::Limits::default()
        },
        settings.node,
    );
    let mut stop_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(queue) = hub.queue.get() {
            // Bounded, so a storm of events cannot starve the dispatch of batches below.
            for _ in 0..DRAIN_AT_ONCE {
                match queue.pop() {
                    Some(event) => batcher.push(event, now),
                    None => break,
                }
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(ToBatcher::Done(outcome)) => batcher.finished(outcome, now),
                Ok(ToBatcher::Stop(deadline)) => {
                    stop_at = Some(deadline);
                    batcher.flush_all();
                }
                Err(_) => break,
            }
        }
        for job in batcher.ready(now) {
            if let Err(mpsc::SendError(job)) = jobs.send(job) {
                // Every sender died (they do not panic; this is a safety net).
                batcher.finished(job.failed("no webhook sender thread is running"), now);
            }
        }
        log_drops_if_due();
        if let Some(deadline) = stop_at {
            if batcher.is_empty() {
                return;
            }
            if now >= deadline {
                let left = batcher.abandon();
                tracing::warn!(
                    events = left,
                    "webhook events still undelivered when ShutdownGrace ran out: dropped"
                );
                count_drop(DropReason::Undeliverable, left as u64);
                log_drops_if_due();
                return;
            }
        }
        // Sleep until the next batch window or retry, or at most a second (the drop log and a
        // safety net against a lost wake-up), unless an event arrives first.
        let mut wake_at = now + Duration::from_secs(1);
        if let Some(at) = batcher.next_deadline() {
            wake_at = wake_at.min(at);
        }
        if let Some(at) = stop_at {
            wake_at = wake_at.min(at);
        }
        hub.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let queued = hub.queue.get().is_some_and(|q| !q.is_empty());
        if !queued {
            std::thread::park_timeout(wake_at.saturating_duration_since(Instant::now()));
        }
        hub.sleeping.store(false, Ordering::Relaxed);
    }
}

/// A sender thread: POSTs one batch at a time and reports how it went.
fn run_sender(
    jobs: Arc<Mutex<mpsc::Receiver<batch::Job>>>,
    done: mpsc::Sender<ToBatcher>,
    wake: Thread,
    timeout: Duration,
    allow_private: bool,
) {
    let mut client = client::Client::new(timeout, allow_private);
    loop {
        // The lock is held only while waiting for the next job; the POST runs without it.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the batcher stopped
        };
        let result = client.post(&job.url, &job.headers(), &job.body);
        let outcome = match result {
            Ok(status) if (200..300).contains(&status) => {
                DELIVERED.fetch_add(job.events as u64, Ordering::Relaxed);
                job.delivered()
            }
            Ok(status) => {
                POSTS_FAILED.fetch_add(1, Ordering::Relaxed);
                if batch::is_rejection(status) {
                    job.rejected(status)
                } else {
                    job.failed(format!("the receiver answered {status}"))
                }
            }
            // Not a failed POST: nothing was sent, and a retry would be refused the same way.
            Err(e @ client::PostError::Private { .. }) => job.refused(e.to_string()),
            Err(e) => {
                POSTS_FAILED.fetch_add(1, Ordering::Relaxed);
                job.failed(e.to_string())
            }
        };
        if done.send(ToBatcher::Done(outcome)).is_err() {
            return;
        }
        wake.unpark();
    }
}

//! One connection event as the webhook side holds it ([`Event`], one allocation), what it and
//! the batches waiting for an answer cost in bytes (`Charge`, [`held_bytes`]), and the
//! counters of events accepted, delivered and dropped ([`stats`]). Shared by the cores'
//! [`super::emit`], the batcher ([`super::batch`]) and the senders, and naming neither.

use crate::types::SystemInfo;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket of the system connected.
    Online,
    /// It went away, whatever the reason (one event, however many groups it was in).
    Offline,
    /// It joined a group (first bind of that group only).
    Bind,
    /// It left a group by `unbind_from_group` and is still online.
    Unbind,
    /// It was sent the offline messages kept for its userId (issue 15); the event's
    /// `messageIds` lists them, in the order sent.
    DeliveredOffline,
    /// A group gained its first member anywhere in the cluster (issue 17); sent by the
    /// group's owner node, once per transition, with clientId, userId and extend empty.
    GroupOccupied,
    /// A group lost its last member anywhere in the cluster (left, disconnected, or its
    /// node left the cluster); sent as [`Kind::GroupOccupied`] is.
    GroupVacated,
}

impl Kind {
    /// The `"event"` value in the POSTed JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Online => "online",
            Kind::Offline => "offline",
            Kind::Bind => "bind",
            Kind::Unbind => "unbind",
            Kind::DeliveredOffline => "delivered_offline",
            Kind::GroupOccupied => "group_occupied",
            Kind::GroupVacated => "group_vacated",
        }
    }
}

/// One event on its way from a core to the batcher. Its strings are packed into one allocation
/// (system, clientId, userId, groupName, extend), so emitting costs one `malloc` and a reference
/// count, whatever the fields.
pub struct Event {
    /// The system's options (URL, secret) as the emitting core knew them.
    pub info: Arc<SystemInfo>,
    text: Box<str>,
    /// Byte lengths of system, clientId, userId and groupName in `text`; extend is the rest.
    lens: [u32; 4],
    /// Unix time in milliseconds, taken on the core when it happened.
    pub time_ms: u64,
    pub kind: Kind,
}

impl Event {
    /// None when a field is longer than 4 GiB (no request body can carry one). The event's
    /// bytes count towards `WebhookBytes` until it is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Kind,
        info: Arc<SystemInfo>,
        system: &str,
        client_id: &str,
        user_id: &str,
        group: &str,
        extend: &str,
        time_ms: u64,
    ) -> Option<Event> {
        let len = |s: &str| u32::try_from(s.len()).ok();
        let lens = [len(system)?, len(client_id)?, len(user_id)?, len(group)?];
        let mut text = String::with_capacity(
            system.len() + client_id.len() + user_id.len() + group.len() + extend.len(),
        );
        for part in [system, client_id, user_id, group, extend] {
            text.push_str(part);
        }
        HELD_BYTES.fetch_add(text.len(), Ordering::Relaxed);
        Some(Event {
            info,
            text: text.into_boxed_str(),
            lens,
            time_ms,
            kind,
        })
    }

    /// The `i`-th packed field. Every boundary is a field's end, hence a char boundary.
    fn field(&self, i: usize) -> &str {
        let start: usize = self.lens[..i].iter().map(|&l| l as usize).sum();
        let end = match self.lens.get(i) {
            Some(&l) => start + l as usize,
            None => self.text.len(),
        };
        self.text.get(start..end).unwrap_or_default()
    }

    pub fn system(&self) -> &str {
        self.field(0)
    }
    pub fn client_id(&self) -> &str {
        self.field(1)
    }
    pub fn user_id(&self) -> &str {
        self.field(2)
    }
    pub fn group(&self) -> &str {
        self.field(3)
    }
    pub fn extend(&self) -> &str {
        self.field(4)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        HELD_BYTES.fetch_sub(self.text.len(), Ordering::Relaxed);
    }
}

/// Bytes of a batch body counted towards `WebhookBytes` while the batch waits for its 2xx.
/// (Events count through their own `Drop`, without a field: an event's queue slot stays small.)
pub(crate) struct Charge(usize);

impl Charge {
    pub(crate) fn new(bytes: usize) -> Charge {
        HELD_BYTES.fetch_add(bytes, Ordering::Relaxed);
        Charge(bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        HELD_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Bytes the webhook side holds now: every live event's strings and every unanswered batch body.
pub fn held_bytes() -> usize {
    HELD_BYTES.load(Ordering::Relaxed)
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind)
            .field("system", &self.system())
            .field("client_id", &self.client_id())
            .field("group", &self.group())
            .field("time_ms", &self.time_ms)
            .finish()
    }
}

// ---- counters (the "metric" of dropped events) ----------------------------------------------

pub(super) static ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub(super) static DELIVERED: AtomicU64 = AtomicU64::new(0);
pub(super) static POSTS_FAILED: AtomicU64 = AtomicU64::new(0);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_BUFFER_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_UNDELIVERABLE: AtomicU64 = AtomicU64::new(0);
static DROPPED_BYTES_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_REFUSED: AtomicU64 = AtomicU64::new(0);
static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Drops not yet reported in a log line, and when the last line was written (ms since
/// [`epoch`]): at most one warn line a second, whichever thread drops.
static DROPS_UNLOGGED: AtomicU64 = AtomicU64::new(0);
static DROPS_LOGGED_AT: AtomicU64 = AtomicU64::new(0);

/// Webhook counters since the process started. Read by the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events the cores put on the queue.
    pub accepted: u64,
    /// Events in batches a receiver answered with 2xx (a resent batch counts once per 2xx).
    pub delivered: u64,
    /// POST attempts that failed (connect, timeout, non-2xx); each is retried.
    pub posts_failed: u64,
    /// Events dropped because the queue from the cores was full (`WebhookQueue`).
    pub dropped_queue_full: u64,
    /// Events dropped, oldest first, because a destination's buffer was full (`WebhookBuffer`):
    /// its receiver was down or slower than the events came.
    pub dropped_buffer_full: u64,
    /// Events dropped because their URL is not a valid `http://` URL, or still undelivered when
    /// the shutdown's final flush ran out of time.
    pub dropped_undeliverable: u64,
    /// Events dropped because the webhook side held `WebhookBytes` already.
    pub dropped_bytes_full: u64,
    /// Events dropped because their URL's host resolved only to private addresses
    /// (`WebhookAllowPrivate` off).
    pub dropped_refused: u64,
}

impl Stats {
    /// Every event dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_buffer_full
            + self.dropped_undeliverable
            + self.dropped_bytes_full
            + self.dropped_refused
    }
}

pub fn stats() -> Stats {
    Stats {
        accepted: ACCEPTED.load(Ordering::Relaxed),
        delivered: DELIVERED.load(Ordering::Relaxed),
        posts_failed: POSTS_FAILED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        dropped_buffer_full: DROPPED_BUFFER_FULL.load(Ordering::Relaxed),
        dropped_undeliverable: DROPPED_UNDELIVERABLE.load(Ordering::Relaxed),
        dropped_bytes_full: DROPPED_BYTES_FULL.load(Ordering::Relaxed),
        dropped_refused: DROPPED_REFUSED.load(Ordering::Relaxed),
    }
}

/// Every webhook event dropped since the process started.
pub fn dropped() -> u64 {
    stats().dropped()
}

/// Why an event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    BufferFull,
    Undeliverable,
    BytesFull,
    Refused,
}

/// Counts `n` dropped events and writes the rate-limited warn line if one is due.
pub(crate) fn count_drop(why: DropReason, n: u64) {
    let counter = match why {
        DropReason::QueueFull => &DROPPED_QUEUE_FULL,
        DropReason::BufferFull => &DROPPED_BUFFER_FULL,
        DropReason::Undeliverable => &DROPPED_UNDELIVERABLE,
        DropReason::BytesFull => &DROPPED_BYTES_FULL,
        DropReason::Refused => &DROPPED_REFUSED,
    };
    counter.fetch_add(n, Ordering::Relaxed);
    DROPS_UNLOGGED.fetch_add(n, Ordering::Relaxed);
    log_drops_if_due();
}

/// The one warn line a second about drops, with how many since the last line. Called on every
/// drop and by the batcher at least once a second, so the last drops of a burst are reported too.
pub(super) fn log_drops_if_due() {
    if DROPS_UNLOGGED.load(Ordering::Relaxed) == 0 {
        return;
    }
    // +1000 so the very first drop is logged at once (the clock starts at 0).
    let now = epoch().elapsed().as_millis() as u64 + 1000;
    let last = DROPS_LOGGED_AT.load(Ordering::Relaxed);
    if now < last + 1000
        || DROPS_LOGGED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let n = DROPS_UNLOGGED.swap(0, Ordering::Relaxed);
    if n > 0 {
        let s = stats();
        tracing::warn!(
            dropped = n,
            total = s.dropped(),
            queue_full = s.dropped_queue_full,
            buffer_full = s.dropped_buffer_full,
            undeliverable = s.dropped_undeliverable,
            bytes_full = s.dropped_bytes_full,
            refused = s.dropped_refused,
            "webhook events dropped"
        );
    }
}

pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

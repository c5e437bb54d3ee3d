//! Batching and retries, as pure state: events in, jobs out, outcomes in. No sockets and no
//! clock of its own (every call is given `now`), so the rules are unit-tested directly.
//!
//! Rules, per destination (one system's URL):
//! - Events wait in a FIFO buffer of at most [`Limits::buffer`] events; one more drops the
//!   oldest (counted as `dropped_buffer_full`).
//! - A batch is cut when [`Limits::max_batch`] events wait, or when the oldest has waited
//!   [`Limits::window`], or at once during the shutdown flush.
//! - At most one batch is in flight. A failed batch is kept and resent unchanged (same body,
//!   same `X-Webhook-Id`) after [`backoff`] (0.5 s doubling to 30 s), before any newer event:
//!   order per destination is kept, and a failing destination only ever holds one sender.
//! - A batch whose host resolves only to addresses `WebhookAllowPrivate` forbids is dropped
//!   (counted as `refused`), logged once until the destination delivers again.
//! - A destination with nothing buffered or in flight for [`FORGET_AFTER`] is forgotten.

use super::client::Url;
use super::event::{count_drop, Charge, DropReason, Event};
use crate::types::SystemInfo;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most events in one POST.
pub const MAX_BATCH: usize = 100;
/// Longest an event waits for others to share its POST.
pub const WINDOW: Duration = Duration::from_millis(100);
/// First retry delay after a failed POST; doubles with each failure in a row.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Largest retry delay: a dead receiver is tried twice a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A destination idle this long is forgotten (its entry, not any event).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch: usize,
    pub window: Duration,
    /// Events one destination may have waiting (`WebhookBuffer`).
    pub buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch: MAX_BATCH,
            window: WINDOW,
            buffer: 10_000,
        }
    }
}

/// Delay before the next attempt after `failures` failures in a row (1 = the first failure).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// One POST for a sender thread to make.
pub struct Job {
    pub system: Box<str>,
    pub url_text: Box<str>,
    pub url: Arc<Url>,
    pub body: Arc<[u8]>,
    pub signature: Option<Arc<str>>,
    /// `X-Webhook-Id`: the same on every attempt of one batch, so receivers can drop repeats.
    pub batch_id: Arc<str>,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub events: usize,
}

impl Job {
    /// The headers besides Host, Content-Type and Content-Length.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = vec![("X-Webhook-Id", &*self.batch_id)];
        if let Some(signature) = &self.signature {
            headers.push(("X-Signature", signature));
        }
        headers
    }

    pub fn delivered(self) -> Outcome {
        self.outcome(Posted::Delivered)
    }

    pub fn failed(self, why: impl Into<String>) -> Outcome {
        self.outcome(Posted::Failed(why.into()))
    }

    /// The receiver answered a status that a retry of the same body cannot change (see
    /// [`is_rejection`]): the batch is dropped, counted, and the destination moves on.
    pub fn rejected(self, status: u16) -> Outcome {
        self.outcome(Posted::Rejected(status))
    }

    /// The sender would not connect: the host resolved only to addresses `WebhookAllowPrivate`
    /// forbids (why says which). Dropped like a rejection; the next batch resolves again.
    pub fn refused(self, why: impl Into<String>) -> Outcome {
        self.outcome(Posted::Refused(why.into()))
    }

    fn outcome(self, result: Posted) -> Outcome {
        Outcome {
            system: self.system,
            url: self.url_text,
            result,
        }
    }
}

/// A 4xx answer other than 408 (timeout), 425 (too early) and 429 (too many requests) says the
/// request itself is refused (a wrong path, a signature the receiver does not accept, a body it
/// cannot parse): resending the same bytes would be refused for ever and hold back every newer
/// event of the destination. Everything else (5xx, network errors) is retried.
pub fn is_rejection(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 425 | 429)
}

/// How a [`Job`] went.
#[derive(Debug)]
pub struct Outcome {
    pub system: Box<str>,
    pub url: Box<str>,
    pub result: Posted,
}

/// What became of one POST.
#[derive(Debug)]
pub enum Posted {
    /// A 2xx answer.
    Delivered,
    /// Worth retrying: why (logged).
    Failed(String),
    /// Refused for good with this status ([`is_rejection`]): drop the batch.
    Rejected(u16),
    /// Not sent: the destination's address is private and `WebhookAllowPrivate` is off.
    Refused(String),
}

/// A batch that was sent and is either in flight or waiting for its retry.
struct Flight {
    body: Arc<[u8]>,
    signature: Option<Arc<str>>,
    id: Arc<str>,
    events: usize,
    attempts: u32,
    /// The body's bytes, counted towards `WebhookBytes` until the batch is answered or dropped.
    _charge: Charge,
}

struct Dest {
    /// None: the URL is not a usable `http://` URL; its events are dropped.
    url: Option<Arc<Url>>,
    /// The options of the latest event: a rotated secret signs the next batch cut.
    info: Arc<SystemInfo>,
    pending: VecDeque<(Instant, Event)>,
    flight: Option<Flight>,
    /// A sender holds this destination's flight now.
    sending: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_active: Instant,
    /// Its last batch was refused (private address): the next refusal is not logged again.
    refused: bool,
}

impl Dest {
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.flight.is_none() && !self.sending
    }

    fn events(&self) -> usize {
        self.pending.len() + self.flight.as_ref().map_or(0, |f| f.events)
    }
}

/// Every destination's buffer, batch in flight and retry state.
pub struct Batcher {
    /// system -> URL -> destination (a system has one URL; keyed by both so that a system whose
    /// URL changed never mixes the two streams).
    dests: HashMap<Box<str>, HashMap<Box<str>, Dest>>,
    limits: Limits,
    node: String,
    flushing: bool,
    next_batch: u64,
    last_sweep: Option<Instant>,
}

impl Batcher {
    pub fn new(limits: Limits, node: String) -> Batcher {
        Batcher {
            dests: HashMap::new(),
            limits,
            node,
            flushing: false,
            // Random start: batch ids of two processes (or two runs) do not collide.
            next_batch: rand::random(),
            last_sweep: None,
        }
    }

    /// Buffers one event for its destination (dropping the oldest if the buffer is full).
    pub fn push(&mut self, event: Event, now: Instant) {
        let Some(url) = event.info.webhook_url.as_deref() else {
            return;
        };
        let dest = match self
            .dests
            .get_mut(event.system())
            .and_then(|urls| urls.get_mut(url))
        {
            Some(dest) => dest,
            None => {
                let parsed = match Url::parse(url) {
                    Ok(u) => Some(Arc::new(u)),
                    Err(e) => {
                        tracing::warn!(system = event.system(), url, error = %e,
                            "webhook URL unusable: this system's events are dropped");
                        None
                    }
                };
                let dest = Dest {
                    url: parsed,
                    info: event.info.clone(),
                    pending: VecDeque::new(),
                    flight: None,
                    sending: false,
                    failures: 0,
                    retry_at: None,
                    last_active: now,
                    refused: false,
                };
                self.dests
                    .entry(Box::from(event.system()))
                    .or_default()
                    .entry(Box::from(url))
                    .or_insert(dest)
            }
        };
        dest.last_active = now;
        if !Arc::ptr_eq(&dest.info, &event.info) {
            dest.info = event.info.clone();
        }
        if dest.url.is_none() {
            count_drop(DropReason::Undeliverable, 1);
            return;
        }
        if dest.pending.len() >= self.limits.buffer.max(1) {
            dest.pending.pop_front();
            count_drop(DropReason::BufferFull, 1);
        }
        dest.pending.push_back((now, event));
    }

    /// The POSTs due now: retries whose backoff has passed, then new batches that are full or
    /// whose oldest event has waited a whole window. One per destination at most.
    pub fn ready(&mut self, now: Instant) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (system, urls) in &mut self.dests {
            for (url_text, dest) in urls.iter_mut() {
                if dest.sending {
                    continue;
                }
                let Some(url) = dest.url.clone() else {
                    continue;
                };
                if dest.flight.is_none() {
                    let due = match dest.pending.front() {
                        None => false,
                        Some((at, _)) => {
                            self.flushing
                                || dest.pending.len() >= self.limits.max_batch
                                || now.duration_since(*at) >= self.limits.window
                        }
                    };
                    if !due {
                        continue;
                    }
                    let take = dest.pending.len().min(self.limits.max_batch.max(1));
                    let body: Arc<[u8]> = Arc::from(render(
                        system,
                        &self.node,
                        dest.pending.iter().take(take).map(|(_, e)| e),
                    ));
                    dest.pending.drain(..take);
                    let signature = dest
                        .info
                        .secret
                        .as_deref()
                        .filter(|secret| !secret.is_empty())
                        .map(|secret| Arc::from(crate::auth::sign_hex(secret, &body)));
                    let id = self.next_batch;
                    self.next_batch = id.wrapping_add(1);
                    dest.flight = Some(Flight {
                        _charge: Charge::new(body.len()),
                        body,
                        signature,
                        id: Arc::from(format!("{id:016x}")),
                        events: take,
                        attempts: 0,
                    });
                } else if dest.retry_at.is_some_and(|at| at > now) {
                    continue;
                }
                let Some(flight) = dest.flight.as_mut() else {
                    continue;
                };
                flight.attempts += 1;
                dest.sending = true;
                dest.retry_at = None;
                dest.last_active = now;
                jobs.push(Job {
                    system: system.clone(),
                    url_text: url_text.clone(),
                    url,
                    body: flight.body.clone(),
                    signature: flight.signature.clone(),
                    batch_id: flight.id.clone(),
                    attempt: flight.attempts,
                    events: flight.events,
                });
            }
        }
        self.sweep(now);
        jobs
    }

    /// Applies a sender's report: a delivered batch frees the destination for the next one; a
    /// failed one is kept for a retry after the backoff.
    pub fn finished(&mut self, outcome: Outcome, now: Instant) {
        let Some(dest) = self
            .dests
            .get_mut(&*outcome.system)
            .and_then(|urls| urls.get_mut(&*outcome.url))
        else {
            return;
        };
        dest.sending = false;
        dest.last_active = now;
        match outcome.result {
            Posted::Delivered => {
                if dest.failures > 0 {
                    tracing::info!(system = %outcome.system, url = %outcome.url,
                        failures = dest.failures, "webhook receiver reachable again");
                }
                dest.flight = None;
                dest.failures = 0;
                dest.retry_at = None;
                dest.refused = false;
            }
            Posted::Rejected(status) => {
                let events = dest.flight.take().map_or(0, |f| f.events);
                tracing::warn!(system = %outcome.system, url = %outcome.url, status, events,
                    "webhook batch rejected by the receiver; dropping it, not retrying");
                count_drop(DropReason::Undeliverable, events as u64);
                dest.failures = 0;
                dest.retry_at = None;
            }
            Posted::Refused(why) => {
                let events = dest.flight.take().map_or(0, |f| f.events);
                if !std::mem::replace(&mut dest.refused, true) {
                    tracing::warn!(system = %outcome.system, url = %outcome.url, error = %why, events,
                        "webhook batch dropped: its host is a private address and \
                         WebhookAllowPrivate is off (logged once until this URL delivers)");
                }
                count_drop(DropReason::Refused, events as u64);
                dest.failures = 0;
                dest.retry_at = None;
            }
            Posted::Failed(why) => {
                dest.failures = dest.failures.saturating_add(1);
                let delay = backoff(dest.failures);
                dest.retry_at = Some(now + delay);
                let (events, attempt) = dest
                    .flight
                    .as_ref()
                    .map_or((0, 0), |f| (f.events, f.attempts));
                tracing::warn!(system = %outcome.system, url = %outcome.url, error = %why,
                    attempt, events, waiting = dest.pending.len(), retry_in_ms = delay.as_millis() as u64,
                    "webhook POST failed; will retry");
            }
        }
    }

    /// When [`Batcher::ready`] next has something to do without new input: the earliest retry or
    /// batch window among destinations no sender holds.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.dests
            .values()
            .flat_map(|urls| urls.values())
            .filter(|d| !d.sending && d.url.is_some())
            .filter_map(|d| match &d.flight {
                Some(_) => d.retry_at,
                None => d.pending.front().map(|(at, _)| *at + self.limits.window),
            })
            .min()
    }

    /// Shutdown: from now on batches are cut without waiting for their window, and each waiting
    /// retry is tried once at once (later failures back off as usual).
    pub fn flush_all(&mut self) {
        self.flushing = true;
        for dest in self.dests.values_mut().flat_map(|urls| urls.values_mut()) {
            dest.retry_at = None;
        }
    }

    /// Nothing buffered, nothing in flight, nothing waiting for a retry.
    pub fn is_empty(&self) -> bool {
        self.dests
            .values()
            .flat_map(|urls| urls.values())
            .all(Dest::idle)
    }

    /// Forgets everything; returns how many events that was.
    pub fn abandon(&mut self) -> usize {
        let left = self
            .dests
            .values()
            .flat_map(|urls| urls.values())
            .map(Dest::events)
            .sum();
        self.dests.clear();
        left
    }

    /// Events buffered or in flight, over all destinations.
    pub fn waiting(&self) -> usize {
        self.dests
            .values()
            .flat_map(|urls| urls.values())
            .map(Dest::events)
            .sum()
    }

    /// Drops destinations idle for [`FORGET_AFTER`], at most once a minute.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.dests.retain(|_, urls| {
            urls.retain(|_, d| !(d.idle() && now.duration_since(d.last_active) >= FORGET_AFTER));
            !urls.is_empty()
        });
    }
}

/// The body of one POST:
/// `{"systemId":..,"node":..,"events":[{"event","systemId","clientId","userId","groupName","extend","time"}]}`.
/// Each event names its system too, so a receiver may split a batch and keep events whole.
pub fn render<'a>(system: &str, node: &str, events: impl Iterator<Item = &'a Event>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"systemId\":");
    json_str(&mut out, system);
    out.extend_from_slice(b",\"node\":");
    json_str(&mut out, node);
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"event\":\"");
        out.extend_from_slice(e.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"systemId\":");
        json_str(&mut out, system);
        out.extend_from_slice(b",\"clientId\":");
        json_str(&mut out, e.client_id());
        out.extend_from_slice(b",\"userId\":");
        json_str(&mut out, e.user_id());
        out.extend_from_slice(b",\"groupName\":");
        if e.kind.as_str() == "delivered_offline" {
            // Its group field carries the messageIds, comma-joined (they hold no comma).
            out.extend_from_slice(b"\"\",\"messageIds\":[");
            for (i, id) in e.group().split(',').enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(&mut out, id);
            }
            out.push(b']');
        } else {
            json_str(&mut out, e.group());
        }
        out.extend_from_slice(b",\"extend\":");
        json_str(&mut out, e.extend());
        out.extend_from_slice(b",\"time\":");
        out.extend_from_slice(itoa::Buffer::new().format(e.time_ms).as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests;

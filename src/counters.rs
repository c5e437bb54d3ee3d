//! The counters every core bumps on its data path, the side threads' atomics, and the plain
//! snapshots they give when asked.
//!
//! A leaf: it names only std (and the `types` leaf, for EndReason) and is named by everything that counts (the shard, the node links,
//! the etcd thread) and by what reads the counts (`ops::metrics`, the status page).
//!
//! **Where the counters live.** Each core owns a [`CoreMetrics`] (inside its `Shard`): plain
//! `Cell<u64>`s that only that core touches, so an increment on the data path is a load and a
//! store in the core's own cache, never an atomic read-modify-write on a line that other cores
//! also write. A scrape asks every core for a [`CoreSnapshot`] (owned data, `Send`) and sums
//! them; see `ops::metrics`.

pub use crate::types::EndReason;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

// ---- per-core counters ---------------------------------------------------------------------------

/// A counter touched by one core only.
#[derive(Debug, Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// The `reason` label of `wspush_disconnects_total`, in [`EndReason`] order.
pub const REASONS: [&str; 9] = [
    "close",
    "reset",
    "pong_timeout",
    "slow_consumer",
    "kicked",
    "protocol_error",
    "shutdown",
    "cut_off",
    "replaced",
];

/// The `reason` label of `wspush_node_links_refused_total`: an inbound link closed at a limit
/// (MaxNodeLinksPerCore/PerPeer), or by its handshake (see `cluster::handshake::HandshakeError`).
pub const LINK_REFUSALS: [&str; 7] = [
    "limit",
    "not_a_node_link",
    "version",
    "wrong_node",
    "secret_mismatch",
    "timeout",
    "closed",
];

/// Index into [`REASONS`]. Exhaustive on purpose: a new `EndReason` must get a label here.
fn reason_index(reason: EndReason) -> usize {
    match reason {
        EndReason::ClientClose => 0,
        EndReason::Reset => 1,
        EndReason::PongTimeout => 2,
        EndReason::SlowConsumer => 3,
        EndReason::Kicked => 4,
        EndReason::ProtocolError => 5,
        EndReason::Shutdown => 6,
        EndReason::CutOff => 7,
        EndReason::Replaced => 8,
    }
}

/// Upper bounds of the API latency histogram buckets, in seconds (the `le` label), and the same
/// in nanoseconds for the comparison on the request path. 100 us to 2.5 s: a local request
/// takes tens of microseconds, a cross-node one up to `RpcTimeoutMs`.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const LATENCY_BOUNDS_NS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// One API route's requests: the latency histogram and the count of each outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// The route label (see [`CoreMetrics::api_request`]).
    pub route: String,
    /// Requests per latency bucket, not cumulative; the last one is `+Inf`.
    pub buckets: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
    /// `(HTTP status, envelope code, requests)`.
    pub outcomes: Vec<(u16, i32, u64)>,
}

impl RouteStats {
    /// Adds another core's counts of the same route.
    pub fn merge(&mut self, other: &RouteStats) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        for &(status, code, n) in &other.outcomes {
            match self
                .outcomes
                .iter_mut()
                .find(|o| o.0 == status && o.1 == code)
            {
                Some(o) => o.2 += n,
                None => self.outcomes.push((status, code, n)),
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A counter sample kept for the rates of `/status.json`.
#[derive(Debug, Clone, Copy)]
pub struct RateSample {
    pub at: Instant,
    pub totals: Totals,
}

/// The node-wide counters the status page turns into rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub frames_pushed: u64,
    pub bytes_pushed: u64,
    pub api_requests: u64,
    pub queue_full: u64,
}

/// Seconds of history the status page's charts show: a fixed ring of this many points per core.
pub const TREND_SECONDS: usize = 600;

/// One core's totals at the end of one second: connections held, and the push API requests,
/// frames pushed, API requests and slow-consumer drops counted since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrendPoint {
    /// Seconds since the Unix epoch; 0 marks a slot never written.
    pub sec: u64,
    pub connections: u64,
    pub pushes: u64,
    pub frames: u64,
    pub api: u64,
    pub drops: u64,
}

/// A fixed ring of [`TrendPoint`]s, one slot per second: memory that does not grow with time.
#[derive(Debug)]
pub struct Trend {
    slots: RefCell<Box<[TrendPoint]>>,
}

impl Default for Trend {
    fn default() -> Self {
        Trend {
            slots: RefCell::new(vec![TrendPoint::default(); TREND_SECONDS].into_boxed_slice()),
        }
    }
}

impl Trend {
    /// Keeps `point` in its second's slot, over whatever that slot held 600 s ago.
    pub fn record(&self, point: TrendPoint) {
        let mut slots = self.slots.borrow_mut();
        let at = (point.sec % TREND_SECONDS as u64) as usize;
        slots[at] = point;
    }

    /// The points of the last [`TREND_SECONDS`] before `now_sec` (inclusive), oldest first.
    pub fn points(&self, now_sec: u64) -> Vec<TrendPoint> {
        let oldest = now_sec.saturating_sub(TREND_SECONDS as u64 - 1);
        let mut points: Vec<TrendPoint> = (self.slots.borrow().iter())
            .filter(|p| p.sec != 0 && p.sec >= oldest && p.sec <= now_sec)
            .copied()
            .collect();
        points.sort_unstable_by_key(|p| p.sec);
        points
    }
}

/// What one core counts. Owned by its `Shard`; every field is touched by that core only.
#[derive(Debug)]
pub struct CoreMetrics {
    /// WebSockets registered (after the handshake).
    pub connects: Counter,
    /// Upgrades refused with 503 at MaxConnsPerCore.
    pub connects_refused: Counter,
    /// HTTP connections refused with 503 at MaxHttpConnsPerCore.
    pub http_refused: Counter,
    /// Cluster mode: etcd reads of a system this core did not know (an API request's
    /// SystemId, or a `/ws` connect's systemId).
    pub etcd_lookups: Counter,
    /// `/ws` connects for a system this core does not know that were not looked up in etcd:
    /// the system was found unregistered a moment ago (cached), or this core looked up too
    /// many unknown systems in the last second (limited, refused with 503).
    pub lookups_cached: Counter,
    pub lookups_limited: Counter,
    disconnects: [Counter; REASONS.len()],
    frames_pushed: Counter,
    bytes_pushed: Counter,
    /// `sendmsg` calls that wrote WebSocket queues: frames_pushed / socket_writes is how many
    /// frames each write carried (the flush window's coalescing).
    pub socket_writes: Counter,
    /// Outbound queues that overflowed (each one closes its connection as a slow consumer).
    pub queue_full: Counter,
    /// Inbound node links refused, by [`LINK_REFUSALS`] reason.
    node_links_refused: [Counter; LINK_REFUSALS.len()],
    /// Requests this core sent to another core's inbox, and replies it sent back.
    pub core_requests: Counter,
    pub core_replies: Counter,
    /// API requests by route. A handful of routes: a linear search is cheaper than hashing.
    api: RefCell<Vec<RouteStats>>,
    /// Calls to peer nodes that got no answer, by the route (or internal event) that made
    /// them; a dozen labels at most.
    peer_failures: RefCell<Vec<(&'static str, u64)>>,
    /// Samples of the node's totals taken by `/status.json` requests on this core.
    pub rate_samples: RefCell<VecDeque<RateSample>>,
    /// This core's totals once a second for the last [`TREND_SECONDS`]: the status page's
    /// charts.
    pub trend: Trend,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        // The shards are built at start-up: this pins the process start time.
        process_started();
        CoreMetrics {
            connects: Counter::default(),
            connects_refused: Counter::default(),
            http_refused: Counter::default(),
            etcd_lookups: Counter::default(),
            lookups_cached: Counter::default(),
            lookups_limited: Counter::default(),
            disconnects: Default::default(),
            frames_pushed: Counter::default(),
            bytes_pushed: Counter::default(),
            socket_writes: Counter::default(),
            queue_full: Counter::default(),
            node_links_refused: Default::default(),
            core_requests: Counter::default(),
            core_replies: Counter::default(),
            api: RefCell::default(),
            peer_failures: RefCell::default(),
            rate_samples: RefCell::default(),
            trend: Trend::default(),
        }
    }
}

impl CoreMetrics {
    pub fn disconnected(&self, reason: EndReason) {
        self.disconnects[reason_index(reason)].inc();
    }

    /// One inbound node link refused; `reason` is one of [`LINK_REFUSALS`] (another counts as
    /// `closed`).
    pub fn node_link_refused(&self, reason: &str) {
        let at = LINK_REFUSALS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(LINK_REFUSALS.len() - 1);
        self.node_links_refused[at].inc();
    }

    /// `frames` copies of a `bytes`-long frame were queued to clients.
    #[inline]
    pub fn pushed(&self, frames: usize, bytes: usize) {
        self.frames_pushed.add(frames as u64);
        self.bytes_pushed.add((frames * bytes) as u64);
    }

    /// One request answered by the API handler: `known` when its path is a route (else it got
    /// a 404), `status` the HTTP status and `ok` whether the envelope said code 0. The route
    /// label is the path without `/api/`; any other path is `unknown` (under `/api/`) or
    /// `other`, so scanners cannot create series.
    pub fn api_request(&self, path: &str, known: bool, status: u16, ok: bool, elapsed: Duration) {
        let route = match path.strip_prefix("/api/") {
            Some(route) if known => route,
            Some(_) => "unknown",
            None => "other",
        };
        let code = if ok { 0 } else { -1 };
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&le| ns <= le)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        let mut api = self.api.borrow_mut();
        let at = match api.iter().position(|r| r.route == route) {
            Some(at) => at,
            None => {
                api.push(RouteStats {
                    route: route.to_string(),
                    ..RouteStats::default()
                });
                api.len() - 1
            }
        };
        let stats = &mut api[at];
        stats.buckets[bucket] += 1;
        stats.sum_ns = stats.sum_ns.saturating_add(ns);
        match stats
            .outcomes
            .iter_mut()
            .find(|o| o.0 == status && o.1 == code)
        {
            Some(o) => o.2 += 1,
            None => stats.outcomes.push((status, code, 1)),
        }
    }

    /// A call to a peer node for `route` got no answer.
    pub fn peer_call_failed(&self, route: &'static str) {
        let mut failures = self.peer_failures.borrow_mut();
        match failures.iter_mut().find(|(r, _)| *r == route) {
            Some((_, n)) => *n += 1,
            None => failures.push((route, 1)),
        }
    }

    /// This core's totals for the trend at unix second `sec`, with its `connections`.
    pub fn trend_point(&self, sec: u64, connections: u64) -> TrendPoint {
        let pushes = (self.api.borrow().iter())
            .filter(|r| r.route.starts_with("send_to"))
            .map(|r| r.buckets.iter().sum::<u64>())
            .sum();
        let api = (self.api.borrow().iter())
            .map(|r| r.buckets.iter().sum::<u64>())
            .sum();
        TrendPoint {
            sec,
            connections,
            pushes,
            frames: self.frames_pushed.get(),
            api,
            drops: self.disconnects[reason_index(EndReason::SlowConsumer)].get(),
        }
    }

    /// This core's counters; the caller adds what only the shard knows (connections, links,
    /// systems).
    pub fn snapshot(&self, core: usize) -> CoreSnapshot {
        CoreSnapshot {
            core,
            connects: self.connects.get(),
            connects_refused: self.connects_refused.get(),
            http_refused: self.http_refused.get(),
            etcd_lookups: self.etcd_lookups.get(),
            lookups_cached: self.lookups_cached.get(),
            lookups_limited: self.lookups_limited.get(),
            disconnects: std::array::from_fn(|i| self.disconnects[i].get()),
            frames_pushed: self.frames_pushed.get(),
            bytes_pushed: self.bytes_pushed.get(),
            socket_writes: self.socket_writes.get(),
            queue_full: self.queue_full.get(),
            node_links_refused: std::array::from_fn(|i| self.node_links_refused[i].get()),
            core_requests: self.core_requests.get(),
            core_replies: self.core_replies.get(),
            api: self.api.borrow().clone(),
            peer_failures: self.peer_failures.borrow().clone(),
            ..CoreSnapshot::default()
        }
    }
}

/// One core's node link to one peer: calls made, failed, reconnects, smoothed round trip.
#[derive(Debug, Default)]
pub struct LinkStats {
    requests: Counter,
    errors: Counter,
    connects: Counter,
    /// Outbound handshakes that failed (the peer refused this node, or answered wrong).
    handshake_failures: Counter,
    /// Exponentially weighted mean round trip of successful calls (1/8 weight, as TCP's SRTT),
    /// in nanoseconds; 0 until the first.
    rtt_ns: Cell<u64>,
}

impl LinkStats {
    /// The link's TCP connection came up (the first time, or again after a loss).
    pub fn connected(&self) {
        self.connects.inc();
    }

    /// A connect reached the peer but its handshake failed.
    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// One call on the link ended, answered (`ok`) or not (timeout, unreachable).
    pub fn call_done(&self, ok: bool, elapsed: Duration) {
        self.requests.inc();
        if !ok {
            self.errors.inc();
            return;
        }
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.rtt_ns.get();
        self.rtt_ns.set(if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        });
    }

    pub fn snapshot(&self, peer: SocketAddrV4, up: bool) -> LinkSnapshot {
        LinkSnapshot {
            peer,
            links_up: up as u64,
            links: 1,
            requests: self.requests.get(),
            errors: self.errors.get(),
            reconnects: self.connects.get().saturating_sub(1),
            handshake_failures: self.handshake_failures.get(),
            rtt_ns: (self.rtt_ns.get() > 0).then(|| self.rtt_ns.get()),
        }
    }
}

// ---- side-thread counters ------------------------------------------------------------------------

/// What the etcd thread counts. Atomics: that thread is not a core, and it writes them only on
/// state changes (a few a minute at most), never on the data path.
#[derive(Debug)]
pub struct EtcdCounters {
    /// 1 while membership is established (lease granted, key put, watching), else 0.
    pub connected: AtomicU64,
    /// Membership sessions established since start (the first one, then every recovery).
    pub sessions: AtomicU64,
    /// Sessions lost because the lease keep-alive failed (no answer, error, lease expired).
    pub keepalive_failures: AtomicU64,
    /// Attempts to (re)establish membership that failed (etcd unreachable).
    pub connect_failures: AtomicU64,
}

pub static ETCD: EtcdCounters = EtcdCounters {
    connected: AtomicU64::new(0),
    sessions: AtomicU64::new(0),
    keepalive_failures: AtomicU64::new(0),
    connect_failures: AtomicU64::new(0),
};

impl EtcdCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> EtcdSnapshot {
        EtcdSnapshot {
            connected: self.connected.load(Ordering::Relaxed) == 1,
            sessions: self.sessions.load(Ordering::Relaxed),
            keepalive_failures: self.keepalive_failures.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
        }
    }
}

/// When the process started: wall clock (for `process_start_time_seconds`) and monotonic (for
/// the uptime).
pub fn process_started() -> (SystemTime, Instant) {
    static STARTED: OnceLock<(SystemTime, Instant)> = OnceLock::new();
    *STARTED.get_or_init(|| (SystemTime::now(), Instant::now()))
}

// ---- snapshots ---------------------------------------------------------------------------------

/// One core's counters and state, as it answers `Op::Metrics`: plain owned data, `Send`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreSnapshot {
    pub core: usize,
    /// The last [`TREND_SECONDS`] of this core's totals, oldest first (`/status.json` only).
    pub trend: Vec<TrendPoint>,
    pub connections: u64,
    pub connects: u64,
    pub connects_refused: u64,
    /// HTTP connections (not WebSockets) open now, and their buffers' capacity.
    pub http_connections: u64,
    pub http_buffer_bytes: u64,
    pub http_refused: u64,
    pub etcd_lookups: u64,
    pub lookups_cached: u64,
    pub lookups_limited: u64,
    pub disconnects: [u64; REASONS.len()],
    pub frames_pushed: u64,
    pub bytes_pushed: u64,
    pub socket_writes: u64,
    pub queue_full: u64,
    pub node_links_refused: [u64; LINK_REFUSALS.len()],
    pub core_requests: u64,
    pub core_replies: u64,
    pub api: Vec<RouteStats>,
    /// `(route, calls)`: calls to peer nodes that got no answer.
    pub peer_failures: Vec<(&'static str, u64)>,
    /// This core's links to peer nodes (cluster mode).
    pub links: Vec<LinkSnapshot>,
    pub registered_systems: u64,
    /// Group history (issue 15): the streams this core owns, the pushes they keep, and those
    /// pushes' frame bytes.
    pub history_streams: u64,
    pub history_messages: u64,
    pub history_bytes: u64,
    /// Detail for `/status.json` only (empty for `/metrics`): the systems with clients or
    /// groups on this core, and (core 0 only) the names of the registered systems.
    pub systems: Vec<SystemSnapshot>,
    pub registered: Vec<String>,
}

/// One system on one core (or, merged, on the node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemSnapshot {
    pub system: String,
    pub clients: u64,
    /// `(group, members)`.
    pub groups: Vec<(String, u64)>,
}

/// One core's link to a peer, or (merged) every core's links to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSnapshot {
    pub peer: SocketAddrV4,
    /// Links that are connected now, and links in all (one per core).
    pub links_up: u64,
    pub links: u64,
    pub requests: u64,
    pub errors: u64,
    pub reconnects: u64,
    pub handshake_failures: u64,
    pub rtt_ns: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdSnapshot {
    pub connected: bool,
    pub sessions: u64,
    pub keepalive_failures: u64,
    pub connect_failures: u64,
}

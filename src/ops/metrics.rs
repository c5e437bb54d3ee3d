//! Counters, their snapshots, and the Prometheus text format (0.0.4) of `GET /metrics`.
//!
//! **Where the counters live.** Each core owns a [`CoreMetrics`] (inside its `Shard`): plain
//! `Cell<u64>`s that only that core touches, so an increment on the data path is a load and a
//! store in the core's own cache, never an atomic read-modify-write on a line that other cores
//! also write. A scrape, on whichever core accepted it, asks every core for a [`CoreSnapshot`]
//! (an `Op::Metrics` over the existing cross-core `call()`), sums them, adds what the side
//! threads keep in atomics ([`ETCD`], the webhook counters) and what `/proc/self` says about the
//! process, and renders the text. The cost of metrics is paid when scraped, not per push.
//!
//! **Why no metrics crate.** `prometheus-client` (and `prometheus`) keep each counter as an
//! `Arc<AtomicU64>` behind a `Send + Sync` registry shared by every thread: every increment
//! would be an atomic on a cache line all cores write, which is exactly the cost the
//! thread-per-core design avoids. Their collector hooks are synchronous, while our snapshot is
//! an async gather over the cores, and `prometheus-client` writes OpenMetrics 1.0 (`# EOF`,
//! different `_total` rules) rather than the 0.0.4 text format asked for. What is left to do
//! is writing a few dozen lines of text, so [`render`] does that itself (escaping label values
//! as the format requires); `tests/metrics.rs` checks the output with a real parser.

use crate::types::EndReason;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `Content-Type` of the 0.0.4 text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---- per-core counters -------------------------------------------------------------------------

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
pub const REASONS: [&str; 8] = [
    "close",
    "reset",
    "pong_timeout",
    "slow_consumer",
    "kicked",
    "protocol_error",
    "shutdown",
    "cut_off",
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
    }
}

/// The `route` labels of `wspush_peer_call_failures_total`, listed at 0 before any failure so
/// that the series exist from the start: every API route that calls peers, and `group_event`.
pub const PEER_CALL_ROUTES: [&str; 13] = [
    "send_to_client",
    "send_to_clients",
    "send_to_group",
    "send_to_system",
    "send_to_user",
    "bind_to_group",
    "close_client",
    "is_online",
    "unbind_from_group",
    "get_online_list",
    "get_group_presence",
    "get_system_stats",
    "group_event",
];

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
    fn merge(&mut self, other: &RouteStats) {
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

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub cpu_seconds: f64,
}

/// Reads [`ProcessStats`]. Listing `/proc/self/fd` costs time in proportion to the open files
/// (one per connection), so the caller runs this off the cores (`spawn_blocking`).
pub fn read_process() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    // utime and stime, fields 14 and 15, counted after the `(comm)` field (which may hold
    // spaces), in USER_HZ ticks: 100 a second on every Linux ABI.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ProcessStats {
        rss_bytes: rss_kib * 1024,
        open_fds,
        max_fds,
        cpu_seconds: ticks as f64 / 100.0,
    }
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

/// Everything a scrape gathered: every core's snapshot plus the process-wide parts.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// This node's `host:RPCPort` (its identity in a cluster).
    pub node: String,
    pub version: &'static str,
    pub cluster: bool,
    pub ready: bool,
    pub draining: bool,
    pub uptime: Duration,
    pub start_time: SystemTime,
    /// Ordered by core id.
    pub cores: Vec<CoreSnapshot>,
    pub process: ProcessStats,
    /// Cluster mode only.
    pub etcd: Option<EtcdSnapshot>,
    /// The webhook counters (events accepted, delivered, dropped by reason, failed POSTs).
    pub webhook: Option<crate::webhook::Stats>,
}

impl Default for NodeSnapshot {
    fn default() -> Self {
        NodeSnapshot {
            node: String::new(),
            version: env!("CARGO_PKG_VERSION"),
            cluster: false,
            ready: false,
            draining: false,
            uptime: Duration::ZERO,
            start_time: UNIX_EPOCH,
            cores: Vec::new(),
            process: ProcessStats::default(),
            etcd: None,
            webhook: None,
        }
    }
}

impl NodeSnapshot {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.cores {
            t.connections += c.connections;
            t.connects += c.connects;
            t.disconnects += c.disconnects.iter().sum::<u64>();
            t.frames_pushed += c.frames_pushed;
            t.bytes_pushed += c.bytes_pushed;
            t.api_requests += c.api.iter().map(RouteStats::count).sum::<u64>();
            t.queue_full += c.queue_full;
        }
        t
    }

    pub fn disconnects(&self) -> [u64; REASONS.len()] {
        let mut sum = [0; REASONS.len()];
        for c in &self.cores {
            for (s, d) in sum.iter_mut().zip(&c.disconnects) {
                *s += d;
            }
        }
        sum
    }

    fn sum(&self, field: impl Fn(&CoreSnapshot) -> u64) -> u64 {
        self.cores.iter().map(field).sum()
    }

    /// API routes merged over the cores, by route name.
    pub fn api(&self) -> Vec<RouteStats> {
        let mut merged: BTreeMap<&str, RouteStats> = BTreeMap::new();
        for c in &self.cores {
            for r in &c.api {
                merged
                    .entry(&r.route)
                    .or_insert_with(|| RouteStats {
                        route: r.route.clone(),
                        ..RouteStats::default()
                    })
                    .merge(r);
            }
        }
        merged.into_values().collect()
    }

    /// Calls to peers that got no answer, summed over the cores, by route.
    pub fn peer_failures(&self) -> BTreeMap<&'static str, u64> {
        let mut merged = BTreeMap::new();
        for &(route, n) in self.cores.iter().flat_map(|c| &c.peer_failures) {
            *merged.entry(route).or_default() += n;
        }
        merged
    }

    /// Links merged over the cores, by peer: counts summed, round trip averaged over the cores
    /// that measured one.
    pub fn peers(&self) -> Vec<LinkSnapshot> {
        let mut merged: BTreeMap<SocketAddrV4, (LinkSnapshot, u64, u64)> = BTreeMap::new();
        for l in self.cores.iter().flat_map(|c| &c.links) {
            let (m, rtt_sum, rtt_n) = merged.entry(l.peer).or_insert_with(|| {
                (
                    LinkSnapshot {
                        peer: l.peer,
                        links_up: 0,
                        links: 0,
                        requests: 0,
                        errors: 0,
                        reconnects: 0,
                        handshake_failures: 0,
                        rtt_ns: None,
                    },
                    0,
                    0,
                )
            });
            m.links_up += l.links_up;
            m.links += l.links;
            m.requests += l.requests;
            m.errors += l.errors;
            m.reconnects += l.reconnects;
            m.handshake_failures += l.handshake_failures;
            if let Some(rtt) = l.rtt_ns {
                *rtt_sum += rtt;
                *rtt_n += 1;
            }
        }
        merged
            .into_values()
            .map(|(mut m, sum, n)| {
                m.rtt_ns = (n > 0).then(|| sum / n);
                m
            })
            .collect()
    }

    /// Systems merged over the cores (clients summed, groups merged by name), plus registered
    /// systems without clients here; most clients first.
    pub fn systems(&self) -> Vec<SystemSnapshot> {
        let mut merged: BTreeMap<&str, (u64, BTreeMap<&str, u64>)> = BTreeMap::new();
        for s in self.cores.iter().flat_map(|c| &c.systems) {
            let (clients, groups) = merged.entry(&s.system).or_default();
            *clients += s.clients;
            for (g, members) in &s.groups {
                *groups.entry(g).or_default() += members;
            }
        }
        for name in self.cores.iter().flat_map(|c| &c.registered) {
            merged.entry(name).or_default();
        }
        let mut systems: Vec<SystemSnapshot> = merged
            .into_iter()
            .map(|(system, (clients, groups))| SystemSnapshot {
                system: system.to_string(),
                clients,
                groups: groups
                    .into_iter()
                    .map(|(g, n)| (g.to_string(), n))
                    .collect(),
            })
            .collect();
        systems.sort_by(|a, b| b.clients.cmp(&a.clients).then(a.system.cmp(&b.system)));
        systems
    }
}

// ---- the text format -----------------------------------------------------------------------------

/// Writes metric families in the Prometheus text format 0.0.4.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes only backslash and newline; ours has neither.
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A sample value: integers as they are, floats in Go's `ParseFloat` syntax.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// Label values escape backslash, double quote and newline (and nothing else).
fn escape_label(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The `/metrics` body.
pub fn render(s: &NodeSnapshot) -> String {
    let mut t = Text {
        out: String::with_capacity(8 * 1024),
    };

    t.family(
        "wspush_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    t.sample("wspush_build_info", &[("version", s.version)], 1u64);
    t.single(
        "wspush_ready",
        "gauge",
        "1 when every core accepts and (cluster) etcd membership is established, as /readyz.",
        s.ready as u64,
    );
    t.single(
        "wspush_cores",
        "gauge",
        "Cores (shards) this node runs.",
        s.cores.len() as u64,
    );

    t.family(
        "wspush_connections",
        "gauge",
        "WebSocket connections open now, per core (sum() for the node).",
    );
    for c in &s.cores {
        t.sample(
            "wspush_connections",
            &[("core", &c.core.to_string())],
            c.connections,
        );
    }
    t.single(
        "wspush_connects_total",
        "counter",
        "WebSocket connections registered after their handshake.",
        s.sum(|c| c.connects),
    );
    t.single(
        "wspush_connects_refused_total",
        "counter",
        "WebSocket upgrades refused with 503 because a core held MaxConnsPerCore connections.",
        s.sum(|c| c.connects_refused),
    );
    t.family(
        "wspush_http_connections",
        "gauge",
        "HTTP connections (API, probes, operations; not WebSockets) open now that sent a \
         request, per core; MaxHttpConnsPerCore caps them.",
    );
    for c in &s.cores {
        t.sample(
            "wspush_http_connections",
            &[("core", &c.core.to_string())],
            c.http_connections,
        );
    }
    t.single(
        "wspush_http_buffer_bytes",
        "gauge",
        "Capacity of the read and write buffers of the open HTTP connections (a buffer that \
         grew past 64 KiB for a large request shrinks after it).",
        s.sum(|c| c.http_buffer_bytes),
    );
    t.single(
        "wspush_http_refused_total",
        "counter",
        "HTTP connections refused with 503 because a core held MaxHttpConnsPerCore of them.",
        s.sum(|c| c.http_refused),
    );
    t.family(
        "wspush_disconnects_total",
        "counter",
        "WebSocket connections ended, by reason: close (client close frame), reset (EOF or \
         error), pong_timeout, slow_consumer (queue full or socket not writable in time), \
         kicked (close_client), protocol_error, shutdown, cut_off (the node lost its \
         cluster membership and its peers dropped it).",
    );
    for (reason, n) in REASONS.iter().zip(s.disconnects()) {
        t.sample("wspush_disconnects_total", &[("reason", reason)], n);
    }

    t.single(
        "wspush_frames_pushed_total",
        "counter",
        "Pushed frames queued to clients (one per recipient; 1001/1002/1003 events included).",
        s.sum(|c| c.frames_pushed),
    );
    t.single(
        "wspush_bytes_pushed_total",
        "counter",
        "Bytes of the pushed frames queued to clients (WebSocket framing included).",
        s.sum(|c| c.bytes_pushed),
    );
    t.single(
        "wspush_socket_writes_total",
        "counter",
        "Writes (sendmsg) of WebSocket outbound queues; frames pushed / writes is the frames \
         each write carried (FlushWindowUs coalescing).",
        s.sum(|c| c.socket_writes),
    );
    t.single(
        "wspush_queue_full_total",
        "counter",
        "Outbound queues that overflowed QueueFrames/QueueBytes; each closes its connection \
         with 1008 (slow consumer) and drops what it had not sent.",
        s.sum(|c| c.queue_full),
    );

    let api = s.api();
    t.family(
        "wspush_api_requests_total",
        "counter",
        "HTTP API requests by route, HTTP status and envelope code (0 success, -1 failure).",
    );
    for r in &api {
        let mut outcomes = r.outcomes.clone();
        outcomes.sort_unstable();
        for (status, code, n) in outcomes {
            t.sample(
                "wspush_api_requests_total",
                &[
                    ("route", &r.route),
                    ("status", &status.to_string()),
                    ("code", &code.to_string()),
                ],
                n,
            );
        }
    }
    t.family(
        "wspush_api_request_duration_seconds",
        "histogram",
        "Time to handle an API request once its body was read, by route.",
    );
    for r in &api {
        let mut cumulative = 0;
        for (i, n) in r.buckets.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BUCKETS.get(i) {
                Some(le) => le.to_string(),
                None => "+Inf".to_string(),
            };
            t.sample(
                "wspush_api_request_duration_seconds_bucket",
                &[("route", &r.route), ("le", &le)],
                cumulative,
            );
        }
        t.sample(
            "wspush_api_request_duration_seconds_sum",
            &[("route", &r.route)],
            secs(r.sum_ns),
        );
        t.sample(
            "wspush_api_request_duration_seconds_count",
            &[("route", &r.route)],
            cumulative,
        );
    }

    t.family(
        "wspush_core_messages_total",
        "counter",
        "Messages between the cores of this node: requests (an op for the core that owns the \
         state) and their replies.",
    );
    t.sample(
        "wspush_core_messages_total",
        &[("kind", "request")],
        s.sum(|c| c.core_requests),
    );
    t.sample(
        "wspush_core_messages_total",
        &[("kind", "reply")],
        s.sum(|c| c.core_replies),
    );

    t.single(
        "wspush_systems_registered",
        "gauge",
        "Registered systems this node knows.",
        s.cores.first().map_or(0, |c| c.registered_systems),
    );

    if s.cluster {
        t.single(
            "wspush_etcd_system_lookups_total",
            "counter",
            "etcd reads of a system a core did not know (an API request's SystemId, a /ws \
             connect's systemId).",
            s.sum(|c| c.etcd_lookups),
        );
        t.family(
            "wspush_etcd_system_lookups_skipped_total",
            "counter",
            "/ws connects for a system the core did not know that were not looked up in etcd: \
             cached (found unregistered within the last seconds) or limited (too many unknown \
             systems looked up in the last second; refused with 503).",
        );
        t.sample(
            "wspush_etcd_system_lookups_skipped_total",
            &[("reason", "cached")],
            s.sum(|c| c.lookups_cached),
        );
        t.sample(
            "wspush_etcd_system_lookups_skipped_total",
            &[("reason", "limited")],
            s.sum(|c| c.lookups_limited),
        );
        let peers = s.peers();
        t.family(
            "wspush_peer_links_up",
            "gauge",
            "Node links to the peer that are connected now (one link per core).",
        );
        for p in &peers {
            t.sample(
                "wspush_peer_links_up",
                &[("peer", &p.peer.to_string())],
                p.links_up,
            );
        }
        for (name, help, value) in [
            (
                "wspush_peer_requests_total",
                "Calls to the peer over the node links (push, bind, list, ...).",
                (|p: &LinkSnapshot| p.requests) as fn(&LinkSnapshot) -> u64,
            ),
            (
                "wspush_peer_errors_total",
                "Calls to the peer that got no answer (unreachable, or past RpcTimeoutMs).",
                |p| p.errors,
            ),
            (
                "wspush_peer_reconnects_total",
                "Times a node link to the peer came up again after it was lost.",
                |p| p.reconnects,
            ),
            (
                "wspush_peer_handshake_failures_total",
                "Links to the peer that reached it but failed the handshake (another \
                 ClusterSecret, another protocol version, or not a wspush node).",
                |p| p.handshake_failures,
            ),
        ] {
            t.family(name, "counter", help);
            for p in &peers {
                t.sample(name, &[("peer", &p.peer.to_string())], value(p));
            }
        }
        t.family(
            "wspush_node_links_refused_total",
            "counter",
            "Inbound node links closed before any frame was read: at MaxNodeLinksPerCore or \
             MaxNodeLinksPerPeer (limit), or by the handshake (not_a_node_link, version, \
             wrong_node, secret_mismatch, timeout, closed).",
        );
        for (i, reason) in LINK_REFUSALS.iter().enumerate() {
            let n = s.sum(|c| c.node_links_refused[i]);
            t.sample("wspush_node_links_refused_total", &[("reason", reason)], n);
        }
        t.family(
            "wspush_peer_rtt_seconds",
            "gauge",
            "Smoothed round trip of answered calls to the peer (its processing included), \
             averaged over the cores that made one.",
        );
        for p in &peers {
            if let Some(rtt) = p.rtt_ns {
                t.sample(
                    "wspush_peer_rtt_seconds",
                    &[("peer", &p.peer.to_string())],
                    secs(rtt),
                );
            }
        }
        t.family(
            "wspush_peer_call_failures_total",
            "counter",
            "Calls to a peer node that got no answer (unreachable, past RpcTimeoutMs, or the \
             peer could not run them), by the route that made them (group_event: the \
             1001/1002/1003 pushes): that node's part of the request was not done.",
        );
        let mut failures = s.peer_failures();
        for route in PEER_CALL_ROUTES {
            failures.entry(route).or_insert(0);
        }
        for (route, n) in failures {
            t.sample("wspush_peer_call_failures_total", &[("route", route)], n);
        }
    }
    if let Some(etcd) = &s.etcd {
        t.single(
            "wspush_etcd_connected",
            "gauge",
            "1 while etcd membership is established (lease kept alive, peers watched).",
            etcd.connected as u64,
        );
        t.single(
            "wspush_etcd_sessions_total",
            "counter",
            "etcd membership sessions established (the first, then one per recovery).",
            etcd.sessions,
        );
        t.single(
            "wspush_etcd_keepalive_failures_total",
            "counter",
            "etcd sessions lost because the lease keep-alive failed or the lease expired.",
            etcd.keepalive_failures,
        );
        t.single(
            "wspush_etcd_connect_failures_total",
            "counter",
            "Attempts to establish etcd membership that failed.",
            etcd.connect_failures,
        );
    }
    if let Some(w) = s.webhook {
        t.family(
            "wspush_webhook_events_total",
            "counter",
            "Webhook events queued by the cores, and delivered (in batches answered 2xx).",
        );
        t.sample(
            "wspush_webhook_events_total",
            &[("result", "accepted")],
            w.accepted,
        );
        t.sample(
            "wspush_webhook_events_total",
            &[("result", "delivered")],
            w.delivered,
        );
        t.family(
            "wspush_webhook_dropped_total",
            "counter",
            "Webhook events dropped: queue from the cores full, a destination's buffer full, \
             undeliverable (bad URL, rejected by the receiver, unsent at shutdown), WebhookBytes \
             held already (bytes_full), or a private address refused (WebhookAllowPrivate off).",
        );
        for (reason, n) in [
            ("queue_full", w.dropped_queue_full),
            ("buffer_full", w.dropped_buffer_full),
            ("undeliverable", w.dropped_undeliverable),
            ("bytes_full", w.dropped_bytes_full),
            ("refused", w.dropped_refused),
        ] {
            t.sample("wspush_webhook_dropped_total", &[("reason", reason)], n);
        }
        t.single(
            "wspush_webhook_posts_failed_total",
            "counter",
            "Webhook POSTs that failed (connect, timeout, non-2xx); retried unless rejected.",
            w.posts_failed,
        );
    }

    t.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.process.rss_bytes,
    );
    t.single(
        "process_open_fds",
        "gauge",
        "Open file descriptors (sockets included).",
        s.process.open_fds,
    );
    t.single(
        "process_max_fds",
        "gauge",
        "The open-files limit.",
        s.process.max_fds,
    );
    t.single(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        s.process.cpu_seconds,
    );
    t.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        s.start_time
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_snapshot() -> NodeSnapshot {
        let metrics = CoreMetrics::default();
        metrics.connects.add(5);
        metrics.disconnected(EndReason::SlowConsumer);
        metrics.disconnected(EndReason::ClientClose);
        metrics.disconnected(EndReason::ClientClose);
        metrics.pushed(3, 100);
        let send = "/api/send_to_client";
        metrics.api_request(send, true, 200, true, Duration::from_micros(50));
        metrics.api_request(send, true, 200, false, Duration::from_millis(3));
        metrics.api_request("/api/nope", false, 404, false, Duration::from_secs(9));
        metrics.api_request("/favicon.ico", false, 404, false, Duration::ZERO);
        let mut core0 = metrics.snapshot(0);
        core0.connections = 2;
        core0.registered_systems = 4;
        let link = LinkStats::default();
        link.connected();
        link.connected();
        link.call_done(true, Duration::from_millis(2));
        link.call_done(false, Duration::from_millis(100));
        core0.links = vec![link.snapshot("10.0.0.2:7900".parse().unwrap(), true)];

        let other = CoreMetrics::default();
        other.pushed(1, 100);
        other.api_request(send, true, 200, true, Duration::from_micros(200));
        let mut core1 = other.snapshot(1);
        core1.connections = 3;
        core1.links = vec![LinkStats::default().snapshot("10.0.0.2:7900".parse().unwrap(), false)];
        NodeSnapshot {
            node: "10.0.0.1:7900".into(),
            version: "9.9.9",
            cluster: true,
            ready: true,
            cores: vec![core0, core1],
            etcd: Some(EtcdSnapshot {
                connected: true,
                sessions: 2,
                keepalive_failures: 1,
                connect_failures: 0,
            }),
            webhook: Some(crate::webhook::Stats {
                accepted: 20,
                delivered: 12,
                posts_failed: 3,
                dropped_queue_full: 1,
                dropped_buffer_full: 4,
                dropped_undeliverable: 2,
                dropped_bytes_full: 5,
                dropped_refused: 6,
            }),
            start_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ..NodeSnapshot::default()
        }
    }

    /// The value of the line that starts with `series ` exactly.
    fn value(text: &str, series: &str) -> String {
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .to_string()
    }

    #[test]
    fn renders_a_snapshot() {
        let text = render(&sample_snapshot());
        assert_eq!(value(&text, r#"wspush_build_info{version="9.9.9"}"#), "1");
        assert_eq!(value(&text, r#"wspush_connections{core="0"}"#), "2");
        assert_eq!(value(&text, r#"wspush_connections{core="1"}"#), "3");
        assert_eq!(value(&text, "wspush_connects_total"), "5");
        assert_eq!(
            value(&text, r#"wspush_disconnects_total{reason="close"}"#),
            "2"
        );
        assert_eq!(
            value(&text, r#"wspush_disconnects_total{reason="slow_consumer"}"#),
            "1"
        );
        assert_eq!(
            value(&text, r#"wspush_disconnects_total{reason="kicked"}"#),
            "0"
        );
        assert_eq!(value(&text, "wspush_frames_pushed_total"), "4");
        assert_eq!(value(&text, "wspush_bytes_pushed_total"), "400");
        assert_eq!(
            value(
                &text,
                r#"wspush_api_requests_total{route="send_to_client",status="200",code="0"}"#
            ),
            "2"
        );
        assert_eq!(
            value(
                &text,
                r#"wspush_api_requests_total{route="send_to_client",status="200",code="-1"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                r#"wspush_api_requests_total{route="unknown",status="404",code="-1"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                r#"wspush_api_requests_total{route="other",status="404",code="-1"}"#
            ),
            "1"
        );
        // Cumulative buckets: 50 us and 200 us and 3 ms.
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    r#"wspush_api_request_duration_seconds_bucket{{route="send_to_client",le="{le}"}}"#
                ),
            )
        };
        assert_eq!(bucket("0.0001"), "1");
        assert_eq!(bucket("0.00025"), "2");
        assert_eq!(bucket("0.0025"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("+Inf"), "3");
        assert_eq!(
            value(
                &text,
                r#"wspush_api_request_duration_seconds_count{route="send_to_client"}"#
            ),
            "3"
        );
        assert_eq!(
            value(
                &text,
                r#"wspush_api_request_duration_seconds_sum{route="send_to_client"}"#
            ),
            "0.00325"
        );
        assert_eq!(
            value(
                &text,
                r#"wspush_api_request_duration_seconds_bucket{route="unknown",le="2.5"}"#
            ),
            "0"
        );
        let peer = r#"{peer="10.0.0.2:7900"}"#;
        assert_eq!(value(&text, &format!("wspush_peer_links_up{peer}")), "1");
        assert_eq!(
            value(&text, &format!("wspush_peer_requests_total{peer}")),
            "2"
        );
        assert_eq!(
            value(&text, &format!("wspush_peer_errors_total{peer}")),
            "1"
        );
        assert_eq!(
            value(&text, &format!("wspush_peer_reconnects_total{peer}")),
            "1"
        );
        assert_eq!(
            value(&text, &format!("wspush_peer_rtt_seconds{peer}")),
            "0.002"
        );
        assert_eq!(value(&text, "wspush_etcd_connected"), "1");
        assert_eq!(value(&text, "wspush_etcd_keepalive_failures_total"), "1");
        assert_eq!(
            value(
                &text,
                "wspush_webhook_dropped_total{reason=\"buffer_full\"}"
            ),
            "4"
        );
        assert_eq!(
            value(&text, "wspush_webhook_events_total{result=\"delivered\"}"),
            "12"
        );
        assert_eq!(value(&text, "wspush_webhook_posts_failed_total"), "3");
        assert_eq!(value(&text, "wspush_systems_registered"), "4");
        assert_eq!(value(&text, "process_start_time_seconds"), "1700000000");
        // Every family is declared once, before its samples, and every sample line belongs to
        // a declared family.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name.to_string()), "{name} twice");
                declared.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = declared.last().expect("sample before any TYPE");
                assert!(
                    name == family || name.strip_prefix(family.as_str()).is_some(),
                    "{name} outside its family {family}"
                );
            }
        }
    }

    #[test]
    fn single_node_has_no_cluster_families() {
        let mut s = sample_snapshot();
        s.cluster = false;
        s.etcd = None;
        s.webhook = None;
        let text = render(&s);
        assert!(!text.contains("wspush_peer_"), "{text}");
        assert!(!text.contains("wspush_etcd_"), "{text}");
        assert!(!text.contains("wspush_webhook_"), "{text}");
    }

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }

    #[test]
    fn merges_systems_over_cores() {
        let a = CoreSnapshot {
            systems: vec![SystemSnapshot {
                system: "app".into(),
                clients: 2,
                groups: vec![("room".into(), 2)],
            }],
            registered: vec!["app".into(), "idle".into()],
            ..CoreSnapshot::default()
        };
        let b = CoreSnapshot {
            systems: vec![SystemSnapshot {
                system: "app".into(),
                clients: 1,
                groups: vec![("room".into(), 1), ("lobby".into(), 1)],
            }],
            ..CoreSnapshot::default()
        };
        let s = NodeSnapshot {
            cores: vec![a, b],
            ..NodeSnapshot::default()
        };
        let systems = s.systems();
        assert_eq!(systems.len(), 2);
        assert_eq!(systems[0].system, "app");
        assert_eq!(systems[0].clients, 3);
        assert_eq!(
            systems[0].groups,
            vec![("lobby".to_string(), 1), ("room".to_string(), 3)]
        );
        assert_eq!(systems[1].system, "idle");
        assert_eq!(systems[1].clients, 0);
    }
}

//! Whether the node is ready, draining or cut off: a few process-wide flags that the cores, the
//! etcd thread and the signal thread set, and `/readyz`, `/ws` and the metrics read.
//!
//! A leaf: it names only std. `runtime` sets the flags as the cores start, as etcd membership
//! comes and goes, and as the drain runs; `net::listener` reads them for `/readyz` and for the
//! 503 of a `/ws` connect while cut off; `ops` reports them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Cores whose listener is accepting, and how many there are in all. Read by `/readyz`.
static ACCEPTING: AtomicUsize = AtomicUsize::new(0);
static CORES: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Cluster mode: whether etcd membership is established. Always true on a single node.
static MEMBERSHIP: AtomicBool = AtomicBool::new(true);
/// Cluster mode: this node has been without membership for LeaseTtl and no peer vouches for the
/// cluster (see `cluster::isolation_verdict`): its clients were closed with 1001 and new
/// WebSocket connects get 503 until membership is back. Written by core 0's isolation loop.
static CUT_OFF: AtomicBool = AtomicBool::new(false);
/// Set by the first SIGTERM/SIGINT, before the cores hear of it, so `/readyz` says 503 at once.
static DRAINING: AtomicBool = AtomicBool::new(false);
/// Whether the one "wspush ready" line was logged.
static READY_LOGGED: AtomicBool = AtomicBool::new(false);
/// The drain's figures, summed over the cores for the one "drain finished" line: clients closed
/// with 1001, and those still there when ShutdownGrace ran out (cut).
static DRAIN_CLIENTS: AtomicUsize = AtomicUsize::new(0);
static DRAIN_CUT: AtomicUsize = AtomicUsize::new(0);
/// Cores whose drain is over; each waits (at most ShutdownGrace) for the others.
static DRAINED_CORES: AtomicUsize = AtomicUsize::new(0);

// ---- readiness ---------------------------------------------------------------------------------

/// True once every core accepts, none is draining, and (cluster) membership is established.
pub fn is_ready() -> bool {
    not_ready_reason().is_none()
}

/// Why `/readyz` says 503, or None when the node is ready. SeqCst: the core that completes
/// ACCEPTING and the etcd thread that sets MEMBERSHIP each check the other's flag after setting
/// their own (see [`log_ready_once`]); with weaker orderings both could miss.
pub fn not_ready_reason() -> Option<&'static str> {
    if DRAINING.load(Ordering::SeqCst) {
        Some("draining")
    } else if ACCEPTING.load(Ordering::SeqCst) != CORES.load(Ordering::SeqCst) {
        Some("cores starting")
    } else if !MEMBERSHIP.load(Ordering::SeqCst) {
        Some("etcd membership not established")
    } else {
        None
    }
}

/// Logs "wspush ready" the first time the node is ready: every core accepting and, in cluster
/// mode, membership established, whichever comes last. Called by both.
pub fn log_ready_once() {
    if is_ready() && !READY_LOGGED.swap(true, Ordering::SeqCst) {
        tracing::info!(cores = CORES.load(Ordering::SeqCst), "wspush ready");
    }
}

/// How many cores the node runs; set once, before they start.
pub fn set_cores(cores: usize) {
    CORES.store(cores, Ordering::Release);
}

/// A core's listener accepts now; returns how many cores accept.
pub fn core_accepting() -> usize {
    ACCEPTING.fetch_add(1, Ordering::SeqCst) + 1
}

/// A core's listener stopped (its control loop ended).
pub fn core_stopped_accepting() {
    ACCEPTING.fetch_sub(1, Ordering::AcqRel);
}

// ---- cluster membership ------------------------------------------------------------------------

/// Cluster mode, at start: membership is not established until the etcd thread says so.
pub fn expect_membership() {
    MEMBERSHIP.store(false, Ordering::Release);
}

/// The etcd thread's news: membership established (`true`) or lost.
pub fn set_membership(up: bool) {
    MEMBERSHIP.store(up, Ordering::SeqCst);
}

/// Whether etcd membership is established (always true on a single node).
pub fn membership_established() -> bool {
    MEMBERSHIP.load(Ordering::SeqCst)
}

/// Whether this node is cut off from its cluster and refuses new WebSocket clients.
pub fn cut_off() -> bool {
    CUT_OFF.load(Ordering::SeqCst)
}

/// Sets (or clears) the cut-off flag; returns what it was.
pub fn set_cut_off(cut: bool) -> bool {
    CUT_OFF.swap(cut, Ordering::SeqCst)
}

// ---- draining ----------------------------------------------------------------------------------

/// The first SIGTERM/SIGINT: `/readyz` says 503 from now on.
pub fn start_draining() {
    DRAINING.store(true, Ordering::SeqCst);
}

/// Whether the drain has started.
pub fn draining() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

/// A core closed `clients` clients with 1001 at the start of its drain.
pub fn drain_closed(clients: usize) {
    DRAIN_CLIENTS.fetch_add(clients, Ordering::Relaxed);
}

/// A core cut `clients` clients that were still there when ShutdownGrace ran out.
pub fn drain_cut(clients: usize) {
    DRAIN_CUT.fetch_add(clients, Ordering::Relaxed);
}

/// The drain's figures over every core: `(closed with 1001, cut)`.
pub fn drain_figures() -> (usize, usize) {
    (
        DRAIN_CLIENTS.load(Ordering::Relaxed),
        DRAIN_CUT.load(Ordering::Relaxed),
    )
}

/// A core's clients are gone (or its grace ran out).
pub fn core_drained() {
    DRAINED_CORES.fetch_add(1, Ordering::SeqCst);
}

/// Whether every core's drain is over.
pub fn all_cores_drained() -> bool {
    DRAINED_CORES.load(Ordering::SeqCst) >= CORES.load(Ordering::SeqCst)
}

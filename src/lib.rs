//! # wspush
//!
//! A WebSocket push server, drop-in compatible with go-websocket's HTTP API, built
//! thread-per-core on glommio.
//!
//! ## Layout, in the order a message travels
//! Dependencies point one way, down this list: a module names only those below it.
//! - [`runtime`]: starts one pinned glommio executor per core, the channel mesh between them,
//!   and the ordered shutdown; each core gets its [`shard::Shard`] and its [`route::Router`].
//! - [`net`]: per-core accept ([`net::listener`]), HTTP heads ([`net::http`]), the WebSocket
//!   handshake ([`net::handshake`]) and the connect's authorisation ([`net::connect`]).
//! - [`ws`]: frames ([`ws::frame`]), the pushed JSON ([`ws::message`]), and one connection's
//!   read loop ([`ws::session`]).
//! - [`api`]: the URL table, request decoding and the handlers; each hands its operation to
//!   the router.
//! - [`route`]: where an operation runs, and nothing else: this core, the other cores
//!   ([`route::mesh`], the `Op`/`Reply` calls), the peer nodes ([`route::Router::broadcast`]
//!   for groups, systems, users; [`route::clients`] for one clientId), and the requests peers
//!   send ([`route::remote`]).
//! - [`shard`]: one core's state: connections, the group and user index and its `*_local`
//!   operations, outbound queues and flusher, known systems. Names neither route nor cluster.
//! - [`cluster`]: the node links ([`cluster::link`], [`cluster::proto`]) and etcd membership.
//! - [`ops`]: `/metrics` (Prometheus) and the status page, gathered from every core through
//!   the router only when asked.
//! - [`webhook`]: connection events queued by the owning core (and group occupancy events by
//!   the group's owner core, [`route::occupancy`]) and POSTed in batches to a system's
//!   `webhookUrl` by side threads, never on a core.
//!
//! Leaves, used from above and naming nothing above them: [`types`] (the shared data:
//! `SystemInfo`, `Target`, `Member`, `StatsPart`, `EndReason`, the history options and a
//! stream's owner), [`counters`] (each core's counters and the side threads' atomics, and their
//! snapshots), [`readiness`] (the ready, draining and cut-off flags behind `/readyz`), [`auth`]
//! (pure checks: `ApiKey`, API
//! signatures, JWT connect tokens), [`ids`] (clientId <-> (node, core, slot, generation),
//! sealed with CryptoKey), [`config`] (`conf/app.ini`, `WSPUSH_*` environment variables and
//! CLI flags, with defaults),
//! [`throttle`] (per-core log budgets) and [`sys`] (the few raw syscalls; all `unsafe` lives
//! there).
//!
//! ## The data paths
//! 1. **Connect**: accept on core C -> read head -> `/ws` handshake -> authorise (token) -> slot
//!    in C's registry -> welcome frame with the sealed clientId -> read loop (pings, pongs,
//!    close; data ignored) -> on exit: the router tells each of its groups (1002), everywhere.
//! 2. **API**: accept -> head + body -> guard (method, SystemId, registered) -> decode -> the
//!    router: this core (direct), another core (an `Op` on the mesh, answered by a `Reply`),
//!    another node (a `RemoteOp` on its link, answered by a `RemoteReply`).
//! 3. **Push**: the JSON text frame is built once; every recipient's queue gets an `Arc` of the
//!    same bytes; a per-core flusher writes each socket's queue with one `sendmsg`.
//! 4. **Group push**: origin core -> its own members, then one `GroupPush` per other core and
//!    one per peer node -> each core -> its members.
//! 5. **Group push with history** (issue 15, `docs/history.md`): origin core -> the one core of
//!    the one node that owns the group's stream ([`route::history`]: a `HistoryPush` op) ->
//!    offset, kept in its ring ([`shard::history`]) -> path 4 from there. A bind with `since`
//!    holds the group's live pushes for that client, fetches the missed ones from the owner,
//!    queues them, then the held ones not already replayed.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod counters;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod net;
pub mod ops;
pub mod readiness;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod sys;
pub mod throttle;
pub mod types;
pub mod webhook;
pub mod ws;

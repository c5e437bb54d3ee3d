//! # wspush
//!
//! A WebSocket push server, drop-in compatible with go-websocket's HTTP API, built
//! thread-per-core on glommio.
//!
//! ## Layout, in the order a message travels
//! - [`config`]: `conf/app.ini` (the original's keys plus ours) and CLI flags, with defaults.
//! - [`runtime`]: starts one pinned glommio executor per core, the channel mesh between them,
//!   and the ordered shutdown.
//! - [`net`]: per-core accept ([`net::listener`]), HTTP heads ([`net::http`]), and the
//!   WebSocket handshake ([`net::handshake`]).
//! - [`ws`]: frames ([`ws::frame`]), the pushed JSON ([`ws::message`]), and one connection's
//!   read loop ([`ws::session`]).
//! - [`ids`]: clientId <-> (node, core, slot, generation), sealed with CryptoKey.
//! - [`api`]: the URL table, request decoding, handlers, and [`api::dispatch`], which routes a
//!   clientId to this core or another one.
//! - [`auth`]: the opt-in checks of issue 7: `ApiKey`, per-system HMAC signatures on the API,
//!   JWT connect tokens on `/ws`.
//! - [`shard`]: the core's own state (registry, groups, systems), its outbound flusher, and the
//!   cross-core messages ([`shard::inbox`]).
//! - [`sys`]: the few raw syscalls; all `unsafe` lives there.
//! - [`ops`]: `/metrics` (Prometheus) and the status page (`/status`, `/status.json`), gathered
//!   from every core's own counters only when asked.
//! - [`webhook`]: connection events (online, offline, bind, unbind) queued by the owning core
//!   and POSTed in batches to a system's `webhookUrl` by side threads, never on a core.
//!
//! ## The data paths
//! 1. **Connect**: accept on core C -> read head -> `/ws` handshake -> slot in C's registry ->
//!    welcome frame with the sealed clientId -> read loop (pings, pongs, close; data ignored) ->
//!    on exit: leave groups, 1002 to each group on every core.
//! 2. **API**: accept -> head + body -> guard (method, SystemId, registered) -> decode -> resolve
//!    the clientId: this core (direct), another core (an `Op` on the mesh, answered by a `Reply`).
//! 3. **Push**: the JSON text frame is built once; every recipient's queue gets an `Arc` of the
//!    same bytes; a per-core flusher writes each socket's queue with one `sendmsg`.
//! 4. **Group push**: origin core -> one `GroupPush` per other core -> each core -> its members.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod net;
pub mod ops;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod sys;
pub mod types;
pub mod webhook;
pub mod ws;

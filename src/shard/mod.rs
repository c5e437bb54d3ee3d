//! The core's own state and everything that mutates it.
//!
//! Each core owns a [`Shard`]: its connection registry, its `(systemId, groupName) -> members`
//! index, its copy of the registered systems, and its outbound flusher. It is `Rc` + `RefCell`
//! and never leaves its thread; other cores reach it only by sending an [`inbox::Op`] over the
//! channel mesh, and read its answer from an [`inbox::Reply`].
//!
//! Ownership contract: a `RefCell` borrow in this module never spans an `.await`.

pub mod conn;
pub mod inbox;
pub mod registry;
pub mod stats;
pub mod system;

use crate::cluster::link::LinkError;
use crate::cluster::proto::{Member, RemoteOp, RemoteReply};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::ids::{ClientAddr, IdCodec};
use crate::ws::frame::{self, SharedFrame};
use crate::ws::message;
use conn::{Conn, EndReason, Flush, WriteState};
use futures_util::future::join_all;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use glommio::{GlommioError, ResourceType};
use inbox::{CoreMsg, Op, Reply};
use indexmap::IndexMap;
use registry::Registry;
use stats::StatsPart;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use system::SystemInfo;

/// Why `register` did not record a system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// Cluster mode: etcd could not answer (the text says so).
    Etcd(String),
    /// `MaxSystems` systems are known already (the text names the key).
    Full(String),
}

/// What a push to several nodes did: the sockets that took the frame on every node that
/// answered, and the peers that did not answer (their clients got nothing).
#[derive(Debug, Default)]
pub struct Fanout {
    pub delivered: usize,
    pub failed: Vec<SocketAddrV4>,
}

/// The answers of a call to every peer, sorted by [`Shard::sort_answers`].
#[derive(Debug, Default)]
struct PeerAnswers {
    replies: Vec<RemoteReply>,
    failed: Vec<SocketAddrV4>,
}

impl PeerAnswers {
    /// A push's outcome: `local` sockets on this node plus every answer's count.
    fn fanout(self, local: usize) -> Fanout {
        Fanout {
            delivered: local + self.replies.iter().map(RemoteReply::count).sum::<usize>(),
            failed: self.failed,
        }
    }
}

/// Connections of one system on this core, and its groups here.
#[derive(Default)]
struct SystemState {
    clients: IndexMap<u32, Rc<Conn>>,
    groups: HashMap<Rc<str>, IndexMap<u32, Rc<Conn>>>,
    /// send_to_user's index: userId -> this core's connections of the system bound with it.
    /// Never holds "" (a connection without a userId is no user's). Changed only by
    /// [`Shard::set_user_id`] and [`Shard::remove_conn`].
    users: HashMap<Rc<str>, IndexMap<u32, Rc<Conn>>>,
}

impl SystemState {
    /// Takes the connection in `slot` out of `user_id`'s entry of the user index.
    fn forget_user(&mut self, user_id: &str, slot: u32) {
        if user_id.is_empty() {
            return;
        }
        if let Some(conns) = self.users.get_mut(user_id) {
            conns.swap_remove(&slot);
            if conns.is_empty() {
                self.users.remove(user_id);
            }
        }
    }
}

/// Size of the per-core read buffer every connection's reads land in.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// How long a core remembers that a systemId a `/ws` connect asked about is not registered
/// (unless it learns the system sooner): a client reconnecting in a loop with a made-up id
/// costs one etcd read per core every 5 s, not one per connect.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// At most this many unregistered systems remembered per core (~100 bytes each); a full table
/// drops its expired entries, or everything.
const UNKNOWN_MAX: usize = 4096;
/// etcd lookups a core makes per second for `/ws` connects of systems it does not know, once
/// it has etcd's list of systems. A registered system is known to every core within the
/// watch's delay, so past that only made-up ids (or a connect racing a fresh register) need a
/// lookup: 20 a second per core is far above that and bounds what random ids cost etcd.
const UNKNOWN_LOOKUPS_PER_SEC: u32 = 20;

/// A push that reaches at least this many of a core's sockets is a broadcast: the flushes right
/// after it wait `FlushWindowUs` to gather the next pushes (see [`Shard::flush_delay`]).
const BROADCAST_SOCKETS: usize = 32;

pub struct Shard {
    pub id: usize,
    pub nr_cores: usize,
    pub config: Arc<Config>,
    /// This node's identity, sealed into clientIds.
    pub node: SocketAddrV4,
    pub ids: IdCodec,
    registry: RefCell<Registry<Conn>>,
    systems: RefCell<HashMap<Rc<str>, SystemState>>,
    /// Registered systems and their options; the same `Arc` on every core.
    registered: RefCell<HashMap<Box<str>, Arc<SystemInfo>>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    flush_scheduled: Cell<bool>,
    /// When this core last queued one push to at least [`BROADCAST_SOCKETS`] of its sockets (a
    /// group, system or user push, or a long send_to_clients): see [`Shard::flush_delay`].
    last_broadcast: Cell<Option<Instant>>,
    mesh: Senders<CoreMsg>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_tag: Cell<u64>,
    next_message: Cell<u64>,
    message_key: u64,
    /// Reads of every connection on this core land here; borrowed only inside one poll.
    pub scratch: RefCell<Box<[u8]>>,
    pub draining: Cell<bool>,
    /// Cluster mode: whether this core has had etcd's list of systems at least once. Until
    /// then a system it does not know may well be registered (with a secret).
    pub systems_synced: Cell<bool>,
    /// Systems a `/ws` connect found unregistered in etcd, and when: see
    /// [`Shard::lookup_system_for_connect`].
    unknown_systems: RefCell<HashMap<Box<str>, Instant>>,
    /// The current one-second window of etcd lookups for `/ws` connects of unknown systems:
    /// its start and the lookups in it.
    unknown_lookups: Cell<(Instant, u32)>,
    /// One log line a second at most for each kind of event a client can repeat at will.
    pub throttles: crate::ops::throttle::CoreThrottles,
    /// HTTP connections this core serves that are not (yet) WebSockets and have sent a
    /// request: what MaxHttpConnsPerCore caps (counted by the listener).
    pub http_conns: Cell<usize>,
    /// The capacity of those connections' read and write buffers, in bytes.
    pub http_buffer_bytes: Cell<usize>,
    ping: SharedFrame,
    /// Cluster mode only: the peer table and links of this core.
    cluster: std::cell::OnceCell<Rc<Cluster>>,
    /// This core's counters, summed over the cores only when `/metrics` is scraped.
    pub metrics: crate::counters::CoreMetrics,
}

impl Shard {
    pub fn new(
        config: Arc<Config>,
        mesh: Senders<CoreMsg>,
        nr_cores: usize,
        node: SocketAddrV4,
    ) -> Shard {
        let id = mesh.peer_id();
        Shard {
            id,
            nr_cores,
            node,
            ids: IdCodec::new(&config.crypto_key),
            config,
            registry: RefCell::new(Registry::default()),
            systems: RefCell::new(HashMap::new()),
            registered: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
            last_broadcast: Cell::new(None),
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_tag: Cell::new(0),
            next_message: Cell::new(0),
            message_key: rand::random(),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            draining: Cell::new(false),
            throttles: Default::default(),
            http_conns: Cell::new(0),
            http_buffer_bytes: Cell::new(0),
            systems_synced: Cell::new(false),
            unknown_systems: RefCell::new(HashMap::new()),
            unknown_lookups: Cell::new((Instant::now(), 0)),
            ping: frame::ping(),
            cluster: std::cell::OnceCell::new(),
            metrics: Default::default(),
        }
    }

    /// A new 16-hex-digit messageId, unique in this process: a bijective mix of (counter, core)
    /// under a random per-process key, so ids do not reveal traffic volume.
    pub fn message_id(&self) -> String {
        let n = self.next_message.get();
        self.next_message.set(n + 1);
        let x = (n << 8 | self.id as u64) ^ self.message_key;
        format!("{:016x}", mix64(x))
    }

    pub fn connection_count(&self) -> usize {
        self.registry.borrow().len()
    }

    pub fn set_cluster(&self, cluster: Rc<Cluster>) {
        if self.cluster.set(cluster).is_err() {
            tracing::error!(core = self.id, "bug: cluster set twice");
        }
    }

    pub fn cluster(&self) -> Option<&Rc<Cluster>> {
        self.cluster.get()
    }

    /// Whether a system is registered (see [`Self::lookup_system`]).
    pub async fn is_registered(self: &Rc<Self>, system: &str) -> Result<bool, String> {
        Ok(self.lookup_system(system).await?.is_some())
    }

    /// A registered system's options, `None` when it is not registered. In cluster mode a name
    /// this core has not heard of yet is looked up in etcd (value and all), so a request racing
    /// the watch is neither wrongly refused nor let through without its secret's checks.
    pub async fn lookup_system(
        self: &Rc<Self>,
        system: &str,
    ) -> Result<Option<Arc<SystemInfo>>, String> {
        if let Some(info) = self.system_info(system) {
            return Ok(Some(info));
        }
        let Some(cluster) = self.cluster() else {
            return Ok(None);
        };
        self.metrics.etcd_lookups.inc();
        let Some(info) = cluster.lookup_system(system).await? else {
            return Ok(None);
        };
        let info = Arc::new(info);
        self.add_system_everywhere(Arc::from(system), info.clone())
            .await;
        // The watch may have delivered it meanwhile: answer with what the core kept.
        Ok(Some(self.system_info(system).unwrap_or(info)))
    }

    /// [`Self::lookup_system`] for a `/ws` connect (cluster mode, a system this core does not
    /// know). Any client can connect with made-up systemIds, and each would cost an etcd read,
    /// so: a system etcd said is not registered is remembered as such for [`UNKNOWN_TTL`]
    /// (`Ok(None)` without asking again; learning the system forgets it at once), and once
    /// etcd's list of systems is here, this core asks about at most
    /// [`UNKNOWN_LOOKUPS_PER_SEC`] unknown systems a second; past that the connect is refused
    /// (`Err`, a 503 with Retry-After) without asking. Before that list arrives every lookup is
    /// needed (a system this core has not heard of may be registered), so none is refused.
    ///
    /// Remembering "not registered" a little too long is safe: such a connect is let in as one
    /// to an unregistered system (the original allows those), and if the system turns out to
    /// have a secret, learning it closes every connection made without a token (1008).
    pub async fn lookup_system_for_connect(
        self: &Rc<Self>,
        system: &str,
    ) -> Result<Option<Arc<SystemInfo>>, String> {
        if let Some(info) = self.system_info(system) {
            return Ok(Some(info));
        }
        let now = Instant::now();
        let known_unknown = (self.unknown_systems.borrow().get(system))
            .is_some_and(|at| now.duration_since(*at) < UNKNOWN_TTL);
        if known_unknown {
            self.metrics.lookups_cached.inc();
            return Ok(None);
        }
        if self.systems_synced.get() {
            let (since, asked) = self.unknown_lookups.get();
            let (since, asked) = if now.duration_since(since) >= Duration::from_secs(1) {
                (now, 0)
            } else {
                (since, asked)
            };
            if asked >= UNKNOWN_LOOKUPS_PER_SEC {
                self.metrics.lookups_limited.inc();
                return Err("too many connects for unknown systems on this core".into());
            }
            self.unknown_lookups.set((since, asked + 1));
        }
        let info = self.lookup_system(system).await?;
        if info.is_none() {
            let mut unknown = self.unknown_systems.borrow_mut();
            if unknown.len() >= UNKNOWN_MAX {
                unknown.retain(|_, at| now.duration_since(*at) < UNKNOWN_TTL);
                if unknown.len() >= UNKNOWN_MAX {
                    unknown.clear();
                }
            }
            unknown.insert(Box::from(system), now);
        }
        Ok(info)
    }

    /// A registered system's options (secret, webhook URL), if this core knows the system.
    pub fn system_info(&self, system: &str) -> Option<Arc<SystemInfo>> {
        self.registered.borrow().get(system).cloned()
    }

    /// Systems learned from etcd (the snapshot after each connect, then the watch). etcd is
    /// the authority here, so a value an operator rewrote there (a rotated secret) replaces
    /// what this core knew.
    pub fn add_systems(self: &Rc<Self>, systems: &[(String, Arc<SystemInfo>)]) {
        self.systems_synced.set(true);
        for (system, info) in systems {
            self.learn_system(system, info.clone(), true);
        }
    }

    async fn add_system_everywhere(self: &Rc<Self>, system: Arc<str>, info: Arc<SystemInfo>) {
        let calls = (0..self.nr_cores).map(|core| {
            self.call(
                core,
                Op::AddSystem {
                    system: system.clone(),
                    info: info.clone(),
                },
            )
        });
        join_all(calls).await;
    }

    /// Records a system's options on this core; without `replace` the first record wins.
    /// Returns whether anything changed.
    ///
    /// The original lets clients connect to systems that are not registered yet, so when a
    /// system gains a secret (or its secret changes), this core's connections of it were never
    /// checked against that secret: they are closed with 1008 and must come back with a token.
    /// A connection verified by a token was verified after its core knew the secret, so it
    /// survives the same record arriving again (an etcd reconnect re-sends every system).
    fn learn_system(self: &Rc<Self>, system: &str, info: Arc<SystemInfo>, replace: bool) -> bool {
        self.unknown_systems.borrow_mut().remove(system);
        let old_secret = {
            let mut registered = self.registered.borrow_mut();
            match registered.get_mut(system) {
                Some(old) if !replace || **old == *info => return false,
                Some(old) => std::mem::replace(old, info.clone()).secret.clone(),
                None => {
                    registered.insert(Box::from(system), info.clone());
                    None
                }
            }
        };
        if info.secret.is_some() && info.secret != old_secret {
            self.close_unverified(system);
        }
        true
    }

    /// Closes (1008) this core's connections of `system`: they connected without a token the
    /// system's secret now demands.
    fn close_unverified(self: &Rc<Self>, system: &str) {
        let conns: Vec<Rc<Conn>> = self
            .systems
            .borrow()
            .get(system)
            .map(|state| state.clients.values().cloned().collect())
            .unwrap_or_default();
        let conns: Vec<Rc<Conn>> = conns
            .into_iter()
            .filter(|c| c.end_reason.get().is_none())
            .collect();
        if !conns.is_empty() {
            tracing::info!(
                core = self.id,
                system,
                connections = conns.len(),
                "closing the connections made without a token: their system now has a secret"
            );
        }
        for conn in conns {
            tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id, system,
                "closing a connection made without a token");
            conn.end_reason.set(Some(EndReason::Kicked));
            self.enqueue_close(&conn, frame::close_code::POLICY, "token required");
            // As close_client: a client that does not answer the close frame is cut.
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_secs(2)).await;
                conn.cut(EndReason::Kicked);
            })
            .detach();
        }
    }

    // ---- connections -------------------------------------------------------------------------

    /// Registers an upgraded socket; returns the connection with its sealed clientId.
    /// Whether this core may take one more WebSocket (MaxConnsPerCore). A refusal is counted
    /// and logged at most once a second with the number refused since the last line.
    pub fn admit_conn(&self, peer: SocketAddr) -> bool {
        let held = self.registry.borrow().len();
        if held < self.config.max_conns_per_core {
            return true;
        }
        self.metrics.connects_refused.inc();
        if let Some(skipped) = self.throttles.conns_full.admit() {
            tracing::warn!(
                core = self.id,
                %peer,
                held,
                refused = skipped + 1,
                "WebSocket refused with 503: MaxConnsPerCore reached on this core"
            );
        }
        false
    }

    pub fn add_conn(&self, stream: TcpStream, system: &str, peer: SocketAddr) -> Rc<Conn> {
        let system: Rc<str> = {
            let systems = self.systems.borrow();
            match systems.get_key_value(system) {
                Some((key, _)) => key.clone(),
                None => Rc::from(system),
            }
        };
        let fd = stream.as_raw_fd();
        // A socket that cannot take a write for this long is as dead as one that sends nothing.
        let _ = stream.set_write_timeout(Some(self.config.pong_timeout));
        let conn = self.registry.borrow_mut().insert(|slot, generation| Conn {
            slot,
            generation,
            client_id: self
                .ids
                .seal(&ClientAddr {
                    node: self.node,
                    core: self.id as u8,
                    slot,
                    generation,
                })
                .into_boxed_str(),
            system: system.clone(),
            peer,
            fd,
            stream: RefCell::new(stream),
            info: RefCell::default(),
            last_seen: Cell::new(Instant::now()),
            out: RefCell::default(),
            write_state: Cell::new(WriteState::Idle),
            end_reason: Cell::new(None),
        });
        self.systems
            .borrow_mut()
            .entry(system)
            .or_default()
            .clients
            .insert(conn.slot, conn.clone());
        self.metrics.connects.inc();
        conn
    }

    /// Removes a connection from every index; returns the groups it was in.
    fn remove_conn(&self, conn: &Rc<Conn>) -> Vec<Rc<str>> {
        self.registry
            .borrow_mut()
            .remove(conn.slot, conn.generation);
        // userId/extend stay: the 1002 pushes that follow carry them.
        let groups = conn
            .info
            .borrow_mut()
            .as_mut()
            .map(|info| std::mem::take(&mut info.groups))
            .unwrap_or_default();
        let mut systems = self.systems.borrow_mut();
        if let Some(state) = systems.get_mut(&conn.system) {
            state.clients.swap_remove(&conn.slot);
            if let Some(info) = conn.info.borrow().as_ref() {
                state.forget_user(&info.user_id, conn.slot);
            }
            for group in &groups {
                if let Some(members) = state.groups.get_mut(group) {
                    members.swap_remove(&conn.slot);
                    if members.is_empty() {
                        state.groups.remove(group);
                    }
                }
            }
            if state.clients.is_empty() && state.groups.is_empty() {
                systems.remove(&conn.system);
            }
        }
        groups
    }

    /// The one exit path of every connection: leave all groups, then tell each group's
    /// remaining members (1002) on every core.
    pub async fn end_conn(self: &Rc<Self>, conn: &Rc<Conn>, reason: EndReason) {
        let groups = self.remove_conn(conn);
        self.metrics.disconnected(reason);
        crate::webhook::conn_event(self, crate::webhook::Kind::Offline, conn, "");
        tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id, ?reason, groups = groups.len(), "client disconnected");
        if groups.is_empty() {
            return;
        }
        let data = conn.member_event_data();
        let system: Arc<str> = Arc::from(&*conn.system);
        for group in groups {
            let frame = message::push_frame(
                &self.message_id(),
                "",
                message::CODE_OFFLINE,
                message::MSG_OFFLINE,
                &data,
            );
            self.push_group(system.clone(), Arc::from(&*group), frame, "group_event")
                .await;
        }
    }

    /// The connection in `slot` if it still has `generation` and belongs to `system`.
    /// Isolation: a client of another system is treated as absent.
    fn find(&self, slot: u32, generation: u32, system: &str) -> Option<Rc<Conn>> {
        let registry = self.registry.borrow();
        let conn = registry.get(slot, generation)?;
        (&*conn.system == system).then(|| conn.clone())
    }

    pub fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.registry.borrow().iter().cloned().collect()
    }

    // ---- outbound ----------------------------------------------------------------------------

    /// Queues a frame for a connection. A full queue closes the connection (slow consumer)
    /// instead of growing or slowing the core. Returns false if the frame was dropped.
    pub fn enqueue(self: &Rc<Self>, conn: &Rc<Conn>, frame: SharedFrame) -> bool {
        if conn.write_state.get() == WriteState::Dead {
            return false;
        }
        {
            let mut out = conn.out.borrow_mut();
            if out.close_after {
                // A close frame is queued: nothing may follow it on the wire.
                return false;
            }
            if !out.push(frame, self.config.queue_frames, self.config.queue_bytes) {
                let (frames, bytes) = (out.len(), out.bytes);
                drop(out);
                if let Some(skipped) = self.throttles.slow_consumer.admit() {
                    tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, frames, bytes,
                        also = skipped, "slow consumer: outbound queue full, closing with 1008");
                }
                self.metrics.queue_full.inc();
                self.drop_slow_consumer(conn);
                return false;
            }
        }
        self.mark_dirty(conn);
        true
    }

    /// Hands the connection to the flusher unless it is already there or waiting to write.
    fn mark_dirty(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.write_state.get() == WriteState::Idle {
            conn.write_state.set(WriteState::Dirty);
            self.dirty.borrow_mut().push(conn.clone());
            if !self.flush_scheduled.replace(true) {
                let shard = self.clone();
                let delay = self.flush_delay();
                glommio::spawn_local(async move {
                    // glommio polls a task spawned into the running task queue at once, inside
                    // this call: without a first await the flush would write this one
                    // connection now, and every enqueue of a push would be a write (and a
                    // task) of its own. Yielding first lets the caller queue the rest of its
                    // frames, so the flush comes after it and writes each socket once.
                    if delay.is_zero() {
                        futures_lite::future::yield_now().await;
                    } else {
                        glommio::timer::sleep(delay).await;
                    }
                    shard.flush_dirty()
                })
                .detach();
            }
        }
    }

    /// How long the next flush waits. A socket write costs the same few microseconds of kernel
    /// time whether it carries one frame or twenty, and while this core is broadcasting (one
    /// push reached at least [`BROADCAST_SOCKETS`] of its sockets within the last 10 windows) the
    /// pushes of the next `FlushWindowUs` go out together, one write per socket for all of
    /// them: on the fan-out benchmark that is 6x the deliveries per second at a lower push
    /// delay (perf/RESULTS.md). Unicast traffic, however heavy, never waits: its frames go to
    /// different sockets, so a window would only delay them.
    fn flush_delay(&self) -> Duration {
        let window = self.config.flush_window;
        match self.last_broadcast.get() {
            Some(at) if !window.is_zero() && at.elapsed() < window * 10 => window,
            _ => Duration::ZERO,
        }
    }

    /// Notes a push that reached `sockets` of this core's connections.
    fn note_fanout(&self, sockets: usize) {
        if sockets >= BROADCAST_SOCKETS {
            self.last_broadcast.set(Some(Instant::now()));
        }
    }

    /// A client that does not read: drop what it has not received, queue a 1008 close in its
    /// place (after a partly written frame, so the wire stays well-formed), and cut the socket
    /// if even that cannot be written within a second.
    fn drop_slow_consumer(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.end_reason.get().is_none() {
            conn.end_reason.set(Some(EndReason::SlowConsumer));
        }
        {
            let mut out = conn.out.borrow_mut();
            out.truncate_to_partial();
            out.push_unbounded(frame::close(frame::close_code::POLICY, "slow consumer"));
            out.close_after = true;
        }
        self.mark_dirty(conn);
        let conn = conn.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            conn.cut(EndReason::SlowConsumer);
        })
        .detach();
    }

    /// Queues a close frame; the socket's write side is shut once it is written. The close
    /// passes the queue limits (a few bytes, and nothing follows it): a queue that is full when
    /// the server closes (a drain, a kick) is still delivered before it, not dropped for a 1008.
    pub fn enqueue_close(self: &Rc<Self>, conn: &Rc<Conn>, code: u16, reason: &str) {
        if conn.write_state.get() == WriteState::Dead || conn.out.borrow().close_after {
            return;
        }
        {
            let mut out = conn.out.borrow_mut();
            out.push_unbounded(frame::close(code, reason));
            out.close_after = true;
        }
        self.mark_dirty(conn);
    }

    /// Writes every dirty connection's queue: what was queued since the last flush goes out in
    /// one `sendmsg` per socket.
    fn flush_dirty(self: &Rc<Self>) {
        self.flush_scheduled.set(false);
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in dirty {
            if conn.write_state.get() != WriteState::Dirty {
                continue;
            }
            match conn.flush_now(&self.metrics.socket_writes) {
                Flush::Drained => conn.write_state.set(WriteState::Idle),
                Flush::WouldBlock => {
                    conn.write_state.set(WriteState::Blocked);
                    let shard = self.clone();
                    glommio::spawn_local(async move { shard.write_blocked(conn).await }).detach();
                }
                Flush::Failed => conn.cut(EndReason::Reset),
            }
        }
    }

    /// A connection whose socket buffer is full: wait for writability, then drain.
    async fn write_blocked(self: Rc<Self>, conn: Rc<Conn>) {
        use futures_lite::AsyncWrite;
        use std::pin::Pin;
        use std::task::Poll;
        loop {
            // Let glommio wait for writability by handing it the rest of the front frame.
            let wrote = futures_lite::future::poll_fn(|cx| {
                let front = {
                    let out = conn.out.borrow();
                    match out.front() {
                        Some(f) => (f.clone(), out.offset),
                        None => return Poll::Ready(Ok(0)),
                    }
                };
                let mut stream = conn.stream.borrow_mut();
                Pin::new(&mut *stream).poll_write(cx, &front.0[front.1..])
            })
            .await;
            if conn.write_state.get() == WriteState::Dead {
                return;
            }
            match wrote {
                Ok(n) => conn.out.borrow_mut().advance(n),
                Err(e) => {
                    if let Some(skipped) = self.throttles.slow_consumer.admit() {
                        tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, error = %e,
                            also = skipped, "socket not writable in time, dropping connection");
                    }
                    conn.cut(EndReason::SlowConsumer);
                    return;
                }
            }
            match conn.flush_now(&self.metrics.socket_writes) {
                Flush::Drained => {
                    conn.write_state.set(WriteState::Idle);
                    return;
                }
                Flush::WouldBlock => continue,
                Flush::Failed => {
                    conn.cut(EndReason::Reset);
                    return;
                }
            }
        }
    }

    /// Pings the connections of slice `slice` of `slices` (by slot) and drops those silent for
    /// longer than PongTimeout. Called once per HeartbeatInterval/slices, so each connection is
    /// visited once per interval and the pings of a core are spread over it.
    pub fn heartbeat(self: &Rc<Self>, slice: u32, slices: u32) {
        let now = Instant::now();
        let due: Vec<Rc<Conn>> = self
            .registry
            .borrow()
            .iter()
            .filter(|conn| conn.slot % slices == slice)
            .cloned()
            .collect();
        for conn in due {
            if now.duration_since(conn.last_seen.get()) > self.config.pong_timeout {
                tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id,
                    "no pong within PongTimeout, dropping connection");
                conn.cut(EndReason::PongTimeout);
            } else {
                self.enqueue(&conn, self.ping.clone());
            }
        }
    }

    // ---- local operations (this core's state only) -------------------------------------------

    fn deliver_local(
        self: &Rc<Self>,
        slot: u32,
        generation: u32,
        system: &str,
        f: SharedFrame,
    ) -> bool {
        match self.find(slot, generation, system) {
            Some(conn) => {
                let bytes = f.len();
                let queued = self.enqueue(&conn, f);
                self.metrics.pushed(queued as usize, bytes);
                queued
            }
            None => false,
        }
    }

    fn group_push_local(self: &Rc<Self>, system: &str, group: &str, f: &SharedFrame) -> usize {
        let members: Vec<Rc<Conn>> = {
            let systems = self.systems.borrow();
            match systems.get(system).and_then(|s| s.groups.get(group)) {
                Some(members) => members.values().cloned().collect(),
                None => return 0,
            }
        };
        self.push_to(&members, f)
    }

    fn online_list_local(&self, system: &str, group: &str) -> Vec<String> {
        let systems = self.systems.borrow();
        systems
            .get(system)
            .and_then(|s| s.groups.get(group))
            .map(|members| members.values().map(|c| c.client_id.to_string()).collect())
            .unwrap_or_default()
    }

    fn close_local(self: &Rc<Self>, slot: u32, generation: u32, system: &str) -> bool {
        let Some(conn) = self.find(slot, generation, system) else {
            return false;
        };
        if conn.end_reason.get().is_some() {
            return true;
        }
        tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id, "closing client on API request");
        conn.end_reason.set(Some(EndReason::Kicked));
        self.enqueue_close(&conn, frame::close_code::NORMAL, "closed by server");
        // The client should answer the close frame and hang up; if it does not, cut it.
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(2)).await;
            conn.cut(EndReason::Kicked);
        })
        .detach();
        true
    }

    /// Sets the connection's userId and keeps send_to_user's index in step with it: besides a
    /// disconnect, the one place that index changes. bind_to_group calls it (the latest bind's
    /// userId wins, as in the original), and so may anything else that learns a connection's
    /// user (a connect token). An empty userId takes the connection out of the index. Runs on
    /// the connection's own core; a connection already removed only gets the field set.
    pub fn set_user_id(&self, conn: &Rc<Conn>, user_id: &str) {
        let old = {
            let mut info = conn.info.borrow_mut();
            if info.as_ref().map_or("", |i| i.user_id.as_str()) == user_id {
                return;
            }
            let info = info.get_or_insert_with(Box::default);
            std::mem::replace(&mut info.user_id, user_id.to_string())
        };
        let mut systems = self.systems.borrow_mut();
        let Some(state) = systems.get_mut(&conn.system) else {
            return;
        };
        if !state
            .clients
            .get(&conn.slot)
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            return;
        }
        state.forget_user(&old, conn.slot);
        if user_id.is_empty() {
            return;
        }
        match state.users.get_mut(user_id) {
            Some(conns) => {
                conns.insert(conn.slot, conn.clone());
            }
            None => {
                let mut conns = IndexMap::new();
                conns.insert(conn.slot, conn.clone());
                state.users.insert(Rc::from(user_id), conns);
            }
        }
    }

    /// unbind_from_group: takes `conn` out of `group` (it stays connected and keeps its userId
    /// and extend), then tells the group's remaining members on every node with a 1003. False,
    /// and nothing pushed, when it was not a member. The one unbind path: the API's, and any
    /// other caller's.
    pub async fn unbind_from_group(self: &Rc<Self>, conn: &Rc<Conn>, group: Arc<str>) -> bool {
        if !self.leave_group_local(conn, &group) {
            return false;
        }
        crate::webhook::conn_event(self, crate::webhook::Kind::Unbind, conn, &group);
        tracing::debug!(client = %conn.client_id, core = self.id, group = %group, "client left a group");
        let frame = message::push_frame(
            &self.message_id(),
            "",
            message::CODE_LEFT,
            message::MSG_LEFT,
            &conn.member_event_data(),
        );
        self.push_group(Arc::from(&*conn.system), group, frame, "group_event")
            .await;
        true
    }

    /// Removes `conn` from `group` on this core; false if it was not a member.
    fn leave_group_local(&self, conn: &Rc<Conn>, group: &str) -> bool {
        {
            let mut info = conn.info.borrow_mut();
            let Some(info) = info.as_mut() else {
                return false;
            };
            let Some(at) = info.groups.iter().position(|g| &**g == group) else {
                return false;
            };
            info.groups.remove(at);
        }
        let mut systems = self.systems.borrow_mut();
        if let Some(state) = systems.get_mut(&conn.system) {
            if let Some(members) = state.groups.get_mut(group) {
                members.swap_remove(&conn.slot);
                if members.is_empty() {
                    state.groups.remove(group);
                }
            }
        }
        true
    }

    /// Connected and not on its way out (closing, cut, or dropped as a slow consumer).
    fn is_online_local(&self, slot: u32, generation: u32, system: &str) -> bool {
        self.find(slot, generation, system)
            .is_some_and(|conn| conn.end_reason.get().is_none())
    }

    /// Queues `f` to each of `conns`; returns how many took it.
    fn push_to(self: &Rc<Self>, conns: &[Rc<Conn>], f: &SharedFrame) -> usize {
        let queued = conns
            .iter()
            .filter(|conn| self.enqueue(conn, f.clone()))
            .count();
        self.metrics.pushed(queued, f.len());
        self.note_fanout(queued);
        queued
    }

    /// The clients of `pick(system's state)` on this core. Copied out (one `Vec` per push, not
    /// one allocation per recipient) so no borrow of the index is held while queuing.
    fn conns_of(
        &self,
        system: &str,
        pick: impl FnOnce(&SystemState) -> Option<&IndexMap<u32, Rc<Conn>>>,
    ) -> Vec<Rc<Conn>> {
        let systems = self.systems.borrow();
        systems
            .get(system)
            .and_then(pick)
            .map(|conns| conns.values().cloned().collect())
            .unwrap_or_default()
    }

    fn system_push_local(self: &Rc<Self>, system: &str, f: &SharedFrame) -> usize {
        let conns = self.conns_of(system, |s| Some(&s.clients));
        self.push_to(&conns, f)
    }

    fn user_push_local(self: &Rc<Self>, system: &str, user_id: &str, f: &SharedFrame) -> usize {
        let conns = self.conns_of(system, |s| s.users.get(user_id));
        self.push_to(&conns, f)
    }

    fn presence_local(&self, system: &str, group: &str) -> Vec<Member> {
        let systems = self.systems.borrow();
        let Some(members) = systems.get(system).and_then(|s| s.groups.get(group)) else {
            return Vec::new();
        };
        members
            .values()
            .map(|conn| {
                let info = conn.info.borrow();
                let (user_id, extend) = info
                    .as_ref()
                    .map_or(("", ""), |i| (i.user_id.as_str(), i.extend.as_str()));
                Member {
                    client_id: conn.client_id.to_string(),
                    user_id: user_id.to_string(),
                    extend: extend.to_string(),
                }
            })
            .collect()
    }

    fn stats_local(&self, system: &str) -> StatsPart {
        let systems = self.systems.borrow();
        let Some(state) = systems.get(system) else {
            return StatsPart::default();
        };
        StatsPart {
            clients: state.clients.len() as u64,
            groups: state.groups.keys().map(|g| stats::name_hash(g)).collect(),
            users: state.users.keys().map(|u| stats::name_hash(u)).collect(),
            ..StatsPart::default()
        }
    }

    /// Sets user data and joins the group. `Some(true)`: first bind (announce it), `Some(false)`:
    /// already a member, `None`: no such client, `Err`: the client is in MaxGroupsPerClient
    /// groups already (nothing changed).
    fn bind_local(
        &self,
        slot: u32,
        generation: u32,
        system: &str,
        group: &str,
        user_id: String,
        extend: String,
    ) -> Result<Option<(Rc<Conn>, bool)>, String> {
        let Some(conn) = self.find(slot, generation, system) else {
            return Ok(None);
        };
        let member = {
            let mut info = conn.info.borrow_mut();
            let info = info.get_or_insert_with(Box::default);
            let member = info.groups.iter().any(|g| &**g == group);
            let most = self.config.max_groups_per_client;
            if !member && info.groups.len() >= most {
                tracing::debug!(client = %conn.client_id, core = self.id, group, "bind_to_group refused: MaxGroupsPerClient reached");
                return Err(format!(
                    "client is in {most} groups already, the MaxGroupsPerClient limit"
                ));
            }
            info.extend = extend;
            member
        };
        // As the original: the latest bind's userId/extend win, even for a group already joined.
        self.set_user_id(&conn, &user_id);
        if member {
            return Ok(Some((conn, false)));
        }
        let mut info = conn.info.borrow_mut();
        let info = info.get_or_insert_with(Box::default);
        let mut systems = self.systems.borrow_mut();
        let state = systems.entry(conn.system.clone()).or_default();
        let group: Rc<str> = match state.groups.get_key_value(group) {
            Some((key, _)) => key.clone(),
            None => Rc::from(group),
        };
        state
            .groups
            .entry(group.clone())
            .or_default()
            .insert(conn.slot, conn.clone());
        info.groups.push(group);
        Ok(Some((conn.clone(), true)))
    }

    // ---- cross-core --------------------------------------------------------------------------

    /// Runs `op` on core `core` and waits for its answer (local fast path first).
    pub async fn call(self: &Rc<Self>, core: usize, op: Op) -> Reply {
        if core == self.id {
            return match self.execute_sync(op) {
                Ok(reply) => reply,
                Err(op) => Box::pin(self.clone().execute_async(op)).await,
            };
        }
        if core >= self.nr_cores {
            return Reply::Done(false);
        }
        let (tx, rx) = local_channel::new_bounded(1);
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        self.pending.borrow_mut().insert(tag, tx);
        let msg = CoreMsg::Request {
            from: self.id,
            tag,
            op,
        };
        self.metrics.core_requests.inc();
        if self.mesh.send_to(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&tag);
            return Reply::Unreachable;
        }
        rx.recv().await.unwrap_or(Reply::Unreachable)
    }

    /// Queues `frame` to every member of the group on every core of this node; returns, when
    /// every core has queued it, how many sockets took it.
    pub async fn push_group_node(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
    ) -> usize {
        let remote = (0..self.nr_cores).filter(|&c| c != self.id).map(|core| {
            self.call(
                core,
                Op::GroupPush {
                    system: system.clone(),
                    group: group.clone(),
                    frame: frame.clone(),
                },
            )
        });
        let remote = join_all(remote);
        let local = self.group_push_local(&system, &group, &frame);
        local + remote.await.iter().map(Reply::count).sum::<usize>()
    }

    /// [`Self::push_group_node`] on this node and one `GroupPush` to every peer node. `what`
    /// names the caller for the peer-failure count (`send_to_group`, `group_event`).
    pub async fn push_group(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
        what: &'static str,
    ) -> Fanout {
        let Some(cluster) = self.cluster() else {
            let delivered = self.push_group_node(system, group, frame).await;
            return Fanout {
                delivered,
                failed: Vec::new(),
            };
        };
        let peers = cluster.peers();
        let (system_name, group_name) = (system.to_string(), group.to_string());
        let remote = peers.iter().map(|&addr| {
            cluster.call(
                addr,
                RemoteOp::GroupPush {
                    system: system_name.clone(),
                    group: group_name.clone(),
                    frame: frame.to_vec(),
                },
            )
        });
        let (local, answers) = futures_util::future::join(
            self.push_group_node(system, group, frame.clone()),
            join_all(remote),
        )
        .await;
        let answers = self.sort_answers(&peers, answers, what);
        Fanout {
            delivered: local
                + answers
                    .replies
                    .iter()
                    .map(RemoteReply::count)
                    .sum::<usize>(),
            failed: answers.failed,
        }
    }

    /// Every core's members of a group on this node (scatter-gather).
    pub async fn online_list_node(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
    ) -> Vec<String> {
        let remote = (0..self.nr_cores).filter(|&c| c != self.id).map(|core| {
            self.call(
                core,
                Op::OnlineList {
                    system: system.clone(),
                    group: group.clone(),
                },
            )
        });
        let answers = join_all(remote).await;
        let mut list = self.online_list_local(&system, &group);
        for answer in answers {
            if let Reply::List(more) = answer {
                list.extend(more);
            }
        }
        list
    }

    /// Members of a group on every node; a peer that does not answer in time is logged and left
    /// out rather than holding the answer.
    pub async fn online_list(self: &Rc<Self>, system: Arc<str>, group: Arc<str>) -> Vec<String> {
        let Some(cluster) = self.cluster() else {
            return self.online_list_node(system, group).await;
        };
        let peers = cluster.peers();
        let (system_name, group_name) = (system.to_string(), group.to_string());
        let remote = peers.iter().map(|&addr| {
            cluster.call(
                addr,
                RemoteOp::OnlineList {
                    system: system_name.clone(),
                    group: group_name.clone(),
                },
            )
        });
        let (mut list, answers) =
            futures_util::future::join(self.online_list_node(system, group), join_all(remote))
                .await;
        for answer in self
            .sort_answers(&peers, answers, "get_online_list")
            .replies
        {
            if let RemoteReply::List(more) = answer {
                list.extend(more);
            }
        }
        list
    }

    /// Runs `make()` on every core of this node, this one included, all at once; the answers
    /// in core order.
    async fn on_every_core(self: &Rc<Self>, make: impl Fn() -> Op) -> Vec<Reply> {
        join_all((0..self.nr_cores).map(|core| self.call(core, make()))).await
    }

    /// Runs `op` on every peer node (none outside cluster mode), all at once: the answers of
    /// those that gave one, and the peers that did not (see [`Self::sort_answers`]).
    async fn on_every_peer(&self, op: RemoteOp, what: &'static str) -> PeerAnswers {
        let Some(cluster) = self.cluster() else {
            return PeerAnswers::default();
        };
        let peers = cluster.peers();
        let answers = join_all(peers.iter().map(|&addr| cluster.call(addr, op.clone()))).await;
        self.sort_answers(&peers, answers, what)
    }

    /// Splits the answers of `peers` (in their order) into replies and failures: no answer
    /// (unreachable, past RpcTimeoutMs) or a `Failed` one (the peer could not run the op).
    /// Each failure is counted and logged by [`Self::peer_failed`].
    fn sort_answers(
        &self,
        peers: &[SocketAddrV4],
        answers: Vec<Result<RemoteReply, LinkError>>,
        what: &'static str,
    ) -> PeerAnswers {
        let mut sorted = PeerAnswers::default();
        for (&addr, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(RemoteReply::Failed(why)) => {
                    self.peer_failed(addr, what, &why);
                    sorted.failed.push(addr);
                }
                Ok(reply) => sorted.replies.push(reply),
                Err(e) => {
                    self.peer_failed(addr, what, &e);
                    sorted.failed.push(addr);
                }
            }
        }
        sorted
    }

    /// A call to a peer that got no answer: its part of the request was not done (issue 12:
    /// the caller learns it from `X-Wspush-Delivered` and `failedNodes`, the operator from
    /// this). Counted by route in `/metrics` (`wspush_peer_call_failures_total`) and logged
    /// at WARN, at most one line a second per core with the number left out since: a dead peer
    /// fails every request for up to LeaseTtl, until it leaves the peer table.
    pub fn peer_failed(
        &self,
        peer: SocketAddrV4,
        what: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.peer_call_failed(what);
        if let Some(skipped) = self.throttles.peer_failed.admit() {
            tracing::warn!(%peer, core = self.id, route = what, %error, also = skipped,
                "call to a peer node failed: its part of the request was not done");
        }
    }

    /// send_to_system on this node: every client of the system on every core. Returns how many
    /// took the frame.
    pub async fn push_system_node(
        self: &Rc<Self>,
        system: &Arc<str>,
        frame: &SharedFrame,
    ) -> usize {
        let answers = self
            .on_every_core(|| Op::SystemPush {
                system: system.clone(),
                frame: frame.clone(),
            })
            .await;
        answers.iter().map(Reply::count).sum()
    }

    /// send_to_system: every client of the system on every node.
    pub async fn push_system(self: &Rc<Self>, system: Arc<str>, frame: SharedFrame) -> Fanout {
        let op = RemoteOp::SystemPush {
            system: system.to_string(),
            frame: frame.to_vec(),
        };
        let (local, remote) = futures_util::future::join(
            self.push_system_node(&system, &frame),
            self.on_every_peer(op, "send_to_system"),
        )
        .await;
        remote.fanout(local)
    }

    /// send_to_user on this node: the system's connections bound with `user_id`, every core.
    pub async fn push_user_node(
        self: &Rc<Self>,
        system: &Arc<str>,
        user_id: &Arc<str>,
        frame: &SharedFrame,
    ) -> usize {
        let answers = self
            .on_every_core(|| Op::UserPush {
                system: system.clone(),
                user_id: user_id.clone(),
                frame: frame.clone(),
            })
            .await;
        answers.iter().map(Reply::count).sum()
    }

    /// send_to_user: the system's connections bound with `user_id` on every node.
    pub async fn push_user(
        self: &Rc<Self>,
        system: Arc<str>,
        user_id: Arc<str>,
        frame: SharedFrame,
    ) -> Fanout {
        let op = RemoteOp::UserPush {
            system: system.to_string(),
            user_id: user_id.to_string(),
            frame: frame.to_vec(),
        };
        let (local, remote) = futures_util::future::join(
            self.push_user_node(&system, &user_id, &frame),
            self.on_every_peer(op, "send_to_user"),
        )
        .await;
        remote.fanout(local)
    }

    /// The group's members on this node with their user data.
    pub async fn presence_node(
        self: &Rc<Self>,
        system: &Arc<str>,
        group: &Arc<str>,
    ) -> Vec<Member> {
        let answers = self
            .on_every_core(|| Op::Presence {
                system: system.clone(),
                group: group.clone(),
            })
            .await;
        let mut list = Vec::new();
        for answer in answers {
            if let Reply::Members(more) = answer {
                list.extend(more);
            }
        }
        list
    }

    /// get_group_presence: the group's members on every node with their user data.
    pub async fn group_presence(self: &Rc<Self>, system: Arc<str>, group: Arc<str>) -> Vec<Member> {
        let op = RemoteOp::Presence {
            system: system.to_string(),
            group: group.to_string(),
        };
        let (mut list, remote) = futures_util::future::join(
            self.presence_node(&system, &group),
            self.on_every_peer(op, "get_group_presence"),
        )
        .await;
        for answer in remote.replies {
            if let RemoteReply::Members(more) = answer {
                list.extend(more);
            }
        }
        list
    }

    /// This node's share of get_system_stats, normalized (see [`stats`]).
    pub async fn stats_node(self: &Rc<Self>, system: &Arc<str>) -> StatsPart {
        let answers = self
            .on_every_core(|| Op::Stats {
                system: system.clone(),
            })
            .await;
        let mut total = StatsPart::default();
        for answer in answers {
            if let Reply::Stats(part) = answer {
                total.merge(part);
            }
        }
        total.normalize();
        total
    }

    /// get_system_stats: clients summed over the cluster, groups and users as distinct names
    /// across every node (a group with members on two nodes counts once).
    pub async fn system_stats(self: &Rc<Self>, system: Arc<str>) -> stats::SystemStats {
        let op = RemoteOp::Stats {
            system: system.to_string(),
        };
        let (mut total, remote) = futures_util::future::join(
            self.stats_node(&system),
            self.on_every_peer(op, "get_system_stats"),
        )
        .await;
        for answer in remote.replies {
            if let RemoteReply::Stats(part) = answer {
                total.merge(part);
            }
        }
        total.normalize();
        total.counts()
    }

    /// Queues `frame` to the clients `per_core[core]` of `system`, one `Deliver` per core that
    /// has any, all cores at once. Returns how many were reached.
    pub async fn deliver_on_cores(
        self: &Rc<Self>,
        per_core: Vec<Vec<(u32, u32)>>,
        system: &Arc<str>,
        frame: &SharedFrame,
    ) -> usize {
        let calls = per_core
            .into_iter()
            .enumerate()
            .filter(|(_, targets)| !targets.is_empty())
            .map(|(core, targets)| {
                self.call(
                    core,
                    Op::Deliver {
                        targets,
                        system: system.clone(),
                        frame: frame.clone(),
                    },
                )
            });
        join_all(calls)
            .await
            .into_iter()
            .map(|r| if let Reply::Count(n) = r { n } else { 0 })
            .sum()
    }

    /// Closes every client of this core with 1001 (GOING_AWAY), as a drain does, because the
    /// node is cut off from its cluster: the clients reconnect (through the balancer) to a node
    /// the others can reach. Returns how many.
    pub fn give_up_clients(self: &Rc<Self>) -> usize {
        let mut closed = 0;
        for conn in self.all_conns() {
            // One already on its way out (an earlier sweep, a kick) is not counted again.
            if conn.end_reason.get().is_some() {
                continue;
            }
            conn.end_reason.set(Some(EndReason::CutOff));
            self.enqueue_close(
                &conn,
                crate::ws::frame::close_code::GOING_AWAY,
                "node cut off from the cluster",
            );
            closed += 1;
        }
        closed
    }

    /// Runs a request from another node (`from`, proven by the link's handshake). Ops are
    /// node-local here: the sender addressed every node it meant itself.
    pub async fn execute_remote(self: &Rc<Self>, from: SocketAddrV4, op: RemoteOp) -> RemoteReply {
        let valid = |core: u8| (core as usize) < self.nr_cores;
        match op {
            RemoteOp::Deliver {
                system,
                targets,
                frame,
            } => {
                let system: Arc<str> = Arc::from(system);
                let frame: SharedFrame = Arc::from(frame);
                let mut per_core: Vec<Vec<(u32, u32)>> = vec![Vec::new(); self.nr_cores];
                for t in targets.iter().filter(|t| valid(t.core)) {
                    per_core[t.core as usize].push((t.slot, t.generation));
                }
                let reached = self.deliver_on_cores(per_core, &system, &frame).await;
                RemoteReply::Count(reached as u32)
            }
            RemoteOp::Bind {
                target,
                system,
                group,
                user_id,
                extend,
            } if valid(target.core) => {
                let op = Op::Bind {
                    slot: target.slot,
                    generation: target.generation,
                    system: Arc::from(system),
                    group: Arc::from(group),
                    user_id,
                    extend,
                };
                match self.call(target.core as usize, op).await {
                    Reply::Refused(why) => RemoteReply::Refused(why),
                    reply => RemoteReply::Done(reply.found()),
                }
            }
            RemoteOp::GroupPush {
                system,
                group,
                frame,
            } => {
                let reached = self
                    .push_group_node(Arc::from(system), Arc::from(group), Arc::from(frame))
                    .await;
                RemoteReply::Count(reached as u32)
            }
            RemoteOp::OnlineList { system, group } => RemoteReply::List(
                self.online_list_node(Arc::from(system), Arc::from(group))
                    .await,
            ),
            RemoteOp::Close { target, system } if valid(target.core) => {
                let op = Op::Close {
                    slot: target.slot,
                    generation: target.generation,
                    system: Arc::from(system),
                };
                RemoteReply::Done(self.call(target.core as usize, op).await.found())
            }
            RemoteOp::IsOnline { target, system } if valid(target.core) => {
                let op = Op::IsOnline {
                    slot: target.slot,
                    generation: target.generation,
                    system: Arc::from(system),
                };
                RemoteReply::Done(self.call(target.core as usize, op).await.found())
            }
            RemoteOp::Unbind {
                target,
                system,
                group,
            } if valid(target.core) => {
                let op = Op::Unbind {
                    slot: target.slot,
                    generation: target.generation,
                    system: Arc::from(system),
                    group: Arc::from(group),
                };
                RemoteReply::Done(self.call(target.core as usize, op).await.found())
            }
            RemoteOp::SystemPush { system, frame } => {
                let reached = self
                    .push_system_node(&Arc::from(system), &Arc::from(frame))
                    .await;
                RemoteReply::Count(reached as u32)
            }
            RemoteOp::UserPush {
                system,
                user_id,
                frame,
            } => {
                let reached = self
                    .push_user_node(&Arc::from(system), &Arc::from(user_id), &Arc::from(frame))
                    .await;
                RemoteReply::Count(reached as u32)
            }
            RemoteOp::Presence { system, group } => RemoteReply::Members(
                self.presence_node(&Arc::from(system), &Arc::from(group))
                    .await,
            ),
            RemoteOp::Stats { system } => {
                let mut part = self.stats_node(&Arc::from(system)).await;
                part.cap(stats::MAX_HASHES);
                RemoteReply::Stats(part)
            }
            RemoteOp::Membership => RemoteReply::Membership {
                established: crate::readiness::membership_established(),
                lists_you: self.cluster().is_some_and(|c| c.is_peer(&from)),
            },
            RemoteOp::Bind { .. }
            | RemoteOp::Close { .. }
            | RemoteOp::IsOnline { .. }
            | RemoteOp::Unbind { .. } => RemoteReply::Done(false),
        }
    }

    /// Registers a system. Single node: core 0 is the single writer, so two concurrent
    /// registrations of one name cannot both succeed. Cluster: an etcd transaction decides, then
    /// every core here learns it at once (the watch tells the other nodes). Ok(false): it
    /// already existed; Err: etcd could not be reached, or `MaxSystems` are known already.
    ///
    /// The limit counts the systems this node knows: core 0's table on a single node; in a
    /// cluster, this core's copy of what etcd holds (snapshot and watch), checked before the
    /// transaction. Nodes racing near the limit may pass it by a few; it bounds memory, not an
    /// exact count. A name already known is answered "already registered", never "full".
    pub async fn register(
        self: &Rc<Self>,
        system: Arc<str>,
        info: Arc<SystemInfo>,
    ) -> Result<bool, RegisterError> {
        let Some(cluster) = self.cluster() else {
            return match self.call(0, Op::Register { system, info }).await {
                Reply::Refused(why) => Err(RegisterError::Full(why)),
                reply => Ok(reply.found()),
            };
        };
        if self.system_info(&system).is_some() {
            return Ok(false);
        }
        self.check_room()?;
        let created = cluster
            .register(&system, &info)
            .await
            .map_err(RegisterError::Etcd)?;
        if created {
            tracing::info!(system = %system, secret = info.secret.is_some(), "system registered in etcd");
            self.add_system_everywhere(system, info).await;
        }
        Ok(created)
    }

    /// Whether one more system fits under `MaxSystems` on this core's count.
    fn check_room(&self) -> Result<(), RegisterError> {
        let known = self.registered.borrow().len();
        let most = self.config.max_systems;
        if known < most {
            return Ok(());
        }
        if let Some(skipped) = self.throttles.api_refused.admit() {
            tracing::warn!(
                core = self.id,
                known,
                also = skipped,
                "register refused: MaxSystems"
            );
        }
        Err(RegisterError::Full(format!(
            "{known} systems are registered, MaxSystems = {most}: no more can be registered"
        )))
    }

    /// This core's counters and state for `/metrics`; with `detail`, also its systems and
    /// groups (and, on core 0, the registered names) for `/status.json`.
    fn metrics_snapshot(&self, detail: bool) -> crate::counters::CoreSnapshot {
        use crate::counters::SystemSnapshot;
        let mut s = self.metrics.snapshot(self.id);
        s.connections = self.registry.borrow().len() as u64;
        s.http_connections = self.http_conns.get() as u64;
        s.http_buffer_bytes = self.http_buffer_bytes.get() as u64;
        s.registered_systems = self.registered.borrow().len() as u64;
        if let Some(cluster) = self.cluster() {
            s.links = cluster.link_stats();
        }
        if detail {
            s.systems = (self.systems.borrow().iter())
                .map(|(name, state)| SystemSnapshot {
                    system: name.to_string(),
                    clients: state.clients.len() as u64,
                    groups: (state.groups.iter())
                        .map(|(g, members)| (g.to_string(), members.len() as u64))
                        .collect(),
                })
                .collect();
            if self.id == 0 {
                let registered = self.registered.borrow();
                s.registered = registered.keys().map(|k| k.to_string()).collect();
            }
        }
        s
    }

    /// Ops that complete without waiting; `Err(op)` for those that must.
    fn execute_sync(self: &Rc<Self>, op: Op) -> Result<Reply, Op> {
        Ok(match op {
            Op::Deliver {
                targets,
                system,
                frame,
            } => {
                let queued = targets
                    .into_iter()
                    .filter(|&(slot, generation)| {
                        self.deliver_local(slot, generation, &system, frame.clone())
                    })
                    .count();
                self.note_fanout(queued);
                Reply::Count(queued)
            }
            Op::GroupPush {
                system,
                group,
                frame,
            } => Reply::Count(self.group_push_local(&system, &group, &frame)),
            Op::OnlineList { system, group } => {
                Reply::List(self.online_list_local(&system, &group))
            }
            Op::Close {
                slot,
                generation,
                system,
            } => Reply::Done(self.close_local(slot, generation, &system)),
            Op::AddSystem { system, info } => {
                self.learn_system(&system, info, false);
                Reply::Done(true)
            }
            Op::IsOnline {
                slot,
                generation,
                system,
            } => Reply::Done(self.is_online_local(slot, generation, &system)),
            Op::SystemPush { system, frame } => {
                Reply::Count(self.system_push_local(&system, &frame))
            }
            Op::UserPush {
                system,
                user_id,
                frame,
            } => Reply::Count(self.user_push_local(&system, &user_id, &frame)),
            Op::Presence { system, group } => Reply::Members(self.presence_local(&system, &group)),
            Op::Stats { system } => Reply::Stats(self.stats_local(&system)),
            Op::Metrics { detail } => Reply::Metrics(Box::new(self.metrics_snapshot(detail))),
            Op::GiveUpClients => Reply::Count(self.give_up_clients()),
            op @ (Op::Bind { .. } | Op::Register { .. } | Op::Unbind { .. }) => return Err(op),
        })
    }

    async fn execute_async(self: Rc<Self>, op: Op) -> Reply {
        match op {
            Op::Bind {
                slot,
                generation,
                system,
                group,
                user_id,
                extend,
            } => {
                let (conn, first) =
                    match self.bind_local(slot, generation, &system, &group, user_id, extend) {
                        Ok(Some(bound)) => bound,
                        Ok(None) => return Reply::Done(false),
                        Err(why) => return Reply::Refused(why),
                    };
                if first {
                    crate::webhook::conn_event(&self, crate::webhook::Kind::Bind, &conn, &group);
                    let data = conn.member_event_data();
                    let frame = message::push_frame(
                        &self.message_id(),
                        "",
                        message::CODE_ONLINE,
                        message::MSG_ONLINE,
                        &data,
                    );
                    self.push_group(system, group, frame, "group_event").await;
                }
                Reply::Done(true)
            }
            Op::Unbind {
                slot,
                generation,
                system,
                group,
            } => match self.find(slot, generation, &system) {
                Some(conn) => Reply::Done(self.unbind_from_group(&conn, group).await),
                None => Reply::Done(false),
            },
            Op::Register { system, info } => {
                debug_assert_eq!(self.id, 0, "bug: Register must run on core 0");
                if self.system_info(&system).is_some() {
                    return Reply::Done(false);
                }
                if let Err(RegisterError::Full(why) | RegisterError::Etcd(why)) = self.check_room()
                {
                    return Reply::Refused(why);
                }
                // Only a new name is recorded: a secret cannot be changed by registering again.
                if !self.learn_system(&system, info.clone(), false) {
                    return Reply::Done(false);
                }
                let mut waits = Vec::new();
                for core in 1..self.nr_cores {
                    waits.push(self.call(
                        core,
                        Op::AddSystem {
                            system: system.clone(),
                            info: info.clone(),
                        },
                    ));
                }
                for wait in waits {
                    wait.await;
                }
                tracing::info!(system = %system, secret = info.secret.is_some(), "system registered");
                Reply::Done(true)
            }
            op => match self.execute_sync(op) {
                Ok(reply) => reply,
                Err(_) => unreachable!("bug: execute_sync refused a synchronous op"),
            },
        }
    }

    /// Handles one message from core `from`'s channel. Never blocks: answers are sent with
    /// `try_send`, falling back to a task when the channel is full, so two cores replying to
    /// each other can never deadlock.
    pub fn on_message(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Reply { tag, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&tag) {
                    let _ = tx.try_send(reply);
                }
            }
            CoreMsg::Request { from, tag, op } => match self.execute_sync(op) {
                Ok(reply) => self.reply(from, tag, reply),
                Err(op) => {
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let reply = shard.clone().execute_async(op).await;
                        shard.reply(from, tag, reply);
                    })
                    .detach();
                }
            },
        }
    }

    fn reply(self: &Rc<Self>, to: usize, tag: u64, reply: Reply) {
        self.metrics.core_replies.inc();
        match self.mesh.try_send_to(to, CoreMsg::Reply { tag, reply }) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let _ = shard.mesh.send_to(to, msg).await;
                })
                .detach();
            }
            Err(e) => {
                tracing::debug!(core = self.id, to, error = %e, "reply to a closed core dropped")
            }
        }
    }
}

/// A bijective 64-bit mixer (the splitmix64 finalizer).
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

//! The core's own state, and nothing else: which connections it holds, which groups and users
//! they are in, which systems it knows, and what is waiting to be written to each socket.
//!
//! Each core owns a [`Shard`]; it is `Rc` + `RefCell` and never leaves its thread. Where an
//! operation runs is not the shard's business: [`crate::route`] calls the `*_local` operations
//! of the right core (other cores through an [`inbox::Op`] on the channel mesh). So this module
//! names neither the cluster nor the router. By job:
//! - [`index`]: the systems, groups and users index, and the `*_local` operations on it;
//! - [`outbound`]: the per-connection queues, the flush window, slow consumers, heartbeat;
//! - [`systems`]: the registered systems and their secrets;
//! - [`history`]: the group streams this core owns, and the recoveries under way here;
//! - [`offline`], [`occupancy`], [`single`]: what this core keeps for the users and groups it
//!   owns (offline messages, who holds a group's members, a user's one connection);
//! - [`registry`]: the slots that clientIds point at; [`conn`]: one connection.
//!
//! Ownership contract: a `RefCell` borrow in this module never spans an `.await`.

pub mod conn;
pub mod history;
pub mod inbox;
pub mod index;
mod local;
pub use local::BoundHere;
pub mod occupancy;
pub mod offline;
pub mod outbound;
pub mod registry;
pub mod single;
pub mod system;
pub mod systems;

use crate::config::Config;
use crate::ids::{ClientAddr, IdCodec};
use crate::types::{mix64, SystemInfo};
use crate::ws::frame::{self, SharedFrame};
use conn::{Conn, EndReason, WriteState};
use glommio::net::TcpStream;
use index::Index;
use registry::Registry;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Size of the per-core read buffer every connection's reads land in.
pub const SCRATCH_BYTES: usize = 64 * 1024;

pub struct Shard {
    pub id: usize,
    pub nr_cores: usize,
    pub config: Arc<Config>,
    /// This node's identity, sealed into clientIds.
    pub node: SocketAddrV4,
    pub ids: IdCodec,
    registry: RefCell<Registry<Conn>>,
    /// This core's connections by system, group and user.
    index: RefCell<Index>,
    /// Registered systems and their options; the same `Arc` on every core.
    registered: RefCell<HashMap<Box<str>, Arc<SystemInfo>>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    flush_scheduled: Cell<bool>,
    /// When this core last queued one push to at least [`BROADCAST_SOCKETS`] of its sockets (a
    /// group, system or user push, or a long send_to_clients): see [`Shard::broadcasting`].
    last_broadcast: Cell<Option<Instant>>,
    next_message: Cell<u64>,
    message_key: u64,
    /// Reads of every connection on this core land here; borrowed only inside one poll.
    pub scratch: RefCell<Box<[u8]>>,
    pub draining: Cell<bool>,
    /// Cluster mode: whether this core has had etcd's list of systems at least once. Until
    /// then a system it does not know may well be registered (with a secret).
    pub systems_synced: Cell<bool>,
    /// Systems a `/ws` connect found unregistered in etcd, and when: see
    /// [`Shard::connect_lookup`].
    unknown_systems: RefCell<HashMap<Box<str>, Instant>>,
    /// The current one-second window of etcd lookups for `/ws` connects of unknown systems:
    /// its start and the lookups in it.
    unknown_lookups: Cell<(Instant, u32)>,
    /// One log line a second at most for each kind of event a client can repeat at will.
    pub throttles: crate::throttle::CoreThrottles,
    /// HTTP connections this core serves that are not (yet) WebSockets and have sent a
    /// request: what MaxHttpConnsPerCore caps (counted by the listener).
    pub http_conns: Cell<usize>,
    /// The capacity of those connections' read and write buffers, in bytes.
    pub http_buffer_bytes: Cell<usize>,
    ping: SharedFrame,
    /// This core's counters, summed over the cores only when `/metrics` is scraped.
    pub metrics: crate::counters::CoreMetrics,
    /// The group streams (history) this core owns.
    pub history: RefCell<history::Streams>,
    /// The offline messages this core keeps for users it owns: see [`offline`].
    pub offline: RefCell<offline::Store>,
    /// The groups this core owns the occupancy of (who holds members): see [`occupancy`].
    pub occupancy: RefCell<occupancy::Occupancy>,
    /// This core's sequence for its occupancy words to the owners.
    pub occupancy_seq: std::cell::Cell<u64>,
    /// Which connection holds each user this core owns, of the systems with singleConnection:
    /// see [`single`].
    pub holders: RefCell<single::Holders>,
    /// This core's connections whose claim of their user got no answer from its owner: they
    /// claim again when the peer table next changes.
    pub unclaimed: RefCell<Vec<std::rc::Weak<Conn>>>,
    /// Group pushes held back for connections recovering that group: see [`history`].
    pub(crate) recovering: RefCell<history::Recovering>,
}

impl Shard {
    /// The state of core `id` of `nr_cores` on the node `node`.
    pub fn new(config: Arc<Config>, id: usize, nr_cores: usize, node: SocketAddrV4) -> Shard {
        Shard {
            id,
            nr_cores,
            node,
            ids: IdCodec::new(&config.crypto_key),
            config,
            registry: RefCell::new(Registry::default()),
            index: RefCell::default(),
            registered: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
            last_broadcast: Cell::new(None),
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
            metrics: Default::default(),
            history: RefCell::default(),
            offline: RefCell::default(),
            occupancy: RefCell::default(),
            occupancy_seq: std::cell::Cell::new(0),
            holders: RefCell::default(),
            unclaimed: RefCell::default(),
            recovering: RefCell::default(),
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
        let system = self.index.borrow().system_name(system);
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
        self.index.borrow_mut().add(conn.clone());
        self.metrics.connects.inc();
        conn
    }

    pub fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.registry.borrow().iter().cloned().collect()
    }

    /// How many members `group` of `system` has on this core.
    pub fn group_len_local(&self, system: &str, group: &str) -> usize {
        self.index.borrow().group_len(system, group)
    }

    /// Queues a connection event for the system's webhook, if it has one (see
    /// [`crate::webhook`]). `group` is "" for online and offline.
    pub fn webhook_event(&self, kind: crate::webhook::Kind, conn: &Conn, group: &str) {
        let Some(info) = self.system_info(&conn.system) else {
            return;
        };
        if info.webhook_url.is_none() {
            return;
        }
        // A caller holding the info mutably (inside a bind) would make borrow() panic: never
        // panic here, send empty fields instead.
        let guard = conn.info.try_borrow().ok();
        let (user_id, extend) = guard
            .as_ref()
            .and_then(|g| g.as_ref())
            .map_or(("", ""), |i| (i.user_id.as_str(), i.extend.as_str()));
        crate::webhook::emit(
            &info,
            kind,
            &conn.system,
            &conn.client_id,
            user_id,
            group,
            extend,
        );
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
            self.close_as(
                &conn,
                EndReason::CutOff,
                frame::close_code::GOING_AWAY,
                "node cut off from the cluster",
            );
            closed += 1;
        }
        closed
    }

    /// Records this core's totals for the status page's charts (once a second).
    pub fn sample_trend(&self) {
        let connections = self.registry.borrow().len() as u64;
        let point = self.metrics.trend_point(unix_seconds(), connections);
        self.metrics.trend.record(point);
    }

    /// This core's counters and state for `/metrics`; with `detail`, also its systems and
    /// groups (and, on core 0, the registered names) for `/status.json`. The node links' part
    /// is the router's to add.
    pub fn metrics_snapshot(&self, detail: bool) -> crate::counters::CoreSnapshot {
        use crate::counters::SystemSnapshot;
        let mut s = self.metrics.snapshot(self.id);
        s.connections = self.registry.borrow().len() as u64;
        s.http_connections = self.http_conns.get() as u64;
        s.http_buffer_bytes = self.http_buffer_bytes.get() as u64;
        s.registered_systems = self.registered.borrow().len() as u64;
        let (streams, messages, bytes) = self.history.borrow().sizes();
        (s.history_streams, s.history_messages) = (streams as u64, messages as u64);
        s.history_bytes = bytes as u64;
        if detail {
            s.trend = self.metrics.trend.points(unix_seconds());
            s.systems = (self.index.borrow().systems())
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
}

/// Seconds since the Unix epoch (0 on a clock before it).
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A real [`Shard`] with real sockets for the unit tests of this module.
#[cfg(test)]
pub(crate) mod testing {
    use super::conn::Conn;
    use super::Shard;
    use std::future::Future;
    use std::rc::Rc;
    use std::sync::Arc;

    /// Runs `test` on a glommio executor of its own with a one-core shard of the default
    /// config.
    pub fn with_shard<F: Future<Output = ()>>(test: impl FnOnce(Rc<Shard>) -> F) {
        let executor = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("a glommio executor");
        executor.run(async move {
            let config = Arc::new(crate::config::Config::default());
            let node = "127.0.0.1:1".parse().expect("an address");
            test(Rc::new(Shard::new(config, 0, 1, node))).await;
        });
    }

    /// `n` new connections of `system`, each over a loopback socket whose client end is kept
    /// open (and never read) for as long as the executor runs.
    pub async fn conns(shard: &Shard, system: &str, n: usize) -> Vec<Rc<Conn>> {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let mut out = Vec::new();
        for _ in 0..n {
            let client = glommio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let server = listener.accept().await.expect("accept");
            let peer = client.local_addr().expect("the client's address");
            glommio::spawn_local(async move {
                let _client = client;
                futures_lite::future::pending::<()>().await;
            })
            .detach();
            out.push(shard.add_conn(server, system, peer));
        }
        out
    }
}

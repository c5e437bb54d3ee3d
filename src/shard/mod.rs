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
pub mod system;

use crate::cluster::proto::{RemoteOp, RemoteReply};
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
pub use system::SystemInfo;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections of one system on this core, and its groups here.
#[derive(Default)]
struct SystemState {
    clients: IndexMap<u32, Rc<Conn>>,
    groups: HashMap<Rc<str>, IndexMap<u32, Rc<Conn>>>,
}

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
    systems: RefCell<HashMap<Rc<str>, SystemState>>,
    /// Registered systems and their options; the same `Arc` on every core.
    registered: RefCell<HashMap<Box<str>, Arc<SystemInfo>>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    flush_scheduled: Cell<bool>,
    mesh: Senders<CoreMsg>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_tag: Cell<u64>,
    next_message: Cell<u64>,
    message_key: u64,
    /// Reads of every connection on this core land here; borrowed only inside one poll.
    pub scratch: RefCell<Box<[u8]>>,
    pub draining: Cell<bool>,
    /// Upgrades refused at MaxConnsPerCore since the last log line about it, and when that
    /// line was written: one line a second at most, however hard a flood pushes.
    refused_full: Cell<u64>,
    refused_logged: Cell<Option<Instant>>,
    ping: SharedFrame,
    /// Cluster mode only: the peer table and links of this core.
    cluster: std::cell::OnceCell<Rc<Cluster>>,
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
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_tag: Cell::new(0),
            next_message: Cell::new(0),
            message_key: rand::random(),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            draining: Cell::new(false),
            refused_full: Cell::new(0),
            refused_logged: Cell::new(None),
            ping: frame::ping(),
            cluster: std::cell::OnceCell::new(),
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

    /// Whether a system is registered. In cluster mode a name this core has not heard of yet is
    /// looked up in etcd, so a request racing the watch is never wrongly refused.
    pub async fn is_registered(self: &Rc<Self>, system: &str) -> Result<bool, String> {
        if self.registered.borrow().contains_key(system) {
            return Ok(true);
        }
        let Some(cluster) = self.cluster() else {
            return Ok(false);
        };
        let known = cluster.is_registered(system).await?;
        if known {
            self.add_system_everywhere(Arc::from(system)).await;
        }
        Ok(known)
    }

    /// A registered system's options (secret, webhook URL), if this core knows the system.
    pub fn system_info(&self, system: &str) -> Option<Arc<SystemInfo>> {
        self.registered.borrow().get(system).cloned()
    }

    /// Systems learned from etcd's watch.
    pub fn add_systems(&self, systems: &[String]) {
        let mut registered = self.registered.borrow_mut();
        for s in systems {
            registered
                .entry(Box::from(s.as_str()))
                .or_insert_with(Default::default);
        }
    }

    async fn add_system_everywhere(self: &Rc<Self>, system: Arc<str>) {
        let calls = (0..self.nr_cores).map(|core| {
            self.call(
                core,
                Op::AddSystem {
                    system: system.clone(),
                },
            )
        });
        join_all(calls).await;
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
        self.refused_full.set(self.refused_full.get() + 1);
        let now = Instant::now();
        let due = self
            .refused_logged
            .get()
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                core = self.id,
                %peer,
                held,
                refused = self.refused_full.replace(0),
                "WebSocket refused with 503: MaxConnsPerCore reached on this core"
            );
            self.refused_logged.set(Some(now));
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
            self.push_group(system.clone(), Arc::from(&*group), frame)
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
                tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, frames, bytes,
                    "slow consumer: outbound queue full, closing with 1008");
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
                glommio::spawn_local(async move { shard.flush_dirty() }).detach();
            }
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

    /// Queues a close frame; the socket's write side is shut once it is written.
    pub fn enqueue_close(self: &Rc<Self>, conn: &Rc<Conn>, code: u16, reason: &str) {
        if self.enqueue(conn, frame::close(code, reason)) {
            conn.out.borrow_mut().close_after = true;
        }
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
            match conn.flush_now() {
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
                    tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, error = %e,
                        "socket not writable in time, dropping connection");
                    conn.cut(EndReason::SlowConsumer);
                    return;
                }
            }
            match conn.flush_now() {
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

    /// Pings every connection and drops those silent for longer than PongTimeout.
    pub fn heartbeat(self: &Rc<Self>) {
        let now = Instant::now();
        for conn in self.all_conns() {
            if now.duration_since(conn.last_seen.get()) > self.config.pong_timeout {
                tracing::info!(client = %conn.client_id, peer = %conn.peer, core = self.id,
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
            Some(conn) => self.enqueue(&conn, f),
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
        for conn in &members {
            self.enqueue(conn, f.clone());
        }
        members.len()
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
        tracing::info!(client = %conn.client_id, peer = %conn.peer, core = self.id, "closing client on API request");
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
        let mut info = conn.info.borrow_mut();
        let info = info.get_or_insert_with(Box::default);
        let member = info.groups.iter().any(|g| &**g == group);
        let most = self.config.max_groups_per_client;
        if !member && info.groups.len() >= most {
            tracing::info!(client = %conn.client_id, core = self.id, group, "bind_to_group refused: MaxGroupsPerClient reached");
            return Err(format!(
                "client is in {most} groups already, the MaxGroupsPerClient limit"
            ));
        }
        // As the original: the latest bind's userId/extend win, even for a group already joined.
        info.user_id = user_id;
        info.extend = extend;
        if member {
            return Ok(Some((conn.clone(), false)));
        }
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
        if self.mesh.send_to(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&tag);
            return Reply::Unreachable;
        }
        rx.recv().await.unwrap_or(Reply::Unreachable)
    }

    /// Queues `frame` to every member of the group on every core of this node; returns when
    /// every core has queued it.
    pub async fn push_group_node(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
    ) {
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
        self.group_push_local(&system, &group, &frame);
        remote.await;
    }

    /// [`Self::push_group_node`] on this node and one `GroupPush` to every peer node.
    pub async fn push_group(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
    ) {
        let Some(cluster) = self.cluster() else {
            return self.push_group_node(system, group, frame).await;
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
        let (_, answers) = futures_util::future::join(
            self.push_group_node(system, group, frame.clone()),
            join_all(remote),
        )
        .await;
        for (addr, answer) in peers.iter().zip(answers) {
            if let Err(e) = answer {
                tracing::debug!(peer = %addr, core = self.id, error = %e, "group push to a peer failed");
            }
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
        for (addr, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(RemoteReply::List(more)) => list.extend(more),
                Ok(_) => {}
                // The link logs its loss once; a line per request would flood.
                Err(e) => tracing::debug!(peer = %addr, core = self.id, error = %e,
                    "online list: peer left out of the answer"),
            }
        }
        list
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

    /// Runs a request from another node. Ops are node-local here: the sender addressed every
    /// node it meant itself.
    pub async fn execute_remote(self: &Rc<Self>, op: RemoteOp) -> RemoteReply {
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
                self.push_group_node(Arc::from(system), Arc::from(group), Arc::from(frame))
                    .await;
                RemoteReply::Done(true)
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
            RemoteOp::Bind { .. } | RemoteOp::Close { .. } => RemoteReply::Done(false),
        }
    }

    /// Registers a system. Single node: core 0 is the single writer, so two concurrent
    /// registrations of one name cannot both succeed. Cluster: an etcd transaction decides, then
    /// every core here learns it at once (the watch tells the other nodes). Ok(false): it
    /// already existed; Err: etcd could not be reached.
    pub async fn register(self: &Rc<Self>, system: Arc<str>) -> Result<bool, String> {
        let Some(cluster) = self.cluster() else {
            return Ok(self.call(0, Op::Register { system }).await.found());
        };
        let created = cluster.register(&system).await?;
        if created {
            tracing::info!(system = %system, "system registered in etcd");
            self.add_system_everywhere(system).await;
        }
        Ok(created)
    }

    /// Ops that complete without waiting; `Err(op)` for those that must.
    fn execute_sync(self: &Rc<Self>, op: Op) -> Result<Reply, Op> {
        Ok(match op {
            Op::Deliver {
                targets,
                system,
                frame,
            } => Reply::Count(
                targets
                    .into_iter()
                    .filter(|&(slot, generation)| {
                        self.deliver_local(slot, generation, &system, frame.clone())
                    })
                    .count(),
            ),
            Op::GroupPush {
                system,
                group,
                frame,
            } => Reply::Done(self.group_push_local(&system, &group, &frame) > 0),
            Op::OnlineList { system, group } => {
                Reply::List(self.online_list_local(&system, &group))
            }
            Op::Close {
                slot,
                generation,
                system,
            } => Reply::Done(self.close_local(slot, generation, &system)),
            Op::AddSystem { system } => {
                self.registered
                    .borrow_mut()
                    .entry(Box::from(&*system))
                    .or_insert_with(Default::default);
                Reply::Done(true)
            }
            op @ (Op::Bind { .. } | Op::Register { .. }) => return Err(op),
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
                    let data = conn.member_event_data();
                    let frame = message::push_frame(
                        &self.message_id(),
                        "",
                        message::CODE_ONLINE,
                        message::MSG_ONLINE,
                        &data,
                    );
                    self.push_group(system, group, frame).await;
                }
                Reply::Done(true)
            }
            Op::Register { system } => {
                debug_assert_eq!(self.id, 0, "bug: Register must run on core 0");
                {
                    let mut registered = self.registered.borrow_mut();
                    if registered.contains_key(&*system) {
                        return Reply::Done(false);
                    }
                    registered.insert(Box::from(&*system), Default::default());
                }
                let mut waits = Vec::new();
                for core in 1..self.nr_cores {
                    waits.push(self.call(
                        core,
                        Op::AddSystem {
                            system: system.clone(),
                        },
                    ));
                }
                for wait in waits {
                    wait.await;
                }
                tracing::info!(system = %system, "system registered");
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

//! Where a user's offline messages live, and the calls that go there (docs/history.md,
//! "Offline messages").
//!
//! A (system, userId) has one home, found as a group stream's is
//! ([`Router::stream_home`]): the rendezvous owner among this node and its peers, and on it
//! the core its hash picks. send_to_user with `store` keeps its push there
//! ([`Router::store_offline`]); when a connection gets the userId (a connect token, a bind),
//! its core takes them from there ([`Router::deliver_offline`]) and queues them to it, in
//! order, then tells the webhook (`delivered_offline`).

use super::history::{Home, OwnerUnreachable};
use super::Router;
use crate::cluster::proto::{OfflineFrame, RemoteOp, RemoteReply};
use crate::shard::conn::Conn;
use crate::shard::inbox::{Op, Reply};
use crate::shard::offline::Stored;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Kept pushes as they cross a node link (the way back is in `route::from_remote`).
pub fn to_remote(list: Vec<Stored>) -> RemoteReply {
    RemoteReply::Offline(list.into_iter().map(frame_of).collect())
}

fn frame_of(push: Stored) -> OfflineFrame {
    OfflineFrame {
        message_id: push.message_id,
        frame: push.frame.to_vec(),
    }
}

impl Router {
    /// send_to_user's `store`: keeps `push` for the user on its owner. `Err` when the owner
    /// node did not answer (then nothing was kept).
    pub async fn store_offline(
        self: &Rc<Self>,
        system: Arc<str>,
        user_id: Arc<str>,
        push: Stored,
    ) -> Result<(), OwnerUnreachable> {
        match self.stream_home(&system, &user_id) {
            Home::Core(core) => {
                let push = Box::new(push);
                let op = Op::OfflineStore {
                    system,
                    user_id,
                    push,
                };
                self.call(core, op).await;
                Ok(())
            }
            Home::Node(addr) => {
                let op = RemoteOp::OfflineStore {
                    system: system.to_string(),
                    user_id: user_id.to_string(),
                    push: frame_of(push),
                };
                self.call_owner(addr, op, "send_to_user").await.map(|_| ())
            }
        }
    }

    /// On the user's own core: keep the push.
    pub(super) fn store_here(&self, system: &str, user_id: &str, push: Stored) {
        let bounds = self.shard.offline_bounds();
        let mut store = self.shard.offline.borrow_mut();
        store.put(system, user_id, push, &bounds, Instant::now());
    }

    /// On the user's own core: remove and answer what is kept for it.
    pub(super) fn take_here(&self, system: &str, user_id: &str) -> Vec<Stored> {
        let ttl = self.shard.config.offline_ttl;
        let mut store = self.shard.offline.borrow_mut();
        store.take(system, user_id, ttl, Instant::now())
    }

    /// Removes the user's kept pushes from its owner and answers them, oldest first.
    pub async fn take_offline(
        self: &Rc<Self>,
        system: Arc<str>,
        user_id: Arc<str>,
    ) -> Result<Vec<Stored>, OwnerUnreachable> {
        let reply = match self.stream_home(&system, &user_id) {
            Home::Core(core) => self.call(core, Op::OfflineTake { system, user_id }).await,
            Home::Node(addr) => {
                let op = RemoteOp::OfflineTake {
                    system: system.to_string(),
                    user_id: user_id.to_string(),
                };
                super::from_remote(self.call_owner(addr, op, "offline messages").await?)
            }
        };
        match reply {
            Reply::Offline(list) => Ok(list),
            _ => Ok(Vec::new()),
        }
    }

    /// `conn` (of this core) got `user_id`: takes the user's kept pushes and queues them to
    /// it, in order, then posts `delivered_offline` with their messageIds. Nothing when this
    /// node keeps no offline messages (`OfflineMax = 0`) or the userId is empty.
    pub async fn deliver_offline(self: Rc<Self>, conn: Rc<Conn>, user_id: Arc<str>) {
        if user_id.is_empty() || self.shard.config.offline_max == 0 {
            return;
        }
        let system: Arc<str> = Arc::from(conn.system());
        let list = match self.take_offline(system, user_id).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(client = %conn.client_id(), error = %e, "offline messages not taken");
                return;
            }
        };
        if list.is_empty() {
            return;
        }
        let ids: Vec<&str> = list.iter().map(|p| p.message_id.as_str()).collect();
        let ids = ids.join(",");
        for push in &list {
            self.shard.enqueue(&conn, push.frame.clone());
        }
        self.shard
            .webhook_event(crate::webhook::Kind::DeliveredOffline, &conn, &ids);
    }
}

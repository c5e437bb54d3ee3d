//! One connection per user (issue 17, docs/api-additions.md "One connection per user"): in a
//! system registered with `singleConnection`, the newest connection of a userId closes the
//! older ones with 4001, wherever in the cluster they are.
//!
//! A connection that gets a userId (a connect token, a bind) claims the user at its owner, the
//! home of the user's offline messages ([`Router::stream_home`]); the owner's table
//! ([`crate::shard::single`]) answers which connection held it, and the claimer closes that
//! one by its clientId. Claims meet on one core, so of two connects at once one survives. One
//! that disconnects or gets another userId releases the user.
//!
//! When the peer table changes, an owner forgets the users it no longer owns, and each core
//! re-claims, at their new owner, the users of its connections whose owner moved: a re-claim
//! holds a user only if nobody does there yet, else its connection loses and is closed. A
//! connection whose claim got no answer (its owner had died) claims again then, as the new
//! connection it is.

use super::history::Home;
use super::{clients, Router};
use crate::cluster::proto::{RemoteOp, RemoteReply};
use crate::shard::conn::Conn;
use crate::shard::inbox::{Op, Reply};
use crate::types::{stream_owner, Claimed, Kick};
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;

impl Router {
    /// Whether `system` was registered with singleConnection.
    fn single_connection(&self, system: &str) -> bool {
        (self.shard.system_info(system)).is_some_and(|info| info.single_connection)
    }

    /// `conn` (of this core) changed its userId from `old` to `new` ("" is none). In a system
    /// with singleConnection, it releases `old` and claims `new` at their owners; never waits
    /// (each in a task of its own).
    pub fn user_changed(self: &Rc<Self>, conn: &Rc<Conn>, old: &str, new: &str) {
        if !self.single_connection(conn.system()) {
            return;
        }
        if !old.is_empty() {
            let release = self.clone().release_user(conn.clone(), Arc::from(old));
            glommio::spawn_local(release).detach();
        }
        if !new.is_empty() {
            let claim = self.clone().claim_user(conn.clone(), Arc::from(new), true);
            glommio::spawn_local(claim).detach();
        }
    }

    /// `conn` (of this core) ended: in a system with singleConnection, it releases its user.
    pub fn user_gone(self: &Rc<Self>, conn: &Rc<Conn>) {
        if self.single_connection(conn.system()) {
            self.user_changed(conn, &conn.user_id(), "");
        }
    }

    /// Claims `user` for `conn` at the user's owner, then closes whichever connection lost:
    /// the one it replaced, or (a re-claim that found a newer holder) `conn` itself.
    async fn claim_user(self: Rc<Self>, conn: Rc<Conn>, user: Arc<str>, take: bool) {
        let system: Arc<str> = Arc::from(conn.system());
        let client: Arc<str> = Arc::from(conn.client_id());
        let claimed = match self.stream_home(&system, &user) {
            Home::Core(core) => {
                let op = Op::UserClaim {
                    system: system.clone(),
                    user_id: user.clone(),
                    client_id: client.clone(),
                    take,
                };
                match self.call(core, op).await {
                    Reply::Claimed(claimed) => Ok(claimed),
                    _ => Err(format!("core {core} did not answer")),
                }
            }
            Home::Node(addr) => {
                let op = RemoteOp::UserClaim {
                    system: system.to_string(),
                    user_id: user.to_string(),
                    client_id: client.to_string(),
                    take,
                };
                match self.call_owner(addr, op, "single_connection").await {
                    Ok(RemoteReply::Claimed(claimed)) => Ok(claimed),
                    Ok(other) => Err(format!("node {addr} answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match claimed {
            Ok(Claimed::Kept) => {}
            Ok(Claimed::Replaced(old)) => {
                tracing::debug!(client = %client, replaced = %old, system = %system,
                    "a newer connection of its user replaces a connection");
                if let Err(why) = clients::close(&self, system, &old, Kick::Replaced).await {
                    tracing::warn!(client = %old, error = %why, "replaced connection not closed");
                }
            }
            Ok(Claimed::Lost) => {
                // Only if it still is that user's and still open: it may have moved on since.
                if conn.end_reason().is_none() && *conn.user_id() == *user {
                    self.shard.kick(&conn, Kick::Replaced);
                }
            }
            Err(why) => {
                tracing::warn!(client = %client, system = %system, error = %why,
                    "singleConnection not enforced yet for a connection: its user's owner did \
                     not answer; it claims again when the peer table changes");
                (self.shard.unclaimed.borrow_mut()).push(Rc::downgrade(&conn));
            }
        }
    }

    /// Tells the user's owner that `conn` no longer holds it. Lost when the owner does not
    /// answer: the stale holder then costs one close of a connection that is gone.
    async fn release_user(self: Rc<Self>, conn: Rc<Conn>, user: Arc<str>) {
        let system: Arc<str> = Arc::from(conn.system());
        let client: Arc<str> = Arc::from(conn.client_id());
        match self.stream_home(&system, &user) {
            Home::Core(core) => {
                let op = Op::UserRelease {
                    system,
                    user_id: user,
                    client_id: client,
                };
                self.call(core, op).await;
            }
            Home::Node(addr) => {
                let op = RemoteOp::UserRelease {
                    system: system.to_string(),
                    user_id: user.to_string(),
                    client_id: client.to_string(),
                };
                // A failure is counted and logged by call_owner.
                let _ = self.call_owner(addr, op, "single_connection").await;
            }
        }
    }

    /// The peer table changed from `before` to `nodes` (this node in both): forgets the users
    /// this core no longer owns, and re-claims those of its connections whose owner moved.
    pub(super) fn single_peers_changed(
        self: &Rc<Self>,
        before: &[SocketAddrV4],
        nodes: &[SocketAddrV4],
        me: SocketAddrV4,
    ) {
        let owner = |nodes: &[SocketAddrV4], system: &str, user: &str| {
            stream_owner(system, user, nodes.iter().copied())
        };
        (self.shard.holders.borrow_mut())
            .retain(|system, user| owner(nodes, system, user) == Some(me));
        // A connection whose claim failed claims as the new connection it is; the others hold
        // their user only if nobody newer took it at the new owner first.
        let unclaimed = std::mem::take(&mut *self.shard.unclaimed.borrow_mut());
        let failed = |conn: &Rc<Conn>| {
            (unclaimed.iter()).any(|weak| std::ptr::eq(weak.as_ptr(), Rc::as_ptr(conn)))
        };
        let users = (self.shard).users_where_local(|system| self.single_connection(system));
        let mut count = 0;
        for (conn, user) in users {
            let take = failed(&conn);
            let moved = owner(before, conn.system(), &user) != owner(nodes, conn.system(), &user);
            if take || moved {
                let claim = self.clone().claim_user(conn, Arc::from(&*user), take);
                glommio::spawn_local(claim).detach();
                count += 1;
            }
        }
        if count > 0 {
            tracing::info!(
                core = self.shard.id,
                users = count,
                "re-claiming the users of singleConnection systems whose owner moved"
            );
        }
    }
}

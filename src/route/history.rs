//! Where a group's history stream lives, and the calls that go there (docs/history.md).
//!
//! A stream has one home: the node [`stream_owner`] picks among this node and its peers, and
//! on it the core [`stream_key`] picks. send_to_group of a system with history goes there
//! ([`Router::push_group_history`]), is given its offset by the [`crate::shard::history`]
//! there, and is sent to the group from there as any group push ([`Router::push_group`]).
//! Reads (get_group_history, and the recovery of a bind with `since`) ask the same home. When
//! the peer table changes, each core drops the streams it no longer owns
//! ([`Router::peers_changed`]): should they come back, they start again with a new epoch.

use super::{Fanout, Router};
use crate::cluster::proto::{HistoryFrame, RemoteOp, RemoteReply};
use crate::shard::conn::Conn;
use crate::shard::history::Read;
use crate::shard::inbox::{Op, Reply};
use crate::types::{stream_key, stream_owner, HistoryOpts, HistoryPush, StreamPos};
use crate::ws::message;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Where a stream lives, seen from this core.
pub(super) enum Home {
    /// A core of this node.
    Core(usize),
    /// A peer node.
    Node(SocketAddrV4),
}

/// Why a call to a stream's owner node did not work: its text is what the API caller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node {0} that holds this group's history did not answer ({1}); retry")]
pub struct OwnerUnreachable(pub SocketAddrV4, pub String);

/// A stream's read, as it crosses a node link.
pub fn read_to_remote(read: Read) -> RemoteReply {
    RemoteReply::History {
        epoch: read.epoch.to_string(),
        offset: read.offset,
        recovered: read.recovered,
        frames: (read.frames.into_iter())
            .map(|(offset, frame)| HistoryFrame {
                offset,
                frame: frame.to_vec(),
            })
            .collect(),
    }
}

/// The core of this node a stream lives on (when this node is its owner).
pub fn stream_core(system: &str, group: &str, nr_cores: usize) -> usize {
    (stream_key(system, group) % nr_cores.max(1) as u64) as usize
}

impl Router {
    pub(super) fn stream_home(&self, system: &str, group: &str) -> Home {
        let core = Home::Core(stream_core(system, group, self.shard.nr_cores));
        let Some(cluster) = self.cluster() else {
            return core;
        };
        let me = cluster.self_addr;
        let nodes = cluster.peers().into_iter().chain(std::iter::once(me));
        match stream_owner(system, group, nodes) {
            Some(owner) if owner != me => Home::Node(owner),
            _ => core,
        }
    }

    /// send_to_group of a system with history: to the stream's owner, which numbers, keeps
    /// and sends it. `Err` when the owner did not answer: then nothing was sent, and the
    /// caller must know (a retry goes to the next owner once the dead one left the peer
    /// table). The peers the owner could not reach are not reported back (`failed` is empty).
    pub async fn push_group_history(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        push: HistoryPush,
    ) -> Result<Fanout, OwnerUnreachable> {
        match self.stream_home(&system, &group) {
            Home::Core(core) => {
                let op = Op::HistoryPush {
                    system,
                    group,
                    history,
                    push: Box::new(push),
                };
                Ok(Fanout {
                    delivered: self.call(core, op).await.count(),
                    ..Fanout::default()
                })
            }
            Home::Node(addr) => {
                let op = RemoteOp::HistoryPush {
                    system: system.to_string(),
                    group: group.to_string(),
                    history,
                    push,
                };
                let reply = self.call_owner(addr, op, "send_to_group").await?;
                Ok(Fanout {
                    delivered: reply.count(),
                    ..Fanout::default()
                })
            }
        }
    }

    /// On the stream's own core: the push gets the next offset and is kept, then goes to the
    /// group everywhere. Answers how many sockets took it.
    pub(super) async fn append_here(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        push: Box<HistoryPush>,
    ) -> usize {
        let shard = &self.shard;
        let bounds = shard.history_bounds(&history);
        let frame = shard.history.borrow_mut().append(
            &system,
            &group,
            &bounds,
            Instant::now(),
            |offset, epoch| {
                message::push_frame_at(
                    &push.message_id,
                    &push.send_user_id,
                    push.code,
                    &push.msg,
                    &push.data,
                    offset,
                    epoch,
                )
            },
        );
        // The push is in the stream whoever it leaves out; the owner finds that one itself.
        let exclude = self.exclude(push.exclude.as_deref());
        let fanout = (self.push_group(system, group, frame, "send_to_group", exclude)).await;
        fanout.delivered
    }

    /// On the stream's own core: its position and kept pushes after `since`, at most `limit`.
    pub(super) fn read_here(
        &self,
        system: &Arc<str>,
        group: &Arc<str>,
        history: &HistoryOpts,
        since: Option<&StreamPos>,
        limit: usize,
    ) -> Read {
        let bounds = self.shard.history_bounds(history);
        let mut streams = self.shard.history.borrow_mut();
        streams.read(system, group, since, limit, &bounds, Instant::now())
    }

    /// get_group_history, and a recovery's fetch: asks the stream's owner.
    pub async fn read_history(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        since: Option<StreamPos>,
        limit: usize,
    ) -> Result<Read, OwnerUnreachable> {
        match self.stream_home(&system, &group) {
            Home::Core(core) => {
                let op = Op::HistoryRead {
                    system,
                    group,
                    history,
                    since,
                    limit,
                };
                match self.call(core, op).await {
                    Reply::History(read) => Ok(read),
                    _ => Err(OwnerUnreachable(self.shard.node, "core unreachable".into())),
                }
            }
            Home::Node(addr) => {
                let op = RemoteOp::HistoryRead {
                    system: system.to_string(),
                    group: group.to_string(),
                    history,
                    since,
                    limit: limit.min(u32::MAX as usize) as u32,
                };
                // The way back of [`read_to_remote`].
                match super::from_remote(self.call_owner(addr, op, "get_group_history").await?) {
                    Reply::History(read) => Ok(read),
                    _ => Err(OwnerUnreachable(addr, "an answer of another kind".into())),
                }
            }
        }
    }

    /// The second half of a bind with `since`, on the client's core, after the bind (which
    /// began holding the group's live pushes back for it): fetch what it missed, queue that,
    /// then what was held back. Whether the missed pushes could be replayed; when not, only
    /// the held-back live pushes follow.
    pub(super) async fn recover(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        since: StreamPos,
    ) -> bool {
        let after = since.offset;
        let read = self
            .read_history(system, group.clone(), history, Some(since), usize::MAX)
            .await;
        match read {
            Ok(read) if read.recovered => {
                self.shard.end_recovery(conn, &group, Some(read), after);
                true
            }
            _ => {
                self.shard.end_recovery(conn, &group, None, 0);
                false
            }
        }
    }

    /// A call to the owner node of a stream; a failure is counted and logged as `what`'s.
    pub(super) async fn call_owner(
        &self,
        addr: SocketAddrV4,
        op: RemoteOp,
        what: &'static str,
    ) -> Result<RemoteReply, OwnerUnreachable> {
        let Some(cluster) = self.cluster() else {
            return Err(OwnerUnreachable(addr, "not in cluster mode".into()));
        };
        match cluster.call(addr, op).await {
            Ok(RemoteReply::Failed(why)) => {
                self.peer_failed(addr, what, &why);
                Err(OwnerUnreachable(addr, why))
            }
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.peer_failed(addr, what, &e);
                Err(OwnerUnreachable(addr, e.to_string()))
            }
        }
    }

    /// The peer table changed (cluster mode): takes it, then drops the streams of this core
    /// that another node owns now. Should one come back here, it is new, with a new epoch: its
    /// clients learn their history is gone rather than miss what the other owner numbered.
    pub fn peers_changed(self: &Rc<Self>, peers: &[SocketAddrV4]) {
        let owned = |nodes: &[SocketAddrV4], me, system: &str, key: &str| {
            stream_owner(system, key, nodes.iter().copied()) == Some(me)
        };
        let Some(cluster) = self.cluster() else {
            return;
        };
        let me = cluster.self_addr;
        let before: Vec<SocketAddrV4> = cluster.peers().into_iter().chain([me]).collect();
        cluster.set_peers(peers);
        let nodes: Vec<SocketAddrV4> = cluster.peers().into_iter().chain([me]).collect();
        (self.shard.history.borrow_mut()).retain(|system, group| owned(&nodes, me, system, group));
        // Offline messages of users another node owns now are dropped too: the new owner is
        // where stores and takes go from now on (docs/history.md, "Offline messages").
        (self.shard.offline.borrow_mut()).retain(|system, user| owned(&nodes, me, system, user));
        self.occupancy_peers_changed(&nodes, me);
        self.single_peers_changed(&before, &nodes, me);
    }
}

//! Where an operation runs: every decision between this core, the other cores of this node and
//! the peer nodes is made here, and nowhere else.
//!
//! It sits between [`crate::api`] (which decoded a request) and the two things that do the work:
//! the [`Shard`] that holds each core's state, and the [`Cluster`] links to the other nodes.
//! Each core owns one [`Router`]: its shard, its end of the channel mesh with the calls waiting
//! there for answers ([`mesh`]), and in cluster mode its peer links.
//!
//! - An operation on a group, a system or a user runs everywhere through [`Router::broadcast`]:
//!   this core first, then the other cores, then the peers, answers merged.
//! - An operation on one client runs where its clientId points ([`clients`]).
//! - An operation a peer asked of this node is turned into the same [`Op`] and run on this
//!   node's cores only ([`remote`]).
//! - A send_to_group of a system with history, and reads of a group's history, go to the
//!   one core of one node that owns the group's stream ([`history`]).
//! - A connection of a system with singleConnection that gets a userId claims that user at its
//!   owner, the home of its offline messages, which names the connection it replaced ([`single`]).
//! - Registering and looking up systems, and telling a group about a member's comings and
//!   goings, go through here too ([`systems`], [`Router::announce`]).

pub mod clients;
pub mod history;
pub mod mesh;
pub mod occupancy;
pub mod offline;
pub mod remote;
pub mod single;
pub mod systems;

use crate::cluster::link::LinkError;
use crate::cluster::proto::{RemoteOp, RemoteReply};
use crate::cluster::Cluster;
use crate::shard::conn::{Conn, EndReason};
use crate::shard::inbox::{CoreMsg, Op, Refusal, Reply, Skip};
use crate::shard::Shard;
use crate::types::{Member, SystemStats};
use crate::ws::frame::SharedFrame;
use crate::ws::message;
use futures_util::future::join_all;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::LocalSender;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;

/// One core's router: its shard, its end of the mesh, and (cluster mode) its peer links.
pub struct Router {
    pub shard: Rc<Shard>,
    mesh: Senders<CoreMsg>,
    /// Calls to other cores waiting for their answer, by tag.
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_tag: Cell<u64>,
    /// Cluster mode only: the peer table and links of this core.
    cluster: Option<Rc<Cluster>>,
}

/// What a push to several nodes did: the sockets that took the frame on every node that
/// answered, and the peers that did not answer (their clients got nothing).
#[derive(Debug, Default)]
pub struct Fanout {
    pub delivered: usize,
    pub failed: Vec<SocketAddrV4>,
    /// The [`Exclude`] connection was one of the push's targets and was left out (answered
    /// by send_to_user, whose `store: true` then knows the user was online).
    pub skipped: bool,
}

/// The connection a group, system or user push leaves out (the API's `excludeClientId`),
/// as [`Router::exclude`] found it: on a core of this node (`here`), or on a peer (`peer`, the
/// clientId the peers get, each of which resolves it again and only its owner finds it).
/// Default: nobody is left out (no id, or one that reaches no client: forged, of a node
/// that left).
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    pub here: Option<Skip>,
    pub peer: Option<Arc<str>>,
}

/// The three announcements a group gets about one of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEvent {
    /// 1001: it joined the group (its first bind to it).
    Online,
    /// 1002: it disconnected.
    Offline,
    /// 1003: it left the group (unbind) and stays connected.
    Left,
}

impl MemberEvent {
    fn code_and_msg(self) -> (i64, &'static str) {
        match self {
            MemberEvent::Online => (message::CODE_ONLINE, message::MSG_ONLINE),
            MemberEvent::Offline => (message::CODE_OFFLINE, message::MSG_OFFLINE),
            MemberEvent::Left => (message::CODE_LEFT, message::MSG_LEFT),
        }
    }
}

/// The peers' part of a [`Router::broadcast`]: the op each peer runs, built only when there are
/// peers, and the name its failures are counted under (`send_to_group`, `group_event`).
pub struct Peers<F> {
    pub what: &'static str,
    pub op: F,
}

/// [`Router::broadcast`] on this node only.
const NODE_ONLY: Option<Peers<fn() -> RemoteOp>> = None;

/// A merge for [`Router::broadcast`] that keeps the first answer and folds in the others.
pub fn merge_replies(acc: &mut Option<Reply>, reply: Reply) {
    match acc {
        Some(acc) => acc.absorb(reply),
        None => *acc = Some(reply),
    }
}

/// A peer's answer as the [`Reply`] a core would have given (a `Failed` one never gets here:
/// [`Router::broadcast`] counts it as a failure first). The way out is in [`remote`].
fn from_remote(reply: RemoteReply) -> Reply {
    match reply {
        RemoteReply::Done(found) => Reply::Done(found),
        RemoteReply::Count(n) => Reply::Count(n as usize),
        RemoteReply::CountSkipped(n) => Reply::CountSkipped(n as usize),
        RemoteReply::List(list) => Reply::List(list),
        RemoteReply::Refused(why) => Reply::Refused(Refusal::Peer(why)),
        RemoteReply::Members(members) => Reply::Members(members),
        RemoteReply::Stats(part) => Reply::Stats(part),
        RemoteReply::History {
            epoch,
            offset,
            recovered,
            frames,
        } => Reply::History(crate::shard::history::Read {
            epoch: Arc::from(epoch),
            offset,
            recovered,
            frames: (frames.into_iter())
                .map(|f| (f.offset, Arc::from(f.frame)))
                .collect(),
        }),
        RemoteReply::Recovered(recovered) => Reply::Recovered(recovered),
        RemoteReply::Offline(list) => Reply::Offline(
            (list.into_iter())
                .map(|f| crate::shard::offline::Stored {
                    message_id: f.message_id,
                    frame: Arc::from(f.frame),
                })
                .collect(),
        ),
        RemoteReply::Claimed(claimed) => Reply::Claimed(claimed),
        RemoteReply::Failed(_) | RemoteReply::Membership { .. } => Reply::Done(false),
    }
}

fn add_count(total: &mut usize, reply: Reply) {
    *total += reply.count();
}

/// [`add_count`], and whether any answer left its [`Skip`] connection out.
fn add_count_skipped(total: &mut (usize, bool), reply: Reply) {
    total.0 += reply.count();
    total.1 |= reply.skipped();
}

impl Router {
    pub fn new(shard: Rc<Shard>, mesh: Senders<CoreMsg>, cluster: Option<Rc<Cluster>>) -> Router {
        Router {
            shard,
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_tag: Cell::new(0),
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&Rc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Runs `op` everywhere: on this core first, then on the other cores of this node, then
    /// (cluster mode, with `peers`) `peers.op()` on every peer node, all at once. Every answer
    /// is folded into a `T` with `merge`; a peer's answer as the [`Reply`] it stands for. Also
    /// returns the peers that did not answer (counted and logged as `peers.what`'s failures).
    pub async fn broadcast<T: Default, F: FnOnce() -> RemoteOp>(
        self: &Rc<Self>,
        op: Op,
        peers: Option<Peers<F>>,
        mut merge: impl FnMut(&mut T, Reply),
    ) -> (T, Vec<SocketAddrV4>) {
        let shard = &self.shard;
        let others = (0..shard.nr_cores)
            .filter(|&core| core != shard.id)
            .map(|core| self.call(core, op.clone()));
        let others = join_all(others.collect::<Vec<_>>());
        let here = self.run_here(op);
        let remote = async {
            match (self.cluster(), peers) {
                (Some(cluster), Some(peers)) => {
                    let addrs = cluster.peers();
                    let op = (peers.op)();
                    let calls = addrs.iter().map(|&addr| cluster.call(addr, op.clone()));
                    let answers = join_all(calls).await;
                    self.sort_answers(&addrs, answers, peers.what)
                }
                _ => (Vec::new(), Vec::new()),
            }
        };
        let (here, others, (replies, failed)) =
            futures_util::future::join3(here, others, remote).await;
        let mut total = T::default();
        merge(&mut total, here);
        for reply in others {
            merge(&mut total, reply);
        }
        for reply in replies {
            merge(&mut total, from_remote(reply));
        }
        (total, failed)
    }

    /// Splits the answers of `peers` (in their order) into replies and failures: no answer
    /// (unreachable, past RpcTimeoutMs) or a `Failed` one (the peer could not run the op).
    /// Each failure is counted and logged by [`Self::peer_failed`].
    fn sort_answers(
        &self,
        peers: &[SocketAddrV4],
        answers: Vec<Result<RemoteReply, LinkError>>,
        what: &'static str,
    ) -> (Vec<RemoteReply>, Vec<SocketAddrV4>) {
        let (mut replies, mut failed) = (Vec::new(), Vec::new());
        for (&addr, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(RemoteReply::Failed(why)) => {
                    self.peer_failed(addr, what, &why);
                    failed.push(addr);
                }
                Ok(reply) => replies.push(reply),
                Err(e) => {
                    self.peer_failed(addr, what, &e);
                    failed.push(addr);
                }
            }
        }
        (replies, failed)
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
        self.shard.metrics.peer_call_failed(what);
        if let Some(skipped) = self.shard.throttles.peer_failed.admit() {
            tracing::warn!(%peer, core = self.shard.id, route = what, %error, also = skipped,
                "call to a peer node failed: its part of the request was not done");
        }
    }

    /// Where the client `client_id` (excludeClientId) is, as a push leaving it out needs to
    /// know: an id that reaches no client leaves nobody out, and is no error.
    pub fn exclude(&self, client_id: Option<&str>) -> Exclude {
        match client_id.map(|id| clients::resolve(self, id)) {
            Some(clients::Target::Core {
                core,
                slot,
                generation,
            }) => Exclude {
                here: Some(Skip {
                    core,
                    slot,
                    generation,
                }),
                peer: None,
            },
            Some(clients::Target::Node { .. }) => Exclude {
                here: None,
                peer: client_id.map(Arc::from),
            },
            Some(clients::Target::Nowhere) | None => Exclude::default(),
        }
    }

    /// Queues `frame` to every member of the group on every core and node but `exclude`.
    /// `what` names the caller for the peer-failure count (`send_to_group`, `group_event`).
    pub async fn push_group(
        self: &Rc<Self>,
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
        what: &'static str,
        exclude: Exclude,
    ) -> Fanout {
        let peers = Peers {
            what,
            op: || RemoteOp::GroupPush {
                system: system.to_string(),
                group: group.to_string(),
                frame: frame.to_vec(),
                exclude: exclude.peer.as_deref().map(str::to_string),
            },
        };
        let op = Op::GroupPush {
            system: system.clone(),
            group: group.clone(),
            frame: frame.clone(),
            skip: exclude.here,
        };
        let (delivered, failed) = self.broadcast(op, Some(peers), add_count).await;
        Fanout {
            delivered,
            failed,
            skipped: false,
        }
    }

    /// get_online_list: members of a group on every node; a peer that does not answer in time
    /// is logged and left out rather than holding the answer.
    pub async fn online_list(self: &Rc<Self>, system: Arc<str>, group: Arc<str>) -> Vec<String> {
        let peers = Peers {
            what: "get_online_list",
            op: || RemoteOp::OnlineList {
                system: system.to_string(),
                group: group.to_string(),
            },
        };
        let op = Op::OnlineList {
            system: system.clone(),
            group: group.clone(),
        };
        let merge = |list: &mut Vec<String>, reply| {
            if let Reply::List(more) = reply {
                list.extend(more);
            }
        };
        self.broadcast(op, Some(peers), merge).await.0
    }

    /// send_to_system: every client of the system on every node but `exclude`.
    pub async fn push_system(
        self: &Rc<Self>,
        system: Arc<str>,
        frame: SharedFrame,
        exclude: Exclude,
    ) -> Fanout {
        let peers = Peers {
            what: "send_to_system",
            op: || RemoteOp::SystemPush {
                system: system.to_string(),
                frame: frame.to_vec(),
                exclude: exclude.peer.as_deref().map(str::to_string),
            },
        };
        let op = Op::SystemPush {
            system: system.clone(),
            frame: frame.clone(),
            skip: exclude.here,
        };
        let (delivered, failed) = self.broadcast(op, Some(peers), add_count).await;
        Fanout {
            delivered,
            failed,
            skipped: false,
        }
    }

    /// send_to_user: the system's connections bound with `user_id` on every node but
    /// `exclude`; [`Fanout::skipped`] says whether that one was among them.
    pub async fn push_user(
        self: &Rc<Self>,
        system: Arc<str>,
        user_id: Arc<str>,
        frame: SharedFrame,
        exclude: Exclude,
    ) -> Fanout {
        let peers = Peers {
            what: "send_to_user",
            op: || RemoteOp::UserPush {
                system: system.to_string(),
                user_id: user_id.to_string(),
                frame: frame.to_vec(),
                exclude: exclude.peer.as_deref().map(str::to_string),
            },
        };
        let op = Op::UserPush {
            system: system.clone(),
            user_id: user_id.clone(),
            frame: frame.clone(),
            skip: exclude.here,
        };
        let merge = add_count_skipped;
        let ((delivered, skipped), failed) = self.broadcast(op, Some(peers), merge).await;
        Fanout {
            delivered,
            failed,
            skipped,
        }
    }

    /// get_group_presence: the group's members on every node with their user data.
    pub async fn group_presence(self: &Rc<Self>, system: Arc<str>, group: Arc<str>) -> Vec<Member> {
        let peers = Peers {
            what: "get_group_presence",
            op: || RemoteOp::Presence {
                system: system.to_string(),
                group: group.to_string(),
            },
        };
        let op = Op::Presence {
            system: system.clone(),
            group: group.clone(),
        };
        let merge = |list: &mut Vec<Member>, reply| {
            if let Reply::Members(more) = reply {
                list.extend(more);
            }
        };
        self.broadcast(op, Some(peers), merge).await.0
    }

    /// get_system_stats: clients summed over the cluster, groups and users as distinct names
    /// across every node (a group with members on two nodes counts once; see
    /// [`crate::types`]).
    pub async fn system_stats(self: &Rc<Self>, system: Arc<str>) -> SystemStats {
        let peers = Peers {
            what: "get_system_stats",
            op: || RemoteOp::Stats {
                system: system.to_string(),
            },
        };
        let op = Op::Stats {
            system: system.clone(),
        };
        let merge = |total: &mut crate::types::StatsPart, reply| {
            if let Reply::Stats(part) = reply {
                total.merge(part);
            }
        };
        let (mut total, _) = self.broadcast(op, Some(peers), merge).await;
        total.normalize();
        total.counts()
    }

    /// Tells the group's members on every node (this one included) that `conn` came, went
    /// or left: the push of 1001, 1002 or 1003 with its clientId, userId and extend (`data`,
    /// read by the caller while the connection still had them).
    pub async fn announce(
        self: &Rc<Self>,
        conn: &Conn,
        group: Arc<str>,
        event: MemberEvent,
        data: &str,
    ) {
        let (code, msg) = event.code_and_msg();
        let frame = message::push_frame(&self.shard.message_id(), "", code, msg, data);
        let system = Arc::from(conn.system());
        let nobody = Exclude::default();
        self.push_group(system, group, frame, "group_event", nobody)
            .await;
    }

    /// The one exit path of every connection: leave all groups, then tell each group's
    /// remaining members (1002) on every core and node.
    pub async fn end_conn(self: &Rc<Self>, conn: &Rc<Conn>, reason: EndReason) {
        let shard = &self.shard;
        let groups = shard.remove_conn(conn);
        shard.metrics.disconnected(reason);
        shard.webhook_event(crate::webhook::Kind::Offline, conn, "");
        self.user_gone(conn);
        tracing::debug!(client = %conn.client_id(), peer = %conn.peer(), core = shard.id, ?reason, groups = groups.len(), "client disconnected");
        if groups.is_empty() {
            return;
        }
        let data = conn.member_event_data();
        for group in &groups {
            self.occupancy_check(conn.system(), group, false);
        }
        for group in groups {
            self.announce(conn, Arc::from(&*group), MemberEvent::Offline, &data)
                .await;
        }
    }

    /// unbind_from_group: takes `conn` out of `group` (it stays connected and keeps its userId
    /// and extend), then tells the group's remaining members on every node with a 1003. False,
    /// and nothing pushed, when it was not a member. The one unbind path: the API's, and any
    /// other caller's.
    pub async fn unbind_from_group(self: &Rc<Self>, conn: &Rc<Conn>, group: Arc<str>) -> bool {
        let shard = &self.shard;
        if !shard.leave_group_local(conn, &group) {
            return false;
        }
        shard.webhook_event(crate::webhook::Kind::Unbind, conn, &group);
        self.occupancy_check(conn.system(), &group, false);
        tracing::debug!(client = %conn.client_id(), core = shard.id, group = %group, "client left a group");
        let data = conn.member_event_data();
        self.announce(conn, group, MemberEvent::Left, &data).await;
        true
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
        join_all(calls).await.iter().map(Reply::count).sum()
    }

    /// Every core's counters (and with `detail` its systems and groups) for the ops routes,
    /// in core order.
    pub async fn gather_metrics(
        self: &Rc<Self>,
        detail: bool,
    ) -> Vec<crate::counters::CoreSnapshot> {
        let calls = (0..self.shard.nr_cores).map(|core| self.call(core, Op::Metrics { detail }));
        join_all(calls)
            .await
            .into_iter()
            .filter_map(|reply| match reply {
                Reply::Metrics(snapshot) => Some(*snapshot),
                _ => None,
            })
            .collect()
    }

    /// This core's counters and state, its peer links' included.
    fn metrics_snapshot(&self, detail: bool) -> crate::counters::CoreSnapshot {
        let mut s = self.shard.metrics_snapshot(detail);
        if let Some(cluster) = self.cluster() {
            s.links = cluster.link_stats();
        }
        s
    }

    /// Closes the clients of every core with 1001: the node is cut off from its cluster.
    /// Returns how many.
    pub async fn give_up_clients(self: &Rc<Self>) -> usize {
        let (closed, _) = self
            .broadcast(Op::GiveUpClients, NODE_ONLY, add_count)
            .await;
        closed
    }
}

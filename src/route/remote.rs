//! The node port's side of routing: a request a peer sent over its link ([`serve_remote`]) is
//! turned into the [`Op`] this node's cores run (`local_op`), and its answer back into a
//! [`RemoteReply`]. Ops are node-local here: the sender addressed every node it meant itself.

use super::{merge_replies, Router, NODE_ONLY};
use crate::cluster::proto::{RemoteOp, RemoteReply};
use crate::shard::inbox::{Op, Reply, Skip};
use crate::types::{self, Target};
use crate::ws::frame::SharedFrame;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;

/// Where on this node a peer's request runs.
enum Local {
    /// On every core (a group, system or user op), answers merged.
    Cores(Op),
    /// On the core of one client.
    Core(usize, Op),
    /// On the cores of the listed clients, one `Deliver` per core that has any.
    Deliver {
        per_core: Vec<Vec<(u32, u32)>>,
        system: Arc<str>,
        frame: SharedFrame,
    },
    /// The membership question: answered by the router itself.
    Membership,
    /// A client of a core this node does not have: nobody.
    Nowhere,
}

/// The one mapping of a peer's op onto this node's: the same [`Op`] the API would have sent.
/// `skip` finds a push's `exclude` clientId on this node.
fn local_op(op: RemoteOp, nr_cores: usize, skip: impl Fn(Option<String>) -> Option<Skip>) -> Local {
    let core_of = |target: &Target| (target.core as usize) < nr_cores;
    match op {
        RemoteOp::Deliver {
            system,
            targets,
            frame,
        } => {
            let mut per_core: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nr_cores];
            for t in targets.iter().filter(|t| core_of(t)) {
                per_core[t.core as usize].push((t.slot, t.generation));
            }
            Local::Deliver {
                per_core,
                system: Arc::from(system),
                frame: Arc::from(frame),
            }
        }
        RemoteOp::GroupPush {
            system,
            group,
            frame,
            exclude,
        } => Local::Cores(Op::GroupPush {
            system: Arc::from(system),
            group: Arc::from(group),
            frame: Arc::from(frame),
            skip: skip(exclude),
        }),
        RemoteOp::OnlineList { system, group } => Local::Cores(Op::OnlineList {
            system: Arc::from(system),
            group: Arc::from(group),
        }),
        RemoteOp::SystemPush {
            system,
            frame,
            exclude,
        } => Local::Cores(Op::SystemPush {
            system: Arc::from(system),
            frame: Arc::from(frame),
            skip: skip(exclude),
        }),
        RemoteOp::UserPush {
            system,
            user_id,
            frame,
            exclude,
        } => Local::Cores(Op::UserPush {
            system: Arc::from(system),
            user_id: Arc::from(user_id),
            frame: Arc::from(frame),
            skip: skip(exclude),
        }),
        RemoteOp::Presence { system, group } => Local::Cores(Op::Presence {
            system: Arc::from(system),
            group: Arc::from(group),
        }),
        RemoteOp::Stats { system } => Local::Cores(Op::Stats {
            system: Arc::from(system),
        }),
        RemoteOp::Membership => Local::Membership,
        RemoteOp::HistoryPush {
            system,
            group,
            history,
            push,
        } => Local::Core(
            super::history::stream_core(&system, &group, nr_cores),
            Op::HistoryPush {
                system: Arc::from(system),
                group: Arc::from(group),
                history,
                push: Box::new(push),
            },
        ),
        RemoteOp::OfflineStore {
            system,
            user_id,
            push,
        } => Local::Core(
            super::history::stream_core(&system, &user_id, nr_cores),
            Op::OfflineStore {
                system: Arc::from(system),
                user_id: Arc::from(user_id),
                push: Box::new(crate::shard::offline::Stored {
                    message_id: push.message_id,
                    frame: Arc::from(push.frame),
                }),
            },
        ),
        RemoteOp::OfflineTake { system, user_id } => Local::Core(
            super::history::stream_core(&system, &user_id, nr_cores),
            Op::OfflineTake {
                system: Arc::from(system),
                user_id: Arc::from(user_id),
            },
        ),
        RemoteOp::UserClaim {
            system,
            user_id,
            client_id,
            take,
        } => Local::Core(
            super::history::stream_core(&system, &user_id, nr_cores),
            Op::UserClaim {
                system: Arc::from(system),
                user_id: Arc::from(user_id),
                client_id: Arc::from(client_id),
                take,
            },
        ),
        RemoteOp::UserRelease {
            system,
            user_id,
            client_id,
        } => Local::Core(
            super::history::stream_core(&system, &user_id, nr_cores),
            Op::UserRelease {
                system: Arc::from(system),
                user_id: Arc::from(user_id),
                client_id: Arc::from(client_id),
            },
        ),
        RemoteOp::Occupancy {
            system,
            group,
            node,
            core,
            seq,
            present,
        } => match node.parse::<SocketAddrV4>() {
            Ok(node) => Local::Core(
                super::history::stream_core(&system, &group, nr_cores),
                Op::Occupancy {
                    system: Arc::from(system),
                    group: Arc::from(group),
                    holder: (node, core),
                    seq,
                    present,
                },
            ),
            Err(_) => Local::Nowhere,
        },
        RemoteOp::HistoryRead {
            system,
            group,
            history,
            since,
            limit,
        } => Local::Core(
            super::history::stream_core(&system, &group, nr_cores),
            Op::HistoryRead {
                system: Arc::from(system),
                group: Arc::from(group),
                history,
                since,
                limit: limit as usize,
            },
        ),
        RemoteOp::Bind { target, .. }
        | RemoteOp::Close { target, .. }
        | RemoteOp::IsOnline { target, .. }
        | RemoteOp::Unbind { target, .. }
            if !core_of(&target) =>
        {
            Local::Nowhere
        }
        RemoteOp::Bind {
            target,
            system,
            group,
            user_id,
            extend,
            resume,
        } => Local::Core(
            target.core as usize,
            Op::Bind {
                slot: target.slot,
                generation: target.generation,
                system: Arc::from(system),
                group: Arc::from(group),
                user_id,
                extend,
                resume: resume.map(Box::new),
            },
        ),
        RemoteOp::Close {
            target,
            system,
            kick,
        } => Local::Core(
            target.core as usize,
            Op::Close {
                slot: target.slot,
                generation: target.generation,
                system: Arc::from(system),
                kick,
            },
        ),
        RemoteOp::IsOnline { target, system } => Local::Core(
            target.core as usize,
            Op::IsOnline {
                slot: target.slot,
                generation: target.generation,
                system: Arc::from(system),
            },
        ),
        RemoteOp::Unbind {
            target,
            system,
            group,
        } => Local::Core(
            target.core as usize,
            Op::Unbind {
                slot: target.slot,
                generation: target.generation,
                system: Arc::from(system),
                group: Arc::from(group),
            },
        ),
    }
}

/// This node's answer as it goes back to the peer. A share of get_system_stats is normalized
/// and capped to what a link carries (see [`crate::types`]); the way back is
/// [`super::from_remote`].
fn to_remote(reply: Reply) -> RemoteReply {
    match reply {
        Reply::Count(n) => RemoteReply::Count(n as u32),
        Reply::CountSkipped(n) => RemoteReply::CountSkipped(n as u32),
        Reply::List(list) => RemoteReply::List(list),
        Reply::Members(members) => RemoteReply::Members(members),
        Reply::Stats(mut part) => {
            part.normalize();
            part.cap(types::MAX_HASHES);
            RemoteReply::Stats(part)
        }
        Reply::Refused(why) => RemoteReply::Refused(why.to_string()),
        Reply::History(read) => super::history::read_to_remote(read),
        Reply::Recovered(recovered) => RemoteReply::Recovered(recovered),
        Reply::Offline(list) => super::offline::to_remote(list),
        Reply::Claimed(claimed) => RemoteReply::Claimed(claimed),
        reply => RemoteReply::Done(reply.found()),
    }
}

/// Runs a request from another node (`from`, proven by the link's handshake) on this node.
pub async fn serve_remote(route: &Rc<Router>, from: SocketAddrV4, op: RemoteOp) -> RemoteReply {
    let skip = |exclude: Option<String>| route.exclude(exclude.as_deref()).here;
    match local_op(op, route.shard.nr_cores, skip) {
        Local::Cores(op) => {
            let (reply, _) = route.broadcast(op, NODE_ONLY, merge_replies).await;
            to_remote(reply.unwrap_or(Reply::Unreachable))
        }
        Local::Core(core, op) => to_remote(route.call(core, op).await),
        Local::Deliver {
            per_core,
            system,
            frame,
        } => {
            let reached = route.deliver_on_cores(per_core, &system, &frame).await;
            RemoteReply::Count(reached as u32)
        }
        Local::Membership => RemoteReply::Membership {
            established: crate::readiness::membership_established(),
            lists_you: route.cluster().is_some_and(|c| c.is_peer(&from)),
        },
        Local::Nowhere => RemoteReply::Done(false),
    }
}

//! Routing by clientId: [`resolve`] is the one function that knows whether a client is on this
//! core, another core of this node, or another node, and the calls here go there.

use super::Router;
use crate::cluster::proto::{RemoteOp, RemoteReply};
use crate::ids::ClientAddr;
use crate::shard::inbox::{Op, Refusal, Reply};
use crate::types::{Kick, Resume, Target as RemoteTarget};
use crate::ws::frame::SharedFrame;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;

/// Where a clientId points.
pub enum Target {
    /// A core of this node.
    Core {
        core: usize,
        slot: u32,
        generation: u32,
    },
    /// A client of a peer node in the current peer table.
    Node {
        addr: SocketAddrV4,
        target: RemoteTarget,
    },
    /// Not a client anyone can reach: forged, tampered, sealed by another key, or owned by a node
    /// that is no longer in the cluster. Behaves as an unknown client.
    Nowhere,
}

pub fn resolve(route: &Router, client_id: &str) -> Target {
    let shard = &route.shard;
    let Some(ClientAddr {
        node,
        core,
        slot,
        generation,
    }) = shard.ids.open(client_id)
    else {
        return Target::Nowhere;
    };
    if node == shard.node {
        if (core as usize) < shard.nr_cores {
            return Target::Core {
                core: core as usize,
                slot,
                generation,
            };
        }
        return Target::Nowhere;
    }
    match route.cluster() {
        Some(cluster) if cluster.is_peer(&node) => Target::Node {
            addr: node,
            target: RemoteTarget {
                core,
                slot,
                generation,
            },
        },
        _ => Target::Nowhere,
    }
}

/// Queues `frame` to every listed client of `system`: one message per core and one per node
/// that owns some. Returns how many were reached; a node that does not answer reached none
/// (counted and logged as `what`'s peer failure).
pub async fn deliver<'a>(
    route: &Rc<Router>,
    system: &Arc<str>,
    client_ids: impl Iterator<Item = &'a str>,
    frame: SharedFrame,
    what: &'static str,
) -> usize {
    let mut per_core: Vec<Vec<(u32, u32)>> = vec![Vec::new(); route.shard.nr_cores];
    let mut per_node: HashMap<SocketAddrV4, Vec<RemoteTarget>> = HashMap::new();
    for id in client_ids {
        match resolve(route, id) {
            Target::Core {
                core,
                slot,
                generation,
            } => per_core[core].push((slot, generation)),
            Target::Node { addr, target } => per_node.entry(addr).or_default().push(target),
            Target::Nowhere => {}
        }
    }
    let local = route.deliver_on_cores(per_core, system, &frame);
    let remote = per_node.into_iter().map(|(addr, targets)| {
        let op = RemoteOp::Deliver {
            system: system.to_string(),
            targets,
            frame: frame.to_vec(),
        };
        async move {
            match route.cluster() {
                Some(cluster) => match cluster.call(addr, op).await {
                    Ok(RemoteReply::Count(n)) => n as usize,
                    Ok(RemoteReply::Failed(why)) => {
                        route.peer_failed(addr, what, &why);
                        0
                    }
                    Ok(_) => 0,
                    Err(e) => {
                        route.peer_failed(addr, what, &e);
                        0
                    }
                },
                None => 0,
            }
        }
    });
    let (local, remote) = futures_util::future::join(local, join_all(remote)).await;
    local + remote.into_iter().sum::<usize>()
}

/// What a per-client op found where the client lives.
enum Found {
    /// It ran: whether the client was there (and, for bind, was bound).
    Ran(bool),
    /// A bind with `since` bound the client: whether its missed pushes were replayed.
    Recovered(bool),
    /// The client was found but a limit refused the op.
    Refused(Refusal),
    /// The client's node is a peer that did not answer (or could not run the op): nothing is
    /// known about the client. The text says which node and why.
    Unreachable(String),
}

/// Runs a per-client op where the client lives. A peer that does not answer is counted and
/// logged as `what`'s peer failure.
async fn on_client(
    route: &Rc<Router>,
    client_id: &str,
    what: &'static str,
    local: impl FnOnce(u32, u32) -> Op,
    remote: impl FnOnce(RemoteTarget) -> RemoteOp,
) -> Found {
    match resolve(route, client_id) {
        Target::Core {
            core,
            slot,
            generation,
        } => match route.call(core, local(slot, generation)).await {
            Reply::Refused(why) => Found::Refused(why),
            Reply::Recovered(recovered) => Found::Recovered(recovered),
            reply => Found::Ran(reply.found()),
        },
        Target::Node { addr, target } => {
            let Some(cluster) = route.cluster() else {
                return Found::Ran(false);
            };
            let unreachable = |why: &dyn std::fmt::Display| {
                route.peer_failed(addr, what, why);
                Found::Unreachable(format!("node {addr} unreachable ({why})"))
            };
            match cluster.call(addr, remote(target)).await {
                Ok(RemoteReply::Done(found)) => Found::Ran(found),
                Ok(RemoteReply::Refused(why)) => Found::Refused(Refusal::Peer(why)),
                Ok(RemoteReply::Recovered(recovered)) => Found::Recovered(recovered),
                Ok(RemoteReply::Failed(why)) => unreachable(&why),
                Ok(_) => Found::Ran(false),
                Err(e) => unreachable(&e),
            }
        }
        Target::Nowhere => Found::Ran(false),
    }
}

/// Why a bind_to_group did not happen (or is not known to have happened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The client was found, but a limit refused the bind.
    #[error("{0}")]
    Refused(Refusal),
    /// The client's node did not answer (the text says which node and why).
    #[error("{0}: the bind was not confirmed; retry once the node is back or gone")]
    Unreachable(String),
}

/// What a bind_to_group did: whether the client was found and bound, and with `since`
/// whether its missed pushes were replayed (`None` without `since`, or for an unknown client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub bound: bool,
    pub recovered: Option<bool>,
}

/// bind_to_group where the client lives. `Err` when a limit refused it, or when the client's
/// node did not answer (issue 12: answering code 0 would tell the caller a bind happened that
/// nobody confirmed; an unknown client stays code 0, as in the original). With `resume`, the
/// client first gets the pushes it missed (`Router::recover`).
pub async fn bind(
    route: &Rc<Router>,
    system: Arc<str>,
    client_id: &str,
    group: Arc<str>,
    user: (String, String),
    resume: Option<Resume>,
) -> Result<Bound, BindError> {
    let (user_id, extend) = user;
    let (s, g, u, e, r) = (
        system.to_string(),
        group.to_string(),
        user_id.clone(),
        extend.clone(),
        resume.clone(),
    );
    let found = on_client(
        route,
        client_id,
        "bind_to_group",
        |slot, generation| Op::Bind {
            slot,
            generation,
            system,
            group,
            user_id,
            extend,
            resume: resume.map(Box::new),
        },
        |target| RemoteOp::Bind {
            target,
            system: s,
            group: g,
            user_id: u,
            extend: e,
            resume: r,
        },
    )
    .await;
    match found {
        Found::Ran(bound) => Ok(Bound {
            bound,
            recovered: None,
        }),
        Found::Recovered(recovered) => Ok(Bound {
            bound: true,
            recovered: Some(recovered),
        }),
        Found::Refused(why) => Err(BindError::Refused(why)),
        Found::Unreachable(why) => Err(BindError::Unreachable(why)),
    }
}

/// close_client where the client lives. `Err` when a limit refused it. A client whose node
/// does not answer is treated as unknown (code 0, as the original answers for those); the
/// failure is counted and logged. `kick` says how (close_client's, or a replaced connection's).
pub async fn close(
    route: &Rc<Router>,
    system: Arc<str>,
    client_id: &str,
    kick: Kick,
) -> Result<bool, Refusal> {
    let s = system.to_string();
    let what = match kick {
        Kick::Api => "close_client",
        Kick::Replaced => "single_connection",
    };
    let found = on_client(
        route,
        client_id,
        what,
        |slot, generation| Op::Close {
            slot,
            generation,
            system,
            kick,
        },
        |target| RemoteOp::Close {
            target,
            system: s,
            kick,
        },
    )
    .await;
    match found {
        Found::Ran(closed) => Ok(closed),
        Found::Recovered(_) => Ok(true),
        Found::Refused(why) => Err(why),
        Found::Unreachable(_) => Ok(false),
    }
}

/// is_online: connected (and not being closed) on whichever node owns it. An id that does not
/// open, belongs to another system, or whose node does not answer in time is offline.
pub async fn is_online(route: &Rc<Router>, system: Arc<str>, client_id: &str) -> bool {
    let s = system.to_string();
    let found = on_client(
        route,
        client_id,
        "is_online",
        |slot, generation| Op::IsOnline {
            slot,
            generation,
            system,
        },
        |target| RemoteOp::IsOnline { target, system: s },
    )
    .await;
    matches!(found, Found::Ran(true))
}

/// unbind_from_group on the client's own core ([`Router::unbind_from_group`]). True when it was
/// a member and left.
pub async fn unbind(
    route: &Rc<Router>,
    system: Arc<str>,
    client_id: &str,
    group: Arc<str>,
) -> bool {
    let (s, g) = (system.to_string(), group.to_string());
    let found = on_client(
        route,
        client_id,
        "unbind_from_group",
        |slot, generation| Op::Unbind {
            slot,
            generation,
            system,
            group,
        },
        |target| RemoteOp::Unbind {
            target,
            system: s,
            group: g,
        },
    )
    .await;
    matches!(found, Found::Ran(true))
}

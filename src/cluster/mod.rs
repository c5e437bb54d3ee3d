//! Cluster mode: etcd membership, the peer table, and the links to the other nodes.
//!
//! - [`membership`]: the side thread that talks to etcd (tokio, current-thread runtime) and pushes
//!   peer and system changes to the cores.
//! - [`proto`]: rkyv frames between nodes. [`handshake`]: the MAC handshake that opens every
//!   link. [`link`]: persistent, pipelined links, and the limits on inbound ones.
//! - [`Cluster`]: one core's view: the peer table it was last told, and its links.

pub mod handshake;
pub mod link;
pub mod membership;
pub mod proto;

use crate::types::SystemInfo;
use link::{Inbound, Link, LinkAuth, LinkError};
use membership::{EtcdRequest, Membership};
use proto::{RemoteOp, RemoteReply};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::time::Duration;

/// One core's view of the cluster.
pub struct Cluster {
    pub self_addr: SocketAddrV4,
    core: usize,
    timeout: Duration,
    membership: Membership,
    links: RefCell<HashMap<SocketAddrV4, Rc<Link>>>,
    /// This node's identity and the handshake key, shared by the links and the accept side.
    pub auth: Rc<LinkAuth>,
    /// This core's inbound links, within MaxNodeLinksPerCore / MaxNodeLinksPerPeer.
    pub inbound: Rc<Inbound>,
}

impl Cluster {
    pub fn new(
        config: &crate::config::Config,
        self_addr: SocketAddrV4,
        core: usize,
        membership: Membership,
    ) -> Cluster {
        Cluster {
            self_addr,
            core,
            timeout: config.rpc_timeout,
            membership,
            links: RefCell::default(),
            auth: Rc::new(LinkAuth {
                node: self_addr,
                key: handshake::LinkKey::new(&config.cluster_secret, &config.crypto_key),
            }),
            inbound: Inbound::new(
                config.max_node_links_per_core,
                config.max_node_links_per_peer,
            ),
        }
    }

    /// Replaces the peer table: links to nodes that left are closed, new nodes get a link on
    /// first use.
    pub fn set_peers(&self, peers: &[SocketAddrV4]) {
        let mut links = self.links.borrow_mut();
        links.retain(|addr, link| {
            let keep = peers.contains(addr);
            if !keep {
                link.close();
            }
            keep
        });
        for &addr in peers {
            if addr != self.self_addr {
                links
                    .entry(addr)
                    .or_insert_with(|| Link::new(addr, self.core, self.timeout, self.auth.clone()));
            }
        }
    }

    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.links.borrow().keys().copied().collect()
    }

    pub fn is_peer(&self, addr: &SocketAddrV4) -> bool {
        self.links.borrow().contains_key(addr)
    }

    /// Runs `op` on node `addr` (which must be a known peer).
    pub async fn call(&self, addr: SocketAddrV4, op: RemoteOp) -> Result<RemoteReply, LinkError> {
        let link = self.links.borrow().get(&addr).cloned();
        match link {
            Some(link) => {
                let started = std::time::Instant::now();
                let answer = link.call(op).await;
                link.stats.call_done(answer.is_ok(), started.elapsed());
                answer
            }
            None => Err(LinkError::Unreachable(addr)),
        }
    }

    /// This core's links, for `/metrics` and the status page.
    pub fn link_stats(&self) -> Vec<crate::counters::LinkSnapshot> {
        (self.links.borrow().values())
            .map(|link| link.stats.snapshot(link.addr, link.is_up()))
            .collect()
    }

    /// Registers a system in etcd (atomic create), with its options in the value.
    /// Ok(false): it already existed.
    pub async fn register(&self, system: &str, info: &SystemInfo) -> Result<bool, String> {
        self.ask(|reply| EtcdRequest::Register {
            system: system.to_string(),
            info: info.clone(),
            reply,
        })
        .await
    }

    /// Asks etcd whether a system is registered, and with which options (for a request that
    /// raced the watch). Ok(None): not registered.
    pub async fn lookup_system(&self, system: &str) -> Result<Option<SystemInfo>, String> {
        self.ask(|reply| EtcdRequest::IsRegistered {
            system: system.to_string(),
            reply,
        })
        .await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, String>>) -> EtcdRequest,
    ) -> Result<T, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.membership.send(make(tx));
        // The etcd thread answers every request within its own deadline; this one only guards
        // against the thread being gone.
        let answer = match glommio::timer::timeout(self.timeout * 2, async { Ok(rx.await) }).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the membership thread is gone".into()),
            Err(_) => Err("no answer in time".into()),
        };
        // The caller gets a short reason; the detail (often a long gRPC error) goes to the log.
        answer.map_err(|detail| {
            tracing::warn!(core = self.core, error = %detail, "etcd request failed");
            "etcd unreachable: systems cannot be registered or looked up until it is back"
                .to_string()
        })
    }
}

/// What one peer said when a node without etcd membership asked it (`RemoteOp::Membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerView {
    /// No answer within RpcTimeoutMs.
    Unreachable,
    /// It has no etcd membership either.
    NoMembership,
    /// It has membership and still lists the asking node.
    ListsUs,
    /// It has membership and dropped the asking node (its lease expired).
    DroppedUs,
}

impl PeerView {
    /// The answer to a `Membership` call.
    pub fn from_answer(answer: &Result<RemoteReply, LinkError>) -> PeerView {
        match answer {
            Ok(RemoteReply::Membership {
                established: false, ..
            }) => PeerView::NoMembership,
            Ok(RemoteReply::Membership {
                lists_you: true, ..
            }) => PeerView::ListsUs,
            Ok(RemoteReply::Membership { .. }) => PeerView::DroppedUs,
            _ => PeerView::Unreachable,
        }
    }
}

/// Whether a node that has been without etcd membership for LeaseTtl is cut off from its
/// cluster, i.e. its clients can no longer be reached through the other nodes; `Some(why)`
/// when it is.
///
/// Losing etcd alone is not enough: when etcd is down for every node, each keeps the peers it
/// knows and they go on reaching each other's clients, so closing them all would turn an etcd
/// outage into a full one. A peer vouches for the cluster when it has no membership either or
/// still lists this node; with none vouching, and one that has membership having dropped this
/// node or no peer answering at all, the clients are better off on another node. A node that
/// knows no peers keeps its clients: there is nobody to hand them to.
pub fn isolation_verdict(views: &[PeerView]) -> Option<&'static str> {
    if views.is_empty()
        || (views.iter()).any(|v| matches!(v, PeerView::NoMembership | PeerView::ListsUs))
    {
        return None;
    }
    if views.contains(&PeerView::DroppedUs) {
        Some("peers that still reach etcd dropped this node from the cluster")
    } else {
        Some("no peer answers and etcd is unreachable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerView::*;

    #[test]
    fn a_node_is_cut_off_only_when_no_peer_vouches_for_the_cluster() {
        // etcd down for everybody: the peers have no membership either, keep the clients.
        assert_eq!(isolation_verdict(&[NoMembership, Unreachable]), None);
        // A peer still lists us (its watch has not seen our lease go yet): keep.
        assert_eq!(isolation_verdict(&[ListsUs, DroppedUs]), None);
        // Nobody to hand the clients to.
        assert_eq!(isolation_verdict(&[]), None);
        assert!(isolation_verdict(&[DroppedUs, Unreachable]).is_some());
        assert!(isolation_verdict(&[Unreachable, Unreachable]).is_some());
        let ok = |established, lists_you| {
            Ok(RemoteReply::Membership {
                established,
                lists_you,
            })
        };
        assert_eq!(PeerView::from_answer(&ok(false, true)), NoMembership);
        assert_eq!(PeerView::from_answer(&ok(true, true)), ListsUs);
        assert_eq!(PeerView::from_answer(&ok(true, false)), DroppedUs);
        let addr = "10.0.0.1:7900".parse().unwrap();
        assert_eq!(
            PeerView::from_answer(&Err(LinkError::Timeout(addr))),
            Unreachable
        );
        assert_eq!(
            PeerView::from_answer(&Ok(RemoteReply::Done(true))),
            Unreachable
        );
    }
}

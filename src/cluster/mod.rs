//! Cluster mode: etcd membership, the peer table, and the links to the other nodes.
//!
//! - [`membership`]: the side thread that talks to etcd (tokio, current-thread runtime) and pushes
//!   peer and system changes to the cores.
//! - [`proto`]: rkyv frames between nodes. [`link`]: persistent, pipelined links.
//! - [`Cluster`]: one core's view: the peer table it was last told, and its links.

pub mod link;
pub mod membership;
pub mod proto;

use crate::shard::SystemInfo;
use link::{Link, LinkError};
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
}

impl Cluster {
    pub fn new(
        self_addr: SocketAddrV4,
        core: usize,
        timeout: Duration,
        membership: Membership,
    ) -> Cluster {
        Cluster {
            self_addr,
            core,
            timeout,
            membership,
            links: RefCell::default(),
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
                    .or_insert_with(|| Link::new(addr, self.core, self.timeout));
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
    pub fn link_stats(&self) -> Vec<crate::ops::metrics::LinkSnapshot> {
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

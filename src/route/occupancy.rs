//! Occupancy webhooks (issue 17, docs/webhooks.md "Occupancy"): `group_occupied` when a group
//! gains its first member anywhere in the cluster, `group_vacated` when it loses its last.
//!
//! A core whose own member count of a group goes 0 -> 1 or 1 -> 0 tells the group's owner
//! (the home of its history stream, [`Router::stream_home`]): a core of this node, or a peer
//! node. The owner keeps which (node, core) hold members ([`crate::shard::occupancy`]) and
//! emits the event on the group's empty <-> non-empty transitions only, so each is sent once,
//! by one node. When a node leaves the peer table its holders are dropped, and groups only it
//! held are vacated. When the owner itself changes (a node joins or leaves), the groups the
//! old owner kept are forgotten there without an event, and the new owner learns of holders
//! only from their next change: a transition may then be missed or, rarely, sent twice.

use super::history::Home;
use super::Router;
use crate::cluster::proto::RemoteOp;
use crate::shard::inbox::Op;
use crate::shard::occupancy::{Holder, Transition};
use crate::types::stream_owner;
use crate::webhook::Kind;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;

impl Router {
    /// After this core's members of `group` changed: if it now has exactly its first (`joined`)
    /// or no member left, tells the group's owner. Only with `WebhookOccupancy` on and for a
    /// system with a webhook URL; never
    /// waits (the word goes in a task of its own).
    pub fn occupancy_check(self: &Rc<Self>, system: &str, group: &str, joined: bool) {
        let shard = &self.shard;
        if !shard.config.webhook_occupancy {
            return;
        }
        let hooked = shard
            .system_info(system)
            .map(|info| info.webhook_url.is_some());
        if hooked != Some(true) {
            return;
        }
        let count = shard.group_len_local(system, group);
        let present = match (joined, count) {
            (true, 1) => true,
            (false, 0) => false,
            _ => return,
        };
        let seq = shard.occupancy_seq.get() + 1;
        shard.occupancy_seq.set(seq);
        let holder: Holder = (shard.node, shard.id as u32);
        let (system, group): (Arc<str>, Arc<str>) = (Arc::from(system), Arc::from(group));
        match self.stream_home(&system, &group) {
            Home::Core(core) if core == shard.id => {
                self.occupancy_here(&system, &group, holder, seq, present);
            }
            Home::Core(core) => {
                let op = Op::Occupancy {
                    system,
                    group,
                    holder,
                    seq,
                    present,
                };
                let router = self.clone();
                glommio::spawn_local(async move {
                    router.call(core, op).await;
                })
                .detach();
            }
            Home::Node(addr) => {
                let op = RemoteOp::Occupancy {
                    system: system.to_string(),
                    group: group.to_string(),
                    node: shard.node.to_string(),
                    core: holder.1,
                    seq,
                    present,
                };
                let router = self.clone();
                glommio::spawn_local(async move {
                    // A failure is counted and logged by call_owner; the word is lost (the
                    // owner, if it is gone, is replaced and learns from the next change).
                    let _ = router.call_owner(addr, op, "group_occupancy").await;
                })
                .detach();
            }
        }
    }

    /// On the group's owner core: takes a holder's word and emits the group's transition.
    pub(super) fn occupancy_here(
        &self,
        system: &str,
        group: &str,
        holder: Holder,
        seq: u64,
        present: bool,
    ) {
        let change = self
            .shard
            .occupancy
            .borrow_mut()
            .change(system, group, holder, seq, present);
        if let Some(change) = change {
            self.occupancy_emit(system, group, change);
        }
    }

    fn occupancy_emit(&self, system: &str, group: &str, change: Transition) {
        let Some(info) = self.shard.system_info(system) else {
            return;
        };
        let kind = match change {
            Transition::Occupied => Kind::GroupOccupied,
            Transition::Vacated => Kind::GroupVacated,
        };
        tracing::debug!(
            core = self.shard.id,
            system,
            group,
            ?kind,
            "group occupancy changed"
        );
        crate::webhook::emit(&info, kind, system, "", "", group, "");
    }

    /// The peer table changed (called by [`Router::peers_changed`] with the new nodes, this
    /// one included): holders on nodes that left are dropped (their groups may be vacated),
    /// then the groups this core no longer owns are forgotten.
    pub(super) fn occupancy_peers_changed(&self, nodes: &[SocketAddrV4], me: SocketAddrV4) {
        let vacated = (self.shard.occupancy.borrow_mut()).drop_nodes(|n| nodes.contains(&n));
        for (system, group) in vacated {
            self.occupancy_emit(&system, &group, Transition::Vacated);
        }
        (self.shard.occupancy.borrow_mut())
            .retain(|system, group| stream_owner(system, group, nodes.iter().copied()) == Some(me));
    }
}

//! Resolving clientIds: the one function that knows whether a client is on this core, another
//! core of this node, or (cluster mode) another node.

use crate::ids::ClientAddr;
use crate::shard::inbox::Op;
use crate::shard::Shard;
use crate::ws::frame::SharedFrame;
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
    /// Not a client of this cluster: forged, tampered, or sealed by another key. Behaves as an
    /// unknown client.
    Nowhere,
}

pub fn resolve(shard: &Shard, client_id: &str) -> Target {
    match shard.ids.open(client_id) {
        Some(ClientAddr {
            node,
            core,
            slot,
            generation,
        }) if node == shard.node && (core as usize) < shard.nr_cores => Target::Core {
            core: core as usize,
            slot,
            generation,
        },
        _ => Target::Nowhere,
    }
}

/// Queues `frame` to every listed client of `system`: one message per core that owns some.
/// Returns how many were reached.
pub async fn deliver<'a>(
    shard: &Rc<Shard>,
    system: &Arc<str>,
    client_ids: impl Iterator<Item = &'a str>,
    frame: SharedFrame,
) -> usize {
    let mut per_core: Vec<Vec<(u32, u32)>> = vec![Vec::new(); shard.nr_cores];
    for id in client_ids {
        if let Target::Core {
            core,
            slot,
            generation,
        } = resolve(shard, id)
        {
            per_core[core].push((slot, generation));
        }
    }
    let mut reached = 0;
    for (core, targets) in per_core.into_iter().enumerate() {
        if targets.is_empty() {
            continue;
        }
        let op = Op::Deliver {
            targets,
            system: system.clone(),
            frame: frame.clone(),
        };
        if let crate::shard::inbox::Reply::Count(n) = shard.call(core, op).await {
            reached += n;
        }
    }
    reached
}

pub async fn bind(
    shard: &Rc<Shard>,
    system: Arc<str>,
    client_id: &str,
    group: Arc<str>,
    user_id: String,
    extend: String,
) -> bool {
    match resolve(shard, client_id) {
        Target::Core {
            core,
            slot,
            generation,
        } => shard
            .call(
                core,
                Op::Bind {
                    slot,
                    generation,
                    system,
                    group,
                    user_id,
                    extend,
                },
            )
            .await
            .found(),
        Target::Nowhere => false,
    }
}

pub async fn close(shard: &Rc<Shard>, system: Arc<str>, client_id: &str) -> bool {
    match resolve(shard, client_id) {
        Target::Core {
            core,
            slot,
            generation,
        } => shard
            .call(
                core,
                Op::Close {
                    slot,
                    generation,
                    system,
                },
            )
            .await
            .found(),
        Target::Nowhere => false,
    }
}

//! Messages between cores. Only owned, `Send` values cross: strings as `Arc<str>`, frames as the
//! shared `Arc<[u8]>` built once by the core that received the API request.

use crate::types::{Claimed, HistoryOpts, Kick, Member, Resume, StatsPart, StreamPos, SystemInfo};
use crate::ws::frame::SharedFrame;
use std::sync::Arc;

/// One message on a core-to-core channel.
pub enum CoreMsg {
    Request { from: usize, tag: u64, op: Op },
    Reply { tag: u64, reply: Reply },
}

/// Work for the core that owns the state.
#[derive(Clone)]
pub enum Op {
    /// Queue `frame` to each client `(slot, generation)` of `targets` that belongs to `system`.
    Deliver {
        targets: Vec<(u32, u32)>,
        system: Arc<str>,
        frame: SharedFrame,
    },
    /// Set user data and add the client to a group; 1001 to the group on the first bind.
    /// With `resume`, the client first gets the pushes it missed (answers `Recovered`).
    Bind {
        slot: u32,
        generation: u32,
        system: Arc<str>,
        group: Arc<str>,
        user_id: String,
        extend: String,
        resume: Option<Box<Resume>>,
    },
    /// To the core that owns the group's stream: give the push its offset, keep it, and send
    /// it to the group everywhere (answers the `Count` reached).
    HistoryPush {
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        push: Box<HistoryPush>,
    },
    /// To the core that owns the group's stream: `holder` (node, core) holds members of the
    /// group now (`present`) or no longer does, as of its sequence `seq` (issue 17).
    Occupancy {
        system: Arc<str>,
        group: Arc<str>,
        holder: crate::shard::occupancy::Holder,
        seq: u64,
        present: bool,
    },
    /// To the core that owns the group's stream: its position and kept pushes after `since`.
    HistoryRead {
        system: Arc<str>,
        group: Arc<str>,
        history: HistoryOpts,
        since: Option<StreamPos>,
        limit: usize,
    },
    /// Keep a push for a user (on the core that owns the (system, userId)).
    OfflineStore {
        system: Arc<str>,
        user_id: Arc<str>,
        push: Box<crate::shard::offline::Stored>,
    },
    /// Remove and answer a user's kept pushes.
    OfflineTake { system: Arc<str>, user_id: Arc<str> },
    /// To the core that owns the (system, userId) of a system with singleConnection: the
    /// connection `client_id` holds the user now (`take`: a new connection; else a re-claim
    /// after the owner moved). Answers `Claimed`.
    UserClaim {
        system: Arc<str>,
        user_id: Arc<str>,
        client_id: Arc<str>,
        take: bool,
    },
    /// To the same core: `client_id` no longer holds the user.
    UserRelease {
        system: Arc<str>,
        user_id: Arc<str>,
        client_id: Arc<str>,
    },
    /// Queue `frame` to this core's members of the group.
    GroupPush {
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
        skip: Option<Skip>,
    },
    /// This core's members of the group, as clientIds.
    OnlineList { system: Arc<str>, group: Arc<str> },
    /// Close the client's connection as `kick` says (then 1002 to its groups).
    Close {
        slot: u32,
        generation: u32,
        system: Arc<str>,
        kick: Kick,
    },
    /// Whether the client is connected and not on its way out.
    IsOnline {
        slot: u32,
        generation: u32,
        system: Arc<str>,
    },
    /// Queue `frame` to every client of the system on this core.
    SystemPush {
        system: Arc<str>,
        frame: SharedFrame,
        skip: Option<Skip>,
    },
    /// Remove the client from a group; 1003 to the remaining members if it was one.
    Unbind {
        slot: u32,
        generation: u32,
        system: Arc<str>,
        group: Arc<str>,
    },
    /// Queue `frame` to this core's connections of the system bound with `user_id`.
    UserPush {
        system: Arc<str>,
        user_id: Arc<str>,
        frame: SharedFrame,
        skip: Option<Skip>,
    },
    /// This core's members of the group with their userId and extend.
    Presence { system: Arc<str>, group: Arc<str> },
    /// This core's share of get_system_stats.
    Stats { system: Arc<str> },
    /// This core's counters (and with `detail` its systems and groups) for the ops routes.
    Metrics { detail: bool },
    /// Close every WebSocket client of this core with 1001: the node was cut off from the
    /// cluster. Answers how many were closed.
    GiveUpClients,
    /// To core 0, the single writer of the registered-systems set: add if absent, with the
    /// options it was registered with.
    Register {
        system: Arc<str>,
        info: Arc<SystemInfo>,
    },
    /// From core 0 to the others (or from a core that looked the system up in etcd): a system
    /// was registered. Every core keeps the same `Arc`.
    AddSystem {
        system: Arc<str>,
        info: Arc<SystemInfo>,
    },
}

/// The connection a group, system or user push leaves out (the API's `excludeClientId`),
/// resolved on this node: the core that owns it and its registry address there. Every core
/// gets the same value; only the owning core finds the connection to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub core: usize,
    pub slot: u32,
    pub generation: u32,
}

impl Skip {
    /// The `(slot, generation)` to leave out on core `core`, if it is that connection's core.
    pub fn on_core(skip: Option<Skip>, core: usize) -> Option<(u32, u32)> {
        skip.filter(|s| s.core == core)
            .map(|s| (s.slot, s.generation))
    }
}

/// The fields of a send_to_group whose frame the stream's owner builds, with the offset.
pub use crate::types::HistoryPush;

/// Why a core (or a peer node) refused an op whose target it found: a configured limit. The
/// text is what the API caller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// bind_to_group: the client is in `most` groups already.
    #[error("client is in {most} groups already, the MaxGroupsPerClient limit")]
    MaxGroupsPerClient { most: usize },
    /// register: `known` systems are registered already.
    #[error("{known} systems are registered, MaxSystems = {most}: no more can be registered")]
    MaxSystems { known: usize, most: usize },
    /// A peer node's refusal, its text as it came over the link.
    #[error("{0}")]
    Peer(String),
}

pub enum Reply {
    /// The op found its target (or, for group ops, simply ran).
    Done(bool),
    /// How many targets were reached.
    Count(usize),
    /// A `Count` of a push with a [`Skip`] whose connection was one of the targets and was
    /// left out (send_to_user's `store: true` then knows the user was online).
    CountSkipped(usize),
    List(Vec<String>),
    Members(Vec<Member>),
    Stats(StatsPart),
    /// Answer to `Op::Metrics` (boxed: it is much larger than the other answers).
    Metrics(Box<crate::counters::CoreSnapshot>),
    /// The client was found but a limit refused the op.
    Refused(Refusal),
    /// A stream's position and kept pushes.
    History(crate::shard::history::Read),
    /// A bind with `since` bound the client; whether its missed pushes could be replayed.
    Recovered(bool),
    /// Answer to `Op::OfflineTake`, oldest first.
    Offline(Vec<crate::shard::offline::Stored>),
    /// Answer to `Op::UserClaim`.
    Claimed(Claimed),
    /// The core could not be reached (shutting down).
    Unreachable,
}

impl Reply {
    pub fn found(&self) -> bool {
        matches!(self, Reply::Done(true) | Reply::Recovered(_))
    }

    /// Whether a push left its [`Skip`] connection out here (`CountSkipped`).
    pub fn skipped(&self) -> bool {
        matches!(self, Reply::CountSkipped(_))
    }

    /// The `Count`, or 0 for any other answer.
    pub fn count(&self) -> usize {
        match self {
            Reply::Count(n) | Reply::CountSkipped(n) => *n,
            _ => 0,
        }
    }

    /// Folds another core's or node's answer to the same op into this one: counts add up,
    /// lists and shares join. An answer of another kind (a core that could not be reached)
    /// adds nothing.
    pub fn absorb(&mut self, other: Reply) {
        match (self, other) {
            (Reply::Count(n), Reply::Count(more))
            | (Reply::CountSkipped(n), Reply::Count(more)) => *n += more,
            (this @ (Reply::Count(_) | Reply::CountSkipped(_)), Reply::CountSkipped(more)) => {
                *this = Reply::CountSkipped(this.count() + more)
            }
            (Reply::List(list), Reply::List(more)) => list.extend(more),
            (Reply::Members(list), Reply::Members(more)) => list.extend(more),
            (Reply::Stats(total), Reply::Stats(part)) => total.merge(part),
            _ => {}
        }
    }
}

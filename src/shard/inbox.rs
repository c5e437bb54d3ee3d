//! Messages between cores. Only owned, `Send` values cross: strings as `Arc<str>`, frames as the
//! shared `Arc<[u8]>` built once by the core that received the API request.

use crate::ws::frame::SharedFrame;
use std::sync::Arc;

/// One message on a core-to-core channel.
pub enum CoreMsg {
    Request { from: usize, tag: u64, op: Op },
    Reply { tag: u64, reply: Reply },
}

/// Work for the core that owns the state.
pub enum Op {
    /// Queue `frame` to each client `(slot, generation)` of `targets` that belongs to `system`.
    Deliver {
        targets: Vec<(u32, u32)>,
        system: Arc<str>,
        frame: SharedFrame,
    },
    /// Set user data and add the client to a group; 1001 to the group on the first bind.
    Bind {
        slot: u32,
        generation: u32,
        system: Arc<str>,
        group: Arc<str>,
        user_id: String,
        extend: String,
    },
    /// Queue `frame` to this core's members of the group.
    GroupPush {
        system: Arc<str>,
        group: Arc<str>,
        frame: SharedFrame,
    },
    /// This core's members of the group, as clientIds.
    OnlineList { system: Arc<str>, group: Arc<str> },
    /// Close the client's connection (then 1002 to its groups).
    Close {
        slot: u32,
        generation: u32,
        system: Arc<str>,
    },
    /// To core 0, the single writer of the registered-systems set: add if absent.
    Register { system: Arc<str> },
    /// From core 0 to the others: a system was registered.
    AddSystem { system: Arc<str> },
}

pub enum Reply {
    /// The op found its target (or, for group ops, simply ran).
    Done(bool),
    /// How many targets were reached.
    Count(usize),
    List(Vec<String>),
    /// The client was found but a limit refused the op; the text says which.
    Refused(String),
    /// The core could not be reached (shutting down).
    Unreachable,
}

impl Reply {
    pub fn found(&self) -> bool {
        matches!(self, Reply::Done(true))
    }
}

//! The plain data every layer passes around: a registered system's options, why a connection
//! ended, a client on a node, a group member, a share of get_system_stats, and for group
//! history (issue 15) a stream position, a push its owner numbers, and which node owns a
//! stream ([`stream_owner`], which every node must compute alike). A leaf: it names
//! nothing of the crate, so `shard`, `cluster`, `route`, `api`, `ops` and `webhook` share these
//! without importing each other.
//! The rkyv derives are there because [`Target`], [`Member`] and [`StatsPart`] also cross
//! between nodes (see `cluster::proto`).
//!
//! ## get_system_stats
//! Counting a system's distinct groups and users across cores and nodes.
//!
//! A group with members on two cores or two nodes must count once, and so must a userId bound on
//! several connections. Summing per-node counts would count such a group on every node; shipping
//! the names would make the answer as large as the system. So each core hashes every name to 64
//! bits, a node sends its sorted, distinct hashes (8 bytes a name), and the node that got the
//! request unions them and counts. Two different names share a hash with probability about
//! n²/2^65 for n distinct names (under 1e-7 for a million), and a shared hash only makes a count
//! one too low: exact enough for a statistic, and far cheaper than the names.
//!
//! The hash is FNV-1a followed by the splitmix64 finalizer, written here rather than taken from
//! std so that every node of a cluster computes the same value whatever compiler built it (std's
//! `DefaultHasher` may change between Rust releases; a mixed cluster would then overcount).
//!
//! A node sends at most [`MAX_HASHES`] hashes of each kind (4 MiB, a quarter of the node frame
//! limit each); past that the rest are counted but not listed, and the answer becomes an upper
//! bound rather than a frame too large for the link.

/// A registered system's options, immutable once registered: every core holds the same `Arc`.
/// `Default` is the original's behaviour: no secret, no webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// When set, the system's API calls must carry `X-Signature` and its connects a JWT.
    pub secret: Option<String>,
    /// When set, this node POSTs the system's connection events there.
    pub webhook_url: Option<String>,
    /// When set, every group of the system is a stream with history (docs/history.md).
    pub history: Option<HistoryOpts>,
    /// When set, a userId holds one connection at a time: its newest closes the older ones
    /// with 4001 (docs/api-additions.md, "One connection per user").
    pub single_connection: bool,
}

/// A system's group history, as registered (already clamped to the registering node's
/// limits; the owner of a stream clamps again to its own).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOpts {
    /// Pushes a stream keeps at most.
    pub size: u32,
    /// Seconds a stream keeps a push at most.
    pub ttl_seconds: u32,
}

/// Why a connection ended: logged, and counted by the `reason` label of
/// `wspush_disconnects_total` ([`crate::counters::REASONS`], in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent a close frame.
    ClientClose,
    /// EOF or a socket error without a close frame.
    Reset,
    /// No pong (or any frame) within PongTimeout.
    PongTimeout,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// close_client from the API.
    Kicked,
    /// A protocol violation or an oversized message.
    ProtocolError,
    /// The server is shutting down.
    Shutdown,
    /// This node lost its cluster membership and its peers dropped it (see
    /// `runtime::isolation_loop`): its clients go to a node the others can reach.
    CutOff,
    /// A newer connection of its user took its place (a system with singleConnection).
    Replaced,
}

/// Why the server closes a client that something else asked it to close.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// close_client from the API: 1000.
    Api,
    /// A newer connection of the same user, in a system with singleConnection: 4001.
    Replaced,
}

/// What the owner of a (system, userId) of a system with singleConnection answered a claim
/// of one of its connections (`crate::shard::single`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claimer holds the user, and nobody else did.
    Kept,
    /// The claimer holds the user now; the connection with this clientId held it before and
    /// is to be closed.
    Replaced(String),
    /// Another connection holds the user: the claimer is to be closed (a re-claim after the
    /// owner moved, which found a newer connection there first).
    Lost,
}

/// A client on the receiving node.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub core: u8,
    pub slot: u32,
    pub generation: u32,
}

/// One group member as get_group_presence lists it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client_id: String,
    pub user_id: String,
    pub extend: String,
}

/// One core's or one node's share of get_system_stats; see the module doc for why names travel
/// as 64-bit hashes.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default, PartialEq, Eq,
)]
pub struct StatsPart {
    pub clients: u64,
    /// Hashes of the names of the groups with members here (sorted, distinct once merged).
    pub groups: Vec<u64>,
    /// Hashes of the distinct non-empty userIds bound here.
    pub users: Vec<u64>,
    /// Groups and users past the size a node sends as hashes: counted, not deduplicated.
    pub unlisted_groups: u64,
    pub unlisted_users: u64,
    /// Offline messages kept here for the system's users (issue 15).
    pub offline: u64,
}

/// Hashes of each kind (groups, users) one node sends at most.
pub const MAX_HASHES: usize = 1 << 19;

/// The answer of get_system_stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemStats {
    pub clients: u64,
    pub groups: u64,
    pub users: u64,
    /// Offline messages kept for the system's users, on every node; `None` (and no field in
    /// the answer, as the original's) on a node with offline messages off.
    pub offline_messages: Option<u64>,
}

/// A name's 64-bit hash, the same on every node and every build.
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

impl StatsPart {
    /// Adds another core's or node's share.
    pub fn merge(&mut self, other: StatsPart) {
        self.clients += other.clients;
        self.groups.extend(other.groups);
        self.users.extend(other.users);
        self.unlisted_groups += other.unlisted_groups;
        self.unlisted_users += other.unlisted_users;
        self.offline += other.offline;
    }

    /// Sorts and deduplicates the hashes: what makes a spanning group count once.
    pub fn normalize(&mut self) {
        for hashes in [&mut self.groups, &mut self.users] {
            hashes.sort_unstable();
            hashes.dedup();
        }
    }

    /// Keeps at most `max` hashes of each kind (of a normalized part), counting the rest.
    pub fn cap(&mut self, max: usize) {
        if self.groups.len() > max {
            self.unlisted_groups += (self.groups.len() - max) as u64;
            self.groups.truncate(max);
        }
        if self.users.len() > max {
            self.unlisted_users += (self.users.len() - max) as u64;
            self.users.truncate(max);
        }
    }

    /// The counts of a normalized part.
    pub fn counts(&self) -> SystemStats {
        SystemStats {
            clients: self.clients,
            groups: self.groups.len() as u64 + self.unlisted_groups,
            users: self.users.len() as u64 + self.unlisted_users,
            offline_messages: Some(self.offline),
        }
    }
}

/// A position in a group's stream, as a client last saw it (`since`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamPos {
    pub offset: u64,
    pub epoch: String,
}

/// bind_to_group's `since`, with the system's history options the stream's owner needs.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: StreamPos,
    pub history: HistoryOpts,
}

/// A send_to_group of a system with history, as its stream's owner receives it: the fields
/// of the frame it builds once it knows the offset.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HistoryPush {
    pub message_id: String,
    pub send_user_id: String,
    pub code: i64,
    pub msg: String,
    /// Raw JSON, as the API received it.
    pub data: String,
    /// excludeClientId, when it reaches a client: the owner leaves that connection out of the
    /// fan-out (the push is kept in the stream all the same).
    pub exclude: Option<String>,
}

/// The node that owns the history stream of (`system`, `group`) among `nodes`: the highest
/// rendezvous score, so a node joining or leaving moves only the streams it wins or held.
/// The same on every node and build (it uses [`name_hash`]); `None` without nodes.
pub fn stream_owner(
    system: &str,
    group: &str,
    nodes: impl IntoIterator<Item = std::net::SocketAddrV4>,
) -> Option<std::net::SocketAddrV4> {
    let key = stream_key(system, group);
    nodes.into_iter().max_by_key(|node| {
        let (ip, port) = (u32::from(*node.ip()) as u64, node.port() as u64);
        (mix64(key ^ mix64(ip << 16 | port)), ip, port)
    })
}

/// The 64-bit key of a stream: the core of its owner node that holds it is this modulo the
/// node's cores.
pub fn stream_key(system: &str, group: &str) -> u64 {
    name_hash(system) ^ mix64(name_hash(group).wrapping_add(1))
}

/// A bijective 64-bit mixer (the splitmix64 finalizer): the stats hash, and the messageIds.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(clients: u64, groups: &[&str], users: &[&str]) -> StatsPart {
        StatsPart {
            clients,
            groups: groups.iter().map(|g| name_hash(g)).collect(),
            users: users.iter().map(|u| name_hash(u)).collect(),
            ..StatsPart::default()
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // Nodes of one cluster must agree: a change here must bump PROTO_VERSION.
        assert_eq!(name_hash(""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(name_hash("room"), name_hash("room"));
        assert_ne!(name_hash("room"), name_hash("roon"));
        assert_ne!(name_hash("ab"), name_hash("ba"));
    }

    #[test]
    fn a_name_on_several_parts_counts_once() {
        let mut total = part(3, &["room", "lobby"], &["alice", "bob"]);
        total.merge(part(2, &["room"], &["alice"]));
        total.merge(part(1, &["solo"], &[]));
        total.merge(StatsPart::default());
        total.normalize();
        assert_eq!(
            total.counts(),
            SystemStats {
                offline_messages: Some(0),
                clients: 6,
                groups: 3,
                users: 2
            }
        );
    }

    #[test]
    fn a_capped_part_counts_what_it_does_not_list() {
        let names: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut node = part(10, &refs, &refs[..3]);
        node.normalize();
        node.cap(4);
        assert_eq!((node.groups.len(), node.unlisted_groups), (4, 6));
        assert_eq!((node.users.len(), node.unlisted_users), (3, 0));
        let mut total = part(1, &[], &[]);
        total.merge(node);
        total.normalize();
        assert_eq!(
            total.counts(),
            SystemStats {
                offline_messages: Some(0),
                clients: 11,
                groups: 10,
                users: 3
            }
        );
    }
}

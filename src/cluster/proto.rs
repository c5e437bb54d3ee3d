//! The node-to-node protocol: length-prefixed frames whose body is an rkyv archive of [`Frame`].
//!
//! Wire format of one frame: `len: u32 BE` (bytes that follow), `version: u16 BE`, then the rkyv
//! archive. Archives are validated (bytecheck) before they are used: a malformed frame is an
//! error for that link, never a panic. Requests carry ids so answers can be matched and
//! independent requests pipelined on one link.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The plain data the ops carry, defined with the rest of the shared types.
pub use crate::types::{
    Claimed, HistoryOpts, HistoryPush, Kick, Member, Resume, StatsPart, StreamPos, Target,
};

/// Bumped whenever [`Frame`] or the link handshake changes shape; a peer speaking another
/// version is refused (in the handshake, and again on every frame). 4: the handshake
/// (`cluster::handshake`) and the `Membership` op. 5: group history (`HistoryPush`,
/// `HistoryRead`, `Bind.resume`). 6: offline messages (`OfflineStore`, `OfflineTake`,
/// `StatsPart.offline`). 7: excludeClientId (`exclude` of `GroupPush`, `SystemPush`,
/// `UserPush` and `HistoryPush`; `RemoteReply::CountSkipped`). 8: group occupancy
/// (`Occupancy`). 9: one connection per user (`UserClaim`, `UserRelease`, `Close.kick`,
/// `RemoteReply::Claimed`).
pub const PROTO_VERSION: u16 = 9;
/// Largest frame accepted (a send_to_clients of many ids with a large `data` fits easily).
pub const MAX_FRAME: usize = 16 << 20;
const PREFIX: usize = 4 + 2;

/// Work one node asks of another. Each op is node-local on the receiver: it never forwards to a
/// third node (the sender already addressed every node it meant).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RemoteOp {
    /// Queue `frame` (a complete WebSocket frame) to each target of `system`.
    Deliver {
        system: String,
        targets: Vec<Target>,
        frame: Vec<u8>,
    },
    /// bind_to_group of a client of the receiver; it announces 1001 cluster-wide.
    Bind {
        target: Target,
        system: String,
        group: String,
        user_id: String,
        extend: String,
        /// bind_to_group's `since`: replay the missed pushes first.
        resume: Option<Resume>,
    },
    /// send_to_group of a system with history, to the owner of the group's stream: it gives
    /// the push its offset, keeps it and sends it to the group on every node.
    HistoryPush {
        system: String,
        group: String,
        history: HistoryOpts,
        push: HistoryPush,
    },
    /// To the owner of the group's stream: core `core` of node `node` (its cluster address)
    /// holds members of the group now (`present`) or no longer does, as of that core's
    /// sequence `seq` (issue 17).
    Occupancy {
        system: String,
        group: String,
        node: String,
        core: u32,
        seq: u64,
        present: bool,
    },
    /// The position and kept pushes of a group's stream, asked of its owner.
    HistoryRead {
        system: String,
        group: String,
        history: HistoryOpts,
        since: Option<StreamPos>,
        limit: u32,
    },
    /// send_to_user with `store`, to the owner of the (system, userId): keep the push.
    OfflineStore {
        system: String,
        user_id: String,
        push: OfflineFrame,
    },
    /// A connection got the userId: the owner removes and answers the user's kept pushes.
    OfflineTake { system: String, user_id: String },
    /// To the owner of the (system, userId) of a system with singleConnection: the
    /// connection `client_id` holds the user now (`take`), or asks to after the owner moved.
    UserClaim {
        system: String,
        user_id: String,
        client_id: String,
        take: bool,
    },
    /// To the same owner: `client_id` no longer holds the user.
    UserRelease {
        system: String,
        user_id: String,
        client_id: String,
    },
    /// Queue `frame` to the receiver's members of the group. `exclude` (in these pushes): the
    /// clientId of a connection to leave out, when the sender found it on some peer; only
    /// the node that owns it finds it.
    GroupPush {
        system: String,
        group: String,
        frame: Vec<u8>,
        exclude: Option<String>,
    },
    /// The receiver's members of the group.
    OnlineList { system: String, group: String },
    /// close_client of a client of the receiver, or the close of a connection its user's
    /// newer one replaced (`kick`).
    Close {
        target: Target,
        system: String,
        kick: Kick,
    },
    /// is_online of a client of the receiver.
    IsOnline { target: Target, system: String },
    /// Queue `frame` to every client of `system` on the receiver.
    SystemPush {
        system: String,
        frame: Vec<u8>,
        exclude: Option<String>,
    },
    /// unbind_from_group of a client of the receiver; it announces 1003 cluster-wide.
    Unbind {
        target: Target,
        system: String,
        group: String,
    },
    /// Queue `frame` to every connection of `system` on the receiver bound with `user_id`.
    UserPush {
        system: String,
        user_id: String,
        frame: Vec<u8>,
        exclude: Option<String>,
    },
    /// The receiver's members of the group, with their user data.
    Presence { system: String, group: String },
    /// The receiver's share of get_system_stats.
    Stats { system: String },
    /// Whether the receiver has etcd membership and lists the sender as a peer: asked by a node
    /// that lost etcd, to tell "etcd is down for everybody" (keep the clients) from "this node
    /// alone is cut off and its peers dropped it" (give the clients up).
    Membership,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RemoteReply {
    Done(bool),
    Count(u32),
    /// A `UserPush`'s `Count` when its `exclude` connection was one of the targets.
    CountSkipped(u32),
    List(Vec<String>),
    /// The receiver could not run the op (it is shutting down, say).
    Failed(String),
    /// The op reached its client but a limit refused it; the text goes back to the API caller.
    Refused(String),
    Members(Vec<Member>),
    Stats(StatsPart),
    /// Answer to `Membership`.
    Membership {
        established: bool,
        lists_you: bool,
    },
    /// Answer to `HistoryRead`.
    History {
        epoch: String,
        offset: u64,
        recovered: bool,
        frames: Vec<HistoryFrame>,
    },
    /// Answer to a `Bind` with `resume`.
    Recovered(bool),
    /// Answer to `OfflineTake`, oldest first.
    Offline(Vec<OfflineFrame>),
    /// Answer to `UserClaim`.
    Claimed(Claimed),
}

/// One kept push of a user: its messageId and its complete WebSocket frame.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OfflineFrame {
    pub message_id: String,
    pub frame: Vec<u8>,
}

/// One kept push of a stream: its offset and its complete WebSocket frame.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HistoryFrame {
    pub offset: u64,
    pub frame: Vec<u8>,
}

impl RemoteReply {
    /// The `Count`, or 0 for any other answer.
    pub fn count(&self) -> usize {
        match self {
            RemoteReply::Count(n) | RemoteReply::CountSkipped(n) => *n as usize,
            _ => 0,
        }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request { id: u64, op: RemoteOp },
    Response { id: u64, reply: RemoteReply },
}

/// Why a link's byte stream cannot be read; the link is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("peer speaks protocol version {0}, this node {PROTO_VERSION}")]
    Version(u16),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends one encoded frame to `out`; a frame the receiver would refuse as over [`MAX_FRAME`]
/// is not written (`out` is unchanged) and answers `TooLarge`.
pub fn try_encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let body = rkyv::to_bytes::<rancor::Error>(frame)
        .expect("bug: serializing a Frame into memory cannot fail");
    let len = body.len() + 2;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&PROTO_VERSION.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// [`try_encode`] for frames known to fit (tests, benches, fuzzing).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    try_encode(frame, out).expect("frame over MAX_FRAME")
}

/// Decodes the first frame of `buf`. `Ok(None)`: incomplete, read more. `Ok(Some((frame, n)))`:
/// the frame used `n` bytes.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    if len < 2 {
        return Err(ProtoError::Malformed(
            "frame shorter than its version".into(),
        ));
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    if version != PROTO_VERSION {
        return Err(ProtoError::Version(version));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    // rkyv reads archives in place and needs them aligned: copy into an aligned buffer.
    let mut aligned = AlignedVec::<16>::with_capacity(len - 2);
    aligned.extend_from_slice(&buf[PREFIX..4 + len]);
    let frame = rkyv::from_bytes::<Frame, rancor::Error>(&aligned)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok(Some((frame, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        let target = Target {
            core: 1,
            slot: 42,
            generation: 7,
        };
        vec![
            Frame::Request {
                id: 1,
                op: RemoteOp::Deliver {
                    system: "sys".into(),
                    targets: vec![target, target],
                    frame: b"\x81\x02hi".to_vec(),
                },
            },
            Frame::Request {
                id: 2,
                op: RemoteOp::Bind {
                    target,
                    system: "s".into(),
                    group: "g".into(),
                    user_id: "u".into(),
                    extend: "e".repeat(300),
                    resume: Some(Resume {
                        since: StreamPos {
                            offset: 7,
                            epoch: "0123456789abcdef".into(),
                        },
                        history: HistoryOpts {
                            size: 10,
                            ttl_seconds: 60,
                        },
                    }),
                },
            },
            Frame::Request {
                id: 22,
                op: RemoteOp::OfflineStore {
                    system: "s".into(),
                    user_id: "u".into(),
                    push: OfflineFrame {
                        message_id: "00ff".into(),
                        frame: b"\x81\x02hi".to_vec(),
                    },
                },
            },
            Frame::Request {
                id: 23,
                op: RemoteOp::OfflineTake {
                    system: "s".into(),
                    user_id: "u".into(),
                },
            },
            Frame::Response {
                id: 24,
                reply: RemoteReply::Offline(vec![OfflineFrame {
                    message_id: "00ff".into(),
                    frame: b"\x81\x02hi".to_vec(),
                }]),
            },
            Frame::Request {
                id: 20,
                op: RemoteOp::HistoryRead {
                    system: "s".into(),
                    group: "g".into(),
                    history: HistoryOpts {
                        size: 10,
                        ttl_seconds: 60,
                    },
                    since: None,
                    limit: 5,
                },
            },
            Frame::Response {
                id: 21,
                reply: RemoteReply::History {
                    epoch: "e".into(),
                    offset: 3,
                    recovered: true,
                    frames: vec![HistoryFrame {
                        offset: 3,
                        frame: b"\x81\x02hi".to_vec(),
                    }],
                },
            },
            Frame::Request {
                id: 3,
                op: RemoteOp::GroupPush {
                    system: "s".into(),
                    group: "g".into(),
                    frame: vec![0; 70_000],
                    exclude: Some("c".repeat(59)),
                },
            },
            Frame::Request {
                id: 4,
                op: RemoteOp::OnlineList {
                    system: "s".into(),
                    group: "g".into(),
                },
            },
            Frame::Request {
                id: 5,
                op: RemoteOp::Close {
                    target,
                    system: "s".into(),
                    kick: Kick::Replaced,
                },
            },
            Frame::Response {
                id: 6,
                reply: RemoteReply::List(vec!["a".into(), "b".into()]),
            },
            Frame::Response {
                id: u64::MAX,
                reply: RemoteReply::Count(3),
            },
            Frame::Response {
                id: 0,
                reply: RemoteReply::Failed("x".into()),
            },
            Frame::Response {
                id: 9,
                reply: RemoteReply::Done(true),
            },
        ]
    }

    /// The ops and replies of the issue 7 routes.
    fn feature_samples() -> Vec<Frame> {
        let target = Target {
            core: 0,
            slot: u32::MAX,
            generation: 1,
        };
        let member = |i: usize| Member {
            client_id: format!("client{i}"),
            user_id: if i.is_multiple_of(2) {
                format!("user{i}")
            } else {
                String::new()
            },
            extend: "{\"role\":\"admin\"}".into(),
        };
        vec![
            Frame::Request {
                id: 10,
                op: RemoteOp::IsOnline {
                    target,
                    system: "s".into(),
                },
            },
            Frame::Request {
                id: 11,
                op: RemoteOp::SystemPush {
                    system: "s".into(),
                    frame: b"\x81\x05hello".to_vec(),
                    exclude: None,
                },
            },
            Frame::Request {
                id: 12,
                op: RemoteOp::Unbind {
                    target,
                    system: "s".into(),
                    group: "g\u{e9}".into(),
                },
            },
            Frame::Request {
                id: 13,
                op: RemoteOp::UserPush {
                    system: "s".into(),
                    user_id: "u".into(),
                    frame: vec![7; 300],
                    exclude: Some("x".into()),
                },
            },
            Frame::Request {
                id: 14,
                op: RemoteOp::Presence {
                    system: "s".into(),
                    group: "g".into(),
                },
            },
            Frame::Request {
                id: 15,
                op: RemoteOp::Stats { system: "".into() },
            },
            Frame::Response {
                id: 16,
                reply: RemoteReply::Members((0..5).map(member).collect()),
            },
            Frame::Response {
                id: 17,
                reply: RemoteReply::Members(Vec::new()),
            },
            Frame::Response {
                id: 18,
                reply: RemoteReply::Stats(StatsPart {
                    clients: 12,
                    groups: vec![1, 2, u64::MAX],
                    users: (0..1000).collect(),
                    unlisted_groups: 0,
                    unlisted_users: 3,
                    offline: 4,
                }),
            },
            Frame::Response {
                id: 19,
                reply: RemoteReply::Stats(StatsPart::default()),
            },
            Frame::Response {
                id: 25,
                reply: RemoteReply::CountSkipped(2),
            },
        ]
    }

    #[test]
    fn round_trips_the_issue_7_ops_and_replies() {
        let mut wire = Vec::new();
        for f in feature_samples() {
            encode(&f, &mut wire);
        }
        let mut at = 0;
        for expected in feature_samples() {
            let (frame, used) = decode(&wire[at..]).unwrap().unwrap();
            assert_eq!(frame, expected);
            at += used;
        }
        assert_eq!(at, wire.len());
        // Corrupted, they are refused or decoded into some well-formed frame, never a panic.
        for f in feature_samples() {
            let mut wire = Vec::new();
            encode(&f, &mut wire);
            for i in PREFIX..wire.len().min(PREFIX + 200) {
                let mut bad = wire.clone();
                bad[i] ^= 0xa5;
                let _ = decode(&bad);
            }
        }
    }

    #[test]
    fn round_trips_pipelined_frames() {
        let mut wire = Vec::new();
        for f in samples() {
            encode(&f, &mut wire);
        }
        let mut at = 0;
        for expected in samples() {
            let (frame, used) = decode(&wire[at..]).unwrap().unwrap();
            assert_eq!(frame, expected);
            at += used;
        }
        assert_eq!(at, wire.len());
    }

    #[test]
    fn truncated_frames_wait_for_more() {
        let mut wire = Vec::new();
        encode(&samples()[1], &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bad_version_size_and_garbage() {
        let mut wire = Vec::new();
        encode(&samples()[0], &mut wire);
        let mut other = wire.clone();
        other[5] = 99;
        assert_eq!(decode(&other).unwrap_err(), ProtoError::Version(99));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 1];
        assert!(matches!(decode(&huge), Err(ProtoError::TooLarge(_))));
        let tiny = [0, 0, 0, 1, 0, 1];
        assert!(matches!(decode(&tiny), Err(ProtoError::Malformed(_))));
        let mut garbage = vec![0, 0, 0, 34];
        garbage.extend_from_slice(&PROTO_VERSION.to_be_bytes());
        garbage.extend_from_slice(&[0xAB; 32]);
        assert!(matches!(decode(&garbage), Err(ProtoError::Malformed(_))));
    }

    #[test]
    fn corrupted_frames_never_panic() {
        // Flip every byte of the body of each sample in turn: decoding must answer, not panic;
        // whatever it accepts must be a well-formed Frame.
        for f in samples().into_iter().take(6) {
            let mut wire = Vec::new();
            encode(&f, &mut wire);
            for i in PREFIX..wire.len().min(PREFIX + 400) {
                let mut bad = wire.clone();
                bad[i] ^= 0x5a;
                let _ = decode(&bad);
            }
        }
    }
}

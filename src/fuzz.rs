//! Fuzz target bodies: one function per untrusted-input parser, shared by the libFuzzer targets
//! of `fuzz/` (nightly, `cargo fuzz`) and the stable smoke test `tests/fuzz_smoke.rs`, so both
//! run exactly the same code.
//!
//! Contract of every target: it never panics, whatever the bytes. Where a parser has an
//! invariant the server relies on, the target asserts it, so a broken invariant is a crash too:
//! - bytes consumed never exceed the bytes given, and limits are never exceeded;
//! - a complete head, body or frame cut short reads as "incomplete", never as an error (the
//!   server re-parses as bytes arrive, so a TCP split must not change the answer);
//! - whatever is decoded re-encodes into something that decodes back to the same value.
//!
//! Not part of the API: `#[doc(hidden)]` in `lib.rs`.

use crate::api::error::{envelope, ApiError, Data};
use crate::api::request::{
    decode, required, Bind, ByClient, ByGroup, NoFields, Push, PushFields, PushToClients, Register,
    SendToGroup, SendToSystem, SendToUser, Unbind,
};
use crate::cluster::proto::{
    self, Claimed, Frame, Kick, Member, RemoteOp, RemoteReply, StatsPart, Target,
};
use crate::config::Config;
use crate::ids::{ClientAddr, IdCodec, CLIENT_ID_LEN};
use crate::net::{handshake, http};
use crate::ws::frame::{self, ClientFrame, MessageState};
use crate::ws::message;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::net::{Ipv4Addr, SocketAddrV4};
use tungstenite::protocol::frame::coding::{Data as DataCode, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A fuzz target: any bytes in, a panic only on a bug.
pub type FuzzTarget = fn(&[u8]);

/// Every target by name: the names are the `fuzz/fuzz_targets/<name>.rs` files and the
/// `fuzz/corpus/<name>/` seed folders.
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("http_request", http_request),
    ("ws_handshake", ws_handshake),
    ("ws_frame", ws_frame),
    ("api_request", api_request),
    ("client_id", client_id),
    ("node_frame", node_frame),
    ("auth", auth),
];

/// The smallest limits `Config::validate` accepts (or near them), so that inputs of a few
/// hundred bytes also reach the "too large" branches the default limits keep out of reach.
const SMALL_HEAD: usize = 256;
const SMALL_BODY: usize = 64;
const SMALL_MESSAGE: usize = 64;

/// HTTP/1.x requests as the API listener reads them: heads back to back on one keep-alive
/// connection, each followed by a Content-Length or chunked body.
pub fn http_request(data: &[u8]) {
    let config = Config::default();
    http_requests_with(data, config.max_head_bytes, config.max_body_bytes);
    http_requests_with(data, SMALL_HEAD, SMALL_BODY);
}

fn http_requests_with(data: &[u8], max_head: usize, max_body: usize) {
    let mut at = 0;
    while at < data.len() {
        let buf = &data[at..];
        let Some((head, head_len)) = head_of(buf, max_head) else {
            return;
        };
        // The route table takes any path.
        let _ = crate::api::route(&head.path);
        let rest = &buf[head_len..];
        let body_len = if head.chunked {
            let whole = http::dechunk(rest, max_body);
            // The listener feeds the decoder each read as it lands: any split of the same
            // bytes gives the answer of one decode of them all, error or not.
            let split = (data.len() * 7 + at) % (rest.len() + 1);
            assert_eq!(
                dechunk_in_two(rest, split, max_body),
                whole,
                "a chunked body fed in two reads (cut at {split}) decodes as in one"
            );
            match whole {
                Ok(Some((body, used))) => {
                    assert!(used <= rest.len(), "dechunk used more than it was given");
                    assert!(body.len() <= max_body, "dechunked body over the limit");
                    assert!(body.len() <= used, "body longer than its encoding");
                    // Two cuts: the last byte, and one the input's length picks.
                    for cut in [used - 1, data.len() % used] {
                        assert_eq!(
                            http::dechunk(&rest[..cut], max_body),
                            Ok(None),
                            "a chunked body cut at {cut} of {used} must read as incomplete"
                        );
                    }
                    used
                }
                Ok(None) | Err(_) => return,
            }
        } else {
            // The listener refuses a Content-Length over the limit before reading the body.
            let length = head.content_length.unwrap_or(0);
            if length > max_body as u64 || rest.len() < length as usize {
                return;
            }
            length as usize
        };
        if head.close {
            return;
        }
        at += head_len + body_len;
    }
}

/// A chunked body fed to one [`http::Dechunker`] as two reads, cut at `split`.
fn dechunk_in_two(
    rest: &[u8],
    split: usize,
    max_body: usize,
) -> Result<Option<(Vec<u8>, usize)>, http::ChunkError> {
    let mut decoder = http::Dechunker::new(max_body);
    let mut body = Vec::new();
    if let Some(used) = decoder.feed(&rest[..split], &mut body)? {
        return Ok(Some((body, used)));
    }
    let used = decoder.feed(&rest[split..], &mut body)?;
    Ok(used.map(|used| (body, split + used)))
}

/// Parses a head and checks its invariants; `None` when incomplete or refused.
fn head_of(buf: &[u8], max_head: usize) -> Option<(http::Head, usize)> {
    match http::parse_head(buf, max_head) {
        Ok(Some((head, len))) => {
            assert!(
                len > 0 && len <= buf.len() && len <= max_head,
                "head length {len} out of bounds"
            );
            assert!(
                buf[..len].ends_with(b"\n"),
                "a head ends with an empty line"
            );
            // Two cuts: the last byte, and one the input's length picks.
            for cut in [len - 1, buf.len() % len] {
                assert!(
                    matches!(http::parse_head(&buf[..cut], max_head), Ok(None)),
                    "a head cut at {cut} of {len} must read as incomplete"
                );
            }
            assert!(!head.path.contains('?'), "the query is split off the path");
            assert!(head.minor_version <= 1);
            Some((head, len))
        }
        Ok(None) => {
            assert!(buf.len() < max_head, "an incomplete head past the limit");
            None
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 431 | 501));
            None
        }
    }
}

/// A WebSocket upgrade request: the head, the 101 (or the refusal), the `systemId` query
/// parameter, and the frames the client sent right behind the head.
pub fn ws_handshake(data: &[u8]) {
    let Some((head, head_len)) = head_of(data, Config::default().max_head_bytes) else {
        return;
    };
    match handshake::response(&head) {
        Ok(response) => check_101(&head, &response),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Some(system) = handshake::system_id(&head.query) {
        assert!(!system.is_empty(), "an empty systemId reads as absent");
    }
    // Bytes past the head are the session's first frames.
    read_frames(&data[head_len..], Config::default().max_message_bytes);
}

/// The 101 must be a well-formed response carrying the RFC 6455 accept key of the request's key.
fn check_101(head: &http::Head, response: &str) {
    let key = head.ws_key.as_deref().expect("bug: a 101 without a key");
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(response.as_bytes()) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("the 101 does not parse: {other:?}"),
    };
    assert_eq!(len, response.len(), "bytes after the 101's head");
    assert_eq!(parsed.code, Some(101));
    let accept = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .expect("the 101 names its accept key");
    assert_eq!(accept.value, handshake::accept_key(key).as_bytes());
}

/// A client's byte stream after the handshake, read as the session reads it.
pub fn ws_frame(data: &[u8]) {
    read_frames(data, Config::default().max_message_bytes);
    read_frames(data, SMALL_MESSAGE);
}

fn read_frames(data: &[u8], max_message: usize) {
    // read_frame unmasks in place: work on a copy.
    let mut buf = data.to_vec();
    let mut state = MessageState::default();
    let mut at = 0;
    while at < buf.len() {
        // The session keeps an incomplete tail and reads again from its start; check that a
        // frame one byte short of complete waits for more, on a copy (the state is not touched
        // by an incomplete read, but the bytes would be by a complete one).
        let mut before = buf[at..].to_vec();
        let mut probe_state = state;
        let step = frame::read_frame(&mut buf[at..], &mut state, max_message);
        match step {
            Ok(Some((f, used))) => {
                assert!(
                    used >= 6 && used <= before.len(),
                    "frame length {used} out of bounds"
                );
                match f {
                    ClientFrame::Ping(payload) => assert!(payload.len() <= 125),
                    ClientFrame::Close(Some(code)) => {
                        assert!((1000..5000).contains(&code), "close code {code}")
                    }
                    ClientFrame::Data | ClientFrame::Pong | ClientFrame::Close(None) => {}
                }
                let short =
                    frame::read_frame(&mut before[..used - 1], &mut probe_state, max_message);
                assert!(
                    matches!(short, Ok(None)),
                    "a frame one byte short must read as incomplete, got {short:?}"
                );
                if matches!(f, ClientFrame::Close(_)) {
                    // The session stops reading after a close.
                    return;
                }
                at += used;
            }
            Ok(None) => return,
            Err(v) => {
                assert!(
                    matches!(
                        v.code,
                        frame::close_code::PROTOCOL_ERROR
                            | frame::close_code::TOO_BIG
                            | frame::close_code::INVALID_DATA
                    ),
                    "violation code {}",
                    v.code
                );
                // The reason goes into a close frame: at most 123 bytes.
                assert!(v.reason.len() <= 123);
                let close = frame::close(v.code, v.reason);
                assert!(close.len() <= 2 + 125);
                return;
            }
        }
    }
}

/// An API request body, decoded as every route decodes it, and what the routes build from it:
/// the pushed frame (its JSON must parse back to the same fields) or the error envelope.
pub fn api_request(data: &[u8]) {
    if let Some(req) = decoded::<Push>(data) {
        let _ = required("clientId", req.client_id);
        check_push(&req.fields, None);
    }
    if let Some(req) = decoded::<PushToClients>(data) {
        if let Some(ids) = req.client_ids {
            let ids: Vec<String> = ids.into_iter().map(|s| s.into_owned()).collect();
            let json = envelope(&Ok(Data::OnlineList(ids.clone())));
            let value: serde_json::Value =
                serde_json::from_slice(&json).expect("the envelope is not JSON");
            assert_eq!(value["data"]["count"], ids.len());
        }
        check_push(&req.fields, None);
    }
    if let Some(req) = decoded::<SendToGroup>(data) {
        let _ = required("groupName", req.group_name);
        check_push(&req.fields, None);
    }
    if let Some(req) = decoded::<SendToUser>(data) {
        let _ = required("userId", req.user_id);
        check_push(&req.fields, None);
    }
    if let Some(fields) = decoded::<PushFields>(data) {
        check_push(&fields, None);
    }
    if let Some(req) = decoded::<SendToSystem>(data) {
        check_push(&req.fields, None);
    }
    if let Some(req) = decoded::<Register>(data) {
        let _ = required("systemId", req.system_id);
    }
    if let Some(req) = decoded::<Bind>(data) {
        // bind_to_group announces the member to the group with a 1001 push: a JSON string.
        let client = req.client_id.as_deref().unwrap_or("");
        let user = req.user_id.as_deref().unwrap_or("");
        let extend = req.extend.as_deref().unwrap_or("");
        let event = message::member_event_data(client, user, extend);
        let inner: String = serde_json::from_str(&event).expect("event data is not a JSON string");
        let member: serde_json::Value =
            serde_json::from_str(&inner).expect("event data does not hold JSON");
        assert_eq!(member["clientId"], client);
        assert_eq!(member["userId"], user);
        assert_eq!(member["extend"], extend);
        check_push(&PushFields::default(), Some(&event));
        let _ = required("groupName", req.group_name);
    }
    if let Some(req) = decoded::<Unbind>(data) {
        let _ = required("clientId", req.client_id);
        let _ = required("groupName", req.group_name);
    }
    let _ = decoded::<NoFields>(data);
    if let Some(req) = decoded::<ByGroup>(data) {
        let _ = required("groupName", req.group_name);
    }
    if let Some(req) = decoded::<ByClient>(data) {
        let _ = required("clientId", req.client_id);
    }
}

/// Decodes a body; a refusal must be a 200 or 400 with a JSON envelope.
fn decoded<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Option<T> {
    match decode::<T>(data) {
        Ok(req) => Some(req),
        Err(e) => {
            assert!(matches!(e, ApiError::BadJson(_) | ApiError::Field { .. }));
            assert!(matches!(e.status(), 200 | 400));
            let json = envelope(&Err(e));
            let _: serde_json::Value =
                serde_json::from_slice(&json).expect("the error envelope is not JSON");
            None
        }
    }
}

/// Builds the pushed frame as the route does and reads it back as a client would.
fn check_push(fields: &PushFields, data_owned: Option<&str>) {
    let send_user = fields.send_user_id.as_deref().unwrap_or("");
    let msg = fields.msg.as_deref().unwrap_or("");
    let code = fields.code.unwrap_or(0);
    let data = data_owned.unwrap_or_else(|| fields.data.map(|raw| raw.get()).unwrap_or("\"\""));
    let pushed = message::push_frame("1-2", send_user, code, msg, data);
    let json = text_payload(&pushed);

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Pushed<'a> {
        message_id: String,
        send_user_id: String,
        code: i64,
        msg: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let back: Pushed = serde_json::from_slice(json).expect("the pushed JSON does not parse");
    assert_eq!(back.message_id, "1-2");
    assert_eq!(back.send_user_id, send_user);
    assert_eq!(back.code, code);
    assert_eq!(back.msg, msg);
    // `data` is forwarded byte for byte.
    assert_eq!(back.data.get(), data);
}

/// The payload of a complete, final, unmasked text frame (what the server sends).
fn text_payload(bytes: &[u8]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(bytes);
    let (header, len) = FrameHeader::parse(&mut cursor)
        .expect("the server's frame header does not parse")
        .expect("the server's frame header is incomplete");
    assert!(header.is_final && header.mask.is_none());
    assert_eq!(header.opcode, OpCode::Data(DataCode::Text));
    let start = cursor.position() as usize;
    assert_eq!(start as u64 + len, bytes.len() as u64, "frame length field");
    &bytes[start..]
}

/// clientIds: any string a caller sends is refused unless this node's key sealed it; an id
/// sealed for an address (taken from the input) opens to that address, and any single-character
/// change to it is refused.
pub fn client_id(data: &[u8]) {
    let codec = IdCodec::new(&Config::default().crypto_key);
    let text = String::from_utf8_lossy(data);
    if let Some(addr) = codec.open(&text) {
        // Only reachable by forging AES-GCM-SIV; if it ever happens, it must at least be coherent.
        assert_eq!(codec.open(&codec.seal(&addr)), Some(addr));
    }
    let mut input = Input::new(data);
    let addr = ClientAddr {
        node: SocketAddrV4::new(Ipv4Addr::from(input.u32()), input.u16()),
        core: input.byte(),
        slot: input.u32(),
        generation: input.u32(),
    };
    let id = codec.seal(&addr);
    assert_eq!(id.len(), CLIENT_ID_LEN);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(codec.open(&id), Some(addr));
    assert_eq!(
        IdCodec::new("0123456789abcdef0123456789abcdef").open(&id),
        None
    );

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // The rest of the input: (position, replacement) pairs, each tried on its own.
    while !input.is_empty() {
        let at = input.byte() as usize % CLIENT_ID_LEN;
        let with = ALPHABET[input.byte() as usize % ALPHABET.len()];
        let mut tampered = id.clone().into_bytes();
        if tampered[at] == with {
            continue;
        }
        tampered[at] = with;
        let tampered = String::from_utf8(tampered).expect("bug: ASCII is UTF-8");
        assert_eq!(codec.open(&tampered), None, "a tampered id opened");
    }
    // Truncated or extended ids are refused.
    assert_eq!(codec.open(&id[..CLIENT_ID_LEN - 1]), None);
    assert_eq!(codec.open(&format!("{id}A")), None);
}

/// Node links: arbitrary bytes read as a link's stream (frames back to back), then a frame built
/// from the input, encoded and decoded back.
pub fn node_frame(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match proto::decode(&data[at..]) {
            Ok(Some((frame, used))) => {
                assert!(
                    used >= 6 && used <= data.len() - at,
                    "frame length {used} out of bounds"
                );
                round_trip(&frame);
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
    round_trip(&build_frame(&mut Input::new(data)));
}

/// encode then decode gives the same frame, all its bytes used; cut short, it waits for more.
fn round_trip(frame: &Frame) {
    let mut wire = Vec::new();
    proto::encode(frame, &mut wire);
    match proto::decode(&wire) {
        Ok(Some((back, used))) => {
            assert_eq!(&back, frame, "decode(encode(frame)) differs");
            assert_eq!(used, wire.len());
        }
        other => panic!("an encoded frame does not decode: {other:?}"),
    }
    for cut in [0, 5, 6, wire.len() - 1] {
        assert_eq!(proto::decode(&wire[..cut]), Ok(None), "cut at {cut}");
    }
}

/// A [`Frame`] of every shape, its fields read from the input.
fn build_frame(input: &mut Input) -> Frame {
    let id = input.u64();
    let target = |input: &mut Input| Target {
        core: input.byte(),
        slot: input.u32(),
        generation: input.u32(),
    };
    let op = match input.byte() % 24 {
        0 => RemoteOp::Deliver {
            system: input.string(),
            targets: (0..input.byte() % 8).map(|_| target(input)).collect(),
            frame: input.bytes().to_vec(),
        },
        1 => RemoteOp::Bind {
            target: target(input),
            system: input.string(),
            group: input.string(),
            user_id: input.string(),
            extend: input.string(),
            resume: (input.byte() & 1 == 1).then(|| crate::types::Resume {
                since: crate::types::StreamPos {
                    offset: input.u64(),
                    epoch: input.string(),
                },
                history: crate::types::HistoryOpts {
                    size: input.u32(),
                    ttl_seconds: input.u32(),
                },
            }),
        },
        2 => RemoteOp::GroupPush {
            system: input.string(),
            group: input.string(),
            frame: input.bytes().to_vec(),
            exclude: input.maybe_string(),
        },
        3 => RemoteOp::OnlineList {
            system: input.string(),
            group: input.string(),
        },
        4 => RemoteOp::Close {
            target: target(input),
            system: input.string(),
            kick: [Kick::Api, Kick::Replaced][input.byte() as usize % 2],
        },
        5 => RemoteOp::IsOnline {
            target: target(input),
            system: input.string(),
        },
        6 => RemoteOp::SystemPush {
            system: input.string(),
            frame: input.bytes().to_vec(),
            exclude: input.maybe_string(),
        },
        7 => RemoteOp::Unbind {
            target: target(input),
            system: input.string(),
            group: input.string(),
        },
        8 => RemoteOp::UserPush {
            system: input.string(),
            user_id: input.string(),
            frame: input.bytes().to_vec(),
            exclude: input.maybe_string(),
        },
        9 => RemoteOp::Presence {
            system: input.string(),
            group: input.string(),
        },
        10 => RemoteOp::Stats {
            system: input.string(),
        },
        17 => RemoteOp::Membership,
        20 | 21 if input.byte() & 1 == 1 => RemoteOp::UserRelease {
            system: input.string(),
            user_id: input.string(),
            client_id: input.string(),
        },
        20 | 21 => RemoteOp::UserClaim {
            system: input.string(),
            user_id: input.string(),
            client_id: input.string(),
            take: input.byte() & 1 == 1,
        },
        shape => {
            let reply = match shape {
                11 => RemoteReply::Done(input.byte() & 1 == 1),
                12 => RemoteReply::Count(input.u32()),
                19 => RemoteReply::CountSkipped(input.u32()),
                22 => RemoteReply::Claimed(match input.byte() % 3 {
                    0 => Claimed::Kept,
                    1 => Claimed::Lost,
                    _ => Claimed::Replaced(input.string()),
                }),
                13 => RemoteReply::List((0..input.byte() % 8).map(|_| input.string()).collect()),
                14 => RemoteReply::Failed(input.string()),
                15 => RemoteReply::Refused(input.string()),
                16 => RemoteReply::Members(
                    (0..input.byte() % 8)
                        .map(|_| Member {
                            client_id: input.string(),
                            user_id: input.string(),
                            extend: input.string(),
                        })
                        .collect(),
                ),
                18 => RemoteReply::Membership {
                    established: input.byte() & 1 == 1,
                    lists_you: input.byte() & 1 == 1,
                },
                _ => RemoteReply::Stats(StatsPart {
                    clients: input.u64(),
                    groups: (0..input.byte() % 16).map(|_| input.u64()).collect(),
                    users: (0..input.byte() % 16).map(|_| input.u64()).collect(),
                    unlisted_groups: input.u64(),
                    unlisted_users: input.u64(),
                    offline: input.u64(),
                }),
            };
            return Frame::Response { id, reply };
        }
    };
    Frame::Request { id, op }
}

/// Reads typed values off the front of the input; past its end every value is zero or empty,
/// so any input builds something.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    /// A length byte, then that many bytes (fewer at the end of the input).
    fn bytes(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// A string or none, as the next byte's low bit says.
    fn maybe_string(&mut self) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.string())
    }
}

/// The auth parsers of issue 7 on untrusted text: the `token` of a `/ws` query, the JWT itself
/// (header, claims, signature), an `Authorization` header, an `X-Signature` and `X-Timestamp`
/// over a route, system and body (one line each, the rest the body), a webhook URL, and an
/// etcd account value. Invariants: a request signed with the secret verifies (and, in
/// compatibility mode, a body signed the old way); a token re-signed with the secret over the input's own
/// header and payload is never refused for its signature, and one signed with another secret is
/// never accepted.
pub fn auth(data: &[u8]) {
    use crate::auth::{self, JwtError};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    const SECRET: &str = "fuzz-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    let text = String::from_utf8_lossy(data);
    let _ = auth::token_param(&text);
    let _ = auth::check_api_key("fuzz-api-key-0123456789", Some(&text));
    let _ = crate::shard::system::check_webhook_url(&text);
    let _ = crate::cluster::membership::parse_account("sys", data);

    // Lines: X-Signature, X-Timestamp, path, SystemId, then the body.
    let mut lines = text.splitn(5, '\n');
    let mut line = || lines.next().unwrap_or("");
    let (header, timestamp, path, system, body) = (line(), line(), line(), line(), line());
    let req = auth::SignedRequest {
        path,
        system,
        timestamp: Some(timestamp),
        signature: Some(header),
        body: body.as_bytes(),
    };
    for compat in [false, true] {
        let _ = auth::verify_signature(SECRET, &req, NOW, compat);
        let _ = auth::verify_signature(
            SECRET,
            &auth::SignedRequest {
                timestamp: None,
                ..req
            },
            NOW,
            compat,
        );
    }
    let now = NOW.to_string();
    let signed = auth::sign_hex(
        SECRET,
        &auth::signing_input(path, system, &now, body.as_bytes()),
    );
    let good = auth::SignedRequest {
        timestamp: Some(&now),
        signature: Some(&signed),
        ..req
    };
    assert!(
        auth::verify_signature(SECRET, &good, NOW, false).is_ok(),
        "bug: a request signed with the secret does not verify"
    );
    let body_only = auth::sign_hex(SECRET, body.as_bytes());
    let old = auth::SignedRequest {
        timestamp: None,
        signature: Some(&body_only),
        ..req
    };
    assert!(
        auth::verify_signature(SECRET, &old, NOW, true).is_ok(),
        "bug: a body-only signature does not verify in compatibility mode"
    );

    let _ = auth::verify_jwt(SECRET, &text, "sys", NOW);
    let mut parts = text.splitn(3, '.');
    if let (Some(h), Some(p)) = (parts.next(), parts.next()) {
        let signing_input = format!("{h}.{p}");
        let sign = |key: &[u8]| {
            let tag = auth::hmac_sha256(key, signing_input.as_bytes());
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag))
        };
        let verdict = auth::verify_jwt(SECRET, &sign(SECRET.as_bytes()), "sys", NOW);
        assert!(
            !matches!(verdict, Err(JwtError::Signature)),
            "bug: a token signed with the secret was refused for its signature"
        );
        let forged = auth::verify_jwt(SECRET, &sign(b"another-secret-0123456789"), "sys", NOW);
        assert!(
            forged.is_err(),
            "bug: a token signed with another secret was accepted"
        );
    }
}

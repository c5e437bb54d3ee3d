//! A short fuzz run on stable, for `make test`: every target of `wspush::fuzz` replays its seeds
//! (`fuzz/corpus/<target>/`) and crash regressions (`fuzz/regressions/<target>/`), then runs a
//! blind mutational loop over them for a couple of seconds. A panic fails the test and the input
//! is written to `target/fuzz-smoke/` so it can be replayed. The long, coverage-guided runs are
//! libFuzzer's (`fuzz/README.md`).
//!
//! `WSPUSH_FUZZ_SECS` sets the seconds per target (default 2, 0 to replay only);
//! `WSPUSH_FUZZ_SEED` fixes the random seed to repeat a run (the seed is printed).
//!
//! `cargo test --test fuzz_smoke -- --ignored write_seeds` regenerates the seed files.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest input the mutator grows: above every default limit but the body's, and enough for
/// the "too large" branches of the small limits the targets also use.
const MAX_INPUT: usize = 16 * 1024;
/// Inputs kept for further mutation (stacked mutations reach further than one at a time).
const POOL: usize = 512;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn target_fn(name: &str) -> wspush::fuzz::FuzzTarget {
    wspush::fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// The files of `dir`, sorted by name; none if it does not exist.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs the target; on a panic, saves the input and fails with where it is.
fn run_one(name: &str, target: wspush::fuzz::FuzzTarget, input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-crash-{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    panic!(
        "fuzz target {name} panicked on {origin} ({} bytes), input saved to {}; replay with \
         `cd fuzz && cargo +nightly fuzz run {name} {}`",
        input.len(),
        path.display(),
        path.display()
    );
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn smoke(name: &str) {
    let target = target_fn(name);
    let seeds = files(&fuzz_dir().join("corpus").join(name));
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{name}");
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    for (path, bytes) in seeds.iter().chain(&regressions) {
        run_one(name, target, bytes, &path.display().to_string());
    }

    let secs: f64 = std::env::var("WSPUSH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("WSPUSH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool: Vec<Vec<u8>> = seeds
        .into_iter()
        .chain(regressions)
        .map(|(_, b)| b)
        .collect();
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let base = &pool[rng.gen_range(0..pool.len())];
        let other = &pool[rng.gen_range(0..pool.len())];
        let mut input = base.clone();
        for _ in 0..rng.gen_range(1..=4) {
            mutate(&mut rng, &mut input, other);
        }
        input.truncate(MAX_INPUT);
        run_one(
            name,
            target,
            &input,
            &format!("a mutant (WSPUSH_FUZZ_SEED={seed})"),
        );
        runs += 1;
        if pool.len() < POOL {
            pool.push(input);
        } else if rng.gen_bool(0.1) {
            let at = rng.gen_range(0..pool.len());
            pool[at] = input;
        }
    }
    println!("{name}: {runs} mutants in {secs}s, WSPUSH_FUZZ_SEED={seed}");
}

/// One blind mutation: the usual byte-level moves plus values that sit on parser boundaries.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: &[&[u8]] = &[
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"0",
        b"ffffffffffffffff",
        b"18446744073709551616",
        b"-1",
        b":",
        b",",
        b";",
        b"\"",
        b"\\u",
        b"\\ud800",
        b"{",
        b"}",
        b"[",
        b"null",
        b"\x00",
        b"\xff",
        b"\x7f",
        b"\x80",
        b"\x7e\xff\xff",
        b"\x7f\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff",
        b"\x00\x01",
    ];
    let len = input.len();
    match rng.gen_range(0..9) {
        // Flip a bit.
        0 if len > 0 => {
            let at = rng.gen_range(0..len);
            input[at] ^= 1 << rng.gen_range(0..8);
        }
        // Set a byte.
        1 if len > 0 => {
            let at = rng.gen_range(0..len);
            input[at] = rng.gen();
        }
        // Insert random bytes.
        2 => {
            let at = rng.gen_range(0..=len);
            let n = rng.gen_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            input.splice(at..at, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let at = rng.gen_range(0..len);
            let end = (at + rng.gen_range(1..=16)).min(len);
            input.drain(at..end);
        }
        // Duplicate a range (repeated headers, frames, chunks).
        4 if len > 0 => {
            let at = rng.gen_range(0..len);
            let end = (at + rng.gen_range(1..=64)).min(len);
            let copy = input[at..end].to_vec();
            let to = rng.gen_range(0..=len);
            input.splice(to..to, copy);
        }
        // Splice: our front, another input's back.
        5 if !other.is_empty() => {
            let cut = rng.gen_range(0..=len);
            let from = rng.gen_range(0..other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Insert or overwrite with a boundary value.
        6 => {
            let value = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            let at = rng.gen_range(0..=len);
            if rng.gen_bool(0.5) {
                input.splice(at..at, value.iter().copied());
            } else {
                let end = (at + value.len()).min(len);
                input.splice(at..end, value.iter().copied());
            }
        }
        // Truncate.
        7 if len > 0 => input.truncate(rng.gen_range(0..len)),
        // Random bytes.
        _ => {
            let n = rng.gen_range(0..64);
            *input = (0..n).map(|_| rng.gen()).collect();
        }
    }
}

macro_rules! smoke_tests {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_smoked() {
            let mut tested = vec![$(stringify!($name)),*];
            let mut all: Vec<&str> = wspush::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            tested.sort();
            all.sort();
            assert_eq!(tested, all);
        }
    };
}

smoke_tests!(
    http_request,
    ws_handshake,
    ws_frame,
    api_request,
    client_id,
    node_frame,
    auth
);

/// The committed seeds are what their names say: complete, valid inputs that reach the deep
/// paths (a seed refused at its first byte would teach the fuzzers nothing).
#[test]
fn seeds_are_valid() {
    use wspush::net::{handshake, http};
    let seeds = |name: &str| files(&fuzz_dir().join("corpus").join(name));
    for (path, bytes) in seeds("http_request") {
        let mut at = 0;
        while at < bytes.len() {
            let (head, len) = http::parse_head(&bytes[at..], 8192)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: incomplete head", path.display()));
            let body = if head.chunked {
                http::dechunk(&bytes[at + len..], 1 << 20)
                    .unwrap()
                    .unwrap()
                    .1
            } else {
                head.content_length.unwrap_or(0) as usize
            };
            at += len + body;
        }
        assert_eq!(at, bytes.len(), "{}", path.display());
    }
    for (path, bytes) in seeds("ws_handshake") {
        let (head, _) = http::parse_head(&bytes, 8192).unwrap().unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            handshake::response(&head).is_ok(),
            name != "old_version",
            "{name}"
        );
    }
    for (path, mut bytes) in seeds("ws_frame") {
        let mut state = wspush::ws::frame::MessageState::default();
        let mut at = 0;
        while at < bytes.len() {
            let (_, used) = wspush::ws::frame::read_frame(&mut bytes[at..], &mut state, 8192)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: incomplete frame", path.display()));
            at += used;
        }
    }
    for (path, bytes) in seeds("api_request") {
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(value.is_object(), "{}", path.display());
    }
    let codec = wspush::ids::IdCodec::new(&wspush::config::Config::default().crypto_key);
    let sealed = std::fs::read_to_string(fuzz_dir().join("corpus/client_id/sealed")).unwrap();
    assert!(codec.open(&sealed).is_some());
    for (path, bytes) in seeds("node_frame") {
        let mut at = 0;
        while at < bytes.len() {
            at += wspush::cluster::proto::decode(&bytes[at..])
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; after a change to proto::Frame or PROTO_VERSION, regenerate \
                         the seeds: cargo test --test fuzz_smoke -- --ignored write_seeds",
                        path.display()
                    )
                })
                .unwrap_or_else(|| panic!("{}: incomplete frame", path.display()))
                .1;
        }
    }
}

/// Writes the seed files of `fuzz/corpus/`: small, real inputs of each parser. The clientId
/// seed is sealed with a random nonce, so it changes each time this runs.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    for (name, seeds) in seeds() {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in seeds {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
    }
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("http_request", http_seeds()),
        ("ws_handshake", handshake_seeds()),
        ("ws_frame", frame_seeds()),
        ("api_request", api_seeds()),
        ("client_id", client_id_seeds()),
        ("node_frame", node_frame_seeds()),
        ("auth", auth_seeds()),
    ]
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:7800\r\nSystemId: app1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http_seeds() -> Seeds {
    let push = r#"{"clientId":"c","sendUserId":"u","code":0,"msg":"hi","data":{"x":1}}"#;
    let mut pipelined = post("/api/get_online_list", r#"{"groupName":"g"}"#);
    pipelined.extend(post("/api/close_client", r#"{"clientId":"c"}"#));
    vec![
        ("content_length", post("/api/send_to_client", push)),
        ("register", post("/api/register", r#"{"systemId":"app1"}"#)),
        (
            "chunked",
            b"POST /api/send_to_group HTTP/1.1\r\nHost: x\r\nsystemid: app1\r\n\
              Transfer-Encoding: chunked\r\n\r\n\
              10\r\n{\"groupName\":\"g\"\r\n3;ext=1\r\n,\"m\r\n\
              9\r\nsg\":\"hi\"}\r\n0\r\nX-Trailer: y\r\n\r\n"
                .to_vec(),
        ),
        (
            "expect_continue",
            b"POST /api/bind_to_group HTTP/1.1\r\nHost: x\r\nSystemId: app1\r\n\
              Expect: 100-continue\r\nContent-Length: 32\r\n\r\n\
              {\"clientId\":\"c\",\"groupName\":\"g\"}"
                .to_vec(),
        ),
        (
            "http10_keepalive",
            b"POST /api/get_online_list HTTP/1.0\r\nConnection: keep-alive\r\n\
              SystemId: app1\r\nContent-Length: 17\r\n\r\n{\"groupName\":\"g\"}"
                .to_vec(),
        ),
        ("pipelined", pipelined),
        (
            "probe_close",
            b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ]
}

fn handshake_seeds() -> Seeds {
    let upgrade = |target: &str, version: &str, extra: &[u8]| {
        let mut out = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:7800\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: {version}\r\nOrigin: http://x\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(extra);
        out
    };
    vec![
        ("upgrade", upgrade("/ws?systemId=app1", "13", b"")),
        (
            "percent_encoded",
            upgrade("/ws?x=1&systemId=a%20b+c", "13", b""),
        ),
        ("no_system_id", upgrade("/ws", "13", b"")),
        ("old_version", upgrade("/ws?systemId=app1", "8", b"")),
        // A ping sent in the same packet as the upgrade.
        (
            "with_ping",
            upgrade("/ws?systemId=app1", "13", &masked(0x89, b"hi")),
        ),
    ]
}

/// A client frame: `first` is FIN/RSV/opcode, the payload is masked with a fixed key.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

fn frame_seeds() -> Seeds {
    let mut fragmented = masked(0x01, b"frag");
    fragmented.extend(masked(0x89, b"ping in between"));
    fragmented.extend(masked(0x00, b"men"));
    fragmented.extend(masked(0x80, b"ted"));
    let mut stream = masked(0x81, b"hello");
    stream.extend(masked(0x8a, b""));
    stream.extend(masked(0x88, &1000u16.to_be_bytes()));
    vec![
        ("text", masked(0x81, b"{\"hello\":1}")),
        ("binary_126", masked(0x82, &[0xab; 300])),
        ("ping", masked(0x89, b"abc")),
        ("close_reason", masked(0x88, b"\x03\xe9going away")),
        ("fragmented", fragmented),
        ("stream", stream),
    ]
}

fn api_seeds() -> Seeds {
    let bodies: &[(&str, &str)] = &[
        ("register", r#"{"systemId":"app1"}"#),
        (
            "send_to_client",
            r#"{"clientId":"c","sendUserId":"u","code":3,"msg":"m","data":{"x":[1,2.5,"s"]}}"#,
        ),
        (
            "send_to_clients",
            r#"{"clientIds":["a","b\u00e9"],"msg":"m","data":null}"#,
        ),
        (
            "send_to_group",
            r#"{"groupName":"g","code":-1,"msg":"esc\"aped\n","data":"a string"}"#,
        ),
        (
            "bind_to_group",
            r#"{"clientId":"c","groupName":"g","userId":"u","extend":"{\"k\":1}"}"#,
        ),
        ("get_online_list", r#"{"groupName":"g"}"#),
        ("close_client", r#"{"clientId":"c"}"#),
        ("wrong_type", r#"{"clientId":5,"code":"x"}"#),
    ];
    bodies
        .iter()
        .map(|(name, body)| (*name, body.as_bytes().to_vec()))
        .collect()
}

fn client_id_seeds() -> Seeds {
    let codec = wspush::ids::IdCodec::new(&wspush::config::Config::default().crypto_key);
    let addr = wspush::ids::ClientAddr {
        node: "10.1.2.3:7900".parse().unwrap(),
        core: 1,
        slot: 123_456,
        generation: 7,
    };
    // The address bytes the target reads first, then (position, replacement) pairs.
    let mut structured = vec![10, 1, 2, 3, 0x1e, 0xdc, 1, 0, 1, 0xe2, 0x40, 0, 0, 0, 7];
    structured.extend_from_slice(&[0, 0, 30, 7, 58, 63]);
    vec![
        ("sealed", codec.seal(&addr).into_bytes()),
        ("structured", structured),
        (
            "wrong_length",
            b"AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjKlMnOp".to_vec(),
        ),
    ]
}

fn node_frame_seeds() -> Seeds {
    use wspush::cluster::proto::{encode, Frame, Member, RemoteOp, RemoteReply, StatsPart, Target};
    let target = Target {
        core: 1,
        slot: 42,
        generation: 7,
    };
    let frames = [
        (
            "deliver",
            Frame::Request {
                id: 1,
                op: RemoteOp::Deliver {
                    system: "app1".into(),
                    targets: vec![target, target],
                    frame: b"\x81\x02hi".to_vec(),
                },
            },
        ),
        (
            "bind",
            Frame::Request {
                id: 2,
                op: RemoteOp::Bind {
                    target,
                    system: "app1".into(),
                    group: "g".into(),
                    user_id: "u".into(),
                    extend: "e".into(),
                    resume: None,
                },
            },
        ),
        (
            "history_push",
            Frame::Request {
                id: 20,
                op: RemoteOp::HistoryPush {
                    system: "app1".into(),
                    group: "g".into(),
                    history: wspush::types::HistoryOpts {
                        size: 10,
                        ttl_seconds: 60,
                    },
                    push: wspush::types::HistoryPush {
                        message_id: "0123456789abcdef".into(),
                        send_user_id: "u".into(),
                        code: 7,
                        msg: "m".into(),
                        data: r#"{"a":1}"#.into(),
                        exclude: None,
                    },
                },
            },
        ),
        (
            "offline_store",
            Frame::Request {
                id: 21,
                op: RemoteOp::OfflineStore {
                    system: "app1".into(),
                    user_id: "u".into(),
                    push: wspush::cluster::proto::OfflineFrame {
                        message_id: "0123456789abcdef".into(),
                        frame: b"\x81\x02hi".to_vec(),
                    },
                },
            },
        ),
        (
            "offline_take",
            Frame::Request {
                id: 22,
                op: RemoteOp::OfflineTake {
                    system: "app1".into(),
                    user_id: "u".into(),
                },
            },
        ),
        (
            "group_push",
            Frame::Request {
                id: 3,
                op: RemoteOp::GroupPush {
                    system: "app1".into(),
                    group: "g".into(),
                    frame: b"\x81\x05hello".to_vec(),
                    exclude: None,
                },
            },
        ),
        (
            "online_list",
            Frame::Request {
                id: 4,
                op: RemoteOp::OnlineList {
                    system: "app1".into(),
                    group: "g".into(),
                },
            },
        ),
        (
            "close",
            Frame::Request {
                id: 5,
                op: RemoteOp::Close {
                    target,
                    system: "app1".into(),
                    kick: wspush::types::Kick::Api,
                },
            },
        ),
        (
            "user_claim",
            Frame::Request {
                id: 23,
                op: RemoteOp::UserClaim {
                    system: "app1".into(),
                    user_id: "u".into(),
                    client_id: "0".repeat(59),
                    take: true,
                },
            },
        ),
        (
            "user_release",
            Frame::Request {
                id: 24,
                op: RemoteOp::UserRelease {
                    system: "app1".into(),
                    user_id: "u".into(),
                    client_id: "0".repeat(59),
                },
            },
        ),
        (
            "reply_claimed",
            Frame::Response {
                id: 25,
                reply: RemoteReply::Claimed(wspush::types::Claimed::Replaced("0".repeat(59))),
            },
        ),
        (
            "reply_list",
            Frame::Response {
                id: 6,
                reply: RemoteReply::List(vec!["a".into(), "b".into()]),
            },
        ),
        (
            "is_online",
            Frame::Request {
                id: 8,
                op: RemoteOp::IsOnline {
                    target,
                    system: "app1".into(),
                },
            },
        ),
        (
            "unbind",
            Frame::Request {
                id: 9,
                op: RemoteOp::Unbind {
                    target,
                    system: "app1".into(),
                    group: "g".into(),
                },
            },
        ),
        (
            "user_push",
            Frame::Request {
                id: 10,
                op: RemoteOp::UserPush {
                    system: "app1".into(),
                    user_id: "u".into(),
                    frame: b"\x81\x02hi".to_vec(),
                    exclude: Some("0".repeat(59)),
                },
            },
        ),
        (
            "reply_members",
            Frame::Response {
                id: 11,
                reply: RemoteReply::Members(vec![Member {
                    client_id: "c".into(),
                    user_id: "u".into(),
                    extend: "{}".into(),
                }]),
            },
        ),
        (
            "reply_stats",
            Frame::Response {
                id: 12,
                reply: RemoteReply::Stats(StatsPart {
                    clients: 3,
                    groups: vec![1, 2],
                    users: vec![u64::MAX],
                    unlisted_groups: 0,
                    unlisted_users: 1,
                    offline: 2,
                }),
            },
        ),
        (
            "reply_failed",
            Frame::Response {
                id: 7,
                reply: RemoteReply::Failed("shutting down".into()),
            },
        ),
        (
            "membership",
            Frame::Request {
                id: 13,
                op: RemoteOp::Membership,
            },
        ),
        (
            "reply_membership",
            Frame::Response {
                id: 14,
                reply: RemoteReply::Membership {
                    established: true,
                    lists_you: false,
                },
            },
        ),
    ];
    let mut out: Seeds = Vec::new();
    let mut pipelined = Vec::new();
    for (name, frame) in &frames {
        let mut wire = Vec::new();
        encode(frame, &mut wire);
        pipelined.extend_from_slice(&wire);
        out.push((name, wire));
    }
    let mut done = Vec::new();
    encode(
        &Frame::Response {
            id: u64::MAX,
            reply: RemoteReply::Done(true),
        },
        &mut done,
    );
    pipelined.extend_from_slice(&done);
    out.push(("pipelined", pipelined));
    out
}

/// A valid HS256 token for system "sys" (header, claims with exp and userId, signature with the
/// target's secret), a bare Authorization value, a signed request (signature, timestamp, path,
/// system, body: one line each), a webhook URL and
/// an account value as the original and wspush write it.
fn auth_seeds() -> Seeds {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"exp":1800000060,"userId":"u1","systemId":"sys"}"#);
    let input = format!("{header}.{claims}");
    let tag = wspush::auth::hmac_sha256(b"fuzz-secret-0123456789abcdef", input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag));
    let body = r#"{"clientId":"x","code":1}"#;
    let (path, system, at) = ("/api/send_to_client", "sys", "1800000000");
    let signed = wspush::auth::signing_input(path, system, at, body.as_bytes());
    let signature = wspush::auth::sign_hex("fuzz-secret-0123456789abcdef", &signed);
    vec![
        ("jwt", token.into_bytes()),
        ("apikey", b"apikey fuzz-api-key-0123456789".to_vec()),
        (
            "signature",
            format!("{signature}\n{at}\n{path}\n{system}\n{body}").into_bytes(),
        ),
        ("webhook_url", b"http://127.0.0.1:8080/hooks/wspush?x=1".to_vec()),
        (
            "account",
            br#"{"systemId":"sys","registerTime":1764000000,"secret":"0123456789abcdef","webhookUrl":"http://10.0.0.1/h"}"#.to_vec(),
        ),
    ]
}

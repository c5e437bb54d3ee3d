//! The `/ws` endpoint: handshake, welcome frame, -1001, client frames (ping, data, fragments,
//! size limit), server heartbeats, pong timeout, slow consumers.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::Data;
use tungstenite::Message;

fn push(port: u16, system: &str, client: &str, data: Value) {
    let v = api(
        port,
        Some(system),
        "/api/send_to_client",
        &json!({"clientId": client, "sendUserId": "", "code": 1, "msg": "", "data": data}),
    );
    assert_eq!(v["code"], 0, "{v}");
}

/// Asserts `ws` is still open and served: a push reaches it.
fn assert_still_served(port: u16, system: &str, ws: &mut Ws) {
    push(port, system, &ws.client_id.clone(), json!("alive?"));
    assert_eq!(ws.recv_json()["data"], "alive?");
}

#[test]
fn welcome_frame_comes_first_and_ids_are_distinct() {
    let server = Server::start();
    server.register("w");
    // Ws::connect checks the welcome frame's exact shape.
    let a = server.ws("w");
    let b = server.ws("w");
    assert_ne!(a.client_id, b.client_id);
    // The id is opaque but printable and about the original's length (44-64).
    for id in [&a.client_id, &b.client_id] {
        assert!(
            id.bytes().all(|c| c.is_ascii_graphic()),
            "clientId not printable: {id:?}"
        );
        assert!((16..=128).contains(&id.len()), "clientId length: {id:?}");
    }
}

#[test]
fn any_origin_is_accepted() {
    let server = Server::start();
    let stream = connect(server.port);
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://127.0.0.1:{}/ws?systemId=o", server.port).as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let (mut ws, resp) = tungstenite::client::client(req, stream).expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    match ws.read().expect("welcome") {
        Message::Text(t) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["code"], 0, "{v}");
        }
        other => panic!("expected the welcome frame, got {other:?}"),
    }
}

#[test]
fn connect_without_system_id_gets_minus_1001_then_close() {
    let mut server = Server::start();
    for path in ["/ws", "/ws?systemId=", "/ws?other=1"] {
        let mut ws = Ws {
            ws: ws_handshake(server.port, path),
            client_id: format!("(no systemId via {path})"),
        };
        let v = ws.recv_json();
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["code", "data", "messageId", "msg", "sendUserId"],
            "{path}: {v}"
        );
        assert_eq!(v["code"], -1001, "{path}: {v}");
        assert_eq!(v["messageId"], "", "{path}: {v}");
        assert_eq!(v["sendUserId"], "", "{path}: {v}");
        assert_eq!(v["data"], json!([]), "{path}: {v}");
        assert!(!v["msg"].as_str().unwrap().is_empty(), "{path}: {v}");
        // Then the server closes (a close frame or just the TCP connection).
        ws.expect_end(IO_TIMEOUT, false);
    }
    server.assert_serves();
}

#[test]
fn unregistered_system_is_accepted_at_connect_time() {
    let server = Server::start();
    let mut ws = server.ws("registered-later");
    // Once the system is registered, its API reaches the connection made before.
    server.register("registered-later");
    push(
        server.port,
        "registered-later",
        &ws.client_id.clone(),
        json!("late"),
    );
    assert_eq!(ws.recv_json()["data"], "late");
}

#[test]
fn client_ping_gets_a_pong_with_the_same_payload() {
    let server = Server::start();
    server.register("p");
    let mut ws = server.ws("p");
    for payload in [b"".to_vec(), b"hello".to_vec(), vec![7u8; 125]] {
        ws.ws.send(Message::Ping(payload.clone())).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no pong");
            match ws.read_within(IO_TIMEOUT).expect("read") {
                Some(Message::Pong(p)) => {
                    assert_eq!(p, payload);
                    break;
                }
                Some(Message::Ping(_)) | None => {}
                Some(other) => panic!("expected a pong, got {other:?}"),
            }
        }
    }
    assert_still_served(server.port, "p", &mut ws);
}

#[test]
fn client_messages_are_read_and_ignored() {
    let server = Server::start();
    server.register("m");
    let mut ws = server.ws("m");
    ws.send_text("hello server");
    ws.send_text(&json!({"code": 1, "data": "pretend push"}).to_string());
    ws.ws.send(Message::Binary(vec![0, 1, 2, 255])).unwrap();
    ws.ws.send(Message::Pong(b"unsolicited".to_vec())).unwrap();
    ws.send_text("");
    ws.expect_nothing(QUIET_MS);
    assert_still_served(server.port, "m", &mut ws);
}

#[test]
fn message_of_8192_bytes_is_accepted_and_8193_closes_with_1009() {
    let mut server = Server::start();
    server.register("big");
    let mut ws = server.ws("big");
    ws.send_text(&"a".repeat(8192));
    ws.ws.send(Message::Binary(vec![1; 8192])).unwrap();
    ws.expect_nothing(QUIET_MS);
    assert_still_served(server.port, "big", &mut ws);

    ws.send_text(&"a".repeat(8193));
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1009));

    let mut ws = server.ws("big");
    ws.ws.send(Message::Binary(vec![1; 100_000])).unwrap();
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1009));
    server.assert_serves();
}

#[test]
fn fragmented_messages_are_accepted() {
    let server = Server::start();
    server.register("frag");
    let mut ws = server.ws("frag");
    ws.send_frame(Data::Text, b"hel", false);
    // A control frame may sit between fragments (RFC 6455 5.4).
    ws.ws.send(Message::Ping(b"mid".to_vec())).unwrap();
    ws.send_frame(Data::Continue, b"lo ", false);
    ws.send_frame(Data::Continue, b"world", true);
    ws.send_frame(Data::Binary, &[1, 2], false);
    ws.send_frame(Data::Continue, &[3], true);
    let pong = loop {
        match ws.read_within(IO_TIMEOUT).expect("read") {
            Some(Message::Pong(p)) => break p,
            Some(Message::Ping(_)) => {}
            other => panic!("expected the pong, got {other:?}"),
        }
    };
    assert_eq!(pong, b"mid");
    ws.expect_nothing(QUIET_MS);
    assert_still_served(server.port, "frag", &mut ws);
}

#[test]
fn fragmented_message_over_8192_bytes_closes_with_1009() {
    let mut server = Server::start();
    server.register("frag");
    let mut ws = server.ws("frag");
    let part = vec![b'x'; 3000];
    ws.send_frame(Data::Text, &part, false);
    ws.send_frame(Data::Continue, &part, false);
    ws.send_frame(Data::Continue, &part, true);
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1009));
    server.assert_serves();
}

#[test]
fn text_that_is_not_utf8_closes_with_1007() {
    let mut server = Server::start();
    server.register("utf8");
    // Valid UTF-8 split inside a code point across fragments is fine ("€" is e2 82 ac).
    let mut ws = server.ws("utf8");
    ws.send_frame(Data::Text, b"price: \xe2\x82", false);
    ws.send_frame(Data::Continue, b"\xac 5", true);
    ws.send_frame(Data::Binary, &[0xff, 0xfe], true);
    ws.expect_nothing(QUIET_MS);
    assert_still_served(server.port, "utf8", &mut ws);
    // RFC 6455 section 8.1: invalid UTF-8 in a text message fails the connection, 1007.
    ws.send_frame(Data::Text, b"bad \xff here", true);
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1007));
    // Also when the bad byte comes in a later fragment, or a code point is left open.
    let mut ws = server.ws("utf8");
    ws.send_frame(Data::Text, b"ok \xe2", false);
    ws.send_frame(Data::Continue, b"\x28 no", true);
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1007));
    let mut ws = server.ws("utf8");
    ws.send_frame(Data::Text, b"open \xe2\x82", true);
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1007));
    // A close frame whose reason is not UTF-8 (section 5.5.1) gets 1007 rather than an echo.
    let mut ws = server.ws("utf8");
    let mask = [7u8, 1, 9, 3];
    let payload = b"\x03\xe8bye \xc3\x28";
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    ws.ws.get_mut().write_all(&frame).unwrap();
    assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1007));
    server.assert_serves();
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn handshake_answers_the_rfc_6455_accept_key() {
    let server = Server::start();
    let resp = http(
        server.port,
        "GET",
        "/ws?systemId=k",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    assert_eq!(resp.status, 101);
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(resp
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
}

/// What is wrong, method, headers, accepted statuses.
type BadHandshake = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static [u16],
);

#[test]
fn bad_handshakes_are_refused_with_400() {
    let mut server = Server::start();
    let port = server.port;
    let upgrade = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![("Upgrade", "websocket"), ("Connection", "Upgrade")];
        h.extend_from_slice(extra);
        h
    };
    let cases: Vec<BadHandshake> = vec![
        (
            "missing Sec-WebSocket-Key",
            "GET",
            upgrade(&[("Sec-WebSocket-Version", "13")]),
            &[400],
        ),
        (
            "empty Sec-WebSocket-Key",
            "GET",
            upgrade(&[("Sec-WebSocket-Key", ""), ("Sec-WebSocket-Version", "13")]),
            &[400],
        ),
        (
            "wrong Sec-WebSocket-Version",
            "GET",
            upgrade(&[("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "8")]),
            // RFC 6455 4.2.2 suggests 426 with Sec-WebSocket-Version; the brief says 400.
            &[400, 426],
        ),
        (
            "missing Sec-WebSocket-Version",
            "GET",
            upgrade(&[("Sec-WebSocket-Key", KEY)]),
            &[400, 426],
        ),
        (
            "POST /ws",
            "POST",
            upgrade(&[("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]),
            // The original (gorilla) answers 405 here; the brief says 400.
            &[400, 405],
        ),
        (
            "no Upgrade header",
            "GET",
            vec![
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
            &[400],
        ),
        ("plain GET", "GET", vec![], &[400]),
    ];
    for (what, method, headers, statuses) in cases {
        let resp = http(port, method, "/ws?systemId=h", &headers, b"");
        assert!(
            statuses.contains(&resp.status),
            "{what}: status {} (want one of {statuses:?}) body {:?}",
            resp.status,
            resp.text()
        );
        server.assert_alive();
    }
    server.assert_serves();
}

#[test]
fn server_pings_and_keeps_clients_that_answer() {
    let server = Server::start_with(&["HeartbeatInterval = 1", "PongTimeout = 3"]);
    server.register("hb");
    let mut ws = server.ws("hb");
    // Read (tungstenite answers each ping) for well past PongTimeout, counting pings.
    let start = Instant::now();
    let mut pings = 0;
    let mut first_ping = None;
    while start.elapsed() < Duration::from_millis(5500) {
        match ws.read_within(Duration::from_millis(200)) {
            Ok(Some(Message::Ping(_))) => {
                pings += 1;
                first_ping.get_or_insert(start.elapsed());
            }
            Ok(None) => {}
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Err(e) => panic!("a client answering pings was dropped: {e}"),
        }
    }
    let first = first_ping.expect("no ping within 5.5 s at HeartbeatInterval = 1");
    assert!(
        first < Duration::from_millis(2500),
        "first ping after {first:?}"
    );
    assert!(pings >= 3, "only {pings} pings in 5.5 s");
    assert_still_served(server.port, "hb", &mut ws);
}

#[test]
fn a_client_that_never_answers_pings_is_dropped_and_its_groups_get_1002() {
    let server = Server::start_with(&["HeartbeatInterval = 1", "PongTimeout = 3"]);
    server.register("hb");
    // `silent` is never read after its welcome, so tungstenite never sends a pong for it; its
    // socket stays open at the TCP level.
    let silent = server.ws("hb");
    let mut watcher = server.ws("hb");
    bind(server.port, "hb", &silent, "room", "quiet", "q");
    bind(server.port, "hb", &watcher, "room", "loud", "");
    let joined = presence(&watcher.recv_json(), 1001);
    assert_eq!(joined["clientId"], watcher.client_id);

    let started = Instant::now();
    let push = watcher.recv_json_within(Duration::from_secs(12));
    let data = presence(&push, 1002);
    assert_eq!(
        data,
        json!({"clientId": silent.client_id, "userId": "quiet", "extend": "q"})
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "dropped after only {:?}, before PongTimeout",
        started.elapsed()
    );
    assert_eq!(
        online_list(server.port, "hb", "room"),
        vec![watcher.client_id.clone()]
    );
    // The silent client's connection really is gone.
    let mut silent = silent;
    silent.expect_end(IO_TIMEOUT, true);
    // The watcher, which answered every ping, is still here.
    assert_still_served(server.port, "hb", &mut watcher);
}

#[test]
fn a_client_whose_queue_overflows_is_closed_with_1008() {
    let server = Server::start_with(&["QueueFrames = 8"]);
    server.register("slow");
    let slow = server.ws("slow");
    let mut watcher = server.ws("slow");
    bind(server.port, "slow", &slow, "room", "slow", "");
    bind(server.port, "slow", &watcher, "room", "w", "");
    presence(&watcher.recv_json(), 1001);

    // `slow` never reads: once the socket buffers are full its queue fills and it must go.
    let big = "x".repeat(64 * 1024);
    let mut dropped = None;
    for i in 0..600 {
        let v = api(
            server.port,
            Some("slow"),
            "/api/send_to_client",
            &json!({"clientId": slow.client_id, "sendUserId": "", "code": 1, "msg": "", "data": big}),
        );
        assert!(v["code"] == 0 || v["code"] == -1, "{v}");
        if i % 10 == 9 {
            if let Ok(Some(Message::Text(t))) = watcher.read_within(Duration::from_millis(1)) {
                dropped = Some(serde_json::from_str::<Value>(&t).unwrap());
                break;
            }
        }
    }
    let push = dropped.unwrap_or_else(|| watcher.recv_json_within(Duration::from_secs(10)));
    assert_eq!(presence(&push, 1002)["clientId"], slow.client_id);

    // Draining what got through ends the connection.
    let mut slow = slow;
    // The server sends the 1008 close frame only when the socket takes it (best effort: its
    // buffer is full, possibly mid-frame), so a cut connection is fine too.
    match slow.expect_end(Duration::from_secs(20), true) {
        Ended::Close(code) => assert_eq!(code, 1008),
        Ended::Dropped => {}
    }
    // One warning names the client; the watcher is not named.
    let log = server.stderr_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("slow consumer"))
        .collect();
    assert_eq!(lines.len(), 1, "slow-consumer lines: {lines:?}");
    assert!(
        lines[0].contains(&slow.client_id) && lines[0].contains("1008"),
        "{}",
        lines[0]
    );
    assert!(
        !log.contains(&watcher.client_id),
        "the watcher was named: {log}"
    );
    assert_still_served(server.port, "slow", &mut watcher);
}

#[test]
fn a_client_over_queue_bytes_that_reads_again_gets_the_1008_close_frame() {
    // QueueBytes alone (QueueFrames stays at its default): 16 KiB pushes into a 64 KiB queue.
    // The client reads again as soon as the server says it gave up on it, within the second
    // the server waits for the close frame to be taken, so the 1008 itself must arrive.
    let server = Server::start_with(&["QueueBytes = 65536"]);
    server.register("bytes");
    let mut slow = Ws::connect_small_rcvbuf(server.port, "bytes", 4096);
    let data = "y".repeat(16 * 1024);
    let body =
        json!({"clientId": slow.client_id, "sendUserId": "", "code": 1, "msg": "", "data": data});
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr_log().contains("slow consumer") {
        assert!(Instant::now() < deadline, "the queue never overflowed");
        for _ in 0..8 {
            assert_eq!(
                api(server.port, Some("bytes"), "/api/send_to_client", &body)["code"],
                0
            );
        }
    }
    assert_eq!(
        slow.expect_end(Duration::from_secs(10), true),
        Ended::Close(1008)
    );
    let log = server.stderr_log();
    let line = log.lines().find(|l| l.contains("slow consumer")).unwrap();
    assert!(line.contains(&slow.client_id), "{line}");
    // At most 64 KiB were queued when it overflowed.
    let bytes: usize = line
        .split("bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes= in {line}"));
    assert!(bytes <= 65536, "{line}");
}

#[test]
fn a_raw_websocket_client_works_end_to_end() {
    // The handshake and frames by hand, as a minimal client of another language would do them.
    let server = Server::start();
    server.register("raw");
    let mut stream = connect(server.port);
    write!(
        stream,
        "GET /ws?systemId=raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let resp = read_response(&mut reader).expect("handshake response");
    assert_eq!(resp.status, 101);
    let welcome = read_server_text(&mut reader);
    let id = welcome["data"]["clientId"].as_str().unwrap().to_string();
    push(server.port, "raw", &id, json!({"k": "v"}));
    let msg = read_server_text(&mut reader);
    assert_eq!(msg["data"], json!({"k": "v"}));
    // A masked close frame (code 1000); the server answers with a close frame.
    let mask = [1u8, 2, 3, 4];
    let payload = [0x03u8, 0xE8];
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).unwrap();
    let (opcode, body) = read_server_frame(&mut reader);
    assert_eq!(opcode, 0x8, "expected a close frame");
    assert!(body.len() >= 2);
}

/// Reads one unmasked, unfragmented server frame: (opcode, payload).
fn read_server_frame(reader: &mut impl std::io::Read) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).expect("frame head");
    assert_eq!(head[0] & 0x80, 0x80, "server frames here are unfragmented");
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            reader.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (head[0] & 0x0f, body)
}

fn read_server_text(reader: &mut impl std::io::Read) -> Value {
    loop {
        let (opcode, body) = read_server_frame(reader);
        match opcode {
            0x1 => return serde_json::from_slice(&body).expect("JSON text frame"),
            0x9 | 0xA => {}
            other => panic!("expected a text frame, got opcode {other}"),
        }
    }
}

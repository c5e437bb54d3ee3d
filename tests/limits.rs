//! The configurable limits of issue 6: connections per core (503, then recovery), running out of
//! files (accept backs off and recovers), the handshake timeout, a slowloris dripping header
//! bytes, groups per client and ids per `send_to_clients`.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends a `/ws` upgrade and reads the answer's head within `wait`. `Some((status, stream))`,
/// or `None` when nothing came back in time (the server never accepted the socket).
fn upgrade(port: u16, system: &str, wait: Duration) -> Option<(u16, TcpStream)> {
    let mut stream = connect(port);
    stream.set_read_timeout(Some(wait)).unwrap();
    let request = format!(
        "GET /ws?systemId={system} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    // Read the status line byte by byte, so nothing after the head (the welcome frame) is lost.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&line);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, stream))
}

#[test]
fn upgrades_beyond_max_conns_per_core_get_503_then_room_frees_up() {
    // Two cores, two connections each: the kernel's SO_REUSEPORT hash picks the core, so the
    // first 503 comes after 2 to 4 upgrades, never later.
    let mut server = Server::start_with(&["MaxConnsPerCore = 2"]);
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        let (status, stream) =
            upgrade(server.port, "full", IO_TIMEOUT).expect("an answer to every upgrade");
        match status {
            101 => held.push(stream),
            503 => {
                refused = Some(stream);
                break;
            }
            other => panic!("upgrade answered {other}"),
        }
    }
    let refused = refused.expect("no 503 after 40 upgrades with MaxConnsPerCore = 2");
    assert!(
        (2..=4).contains(&held.len()),
        "{} upgrades held before the first 503",
        held.len()
    );
    let mut reader = BufReader::new(refused);
    // The rest of the 503 (the status line is already read) names the reason, then closes.
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("Retry-After"),
        "503 without Retry-After: {rest}"
    );
    assert!(rest.contains("connection limit"), "503 body: {rest}");

    let log = server.stderr_log();
    assert!(
        log.contains("MaxConnsPerCore reached"),
        "no log line for the refusal:\n{log}"
    );
    // Closing every held connection makes room again on both cores.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = Vec::new();
    while fresh.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no room again after the held connections closed"
        );
        match upgrade(server.port, "full", IO_TIMEOUT) {
            Some((101, stream)) => fresh.push(stream),
            Some((503, _)) => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("upgrade answered {:?}", other.map(|(s, _)| s)),
        }
    }
    server.assert_alive();
}

#[test]
fn the_default_limit_follows_the_open_files_limit() {
    // With 64 files and no MaxConnsPerCore, the server keeps 32 back and allows 16 per core:
    // upgrades past that get 503 instead of hanging in the accept queue on EMFILE.
    let mut server = Server::start_limited(&[], 2, Some(64));
    let log = server.stderr_log();
    assert!(
        log.contains("max_conns_per_core=16"),
        "start line does not show the derived limit:\n{log}"
    );
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..40 {
        match upgrade(server.port, "nofile", IO_TIMEOUT) {
            Some((101, stream)) => held.push(stream),
            Some((503, _)) => {
                refused = true;
                break;
            }
            other => panic!(
                "after {} upgrades: {:?} (EMFILE instead of 503?)",
                held.len(),
                other.map(|(s, _)| s)
            ),
        }
    }
    assert!(refused, "no 503 within 40 upgrades");
    assert!(held.len() <= 32, "{} connections held", held.len());
    server.assert_alive();
}

#[test]
fn accept_backs_off_on_emfile_and_recovers() {
    // A connection limit above what the files allow: accept() itself runs into EMFILE.
    let mut server = Server::start_limited(&["MaxConnsPerCore = 1000"], 2, Some(64));
    let mut held = Vec::new();
    let mut starved = 0;
    while held.len() < 100 {
        match upgrade(server.port, "emfile", Duration::from_secs(1)) {
            Some((101, stream)) => held.push(stream),
            Some((status, _)) => panic!("upgrade answered {status}"),
            // The socket sits in the backlog: the server has no file to accept it into.
            None => {
                starved += 1;
                if starved == 2 {
                    break;
                }
            }
        }
    }
    assert_eq!(
        starved,
        2,
        "64 files never ran out with {} sockets",
        held.len()
    );
    let log = server.stderr_log();
    assert!(
        log.contains("accept failed"),
        "no log line for EMFILE:\n{log}"
    );
    // Free the files: the backed-off accept loop picks up new connections again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((101, _)) = upgrade(server.port, "emfile", Duration::from_secs(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "accept did not recover");
    }
    server.register("after-emfile");
    server.assert_serves();
}

#[test]
fn a_connection_that_says_nothing_is_closed_after_handshake_timeout() {
    // KeepAliveTimeout is long: only HandshakeTimeout can close the silent socket this soon.
    let mut server = Server::start_with(&["HandshakeTimeout = 1", "KeepAliveTimeout = 60"]);
    let mut silent = connect(server.port);
    let started = Instant::now();
    let mut byte = [0u8; 1];
    // EOF (0) or a reset; a read timeout (IO_TIMEOUT, 5 s) means the socket was kept.
    match silent.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the server wrote to a silent connection"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "silent connection still open after {:?}",
            started.elapsed()
        ),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );

    // A keep-alive connection that served a request is held for KeepAliveTimeout instead.
    let mut kept = connect(server.port);
    kept.write_all(&request_bytes(
        server.port,
        "GET",
        "/healthz",
        &[("Connection", "keep-alive")],
        b"",
    ))
    .unwrap();
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    kept.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    let idle = kept.read(&mut byte);
    assert!(
        matches!(&idle, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "keep-alive connection closed after 2 s: {idle:?}"
    );
    server.assert_serves();
}

#[test]
fn a_slowloris_dripping_one_byte_a_second_is_cut() {
    let mut server = Server::start_with(&["HeadTimeout = 3", "HandshakeTimeout = 3"]);
    let mut stream = connect(server.port);
    let head = b"GET /ws?systemId=drip HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let started = Instant::now();
    let mut cut_after = None;
    for byte in head.iter() {
        if stream.write_all(&[*byte]).is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        // The server answers 408 or just closes: either way the next writes fail or EOF shows.
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let seen = stream.read(&mut buf);
        stream.set_nonblocking(false).unwrap();
        match seen {
            Ok(0) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.starts_with("HTTP/1.1 408"), "answer: {text}");
                cut_after = Some(started.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut_after = Some(started.elapsed());
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a dripping client still holds its socket after {:?}",
            started.elapsed()
        );
    }
    let cut_after = cut_after.expect("the whole head was dripped without a cut");
    assert!(
        cut_after < Duration::from_secs(6),
        "cut after {cut_after:?}"
    );
    server.assert_serves();
}

#[test]
fn bind_beyond_max_groups_per_client_is_refused_and_changes_nothing() {
    let server = Server::start_with(&["MaxGroupsPerClient = 3"]);
    server.register("grp");
    let mut ws = server.ws("grp");
    for g in ["a", "b", "c"] {
        bind(server.port, "grp", &ws, g, "u", "e");
        assert_eq!(presence(&ws.recv_json(), 1001)["userId"], "u");
    }
    let v = api(
        server.port,
        Some("grp"),
        "/api/bind_to_group",
        &json!({"clientId": ws.client_id, "groupName": "d", "userId": "other", "extend": "x"}),
    );
    assert_eq!(v["code"], -1, "fourth bind: {v}");
    assert!(
        v["msg"].as_str().unwrap().contains("MaxGroupsPerClient"),
        "message does not name the limit: {v}"
    );
    assert!(online_list(server.port, "grp", "d").is_empty());
    // Binding again to a group it is already in takes no new slot: allowed, no second 1001.
    bind(server.port, "grp", &ws, "a", "v", "e");
    ws.expect_nothing(200);
    let push = api(
        server.port,
        Some("grp"),
        "/api/send_to_group",
        &json!({"groupName": "c", "sendUserId": "s", "code": 7, "msg": "m", "data": "x"}),
    );
    assert_eq!(push["code"], 0);
    assert_eq!(ws.recv_json()["code"], 7);
}

#[test]
fn send_to_clients_beyond_max_ids_is_refused_before_any_delivery() {
    let server = Server::start_with(&["MaxClientIdsPerRequest = 5"]);
    server.register("ids");
    let mut clients: Vec<Ws> = (0..6).map(|_| server.ws("ids")).collect();
    let ids: Vec<String> = clients.iter().map(|c| c.client_id.clone()).collect();
    let body = |ids: &[String]| json!({"clientIds": ids, "sendUserId": "s", "code": 9, "msg": "m", "data": "d"});
    let v = api(
        server.port,
        Some("ids"),
        "/api/send_to_clients",
        &body(&ids[..5]),
    );
    assert_eq!(v["code"], 0, "{v}");
    for client in &mut clients[..5] {
        assert_eq!(client.recv_json()["code"], 9);
    }
    let v = api(
        server.port,
        Some("ids"),
        "/api/send_to_clients",
        &body(&ids),
    );
    assert_eq!(v["code"], -1, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("MaxClientIdsPerRequest"),
        "{v}"
    );
    for client in &mut clients {
        client.expect_nothing(100);
    }
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_after_head_timeout() {
    // Pipelined requests whose answers are never read: once the kernel buffers are full the
    // server's write waits, and HeadTimeout later the connection must end, not hold its socket
    // and its unsent answers for ever.
    let mut server = Server::start_with(&["HeadTimeout = 2"]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // About 4 KiB an answer: 3,000 answers are 12 MiB, more than the kernel buffers both ways
    // (the server's send buffer grows to tcp_wmem's maximum, 4 MiB by default).
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let burst = request.repeat(3000);
    let _ = stream.write_all(&burst);
    // Keep offering requests without reading. While the server is only slow or its write is
    // waiting, a write here succeeds or times out (its receive buffer is full too); once the
    // server gives up on the connection, it resets it and a write fails. How long the burst
    // takes to fill the buffers depends on the machine, so there is no fixed sleep.
    let started = Instant::now();
    let ended = loop {
        match stream.write(request) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server still holds a connection whose client has not read for 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        matches!(
            ended.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{ended:?}"
    );
    server.assert_serves();
}

/// The value of one sample line of `/metrics`, by its exact series text (the scrape's own
/// connection is answered and closed first).
fn metric(port: u16, series: &str) -> Option<f64> {
    let resp = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends one keep-alive request on `stream` and reads its answer (the connection stays open).
fn keep_alive_request(stream: &TcpStream, port: u16, path: &str, body: &[u8]) -> Response {
    let req = request_bytes(port, "POST", path, &[("Connection", "keep-alive")], body);
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&req).unwrap());
    let resp = read_response(&mut BufReader::new(stream.try_clone().unwrap())).unwrap();
    t.join().unwrap();
    resp
}

#[test]
fn http_connections_beyond_max_http_conns_per_core_get_503_then_room_frees_up() {
    // One core, so every socket lands on the same one.
    let mut server = Server::start_cores(&["MaxHttpConnsPerCore = 2"], 1);
    let port = server.port;
    server.register("httpcap");
    let body = json!({"groupName": "g"}).to_string();
    let list = |stream: &TcpStream| {
        let req = request_bytes(
            port,
            "POST",
            "/api/get_online_list",
            &[("Connection", "keep-alive"), ("SystemId", "httpcap")],
            body.as_bytes(),
        );
        (&*stream).write_all(&req).unwrap();
        read_response(&mut BufReader::new(stream.try_clone().unwrap())).unwrap()
    };
    // Two keep-alive API connections hold the core's two slots.
    let held: Vec<TcpStream> = (0..2).map(|_| connect(port)).collect();
    for stream in &held {
        assert_eq!(list(stream).status, 200);
    }
    // A third is refused with 503 + Retry-After, in the envelope, and closed.
    let third = connect(port);
    let resp = list(&third);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
    assert!(
        resp.text().contains("HTTP connection limit"),
        "{}",
        resp.text()
    );
    let mut rest = Vec::new();
    let _ = BufReader::new(third).read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the 503: {rest:?}");
    // The probes and /metrics are still answered at the limit (and their connection closed);
    // a WebSocket upgrade is no HTTP connection and is not refused either.
    let probe = http(
        port,
        "GET",
        "/healthz",
        &[("Connection", "keep-alive")],
        b"",
    );
    assert_eq!(probe.status, 200);
    assert_eq!(probe.header("connection"), Some("close"));
    assert_eq!(metric(port, "wspush_http_refused_total"), Some(1.0));
    assert_eq!(
        metric(port, r#"wspush_http_connections{core="0"}"#),
        Some(2.0)
    );
    let _ws = Ws::connect(port, "httpcap");
    assert!(
        server.stderr_log().contains("MaxHttpConnsPerCore reached"),
        "no log line for the refusal:\n{}",
        server.stderr_log()
    );
    // A held connection closing makes room again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = list(&connect(port));
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 503);
        assert!(
            Instant::now() < deadline,
            "no room after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.assert_alive();
}

#[test]
fn a_large_request_leaves_no_large_buffers_on_its_keep_alive_connection() {
    let mut server = Server::start();
    let port = server.port;
    // Four keep-alive connections each send a ~1 MiB body (a 404: the body is read all the
    // same), then stay open and idle.
    let big = vec![b'x'; 1_000_000];
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(port)).collect();
    for stream in &idle {
        let resp = keep_alive_request(stream, port, "/api/no_such_route", &big);
        assert_eq!(resp.status, 404, "{}", resp.text());
    }
    // Each holds its small buffers again (1 KiB read, 256 B write), not ~1 MiB. The gauge
    // is updated right after the answer is written: poll until it has been.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = metric(port, "wspush_http_buffer_bytes").expect("wspush_http_buffer_bytes");
        // The four idle connections and the scrape's own: at least their small buffers.
        assert!(
            held >= 5.0 * 1280.0,
            "{held} bytes of buffers for 5 connections"
        );
        if held <= 5.0 * 64.0 * 1024.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle keep-alive connections still hold {held} bytes of buffers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And they still serve.
    for stream in &idle {
        let resp = keep_alive_request(stream, port, "/api/no_such_route", b"{}");
        assert_eq!(resp.status, 404);
    }
    server.assert_alive();
}

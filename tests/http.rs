//! HTTP itself: status codes outside the envelope (404, 405, 400, 413, 431), Content-Type,
//! keep-alive, pipelining, HTTP/1.0 as nginx sends it, `Expect: 100-continue`, slow heads.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const ALL_API: [&str; 7] = [
    "/api/register",
    "/api/send_to_client",
    "/api/send_to_clients",
    "/api/bind_to_group",
    "/api/send_to_group",
    "/api/get_online_list",
    "/api/close_client",
];

/// Writes `bytes` from another thread (errors ignored: the server may answer and close before
/// reading everything) and reads the response here.
fn send_big(port: u16, bytes: Vec<u8>) -> Response {
    let stream = connect(port);
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let resp = read_response(&mut BufReader::new(stream)).expect("a response");
    let _ = t.join();
    resp
}

/// Reads until EOF; panics if the server keeps the connection open past the read timeout.
fn assert_closed_by_server(reader: &mut impl Read) {
    let mut buf = [0u8; 64];
    match reader.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected bytes after the response: {:?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server did not close the connection: {e}"),
    }
}

#[test]
fn healthz_and_readyz_answer_200() {
    let server = Server::start();
    assert_eq!(http(server.port, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(server.port, "GET", "/readyz", &[], b"").status, 200);
}

#[test]
fn unknown_paths_are_404() {
    let mut server = Server::start();
    server.register("s");
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/api/nope"),
        ("POST", "/api/send_to_client/extra"),
        ("POST", "/apisend_to_client"),
        ("POST", "/API/register"),
        ("GET", "/ws/other"),
    ] {
        let resp = http(
            server.port,
            method,
            path,
            &[("Content-Type", "application/json"), ("SystemId", "s")],
            b"{}",
        );
        assert_eq!(resp.status, 404, "{method} {path}: {:?}", resp.text());
    }
    server.assert_serves();
}

#[test]
fn non_post_on_api_routes_is_405() {
    let mut server = Server::start();
    server.register("s");
    for route in &ALL_API[1..] {
        for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            for headers in [vec![("SystemId", "s")], vec![]] {
                let resp = http(server.port, method, route, &headers, b"");
                assert_eq!(resp.status, 405, "{method} {route} {headers:?}");
            }
        }
    }
    // /api/register is not behind the original's middleware: it may also answer 400 there.
    let resp = http(server.port, "GET", "/api/register", &[], b"");
    assert!(
        resp.status == 405 || resp.status == 400,
        "GET /api/register: {}",
        resp.status
    );
    server.assert_serves();
}

#[test]
fn body_that_is_not_json_is_400_with_the_envelope() {
    let mut server = Server::start();
    server.register("s");
    let bodies: [&[u8]; 6] = [
        b"not json",
        b"{",
        b"{\"clientId\":",
        b"{\"clientId\": \"a\",}",
        b"",
        b"\xff\xfe\x00garbage",
    ];
    for route in ALL_API {
        for body in bodies {
            let resp = api_raw(server.port, Some("s"), route, body);
            assert_eq!(
                resp.status,
                400,
                "{route} {:?}: {:?}",
                String::from_utf8_lossy(body),
                resp.text()
            );
            assert!(
                resp.header("content-type")
                    .is_some_and(|v| v.starts_with("application/json")),
                "400 without a JSON content type: {:?}",
                resp.headers
            );
            let v = resp.json();
            assert_envelope(&v);
            assert_eq!(v["code"], -1, "{v}");
            assert!(!v["msg"].as_str().unwrap().is_empty(), "{v}");
        }
    }
    server.assert_serves();
}

#[test]
fn envelope_has_the_originals_content_type() {
    let server = Server::start();
    let ok = api_raw(
        server.port,
        None,
        "/api/register",
        json!({"systemId": "ct"}).to_string().as_bytes(),
    );
    let fail = api_raw(
        server.port,
        None,
        "/api/get_online_list",
        json!({"groupName": "g"}).to_string().as_bytes(),
    );
    for resp in [ok, fail] {
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type").map(str::to_ascii_lowercase),
            Some("application/json; charset=utf-8".to_string()),
            "{:?}",
            resp.headers
        );
        assert_eq!(
            resp.header("content-length").and_then(|v| v.parse().ok()),
            Some(resp.body.len()),
            "Content-Length must frame the body"
        );
    }
}

#[test]
fn body_over_max_body_bytes_is_413() {
    // The group name pads the body to the limit, so MaxNameBytes must not refuse it first.
    let mut server = Server::start_with(&["MaxBodyBytes = 1000", "MaxNameBytes = 2000"]);
    server.register("s");
    // Exactly at the limit: served.
    let pad = 1000 - json!({"groupName": ""}).to_string().len();
    let at_limit = json!({ "groupName": "g".repeat(pad) }).to_string();
    assert_eq!(at_limit.len(), 1000);
    let resp = api_raw(
        server.port,
        Some("s"),
        "/api/get_online_list",
        at_limit.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.json()["code"], 0);

    // One byte more: 413.
    let over = json!({ "groupName": "g".repeat(pad + 1) }).to_string();
    let resp = send_big(
        server.port,
        request_bytes(
            server.port,
            "POST",
            "/api/get_online_list",
            &[("Content-Type", "application/json"), ("SystemId", "s")],
            over.as_bytes(),
        ),
    );
    assert_eq!(resp.status, 413, "{:?}", resp.text());

    // A huge declared length is refused the same way, whatever the body.
    let mut req = request_bytes(
        server.port,
        "POST",
        "/api/send_to_group",
        &[
            ("Content-Type", "application/json"),
            ("SystemId", "s"),
            ("Content-Length", "10000000000"),
        ],
        b"",
    );
    req.extend_from_slice(&[b' '; 2000]);
    assert_eq!(send_big(server.port, req).status, 413);
    server.assert_serves();
}

#[test]
fn body_over_the_default_one_mib_is_413() {
    let mut server = Server::start();
    server.register("s");
    let body = json!({ "groupName": "g".repeat(1 << 20) }).to_string();
    let resp = send_big(
        server.port,
        request_bytes(
            server.port,
            "POST",
            "/api/get_online_list",
            &[("Content-Type", "application/json"), ("SystemId", "s")],
            body.as_bytes(),
        ),
    );
    assert_eq!(resp.status, 413);
    server.assert_serves();
}

#[test]
fn head_over_max_head_bytes_is_431() {
    let mut server = Server::start();
    let pad = "p".repeat(10_000);
    let resp = send_big(
        server.port,
        request_bytes(server.port, "GET", "/healthz", &[("X-Pad", &pad)], b""),
    );
    assert_eq!(resp.status, 431);
    let many: Vec<(String, String)> = (0..400)
        .map(|i| (format!("X-H{i}"), "v".repeat(20)))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = send_big(
        server.port,
        request_bytes(server.port, "GET", "/healthz", &headers, b""),
    );
    // Past the size limit, or past the parser's header count: either refusal is fine.
    assert!(
        resp.status == 431 || resp.status == 400,
        "400 headers: status {}",
        resp.status
    );
    server.assert_serves();
}

#[test]
fn malformed_request_heads_get_a_4xx_not_a_crash() {
    let mut server = Server::start();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /api/register HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/register HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let stream = connect(server.port);
        let mut w = stream.try_clone().unwrap();
        w.write_all(raw).unwrap();
        match read_response(&mut BufReader::new(stream)) {
            // 505 (HTTP Version Not Supported) is the right answer to HTTP/9.9.
            Ok(resp) => assert!(
                (400..500).contains(&resp.status) || resp.status == 505,
                "{:?}: status {}",
                String::from_utf8_lossy(raw),
                resp.status
            ),
            // Closing without an answer is acceptable for bytes that are not HTTP at all.
            Err(e) => assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "{:?}: server neither answered nor closed",
                String::from_utf8_lossy(raw)
            ),
        }
        server.assert_alive();
    }
    server.assert_serves();
}

#[test]
fn expect_100_continue_gets_100_before_the_body() {
    let mut server = Server::start();
    let body = json!({"systemId": "curl"}).to_string();
    let mut stream = connect(server.port);
    write!(
        stream,
        "POST /api/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let interim = read_response(&mut reader).expect("an interim response before the body");
    assert_eq!(interim.status, 100, "{interim:?}");
    stream.write_all(body.as_bytes()).unwrap();
    let resp = read_response(&mut reader).expect("the final response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["code"], 0);

    // The system really got registered.
    let again = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": "curl"}),
    );
    assert_eq!(again["code"], -1);
    server.assert_serves();
}

#[test]
fn keep_alive_serves_several_requests_on_one_socket() {
    let server = Server::start();
    let stream = connect(server.port);
    let mut w = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let keep = [
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive"),
    ];
    let steps = [
        ("/api/register", None, json!({"systemId": "ka"}), 0),
        ("/api/register", None, json!({"systemId": "ka"}), -1),
        (
            "/api/get_online_list",
            Some("ka"),
            json!({"groupName": "g"}),
            0,
        ),
        ("/api/get_online_list", None, json!({"groupName": "g"}), -1),
        (
            "/api/send_to_group",
            Some("ka"),
            json!({"groupName": "g", "data": 1}),
            0,
        ),
    ];
    for (route, system, body, code) in steps {
        let mut headers = keep.to_vec();
        if let Some(s) = system {
            headers.push(("SystemId", s));
        }
        w.write_all(&request_bytes(
            server.port,
            "POST",
            route,
            &headers,
            body.to_string().as_bytes(),
        ))
        .unwrap();
        let resp = read_response(&mut reader).expect("response on the kept-alive socket");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["code"], code, "{route}");
    }
    // Plain HTTP/1.1 (no Connection header) is persistent too.
    for _ in 0..3 {
        w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader).unwrap().status, 200);
    }
    // Errors do not end the connection either.
    w.write_all(&request_bytes(server.port, "GET", "/nope", &keep, b""))
        .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 404);
    w.write_all(&request_bytes(
        server.port,
        "POST",
        "/api/register",
        &keep,
        b"{",
    ))
    .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 400);
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start();
    let stream = connect(server.port);
    let mut w = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut batch = Vec::new();
    for system in ["p1", "p2", "p1"] {
        batch.extend(request_bytes(
            server.port,
            "POST",
            "/api/register",
            &[
                ("Content-Type", "application/json"),
                ("Connection", "keep-alive"),
            ],
            json!({ "systemId": system }).to_string().as_bytes(),
        ));
    }
    batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    w.write_all(&batch).unwrap();
    let codes: Vec<i64> = (0..3)
        .map(|_| {
            let resp = read_response(&mut reader).expect("pipelined response");
            resp.json()["code"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(codes, [0, 0, -1]);
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_closed_by_server(&mut reader);
}

#[test]
fn http_1_0_as_nginx_sends_it_is_answered_then_closed() {
    let server = Server::start();
    server.register("ngx");
    let mut ws = server.ws("ngx");
    let body = json!({"clientId": ws.client_id, "sendUserId": "", "code": 1, "msg": "", "data": "via nginx"})
        .to_string();
    // What the README's nginx block forwards for /api (proxy_http_version 1.0 by default).
    let req = format!(
        "POST /api/send_to_client HTTP/1.0\r\nX-Forwarded-For: 10.1.2.3\r\n\
         Host: ws.example.com:660\r\nConnection: close\r\nContent-Length: {}\r\n\
         Content-Type: application/json\r\nSystemId: ngx\r\n\r\n{body}",
        body.len()
    );
    let mut stream = connect(server.port);
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["code"], 0);
    assert_closed_by_server(&mut reader);
    assert_eq!(ws.recv_json()["data"], "via nginx");

    // HTTP/1.0 without any Connection header is not persistent either.
    let mut stream = connect(server.port);
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_closed_by_server(&mut reader);
}

#[test]
fn http_1_1_connection_close_is_honoured() {
    let server = Server::start();
    let mut stream = connect(server.port);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_closed_by_server(&mut reader);
}

#[test]
fn a_stalled_request_head_is_cut_after_head_timeout() {
    let mut server = Server::start_with(&["HeadTimeout = 1"]);
    let mut stream = connect(server.port);
    stream
        .write_all(b"POST /api/register HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    // Either a 408 answer or a plain close, well before our 5 s read timeout.
    match read_response(&mut reader) {
        Ok(resp) => assert_eq!(resp.status, 408),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "stalled head still open after {:?}",
            started.elapsed()
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(4));

    // A stalled body (head complete, body short) is cut too.
    let mut stream = connect(server.port);
    stream
        .write_all(b"POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"sys")
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    match read_response(&mut reader) {
        Ok(resp) => assert!((400..500).contains(&resp.status), "{}", resp.status),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "stalled body still open after {:?}",
            started.elapsed()
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    server.assert_serves();
}

#[test]
fn many_short_connections_in_a_row() {
    // nginx opens one connection per /api request: none may leak or stall.
    let server = Server::start();
    server.register("burst");
    let started = Instant::now();
    for i in 0..300 {
        let v = api(
            server.port,
            Some("burst"),
            "/api/get_online_list",
            &json!({ "groupName": format!("g{i}") }),
        );
        assert_eq!(v["data"], json!({"count": 0, "list": []}));
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "300 requests took {:?}",
        started.elapsed()
    );
    let _ = TcpStream::connect(("127.0.0.1", server.port)).expect("still accepting");
}

#[test]
fn chunked_bodies_are_decoded_and_bounded() {
    let mut server = Server::start_with(&["MaxBodyBytes = 200"]);
    let system = unique("chunked");
    server.register(&system);
    let mut ws = server.ws(&system);
    let body = json!({ "clientId": ws.client_id, "data": "in chunks" }).to_string();
    let (a, b) = body.split_at(10);
    let chunked = format!(
        "{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let headers = [
        ("Transfer-Encoding", "chunked"),
        ("SystemId", system.as_str()),
    ];
    let resp = http(
        server.port,
        "POST",
        "/api/send_to_client",
        &headers,
        chunked.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"], "in chunks");

    let big = "x".repeat(300);
    let over = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let resp = http(
        server.port,
        "POST",
        "/api/send_to_client",
        &headers,
        over.as_bytes(),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());

    let resp = http(
        server.port,
        "POST",
        "/api/send_to_client",
        &headers,
        b"zz\r\nnope\r\n",
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    server.assert_serves();
}

#[test]
fn a_large_chunked_body_in_many_small_writes_is_decoded_once_complete() {
    // 300 chunks of 200 bytes, each written (and flushed, nodelay) on its own: the server
    // reads them piecewise and must still answer once, correctly, when the last chunk lands.
    let mut server = Server::start();
    let system = unique("pieces");
    server.register(&system);
    let mut ws = server.ws(&system);
    let data = "d".repeat(60_000);
    let body = json!({ "clientId": ws.client_id, "data": data }).to_string();
    let mut stream = connect(server.port);
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "POST /api/send_to_client HTTP/1.1\r\nHost: x\r\nSystemId: {system}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for piece in body.as_bytes().chunks(200) {
        stream
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .unwrap();
        stream.write_all(piece).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let resp = read_response(&mut reader).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"].as_str().map(str::len), Some(60_000));

    // Past the first 4 KiB a broken chunk is still refused (400) when the body ends.
    let mut stream = connect(server.port);
    write!(
        stream,
        "POST /api/send_to_client HTTP/1.1\r\nHost: x\r\nSystemId: {system}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let filler = "a".repeat(8000);
    write!(
        stream,
        "{:x}\r\n{filler}\r\nzz\r\nnope\r\n0\r\n\r\n",
        filler.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let resp = read_response(&mut reader).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    server.assert_serves();
}

#[test]
fn http_1_0_with_transfer_encoding_is_answered_then_closed() {
    // RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; the server
    // answers, then closes, even when the request asks for keep-alive.
    let server = Server::start();
    let system = unique("te10");
    server.register(&system);
    let mut ws = server.ws(&system);
    let body = json!({ "clientId": ws.client_id, "data": "te over 1.0" }).to_string();
    let req = format!(
        "POST /api/send_to_client HTTP/1.0\r\nConnection: keep-alive\r\nSystemId: {system}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n\
         GET /healthz HTTP/1.0\r\n\r\n",
        body.len()
    );
    let mut stream = connect(server.port);
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(ws.recv_json()["data"], "te over 1.0");
    // The request behind it on the same connection is not served.
    assert_closed_by_server(&mut reader);

    // HTTP/1.0 keep-alive without Transfer-Encoding stays open as before.
    let mut stream = connect(server.port);
    stream
        .write_all(
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_closed_by_server(&mut reader);
}

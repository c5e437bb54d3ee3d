//! wspush-floor (perf/floor): the real binary on a port the kernel picks, driven over real
//! sockets. It must answer what wspush-loadgen sends the way wspush does: a 101 with the
//! welcome frame, `send_to_client` to the named socket only, `send_to_group` to exactly the
//! bound members, and a closed socket (not a dead process) for bad input.

mod common;

use common::{api, api_raw, connect, read_response, Ws, IO_TIMEOUT, QUIET_MS};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wspush-floor");

/// A running wspush-floor, killed on drop.
struct Floor {
    child: Child,
    port: u16,
}

impl Floor {
    fn start() -> Floor {
        let mut child = Command::new(BIN)
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wspush-floor");
        // Its first line names the port it got; the socket listens before it is printed.
        let mut line = String::new();
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("read wspush-floor's first line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Floor { child, port }
    }

    /// Panics if the process has exited.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "wspush-floor exited"
        );
        let r = common::http(self.port, "GET", "/readyz", &[], b"");
        assert_eq!(r.status, 200, "readyz: {}", r.text());
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A push body as wspush-loadgen writes it: the target field first, then `sendUserId, code,
/// msg, data` in the order of wspush's frames (wspush-floor copies them from there on).
fn push_body(key: &str, target: &str, data: &str) -> String {
    format!(r#"{{"{key}":"{target}","sendUserId":"perf","code":7,"msg":"m","data":"{data}"}}"#)
}

/// Reads until the server closes `s` (EOF or reset; any answer before it is skipped); panics
/// if it is still open after IO_TIMEOUT (the socket's read timeout).
fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("socket not closed by the server: {e}"),
        }
    }
}

#[test]
fn handshake_gives_101_and_a_welcome_frame_with_a_unique_client_id() {
    let mut floor = Floor::start();
    // The load generator's request, with RFC 6455's sample nonce: the exact bytes wspush sends.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut s = connect(floor.port);
        s.write_all(
            b"GET /ws?systemId=perf HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let head: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        // One text frame of 108 bytes: the welcome with a 59-character clientId, as wspush's.
        let mut got = vec![0u8; head.len() + 2 + 108];
        s.read_exact(&mut got).unwrap();
        assert_eq!(
            &got[..head.len()],
            head,
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(&got[head.len()..head.len() + 2], &[0x81, 108]);
        let welcome: Value = serde_json::from_slice(&got[head.len() + 2..]).unwrap();
        assert_eq!(welcome["code"], 0);
        assert_eq!(welcome["msg"], "success");
        let id = welcome["data"]["clientId"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 59, "{id}");
        ids.push(id);
        // The load generator's goodbye: a masked close frame (1000), then it drops the socket.
        s.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
            .unwrap();
        // The close frame back with the same code, as wspush answers it, then the end.
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, [0x88, 0x02, 0x03, 0xe8]);
        assert_closed(&mut s);
    }
    assert_ne!(ids[0], ids[1]);
    // A real client with its own random key (tungstenite checks the accept key), twice.
    let a = Ws::connect(floor.port, "perf");
    let b = Ws::connect(floor.port, "perf");
    assert_ne!(a.client_id, b.client_id);
    a.close();
    b.close();
    floor.assert_alive();
}

#[test]
fn send_to_client_reaches_the_named_socket_only() {
    let mut floor = Floor::start();
    let port = floor.port;
    assert_eq!(
        api(
            port,
            Some("perf"),
            "/api/register",
            &json!({"systemId": "perf"})
        )["code"],
        0
    );
    let mut ws: Vec<Ws> = (0..3).map(|_| Ws::connect(port, "perf")).collect();
    let body = push_body("clientId", &ws[1].client_id, "t1");
    let r = api_raw(port, Some("perf"), "/api/send_to_client", body.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Wspush-Delivered"), Some("1"));
    let v = r.json();
    assert_eq!(v["code"], 0, "{v}");
    let id = v["data"]["messageId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(
        ws[1].recv_json(),
        json!({"messageId": id, "sendUserId": "perf", "code": 7, "msg": "m", "data": "t1"})
    );
    ws[0].expect_nothing(QUIET_MS);
    ws[2].expect_nothing(QUIET_MS);

    // Keep-alive: two requests on one HTTP/1.1 socket, each answered, the socket kept.
    let mut s = connect(port);
    for (k, data) in ["t2", "t3"].into_iter().enumerate() {
        let body = push_body("clientId", &ws[2].client_id, data);
        write!(
            s,
            "POST /api/send_to_client HTTP/1.1\r\nHost: x\r\nSystemId: perf\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let r = read_response(&mut reader).unwrap_or_else(|e| panic!("request {k}: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection"), None);
        assert_eq!(ws[2].recv_json()["data"], data);
    }
    // HTTP/1.0 + Connection: close, as `unicast --close` sends it: answered, then closed.
    let mut s = connect(port);
    let body = push_body("clientId", &ws[0].client_id, "t4");
    write!(
        s,
        "POST /api/send_to_client HTTP/1.0\r\nHost: x\r\nSystemId: perf\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert_eq!(ws[0].recv_json()["data"], "t4");
    ws[1].expect_nothing(QUIET_MS);

    // A clientId nobody has: answered, delivered nowhere.
    let body = push_body("clientId", &"0".repeat(59), "t5");
    let r = api_raw(port, Some("perf"), "/api/send_to_client", body.as_bytes());
    assert_eq!(r.header("X-Wspush-Delivered"), Some("0"));
    for w in &mut ws {
        w.expect_nothing(QUIET_MS / 2);
    }
    floor.assert_alive();
}

#[test]
fn send_to_group_reaches_exactly_the_bound_members() {
    let mut floor = Floor::start();
    let port = floor.port;
    let mut ws: Vec<Ws> = (0..4).map(|_| Ws::connect(port, "perf")).collect();
    for k in [0, 2, 3] {
        let bind =
            json!({"clientId": ws[k].client_id, "groupName": "g", "userId": "u", "extend": "e"});
        assert_eq!(
            api(port, Some("perf"), "/api/bind_to_group", &bind)["code"],
            0
        );
    }
    // Binding twice does not count twice; another group is another list.
    let again = json!({"clientId": ws[0].client_id, "groupName": "g"});
    assert_eq!(
        api(port, Some("perf"), "/api/bind_to_group", &again)["code"],
        0
    );
    let other = json!({"clientId": ws[1].client_id, "groupName": "h"});
    assert_eq!(
        api(port, Some("perf"), "/api/bind_to_group", &other)["code"],
        0
    );
    let members = common::online_list(port, "perf", "g");
    let ids: Vec<&str> = [0, 2, 3].map(|k| ws[k].client_id.as_str()).to_vec();
    assert_eq!(members, common::sorted(&ids));

    let body = push_body("groupName", "g", "t1");
    let r = api_raw(port, Some("perf"), "/api/send_to_group", body.as_bytes());
    assert_eq!(r.header("X-Wspush-Delivered"), Some("3"));
    let v = r.json();
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["failedNodes"], json!([]));
    let id = v["data"]["messageId"].as_str().unwrap().to_string();
    let want = json!({"messageId": id, "sendUserId": "perf", "code": 7, "msg": "m", "data": "t1"});
    for k in [0, 2, 3] {
        assert_eq!(ws[k].recv_json(), want, "member {k}");
    }
    ws[1].expect_nothing(QUIET_MS);

    // A member that leaves is out of the list and of the next push.
    let gone = ws.remove(3);
    gone.close();
    let deadline = Instant::now() + IO_TIMEOUT;
    while common::online_list(port, "perf", "g").len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the closed member is still listed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = push_body("groupName", "g", "t2");
    let r = api_raw(port, Some("perf"), "/api/send_to_group", body.as_bytes());
    assert_eq!(r.header("X-Wspush-Delivered"), Some("2"));
    assert_eq!(ws[0].recv_json()["data"], "t2");
    assert_eq!(ws[2].recv_json()["data"], "t2");
    ws[1].expect_nothing(QUIET_MS);
    // A group nobody joined.
    let body = push_body("groupName", "nobody", "t3");
    let r = api_raw(port, Some("perf"), "/api/send_to_group", body.as_bytes());
    assert_eq!(r.header("X-Wspush-Delivered"), Some("0"));
    floor.assert_alive();
}

#[test]
fn bad_input_closes_that_socket_and_nothing_else() {
    let mut floor = Floor::start();
    let port = floor.port;
    let mut member = Ws::connect(port, "perf");
    let bind = json!({"clientId": member.client_id, "groupName": "g"});
    assert_eq!(
        api(port, Some("perf"), "/api/bind_to_group", &bind)["code"],
        0
    );
    let bad: [&[u8]; 6] = [
        b"hello\r\n\r\n",
        b"DELETE / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        // A push without the fields a push has.
        b"POST /api/send_to_group HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"groupName\":1}",
    ];
    for b in bad {
        let mut s = connect(port);
        s.write_all(b).unwrap();
        assert_closed(&mut s);
    }
    // A head that never ends is cut at its limit.
    let mut s = connect(port);
    let _ = s.write_all(&vec![b'a'; 64 << 10]);
    assert_closed(&mut s);
    // An unmasked client frame ends that WebSocket, not the member's.
    let mut w = Ws::connect(port, "perf");
    w.ws.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(w.expect_end(IO_TIMEOUT, false), common::Ended::Dropped);
    let body = push_body("groupName", "g", "t1");
    let r = api_raw(port, Some("perf"), "/api/send_to_group", body.as_bytes());
    assert_eq!(r.header("X-Wspush-Delivered"), Some("1"));
    assert_eq!(member.recv_json()["data"], "t1");
    floor.assert_alive();
}

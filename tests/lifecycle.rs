//! Process lifecycle: config errors (exit 2, one line naming the key), Cluster refused, unknown
//! keys ignored, `--cores` above the CPU count, SIGTERM/SIGINT shutdown (1001 to clients, exit 0),
//! and the drain: every push answered before SIGTERM is delivered, in order, before the 1001,
//! even from a full queue, and a client that does not read holds the exit only for
//! `ShutdownGrace`.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Writes `text` to a fresh app.ini and runs `wspush -c <it> --cores 2` until it exits.
fn run_with_config(text: &str) -> (std::process::ExitStatus, String) {
    let dir = temp_dir("config");
    let path = dir.join("app.ini");
    std::fs::write(&path, text).unwrap();
    let result = run_to_exit(&["-c", path.to_str().unwrap(), "--cores", "2"]);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Asserts exit code 2 and exactly one stderr line, which names `key`.
fn assert_config_error(text: &str, key: &str) {
    let (status, stderr) = run_with_config(text);
    assert_eq!(
        status.code(),
        Some(2),
        "bad {key}: exit {status}, stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "bad {key}: want one stderr line, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(key),
        "bad {key}: the line does not name the key: {stderr}"
    );
}

#[test]
fn bad_config_values_exit_2_naming_the_key() {
    let (port, rpc) = free_ports();
    let good = config_text(port, rpc, &[]);
    let http_line = format!("HttpPort = {port}");
    let rpc_line = format!("RPCPort = {rpc}");
    let cases: [(&str, &str, &str); 8] = [
        (
            "CryptoKey = Adba723b7fe06819",
            "CryptoKey = abcde",
            "CryptoKey",
        ),
        (
            "CryptoKey = Adba723b7fe06819",
            "CryptoKey = 0123456789abcdef0",
            "CryptoKey",
        ),
        ("CryptoKey = Adba723b7fe06819", "CryptoKey =", "CryptoKey"),
        (&http_line, "HttpPort = abc", "HttpPort"),
        (&http_line, "HttpPort = 70000", "HttpPort"),
        (&http_line, "HttpPort = -1", "HttpPort"),
        (&rpc_line, "RPCPort = x1", "RPCPort"),
        ("Cluster = false", "Cluster = maybe", "Cluster"),
    ];
    for (from, to, key) in cases {
        assert!(good.contains(from));
        assert_config_error(&good.replacen(from, to, 1), key);
    }
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let dir = temp_dir("missing");
    let path = dir.join("does-not-exist.ini");
    let (status, stderr) = run_to_exit(&["-c", path.to_str().unwrap(), "--cores", "2"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one stderr line, got:\n{stderr}");
    assert!(lines[0].contains("does-not-exist.ini"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_mode_without_etcd_endpoints_is_a_config_error() {
    let (port, rpc) = free_ports();
    let text = config_text(port, rpc, &[]).replace("Cluster = false", "Cluster = true");
    assert_config_error(&text, "Endpoints");
}

#[test]
fn help_exits_0() {
    let (status, _) = run_to_exit(&["--help"]);
    assert!(status.success(), "--help: {status}");
}

#[test]
fn unknown_keys_and_sections_are_ignored() {
    let mut server = Server::start_with(&[
        "SomeFutureKey = 1",
        "[unknown]",
        "Foo = bar",
        "HttpPort = not-a-port-but-not-ours",
    ]);
    server.assert_serves();
}

#[test]
fn more_cores_than_cpus_still_serves() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut server = Server::start_cores(&[], cpus + 1);
    server.assert_serves();
    // Pushes across whatever cores it runs.
    server.register("c");
    let mut clients: Vec<Ws> = (0..8).map(|_| server.ws("c")).collect();
    for (i, ws) in clients.iter().enumerate() {
        let v = api(
            server.port,
            Some("c"),
            "/api/send_to_client",
            &json!({"clientId": ws.client_id, "sendUserId": "", "code": 1, "msg": "", "data": i}),
        );
        assert_eq!(v["code"], 0);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.recv_json()["data"], i);
    }
}

fn assert_signal_shuts_down(signal: i32) {
    let mut server = Server::start();
    server.register("bye");
    let mut clients: Vec<Ws> = (0..6).map(|_| server.ws("bye")).collect();
    server.signal(signal);
    for ws in &mut clients {
        assert_eq!(
            ws.expect_end(Duration::from_secs(10), false),
            Ended::Close(1001),
            "clients must get close code 1001 (going away)"
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("wspush still running 15 s after the signal");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "port still accepting after exit"
    );
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    assert_signal_shuts_down(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    assert_signal_shuts_down(libc::SIGINT);
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    // SO_REUSEPORT would let two processes share the port silently; wspush checks first.
    let mut server = Server::start();
    let (_, rpc_port) = free_ports();
    let (status, stderr) = run_with_config(&config_text(server.port, rpc_port, &[]));
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("HttpPort"), "stderr: {stderr}");
    assert!(stderr.contains("in use"), "stderr: {stderr}");
    server.assert_serves();
}

#[test]
fn a_restart_right_after_a_stop_with_clients_gets_its_port_back() {
    // The stopped server closed its clients first, so their sockets wait in TIME_WAIT on its
    // port: a new one must still bind it at once (a `systemctl restart` of a busy node).
    let mut first = Server::start();
    first.register("again");
    let mut clients: Vec<Ws> = (0..3).map(|_| first.ws("again")).collect();
    first.signal(libc::SIGTERM);
    for ws in &mut clients {
        assert_eq!(
            ws.expect_end(Duration::from_secs(10), false),
            Ended::Close(1001)
        );
    }
    drop(clients);
    first
        .wait_exit(Duration::from_secs(15))
        .expect("first server exits");
    let port = first.port;
    let mut second = Server::start_edited(&[], 2, None, &|text| {
        text.lines()
            .map(|line| match line.starts_with("HttpPort") {
                true => format!("HttpPort = {port}"),
                false => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert_eq!(second.port, port, "{}", second.stderr_log());
    second.register("again");
    second.assert_serves();
}

/// Bytes the kernel holds for one TCP connection on 127.0.0.1 between `server` and `client`
/// ports: unacknowledged and unsent bytes on the server side plus unread bytes on the client
/// side, from the `tx_queue`/`rx_queue` columns of /proc/net/tcp. The table lists every socket
/// of the machine (tens of thousands while load tests run beside this one), so the two lines
/// are found by text search rather than by parsing each line.
fn kernel_held(server: u16, client: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    // A line: "  sl: 0100007F:<local> 0100007F:<remote> <st> <tx_queue>:<rx_queue> ...".
    let queues = |local: u16, remote: u16| -> (u64, u64) {
        let key = format!(" 0100007F:{local:04X} 0100007F:{remote:04X} ");
        let Some(at) = table.find(&key) else {
            return (0, 0);
        };
        let mut rest = table[at + key.len()..].split_whitespace();
        let _state = rest.next();
        let (tx, rx) = rest
            .next()
            .and_then(|q| q.split_once(':'))
            .unwrap_or(("0", "0"));
        (
            u64::from_str_radix(tx, 16).unwrap_or(0),
            u64::from_str_radix(rx, 16).unwrap_or(0),
        )
    };
    queues(server, client).0 + queues(client, server).1
}

/// The local port of a client's socket.
fn local_port(ws: &Ws) -> u16 {
    ws.ws.get_ref().local_addr().unwrap().port()
}

/// Pushes `count` messages of about `pad` bytes each to every client in `clients` (one
/// `send_to_clients` per message, data `{"i": <n>, "pad": ...}`), asserting each is answered
/// code 0. Returns about how many bytes each client was sent (the request bodies' size).
fn push_numbered(server: &Server, system: &str, clients: &[&Ws], count: usize, pad: usize) -> u64 {
    let ids: Vec<&str> = clients.iter().map(|ws| ws.client_id.as_str()).collect();
    let padding = "x".repeat(pad);
    let mut bytes = 0;
    for i in 0..count {
        let body = json!({"clientIds": ids, "sendUserId": "", "code": 1, "msg": "", "data": {"i": i, "pad": padding}});
        bytes += body.to_string().len() as u64;
        let v = api(server.port, Some(system), "/api/send_to_clients", &body);
        assert_eq!(v["code"], 0, "push {i}: {v}");
    }
    bytes
}

/// The most the kernel lets a TCP socket's send buffer grow to (`net.ipv4.tcp_wmem`, third
/// field; 4 MiB on common kernels).
fn send_buffer_max() -> u64 {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap_or_default();
    text.split_whitespace()
        .nth(2)
        .and_then(|max| max.parse().ok())
        .unwrap_or(4 << 20)
}

#[test]
fn sigterm_delivers_every_push_answered_before_it_in_order_then_1001() {
    // Queue limits far above what is pushed, so nothing is dropped for being slow; the grace
    // far above what reading it all takes (well under a second).
    const GRACE: Duration = Duration::from_secs(8);
    let mut server = Server::start_with(&[
        "ShutdownGrace = 8",
        "QueueFrames = 4096",
        "QueueBytes = 268435456",
    ]);
    server.register("drain");
    // A small receive window and no reading before SIGTERM. The server's send buffer still
    // grows to the kernel's maximum, so three times that is pushed: most of it waits in
    // wspush's own queue when the drain begins, which is what the drain must finish.
    let mut slow = Ws::connect_small_rcvbuf(server.port, "drain", 4096);
    let mut others: Vec<Ws> = (0..3).map(|_| server.ws("drain")).collect();
    const PAD: usize = 60_000;
    let count = (3 * send_buffer_max() / PAD as u64).clamp(50, 2000) as usize;
    let pushed = push_numbered(&server, "drain", &[&slow], count, PAD);
    let held = kernel_held(server.port, local_port(&slow));
    assert!(
        held < pushed / 2,
        "the kernel holds {held} of the {pushed} bytes pushed: the test would not exercise \
         wspush's queue"
    );

    eprintln!("{count} pushes, {pushed} bytes; the kernel holds {held} of them at SIGTERM");
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    for i in 0..count {
        let m = slow.recv_json();
        assert_eq!(
            m["data"]["i"], i,
            "push {i} of {count}: got {}",
            m["data"]["i"]
        );
    }
    assert_eq!(
        slow.expect_end(IO_TIMEOUT, false),
        Ended::Close(1001),
        "after the last push, the 1001 close"
    );
    for ws in &mut others {
        assert_eq!(ws.expect_end(IO_TIMEOUT, false), Ended::Close(1001));
    }
    // Every client answered the close, so the drain ends well before the grace runs out.
    let status = server
        .wait_exit(GRACE + Duration::from_secs(5))
        .expect("wspush still running after the grace");
    let took = signalled.elapsed();
    eprintln!("read everything and exited {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took < GRACE,
        "exited {took:?} after SIGTERM although every client had read everything (grace {GRACE:?})"
    );
}

#[test]
fn sigterm_waits_for_a_client_that_does_not_read_only_until_the_grace_ends() {
    let mut server = Server::start_with(&["ShutdownGrace = 2"]);
    server.register("stuck");
    // It never reads, so it never answers the 1001 close either: only the grace ends the drain.
    let stuck = Ws::connect_small_rcvbuf(server.port, "stuck", 4096);
    push_numbered(&server, "stuck", &[&stuck], 100, 4000);

    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // While the drain waits for that client, new connections are refused at once instead of
    // completing a TCP handshake and hanging until exit. The process exits at 1.9 s at the
    // earliest (asserted below), so a refusal before 1.5 s comes from the draining server.
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", server.port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    signalled.elapsed() < Duration::from_millis(1500),
                    "new connections still accepted {:?} into the drain",
                    signalled.elapsed()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("wspush still running 10 s after SIGTERM with a 2 s grace");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // The drain gave the client the whole grace (it did not give up early) and then cut it
    // (the grace bounds it). The upper slack is for a busy machine.
    assert!(
        took >= Duration::from_millis(1900),
        "exited {took:?} after SIGTERM: the 2 s grace was not given to the client"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM: the 2 s grace did not bound the drain"
    );
    drop(stuck);
}

#[test]
fn sigterm_with_a_queue_at_its_limit_still_delivers_it_then_1001() {
    // A client whose outbound queue holds exactly QueueFrames frames when SIGTERM comes: every
    // one of them was answered code 0, so the drain must deliver them all and then close with
    // 1001, although the close frame is one frame past the limit.
    const LIMIT: u64 = 4;
    const PAD: usize = 400_000;
    // No heartbeat during the test: a ping is a frame too, and one more frame in this exactly
    // full queue would (rightly) close the client as a slow consumer before SIGTERM.
    let mut server = Server::start_with(&[
        "ShutdownGrace = 5",
        "QueueFrames = 4",
        "QueueBytes = 268435456",
        "HeartbeatInterval = 300",
        "PongTimeout = 600",
    ]);
    server.register("full");
    let mut slow = Ws::connect_small_rcvbuf(server.port, "full", 4096);
    // Push `i` to `to`; every push has the same size (fixed-width `i`, raw `data` delivered
    // unchanged), and big ones: the kernel's buffers fill after a few.
    let push = |i: u64, to: &[&str]| {
        let data = json!({"i": format!("{i:06}"), "pad": "x".repeat(PAD)});
        let body = json!({"clientIds": to, "sendUserId": "", "code": 1, "msg": "", "data": data});
        let v = api(server.port, Some("full"), "/api/send_to_clients", &body);
        assert_eq!(v["code"], 0, "push {i}: {v}");
    };
    // The first push also goes to a client that reads, to learn the frame's size on the wire.
    let mut probe = server.ws("full");
    push(0, &[&slow.client_id, &probe.client_id]);
    let Ok(Message::Text(text)) = probe.ws.read() else {
        panic!("probe: expected a text frame");
    };
    // RFC 6455 5.2: a payload over 65535 bytes has an 8-byte length after the 2-byte header.
    assert!(text.len() > 65535);
    let frame = text.len() as u64 + 10;
    let mut pushed = 1;

    let (server_port, slow_port) = (server.port, local_port(&slow));
    // Frames (the front one maybe partly written) in wspush's queue: those the kernel has not
    // taken. The kernel's count is exact once the client's delayed ACK went out (at most
    // 200 ms on Linux; before, bytes received but not yet acknowledged count twice, less than
    // the client's 8 KiB window): `exact` waits for the same count 300 ms apart; otherwise the
    // count may be one frame short.
    let queued = |pushed: u64, exact: bool| {
        let mut held = kernel_held(server_port, slow_port);
        if exact {
            loop {
                std::thread::sleep(Duration::from_millis(300));
                let again = kernel_held(server_port, slow_port);
                if again == held {
                    break;
                }
                held = again;
            }
        }
        (pushed * frame).saturating_sub(held).div_ceil(frame)
    };
    // Quickly while the queue is surely two frames below the limit, then one push at a time
    // with exact counts until it is exactly at the limit: each push adds at most one frame, so
    // the queue never passes the limit (which would close the client as a slow consumer).
    while queued(pushed, false) + 2 <= LIMIT {
        assert!(
            pushed < 1000,
            "the kernel keeps taking frames: {pushed} pushed"
        );
        push(pushed, &[&slow.client_id]);
        pushed += 1;
    }
    while queued(pushed, true) < LIMIT {
        push(pushed, &[&slow.client_id]);
        pushed += 1;
    }

    server.signal(libc::SIGTERM);
    for i in 0..pushed {
        let m = slow.recv_json();
        assert_eq!(m["data"]["i"], format!("{i:06}"), "push {i} of {pushed}");
    }
    assert_eq!(slow.expect_end(IO_TIMEOUT, false), Ended::Close(1001));
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("wspush still running 10 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    drop(probe);
}

//! Node links under attack and under faults (issue 12), against real nodes and a real etcd:
//! the handshake that keeps strangers off RPCPort, two nodes with different secrets, the bind
//! address, the limits on inbound links, the stall deadline over a whole frame, a peer that
//! stops answering, TCP keepalive, and a node cut off from etcd giving its clients up.
//!
//! A test that plays a peer speaks the node protocol from the library (`cluster::handshake`,
//! `cluster::proto`) over a std socket, as another node would.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};
use wspush::cluster::handshake::{Connector, LinkKey, CHALLENGE_LEN};
use wspush::cluster::proto::{self, Frame, RemoteOp, RemoteReply, Target, PROTO_VERSION};

/// The CryptoKey of every test node (see `node_config_text`).
const CRYPTO_KEY: &str = "Adba723b7fe06819";

fn send_to_client(port: u16, system: &str, client: &str, data: Value) -> Value {
    api(
        port,
        Some(system),
        "/api/send_to_client",
        &json!({"clientId": client, "sendUserId": "backend", "code": 200, "msg": "hello", "data": data}),
    )
}

/// A plain TCP connection to the node's RPCPort.
fn raw_link(node: &Node) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", node.rpc_port)).expect("connect to RPCPort");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// A node link to `node` opened the way a peer holding `key` opens one (the handshake, as node
/// 127.0.0.1:1); panics if the node does not prove it holds the same key.
fn authenticated_link(node: &Node, key: &LinkKey) -> TcpStream {
    let mut s = raw_link(node);
    let me: SocketAddrV4 = "127.0.0.1:1".parse().unwrap();
    let (connector, hello) = Connector::new(key, me, node.addr().parse().unwrap());
    s.write_all(&hello).unwrap();
    let mut challenge = [0u8; CHALLENGE_LEN];
    s.read_exact(&mut challenge).expect("the node's challenge");
    let (verdict, proof) = connector.finish(&challenge);
    verdict.expect("the node proves it holds the key");
    s.write_all(&proof).unwrap();
    s
}

/// Where a clientId's connection lives on its node, as a node-link target.
fn target_of(client_id: &str) -> Target {
    let addr = wspush::ids::IdCodec::new(CRYPTO_KEY)
        .open(client_id)
        .expect("a clientId sealed with the test CryptoKey");
    Target {
        core: addr.core,
        slot: addr.slot,
        generation: addr.generation,
    }
}

/// A well-formed `Deliver` frame that queues the text `payload` to `target`.
fn deliver_frame(system: &str, target: Target, payload: &str) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut ws_frame = vec![0x81, payload.len() as u8];
    ws_frame.extend_from_slice(payload.as_bytes());
    let mut wire = Vec::new();
    proto::encode(
        &Frame::Request {
            id: 1,
            op: RemoteOp::Deliver {
                system: system.to_string(),
                targets: vec![target],
                frame: ws_frame,
            },
        },
        &mut wire,
    );
    wire
}

/// Reads until the node closes `link` (EOF or reset) within `within`; panics if it sends
/// anything or keeps the link open. Returns how long it took.
fn expect_closed(link: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    link.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match link.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: the node answered {:?}", &buf[..n]),
        Err(e) => panic!("{what}: the link is still open after {within:?} ({e})"),
    }
    start.elapsed()
}

/// The value of one sample of `/metrics`, e.g. `wspush_node_links_refused_total{reason="limit"}`.
fn metric(port: u16, series: &str) -> u64 {
    let text = http(port, "GET", "/metrics", &[], b"").text();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

/// Waits (≤ 15 s) until the node's log has a line with every one of `words`; returns those lines.
fn log_lines(node: &Node, words: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines: Vec<String> = node
            .stderr_log()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(String::from)
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {words:?} within 15 s\n--- node log ---\n{}",
            node.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_well_formed_frame_without_the_handshake_is_never_run_and_the_link_is_closed() {
    let etcd = Etcd::start();
    let node = Node::start(&etcd, &[]);
    let system = unique("raw-frame");
    node.register(&system);
    let mut client = node.ws(&system);
    let frame = deliver_frame(
        &system,
        target_of(&client.client_id),
        r#"{"via":"node port"}"#,
    );

    // A stranger on RPCPort sends a valid Deliver frame for a real client, without the
    // handshake: nothing reaches the client, and the node closes the link at once.
    for _ in 0..3 {
        let mut link = raw_link(&node);
        link.write_all(&frame).unwrap();
        expect_closed(
            &mut link,
            Duration::from_secs(3),
            "a frame without a handshake",
        );
        client.expect_nothing(300);
    }
    assert!(
        metric(
            node.port,
            r#"wspush_node_links_refused_total{reason="not_a_node_link"}"#
        ) >= 3
    );
    log_lines(&node, &["node link refused", "not a wspush node link"]);

    // A peer that holds the key (derived from the shared CryptoKey when ClusterSecret is unset)
    // gets the same bytes run: the frame above was a real one.
    let mut link = authenticated_link(&node, &LinkKey::new("", CRYPTO_KEY));
    link.write_all(&frame).unwrap();
    assert_eq!(client.recv_json()["via"], "node port");
    let mut answer = vec![0u8; 256];
    let n = link.read(&mut answer).unwrap();
    let (reply, _) = proto::decode(&answer[..n])
        .unwrap()
        .expect("a whole answer");
    assert_eq!(
        reply,
        Frame::Response {
            id: 1,
            reply: RemoteReply::Count(1)
        }
    );

    // A stranger who guesses a key proves nothing: refused, nothing delivered.
    let mut link = raw_link(&node);
    let me: SocketAddrV4 = "127.0.0.1:1".parse().unwrap();
    let guessed = LinkKey::new("a-guessed-cluster-secret", CRYPTO_KEY);
    let (connector, hello) = Connector::new(&guessed, me, node.addr().parse().unwrap());
    link.write_all(&hello).unwrap();
    let mut challenge = [0u8; CHALLENGE_LEN];
    link.read_exact(&mut challenge).unwrap();
    let (verdict, proof) = connector.finish(&challenge);
    assert!(
        verdict.is_err(),
        "the node's MAC must not match a guessed key"
    );
    link.write_all(&proof).unwrap();
    let _ = link.write_all(&frame);
    expect_closed(&mut link, Duration::from_secs(3), "a wrong proof");
    client.expect_nothing(300);
}

#[test]
fn nodes_with_different_secrets_refuse_each_other_and_each_says_why() {
    let etcd = Etcd::start();
    let a = Node::start(&etcd, &["ClusterSecret = first-cluster-secret-0123"]);
    let b = Node::start(&etcd, &["ClusterSecret = other-cluster-secret-4567"]);
    let system = register_fresh(a.port, "secrets", Instant::now() + Duration::from_secs(10));
    let mut on_b = b.ws(&system);

    // Pushes through A to B's client answer as for an unreachable peer (code 0) and deliver
    // nothing; A keeps retrying the link (backoff up to 2 s) for 3 s.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let v = send_to_client(a.port, &system, &on_b.client_id, json!("across"));
        assert_eq!(v["code"], 0, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    on_b.expect_nothing(500);

    // Each side says what failed and names the other.
    let connector = log_lines(&a, &["WARN", "cluster secret mismatch", &b.addr()]);
    let acceptor = log_lines(
        &b,
        &["WARN", "node link refused", "cluster secret mismatch"],
    );
    assert!(
        acceptor[0].contains(&format!("node={}", a.addr())),
        "names the node the peer says it is: {acceptor:?}"
    );
    // Both report a refusal once a minute per core (and, accepting, per address), not on
    // every retry.
    assert!(acceptor.len() <= 2, "{acceptor:?}");
    let failures = metric(
        a.port,
        &format!(
            r#"wspush_peer_handshake_failures_total{{peer="{}"}}"#,
            b.addr()
        ),
    );
    assert!(
        connector.len() <= 2 && failures as usize >= connector.len(),
        "{failures} failed handshakes, logged as {connector:?}"
    );
    assert!(
        metric(
            b.port,
            r#"wspush_node_links_refused_total{reason="secret_mismatch"}"#
        ) >= 1
    );
    // Neither log holds a secret.
    for node in [&a, &b] {
        let log = node.stderr_log();
        assert!(
            !log.contains("cluster-secret-"),
            "a secret in the log:\n{log}"
        );
    }

    // A third node with A's secret talks to A at once.
    let c = Node::start(&etcd, &["ClusterSecret = first-cluster-secret-0123"]);
    converge([&a, &c]);
}

#[test]
fn rpc_port_listens_on_the_advertised_address_only() {
    let etcd = Etcd::start();
    // The test nodes advertise 127.0.0.1; 127.0.0.2 is another address of this machine.
    let node = Node::start(&etcd, &[]);
    TcpStream::connect(("127.0.0.1", node.rpc_port)).expect("RPCPort on AdvertiseHost");
    let other = TcpStream::connect(("127.0.0.2", node.rpc_port));
    assert_eq!(
        other.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "RPCPort must not listen on 127.0.0.2"
    );
    // HttpPort still listens on every address.
    TcpStream::connect(("127.0.0.2", node.port)).expect("HttpPort on every address");

    // RPCBind names the address explicitly.
    let bound = Node::start(&etcd, &["RPCBind = 127.0.0.2"]);
    TcpStream::connect(("127.0.0.2", bound.rpc_port)).expect("RPCPort on RPCBind");
    let loopback = TcpStream::connect(("127.0.0.1", bound.rpc_port));
    assert_eq!(
        loopback.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
}

#[test]
fn inbound_links_beyond_the_per_peer_limit_are_closed_at_once() {
    let etcd = Etcd::start();
    // Two cores, at most 2 inbound links from one address on each.
    let node = Node::start(&etcd, &["MaxNodeLinksPerPeer = 2"]);
    // 20 strangers from 127.0.0.1 that connect and say nothing: each core holds 2 of them
    // (until the 5 s handshake deadline), the rest are closed at once.
    let links: Vec<TcpStream> = (0..20).map(|_| raw_link(&node)).collect();
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let waits: Vec<_> = links
            .into_iter()
            .map(|mut link| {
                s.spawn(move || {
                    link.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let start = Instant::now();
                    match link.read(&mut [0u8; 16]) {
                        Ok(0) => start.elapsed() > Duration::from_secs(2),
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
                        Ok(_) => panic!("the node sent something"),
                        Err(_) => true, // still open after 3 s: held
                    }
                })
            })
            .collect();
        waits.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let held = outcomes.iter().filter(|held| **held).count();
    assert_eq!(held, 4, "links held open: {outcomes:?}");
    assert_eq!(
        metric(
            node.port,
            r#"wspush_node_links_refused_total{reason="limit"}"#
        ),
        16
    );
    log_lines(&node, &["node link refused", "MaxNodeLinksPerPeer"]);
    // A real peer on the same address (two cores: two links to this node) is not refused once
    // the strangers' handshakes ran out.
    expect_closed(
        &mut raw_link(&node),
        Duration::from_secs(7),
        "a silent stranger",
    );
    let peer = Node::start(&etcd, &["MaxNodeLinksPerPeer = 2"]);
    converge([&node, &peer]);
}

#[test]
fn a_frame_must_arrive_whole_within_the_stall_timeout_not_per_read() {
    let etcd = Etcd::start();
    let mut node = Node::start(&etcd, &[]);
    let mut link = authenticated_link(&node, &LinkKey::new("", CRYPTO_KEY));
    // A 4 KiB frame, one byte a second: every read comes well within the 10 s stall timeout,
    // the frame never does.
    let mut head = vec![0, 0, 0x10, 0];
    head.extend_from_slice(&PROTO_VERSION.to_be_bytes());
    link.write_all(&head).unwrap();
    let started = Instant::now();
    link.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let closed_after = loop {
        match link.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break started.elapsed(),
            Ok(n) => panic!("the node answered {:?}", &buf[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "a frame dripped a byte a second is still held after 25 s"
        );
        if link.write_all(&[7]).is_err() {
            break started.elapsed();
        }
    };
    assert!(
        closed_after >= Duration::from_secs(9) && closed_after <= Duration::from_secs(20),
        "closed {closed_after:?} after the frame's first byte (stall timeout 10 s)"
    );
    log_lines(&node, &["closing node link", "still incomplete"]);
    node.assert_serves();
}

/// SIGSTOP: the paused node's kernel still accepts and acknowledges, nothing answers.
#[test]
fn a_peer_that_stops_answering_breaks_its_links_and_later_calls_fail_fast() {
    const RPC_MS: u64 = 500;
    let etcd = Etcd::start();
    // A long lease keeps the paused node in every peer table for the whole test, so only the
    // links can tell that it does not answer.
    let extra = ["RpcTimeoutMs = 500", "LeaseTtl = 30"];
    let mut nodes = Node::start_many(&etcd, 2, &extra);
    converge(&nodes);
    let system = register_fresh(
        nodes[0].port,
        "stopped",
        Instant::now() + Duration::from_secs(10),
    );
    let on_1 = nodes[1].ws(&system);

    nodes[1].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut took = Vec::new();
    while stopped.elapsed() < Duration::from_secs(8) {
        let start = Instant::now();
        let v = send_to_client(nodes[0].port, &system, &on_1.client_id, json!("paused"));
        took.push(start.elapsed());
        assert_eq!(v["code"], 0, "{v}");
    }
    nodes[1].signal(libc::SIGCONT);
    // Each call either waited for its deadline or failed at once; after three deadlines in a
    // row per link (one link per core) the link is broken, and only its reconnect attempts
    // (one per backoff, each cut by the handshake a stopped node cannot answer) wait again.
    // Before: every call waited the whole deadline, 16 of them in 8 s.
    let waited = took
        .iter()
        .filter(|t| **t >= Duration::from_millis(RPC_MS))
        .count();
    let fast = took
        .iter()
        .filter(|t| **t < Duration::from_millis(RPC_MS / 2))
        .count();
    assert!(
        fast >= 20,
        "{fast} of {} calls failed fast ({waited} waited the deadline): {took:?}",
        took.len()
    );
    log_lines(
        &nodes[0],
        &["node link lost", "3 calls in a row got no answer"],
    );
    // Resumed, it is reached again.
    converge(&nodes);
    nodes[1].assert_alive();
}

#[test]
fn node_link_sockets_use_tcp_keepalive() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 2, &[]);
    converge(&nodes);
    let rpc_ports: Vec<u16> = nodes.iter().map(|n| n.rpc_port).collect();
    // /proc/net/tcp: `sl local rem st tx:rx tr:when ...`; an established socket with keepalive
    // on has its keepalive timer (2) armed while idle, one without has none (0). A socket with
    // data in flight shows the retransmit timer (1) for a moment: retried.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let port_of =
            |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
        let links: Vec<(String, String)> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let on_link =
                    rpc_ports.contains(&port_of(cols[1])) || rpc_ports.contains(&port_of(cols[2]));
                (cols[3] == "01" && on_link).then(|| (line.to_string(), cols[5][..2].to_string()))
            })
            .collect();
        // Links open on first use, one per core that called: converge made at least one each
        // way, both of whose ends are listed.
        assert!(links.len() >= 4, "node link sockets: {links:?}");
        if links.iter().all(|(_, timer)| timer == "02") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node link sockets without a keepalive timer: {:?}",
            links.iter().filter(|(_, t)| t != "02").collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_cut_off_from_etcd_gives_its_clients_up_and_takes_them_back_when_it_returns() {
    let etcd = Etcd::start();
    let proxy = EtcdProxy::start(&etcd);
    let cut = Node::start_with_endpoints(&proxy.endpoint(), &[]);
    let other = Node::start(&etcd, &[]);
    converge([&cut, &other]);
    let system = register_fresh(
        other.port,
        "cut-off",
        Instant::now() + Duration::from_secs(10),
    );
    let mut on_cut = cut.ws(&system);
    let mut on_other = other.ws(&system);

    proxy.cut();
    let cut_at = Instant::now();
    // Its lease expires, the other node drops it, and within LeaseTtl (plus a check or two)
    // it closes its clients with 1001 so they reconnect to a node the others can reach.
    assert_eq!(
        on_cut.expect_end(LEASE_TTL + Duration::from_secs(10), true),
        Ended::Close(1001)
    );
    let closed_after = cut_at.elapsed();
    assert!(
        closed_after >= LEASE_TTL - Duration::from_secs(1),
        "clients closed {closed_after:?} after the cut, before the {LEASE_TTL:?} lease could expire"
    );
    log_lines(&cut, &["WARN", "cut off from the cluster", "clients=1"]);
    // New clients are refused with 503 while it stays cut off; /readyz says not ready.
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let path = format!("/ws?systemId={system}");
    let refused = http(cut.port, "GET", &path, &upgrade, b"");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("cut off"), "{}", refused.text());
    assert_eq!(http(cut.port, "GET", "/readyz", &[], b"").status, 503);
    // The node that kept etcd kept its clients.
    let v = send_to_client(
        other.port,
        &system,
        &on_other.client_id,
        json!("still here"),
    );
    assert_eq!(v["code"], 0);
    assert_eq!(on_other.recv_json()["data"], "still here");

    // Back in etcd, it accepts clients again and the two reach each other.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while http(cut.port, "GET", &path, &upgrade, b"").status != 101 {
        assert!(
            Instant::now() < deadline,
            "the node still refuses clients 15 s after etcd came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    converge([&cut, &other]);
    let mut again = cut.ws(&system);
    let v = send_to_client(other.port, &system, &again.client_id, json!("back"));
    assert_eq!(v["code"], 0);
    assert_eq!(again.recv_json()["data"], "back");
}

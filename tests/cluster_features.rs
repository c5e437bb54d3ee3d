//! The routes wspush adds (issue 7, docs/api-extensions.md) in cluster mode: a real etcd and two
//! or three nodes (`--cores 2` each), every route asked through one node about clients on the
//! others. Each test starts its own etcd and nodes on free ports and waits for the cluster to
//! converge by polling the API ([`converge`]), never by sleeping.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// etcd and `n` converged nodes. Fields drop in order: the nodes first, then etcd.
struct Cluster {
    nodes: Vec<Node>,
    _etcd: Etcd,
}

fn cluster(n: usize) -> Cluster {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, n, &[]);
    converge(&nodes);
    Cluster { nodes, _etcd: etcd }
}

/// The deadline a request is held to while a peer is dead: one RPC deadline plus a second.
fn prompt() -> Duration {
    Duration::from_millis(RPC_TIMEOUT_MS + 1000)
}

fn register(port: u16, system: &str) {
    let v = api(port, None, "/api/register", &json!({ "systemId": system }));
    assert_eq!(v["code"], 0, "register {system}: {v}");
}

fn post(port: u16, system: &str, route: &str, body: Value) -> Value {
    let v = api(port, Some(system), route, &body);
    assert_eq!(v["code"], 0, "{route} {body} through :{port}: {v}");
    v
}

fn is_online(port: u16, system: &str, client_id: &str) -> bool {
    let v = post(
        port,
        system,
        "/api/is_online",
        json!({ "clientId": client_id }),
    );
    v["data"]["online"]
        .as_bool()
        .unwrap_or_else(|| panic!("data.online is not a bool: {v}"))
}

fn bind_as(port: u16, system: &str, ws: &Ws, group: &str, user: &str, extend: &str) {
    post(
        port,
        system,
        "/api/bind_to_group",
        json!({"clientId": ws.client_id, "groupName": group, "userId": user, "extend": extend}),
    );
}

fn unbind(port: u16, system: &str, client_id: &str, group: &str) {
    let v = post(
        port,
        system,
        "/api/unbind_from_group",
        json!({"clientId": client_id, "groupName": group}),
    );
    assert_eq!(v["data"], json!([]), "{v}");
}

/// send_to_user through `port`; returns (messageId, count).
fn send_to_user(port: u16, system: &str, user: &str, data: Value) -> (String, u64) {
    let v = post(
        port,
        system,
        "/api/send_to_user",
        json!({"userId": user, "sendUserId": "backend", "code": 300, "msg": "to user", "data": data}),
    );
    (
        v["data"]["messageId"]
            .as_str()
            .expect("messageId")
            .to_string(),
        v["data"]["count"].as_u64().expect("count"),
    )
}

/// get_group_presence through `port`, sorted, after checking count equals the list's length.
fn presence_of(port: u16, system: &str, group: &str) -> Vec<(String, String, String)> {
    let v = post(
        port,
        system,
        "/api/get_group_presence",
        json!({ "groupName": group }),
    );
    let list = v["data"]["list"].as_array().expect("data.list");
    assert_eq!(v["data"]["count"].as_u64(), Some(list.len() as u64), "{v}");
    let mut out: Vec<(String, String, String)> = list
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().expect("string field").to_string();
            (s("clientId"), s("userId"), s("extend"))
        })
        .collect();
    out.sort();
    out
}

fn member(ws: &Ws, user: &str, extend: &str) -> (String, String, String) {
    (ws.client_id.clone(), user.to_string(), extend.to_string())
}

fn stats(port: u16, system: &str) -> (u64, u64, u64) {
    let v = post(port, system, "/api/get_system_stats", json!({}));
    let n = |k: &str| v["data"][k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    (n("clients"), n("groups"), n("users"))
}

/// Polls `check` every 20 ms until it holds, panicking with `what` after 10 s.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "still not true after 10 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_presence_code(m: &Value) -> bool {
    [1001, 1002, 1003].contains(&m["code"].as_i64().unwrap_or_default())
}

/// The next push on `ws` that is not a presence push (1001/1002/1003).
fn recv_skipping_presence(ws: &mut Ws) -> Value {
    loop {
        let m = ws.recv_json();
        if !is_presence_code(&m) {
            return m;
        }
    }
}

/// Asserts nothing but presence pushes arrives on `ws` within `ms`.
fn expect_no_push(ws: &mut Ws, ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match ws.read_within(left) {
            Ok(Some(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).expect("JSON push");
                assert!(is_presence_code(&m), "client {} got {m}", ws.client_id);
            }
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(e) => panic!("client {}: {e}", ws.client_id),
        }
    }
}

#[test]
fn is_online_and_unbind_reach_clients_on_another_node() {
    let mut c = cluster(2);
    let (p0, p1) = (c.nodes[0].port, c.nodes[1].port);
    let system = unique("sys");
    let other = unique("other");
    register(p0, &system);
    register(p1, &other);
    let mut a = c.nodes[0].ws(&system);
    let mut b = c.nodes[1].ws(&system);
    let mut d = c.nodes[1].ws(&system);
    let stranger = c.nodes[0].ws(&other);

    // is_online through either node about a client of either node.
    for port in [p0, p1] {
        for ws in [&a, &b, &d] {
            assert!(is_online(port, &system, &ws.client_id), "through :{port}");
            assert!(!is_online(port, &other, &ws.client_id), "foreign, :{port}");
        }
        assert!(!is_online(port, &system, &stranger.client_id));
        let mut forged = b.client_id.clone().into_bytes();
        forged[10] = if forged[10] == b'x' { b'y' } else { b'x' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(!is_online(port, &system, &forged), "forged, :{port}");
    }

    // a (node 0), b and d (node 1) in "room": each bind's 1001 goes to every member.
    bind_as(p1, &system, &a, "room", "ua", "ea");
    presence(&a.recv_json(), 1001);
    bind_as(p0, &system, &b, "room", "ub", "eb");
    for ws in [&mut a, &mut b] {
        presence(&ws.recv_json(), 1001);
    }
    bind_as(p1, &system, &d, "room", "ud", "ed");
    for ws in [&mut a, &mut b, &mut d] {
        presence(&ws.recv_json(), 1001);
    }

    // b (node 1) unbound through node 0: 1003 to a (node 0) and d (node 1), not to b.
    unbind(p0, &system, &b.client_id, "room");
    for ws in [&mut a, &mut d] {
        let m = ws.recv_json();
        let data = presence(&m, 1003);
        assert_eq!(
            data,
            json!({"clientId": b.client_id, "userId": "ub", "extend": "eb"}),
            "{m}"
        );
    }
    b.expect_nothing(QUIET_MS);
    assert!(is_online(p0, &system, &b.client_id), "b stays connected");
    let want = vec![member(&a, "ua", "ea"), member(&d, "ud", "ed")];
    let mut want = want;
    want.sort();
    for port in [p0, p1] {
        assert_eq!(presence_of(port, &system, "room"), want);
    }
    // Again, and through the other node: not a member, nothing pushed.
    unbind(p1, &system, &b.client_id, "room");
    unbind(p0, &system, &stranger.client_id, "room");
    // a (node 0) through node 1: d hears it.
    unbind(p1, &system, &a.client_id, "room");
    assert_eq!(
        presence(&d.recv_json(), 1003)["clientId"],
        a.client_id.as_str()
    );
    for ws in [&mut a, &mut b, &mut d] {
        ws.expect_nothing(QUIET_MS);
    }

    // A client that leaves is offline everywhere.
    let b_id = b.client_id.clone();
    b.close();
    wait_until("b offline through node 0", || {
        !is_online(p0, &system, &b_id)
    });

    // A dead node's clients are offline, answered within one RPC deadline.
    let d_id = d.client_id.clone();
    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit(Duration::from_secs(5));
    let start = Instant::now();
    let online = is_online(p0, &system, &d_id);
    assert!(!online, "a client of a dead node is offline");
    assert!(start.elapsed() <= prompt(), "took {:?}", start.elapsed());
    assert!(is_online(p0, &system, &a.client_id));
}

#[test]
fn send_to_system_and_send_to_user_reach_every_node() {
    let c = cluster(3);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
    let system = unique("sys");
    let other = unique("other");
    register(ports[0], &system);
    register(ports[2], &other);
    // Two clients of the system and one of another system on every node.
    let mut mine: Vec<Ws> = c
        .nodes
        .iter()
        .flat_map(|n| [n.ws(&system), n.ws(&system)])
        .collect();
    let mut theirs: Vec<Ws> = c.nodes.iter().map(|n| n.ws(&other)).collect();

    for (i, &port) in ports.iter().enumerate() {
        let v = post(
            port,
            &system,
            "/api/send_to_system",
            json!({"sendUserId": "ops", "code": 900, "msg": "all", "data": {"via": i}}),
        );
        let id = v["data"]["messageId"].as_str().unwrap().to_string();
        for ws in &mut mine {
            let m = ws.recv_json();
            assert_push_shape(&m);
            assert_eq!(m["messageId"], id.as_str(), "via node {i}: {m}");
            assert_eq!(m["data"], json!({"via": i}));
            assert_eq!(
                (m["code"].clone(), m["sendUserId"].clone()),
                (json!(900), json!("ops"))
            );
        }
    }
    for ws in &mut theirs {
        ws.expect_nothing(QUIET_MS);
    }

    // alice: both clients on node 0, one on node 1, one on node 2; bob: one on node 2; one
    // client on node 1 without a user; an "alice" of the other system on node 1.
    let users = ["alice", "alice", "alice", "", "alice", "bob"];
    for (i, user) in users.iter().enumerate() {
        bind_as(
            ports[(i + 1) % 3],
            &system,
            &mine[i],
            &format!("g{i}"),
            user,
            "",
        );
    }
    bind_as(ports[0], &other, &theirs[1], "g", "alice", "");
    for (i, &port) in ports.iter().enumerate() {
        let (id, count) = send_to_user(port, &system, "alice", json!({"n": i}));
        assert_eq!(count, 4, "send_to_user alice through node {i}");
        for (j, ws) in mine.iter_mut().enumerate() {
            if users[j] == "alice" {
                let m = recv_skipping_presence(ws);
                assert_eq!(m["messageId"], id.as_str(), "{m}");
                assert_eq!(m["data"], json!({"n": i}));
            }
        }
    }
    for (j, ws) in mine.iter_mut().enumerate() {
        if users[j] != "alice" {
            expect_no_push(ws, 50);
        }
    }
    expect_no_push(&mut theirs[1], 50);
    let (_, count) = send_to_user(ports[1], &system, "bob", json!("b"));
    assert_eq!(count, 1);
    assert_eq!(recv_skipping_presence(&mut mine[5])["data"], "b");
    let (_, count) = send_to_user(ports[2], &other, "alice", json!("o"));
    assert_eq!(count, 1);
    assert_eq!(recv_skipping_presence(&mut theirs[1])["data"], "o");
    assert_eq!(send_to_user(ports[0], &system, "nobody", json!(0)).1, 0);

    // The latest bind's userId wins on the node that owns the connection.
    bind_as(ports[2], &system, &mine[4], "g4", "carol", "");
    assert_eq!(send_to_user(ports[0], &system, "alice", json!(1)).1, 3);
    assert_eq!(send_to_user(ports[1], &system, "carol", json!(2)).1, 1);
    assert_eq!(recv_skipping_presence(&mut mine[4])["data"], 2);

    // A connection that leaves is no longer counted.
    let gone = mine.remove(0);
    let gone_id = gone.client_id.clone();
    gone.drop_abruptly(true);
    wait_until("the reset client is offline", || {
        !is_online(ports[2], &system, &gone_id)
    });
    assert_eq!(send_to_user(ports[2], &system, "alice", json!(3)).1, 2);
}

#[test]
fn presence_and_stats_sum_over_nodes_counting_a_spanning_group_once() {
    let mut c = cluster(3);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
    let system = unique("sys");
    let other = unique("other");
    register(ports[1], &system);
    register(ports[1], &other);
    for &port in &ports {
        assert_eq!(stats(port, &system), (0, 0, 0));
    }
    // node 0: c0 (room, u1), c1 (lobby, u2); node 1: c2 (room, u1), c3 (nothing);
    // node 2: c4 (room, u3), c5 (solo, no userId). "room" spans the three nodes and u1 two.
    let clients: Vec<Ws> = (0..6).map(|i| c.nodes[i / 2].ws(&system)).collect();
    let binds = [
        (0, "room", "u1", "e0"),
        (1, "lobby", "u2", ""),
        (2, "room", "u1", "e2"),
        (4, "room", "u3", "{\"x\":1}"),
        (5, "solo", "", ""),
    ];
    for (n, (i, group, user, extend)) in binds.iter().enumerate() {
        bind_as(ports[n % 3], &system, &clients[*i], group, user, extend);
    }
    // The same names in another system count there only.
    let mut foreign = c.nodes[2].ws(&other);
    bind_as(ports[0], &other, &foreign, "room", "u1", "");
    presence(&foreign.recv_json(), 1001);

    let mut room = vec![
        member(&clients[0], "u1", "e0"),
        member(&clients[2], "u1", "e2"),
        member(&clients[4], "u3", "{\"x\":1}"),
    ];
    room.sort();
    for &port in &ports {
        assert_eq!(presence_of(port, &system, "room"), room, "through :{port}");
        assert_eq!(
            presence_of(port, &system, "solo"),
            vec![member(&clients[5], "", "")]
        );
        assert!(presence_of(port, &system, "nowhere").is_empty());
        assert_eq!(stats(port, &system), (6, 3, 3), "through :{port}");
        assert_eq!(stats(port, &other), (1, 1, 1), "through :{port}");
    }

    // Unbind through another node; a disconnect on a third.
    unbind(ports[0], &system, &clients[5].client_id, "solo");
    for &port in &ports {
        assert_eq!(stats(port, &system), (6, 2, 3));
        assert!(presence_of(port, &system, "solo").is_empty());
    }
    let mut clients = clients;
    let c4 = clients.remove(4);
    c4.close();
    room.retain(|m| m.1 != "u3");
    for &port in &ports {
        wait_until("u3 gone from stats", || stats(port, &system) == (5, 2, 2));
        assert_eq!(presence_of(port, &system, "room"), room);
    }

    // A dead node's share is left out, answered within one RPC deadline.
    c.nodes[2].signal(libc::SIGKILL);
    c.nodes[2].wait_exit(Duration::from_secs(5));
    for &port in &ports[..2] {
        let start = Instant::now();
        // Left: c0 (room, u1), c1 (lobby, u2) on node 0, c2 (room, u1), c3 on node 1; c5 died.
        assert_eq!(stats(port, &system), (4, 2, 2), "through :{port}");
        assert_eq!(presence_of(port, &system, "room"), room);
        assert!(
            start.elapsed() <= prompt() * 2,
            "took {:?}",
            start.elapsed()
        );
    }
}

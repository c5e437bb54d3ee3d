//! Issue 15, offline messages across a cluster: a real etcd and three nodes. A push stored for a
//! user through one node is kept on the user's owner node and reaches the user's first
//! connection on another node, in order, once.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NODE: &[&str] = &["OfflineMax = 5", "OfflineTtl = 60"];

fn send(port: u16, system: &str, user: &str, n: u64) -> Value {
    let body = json!({"userId": user, "code": 7, "msg": "m", "data": {"n": n}, "store": true});
    api(port, Some(system), "/api/send_to_user", &body)
}

/// Asserts no push other than member events (1001/1002) arrives within `ms` milliseconds.
fn no_more_pushes(ws: &mut Ws, ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(Some(tungstenite::Message::Text(text))) = ws.read_within(left) {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["code"] == 1001 || v["code"] == 1002, "a push more: {v}");
        }
    }
}

#[test]
fn a_user_who_connects_later_on_another_node_gets_the_stored_pushes_once() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 3, NODE);
    converge(&nodes);
    let system = register_fresh(
        nodes[0].port,
        "offline",
        Instant::now() + Duration::from_secs(20),
    );
    // Every node must know the system before it takes a push for it.
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while api(
            node.port,
            Some(&system),
            "/api/get_system_stats",
            &json!({}),
        )["code"]
            != 0
        {
            assert!(
                Instant::now() < deadline,
                "node {} never learned the system",
                node.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Six users: their owners fall on different nodes, so stores and takes cross node links.
    for u in 0..6usize {
        let user = format!("user{u}");
        let via = &nodes[u % 3];
        for n in 1..=2 {
            let v = send(via.port, &system, &user, n);
            assert_eq!(
                (v["code"].clone(), v["data"]["count"].clone()),
                (json!(0), json!(0)),
                "{user} via node {}: {v}",
                via.port
            );
        }
    }
    let stats = api(
        nodes[2].port,
        Some(&system),
        "/api/get_system_stats",
        &json!({}),
    );
    assert_eq!(stats["data"]["offlineMessages"], 12, "{stats}");

    for u in 0..6usize {
        let user = format!("user{u}");
        let on = &nodes[(u + 1) % 3];
        let mut a = on.ws(&system);
        bind(on.port, &system, &a, "room", &user, "");
        assert_eq!(a.next_ns(2), [1, 2], "{user} on node {}", on.port);
        // Once: a second connection of the user, on a third node, gets nothing more.
        let other = &nodes[(u + 2) % 3];
        let mut b = other.ws(&system);
        bind(other.port, &system, &b, "room2", &user, "");
        no_more_pushes(&mut b, 300);
        no_more_pushes(&mut a, 100);
    }
    let stats = api(
        nodes[1].port,
        Some(&system),
        "/api/get_system_stats",
        &json!({}),
    );
    assert_eq!(stats["data"]["offlineMessages"], 0, "{stats}");
}

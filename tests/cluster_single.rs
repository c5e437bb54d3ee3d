//! Issue 17, one connection per user across a cluster (docs/api-additions.md, "One connection
//! per user"): a real etcd and three nodes. The newest connection of a user closes the older
//! one with 4001 whichever nodes they are on; of connections on different nodes that claim a
//! user at once exactly one stays; and when the user's owner node dies, its successor learns
//! who holds the user from the holders' re-claims, so the next connection still replaces the
//! old one.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REPLACED: Ended = Ended::Close(4001);

/// A system with singleConnection, known to every node before it returns.
fn register(nodes: &[Node]) -> String {
    let system = unique("cluster-single");
    let v = api(
        nodes[0].port,
        None,
        "/api/register",
        &json!({"systemId": system, "singleConnection": true}),
    );
    assert_eq!(v["code"], 0, "register: {v}");
    for node in nodes {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
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
                "{} does not know {system}",
                node.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    system
}

fn is_online(port: u16, system: &str, ws: &Ws) -> bool {
    let body = json!({"clientId": ws.client_id});
    let v = api(port, Some(system), "/api/is_online", &body);
    assert_eq!(v["code"], 0, "is_online: {v}");
    v["data"]["online"] == true
}

/// A push to `ws` alone, sent through `port`, arrives.
fn assert_served(port: u16, system: &str, ws: &mut Ws, n: u64) {
    let body = json!({"clientId": ws.client_id, "sendUserId": "", "code": 7, "msg": "m", "data": {"n": n}});
    let v = api(port, Some(system), "/api/send_to_client", &body);
    assert_eq!(v["code"], 0, "send_to_client: {v}");
    assert_eq!(ws.next_ns(1), [n], "client {}", ws.client_id);
}

#[test]
fn the_newest_connection_of_a_user_replaces_the_older_on_any_node() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 3, &[]);
    converge(&nodes);
    let system = register(&nodes);
    let all: Vec<&Node> = nodes.iter().collect();
    // For each owner node, a user it owns: every claim below crosses a link for some of them.
    for (u, owner) in nodes.iter().enumerate() {
        let user = group_owned_by(&system, owner, &all);
        for hop in 1..3 {
            let (from, to) = (&nodes[(u + hop) % 3], &nodes[(u + hop + 1) % 3]);
            let mut old = from.ws(&system);
            // Each bind through a node other than the client's own.
            bind(to.port, &system, &old, "room", &user, "");
            let mut new = to.ws(&system);
            bind(from.port, &system, &new, "room", &user, "");
            assert_eq!(
                old.expect_end(IO_TIMEOUT, true),
                REPLACED,
                "{user} hop {hop}"
            );
            assert!(!is_online(owner.port, &system, &old));
            assert_served(owner.port, &system, &mut new, hop as u64);
            new.close();
        }
    }
}

/// Six connections of one user, two on each node, bound at once through all three nodes,
/// five times over: exactly one stays each time.
#[test]
fn of_connections_on_several_nodes_that_claim_at_once_exactly_one_stays() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 3, &[]);
    converge(&nodes);
    let system = register(&nodes);
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    for round in 0..5 {
        let user = format!("racer{round}");
        let mut conns: Vec<Ws> = (0..6).map(|i| nodes[i % 3].ws(&system)).collect();
        let binds: Vec<_> = (conns.iter().enumerate())
            .map(|(i, ws)| {
                let (port, system) = (ports[(i + 1) % 3], system.clone());
                let body = json!({"clientId": ws.client_id, "groupName": "g", "userId": user});
                std::thread::spawn(move || -> Value {
                    api(port, Some(&system), "/api/bind_to_group", &body)
                })
            })
            .collect();
        for b in binds {
            let v = b.join().unwrap();
            assert_eq!(v["code"], 0, "round {round}: {v}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let open = loop {
            let open: Vec<usize> = (0..conns.len())
                .filter(|&i| is_online(ports[0], &system, &conns[i]))
                .collect();
            if open.len() <= 1 || Instant::now() > deadline {
                break open;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(open.len(), 1, "round {round}: open {open:?}");
        for (i, ws) in conns.iter_mut().enumerate() {
            if i != open[0] {
                assert_eq!(ws.expect_end(IO_TIMEOUT, true), REPLACED, "round {round}");
            }
        }
        let survivor = conns.swap_remove(open[0]);
        assert!(is_online(ports[2], &system, &survivor), "round {round}");
    }
}

#[test]
fn when_the_owner_of_a_user_dies_its_successor_still_knows_the_holder() {
    let etcd = Etcd::start();
    let mut nodes = Node::start_many(&etcd, 3, &[]);
    converge(&nodes);
    let system = register(&nodes);
    let all: Vec<&Node> = nodes.iter().collect();
    // A user the third node owns; its connection lives on the first.
    let user = group_owned_by(&system, &nodes[2], &all);
    let mut old = nodes[0].ws(&system);
    bind(nodes[0].port, &system, &old, "room", &user, "");
    nodes[2].signal(libc::SIGKILL);
    assert!(nodes[2].wait_exit(Duration::from_secs(5)).is_some());
    // Both survivors drop the dead node from their peer tables. Whatever the order, the new
    // connection replaces the old: a claim that reached the dead owner is made again.
    for node in &nodes[..2] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.stderr_log().contains("peer left") {
            assert!(
                Instant::now() < deadline,
                "{} kept the dead peer",
                node.addr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut new = nodes[1].ws(&system);
    bind(nodes[1].port, &system, &new, "room", &user, "");
    assert_eq!(old.expect_end(IO_TIMEOUT, true), REPLACED);
    assert_served(nodes[0].port, &system, &mut new, 1);
    let log = nodes[0].stderr_log();
    assert!(log.contains("re-claiming the users"), "{log}");
}

//! Occupancy webhooks (issue 17) in a cluster: a real etcd and three nodes. The group's owner
//! (the home of its history stream) sends `group_occupied` / `group_vacated` once per
//! transition, whichever nodes the members are on; a node that leaves takes its members with
//! it, and a group only it held is vacated.

mod common;

use common::etcd::*;
use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DELIVERY: Duration = Duration::from_secs(10);

/// The occupancy events delivered so far, each with the node whose batch carried it.
fn occupancy(receiver: &Receiver) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for hook in receiver.hooks() {
        let body: Value = hook.json();
        for e in body["events"].as_array().into_iter().flatten() {
            let kind = e["event"].as_str().unwrap_or_default();
            if kind.starts_with("group_") {
                out.push((
                    kind.to_string(),
                    e["groupName"].as_str().unwrap().to_string(),
                    body["node"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

/// Waits until `n` occupancy events came (then a quiet window for a wrong extra one).
fn wait_occupancy(receiver: &Receiver, n: usize) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + DELIVERY;
    while occupancy(receiver).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(QUIET_MS * 2));
    occupancy(receiver)
}

fn ev(kind: &str, group: &str, node: &Node) -> (String, String, String) {
    (kind.to_string(), group.to_string(), node.addr())
}

/// Registers a system with a webhook to `receiver` through `nodes[0]`, and waits until every
/// node knows it.
fn register(nodes: &[Node], receiver: &Receiver) -> String {
    let system = unique("cluster-occ");
    let v = api(
        nodes[0].port,
        None,
        "/api/register",
        &json!({"systemId": system, "webhookUrl": receiver.url("/o")}),
    );
    assert_eq!(v["code"], 0, "register: {v}");
    for node in nodes {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let v = api(
                node.port,
                Some(&system),
                "/api/get_online_list",
                &json!({"groupName": "g"}),
            );
            if v["code"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not know {system}: {v}",
                node.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    system
}

#[test]
fn one_event_per_transition_from_the_owner_and_a_leaving_node_vacates() {
    let receiver = Receiver::start();
    let etcd = Etcd::start();
    let mut nodes = Node::start_many(
        &etcd,
        3,
        &["WebhookAllowPrivate = true", "WebhookOccupancy = true"],
    );
    converge(&nodes);
    let system = register(&nodes, &receiver);
    let all: Vec<&Node> = nodes.iter().collect();
    // Owned by C; members on A and B.
    let room = group_owned_by(&system, &nodes[2], &all);
    // Owned by A; its only member on C, which is then killed.
    let solo = group_owned_by(&system, &nodes[0], &all);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let on_a = [a.ws(&system), a.ws(&system)];
    let on_b = [b.ws(&system), b.ws(&system)];
    for (i, ws) in on_a.iter().chain(on_b.iter()).enumerate() {
        // Each bind through a node other than the client's, too.
        bind(b.port, &system, ws, &room, &format!("u{i}"), "");
    }
    assert_eq!(
        wait_occupancy(&receiver, 1),
        [ev("group_occupied", &room, c)]
    );

    // All but one leave (closes on both nodes): no event.
    let [a0, a1] = on_a;
    let [b0, b1] = on_b;
    a0.close();
    b0.close();
    a1.close();
    std::thread::sleep(Duration::from_millis(QUIET_MS * 2));
    assert_eq!(occupancy(&receiver).len(), 1, "{:?}", occupancy(&receiver));
    // The last one goes: vacated, once, by C.
    b1.drop_abruptly(false);
    assert_eq!(
        wait_occupancy(&receiver, 2),
        [
            ev("group_occupied", &room, c),
            ev("group_vacated", &room, c)
        ]
    );

    // A member on C only; C is killed: A, the owner, vacates the group once C leaves.
    let lone = c.ws(&system);
    bind(a.port, &system, &lone, &solo, "lone", "");
    let got = wait_occupancy(&receiver, 3);
    assert_eq!(got[2], ev("group_occupied", &solo, a), "{got:?}");
    nodes[2].signal(libc::SIGKILL);
    assert!(nodes[2].wait_exit(Duration::from_secs(5)).is_some());
    drop(lone);
    let deadline = Instant::now() + Duration::from_secs(30);
    while occupancy(&receiver).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(QUIET_MS * 2));
    let got = occupancy(&receiver);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3], ev("group_vacated", &solo, &nodes[0]), "{got:?}");
}

//! Issue 15, group history across a cluster: a real etcd and three nodes (`--cores 2` each).
//! A stream's owner is computed here with the server's own function
//! ([`wspush::types::stream_owner`]), so the tests can put it where they need it: a client
//! that reconnects through another node recovers exactly what it missed, and the owner killed
//! mid-stream gives `recovered: false` and a new epoch (never a silent gap), while streams
//! owned by the survivors keep theirs; a node that joins takes the streams it wins, anew.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HISTORY: &[&str] = &["HistorySize = 100", "HistoryTtl = 300"];

struct Cluster {
    nodes: Vec<Node>,
    etcd: Etcd,
}

fn cluster(n: usize) -> Cluster {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, n, HISTORY);
    converge(&nodes);
    Cluster { nodes, etcd }
}

fn register_history(port: u16) -> String {
    let system = unique("hist");
    let v = api(
        port,
        None,
        "/api/register",
        &json!({"systemId": system, "history": {"size": 50, "ttlSeconds": 120}}),
    );
    assert_eq!(v["code"], 0, "{v}");
    system
}

fn send(port: u16, system: &str, group: &str, data: Value) -> Value {
    api(
        port,
        Some(system),
        "/api/send_to_group",
        &json!({"sendUserId": "b", "groupName": group, "code": 9, "msg": "m", "data": data}),
    )
}

fn history(port: u16, system: &str, group: &str) -> Value {
    let v = api(
        port,
        Some(system),
        "/api/get_group_history",
        &json!({"groupName": group}),
    );
    assert_eq!(v["code"], 0, "{v}");
    v["data"].clone()
}

#[test]
fn a_client_reconnecting_through_another_node_recovers_exactly_what_it_missed() {
    let c = cluster(3);
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let system = register_history(n0.port);
    // The stream on node 2; the client first on node 1, later on node 0; API calls anywhere.
    let group = group_owned_by(&system, n2, &[n0, n1, n2]);
    let mut first = n1.ws(&system);
    bind(n0.port, &system, &first, &group, "u", "");
    for i in 1..=2 {
        assert_eq!(send(n0.port, &system, &group, json!(i))["code"], 0);
    }
    assert_eq!(first.next_push()["offset"], 1);
    let seen = first.next_push();
    assert_eq!(seen["offset"], 2);
    first.close();
    for i in 3..=5 {
        assert_eq!(send(n1.port, &system, &group, json!(i))["code"], 0);
    }
    // Every node reads the same stream.
    for node in [n0, n1, n2] {
        let h = history(node.port, &system, &group);
        assert_eq!(
            (h["epoch"].clone(), h["offset"].clone()),
            (seen["epoch"].clone(), json!(5))
        );
    }
    let mut again = n0.ws(&system);
    let since = json!({"offset": 2, "epoch": seen["epoch"]});
    let v = bind_since(n2.port, &system, &again, &group, since);
    assert_eq!(v["data"], json!({"recovered": true}), "{v}");
    assert_eq!(send(n2.port, &system, &group, json!(6))["code"], 0);
    let got: Vec<Value> = (0..4).map(|_| again.next_push()).collect();
    let offsets: Vec<u64> = got.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [3, 4, 5, 6]);
    assert_eq!(
        got.iter().map(|p| p["data"].clone()).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    again.expect_nothing(300);
    // A group without a push yet, owned elsewhere: recovered from offset 0 of its epoch.
    let quiet = group_owned_by(&system, n1, &[n0, n1, n2]);
    let epoch = history(n0.port, &system, &quiet)["epoch"].clone();
    let mut fresh = n2.ws(&system);
    let v = bind_since(
        n0.port,
        &system,
        &fresh,
        &quiet,
        json!({"offset": 0, "epoch": epoch}),
    );
    assert_eq!(v["data"], json!({"recovered": true}), "{v}");
    assert_eq!(send(n0.port, &system, &quiet, json!("q"))["code"], 0);
    let p = fresh.next_push();
    assert_eq!((p["offset"].clone(), p["epoch"].clone()), (json!(1), epoch));
}

#[test]
fn the_owner_killed_mid_stream_gives_a_new_epoch_never_a_silent_gap() {
    let mut c = cluster(3);
    let system = register_history(c.nodes[0].port);
    let all: Vec<&Node> = c.nodes.iter().collect();
    let doomed = group_owned_by(&system, &c.nodes[2], &all);
    let kept = group_owned_by(&system, &c.nodes[1], &all);
    let (p0, p1) = (c.nodes[0].port, c.nodes[1].port);
    let mut client = c.nodes[0].ws(&system);
    bind(p0, &system, &client, &doomed, "u", "");
    for i in 1..=3 {
        assert_eq!(send(p0, &system, &doomed, json!(i))["code"], 0);
        assert_eq!(send(p0, &system, &kept, json!(i))["code"], 0);
    }
    let mut last = Value::Null;
    for _ in 0..3 {
        last = client.next_push();
    }
    assert_eq!(last["offset"], 3);
    let kept_before = history(p1, &system, &kept);

    c.nodes[2].signal(libc::SIGKILL);
    assert!(c.nodes[2].wait_exit(Duration::from_secs(5)).is_some());
    // Until the dead owner leaves the peer table a push fails loudly; then a survivor owns
    // the stream, anew.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    loop {
        let v = send(p1, &system, &doomed, json!("after"));
        if v["code"] == 0 {
            break;
        }
        failures += 1;
        assert!(v["msg"].as_str().unwrap().contains("history"), "{v}");
        assert!(Instant::now() < deadline, "still failing: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = client.next_push();
    assert_ne!(p["epoch"], last["epoch"], "a new owner, a new epoch: {p}");
    assert_eq!(
        (p["offset"].clone(), p["data"].clone()),
        (json!(1), json!("after")),
        "{p}"
    );
    eprintln!("{failures} pushes refused while the dead owner was still listed");
    // A client that comes back with its old position learns that its history is gone.
    let mut back = c.nodes[1].ws(&system);
    let since = json!({"offset": 3, "epoch": last["epoch"]});
    let v = bind_since(p0, &system, &back, &doomed, since);
    assert_eq!(v["data"], json!({"recovered": false}), "{v}");
    let now = history(p0, &system, &doomed);
    assert_eq!(
        (now["epoch"].clone(), now["offset"].clone()),
        (p["epoch"].clone(), json!(1))
    );
    assert_eq!(send(p0, &system, &doomed, json!("live"))["code"], 0);
    assert_eq!(back.next_push()["offset"], 2);
    back.expect_nothing(200);
    // The survivors' streams keep their epoch and offsets.
    let kept_after = history(p0, &system, &kept);
    assert_eq!(kept_after["epoch"], kept_before["epoch"]);
    assert_eq!(kept_after["offset"], 3);
}

#[test]
fn a_joining_node_takes_the_streams_it_wins_with_a_new_epoch() {
    let mut c = cluster(2);
    let system = register_history(c.nodes[0].port);
    let p0 = c.nodes[0].port;
    let groups: Vec<String> = (0..30).map(|i| format!("g{i}")).collect();
    for g in &groups {
        assert_eq!(send(p0, &system, g, json!(1))["code"], 0);
    }
    let before: Vec<Value> = groups.iter().map(|g| history(p0, &system, g)).collect();
    c.nodes.push(Node::start(&c.etcd, HISTORY));
    converge(&c.nodes);
    let all: Vec<&Node> = c.nodes.iter().collect();
    let new = addr(&c.nodes[2]);
    let mut moved = 0;
    for (g, old) in groups.iter().zip(&before) {
        let owner = wspush::types::stream_owner(&system, g, all.iter().map(|n| addr(n)));
        let now = history(c.nodes[1].port, &system, g);
        if owner == Some(new) {
            moved += 1;
            assert_ne!(now["epoch"], old["epoch"], "{g} moved: a new epoch");
            assert_eq!(now["offset"], 0, "{g}");
        } else {
            assert_eq!(
                (now["epoch"].clone(), now["offset"].clone()),
                (old["epoch"].clone(), json!(1)),
                "{g}"
            );
        }
    }
    assert!(moved > 0, "no group of 30 moved to the new node");
}

#[test]
fn recovery_across_nodes_while_pushes_keep_coming_has_no_gap_and_no_duplicate() {
    let c = cluster(3);
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let system = register_history(n0.port);
    // Client on node 0, stream on node 2, pushes through node 1, the bind through node 2:
    // the fetch's answer and the live pushes reach node 0 by different links.
    for round in 0..4 {
        let addrs = [n0, n1, n2].map(addr);
        let group = (0..)
            .map(|i| format!("busy{round}-{i}"))
            .find(|g| wspush::types::stream_owner(&system, g, addrs) == Some(addr(n2)))
            .unwrap();
        assert_eq!(send(n1.port, &system, &group, json!(0))["code"], 0);
        let epoch = history(n1.port, &system, &group)["epoch"].clone();
        let (port, sys, g) = (n1.port, system.clone(), group.clone());
        let pusher = std::thread::spawn(move || {
            for i in 1..=20 {
                assert_eq!(send(port, &sys, &g, json!(i))["code"], 0);
            }
        });
        let mut ws = n0.ws(&system);
        let v = bind_since(
            n2.port,
            &system,
            &ws,
            &group,
            json!({"offset": 1, "epoch": epoch}),
        );
        assert_eq!(v["data"], json!({"recovered": true}), "{v}");
        pusher.join().unwrap();
        let got: Vec<u64> = (2..=21)
            .map(|_| ws.next_push()["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (2..=21).collect::<Vec<_>>(), "round {round}");
        ws.expect_nothing(300);
    }
}

//! Issue 17's API additions across a cluster (docs/api-additions.md): a real etcd and two nodes
//! (`--cores 2` each). `excludeClientId` leaves out a client of another node than the one asked,
//! on every fan-out route, with a history stream owned by either node, and send_to_user's
//! `store: true` learns over the link that the user was online through the excluded client.

mod common;

use common::etcd::*;
use common::*;
use serde_json::{json, Value};

const NODE: &[&str] = &[
    "HistorySize = 50",
    "HistoryTtl = 120",
    "OfflineMax = 10",
    "OfflineTtl = 60",
];

/// etcd and `n` converged nodes. Fields drop in order: the nodes first, then etcd.
struct Cluster {
    nodes: Vec<Node>,
    _etcd: Etcd,
}

fn cluster(n: usize) -> Cluster {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, n, NODE);
    converge(&nodes);
    Cluster { nodes, _etcd: etcd }
}

fn ok(port: u16, system: &str, route: &str, body: Value) -> Value {
    let v = api(port, Some(system), route, &body);
    assert_eq!(v["code"], 0, "{route} {body} through :{port}: {v}");
    v
}

#[test]
fn exclude_leaves_out_a_client_of_any_node_on_every_route() {
    let c = cluster(2);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let system = register_fresh(
        n0.port,
        "excl",
        std::time::Instant::now() + CONVERGE_TIMEOUT,
    );
    // Three clients on each node, all in "room"; user alice on n0's first and n1's first.
    let mut ws: Vec<Ws> = (0..6)
        .map(|i| {
            if i < 3 {
                n0.ws(&system)
            } else {
                n1.ws(&system)
            }
        })
        .collect();
    for (i, w) in ws.iter().enumerate() {
        let user = if i % 3 == 0 { "alice" } else { "bob" };
        bind(n0.port, &system, w, "room", user, "");
    }
    let ids: Vec<String> = ws.iter().map(|w| w.client_id.clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        // Asked of either node, about a client of either.
        let through = if i % 2 == 0 { n0.port } else { n1.port };
        let n = i as u64;
        let v = ok(
            through,
            &system,
            "/api/send_to_group",
            json!({"groupName": "room", "data": {"n": n}, "excludeClientId": id}),
        );
        assert_eq!(v["data"]["failedNodes"], json!([]), "{v}");
        ok(
            through,
            &system,
            "/api/send_to_system",
            json!({"data": {"n": 10 + n}, "excludeClientId": id}),
        );
        let v = ok(
            through,
            &system,
            "/api/send_to_user",
            json!({"userId": "alice", "data": {"n": 20 + n}, "excludeClientId": id}),
        );
        let alices = if i % 3 == 0 { 1 } else { 2 };
        assert_eq!(v["data"]["count"], alices, "{v}");
    }
    for (j, w) in ws.iter_mut().enumerate() {
        let mut want = Vec::new();
        for i in (0..6u64).filter(|&i| i != j as u64) {
            want.extend([i, 10 + i]);
            if j % 3 == 0 {
                want.push(20 + i);
            }
        }
        let mut got = w.next_ns(want.len());
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "client {j} gets every push but its own");
        w.expect_nothing(200);
    }
}

#[test]
fn exclude_with_history_on_either_owner_and_store_true_across_nodes() {
    let c = cluster(2);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let system = unique("hist");
    let v = api(
        n0.port,
        None,
        "/api/register",
        &json!({"systemId": system, "history": {"size": 50, "ttlSeconds": 120}}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut a = n0.ws(&system);
    let mut b = n1.ws(&system);
    for owner in [n0, n1] {
        let group = group_owned_by(&system, owner, &[n0, n1]);
        bind(n0.port, &system, &a, &group, "ua", "");
        bind(n0.port, &system, &b, &group, "ub", "");
        // Each excluded in turn, asked of the node that neither owns the stream nor has it.
        for (n, excluded, through) in [(1u64, &a.client_id, n1.port), (2, &b.client_id, n0.port)] {
            let body = json!({"groupName": group, "data": {"n": n}, "excludeClientId": excluded});
            ok(through, &system, "/api/send_to_group", body);
        }
        assert_eq!(b.next_push()["offset"], 1, "b gets the push a sent");
        assert_eq!(a.next_push()["offset"], 2, "a gets the push b sent");
        let v = ok(
            n1.port,
            &system,
            "/api/get_group_history",
            json!({"groupName": group}),
        );
        assert_eq!(v["data"]["offset"], 2, "both pushes are in the stream: {v}");
        a.expect_nothing(100);
        b.expect_nothing(100);
    }
    let kept = || {
        ok(n0.port, &system, "/api/get_system_stats", json!({}))["data"]["offlineMessages"].clone()
    };
    // ub's one connection is on n1, excluded by a send through n0: online, nothing kept.
    let to_user = |user: &str, store: Value, n: u64| {
        let body = json!({"userId": user, "data": {"n": n}, "store": store,
            "excludeClientId": b.client_id});
        ok(n0.port, &system, "/api/send_to_user", body)
    };
    assert_eq!(to_user("ub", json!(true), 3)["data"]["count"], 0);
    assert_eq!(
        kept(),
        0,
        "ub is online through the excluded connection on n1"
    );
    to_user("nobody", json!(true), 4);
    assert_eq!(kept(), 1, "a user without connections gets it kept");
    b.expect_nothing(100);
}

#[test]
fn a_batch_through_one_node_reaches_clients_of_the_other_in_order() {
    let c = cluster(2);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let system = register_fresh(
        n0.port,
        "batch",
        std::time::Instant::now() + CONVERGE_TIMEOUT,
    );
    let mut far = n1.ws(&system);
    let mut near = n0.ws(&system);
    bind(n0.port, &system, &far, "room", "u", "");
    bind(n0.port, &system, &near, "room", "w", "");
    let v = ok(
        n0.port,
        &system,
        "/api/batch",
        json!({"ops": [
            {"route": "send_to_client", "clientId": far.client_id, "data": {"n": 1}},
            {"route": "send_to_group", "groupName": "room", "data": {"n": 2}, "excludeClientId": near.client_id},
            {"route": "send_to_user", "userId": "u", "data": {"n": 3}},
            {"route": "send_to_clients", "clientIds": [near.client_id, far.client_id], "data": {"n": 4}},
            {"route": "send_to_system", "data": {"n": 5}, "excludeClientId": far.client_id},
            {"route": "close_client", "clientId": far.client_id},
        ]}),
    );
    let r = v["data"]["results"].as_array().expect("results");
    assert_eq!(r.len(), 6, "{v}");
    for (i, res) in r.iter().take(5).enumerate() {
        assert_eq!(res["code"], 0, "op {i}: {res}");
    }
    assert_eq!(r[1]["data"]["failedNodes"], json!([]), "{v}");
    assert_eq!(r[2]["data"]["count"], 1, "u's connection on n1: {v}");
    assert_fails_naming(&r[5], "route");
    assert_eq!(
        far.next_ns(4),
        [1, 2, 3, 4],
        "the far client, in the batch's order"
    );
    assert_eq!(near.next_ns(2), [4, 5]);
    far.expect_nothing(200);
    near.expect_nothing(100);
}

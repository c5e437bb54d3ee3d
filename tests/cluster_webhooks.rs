//! Webhooks (issue 7) in a cluster: a real etcd and two nodes. Every event is sent by the node
//! that owns the connection, whichever node the API call that caused it went through.

mod common;

use common::etcd::*;
use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DELIVERY: Duration = Duration::from_secs(10);

#[test]
fn each_event_comes_from_the_node_that_owns_the_connection() {
    let receiver = Receiver::start();
    let etcd = Etcd::start();
    // The receiver listens on 127.0.0.1, which the default config refuses (issue 12).
    let nodes = Node::start_many(&etcd, 2, &["WebhookAllowPrivate = true"]);
    converge(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);

    // Registered through A, with the webhook stored in etcd for every node.
    let system = unique("cluster-hook");
    let v = api(
        a.port,
        None,
        "/api/register",
        &json!({"systemId": system, "webhookUrl": receiver.url("/c")}),
    );
    assert_eq!(v["code"], 0, "register: {v}");
    // B learns systems from etcd's watch; a guarded call through B makes sure it has (it asks
    // etcd itself when the watch is behind), so B's cores know the webhook before the connect.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let v = api(
            b.port,
            Some(&system),
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        if v["code"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B does not know {system}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A client on B, bound and closed through A's API.
    let mut ws = b.ws(&system);
    let id = ws.client_id.clone();
    let v = api(
        a.port,
        Some(&system),
        "/api/bind_to_group",
        &json!({"clientId": id, "groupName": "g", "userId": "u", "extend": "x"}),
    );
    assert_eq!(v["code"], 0, "bind through A: {v}");
    presence(&ws.recv_json(), 1001);
    let v = api(
        a.port,
        Some(&system),
        "/api/close_client",
        &json!({ "clientId": id }),
    );
    assert_eq!(v["code"], 0, "close through A: {v}");
    ws.expect_end(IO_TIMEOUT, true);

    let events = receiver.wait_delivered(3, DELIVERY);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    assert_eq!(receiver.delivered().len(), 3, "{:#?}", receiver.delivered());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["online", "bind", "offline"]);
    assert!(events.iter().all(|e| e["clientId"] == id.as_str()));
    assert_eq!(
        (
            &events[1]["userId"],
            &events[1]["groupName"],
            &events[1]["extend"]
        ),
        (&json!("u"), &json!("g"), &json!("x"))
    );
    for hook in receiver.hooks() {
        let body: Value = hook.json();
        assert_eq!(body["systemId"], system.as_str());
        assert_eq!(body["node"], b.addr(), "sent by B, the owner: {body}");
    }
}

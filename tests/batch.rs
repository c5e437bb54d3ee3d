//! Issue 17, `/api/batch` on one node with `--cores 2` (docs/api-additions.md): push
//! operations run in order, one result per operation shaped as its route's own answer, a bad
//! operation failing alone; over MaxBatch (default 100) nothing is done; the guard (SystemId,
//! registered, a system's signature over the whole body) as on every route.

mod common;

use common::*;
use serde_json::{json, Value};

fn batch(port: u16, system: &str, ops: Value) -> Value {
    api(port, Some(system), "/api/batch", &json!({ "ops": ops }))
}

fn results(v: &Value) -> Vec<Value> {
    assert_eq!(v["code"], 0, "batch: {v}");
    let data = v["data"].as_object().expect("data is an object");
    assert_eq!(data.len(), 1, "data is exactly {{results}}: {v}");
    let list = v["data"]["results"].as_array().expect("results").clone();
    for r in &list {
        assert_envelope(r);
    }
    list
}

/// The answer's `X-Wspush-Delivered` is every operation's deliveries summed: 1 + 2 + 0 (an
/// operation that failed) + 2 (the group of both).
#[test]
fn the_batch_answer_says_what_all_its_operations_delivered() {
    let server = Server::start();
    server.register("s");
    let mut a = server.ws("s");
    let mut b = server.ws("s");
    bind(server.port, "s", &a, "room", "u", "");
    bind(server.port, "s", &b, "room", "v", "");
    let body = json!({"ops": [
        {"route": "send_to_client", "clientId": a.client_id, "data": {"n": 1}},
        {"route": "send_to_clients", "clientIds": [a.client_id, b.client_id], "data": {"n": 2}},
        {"route": "send_to_client", "data": {"n": 99}},
        {"route": "send_to_group", "groupName": "room", "data": {"n": 3}},
    ]});
    let resp = api_raw(
        server.port,
        Some("s"),
        "/api/batch",
        body.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(results(&resp.json()).len(), 4);
    assert_eq!(
        resp.header("X-Wspush-Delivered"),
        Some("5"),
        "{:?}",
        resp.headers
    );
    assert_eq!(a.next_ns(3), [1, 2, 3]);
    assert_eq!(b.next_ns(2), [2, 3]);
    // A batch whose operations all fail delivered nothing, and says so.
    let body = json!({"ops": [{"route": "send_to_group", "data": 1}]});
    let resp = api_raw(
        server.port,
        Some("s"),
        "/api/batch",
        body.to_string().as_bytes(),
    );
    assert_eq!(
        resp.header("X-Wspush-Delivered"),
        Some("0"),
        "{:?}",
        resp.headers
    );
}

#[test]
fn operations_run_in_order_each_answered_as_its_route_and_a_bad_one_fails_alone() {
    let server = Server::start();
    server.register("s");
    let mut a = server.ws("s");
    let mut b = server.ws("s");
    bind(server.port, "s", &a, "room", "u", "");
    bind(server.port, "s", &b, "hall", "v", "");
    let v = batch(
        server.port,
        "s",
        json!([
            {"route": "send_to_client", "clientId": a.client_id, "data": {"n": 1}},
            {"route": "send_to_clients", "clientIds": [a.client_id, b.client_id], "data": {"n": 2}},
            {"route": "send_to_group", "data": {"n": 99}},
            {"route": "/api/send_to_group", "groupName": "room", "data": {"n": 3}},
            {"route": "bind_to_group", "clientId": a.client_id, "groupName": "x"},
            {"route": "send_to_system", "data": {"n": 4}, "excludeClientId": b.client_id},
            {"route": 5},
            7,
            {"groupName": "room"},
            {"route": "send_to_user", "userId": "u", "data": {"n": 5}},
            {"route": "send_to_client", "clientId": a.client_id, "code": "x"},
        ]),
    );
    let r = results(&v);
    assert_eq!(r.len(), 11, "{v}");
    let ok = |i: usize, keys: &[&str]| {
        assert_eq!(r[i]["code"], 0, "op {i}: {}", r[i]);
        let mut got: Vec<&str> = r[i]["data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        got.sort_unstable();
        assert_eq!(got, keys, "op {i}: the route's own data: {}", r[i]);
    };
    ok(0, &["messageId"]);
    ok(1, &["messageId"]);
    ok(3, &["failedNodes", "messageId"]);
    ok(5, &["failedNodes", "messageId"]);
    ok(9, &["count", "failedNodes", "messageId"]);
    assert_eq!(r[9]["data"]["count"], 1);
    assert_fails_naming(&r[2], "groupName");
    assert_fails_naming(&r[4], "route");
    assert_fails_naming(&r[6], "route");
    assert_fails_naming(&r[7], "ops[7]");
    assert_fails_naming(&r[8], "route");
    assert_fails_naming(&r[10], "code");
    let ids: Vec<&str> = [0, 1, 3, 5, 9]
        .iter()
        .map(|&i| r[i]["data"]["messageId"].as_str().unwrap())
        .collect();
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "one messageId per operation: {ids:?}");
    assert_eq!(a.next_ns(5), [1, 2, 3, 4, 5], "in the batch's order");
    assert_eq!(
        b.next_ns(1),
        [2],
        "b: send_to_clients only (excluded from the system push)"
    );
    a.expect_nothing(200);
    b.expect_nothing(100);
}

#[test]
fn more_than_max_batch_does_nothing_and_the_body_is_checked() {
    let server = Server::start();
    server.register("s");
    let mut a = server.ws("s");
    let op = json!({"route": "send_to_client", "clientId": a.client_id, "data": {"n": 1}});
    // The default MaxBatch is 100.
    let v = batch(server.port, "s", Value::Array(vec![op.clone(); 101]));
    assert_eq!(v["code"], -1, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("MaxBatch"), "{v}");
    a.expect_nothing(200);
    let v = batch(server.port, "s", Value::Array(vec![op.clone(); 100]));
    assert_eq!(results(&v).len(), 100);
    assert_eq!(a.next_ns(100), vec![1; 100]);
    assert_fails_naming(&batch(server.port, "s", json!([])), "ops");
    assert_fails_naming(&batch(server.port, "s", json!("x")), "ops");
    let v = api(server.port, Some("s"), "/api/batch", &json!({}));
    assert_fails_naming(&v, "ops");
    // The guard of every route.
    let v = api(server.port, None, "/api/batch", &json!({ "ops": [op] }));
    assert_fails_naming(&v, "SystemId");
    let v = api(
        server.port,
        Some("nobody"),
        "/api/batch",
        &json!({ "ops": [op] }),
    );
    assert_eq!(v["code"], -1, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("not registered"), "{v}");
    assert_eq!(http(server.port, "GET", "/api/batch", &[], b"").status, 405);
    a.expect_nothing(100);

    let small = Server::start_with(&["MaxBatch = 2"]);
    small.register("s");
    let c = small.ws("s");
    let op = json!({"route": "send_to_client", "clientId": c.client_id});
    let v = batch(small.port, "s", json!([op, op, op]));
    assert_eq!(v["code"], -1, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("MaxBatch (2)"), "{v}");
}

#[test]
fn a_system_with_a_secret_signs_the_whole_batch() {
    use common::auth::{
        assert_refused, post, register_secret, signed, token, ws_with_token, SECRET,
    };
    let server = Server::start();
    register_secret(server.port, "sec", SECRET);
    let mut a = ws_with_token(server.port, "sec", &token(SECRET, None));
    let body =
        json!({"ops": [{"route": "send_to_client", "clientId": a.client_id, "data": {"n": 1}}]});
    let unsigned = post(
        server.port,
        Some("sec"),
        "/api/batch",
        &[],
        body.to_string().as_bytes(),
    );
    assert_refused(&unsigned, 401, "signature");
    a.expect_nothing(100);
    let v = signed(server.port, "sec", SECRET, "/api/batch", &body);
    assert_eq!(results(&v)[0]["code"], 0, "{v}");
    assert_eq!(a.next_ns(1), [1]);
}

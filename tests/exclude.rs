//! Issue 17, `excludeClientId` on one node with `--cores 2` (docs/api-additions.md): the
//! excluded connection of send_to_group, send_to_system and send_to_user gets nothing and every
//! other one everything, wherever its core; an id that reaches nobody excludes nobody; one that
//! is not a string is an error naming the field; a group with history keeps the push (the
//! excluded client sees the offset jump), and send_to_user's `store: true` counts the excluded
//! connection as its user being online.

mod common;

use common::*;
use serde_json::{json, Value};

const NODE: &[&str] = &[
    "HistorySize = 20",
    "HistoryTtl = 60",
    "OfflineMax = 10",
    "OfflineTtl = 60",
];

fn push(port: u16, system: &str, route: &str, body: Value) -> Value {
    let v = api(port, Some(system), route, &body);
    assert_eq!(v["code"], 0, "{route} {body}: {v}");
    v
}

fn kept(port: u16, system: &str) -> Value {
    api(port, Some(system), "/api/get_system_stats", &json!({}))["data"]["offlineMessages"].clone()
}

/// Six clients, bound to "room" as alice (even) and bob (odd). Each route excludes each client
/// in turn, so whichever cores the six landed on, an excluded client on each core is tried.
#[test]
fn the_excluded_client_gets_nothing_and_everyone_else_everything() {
    let server = Server::start_with(NODE);
    server.register("s");
    let mut ws: Vec<Ws> = (0..6).map(|_| server.ws("s")).collect();
    for (i, w) in ws.iter().enumerate() {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        bind(server.port, "s", w, "room", user, "");
    }
    let ids: Vec<String> = ws.iter().map(|w| w.client_id.clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        let base = json!({"code": 5, "msg": "m", "excludeClientId": id});
        let with = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let v = push(
            server.port,
            "s",
            "/api/send_to_group",
            with(json!({"groupName": "room", "data": {"n": i}})),
        );
        assert_eq!(v["data"]["failedNodes"], json!([]), "{v}");
        push(
            server.port,
            "s",
            "/api/send_to_system",
            with(json!({"data": {"n": 10 + i}})),
        );
        let v = push(
            server.port,
            "s",
            "/api/send_to_user",
            with(json!({"userId": "alice", "data": {"n": 20 + i}})),
        );
        let alices = if i % 2 == 0 { 2 } else { 3 };
        assert_eq!(
            v["data"]["count"], alices,
            "alice's connections but {id}: {v}"
        );
    }
    for (j, w) in ws.iter_mut().enumerate() {
        let mut want = Vec::new();
        for i in (0..6).filter(|&i| i != j) {
            want.extend([i as u64, 10 + i as u64]);
            if j % 2 == 0 {
                want.push(20 + i as u64);
            }
        }
        // Per route the order is the API's; routes may interleave only as sent, so sort.
        let mut got = w.next_ns(want.len());
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "client {j} gets every push but its own");
        w.expect_nothing(200);
    }
}

#[test]
fn an_id_that_reaches_nobody_excludes_nobody_and_a_non_string_is_refused() {
    let server = Server::start_with(NODE);
    server.register("s");
    server.register("other");
    let mut a = server.ws("s");
    bind(server.port, "s", &a, "room", "u", "");
    let gone = server.ws("s");
    let gone_id = gone.client_id.clone();
    drop(gone);
    let stranger = server.ws("other");
    // A forged id, an empty one, a client that left, a client of another system, null.
    let nobody = [
        json!("not-a-client-id"),
        json!(""),
        json!(gone_id),
        json!(stranger.client_id),
        Value::Null,
    ];
    for (n, exclude) in nobody.iter().enumerate() {
        let n = n as u64;
        for (route, mut body) in [
            ("/api/send_to_group", json!({"groupName": "room"})),
            ("/api/send_to_system", json!({})),
            ("/api/send_to_user", json!({"userId": "u"})),
        ] {
            body["data"] = json!({ "n": n });
            body["excludeClientId"] = exclude.clone();
            push(server.port, "s", route, body);
        }
        assert_eq!(
            a.next_ns(3),
            [n, n, n],
            "excludeClientId {exclude} is nobody"
        );
    }
    for bad in [
        json!(5),
        json!(["x"]),
        json!({"clientId": a.client_id}),
        json!(true),
    ] {
        for (route, mut body) in [
            ("/api/send_to_group", json!({"groupName": "room"})),
            ("/api/send_to_system", json!({})),
            ("/api/send_to_user", json!({"userId": "u"})),
        ] {
            body["excludeClientId"] = bad.clone();
            let v = api(server.port, Some("s"), route, &body);
            assert_fails_naming(&v, "excludeClientId");
        }
    }
    a.expect_nothing(200);
}

#[test]
fn history_keeps_the_excluded_push_and_store_true_counts_the_excluded_user_online() {
    let server = Server::start_with(NODE);
    let v = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": "h", "history": {"size": 10}}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut a = server.ws("h");
    let mut b = server.ws("h");
    bind(server.port, "h", &a, "room", "u", "");
    bind(server.port, "h", &b, "room", "v", "");
    let send = |n: u64, exclude: Option<&str>| {
        let mut body = json!({"groupName": "room", "data": {"n": n}});
        if let Some(id) = exclude {
            body["excludeClientId"] = json!(id);
        }
        push(server.port, "h", "/api/send_to_group", body)
    };
    send(1, Some(&a.client_id));
    send(2, None);
    let first = b.next_push();
    assert_eq!(
        (first["data"]["n"].clone(), first["offset"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(b.next_push()["offset"], 2);
    let only = a.next_push();
    assert_eq!(
        (only["data"]["n"].clone(), only["offset"].clone()),
        (json!(2), json!(2)),
        "the excluded client sees the offset jump over its own push"
    );
    let v = push(
        server.port,
        "h",
        "/api/get_group_history",
        json!({"groupName": "room"}),
    );
    let kept_offsets: Vec<u64> = (v["data"]["list"].as_array().unwrap().iter())
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        kept_offsets,
        [1, 2],
        "the stream keeps the excluded push: {v}"
    );
    a.expect_nothing(100);
    b.expect_nothing(100);

    // store: true with u's only connection excluded: u is online, nothing kept.
    let to_user = |user: &str, store: Value, exclude: &str, n: u64| {
        let body =
            json!({"userId": user, "data": {"n": n}, "store": store, "excludeClientId": exclude});
        push(server.port, "h", "/api/send_to_user", body)
    };
    let v = to_user("u", json!(true), &a.client_id, 3);
    assert_eq!(v["data"]["count"], 0, "{v}");
    assert_eq!(
        kept(server.port, "h"),
        0,
        "u is online through the excluded connection"
    );
    // "always" keeps it all the same; a user with no connection gets it kept.
    to_user("u", json!("always"), &a.client_id, 4);
    assert_eq!(kept(server.port, "h"), 1);
    to_user("w", json!(true), &a.client_id, 5);
    assert_eq!(kept(server.port, "h"), 2, "w has no connection: kept");
    a.expect_nothing(100);
    // w's first connection gets what was kept for it.
    let mut c = server.ws("h");
    bind(server.port, "h", &c, "hall", "w", "");
    assert_eq!(c.next_ns(1), [5]);
}

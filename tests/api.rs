//! The HTTP API of API.md: every route, its envelope, validation, isolation between systems,
//! forged clientIds, structured `data`, and pushes that cross cores.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const GUARDED: [&str; 6] = [
    "/api/send_to_client",
    "/api/send_to_clients",
    "/api/bind_to_group",
    "/api/send_to_group",
    "/api/get_online_list",
    "/api/close_client",
];

/// A valid body for each guarded route, aimed at `client`.
fn valid_body(route: &str, client: &str) -> Value {
    match route {
        "/api/send_to_client" => {
            json!({"clientId": client, "sendUserId": "u", "code": 1, "msg": "m", "data": "d"})
        }
        "/api/send_to_clients" => {
            json!({"clientIds": [client], "sendUserId": "u", "code": 1, "msg": "m", "data": "d"})
        }
        "/api/bind_to_group" => {
            json!({"clientId": client, "groupName": "g", "userId": "u", "extend": "e"})
        }
        "/api/send_to_group" => {
            json!({"groupName": "g", "sendUserId": "u", "code": 1, "msg": "m", "data": "d"})
        }
        "/api/get_online_list" => json!({"groupName": "g"}),
        "/api/close_client" => json!({ "clientId": client }),
        _ => unreachable!("{route}"),
    }
}

fn send_to_client(port: u16, system: &str, client: &str, data: Value) -> Value {
    api(
        port,
        Some(system),
        "/api/send_to_client",
        &json!({"clientId": client, "sendUserId": "sender", "code": 200, "msg": "hello", "data": data}),
    )
}

/// The `messageId` of a successful push answer: data is exactly `{"messageId"}`, plus, on the
/// fan-out routes, `"failedNodes": []` (one node: every part answers; issue 12).
fn message_id(v: &Value) -> String {
    assert_eq!(v["code"], 0, "push failed: {v}");
    let data = v["data"].as_object().expect("data is an object");
    let fan_out = data.contains_key("failedNodes");
    assert_eq!(
        data.len(),
        1 + fan_out as usize,
        "data must be exactly {{messageId}}: {v}"
    );
    if fan_out {
        assert_eq!(v["data"]["failedNodes"], json!([]), "{v}");
    }
    let id = v["data"]["messageId"].as_str().expect("data.messageId");
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "messageId is not 16 hex chars: {v}"
    );
    id.to_string()
}

/// Reads `n` pushes of `code` from `ws` and returns the clientIds in their data, sorted.
fn presence_ids(ws: &mut Ws, code: i64, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n)
        .map(|_| {
            let v = ws.recv_json();
            presence(&v, code)["clientId"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn register_succeeds_once_then_fails() {
    let server = Server::start();
    let v = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": "shop"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"], json!([]), "register data must be []: {v}");

    let again = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": "shop"}),
    );
    assert_eq!(again["code"], -1, "second register must fail: {again}");
    assert!(!again["msg"].as_str().unwrap().is_empty());

    // The registered system works on a guarded route; another one does not exist yet.
    let ok = api(
        server.port,
        Some("shop"),
        "/api/get_online_list",
        &json!({"groupName": "g"}),
    );
    assert_eq!(ok["code"], 0, "{ok}");
    let other = api(
        server.port,
        Some("shop2"),
        "/api/get_online_list",
        &json!({"groupName": "g"}),
    );
    assert_eq!(other["code"], -1, "{other}");
}

#[test]
fn register_needs_a_system_id() {
    let mut server = Server::start();
    for body in [json!({}), json!({"systemId": ""})] {
        let v = api(server.port, None, "/api/register", &body);
        assert_fails_naming(&v, "systemId");
    }
    server.assert_serves();
}

#[test]
fn guarded_routes_refuse_a_missing_or_unregistered_system_id() {
    let mut server = Server::start();
    server.register("real");
    let mut ws = server.ws("real");
    for route in GUARDED {
        let body = valid_body(route, &ws.client_id);
        let missing = api(server.port, None, route, &body);
        assert_eq!(missing["code"], -1, "{route} without SystemId: {missing}");
        assert!(!missing["msg"].as_str().unwrap().is_empty());
        let empty = api(server.port, Some(""), route, &body);
        assert_eq!(empty["code"], -1, "{route} with empty SystemId: {empty}");
        let unknown = api(server.port, Some("never-registered"), route, &body);
        assert_eq!(unknown["code"], -1, "{route} unregistered: {unknown}");
    }
    // None of those reached the client (no push, no 1001, no close).
    ws.expect_nothing(QUIET_MS);
    assert_eq!(online_list(server.port, "real", "g"), Vec::<String>::new());
    server.assert_serves();
}

#[test]
fn system_id_header_name_is_case_insensitive() {
    let server = Server::start();
    server.register("case");
    let mut ws = server.ws("case");
    for name in ["systemid", "SYSTEMID", "sYsTeMiD"] {
        let body =
            json!({"clientId": ws.client_id, "sendUserId": "", "code": 0, "msg": "", "data": name});
        let resp = http(
            server.port,
            "POST",
            "/api/send_to_client",
            &[("content-type", "application/json"), (name, "case")],
            body.to_string().as_bytes(),
        );
        assert_eq!(resp.status, 200);
        let v = resp.json();
        assert_eq!(v["code"], 0, "header {name}: {v}");
        assert_eq!(ws.recv_json()["data"], name);
    }
}

#[test]
fn missing_required_fields_fail_naming_the_field() {
    let mut server = Server::start();
    server.register("val");
    let mut ws = server.ws("val");
    let id = ws.client_id.clone();
    let cases = [
        ("/api/send_to_client", json!({"data": "x"}), "clientId"),
        (
            "/api/send_to_client",
            json!({"clientId": "", "data": "x"}),
            "clientId",
        ),
        ("/api/send_to_clients", json!({"data": "x"}), "clientIds"),
        (
            "/api/bind_to_group",
            json!({"groupName": "g", "userId": "u"}),
            "clientId",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "userId": "u"}),
            "groupName",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": ""}),
            "groupName",
        ),
        ("/api/send_to_group", json!({"data": "x"}), "groupName"),
        (
            "/api/send_to_group",
            json!({"groupName": "", "data": "x"}),
            "groupName",
        ),
        ("/api/get_online_list", json!({}), "groupName"),
        (
            "/api/get_online_list",
            json!({"groupName": ""}),
            "groupName",
        ),
        ("/api/close_client", json!({}), "clientId"),
        ("/api/close_client", json!({"clientId": ""}), "clientId"),
    ];
    for (route, body, field) in cases {
        let v = api(server.port, Some("val"), route, &body);
        assert_fails_naming(&v, field);
    }
    ws.expect_nothing(QUIET_MS);
    server.assert_serves();
}

#[test]
fn wrong_json_types_fail_with_minus_1_or_400_never_5xx() {
    let mut server = Server::start();
    server.register("types");
    let mut ws = server.ws("types");
    let id = ws.client_id.clone();
    let cases = [
        ("/api/send_to_client", json!({"clientId": 123}), "clientId"),
        ("/api/send_to_client", json!({"clientId": [id]}), "clientId"),
        (
            "/api/send_to_client",
            json!({"clientId": id, "code": "abc"}),
            "code",
        ),
        (
            "/api/send_to_client",
            json!({"clientId": id, "code": 1.5}),
            "code",
        ),
        (
            "/api/send_to_client",
            json!({"clientId": id, "msg": {"a": 1}}),
            "msg",
        ),
        (
            "/api/send_to_clients",
            json!({"clientIds": id}),
            "clientIds",
        ),
        (
            "/api/send_to_clients",
            json!({"clientIds": [1, 2]}),
            "clientIds",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": ["g"]}),
            "groupName",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": "g", "userId": 5}),
            "userId",
        ),
        (
            "/api/send_to_group",
            json!({"groupName": "g", "sendUserId": true}),
            "sendUserId",
        ),
        (
            "/api/get_online_list",
            json!({"groupName": {}}),
            "groupName",
        ),
        ("/api/close_client", json!({"clientId": 7}), "clientId"),
        ("/api/register", json!({"systemId": 42}), "systemId"),
    ];
    for (route, body, field) in cases {
        let resp = api_raw(
            server.port,
            Some("types"),
            route,
            body.to_string().as_bytes(),
        );
        assert!(
            resp.status == 200 || resp.status == 400,
            "{route} {body}: status {} {:?}",
            resp.status,
            resp.text()
        );
        let v = resp.json();
        assert_envelope(&v);
        assert_fails_naming(&v, field);
    }
    // A body that is JSON but not an object.
    for body in ["[]", "\"x\"", "42", "null", "true"] {
        for route in ["/api/send_to_client", "/api/register"] {
            let resp = api_raw(server.port, Some("types"), route, body.as_bytes());
            assert!(
                resp.status == 200 || resp.status == 400,
                "{route} {body}: status {} {:?}",
                resp.status,
                resp.text()
            );
            let v = resp.json();
            assert_envelope(&v);
            assert_eq!(v["code"], -1, "{route} {body}: {v}");
        }
    }
    ws.expect_nothing(QUIET_MS);
    assert_eq!(online_list(server.port, "types", "g"), Vec::<String>::new());
    server.assert_serves();
}

#[test]
fn send_to_client_pushes_one_frame_with_the_answered_message_id() {
    let server = Server::start();
    server.register("s");
    let mut a = server.ws("s");
    let mut b = server.ws("s");
    let v = api(
        server.port,
        Some("s"),
        "/api/send_to_client",
        &json!({"clientId": a.client_id, "sendUserId": "boss", "code": 4242, "msg": "note", "data": "payload"}),
    );
    let id = message_id(&v);
    let push = a.recv_json();
    assert_push_shape(&push);
    assert_eq!(
        push,
        json!({"messageId": id, "sendUserId": "boss", "code": 4242, "msg": "note", "data": "payload"})
    );
    a.expect_nothing(QUIET_MS);
    b.expect_nothing(50);

    // Each push gets a new messageId.
    let second = message_id(&send_to_client(
        server.port,
        "s",
        &a.client_id,
        json!("again"),
    ));
    assert_ne!(second, id);
    assert_eq!(a.recv_json()["messageId"], second);
}

#[test]
fn structured_data_is_delivered_unchanged() {
    let server = Server::start();
    server.register("data");
    let mut ws = server.ws("data");
    let values = [
        json!({"order": 17, "items": [{"sku": "a-1", "qty": 2}, {"sku": "b", "qty": null}], "ok": true}),
        json!([1, "two", 3.5, false, null, {"x": []}]),
        json!(42),
        json!(-3.25),
        json!("plain string"),
        json!("{\"looks\":\"like json\"}"),
        json!("中文 ✓ \u{1F600} \"quoted\" \\ back\nslash"),
        json!(""),
        json!({}),
        json!([]),
        json!(true),
    ];
    for value in &values {
        send_to_client(server.port, "data", &ws.client_id, value.clone());
        let push = ws.recv_json();
        assert_push_shape(&push);
        assert_eq!(&push["data"], value, "data changed on the way: {push}");
    }

    // The same through send_to_clients and send_to_group.
    let object = json!({"nested": {"deep": [1, {"deeper": "yes"}]}});
    let v = api(
        server.port,
        Some("data"),
        "/api/send_to_clients",
        &json!({"clientIds": [ws.client_id], "sendUserId": "", "code": 1, "msg": "", "data": object}),
    );
    message_id(&v);
    assert_eq!(ws.recv_json()["data"], object);
    bind(server.port, "data", &ws, "room", "u", "e");
    presence(&ws.recv_json(), 1001);
    let v = api(
        server.port,
        Some("data"),
        "/api/send_to_group",
        &json!({"groupName": "room", "sendUserId": "", "code": 1, "msg": "", "data": [object, 1]}),
    );
    message_id(&v);
    assert_eq!(ws.recv_json()["data"], json!([object, 1]));
}

#[test]
fn send_to_clients_uses_one_message_id_for_every_listed_client() {
    let server = Server::start();
    server.register("many");
    let mut listed: Vec<Ws> = (0..4).map(|_| server.ws("many")).collect();
    let mut unlisted = server.ws("many");
    let ids: Vec<&str> = listed.iter().map(|w| w.client_id.as_str()).collect();
    let v = api(
        server.port,
        Some("many"),
        "/api/send_to_clients",
        &json!({"clientIds": ids, "sendUserId": "ops", "code": 3, "msg": "all", "data": {"n": 1}}),
    );
    let id = message_id(&v);
    for ws in &mut listed {
        let push = ws.recv_json();
        assert_push_shape(&push);
        assert_eq!(
            push,
            json!({"messageId": id, "sendUserId": "ops", "code": 3, "msg": "all", "data": {"n": 1}})
        );
    }
    unlisted.expect_nothing(QUIET_MS);
    for ws in &mut listed {
        ws.expect_nothing(20);
    }
}

#[test]
fn send_to_group_reaches_each_member_once_with_one_message_id() {
    let server = Server::start();
    server.register("grp");
    let mut members: Vec<Ws> = (0..3).map(|_| server.ws("grp")).collect();
    let mut outsider = server.ws("grp");
    for (i, ws) in members.iter().enumerate() {
        bind(server.port, "grp", ws, "room", &format!("u{i}"), "");
    }
    // Member i saw the binds of members i.. (its own and the later ones).
    let all: Vec<String> = members.iter().map(|w| w.client_id.clone()).collect();
    for (i, ws) in members.iter_mut().enumerate() {
        let mut expected = all[i..].to_vec();
        expected.sort();
        assert_eq!(presence_ids(ws, 1001, 3 - i), expected);
    }
    let v = api(
        server.port,
        Some("grp"),
        "/api/send_to_group",
        &json!({"groupName": "room", "sendUserId": "x", "code": 9, "msg": "hi", "data": "to all"}),
    );
    let id = message_id(&v);
    for ws in &mut members {
        let push = ws.recv_json();
        assert_eq!(
            push,
            json!({"messageId": id, "sendUserId": "x", "code": 9, "msg": "hi", "data": "to all"})
        );
    }
    outsider.expect_nothing(QUIET_MS);
    for ws in &mut members {
        ws.expect_nothing(20);
    }

    // A group nobody is in: success, nothing delivered.
    let v = api(
        server.port,
        Some("grp"),
        "/api/send_to_group",
        &json!({"groupName": "empty", "sendUserId": "", "code": 1, "msg": "", "data": ""}),
    );
    message_id(&v);
    outsider.expect_nothing(QUIET_MS);
}

#[test]
fn get_online_list_of_an_empty_group_is_count_0_and_an_empty_list() {
    let server = Server::start();
    server.register("ol");
    let v = api(
        server.port,
        Some("ol"),
        "/api/get_online_list",
        &json!({"groupName": "nobody-here"}),
    );
    assert_eq!(v["code"], 0);
    assert_eq!(v["data"], json!({"count": 0, "list": []}), "{v}");

    let a = server.ws("ol");
    let b = server.ws("ol");
    let _c = server.ws("ol");
    bind(server.port, "ol", &a, "room", "ua", "");
    bind(server.port, "ol", &b, "room", "ub", "");
    let v = api(
        server.port,
        Some("ol"),
        "/api/get_online_list",
        &json!({"groupName": "room"}),
    );
    assert_eq!(v["data"]["count"], 2, "{v}");
    assert_eq!(
        online_list(server.port, "ol", "room"),
        sorted(&[&a.client_id, &b.client_id])
    );
    // Group names are exact: no prefix or case matching.
    assert!(online_list(server.port, "ol", "Room").is_empty());
    assert!(online_list(server.port, "ol", "roo").is_empty());
}

#[test]
fn close_client_closes_that_connection_only() {
    let server = Server::start();
    server.register("cc");
    let mut victim = server.ws("cc");
    let mut bystander = server.ws("cc");
    let v = api(
        server.port,
        Some("cc"),
        "/api/close_client",
        &json!({"clientId": victim.client_id}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"], json!({}), "close_client data must be {{}}: {v}");
    victim.expect_end(IO_TIMEOUT, false);

    // The closed id no longer receives; the bystander still does.
    let v = send_to_client(server.port, "cc", &victim.client_id, json!("late"));
    assert!(v["code"] == 0 || v["code"] == -1, "{v}");
    send_to_client(server.port, "cc", &bystander.client_id, json!("fine"));
    assert_eq!(bystander.recv_json()["data"], "fine");

    // Closing an id that is already gone is harmless.
    let v = api(
        server.port,
        Some("cc"),
        "/api/close_client",
        &json!({"clientId": victim.client_id}),
    );
    assert!(v["code"] == 0 || v["code"] == -1, "{v}");
    bystander.expect_nothing(QUIET_MS);
}

#[test]
fn ids_of_closed_clients_never_reach_the_connections_that_follow() {
    // New connections may reuse the slots of closed ones: a stale id must not reach them.
    let server = Server::start();
    server.register("gen");
    let old: Vec<String> = (0..8)
        .map(|_| {
            let ws = server.ws("gen");
            let id = ws.client_id.clone();
            ws.close();
            id
        })
        .collect();
    let mut new: Vec<Ws> = (0..8).map(|_| server.ws("gen")).collect();
    let old_set: BTreeSet<&String> = old.iter().collect();
    for ws in &new {
        assert!(
            !old_set.contains(&ws.client_id),
            "a clientId was handed out twice"
        );
    }
    for id in &old {
        let v = send_to_client(server.port, "gen", id, json!("stale"));
        assert!(v["code"] == 0 || v["code"] == -1, "{v}");
        let v = api(
            server.port,
            Some("gen"),
            "/api/bind_to_group",
            &json!({"clientId": id, "groupName": "g", "userId": "", "extend": ""}),
        );
        assert!(v["code"] == 0 || v["code"] == -1, "{v}");
        let v = api(
            server.port,
            Some("gen"),
            "/api/close_client",
            &json!({ "clientId": id }),
        );
        assert!(v["code"] == 0 || v["code"] == -1, "{v}");
    }
    for ws in &mut new {
        ws.expect_nothing(50);
    }
    assert!(online_list(server.port, "gen", "g").is_empty());
    for ws in &mut new {
        send_to_client(server.port, "gen", &ws.client_id.clone(), json!("live"));
        assert_eq!(ws.recv_json()["data"], "live");
    }
}

#[test]
fn systems_are_isolated() {
    let server = Server::start();
    server.register("alpha");
    server.register("beta");
    let mut a = server.ws("alpha");
    let mut a2 = server.ws("alpha");
    let mut b = server.ws("beta");
    bind(server.port, "alpha", &a2, "room", "ua2", "");
    presence(&a2.recv_json(), 1001);

    let either = |v: &Value, what: &str| {
        assert!(
            v["code"] == 0 || v["code"] == -1,
            "beta {what} on alpha's client: {v}"
        );
    };
    // beta cannot push to, bind, list or close alpha's clients.
    either(
        &send_to_client(server.port, "beta", &a.client_id, json!("intrusion")),
        "send_to_client",
    );
    either(
        &api(
            server.port,
            Some("beta"),
            "/api/send_to_clients",
            &json!({"clientIds": [a.client_id, a2.client_id], "sendUserId": "", "code": 1, "msg": "", "data": "x"}),
        ),
        "send_to_clients",
    );
    either(
        &api(
            server.port,
            Some("beta"),
            "/api/bind_to_group",
            &json!({"clientId": a.client_id, "groupName": "room", "userId": "evil", "extend": ""}),
        ),
        "bind_to_group",
    );
    let v = api(
        server.port,
        Some("beta"),
        "/api/send_to_group",
        &json!({"groupName": "room", "sendUserId": "", "code": 1, "msg": "", "data": "x"}),
    );
    assert_eq!(v["code"], 0, "beta's own (empty) group: {v}");
    assert!(
        online_list(server.port, "beta", "room").is_empty(),
        "beta sees alpha's group or bound alpha's client into its own"
    );
    either(
        &api(
            server.port,
            Some("beta"),
            "/api/close_client",
            &json!({"clientId": a.client_id}),
        ),
        "close_client",
    );
    a.expect_nothing(QUIET_MS);
    a2.expect_nothing(50);

    // alpha's view is unchanged: a is in no group, a2 alone in room, both still connected.
    assert_eq!(
        online_list(server.port, "alpha", "room"),
        vec![a2.client_id.clone()]
    );
    send_to_client(server.port, "alpha", &a.client_id, json!("mine"));
    assert_eq!(a.recv_json()["data"], "mine");

    // The same holds the other way round, and beta's own client works.
    either(
        &send_to_client(server.port, "alpha", &b.client_id, json!("intrusion")),
        "alpha send_to_client",
    );
    b.expect_nothing(QUIET_MS);
    send_to_client(server.port, "beta", &b.client_id, json!("own"));
    assert_eq!(b.recv_json()["data"], "own");
}

#[test]
fn same_group_name_in_two_systems_is_two_groups() {
    let server = Server::start();
    server.register("one");
    server.register("two");
    let mut a = server.ws("one");
    let mut b = server.ws("two");
    bind(server.port, "one", &a, "lobby", "ua", "");
    presence(&a.recv_json(), 1001);
    bind(server.port, "two", &b, "lobby", "ub", "");
    presence(&b.recv_json(), 1001);
    a.expect_nothing(QUIET_MS);
    assert_eq!(
        online_list(server.port, "one", "lobby"),
        vec![a.client_id.clone()]
    );
    assert_eq!(
        online_list(server.port, "two", "lobby"),
        vec![b.client_id.clone()]
    );
    let v = api(
        server.port,
        Some("one"),
        "/api/send_to_group",
        &json!({"groupName": "lobby", "sendUserId": "", "code": 5, "msg": "", "data": "one only"}),
    );
    message_id(&v);
    assert_eq!(a.recv_json()["data"], "one only");
    b.expect_nothing(QUIET_MS);
    // b leaving notifies nobody in system one.
    b.close();
    a.expect_nothing(QUIET_MS);
}

/// Forged ids derived from a real one: flipped characters, truncated, extended, garbage.
fn forged_ids(real: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let bytes = real.as_bytes();
    for pos in [0, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        let mut b = bytes.to_vec();
        b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
        ids.push(String::from_utf8(b).unwrap());
    }
    ids.push(real[..real.len() - 1].to_string());
    ids.push(real[..real.len() / 2].to_string());
    ids.push(format!("{real}A"));
    ids.push(format!("{real}{real}"));
    ids.push(real.to_ascii_uppercase());
    ids.push("x".to_string());
    ids.push("127.0.0.1:7900".to_string());
    ids.push("../../etc/passwd".to_string());
    ids.push("%00%ff' OR 1=1 --".to_string());
    ids.push("客户端".to_string());
    ids.push("A".repeat(59));
    ids.push("=".repeat(64));
    ids.push("A".repeat(5000));
    ids
}

#[test]
fn tampered_and_garbage_client_ids_reach_nobody() {
    let mut server = Server::start();
    server.register("t");
    let mut real = server.ws("t");
    let mut other = server.ws("t");
    bind(server.port, "t", &other, "room", "uo", "");
    presence(&other.recv_json(), 1001);
    for forged in forged_ids(&real.client_id) {
        assert_ne!(forged, real.client_id);
        for (route, body) in [
            (
                "/api/send_to_client",
                json!({"clientId": forged, "sendUserId": "", "code": 1, "msg": "", "data": "forged"}),
            ),
            (
                "/api/send_to_clients",
                json!({"clientIds": [forged], "sendUserId": "", "code": 1, "msg": "", "data": "forged"}),
            ),
            (
                "/api/bind_to_group",
                json!({"clientId": forged, "groupName": "room", "userId": "", "extend": ""}),
            ),
            ("/api/close_client", json!({ "clientId": forged })),
        ] {
            let resp = api_raw(server.port, Some("t"), route, body.to_string().as_bytes());
            assert_eq!(
                resp.status,
                200,
                "{route} with {forged:?}: status {} {:?}",
                resp.status,
                resp.text()
            );
            let v = resp.json();
            assert_envelope(&v);
            assert!(
                v["code"] == 0 || v["code"] == -1,
                "{route} with {forged:?}: {v}"
            );
        }
    }
    real.expect_nothing(QUIET_MS);
    other.expect_nothing(50);
    assert_eq!(
        online_list(server.port, "t", "room"),
        vec![other.client_id.clone()]
    );
    // Both connections are intact and the server still serves.
    send_to_client(server.port, "t", &real.client_id, json!("real"));
    assert_eq!(real.recv_json()["data"], "real");
    server.assert_serves();
}

#[test]
fn pushes_reach_clients_on_every_core() {
    // 20 connections spread over both cores by SO_REUSEPORT (all on one core: 2^-19), and every
    // API call is a new connection landing on either core: most pushes cross cores.
    let server = Server::start();
    server.register("xc");
    let mut clients: Vec<Ws> = (0..20).map(|_| server.ws("xc")).collect();
    let distinct: BTreeSet<&str> = clients.iter().map(|w| w.client_id.as_str()).collect();
    assert_eq!(distinct.len(), 20, "clientIds must be unique");

    // send_to_client to each: each receives exactly its own message.
    let mut sent = Vec::new();
    for (i, ws) in clients.iter().enumerate() {
        let v = send_to_client(server.port, "xc", &ws.client_id, json!({ "i": i }));
        sent.push(message_id(&v));
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let push = ws.recv_json();
        assert_eq!(push["data"], json!({ "i": i }), "client {i} got {push}");
        assert_eq!(push["messageId"], sent[i]);
    }
    clients[0].expect_nothing(QUIET_MS);
    for ws in &mut clients[1..] {
        ws.expect_nothing(10);
    }

    // send_to_clients to all 20: one messageId everywhere.
    let ids: Vec<String> = clients.iter().map(|w| w.client_id.clone()).collect();
    let v = api(
        server.port,
        Some("xc"),
        "/api/send_to_clients",
        &json!({"clientIds": ids, "sendUserId": "", "code": 2, "msg": "", "data": "all"}),
    );
    let id = message_id(&v);
    for ws in &mut clients {
        let push = ws.recv_json();
        assert_eq!(push["messageId"], id);
        assert_eq!(push["data"], "all");
    }

    // Bind all 20 to one group: member i sees the 1001s of members i..20.
    for (i, ws) in clients.iter().enumerate() {
        bind(
            server.port,
            "xc",
            ws,
            "all",
            &format!("user{i}"),
            &format!("ext{i}"),
        );
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut expected = ids[i..].to_vec();
        expected.sort();
        assert_eq!(presence_ids(ws, 1001, 20 - i), expected, "client {i}");
    }
    let mut all_sorted = ids.clone();
    all_sorted.sort();
    assert_eq!(online_list(server.port, "xc", "all"), all_sorted);

    // send_to_group: one frame each, one messageId.
    let v = api(
        server.port,
        Some("xc"),
        "/api/send_to_group",
        &json!({"groupName": "all", "sendUserId": "", "code": 3, "msg": "", "data": "group"}),
    );
    let id = message_id(&v);
    for ws in &mut clients {
        let push = ws.recv_json();
        assert_eq!(push["messageId"], id);
        assert_eq!(push["data"], "group");
    }

    // close_client on the odd ones: every even one gets a 1002 for each of them.
    let mut gone = Vec::new();
    for ws in clients.iter().skip(1).step_by(2) {
        let v = api(
            server.port,
            Some("xc"),
            "/api/close_client",
            &json!({"clientId": ws.client_id}),
        );
        assert_eq!(v["code"], 0, "{v}");
        gone.push(ws.client_id.clone());
    }
    gone.sort();
    for (i, ws) in clients.iter_mut().enumerate() {
        if i % 2 == 1 {
            ws.expect_end(IO_TIMEOUT, true);
        } else {
            assert_eq!(presence_ids(ws, 1002, 10), gone, "client {i}");
        }
    }
    let mut left: Vec<String> = ids.iter().step_by(2).cloned().collect();
    left.sort();
    assert_eq!(online_list(server.port, "xc", "all"), left);
    for ws in clients.iter_mut().step_by(2) {
        ws.expect_nothing(20);
    }
}

// ---- issue 12: bounded inputs ----------------------------------------------------------------

/// The upgrade headers of a valid handshake (the path carries the systemId).
const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

#[test]
fn system_ids_are_bounded_and_free_of_control_characters() {
    // A body large enough for a 1 MiB systemId, so the systemId check answers, not the 413.
    let mut server = Server::start_with(&["MaxBodyBytes = 4194304"]);
    let port = server.port;
    let huge = "s".repeat(1 << 20);
    for (system, needle) in [
        (huge.as_str(), "MaxSystemIdBytes"),
        (&"x".repeat(129), "129 bytes"),
        ("a\nb", "control"),
        ("tab\there", "control"),
    ] {
        let v = api(port, None, "/api/register", &json!({ "systemId": system }));
        assert_fails_naming(&v, "systemId");
        assert_fails_naming(&v, needle);
    }
    // At the limit, and names the original accepts (spaces, '/', Chinese), register as before.
    for system in ["x".repeat(128), "a b/c".into(), "商城-系统".into()] {
        let v = api(port, None, "/api/register", &json!({ "systemId": system }));
        assert_eq!(v["code"], 0, "{system:?}: {v}");
        let v = api(
            port,
            Some(&system),
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        assert_eq!(v["code"], 0, "{system:?}: {v}");
    }
    // The SystemId header: 5 KiB fits under MaxHeadBytes, so it is the systemId check that says no.
    let long = "h".repeat(5 << 10);
    let v = api(
        port,
        Some(&long),
        "/api/get_online_list",
        &json!({"groupName": "g"}),
    );
    assert_fails_naming(&v, "SystemId header");
    assert_fails_naming(&v, "MaxSystemIdBytes");
    // And /ws?systemId=: 400 naming it, no connection.
    let resp = http(port, "GET", &format!("/ws?systemId={long}"), &UPGRADE, b"");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("systemId is too long"),
        "{}",
        resp.text()
    );
    let resp = http(port, "GET", "/ws?systemId=a%0Ab", &UPGRADE, b"");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("control"), "{}", resp.text());
    let resp = http(
        port,
        "GET",
        &format!("/ws?systemId={}", "w".repeat(128)),
        &UPGRADE,
        b"",
    );
    assert_eq!(resp.status, 101);
    server.assert_serves();
}

#[test]
fn max_systems_bounds_register_on_a_single_node() {
    let mut server = Server::start_with(&["MaxSystems = 3"]);
    let port = server.port;
    let systems: Vec<String> = (0..3).map(|_| unique("cap")).collect();
    for system in &systems {
        server.register(system);
    }
    let v = api(
        port,
        None,
        "/api/register",
        &json!({"systemId": unique("cap")}),
    );
    assert_fails_naming(&v, "MaxSystems");
    // A known name is still "already registered", and the three keep working.
    let v = api(
        port,
        None,
        "/api/register",
        &json!({"systemId": systems[0]}),
    );
    assert_fails_naming(&v, "already registered");
    for system in &systems {
        let v = api(
            port,
            Some(system),
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        assert_eq!(v["code"], 0, "{v}");
    }
    assert!(
        server.stderr_log().contains("register refused: MaxSystems"),
        "{}",
        server.stderr_log()
    );
    server.assert_alive();
}

#[test]
fn long_fields_are_refused_naming_the_field_and_its_key() {
    let server = Server::start();
    let port = server.port;
    let system = unique("long");
    server.register(&system);
    let mut ws = server.ws(&system);
    let id = ws.client_id.clone();
    let name = |n: usize| "n".repeat(n);
    let cases = [
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": name(257), "userId": "u", "extend": ""}),
            "groupName",
            "MaxNameBytes",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": "g", "userId": name(257), "extend": ""}),
            "userId",
            "MaxNameBytes",
        ),
        (
            "/api/bind_to_group",
            json!({"clientId": id, "groupName": "g", "userId": "u", "extend": name(4097)}),
            "extend",
            "MaxExtendBytes",
        ),
        (
            "/api/send_to_client",
            json!({"clientId": id, "sendUserId": name(257), "msg": "", "data": 1}),
            "sendUserId",
            "MaxNameBytes",
        ),
        (
            "/api/send_to_client",
            json!({"clientId": id, "msg": name((64 << 10) + 1), "data": 1}),
            "msg",
            "MaxMsgBytes",
        ),
        (
            "/api/send_to_client",
            json!({"clientId": name(257), "data": 1}),
            "clientId",
            "MaxNameBytes",
        ),
        (
            "/api/send_to_clients",
            json!({"clientIds": [id, name(257)], "data": 1}),
            "clientIds[1]",
            "MaxNameBytes",
        ),
        (
            "/api/send_to_group",
            json!({"groupName": name(300), "data": 1}),
            "groupName",
            "MaxNameBytes",
        ),
        (
            "/api/send_to_user",
            json!({"userId": name(300), "data": 1}),
            "userId",
            "MaxNameBytes",
        ),
        (
            "/api/get_online_list",
            json!({"groupName": name(300)}),
            "groupName",
            "MaxNameBytes",
        ),
    ];
    for (route, body, field, key) in &cases {
        let v = api(port, Some(&system), route, body);
        assert_fails_naming(&v, field);
        assert_fails_naming(&v, key);
        assert_fails_naming(&v, "too long");
    }
    // Nothing was bound or pushed.
    ws.expect_nothing(QUIET_MS);
    let v = api(
        port,
        Some(&system),
        "/api/get_group_presence",
        &json!({"groupName": "g"}),
    );
    assert_eq!(v["data"]["count"], 0, "{v}");

    // At the limits everything goes through, and the 1001 carries the whole extend.
    let v = api(
        port,
        Some(&system),
        "/api/bind_to_group",
        &json!({"clientId": id, "groupName": name(256), "userId": name(256), "extend": "e".repeat(4096)}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let joined = presence(&ws.recv_json(), 1001);
    assert_eq!(joined["extend"].as_str().map(str::len), Some(4096));
    let msg = "m".repeat(64 << 10);
    let v = api(
        port,
        Some(&system),
        "/api/send_to_client",
        &json!({"clientId": id, "sendUserId": name(256), "msg": msg, "data": 1}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let push = ws.recv_json();
    assert_eq!(push["msg"].as_str().map(str::len), Some(64 << 10));
    assert_eq!(push["sendUserId"].as_str().map(str::len), Some(256));
}

#[test]
fn the_field_limits_are_keys() {
    let server =
        Server::start_with(&["MaxNameBytes = 60", "MaxExtendBytes = 4", "MaxMsgBytes = 2"]);
    let system = unique("keys");
    server.register(&system);
    let ws = server.ws(&system);
    let bind = |group: &str, extend: &str| {
        api(
            server.port,
            Some(&system),
            "/api/bind_to_group",
            &json!({"clientId": ws.client_id, "groupName": group, "userId": "", "extend": extend}),
        )
    };
    assert_fails_naming(&bind(&"g".repeat(61), ""), "MaxNameBytes = 60");
    assert_fails_naming(&bind("g", "12345"), "MaxExtendBytes = 4");
    assert_eq!(bind(&"g".repeat(60), "1234")["code"], 0);
    let v = api(
        server.port,
        Some(&system),
        "/api/send_to_system",
        &json!({"msg": "abc", "data": 1}),
    );
    assert_fails_naming(&v, "MaxMsgBytes = 2");
}

/// `data` as `depth` nested arrays around a 1, written by hand: a `serde_json::Value` that
/// deep would overflow the test's own stack when it is dropped.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn data_nested_deeper_than_max_json_depth_is_refused() {
    let server = Server::start();
    let system = unique("deep");
    server.register(&system);
    let mut ws = server.ws(&system);
    let push = |route: &str, target: &str, depth: usize| {
        let body = format!(r#"{{{target}"code":1,"msg":"","data":{}}}"#, nested(depth));
        let resp = api_raw(server.port, Some(&system), route, body.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    };
    let to_client = format!(r#""clientId":"{}","#, ws.client_id);
    for depth in [65, 100_000] {
        for (route, target) in [
            ("/api/send_to_client", to_client.as_str()),
            ("/api/send_to_system", ""),
        ] {
            let v = push(route, target, depth);
            assert_fails_naming(&v, "data");
            assert_fails_naming(&v, "MaxJsonDepth = 64");
        }
    }
    // An object in an array in a string is no nesting; 64 levels arrive as they were sent.
    ws.expect_nothing(QUIET_MS);
    let v = push("/api/send_to_client", &to_client, 64);
    assert_eq!(v["code"], 0, "{v}");
    let frame = ws.recv_json();
    let mut data = &frame["data"];
    for _ in 0..64 {
        data = &data[0];
    }
    assert_eq!(data, &json!(1), "{frame}");
    let v = send_to_client(
        server.port,
        &system,
        &ws.client_id,
        json!(["[[[[", {"a": "{{{{"}]),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(ws.recv_json()["data"], json!(["[[[[", {"a": "{{{{"}]));
}

/// Issue 12: every push route says how many sockets took the frame (`X-Wspush-Delivered`), and
/// the fan-out routes list the nodes that did not answer (`data.failedNodes`: `[]` on one
/// node, where every part answers). The unicast routes keep the original's `data`.
#[test]
fn push_routes_say_how_many_sockets_took_the_frame() {
    let server = Server::start();
    let port = server.port;
    let system = unique("delivered");
    server.register(&system);
    let clients: Vec<Ws> = (0..3).map(|_| server.ws(&system)).collect();
    for ws in &clients[..2] {
        bind(port, &system, ws, "g", "u", "");
    }
    let forged = forged_ids(&clients[0].client_id).remove(0);
    let push = |route: &str, body: Value| {
        let resp = api_raw(port, Some(&system), route, body.to_string().as_bytes());
        assert_eq!(resp.status, 200, "{route}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["code"], 0, "{route}: {v}");
        let delivered = resp
            .header("X-Wspush-Delivered")
            .unwrap_or_else(|| panic!("{route}: no X-Wspush-Delivered in {:?}", resp.headers))
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{route}: X-Wspush-Delivered: {e}"));
        (delivered, v["data"].clone())
    };
    let fields = |route: &str, client: Value| {
        let mut body = json!({"sendUserId": "", "code": 1, "msg": "", "data": "x"});
        match route {
            "/api/send_to_client" => body["clientId"] = client,
            "/api/send_to_clients" => body["clientIds"] = client,
            "/api/send_to_group" => body["groupName"] = json!("g"),
            "/api/send_to_user" => body["userId"] = json!("u"),
            _ => {}
        }
        body
    };
    let id0 = json!(clients[0].client_id);
    let (n, data) = push(
        "/api/send_to_client",
        fields("/api/send_to_client", id0.clone()),
    );
    assert_eq!(n, 1);
    assert_eq!(data.as_object().unwrap().len(), 1, "only messageId: {data}");
    let (n, _) = push(
        "/api/send_to_client",
        fields("/api/send_to_client", json!(forged)),
    );
    assert_eq!(n, 0, "a forged id reached nobody, and the header says so");
    let ids = json!([clients[0].client_id, clients[1].client_id, forged]);
    let (n, data) = push("/api/send_to_clients", fields("/api/send_to_clients", ids));
    assert_eq!(n, 2);
    assert_eq!(data.as_object().unwrap().len(), 1, "only messageId: {data}");
    let (n, data) = push(
        "/api/send_to_group",
        fields("/api/send_to_group", json!(null)),
    );
    assert_eq!((n, &data["failedNodes"]), (2, &json!([])), "{data}");
    assert!(data["messageId"].is_string(), "{data}");
    let (n, data) = push(
        "/api/send_to_system",
        fields("/api/send_to_system", json!(null)),
    );
    assert_eq!((n, &data["failedNodes"]), (3, &json!([])), "{data}");
    let (n, data) = push(
        "/api/send_to_user",
        fields("/api/send_to_user", json!(null)),
    );
    assert_eq!((n, &data["failedNodes"]), (2, &json!([])), "{data}");
    assert_eq!(data["count"], 2, "{data}");
    // A route that pushes nothing has no such header.
    let resp = api_raw(
        port,
        Some(&system),
        "/api/get_online_list",
        json!({"groupName": "g"}).to_string().as_bytes(),
    );
    assert_eq!(
        resp.header("X-Wspush-Delivered"),
        None,
        "{:?}",
        resp.headers
    );
}

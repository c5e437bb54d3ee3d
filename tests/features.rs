//! The routes wspush adds (issue 7, docs/api-extensions.md) on one node with `--cores 2`, with
//! real WebSocket clients: is_online, send_to_system, unbind_from_group (1003), send_to_user,
//! get_group_presence and get_system_stats, their failures, and isolation between systems.
//!
//! Clients spread over both cores by SO_REUSEPORT and every API call is a new connection that
//! lands on either core, so most operations cross cores; where a test depends on clients being
//! on both cores it connects enough of them that all on one core is below 2^-15.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The new routes, each with a body that is valid for it.
const ROUTES: [(&str, &str); 6] = [
    ("/api/is_online", r#"{"clientId":"x"}"#),
    ("/api/send_to_system", r#"{"code":1,"msg":"m","data":"d"}"#),
    (
        "/api/unbind_from_group",
        r#"{"clientId":"x","groupName":"g"}"#,
    ),
    ("/api/send_to_user", r#"{"userId":"u","data":"d"}"#),
    ("/api/get_group_presence", r#"{"groupName":"g"}"#),
    ("/api/get_system_stats", r#"{}"#),
];

fn post(server: &Server, system: &str, route: &str, body: Value) -> Value {
    api(server.port, Some(system), route, &body)
}

/// Polls `check` every 10 ms until it holds, panicking with `what` after 5 s: how a test waits
/// for a disconnect the server handles after the client is gone.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "still not true after 5 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_online(server: &Server, system: &str, client_id: &str) -> bool {
    let v = post(
        server,
        system,
        "/api/is_online",
        json!({ "clientId": client_id }),
    );
    assert_eq!(v["code"], 0, "is_online: {v}");
    let data = v["data"].as_object().expect("data is an object");
    assert_eq!(data.len(), 1, "data is exactly {{online}}: {v}");
    v["data"]["online"]
        .as_bool()
        .unwrap_or_else(|| panic!("data.online is not a bool: {v}"))
}

/// send_to_user; returns (messageId, count) after checking the answer's shape.
fn send_to_user(server: &Server, system: &str, user: &str, data: Value) -> (String, u64) {
    let v = post(
        server,
        system,
        "/api/send_to_user",
        json!({"userId": user, "sendUserId": "backend", "code": 300, "msg": "to user", "data": data}),
    );
    assert_eq!(v["code"], 0, "send_to_user: {v}");
    let obj = v["data"].as_object().expect("data is an object");
    assert_eq!(
        obj.len(),
        3,
        "data is exactly {{messageId, count, failedNodes}}: {v}"
    );
    assert_eq!(
        v["data"]["failedNodes"],
        json!([]),
        "one node: none failed: {v}"
    );
    let id = v["data"]["messageId"]
        .as_str()
        .expect("messageId")
        .to_string();
    assert_eq!(id.len(), 16, "{v}");
    (id, v["data"]["count"].as_u64().expect("count"))
}

fn unbind(server: &Server, system: &str, client_id: &str, group: &str) -> Value {
    post(
        server,
        system,
        "/api/unbind_from_group",
        json!({"clientId": client_id, "groupName": group}),
    )
}

/// get_group_presence as a sorted list of (clientId, userId, extend), after checking count.
fn presence_of(server: &Server, system: &str, group: &str) -> Vec<(String, String, String)> {
    let v = post(
        server,
        system,
        "/api/get_group_presence",
        json!({ "groupName": group }),
    );
    assert_eq!(v["code"], 0, "get_group_presence: {v}");
    let list = v["data"]["list"].as_array().expect("data.list is an array");
    assert_eq!(
        v["data"]["count"].as_u64(),
        Some(list.len() as u64),
        "count must equal the list's length: {v}"
    );
    let mut out: Vec<(String, String, String)> = list
        .iter()
        .map(|m| {
            let obj = m.as_object().expect("member is an object");
            assert_eq!(obj.len(), 3, "member is {{clientId,userId,extend}}: {m}");
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

fn stats(server: &Server, system: &str) -> (u64, u64, u64) {
    let v = post(server, system, "/api/get_system_stats", json!({}));
    assert_eq!(v["code"], 0, "get_system_stats: {v}");
    let obj = v["data"].as_object().expect("data is an object");
    assert_eq!(obj.len(), 3, "data is {{clients,groups,users}}: {v}");
    let n = |k: &str| v["data"][k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    (n("clients"), n("groups"), n("users"))
}

/// Binds and reads the 1001 every listed member (the new one included) gets.
fn bind_and_drain(server: &Server, system: &str, ws: &mut Ws, group: &str, user: &str) {
    bind(server.port, system, ws, group, user, "");
    let m = ws.recv_json();
    presence(&m, 1001);
}

/// A clientId with one character changed: still well-formed base64, no longer sealed.
fn forged(client_id: &str) -> String {
    let mut bytes = client_id.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn every_new_route_has_the_original_guard_and_envelope() {
    let mut server = Server::start();
    server.register("sys");
    for (route, body) in ROUTES {
        // No SystemId header.
        let v = api(
            server.port,
            None,
            route,
            &serde_json::from_str(body).unwrap(),
        );
        assert_fails_naming(&v, "SystemId");
        // An unregistered system.
        let v = api(
            server.port,
            Some("nobody"),
            route,
            &serde_json::from_str(body).unwrap(),
        );
        assert_fails_naming(&v, "nobody");
        // Not POST.
        let r = http(server.port, "GET", route, &[("SystemId", "sys")], b"");
        assert_eq!(r.status, 405, "GET {route}");
        // Not JSON: 400 with the envelope.
        let r = api_raw(server.port, Some("sys"), route, b"{nope");
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert_eq!(r.json()["code"], -1, "{route}");
        // Not an object.
        let v = api_raw(server.port, Some("sys"), route, b"[1,2]").json();
        assert_eq!(v["code"], -1, "{route}: {v}");
        // The valid body succeeds.
        let v = post(&server, "sys", route, serde_json::from_str(body).unwrap());
        assert_eq!(v["code"], 0, "{route}: {v}");
        assert_eq!(v["msg"], "success", "{route}: {v}");
    }
    // Required fields, missing or empty, are named; so is a field of the wrong type.
    for (route, field, body) in [
        ("/api/is_online", "clientId", json!({})),
        ("/api/is_online", "clientId", json!({"clientId": ""})),
        ("/api/is_online", "clientId", json!({"clientId": 5})),
        (
            "/api/unbind_from_group",
            "clientId",
            json!({"groupName": "g"}),
        ),
        (
            "/api/unbind_from_group",
            "groupName",
            json!({"clientId": "x"}),
        ),
        (
            "/api/unbind_from_group",
            "groupName",
            json!({"clientId": "x", "groupName": ""}),
        ),
        ("/api/send_to_user", "userId", json!({"data": "d"})),
        ("/api/send_to_user", "userId", json!({"userId": ""})),
        ("/api/send_to_user", "userId", json!({"userId": ["u"]})),
        (
            "/api/send_to_user",
            "code",
            json!({"userId": "u", "code": "x"}),
        ),
        ("/api/send_to_system", "code", json!({"code": "x"})),
        ("/api/send_to_system", "msg", json!({"msg": 1})),
        ("/api/get_group_presence", "groupName", json!({})),
        (
            "/api/get_group_presence",
            "groupName",
            json!({"groupName": 7}),
        ),
    ] {
        let v = post(&server, "sys", route, body.clone());
        assert_fails_naming(&v, field);
        assert_eq!(v["data"], json!([]), "{route} {body}: {v}");
    }
    server.assert_serves();
}

#[test]
fn is_online_is_true_only_for_a_live_client_of_the_asking_system() {
    let server = Server::start();
    server.register("a");
    server.register("b");
    let mut clients: Vec<Ws> = (0..6).map(|_| server.ws("a")).collect();
    let other = server.ws("b");
    for c in &clients {
        assert!(is_online(&server, "a", &c.client_id), "{}", c.client_id);
        // Isolation: another system's client does not exist for this one.
        assert!(!is_online(&server, "b", &c.client_id));
    }
    assert!(is_online(&server, "b", &other.client_id));
    assert!(!is_online(&server, "a", &other.client_id));
    // Forged, garbage and well-formed-but-unsealed ids are offline, not errors.
    assert!(!is_online(&server, "a", &forged(&clients[0].client_id)));
    assert!(!is_online(&server, "a", "not-a-client-id"));
    assert!(!is_online(&server, "a", &"A".repeat(59)));

    // close_client: offline as soon as it answers (the connection is on its way out).
    let kicked = clients.remove(0);
    let v = post(
        &server,
        "a",
        "/api/close_client",
        json!({"clientId": kicked.client_id}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert!(!is_online(&server, "a", &kicked.client_id));
    let mut kicked = kicked;
    kicked.expect_end(IO_TIMEOUT, true);
    assert!(!is_online(&server, "a", &kicked.client_id));

    // A close frame, a FIN and a reset: offline once the server has seen it.
    for (i, how) in ["close", "fin", "rst"].into_iter().enumerate() {
        let gone = clients.remove(0);
        let id = gone.client_id.clone();
        match how {
            "close" => gone.close(),
            "fin" => gone.drop_abruptly(false),
            _ => gone.drop_abruptly(true),
        }
        wait_until(&format!("client {i} offline after {how}"), || {
            !is_online(&server, "a", &id)
        });
    }
    // The others are untouched.
    for c in &clients {
        assert!(is_online(&server, "a", &c.client_id));
    }
}

#[test]
fn send_to_system_reaches_every_client_of_the_system_and_no_other() {
    let server = Server::start();
    server.register("a");
    server.register("b");
    let mut mine: Vec<Ws> = (0..16).map(|_| server.ws("a")).collect();
    let mut theirs: Vec<Ws> = (0..3).map(|_| server.ws("b")).collect();
    // Group membership and userIds make no difference to a system push.
    bind_and_drain(&server, "a", &mut mine[0], "room", "u0");

    let v = post(
        &server,
        "a",
        "/api/send_to_system",
        json!({"sendUserId": "ops", "code": 900, "msg": "maintenance", "data": {"at": [22, 0]}}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let data = v["data"].as_object().expect("data is an object");
    assert_eq!(
        data.len(),
        2,
        "data is exactly {{messageId, failedNodes}}: {v}"
    );
    assert_eq!(
        v["data"]["failedNodes"],
        json!([]),
        "one node: none failed: {v}"
    );
    let id = v["data"]["messageId"].as_str().unwrap().to_string();
    for ws in &mut mine {
        let m = ws.recv_json();
        assert_push_shape(&m);
        assert_eq!(m["messageId"], id.as_str(), "{m}");
        assert_eq!(m["sendUserId"], "ops");
        assert_eq!(m["code"], 900);
        assert_eq!(m["msg"], "maintenance");
        assert_eq!(m["data"], json!({"at": [22, 0]}));
    }
    for ws in &mut theirs {
        ws.expect_nothing(QUIET_MS);
    }
    for ws in &mut mine {
        ws.expect_nothing(20);
    }

    // Optional fields: a string data stays a string; absent fields take the original's defaults.
    let v = post(&server, "b", "/api/send_to_system", json!({"data": "hi"}));
    assert_eq!(v["code"], 0, "{v}");
    for ws in &mut theirs {
        let m = ws.recv_json();
        assert_eq!(
            (
                m["code"].clone(),
                m["sendUserId"].clone(),
                m["data"].clone()
            ),
            (json!(0), json!(""), json!("hi")),
            "{m}"
        );
    }
    mine[0].expect_nothing(QUIET_MS);

    // A system without clients: success, nothing delivered.
    server.register("empty");
    let v = post(&server, "empty", "/api/send_to_system", json!({"data": 1}));
    assert_eq!(v["code"], 0, "{v}");

    // A client that left receives nothing and does not break the push for the rest.
    let gone = mine.pop().unwrap();
    let gone_id = gone.client_id.clone();
    gone.drop_abruptly(true);
    wait_until("the reset client is offline", || {
        !is_online(&server, "a", &gone_id)
    });
    let v = post(
        &server,
        "a",
        "/api/send_to_system",
        json!({"data": "again"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    for ws in &mut mine {
        assert_eq!(ws.recv_json()["data"], "again");
    }
}

#[test]
fn unbind_from_group_pushes_1003_to_the_remaining_members() {
    let server = Server::start();
    server.register("sys");
    server.register("other");
    let mut clients: Vec<Ws> = (0..4).map(|_| server.ws("sys")).collect();
    // c0..c2 in "room", with user data; c1 also in "lobby" with c3.
    for i in 0..3 {
        bind(
            server.port,
            "sys",
            &clients[i],
            "room",
            &format!("u{i}"),
            &format!("e{i}"),
        );
        for c in clients.iter_mut().take(i + 1) {
            presence(&c.recv_json(), 1001);
        }
    }
    bind(server.port, "sys", &clients[3], "lobby", "u3", "e3");
    presence(&clients[3].recv_json(), 1001);
    bind(server.port, "sys", &clients[1], "lobby", "u1", "e1");
    for i in [1, 3] {
        presence(&clients[i].recv_json(), 1001);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.client_id.clone()).collect();

    let v = unbind(&server, "sys", &ids[1], "room");
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"], json!([]), "{v}");
    for i in [0, 2] {
        let m = clients[i].recv_json();
        let data = presence(&m, 1003);
        assert_eq!(
            data,
            json!({"clientId": ids[1], "userId": "u1", "extend": "e1"}),
            "{m}"
        );
        let msg = m["msg"].as_str().unwrap();
        assert!(
            msg.contains("left"),
            "1003 msg should say the client left: {m}"
        );
    }
    // The one that left hears nothing; lobby hears nothing; nobody hears twice.
    for c in &mut clients {
        c.expect_nothing(QUIET_MS);
    }
    // It stays connected and reachable, and still in its other group.
    assert!(is_online(&server, "sys", &ids[1]));
    let v = post(
        &server,
        "sys",
        "/api/send_to_client",
        json!({"clientId": ids[1], "data": "still here"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(clients[1].recv_json()["data"], "still here");
    assert_eq!(
        online_list(server.port, "sys", "room"),
        sorted(&[&ids[0], &ids[2]])
    );
    assert_eq!(
        online_list(server.port, "sys", "lobby"),
        sorted(&[&ids[1], &ids[3]])
    );
    let v = post(
        &server,
        "sys",
        "/api/send_to_group",
        json!({"groupName": "room", "data": "room only"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    for i in [0, 2] {
        assert_eq!(clients[i].recv_json()["data"], "room only");
    }
    clients[1].expect_nothing(QUIET_MS);

    // Not a member (any more), unknown, forged, another system's: `[]`, nothing pushed.
    for (system, id) in [
        ("sys", ids[1].clone()),
        ("sys", ids[3].clone()),
        ("sys", forged(&ids[0])),
        ("sys", "nope".to_string()),
        ("other", ids[0].clone()),
    ] {
        let v = unbind(&server, system, &id, "room");
        assert_eq!(v["code"], 0, "unbind {id} in {system}: {v}");
        assert_eq!(v["data"], json!([]), "{v}");
    }
    for c in &mut clients {
        c.expect_nothing(QUIET_MS);
    }
    assert_eq!(
        online_list(server.port, "sys", "room"),
        sorted(&[&ids[0], &ids[2]])
    );

    // Binding again is a first bind: 1001 to every member again.
    bind(server.port, "sys", &clients[1], "room", "u1", "e1b");
    for i in [0, 1, 2] {
        let data = presence(&clients[i].recv_json(), 1001);
        assert_eq!(data["clientId"], ids[1].as_str());
        assert_eq!(data["extend"], "e1b");
    }

    // The last member leaving empties the group: the 1003 goes to nobody.
    unbind(&server, "sys", &ids[3], "lobby");
    presence(&clients[1].recv_json(), 1003);
    unbind(&server, "sys", &ids[1], "lobby");
    for c in &mut clients {
        c.expect_nothing(QUIET_MS);
    }
    assert!(online_list(server.port, "sys", "lobby").is_empty());

    // After an unbind, a disconnect sends 1002 only to the groups the client is still in.
    unbind(&server, "sys", &ids[0], "room");
    for i in [1, 2] {
        presence(&clients[i].recv_json(), 1003);
    }
    let c0 = clients.remove(0);
    c0.close();
    for c in &mut clients {
        c.expect_nothing(QUIET_MS);
    }
}

#[test]
fn send_to_user_reaches_every_connection_of_the_user_across_cores() {
    let server = Server::start();
    server.register("a");
    server.register("b");
    // 16 connections of alice (all on one core: 2^-15), in different groups; 4 of bob; 4
    // without a userId; and an "alice" of another system.
    let mut alice: Vec<Ws> = (0..16).map(|_| server.ws("a")).collect();
    let mut bob: Vec<Ws> = (0..4).map(|_| server.ws("a")).collect();
    let mut nobody: Vec<Ws> = (0..4).map(|_| server.ws("a")).collect();
    let mut foreign = server.ws("b");
    for (i, ws) in alice.iter_mut().enumerate() {
        bind_and_drain(&server, "a", ws, &format!("alice-{i}"), "alice");
    }
    for (i, ws) in bob.iter_mut().enumerate() {
        bind_and_drain(&server, "a", ws, &format!("bob-{i}"), "bob");
    }
    for (i, ws) in nobody.iter_mut().enumerate() {
        bind_and_drain(&server, "a", ws, &format!("nobody-{i}"), "");
    }
    bind_and_drain(&server, "b", &mut foreign, "g", "alice");

    let (id, count) = send_to_user(&server, "a", "alice", json!({"n": 1}));
    assert_eq!(count, 16);
    for ws in &mut alice {
        let m = ws.recv_json();
        assert_push_shape(&m);
        assert_eq!(m["messageId"], id.as_str());
        assert_eq!(m["sendUserId"], "backend");
        assert_eq!(m["code"], 300);
        assert_eq!(m["msg"], "to user");
        assert_eq!(m["data"], json!({"n": 1}));
        ws.expect_nothing(20);
    }
    for ws in bob.iter_mut().chain(nobody.iter_mut()) {
        ws.expect_nothing(20);
    }
    foreign.expect_nothing(20);

    let (_, count) = send_to_user(&server, "a", "bob", json!("b"));
    assert_eq!(count, 4);
    for ws in &mut bob {
        assert_eq!(ws.recv_json()["data"], "b");
    }
    // A user nobody is bound as: success, count 0. "" is not a user.
    assert_eq!(send_to_user(&server, "a", "carol", json!(0)).1, 0);
    assert_eq!(send_to_user(&server, "b", "bob", json!(0)).1, 0);
    assert_eq!(send_to_user(&server, "b", "alice", json!("f")).1, 1);
    assert_eq!(foreign.recv_json()["data"], "f");

    // The latest bind's userId wins: alice[0] becomes carol, alice[1] has no userId any more
    // (a bind without userId sets it to "", as in the original), bob[0] becomes alice.
    bind(server.port, "a", &alice[0], "alice-0", "carol", "");
    bind(server.port, "a", &alice[1], "alice-1", "", "");
    bind_and_drain(&server, "a", &mut bob[0], "extra", "alice");
    let (_, count) = send_to_user(&server, "a", "alice", json!(2));
    assert_eq!(count, 15);
    for ws in alice[2..].iter_mut().chain(bob.iter_mut().take(1)) {
        assert_eq!(ws.recv_json()["data"], 2);
    }
    alice[0].expect_nothing(QUIET_MS);
    alice[1].expect_nothing(20);
    let (_, count) = send_to_user(&server, "a", "carol", json!(3));
    assert_eq!(count, 1);
    assert_eq!(alice[0].recv_json()["data"], 3);
    assert_eq!(send_to_user(&server, "a", "bob", json!(4)).1, 3);
    for ws in &mut bob[1..] {
        assert_eq!(ws.recv_json()["data"], 4);
    }

    // Unbinding from every group keeps the userId: it belongs to the connection.
    unbind(&server, "a", &alice[2].client_id, "alice-2");
    // Disconnects leave the index, however they happen.
    let gone: Vec<Ws> = alice.drain(12..).collect();
    let gone_ids: Vec<String> = gone.iter().map(|w| w.client_id.clone()).collect();
    for (i, ws) in gone.into_iter().enumerate() {
        match i {
            0 => ws.close(),
            1 => ws.drop_abruptly(false),
            2 => ws.drop_abruptly(true),
            _ => {
                let v = post(
                    &server,
                    "a",
                    "/api/close_client",
                    json!({"clientId": ws.client_id}),
                );
                assert_eq!(v["code"], 0, "{v}");
            }
        }
    }
    wait_until("the four alice connections are gone", || {
        gone_ids.iter().all(|id| !is_online(&server, "a", id))
    });
    // A kicked connection may take one more frame after its close frame went out (it is
    // counted, then cut): poll until only the live ones count.
    wait_until("send_to_user counts only live connections", || {
        let (_, count) = send_to_user(&server, "a", "alice", json!(5));
        count == 11
    });
    // The 10 left of alice[2..12] and bob[0] got every probe of the wait, then exactly one more.
    let (id, count) = send_to_user(&server, "a", "alice", json!(6));
    assert_eq!(count, 11);
    for ws in alice[2..].iter_mut().chain(bob.iter_mut().take(1)) {
        loop {
            let m = ws.recv_json();
            if m["data"] == 5 {
                continue;
            }
            assert_eq!(
                (m["data"].clone(), m["messageId"].clone()),
                (json!(6), json!(id))
            );
            break;
        }
        ws.expect_nothing(20);
    }
}

#[test]
fn group_presence_lists_members_with_their_latest_user_data() {
    let server = Server::start();
    server.register("sys");
    server.register("other");
    let empty = post(
        &server,
        "sys",
        "/api/get_group_presence",
        json!({"groupName": "room"}),
    );
    assert_eq!(empty["data"], json!({"count": 0, "list": []}), "{empty}");

    // Eight members over both cores, with and without user data; the same group name in another
    // system is another group.
    let mut clients: Vec<Ws> = (0..8).map(|_| server.ws("sys")).collect();
    let mut stranger = server.ws("other");
    bind_and_drain(&server, "other", &mut stranger, "room", "s");
    let mut want = Vec::new();
    for (i, ws) in clients.iter().enumerate() {
        let (user, extend) = if i.is_multiple_of(3) {
            (String::new(), String::new())
        } else {
            (format!("user{i}"), format!("{{\"seat\":{i}}}"))
        };
        bind(server.port, "sys", ws, "room", &user, &extend);
        want.push(member(ws, &user, &extend));
    }
    want.sort();
    assert_eq!(presence_of(&server, "sys", "room"), want);
    assert_eq!(
        presence_of(&server, "other", "room"),
        vec![member(&stranger, "s", "")]
    );
    // The member list agrees with get_online_list.
    let ids: Vec<String> = want.iter().map(|m| m.0.clone()).collect();
    assert_eq!(online_list(server.port, "sys", "room"), ids);

    // A rebind changes the data shown (latest bind wins), not the membership.
    bind(server.port, "sys", &clients[1], "room", "renamed", "new");
    bind(server.port, "sys", &clients[2], "elsewhere", "moved", "x");
    let mut want: Vec<(String, String, String)> = want
        .into_iter()
        .map(|m| {
            if m.0 == clients[1].client_id {
                member(&clients[1], "renamed", "new")
            } else if m.0 == clients[2].client_id {
                member(&clients[2], "moved", "x")
            } else {
                m
            }
        })
        .collect();
    want.sort();
    assert_eq!(presence_of(&server, "sys", "room"), want);

    // Unbind and disconnect take members out.
    unbind(&server, "sys", &clients[3].client_id, "room");
    let gone = clients.remove(4);
    let gone_id = gone.client_id.clone();
    gone.drop_abruptly(true);
    let removed = [clients[3].client_id.clone(), gone_id];
    want.retain(|m| !removed.contains(&m.0));
    wait_until("presence without the unbound and the disconnected", || {
        presence_of(&server, "sys", "room") == want
    });
    assert_eq!(
        presence_of(&server, "sys", "elsewhere"),
        vec![member(&clients[2], "moved", "x")]
    );
}

#[test]
fn system_stats_count_clients_and_distinct_groups_and_users() {
    let server = Server::start();
    server.register("sys");
    server.register("other");
    assert_eq!(stats(&server, "sys"), (0, 0, 0));

    let mut clients: Vec<Ws> = (0..10).map(|_| server.ws("sys")).collect();
    let mut others: Vec<Ws> = (0..3).map(|_| server.ws("other")).collect();
    assert_eq!(stats(&server, "sys"), (10, 0, 0));
    // "room" spans both cores (c0..c5): one group. u1 is bound on three connections: one user.
    // c6 binds with no userId: a group, no user. c7..c9 are bound to nothing.
    for (i, user) in ["u1", "u2", "u1", "u3", "u1", "u2"].iter().enumerate() {
        bind_and_drain(&server, "sys", &mut clients[i], "room", user);
    }
    bind(server.port, "sys", &clients[0], "lobby", "u1", "");
    bind(server.port, "sys", &clients[6], "solo", "", "");
    // Another system's groups and users (same names) do not count here.
    for (i, ws) in others.iter_mut().enumerate() {
        bind_and_drain(&server, "other", ws, &format!("g{i}"), "u1");
    }
    assert_eq!(stats(&server, "sys"), (10, 3, 3));
    assert_eq!(stats(&server, "other"), (3, 3, 1));

    // An unbind empties "solo"; a rebind turns u3 into u2.
    unbind(&server, "sys", &clients[6].client_id, "solo");
    bind(server.port, "sys", &clients[3], "room", "u2", "");
    assert_eq!(stats(&server, "sys"), (10, 2, 2));

    // Disconnects: clients, and the users only they were.
    let gone: Vec<Ws> = clients.drain(0..2).collect();
    for ws in gone {
        ws.drop_abruptly(false);
    }
    let closed = clients.remove(7);
    closed.close();
    // Left: c2 (u1, room), c3 (u2, room), c4 (u1), c5 (u2), c6, c7, c8. "lobby" went with c0.
    wait_until("stats after three disconnects", || {
        stats(&server, "sys") == (7, 1, 2)
    });
    // Both u1 connections left: u1 is gone.
    for i in [0, 2] {
        let id = clients[i].client_id.clone();
        let v = post(&server, "sys", "/api/close_client", json!({"clientId": id}));
        assert_eq!(v["code"], 0, "{v}");
    }
    wait_until("stats after u1 left", || stats(&server, "sys") == (5, 1, 1));
    // The body must be a JSON object (fields are ignored).
    let v = post(
        &server,
        "sys",
        "/api/get_system_stats",
        json!({"ignored": 1}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let r = api_raw(server.port, Some("sys"), "/api/get_system_stats", b"");
    assert_eq!(r.status, 400, "{}", r.text());
}

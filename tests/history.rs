//! Issue 15, group history on one node: offsets and epochs on the pushes of systems registered
//! with `history` (and on nobody else's), get_group_history with `since` and `limit`, the
//! bounds (size, age, bytes) evicting the oldest first, and bind_to_group with `since`
//! replaying exactly what a reconnecting client missed, also while pushes keep coming.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const NODE: &[&str] = &[
    "HistorySize = 20",
    "HistoryTtl = 60",
    "HistoryMaxBytes = 4000",
];

fn register(port: u16, system: &str, history: Value) -> Value {
    api(
        port,
        None,
        "/api/register",
        &json!({"systemId": system, "history": history}),
    )
}

fn send(port: u16, system: &str, group: &str, data: Value) -> Value {
    let v = api(
        port,
        Some(system),
        "/api/send_to_group",
        &json!({"sendUserId": "s", "groupName": group, "code": 7, "msg": "m", "data": data}),
    );
    assert_eq!(v["code"], 0, "send_to_group: {v}");
    v
}

fn history(port: u16, system: &str, body: Value) -> Value {
    let v = api(port, Some(system), "/api/get_group_history", &body);
    assert_eq!(v["code"], 0, "get_group_history {body}: {v}");
    v["data"].clone()
}

fn offsets(list: &Value) -> Vec<u64> {
    let list = list.as_array().expect("list");
    list.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
}

/// The next push that is not a 1001/1002 of the group.
#[test]
fn only_history_systems_get_offsets_and_epochs() {
    let server = Server::start_with(NODE);
    assert_eq!(
        register(server.port, "hist", json!({"size": 10}))["code"],
        0
    );
    server.register("plain");
    let mut h = server.ws("hist");
    let mut p = server.ws("plain");
    bind(server.port, "hist", &h, "room", "u", "");
    bind(server.port, "plain", &p, "room", "u", "");
    // The 1001 of a history group is a plain push: only send_to_group is numbered.
    assert_push_shape(&h.recv_json());
    assert_push_shape(&p.recv_json());
    let mut epoch = None;
    for i in 1..=3u64 {
        let sent = send(server.port, "hist", "room", json!({"n": i}));
        let v = h.recv_json();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "code",
                "data",
                "epoch",
                "messageId",
                "msg",
                "offset",
                "sendUserId"
            ]
        );
        assert_eq!(v["offset"], i, "{v}");
        assert_eq!(v["messageId"], sent["data"]["messageId"]);
        assert_eq!(
            (v["code"].clone(), v["data"]["n"].clone()),
            (json!(7), json!(i))
        );
        let e = v["epoch"].as_str().unwrap().to_string();
        assert_eq!(e.len(), 16, "{v}");
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "the epoch stays");
        send(server.port, "plain", "room", json!({"n": i}));
        assert_push_shape(&p.recv_json());
    }
    // A system without history has none to read or recover.
    let v = api(
        server.port,
        Some("plain"),
        "/api/get_group_history",
        &json!({"groupName": "room"}),
    );
    assert_fails_naming(&v, "history");
    let v = bind_since(
        server.port,
        "plain",
        &p,
        "room",
        json!({"offset": 1, "epoch": "x"}),
    );
    assert_fails_naming(&v, "history");
    // Without since, bind answers as the original: [].
    let v = api(
        server.port,
        Some("hist"),
        "/api/bind_to_group",
        &json!({"clientId": h.client_id, "groupName": "other"}),
    );
    assert_eq!(v["data"], json!([]), "{v}");
}

#[test]
fn register_checks_and_clamps_history() {
    let server = Server::start_with(NODE);
    let port = server.port;
    assert_fails_naming(&register(port, "a", json!({"size": 0})), "history.size");
    assert_fails_naming(&register(port, "a", json!({"size": "x"})), "history.size");
    assert_fails_naming(&register(port, "a", json!({"size": -3})), "history.size");
    assert_fails_naming(
        &register(port, "a", json!({"ttlSeconds": 5})),
        "history.size",
    );
    assert_fails_naming(
        &register(port, "a", json!({"size": 3, "ttlSeconds": 0})),
        "history.ttlSeconds",
    );
    assert_fails_naming(&register(port, "a", json!(5)), "history");
    // Asked 1000, the node keeps HistorySize = 20.
    assert_eq!(register(port, "big", json!({"size": 1000}))["code"], 0);
    for i in 0..25 {
        send(port, "big", "g", json!(i));
    }
    let data = history(port, "big", json!({"groupName": "g"}));
    assert_eq!(data["offset"], 25);
    assert_eq!(offsets(&data["list"]), (6..=25).collect::<Vec<_>>());
    assert_eq!(data["list"][0]["data"], 5);
    // A node with history off refuses a register with history.
    let off = Server::start();
    assert_fails_naming(&register(off.port, "h", json!({"size": 3})), "history");
    off.register("fine");
}

#[test]
fn get_group_history_reads_from_a_position() {
    let server = Server::start_with(NODE);
    let port = server.port;
    assert_eq!(
        register(port, "s", json!({"size": 10, "ttlSeconds": 60}))["code"],
        0
    );
    let empty = history(port, "s", json!({"groupName": "g"}));
    assert_eq!(
        (empty["offset"].clone(), empty["list"].clone()),
        (json!(0), json!([]))
    );
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(send(port, "s", "g", json!({"i": i}))["data"]["messageId"].clone());
    }
    let all = history(port, "s", json!({"groupName": "g"}));
    assert_eq!(
        all["epoch"], empty["epoch"],
        "the epoch read first is the one pushes get"
    );
    assert_eq!(all["offset"], 5);
    assert_eq!(offsets(&all["list"]), [1, 2, 3, 4, 5]);
    for (push, id) in all["list"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(&push["messageId"], id);
        assert_eq!(
            (push["code"].clone(), push["msg"].clone()),
            (json!(7), json!("m"))
        );
        assert_eq!(push["sendUserId"], "s");
    }
    let epoch = all["epoch"].clone();
    let since =
        |offset: u64| json!({"groupName": "g", "since": {"offset": offset, "epoch": epoch}});
    let after2 = history(port, "s", since(2));
    assert_eq!(
        (after2["recovered"].clone(), offsets(&after2["list"])),
        (json!(true), vec![3, 4, 5])
    );
    let mut limited = since(2);
    limited["limit"] = json!(2);
    assert_eq!(offsets(&history(port, "s", limited)["list"]), [3, 4]);
    assert_eq!(
        offsets(&history(port, "s", since(5))["list"]),
        Vec::<u64>::new()
    );
    let other = history(
        port,
        "s",
        json!({"groupName": "g", "since": {"offset": 2, "epoch": "nope"}}),
    );
    assert_eq!(other["recovered"], false);
    assert_eq!(other["epoch"], epoch);
    let v = api(
        port,
        Some("s"),
        "/api/get_group_history",
        &json!({"groupName": "g", "since": {"offset": 1}}),
    );
    assert_fails_naming(&v, "since.epoch");
    let v = api(port, Some("s"), "/api/get_group_history", &json!({}));
    assert_fails_naming(&v, "groupName");
    // Another group is another stream.
    assert_eq!(history(port, "s", json!({"groupName": "h"}))["offset"], 0);
}

#[test]
fn size_age_and_bytes_evict_the_oldest_first() {
    let server = Server::start_with(NODE);
    let port = server.port;
    assert_eq!(
        register(port, "short", json!({"size": 3, "ttlSeconds": 2}))["code"],
        0
    );
    for i in 1..=5 {
        send(port, "short", "g", json!(i));
    }
    assert_eq!(
        offsets(&history(port, "short", json!({"groupName": "g"}))["list"]),
        [3, 4, 5]
    );
    std::thread::sleep(Duration::from_millis(2300));
    let aged = history(port, "short", json!({"groupName": "g"}));
    assert_eq!(
        (aged["offset"].clone(), aged["list"].clone()),
        (json!(5), json!([]))
    );
    send(port, "short", "g", json!(6));
    assert_eq!(
        offsets(&history(port, "short", json!({"groupName": "g"}))["list"]),
        [6]
    );
    // HistoryMaxBytes = 4000: pushes of about 1100 bytes, three fit.
    assert_eq!(register(port, "bulky", json!({"size": 20}))["code"], 0);
    for _ in 0..6 {
        send(port, "bulky", "g", json!("x".repeat(1000)));
    }
    assert_eq!(
        offsets(&history(port, "bulky", json!({"groupName": "g"}))["list"]),
        [4, 5, 6]
    );
}

#[test]
fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let server = Server::start_cores(NODE, 4);
    let port = server.port;
    assert_eq!(register(port, "s", json!({"size": 20}))["code"], 0);
    let mut first = server.ws("s");
    bind(port, "s", &first, "room", "u", "");
    send(port, "s", "room", json!(1));
    send(port, "s", "room", json!(2));
    assert_eq!(first.next_push()["offset"], 1);
    let seen = first.next_push();
    assert_eq!(seen["offset"], 2);
    first.close();
    for i in 3..=5 {
        send(port, "s", "room", json!(i));
    }
    let mut again = server.ws("s");
    let v = bind_since(
        port,
        "s",
        &again,
        "room",
        json!({"offset": 2, "epoch": seen["epoch"]}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"], json!({"recovered": true}));
    send(port, "s", "room", json!(6));
    let got: Vec<Value> = (0..4).map(|_| again.next_push()).collect();
    assert_eq!(
        got.iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    assert_eq!(
        got.iter().map(|p| p["data"].clone()).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    again.expect_nothing(300);
    // Evicted, or another epoch: recovered false, and nothing replayed.
    for _ in 0..25 {
        send(port, "s", "room", json!("more"));
    }
    let mut late = server.ws("s");
    let v = bind_since(
        port,
        "s",
        &late,
        "room",
        json!({"offset": 2, "epoch": seen["epoch"]}),
    );
    assert_eq!(v["data"], json!({"recovered": false}), "{v}");
    let mut stranger = server.ws("s");
    let v = bind_since(
        port,
        "s",
        &stranger,
        "room",
        json!({"offset": 30, "epoch": "0000"}),
    );
    assert_eq!(v["data"], json!({"recovered": false}), "{v}");
    send(port, "s", "room", json!("live"));
    assert_eq!(late.next_push()["offset"], 32);
    assert_eq!(stranger.next_push()["offset"], 32);
    late.expect_nothing(200);
}

#[test]
fn recovery_while_pushes_keep_coming_has_no_gap_and_no_duplicate() {
    let server = Server::start_cores(NODE, 4);
    let port = server.port;
    assert_eq!(register(port, "s", json!({"size": 20}))["code"], 0);
    for round in 0..5 {
        let group = format!("busy{round}");
        send(port, "s", &group, json!(0));
        let epoch = history(port, "s", json!({"groupName": group}))["epoch"].clone();
        let pusher = {
            let group = group.clone();
            std::thread::spawn(move || {
                for i in 1..=15 {
                    send(port, "s", &group, json!(i));
                }
            })
        };
        let mut ws = server.ws("s");
        let v = bind_since(port, "s", &ws, &group, json!({"offset": 1, "epoch": epoch}));
        assert_eq!(v["data"], json!({"recovered": true}), "{v}");
        pusher.join().unwrap();
        let got: Vec<u64> = (2..=16)
            .map(|_| ws.next_push()["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (2..=16).collect::<Vec<_>>(), "round {round}");
        ws.expect_nothing(200);
    }
}

#[test]
fn get_group_history_wants_the_api_key_like_every_route() {
    let key = "history-test-key-0123456789";
    let line = format!("ApiKey = {key}");
    let server = Server::start_with(&["HistorySize = 5", &line]);
    let body = json!({"groupName": "g"}).to_string();
    let json = ("Content-Type", "application/json");
    let without = http(
        server.port,
        "POST",
        "/api/get_group_history",
        &[json, ("SystemId", "s")],
        body.as_bytes(),
    );
    assert_eq!(without.status, 403, "{}", without.text());
    let auth = format!("apikey {key}");
    let with = |route: &str, body: &Value| {
        let headers = [json, ("SystemId", "s"), ("Authorization", auth.as_str())];
        http(
            server.port,
            "POST",
            route,
            &headers,
            body.to_string().as_bytes(),
        )
        .json()
    };
    let v = with(
        "/api/register",
        &json!({"systemId": "s", "history": {"size": 9}}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let v = with("/api/get_group_history", &json!({"groupName": "g"}));
    assert_eq!(
        (v["code"].clone(), v["data"]["offset"].clone()),
        (json!(0), json!(0)),
        "{v}"
    );
}

/// The value of an unlabelled sample `name` in a `/metrics` text.
fn metric(port: u16, name: &str) -> f64 {
    let text = http(port, "GET", "/metrics", &[], b"").text();
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn metrics_count_the_streams_and_what_they_keep() {
    let server = Server::start_with(NODE);
    let port = server.port;
    assert_eq!(metric(port, "wspush_history_streams"), 0.0);
    assert_eq!(register(port, "s", json!({"size": 4}))["code"], 0);
    for g in ["a", "b"] {
        for i in 0..6 {
            send(port, "s", g, json!(i));
        }
    }
    assert_eq!(metric(port, "wspush_history_streams"), 2.0);
    assert_eq!(metric(port, "wspush_history_messages"), 8.0);
    let bytes = metric(port, "wspush_history_bytes");
    assert!((8.0 * 100.0..8.0 * 200.0).contains(&bytes), "{bytes}");
}

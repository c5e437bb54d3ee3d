//! Issue 15, offline messages on one node: send_to_user with `store` keeps a push for a user
//! with no connection, the user's next bind gets it once, in order; `"always"` delivers and
//! keeps; OfflineMax evicts the oldest first; get_system_stats counts what is kept.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const NODE: &[&str] = &["OfflineMax = 3", "OfflineTtl = 60"];

fn send(port: u16, system: &str, user: &str, store: Value, n: u64) -> Value {
    let body = json!({"userId": user, "code": 7, "msg": "m", "data": {"n": n}, "store": store});
    api(port, Some(system), "/api/send_to_user", &body)
}

fn kept(port: u16, system: &str) -> Value {
    api(port, Some(system), "/api/get_system_stats", &json!({}))["data"]["offlineMessages"].clone()
}

#[test]
fn stored_while_offline_delivered_once_oldest_evicted() {
    let server = Server::start_with(NODE);
    server.register("s");
    for n in 1..=5 {
        let v = send(server.port, "s", "u", json!(true), n);
        assert_eq!(
            (v["code"].clone(), v["data"]["count"].clone()),
            (json!(0), json!(0)),
            "{v}"
        );
    }
    // OfflineMax = 3: the two oldest went.
    assert_eq!(kept(server.port, "s"), 3);
    let mut a = server.ws("s");
    bind(server.port, "s", &a, "room", "u", "");
    assert_eq!(a.next_ns(3), [3, 4, 5]);
    assert_eq!(kept(server.port, "s"), 0);
    // Once: another connection of the user gets nothing more.
    let mut b = server.ws("s");
    bind(server.port, "s", &b, "other", "u", "");
    presence(&b.recv_json(), 1001);
    b.expect_nothing(300);
    // Online: store:true delivers and keeps nothing; "always" delivers and keeps.
    send(server.port, "s", "u", json!(true), 6);
    assert_eq!(a.next_ns(1), [6]);
    assert_eq!(kept(server.port, "s"), 0);
    let v = send(server.port, "s", "u", json!("always"), 7);
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(a.next_ns(1), [7]);
    assert_eq!(kept(server.port, "s"), 1);
}

#[test]
fn store_is_checked_and_off_by_default() {
    let server = Server::start_with(NODE);
    server.register("s");
    assert_fails_naming(&send(server.port, "s", "u", json!(5), 1), "store");
    assert_fails_naming(&send(server.port, "s", "u", json!("x"), 1), "store");
    assert_eq!(send(server.port, "s", "u", json!(false), 1)["code"], 0);
    assert_eq!(kept(server.port, "s"), 0);
    let off = Server::start();
    off.register("s");
    assert_fails_naming(&send(off.port, "s", "u", json!(true), 1), "store");
}

#[test]
fn jwt_connect_takes_them_and_the_webhook_names_them() {
    use common::auth::{signed, token, ws_with_token, SECRET};
    use common::receiver::Receiver;
    let receiver = Receiver::start();
    let server = Server::start_with(&["OfflineMax = 3", "WebhookAllowPrivate = true"]);
    let body = json!({"systemId": "j", "secret": SECRET, "webhookUrl": receiver.url("/")});
    let v = api(server.port, None, "/api/register", &body);
    assert_eq!(v["code"], 0, "{v}");
    let mut ids = Vec::new();
    for n in 1..=2 {
        let body =
            json!({"userId": "carol", "code": 7, "msg": "m", "data": {"n": n}, "store": true});
        let v = signed(server.port, "j", SECRET, "/api/send_to_user", &body);
        assert_eq!(v["code"], 0, "{v}");
        ids.push(v["data"]["messageId"].clone());
    }
    let mut ws = ws_with_token(server.port, "j", &token(SECRET, Some("carol")));
    assert_eq!(ws.next_ns(2), [1, 2]);
    let id = ws.client_id.clone();
    receiver.wait_until(Duration::from_secs(5), "delivered_offline", |hooks| {
        (hooks.iter().flat_map(|h| h.events())).any(|e| e["event"] == "delivered_offline")
    });
    let events: Vec<Value> = (receiver.hooks().iter().flat_map(|h| h.events()))
        .filter(|e| e["event"] == "delivered_offline")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (&e["clientId"], &e["userId"]),
        (&json!(id), &json!("carol")),
        "{e}"
    );
    assert_eq!(e["messageIds"], json!(ids), "{e}");
}

#[test]
fn ttl_expires_what_is_kept() {
    let server = Server::start_with(&["OfflineMax = 3", "OfflineTtl = 1"]);
    server.register("s");
    send(server.port, "s", "u", json!(true), 1);
    assert_eq!(kept(server.port, "s"), 1);
    std::thread::sleep(Duration::from_millis(2100));
    send(server.port, "s", "u", json!(true), 2);
    assert_eq!(kept(server.port, "s"), 1);
    let mut a = server.ws("s");
    bind(server.port, "s", &a, "room", "u", "");
    assert_eq!(a.next_ns(1), [2]);
    assert_eq!(kept(server.port, "s"), 0);
}

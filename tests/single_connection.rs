//! Issue 17, one connection per user on one node with `--cores 2` (docs/api-additions.md, "One
//! connection per user"): in a system registered with `singleConnection: true`, a connection
//! that gets a userId (bind_to_group, a connect token) closes the user's older connection with
//! 4001; of connections that claim a user at once exactly one stays; a system without it keeps
//! every connection, as the original.

mod common;

use common::auth::{token, ws_with_token};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REPLACED: Ended = Ended::Close(4001);

fn register(port: u16, body: Value) -> Value {
    api(port, None, "/api/register", &body)
}

fn register_single(port: u16, system: &str) {
    let v = register(port, json!({"systemId": system, "singleConnection": true}));
    assert_eq!(v["code"], 0, "register: {v}");
}

fn is_online(port: u16, system: &str, ws: &Ws) -> bool {
    let v = api(
        port,
        Some(system),
        "/api/is_online",
        &json!({"clientId": ws.client_id}),
    );
    assert_eq!(v["code"], 0, "is_online: {v}");
    v["data"]["online"] == true
}

/// A push to `ws` alone arrives: the connection is open and served.
fn assert_served(port: u16, system: &str, ws: &mut Ws, n: u64) {
    let v = api(
        port,
        Some(system),
        "/api/send_to_client",
        &json!({"clientId": ws.client_id, "sendUserId": "", "code": 7, "msg": "m", "data": {"n": n}}),
    );
    assert_eq!(v["code"], 0, "send_to_client: {v}");
    assert_eq!(ws.next_ns(1), [n], "client {}", ws.client_id);
}

trait StaysOpen {
    fn stays_open_for(&mut self, ms: u64);
}

impl StaysOpen for Ws {
    /// Nothing but member events (1001/1002/1003) and pings within `ms` milliseconds: above
    /// all, no close frame.
    fn stays_open_for(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read_within(left) {
                Ok(Some(tungstenite::Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let code = v["code"].as_i64().unwrap_or_default();
                    assert!((1001..=1003).contains(&code), "{}: {v}", self.client_id);
                }
                Ok(None | Some(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_))) => {}
                other => panic!("client {} should stay open: {other:?}", self.client_id),
            }
        }
    }
}

fn replaced_metric(port: u16) -> f64 {
    let text = http(port, "GET", "/metrics", &[], b"").text();
    (text.lines())
        .find_map(|l| l.strip_prefix("wspush_disconnects_total{reason=\"replaced\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no replaced series in /metrics:\n{text}"))
}

#[test]
fn a_newer_connection_of_a_user_closes_the_older_with_4001() {
    let server = Server::start();
    let port = server.port;
    register_single(port, "one");
    // Six users, so that the older and newer connections of some fall on different cores.
    for u in 0..6 {
        let user = format!("user{u}");
        let mut old = server.ws("one");
        bind(port, "one", &old, "room", &user, "");
        let mut new = server.ws("one");
        bind(port, "one", &new, "room", &user, "");
        assert_eq!(old.expect_end(IO_TIMEOUT, true), REPLACED, "{user}");
        assert!(!is_online(port, "one", &old), "{user}");
        assert_served(port, "one", &mut new, u);
        // A bind of the holder to another group, same user: nobody is closed.
        bind(port, "one", &new, "lobby", &user, "");
        new.stays_open_for(200);
        assert!(online_list(port, "one", "room").contains(&new.client_id));
        assert!(!online_list(port, "one", "room").contains(&old.client_id));
    }
    assert_eq!(replaced_metric(port), 6.0);
    // Another user, and a connection without a userId, are left alone.
    let mut alice = server.ws("one");
    bind(port, "one", &alice, "room", "alice", "");
    let mut anon = [server.ws("one"), server.ws("one")];
    for ws in &anon {
        bind(port, "one", ws, "room", "", "");
    }
    let mut bob = server.ws("one");
    bind(port, "one", &bob, "room", "bob", "");
    alice.stays_open_for(300);
    for (i, ws) in anon.iter_mut().enumerate() {
        assert_served(port, "one", ws, 100 + i as u64);
    }
    assert_served(port, "one", &mut bob, 200);
    assert!(server.stderr_log().contains("singleConnection"));
}

#[test]
fn a_system_without_single_connection_keeps_every_connection_of_a_user() {
    let server = Server::start();
    let port = server.port;
    server.register("many");
    let mut conns: Vec<Ws> = (0..4).map(|_| server.ws("many")).collect();
    for ws in &conns {
        bind(port, "many", ws, "room", "alice", "");
    }
    for (i, ws) in conns.iter_mut().enumerate() {
        ws.stays_open_for(100);
        assert_served(port, "many", ws, i as u64);
    }
    let v = api(
        port,
        Some("many"),
        "/api/send_to_user",
        &json!({"userId": "alice", "code": 7, "msg": "m", "data": {"n": 9}}),
    );
    assert_eq!(v["data"]["count"], 4, "{v}");
    assert_eq!(replaced_metric(port), 0.0);
}

#[test]
fn a_user_given_up_is_free_and_the_new_user_is_claimed() {
    let server = Server::start();
    let port = server.port;
    register_single(port, "one");
    let mut a = server.ws("one");
    bind(port, "one", &a, "room", "alice", "");
    // A changes to bob: alice is free, so a new alice replaces nobody.
    bind(port, "one", &a, "room", "bob", "");
    let mut alice = server.ws("one");
    bind(port, "one", &alice, "room", "alice", "");
    a.stays_open_for(300);
    assert_served(port, "one", &mut a, 1);
    // A new bob replaces A.
    let bob = server.ws("one");
    bind(port, "one", &bob, "room", "bob", "");
    assert_eq!(a.expect_end(IO_TIMEOUT, true), REPLACED);
    // The holder that disconnects frees its user: the next one replaces nobody (and the old
    // holder's id, closed and gone, is never touched again).
    bob.close();
    let mut bob2 = server.ws("one");
    bind(port, "one", &bob2, "room", "bob", "");
    let mut bob3 = server.ws("one");
    bind(port, "one", &bob3, "room", "bob", "");
    assert_eq!(bob2.expect_end(IO_TIMEOUT, true), REPLACED);
    assert_served(port, "one", &mut bob3, 2);
    assert_served(port, "one", &mut alice, 3);
}

#[test]
fn a_connect_token_with_a_user_id_replaces_the_older_connection() {
    let server = Server::start();
    let port = server.port;
    let secret = "single-connection-secret-0123456789";
    let v = register(
        port,
        json!({"systemId": "jwt", "secret": secret, "singleConnection": true}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut first = ws_with_token(port, "jwt", &token(secret, Some("carol")));
    let mut second = ws_with_token(port, "jwt", &token(secret, Some("carol")));
    assert_eq!(first.expect_end(IO_TIMEOUT, true), REPLACED);
    second.stays_open_for(200);
    // A token without a userId claims nobody.
    let mut nobody = ws_with_token(port, "jwt", &token(secret, None));
    let mut nobody2 = ws_with_token(port, "jwt", &token(secret, None));
    nobody.stays_open_for(200);
    nobody2.stays_open_for(0);
    // A bind with the token's userId is no new claim; a third connect replaces the second.
    let v = common::auth::signed(
        port,
        "jwt",
        secret,
        "/api/bind_to_group",
        &json!({"clientId": second.client_id, "groupName": "g", "userId": "carol"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    second.stays_open_for(300);
    let _third = ws_with_token(port, "jwt", &token(secret, Some("carol")));
    assert_eq!(second.expect_end(IO_TIMEOUT, true), REPLACED);
}

/// Eight connections of one user bound at once, ten times over: each time exactly one stays
/// open, every other is closed with 4001, and the one that stayed is the holder (the next
/// connection replaces it).
#[test]
fn of_connections_that_claim_a_user_at_once_exactly_one_stays() {
    let server = Server::start();
    let port = server.port;
    register_single(port, "race");
    for round in 0..10 {
        let user = format!("racer{round}");
        let mut conns: Vec<Ws> = (0..8).map(|_| server.ws("race")).collect();
        let ids: Vec<String> = conns.iter().map(|w| w.client_id.clone()).collect();
        let binds: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let user = user.clone();
                std::thread::spawn(move || {
                    let body = json!({"clientId": id, "groupName": "g", "userId": user});
                    api(port, Some("race"), "/api/bind_to_group", &body)
                })
            })
            .collect();
        for b in binds {
            let v = b.join().unwrap();
            assert_eq!(v["code"], 0, "{v}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let open = loop {
            let open: Vec<usize> = (0..conns.len())
                .filter(|&i| is_online(port, "race", &conns[i]))
                .collect();
            if open.len() <= 1 || Instant::now() > deadline {
                break open;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(open.len(), 1, "round {round}: open {open:?}");
        let survivor = open[0];
        for (i, ws) in conns.iter_mut().enumerate() {
            if i != survivor {
                assert_eq!(ws.expect_end(IO_TIMEOUT, true), REPLACED, "round {round}");
            }
        }
        let mut survivor = conns.swap_remove(survivor);
        survivor.stays_open_for(100);
        let next = server.ws("race");
        bind(port, "race", &next, "g", &user, "");
        assert_eq!(
            survivor.expect_end(IO_TIMEOUT, true),
            REPLACED,
            "round {round}"
        );
    }
    assert_eq!(replaced_metric(port), 80.0);
}

#[test]
fn register_refuses_a_single_connection_that_is_not_a_boolean() {
    let server = Server::start();
    let port = server.port;
    for bad in [json!("yes"), json!(1), json!({})] {
        let v = register(port, json!({"systemId": "odd", "singleConnection": bad}));
        assert_fails_naming(&v, "singleConnection");
    }
    // Nothing was registered; false and null are "off".
    let v = register(port, json!({"systemId": "odd", "singleConnection": false}));
    assert_eq!(v["code"], 0, "{v}");
    let v = register(port, json!({"systemId": "odd2", "singleConnection": null}));
    assert_eq!(v["code"], 0, "{v}");
    let mut a = server.ws("odd");
    bind(port, "odd", &a, "g", "u", "");
    let b = server.ws("odd");
    bind(port, "odd", &b, "g", "u", "");
    a.stays_open_for(200);
}

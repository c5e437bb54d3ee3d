//! The original's nginx block (API.md) in front of wspush: `/api` arrives as HTTP/1.0 with
//! `Connection: close`, `/ws` is proxied with `proxy_read_timeout`, and the server's pings must
//! keep idle WebSockets from being cut.

mod common;

use common::nginx::Nginx;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn whole_api_flow_through_nginx() {
    let server = Server::start();
    let nginx = Nginx::start(&[server.port], "60s");
    let port = nginx.port;
    let system = unique("ngx");
    let v = api(port, None, "/api/register", &json!({ "systemId": system }));
    assert_eq!(v["code"], 0, "{v}");

    // Enough connections that both cores of the server hold some.
    let mut clients: Vec<Ws> = (0..12).map(|_| Ws::connect(port, &system)).collect();
    for ws in clients.iter_mut() {
        let v = api(
            port,
            Some(&system),
            "/api/send_to_client",
            &json!({ "clientId": ws.client_id, "sendUserId": "backend", "code": 7, "msg": "m", "data": {"to": ws.client_id} }),
        );
        assert_eq!(v["code"], 0, "{v}");
        let m = ws.recv_json();
        assert_push_shape(&m);
        assert_eq!(m["messageId"], v["data"]["messageId"]);
        assert_eq!(m["data"]["to"], ws.client_id.as_str());
    }

    let (first, rest) = clients.split_at_mut(1);
    let stayer = &mut rest[0];
    bind(port, &system, &first[0], "room", "u1", "e1");
    assert_eq!(
        presence(&first[0].recv_json(), 1001)["clientId"],
        first[0].client_id.as_str()
    );
    bind(port, &system, stayer, "room", "u2", "e2");
    assert_eq!(presence(&first[0].recv_json(), 1001)["userId"], "u2");
    assert_eq!(presence(&stayer.recv_json(), 1001)["userId"], "u2");
    assert_eq!(
        online_list(port, &system, "room"),
        sorted(&[&first[0].client_id, &stayer.client_id])
    );

    let v = api(
        port,
        Some(&system),
        "/api/close_client",
        &json!({ "clientId": first[0].client_id }),
    );
    assert_eq!(v["code"], 0, "{v}");
    let gone = presence(&stayer.recv_json(), 1002);
    assert_eq!(gone["clientId"], first[0].client_id.as_str());
    assert_eq!(
        online_list(port, &system, "room"),
        sorted(&[&stayer.client_id])
    );

    // nginx spoke HTTP/1.0 to the upstream for /api (no proxy_http_version there): every
    // request above was answered 200, none with an error.
    let access = nginx.access_log();
    assert!(access.contains("POST /api/send_to_client"), "{access}");
    assert!(!access.contains("\" 5"), "an nginx 5xx: {access}");
}

#[test]
fn server_pings_keep_proxied_websockets_alive() {
    // nginx cuts a proxied WebSocket idle for proxy_read_timeout; pings every second beat 3 s.
    let server = Server::start_with(&["HeartbeatInterval = 1", "PongTimeout = 10"]);
    let nginx = Nginx::start(&[server.port], "3s");
    let system = unique("ngx-idle");
    server.register(&system);
    let mut ws = Ws::connect(nginx.port, &system);
    ws.expect_nothing(4500);
    let v = api(
        nginx.port,
        Some(&system),
        "/api/send_to_client",
        &json!({ "clientId": ws.client_id, "data": "still here" }),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(ws.recv_json()["data"], "still here");
}

#[test]
fn without_pings_nginx_cuts_idle_websockets() {
    // The control for the test above: with the default 25 s heartbeat, the same 3 s proxy
    // timeout ends the connection, so the test above measures the pings.
    let server = Server::start();
    let nginx = Nginx::start(&[server.port], "3s");
    let system = unique("ngx-cut");
    server.register(&system);
    let mut ws = Ws::connect(nginx.port, &system);
    assert_eq!(
        ws.expect_end(Duration::from_secs(8), false),
        Ended::Dropped,
        "nginx should have cut the idle proxied connection"
    );
}

/// The shipped nginx blocks (conf/nginx.conf, docker/nginx.conf) keep idle WebSockets open:
/// their `proxy_read_timeout` is above the default ping interval, with a comment saying why.
#[test]
fn shipped_configs_read_longer_than_the_ping_interval() {
    let ping = wspush::config::Config::default().heartbeat_interval;
    for path in ["conf/nginx.conf", "docker/nginx.conf"] {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let at = (lines.iter())
            .position(|l| l.starts_with("proxy_read_timeout "))
            .unwrap_or_else(|| panic!("{path} sets no proxy_read_timeout"));
        let value = lines[at]["proxy_read_timeout ".len()..].trim_end_matches(';');
        let secs: u64 = value
            .strip_suffix('s')
            .unwrap_or(value)
            .parse()
            .unwrap_or_else(|e| panic!("{path}: {value:?}: {e}"));
        assert!(
            Duration::from_secs(secs) > ping,
            "{path}: proxy_read_timeout {secs} s is not above HeartbeatInterval {ping:?}"
        );
        assert!(
            (lines[..at].iter().rev().take(3))
                .any(|l| l.starts_with('#') && l.contains("HeartbeatInterval")),
            "{path}: a comment above proxy_read_timeout says why"
        );
    }
}

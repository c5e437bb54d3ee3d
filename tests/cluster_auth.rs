//! Issue 7's per-system secrets in cluster mode, with a real etcd and two real nodes: a secret
//! registered through one node is stored in etcd (`ws/account/<systemId>`) and enforced by the
//! other, on the API and on `/ws`; values written the original's way (no secret) keep working
//! unsigned; an operator's edit of the value in etcd is followed by every node. And (issue 12)
//! the nodes' own access to etcd: a user and password once etcd has authentication on, TLS
//! with the CA of a certificate made by the test, and a client certificate.

mod common;

use common::auth::*;
use common::etcd::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn push_body(client: &str, data: &str) -> Value {
    json!({"clientId": client, "sendUserId": "s", "code": 7, "msg": "m", "data": data})
}

/// The `ws/account/<system>` value in etcd, as JSON.
fn account_value(etcd: &Etcd, system: &str) -> Value {
    let key = format!("ws/account/{system}");
    let kvs = etcd.get_prefix(&key);
    let (_, value) = kvs
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("{key} is not in etcd: {kvs:?}"));
    serde_json::from_str(value).unwrap_or_else(|e| panic!("{key} = {value:?}: {e}"))
}

/// Polls `check` every 50 ms until it holds, for at most 10 s (the watch is fast; this only
/// absorbs a loaded machine).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_secret_registered_on_one_node_is_enforced_by_the_other() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 2, &[]);
    converge(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);
    let system = unique("cluster-secret");

    // A client that connected to B before the system existed (the original allows it) ...
    let mut early = b.ws(&system);

    let resp = post(
        a.port,
        None,
        "/api/register",
        &[],
        json!({"systemId": system, "secret": SECRET, "webhookUrl": "http://hooks.example.com:9/hook"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    // ... is closed by B once B learns the secret from etcd's watch.
    assert_eq!(early.expect_end(IO_TIMEOUT, false), Ended::Close(1008));

    // The secret and the webhook URL travel in the original's value, next to its fields.
    let value = account_value(&etcd, &system);
    assert_eq!(value["systemId"], json!(system), "{value}");
    assert!(value["registerTime"].is_i64(), "{value}");
    assert_eq!(value["secret"], SECRET, "{value}");
    assert_eq!(
        value["webhookUrl"], "http://hooks.example.com:9/hook",
        "{value}"
    );

    // B enforces the signature ...
    let body = json!({"groupName": "g"}).to_string();
    let unsigned = post(
        b.port,
        Some(&system),
        "/api/get_online_list",
        &[],
        body.as_bytes(),
    );
    assert_refused(&unsigned, 401, "X-Signature");
    let wrong = post_signed(
        b.port,
        &system,
        "not-the-secret-0123456789",
        "/api/get_online_list",
        &[],
        body.as_bytes(),
    );
    assert_refused(&wrong, 401, "does not match");
    let v = signed(
        b.port,
        &system,
        SECRET,
        "/api/get_online_list",
        &json!({"groupName": "g"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    // ... and the connect token.
    assert_ws_refused(b.port, &format!("systemId={system}"), "token is required");
    assert_ws_refused(
        b.port,
        &format!(
            "systemId={system}&token={}",
            token("not-the-secret-0123456789", None)
        ),
        "signature",
    );
    let mut on_b = ws_with_token(b.port, &system, &token(SECRET, Some("carol")));
    let mut on_a = ws_with_token(a.port, &system, &token(SECRET, None));

    // Signed pushes cross nodes both ways; the token's userId is known cluster-wide.
    let v = signed(
        a.port,
        &system,
        SECRET,
        "/api/send_to_client",
        &push_body(&on_b.client_id, "a->b"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(on_b.recv_json()["data"], "a->b");
    let v = signed(
        b.port,
        &system,
        SECRET,
        "/api/send_to_client",
        &push_body(&on_a.client_id, "b->a"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(on_a.recv_json()["data"], "b->a");
    let v = signed(
        a.port,
        &system,
        SECRET,
        "/api/send_to_user",
        &json!({"userId": "carol", "sendUserId": "", "code": 3, "msg": "", "data": "for carol"}),
    );
    assert_eq!(v["data"]["count"], 1, "{v}");
    assert_eq!(on_b.recv_json()["data"], "for carol");
    on_a.expect_nothing(QUIET_MS);
    // An unsigned call through A is refused too, and delivers nothing.
    let body = push_body(&on_b.client_id, "unsigned").to_string();
    let resp = post(
        a.port,
        Some(&system),
        "/api/send_to_client",
        &[],
        body.as_bytes(),
    );
    assert_refused(&resp, 401, "X-Signature");
    on_b.expect_nothing(QUIET_MS);
}

#[test]
fn systems_in_the_originals_format_need_no_signature() {
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 2, &[]);
    converge(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);

    // Written as go-websocket writes it, and one value that is not JSON at all.
    let original = unique("original");
    etcd.put(
        &format!("ws/account/{original}"),
        &json!({"systemId": original, "registerTime": 1_700_000_000}).to_string(),
    );
    let garbage = unique("garbage-value");
    etcd.put(&format!("ws/account/{garbage}"), "not json");

    for system in [&original, &garbage] {
        for node in [a, b] {
            let v = api(
                node.port,
                Some(system),
                "/api/get_online_list",
                &json!({"groupName": "g"}),
            );
            assert_eq!(v["code"], 0, "{system} through :{}: {v}", node.port);
        }
        // No token needed; unsigned pushes cross nodes.
        let mut on_a = a.ws(system);
        let mut on_b = b.ws(system);
        let v = api(
            b.port,
            Some(system),
            "/api/send_to_client",
            &push_body(&on_a.client_id, "x"),
        );
        assert_eq!(v["code"], 0, "{v}");
        assert_eq!(on_a.recv_json()["data"], "x");
        let v = api(
            a.port,
            Some(system),
            "/api/send_to_client",
            &push_body(&on_b.client_id, "y"),
        );
        assert_eq!(v["code"], 0, "{v}");
        assert_eq!(on_b.recv_json()["data"], "y");
        on_a.expect_nothing(QUIET_MS);
    }

    // An operator who adds a secret to the value in etcd closes the system on every node.
    let rotated = "operator-written-secret-0123456789";
    etcd.put(
        &format!("ws/account/{original}"),
        &json!({"systemId": original, "registerTime": 1_700_000_000, "secret": rotated})
            .to_string(),
    );
    let body = json!({"groupName": "g"}).to_string();
    for node in [a, b] {
        eventually(
            &format!("node :{} enforces the new secret", node.port),
            || {
                post(
                    node.port,
                    Some(&original),
                    "/api/get_online_list",
                    &[],
                    body.as_bytes(),
                )
                .status
                    == 401
            },
        );
        let v = signed(
            node.port,
            &original,
            rotated,
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        assert_eq!(v["code"], 0, "{v}");
        assert_ws_refused(
            node.port,
            &format!("systemId={original}"),
            "token is required",
        );
        let _ok = ws_with_token(node.port, &original, &token(rotated, None));
    }
}

#[test]
fn an_api_key_guards_every_node_and_cross_node_pushes_carry_on() {
    const KEY: &str = "cluster-api-key-0123456789abcdef";
    let etcd = Etcd::start();
    let nodes = Node::start_many(&etcd, 2, &[&format!("ApiKey = {KEY}")]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let auth = format!("apikey {KEY}");
    let with_key = [("Authorization", auth.as_str())];
    // Each node knows the other (its metrics list the peer; `converge` cannot be used, its
    // probes carry no key).
    for node in [a, b] {
        eventually("both nodes list their peer", || {
            http(node.port, "GET", "/metrics", &with_key, b"")
                .text()
                .contains("wspush_peer_links_up{")
        });
    }
    let system = unique("cluster-keyed");
    let reg = json!({ "systemId": system }).to_string();

    // Register without the key: refused on either node, and nothing reached etcd.
    for node in [a, b] {
        let resp = post(node.port, None, "/api/register", &[], reg.as_bytes());
        assert_refused(&resp, 403, "Authorization");
    }
    assert!(etcd.keys(&format!("ws/account/{system}")).is_empty());
    let resp = post(a.port, None, "/api/register", &with_key, reg.as_bytes());
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());

    // A client on B, pushed to through A: without the key A refuses and nothing arrives; with
    // it the push crosses the node link (the link itself needs no key).
    let mut ws = b.ws(&system);
    let body = push_body(&ws.client_id, "via A").to_string();
    let refused = post(
        a.port,
        Some(&system),
        "/api/send_to_client",
        &[],
        body.as_bytes(),
    );
    assert_refused(&refused, 403, "Authorization");
    let resp = post(
        a.port,
        Some(&system),
        "/api/send_to_client",
        &with_key,
        body.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    let got = ws.recv_json();
    assert_eq!(
        got["data"], "via A",
        "the refused push must not have arrived first: {got}"
    );
}

/// The value of one sample line of `/metrics`, by its exact series text.
fn metric(port: u16, series: &str) -> f64 {
    let resp = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", resp.text()))
}

const LOOKUPS: &str = "wspush_etcd_system_lookups_total";
const CACHED: &str = r#"wspush_etcd_system_lookups_skipped_total{reason="cached"}"#;
const LIMITED: &str = r#"wspush_etcd_system_lookups_skipped_total{reason="limited"}"#;

#[test]
fn repeated_connects_of_an_unknown_system_cost_one_etcd_lookup() {
    let etcd = Etcd::start();
    let node = Node::start(&etcd, &[]);
    let system = unique("nobody-yet");
    let before = metric(node.port, LOOKUPS);
    // A connect with a token for a system this node does not know asks etcd whether it is
    // registered (it might have a secret); the answer "no" is remembered.
    for _ in 0..20 {
        match ws_try(node.port, &format!("systemId={system}&token=not.a.token")) {
            // Not registered: let in without checks, as the original does.
            Handshake::Upgraded(mut ws) => ws.close(None).unwrap(),
            Handshake::Refused(status, body) => panic!("refused: {status} {body}"),
        }
    }
    // One lookup per core at most (the kernel spreads the connects over the node's 2 cores);
    // the other connects were answered from the cache.
    let lookups = metric(node.port, LOOKUPS) - before;
    assert!(
        (1.0..=2.0).contains(&lookups),
        "{lookups} etcd lookups for 20 connects"
    );
    assert_eq!(metric(node.port, CACHED), 20.0 - lookups);

    // Registering the system (with a secret) forgets "not registered" at once: the next
    // connect with a bad token is refused, a good one is let in.
    register_secret(node.port, &system, SECRET);
    assert_ws_refused(
        node.port,
        &format!("systemId={system}&token=not.a.token"),
        "token",
    );
    let mut ws = ws_with_token(node.port, &system, &token(SECRET, None));
    ws.expect_nothing(QUIET_MS);
}

#[test]
fn lookups_of_unknown_systems_are_limited_per_core() {
    let etcd = Etcd::start();
    let node = Node::start(&etcd, &[]);
    let before = metric(node.port, LOOKUPS);
    let started = Instant::now();
    // Made-up ids, each new: the cache cannot help, the per-core limit (20 a second) does.
    let mut refused = 0;
    for i in 0..200 {
        let query = format!("systemId={}&token=t", unique(&format!("random{i}")));
        match ws_try(node.port, &query) {
            Handshake::Upgraded(mut ws) => ws.close(None).unwrap(),
            Handshake::Refused(status, body) => {
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("unknown systems"), "{body}");
                refused += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let lookups = metric(node.port, LOOKUPS) - before;
    // 2 cores x 20 a second, over the windows the loop spanned.
    let most = 2.0 * 20.0 * (secs.ceil() + 1.0);
    assert!(
        lookups <= most,
        "{lookups} etcd lookups in {secs:.1} s, more than {most}"
    );
    assert!(
        refused > 0,
        "no connect refused in {secs:.1} s of 200 random ids"
    );
    assert_eq!(metric(node.port, LIMITED), refused as f64);
}

/// `wspush_etcd_connect_failures_total` of a node (0 while `/metrics` does not answer).
fn connect_failures(node: &Node) -> u64 {
    let Ok(resp) = try_http(node.port, "GET", "/metrics", &[], b"") else {
        return 0;
    };
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix("wspush_etcd_connect_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (≤ 20 s) until `node` logged a WARN line containing `needle` and failed to reach etcd
/// three times (the retries go on: 0.2, 0.4, 0.8 s apart), then asserts it is still not ready.
fn assert_stays_unready(node: &mut Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        node.assert_alive();
        let log = node.stderr_log();
        let warned = log
            .lines()
            .any(|l| l.contains("WARN") && l.contains(needle));
        if warned && connect_failures(node) >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no WARN line with {needle:?} and 3 failed connects within 20 s \
             ({} so far):\n{log}",
            connect_failures(node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let readyz = http(node.port, "GET", "/readyz", &[], b"");
    assert_eq!(readyz.status, 503, "{}", readyz.text());
}

/// Issue 12: `[etcd] User` and `Password`. With authentication on in etcd (a user whose role
/// may read and write `/wsServers/` and `ws/account/` only, as docs/auth.md sets it up), nodes
/// with the password join, register and serve across nodes; a node with a wrong one says so
/// and stays not ready.
#[test]
fn nodes_authenticate_to_an_etcd_with_authentication_on() {
    let etcd = Etcd::start();
    etcd.enable_auth("wspush-node", "node-password-0123456789");
    let creds = ["User = wspush-node", "Password = node-password-0123456789"];
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node::start_with_access(&etcd.endpoint(), &creds, &[]))
        .collect();
    converge(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);
    // A registration (an etcd transaction on ws/account/) through one node is known to the other.
    let system = unique("etcd-auth");
    assert_eq!(
        api(
            a.port,
            None,
            "/api/register",
            &json!({ "systemId": system })
        )["code"],
        0
    );
    let mut on_b = b.ws(&system);
    let v = api(
        a.port,
        Some(&system),
        "/api/send_to_client",
        &push_body(&on_b.client_id, "through etcd with auth"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(on_b.recv_json()["data"], "through etcd with auth");

    let mut wrong = Node::spawn(
        &etcd.endpoint(),
        &["User = wspush-node", "Password = not-the-password"],
        &[],
    );
    assert_stays_unready(
        &mut wrong,
        "etcd refused the credentials: check [etcd] User and Password",
    );
    // Without credentials at all etcd refuses the node too.
    let mut none = Node::spawn(&etcd.endpoint(), &[], &[]);
    assert_stays_unready(&mut none, "etcd unreachable");
}

/// Issue 12: TLS to etcd. etcd serves clients over TLS with a certificate signed by a CA the
/// test made, and wants client certificates: nodes with `CaFile`, `CertFile` and `KeyFile`
/// join (with an `https://` endpoint and with a bare `host:port` alike); a node without a
/// client certificate stays not ready; an `https://` endpoint without `CaFile` is a config
/// error at start.
#[test]
fn nodes_reach_etcd_over_tls_with_a_test_ca_and_client_certificates() {
    let pki = TestPki::generate();
    let etcd = Etcd::start_tls(&pki, true);
    let ca = format!("CaFile = {}", pki.ca.display());
    let cert = format!("CertFile = {}", pki.client_cert.display());
    let key = format!("KeyFile = {}", pki.client_key.display());
    let tls = [ca.as_str(), &cert, &key];
    let https = format!("https://{}", etcd.endpoint());
    let nodes = vec![
        Node::start_with_access(&https, &tls, &[]),
        Node::start_with_access(&etcd.endpoint(), &tls, &[]),
    ];
    converge(&nodes);
    let system = unique("etcd-tls");
    let v = api(
        nodes[1].port,
        None,
        "/api/register",
        &json!({ "systemId": system }),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut on_a = nodes[0].ws(&system);
    let v = api(
        nodes[1].port,
        Some(&system),
        "/api/send_to_client",
        &push_body(&on_a.client_id, "over tls"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(on_a.recv_json()["data"], "over tls");

    // The CA but no client certificate: etcd ends the handshake.
    let mut no_cert = Node::spawn(&etcd.endpoint(), &[&ca], &[]);
    assert_stays_unready(&mut no_cert, "etcd unreachable");

    // https:// without CaFile: nothing to check etcd's certificate against; exit 2.
    let mut no_ca = Node::spawn(&https, &[], &[]);
    let status = no_ca
        .wait_exit(Duration::from_secs(10))
        .expect("a node with https:// and no CaFile started");
    assert_eq!(status.code(), Some(2), "{}", no_ca.stderr_log());
    assert!(
        no_ca.stderr_log().contains("etcd.Endpoints"),
        "{}",
        no_ca.stderr_log()
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

//! Issue 7's authentication on one node (docs/auth.md), against the real binary with real
//! WebSocket clients: the optional `ApiKey`, per-system secrets that make API calls signed
//! (`X-Signature`) and connects carry a JWT (`token=`), and, first, that none of it changes
//! anything for the original's callers while it is not configured.

mod common;

use common::auth::*;
use common::*;
use serde_json::{json, Value};

const API_KEY: &str = "test-api-key-0123456789abcdef";

/// A valid body for `route`, aimed at `client`.
fn body_for(route: &str, client: &str) -> Value {
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
        "/api/get_online_list" | "/api/get_group_presence" => json!({"groupName": "g"}),
        "/api/close_client" | "/api/is_online" => json!({ "clientId": client }),
        "/api/get_system_stats" => json!({}),
        "/api/send_to_system" => json!({"sendUserId": "u", "code": 1, "msg": "m", "data": "d"}),
        "/api/send_to_user" => {
            json!({"userId": "u", "sendUserId": "u", "code": 1, "msg": "m", "data": "d"})
        }
        "/api/unbind_from_group" => json!({"clientId": client, "groupName": "g"}),
        _ => unreachable!("{route}"),
    }
}

fn push_body(client: &str, data: &str) -> Value {
    json!({"clientId": client, "sendUserId": "s", "code": 7, "msg": "m", "data": data})
}

#[test]
fn without_the_new_keys_nothing_changes() {
    let mut server = Server::start();
    let system = unique("plain");
    server.register(&system);
    let mut ws = server.ws(&system);

    // No headers at all, as the original's PHP SDK calls it.
    let v = api(
        server.port,
        Some(&system),
        "/api/send_to_client",
        &push_body(&ws.client_id, "bare"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(ws.recv_json()["data"], "bare");

    // Authorization and X-Signature headers mean nothing while nothing is configured.
    for headers in [
        vec![("Authorization", "apikey whatever")],
        vec![("Authorization", "Bearer abc.def.ghi")],
        vec![("X-Signature", "not-a-signature")],
        vec![
            ("Authorization", "Basic dTpw"),
            ("X-Signature", &"0".repeat(64)),
        ],
    ] {
        let body = push_body(&ws.client_id, "with headers").to_string();
        let resp = post(
            server.port,
            Some(&system),
            "/api/send_to_client",
            &headers,
            body.as_bytes(),
        );
        assert_eq!(resp.status, 200, "{headers:?}: {}", resp.text());
        assert_eq!(resp.json()["code"], 0, "{headers:?}: {}", resp.text());
        assert_eq!(ws.recv_json()["data"], "with headers");
    }
    let other = unique("plain-register");
    let resp = post(
        server.port,
        None,
        "/api/register",
        &[("Authorization", "apikey whatever")],
        json!({ "systemId": other }).to_string().as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());

    // A token sent to a system without a secret is ignored: the connect works, and its userId
    // binds nothing, since nothing could verify it.
    let forged = hs256(
        "anything-at-all-0123",
        &json!({"exp": now() + 60, "userId": "mallory"}),
    );
    let mut with_token = ws_with_token(server.port, &system, &forged);
    let junk = ws_with_token(server.port, &system, "junk");
    let v = api(
        server.port,
        Some(&system),
        "/api/send_to_user",
        &json!({"userId": "mallory", "sendUserId": "", "code": 1, "msg": "", "data": "x"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(
        v["data"]["count"], 0,
        "an unverified userId bound a connection: {v}"
    );
    with_token.expect_nothing(QUIET_MS);
    // Unregistered systems still connect, token or not, as in the original.
    let _early = server.ws(&unique("unregistered"));
    let _early_token = ws_with_token(server.port, &unique("unregistered"), &forged);
    drop(junk);
    server.assert_serves();
}

#[test]
fn api_key_guards_every_api_route_first() {
    let mut server = Server::start_with(&[&format!("ApiKey = {API_KEY}")]);
    let port = server.port;
    let good = format!("apikey {API_KEY}");
    let system = unique("keyed");

    // register too: refused without the key, and then it did not happen.
    let reg = json!({ "systemId": system }).to_string();
    for (auth, needle) in [
        (None, "Authorization header is required"),
        (Some("apikey wrong-key-0123456789abcdef"), "does not carry"),
        (Some(format!("Bearer {API_KEY}").as_str()), "apikey scheme"),
        (Some(API_KEY), "apikey scheme"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let resp = post(port, None, "/api/register", &headers, reg.as_bytes());
        assert_refused(&resp, 403, needle);
    }
    let resp = post(
        port,
        None,
        "/api/register",
        &[("Authorization", &good)],
        reg.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    // The ApiKey does not apply to /ws: browsers cannot hold a server-wide key.
    let ws = server.ws(&system);

    for route in [
        "/api/send_to_client",
        "/api/send_to_clients",
        "/api/bind_to_group",
        "/api/send_to_group",
        "/api/get_online_list",
        "/api/is_online",
        "/api/get_system_stats",
        "/api/send_to_system",
        "/api/send_to_user",
        "/api/get_group_presence",
        "/api/unbind_from_group",
        "/api/close_client",
    ] {
        let body = body_for(route, &ws.client_id).to_string();
        let bytes = body.as_bytes();
        let missing = post(port, Some(&system), route, &[], bytes);
        assert_refused(&missing, 403, "Authorization");
        let wrong = post(
            port,
            Some(&system),
            route,
            &[("Authorization", "apikey nope-nope-nope-nope")],
            bytes,
        );
        assert_refused(&wrong, 403, "ApiKey");
        let scheme = post(
            port,
            Some(&system),
            route,
            &[("Authorization", &format!("Token {API_KEY}"))],
            bytes,
        );
        assert_refused(&scheme, 403, "apikey");
        // The scheme name is case-insensitive.
        for auth in [
            good.clone(),
            format!("ApiKey {API_KEY}"),
            format!("APIKEY   {API_KEY}"),
        ] {
            let ok = post(
                port,
                Some(&system),
                route,
                &[("Authorization", &auth)],
                bytes,
            );
            assert_eq!(ok.status, 200, "{route} with {auth:?}: {}", ok.text());
            assert_eq!(ok.json()["code"], 0, "{route} with {auth:?}: {}", ok.text());
        }
    }

    // First thing of the guard: before the method (a GET without the key is 403, not 405) and
    // before SystemId (an unregistered system without the key is 403, not code -1).
    let get = http(port, "GET", "/api/get_online_list", &[], b"");
    assert_refused(&get, 403, "Authorization");
    let get = http(
        port,
        "GET",
        "/api/get_online_list",
        &[("Authorization", &good)],
        b"",
    );
    assert_eq!(get.status, 405);
    let unknown = post(port, Some("nobody"), "/api/get_online_list", &[], b"{}");
    assert_refused(&unknown, 403, "Authorization");
    let not_json = post(port, Some(&system), "/api/send_to_client", &[], b"{nope");
    assert_refused(&not_json, 403, "Authorization");
    // A path under /api/ that is no route: 403 first too, so routes cannot be mapped without
    // the key; with it, the plain 404.
    let nowhere = post(port, Some(&system), "/api/no_such_route", &[], b"{}");
    assert_refused(&nowhere, 403, "Authorization");
    let nowhere = post(
        port,
        Some(&system),
        "/api/no_such_route",
        &[("Authorization", &good)],
        b"{}",
    );
    assert_eq!(nowhere.status, 404, "{}", nowhere.text());

    // Operations routes stay open.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(port, "GET", "/readyz", &[], b"").status, 200);
    assert!(
        server.stderr_log().contains("API request refused: ApiKey"),
        "refusals are logged"
    );
    drop(ws);
    server.assert_alive();
}

/// Sends a request head (and `body`, from another thread, errors ignored: the server may
/// answer and stop reading first), then reads one response and checks the server closes.
fn head_then_response(port: u16, head: String, body: Vec<u8>) -> Response {
    use std::io::{BufReader, Read, Write};
    let mut stream = connect(port);
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader)
        .unwrap_or_else(|e| panic!("no answer before the body was sent: {e}"));
    // The body was not read, so the connection ends after the answer.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the refusal: {rest:?}");
    let _ = t.join();
    resp
}

#[test]
fn a_request_without_the_api_key_is_refused_before_its_body_is_read() {
    // HeadTimeout 30 s: a server that waited for the body would not answer within the test
    // client's 5 s read timeout.
    let server = Server::start_with(&[&format!("ApiKey = {API_KEY}"), "HeadTimeout = 30"]);
    let port = server.port;
    let good = format!("apikey {API_KEY}");
    let registered = post(
        port,
        None,
        "/api/register",
        &[("Authorization", &good)],
        br#"{"systemId":"early"}"#,
    );
    assert_eq!(registered.json()["code"], 0, "{}", registered.text());
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    // A head announcing a large body that never comes: 403 at once, with the usual envelope.
    for framing in ["Content-Length: 1000000", "Transfer-Encoding: chunked"] {
        for auth in ["", "Authorization: apikey nope-nope-nope-nope\r\n"] {
            let head = format!(
                "POST /api/send_to_client HTTP/1.1\r\n{host}SystemId: early\r\n{auth}{framing}\r\n\r\n"
            );
            let resp = head_then_response(port, head, Vec::new());
            let needle = if auth.is_empty() {
                "Authorization"
            } else {
                "ApiKey"
            };
            assert_refused(&resp, 403, needle);
        }
    }
    // A client that sends its whole 1 MiB body anyway (curl, PHP) still reads the 403, not
    // a reset: the server drains what it sends after the answer.
    let body = vec![b'x'; 1 << 20];
    let head = format!(
        "POST /api/send_to_client HTTP/1.1\r\n{host}SystemId: early\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    assert_refused(&head_then_response(port, head, body), 403, "Authorization");
    // With the key the same route reads its body as before.
    let mut ws = server.ws("early");
    let body = push_body(&ws.client_id, "after the head check").to_string();
    let resp = post(
        port,
        Some("early"),
        "/api/send_to_client",
        &[("Authorization", &good)],
        body.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"], "after the head check");
}

#[test]
fn api_key_and_secret_are_both_needed_when_both_apply() {
    let server = Server::start_with(&[&format!("ApiKey = {API_KEY}")]);
    let port = server.port;
    let good = format!("apikey {API_KEY}");
    let system = unique("both");
    let reg = json!({"systemId": system, "secret": SECRET}).to_string();
    let resp = post(
        port,
        None,
        "/api/register",
        &[("Authorization", &good)],
        reg.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());

    let body = json!({"groupName": "g"}).to_string();
    let route = "/api/get_online_list";
    let [(ts_name, ts), (sig_name, sig)] =
        signature_headers(SECRET, route, &system, body.as_bytes());
    let key_only = post(
        port,
        Some(&system),
        route,
        &[("Authorization", &good)],
        body.as_bytes(),
    );
    assert_refused(&key_only, 401, "X-Signature");
    let sig_only = post(
        port,
        Some(&system),
        route,
        &[(&ts_name, &ts), (&sig_name, &sig)],
        body.as_bytes(),
    );
    assert_refused(&sig_only, 403, "Authorization");
    let both = post(
        port,
        Some(&system),
        route,
        &[("Authorization", &good), (&ts_name, &ts), (&sig_name, &sig)],
        body.as_bytes(),
    );
    assert_eq!(both.status, 200, "{}", both.text());
    assert_eq!(both.json()["code"], 0, "{}", both.text());
}

#[test]
fn a_secret_makes_api_calls_signed() {
    let mut server = Server::start();
    let port = server.port;
    let system = unique("signed");
    register_secret(port, &system, SECRET);
    let plain = unique("unsigned");
    server.register(&plain);
    let mut ws = ws_with_token(port, &system, &token(SECRET, None));
    let mut plain_ws = server.ws(&plain);

    let route = "/api/send_to_client";
    let body = push_body(&ws.client_id, "refused").to_string();
    let bytes = body.as_bytes();
    let unsigned = post(port, Some(&system), route, &[], bytes);
    assert_refused(&unsigned, 401, "X-Signature header is required");
    assert!(
        unsigned.header("WWW-Authenticate").is_some(),
        "a 401 names its scheme: {:?}",
        unsigned.headers
    );
    let resp = post_signed(
        port,
        &system,
        "another-secret-0123456789",
        route,
        &[],
        bytes,
    );
    assert_refused(&resp, 401, "does not match");
    // The signature of one body does not carry another (one byte changed: the data).
    let tampered = body.replace("refused", "refusec");
    let [(ts_name, ts), (sig_name, sig)] = signature_headers(SECRET, route, &system, bytes);
    let resp = post(
        port,
        Some(&system),
        route,
        &[(&ts_name, &ts), (&sig_name, &sig)],
        tampered.as_bytes(),
    );
    assert_refused(&resp, 401, "does not match");
    // A signature without its timestamp is refused as such.
    let resp = post(port, Some(&system), route, &[(&sig_name, &sig)], bytes);
    assert_refused(&resp, 401, "X-Timestamp header is required");
    for malformed in ["xyz", "0123", &"g".repeat(64), &sig[..63]] {
        let resp = post(
            port,
            Some(&system),
            route,
            &[(&ts_name, &ts), ("X-Signature", malformed)],
            bytes,
        );
        assert_refused(&resp, 401, "64 hex digits");
    }
    // Nothing refused reached the client.
    ws.expect_nothing(QUIET_MS);

    // Signed right, in lowercase and in uppercase hex: delivered.
    for (data, upper) in [("lower", false), ("upper", true)] {
        let body = push_body(&ws.client_id, data).to_string();
        let [(ts_name, ts), (sig_name, mut sig)] =
            signature_headers(SECRET, route, &system, body.as_bytes());
        if upper {
            sig = sig.to_ascii_uppercase();
        }
        let resp = post(
            port,
            Some(&system),
            route,
            &[(&ts_name, &ts), (&sig_name, &sig)],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["code"], 0, "{}", resp.text());
        assert_eq!(ws.recv_json()["data"], data);
    }
    // A chunked body is signed as its decoded bytes.
    let body = push_body(&ws.client_id, "chunked").to_string();
    let [(ts_name, ts), (sig_name, sig)] =
        signature_headers(SECRET, route, &system, body.as_bytes());
    let (a, b) = body.split_at(10);
    let chunked = format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    let resp = post(
        port,
        Some(&system),
        route,
        &[
            ("Transfer-Encoding", "chunked"),
            (&ts_name, &ts),
            (&sig_name, &sig),
        ],
        chunked.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"], "chunked");

    // Another system's secret changes nothing for a system without one.
    let v = api(
        port,
        Some(&plain),
        route,
        &push_body(&plain_ws.client_id, "plain"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(plain_ws.recv_json()["data"], "plain");
    // ... and the signed system's clients are isolated from it as before.
    let v = api(
        port,
        Some(&plain),
        route,
        &push_body(&ws.client_id, "cross"),
    );
    assert_eq!(v["code"], 0, "{v}");
    ws.expect_nothing(QUIET_MS);

    // Registering again cannot change the secret: code -1, the old one still signs.
    let again = api(
        port,
        None,
        "/api/register",
        &json!({"systemId": system, "secret": "a-brand-new-secret-0123456789"}),
    );
    assert_fails_naming(&again, "already registered");
    let v = signed(
        port,
        &system,
        SECRET,
        "/api/get_online_list",
        &json!({"groupName": "g"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let body = json!({"groupName": "g"}).to_string();
    let resp = post_signed(
        port,
        &system,
        "a-brand-new-secret-0123456789",
        "/api/get_online_list",
        &[],
        body.as_bytes(),
    );
    assert_refused(&resp, 401, "does not match");
    assert!(server
        .stderr_log()
        .contains("API request refused: signature"));
    server.assert_serves();
}

/// Issue 12: the signature covers the route, the SystemId and a timestamp besides the body, so
/// a captured call cannot be replayed on another route, for another system with the same
/// secret, or minutes later.
#[test]
fn a_signature_is_bound_to_its_route_system_and_time() {
    let mut server = Server::start();
    let port = server.port;
    let system = unique("bound");
    register_secret(port, &system, SECRET);
    let twin = unique("twin");
    register_secret(port, &twin, SECRET);
    let mut ws = ws_with_token(port, &system, &token(SECRET, None));
    let mut twin_ws = ws_with_token(port, &twin, &token(SECRET, None));

    // A signed send_to_client, as a caller sends it and an eavesdropper captures it.
    let route = "/api/send_to_client";
    let body = push_body(&ws.client_id, "once").to_string();
    let bytes = body.as_bytes();
    let [(ts_name, ts), (sig_name, sig)] = signature_headers(SECRET, route, &system, bytes);
    let captured = [
        (ts_name.as_str(), ts.as_str()),
        (sig_name.as_str(), sig.as_str()),
    ];
    let resp = post(port, Some(&system), route, &captured, bytes);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"], "once");

    // The same headers and body on routes that read the same clientId field: refused, and the
    // client is neither closed nor asked about.
    for other in [
        "/api/close_client",
        "/api/is_online",
        "/api/unbind_from_group",
    ] {
        let resp = post(port, Some(&system), other, &captured, bytes);
        assert_refused(&resp, 401, "does not match");
    }
    ws.expect_nothing(QUIET_MS);
    let v = signed(
        port,
        &system,
        SECRET,
        "/api/is_online",
        &json!({"clientId": ws.client_id}),
    );
    assert_eq!(
        v["data"]["online"], true,
        "the replayed close_client closed it: {v}"
    );

    // Signed for `system`, sent as the twin system (same secret): refused.
    let twin_body = push_body(&twin_ws.client_id, "twin").to_string();
    let [(ts_name, ts), (sig_name, sig)] =
        signature_headers(SECRET, route, &system, twin_body.as_bytes());
    let resp = post(
        port,
        Some(&twin),
        route,
        &[(&ts_name, &ts), (&sig_name, &sig)],
        twin_body.as_bytes(),
    );
    assert_refused(&resp, 401, "does not match");
    twin_ws.expect_nothing(QUIET_MS);

    // Signed correctly but at a time more than 300 s from the server's clock, either way.
    for (offset, needle) in [(-1000, "behind"), (1000, "ahead")] {
        let at = now() + offset;
        let at_text = at.to_string();
        let sig = sign_request(SECRET, route, &system, at, bytes);
        let resp = post(
            port,
            Some(&system),
            route,
            &[("X-Timestamp", &at_text), ("X-Signature", &sig)],
            bytes,
        );
        assert_refused(&resp, 401, "s off");
        let msg = resp.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains(needle) && msg.contains("\u{b1}300 s"), "{msg}");
    }
    // Within the window (a caller whose clock is 200 s slow): accepted.
    let at = now() - 200;
    let at_text = at.to_string();
    let late = push_body(&ws.client_id, "late").to_string();
    let sig = sign_request(SECRET, route, &system, at, late.as_bytes());
    let resp = post(
        port,
        Some(&system),
        route,
        &[("X-Timestamp", &at_text), ("X-Signature", &sig)],
        late.as_bytes(),
    );
    assert_eq!(resp.json()["code"], 0, "{}", resp.text());
    assert_eq!(ws.recv_json()["data"], "late");
    for bad in ["soon", "-5", "1.5e9"] {
        let resp = post(
            port,
            Some(&system),
            route,
            &[("X-Timestamp", bad), ("X-Signature", &sig)],
            late.as_bytes(),
        );
        assert_refused(&resp, 401, "X-Timestamp must be");
    }
    ws.expect_nothing(QUIET_MS);
    server.assert_serves();
}

/// The body-only scheme of before is refused by default and accepted with
/// `SignatureCompat = true`, which the server warns about at start.
#[test]
fn the_body_only_scheme_needs_signature_compat() {
    let route = "/api/send_to_client";
    for compat in [false, true] {
        let extra = if compat {
            vec!["SignatureCompat = true"]
        } else {
            vec![]
        };
        let server = Server::start_with(&extra);
        let port = server.port;
        let system = unique("compat");
        register_secret(port, &system, SECRET);
        let mut ws = ws_with_token(port, &system, &token(SECRET, None));
        let body = push_body(&ws.client_id, "old scheme").to_string();
        let old = sign(SECRET, body.as_bytes());
        let resp = post(
            port,
            Some(&system),
            route,
            &[("X-Signature", &old)],
            body.as_bytes(),
        );
        let warned = server
            .stderr_log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("SignatureCompat"));
        if compat {
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert_eq!(resp.json()["code"], 0, "{}", resp.text());
            assert_eq!(ws.recv_json()["data"], "old scheme");
            assert!(
                warned,
                "no start WARN about SignatureCompat:\n{}",
                server.stderr_log()
            );
            // Wrong body-only signatures are still refused.
            let wrong = sign("another-secret-0123456789", body.as_bytes());
            let resp = post(
                port,
                Some(&system),
                route,
                &[("X-Signature", &wrong)],
                body.as_bytes(),
            );
            assert_refused(&resp, 401, "does not match the request body");
        } else {
            assert_refused(&resp, 401, "X-Timestamp header is required");
            ws.expect_nothing(QUIET_MS);
            assert!(!warned, "{}", server.stderr_log());
        }
        // The current scheme works either way.
        let v = signed(
            port,
            &system,
            SECRET,
            route,
            &push_body(&ws.client_id, "new"),
        );
        assert_eq!(v["code"], 0, "{v}");
        assert_eq!(ws.recv_json()["data"], "new");
    }
}

#[test]
fn register_validates_secret_and_webhook_url() {
    let mut server = Server::start();
    let port = server.port;
    for (extra, field, needle) in [
        (json!({"secret": ""}), "secret", "must not be empty"),
        (json!({"secret": "short"}), "secret", "16 to 256 bytes"),
        (
            json!({"secret": "x".repeat(257)}),
            "secret",
            "16 to 256 bytes",
        ),
        (json!({"secret": 12345}), "secret", "wrong type"),
        (
            json!({"webhookUrl": "https://hooks.example.com/ws"}),
            "webhookUrl",
            "https is not supported",
        ),
        (
            json!({"webhookUrl": "ftp://example.com/"}),
            "webhookUrl",
            "http://host:port/path",
        ),
        (
            json!({"webhookUrl": "example.com/hook"}),
            "webhookUrl",
            "http://host:port/path",
        ),
        (json!({"webhookUrl": "http://"}), "webhookUrl", "host"),
        (
            json!({"webhookUrl": "http://h:70000/x"}),
            "webhookUrl",
            "port",
        ),
        (json!({"webhookUrl": "http://a b/"}), "webhookUrl", "spaces"),
        (json!({"webhookUrl": 5}), "webhookUrl", "wrong type"),
        // Issue 12: an address on the node's own networks, unless WebhookAllowPrivate = true.
        (
            json!({"webhookUrl": "http://127.0.0.1:9/hook"}),
            "webhookUrl",
            "WebhookAllowPrivate",
        ),
    ] {
        let system = unique("badreg");
        let mut body = extra.clone();
        body["systemId"] = json!(system);
        let v = api(port, None, "/api/register", &body);
        assert_fails_naming(&v, field);
        assert_fails_naming(&v, needle);
        // Nothing was registered.
        let v = api(
            port,
            Some(&system),
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        assert_fails_naming(&v, "not registered");
    }
    // Valid options register, an empty webhookUrl is "none", null is absent.
    for extra in [
        json!({"webhookUrl": "http://hooks.example.com:9/hook"}),
        json!({"webhookUrl": "http://93.184.215.14/hook"}),
        json!({"webhookUrl": ""}),
        json!({"secret": null, "webhookUrl": null}),
        json!({"secret": SECRET, "webhookUrl": "http://hooks.internal/ws?x=1"}),
    ] {
        let system = unique("goodreg");
        let mut body = extra.clone();
        body["systemId"] = json!(system);
        let v = api(port, None, "/api/register", &body);
        assert_eq!(v["code"], 0, "{extra}: {v}");
    }
    server.assert_serves();
}

#[test]
fn connects_of_a_system_with_a_secret_need_a_token() {
    let mut server = Server::start();
    let port = server.port;
    let system = unique("jwt");
    register_secret(port, &system, SECRET);
    let other = unique("jwt-other");
    let other_secret = "the-other-systems-secret-0123456789";
    register_secret(port, &other, other_secret);
    let q = |token: &str| format!("systemId={system}&token={token}");
    let exp = now() + 600;

    assert_ws_refused(port, &format!("systemId={system}"), "token is required");
    assert_ws_refused(port, &q(""), "token is required");
    // Signed with another system's secret, or with anything but the secret.
    assert_ws_refused(port, &q(&token(other_secret, None)), "signature");
    let resigned = {
        let t = token(SECRET, Some("u"));
        let (input, _) = t.rsplit_once('.').unwrap();
        format!(
            "{input}.{}",
            token("x-x-x-x-x-x-x-x-x", None).rsplit_once('.').unwrap().1
        )
    };
    assert_ws_refused(port, &q(&resigned), "signature");
    // alg none (no signature at all) and other algorithms are refused by name.
    let none = {
        let t = jwt(
            SECRET,
            &json!({"alg": "none", "typ": "JWT"}),
            &json!({"exp": exp}),
        );
        format!("{}.", t.rsplit_once('.').unwrap().0)
    };
    assert_ws_refused(port, &q(&none), "HS256");
    let hs512 = jwt(SECRET, &json!({"alg": "HS512"}), &json!({"exp": exp}));
    assert_ws_refused(port, &q(&hs512), "HS256");
    // exp: required, numeric, not past (beyond the 30 s leeway).
    assert_ws_refused(
        port,
        &q(&hs256(SECRET, &json!({"exp": now() - 3600}))),
        "expired",
    );
    assert_ws_refused(port, &q(&hs256(SECRET, &json!({"userId": "u"}))), "exp");
    assert_ws_refused(port, &q(&hs256(SECRET, &json!({"exp": "tomorrow"}))), "exp");
    assert_ws_refused(
        port,
        &q(&hs256(SECRET, &json!({"exp": exp, "systemId": other}))),
        "another system",
    );
    for malformed in ["abc", "a.b", "a.b.c", "e30.e30.e30.e30", "%FF%FE"] {
        assert_ws_refused(port, &q(malformed), "malformed");
    }
    let log = server.stderr_log();
    assert!(
        log.contains("WebSocket connect refused"),
        "refusals are logged"
    );
    assert!(!log.contains(SECRET), "the secret must never be logged");

    // A valid token: 101, the welcome, and pushes arrive. A token 5 s past its exp is within
    // the leeway.
    let mut ws = ws_with_token(port, &system, &token(SECRET, None));
    let _lenient = ws_with_token(port, &system, &hs256(SECRET, &json!({"exp": now() - 5})));
    let v = signed(
        port,
        &system,
        SECRET,
        "/api/send_to_client",
        &push_body(&ws.client_id, "hi"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(ws.recv_json()["data"], "hi");
    // Each system checks its own secret.
    let _other_ws = ws_with_token(port, &other, &token(other_secret, None));
    server.assert_alive();
}

#[test]
fn a_token_user_id_binds_the_connection() {
    let server = Server::start();
    let port = server.port;
    let system = unique("jwt-user");
    register_secret(port, &system, SECRET);
    // Several connections, so some land on each of the two cores.
    let mut alice: Vec<Ws> = (0..4)
        .map(|_| ws_with_token(port, &system, &token(SECRET, Some("alice"))))
        .collect();
    let mut anonymous = ws_with_token(port, &system, &token(SECRET, None));
    let mut numeric = ws_with_token(
        port,
        &system,
        &hs256(SECRET, &json!({"exp": now() + 60, "userId": 42})),
    );

    let to_user = |user: &str, data: &str| {
        signed(
            port,
            &system,
            SECRET,
            "/api/send_to_user",
            &json!({"userId": user, "sendUserId": "", "code": 9, "msg": "", "data": data}),
        )
    };
    let v = to_user("alice", "for alice");
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["count"], 4, "{v}");
    for ws in &mut alice {
        assert_eq!(ws.recv_json()["data"], "for alice");
    }
    anonymous.expect_nothing(QUIET_MS);
    let v = to_user("42", "for 42");
    assert_eq!(v["data"]["count"], 1, "{v}");
    assert_eq!(numeric.recv_json()["data"], "for 42");

    // A later bind_to_group sets the userId as for any connection.
    let v = signed(
        port,
        &system,
        SECRET,
        "/api/bind_to_group",
        &json!({"clientId": anonymous.client_id, "groupName": "room", "userId": "bob", "extend": ""}),
    );
    assert_eq!(v["code"], 0, "{v}");
    // The group's 1001 (the bound client is a member too) carries the new userId.
    let online = anonymous.recv_json();
    assert_eq!(presence(&online, 1001)["userId"], "bob", "{online}");
    let v = to_user("bob", "for bob");
    assert_eq!(v["data"]["count"], 1, "{v}");
    assert_eq!(anonymous.recv_json()["data"], "for bob");
}

#[test]
fn registering_a_secret_closes_earlier_tokenless_connections() {
    let mut server = Server::start();
    let port = server.port;
    // The original lets clients connect before their system is registered.
    let locked = unique("late-secret");
    let open = unique("late-open");
    let mut early: Vec<Ws> = (0..4).map(|_| server.ws(&locked)).collect();
    let mut stays = server.ws(&open);

    register_secret(port, &locked, SECRET);
    server.register(&open);
    // Every earlier connection of the system with a secret is closed with 1008 (on both cores);
    // the system without one keeps its clients.
    for ws in &mut early {
        assert_eq!(
            ws.expect_end(IO_TIMEOUT, false),
            Ended::Close(1008),
            "{}",
            ws.client_id
        );
    }
    stays.expect_nothing(QUIET_MS);
    let v = api(
        port,
        Some(&open),
        "/api/send_to_client",
        &push_body(&stays.client_id, "still"),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(stays.recv_json()["data"], "still");
    // Coming back with a token works, and is not closed again.
    let mut back = ws_with_token(port, &locked, &token(SECRET, None));
    back.expect_nothing(QUIET_MS);
    server.assert_serves();
}

#[test]
fn a_weak_api_key_stops_the_server_at_start() {
    let dir = temp_dir("weak-key");
    let (port, rpc_port) = free_ports();
    for (line, needle) in [
        ("ApiKey = short", "at least 16"),
        (
            "ApiKey = \"has spaces in it, long enough\"",
            "visible ASCII",
        ),
    ] {
        let path = dir.join("app.ini");
        std::fs::write(&path, config_text(port, rpc_port, &[line])).unwrap();
        let (status, stderr) = run_to_exit(&["-c", path.to_str().unwrap(), "--cores", "2"]);
        assert_eq!(status.code(), Some(2), "{line}: {stderr}");
        assert!(
            stderr.contains("wspush.ApiKey") && stderr.contains(needle),
            "{line}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

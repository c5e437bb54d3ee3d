//! Helpers of the auth tests (issue 7): what a caller of docs/auth.md does, written here with
//! the `hmac` and `base64` crates directly, not with wspush's own `auth` module, so the tests
//! check the server against the documented scheme rather than against itself.

use super::{api_raw, assert_envelope, connect, http, Response, Ws};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::TcpStream;
use tungstenite::WebSocket;

/// A secret long enough for `register` (16..256 bytes).
pub const SECRET: &str = "s3cr3t-for-the-auth-tests-0123456789";

fn mac(secret: &str, data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Lowercase hex HMAC-SHA256 of `body`: the `X-Signature` of a webhook, and of an API call in
/// the old body-only scheme (`SignatureCompat = true`).
pub fn sign(secret: &str, body: &[u8]) -> String {
    mac(secret, body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `X-Signature` of an API call as docs/auth.md defines it: HMAC-SHA256 of
/// `POST\n<route>\n<SystemId>\n<X-Timestamp>\n` followed by the body.
pub fn sign_request(
    secret: &str,
    route: &str,
    system: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut input = format!("POST\n{route}\n{system}\n{timestamp}\n").into_bytes();
    input.extend_from_slice(body);
    sign(secret, &input)
}

/// `X-Timestamp` (now) and `X-Signature` for a call of `system` to `route` with `body`.
pub fn signature_headers(
    secret: &str,
    route: &str,
    system: &str,
    body: &[u8],
) -> [(String, String); 2] {
    let at = now();
    [
        ("X-Timestamp".to_string(), at.to_string()),
        (
            "X-Signature".to_string(),
            sign_request(secret, route, system, at, body),
        ),
    ]
}

/// [`post`] with `extra` headers and the [`signature_headers`] of the call.
pub fn post_signed(
    port: u16,
    system: &str,
    secret: &str,
    route: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let signature = signature_headers(secret, route, system, body);
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    headers.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    post(port, Some(system), route, &headers, body)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A compact JWT with this header and these claims, HMAC-SHA256-signed with `secret`
/// (whatever the header's `alg` says: the tests forge the bad ones on purpose).
pub fn jwt(secret: &str, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, input.as_bytes()));
    format!("{input}.{sig}")
}

/// A valid HS256 token for `claims`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    jwt(secret, &json!({"alg": "HS256", "typ": "JWT"}), claims)
}

/// A valid HS256 token expiring in ten minutes, with a userId when given.
pub fn token(secret: &str, user_id: Option<&str>) -> String {
    let mut claims = json!({"exp": now() + 600});
    if let Some(user) = user_id {
        claims["userId"] = json!(user);
    }
    hs256(secret, &claims)
}

/// POSTs `body` with `Content-Type: application/json`, the SystemId (if any) and `headers`.
pub fn post(
    port: u16,
    system: Option<&str>,
    route: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut all = vec![("Content-Type", "application/json")];
    if let Some(system) = system {
        all.push(("SystemId", system));
    }
    all.extend_from_slice(headers);
    http(port, "POST", route, &all, body)
}

/// A signed call: asserts a 200 envelope and returns it.
pub fn signed(port: u16, system: &str, secret: &str, route: &str, body: &Value) -> Value {
    let bytes = body.to_string();
    let resp = post_signed(port, system, secret, route, &[], bytes.as_bytes());
    assert_eq!(
        resp.status,
        200,
        "signed {route}: {} {}",
        resp.status,
        resp.text()
    );
    let v = resp.json();
    assert_envelope(&v);
    v
}

/// Asserts a refusal: this status, the envelope with code -1, and a msg containing `needle`.
pub fn assert_refused(resp: &Response, status: u16, needle: &str) {
    assert_eq!(
        resp.status,
        status,
        "expected {status}, got {} {}",
        resp.status,
        resp.text()
    );
    let v = resp.json();
    assert_envelope(&v);
    assert_eq!(v["code"], -1, "{v}");
    assert_eq!(v["data"], json!([]), "{v}");
    let msg = v["msg"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        msg.contains(&needle.to_ascii_lowercase()),
        "msg should mention {needle:?}: {v}"
    );
}

/// Registers `system` with a secret (and no ApiKey); asserts code 0.
pub fn register_secret(port: u16, system: &str, secret: &str) {
    let resp = api_raw(
        port,
        None,
        "/api/register",
        json!({"systemId": system, "secret": secret})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["code"], 0, "register {system}: {}", resp.text());
}

/// What a `/ws` handshake got: 101, or a refusal with its status and plain-text body.
pub enum Handshake {
    Upgraded(Box<WebSocket<TcpStream>>),
    Refused(u16, String),
}

/// Opens `/ws?<query>` and reports how the handshake went.
pub fn ws_try(port: u16, query: &str) -> Handshake {
    let url = format!("ws://127.0.0.1:{port}/ws?{query}");
    match tungstenite::client::client(url.as_str(), connect(port)) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Handshake::Upgraded(Box::new(ws))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Handshake::Refused(resp.status().as_u16(), body)
        }
        Err(e) => panic!("/ws?{query}: handshake failed without an HTTP answer: {e}"),
    }
}

/// Asserts `/ws?<query>` is refused with 401 and a body mentioning `needle`.
pub fn assert_ws_refused(port: u16, query: &str, needle: &str) {
    match ws_try(port, query) {
        Handshake::Upgraded(_) => panic!("/ws?{query} was accepted, expected 401 ({needle})"),
        Handshake::Refused(status, body) => {
            assert_eq!(status, 401, "/ws?{query}: {status} {body:?}");
            assert!(
                body.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase()),
                "/ws?{query}: body {body:?} should mention {needle:?}"
            );
        }
    }
}

/// A client of `system` connected with `token`, past its welcome frame.
pub fn ws_with_token(port: u16, system: &str, token: &str) -> Ws {
    let query = format!("systemId={system}&token={token}");
    let ws = match ws_try(port, &query) {
        Handshake::Upgraded(ws) => *ws,
        Handshake::Refused(status, body) => {
            panic!("/ws with a valid token refused: {status} {body:?}")
        }
    };
    let mut client = Ws {
        ws,
        client_id: String::new(),
    };
    let welcome = client.recv_json();
    assert_eq!(welcome["code"], 0, "welcome: {welcome}");
    client.client_id = welcome["data"]["clientId"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without clientId: {welcome}"))
        .to_string();
    client
}

//! Webhooks (issue 7) on one node: a system registered with `webhookUrl` gets its connection
//! events POSTed to a receiver the test runs (`common::receiver`), batched, signed when the
//! system has a secret, retried until the receiver takes them.
//!
//! Nothing sleeps for a state: the receiver is polled for what it got. The fixed waits are the
//! short "nothing more arrives" windows.

mod common;

use common::auth::{sign, signed, token, ws_with_token, SECRET};
use common::receiver::{Hook, Receiver};
use common::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a delivery may take when nothing fails: the batch window plus a busy machine.
const DELIVERY: Duration = Duration::from_secs(5);
/// Long enough for a few retries with backoff (0.5 s, 1 s, 2 s, ...).
const RETRIES: Duration = Duration::from_secs(15);
/// The test receivers listen on 127.0.0.1, which the default config refuses (issue 12).
const PRIVATE: &str = "WebhookAllowPrivate = true";

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Registers `system` with a webhook URL (and a secret when given); asserts code 0.
fn register_hook(port: u16, system: &str, url: &str, secret: Option<&str>) {
    let mut body = json!({"systemId": system, "webhookUrl": url});
    if let Some(secret) = secret {
        body["secret"] = json!(secret);
    }
    let v = api(port, None, "/api/register", &body);
    assert_eq!(v["code"], 0, "register {system} with {url}: {v}");
}

/// The server's `RPCPort`, read back from the config the harness wrote: with the default
/// advertised host it makes the `"node"` of every batch.
fn node_of(server: &Server) -> String {
    let config = std::fs::read_to_string(server.dir.join("app.ini")).unwrap();
    let port = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("RPCPort = "))
        .expect("RPCPort in the test config");
    format!("127.0.0.1:{}", port.trim())
}

/// Asserts one event: its kind and fields, and a time within `[since, now]`.
fn check_event(
    e: &Value,
    kind: &str,
    client: &str,
    user: &str,
    group: &str,
    extend: &str,
    since: u64,
) {
    let obj = e
        .as_object()
        .unwrap_or_else(|| panic!("event is not an object: {e}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clientId",
            "event",
            "extend",
            "groupName",
            "systemId",
            "time",
            "userId"
        ],
        "event keys: {e}"
    );
    assert_eq!(
        (
            &e["event"],
            &e["clientId"],
            &e["userId"],
            &e["groupName"],
            &e["extend"]
        ),
        (
            &json!(kind),
            &json!(client),
            &json!(user),
            &json!(group),
            &json!(extend)
        ),
        "event: {e}"
    );
    let time = e["time"]
        .as_u64()
        .unwrap_or_else(|| panic!("time is not unix ms: {e}"));
    assert!(
        since <= time && time <= unix_ms(),
        "time {time} not within [{since}, now]: {e}"
    );
}

/// Every request is a webhook POST of this system from this node, as documented.
fn check_requests(hooks: &[Hook], path: &str, system: &str, node: &str) {
    for hook in hooks {
        assert_eq!(hook.method, "POST");
        assert_eq!(hook.target, path);
        assert_eq!(hook.header("content-type"), Some("application/json"));
        let id = hook.header("x-webhook-id").unwrap_or_default();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "X-Webhook-Id: {id:?}"
        );
        let body = hook.json();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["events", "node", "systemId"], "batch keys: {body}");
        assert_eq!(body["systemId"], system, "{body}");
        assert_eq!(body["node"], node, "{body}");
        assert!(!hook.events().is_empty(), "an empty batch: {body}");
        assert!(hook.events().len() <= 100, "a batch over 100 events");
    }
}

/// The kinds of `events`, in order.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn connection_events_arrive_in_order_with_their_fields() {
    let receiver = Receiver::start();
    let server = Server::start_with(&[PRIVATE]);
    let system = unique("hooked");
    let path = "/hook?team=1";
    register_hook(server.port, &system, &receiver.url(path), None);
    let since = unix_ms();

    let mut ws = server.ws(&system);
    let id = ws.client_id.clone();
    bind(server.port, &system, &ws, "room", "u1", "e1");
    presence(&ws.recv_json(), 1001);
    // A second bind to a group it is in is no event; a first bind to another group is.
    bind(server.port, &system, &ws, "room", "u1", "e1");
    bind(server.port, &system, &ws, "lobby", "u2", "e2");
    presence(&ws.recv_json(), 1001);
    let v = api(
        server.port,
        Some(&system),
        "/api/unbind_from_group",
        &json!({"clientId": id, "groupName": "room"}),
    );
    assert_eq!(v["code"], 0, "unbind_from_group: {v}");
    // Leaving while in a group: one offline event, not one per group.
    ws.close();

    let events = receiver.wait_delivered(5, DELIVERY);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    let events_after = receiver.delivered();
    assert_eq!(
        events_after.len(),
        5,
        "more events than expected: {events_after:#?}"
    );
    check_event(&events[0], "online", &id, "", "", "", since);
    check_event(&events[1], "bind", &id, "u1", "room", "e1", since);
    // The latest bind's userId/extend are the client's from then on.
    check_event(&events[2], "bind", &id, "u2", "lobby", "e2", since);
    check_event(&events[3], "unbind", &id, "u2", "room", "e2", since);
    check_event(&events[4], "offline", &id, "u2", "", "e2", since);
    let times: Vec<u64> = events.iter().map(|e| e["time"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "times out of order: {times:?}"
    );

    let hooks = receiver.hooks();
    check_requests(&hooks, path, &system, &node_of(&server));
    for hook in &hooks {
        assert_eq!(hook.header("x-signature"), None, "no secret, no signature");
        assert!(hook.ok());
    }
}

#[test]
fn batches_of_a_system_with_a_secret_are_signed() {
    let receiver = Receiver::start();
    let server = Server::start_with(&[PRIVATE]);
    let system = unique("signed");
    register_hook(server.port, &system, &receiver.url("/"), Some(SECRET));
    let since = unix_ms();

    // The system has a secret: its clients connect with a token, its calls are signed.
    let ws = ws_with_token(server.port, &system, &token(SECRET, Some("alice")));
    let id = ws.client_id.clone();
    let v = signed(
        server.port,
        &system,
        SECRET,
        "/api/bind_to_group",
        &json!({"clientId": id, "groupName": "g", "userId": "alice", "extend": ""}),
    );
    assert_eq!(v["code"], 0, "{v}");
    ws.close();

    let events = receiver.wait_delivered(3, DELIVERY);
    assert_eq!(kinds(&events), ["online", "bind", "offline"]);
    // The token's userId binds the connection before it is announced.
    check_event(&events[0], "online", &id, "alice", "", "", since);
    for hook in receiver.hooks() {
        let signature = hook
            .header("x-signature")
            .unwrap_or_else(|| panic!("no X-Signature on {:?}", hook.headers));
        assert_eq!(
            signature,
            sign(SECRET, &hook.body),
            "signature of the body as sent"
        );
        assert_ne!(signature, sign("another secret, same length!", &hook.body));
    }
}

#[test]
fn a_system_without_a_webhook_sends_nothing() {
    let receiver = Receiver::start();
    let server = Server::start_with(&[PRIVATE]);
    let plain = unique("plain");
    server.register(&plain);
    let hooked = unique("hooked");
    register_hook(server.port, &hooked, &receiver.url("/"), None);

    let mut ws = server.ws(&plain);
    bind(server.port, &plain, &ws, "g", "u", "x");
    presence(&ws.recv_json(), 1001);
    ws.close();
    // The hooked system's events go through the same queue after the plain one's would have.
    server.ws(&hooked).close();
    let events = receiver.wait_delivered(2, DELIVERY);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    assert_eq!(receiver.delivered().len(), 2);
    assert_eq!(kinds(&events), ["online", "offline"]);
    for hook in receiver.hooks() {
        assert_eq!(hook.json()["systemId"], hooked.as_str());
    }
}

#[test]
fn a_receiver_down_at_first_gets_the_events_once_it_is_up() {
    // A port that refuses connections: reserved, then released.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = Server::start_with(&[PRIVATE]);
    let system = unique("later");
    register_hook(
        server.port,
        &system,
        &format!("http://127.0.0.1:{port}/late"),
        None,
    );
    let mut ws = server.ws(&system);
    let id = ws.client_id.clone();
    bind(server.port, &system, &ws, "g", "u", "x");
    presence(&ws.recv_json(), 1001);

    // Wait until wspush has seen the receiver down at least once.
    let deadline = Instant::now() + DELIVERY;
    while !server.stderr_log().contains("webhook POST failed") {
        assert!(
            Instant::now() < deadline,
            "no failed POST logged:\n{}",
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let receiver = Receiver::start_on(port);
    let events = receiver.wait_delivered(2, RETRIES);
    assert_eq!(kinds(&events), ["online", "bind"]);
    assert_eq!(events[0]["clientId"], id.as_str());
    ws.close();
    let events = receiver.wait_delivered(3, DELIVERY);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    // Refused connections never reached the receiver: each event exactly once.
    assert_eq!(
        kinds(&receiver.delivered()),
        ["online", "bind", "offline"],
        "{events:#?}"
    );
    assert!(receiver.hooks().iter().all(Hook::ok));
    assert!(
        server
            .stderr_log()
            .contains("webhook receiver reachable again"),
        "recovery not logged"
    );
}

#[test]
fn a_batch_answered_500_is_resent_unchanged_until_a_2xx() {
    let receiver = Receiver::start();
    receiver.fail_next(2);
    let server = Server::start_with(&[PRIVATE]);
    let system = unique("flaky");
    register_hook(server.port, &system, &receiver.url("/flaky"), None);
    let ws = server.ws(&system);

    receiver.wait_until(RETRIES, "two 500s then a 200", |hooks| {
        hooks.iter().any(Hook::ok)
    });
    let hooks = receiver.hooks();
    assert_eq!(
        hooks.iter().map(|h| h.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The same batch each time: same body, same X-Webhook-Id, so a receiver can drop repeats.
    for hook in &hooks[1..] {
        assert_eq!(hook.body, hooks[0].body);
        assert_eq!(hook.header("x-webhook-id"), hooks[0].header("x-webhook-id"));
    }
    // Backoff: 0.5 s, then 1 s (less a little for timer slack).
    let gaps: Vec<Duration> = hooks.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(400),
        "first retry after {:?}",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(900),
        "second retry after {:?}",
        gaps[1]
    );

    ws.close();
    let events = receiver.wait_delivered(2, DELIVERY);
    assert_eq!(
        kinds(&events),
        ["online", "offline"],
        "each event once per 2xx"
    );
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 4);
    assert_ne!(
        hooks[3].header("x-webhook-id"),
        hooks[0].header("x-webhook-id")
    );
}

#[test]
fn a_slow_receiver_does_not_delay_another() {
    let slow = Receiver::start();
    slow.delay(Duration::from_secs(4));
    let fast = Receiver::start();
    let server = Server::start_with(&[PRIVATE, "WebhookWorkers = 2", "WebhookTimeoutMs = 10000"]);
    let (s, f) = (unique("slow"), unique("fast"));
    register_hook(server.port, &s, &slow.url("/"), None);
    register_hook(server.port, &f, &fast.url("/"), None);

    let _a = server.ws(&s);
    let _b = server.ws(&s);
    slow.wait_until(DELIVERY, "the slow receiver's first request", |h| {
        !h.is_empty()
    });
    // While the slow receiver holds its POST, the other system's events still flow.
    let _c = server.ws(&f);
    fast.wait_delivered(1, DELIVERY);
    assert_eq!(
        slow.answered(),
        0,
        "the fast receiver waited for the slow one"
    );
}

#[test]
fn shutdown_delivers_the_last_offline_events() {
    let receiver = Receiver::start();
    let mut server = Server::start_with(&[PRIVATE]);
    let system = unique("bye");
    register_hook(server.port, &system, &receiver.url("/"), None);
    let mut polite = server.ws(&system);
    // This one never answers the server's close: it is cut when ShutdownGrace ends.
    let silent = server.ws(&system);
    receiver.wait_delivered(2, DELIVERY);

    server.signal(libc::SIGTERM);
    assert_eq!(polite.expect_end(IO_TIMEOUT, true), Ended::Close(1001));
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let events = receiver.delivered();
    let mut offline: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "offline")
        .map(|e| e["clientId"].as_str().unwrap())
        .collect();
    offline.sort_unstable();
    assert_eq!(offline, sorted(&[&polite.client_id, &silent.client_id]));
}

/// The `dropped=N` values of the "webhook events dropped" log lines, added up.
fn dropped_in_log(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("webhook events dropped"))
        .filter_map(|l| {
            let at = l.find(" dropped=")? + " dropped=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn a_full_destination_buffer_drops_the_oldest_events_and_says_so() {
    let receiver = Receiver::start();
    receiver.fail_next(usize::MAX);
    let server = Server::start_with(&[PRIVATE, "WebhookBuffer = 2"]);
    let system = unique("full");
    register_hook(server.port, &system, &receiver.url("/"), None);
    let first = server.ws(&system);
    // The first batch (this one event) is cut and failing: the next events wait in the buffer.
    receiver.wait_until(DELIVERY, "the first failed POST", |h| !h.is_empty());
    let more: Vec<Ws> = (0..5).map(|_| server.ws(&system)).collect();

    // Two fit; the three oldest of the five are dropped, counted and logged.
    let deadline = Instant::now() + DELIVERY;
    while dropped_in_log(&server.stderr_log()) < 3 {
        assert!(
            Instant::now() < deadline,
            "drops not logged:\n{}",
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    receiver.fail_next(0);
    let events = receiver.wait_delivered(3, RETRIES);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    let clients: Vec<&str> = events
        .iter()
        .map(|e| e["clientId"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        [&first.client_id, &more[3].client_id, &more[4].client_id],
        "the batch in flight, then the two newest"
    );
    assert_eq!(dropped_in_log(&server.stderr_log()), 3);
}

/// The value of one sample line of `/metrics`, by its exact series text.
fn metric(port: u16, series: &str) -> Option<f64> {
    let resp = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    let text = resp.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn drops_are_exported_by_reason_on_metrics() {
    let receiver = Receiver::start();
    receiver.fail_next(usize::MAX);
    let server = Server::start_with(&[PRIVATE, "WebhookBuffer = 1"]);
    let system = unique("counted");
    register_hook(server.port, &system, &receiver.url("/"), None);
    let _first = server.ws(&system);
    receiver.wait_until(DELIVERY, "the first failed POST", |h| !h.is_empty());
    let _more: Vec<Ws> = (0..4).map(|_| server.ws(&system)).collect();
    let series = r#"wspush_webhook_dropped_total{reason="buffer_full"}"#;
    let deadline = Instant::now() + DELIVERY;
    while metric(server.port, series) != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "{series} = {:?}",
            metric(server.port, series)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(
            server.port,
            r#"wspush_webhook_dropped_total{reason="queue_full"}"#
        ),
        Some(0.0)
    );
    assert!(metric(server.port, "wspush_webhook_posts_failed_total").unwrap() >= 1.0);
    assert_eq!(
        metric(
            server.port,
            r#"wspush_webhook_events_total{result="accepted"}"#
        ),
        Some(5.0)
    );
}

#[test]
fn a_batch_rejected_with_a_4xx_is_dropped_not_retried_and_newer_events_flow() {
    let receiver = Receiver::start();
    receiver.fail_next_with(1, 404);
    let server = Server::start_with(&[PRIVATE]);
    let system = unique("rejected");
    register_hook(server.port, &system, &receiver.url("/gone"), None);
    let ws = server.ws(&system);
    receiver.wait_until(DELIVERY, "the rejected POST", |h| !h.is_empty());
    // Not resent: a retry would come after 0.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.hooks().len(), 1, "a 404 was retried");
    assert_eq!(receiver.hooks()[0].status, 404);
    // The next event goes at once, in a batch of its own.
    ws.close();
    let events = receiver.wait_delivered(1, DELIVERY);
    assert_eq!(kinds(&events), ["offline"]);
    let series = r#"wspush_webhook_dropped_total{reason="undeliverable"}"#;
    assert_eq!(metric(server.port, series), Some(1.0));
    assert!(
        server.stderr_log().contains("rejected by the receiver"),
        "{}",
        server.stderr_log()
    );
}

// ---- issue 12: where webhooks may go, and how much they may hold ---------------------------

#[test]
fn private_webhook_addresses_are_refused_at_register_by_default() {
    let receiver = Receiver::start();
    let server = Server::start();
    for url in [
        receiver.url("/h"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.7/hook".to_string(),
        "http://[::1]:9/".to_string(),
        "http://[::ffff:192.168.0.1]/".to_string(),
    ] {
        let system = unique("ssrf");
        let v = api(
            server.port,
            None,
            "/api/register",
            &json!({"systemId": system, "webhookUrl": url}),
        );
        assert_fails_naming(&v, "webhookUrl");
        assert_fails_naming(&v, "WebhookAllowPrivate");
        let v = api(
            server.port,
            Some(&system),
            "/api/get_online_list",
            &json!({"groupName": "g"}),
        );
        assert_fails_naming(&v, "not registered");
    }
    // The operator's switch lets them through.
    let allowed = Server::start_with(&[PRIVATE]);
    register_hook(allowed.port, &unique("lan"), &receiver.url("/h"), None);
}

#[test]
fn a_host_name_that_resolves_to_loopback_is_not_posted_to_by_default() {
    let receiver = Receiver::start();
    let url = format!("http://localhost:{}/named", receiver.port);
    let series = r#"wspush_webhook_dropped_total{reason="refused"}"#;
    let server = Server::start();
    let system = unique("rebind");
    // A name passes register (a core never waits for DNS); the sender resolves it.
    register_hook(server.port, &system, &url, None);
    let ws = server.ws(&system);
    let deadline = Instant::now() + DELIVERY;
    while metric(server.port, series) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{series} = {:?}\n{}",
            metric(server.port, series),
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next batch is resolved and refused again; the log says so once.
    ws.close();
    while metric(server.port, series) != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "{series} = {:?}",
            metric(server.port, series)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(receiver.hooks().is_empty(), "{:?}", receiver.hooks().len());
    let log = server.stderr_log();
    let lines = log
        .lines()
        .filter(|l| l.contains("WebhookAllowPrivate is off"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(
        log.contains("localhost is 127.0.0.1") || log.contains("localhost is ::1"),
        "{log}"
    );

    // Allowed, the same URL delivers: it was the address that was refused, not the name.
    let allowed = Server::start_with(&[PRIVATE]);
    let system = unique("named");
    register_hook(allowed.port, &system, &url, None);
    let _ws = allowed.ws(&system);
    let events = receiver.wait_delivered(1, DELIVERY);
    assert_eq!(kinds(&events), ["online"]);
}

#[test]
fn events_beyond_webhook_bytes_are_dropped_counted_and_the_budget_comes_back() {
    let receiver = Receiver::start();
    receiver.fail_next(usize::MAX);
    let server = Server::start_with(&[PRIVATE, "WebhookBytes = 65536"]);
    let system = unique("bytes");
    register_hook(server.port, &system, &receiver.url("/"), None);
    let ws = server.ws(&system);
    receiver.wait_until(DELIVERY, "the first failed POST", |h| !h.is_empty());
    // 40 bind events of 4 KB each while the receiver is down: about 16 fit in 64 KiB.
    let extend = "e".repeat(4000);
    for n in 0..40 {
        bind(server.port, &system, &ws, &format!("g{n}"), "u", &extend);
    }
    // Each event was offered or dropped before its bind answered.
    let series = r#"wspush_webhook_dropped_total{reason="bytes_full"}"#;
    let dropped = metric(server.port, series).unwrap_or_else(|| panic!("no {series}")) as usize;
    assert!((20..40).contains(&dropped), "{series} = {dropped}");
    let deadline = Instant::now() + DELIVERY;
    while dropped_in_log(&server.stderr_log()) < dropped as u64 {
        assert!(
            Instant::now() < deadline,
            "drops not logged:\n{}",
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What fitted is delivered once the receiver is back, and then there is room again.
    receiver.fail_next(0);
    let events = receiver.wait_delivered(41 - dropped, RETRIES);
    std::thread::sleep(Duration::from_millis(QUIET_MS));
    assert_eq!(receiver.delivered().len(), 41 - dropped);
    assert!(events[1..].iter().all(|e| e["extend"] == json!(extend)));
    bind(server.port, &system, &ws, "after", "u", &extend);
    let events = receiver.wait_delivered(42 - dropped, DELIVERY);
    assert_eq!(events.last().unwrap()["groupName"], "after");
    assert_eq!(metric(server.port, series), Some(dropped as f64));
}

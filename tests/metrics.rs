//! `GET /metrics`: the Prometheus text format read back with a real parser (`prometheus-parse`),
//! and its numbers checked against what each test did: connections open, pushes, API requests
//! by route and code, disconnects by reason (close, reset, kicked, slow consumer). Also the
//! ApiKey on the operations routes.
//!
//! Counters move asynchronously (a disconnect is counted when the core has cleaned up), so the
//! checks poll `/metrics` until the expected value shows or a deadline passes; nothing sleeps.

mod common;

use common::*;
use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long a counter gets to reach its expected value.
const SETTLE: Duration = Duration::from_secs(10);

/// One parsed scrape.
struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    /// The sum of every sample of `name` whose labels include `labels` (a counter or gauge).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a counter or gauge: {other:?}"),
            })
            .sum()
    }

    /// The number of samples of `name` (with `labels`).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .count()
    }

    /// The histogram of `name` with `labels`: `(le, cumulative count)` pairs.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let sample = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no histogram {name} {labels:?} in:\n{}", self.text));
        match &sample.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

/// Scrapes `/metrics` and parses it. Asserts the answer is the 0.0.4 text format and that every
/// line is one the parser understands (it skips what it cannot read, so a malformed line would
/// otherwise pass unnoticed).
fn scrape(port: u16, headers: &[(&str, &str)]) -> Metrics {
    let resp = http(port, "GET", "/metrics", headers, b"");
    assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = resp.text();
    assert!(text.ends_with('\n'), "the format ends every line with \\n");
    for line in text.lines() {
        assert!(
            line.starts_with("# HELP ")
                || line.starts_with("# TYPE ")
                || matches!(LineInfo::parse(line), LineInfo::Sample { .. }),
            "not a line of the text format: {line:?}"
        );
        if let LineInfo::Sample { value, .. } = LineInfo::parse(line) {
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "bad value in {line:?}"
            );
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics");
    Metrics { scrape, text }
}

/// Polls `/metrics` until `check` accepts it; panics with the last scrape after [`SETTLE`].
fn wait_metrics(port: u16, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + SETTLE;
    let mut pause = Duration::from_millis(5);
    loop {
        let m = scrape(port, &[]);
        if check(&m) {
            return m;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not seen within {SETTLE:?}; last scrape:\n{}",
                m.text
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn send(port: u16, system: Option<&str>, client_id: &str, data: &str) -> serde_json::Value {
    api(
        port,
        system,
        "/api/send_to_client",
        &json!({"clientId": client_id, "sendUserId": "t", "code": 7, "msg": "m", "data": data}),
    )
}

#[test]
fn metrics_count_connections_pushes_requests_and_disconnects() {
    let server = Server::start();
    let port = server.port;
    server.register("m");

    // N connections, spread over the cores by SO_REUSEPORT.
    const N: usize = 8;
    let mut clients: Vec<Ws> = (0..N).map(|_| server.ws("m")).collect();
    let m = wait_metrics(port, "N connections", |m| {
        m.sum("wspush_connections", &[]) == N as f64
    });
    assert_eq!(m.count("wspush_connections", &[]), 2, "one series per core");
    assert_eq!(m.sum("wspush_connects_total", &[]), N as f64);
    assert_eq!(m.sum("wspush_cores", &[]), 2.0);
    assert_eq!(m.sum("wspush_ready", &[]), 1.0);
    assert_eq!(m.sum("wspush_systems_registered", &[]), 1.0);
    assert!(m.sum("process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        m.sum("process_open_fds", &[]) >= N as f64,
        "each connection is a file"
    );
    let frames_before = m.sum("wspush_frames_pushed_total", &[]);
    let bytes_before = m.sum("wspush_bytes_pushed_total", &[]);

    // K pushes, each received; one failure (no SystemId), one unknown route, one GET on a
    // POST route.
    const K: usize = 5;
    for i in 0..K {
        let target = &mut clients[i % N];
        assert_eq!(send(port, Some("m"), &target.client_id, "hi")["code"], 0);
        assert_eq!(target.recv_json()["data"], "hi");
    }
    assert_eq!(send(port, None, &clients[0].client_id, "x")["code"], -1);
    assert_eq!(http(port, "POST", "/api/nope", &[], b"{}").status, 404);
    assert_eq!(http(port, "GET", "/api/register", &[], b"").status, 405);

    let m = scrape(port, &[]);
    let frames = m.sum("wspush_frames_pushed_total", &[]) - frames_before;
    assert!(frames >= K as f64, "{frames} frames pushed for {K} pushes");
    assert!(m.sum("wspush_bytes_pushed_total", &[]) - bytes_before >= (K * 60) as f64);
    let requests = |route: &str, status: &str, code: &str| {
        m.sum(
            "wspush_api_requests_total",
            &[("route", route), ("status", status), ("code", code)],
        )
    };
    assert_eq!(requests("register", "200", "0"), 1.0);
    assert_eq!(requests("send_to_client", "200", "0"), K as f64);
    assert_eq!(requests("send_to_client", "200", "-1"), 1.0);
    assert_eq!(requests("unknown", "404", "-1"), 1.0);
    assert_eq!(requests("register", "405", "-1"), 1.0);
    // The latency histogram counts every send_to_client, in cumulative buckets up to +Inf.
    let buckets = m.histogram(
        "wspush_api_request_duration_seconds",
        &[("route", "send_to_client")],
    );
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, (K + 1) as f64));
    assert_eq!(
        m.sum(
            "wspush_api_request_duration_seconds_count",
            &[("route", "send_to_client")]
        ),
        (K + 1) as f64
    );
    assert!(
        m.sum(
            "wspush_api_request_duration_seconds_sum",
            &[("route", "send_to_client")]
        ) > 0.0
    );

    // Disconnects by reason: a close frame, a reset, a close_client.
    let kicked = clients.pop().unwrap();
    let reset = clients.pop().unwrap();
    let closed = clients.pop().unwrap();
    closed.close();
    reset.drop_abruptly(true);
    let v = api(
        port,
        Some("m"),
        "/api/close_client",
        &json!({ "clientId": kicked.client_id }),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut kicked = kicked;
    kicked.expect_end(IO_TIMEOUT, true);
    let m = wait_metrics(port, "three disconnects", |m| {
        m.sum("wspush_disconnects_total", &[]) == 3.0
    });
    let reason = |r: &str| m.sum("wspush_disconnects_total", &[("reason", r)]);
    assert_eq!(reason("close"), 1.0, "{}", m.text);
    assert_eq!(reason("reset"), 1.0, "{}", m.text);
    assert_eq!(reason("kicked"), 1.0, "{}", m.text);
    assert_eq!(reason("slow_consumer"), 0.0);
    assert_eq!(
        m.count("wspush_disconnects_total", &[]),
        9,
        "every reason, 0 or not"
    );
    assert_eq!(m.sum("wspush_connections", &[]), (N - 3) as f64);
    // Cross-core traffic happened (some pushes went to the other core); single node: no
    // peer or etcd families.
    assert!(m.sum("wspush_core_messages_total", &[("kind", "request")]) > 0.0);
    assert!(!m.text.contains("wspush_peer_"), "{}", m.text);
    assert!(!m.text.contains("wspush_etcd_"), "{}", m.text);
}

#[test]
fn a_slow_consumer_close_is_counted_once() {
    let server = Server::start_with(&["QueueFrames = 8"]);
    let port = server.port;
    server.register("slow");
    // A client that never reads, with a small receive window: the server's queue fills fast.
    let slow = Ws::connect_small_rcvbuf(port, "slow", 4096);
    let mut reader = server.ws("slow");

    let big = "x".repeat(64 * 1024);
    let mut full = false;
    for i in 0..600 {
        send(port, Some("slow"), &slow.client_id, &big);
        if i % 10 == 9 && scrape(port, &[]).sum("wspush_queue_full_total", &[]) >= 1.0 {
            full = true;
            break;
        }
    }
    assert!(full, "600 pushes of 64 KiB never filled an 8-frame queue");
    let m = wait_metrics(port, "the slow consumer's disconnect", |m| {
        m.sum("wspush_disconnects_total", &[("reason", "slow_consumer")]) == 1.0
    });
    assert_eq!(m.sum("wspush_queue_full_total", &[]), 1.0);
    assert_eq!(m.sum("wspush_disconnects_total", &[]), 1.0, "{}", m.text);
    assert_eq!(m.sum("wspush_connections", &[]), 1.0);
    // The other client is unaffected.
    assert_eq!(send(port, Some("slow"), &reader.client_id, "ok")["code"], 0);
    assert_eq!(reader.recv_json()["data"], "ok");
    drop(slow);
}

#[test]
fn group_pushes_count_one_frame_per_member() {
    let server = Server::start();
    let port = server.port;
    server.register("g");
    let mut members: Vec<Ws> = (0..4).map(|_| server.ws("g")).collect();
    for (i, ws) in members.iter().enumerate() {
        bind(port, "g", ws, "room", &format!("u{i}"), "");
    }
    // Each bind announces itself (1001) to every member bound so far: 1 + 2 + 3 + 4.
    for (i, ws) in members.iter_mut().enumerate() {
        for _ in i..4 {
            presence(&ws.recv_json(), 1001);
        }
    }
    let before = wait_metrics(port, "the 10 presence frames", |m| {
        m.sum("wspush_frames_pushed_total", &[]) == 10.0
    });
    let v = api(
        port,
        Some("g"),
        "/api/send_to_group",
        &json!({"groupName": "room", "sendUserId": "", "code": 7, "msg": "", "data": "all"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    for ws in &mut members {
        assert_eq!(ws.recv_json()["data"], "all");
    }
    let after = scrape(port, &[]);
    assert_eq!(
        after.sum("wspush_frames_pushed_total", &[])
            - before.sum("wspush_frames_pushed_total", &[]),
        4.0
    );
    assert_eq!(
        after.sum(
            "wspush_api_requests_total",
            &[("route", "bind_to_group"), ("code", "0")]
        ),
        4.0
    );
}

#[test]
fn the_operations_routes_want_the_api_key_when_one_is_set() {
    const KEY: &str = "ops-test-key-0123456789";
    let server = Server::start_with(&[&format!("ApiKey = {KEY}")]);
    let port = server.port;
    let header = format!("apikey {KEY}");
    let basic = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{KEY}"))
        )
    };
    for path in ["/metrics", "/status", "/status.json"] {
        let refused = http(port, "GET", path, &[], b"");
        assert_eq!(refused.status, 401, "{path} without the key");
        assert!(
            refused
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic ")),
            "{path}: a browser must be asked for basic auth: {:?}",
            refused.headers
        );
        let wrong = http(port, "GET", path, &[("Authorization", "apikey nope")], b"");
        assert_eq!(wrong.status, 401, "{path} with a wrong key");
        let with_query = format!("{path}?apikey=nope");
        assert_eq!(http(port, "GET", &with_query, &[], b"").status, 401);

        let ok = |resp: Response, how: &str| {
            assert_eq!(
                resp.status,
                200,
                "{path} with the key as {how}: {}",
                resp.text()
            )
        };
        ok(
            http(port, "GET", path, &[("Authorization", &header)], b""),
            "apikey",
        );
        ok(
            http(port, "GET", path, &[("Authorization", &basic)], b""),
            "basic auth",
        );
        let with_query = format!("{path}?apikey={KEY}");
        ok(http(port, "GET", &with_query, &[], b""), "query");
    }
    // The probes stay open to the orchestrator.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(port, "GET", "/readyz", &[], b"").status, 200);
    // And the scrape with the key is the real thing.
    let m = scrape(port, &[("Authorization", &header)]);
    assert_eq!(m.sum("wspush_connections", &[]), 0.0);
}

#[test]
fn ops_require_key_false_opens_the_operations_routes_but_not_the_api() {
    const KEY: &str = "ops-test-key-0123456789";
    let server = Server::start_with(&[&format!("ApiKey = {KEY}"), "OpsRequireKey = false"]);
    for path in ["/metrics", "/status", "/status.json"] {
        let resp = http(server.port, "GET", path, &[], b"");
        assert_eq!(resp.status, 200, "{path} without the key: {}", resp.text());
    }
    // The API still wants the key.
    let resp = http(server.port, "POST", "/api/get_online_list", &[], b"{}");
    assert_eq!(resp.status, 403, "{}", resp.text());
    // And the start-up log says the operations routes are open.
    let log = server.stderr_log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("OpsRequireKey = false")),
        "no start-up warning:\n{log}"
    );
    // Without OpsRequireKey (default true), no such warning.
    let server = Server::start_with(&[&format!("ApiKey = {KEY}")]);
    assert!(!server.stderr_log().contains("OpsRequireKey"));
}

#[test]
fn without_an_api_key_the_operations_routes_are_open() {
    let server = Server::start();
    for path in ["/metrics", "/status", "/status.json"] {
        let resp = http(server.port, "GET", path, &[], b"");
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("cache-control"), Some("no-store"), "{path}");
    }
    let page = http(server.port, "GET", "/status", &[], b"");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("status.json"));
    // Only GET: a POST to an operations path is no route.
    assert_eq!(http(server.port, "POST", "/metrics", &[], b"").status, 404);
}

#[test]
fn a_cluster_node_reports_etcd_and_its_peers() {
    use common::etcd::{converge, Etcd, Node};
    let etcd = Etcd::start();
    let mut nodes = Node::start_many(&etcd, 2, &[]);
    converge(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);
    let peer = b.addr();
    let peer = [("peer", peer.as_str())];

    // converge() pushed through each node to the other: the links are up and have a round
    // trip; etcd membership is established.
    let m = scrape(a.port, &[]);
    assert_eq!(m.sum("wspush_etcd_connected", &[]), 1.0, "{}", m.text);
    assert!(m.sum("wspush_etcd_sessions_total", &[]) >= 1.0);
    assert_eq!(m.sum("wspush_etcd_keepalive_failures_total", &[]), 0.0);
    assert!(m.sum("wspush_peer_links_up", &peer) >= 1.0, "{}", m.text);
    assert!(m.sum("wspush_peer_requests_total", &peer) >= 1.0);
    let rtt = m.sum("wspush_peer_rtt_seconds", &peer);
    assert!(rtt > 0.0 && rtt < 5.0, "rtt {rtt}");
    assert_eq!(
        m.count("wspush_peer_links_up", &[]),
        1,
        "one peer: {}",
        m.text
    );
    let status = http(a.port, "GET", "/status.json", &[], b"").json();
    assert_eq!(status["cluster"], true);
    assert_eq!(status["etcd"]["connected"], true, "{status}");
    assert_eq!(status["peers"][0]["node"], b.addr(), "{status}");
    assert!(status["peers"][0]["rttMs"].as_f64().unwrap() > 0.0);
    assert_eq!(status["node"], a.addr());

    // A push through A to a client of B once B is gone: the call fails and is counted.
    a.register("dead");
    let b_client = b.ws("dead");
    let errors = m.sum("wspush_peer_errors_total", &peer);
    let mut b = nodes.pop().unwrap();
    b.signal(libc::SIGKILL);
    b.wait_exit(IO_TIMEOUT).expect("the killed node exits");
    let a = &nodes[0];
    let v = send(a.port, Some("dead"), &b_client.client_id, "lost");
    assert_eq!(
        v["code"], 0,
        "a dead peer's client is answered as sent: {v}"
    );
    // B's lease (5 s) outlives this: A still routes to B, and the call fails.
    let m = scrape(a.port, &[]);
    assert!(
        m.sum("wspush_peer_errors_total", &peer) > errors,
        "{}",
        m.text
    );
}

/// A group of `members` WebSockets bound to `group` of `system`, the presence floods drained.
fn bound_group(server: &Server, system: &str, group: &str, members: usize) -> Vec<Ws> {
    let mut ws: Vec<Ws> = (0..members).map(|_| server.ws(system)).collect();
    for (i, w) in ws.iter().enumerate() {
        bind(server.port, system, w, group, &format!("u{i}"), "");
    }
    // Each member saw the 1001 of every bind from its own on.
    for (i, w) in ws.iter_mut().enumerate() {
        for _ in i..members {
            presence(&w.recv_json(), 1001);
        }
    }
    ws
}

#[test]
fn a_core_under_broadcast_load_sends_the_pushes_of_one_window_in_one_write_per_socket() {
    // One core, and a window long enough that a slow machine still fits many pushes in it.
    let server = Server::start_cores(&["FlushWindowUs = 50000"], 1);
    let port = server.port;
    server.register("room");
    const MEMBERS: usize = 40;
    let mut members = bound_group(&server, "room", "room", MEMBERS);
    let before = scrape(port, &[]);
    // Four senders at once: pushes keep arriving while the core writes the last ones, which
    // is load, so each socket is written once per window.
    const SENDERS: usize = 4;
    const PUSHES: usize = 15;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            std::thread::spawn(move || {
                for n in 0..PUSHES {
                    let data = format!("{s}-{n}");
                    let body = json!({"groupName": "room", "sendUserId": "s", "code": 7,
                        "msg": "m", "data": data});
                    let v = api(port, Some("room"), "/api/send_to_group", &body);
                    assert_eq!(v["code"], 0, "{v}");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Every member gets every push, each sender's in order: coalescing changes the writes,
    // not the stream.
    for ws in &mut members {
        let mut next = [0usize; SENDERS];
        for _ in 0..SENDERS * PUSHES {
            let data = ws.recv_json()["data"].as_str().unwrap().to_string();
            let (s, n) = data.split_once('-').unwrap();
            let s: usize = s.parse().unwrap();
            assert_eq!(
                n.parse::<usize>().unwrap(),
                next[s],
                "sender {s} out of order"
            );
            next[s] += 1;
        }
    }
    let total = (MEMBERS * SENDERS * PUSHES) as f64;
    let after = wait_metrics(port, "the pushes counted", |m| {
        m.sum("wspush_frames_pushed_total", &[])
            >= before.sum("wspush_frames_pushed_total", &[]) + total
    });
    let frames = after.sum("wspush_frames_pushed_total", &[])
        - before.sum("wspush_frames_pushed_total", &[]);
    let writes = after.sum("wspush_socket_writes_total", &[])
        - before.sum("wspush_socket_writes_total", &[]);
    assert_eq!(frames, total);
    assert!(
        writes * 2.0 <= frames,
        "{frames} frames took {writes} writes: the window gathered nothing"
    );
}

#[test]
fn a_broadcast_that_finds_the_core_idle_is_written_at_once() {
    // The longest window: each push right after the last one's receipt, with nothing else
    // queued, goes out at once instead of waiting for it (before adaptive flushing, every
    // broadcast within 10 windows of another waited a window).
    let server = Server::start_cores(&["FlushWindowUs = 100000"], 1);
    let port = server.port;
    server.register("idle");
    let mut members = bound_group(&server, "idle", "g", 40);
    let before = scrape(port, &[]);
    const PUSHES: usize = 8;
    let started = Instant::now();
    for n in 0..PUSHES {
        let body = json!({"groupName": "g", "sendUserId": "s", "code": 7, "msg": "m", "data": n});
        assert_eq!(
            api(port, Some("idle"), "/api/send_to_group", &body)["code"],
            0
        );
        for ws in &mut members {
            assert_eq!(ws.recv_json()["data"], n);
        }
    }
    // Not a benchmark: waiting for the window would make the eight pushes take 700 ms or
    // more; written at once they take a few milliseconds even on a loaded machine.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(350),
        "{PUSHES} pushes took {took:?}"
    );
    let after = scrape(port, &[]);
    let writes = after.sum("wspush_socket_writes_total", &[])
        - before.sum("wspush_socket_writes_total", &[]);
    assert!(
        writes >= (40 * PUSHES) as f64,
        "{writes} writes for {PUSHES} pushes to 40"
    );
}

#[test]
fn unicast_pushes_are_written_one_by_one_without_waiting_for_a_window() {
    // No broadcast on this core: each send_to_client is written at once, so a huge window
    // costs nothing, and each push is its own write.
    let server = Server::start_cores(&["FlushWindowUs = 100000"], 1);
    let port = server.port;
    server.register("uni");
    let mut ws = server.ws("uni");
    let before = scrape(port, &[]);
    let started = Instant::now();
    for n in 0..5 {
        assert_eq!(
            send(port, Some("uni"), &ws.client_id, &n.to_string())["code"],
            0
        );
        assert_eq!(ws.recv_json()["data"], n.to_string());
    }
    // Not a benchmark: waiting for the window would make the five round trips take 500 ms or
    // more; without it they take a few milliseconds even on a loaded machine.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "5 pushes took {took:?}");
    let after = scrape(port, &[]);
    let writes = after.sum("wspush_socket_writes_total", &[])
        - before.sum("wspush_socket_writes_total", &[]);
    assert!(writes >= 5.0, "{writes} writes for 5 pushes");
}

//! Issue 12 in cluster mode: a node starts and serves with 100,000 systems in etcd (the snapshot
//! after connect is read in pages), `MaxSystems` counts what etcd holds, and a node without
//! `ApiKey` says at start that its API is open.

mod common;

use common::etcd::{Etcd, Node};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The value of one sample line of `/metrics`, by its exact series text.
fn metric(port: u16, series: &str) -> Option<f64> {
    let resp = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (≤ `timeout`) until the node knows `n` systems.
fn wait_systems(node: &Node, n: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while metric(node.port, "wspush_systems_registered") != Some(n) {
        assert!(
            Instant::now() < deadline,
            "wspush_systems_registered = {:?}, want {n}\n{}",
            metric(node.port, "wspush_systems_registered"),
            node.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_restarted_with_100000_systems_in_etcd_becomes_ready_and_serves_them() {
    const SYSTEMS: usize = 100_000;
    let etcd = Etcd::start();
    let mut first = Node::start(&etcd, &[]);
    // Written as the original writes them; about 10 MB in all, past gRPC's 4 MiB per response.
    let kvs: Vec<(String, String)> = (0..SYSTEMS)
        .map(|i| {
            let id = format!("bulk-system-{i:06}");
            let value = format!(r#"{{"systemId":"{id}","registerTime":1764000000}}"#);
            (format!("ws/account/{id}"), value)
        })
        .collect();
    etcd.put_many(&kvs);
    // The running node hears of them through its watch (or a re-read after it).
    wait_systems(&first, SYSTEMS as f64, Duration::from_secs(30));
    first.signal(libc::SIGTERM);
    assert!(
        first.wait_exit(Duration::from_secs(10)).is_some(),
        "node did not stop"
    );

    // The restart reads all of them before it says ready (Node::start waits for /readyz).
    let node = Node::start(&etcd, &[]);
    wait_systems(&node, SYSTEMS as f64, Duration::from_secs(5));
    let system = "bulk-system-054321";
    let mut ws = node.ws(system);
    let v = api(
        node.port,
        Some(system),
        "/api/send_to_system",
        &json!({"code": 7, "msg": "", "data": "hi"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(ws.recv_json()["data"], "hi");
    // MaxSystems (100,000 by default) counts what etcd holds: no more can be registered.
    let v = api(
        node.port,
        None,
        "/api/register",
        &json!({"systemId": unique("one-more")}),
    );
    assert_fails_naming(&v, "MaxSystems");
    assert_eq!(etcd.keys("ws/account/one-more").len(), 0);
}

#[test]
fn a_cluster_node_without_api_key_warns_at_start() {
    let etcd = Etcd::start();
    let open = Node::start(&etcd, &[]);
    let keyed = Node::start(&etcd, &["ApiKey = 0123456789abcdef0123456789abcdef"]);
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("cluster mode without ApiKey"))
            .count()
    };
    let log = open.stderr_log();
    assert_eq!(warned(&log), 1, "{log}");
    assert!(log.contains("set [wspush] ApiKey"), "{log}");
    assert_eq!(warned(&keyed.stderr_log()), 0, "{}", keyed.stderr_log());
    // A single node keeps the original's open API without the warning.
    let single = Server::start();
    assert_eq!(warned(&single.stderr_log()), 0, "{}", single.stderr_log());
}

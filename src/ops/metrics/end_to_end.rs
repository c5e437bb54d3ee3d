//! The snapshot and its text end to end: counters bumped as the cores bump them, snapshots
//! taken and merged, and the `/metrics` text they render to.

use super::render::render;
use super::*;
use crate::counters::{CoreMetrics, EndReason, EtcdSnapshot, LinkStats};

fn sample_snapshot() -> NodeSnapshot {
    let metrics = CoreMetrics::default();
    metrics.connects.add(5);
    metrics.disconnected(EndReason::SlowConsumer);
    metrics.disconnected(EndReason::ClientClose);
    metrics.disconnected(EndReason::ClientClose);
    metrics.pushed(3, 100);
    let send = "/api/send_to_client";
    metrics.api_request(send, true, 200, true, Duration::from_micros(50));
    metrics.api_request(send, true, 200, false, Duration::from_millis(3));
    metrics.api_request("/api/nope", false, 404, false, Duration::from_secs(9));
    metrics.api_request("/favicon.ico", false, 404, false, Duration::ZERO);
    let mut core0 = metrics.snapshot(0);
    core0.connections = 2;
    core0.registered_systems = 4;
    let link = LinkStats::default();
    link.connected();
    link.connected();
    link.call_done(true, Duration::from_millis(2));
    link.call_done(false, Duration::from_millis(100));
    core0.links = vec![link.snapshot("10.0.0.2:7900".parse().unwrap(), true)];

    let other = CoreMetrics::default();
    other.pushed(1, 100);
    other.api_request(send, true, 200, true, Duration::from_micros(200));
    let mut core1 = other.snapshot(1);
    core1.connections = 3;
    core1.links = vec![LinkStats::default().snapshot("10.0.0.2:7900".parse().unwrap(), false)];
    NodeSnapshot {
        node: "10.0.0.1:7900".into(),
        version: "9.9.9",
        cluster: true,
        ready: true,
        cores: vec![core0, core1],
        etcd: Some(EtcdSnapshot {
            connected: true,
            sessions: 2,
            keepalive_failures: 1,
            connect_failures: 0,
        }),
        webhook: Some(crate::webhook::Stats {
            accepted: 20,
            delivered: 12,
            posts_failed: 3,
            dropped_queue_full: 1,
            dropped_buffer_full: 4,
            dropped_undeliverable: 2,
            dropped_bytes_full: 5,
            dropped_refused: 6,
        }),
        start_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ..NodeSnapshot::default()
    }
}

/// The value of the line that starts with `series ` exactly.
fn value(text: &str, series: &str) -> String {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .to_string()
}

#[test]
fn renders_a_snapshot() {
    let text = render(&sample_snapshot());
    assert_eq!(value(&text, r#"wspush_build_info{version="9.9.9"}"#), "1");
    assert_eq!(value(&text, r#"wspush_connections{core="0"}"#), "2");
    assert_eq!(value(&text, r#"wspush_connections{core="1"}"#), "3");
    assert_eq!(value(&text, "wspush_connects_total"), "5");
    assert_eq!(
        value(&text, r#"wspush_disconnects_total{reason="close"}"#),
        "2"
    );
    assert_eq!(
        value(&text, r#"wspush_disconnects_total{reason="slow_consumer"}"#),
        "1"
    );
    assert_eq!(
        value(&text, r#"wspush_disconnects_total{reason="kicked"}"#),
        "0"
    );
    assert_eq!(value(&text, "wspush_frames_pushed_total"), "4");
    assert_eq!(value(&text, "wspush_bytes_pushed_total"), "400");
    assert_eq!(
        value(
            &text,
            r#"wspush_api_requests_total{route="send_to_client",status="200",code="0"}"#
        ),
        "2"
    );
    assert_eq!(
        value(
            &text,
            r#"wspush_api_requests_total{route="send_to_client",status="200",code="-1"}"#
        ),
        "1"
    );
    assert_eq!(
        value(
            &text,
            r#"wspush_api_requests_total{route="unknown",status="404",code="-1"}"#
        ),
        "1"
    );
    assert_eq!(
        value(
            &text,
            r#"wspush_api_requests_total{route="other",status="404",code="-1"}"#
        ),
        "1"
    );
    // Cumulative buckets: 50 us and 200 us and 3 ms.
    let bucket = |le: &str| {
        value(
            &text,
            &format!(
                r#"wspush_api_request_duration_seconds_bucket{{route="send_to_client",le="{le}"}}"#
            ),
        )
    };
    assert_eq!(bucket("0.0001"), "1");
    assert_eq!(bucket("0.00025"), "2");
    assert_eq!(bucket("0.0025"), "2");
    assert_eq!(bucket("0.005"), "3");
    assert_eq!(bucket("+Inf"), "3");
    assert_eq!(
        value(
            &text,
            r#"wspush_api_request_duration_seconds_count{route="send_to_client"}"#
        ),
        "3"
    );
    assert_eq!(
        value(
            &text,
            r#"wspush_api_request_duration_seconds_sum{route="send_to_client"}"#
        ),
        "0.00325"
    );
    assert_eq!(
        value(
            &text,
            r#"wspush_api_request_duration_seconds_bucket{route="unknown",le="2.5"}"#
        ),
        "0"
    );
    let peer = r#"{peer="10.0.0.2:7900"}"#;
    assert_eq!(value(&text, &format!("wspush_peer_links_up{peer}")), "1");
    assert_eq!(
        value(&text, &format!("wspush_peer_requests_total{peer}")),
        "2"
    );
    assert_eq!(
        value(&text, &format!("wspush_peer_errors_total{peer}")),
        "1"
    );
    assert_eq!(
        value(&text, &format!("wspush_peer_reconnects_total{peer}")),
        "1"
    );
    assert_eq!(
        value(&text, &format!("wspush_peer_rtt_seconds{peer}")),
        "0.002"
    );
    assert_eq!(value(&text, "wspush_etcd_connected"), "1");
    assert_eq!(value(&text, "wspush_etcd_keepalive_failures_total"), "1");
    assert_eq!(
        value(
            &text,
            "wspush_webhook_dropped_total{reason=\"buffer_full\"}"
        ),
        "4"
    );
    assert_eq!(
        value(&text, "wspush_webhook_events_total{result=\"delivered\"}"),
        "12"
    );
    assert_eq!(value(&text, "wspush_webhook_posts_failed_total"), "3");
    assert_eq!(value(&text, "wspush_systems_registered"), "4");
    assert_eq!(value(&text, "process_start_time_seconds"), "1700000000");
    // Every family is declared once, before its samples, and every sample line belongs to
    // a declared family.
    let mut declared = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!declared.contains(&name.to_string()), "{name} twice");
            declared.push(name.to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = declared.last().expect("sample before any TYPE");
            assert!(
                name == family || name.strip_prefix(family.as_str()).is_some(),
                "{name} outside its family {family}"
            );
        }
    }
}

#[test]
fn single_node_has_no_cluster_families() {
    let mut s = sample_snapshot();
    s.cluster = false;
    s.etcd = None;
    s.webhook = None;
    let text = render(&s);
    assert!(!text.contains("wspush_peer_"), "{text}");
    assert!(!text.contains("wspush_etcd_"), "{text}");
    assert!(!text.contains("wspush_webhook_"), "{text}");
}

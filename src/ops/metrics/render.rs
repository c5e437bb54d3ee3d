//! The Prometheus text format (0.0.4) of `GET /metrics`: a [`NodeSnapshot`] written as metric
//! families, the last step of a scrape.
//!
//! **Why no metrics crate.** `prometheus-client` (and `prometheus`) keep each counter as an
//! `Arc<AtomicU64>` behind a `Send + Sync` registry shared by every thread: every increment
//! would be an atomic on a cache line all cores write, which is exactly the cost the
//! thread-per-core design avoids. Their collector hooks are synchronous, while our snapshot is
//! an async gather over the cores, and `prometheus-client` writes OpenMetrics 1.0 (`# EOF`,
//! different `_total` rules) rather than the 0.0.4 text format asked for. What is left to do
//! is writing a few dozen lines of text, so [`render`] does that itself (escaping label values
//! as the format requires); `tests/metrics.rs` checks the output with a real parser.

use super::NodeSnapshot;
use crate::counters::{LinkSnapshot, LATENCY_BUCKETS, LINK_REFUSALS, REASONS};
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

/// The `Content-Type` of the 0.0.4 text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` labels of `wspush_peer_call_failures_total`, listed at 0 before any failure so
/// that the series exist from the start: every API route that calls peers, and `group_event`.
pub const PEER_CALL_ROUTES: [&str; 14] = [
    "send_to_client",
    "send_to_clients",
    "send_to_group",
    "send_to_system",
    "send_to_user",
    "bind_to_group",
    "close_client",
    "is_online",
    "unbind_from_group",
    "get_online_list",
    "get_group_presence",
    "get_system_stats",
    "get_group_history",
    "group_event",
];

/// Writes metric families in the Prometheus text format 0.0.4.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes only backslash and newline; ours has neither.
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A sample value: integers as they are, floats in Go's `ParseFloat` syntax.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// Label values escape backslash, double quote and newline (and nothing else).
fn escape_label(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The `/metrics` body.
pub fn render(s: &NodeSnapshot) -> String {
    let mut t = Text {
        out: String::with_capacity(8 * 1024),
    };

    t.family(
        "wspush_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    t.sample("wspush_build_info", &[("version", s.version)], 1u64);
    t.single(
        "wspush_ready",
        "gauge",
        "1 when every core accepts and (cluster) etcd membership is established, as /readyz.",
        s.ready as u64,
    );
    t.single(
        "wspush_cores",
        "gauge",
        "Cores (shards) this node runs.",
        s.cores.len() as u64,
    );

    t.family(
        "wspush_connections",
        "gauge",
        "WebSocket connections open now, per core (sum() for the node).",
    );
    for c in &s.cores {
        t.sample(
            "wspush_connections",
            &[("core", &c.core.to_string())],
            c.connections,
        );
    }
    t.single(
        "wspush_connects_total",
        "counter",
        "WebSocket connections registered after their handshake.",
        s.sum(|c| c.connects),
    );
    t.single(
        "wspush_connects_refused_total",
        "counter",
        "WebSocket upgrades refused with 503 because a core held MaxConnsPerCore connections.",
        s.sum(|c| c.connects_refused),
    );
    t.family(
        "wspush_http_connections",
        "gauge",
        "HTTP connections (API, probes, operations; not WebSockets) open now that sent a \
         request, per core; MaxHttpConnsPerCore caps them.",
    );
    for c in &s.cores {
        t.sample(
            "wspush_http_connections",
            &[("core", &c.core.to_string())],
            c.http_connections,
        );
    }
    for (name, help, value) in [
        (
            "wspush_history_streams",
            "Group history streams this node owns (memory only; docs/history.md).",
            s.sum(|c| c.history_streams),
        ),
        (
            "wspush_history_messages",
            "Pushes kept by this node's group history streams.",
            s.sum(|c| c.history_messages),
        ),
        (
            "wspush_history_bytes",
            "Frame bytes of the pushes kept by this node's group history streams.",
            s.sum(|c| c.history_bytes),
        ),
    ] {
        t.single(name, "gauge", help, value);
    }
    t.single(
        "wspush_http_buffer_bytes",
        "gauge",
        "Capacity of the read and write buffers of the open HTTP connections (a buffer that \
         grew past 64 KiB for a large request shrinks after it).",
        s.sum(|c| c.http_buffer_bytes),
    );
    t.single(
        "wspush_http_refused_total",
        "counter",
        "HTTP connections refused with 503 because a core held MaxHttpConnsPerCore of them.",
        s.sum(|c| c.http_refused),
    );
    t.family(
        "wspush_disconnects_total",
        "counter",
        "WebSocket connections ended, by reason: close (client close frame), reset (EOF or \
         error), pong_timeout, slow_consumer (queue full or socket not writable in time), \
         kicked (close_client), protocol_error, shutdown, cut_off (the node lost its \
         cluster membership and its peers dropped it), replaced (a newer connection of its \
         user, singleConnection: close code 4001).",
    );
    for (reason, n) in REASONS.iter().zip(s.disconnects()) {
        t.sample("wspush_disconnects_total", &[("reason", reason)], n);
    }

    t.single(
        "wspush_frames_pushed_total",
        "counter",
        "Pushed frames queued to clients (one per recipient; 1001/1002/1003 events included).",
        s.sum(|c| c.frames_pushed),
    );
    t.single(
        "wspush_bytes_pushed_total",
        "counter",
        "Bytes of the pushed frames queued to clients (WebSocket framing included).",
        s.sum(|c| c.bytes_pushed),
    );
    t.single(
        "wspush_socket_writes_total",
        "counter",
        "Writes (sendmsg) of WebSocket outbound queues; frames pushed / writes is the frames \
         each write carried (FlushWindowUs coalescing).",
        s.sum(|c| c.socket_writes),
    );
    t.single(
        "wspush_queue_full_total",
        "counter",
        "Outbound queues that overflowed QueueFrames/QueueBytes; each closes its connection \
         with 1008 (slow consumer) and drops what it had not sent.",
        s.sum(|c| c.queue_full),
    );

    let api = s.api();
    t.family(
        "wspush_api_requests_total",
        "counter",
        "HTTP API requests by route, HTTP status and envelope code (0 success, -1 failure).",
    );
    for r in &api {
        let mut outcomes = r.outcomes.clone();
        outcomes.sort_unstable();
        for (status, code, n) in outcomes {
            t.sample(
                "wspush_api_requests_total",
                &[
                    ("route", &r.route),
                    ("status", &status.to_string()),
                    ("code", &code.to_string()),
                ],
                n,
            );
        }
    }
    t.family(
        "wspush_api_request_duration_seconds",
        "histogram",
        "Time to handle an API request once its body was read, by route.",
    );
    for r in &api {
        let mut cumulative = 0;
        for (i, n) in r.buckets.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BUCKETS.get(i) {
                Some(le) => le.to_string(),
                None => "+Inf".to_string(),
            };
            t.sample(
                "wspush_api_request_duration_seconds_bucket",
                &[("route", &r.route), ("le", &le)],
                cumulative,
            );
        }
        t.sample(
            "wspush_api_request_duration_seconds_sum",
            &[("route", &r.route)],
            secs(r.sum_ns),
        );
        t.sample(
            "wspush_api_request_duration_seconds_count",
            &[("route", &r.route)],
            cumulative,
        );
    }

    t.family(
        "wspush_core_messages_total",
        "counter",
        "Messages between the cores of this node: requests (an op for the core that owns the \
         state) and their replies.",
    );
    t.sample(
        "wspush_core_messages_total",
        &[("kind", "request")],
        s.sum(|c| c.core_requests),
    );
    t.sample(
        "wspush_core_messages_total",
        &[("kind", "reply")],
        s.sum(|c| c.core_replies),
    );

    t.single(
        "wspush_systems_registered",
        "gauge",
        "Registered systems this node knows.",
        s.cores.first().map_or(0, |c| c.registered_systems),
    );

    if s.cluster {
        t.single(
            "wspush_etcd_system_lookups_total",
            "counter",
            "etcd reads of a system a core did not know (an API request's SystemId, a /ws \
             connect's systemId).",
            s.sum(|c| c.etcd_lookups),
        );
        t.family(
            "wspush_etcd_system_lookups_skipped_total",
            "counter",
            "/ws connects for a system the core did not know that were not looked up in etcd: \
             cached (found unregistered within the last seconds) or limited (too many unknown \
             systems looked up in the last second; refused with 503).",
        );
        t.sample(
            "wspush_etcd_system_lookups_skipped_total",
            &[("reason", "cached")],
            s.sum(|c| c.lookups_cached),
        );
        t.sample(
            "wspush_etcd_system_lookups_skipped_total",
            &[("reason", "limited")],
            s.sum(|c| c.lookups_limited),
        );
        let peers = s.peers();
        t.family(
            "wspush_peer_links_up",
            "gauge",
            "Node links to the peer that are connected now (one link per core).",
        );
        for p in &peers {
            t.sample(
                "wspush_peer_links_up",
                &[("peer", &p.peer.to_string())],
                p.links_up,
            );
        }
        for (name, help, value) in [
            (
                "wspush_peer_requests_total",
                "Calls to the peer over the node links (push, bind, list, ...).",
                (|p: &LinkSnapshot| p.requests) as fn(&LinkSnapshot) -> u64,
            ),
            (
                "wspush_peer_errors_total",
                "Calls to the peer that got no answer (unreachable, or past RpcTimeoutMs).",
                |p| p.errors,
            ),
            (
                "wspush_peer_reconnects_total",
                "Times a node link to the peer came up again after it was lost.",
                |p| p.reconnects,
            ),
            (
                "wspush_peer_handshake_failures_total",
                "Links to the peer that reached it but failed the handshake (another \
                 ClusterSecret, another protocol version, or not a wspush node).",
                |p| p.handshake_failures,
            ),
        ] {
            t.family(name, "counter", help);
            for p in &peers {
                t.sample(name, &[("peer", &p.peer.to_string())], value(p));
            }
        }
        t.family(
            "wspush_node_links_refused_total",
            "counter",
            "Inbound node links closed before any frame was read: at MaxNodeLinksPerCore or \
             MaxNodeLinksPerPeer (limit), or by the handshake (not_a_node_link, version, \
             wrong_node, secret_mismatch, timeout, closed).",
        );
        for (i, reason) in LINK_REFUSALS.iter().enumerate() {
            let n = s.sum(|c| c.node_links_refused[i]);
            t.sample("wspush_node_links_refused_total", &[("reason", reason)], n);
        }
        t.family(
            "wspush_peer_rtt_seconds",
            "gauge",
            "Smoothed round trip of answered calls to the peer (its processing included), \
             averaged over the cores that made one.",
        );
        for p in &peers {
            if let Some(rtt) = p.rtt_ns {
                t.sample(
                    "wspush_peer_rtt_seconds",
                    &[("peer", &p.peer.to_string())],
                    secs(rtt),
                );
            }
        }
        t.family(
            "wspush_peer_call_failures_total",
            "counter",
            "Calls to a peer node that got no answer (unreachable, past RpcTimeoutMs, or the \
             peer could not run them), by the route that made them (group_event: the \
             1001/1002/1003 pushes): that node's part of the request was not done.",
        );
        let mut failures = s.peer_failures();
        for route in PEER_CALL_ROUTES {
            failures.entry(route).or_insert(0);
        }
        for (route, n) in failures {
            t.sample("wspush_peer_call_failures_total", &[("route", route)], n);
        }
    }
    if let Some(etcd) = &s.etcd {
        t.single(
            "wspush_etcd_connected",
            "gauge",
            "1 while etcd membership is established (lease kept alive, peers watched).",
            etcd.connected as u64,
        );
        t.single(
            "wspush_etcd_sessions_total",
            "counter",
            "etcd membership sessions established (the first, then one per recovery).",
            etcd.sessions,
        );
        t.single(
            "wspush_etcd_keepalive_failures_total",
            "counter",
            "etcd sessions lost because the lease keep-alive failed or the lease expired.",
            etcd.keepalive_failures,
        );
        t.single(
            "wspush_etcd_connect_failures_total",
            "counter",
            "Attempts to establish etcd membership that failed.",
            etcd.connect_failures,
        );
    }
    if let Some(w) = s.webhook {
        t.family(
            "wspush_webhook_events_total",
            "counter",
            "Webhook events queued by the cores, and delivered (in batches answered 2xx).",
        );
        t.sample(
            "wspush_webhook_events_total",
            &[("result", "accepted")],
            w.accepted,
        );
        t.sample(
            "wspush_webhook_events_total",
            &[("result", "delivered")],
            w.delivered,
        );
        t.family(
            "wspush_webhook_dropped_total",
            "counter",
            "Webhook events dropped: queue from the cores full, a destination's buffer full, \
             undeliverable (bad URL, rejected by the receiver, unsent at shutdown), WebhookBytes \
             held already (bytes_full), or a private address refused (WebhookAllowPrivate off).",
        );
        for (reason, n) in [
            ("queue_full", w.dropped_queue_full),
            ("buffer_full", w.dropped_buffer_full),
            ("undeliverable", w.dropped_undeliverable),
            ("bytes_full", w.dropped_bytes_full),
            ("refused", w.dropped_refused),
        ] {
            t.sample("wspush_webhook_dropped_total", &[("reason", reason)], n);
        }
        t.single(
            "wspush_webhook_posts_failed_total",
            "counter",
            "Webhook POSTs that failed (connect, timeout, non-2xx); retried unless rejected.",
            w.posts_failed,
        );
    }

    t.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.process.rss_bytes,
    );
    t.single(
        "process_open_fds",
        "gauge",
        "Open file descriptors (sockets included).",
        s.process.open_fds,
    );
    t.single(
        "process_max_fds",
        "gauge",
        "The open-files limit.",
        s.process.max_fds,
    );
    t.single(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        s.process.cpu_seconds,
    );
    t.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        s.start_time
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }
}

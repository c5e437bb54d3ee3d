//! The batcher driven by hand: windows, retries and backoff, rejections, the byte budget,
//! the buffer limits, the shutdown flush and the signed body, without a receiver.

use super::*;
use crate::types::SystemInfo;
use crate::webhook::Kind;
use serde_json::Value;

fn info(url: &str, secret: Option<&str>) -> Arc<SystemInfo> {
    Arc::new(SystemInfo {
        secret: secret.map(String::from),
        webhook_url: Some(url.to_string()),
        ..SystemInfo::default()
    })
}

fn event(info: &Arc<SystemInfo>, system: &str, kind: Kind, client: &str) -> Event {
    Event::new(kind, info.clone(), system, client, "u", "g", "x", 7).unwrap()
}

fn batcher(buffer: usize) -> Batcher {
    Batcher::new(
        Limits {
            buffer,
            ..Limits::default()
        },
        "127.0.0.1:7900".into(),
    )
}

fn body(job: &Job) -> Value {
    serde_json::from_slice(&job.body).unwrap()
}

fn clients(job: &Job) -> Vec<String> {
    body(job)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["clientId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backoff_doubles_from_half_a_second_to_thirty() {
    let ms: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
    assert_eq!(
        ms,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    assert_eq!(backoff(0), BACKOFF_MIN);
}

#[test]
fn an_event_fits_the_queue_slot_the_config_documents() {
    // WebhookQueue's "about 64 bytes a slot": the event plus the queue's stamp word.
    assert!(
        std::mem::size_of::<Event>() <= 56,
        "{}",
        std::mem::size_of::<Event>()
    );
}

#[test]
fn event_fields_round_trip_through_the_packed_text() {
    let i = info("http://h/", None);
    let e = Event::new(Kind::Bind, i, "sys", "cl", "ü", "", "{\"a\":1}", 9).unwrap();
    assert_eq!(
        (
            e.system(),
            e.client_id(),
            e.user_id(),
            e.group(),
            e.extend()
        ),
        ("sys", "cl", "ü", "", "{\"a\":1}")
    );
}

#[test]
fn a_batch_waits_for_its_window_unless_it_is_full() {
    let i = info("http://127.0.0.1:1/hook", None);
    let mut b = batcher(1000);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    assert!(b.ready(t0 + Duration::from_millis(50)).is_empty());
    assert_eq!(b.next_deadline(), Some(t0 + WINDOW));
    let jobs = b.ready(t0 + WINDOW);
    assert_eq!(jobs.len(), 1);
    assert_eq!(clients(&jobs[0]), ["c0"]);

    // A full batch goes at once; the rest waits for the one in flight.
    let mut b = batcher(1000);
    for n in 0..250 {
        b.push(event(&i, "s", Kind::Online, &format!("c{n}")), t0);
    }
    let jobs = b.ready(t0);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].events, MAX_BATCH);
    assert_eq!(clients(&jobs[0])[0], "c0");
    assert!(
        b.ready(t0).is_empty(),
        "one batch in flight per destination"
    );
    let job = jobs.into_iter().next().unwrap();
    b.finished(job.delivered(), t0);
    let jobs = b.ready(t0);
    assert_eq!(clients(&jobs[0])[0], "c100");
    b.finished(jobs.into_iter().next().unwrap().delivered(), t0);
    // 50 left: not full, so they wait for the window of their oldest.
    assert!(b.ready(t0).is_empty());
    let jobs = b.ready(t0 + WINDOW);
    assert_eq!(jobs[0].events, 50);
    b.finished(jobs.into_iter().next().unwrap().delivered(), t0 + WINDOW);
    assert!(b.is_empty());
}

#[test]
fn the_body_has_the_documented_shape() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(10);
    let t0 = Instant::now();
    let e = Event::new(Kind::Unbind, i, "sys\"1", "cid", "uid", "grp", "ext", 1234).unwrap();
    b.push(e, t0);
    let jobs = b.ready(t0 + WINDOW);
    assert_eq!(
        body(&jobs[0]),
        serde_json::json!({
            "systemId": "sys\"1",
            "node": "127.0.0.1:7900",
            "events": [{"event": "unbind", "systemId": "sys\"1", "clientId": "cid", "userId": "uid",
                        "groupName": "grp", "extend": "ext", "time": 1234}]
        })
    );
    assert!(jobs[0].signature.is_none());
    assert_eq!(jobs[0].headers().len(), 1, "X-Webhook-Id only");
}

#[test]
fn destinations_are_independent() {
    let a = info("http://127.0.0.1:1/a", None);
    let c = info("http://127.0.0.1:1/c", None);
    let mut b = batcher(10);
    let t0 = Instant::now();
    b.push(event(&a, "A", Kind::Online, "a0"), t0);
    b.push(event(&c, "C", Kind::Online, "c0"), t0);
    let jobs = b.ready(t0 + WINDOW);
    assert_eq!(jobs.len(), 2);
    // A fails and backs off; C keeps flowing meanwhile.
    let t1 = t0 + WINDOW;
    for job in jobs {
        let outcome = if &*job.system == "A" {
            job.failed("refused")
        } else {
            job.delivered()
        };
        b.finished(outcome, t1);
    }
    b.push(event(&c, "C", Kind::Offline, "c1"), t1);
    b.push(event(&a, "A", Kind::Offline, "a1"), t1);
    let jobs = b.ready(t1 + WINDOW);
    assert_eq!(jobs.len(), 1);
    assert_eq!(&*jobs[0].system, "C");
}

#[test]
fn a_failed_batch_is_resent_unchanged_after_the_backoff_before_newer_events() {
    let i = info("http://127.0.0.1:1/", Some("k"));
    let mut b = batcher(1000);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let first = b.ready(t0 + WINDOW).pop().unwrap();
    let (body0, id0, sig0) = (
        first.body.clone(),
        first.batch_id.clone(),
        first.signature.clone(),
    );
    assert_eq!(first.attempt, 1);
    let mut now = t0 + WINDOW;
    b.finished(first.failed("connection refused"), now);
    b.push(event(&i, "s", Kind::Offline, "c1"), now);
    for failures in 1..=3u32 {
        assert_eq!(b.next_deadline(), Some(now + backoff(failures)));
        assert!(b
            .ready(now + backoff(failures) - Duration::from_millis(1))
            .is_empty());
        now += backoff(failures);
        let retry = b.ready(now).pop().unwrap();
        assert_eq!(retry.attempt, failures + 1);
        assert_eq!((&retry.body, &retry.batch_id), (&body0, &id0));
        assert_eq!(retry.signature, sig0);
        if failures < 3 {
            b.finished(retry.failed("500"), now);
        } else {
            b.finished(retry.delivered(), now);
        }
    }
    // Then the newer event, in a batch of its own with a new id.
    let next = b.ready(now).pop().unwrap();
    assert_eq!(clients(&next), ["c1"]);
    assert_ne!(next.batch_id, id0);
    assert_eq!(next.attempt, 1);
}

#[test]
fn a_rejected_batch_is_dropped_and_counted_and_the_next_one_goes_at_once() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(1000);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    b.push(event(&i, "s", Kind::Online, "c1"), t0);
    let first = b.ready(t0 + WINDOW).pop().unwrap();
    let before = crate::webhook::stats().dropped_undeliverable;
    let now = t0 + WINDOW;
    b.push(event(&i, "s", Kind::Offline, "c2"), now);
    b.finished(first.rejected(404), now);
    // Other tests may drop concurrently: at least these two.
    assert!(crate::webhook::stats().dropped_undeliverable >= before + 2);
    // No backoff, no resend: the newer event goes in the next window.
    let next = b.ready(now + WINDOW).pop().unwrap();
    assert_eq!(clients(&next), ["c2"]);
    assert_eq!(next.attempt, 1);
    b.finished(next.delivered(), now + WINDOW);
    assert!(b.ready(now + WINDOW * 100).is_empty());
}

#[test]
fn a_refused_batch_is_dropped_and_counted_and_the_next_one_goes_at_once() {
    let i = info("http://localhost:1/", None);
    let mut b = batcher(1000);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let first = b.ready(t0 + WINDOW).pop().unwrap();
    let before = crate::webhook::stats().dropped_refused;
    let now = t0 + WINDOW;
    b.push(event(&i, "s", Kind::Offline, "c1"), now);
    b.finished(first.refused("localhost is 127.0.0.1"), now);
    assert!(crate::webhook::stats().dropped_refused > before);
    // Resolved again for the next batch, which is neither delayed nor merged with the first.
    let next = b.ready(now + WINDOW).pop().unwrap();
    assert_eq!(clients(&next), ["c1"]);
    assert_eq!(next.attempt, 1);
    b.finished(next.refused("localhost is 127.0.0.1"), now + WINDOW);
    assert!(b.is_empty());
}

#[test]
fn a_batch_body_counts_towards_the_byte_budget_until_it_is_answered() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(1000);
    let t0 = Instant::now();
    let extend = "x".repeat(1 << 20);
    let e = Event::new(Kind::Bind, i.clone(), "s", "c", "u", "g", &extend, 7).unwrap();
    // Other tests hold events too, but none holds a MiB: compare with half of it.
    assert!(crate::webhook::held_bytes() >= 1 << 20);
    b.push(e, t0);
    let job = b.ready(t0 + WINDOW).pop().unwrap();
    assert!(
        crate::webhook::held_bytes() >= 1 << 20,
        "the body is charged"
    );
    b.finished(job.failed("down"), t0 + WINDOW);
    assert!(
        crate::webhook::held_bytes() >= 1 << 20,
        "kept for the retry"
    );
    let job = b.ready(t0 + WINDOW + BACKOFF_MAX).pop().unwrap();
    b.finished(job.delivered(), t0 + WINDOW + BACKOFF_MAX);
    assert!(
        crate::webhook::held_bytes() < 1 << 19,
        "released once answered"
    );
}

#[test]
fn only_permanent_4xx_answers_are_rejections() {
    for status in [400, 401, 403, 404, 405, 410, 413, 422] {
        assert!(is_rejection(status), "{status}");
    }
    for status in [200, 301, 408, 425, 429, 500, 502, 503, 504] {
        assert!(!is_rejection(status), "{status}");
    }
}

#[test]
fn a_full_buffer_drops_the_oldest_waiting_events_not_the_batch_in_flight() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(3);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let job = b.ready(t0 + WINDOW).pop().unwrap();
    b.finished(job.failed("down"), t0 + WINDOW);
    let before = crate::webhook::stats().dropped_buffer_full;
    for n in 1..=5 {
        b.push(event(&i, "s", Kind::Online, &format!("c{n}")), t0 + WINDOW);
    }
    // Other tests may drop concurrently: at least these two.
    assert!(crate::webhook::stats().dropped_buffer_full >= before + 2);
    assert_eq!(b.waiting(), 4, "the batch in flight plus 3 buffered");
    let now = t0 + WINDOW + backoff(1);
    let retry = b.ready(now).pop().unwrap();
    assert_eq!(clients(&retry), ["c0"]);
    b.finished(retry.delivered(), now);
    let next = b.ready(now + WINDOW).pop().unwrap();
    assert_eq!(clients(&next), ["c3", "c4", "c5"]);
}

#[test]
fn the_shutdown_flush_skips_windows_and_waiting_retries_once() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(100);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let job = b.ready(t0 + WINDOW).pop().unwrap();
    b.finished(job.failed("down"), t0 + WINDOW);
    b.flush_all();
    let retry = b.ready(t0 + WINDOW).pop().unwrap();
    assert_eq!(retry.attempt, 2);
    b.finished(retry.failed("down"), t0 + WINDOW);
    assert!(b.ready(t0 + WINDOW).is_empty(), "later failures back off");
    assert!(!b.is_empty());
    assert_eq!(b.abandon(), 1);
    assert!(b.is_empty());

    let mut b = batcher(100);
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    b.flush_all();
    assert_eq!(b.ready(t0).len(), 1, "no window while flushing");
}

#[test]
fn an_unusable_url_drops_its_events() {
    let i = info("https://example.com/", None);
    let mut b = batcher(100);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    assert!(b.ready(t0 + WINDOW).is_empty());
    assert!(b.is_empty());
}

#[test]
fn idle_destinations_are_forgotten() {
    let i = info("http://127.0.0.1:1/", None);
    let mut b = batcher(100);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let job = b.ready(t0 + WINDOW).pop().unwrap();
    b.finished(job.delivered(), t0 + WINDOW);
    assert_eq!(b.dests.len(), 1);
    b.ready(t0 + WINDOW + FORGET_AFTER + Duration::from_secs(60));
    assert!(b.dests.is_empty());
}

#[test]
fn a_system_with_a_secret_gets_signed_batches() {
    let i = info("http://127.0.0.1:1/", Some("0123456789abcdef"));
    let mut b = batcher(10);
    let t0 = Instant::now();
    b.push(event(&i, "s", Kind::Online, "c0"), t0);
    let job = b.ready(t0 + WINDOW).pop().unwrap();
    let signature = job.signature.as_deref().unwrap();
    // Webhooks are signed over the body alone (docs/webhooks.md): the receiver has one
    // route, and the batch id in the body names the batch.
    assert_eq!(
        signature,
        crate::auth::sign_hex("0123456789abcdef", &job.body)
    );
    assert_eq!(
        job.headers(),
        [("X-Webhook-Id", &*job.batch_id), ("X-Signature", signature)]
    );
}

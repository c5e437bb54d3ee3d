//! `GET /status.json` and `GET /status`: the node at a glance, for a person.
//!
//! The JSON is built from the same [`NodeSnapshot`] as `/metrics`, with the systems and their
//! groups added. Rates (pushes, bytes, API requests, connects per second) are differences of
//! the node's counters between two polls, taken by the server: each core keeps the totals of
//! the last few `/status.json` answers it gave, and a poll compares with the newest one at
//! least half a second old. Any number of pollers (page tabs, curl) then get the rate over
//! about their own polling interval without sharing state between cores; the very first poll
//! on a core has no rate yet (`null`).
//!
//! `"trend"`: the last ten minutes, one point a second. Each core records its own totals just
//! after every second turns into a fixed ring of [`crate::counters::TREND_SECONDS`] points
//! (`Shard::sample_trend`); [`trend`] sums the cores' rings second by second and takes the
//! differences, so the page's charts cost a poll nothing but the copy.
//!
//! The page ([`PAGE`], `status.html` beside this file) is one self-contained HTML file, inline
//! CSS and JS, no build step: it polls `/status.json` every second and fills elements with
//! stable ids (`connections-total`, `core-<n>-connections`, `rate-frames`, ...). Each number's
//! raw value is also in its `data-value` attribute; the text is formatted for reading.

use super::metrics::NodeSnapshot;
use crate::counters::{RateSample, Totals, TrendPoint, REASONS};
use crate::shard::Shard;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The status page.
pub const PAGE: &str = include_str!("status.html");

/// Groups listed per system (the most members first); the count covers all of them.
const TOP_GROUPS: usize = 10;
/// Systems listed (the most clients first); `systemsTotal` counts all of them.
const MAX_SYSTEMS: usize = 500;

/// Rate samples: a poll's base is the newest sample at least this old...
const MIN_WINDOW: Duration = Duration::from_millis(500);
/// ...and samples older than this are forgotten (a rate over a longer gap is not "now").
const MAX_WINDOW: Duration = Duration::from_secs(10);
/// Polls closer together than this add no sample (many tabs polling cost no memory).
const SAMPLE_SPACING: Duration = Duration::from_millis(200);

/// The `/status.json` body.
pub fn json(shard: &Shard, s: &NodeSnapshot) -> Value {
    let totals = s.totals();
    let rates = rates(&shard.metrics.rate_samples, Instant::now(), totals);
    let disconnects = s.disconnects();

    let systems = s.systems();
    let systems_total = systems.len();
    let systems: Vec<Value> = systems
        .into_iter()
        .take(MAX_SYSTEMS)
        .map(|sys| {
            let mut groups = sys.groups;
            groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let count = groups.len();
            json!({
                "systemId": sys.system,
                "clients": sys.clients,
                "groups": count,
                "topGroups": groups
                    .into_iter()
                    .take(TOP_GROUPS)
                    .map(|(group, members)| json!({ "group": group, "members": members }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();

    let peers: Vec<Value> = s
        .peers()
        .into_iter()
        .map(|p| {
            json!({
                "node": p.peer.to_string(),
                "linksUp": p.links_up,
                "links": p.links,
                "requests": p.requests,
                "errors": p.errors,
                "reconnects": p.reconnects,
                "rttMs": p.rtt_ns.map(|ns| ns as f64 / 1e6),
            })
        })
        .collect();

    let by_reason: Map<String, Value> = REASONS
        .iter()
        .zip(disconnects)
        .map(|(reason, n)| (reason.to_string(), json!(n)))
        .collect();
    let slow_consumer = REASONS
        .iter()
        .position(|r| *r == "slow_consumer")
        .map_or(0, |i| disconnects[i]);

    json!({
        "node": s.node,
        "version": s.version,
        // What the node warned about at start (the published CryptoKey, ...), for a person
        // who never reads the log; `defaultCryptoKey` for a check that wants one flag.
        "warnings": shard.config.start_warnings(),
        "defaultCryptoKey": shard.config.crypto_key == crate::config::DEFAULT_CRYPTO_KEY,
        "cluster": s.cluster,
        "ready": s.ready,
        "draining": s.draining,
        "uptimeSeconds": s.uptime.as_secs(),
        "connections": totals.connections,
        "cores": s.cores.iter().map(|c| json!({
            "core": c.core,
            "connections": c.connections,
        })).collect::<Vec<_>>(),
        "registeredSystems": s.cores.first().map_or(0, |c| c.registered_systems),
        "systemsTotal": systems_total,
        "systems": systems,
        "peers": peers,
        "etcd": s.etcd.map(|e| json!({
            "connected": e.connected,
            "sessions": e.sessions,
            "keepaliveFailures": e.keepalive_failures,
            "connectFailures": e.connect_failures,
        })),
        "counters": {
            "connects": totals.connects,
            "disconnects": totals.disconnects,
            "framesPushed": totals.frames_pushed,
            "bytesPushed": totals.bytes_pushed,
            "apiRequests": totals.api_requests,
        },
        "disconnects": by_reason,
        "rates": rates.map(|(window, d)| {
            let per_sec = |n: u64| n as f64 / window.as_secs_f64();
            json!({
                "windowSeconds": window.as_secs_f64(),
                "framesPushedPerSec": per_sec(d.frames_pushed),
                "bytesPushedPerSec": per_sec(d.bytes_pushed),
                "apiRequestsPerSec": per_sec(d.api_requests),
                "connectsPerSec": per_sec(d.connects),
                "disconnectsPerSec": per_sec(d.disconnects),
            })
        }),
        "drops": {
            "slowConsumer": slow_consumer,
            "queueFull": totals.queue_full,
            "webhook": s.webhook.map(|w| w.dropped()),
        },
        "trend": trend(s.cores.iter().map(|c| c.trend.as_slice())),
        "process": {
            "rssBytes": s.process.rss_bytes,
            "openFds": s.process.open_fds,
            "maxFds": s.process.max_fds,
            "cpuSeconds": s.process.cpu_seconds,
        },
    })
}

/// The charts' numbers: each second of the last ten minutes that any core recorded, the node's
/// connections at its end and its pushes, deliveries, API requests and slow-consumer drops
/// during it, up to the latest second that every core has recorded. A core that missed a second
/// (busy, or not started yet) counts with its latest earlier totals.
pub fn trend<'a>(cores: impl Iterator<Item = &'a [TrendPoint]>) -> Value {
    let cores: Vec<&[TrendPoint]> = cores.collect();
    let first = cores.iter().filter_map(|c| c.first()).map(|p| p.sec).min();
    // Only seconds every core has recorded: a poll between two cores' samples of the same
    // second would otherwise show half of it.
    let last = cores.iter().filter_map(|c| c.last()).map(|p| p.sec).min();
    let (Some(first), Some(last)) = (first, last) else {
        return json!({ "intervalSeconds": 1, "from": null, "connections": [],
            "pushesPerSec": [], "deliveriesPerSec": [], "apiRequestsPerSec": [], "dropsPerSec": [] });
    };
    // The node's totals at the end of each second, first..=last.
    let mut at = vec![0usize; cores.len()];
    let mut sums = Vec::with_capacity((last - first + 1) as usize);
    for sec in first..=last {
        let mut sum = TrendPoint {
            sec,
            ..TrendPoint::default()
        };
        for (core, points) in cores.iter().enumerate() {
            while at[core] + 1 < points.len() && points[at[core] + 1].sec <= sec {
                at[core] += 1;
            }
            let Some(p) = points.get(at[core]).filter(|p| p.sec <= sec) else {
                continue;
            };
            sum.connections += p.connections;
            sum.pushes += p.pushes;
            sum.frames += p.frames;
            sum.api += p.api;
            sum.drops += p.drops;
        }
        sums.push(sum);
    }
    let per_sec = |f: fn(&TrendPoint) -> u64| -> Vec<u64> {
        sums.windows(2)
            .map(|w| f(&w[1]).saturating_sub(f(&w[0])))
            .collect()
    };
    json!({
        "intervalSeconds": 1,
        // The rates' first second; connections start one second earlier.
        "from": first + 1,
        "connections": sums.iter().skip(1).map(|p| p.connections).collect::<Vec<_>>(),
        "pushesPerSec": per_sec(|p| p.pushes),
        "deliveriesPerSec": per_sec(|p| p.frames),
        "apiRequestsPerSec": per_sec(|p| p.api),
        "dropsPerSec": per_sec(|p| p.drops),
    })
}

/// Records `totals` at `now` and returns the counters' growth since the newest earlier sample
/// at least [`MIN_WINDOW`] old, with the time between them; `None` when there is none.
pub fn rates(
    samples: &RefCell<VecDeque<RateSample>>,
    now: Instant,
    totals: Totals,
) -> Option<(Duration, Totals)> {
    let mut samples = samples.borrow_mut();
    while samples
        .front()
        .is_some_and(|s| now.duration_since(s.at) > MAX_WINDOW)
    {
        samples.pop_front();
    }
    let base = samples
        .iter()
        .rev()
        .find(|s| now.duration_since(s.at) >= MIN_WINDOW)
        .copied();
    if samples
        .back()
        .is_none_or(|s| now.duration_since(s.at) >= SAMPLE_SPACING)
    {
        samples.push_back(RateSample { at: now, totals });
    }
    let base = base?;
    let d = |now: u64, then: u64| now.saturating_sub(then);
    let (a, b) = (totals, base.totals);
    Some((
        now.duration_since(base.at),
        Totals {
            connections: a.connections,
            connects: d(a.connects, b.connects),
            disconnects: d(a.disconnects, b.disconnects),
            frames_pushed: d(a.frames_pushed, b.frames_pushed),
            bytes_pushed: d(a.bytes_pushed, b.bytes_pushed),
            api_requests: d(a.api_requests, b.api_requests),
            queue_full: d(a.queue_full, b.queue_full),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(frames: u64) -> Totals {
        Totals {
            frames_pushed: frames,
            ..Totals::default()
        }
    }

    #[test]
    fn rates_between_polls() {
        let samples = RefCell::default();
        let t0 = Instant::now();
        assert_eq!(rates(&samples, t0, totals(0)), None, "first poll: no rate");
        // A second poll too soon after has no base yet either.
        assert_eq!(
            rates(&samples, t0 + Duration::from_millis(100), totals(5)),
            None
        );
        let (window, d) = rates(&samples, t0 + Duration::from_secs(1), totals(100)).unwrap();
        assert_eq!(window, Duration::from_secs(1));
        assert_eq!(d.frames_pushed, 100);
        // The next poll compares with the previous one, not the first.
        let (window, d) = rates(&samples, t0 + Duration::from_secs(2), totals(400)).unwrap();
        assert_eq!(window, Duration::from_secs(1));
        assert_eq!(d.frames_pushed, 300);
        // After a long pause the old samples are gone: no rate over a stale window.
        assert_eq!(
            rates(&samples, t0 + Duration::from_secs(60), totals(500)),
            None
        );
    }

    fn point(sec: u64, connections: u64, frames: u64) -> TrendPoint {
        TrendPoint {
            sec,
            connections,
            frames,
            ..TrendPoint::default()
        }
    }

    #[test]
    fn the_trend_sums_the_cores_second_by_second() {
        // Core 0 every second; core 1 missed second 12 and counts with its second 11 there.
        let a = [
            point(10, 1, 0),
            point(11, 2, 100),
            point(12, 2, 300),
            point(13, 3, 300),
        ];
        let b = [point(10, 5, 0), point(11, 5, 50), point(13, 4, 80)];
        let t = trend([&a[..], &b[..]].into_iter());
        assert_eq!(t["from"], 11);
        assert_eq!(t["connections"], json!([7, 7, 7]));
        assert_eq!(t["deliveriesPerSec"], json!([150, 200, 30]));
        assert_eq!(t["pushesPerSec"], json!([0, 0, 0]));
        let empty = trend([&[][..], &[][..]].into_iter());
        assert_eq!(empty["connections"], json!([]));
    }

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.contains("/status.json"));
        // No external assets: nothing loaded from another origin or file.
        for needle in [
            " src=",
            "stylesheet",
            "http://",
            "https://",
            "@import",
            "url(",
        ] {
            assert!(
                !PAGE.contains(needle),
                "the page must not reference {needle}"
            );
        }
    }
}

//! Counters and latency histograms.
//!
//! Every shard thread owns one [`Stats`]: plain atomics that only that thread writes (so a
//! counter update is a load and a store, no locked instruction) and that the controller reads
//! whenever it wants a [`Snapshot`]. Snapshots add up across shards and worker processes, and
//! subtract to give what happened in a window.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Log-linear buckets over nanoseconds: exact below 64 ns, then 32 buckets per power of two
/// (about 3% wide) up to 2^41 ns (36 minutes); anything above lands in the last bucket.
pub const BUCKETS: usize = 64 + 35 * 32;

/// The bucket of a value in nanoseconds.
pub fn bucket(v: u64) -> usize {
    if v < 64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as usize; // >= 6
    if e > 40 {
        return BUCKETS - 1;
    }
    let shift = e - 5;
    let mantissa = (v >> shift) as usize; // 32..=63
    64 + (e - 6) * 32 + (mantissa - 32)
}

/// The largest value that falls in bucket `i` (what a percentile reports: never optimistic).
pub fn bucket_high(i: usize) -> u64 {
    if i < 64 {
        return i as u64;
    }
    let e = (i - 64) / 32 + 6;
    let mantissa = ((i - 64) % 32 + 32) as u64;
    ((mantissa + 1) << (e - 5)) - 1
}

/// One thread's counters. Contract: only the owning shard thread calls [`bump`] and
/// [`Stats::record`]; anyone may read.
pub struct Stats {
    /// Text frames carrying the scenario's `code` (the deliveries).
    pub delivered: AtomicU64,
    /// Text frames with code 1001 (a member was bound to a group).
    pub presence: AtomicU64,
    /// Any other data frame.
    pub other_frames: AtomicU64,
    /// Bytes read from WebSockets.
    pub bytes: AtomicU64,
    /// Pings answered.
    pub pings: AtomicU64,
    /// Connections the server closed (close frame or EOF) or that failed while open.
    pub closed: AtomicU64,
    /// Close frames with code 1008 (policy: the server's slow-consumer close) among those.
    pub closes_1008: AtomicU64,
    /// Delivered frames whose `data` held no stamp (counted, no latency recorded).
    pub unstamped: AtomicU64,
    /// Wall clock (ns since the epoch) of the latest delivery.
    pub last_delivery_ns: AtomicU64,
    /// API requests answered with HTTP 200 and `"code":0`.
    pub requests_ok: AtomicU64,
    /// API requests that failed (connection error, timeout, other status or code).
    pub requests_failed: AtomicU64,
    /// Push-to-receipt delay of each delivery.
    pub delivery_hist: Box<[AtomicU64]>,
    /// Round trip of each successful API request (or handshake, in `connect`).
    pub request_hist: Box<[AtomicU64]>,
}

/// Adds `n` to a counter owned by the calling thread (see [`Stats`]).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed) + n, Relaxed);
}

fn hist() -> Box<[AtomicU64]> {
    (0..BUCKETS).map(|_| AtomicU64::new(0)).collect()
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            delivered: AtomicU64::new(0),
            presence: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            closes_1008: AtomicU64::new(0),
            unstamped: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            delivery_hist: hist(),
            request_hist: hist(),
        }
    }
}

impl Stats {
    #[inline]
    pub fn record_delivery(&self, latency_ns: u64, now: u64) {
        bump(&self.delivered, 1);
        bump(&self.delivery_hist[bucket(latency_ns)], 1);
        self.last_delivery_ns.store(now, Relaxed);
    }

    #[inline]
    pub fn record_request(&self, round_trip_ns: u64) {
        bump(&self.requests_ok, 1);
        bump(&self.request_hist[bucket(round_trip_ns)], 1);
    }

    pub fn snapshot(&self) -> Snapshot {
        let h = |b: &[AtomicU64]| b.iter().map(|c| c.load(Relaxed)).collect();
        Snapshot {
            delivered: self.delivered.load(Relaxed),
            presence: self.presence.load(Relaxed),
            other_frames: self.other_frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            pings: self.pings.load(Relaxed),
            closed: self.closed.load(Relaxed),
            closes_1008: self.closes_1008.load(Relaxed),
            unstamped: self.unstamped.load(Relaxed),
            last_delivery_ns: self.last_delivery_ns.load(Relaxed),
            requests_ok: self.requests_ok.load(Relaxed),
            requests_failed: self.requests_failed.load(Relaxed),
            delivery_hist: h(&self.delivery_hist),
            request_hist: h(&self.request_hist),
            cpu_ns: 0,
        }
    }
}

/// Plain copy of [`Stats`], summed over shards and processes.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub delivered: u64,
    pub presence: u64,
    pub other_frames: u64,
    pub bytes: u64,
    pub pings: u64,
    pub closed: u64,
    pub closes_1008: u64,
    pub unstamped: u64,
    /// Latest of the parts (a max, not a sum).
    pub last_delivery_ns: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub delivery_hist: Vec<u64>,
    pub request_hist: Vec<u64>,
    /// CPU time of the worker processes that reported this snapshot (their own getrusage);
    /// 0 for an in-process snapshot.
    pub cpu_ns: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            delivered: 0,
            presence: 0,
            other_frames: 0,
            bytes: 0,
            pings: 0,
            closed: 0,
            closes_1008: 0,
            unstamped: 0,
            last_delivery_ns: 0,
            requests_ok: 0,
            requests_failed: 0,
            delivery_hist: vec![0; BUCKETS],
            request_hist: vec![0; BUCKETS],
            cpu_ns: 0,
        }
    }
}

macro_rules! each_counter {
    ($m:ident) => {
        $m!(delivered);
        $m!(presence);
        $m!(other_frames);
        $m!(bytes);
        $m!(pings);
        $m!(closed);
        $m!(closes_1008);
        $m!(unstamped);
        $m!(requests_ok);
        $m!(requests_failed);
        $m!(cpu_ns);
    };
}

impl Snapshot {
    pub fn add(&mut self, o: &Snapshot) {
        macro_rules! add {
            ($f:ident) => {
                self.$f += o.$f
            };
        }
        each_counter!(add);
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        for (a, b) in self.delivery_hist.iter_mut().zip(&o.delivery_hist) {
            *a += b;
        }
        for (a, b) in self.request_hist.iter_mut().zip(&o.request_hist) {
            *a += b;
        }
    }

    /// What happened since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = self.clone();
        macro_rules! sub {
            ($f:ident) => {
                d.$f = self.$f.saturating_sub(earlier.$f)
            };
        }
        each_counter!(sub);
        for (a, b) in d.delivery_hist.iter_mut().zip(&earlier.delivery_hist) {
            *a = a.saturating_sub(*b);
        }
        for (a, b) in d.request_hist.iter_mut().zip(&earlier.request_hist) {
            *a = a.saturating_sub(*b);
        }
        d
    }

    pub fn to_json(&self) -> Value {
        let sparse = |h: &[u64]| -> Value {
            h.iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| json!([i, c]))
                .collect()
        };
        json!({
            "delivered": self.delivered,
            "presence": self.presence,
            "other_frames": self.other_frames,
            "bytes": self.bytes,
            "pings": self.pings,
            "closed": self.closed,
            "closes_1008": self.closes_1008,
            "unstamped": self.unstamped,
            "last_delivery_ns": self.last_delivery_ns,
            "requests_ok": self.requests_ok,
            "requests_failed": self.requests_failed,
            "delivery_hist": sparse(&self.delivery_hist),
            "request_hist": sparse(&self.request_hist),
            "cpu_ns": self.cpu_ns,
        })
    }

    pub fn from_json(v: &Value) -> Option<Snapshot> {
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        let dense = |k: &str| -> Option<Vec<u64>> {
            let mut h = vec![0; BUCKETS];
            for pair in v.get(k)?.as_array()? {
                let i = pair.get(0)?.as_u64()? as usize;
                *h.get_mut(i)? = pair.get(1)?.as_u64()?;
            }
            Some(h)
        };
        Some(Snapshot {
            delivered: n("delivered")?,
            presence: n("presence")?,
            other_frames: n("other_frames")?,
            bytes: n("bytes")?,
            pings: n("pings")?,
            closed: n("closed")?,
            closes_1008: n("closes_1008")?,
            unstamped: n("unstamped")?,
            last_delivery_ns: n("last_delivery_ns")?,
            requests_ok: n("requests_ok")?,
            requests_failed: n("requests_failed")?,
            delivery_hist: dense("delivery_hist")?,
            request_hist: dense("request_hist")?,
            cpu_ns: n("cpu_ns")?,
        })
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &[u64]) -> Latency {
        let count: u64 = h.iter().sum();
        if count == 0 {
            return Latency::default();
        }
        let at = |q: f64| -> f64 {
            // The smallest value v with at least q of the samples <= v.
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, &c) in h.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_high(i) as f64 / 1e6;
                }
            }
            0.0
        };
        let max = h
            .iter()
            .rposition(|&c| c > 0)
            .map(|i| bucket_high(i) as f64 / 1e6)
            .unwrap_or(0.0);
        Latency {
            count,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: max,
        }
    }

    pub fn human(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} samples)",
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.p999_ms),
            ms(self.max_ms),
            self.count
        )
    }
}

/// Milliseconds with three significant digits.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let values = (0..5_000u64)
            .chain((13..41).flat_map(|e| [(1u64 << e) - 1, 1u64 << e, (1u64 << e) + 7]));
        for v in values {
            let b = bucket(v);
            // v lies in (high(b-1), high(b)]: buckets are ordered and cover every value.
            assert!(bucket_high(b) >= v, "v={v} b={b} high={}", bucket_high(b));
            assert!(b == 0 || bucket_high(b - 1) < v, "v={v}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // About 3% wide.
        let b = bucket(1_000_000);
        assert!(bucket_high(b) < 1_032_000);
    }

    #[test]
    fn percentiles() {
        let mut h = vec![0; BUCKETS];
        for v in 1..=1000u64 {
            h[bucket(v * 1000)] += 1; // 1 us .. 1 ms
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 0.5).abs() < 0.02, "{l:?}");
        assert!((l.p99_ms - 0.99).abs() < 0.04, "{l:?}");
        assert!((l.max_ms - 1.0).abs() < 0.04, "{l:?}");
    }

    #[test]
    fn snapshot_json_round_trip_and_arithmetic() {
        let s = Stats::default();
        s.record_delivery(1_500_000, 42);
        s.record_request(10_000);
        bump(&s.presence, 3);
        let a = s.snapshot();
        let back = Snapshot::from_json(&a.to_json()).unwrap();
        assert_eq!(a, back);
        let mut sum = a.clone();
        sum.add(&back);
        assert_eq!(sum.delivered, 2);
        assert_eq!(sum.since(&a), a);
    }
}

//! Group history: the streams this core owns (docs/history.md). Memory only.
//!
//! A stream is one (system, group) of a system registered with a `history`. It lives on one
//! core of one node, its owner ([`crate::types::stream_owner`], then
//! [`crate::types::stream_key`] modulo the cores), which `crate::route::history` sends every
//! send_to_group of the group to. Here the owner gives each push the next offset, keeps its
//! frame in a ring bounded by size, age and bytes (the oldest go first), and answers reads
//! from a position (`since`). The epoch is a random string chosen when the stream is created:
//! a stream that is dropped (its owner changed, its node restarted) comes back with another
//! epoch, so a client's old position is seen to be stale rather than silently continued.

use super::conn::Conn;
use crate::ws::frame::SharedFrame;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bounds of one stream: the system's, clamped to this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub size: usize,
    pub ttl: Duration,
    pub max_bytes: usize,
}

pub use crate::types::StreamPos as Since;

/// What a read of a stream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub epoch: Arc<str>,
    /// The offset of the stream's latest push (0 before the first).
    pub offset: u64,
    /// With a `since`: whether every push after it is still here (same epoch, not evicted).
    /// Without one: true.
    pub recovered: bool,
    /// The kept pushes, oldest first: those after `since` when recovered, else from the oldest
    /// kept; at most the limit asked.
    pub frames: Vec<(u64, SharedFrame)>,
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: SharedFrame,
}

struct Stream {
    epoch: Arc<str>,
    offset: u64,
    ring: VecDeque<Entry>,
    bytes: usize,
    /// The last push or read, and the TTL it had: past both, everything kept has expired, and
    /// [`Streams::sweep`] drops the stream.
    touched: Instant,
    ttl: Duration,
}

/// How often a core looks for streams idle past their TTL.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Stream {
    fn new(now: Instant) -> Stream {
        Stream {
            epoch: Arc::from(format!("{:016x}", rand::random::<u64>())),
            offset: 0,
            ring: VecDeque::new(),
            bytes: 0,
            touched: now,
            ttl: Duration::ZERO,
        }
    }

    /// Evicts the oldest pushes until the stream is within `bounds` at `now`.
    fn trim(&mut self, bounds: &Bounds, now: Instant) {
        while let Some(oldest) = self.ring.front() {
            let expired = now.saturating_duration_since(oldest.at) > bounds.ttl;
            if !expired && self.ring.len() <= bounds.size && self.bytes <= bounds.max_bytes {
                break;
            }
            self.bytes -= oldest.frame.len();
            self.ring.pop_front();
        }
    }
}

/// The streams of one core, by (system, group).
#[derive(Default)]
pub struct Streams {
    map: HashMap<(Arc<str>, Arc<str>), Stream>,
    swept: Option<Instant>,
}

impl Streams {
    /// Gives the next push of the stream its offset, builds its frame with `build(offset,
    /// epoch)` and keeps it within `bounds`. Returns the frame.
    pub fn append(
        &mut self,
        system: &Arc<str>,
        group: &Arc<str>,
        bounds: &Bounds,
        now: Instant,
        build: impl FnOnce(u64, &str) -> SharedFrame,
    ) -> SharedFrame {
        let stream = self.stream(system, group, bounds, now);
        stream.offset += 1;
        let frame = build(stream.offset, &stream.epoch);
        stream.bytes += frame.len();
        stream.ring.push_back(Entry {
            offset: stream.offset,
            at: now,
            frame: frame.clone(),
        });
        stream.trim(bounds, now);
        frame
    }

    /// The stream's position and its kept pushes after `since` (see [`Read`]), at most
    /// `limit`. A stream read before its first push is created, so that the epoch a reader
    /// learns is the one later pushes carry.
    pub fn read(
        &mut self,
        system: &Arc<str>,
        group: &Arc<str>,
        since: Option<&Since>,
        limit: usize,
        bounds: &Bounds,
        now: Instant,
    ) -> Read {
        let stream = self.stream(system, group, bounds, now);
        stream.trim(bounds, now);
        let next = stream.ring.front().map_or(stream.offset + 1, |e| e.offset);
        let (recovered, after) = match since {
            None => (true, 0),
            Some(since) => {
                let ok = *since.epoch == *stream.epoch
                    && since.offset <= stream.offset
                    && since.offset + 1 >= next;
                (ok, if ok { since.offset } else { 0 })
            }
        };
        let frames = (stream.ring.iter())
            .filter(|e| e.offset > after)
            .take(limit)
            .map(|e| (e.offset, e.frame.clone()))
            .collect();
        Read {
            epoch: stream.epoch.clone(),
            offset: stream.offset,
            recovered,
            frames,
        }
    }

    /// Drops every stream `keep` refuses: those whose owner is now another node.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.map.retain(|(system, group), _| keep(system, group));
    }

    /// The streams of this core, the pushes they keep and those frames' bytes (`/metrics`).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (messages, bytes) =
            (self.map.values()).fold((0, 0), |(m, b), s| (m + s.ring.len(), b + s.bytes));
        (self.map.len(), messages, bytes)
    }

    /// The stream, created when absent, touched now; first, at most every [`SWEEP_EVERY`],
    /// the streams of this core idle past their TTL are dropped.
    fn stream(
        &mut self,
        system: &Arc<str>,
        group: &Arc<str>,
        bounds: &Bounds,
        now: Instant,
    ) -> &mut Stream {
        self.sweep(now);
        let stream = (self.map)
            .entry((system.clone(), group.clone()))
            .or_insert_with(|| Stream::new(now));
        stream.touched = now;
        stream.ttl = bounds.ttl;
        stream
    }

    /// Drops the streams neither pushed to nor read for longer than their TTL: all they kept
    /// has expired, and a reader of one learns of it by its new epoch. Bounds what reads of
    /// many group names can leave behind.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        (self.map).retain(|_, s| now.saturating_duration_since(s.touched) <= s.ttl);
    }
}

/// Connections of this core recovering a group (bind_to_group with `since`), by (slot,
/// generation, group): the live pushes of that group that reached them while their history was
/// being fetched. See `Shard::begin_recovery`.
///
/// Then, for [`FLOOR_TTL`], the last offset a recovery replayed: a live push the owner sent
/// before it answered the fetch may still be on its way (from another node it comes over
/// another link than the answer), and must not arrive twice.
#[derive(Default)]
pub struct Recovering {
    held: HashMap<(u32, u32, Arc<str>), Vec<SharedFrame>>,
    floors: HashMap<(u32, u32, Arc<str>), Floor>,
}

/// The last offset of `epoch` a recovered connection has, since `at`.
struct Floor {
    offset: u64,
    epoch: Arc<str>,
    at: Instant,
}

/// How long a recovered connection drops late live pushes it already got by the replay: far
/// longer than a push takes between two nodes (RpcTimeoutMs bounds that anyway).
pub const FLOOR_TTL: Duration = Duration::from_secs(10);

impl Recovering {
    /// Starts holding `group`'s pushes back for `conn`.
    pub fn begin(&mut self, conn: &Conn, group: &Arc<str>) {
        let key = (conn.slot, conn.generation, group.clone());
        self.held.entry(key).or_default();
    }

    /// Stops, and hands back what was held, oldest first. With `floor` (the last offset of
    /// the epoch the client has after the replay), later pushes of that epoch up to it are
    /// dropped for a while.
    pub fn end(
        &mut self,
        conn: &Conn,
        group: &Arc<str>,
        floor: Option<(u64, Arc<str>)>,
    ) -> Vec<SharedFrame> {
        let key = (conn.slot, conn.generation, group.clone());
        let now = Instant::now();
        (self.floors).retain(|_, f| now.saturating_duration_since(f.at) < FLOOR_TTL);
        let held = self.held.remove(&key).unwrap_or_default();
        if let Some((offset, epoch)) = floor {
            let at = now;
            self.floors.insert(key, Floor { offset, epoch, at });
        }
        held
    }

    /// Takes the members of `group` that are recovering it out of `members`, holding `f` for
    /// each, and those that have it already from a replay, dropping it; returns how many. One
    /// check when no connection of this core recovers.
    pub fn hold(&mut self, members: &mut Vec<Rc<Conn>>, group: &str, f: &SharedFrame) -> usize {
        if self.held.is_empty() && self.floors.is_empty() {
            return 0;
        }
        let (before, group): (_, Arc<str>) = (members.len(), Arc::from(group));
        let position = crate::ws::message::frame_position(f);
        members.retain(|conn| {
            let key = (conn.slot, conn.generation, group.clone());
            if let Some(held) = self.held.get_mut(&key) {
                held.push(f.clone());
                return false;
            }
            let (Some((offset, epoch)), Some(floor)) = (position, self.floors.get(&key)) else {
                return true;
            };
            if offset <= floor.offset && epoch == floor.epoch.as_bytes() {
                return false;
            }
            // Pushes come in the owner's order: past the floor, no older one follows.
            self.floors.remove(&key);
            true
        });
        before - members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, epoch: &str) -> SharedFrame {
        Arc::from(format!("{offset}@{epoch}").into_bytes())
    }

    fn offsets(read: &Read) -> Vec<u64> {
        read.frames.iter().map(|(o, _)| *o).collect()
    }

    const BOUNDS: Bounds = Bounds {
        size: 3,
        ttl: Duration::from_secs(10),
        max_bytes: 1 << 20,
    };

    #[test]
    fn offsets_grow_and_the_ring_keeps_the_newest() {
        let (s, g, now) = (Arc::from("s"), Arc::from("g"), Instant::now());
        let mut streams = Streams::default();
        let first = streams.read(&s, &g, None, usize::MAX, &BOUNDS, now);
        assert_eq!(
            (first.offset, first.recovered, first.frames.len()),
            (0, true, 0)
        );
        for _ in 0..5 {
            streams.append(&s, &g, &BOUNDS, now, frame);
        }
        let all = streams.read(&s, &g, None, usize::MAX, &BOUNDS, now);
        assert_eq!((all.epoch.clone(), all.offset), (first.epoch.clone(), 5));
        assert_eq!(offsets(&all), [3, 4, 5]);
        let since = |offset| Since {
            offset,
            epoch: first.epoch.to_string(),
        };
        let r = streams.read(&s, &g, Some(&since(3)), usize::MAX, &BOUNDS, now);
        assert!(r.recovered);
        assert_eq!(offsets(&r), [4, 5]);
        let r = streams.read(&s, &g, Some(&since(2)), 1, &BOUNDS, now);
        assert!(r.recovered);
        assert_eq!(offsets(&r), [3]);
        let r = streams.read(&s, &g, Some(&since(5)), usize::MAX, &BOUNDS, now);
        assert!(r.recovered && r.frames.is_empty());
        // Evicted, from the future, or another epoch: not recovered.
        for bad in [
            since(1),
            since(6),
            Since {
                offset: 4,
                epoch: "x".into(),
            },
        ] {
            let r = streams.read(&s, &g, Some(&bad), usize::MAX, &BOUNDS, now);
            assert!(!r.recovered, "{bad:?}");
            assert_eq!(offsets(&r), [3, 4, 5]);
        }
    }

    #[test]
    fn age_and_bytes_evict_oldest_first_and_a_dropped_stream_changes_epoch() {
        let (s, g, t0) = (Arc::from("s"), Arc::from("g"), Instant::now());
        let mut streams = Streams::default();
        streams.append(&s, &g, &BOUNDS, t0, frame);
        streams.append(&s, &g, &BOUNDS, t0 + Duration::from_secs(6), frame);
        let later = t0 + Duration::from_secs(12);
        let r = streams.read(&s, &g, None, usize::MAX, &BOUNDS, later);
        assert_eq!(offsets(&r), [2]);
        let tight = Bounds {
            max_bytes: 2 * frame(10, &r.epoch).len(),
            ..BOUNDS
        };
        for _ in 0..3 {
            streams.append(&s, &g, &tight, later, frame);
        }
        let r2 = streams.read(&s, &g, None, usize::MAX, &tight, later);
        assert_eq!(offsets(&r2), [4, 5]);
        let never = t0 + Duration::from_secs(60);
        assert!(streams
            .read(&s, &g, None, 9, &BOUNDS, never)
            .frames
            .is_empty());
        // Idle past its TTL, a stream is swept when another one is used.
        let (h, much_later) = (Arc::from("h"), never + SWEEP_EVERY);
        streams.read(&h, &g, None, 9, &BOUNDS, much_later);
        assert_eq!(streams.sizes(), (1, 0, 0));
        streams.read(&s, &g, None, 9, &BOUNDS, much_later);
        streams.retain(|_, _| false);
        assert_eq!(streams.sizes(), (0, 0, 0));
        let fresh = streams.read(&s, &g, None, 9, &BOUNDS, never);
        assert_ne!(fresh.epoch, r.epoch);
        assert_eq!(fresh.offset, 0);
    }
}

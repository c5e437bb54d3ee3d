//! Offline messages: the pushes this core keeps for users (docs/history.md, "Offline
//! messages"). Memory only.
//!
//! send_to_user with `store` sends its push, then (when no connection took it, or always)
//! `crate::route::offline` hands it to the one core of the one node that owns the
//! (system, userId), as a group stream is owned ([`crate::types::stream_owner`]). Here it is
//! kept, bounded per user by count, age and bytes (the oldest go first), until a connection
//! gets that userId: its core takes them all at once (removed here in the same step, so they
//! reach one connection, once).

use crate::ws::frame::SharedFrame;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// This node's bounds per user (`OfflineMax`, `OfflineTtl`, `OfflineMaxBytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max: usize,
    pub ttl: Duration,
    pub max_bytes: usize,
}

/// A kept push: its messageId (for the webhook) and its frame as it was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub message_id: String,
    pub frame: SharedFrame,
}

struct Kept {
    at: Instant,
    push: Stored,
}

#[derive(Default)]
struct User {
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl User {
    fn trim(&mut self, bounds: &Bounds, now: Instant) {
        while let Some(oldest) = self.kept.front() {
            let expired = now.saturating_duration_since(oldest.at) > bounds.ttl;
            if !expired && self.kept.len() <= bounds.max && self.bytes <= bounds.max_bytes {
                break;
            }
            self.bytes -= oldest.push.frame.len();
            self.kept.pop_front();
        }
    }
}

/// The users this core keeps pushes for, by (system, userId).
#[derive(Default)]
pub struct Store {
    users: HashMap<(Box<str>, Box<str>), User>,
    messages: usize,
    swept: Option<Instant>,
}

/// How often a store drops what expired of users nobody asked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Store {
    /// Keeps `push` for the user, then evicts the oldest past `bounds`.
    pub fn put(
        &mut self,
        system: &str,
        user_id: &str,
        push: Stored,
        bounds: &Bounds,
        now: Instant,
    ) {
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) > SWEEP_EVERY)
        {
            self.sweep(bounds, now);
        }
        let key = (Box::from(system), Box::from(user_id));
        let user = self.users.entry(key.clone()).or_default();
        let before = user.kept.len();
        user.bytes += push.frame.len();
        user.kept.push_back(Kept { at: now, push });
        user.trim(bounds, now);
        self.messages = self.messages + user.kept.len() - before;
        if user.kept.is_empty() {
            self.users.remove(&key);
        }
    }

    /// Removes and answers the user's pushes still within their TTL at `now`, oldest first.
    pub fn take(
        &mut self,
        system: &str,
        user_id: &str,
        ttl: Duration,
        now: Instant,
    ) -> Vec<Stored> {
        let key = (Box::from(system), Box::from(user_id));
        let Some(user) = self.users.remove(&key) else {
            return Vec::new();
        };
        self.messages -= user.kept.len();
        (user.kept.into_iter())
            .filter(|k| now.saturating_duration_since(k.at) <= ttl)
            .map(|k| k.push)
            .collect()
    }

    /// Drops what has expired at `now` (called now and then by the core).
    pub fn sweep(&mut self, bounds: &Bounds, now: Instant) {
        self.swept = Some(now);
        let mut messages = 0;
        self.users.retain(|_, user| {
            user.trim(bounds, now);
            messages += user.kept.len();
            !user.kept.is_empty()
        });
        self.messages = messages;
    }

    /// How many pushes the system's users have kept here (all systems: `None`).
    pub fn count(&self, system: Option<&str>) -> usize {
        match system {
            None => self.messages,
            Some(system) => (self.users.iter())
                .filter(|((s, _), _)| &**s == system)
                .map(|(_, u)| u.kept.len())
                .sum(),
        }
    }

    /// Keeps only the users `keep` says yes to (those this node still owns).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.users.retain(|(system, user), _| keep(system, user));
        self.messages = self.users.values().map(|u| u.kept.len()).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn push(id: &str) -> Stored {
        Stored {
            message_id: id.into(),
            frame: Arc::from(id.as_bytes()),
        }
    }

    #[test]
    fn evicts_oldest_first_and_takes_once() {
        let bounds = Bounds {
            max: 2,
            ttl: Duration::from_secs(10),
            max_bytes: 1000,
        };
        let t = Instant::now();
        let mut s = Store::default();
        for id in ["a", "b", "c"] {
            s.put("s", "u", push(id), &bounds, t);
        }
        assert_eq!(
            (s.count(None), s.count(Some("s")), s.count(Some("x"))),
            (2, 2, 0)
        );
        let ids: Vec<_> = s
            .take("s", "u", bounds.ttl, t)
            .into_iter()
            .map(|p| p.message_id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(s.take("s", "u", bounds.ttl, t).is_empty());
        assert_eq!(s.count(None), 0);
    }

    #[test]
    fn bytes_and_age_bound_a_user() {
        let bounds = Bounds {
            max: 100,
            ttl: Duration::from_secs(10),
            max_bytes: 5,
        };
        let t = Instant::now();
        let mut s = Store::default();
        s.put("s", "u", push("aaa"), &bounds, t);
        s.put("s", "u", push("bbb"), &bounds, t + Duration::from_secs(5));
        assert_eq!(s.count(None), 1);
        s.sweep(&bounds, t + Duration::from_secs(16));
        assert_eq!(s.count(None), 0);
        s.put("s", "u", push("c"), &bounds, t);
        assert!(s
            .take("s", "u", bounds.ttl, t + Duration::from_secs(11))
            .is_empty());
    }
}

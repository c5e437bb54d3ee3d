//! At most one log line a second for events a client can cause at will (refused connects and
//! requests, slow consumers) or that repeat with every request (a peer that does not answer).
//! A flood costs a counter increment per event, not a line; the line that is written says how
//! many like it were left out since the one before.
//!
//! Per core and not shared: `Cell`s, no atomics.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The log budgets of one core, one per kind of event a client can repeat at will.
#[derive(Debug, Default)]
pub struct CoreThrottles {
    /// Upgrades refused at MaxConnsPerCore.
    pub conns_full: Throttle,
    /// HTTP connections refused at MaxHttpConnsPerCore.
    pub http_full: Throttle,
    /// `/ws` connects refused (bad token, unknown system).
    pub connect_refused: Throttle,
    /// API requests refused by the ApiKey or signature check.
    pub api_refused: Throttle,
    /// Connections closed as slow consumers or for a write that timed out.
    pub slow_consumer: Throttle,
    /// Inbound node links refused (a limit, or a failed handshake).
    pub link_refused: Throttle,
    /// Calls to a peer node that got no answer (a dead peer fails every request until it
    /// leaves the peer table).
    pub peer_failed: Throttle,
}

/// One kind of event's log budget on one core.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Events since the last line was written.
    skipped: Cell<u64>,
    last: Cell<Option<Instant>>,
}

impl Throttle {
    pub const INTERVAL: Duration = Duration::from_secs(1);

    pub fn new() -> Throttle {
        Throttle::default()
    }

    /// Records one event. `Some(n)`: write a line now, mentioning the `n` events left out since
    /// the previous line; `None`: this event is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .get()
            .is_none_or(|at| now.duration_since(at) >= Self::INTERVAL);
        if due {
            self.last.set(Some(now));
            Some(self.skipped.replace(0))
        } else {
            self.skipped.set(self.skipped.get() + 1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_counting_the_rest() {
        let t = Throttle::new();
        let start = Instant::now();
        assert_eq!(t.admit_at(start), Some(0));
        for i in 1..=500u64 {
            assert_eq!(t.admit_at(start + Duration::from_micros(i)), None);
        }
        assert_eq!(t.admit_at(start + Duration::from_millis(999)), None);
        assert_eq!(t.admit_at(start + Duration::from_secs(1)), Some(501));
        assert_eq!(t.admit_at(start + Duration::from_secs(5)), Some(0));
    }
}

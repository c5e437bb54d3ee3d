//! Pushes in flight until every member has received them (`fanout --regime received`).
//!
//! Each sender owns one [`Slot`]: before posting a push it writes the push's stamp (the
//! nanoseconds in `"data":"t<ns>"`) and the deliveries it owes; each reader that counts a
//! delivery with that stamp takes one off, and the last one wakes the sender. Only readers in
//! this process see the slots, so the regime runs with one process (`--procs 1`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use tokio::sync::Notify;

/// One sender's push in flight.
#[derive(Default)]
pub struct Slot {
    /// The stamp of the push in flight; 0: none.
    stamp: AtomicU64,
    /// Deliveries not yet received.
    remaining: AtomicU64,
    /// The stamp of the latest push fully received.
    finished: AtomicU64,
    done: Notify,
}

impl Slot {
    /// Arms the slot for a push stamped `stamp` that owes `owed` deliveries. Call before the
    /// push is posted, so no delivery can come before it.
    pub fn arm(&self, stamp: u64, owed: u64) {
        self.remaining.store(owed, Relaxed);
        self.stamp.store(stamp, Relaxed);
    }

    /// Frees the slot (a failed or timed-out push): late deliveries of it no longer count.
    pub fn disarm(&self) {
        self.stamp.store(0, Relaxed);
    }

    /// Waits until every delivery owed by the push stamped `stamp` has been received. A
    /// wakeup left by an earlier push (one that timed out as its last delivery came) is
    /// skipped.
    pub async fn received(&self, stamp: u64) {
        while self.finished.load(Relaxed) != stamp {
            self.done.notified().await;
        }
    }
}

static SLOTS: OnceLock<Vec<Slot>> = OnceLock::new();

/// Creates `n` slots (once per process); later calls return the same slots.
pub fn slots(n: usize) -> &'static [Slot] {
    SLOTS.get_or_init(|| (0..n).map(|_| Slot::default()).collect())
}

/// A reader counted a delivery stamped `stamp`: takes it off its push's slot, if any. Costs
/// one atomic load when no slots exist (the other regimes).
#[inline]
pub fn delivered(stamp: u64) {
    let Some(slots) = SLOTS.get() else { return };
    for s in slots {
        if s.stamp.load(Relaxed) == stamp {
            if s.remaining.fetch_sub(1, Relaxed) == 1 {
                s.stamp.store(0, Relaxed);
                s.finished.store(stamp, Relaxed);
                s.done.notify_one();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{delivered, slots};
    use std::time::Duration;

    #[test]
    fn a_push_is_received_when_its_last_delivery_is_counted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = &slots(2)[1];
        let wait = |stamp| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(50), s.received(stamp)).await
            })
            .is_ok()
        };
        s.arm(42, 2);
        delivered(42);
        delivered(7);
        assert!(!wait(42), "one of two deliveries is not all");
        delivered(42);
        assert!(wait(42));
        // Armed again, the wakeup of push 42 does not finish push 43.
        s.arm(43, 1);
        assert!(!wait(43));
        s.disarm();
        delivered(43);
        assert!(!wait(43), "a disarmed push takes no deliveries");
    }
}

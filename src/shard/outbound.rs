//! What is waiting to be written to each socket of this core, and the writing: the bounded
//! per-connection queues, the flusher (one `sendmsg` per socket per flush, and the flush window
//! while the core is broadcasting), slow consumers, the heartbeat, and the server's closes.

use super::conn::{Conn, EndReason, Flush, WriteState};
use super::Shard;
use crate::ws::frame::{self, SharedFrame};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A push that reaches at least this many of a core's sockets is a broadcast: the flushes right
/// after it wait `FlushWindowUs` to gather the next pushes (see [`Shard::flush_delay`]).
const BROADCAST_SOCKETS: usize = 32;

impl Shard {
    /// Queues a frame for a connection. A full queue closes the connection (slow consumer)
    /// instead of growing or slowing the core. Returns false if the frame was dropped.
    pub fn enqueue(self: &Rc<Self>, conn: &Rc<Conn>, frame: SharedFrame) -> bool {
        if conn.write_state.get() == WriteState::Dead {
            return false;
        }
        {
            let mut out = conn.out.borrow_mut();
            if out.close_after {
                // A close frame is queued: nothing may follow it on the wire.
                return false;
            }
            if !out.push(frame, self.config.queue_frames, self.config.queue_bytes) {
                let (frames, bytes) = (out.len(), out.bytes);
                drop(out);
                if let Some(skipped) = self.throttles.slow_consumer.admit() {
                    tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, frames, bytes,
                        also = skipped, "slow consumer: outbound queue full, closing with 1008");
                }
                self.metrics.queue_full.inc();
                self.drop_slow_consumer(conn);
                return false;
            }
        }
        self.mark_dirty(conn);
        true
    }

    /// Hands the connection to the flusher unless it is already there or waiting to write.
    fn mark_dirty(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.write_state.get() == WriteState::Idle {
            conn.write_state.set(WriteState::Dirty);
            self.dirty.borrow_mut().push(conn.clone());
            if !self.flush_scheduled.replace(true) {
                let shard = self.clone();
                let delay = self.flush_delay();
                glommio::spawn_local(async move {
                    // glommio polls a task spawned into the running task queue at once, inside
                    // this call: without a first await the flush would write this one
                    // connection now, and every enqueue of a push would be a write (and a
                    // task) of its own. Yielding first lets the caller queue the rest of its
                    // frames, so the flush comes after it and writes each socket once.
                    if delay.is_zero() {
                        futures_lite::future::yield_now().await;
                    } else {
                        glommio::timer::sleep(delay).await;
                    }
                    shard.flush_dirty()
                })
                .detach();
            }
        }
    }

    /// How long the next flush waits. A socket write costs the same few microseconds of kernel
    /// time whether it carries one frame or twenty, and while this core is broadcasting (one
    /// push reached at least `BROADCAST_SOCKETS` of its sockets within the last 10 windows) the
    /// pushes of the next `FlushWindowUs` go out together, one write per socket for all of
    /// them: on the fan-out benchmark that is 6x the deliveries per second at a lower push
    /// delay (perf/RESULTS.md). Unicast traffic, however heavy, never waits: its frames go to
    /// different sockets, so a window would only delay them.
    pub fn flush_delay(&self) -> Duration {
        let window = self.config.flush_window;
        match self.last_broadcast.get() {
            Some(at) if !window.is_zero() && at.elapsed() < window * 10 => window,
            _ => Duration::ZERO,
        }
    }

    /// Notes a push that reached `sockets` of this core's connections.
    pub(super) fn note_fanout(&self, sockets: usize) {
        if sockets >= BROADCAST_SOCKETS {
            self.last_broadcast.set(Some(Instant::now()));
        }
    }

    /// A client that does not read: drop what it has not received, queue a 1008 close in its
    /// place (after a partly written frame, so the wire stays well-formed), and cut the socket
    /// if even that cannot be written within a second.
    fn drop_slow_consumer(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.end_reason.get().is_none() {
            conn.end_reason.set(Some(EndReason::SlowConsumer));
        }
        {
            let mut out = conn.out.borrow_mut();
            out.truncate_to_partial();
            out.push_unbounded(frame::close(frame::close_code::POLICY, "slow consumer"));
            out.close_after = true;
        }
        self.mark_dirty(conn);
        cut_after(conn, EndReason::SlowConsumer, Duration::from_secs(1));
    }

    /// Queues a close frame; the socket's write side is shut once it is written. The close
    /// passes the queue limits (a few bytes, and nothing follows it): a queue that is full when
    /// the server closes (a drain, a kick) is still delivered before it, not dropped for a 1008.
    pub fn enqueue_close(self: &Rc<Self>, conn: &Rc<Conn>, code: u16, reason: &str) {
        if conn.write_state.get() == WriteState::Dead || conn.out.borrow().close_after {
            return;
        }
        {
            let mut out = conn.out.borrow_mut();
            out.push_unbounded(frame::close(code, reason));
            out.close_after = true;
        }
        self.mark_dirty(conn);
    }

    /// Writes every dirty connection's queue: what was queued since the last flush goes out in
    /// one `sendmsg` per socket.
    pub fn flush_dirty(self: &Rc<Self>) {
        self.flush_scheduled.set(false);
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in dirty {
            if conn.write_state.get() != WriteState::Dirty {
                continue;
            }
            match conn.flush_now(&self.metrics.socket_writes) {
                Flush::Drained => conn.write_state.set(WriteState::Idle),
                Flush::WouldBlock => {
                    conn.write_state.set(WriteState::Blocked);
                    let shard = self.clone();
                    glommio::spawn_local(async move { shard.write_blocked(conn).await }).detach();
                }
                Flush::Failed => conn.cut(EndReason::Reset),
            }
        }
    }

    /// A connection whose socket buffer is full: wait for writability, then drain.
    async fn write_blocked(self: Rc<Self>, conn: Rc<Conn>) {
        use futures_lite::AsyncWrite;
        use std::pin::Pin;
        use std::task::Poll;
        loop {
            // Let glommio wait for writability by handing it the rest of the front frame.
            let wrote = futures_lite::future::poll_fn(|cx| {
                let front = {
                    let out = conn.out.borrow();
                    match out.front() {
                        Some(f) => (f.clone(), out.offset),
                        None => return Poll::Ready(Ok(0)),
                    }
                };
                let mut stream = conn.stream.borrow_mut();
                Pin::new(&mut *stream).poll_write(cx, &front.0[front.1..])
            })
            .await;
            if conn.write_state.get() == WriteState::Dead {
                return;
            }
            match wrote {
                Ok(n) => conn.out.borrow_mut().advance(n),
                Err(e) => {
                    if let Some(skipped) = self.throttles.slow_consumer.admit() {
                        tracing::warn!(client = %conn.client_id, peer = %conn.peer, core = self.id, error = %e,
                            also = skipped, "socket not writable in time, dropping connection");
                    }
                    conn.cut(EndReason::SlowConsumer);
                    return;
                }
            }
            match conn.flush_now(&self.metrics.socket_writes) {
                Flush::Drained => {
                    conn.write_state.set(WriteState::Idle);
                    return;
                }
                Flush::WouldBlock => continue,
                Flush::Failed => {
                    conn.cut(EndReason::Reset);
                    return;
                }
            }
        }
    }

    /// Pings the connections of slice `slice` of `slices` (by slot) and drops those silent for
    /// longer than PongTimeout. Called once per HeartbeatInterval/slices, so each connection is
    /// visited once per interval and the pings of a core are spread over it.
    pub fn heartbeat(self: &Rc<Self>, slice: u32, slices: u32) {
        let now = Instant::now();
        let due: Vec<Rc<Conn>> = self
            .registry
            .borrow()
            .iter()
            .filter(|conn| conn.slot % slices == slice)
            .cloned()
            .collect();
        for conn in due {
            if now.duration_since(conn.last_seen.get()) > self.config.pong_timeout {
                tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id,
                    "no pong within PongTimeout, dropping connection");
                conn.cut(EndReason::PongTimeout);
            } else {
                self.enqueue(&conn, self.ping.clone());
            }
        }
    }

    /// Ends `conn` from the server's side as `why`: records it and queues a close frame with
    /// `code` and `reason` (a drain, a node cut off from its cluster).
    pub fn close_as(self: &Rc<Self>, conn: &Rc<Conn>, why: EndReason, code: u16, reason: &str) {
        conn.end_reason.set(Some(why));
        self.enqueue_close(conn, code, reason);
    }

    /// Closes `conn` from the server's side (a kick): [`Self::close_as`] `Kicked`, then the
    /// socket is cut if the client has not hung up 2 s later.
    pub fn close_then_cut(self: &Rc<Self>, conn: &Rc<Conn>, code: u16, reason: &str) {
        self.close_as(conn, EndReason::Kicked, code, reason);
        cut_after(conn, EndReason::Kicked, Duration::from_secs(2));
    }
}

/// Cuts `conn` as `reason` after `grace`: what follows a close frame the client may never answer.
fn cut_after(conn: &Rc<Conn>, reason: EndReason, grace: Duration) {
    let conn = conn.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(grace).await;
        conn.cut(reason);
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::super::testing::{conns, with_shard};
    use crate::shard::conn::EndReason;
    use std::sync::Arc;

    #[test]
    fn a_full_queue_drops_the_slow_consumer_and_nothing_follows_a_close() {
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 2).await;
            let frame: crate::ws::frame::SharedFrame = Arc::from(&b"\x81\x01x"[..]);
            // The flush is a task that runs after this one yields: the queue fills first.
            for _ in 0..shard.config.queue_frames {
                assert!(shard.enqueue(&c[0], frame.clone()));
            }
            assert!(!shard.enqueue(&c[0], frame.clone()), "one past QueueFrames");
            assert_eq!(c[0].end_reason(), Some(EndReason::SlowConsumer));
            assert!(
                !shard.enqueue(&c[0], frame.clone()),
                "a close is queued: nothing follows"
            );
            assert!(
                shard.enqueue(&c[1], frame.clone()),
                "the others are not affected"
            );
            shard.close_then_cut(&c[1], 1000, "bye");
            assert_eq!(c[1].end_reason(), Some(EndReason::Kicked));
            assert!(!shard.enqueue(&c[1], frame));
        });
    }
}

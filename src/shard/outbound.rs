//! What is waiting to be written to each socket of this core, and the writing: the bounded
//! per-connection queues, the flusher (one `sendmsg` per socket per flush, and the flush window
//! while the core is broadcasting), slow consumers, the heartbeat, and the server's closes.

use super::conn::{Conn, EndReason, Flush, WriteState};
use super::Shard;
use crate::ws::frame::{self, SharedFrame};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A push that reaches at least this many of a core's sockets is a broadcast: while the core
/// is broadcasting, a flush pass that ends with more work queued waits for the rest of
/// `FlushWindowUs` before the next (see [`Shard::flusher`]).
const BROADCAST_SOCKETS: usize = 32;

/// Sockets a flush pass writes between two turns of the event loop.
const FLUSH_CHUNK: usize = 64;

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
                glommio::spawn_local(async move { shard.flusher().await }).detach();
            }
        }
    }

    /// The core's flusher: runs while connections are dirty, in passes. A pass writes each dirty
    /// socket once, everything queued for it so far in one `sendmsg`. Every `FLUSH_CHUNK`
    /// sockets it lets the event loop run, so the requests that arrived meanwhile queue their
    /// frames: those for sockets later in the pass go out in this pass, the others in the next.
    ///
    /// When the flusher starts the core was idle: the first pass writes at once, after the
    /// running tasks of this tick have queued what they have. When a pass ends with more work
    /// queued and the core is broadcasting (one push reached at least `BROADCAST_SOCKETS` of its
    /// sockets within the last 10 windows), the next pass starts no sooner than `FlushWindowUs`
    /// after this one did: under load each socket gets at most one write per window, carrying
    /// every push of that window. A socket write costs about the same kernel time for one frame
    /// as for twenty, so this is what keeps a saturated fan-out cheap per delivery
    /// (perf/RESULTS.md), while a push that finds the core idle is not delayed at all. Unicast
    /// traffic never waits for a window: its frames go to different sockets.
    async fn flusher(self: Rc<Self>) {
        // glommio polls a task spawned into the running task queue at once, inside the spawn:
        // without this first yield the pass would write only the connection that spawned it,
        // and every enqueue of a push would be a write of its own.
        futures_lite::future::yield_now().await;
        loop {
            let started = Instant::now();
            let pass = std::mem::take(&mut *self.dirty.borrow_mut());
            for (i, chunk) in pass.chunks(FLUSH_CHUNK).enumerate() {
                if i > 0 {
                    let_the_loop_run().await;
                }
                for conn in chunk {
                    self.write_dirty(conn);
                }
            }
            let broadcasting = self.broadcasting();
            if self.dirty.borrow().is_empty() {
                if !broadcasting {
                    break;
                }
                // Did more arrive while this pass wrote? The requests are still unread.
                let_the_loop_run().await;
                if self.dirty.borrow().is_empty() {
                    break;
                }
            }
            // More work is queued: under broadcast load, the next pass comes a window after
            // this one began.
            let wait = match broadcasting {
                true => self.config.flush_window.saturating_sub(started.elapsed()),
                false => Duration::ZERO,
            };
            if wait.is_zero() {
                let_the_loop_run().await;
            } else {
                glommio::timer::sleep(wait).await;
            }
        }
        self.flush_scheduled.set(false);
    }

    /// Whether this core has queued a push to at least `BROADCAST_SOCKETS` of its sockets
    /// within the last 10 flush windows (never with `FlushWindowUs = 0`).
    pub fn broadcasting(&self) -> bool {
        let window = self.config.flush_window;
        match self.last_broadcast.get() {
            Some(at) => !window.is_zero() && at.elapsed() < window * 10,
            None => false,
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

    /// Writes every dirty connection's queue now, in one `sendmsg` per socket, without the
    /// flusher's passes (the benchmarks time a push and its writes with it).
    pub fn flush_dirty(self: &Rc<Self>) {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in &dirty {
            self.write_dirty(conn);
        }
    }

    /// Writes what is queued for a dirty connection; a socket that takes only part of it waits
    /// for writability in a task of its own.
    fn write_dirty(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.write_state.get() != WriteState::Dirty {
            return;
        }
        match conn.flush_now(&self.metrics.socket_writes) {
            Flush::Drained => conn.write_state.set(WriteState::Idle),
            Flush::WouldBlock => {
                conn.write_state.set(WriteState::Blocked);
                let (shard, conn) = (self.clone(), conn.clone());
                glommio::spawn_local(async move { shard.write_blocked(conn).await }).detach();
            }
            Flush::Failed => conn.cut(EndReason::Reset),
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
        self.close_then_cut_as(conn, EndReason::Kicked, code, reason);
    }

    /// [`Self::close_then_cut`] recorded as `why`.
    pub fn close_then_cut_as(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        why: EndReason,
        code: u16,
        reason: &str,
    ) {
        self.close_as(conn, why, code, reason);
        cut_after(conn, why, Duration::from_secs(2));
    }
}

/// Lets this core's event loop run once: the other runnable tasks run, and the I/O that
/// completed meanwhile (requests that arrived) is reaped, before the caller goes on. A timer is
/// what does it: a plain yield would only go round the running task queue.
async fn let_the_loop_run() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
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

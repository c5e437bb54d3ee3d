//! One WebSocket connection as its core sees it, and its bounded outbound queue.
//!
//! Writing: a push appends a shared frame to the queue and marks the connection dirty; the
//! core's flusher later writes everything queued for the socket with one `sendmsg`. Only when the
//! kernel's socket buffer is full does the connection get a task of its own that waits for
//! writability. An idle connection holds no buffer: the queue's storage is released once drained.

use crate::sys::{self, Shutdown};
use crate::ws::frame::SharedFrame;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

pub use crate::types::EndReason;

/// User data set by bind_to_group.
#[derive(Debug, Default)]
pub struct ClientInfo {
    pub user_id: String,
    pub extend: String,
    /// Groups this client is in, in bind order.
    pub groups: Vec<Rc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteState {
    /// Nothing queued, or queued and not yet handed to the flusher.
    Idle,
    /// In the core's dirty list; the flusher will write it.
    Dirty,
    /// The socket buffer is full; a writer task waits for writability.
    Blocked,
    /// The socket failed or was cut; further frames are dropped.
    Dead,
}

/// A connection's unsent frames. The first lives inline: a connection rarely has more than one
/// frame waiting, so queuing and draining allocate nothing; the overflow `VecDeque` exists only
/// while two or more are queued, and its storage is released once drained.
#[derive(Default)]
pub struct Outbound {
    first: Option<SharedFrame>,
    rest: VecDeque<SharedFrame>,
    /// Bytes of the front frame already written.
    pub offset: usize,
    /// Bytes queued, minus `offset`.
    pub bytes: usize,
    /// Set when the queue ends with a close frame: shut the socket's write side once written.
    pub close_after: bool,
}

/// One WebSocket connection of this core. Its fields are the shard's; the rest of the crate
/// reads them through the methods below.
pub struct Conn {
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) client_id: Box<str>,
    pub(super) system: Rc<str>,
    pub(super) peer: SocketAddr,
    pub(super) fd: RawFd,
    pub(super) stream: RefCell<TcpStream>,
    /// Set by the first bind_to_group; most connections never need it, so it is boxed.
    pub(super) info: RefCell<Option<Box<ClientInfo>>>,
    pub(super) last_seen: Cell<Instant>,
    pub(super) out: RefCell<Outbound>,
    pub(super) write_state: Cell<WriteState>,
    /// Set when the core decided to end the connection (the reader reports it as the reason).
    pub(super) end_reason: Cell<Option<EndReason>>,
}

/// Outcome of one attempt to write a connection's queue without blocking.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Drained,
    /// The socket buffer is full; wait for writability.
    WouldBlock,
    /// The socket failed; the connection is dead.
    Failed,
}

impl Conn {
    /// The sealed clientId the client was given.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The systemId it connected with.
    pub fn system(&self) -> &str {
        &self.system
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Why the core ended (or is ending) the connection, if it did.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason.get()
    }

    /// Notes that the client sent something (what the heartbeat's PongTimeout measures).
    pub fn seen_now(&self) {
        self.last_seen.set(Instant::now());
    }

    /// Reads what the socket has into `buf` (the session's read loop).
    pub fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use futures_lite::AsyncRead;
        let mut stream = self.stream.borrow_mut();
        std::pin::Pin::new(&mut *stream).poll_read(cx, buf)
    }

    /// The userId it was bound with ("" for none).
    pub fn user_id(&self) -> String {
        let info = self.info.borrow();
        info.as_ref().map_or(String::new(), |i| i.user_id.clone())
    }

    /// The `data` of this client's 1001/1002 pushes.
    pub fn member_event_data(&self) -> String {
        let info = self.info.borrow();
        let (user_id, extend) = info
            .as_ref()
            .map_or(("", ""), |i| (i.user_id.as_str(), i.extend.as_str()));
        crate::ws::message::member_event_data(&self.client_id, user_id, extend)
    }

    /// Ends the connection from the server side: the reader wakes with EOF and cleans up.
    pub fn cut(&self, reason: EndReason) {
        if self.end_reason.get().is_none() {
            self.end_reason.set(Some(reason));
        }
        self.write_state.set(WriteState::Dead);
        self.out.borrow_mut().clear();
        sys::shutdown(self.fd, Shutdown::Both);
    }

    /// Writes as much of the queue as the socket takes now, one `sendmsg` per up to
    /// [`sys::MAX_IOV`] frames.
    pub fn flush_now(&self, writes: &crate::counters::Counter) -> Flush {
        let mut out = self.out.borrow_mut();
        loop {
            if out.is_empty() {
                if out.close_after {
                    out.close_after = false;
                    sys::shutdown(self.fd, Shutdown::Write);
                }
                return Flush::Drained;
            }
            let mut slices: [&[u8]; sys::MAX_IOV] = [&[]; sys::MAX_IOV];
            let count = out.gather(&mut slices);
            writes.inc();
            match sys::send_vectored(self.fd, &slices[..count]) {
                Ok(written) => out.advance(written),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Flush::WouldBlock,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(client = %self.client_id, peer = %self.peer, error = %e, "write failed");
                    return Flush::Failed;
                }
            }
        }
    }
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.first.is_some() as usize + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn front(&self) -> Option<&SharedFrame> {
        self.first.as_ref()
    }

    /// Queues `frame` unless that would pass either limit; false when it did not fit.
    pub fn push(&mut self, frame: SharedFrame, max_frames: usize, max_bytes: usize) -> bool {
        if self.len() >= max_frames || self.bytes + frame.len() > max_bytes {
            return false;
        }
        self.push_unbounded(frame);
        true
    }

    /// Queues `frame` past the limits (the close frame that ends a slow consumer).
    pub fn push_unbounded(&mut self, frame: SharedFrame) {
        self.bytes += frame.len();
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<SharedFrame> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        front
    }

    /// Drops everything except a partly written front frame (so the wire stays well-formed).
    pub fn truncate_to_partial(&mut self) {
        let offset = self.offset;
        let keep = if offset > 0 { self.first.take() } else { None };
        self.clear();
        if let Some(front) = keep {
            self.bytes = front.len() - offset;
            self.offset = offset;
            self.first = Some(front);
        }
    }

    /// Drops everything and releases the storage.
    pub fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
        self.bytes = 0;
        self.offset = 0;
    }

    /// Fills `slices` with what to write next (the front frame from `offset`, then whole frames,
    /// at most [`sys::MAX_IOV`]); returns how many it filled.
    pub fn gather<'a>(&'a self, slices: &mut [&'a [u8]; sys::MAX_IOV]) -> usize {
        let Some(first) = &self.first else {
            return 0;
        };
        slices[0] = &first[self.offset..];
        let mut count = 1;
        for frame in self.rest.iter().take(sys::MAX_IOV - 1) {
            slices[count] = frame;
            count += 1;
        }
        count
    }

    /// Drops `written` bytes from the front of the queue.
    pub fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let Some(front) = &self.first else {
                debug_assert!(false, "bug: advanced past the queue");
                return;
            };
            let front_left = front.len() - self.offset;
            if written >= front_left {
                written -= front_left;
                self.offset = 0;
                self.pop_front();
            } else {
                self.offset += written;
                written = 0;
            }
        }
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(bytes: &[u8]) -> SharedFrame {
        Arc::from(bytes)
    }

    #[test]
    fn outbound_queues_gathers_and_advances() {
        let mut out = Outbound::default();
        assert!(out.push(frame(b"abc"), 3, 100));
        assert!(out.push(frame(b"defg"), 3, 100));
        assert!(out.push(frame(b"h"), 3, 100));
        assert!(!out.push(frame(b"i"), 3, 100), "frame limit");
        assert_eq!((out.len(), out.bytes), (3, 8));
        let mut slices: [&[u8]; sys::MAX_IOV] = [&[]; sys::MAX_IOV];
        assert_eq!(out.gather(&mut slices), 3);
        assert_eq!(&slices[..3], &[&b"abc"[..], b"defg", b"h"]);
        out.advance(5); // "abc" and "de"
        assert_eq!((out.len(), out.offset, out.bytes), (2, 2, 3));
        let mut slices: [&[u8]; sys::MAX_IOV] = [&[]; sys::MAX_IOV];
        assert_eq!(out.gather(&mut slices), 2);
        assert_eq!(&slices[..2], &[&b"fg"[..], b"h"]);
        // A slow consumer keeps only the partly written frame, then the close.
        out.truncate_to_partial();
        assert_eq!((out.len(), out.bytes), (1, 2));
        out.push_unbounded(frame(b"CLOSE"));
        out.advance(7);
        assert!(out.is_empty());
        assert_eq!(out.bytes, 0);
        assert!(!out.push(frame(&[0; 101]), 3, 100), "byte limit");
    }
}

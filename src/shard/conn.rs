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

/// Why a connection ended; logged and (later) counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent a close frame.
    ClientClose,
    /// EOF or a socket error without a close frame.
    Reset,
    /// No pong (or any frame) within PongTimeout.
    PongTimeout,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// close_client from the API.
    Kicked,
    /// A protocol violation or an oversized message.
    ProtocolError,
    /// The server is shutting down.
    Shutdown,
}

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

#[derive(Default)]
pub struct Outbound {
    pub queue: VecDeque<SharedFrame>,
    /// Bytes of the front frame already written.
    pub offset: usize,
    /// Bytes queued, minus `offset`.
    pub bytes: usize,
    /// Set when the queue ends with a close frame: shut the socket's write side once written.
    pub close_after: bool,
}

pub struct Conn {
    pub slot: u32,
    pub generation: u32,
    pub client_id: Box<str>,
    pub system: Rc<str>,
    pub peer: SocketAddr,
    pub fd: RawFd,
    pub stream: RefCell<TcpStream>,
    /// Set by the first bind_to_group; most connections never need it, so it is boxed.
    pub info: RefCell<Option<Box<ClientInfo>>>,
    pub last_seen: Cell<Instant>,
    pub out: RefCell<Outbound>,
    pub write_state: Cell<WriteState>,
    /// Set when the core decided to end the connection (the reader reports it as the reason).
    pub end_reason: Cell<Option<EndReason>>,
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
        let mut out = self.out.borrow_mut();
        out.queue = VecDeque::new();
        out.bytes = 0;
        out.offset = 0;
        sys::shutdown(self.fd, Shutdown::Both);
    }

    /// Writes as much of the queue as the socket takes now, one `sendmsg` per up to
    /// [`sys::MAX_IOV`] frames.
    pub fn flush_now(&self) -> Flush {
        let mut out = self.out.borrow_mut();
        loop {
            if out.queue.is_empty() {
                if out.close_after {
                    out.close_after = false;
                    sys::shutdown(self.fd, Shutdown::Write);
                }
                // Give the storage back: an idle connection holds no buffer.
                out.queue = VecDeque::new();
                return Flush::Drained;
            }
            let mut slices: [&[u8]; sys::MAX_IOV] = [&[]; sys::MAX_IOV];
            let mut count = 0;
            for (i, frame) in out.queue.iter().take(sys::MAX_IOV).enumerate() {
                slices[i] = if i == 0 { &frame[out.offset..] } else { frame };
                count += 1;
            }
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
    /// Drops `written` bytes from the front of the queue.
    pub fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let front_left = self.queue[0].len() - self.offset;
            if written >= front_left {
                written -= front_left;
                self.offset = 0;
                self.queue.pop_front();
            } else {
                self.offset += written;
                written = 0;
            }
        }
    }
}

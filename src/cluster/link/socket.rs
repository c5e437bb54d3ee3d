//! What both ends of a node link share: the socket its reader and writer tasks take turns on,
//! its TCP options, the bounded outbox of encoded frames, and the loops that write the outbox
//! and read frames with a stall deadline.

use crate::cluster::handshake::LinkKey;
use crate::cluster::proto::{self, Frame};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A socket shared by a link's reader and writer tasks. Each poll borrows it only for that poll.
#[derive(Clone)]
pub(super) struct Shared(pub(super) Rc<RefCell<TcpStream>>);

impl Shared {
    /// A handle that can shut the socket down for as long as it is open, and does nothing after.
    pub(super) fn closer(&self) -> Closer {
        Closer(Rc::downgrade(&self.0))
    }
}

/// Shuts a link's socket down from a task that does not own it (an answer that found the outbox
/// full). It holds only a weak reference: once the link's tasks dropped the stream, its fd may
/// already belong to another socket (a new client's), and a raw `shutdown(fd)` would cut that
/// one instead.
pub(super) struct Closer(Weak<RefCell<TcpStream>>);

impl Closer {
    pub(super) fn shutdown(&self) {
        // While `stream` is held the fd is open and ours. Nothing else borrows the stream
        // outside a poll, so `try_borrow` only fails if this runs inside one (it does not).
        if let Some(stream) = self.0.upgrade() {
            if let Ok(s) = stream.try_borrow() {
                crate::sys::shutdown(s.as_raw_fd(), crate::sys::Shutdown::Both);
            }
        }
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Bytes queued on one link beyond which the peer is taken as not reading: the link is closed
/// rather than let a stalled or hostile peer grow this node's memory.
pub(super) const MAX_OUTBOX: usize = 64 << 20;

/// How long a frame may take from its first byte to its last, and a write may wait for the peer
/// to read. A link idle between frames is fine; one that stops in the middle of a frame or
/// stops reading is dead or hostile, and holding its buffers would let it pin up to a frame's
/// worth of memory. The deadline covers the whole frame, not each read: a peer dripping a byte
/// every few seconds would otherwise hold a 16 MiB buffer for ever. 16 MiB (the largest frame)
/// in 10 s is 1.6 MB/s, a sixtieth of a 1 Gbit/s link.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on node links: first probe after 10 s of silence, then every 5 s, reset after
/// 3 unanswered: a vanished peer is noticed within about 25 s even on a link with nothing in
/// flight (the accepting side of a link never sends unless asked).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Sets the options every node link socket gets: no Nagle delay, a write deadline, keepalive.
pub(super) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(STALL_TIMEOUT));
    if let Err(e) = crate::sys::set_keepalive(
        stream.as_raw_fd(),
        KEEPALIVE_IDLE,
        KEEPALIVE_INTERVAL,
        KEEPALIVE_RETRIES,
    ) {
        tracing::debug!(error = %e, "cannot set TCP keepalive on a node link");
    }
}

/// Why a frame was not queued.
#[derive(Debug)]
pub(super) enum PushError {
    /// The frame is over the receiver's limit; nothing was queued.
    TooLarge(usize),
    /// The peer does not read: [`MAX_OUTBOX`] bytes are waiting. The link must close.
    Full,
    /// The link is closed: nothing will ever write this.
    Closed,
}

/// Bytes waiting to be written on a link; the writer task takes them all at once, so frames
/// queued together go out in one write.
#[derive(Default)]
pub(super) struct Outbox {
    buf: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Outbox {
    pub(super) fn push(&self, frame: &Frame) -> Result<(), PushError> {
        if self.closed.get() {
            return Err(PushError::Closed);
        }
        let mut buf = self.buf.borrow_mut();
        if buf.len() >= MAX_OUTBOX {
            return Err(PushError::Full);
        }
        proto::try_encode(frame, &mut buf).map_err(|e| match e {
            proto::ProtoError::TooLarge(n) => PushError::TooLarge(n),
            other => unreachable!("bug: encoding fails only by size: {other}"),
        })?;
        drop(buf);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Ok(())
    }

    pub(super) fn close(&self) {
        self.closed.set(true);
        // Nothing will write these: free them now, not when the last answer task lets go.
        std::mem::take(&mut *self.buf.borrow_mut());
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn next(&self) -> impl Future<Output = Option<Vec<u8>>> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.closed.get() {
                return Poll::Ready(None);
            }
            let mut buf = self.buf.borrow_mut();
            if buf.is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(Some(std::mem::take(&mut *buf)))
            }
        })
    }
}

/// Writes everything the outbox is given until it closes or the socket fails.
pub(super) async fn write_loop(mut stream: Shared, outbox: Rc<Outbox>) -> std::io::Result<()> {
    while let Some(bytes) = outbox.next().await {
        stream.write_all(&bytes).await?;
    }
    Ok(())
}

/// Reads frames, handing each to `on_frame`, until EOF, an error, a malformed frame, or a frame
/// not complete within [`STALL_TIMEOUT`] of its first byte.
pub(super) async fn read_loop(
    stream: Shared,
    mut on_frame: impl FnMut(Frame) -> Result<(), String>,
) -> Result<(), String> {
    use futures_lite::AsyncReadExt;
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // When the frame now in `buf` must be complete; None while `buf` is empty (between frames).
    let mut frame_deadline: Option<Instant> = None;
    loop {
        let read = stream.read(&mut chunk);
        let n = match frame_deadline {
            None => read.await,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match glommio::timer::timeout(left.max(Duration::from_millis(1)), async {
                    Ok(read.await)
                })
                .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        return Err(format!(
                            "a frame still incomplete {STALL_TIMEOUT:?} after its first byte \
                             ({} bytes of it came)",
                            buf.len()
                        ))
                    }
                }
            }
        }
        .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        let arrived = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((frame, used)) = proto::decode(&buf[at..]).map_err(|e| e.to_string())? {
            at += used;
            on_frame(frame)?;
        }
        buf.drain(..at);
        frame_deadline = match frame_deadline {
            _ if buf.is_empty() => None,
            // The frame left in `buf` began in this read.
            _ if at > 0 => Some(arrived + STALL_TIMEOUT),
            Some(deadline) => Some(deadline),
            None => Some(arrived + STALL_TIMEOUT),
        };
    }
}

/// What every link of a core needs to open and accept links: this node's identity and the
/// handshake key.
#[derive(Debug)]
pub struct LinkAuth {
    pub node: SocketAddrV4,
    pub key: LinkKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::proto::RemoteOp;

    fn request(id: u64) -> Frame {
        Frame::Request {
            id,
            op: RemoteOp::Stats { system: "s".into() },
        }
    }

    #[test]
    fn a_closed_outbox_refuses_frames_and_drops_what_it_held() {
        let outbox = Outbox::default();
        outbox.push(&request(1)).unwrap();
        assert!(!outbox.buf.borrow().is_empty());
        outbox.close();
        assert!(outbox.buf.borrow().is_empty());
        assert!(matches!(outbox.push(&request(2)), Err(PushError::Closed)));
        assert!(outbox.buf.borrow().is_empty());
    }
}

//! Persistent node-to-node links over RPCPort.
//!
//! Each core keeps its own link to each peer node (a socket never leaves its core), opened on
//! first use and reopened with backoff after a failure. Requests are pipelined: each carries an
//! id, the answer is matched by id, and every call has a deadline, so a dead or stalled peer costs
//! a caller at most RpcTimeoutMs. The accepting side ([`serve_peer`]) runs each request as a task
//! of its own and writes answers in completion order.

use super::proto::{self, Frame, RemoteOp, RemoteReply};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A socket shared by a link's reader and writer tasks. Each poll borrows it only for that poll.
#[derive(Clone)]
struct Shared(Rc<RefCell<TcpStream>>);

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
const MAX_OUTBOX: usize = 64 << 20;

/// How long a frame may stay half-received, and a write may wait for the peer to read. A link
/// idle between frames is fine; one that stops in the middle of a frame or stops reading is
/// dead or hostile, and holding its buffers would let it pin up to a frame's worth of memory.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a frame was not queued.
#[derive(Debug)]
enum PushError {
    /// The frame is over the receiver's limit; nothing was queued.
    TooLarge(usize),
    /// The peer does not read: [`MAX_OUTBOX`] bytes are waiting. The link must close.
    Full,
}

/// Bytes waiting to be written on a link; the writer task takes them all at once, so frames
/// queued together go out in one write.
#[derive(Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Outbox {
    fn push(&self, frame: &Frame) -> Result<(), PushError> {
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

    fn close(&self) {
        self.closed.set(true);
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
async fn write_loop(mut stream: Shared, outbox: Rc<Outbox>) -> std::io::Result<()> {
    while let Some(bytes) = outbox.next().await {
        stream.write_all(&bytes).await?;
    }
    Ok(())
}

/// Reads frames, handing each to `on_frame`, until EOF, an error, a malformed frame, or a frame
/// left half-received for [`STALL_TIMEOUT`].
async fn read_loop(
    stream: Shared,
    mut on_frame: impl FnMut(Frame) -> Result<(), String>,
) -> Result<(), String> {
    use futures_lite::AsyncReadExt;
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = stream.read(&mut chunk);
        let n = if buf.is_empty() {
            read.await
        } else {
            match glommio::timer::timeout(STALL_TIMEOUT, async { Ok(read.await) }).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(format!(
                        "{} bytes of a frame, then nothing for {STALL_TIMEOUT:?}",
                        buf.len()
                    ))
                }
            }
        }
        .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((frame, used)) = proto::decode(&buf[at..]).map_err(|e| e.to_string())? {
            at += used;
            on_frame(frame)?;
        }
        buf.drain(..at);
    }
}

/// Why a remote call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("peer {0} unreachable")]
    Unreachable(SocketAddrV4),
    #[error("peer {0} did not answer within the deadline")]
    Timeout(SocketAddrV4),
    #[error("request of {1} bytes is over the node-link frame limit (peer {0})")]
    TooLarge(SocketAddrV4, usize),
}

enum State {
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
    Connecting,
    Up {
        outbox: Rc<Outbox>,
    },
}

/// This core's link to one peer node.
pub struct Link {
    pub addr: SocketAddrV4,
    core: usize,
    timeout: Duration,
    state: RefCell<State>,
    pending: Rc<RefCell<HashMap<u64, LocalSender<RemoteReply>>>>,
    next_id: Cell<u64>,
    /// Bumped on every (re)connect, so a dying connection's tasks cannot tear down its successor.
    epoch: Cell<u64>,
    /// Calls, failures, reconnects and round trip, for `/metrics`.
    pub stats: crate::ops::metrics::LinkStats,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Link {
    pub fn new(addr: SocketAddrV4, core: usize, timeout: Duration) -> Rc<Link> {
        Rc::new(Link {
            addr,
            core,
            timeout,
            state: RefCell::new(State::Down {
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            pending: Rc::default(),
            next_id: Cell::new(0),
            epoch: Cell::new(0),
            stats: Default::default(),
        })
    }

    /// Whether the link's connection is up now.
    pub fn is_up(&self) -> bool {
        matches!(*self.state.borrow(), State::Up { .. })
    }

    /// Runs `op` on the peer and returns its answer, within the link's deadline.
    pub async fn call(self: &Rc<Self>, op: RemoteOp) -> Result<RemoteReply, LinkError> {
        let deadline = Instant::now() + self.timeout;
        let outbox = self.connected(deadline).await?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        if let Err(e) = outbox.push(&Frame::Request { id, op }) {
            return Err(match e {
                PushError::TooLarge(n) => LinkError::TooLarge(self.addr, n),
                PushError::Full => {
                    self.broken(
                        self.epoch.get(),
                        Some(format!(
                            "{MAX_OUTBOX} bytes unsent: the peer is not reading"
                        )),
                    );
                    LinkError::Unreachable(self.addr)
                }
            });
        }
        self.pending.borrow_mut().insert(id, tx);
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = glommio::timer::timeout(left.max(Duration::from_millis(1)), async {
            Ok(rx.recv().await)
        })
        .await;
        match answer {
            Ok(Some(reply)) => Ok(reply),
            // The link broke: its pending senders were dropped.
            Ok(None) => Err(LinkError::Unreachable(self.addr)),
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(LinkError::Timeout(self.addr))
            }
        }
    }

    /// The outbox of a live connection, connecting first if the backoff allows.
    async fn connected(self: &Rc<Self>, deadline: Instant) -> Result<Rc<Outbox>, LinkError> {
        loop {
            let start = match &*self.state.borrow() {
                State::Up { outbox } => return Ok(outbox.clone()),
                State::Down { retry_at, .. } if Instant::now() < *retry_at => {
                    return Err(LinkError::Unreachable(self.addr))
                }
                State::Down { .. } => true,
                State::Connecting => false,
            };
            if start {
                return self.connect(deadline).await;
            }
            // Another call is connecting: wait for it, within our deadline.
            if Instant::now() >= deadline {
                return Err(LinkError::Timeout(self.addr));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn connect(self: &Rc<Self>, deadline: Instant) -> Result<Rc<Outbox>, LinkError> {
        let backoff = match &*self.state.borrow() {
            State::Down { backoff, .. } => *backoff,
            _ => FIRST_BACKOFF,
        };
        *self.state.borrow_mut() = State::Connecting;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let stream = match TcpStream::connect_timeout(self.addr, left).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %self.addr, core = self.core, error = %e, "node link connect failed");
                *self.state.borrow_mut() = State::Down {
                    retry_at: Instant::now() + backoff,
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                };
                return Err(LinkError::Unreachable(self.addr));
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(STALL_TIMEOUT));
        let epoch = self.epoch.get() + 1;
        self.epoch.set(epoch);
        let stream = Shared(Rc::new(RefCell::new(stream)));
        let outbox = Rc::new(Outbox::default());
        *self.state.borrow_mut() = State::Up {
            outbox: outbox.clone(),
        };
        tracing::debug!(peer = %self.addr, core = self.core, "node link up");
        self.stats.connected();

        let link = self.clone();
        let reader_stream = stream.clone();
        glommio::spawn_local(async move {
            let pending = link.pending.clone();
            let result = read_loop(reader_stream, |frame| match frame {
                Frame::Response { id, reply } => {
                    if let Some(tx) = pending.borrow_mut().remove(&id) {
                        let _ = tx.try_send(reply);
                    }
                    Ok(())
                }
                Frame::Request { .. } => Err("peer sent a request on our outbound link".into()),
            })
            .await;
            link.broken(epoch, result.err());
        })
        .detach();
        let link = self.clone();
        let writer_outbox = outbox.clone();
        glommio::spawn_local(async move {
            if let Err(e) = write_loop(stream, writer_outbox).await {
                link.broken(epoch, Some(e.to_string()));
            }
        })
        .detach();
        Ok(outbox)
    }

    /// The connection of `epoch` ended: fail its calls now and reconnect on next use.
    fn broken(&self, epoch: u64, why: Option<String>) {
        if self.epoch.get() != epoch {
            return;
        }
        self.epoch.set(epoch + 1);
        if let State::Up { outbox } = &*self.state.borrow() {
            outbox.close();
        }
        *self.state.borrow_mut() = State::Down {
            retry_at: Instant::now() + FIRST_BACKOFF,
            backoff: FIRST_BACKOFF * 2,
        };
        // Dropping the senders wakes every waiting call with "unreachable".
        self.pending.borrow_mut().clear();
        match why {
            Some(e) => {
                tracing::warn!(peer = %self.addr, core = self.core, error = %e, "node link lost")
            }
            None => {
                tracing::debug!(peer = %self.addr, core = self.core, "node link closed by peer")
            }
        }
    }

    /// Closes the link (the peer left the cluster).
    pub fn close(&self) {
        let epoch = self.epoch.get();
        self.broken(epoch, None);
    }
}

/// Serves one accepted peer connection: each request runs as its own task (`run`), answers go
/// back in completion order. A malformed frame closes this link only.
pub async fn serve_peer<F, Fut>(stream: TcpStream, core: usize, run: F)
where
    F: Fn(RemoteOp) -> Fut + 'static,
    Fut: Future<Output = RemoteReply> + 'static,
{
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(STALL_TIMEOUT));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let stream = Shared(Rc::new(RefCell::new(stream)));
    let outbox = Rc::new(Outbox::default());
    let writer = glommio::spawn_local(write_loop(stream.clone(), outbox.clone()));
    let run = Rc::new(run);
    let result = read_loop(stream, |frame| match frame {
        Frame::Request { id, op } => {
            let outbox = outbox.clone();
            let run = run.clone();
            glommio::spawn_local(async move {
                let reply = run(op).await;
                match outbox.push(&Frame::Response { id, reply }) {
                    Ok(()) => {}
                    Err(PushError::TooLarge(n)) => {
                        tracing::warn!(peer = ?peer, core, bytes = n,
                            "node-link reply over the frame limit; answering Failed instead");
                        let why = format!("reply of {n} bytes is over the node-link frame limit");
                        let _ = outbox.push(&Frame::Response { id, reply: RemoteReply::Failed(why) });
                    }
                    Err(PushError::Full) => {
                        tracing::warn!(peer = ?peer, core, "closing node link: the peer does not read its answers");
                        outbox.close();
                        crate::sys::shutdown(fd, crate::sys::Shutdown::Both);
                    }
                }
            })
            .detach();
            Ok(())
        }
        Frame::Response { .. } => Err("peer sent a response on its outbound link".into()),
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(peer = ?peer, core, error = %e, "closing node link");
    }
    outbox.close();
    let _ = writer.await;
}

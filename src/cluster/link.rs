//! Persistent node-to-node links over RPCPort.
//!
//! Each core keeps its own link to each peer node (a socket never leaves its core), opened on
//! first use and reopened with backoff after a failure. Requests are pipelined: each carries an
//! id, the answer is matched by id, and every call has a deadline, so a dead or stalled peer costs
//! a caller at most RpcTimeoutMs, and [`TIMEOUTS_TO_BREAK`] unanswered calls in a row break the
//! link, so a peer that accepts but never answers costs a few callers the deadline, not all of
//! them. The accepting side ([`serve_peer`]) runs each request as a task of its own and writes
//! answers in completion order.
//!
//! Every link starts with the handshake of [`super::handshake`]: nothing a peer sends is decoded
//! as a frame before it proved it holds the cluster key. Both ends set TCP keepalive, so a link
//! whose peer vanished without a FIN is noticed even when it carries nothing.

use super::handshake::{self, HandshakeError, LinkKey};
use super::proto::{self, Frame, RemoteOp, RemoteReply};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A socket shared by a link's reader and writer tasks. Each poll borrows it only for that poll.
#[derive(Clone)]
struct Shared(Rc<RefCell<TcpStream>>);

impl Shared {
    /// A handle that can shut the socket down for as long as it is open, and does nothing after.
    fn closer(&self) -> Closer {
        Closer(Rc::downgrade(&self.0))
    }
}

/// Shuts a link's socket down from a task that does not own it (an answer that found the outbox
/// full). It holds only a weak reference: once the link's tasks dropped the stream, its fd may
/// already belong to another socket (a new client's), and a raw `shutdown(fd)` would cut that
/// one instead.
struct Closer(Weak<RefCell<TcpStream>>);

impl Closer {
    fn shutdown(&self) {
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
const MAX_OUTBOX: usize = 64 << 20;

/// How long a frame may take from its first byte to its last, and a write may wait for the peer
/// to read. A link idle between frames is fine; one that stops in the middle of a frame or
/// stops reading is dead or hostile, and holding its buffers would let it pin up to a frame's
/// worth of memory. The deadline covers the whole frame, not each read: a peer dripping a byte
/// every few seconds would otherwise hold a 16 MiB buffer for ever. 16 MiB (the largest frame)
/// in 10 s is 1.6 MB/s, a sixtieth of a 1 Gbit/s link.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls in a row that got no answer within RpcTimeoutMs before the link is taken as broken.
/// A peer that accepts and never answers (stopped, wedged) would otherwise keep its link up
/// and cost every caller the full deadline until etcd drops it; once broken, callers fail at
/// once while the link waits out its backoff, and the reconnect's handshake (which a stopped
/// peer does not answer) keeps it down. Three, so one slow answer (a big presence list) does
/// not cost a reconnect.
pub const TIMEOUTS_TO_BREAK: u32 = 3;

/// TCP keepalive on node links: first probe after 10 s of silence, then every 5 s, reset after
/// 3 unanswered: a vanished peer is noticed within about 25 s even on a link with nothing in
/// flight (the accepting side of a link never sends unless asked).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Sets the options every node link socket gets: no Nagle delay, a write deadline, keepalive.
fn tune(stream: &TcpStream) {
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
enum PushError {
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
struct Outbox {
    buf: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Outbox {
    fn push(&self, frame: &Frame) -> Result<(), PushError> {
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

    fn close(&self) {
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
async fn write_loop(mut stream: Shared, outbox: Rc<Outbox>) -> std::io::Result<()> {
    while let Some(bytes) = outbox.next().await {
        stream.write_all(&bytes).await?;
    }
    Ok(())
}

/// Reads frames, handing each to `on_frame`, until EOF, an error, a malformed frame, or a frame
/// not complete within [`STALL_TIMEOUT`] of its first byte.
async fn read_loop(
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

/// What every link of a core needs to open and accept links: this node's identity and the
/// handshake key.
#[derive(Debug)]
pub struct LinkAuth {
    pub node: SocketAddrV4,
    pub key: LinkKey,
}

/// This core's link to one peer node.
pub struct Link {
    pub addr: SocketAddrV4,
    core: usize,
    timeout: Duration,
    auth: Rc<LinkAuth>,
    state: RefCell<State>,
    pending: Rc<RefCell<HashMap<u64, LocalSender<RemoteReply>>>>,
    next_id: Cell<u64>,
    /// Bumped on every (re)connect, so a dying connection's tasks cannot tear down its successor.
    epoch: Cell<u64>,
    /// Calls on the current connection that ended unanswered at their deadline since the last
    /// answer (see [`TIMEOUTS_TO_BREAK`]).
    timeouts_in_a_row: Cell<u32>,
    /// The last handshake failure logged at WARN, and when: a peer that keeps refusing this
    /// node (another secret) is reported once a minute per link, not on every retry.
    refusal_logged: RefCell<Option<(String, Instant)>>,
    /// Calls, failures, reconnects and round trip, for `/metrics`.
    pub stats: crate::counters::LinkStats,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a peer that keeps refusing the handshake the same way is logged again, per link.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Puts a link that is `Connecting` back `Down` if the call that connects it is dropped halfway
/// (its caller gave up): the next call then connects again instead of waiting for ever.
struct ConnectingGuard<'a> {
    link: &'a Link,
    backoff: Duration,
    armed: bool,
}

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.link.state.borrow_mut() = State::Down {
                retry_at: Instant::now() + self.backoff,
                backoff: (self.backoff * 2).min(MAX_BACKOFF),
            };
        }
    }
}

impl Link {
    pub fn new(addr: SocketAddrV4, core: usize, timeout: Duration, auth: Rc<LinkAuth>) -> Rc<Link> {
        Rc::new(Link {
            addr,
            core,
            timeout,
            auth,
            state: RefCell::new(State::Down {
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            pending: Rc::default(),
            next_id: Cell::new(0),
            epoch: Cell::new(0),
            timeouts_in_a_row: Cell::new(0),
            refusal_logged: RefCell::new(None),
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
        let epoch = self.epoch.get();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        if let Err(e) = outbox.push(&Frame::Request { id, op }) {
            return Err(match e {
                PushError::TooLarge(n) => LinkError::TooLarge(self.addr, n),
                PushError::Full => {
                    self.broken(
                        epoch,
                        Some(format!(
                            "{MAX_OUTBOX} bytes unsent: the peer is not reading"
                        )),
                    );
                    LinkError::Unreachable(self.addr)
                }
                PushError::Closed => LinkError::Unreachable(self.addr),
            });
        }
        self.pending.borrow_mut().insert(id, tx);
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = glommio::timer::timeout(left.max(Duration::from_millis(1)), async {
            Ok(rx.recv().await)
        })
        .await;
        match answer {
            Ok(Some(reply)) => {
                self.timeouts_in_a_row.set(0);
                Ok(reply)
            }
            // The link broke: its pending senders were dropped.
            Ok(None) => Err(LinkError::Unreachable(self.addr)),
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                if self.epoch.get() == epoch {
                    let missed = self.timeouts_in_a_row.get() + 1;
                    self.timeouts_in_a_row.set(missed);
                    if missed >= TIMEOUTS_TO_BREAK {
                        self.broken(
                            epoch,
                            Some(format!(
                                "{missed} calls in a row got no answer within {:?}",
                                self.timeout
                            )),
                        );
                    }
                }
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
        let mut guard = ConnectingGuard {
            link: self,
            backoff,
            armed: true,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut stream = match TcpStream::connect_timeout(self.addr, left).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %self.addr, core = self.core, error = %e, "node link connect failed");
                return Err(LinkError::Unreachable(self.addr));
            }
        };
        tune(&stream);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), handshake::CONNECT_TIMEOUT);
        let auth = &self.auth;
        if let Err(e) = handshake::connect(&mut stream, &auth.key, auth.node, self.addr, left).await
        {
            self.stats.handshake_failed();
            self.log_refusal(&e);
            // A handshake cut short by the caller's own deadline says nothing about the peer.
            return Err(match e {
                HandshakeError::TimedOut(_) => LinkError::Timeout(self.addr),
                _ => LinkError::Unreachable(self.addr),
            });
        }
        guard.armed = false;
        drop(guard);
        if self.refusal_logged.borrow_mut().take().is_some() {
            tracing::info!(peer = %self.addr, core = self.core, "node link handshake accepted again");
        }
        let epoch = self.epoch.get() + 1;
        self.epoch.set(epoch);
        self.timeouts_in_a_row.set(0);
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

    /// Logs a failed handshake: at WARN when it is new on this link or a minute passed since
    /// the last line, else at debug (the link retries every 2 s at most).
    fn log_refusal(&self, e: &HandshakeError) {
        let what = e.reason().to_string();
        let mut logged = self.refusal_logged.borrow_mut();
        let due = match &*logged {
            Some((last, at)) => *last != what || at.elapsed() >= REFUSAL_LOG_EVERY,
            None => true,
        };
        // Timeouts are most often the caller's own short deadline or a stopped peer, which
        // the calls' errors already show; they are logged at debug only.
        if due && !matches!(e, HandshakeError::TimedOut(_)) {
            *logged = Some((what, Instant::now()));
            tracing::warn!(peer = %self.addr, core = self.core, error = %e, "node link refused by the handshake");
        } else {
            tracing::debug!(peer = %self.addr, core = self.core, error = %e, "node link handshake failed");
        }
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

/// Why an inbound link was refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// This core holds MaxNodeLinksPerCore inbound links.
    Core(usize),
    /// This core holds MaxNodeLinksPerPeer inbound links from that address.
    Peer(usize),
}

/// This core's inbound node links, counted in all and per remote address, so a stranger
/// cannot hold an unbounded number of half-open handshakes (or a peer an unbounded number of
/// links).
#[derive(Debug)]
pub struct Inbound {
    per_core: usize,
    per_peer: usize,
    total: Cell<usize>,
    by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// When each (address, reason) refusal was last logged at WARN: a misconfigured node
    /// retrying every 2 s is reported once a minute, not every time.
    logged: RefCell<HashMap<(IpAddr, &'static str), Instant>>,
}

/// Refusals remembered for [`Inbound::first_in_a_while`]; past this many addresses (a flood
/// from many sources) the memory is dropped and the per-core 1/s throttle alone bounds the log.
const LOGGED_REFUSALS: usize = 256;

/// One admitted inbound link; its slot is given back on drop.
pub struct InboundSlot {
    inbound: Rc<Inbound>,
    ip: IpAddr,
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let inbound = &self.inbound;
        inbound.total.set(inbound.total.get().saturating_sub(1));
        let mut by_ip = inbound.by_ip.borrow_mut();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

impl Inbound {
    pub fn new(per_core: usize, per_peer: usize) -> Rc<Inbound> {
        Rc::new(Inbound {
            per_core,
            per_peer,
            total: Cell::new(0),
            by_ip: RefCell::default(),
            logged: RefCell::default(),
        })
    }

    /// Whether a refusal of `reason` from `ip` was not logged in the last
    /// [`REFUSAL_LOG_EVERY`] (and notes it as logged now).
    pub fn first_in_a_while(&self, ip: IpAddr, reason: &'static str) -> bool {
        let mut logged = self.logged.borrow_mut();
        let now = Instant::now();
        if let Some(at) = logged.get(&(ip, reason)) {
            if now.duration_since(*at) < REFUSAL_LOG_EVERY {
                return false;
            }
        }
        if logged.len() >= LOGGED_REFUSALS {
            logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_EVERY);
            if logged.len() >= LOGGED_REFUSALS {
                logged.clear();
            }
        }
        logged.insert((ip, reason), now);
        true
    }

    /// A slot for one more link from `ip`, or why not.
    pub fn admit(self: &Rc<Self>, ip: IpAddr) -> Result<InboundSlot, LimitRefusal> {
        let total = self.total.get();
        if total >= self.per_core {
            return Err(LimitRefusal::Core(total));
        }
        let mut by_ip = self.by_ip.borrow_mut();
        let from_ip = by_ip.entry(ip).or_insert(0);
        if *from_ip >= self.per_peer {
            return Err(LimitRefusal::Peer(*from_ip));
        }
        *from_ip += 1;
        self.total.set(total + 1);
        Ok(InboundSlot {
            inbound: self.clone(),
            ip,
        })
    }
}

/// Serves one accepted peer connection: first the handshake (nothing is decoded before the peer
/// proved it holds the key), then each request runs as its own task (`run`, told which node
/// asks), answers go back in completion order. A malformed frame closes this link only.
/// Returns the handshake's failure, for the caller to count and log.
pub async fn serve_peer<F, Fut>(
    mut stream: TcpStream,
    core: usize,
    auth: &LinkAuth,
    run: F,
) -> Result<(), handshake::Refused>
where
    F: Fn(SocketAddrV4, RemoteOp) -> Fut + 'static,
    Fut: Future<Output = RemoteReply> + 'static,
{
    let peer = stream.peer_addr().ok();
    tune(&stream);
    let from = handshake::accept(&mut stream, &auth.key, auth.node).await?;
    tracing::debug!(peer = ?peer, node = %from, core, "inbound node link up");
    let stream = Shared(Rc::new(RefCell::new(stream)));
    let outbox = Rc::new(Outbox::default());
    let writer = {
        let (stream, outbox) = (stream.clone(), outbox.clone());
        glommio::spawn_local(async move {
            let closer = stream.closer();
            if let Err(e) = write_loop(stream, outbox.clone()).await {
                // Answers can no longer leave: end the reader too, instead of running requests
                // whose answers would pile up unsent.
                tracing::debug!(peer = ?peer, core, error = %e, "node link write failed");
                outbox.close();
                closer.shutdown();
            }
        })
    };
    let run = Rc::new(run);
    let closer = Rc::new(stream.closer());
    let result = read_loop(stream, |frame| match frame {
        Frame::Request { id, op } => {
            let outbox = outbox.clone();
            let run = run.clone();
            let closer = closer.clone();
            glommio::spawn_local(async move {
                let reply = run(from, op).await;
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
                        closer.shutdown();
                    }
                    // The link is gone; the peer's call has failed already.
                    Err(PushError::Closed) => {}
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn inbound_links_are_limited_per_core_and_per_address() {
        let inbound = Inbound::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = inbound.admit(a).unwrap();
        let _a2 = inbound.admit(a).unwrap();
        assert_eq!(inbound.admit(a).err(), Some(LimitRefusal::Peer(2)));
        let _b1 = inbound.admit(b).unwrap();
        assert_eq!(inbound.admit(b).err(), Some(LimitRefusal::Core(3)));
        drop(a1);
        let _b2 = inbound.admit(b).unwrap();
        assert_eq!(inbound.by_ip.borrow()[&a], 1);
        // A refusal is logged once a minute per address and reason.
        assert!(inbound.first_in_a_while(a, "secret_mismatch"));
        assert!(!inbound.first_in_a_while(a, "secret_mismatch"));
        assert!(inbound.first_in_a_while(a, "timeout"));
        assert!(inbound.first_in_a_while(b, "secret_mismatch"));
    }
}

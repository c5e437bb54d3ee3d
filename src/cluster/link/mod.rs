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
//!
//! - this file: the outbound side, [`Link`] (connect, handshake, calls with deadlines, breaking
//!   and backing off);
//! - [`inbound`]: the accepting side, [`serve_peer`] and the limits on inbound links;
//! - `socket`: what both sides share: the tuned socket, the bounded outbox, the read and write
//!   loops, and [`LinkAuth`].

pub mod inbound;
mod socket;

pub use inbound::{serve_peer, Inbound, InboundSlot, LimitRefusal};
pub use socket::LinkAuth;

use super::handshake::{self, HandshakeError};
use super::proto::{Frame, RemoteOp, RemoteReply};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use inbound::REFUSAL_LOG_EVERY;
use socket::{read_loop, tune, write_loop, Outbox, PushError, Shared, MAX_OUTBOX};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Calls in a row that got no answer within RpcTimeoutMs before the link is taken as broken.
/// A peer that accepts and never answers (stopped, wedged) would otherwise keep its link up
/// and cost every caller the full deadline until etcd drops it; once broken, callers fail at
/// once while the link waits out its backoff, and the reconnect's handshake (which a stopped
/// peer does not answer) keeps it down. Three, so one slow answer (a big presence list) does
/// not cost a reconnect.
pub const TIMEOUTS_TO_BREAK: u32 = 3;

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

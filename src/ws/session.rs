//! One WebSocket session after the handshake: read until the end, clean up.
//!
//! Reading: the socket is polled with the core's scratch buffer, borrowed only for the duration
//! of one poll, so an idle connection holds no read buffer. Bytes of a frame that arrived only in
//! part are kept in a small per-connection buffer until the rest comes.

use crate::route::Router;
use crate::shard::conn::{Conn, EndReason};
use crate::shard::Shard;
use crate::ws::frame::{self, close_code, ClientFrame, MessageState, Violation};
use crate::ws::message;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

/// What the reader decided about the connection after a batch of bytes.
enum Step {
    Continue,
    End(EndReason),
}

/// As the original: a connect without systemId gets a -1001 frame saying why, then the close.
/// It never gets a clientId.
pub async fn refuse_without_system_id(shard: &Shard, mut stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, core = shard.id, "WebSocket connect without systemId refused");
    let mut out = message::missing_system_id().to_vec();
    out.extend_from_slice(&frame::close(close_code::POLICY, "systemId is required"));
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// Runs a registered connection's session (its 101 and welcome frame already queued): read
/// until it ends. `leftover` holds bytes the client sent right after its handshake (read
/// together with the request head).
///
/// This future is what an idle connection costs, so it holds only the connection, the frame
/// assembly state and (only while a frame is incomplete) a partial buffer; the cleanup runs as
/// a task of its own.
pub async fn run(router: Rc<Router>, conn: Rc<Conn>, leftover: Vec<u8>) {
    let shard = &router.shard;
    tracing::debug!(client = %conn.client_id(), peer = %conn.peer(), core = shard.id, system = %conn.system(), "client connected");

    let mut state = MessageState::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut step = if leftover.is_empty() {
        drop(leftover);
        Step::Continue
    } else {
        on_bytes(shard, &conn, &mut state, &mut partial, leftover)
    };
    while let Step::Continue = step {
        step = futures_lite::future::poll_fn(|cx| {
            let mut scratch = shard.scratch.borrow_mut();
            let polled = conn.poll_read(cx, &mut scratch[..]);
            match polled {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0)) => Poll::Ready(Step::End(EndReason::Reset)),
                Poll::Ready(Ok(n)) => {
                    let step = if partial.is_empty() {
                        on_scratch(shard, &conn, &mut state, &mut partial, &mut scratch[..n])
                    } else {
                        let mut joined = std::mem::take(&mut partial);
                        joined.extend_from_slice(&scratch[..n]);
                        on_bytes(shard, &conn, &mut state, &mut partial, joined)
                    };
                    Poll::Ready(step)
                }
                Poll::Ready(Err(_)) => Poll::Ready(Step::End(EndReason::Reset)),
            }
        })
        .await;
    }
    let Step::End(reason) = step else {
        unreachable!("bug: loop ends only on Step::End")
    };
    // A reason set by the core (kick, pong timeout, slow consumer) wins over the EOF it caused.
    let reason = conn.end_reason().unwrap_or(reason);
    glommio::spawn_local(async move { router.end_conn(&conn, reason).await }).detach();
}

/// Processes bytes that live in an owned buffer (a partial frame completed by new bytes).
fn on_bytes(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &mut MessageState,
    partial: &mut Vec<u8>,
    mut bytes: Vec<u8>,
) -> Step {
    let step = on_scratch(shard, conn, state, partial, &mut bytes);
    if partial.capacity() > 2 * shard.config.max_message_bytes + 64 {
        partial.shrink_to_fit();
    }
    step
}

/// Processes every complete frame in `bytes`; keeps an incomplete tail in `partial`.
fn on_scratch(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &mut MessageState,
    partial: &mut Vec<u8>,
    bytes: &mut [u8],
) -> Step {
    conn.seen_now();
    let mut at = 0;
    while at < bytes.len() {
        match frame::read_frame(&mut bytes[at..], state, shard.config.max_message_bytes) {
            Ok(None) => {
                partial.extend_from_slice(&bytes[at..]);
                return Step::Continue;
            }
            Ok(Some((f, used))) => {
                at += used;
                match f {
                    ClientFrame::Data | ClientFrame::Pong => {}
                    ClientFrame::Ping(payload) => {
                        shard.enqueue(conn, frame::pong(payload));
                    }
                    ClientFrame::Close(code) => {
                        // Section 5.5.1: echo the status code back, then close.
                        shard.enqueue_close(conn, code.unwrap_or(close_code::NORMAL), "");
                        return Step::End(EndReason::ClientClose);
                    }
                }
            }
            Err(Violation { code, reason }) => {
                tracing::debug!(client = %conn.client_id(), peer = %conn.peer(), core = shard.id, code, reason,
                    "closing connection after a protocol violation");
                shard.enqueue_close(conn, code, reason);
                return Step::End(EndReason::ProtocolError);
            }
        }
    }
    if partial.is_empty() && partial.capacity() > 0 {
        *partial = Vec::new();
    }
    Step::Continue
}

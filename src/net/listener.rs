//! Per-core accept loop and the life of one HTTP connection.
//!
//! Every core binds HttpPort itself (glommio sets SO_REUSEPORT), so the kernel spreads new
//! connections over the cores and a socket never leaves the core that accepted it. A connection
//! starts as HTTP: it either upgrades to a WebSocket session (`GET /ws`) or serves API requests,
//! keep-alive or one-shot (HTTP/1.0 / `Connection: close`, as nginx sends `/api`).

use super::handshake;
use super::http::{self, Head, Method};
use crate::api;
use crate::api::error::{envelope, Fault, Refusal};
use crate::ops;
use crate::route::Router;
use crate::shard::Shard;
use crate::ws::session;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Accepts HTTP connections until the task is cancelled (shutdown).
/// `fd` is the listener's (glommio's listener does not say it).
pub async fn accept_loop(router: Rc<Router>, listener: TcpListener, fd: RawFd) {
    accept_each(&listener, fd, router.shard.id, "HTTP", |stream, peer| {
        glommio::spawn_local(serve(router.clone(), stream, peer)).detach();
    })
    .await
}

/// Hands every accepted socket, with its peer's address, to `on_stream` until the task is
/// cancelled. Accept errors (EMFILE, ENFILE, ENOBUFS) back off and retry instead of ending the
/// loop.
///
/// The listener is non-blocking ([`crate::sys::reuseport_listener`]), so while connections are
/// waiting each is taken with one `accept4` that also returns the peer's address; glommio's
/// accept (which toggles the listener's flags around its own `accept` with three `fcntl`s, and
/// leaves the address to a `getpeername`) only waits when none is.
pub async fn accept_each(
    listener: &TcpListener,
    fd: RawFd,
    core: usize,
    what: &str,
    mut on_stream: impl FnMut(TcpStream, SocketAddr),
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = match crate::sys::accept_now(fd) {
            // SAFETY: `into_raw_fd` gives up ownership: the stream owns the fd alone.
            Ok(Some((socket, peer))) => Ok((
                unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) },
                peer,
            )),
            Ok(None) => match listener.accept().await {
                Ok(stream) => match stream.peer_addr() {
                    Ok(peer) => Ok((stream, peer)),
                    // Gone before it was looked at (reset): nothing to serve.
                    Err(_) => continue,
                },
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                on_stream(stream, peer);
            }
            Err(e) => {
                tracing::warn!(core, error = %e, "{what} accept failed, backing off {:?}", backoff);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Why reading a request stopped.
enum ReadEnd {
    /// The peer closed or went idle past the keep-alive timeout: just close.
    Closed,
    /// Answer with this status, then close.
    Reject(u16, String),
}

/// A read or write buffer that grew past this for one large request goes back to its first
/// capacity after it: a keep-alive connection idles with ~1 KiB, not the 1 MiB (or 2 MiB of
/// chunked encoding) its largest request needed.
const SHRINK_ABOVE: usize = 64 * 1024;
const READ_BUF: usize = 1024;
const WRITE_BUF: usize = 256;
/// The least free capacity a read goes into without growing the buffer (see [`read_some`]).
const READ_ROOM: usize = 512;

/// How long, and for how many bytes, a connection refused before its body was read keeps
/// reading (and discarding) after its answer: see [`close_unread`].
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// One connection's share of its core's HTTP accounting: counted in `Shard::http_conns` (what
/// MaxHttpConnsPerCore caps) from its first request that is not an upgrade, and its buffers'
/// capacity in `Shard::http_buffer_bytes`. Dropped when the connection closes or upgrades.
struct HttpSlot<'a> {
    shard: &'a Shard,
    counted: bool,
    buffers: usize,
}

impl<'a> HttpSlot<'a> {
    fn new(shard: &'a Shard) -> HttpSlot<'a> {
        HttpSlot {
            shard,
            counted: false,
            buffers: 0,
        }
    }

    /// Counts the connection against MaxHttpConnsPerCore; `false` (and not counted) when the
    /// core already holds that many.
    fn claim(&mut self) -> bool {
        if self.counted {
            return true;
        }
        let conns = &self.shard.http_conns;
        if conns.get() >= self.shard.config.max_http_conns_per_core {
            return false;
        }
        conns.set(conns.get() + 1);
        self.counted = true;
        true
    }

    /// Records the buffers' capacity now.
    fn buffers(&mut self, bytes: usize) {
        let gauge = &self.shard.http_buffer_bytes;
        gauge.set(gauge.get() - self.buffers + bytes);
        self.buffers = bytes;
    }
}

impl Drop for HttpSlot<'_> {
    fn drop(&mut self) {
        self.buffers(0);
        if self.counted {
            self.shard.http_conns.set(self.shard.http_conns.get() - 1);
        }
    }
}

/// Serves one accepted connection until it closes or upgrades.
/// The socket has TCP_NODELAY from the listener (Linux copies it to accepted sockets).
async fn serve(router: Rc<Router>, mut stream: TcpStream, peer: SocketAddr) {
    let shard = router.shard.clone();
    let config = shard.config.clone();
    // A client that sends requests but never reads the answers would otherwise hold this
    // socket (and its unsent answers) for ever: a write that cannot finish within HeadTimeout
    // ends the connection. An upgrade replaces this with the WebSocket write timeout.
    let _ = stream.set_write_timeout(Some(config.head_timeout));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BUF);
    let mut slot = HttpSlot::new(&shard);
    slot.buffers(buf.capacity() + out.capacity());
    // The first request head must be whole within HandshakeTimeout of the accept.
    let mut first = Some(Instant::now() + config.handshake_timeout);
    loop {
        let (head, head_len) = match read_head(&shard, &mut stream, &mut buf, first.take()).await {
            Ok(parsed) => parsed,
            Err(ReadEnd::Closed) => return,
            Err(ReadEnd::Reject(status, why)) => {
                tracing::debug!(%peer, core = shard.id, status, why, "bad request head");
                return refuse(&mut stream, &mut out, Refusal::Head(status), &why).await;
            }
        };

        if head.path == "/ws" {
            // The session runs as a task of its own, so it does not carry this function's
            // buffers for its whole life; only bytes the client already sent past the head go.
            let leftover = buf[head_len..].to_vec();
            drop(slot);
            glommio::spawn_local(upgrade(router, stream, peer, head, leftover)).detach();
            return;
        }
        let ops_route = ops::route(&head);
        // MaxHttpConnsPerCore: a connection that is not an upgrade counts from its first
        // request. Over the limit, the probes and operations routes are still answered (an
        // orchestrator must not restart a busy node), then closed; the API gets 503.
        let over_limit = !slot.claim();
        if over_limit && ops_route.is_none() && !is_probe(&head) {
            refused_over_limit(&shard, peer);
            let body_unread = head.chunked || head.content_length.unwrap_or(0) > 0;
            let why = "server is at its HTTP connection limit, try again later";
            refuse(&mut stream, &mut out, Refusal::HttpFull, why).await;
            if body_unread {
                close_unread(&mut stream).await;
            }
            return;
        }

        // Operations routes (the ops issue extends these).
        // These routes read no body: one that came with a request is not read, so the
        // connection closes after the answer instead of parsing that body as a request.
        let close =
            over_limit || head.close || head.chunked || head.content_length.unwrap_or(0) > 0;
        if let Some((status, content_type, body)) = probe(&shard, &head) {
            buf.drain(..head_len);
            out.clear();
            http::write_response(&mut out, status, content_type, "", &body, close);
            if stream.write_all(&out).await.is_err() || close {
                return;
            }
            recycle(&mut buf, &mut out, &mut slot);
            continue;
        }
        // Metrics and the status page (src/ops/).
        if let Some(route) = ops_route {
            buf.drain(..head_len);
            let r = ops::respond(&router, route, &head).await;
            out.clear();
            http::write_response(
                &mut out,
                r.status,
                r.content_type,
                r.headers,
                &r.body,
                close,
            );
            if stream.write_all(&out).await.is_err() || close {
                return;
            }
            recycle(&mut buf, &mut out, &mut slot);
            continue;
        }

        let route = api::route(&head.path);
        // The ApiKey is checked on the head, before the body is read: a caller without it
        // makes the server read (and, chunked, decode) nothing. The body is then left unread,
        // so the connection closes after the 403.
        if head.path.starts_with("/api/") {
            if let Err(e) = api::check_api_key(&shard, route, &head) {
                let (status, headers) = (e.status(), e.headers());
                let started = Instant::now();
                let result = Err(e);
                (shard.metrics).api_request(
                    &head.path,
                    route.is_some(),
                    status,
                    false,
                    started.elapsed(),
                );
                out.clear();
                http::write_response(
                    &mut out,
                    status,
                    http::JSON,
                    headers,
                    &envelope(&result),
                    true,
                );
                if stream.write_all(&out).await.is_ok()
                    && (head.chunked
                        || buf.len() - head_len < head.content_length.unwrap_or(0) as usize)
                {
                    close_unread(&mut stream).await;
                }
                return;
            }
        }
        // The body: with Content-Length it stays in `buf`; a chunked one is decoded out of it.
        let (chunked_body, consumed) = if head.chunked {
            match read_chunked(
                &shard,
                &mut stream,
                &mut buf,
                head_len,
                head.expect_continue,
            )
            .await
            {
                Ok(body) => (Some(body), head_len),
                Err(status) => {
                    let why = match status {
                        413 => "request body too large",
                        408 => "timed out reading the request body",
                        _ => "malformed chunked body",
                    };
                    return refuse(&mut stream, &mut out, Refusal::Body(status), why).await;
                }
            }
        } else {
            let length = head.content_length.unwrap_or(0);
            if length > config.max_body_bytes as u64 {
                tracing::debug!(%peer, core = shard.id, length, "request body over MaxBodyBytes refused");
                let why = "request body too large";
                return refuse(&mut stream, &mut out, Refusal::Body(413), why).await;
            }
            let length = length as usize;
            if head.expect_continue
                && buf.len() < head_len + length
                && stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return;
            }
            if read_body(&shard, &mut stream, &mut buf, head_len + length)
                .await
                .is_err()
            {
                let why = "timed out reading the request body";
                return refuse(&mut stream, &mut out, Refusal::Body(408), why).await;
            }
            (None, head_len + length)
        };
        let body = chunked_body.as_deref().unwrap_or(&buf[head_len..consumed]);

        let started = Instant::now();
        let result = match route {
            Some(route) => api::handle(&router, route, &head, body).await,
            None => api::unknown_route(&shard, &head),
        };
        match &result {
            Err(e) if e.fault() == Fault::Server => {
                tracing::warn!(%peer, core = shard.id, path = %head.path, error = %e, "API request failed");
            }
            Err(e) => {
                tracing::debug!(%peer, core = shard.id, path = %head.path, error = %e, "API request refused");
            }
            Ok(_) => {}
        }
        let status = result.as_ref().map(|_| 200).unwrap_or_else(|e| e.status());
        let (path, ok) = (&head.path, result.is_ok());
        (shard.metrics).api_request(path, route.is_some(), status, ok, started.elapsed());
        let delivered;
        let extra = match &result {
            // 401 and 405 say how to authenticate and which method to use (api::error).
            Err(e) => e.headers(),
            // Issue 12: what a push did, besides code 0 (docs/api-extensions.md).
            Ok(data) => match data.delivered() {
                Some(n) => {
                    delivered = format!("X-Wspush-Delivered: {n}\r\n");
                    &delivered
                }
                None => "",
            },
        };
        out.clear();
        http::write_response(
            &mut out,
            status,
            http::JSON,
            extra,
            &envelope(&result),
            head.close,
        );
        buf.drain(..consumed);
        if stream.write_all(&out).await.is_err() || head.close {
            return;
        }
        recycle(&mut buf, &mut out, &mut slot);
        if shard.draining.get() {
            return;
        }
    }
}

/// After an answer: a buffer that grew past [`SHRINK_ABOVE`] for a large request or answer
/// goes back to its first capacity (the read buffer keeps room for pipelined bytes already
/// read), so an idle keep-alive connection does not hold its largest request's memory.
fn recycle(buf: &mut Vec<u8>, out: &mut Vec<u8>, slot: &mut HttpSlot) {
    if buf.capacity() > SHRINK_ABOVE {
        buf.shrink_to(buf.len().max(READ_BUF));
    }
    if out.capacity() > SHRINK_ABOVE {
        *out = Vec::with_capacity(WRITE_BUF);
    }
    slot.buffers(buf.capacity() + out.capacity());
}

/// Counts and (at most once a second) logs a connection refused at MaxHttpConnsPerCore.
fn refused_over_limit(shard: &Shard, peer: SocketAddr) {
    shard.metrics.http_refused.inc();
    if let Some(skipped) = shard.throttles.http_full.admit() {
        tracing::warn!(
            core = shard.id,
            %peer,
            held = shard.http_conns.get(),
            refused = skipped + 1,
            "HTTP connection refused with 503: MaxHttpConnsPerCore reached on this core"
        );
    }
}

/// Answers a request refused before any route ran, then the connection closes: the status and
/// headers are the refusal's (`api::error::Refusal`), `why` the message, in the envelope for an
/// API request, else as a line of text.
async fn refuse(stream: &mut TcpStream, out: &mut Vec<u8>, refusal: Refusal, why: &str) {
    out.clear();
    let (content_type, body) = if refusal.is_api() {
        let body = envelope(&Err(api::error::ApiError::Request(why.to_string())));
        (http::JSON, body)
    } else {
        (http::TEXT, format!("{why}\n").into_bytes())
    };
    let (status, headers) = (refusal.status(), refusal.headers());
    http::write_response(out, status, content_type, headers, &body, true);
    let _ = stream.write_all(out).await;
}

/// Ends a connection whose request body was left unread, after its answer was written.
/// Closing a socket with unread bytes makes the kernel answer with RST, and a client still
/// sending its body may then lose the answer before it reads it. So: stop writing (FIN), then
/// read and discard what the client still sends, for at most [`LINGER`] and [`LINGER_BYTES`]
/// (nginx's lingering close does the same), then close.
async fn close_unread(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let deadline = Instant::now() + LINGER;
    let mut sink = Vec::with_capacity(4096);
    let mut read = 0;
    while read < LINGER_BYTES {
        sink.clear();
        let wait = deadline.saturating_duration_since(Instant::now());
        match read_some(stream, &mut sink, wait).await {
            Ok(n) if n > 0 => read += n,
            _ => return,
        }
    }
}

fn is_probe(head: &Head) -> bool {
    head.method == Some(Method::Get) && matches!(head.path.as_str(), "/healthz" | "/readyz")
}

/// Operations routes, if the head is one: the status, content type and body to answer with.
/// `GET /healthz`: 200 `{"status":"ok"}` while the process serves. `GET /readyz`: 200
/// `{"status":"ready"}` once every core accepts and (cluster) etcd membership is established,
/// else 503 `{"status":"not ready","reason":...}` (also while draining, so a balancer stops
/// sending here before the listeners close).
fn probe(shard: &Shard, head: &Head) -> Option<(u16, &'static str, Vec<u8>)> {
    if head.method != Some(Method::Get) {
        return None;
    }
    let json =
        |status, body: serde_json::Value| Some((status, http::JSON, body.to_string().into_bytes()));
    match head.path.as_str() {
        "/healthz" => json(200, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let reason =
                crate::readiness::not_ready_reason().or(shard.draining.get().then_some("draining"));
            match reason {
                None => json(200, serde_json::json!({"status": "ready"})),
                Some(reason) => json(
                    503,
                    serde_json::json!({"status": "not ready", "reason": reason}),
                ),
            }
        }
        _ => None,
    }
}

/// Reads until `buf` holds a whole head. Waiting for the first byte is bounded by the keep-alive
/// timeout; the rest of the head by HeadTimeout (a slowloris cannot hold the slot longer). On a
/// connection's first request, `handshake_deadline` bounds both: a socket that connects and
/// sends nothing, or drips bytes, is gone by then.
async fn read_head(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    handshake_deadline: Option<Instant>,
) -> Result<(Head, usize), ReadEnd> {
    let config = &shard.config;
    let mut deadline: Option<Instant> = None;
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, config.max_head_bytes) {
                Ok(Some(parsed)) => return Ok(parsed),
                Ok(None) => {}
                Err(e) => {
                    return Err(ReadEnd::Reject(e.status(), e.to_string()));
                }
            }
            deadline.get_or_insert_with(|| {
                let head_deadline = Instant::now() + config.head_timeout;
                handshake_deadline.map_or(head_deadline, |h| h.min(head_deadline))
            });
        }
        let wait = match (deadline, handshake_deadline) {
            (Some(d), _) | (None, Some(d)) => d.saturating_duration_since(Instant::now()),
            (None, None) => config.keepalive_timeout,
        };
        if wait.is_zero() && deadline.is_none() {
            tracing::debug!(
                core = shard.id,
                "connection sent nothing within HandshakeTimeout"
            );
            return Err(ReadEnd::Closed);
        }
        if wait.is_zero() {
            return Err(ReadEnd::Reject(
                408,
                "timed out reading the request head".into(),
            ));
        }
        match read_some(stream, buf, wait).await {
            Ok(0) => return Err(ReadEnd::Closed),
            Ok(_) => {}
            Err(ReadTimeout::Idle) if deadline.is_none() => {
                if handshake_deadline.is_some() {
                    tracing::debug!(
                        core = shard.id,
                        "connection sent nothing within HandshakeTimeout"
                    );
                }
                return Err(ReadEnd::Closed);
            }
            Err(ReadTimeout::Idle) => {
                return Err(ReadEnd::Reject(
                    408,
                    "timed out reading the request head".into(),
                ))
            }
            Err(ReadTimeout::Failed) => return Err(ReadEnd::Closed),
        }
    }
}

/// Reads a chunked body that starts at `buf[start..]`, within HeadTimeout, decoding each read
/// as it lands: the encoding is dropped from `buf` once decoded, so `buf` never holds more than
/// one read of it. Returns the body, with `buf[start..]` holding what followed it (a pipelined
/// request), or the status to refuse it with.
async fn read_chunked(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: usize,
    expect_continue: bool,
) -> Result<Vec<u8>, u16> {
    let deadline = Instant::now() + shard.config.head_timeout;
    let mut continued = !expect_continue;
    let mut decoder = http::Dechunker::new(shard.config.max_body_bytes);
    let mut body = Vec::new();
    loop {
        match decoder.feed(&buf[start..], &mut body) {
            Ok(Some(used)) => {
                buf.drain(start..start + used);
                return Ok(body);
            }
            Ok(None) => buf.truncate(start),
            Err(http::ChunkError::TooLarge) => return Err(413),
            Err(http::ChunkError::Malformed) => return Err(400),
        }
        if !continued {
            continued = true;
            // A client that sent `Expect: 100-continue` waits for this before the body.
            if stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Err(400);
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match read_some(stream, buf, wait).await {
            Ok(n) if n > 0 => {}
            _ => return Err(408),
        }
    }
}

/// Reads until `buf` holds `want` bytes, within HeadTimeout.
async fn read_body(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), ()> {
    let deadline = Instant::now() + shard.config.head_timeout;
    while buf.len() < want {
        let wait = deadline.saturating_duration_since(Instant::now());
        match read_some(stream, buf, wait).await {
            Ok(n) if n > 0 => {}
            _ => return Err(()),
        }
    }
    Ok(())
}

enum ReadTimeout {
    Idle,
    Failed,
}

/// One read appended to `buf`, bounded by `wait`.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> Result<usize, ReadTimeout> {
    if wait.is_zero() {
        return Err(ReadTimeout::Idle);
    }
    // Up to 4096 bytes, into the capacity already there when at least READ_ROOM of it is free:
    // a handshake's head lands in the first 1 KiB without a reallocation, and a read zeroes
    // only the room it offers.
    let start = buf.len();
    let room = buf.capacity() - start;
    let want = if room >= READ_ROOM {
        room.min(4096)
    } else {
        4096
    };
    buf.resize(start + want, 0);
    let result = glommio::timer::timeout(wait, async {
        stream.read(&mut buf[start..]).await.map_err(Into::into)
    })
    .await;
    match result {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(n)
        }
        Err(glommio::GlommioError::TimedOut(_)) => {
            buf.truncate(start);
            Err(ReadTimeout::Idle)
        }
        Err(_) => {
            buf.truncate(start);
            Err(ReadTimeout::Failed)
        }
    }
}

/// `GET /ws`: validate, answer 101, and hand the socket to a WebSocket session.
async fn upgrade(
    router: Rc<Router>,
    mut stream: TcpStream,
    peer: SocketAddr,
    head: Head,
    leftover: Vec<u8>,
) {
    let shard = &router.shard;
    // The 101, then (for a registered connection) the welcome frame: one buffer, one write.
    let mut first = Vec::with_capacity(256);
    if let Err(e) = handshake::write_response(&head, &mut first) {
        tracing::debug!(%peer, core = shard.id, error = %e, "WebSocket handshake refused");
        let why = e.to_string();
        return refuse(&mut stream, &mut Vec::new(), Refusal::Handshake, &why).await;
    }
    let unavailable = if shard.draining.get() {
        Some("shutting down")
    } else if crate::readiness::cut_off() {
        // Its peers cannot reach a client here: the balancer should pick another node.
        Some("this node is cut off from its cluster (no etcd membership): try another node")
    } else if !shard.admit_conn(peer) {
        Some("server is at its connection limit, try again later")
    } else {
        None
    };
    if let Some(why) = unavailable {
        return refuse(&mut stream, &mut Vec::new(), Refusal::Unavailable, why).await;
    }
    // The session is a task of its own: nothing of the request lives as long as it does, and an
    // idle connection's memory is that small task plus its registry entry.
    match handshake::system_id(&head.query) {
        Some(system_id) => {
            // Issue 12: the same bound as the API's, before anything looks the name up.
            let max = shard.config.max_system_id_bytes;
            if let Err(problem) = crate::shard::system::check_system_id(&system_id, max) {
                if let Some(skipped) = shard.throttles.connect_refused.admit() {
                    tracing::info!(%peer, core = shard.id, bytes = system_id.len(), %problem,
                        also = skipped, "WebSocket connect refused: systemId");
                }
                let why = format!("systemId {problem}");
                return refuse(&mut stream, &mut Vec::new(), Refusal::SystemId, &why).await;
            }
            // Issue 7: a system with a secret needs a connect token. Nothing between this
            // check and add_conn awaits, so the core's view of the system cannot change between.
            let user_id =
                match super::connect::authorize_connect(&router, &system_id, &head.query).await {
                    Ok(user_id) => user_id,
                    Err(refusal) => {
                        let answer = Refusal::Connect(refusal.status);
                        if let Some(skipped) = shard.throttles.connect_refused.admit() {
                            let (status, why) = (refusal.status, &refusal.why);
                            match answer.fault() {
                                Fault::Server => {
                                    tracing::warn!(%peer, core = shard.id, system = %system_id,
                                    status, why = %why, also = skipped, "WebSocket connect refused")
                                }
                                Fault::Caller => {
                                    tracing::info!(%peer, core = shard.id, system = %system_id,
                                    status, why = %why, also = skipped, "WebSocket connect refused")
                                }
                            }
                        }
                        let why = refusal.why;
                        return refuse(&mut stream, &mut Vec::new(), answer, &why).await;
                    }
                };
            let conn = shard.add_conn(stream, &system_id, peer);
            if let Some(user_id) = &user_id {
                // The token's userId binds the connection from its first frame on, as a
                // bind_to_group would (send_to_user finds it through the user index), and
                // claims the user in a system with singleConnection.
                if let Some(old) = shard.set_user_id(&conn, user_id) {
                    router.user_changed(&conn, &old, user_id);
                }
            }
            // After the token's userId is set, so the online event carries it.
            shard.webhook_event(crate::webhook::Kind::Online, &conn, "");
            // The 101 and the welcome frame go through the connection's queue as one frame,
            // so they leave in one write, before anything else queued for the client.
            crate::ws::message::write_welcome(&mut first, conn.client_id());
            shard.enqueue(&conn, std::sync::Arc::from(first));
            glommio::spawn_local(session::run(router.clone(), conn.clone(), leftover)).detach();
            // After the welcome frame: then the token's userId takes its offline messages
            // (docs/history.md, "Offline messages").
            if let Some(user) = user_id.filter(|u| !u.is_empty()) {
                let user = std::sync::Arc::from(&*user);
                glommio::spawn_local(router.clone().deliver_offline(conn, user)).detach();
            }
        }
        None => {
            if stream.write_all(&first).await.is_ok() {
                session::refuse_without_system_id(shard, stream, peer).await;
            }
        }
    }
}

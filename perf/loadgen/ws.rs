//! The WebSocket client side, written to cost as little as the server's side of a frame.
//!
//! - One handshake per connection: fixed request bytes, read until `\r\n\r\n`, check `101` and
//!   the RFC 6455 sample accept key (the key is always the RFC's sample nonce).
//! - A reader per connection that holds no buffer while idle: each read goes into the shard
//!   thread's scratch buffer; only the bytes of a frame cut by the read boundary are kept.
//! - Per text frame only the envelope's `"code":` and the stamp in `"data":"t<ns>"` are looked
//!   at, with a byte search: no JSON parser, no allocation.
//! - Pings are answered with masked pongs (RFC 6455 5.5.3), close frames with a close.

use crate::stats::{bump, Stats};
use crate::sys;
use anyhow::{bail, Context as _};
use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// The nonce of RFC 6455 section 1.3 and its accept key: every connection sends the same one.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Mask key of every client frame. RFC 6455 wants it unpredictable to protect proxies from
/// browsers' scripts; a load generator has no such attacker, and the server only unmasks.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Largest server frame accepted (the server's pushes are far smaller).
const MAX_FRAME: usize = 16 << 20;
/// Size of the per-thread read buffer.
const SCRATCH: usize = 256 << 10;

/// Where connections go.
pub struct Target {
    pub server: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub system: String,
    /// Bind sources 127.0.0.2.. (only when the server is on loopback).
    pub spread_sources: bool,
}

impl Target {
    /// A socket to the server, bound to `source` when sources are spread.
    pub async fn connect(&self, source: Ipv4Addr) -> io::Result<TcpStream> {
        let socket = if self.spread_sources {
            sys::bound_socket(source)?
        } else {
            tokio::net::TcpSocket::new_v4()?
        };
        let stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A connected WebSocket after its welcome frame.
pub struct Conn {
    pub stream: TcpStream,
    pub client_id: String,
    /// Bytes read after the welcome frame, not yet parsed.
    pub pending: Vec<u8>,
}

/// Connects from `source`, does the handshake and waits for the welcome frame.
pub async fn open(target: &Target, source: Ipv4Addr) -> anyhow::Result<Conn> {
    let mut stream = target.connect(source).await.context("connect")?;
    let request = format!(
        "GET /ws?systemId={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.system, target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8192 {
            bail!("handshake response head over 8 KiB");
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("server closed the connection during the handshake");
        }
    };
    let head = &buf[..head_end];
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        bail!("handshake refused: {}", String::from_utf8_lossy(line));
    }
    if find(head, ACCEPT).is_none() {
        bail!("handshake response without the expected Sec-WebSocket-Accept");
    }
    buf.drain(..head_end);
    loop {
        if let Some((frame, len)) = next_frame(&buf)? {
            if frame.opcode != OP_TEXT {
                bail!("first frame has opcode {}, not text", frame.opcode);
            }
            let Some(id) = welcome_client_id(frame.payload) else {
                bail!(
                    "first frame is not a welcome: {}",
                    String::from_utf8_lossy(frame.payload)
                );
            };
            let client_id = id.to_string();
            buf.drain(..len);
            return Ok(Conn {
                stream,
                client_id,
                pending: buf,
            });
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("server closed the connection before the welcome frame");
        }
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One server frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// The complete frame at the front of `buf` and its length, or `None` if more bytes are needed.
/// Server frames are unmasked with a 2, 4 or 10-byte header (RFC 6455 5.2).
pub fn next_frame(buf: &[u8]) -> anyhow::Result<Option<(Frame<'_>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        bail!("server frame is masked");
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n > MAX_FRAME as u64 {
                bail!("server frame of {n} bytes");
            }
            (n as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            opcode,
            payload: &buf[header..header + len],
        },
        header + len,
    )))
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// The masked close frame (1000, normal closure) a client sends when it is done.
pub fn close_frame() -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    client_frame(OP_CLOSE, &1000u16.to_be_bytes(), &mut out);
    out
}

/// First occurrence of `needle` in `hay`.
#[inline]
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        // A plain scan for the first byte; the compiler vectorizes this well enough for the
        // ~100-byte payloads seen here.
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => i += p,
        }
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The unsigned integer at the front of `s` (up to 19 digits: nanoseconds since the epoch).
fn leading_u64(s: &[u8]) -> Option<u64> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    s[..n].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// The signed integer at the front of `s` (after optional spaces), if any.
fn leading_int(s: &[u8]) -> Option<i64> {
    let s = &s[s.iter().position(|&b| b != b' ')?..];
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let v = i64::try_from(leading_u64(digits)?).ok()?;
    Some(if neg { -v } else { v })
}

/// The envelope's `code` of a pushed frame. The first `"code":` is the envelope's: the fields
/// before it (`messageId`, `sendUserId`) are strings, where a quote is always escaped.
#[inline]
pub fn frame_code(payload: &[u8]) -> Option<i64> {
    let at = find(payload, b"\"code\":")?;
    leading_int(&payload[at + 7..])
}

/// The stamp of a pushed frame: the nanoseconds in `"data":"t<ns>"`.
#[inline]
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let at = find(payload, b"\"data\":")?;
    let rest = &payload[at + 7..];
    let rest = &rest[rest.iter().position(|&b| b != b' ')?..];
    leading_u64(rest.strip_prefix(b"\"t")?)
}

/// The clientId of a welcome frame `{"code":0,...,"data":{"clientId":"..."}}`.
pub fn welcome_client_id(payload: &[u8]) -> Option<&str> {
    if frame_code(payload) != Some(0) {
        return None;
    }
    let at = find(payload, b"\"clientId\":\"")? + 12;
    let len = payload[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[at..at + len]).ok()
}

thread_local! {
    /// The shard thread's read buffer, used only between two awaits (never held across one).
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// How one read went.
enum Step {
    /// Keep reading; write these bytes (pongs) first if any.
    More,
    /// The server closed (close frame or EOF) or broke the protocol.
    Closed,
}

/// The switch of the readers that may stall (`stalled` scenario): `true` stops them reading.
/// A stalled reader keeps its socket open and leaves every byte in it, like a client whose
/// app froze; `false` lets it read again.
pub type Stall = tokio::sync::watch::Receiver<bool>;

/// Reads server frames until the connection ends, counting into `stats`: text frames with
/// code `code` are deliveries (their stamp's delay goes into the histogram), 1001 frames are
/// presence, the rest "other". Never returns while the connection is open.
///
/// `interval` > 0 makes the reader pause that long after each read that brought data, so
/// frames pile up in the socket and one read takes many: fewer wakeups and syscalls per frame
/// (lighter client-side work), at the price of up to `interval` added to the measured delay.
///
/// `stall`: see [`Stall`]; `None` for a reader that never stalls.
pub async fn read_loop(
    conn: Conn,
    stats: Arc<Stats>,
    code: i64,
    interval: Duration,
    mut stall: Option<Stall>,
) {
    let Conn {
        mut stream,
        pending,
        ..
    } = conn;
    let mut pending = pending;
    let mut out = Vec::new();
    // The welcome read may have brought more frames: parse them before the first wait.
    let mut step = if pending.is_empty() {
        Step::More
    } else {
        process_pending(&mut pending, &mut out, &stats, code)
    };
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if let Step::Closed = step {
            break;
        }
        if stream.readable().await.is_err() {
            break;
        }
        if let Some(stall) = &mut stall {
            // Checked after readiness, before the read: what arrived stays in the socket. A
            // dropped switch counts as "read again".
            let _ = stall.wait_for(|stalled| !stalled).await;
        }
        step = read_once(&stream, &mut pending, &mut out, &stats, code);
        if !interval.is_zero() && matches!(step, Step::More) {
            tokio::time::sleep(interval).await;
        }
    }
    bump(&stats.closed, 1);
}

fn process_pending(pending: &mut Vec<u8>, out: &mut Vec<u8>, stats: &Stats, code: i64) -> Step {
    let buf = std::mem::take(pending);
    let (used, step) = parse(&buf, out, stats, code);
    pending.extend_from_slice(&buf[used..]);
    step
}

/// One `read(2)` into the scratch buffer (after the kept partial frame), then every complete
/// frame parsed and the new partial frame kept.
fn read_once(
    stream: &TcpStream,
    pending: &mut Vec<u8>,
    out: &mut Vec<u8>,
    stats: &Stats,
    code: i64,
) -> Step {
    SCRATCH_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let keep = pending.len();
        if buf.len() < keep + SCRATCH / 2 {
            buf.resize(keep + SCRATCH, 0);
        }
        buf[..keep].copy_from_slice(pending);
        let n = match read_some(stream, &mut buf[keep..]) {
            Ok(0) => return Step::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::More,
            Err(_) => return Step::Closed,
        };
        bump(&stats.bytes, n as u64);
        let (used, step) = parse(&buf[..keep + n], out, stats, code);
        pending.clear();
        pending.extend_from_slice(&buf[used..keep + n]);
        step
    })
}

/// `read(2)` through tokio's readiness: a short read means the socket was drained (tokio's
/// own `poll_read` makes the same inference under edge-triggered epoll), so readiness is
/// cleared then and the next wait does not start with a read that returns EAGAIN.
fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    let mut got = 0usize;
    let res = stream.try_io(Interest::READABLE, || {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is the stream's socket.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        got = n as usize;
        if got > 0 && got < buf.len() {
            // Drained: report WouldBlock so tokio clears readiness; the bytes are in `got`.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match res {
        Ok(n) => Ok(n),
        Err(_) if got > 0 => Ok(got),
        Err(e) => Err(e),
    }
}

/// Handles every complete frame in `buf`; returns the bytes used and whether to go on.
fn parse(buf: &[u8], out: &mut Vec<u8>, stats: &Stats, code: i64) -> (usize, Step) {
    let mut used = 0;
    let mut now = 0u64;
    while let Ok(Some((frame, len))) = next_frame(&buf[used..]) {
        used += len;
        match frame.opcode {
            OP_TEXT => match frame_code(frame.payload) {
                Some(c) if c == code => {
                    if now == 0 {
                        // One clock read per batch: every frame in it arrived by this read.
                        now = sys::now_ns();
                    }
                    match stamp(frame.payload) {
                        Some(t) => {
                            stats.record_delivery(now.saturating_sub(t), now);
                            crate::receipts::delivered(t);
                        }
                        None => {
                            bump(&stats.unstamped, 1);
                            stats.record_delivery(0, now);
                        }
                    }
                }
                Some(1001) => bump(&stats.presence, 1),
                _ => bump(&stats.other_frames, 1),
            },
            OP_PING => {
                bump(&stats.pings, 1);
                client_frame(OP_PONG, frame.payload, out);
            }
            OP_CLOSE => {
                if frame.payload.starts_with(&1008u16.to_be_bytes()) {
                    bump(&stats.closes_1008, 1);
                }
                client_frame(OP_CLOSE, frame.payload.get(..2).unwrap_or(&[]), out);
                return (used, Step::Closed);
            }
            OP_PONG => {}
            OP_BINARY | OP_CONT => bump(&stats.other_frames, 1),
            _ => return (used, Step::Closed),
        }
    }
    if next_frame(&buf[used..]).is_err() {
        return (used, Step::Closed);
    }
    (used, Step::More)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_of_every_header_size() {
        for n in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload = vec![b'x'; n];
            let f = server_frame(OP_TEXT, &payload);
            let (frame, len) = next_frame(&f).unwrap().unwrap();
            assert_eq!(
                (frame.opcode, frame.payload.len(), len),
                (OP_TEXT, n, f.len())
            );
            for cut in [0, 1, f.len() / 2, f.len() - 1] {
                if cut < f.len() {
                    assert!(next_frame(&f[..cut]).unwrap().is_none(), "n={n} cut={cut}");
                }
            }
        }
        assert!(next_frame(&[0x81, 0x80, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        client_frame(OP_PONG, b"hi", &mut out);
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x82);
        assert_eq!(out[6] ^ out[2], b'h');
        assert_eq!(out[7] ^ out[3], b'i');
        assert_eq!(close_frame().len(), 8);
    }

    #[test]
    fn finds_code_stamp_and_client_id() {
        let push = br#"{"messageId":"0123456789abcdef","sendUserId":"u","code":7,"msg":"m","data":"t1732512345678901234"}"#;
        assert_eq!(frame_code(push), Some(7));
        assert_eq!(stamp(push), Some(1732512345678901234));
        let presence = br#"{"messageId":"x","sendUserId":"","code":1001,"msg":"client online","data":"{\"clientId\":\"a\",\"userId\":\"u\",\"extend\":\"\"}"}"#;
        assert_eq!(frame_code(presence), Some(1001));
        assert_eq!(stamp(presence), None);
        let welcome = br#"{"code":0,"msg":"success","data":{"clientId":"abc-123"}}"#;
        assert_eq!(welcome_client_id(welcome), Some("abc-123"));
        assert_eq!(frame_code(br#"{"code": -1001}"#), Some(-1001));
        assert_eq!(find(b"aaab", b"ab"), Some(2));
        assert_eq!(find(b"ab", b"abc"), None);
    }

    #[test]
    fn parse_counts_and_answers_pings() {
        let stats = Stats::default();
        let now = sys::now_ns();
        let mut buf = server_frame(
            OP_TEXT,
            format!(r#"{{"messageId":"x","sendUserId":"u","code":7,"msg":"m","data":"t{now}"}}"#)
                .as_bytes(),
        );
        buf.extend(server_frame(OP_TEXT, br#"{"code":1001,"data":"x"}"#));
        buf.extend(server_frame(OP_PING, b""));
        buf.extend(server_frame(OP_TEXT, br#"{"code":3}"#));
        let partial = server_frame(OP_TEXT, b"cut here");
        buf.extend_from_slice(&partial[..4]);
        let mut out = Vec::new();
        let (used, step) = parse(&buf, &mut out, &stats, 7);
        assert!(matches!(step, Step::More));
        assert_eq!(used, buf.len() - 4);
        let s = stats.snapshot();
        assert_eq!(
            (s.delivered, s.presence, s.other_frames, s.pings),
            (1, 1, 1, 1)
        );
        assert_eq!(out.len(), 6); // one empty masked pong
        let (_, step) = parse(&server_frame(OP_CLOSE, &[3, 232]), &mut out, &stats, 7);
        assert!(matches!(step, Step::Closed));
        assert_eq!(stats.snapshot().closes_1008, 0);
        let (_, step) = parse(
            &server_frame(OP_CLOSE, b"\x03\xf0slow"),
            &mut out,
            &stats,
            7,
        );
        assert!(matches!(step, Step::Closed));
        assert_eq!(stats.snapshot().closes_1008, 1);
    }
}

//! wspush-floor: the cheapest server wspush-loadgen accepts, to measure the floor of this
//! machine (issue 16, item 2). wspush's CPU time per operation is reported as a multiple of
//! this program's under the same load generator.
//!
//! One thread, one level-triggered epoll, raw `libc` calls, no framework. Each scenario costs
//! only its bare syscalls:
//! - **handshake**: `accept4`, one `read` of the head (the listener has `TCP_DEFER_ACCEPT`, so
//!   the head is there when `accept4` returns; `--no-defer-accept` turns it off, and then a
//!   head not there yet costs a `read` that finds nothing), one `write` of the 101 answer and the welcome
//!   frame together, `epoll_ctl(ADD)`; later one `read` of the client's close frame, one
//!   `write` of the close frame back (as wspush; see [`Floor::frames`] for why it is needed),
//!   `close`.
//! - **keep-alive push** (`send_to_client`): one `read` of the request, one `write` of the
//!   frame to the target socket (found from the clientId: it carries the fd), one `write` of
//!   the HTTP answer.
//! - **HTTP/1.0 + close**: `accept4`, `read`, the two `write`s, `close`.
//! - **fan-out** (`send_to_group`): one `read`, one `write` of one frame built once to each
//!   member socket, one `write` of the HTTP answer.
//!
//! Every byte written is what wspush writes for the same request (the 101 head, the welcome
//! frame with a 59-character clientId, the pushed frame `{"messageId":..., <the request's
//! fields from sendUserId on>}`, the answers and their headers), so the load generator counts
//! deliveries and delays the same way. `TCP_NODELAY` is set once, on the listener: Linux
//! copies it into every accepted socket.
//!
//! Not done, on purpose: presence (1001) frames on `bind_to_group` (the load generator waits
//! `--quiet` seconds per chunk of binds instead, outside the measured window), pings, timeouts,
//! authentication, systems. Anything unexpected (a bad head, an unmasked client frame, a push
//! body without `"sendUserId":`, a target socket that cannot take a whole frame at once)
//! closes that socket.
//!
//! Usage: `wspush-floor [--host 127.0.0.1] [--port 7800] [--no-defer-accept]`.

mod sys;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;

/// The most events one `epoll_wait` returns.
const MAX_EVENTS: usize = 1024;
/// Size of the one read buffer: every `read(2)` goes there.
const SCRATCH: usize = 64 << 10;
/// A connection whose unparsed bytes grow past this is closed (a head or frame this big is
/// not the load generator's).
const MAX_PENDING: usize = 1 << 20;
/// Bytes of the longest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Length of a clientId, the same as wspush's (so welcome and push frames have its sizes):
/// 29 zeros, the connection's serial in 20 digits, its fd in 10 digits.
const ID_LEN: usize = 59;
/// The GUID of RFC 6455 section 1.3, appended to the client's key before SHA-1.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The first bytes of every answer with a JSON body.
const JSON_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ";
const SUCCESS_EMPTY: &[u8] = br#"{"code":0,"msg":"success","data":[]}"#;

fn main() {
    let mut host = Ipv4Addr::LOCALHOST;
    let mut port: u16 = 7800;
    let mut defer_accept = true;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let ok = match flag.as_str() {
            "--port" => args.next().and_then(|v| v.parse().ok()).map(|p| port = p),
            "--host" => args.next().and_then(|v| v.parse().ok()).map(|h| host = h),
            "--no-defer-accept" => {
                defer_accept = false;
                Some(())
            }
            _ => None,
        };
        if ok.is_none() {
            eprintln!("usage: wspush-floor [--host IPV4] [--port PORT] [--no-defer-accept]");
            std::process::exit(2);
        }
    }
    let floor = match Floor::new(host, port, defer_accept) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wspush-floor: listening on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    // The port is the kernel's pick for `--port 0` (the tests read this line).
    eprintln!("wspush-floor listening on {host}:{}", floor.port);
    floor.run();
}

/// What a socket is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No socket at this fd.
    Free,
    /// Accepted; HTTP requests until one upgrades it.
    Http,
    /// A WebSocket after its welcome frame.
    Ws,
}

/// One socket's state, indexed by its fd.
struct Conn {
    kind: Kind,
    /// Unique per accepted socket (never 0 for a live one): tells a reused fd from the old one,
    /// in clientIds and in epoll events.
    serial: u64,
    /// Whether the fd is in the epoll set yet.
    polled: bool,
    /// Bytes read but not yet parsed (a head or frame cut by a read boundary). Empty, with no
    /// allocation, almost always.
    pending: Vec<u8>,
    /// The groups this WebSocket is a member of (indexes into `Floor::groups`).
    groups: Vec<u32>,
}

impl Conn {
    const FREE: Conn = Conn {
        kind: Kind::Free,
        serial: 0,
        polled: false,
        pending: Vec::new(),
        groups: Vec::new(),
    };
}

/// A group: its name as the request spelled it between the quotes, and its members' fds.
struct Group {
    name: Vec<u8>,
    members: Vec<i32>,
}

struct Floor {
    listener: i32,
    port: u16,
    epoll: i32,
    conns: Vec<Conn>,
    next_serial: u64,
    next_message: u64,
    groups: Vec<Group>,
    group_index: HashMap<Vec<u8>, u32>,
    scratch: Vec<u8>,
    /// The answer being built (reused).
    out: Vec<u8>,
    /// The frame being built (reused).
    frame: Vec<u8>,
}

/// A parsed request head: ranges into the bytes it was parsed from.
struct Request {
    /// Bytes of head and body together.
    len: usize,
    get: bool,
    path: (usize, usize),
    body: (usize, usize),
    /// The connection ends after the answer (HTTP/1.0 without keep-alive, or
    /// `Connection: close`).
    close: bool,
    ws_key: Option<(usize, usize)>,
}

/// What handling one request left to do.
enum After {
    Keep,
    Close,
    /// Now a WebSocket: the rest of the bytes are frames.
    Upgraded,
}

impl Floor {
    fn new(host: Ipv4Addr, port: u16, defer_accept: bool) -> std::io::Result<Floor> {
        sys::ignore_sigpipe();
        sys::raise_nofile();
        let (listener, port) = sys::listen(host, port, defer_accept)?;
        let epoll = sys::epoll_create()?;
        sys::epoll_add(epoll, listener, u64::MAX)?;
        Ok(Floor {
            listener,
            port,
            epoll,
            conns: Vec::new(),
            next_serial: 1,
            next_message: 1,
            groups: Vec::new(),
            group_index: HashMap::new(),
            scratch: vec![0; SCRATCH],
            out: Vec::with_capacity(4096),
            frame: Vec::with_capacity(4096),
        })
    }

    fn run(mut self) -> ! {
        let mut events = vec![sys::EMPTY_EVENT; MAX_EVENTS];
        loop {
            let n = sys::epoll_wait(self.epoll, &mut events);
            for ev in &events[..n] {
                let data = ev.u64;
                if data == u64::MAX {
                    self.accept_all();
                    continue;
                }
                let fd = (data & 0xffff_ffff) as i32;
                let tag = data >> 32;
                // A socket closed earlier in this batch, or its fd already reused: skip.
                match self.conns.get(fd as usize) {
                    Some(c) if c.kind != Kind::Free && (c.serial & 0xffff_ffff) == tag => {}
                    _ => continue,
                }
                self.readable(fd);
            }
        }
    }

    /// Accepts until the queue is empty; serves each socket's first bytes at once (they are
    /// there: `TCP_DEFER_ACCEPT`) and puts it in the epoll set only if it stays open.
    fn accept_all(&mut self) {
        while let Some(fd) = sys::accept(self.listener) {
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || Conn::FREE);
            }
            let serial = self.next_serial;
            self.next_serial += 1;
            self.conns[i] = Conn {
                kind: Kind::Http,
                serial,
                ..Conn::FREE
            };
            self.readable(fd);
            let c = &mut self.conns[i];
            if c.kind != Kind::Free && c.serial == serial && !c.polled {
                c.polled = true;
                let tag = (serial & 0xffff_ffff) << 32 | i as u64;
                if sys::epoll_add(self.epoll, fd, tag).is_err() {
                    self.close(fd);
                }
            }
        }
    }

    /// One `read(2)`, then every complete request or frame in what has arrived.
    fn readable(&mut self, fd: i32) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let n = match sys::read(fd, &mut scratch) {
            Ok(0) => {
                self.scratch = scratch;
                return self.close(fd);
            }
            Ok(n) => n,
            Err(sys::WouldBlock) => {
                self.scratch = scratch;
                return;
            }
        };
        let mut pending = std::mem::take(&mut self.conns[fd as usize].pending);
        let buf: &[u8] = if pending.is_empty() {
            &scratch[..n]
        } else {
            pending.extend_from_slice(&scratch[..n]);
            &pending
        };
        let left = self.consume(fd, buf);
        if let Some(used) = left {
            let rest = &buf[used..];
            if rest.len() > MAX_PENDING {
                self.close(fd);
            } else if !rest.is_empty() {
                let keep = rest.to_vec();
                self.conns[fd as usize].pending = keep;
            }
        }
        self.scratch = scratch;
    }

    /// Handles what `buf` holds for `fd`; `Some(bytes used)` while the socket stays open,
    /// `None` once it was closed.
    fn consume(&mut self, fd: i32, buf: &[u8]) -> Option<usize> {
        let mut used = 0;
        while self.conns[fd as usize].kind == Kind::Http {
            let req = match parse_request(&buf[used..]) {
                Ok(Some(r)) => r,
                Ok(None) => return Some(used),
                Err(()) => {
                    self.close(fd);
                    return None;
                }
            };
            let at = used;
            used += req.len;
            match self.request(fd, &buf[at..at + req.len], &req) {
                After::Keep => {}
                After::Close => {
                    self.close(fd);
                    return None;
                }
                After::Upgraded => self.conns[fd as usize].kind = Kind::Ws,
            }
        }
        self.frames(fd, &buf[used..]).map(|n| used + n)
    }

    /// Client frames of a WebSocket: a close frame closes the socket, a ping gets its pong,
    /// the rest is dropped (wspush ignores data from clients too).
    fn frames(&mut self, fd: i32, buf: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            match client_frame(&buf[used..]) {
                Ok(None) => return Some(used),
                Ok(Some((opcode, payload, len))) => {
                    used += len;
                    match opcode {
                        0x8 => {
                            // The close frame back (RFC 6455 5.5.1), as wspush does, then
                            // close. The load generator has dropped its socket already, so
                            // this write draws a reset and neither side keeps a TIME_WAIT.
                            // Closing without it would leave one here, and a later
                            // connection on the same ports could meet it (SYNs refused by
                            // PAWS, retried after 1, 3, 7 s: seen as stalled handshakes).
                            let code = if payload.len() >= 2 {
                                &payload[..2]
                            } else {
                                &[][..]
                            };
                            let mut reply = vec![0x88];
                            frame_header(code.len(), &mut reply);
                            reply.extend_from_slice(code);
                            sys::write_all_once(fd, &reply);
                            self.close(fd);
                            return None;
                        }
                        0x9 => {
                            let mut pong = vec![0x8a];
                            frame_header(payload.len(), &mut pong);
                            pong.extend_from_slice(&payload);
                            if !sys::write_all_once(fd, &pong) {
                                self.close(fd);
                                return None;
                            }
                        }
                        _ => {}
                    }
                }
                Err(()) => {
                    self.close(fd);
                    return None;
                }
            }
        }
    }

    /// One HTTP request (`raw`: its head and body).
    fn request(&mut self, fd: i32, raw: &[u8], req: &Request) -> After {
        let path = &raw[req.path.0..req.path.1];
        let body = &raw[req.body.0..req.body.1];
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let done = if req.close { After::Close } else { After::Keep };
        self.out.clear();
        if req.get {
            match path {
                b"/ws" => {
                    let Some((a, b)) = req.ws_key else {
                        return After::Close;
                    };
                    return self.upgrade(fd, &raw[a..b]);
                }
                b"/readyz" => {
                    let body: &[u8] = br#"{"status":"ready"}"#;
                    answer(&mut self.out, body, None, req.close);
                }
                _ => return After::Close,
            }
            return self.send_answer(fd, done);
        }
        match path {
            b"/api/send_to_client" => {
                let target = field(body, b"\"clientId\":").and_then(|id| self.lookup(id));
                let Some(id) = self.push_frame(body) else {
                    return After::Close;
                };
                let mut delivered = 0;
                if let Some(t) = target {
                    delivered = self.deliver(t) as usize;
                }
                message_answer(&mut self.out, &id, false, delivered, req.close);
            }
            b"/api/send_to_group" => {
                let Some(name) = field(body, b"\"groupName\":") else {
                    return After::Close;
                };
                let g = self.group_index.get(name).copied();
                let Some(id) = self.push_frame(body) else {
                    return After::Close;
                };
                let mut delivered = 0;
                if let Some(g) = g {
                    let members = std::mem::take(&mut self.groups[g as usize].members);
                    let mut failed = Vec::new();
                    for &m in &members {
                        if sys::write_all_once(m, &self.frame) {
                            delivered += 1;
                        } else {
                            failed.push(m);
                        }
                    }
                    self.groups[g as usize].members = members;
                    for m in failed {
                        self.close(m);
                    }
                }
                message_answer(&mut self.out, &id, true, delivered, req.close);
            }
            b"/api/bind_to_group" => {
                let (Some(id), Some(name)) = (
                    field(body, b"\"clientId\":"),
                    field(body, b"\"groupName\":"),
                ) else {
                    return After::Close;
                };
                match self.lookup(id) {
                    Some(member) => {
                        self.bind(member, name);
                        answer(&mut self.out, SUCCESS_EMPTY, None, req.close);
                    }
                    None => {
                        let body: &[u8] =
                            br#"{"code":-1,"msg":"clientId is not online","data":[]}"#;
                        answer(&mut self.out, body, None, req.close);
                    }
                }
            }
            b"/api/get_online_list" => {
                let members: &[i32] =
                    match field(body, b"\"groupName\":").and_then(|n| self.group_index.get(n)) {
                        Some(&g) => &self.groups[g as usize].members,
                        None => &[],
                    };
                let mut json = Vec::with_capacity(64 + members.len() * (ID_LEN + 3));
                let _ = write!(
                    json,
                    r#"{{"code":0,"msg":"success","data":{{"count":{},"list":["#,
                    members.len()
                );
                for (k, &m) in members.iter().enumerate() {
                    if k > 0 {
                        json.push(b',');
                    }
                    json.push(b'"');
                    client_id(self.conns[m as usize].serial, m, &mut json);
                    json.push(b'"');
                }
                json.extend_from_slice(b"]}}");
                answer(&mut self.out, &json, None, req.close);
            }
            // The load generator only needs a code it can read ("already registered" is fine).
            b"/api/register" => answer(&mut self.out, SUCCESS_EMPTY, None, req.close),
            _ => {
                let body: &[u8] = br#"{"code":-1,"msg":"not served by wspush-floor","data":[]}"#;
                not_found(&mut self.out, body);
                return self.send_answer(fd, After::Close);
            }
        }
        self.send_answer(fd, done)
    }

    /// Writes `self.out` to `fd` in one `write(2)`; a socket that cannot take it is closed.
    fn send_answer(&mut self, fd: i32, after: After) -> After {
        if sys::write_all_once(fd, &self.out) {
            after
        } else {
            After::Close
        }
    }

    /// The 101 answer and the welcome frame in one write (RFC 6455 4.2.2: the accept key is
    /// base64(SHA-1(key + GUID))).
    fn upgrade(&mut self, fd: i32, key: &[u8]) -> After {
        use base64::Engine as _;
        use sha1::Digest as _;
        let mut sha = sha1::Sha1::new();
        sha.update(key);
        sha.update(WS_GUID);
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(accept.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        const BEFORE: &[u8] = br#"{"code":0,"msg":"success","data":{"clientId":""#;
        const AFTER: &[u8] = br#""}}"#;
        out.push(0x81);
        frame_header(BEFORE.len() + ID_LEN + AFTER.len(), out);
        out.extend_from_slice(BEFORE);
        client_id(self.conns[fd as usize].serial, fd, out);
        out.extend_from_slice(AFTER);
        match self.send_answer(fd, After::Upgraded) {
            After::Upgraded => After::Upgraded,
            _ => After::Close,
        }
    }

    /// Builds the pushed frame into `self.frame`: a new messageId, then the request body from
    /// `"sendUserId":` on. That is wspush's frame for the load generator's bodies, which end
    /// with `sendUserId, code, msg, data` in the order wspush writes them. Returns the
    /// messageId; `None` for a body whose last fields are not those four in that order.
    fn push_frame(&mut self, body: &[u8]) -> Option<[u8; 16]> {
        let at = find(body, b"\"sendUserId\":")?;
        let mut end = body.len();
        while end > at && body[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        let fields = body.get(at..end)?;
        let mut rest = fields;
        for key in [&b"\"code\":"[..], b"\"msg\":", b"\"data\":"] {
            rest = &rest[find(rest, key)? + key.len()..];
        }
        if !fields.ends_with(b"}") {
            return None;
        }
        let mut id = [0u8; 16];
        let n = self.next_message;
        self.next_message += 1;
        for (k, d) in id.iter_mut().enumerate() {
            *d = b"0123456789abcdef"[((n >> (60 - 4 * k)) & 0xf) as usize];
        }
        const OPEN: &[u8] = b"{\"messageId\":\"";
        let len = OPEN.len() + id.len() + 2 + fields.len();
        self.frame.clear();
        self.frame.push(0x81);
        frame_header(len, &mut self.frame);
        self.frame.extend_from_slice(OPEN);
        self.frame.extend_from_slice(&id);
        self.frame.extend_from_slice(b"\",");
        self.frame.extend_from_slice(fields);
        Some(id)
    }

    /// Writes `self.frame` to WebSocket `fd`; closes it if it cannot take the whole frame.
    fn deliver(&mut self, fd: i32) -> bool {
        if sys::write_all_once(fd, &self.frame) {
            true
        } else {
            self.close(fd);
            false
        }
    }

    /// The fd of the live WebSocket named by clientId `id`.
    fn lookup(&self, id: &[u8]) -> Option<i32> {
        if id.len() != ID_LEN || !id[..29].iter().all(|&b| b == b'0') {
            return None;
        }
        let serial = digits(&id[29..49])?;
        let fd = i32::try_from(digits(&id[49..])?).ok()?;
        let c = self.conns.get(fd as usize)?;
        (c.kind == Kind::Ws && c.serial == serial).then_some(fd)
    }

    fn bind(&mut self, fd: i32, name: &[u8]) {
        let g = match self.group_index.get(name) {
            Some(&g) => g,
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(Group {
                    name: name.to_vec(),
                    members: Vec::new(),
                });
                self.group_index.insert(name.to_vec(), g);
                g
            }
        };
        let c = &mut self.conns[fd as usize];
        if !c.groups.contains(&g) {
            c.groups.push(g);
            self.groups[g as usize].members.push(fd);
        }
    }

    /// Closes `fd` (which takes it out of the epoll set) and out of its groups; an empty group
    /// is forgotten.
    fn close(&mut self, fd: i32) {
        let Some(c) = self.conns.get_mut(fd as usize) else {
            return;
        };
        if c.kind == Kind::Free {
            return;
        }
        let groups = std::mem::take(&mut c.groups);
        *c = Conn::FREE;
        sys::close(fd);
        for g in groups {
            let members = &mut self.groups[g as usize].members;
            if let Some(k) = members.iter().position(|&m| m == fd) {
                members.swap_remove(k);
            }
            if members.is_empty() {
                // Keep the slot (indexes stay valid), drop the name.
                let name = std::mem::take(&mut self.groups[g as usize].name);
                if self.group_index.get(&name) == Some(&g) {
                    self.group_index.remove(&name);
                }
                // A bind to the same name later makes a new slot; this one stays empty.
            }
        }
    }
}

/// A `200` answer with a JSON body and optional `X-Wspush-Delivered`, as wspush writes it.
fn answer(out: &mut Vec<u8>, body: &[u8], delivered: Option<usize>, close: bool) {
    out.extend_from_slice(JSON_HEAD);
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if let Some(n) = delivered {
        out.extend_from_slice(b"\r\nX-Wspush-Delivered: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// The answer of a push: `{"code":0,"msg":"success","data":{"messageId":"..."}}`, with
/// `"failedNodes":[]` for a group.
fn message_answer(out: &mut Vec<u8>, id: &[u8; 16], group: bool, delivered: usize, close: bool) {
    let mut body = [0u8; 96];
    let mut w = &mut body[..];
    let _ = w.write_all(br#"{"code":0,"msg":"success","data":{"messageId":""#);
    let _ = w.write_all(id);
    let _ = w.write_all(if group {
        br#"","failedNodes":[]}}"#.as_slice()
    } else {
        br#""}}"#.as_slice()
    });
    let left = w.len();
    let len = body.len() - left;
    answer(out, &body[..len], Some(delivered), close);
}

fn not_found(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(body);
}

/// Appends clientId of the socket `serial` at `fd` ([`ID_LEN`] bytes).
fn client_id(serial: u64, fd: i32, out: &mut Vec<u8>) {
    let _ = write!(out, "{:029}{serial:020}{:010}", 0, fd as u32);
}

/// The unsigned decimal number that is all of `s`.
fn digits(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add((b - b'0') as u64)
        } else {
            None
        }
    })
}

/// Appends the length part of a server frame header, after its first byte (RFC 6455 5.2: 7
/// bits, or 126 + 16 bits, or 127 + 64 bits; server frames are not masked).
fn frame_header(len: usize, out: &mut Vec<u8>) {
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The string value of `key` (`"name":`): after the colon and any spaces, from the opening
/// quote to the next quote. No JSON parser: the load generator's values have no escapes.
fn field<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut at = find(body, key)? + key.len();
    at += body[at..].iter().position(|b| !b.is_ascii_whitespace())?;
    at += 1;
    if body[at - 1] != b'"' {
        return None;
    }
    let len = body[at..].iter().position(|&b| b == b'"')?;
    Some(&body[at..at + len])
}

/// First occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last {
        i += hay[i..=last].iter().position(|&b| b == first)?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One request at the front of `buf`: `Ok(None)` while incomplete, `Err` if it is not HTTP/1.x
/// this program serves (no chunked bodies).
fn parse_request(buf: &[u8]) -> Result<Option<Request>, ()> {
    let Some(head_len) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(())
        } else {
            Ok(None)
        };
    };
    let head = &buf[..head_len];
    let mut lines = head.split(|&b| b == b'\n');
    let line = lines.next().ok_or(())?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().ok_or(())?;
    let target = parts.next().ok_or(())?;
    let version = parts.next().ok_or(())?;
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(()),
    };
    let get = match method {
        b"GET" => true,
        b"POST" => false,
        _ => return Err(()),
    };
    let path_start = target.as_ptr() as usize - buf.as_ptr() as usize;
    let mut content_length = 0usize;
    let mut close = http10;
    let mut ws_key = None;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':').ok_or(())?;
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = digits(value).ok_or(())? as usize;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let v = value.to_ascii_lowercase();
            if find(&v, b"close").is_some() {
                close = true;
            } else if find(&v, b"keep-alive").is_some() {
                close = false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(());
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            let start = value.as_ptr() as usize - buf.as_ptr() as usize;
            ws_key = Some((start, start + value.len()));
        }
    }
    if content_length > MAX_PENDING {
        return Err(());
    }
    let body_start = head_len + 4;
    let len = body_start + content_length;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Request {
        len,
        get,
        path: (path_start, path_start + target.len()),
        body: (body_start, len),
        close,
        ws_key,
    }))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The client frame at the front of `buf` (RFC 6455 5.2: client frames are masked):
/// `(opcode, unmasked payload, frame length)`, `Ok(None)` while incomplete, `Err` for an
/// unmasked or oversized frame.
fn client_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 == 0 {
        return Err(());
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let n = u64::from_be_bytes(buf[2..10].try_into().map_err(|_| ())?);
            (usize::try_from(n).map_err(|_| ())?, 10)
        }
        n => (n as usize, 2),
    };
    if len > MAX_PENDING {
        return Err(());
    }
    let total = header + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    // Only control frames' payloads are looked at (pings and close codes are echoed).
    let payload = if opcode == 0x9 || opcode == 0x8 {
        let mask = &buf[header..header + 4];
        (buf[header + 4..total].iter().enumerate())
            .map(|(i, b)| b ^ mask[i % 4])
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some((opcode, payload, total)))
}

//! A small blocking HTTP/1.1 client for webhook POSTs: `http://` only, std `TcpStream`, every
//! step under a deadline, and one kept-alive connection per sender thread.
//!
//! It runs on the webhook sender threads, never on a core. Each POST is bounded: the connect by
//! the timeout, then the whole exchange (request written, response head and body read) by the
//! timeout again, however slowly the receiver dribbles bytes. Only the status matters; a body up
//! to [`MAX_KEPT_BODY`] is read and discarded so the connection can carry the next POST.
//!
//! Host names are resolved for every new connection (so a name that changes, DNS rebinding
//! included, is checked again), on a helper thread under the timeout: getaddrinfo has no
//! deadline of its own. Unless `WebhookAllowPrivate` is on, only public addresses are
//! connected to ([`private_range`]).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body read (and discarded) to keep the connection; a larger or chunked one
/// closes it instead.
pub const MAX_KEPT_BODY: usize = 64 * 1024;
/// A kept-alive connection idle longer than this is not reused: receivers commonly close idle
/// connections after 5 s or more, and a POST on a connection the receiver is closing is wasted.
const REUSE_WITHIN: Duration = Duration::from_secs(4);

/// A parsed `http://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query as sent in the request line; `/` at least.
    pub target: String,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("webhookUrl must start with http:// (https is not supported: terminate TLS in front of the receiver, or keep it on a private network)")]
    Scheme,
    #[error("webhookUrl has no host")]
    NoHost,
    #[error("webhookUrl has a bad port")]
    Port,
    #[error("webhookUrl must not carry user:password@")]
    UserInfo,
    #[error("webhookUrl contains spaces or control characters")]
    BadChar,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::BadChar);
        }
        let rest = match text.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &text[7..],
            _ => return Err(UrlError::Scheme),
        };
        // The fragment never goes on the wire.
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or(UrlError::Port)?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let port = match port {
            None | Some("") => 80,
            // Digits only: u16's parser would take a leading '+'.
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => return Err(UrlError::Port),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(UrlError::Port),
            },
        };
        let target = match target.strip_prefix('?') {
            Some(_) => format!("/{target}"),
            None if target.is_empty() => "/".to_string(),
            None => target.to_string(),
        };
        Ok(Url {
            host: host.to_string(),
            port,
            target,
            authority: authority.to_string(),
        })
    }
}

/// Why a POST got no status.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{host} is {addr}, a {range} address, and WebhookAllowPrivate is off")]
    Private {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
    #[error("no answer within the timeout ({0})")]
    Timeout(&'static str),
    #[error("the receiver closed the connection before answering")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

/// One sender's client: the timeout and at most one kept-alive connection.
pub struct Client {
    timeout: Duration,
    /// `WebhookAllowPrivate`: connect to any address the host resolves to.
    allow_private: bool,
    idle: Option<Idle>,
}

struct Idle {
    host: String,
    port: u16,
    stream: TcpStream,
    since: Instant,
}

/// How an exchange on one connection went.
struct Answer {
    status: u16,
    /// The connection may carry another request.
    reusable: bool,
}

impl Client {
    pub fn new(timeout: Duration, allow_private: bool) -> Client {
        Client {
            timeout: timeout.max(Duration::from_millis(1)),
            allow_private,
            idle: None,
        }
    }

    /// POSTs `body` as JSON to `url` with extra `headers`; returns the response status.
    pub fn post(
        &mut self,
        url: &Url,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<u16, PostError> {
        let request = request_bytes(url, headers, body);
        if let Some(idle) = self.idle.take() {
            if idle.host == url.host && idle.port == url.port && idle.since.elapsed() < REUSE_WITHIN
            {
                match self.exchange(&idle.stream, &request) {
                    Ok(answer) => return Ok(self.keep(url, idle.stream, answer)),
                    // The receiver closed the idle connection as this request went out: send it
                    // once more on a fresh connection, as every HTTP client does. Anything else
                    // (a timeout, bytes of a response) is a real failure.
                    Err(PostError::Closed) => {}
                    Err(PostError::Io(e)) if is_reset(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let stream = self.connect(url)?;
        let answer = self.exchange(&stream, &request)?;
        Ok(self.keep(url, stream, answer))
    }

    fn keep(&mut self, url: &Url, stream: TcpStream, answer: Answer) -> u16 {
        if answer.reusable {
            self.idle = Some(Idle {
                host: url.host.clone(),
                port: url.port,
                stream,
                since: Instant::now(),
            });
        }
        answer.status
    }

    fn connect(&self, url: &Url) -> Result<TcpStream, PostError> {
        let addrs = resolve(&url.host, url.port, self.timeout)?;
        // A name that resolves to public and private addresses is sent to the public ones only.
        let mut private = None;
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| match private_range(addr.ip()) {
                Some(range) if !self.allow_private => {
                    private.get_or_insert((addr.ip(), range));
                    false
                }
                _ => true,
            })
            .collect();
        if let (true, Some((addr, range))) = (addrs.is_empty(), private) {
            return Err(PostError::Private {
                host: url.host.clone(),
                addr,
                range,
            });
        }
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        Err(match last {
            Some((addr, source)) => PostError::Connect {
                addr: addr.to_string(),
                source,
            },
            None => PostError::Resolve {
                host: url.host.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no address"),
            },
        })
    }

    /// Writes the request and reads the response, all within one timeout.
    fn exchange(&self, mut stream: &TcpStream, request: &[u8]) -> Result<Answer, PostError> {
        let deadline = Instant::now() + self.timeout;
        let left = |stage| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(PostError::Timeout(stage))
            } else {
                Ok(left)
            }
        };
        let mut sent = 0;
        while sent < request.len() {
            stream.set_write_timeout(Some(left("writing the request")?))?;
            match stream.write(&request[sent..]) {
                Ok(0) => return Err(PostError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(PostError::Timeout("writing the request")),
                Err(e) if is_reset(&e) => return Err(PostError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            match parse_head(&buf)? {
                Some(head) if (100..200).contains(&head.status) => {
                    // An interim answer (100 Continue): the real one follows.
                    buf.drain(..head.len);
                    continue;
                }
                Some(head) => {
                    let reusable = head.keep_alive && (200..300).contains(&head.status);
                    let Some(length) = head.content_length.filter(|_| reusable) else {
                        return Ok(Answer {
                            status: head.status,
                            reusable: false,
                        });
                    };
                    // Discard the body so the next request starts on a clean connection.
                    let mut have = buf.len() - head.len;
                    while have < length {
                        stream.set_read_timeout(Some(left("reading the response body")?))?;
                        match stream.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => have += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    return Ok(Answer {
                        status: head.status,
                        reusable: have == length,
                    });
                }
                None => {}
            }
            if buf.len() >= MAX_HEAD {
                return Err(PostError::BadResponse("response head too large"));
            }
            stream.set_read_timeout(Some(left("reading the response")?))?;
            match stream.read(&mut chunk) {
                Ok(0) if buf.is_empty() => return Err(PostError::Closed),
                Ok(0) => return Err(PostError::BadResponse("connection closed inside the head")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(PostError::Timeout("reading the response")),
                Err(e) if is_reset(&e) && buf.is_empty() => return Err(PostError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Lookups running at once on helper threads, over all senders; see [`resolve`].
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
/// At most this many: a DNS server that stops answering strands one thread per lookup until
/// glibc gives up (5 s per server and attempt by default), so lookups beyond fail at once.
const MAX_LOOKUPS: usize = 16;

/// `host:port`'s addresses within `timeout`. An IP address is used as it is; a name is resolved
/// by getaddrinfo on a helper thread that the sender waits for at most `timeout`: one that
/// answers later finishes alone and its answer is discarded.
fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, PostError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let failed = |source| PostError::Resolve {
        host: host.to_string(),
        source,
    };
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(failed(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{MAX_LOOKUPS} DNS lookups are still pending"),
        )));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let name = host.to_string();
    let spawned = std::thread::Builder::new()
        .name("wspush-dns".into())
        // glibc's resolver and NSS modules want more than a few KiB; not the default 2 MiB.
        .stack_size(256 << 10)
        .spawn(move || {
            let answer = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.collect::<Vec<_>>());
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(answer);
        });
    if let Err(e) = spawned {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(failed(e));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(failed(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Why a webhook may not go to `ip` unless `WebhookAllowPrivate` is on: the range it falls in,
/// or None for a public address. The ranges are those an outside caller of an open
/// `/api/register` must not reach through this node: the node itself, its LAN, its cloud's
/// metadata service (169.254.169.254) and addresses that are not one host.
pub fn private_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return private_v4(v4);
            }
            let s = v6.segments();
            match s[0] {
                _ if v6.is_unspecified() => Some("unspecified"),
                _ if v6.is_loopback() => Some("loopback"),
                x if x & 0xfe00 == 0xfc00 => Some("unique-local (fc00::/7)"),
                x if x & 0xffc0 == 0xfe80 => Some("link-local (fe80::/10)"),
                // Deprecated site-local: still routed inside some networks.
                x if x & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
                x if x & 0xff00 == 0xff00 => Some("multicast"),
                _ => None,
            }
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified (0.0.0.0/8)",
        (10, _) => "private (10.0.0.0/8)",
        (100, 64..=127) => "shared/CGNAT (100.64.0.0/10)",
        (127, _) => "loopback (127.0.0.0/8)",
        (169, 254) => "link-local (169.254.0.0/16)",
        (172, 16..=31) => "private (172.16.0.0/12)",
        (192, 168) => "private (192.168.0.0/16)",
        (192, 0) if c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        (198, 18..=19) => "benchmarking (198.18.0.0/15)",
        (224..=239, _) => "multicast (224.0.0.0/4)",
        (240..=255, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one stands for, where the kernel or a gateway would take it to that
/// IPv4 host: mapped `::ffff:a.b.c.d`, the deprecated compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` and 6to4 `2002:AABB:CCDD::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// The request: head and body in one buffer, so it leaves in one write.
pub fn request_bytes(url: &Url, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(url.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(url.authority.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: wspush/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What the client needs from a response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: Option<usize>,
    /// HTTP/1.1 without `Connection: close`, and no chunked body.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`; None while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, PostError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(PostError::BadResponse("too many response headers"))
        }
        Err(_) => return Err(PostError::BadResponse("not an HTTP/1.x response")),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut content_length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n <= MAX_KEPT_BODY);
            if content_length.is_none() {
                keep_alive = false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    Ok(Some(Head {
        status,
        len,
        content_length,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let u = Url::parse("http://example.com:8080/hooks/ws?x=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                host: "example.com".into(),
                port: 8080,
                target: "/hooks/ws?x=1".into(),
                authority: "example.com:8080".into(),
            }
        );
        let u = Url::parse("HTTP://10.0.0.1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("10.0.0.1", 80, "/")
        );
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!(u.target, "/?q");
        let u = Url::parse("http://[::1]:9000/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for (url, want) in [
            ("https://example.com/", UrlError::Scheme),
            ("ftp://x/", UrlError::Scheme),
            ("", UrlError::Scheme),
            ("http://", UrlError::NoHost),
            ("http://:80/", UrlError::NoHost),
            ("http://h:0/", UrlError::Port),
            ("http://h:99999/", UrlError::Port),
            ("http://h:+80/", UrlError::Port),
            ("http://u:p@h/", UrlError::UserInfo),
            ("http://h/a b", UrlError::BadChar),
            ("http://h/\r\nX-Injected: 1", UrlError::BadChar),
        ] {
            assert_eq!(Url::parse(url), Err(want), "{url:?}");
        }
    }

    #[test]
    fn request_has_the_json_head_and_the_headers() {
        let u = Url::parse("http://h:81/p").unwrap();
        let r = request_bytes(&u, &[("X-Signature", "ab")], b"{}");
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("POST /p HTTP/1.1\r\nHost: h:81\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\nContent-Length: 2\r\n"));
        assert!(text.ends_with("\r\nX-Signature: ab\r\n\r\n{}"));
    }

    #[test]
    fn reads_status_and_whether_the_connection_can_be_kept() {
        let h = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.keep_alive),
            (204, Some(0), true)
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    /// A one-thread HTTP server on a free port: for each accepted connection, `script` gets the
    /// stream and the connection's number. Returns the port.
    fn server(script: fn(TcpStream, usize)) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || script(stream, n));
            }
        });
        port
    }

    /// Reads one request (head and Content-Length body); false at EOF.
    fn read_request(stream: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return false,
            }
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0; len];
        stream.read_exact(&mut body).is_ok()
    }

    fn url(port: u16) -> Url {
        Url::parse(&format!("http://127.0.0.1:{port}/h")).unwrap()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn keeps_the_connection_alive_between_posts() {
        static CONNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let port = server(|mut s, _| {
            CONNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while read_request(&mut s) {
                s.write_all(OK).unwrap();
            }
        });
        let mut client = Client::new(Duration::from_secs(5), true);
        for _ in 0..3 {
            assert_eq!(client.post(&url(port), &[], b"{}").unwrap(), 200);
        }
        assert_eq!(CONNS.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn private_addresses_are_not_connected_to_unless_allowed() {
        static CONNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let port = server(|mut s, _| {
            CONNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while read_request(&mut s) {
                s.write_all(OK).unwrap();
            }
        });
        let mut client = Client::new(Duration::from_secs(5), false);
        // An address, and a name that resolves to loopback only (resolved on a helper thread).
        for host in ["127.0.0.1", "localhost"] {
            let url = Url::parse(&format!("http://{host}:{port}/h")).unwrap();
            match client.post(&url, &[], b"{}") {
                Err(PostError::Private { addr, range, .. }) => {
                    assert!(addr.is_loopback(), "{host}: {addr}");
                    assert!(range.contains("loopback"), "{range}");
                }
                other => panic!("{host}: {other:?}"),
            }
        }
        assert_eq!(CONNS.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mut client = Client::new(Duration::from_secs(5), true);
        assert_eq!(client.post(&url(port), &[], b"{}").unwrap(), 200);
        assert_eq!(CONNS.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_name_that_does_not_resolve_is_an_error_within_the_timeout() {
        let start = std::time::Instant::now();
        let r = resolve("no-such-host.invalid", 80, Duration::from_secs(5));
        assert!(matches!(r, Err(PostError::Resolve { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(6));
    }

    #[test]
    fn a_kept_connection_the_receiver_closed_is_replaced_at_once() {
        // Every connection answers one request, then closes without saying so.
        let port = server(|mut s, _| {
            if read_request(&mut s) {
                s.write_all(OK).unwrap();
            }
        });
        let mut client = Client::new(Duration::from_secs(5), true);
        for _ in 0..3 {
            assert_eq!(client.post(&url(port), &[], b"{}").unwrap(), 200);
        }
    }

    #[test]
    fn a_silent_or_dribbling_receiver_times_out() {
        let silent = server(|mut s, _| {
            read_request(&mut s);
            std::thread::sleep(Duration::from_secs(3));
        });
        // One byte every 100 ms: each read succeeds, the whole answer never comes in time.
        let dribbling = server(|mut s, _| {
            read_request(&mut s);
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut client = Client::new(Duration::from_millis(500), true);
        for port in [silent, dribbling] {
            let start = Instant::now();
            let e = client.post(&url(port), &[], b"{}").unwrap_err();
            assert!(matches!(e, PostError::Timeout(_)), "{e}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        let garbage = server(|mut s, _| {
            read_request(&mut s);
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n");
        });
        let closed = server(|mut s, _| {
            read_request(&mut s);
        });
        let huge = server(|mut s, _| {
            read_request(&mut s);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            let _ = s.write_all(&[b'a'; 2 * MAX_HEAD]);
        });
        let mut client = Client::new(Duration::from_secs(5), true);
        assert!(matches!(
            client.post(&url(garbage), &[], b"{}"),
            Err(PostError::BadResponse(_))
        ));
        assert!(matches!(
            client.post(&url(closed), &[], b"{}"),
            Err(PostError::Closed)
        ));
        assert!(matches!(
            client.post(&url(huge), &[], b"{}"),
            Err(PostError::BadResponse(_))
        ));
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(matches!(
            client.post(&url(refused), &[], b"{}"),
            Err(PostError::Connect { .. })
        ));
    }
}

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
//!
//! - this file: [`Client`], its kept-alive connection and the name lookups;
//! - [`url`]: the webhook URL, parsed;
//! - [`address`]: the address ranges refused unless `WebhookAllowPrivate` is on;
//! - [`wire`]: the request bytes, the response head, and [`PostError`].

pub mod address;
pub mod url;
pub mod wire;

pub use address::private_range;
pub use url::{Url, UrlError};
pub use wire::{parse_head, request_bytes, Head, PostError, MAX_KEPT_BODY};

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A kept-alive connection idle longer than this is not reused: receivers commonly close idle
/// connections after 5 s or more, and a POST on a connection the receiver is closing is wasted.
const REUSE_WITHIN: Duration = Duration::from_secs(4);

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

#[cfg(test)]
mod tests {
    use super::*;

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

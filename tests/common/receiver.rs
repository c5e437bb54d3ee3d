//! A webhook receiver for the tests: a std `TcpListener` and a thread per connection that
//! records every request (path, headers, body) and answers it, 200 unless told otherwise
//! (fail the first N with 500, or hold each answer for a while).
//!
//! HTTP/1.1 keep-alive is honoured (wspush reuses its connections). Dropping the receiver closes
//! the listener and every connection, so the port refuses connections again.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Hook {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered (or was about to answer).
    pub status: u16,
    pub at: Instant,
}

impl Hook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `events` array of the body.
    pub fn events(&self) -> Vec<Value> {
        self.json()["events"]
            .as_array()
            .unwrap_or_else(|| panic!("webhook body has no events array: {}", self.json()))
            .clone()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Shared {
    hooks: Mutex<Vec<Hook>>,
    /// Requests still to be answered with `fail_status`.
    fail_next: AtomicUsize,
    /// The status of a failed answer; 0 means 500.
    fail_status: AtomicUsize,
    /// Milliseconds to hold each answer.
    delay_ms: AtomicUsize,
    /// Requests answered so far.
    answered: AtomicUsize,
    stop: AtomicBool,
}

pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    /// A receiver on a free port.
    pub fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").expect("bind the receiver"))
    }

    /// A receiver on `port`, which the test had reserved and released (a receiver "down at
    /// first"). Retries a few seconds if something still holds the port.
    pub fn start_on(port: u16) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => return Receiver::on(listener),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("receiver port {port} not free yet: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind the receiver on {port}: {e}"),
            }
        }
    }

    fn on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let shared = shared.clone();
            let conns = conns.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(copy) = stream.try_clone() {
                        conns.lock().unwrap().push(copy);
                    }
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream, &shared));
                }
            })
        };
        Receiver {
            port,
            shared,
            accept: Some(accept),
            conns,
        }
    }

    /// The URL to register: `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// Answers the next `n` requests with `status`.
    pub fn fail_next_with(&self, n: usize, status: u16) {
        self.shared
            .fail_status
            .store(status as usize, Ordering::SeqCst);
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Holds every answer for `delay` (a slow receiver).
    pub fn delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn hooks(&self) -> Vec<Hook> {
        self.shared.hooks.lock().unwrap().clone()
    }

    /// The events of every request answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.hooks()
            .iter()
            .filter(|h| h.ok())
            .flat_map(|h| h.events())
            .collect()
    }

    /// Polls until `done` accepts the requests received so far; panics after `timeout` with
    /// what arrived.
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Hook]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.hooks()) {
                return;
            }
            if Instant::now() > deadline {
                let got: Vec<String> = self
                    .hooks()
                    .iter()
                    .map(|h| format!("{} {}", h.status, String::from_utf8_lossy(&h.body)))
                    .collect();
                panic!("webhook receiver: {what} not within {timeout:?}; got {got:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` events were delivered (answered 2xx) and returns them all.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_until(timeout, &format!("{n} delivered events"), |hooks| {
            hooks
                .iter()
                .filter(|h| h.ok())
                .map(|h| h.events().len())
                .sum::<usize>()
                >= n
        });
        self.delivered()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Serves one connection: requests in a loop until EOF, an error, or the receiver stops.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // A whole request in `buf`? Answer it and keep what follows.
        if let Some((hook, len)) = parse_request(&buf) {
            buf.drain(..len);
            if !answer(&mut stream, hook, shared) {
                return;
            }
            continue;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Records `hook` and writes its answer; false when the connection is to be closed.
fn answer(stream: &mut TcpStream, mut hook: Hook, shared: &Shared) -> bool {
    let fail = shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let fail_status = match shared.fail_status.load(Ordering::SeqCst) {
        0 => 500,
        status => status as u16,
    };
    hook.status = if fail { fail_status } else { 200 };
    let status = hook.status;
    shared.hooks.lock().unwrap().push(hook);
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay as u64));
    }
    let body = if fail { "fail" } else { "ok" };
    let reason = if fail { "Internal Server Error" } else { "OK" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let ok = stream.write_all(response.as_bytes()).is_ok();
    shared.answered.fetch_add(1, Ordering::SeqCst);
    ok
}

/// A whole request at the start of `buf` (head with Content-Length, then the body).
fn parse_request(buf: &[u8]) -> Option<(Hook, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "webhook receiver: bad request ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse().expect("numeric Content-Length"))
        .unwrap_or(0);
    if buf.len() < head_len + length {
        return None;
    }
    let hook = Hook {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        headers,
        body: buf[head_len..head_len + length].to_vec(),
        status: 0,
        at: Instant::now(),
    };
    Some((hook, head_len + length))
}

//! Steady background load for the fault tests: WebSocket clients on every node that log what
//! they receive, and one sender thread per node that pushes to them at a steady rate and logs how
//! each request ended and how long it took.
//!
//! Every push carries `{"load":{"s":<sender>,"n":<seq>}}` as its `data`, so a client's log says
//! exactly which pushes reached it. A test starts the load, waits until it runs
//! ([`Load::warm_up`]), causes its fault, stops the senders ([`Load::stop`]) and then asserts over
//! the records: latencies ([`Load::assert_latency`]), answers ([`Load::assert_answered`]), and
//! that every push answered code 0 reached the clients it names ([`Load::assert_delivered`]).
//!
//! The load uses a system of its own, so the clients of the test's own assertions never see it.

use super::{bind, read_response, request_bytes, Ended, Ws};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Each sender starts one request per period; after a slow one the next starts at once (no
/// burst to catch up), so a stalled node slows its callers' rate instead of queueing requests.
pub const PERIOD: Duration = Duration::from_millis(20);
/// Every `GROUP_EVERY`-th push of a sender goes to the group; the others go to one client each,
/// round robin over every client of every node.
pub const GROUP_EVERY: u64 = 5;
/// The group every load client is bound to.
pub const GROUP: &str = "load";
/// A load request without a whole answer after this long is logged as failed. Longer than any
/// deadline the server has, so only a node that does not run (SIGSTOP) reaches it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Load::warm_up`] waits for every sender to get answers.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// Whom a load push was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `Load::clients[i]`, with `send_to_client`.
    Client(usize),
    /// Every load client, with `send_to_group`.
    Group,
}

/// One load request and how it ended.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The sender, which is also the index of the node the request went through.
    pub sender: usize,
    /// Its sequence number within its sender.
    pub n: u64,
    pub target: Target,
    pub started: Instant,
    pub took: Duration,
    /// The envelope's `code`, or why there was no 200 envelope.
    pub outcome: Result<i64, String>,
}

impl Sent {
    pub fn finished(&self) -> Instant {
        self.started + self.took
    }

    /// Answered with code 0.
    pub fn ok(&self) -> bool {
        self.outcome == Ok(0)
    }
}

/// A load client: the node it is connected to and its clientId.
#[derive(Clone, Debug)]
pub struct LoadClient {
    pub node: usize,
    pub client_id: String,
}

/// What one client received.
#[derive(Default)]
struct Inbox {
    /// `(sender, n)` of every load push, in arrival order.
    got: Vec<(usize, u64)>,
    /// How and when the server ended the connection, if it did.
    ended: Option<(Ended, Instant)>,
    /// A text frame that was not JSON, if one came (a test failure, reported by the asserts).
    garbage: Option<String>,
}

/// A running load. Dropping it stops every thread.
pub struct Load {
    pub system: String,
    pub clients: Vec<LoadClient>,
    /// When the load started; the asserts print times relative to it.
    pub t0: Instant,
    inboxes: Vec<Arc<Mutex<Inbox>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop_senders: Arc<AtomicBool>,
    stop_readers: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Connects `per_node` clients of `system` (already registered) to each node (`ports[i]` is
    /// node i's HTTP port), binds them all to [`GROUP`], and starts one reader thread per client
    /// and one sender thread per node.
    pub fn start(ports: &[u16], system: &str, per_node: usize) -> Load {
        let t0 = Instant::now();
        let mut clients = Vec::new();
        let mut sockets = Vec::new();
        for (node, &port) in ports.iter().enumerate() {
            for k in 0..per_node {
                let ws = Ws::connect(port, system);
                bind(port, system, &ws, GROUP, &format!("load-{node}-{k}"), "");
                clients.push(LoadClient {
                    node,
                    client_id: ws.client_id.clone(),
                });
                sockets.push(ws);
            }
        }
        let stop_readers = Arc::new(AtomicBool::new(false));
        let mut inboxes = Vec::new();
        let mut readers = Vec::new();
        for ws in sockets {
            let inbox = Arc::new(Mutex::new(Inbox::default()));
            inboxes.push(inbox.clone());
            let stop = stop_readers.clone();
            readers.push(std::thread::spawn(move || read_loop(ws, &inbox, &stop)));
        }
        let stop_senders = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let ids: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.client_id.clone()).collect());
        let senders = ports
            .iter()
            .enumerate()
            .map(|(sender, &port)| {
                let (ids, sent, stop) = (ids.clone(), sent.clone(), stop_senders.clone());
                let system = system.to_string();
                std::thread::spawn(move || send_loop(sender, port, &system, &ids, &sent, &stop))
            })
            .collect();
        Load {
            system: system.to_string(),
            clients,
            t0,
            inboxes,
            sent,
            stop_senders,
            stop_readers,
            senders,
            readers,
        }
    }

    /// The indexes of the clients on `node`.
    pub fn clients_on(&self, node: usize) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&c| self.clients[c].node == node)
            .collect()
    }

    /// Every request logged so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// Polls the log until `done` accepts it; panics naming `what` after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Sent]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.sent.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "load: {what} not within {timeout:?}\n{}",
                self.summary(&self.sent())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every sender had 25 pushes answered code 0 (half a second of load at the
    /// least, group pushes among them) and delivered: the load runs end to end through every
    /// node before the fault.
    pub fn warm_up(&self) {
        let senders = self.senders.len();
        self.wait_for("every sender answered", WARM_UP_TIMEOUT, |sent| {
            (0..senders).all(|s| sent.iter().filter(|x| x.sender == s && x.ok()).count() >= 25)
        });
        let sent = self.sent();
        self.assert_delivered(&sent, WARM_UP_TIMEOUT, |_| true, |_| true);
    }

    /// Stops the senders (after their request in flight) and returns the whole log. The clients
    /// keep reading, so what is still on its way can arrive.
    pub fn stop(&mut self) -> Vec<Sent> {
        self.stop_senders.store(true, Ordering::Relaxed);
        for handle in self.senders.drain(..) {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let sent = self.sent();
        eprintln!("{}", self.summary(&sent));
        sent
    }

    /// How client `c`'s connection ended, if it has.
    pub fn ended(&self, c: usize) -> Option<(Ended, Instant)> {
        self.inboxes[c].lock().unwrap().ended
    }

    /// `(sender, n)` of every load push client `c` received, in arrival order.
    pub fn received(&self, c: usize) -> Vec<(usize, u64)> {
        self.inboxes[c].lock().unwrap().got.clone()
    }

    /// Times as milliseconds since the load started, for messages.
    pub fn at(&self, t: Instant) -> String {
        format!("t+{}ms", t.saturating_duration_since(self.t0).as_millis())
    }

    fn describe(&self, s: &Sent) -> String {
        let target = match s.target {
            Target::Client(c) => format!("client {c} on node {}", self.clients[c].node),
            Target::Group => "the group".to_string(),
        };
        format!(
            "push {}#{} via node {} to {target}, started {}, took {:?}, answer {:?}",
            s.sender,
            s.n,
            s.sender,
            self.at(s.started),
            s.took,
            s.outcome
        )
    }

    /// Requests, answers and the slowest request per sender: printed when the load stops and
    /// when an assert fails.
    pub fn summary(&self, sent: &[Sent]) -> String {
        let mut out = String::from("load summary:");
        let senders = sent.iter().map(|s| s.sender + 1).max().unwrap_or(0);
        for s in 0..senders {
            let mine: Vec<&Sent> = sent.iter().filter(|x| x.sender == s).collect();
            let ok = mine.iter().filter(|x| x.ok()).count();
            let slowest = mine.iter().map(|x| x.took).max().unwrap_or_default();
            out.push_str(&format!(
                "\n  via node {s}: {} requests, {ok} answered code 0, {} failed, slowest {slowest:?}",
                mine.len(),
                mine.len() - ok
            ));
        }
        for (c, client) in self.clients.iter().enumerate() {
            let inbox = self.inboxes[c].lock().unwrap();
            out.push_str(&format!(
                "\n  client {c} on node {}: {} pushes received, ended {:?}",
                client.node,
                inbox.got.len(),
                inbox.ended.as_ref().map(|(how, t)| (how, self.at(*t)))
            ));
        }
        out
    }

    /// Asserts every request `filter` selects took at most `max`.
    pub fn assert_latency(
        &self,
        sent: &[Sent],
        what: &str,
        max: Duration,
        filter: impl Fn(&Sent) -> bool,
    ) {
        let mut slow: Vec<&Sent> = sent.iter().filter(|s| filter(s) && s.took > max).collect();
        if slow.is_empty() {
            return;
        }
        slow.sort_by_key(|s| std::cmp::Reverse(s.took));
        let worst: Vec<String> = slow.iter().take(5).map(|s| self.describe(s)).collect();
        panic!(
            "{what}: {} requests took longer than {max:?}; the slowest:\n  {}\n{}",
            slow.len(),
            worst.join("\n  "),
            self.summary(sent)
        );
    }

    /// Asserts every request `filter` selects was answered with code 0.
    pub fn assert_answered(&self, sent: &[Sent], what: &str, filter: impl Fn(&Sent) -> bool) {
        let failed: Vec<&Sent> = sent.iter().filter(|s| filter(s) && !s.ok()).collect();
        if failed.is_empty() {
            return;
        }
        let first: Vec<String> = failed.iter().take(5).map(|s| self.describe(s)).collect();
        panic!(
            "{what}: {} requests not answered with code 0; the first:\n  {}\n{}",
            failed.len(),
            first.join("\n  "),
            self.summary(sent)
        );
    }

    /// Asserts that every push answered code 0 that `pushes` selects reached every client it
    /// names (one client, or every client for the group) that `clients` selects, waiting up to
    /// `within` for those still on their way. Also asserts no client got a push twice.
    pub fn assert_delivered(
        &self,
        sent: &[Sent],
        within: Duration,
        pushes: impl Fn(&Sent) -> bool,
        clients: impl Fn(usize) -> bool,
    ) {
        let everyone: Vec<usize> = (0..self.clients.len()).filter(|&c| clients(c)).collect();
        let mut want: Vec<Vec<&Sent>> = vec![Vec::new(); self.clients.len()];
        for s in sent.iter().filter(|s| s.ok() && pushes(s)) {
            match s.target {
                Target::Client(c) if clients(c) => want[c].push(s),
                Target::Client(_) => {}
                Target::Group => {
                    for &c in &everyone {
                        want[c].push(s);
                    }
                }
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let mut missing: Vec<(usize, &Sent)> = Vec::new();
            for (c, wanted) in want.iter().enumerate() {
                let inbox = self.inboxes[c].lock().unwrap();
                if let Some(text) = &inbox.garbage {
                    panic!("load client {c} received a frame that is not JSON: {text:?}");
                }
                let got: std::collections::HashSet<(usize, u64)> =
                    inbox.got.iter().copied().collect();
                assert_eq!(
                    got.len(),
                    inbox.got.len(),
                    "load client {c} received a push twice: {:?}",
                    inbox.got
                );
                missing.extend(
                    wanted
                        .iter()
                        .filter(|s| !got.contains(&(s.sender, s.n)))
                        .map(|s| (c, *s)),
                );
            }
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let first: Vec<String> = missing
                    .iter()
                    .take(8)
                    .map(|(c, s)| format!("client {c}: {}", self.describe(s)))
                    .collect();
                panic!(
                    "{} pushes answered code 0 never arrived (waited {within:?}); the first:\n  {}\n{}",
                    missing.len(),
                    first.join("\n  "),
                    self.summary(sent)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts each selected client received every sender's pushes in the order they were
    /// answered: a sender waits for each answer before its next push, so nothing may overtake.
    /// Only pushes answered code 0 are ordered: one whose answer never came (a stopped node,
    /// the client's read timeout) may still run whenever the node resumes, after later ones.
    pub fn assert_in_order(&self, clients: impl Fn(usize) -> bool) {
        let answered: std::collections::HashSet<(usize, u64)> = self
            .sent()
            .iter()
            .filter(|s| s.ok())
            .map(|s| (s.sender, s.n))
            .collect();
        for c in (0..self.clients.len()).filter(|&c| clients(c)) {
            let got = self.received(c);
            let mut last: Vec<Option<u64>> = Vec::new();
            for &(s, n) in got.iter().filter(|sn| answered.contains(sn)) {
                if last.len() <= s {
                    last.resize(s + 1, None);
                }
                if let Some(prev) = last[s] {
                    assert!(
                        n > prev,
                        "load client {c}: push {s}#{n} arrived after {s}#{prev}: {got:?}"
                    );
                }
                last[s] = Some(n);
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_senders.store(true, Ordering::Relaxed);
        self.stop_readers.store(true, Ordering::Relaxed);
        for handle in self.senders.drain(..).chain(self.readers.drain(..)) {
            let _ = handle.join();
        }
    }
}

/// A client's reader: logs load pushes until the server ends the connection or the load stops.
/// Pings are answered by tungstenite; presence pushes and other systems' frames are skipped.
fn read_loop(mut ws: Ws, inbox: &Mutex<Inbox>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match ws.read_within(Duration::from_millis(50)) {
            Ok(Some(Message::Text(text))) => {
                let mut inbox = inbox.lock().unwrap();
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    inbox.garbage.get_or_insert(text.to_string());
                    continue;
                };
                let load = &v["data"]["load"];
                if let (Some(s), Some(n)) = (load["s"].as_u64(), load["n"].as_u64()) {
                    inbox.got.push((s as usize, n));
                }
            }
            Ok(Some(Message::Close(frame))) => {
                // Answer the close (the server may be gone already).
                let _ = ws.ws.flush();
                let code = frame.map_or(1005, |f| u16::from(f.code));
                inbox.lock().unwrap().ended = Some((Ended::Close(code), Instant::now()));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                inbox.lock().unwrap().ended = Some((Ended::Dropped, Instant::now()));
                return;
            }
        }
    }
}

/// A sender: one push through `port` per [`PERIOD`] until stopped, each logged.
fn send_loop(
    sender: usize,
    port: u16,
    system: &str,
    ids: &[String],
    log: &Mutex<Vec<Sent>>,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    let mut to_client = sender; // senders start on different clients
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let data = json!({ "load": { "s": sender, "n": n } });
        let (target, route, body) = if n % GROUP_EVERY == GROUP_EVERY - 1 {
            let body = json!({"groupName": GROUP, "sendUserId": "load", "code": 300, "msg": "load", "data": data});
            (Target::Group, "/api/send_to_group", body)
        } else {
            let c = to_client % ids.len();
            to_client += 1;
            let body = json!({"clientId": ids[c], "sendUserId": "load", "code": 300, "msg": "load", "data": data});
            (Target::Client(c), "/api/send_to_client", body)
        };
        let started = Instant::now();
        let outcome = post(port, system, route, &body);
        let took = started.elapsed();
        log.lock().unwrap().push(Sent {
            sender,
            n,
            target,
            started,
            took,
            outcome,
        });
        next += PERIOD;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// One API request on a fresh connection (as nginx sends them): the envelope's code, or why
/// there is none. Never panics: a dead or stopped node is what the load is for.
fn post(port: u16, system: &str, route: &str, body: &Value) -> Result<i64, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let headers = [("Content-Type", "application/json"), ("SystemId", system)];
    stream
        .write_all(&request_bytes(
            port,
            "POST",
            route,
            &headers,
            body.to_string().as_bytes(),
        ))
        .map_err(|e| format!("write: {e}"))?;
    let resp = read_response(&mut BufReader::new(stream)).map_err(|e| format!("read: {e}"))?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    let v: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("body: {e}"))?;
    v["code"]
        .as_i64()
        .ok_or_else(|| format!("no integer code: {v}"))
}

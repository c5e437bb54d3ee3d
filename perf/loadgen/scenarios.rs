//! The scenarios: each opens what it needs, measures one window, and fills a [`Report`].
//!
//! Common shape: register the system, open the receivers ([`Load`]), take a [`Window`] start
//! (counters, the server's CPU time, the load generator's own CPU time), run the senders for
//! the duration, wait until what was sent has arrived (or the stream went quiet), take the
//! window end. Every loop is bounded by a count and a deadline.

use crate::fleet::{self, Load, Opened, Spec};
use crate::http::{self, api_ok, json_str, HttpClient};
use crate::shards::Shards;
use crate::stats::{bump, Latency, Snapshot, Stats};
use crate::sys::{self, Server};
use crate::ws::{self, Target};
use anyhow::bail;
use serde_json::{json, Map, Value};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every scenario gets from `main`.
pub struct Ctx {
    /// Where the WebSockets connect.
    pub target: Arc<Target>,
    /// Where the API requests go: `target` unless `--api-port` names another node.
    pub api_target: Arc<Target>,
    pub shards: Arc<Shards>,
    pub server: Server,
    /// `--procs`, or `None` for automatic.
    pub procs: Option<usize>,
    pub nofile: u64,
    /// Flags each worker process gets (host, port, system, threads).
    pub worker_args: Vec<String>,
    pub code: i64,
    pub connect_inflight: usize,
    pub read_interval: Duration,
    /// `--server-log`: the server's stderr, scanned for WARN/ERROR and slow-consumer lines.
    pub server_log: Option<std::path::PathBuf>,
}

impl Ctx {
    pub(crate) fn procs_for(&self, conns: usize) -> usize {
        self.procs
            .unwrap_or_else(|| fleet::procs_for(conns, self.nofile))
            .max(1)
    }

    /// Registers the system and opens `conns` receivers (see [`Ctx::open`]); the report gets a
    /// line on how that went.
    pub(crate) async fn start(
        &self,
        r: &mut Report,
        conns: usize,
        stall_pct: u32,
    ) -> anyhow::Result<(Load, Opened)> {
        http::register(&self.api_target).await?;
        let (load, opened, elapsed) = self.open(conns, stall_pct).await?;
        opened_line(r, conns, &opened, elapsed, self.procs_for(conns));
        Ok((load, opened))
    }

    /// Opens `conns` receivers, `stall_pct` percent of them stallable (see [`Load::stall`]).
    pub(crate) async fn open(
        &self,
        conns: usize,
        stall_pct: u32,
    ) -> anyhow::Result<(Load, Opened, Duration)> {
        let spec = Spec {
            conns,
            conn_offset: sys::run_base() * sys::CONNS_PER_SOURCE,
            code: self.code,
            connect_inflight: self.connect_inflight,
            read_interval: self.read_interval,
            stall_pct,
        };
        let procs = self.procs_for(conns);
        let t0 = Instant::now();
        let (load, opened) = Load::open(
            self.shards.clone(),
            &self.target,
            &spec,
            procs,
            &self.worker_args,
        )
        .await?;
        let elapsed = t0.elapsed();
        if opened.failed > 0 {
            eprintln!(
                "warning: {} of {conns} connections failed; first error: {}",
                opened.failed,
                opened.first_error.as_deref().unwrap_or("?")
            );
        }
        if opened.ids.is_empty() && conns > 0 {
            bail!(
                "no connection could be opened: {}",
                opened.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok((load, opened, elapsed))
    }
}

/// One scenario's results: a JSON object and the human lines.
pub struct Report {
    json: Map<String, Value>,
    lines: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenario: &str) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), scenario.into());
        Report {
            json,
            lines: vec![format!("== {scenario}")],
        }
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.into(), value.into());
    }

    pub(crate) fn line(&mut self, s: String) {
        self.lines.push(s);
    }

    pub(crate) fn latency(&mut self, prefix: &str, l: &Latency) {
        self.set(&format!("{prefix}p50_ms"), round3(l.p50_ms));
        self.set(&format!("{prefix}p99_ms"), round3(l.p99_ms));
        self.set(&format!("{prefix}p999_ms"), round3(l.p999_ms));
        self.set(&format!("{prefix}max_ms"), round3(l.max_ms));
    }

    /// The load generator's CPU time over the whole run: getrusage of itself and of its
    /// (waited-for) worker processes.
    pub fn total_cpu(&mut self, s: f64) {
        self.set("loadgen_cpu_total_s", round3(s));
        self.line(format!(
            "load generator CPU over the whole run (self + worker processes): {s:.2} s"
        ));
    }

    /// The WARN and ERROR lines of the server's log (its stderr) so far.
    pub fn server_log(&mut self, path: &std::path::Path) {
        match crate::serverlog::scan(path) {
            Ok(log) => {
                self.set("server_warn_lines", log.warn);
                self.set("server_error_lines", log.error);
                self.line(format!(
                    "server log: {} WARN lines ({} of them slow consumers), {} ERROR lines",
                    log.warn,
                    log.slow.len(),
                    log.error
                ));
            }
            Err(e) => self.line(format!(
                "warning: reading the server log {}: {e}",
                path.display()
            )),
        }
    }

    /// Human summary on stdout; with `json`, the summary goes to stderr and stdout gets exactly
    /// one JSON line (what `perf/run.sh` reads).
    pub fn print(&self, json: bool) {
        let text = self.lines.join("\n");
        if json {
            eprintln!("{text}");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", Value::Object(self.json.clone()));
        } else {
            println!("{text}");
        }
    }
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(crate) fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        (n as f64 / d.as_secs_f64()).round()
    }
}

/// `1234567` -> `1,234,567`.
pub(crate) fn grouped(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// Start of a measured window.
pub(crate) struct Window {
    pub t0: Instant,
    pub t0_ns: u64,
    server_cpu: Option<u64>,
    pub snap: Snapshot,
}

/// What happened in a window.
pub(crate) struct Measured {
    pub wall: Duration,
    pub delta: Snapshot,
    pub server_cpu_ns: Option<u64>,
    pub loadgen_cpu_ns: u64,
}

impl Window {
    pub async fn start(load: &mut Load, server: Server) -> anyhow::Result<Window> {
        Ok(Window {
            snap: load.snapshot().await?,
            server_cpu: server.cpu_ns(),
            t0: Instant::now(),
            t0_ns: sys::now_ns(),
        })
    }

    pub async fn end(&self, load: &mut Load, server: Server) -> anyhow::Result<Measured> {
        let server_cpu = server.cpu_ns();
        let wall = self.t0.elapsed();
        let snap = load.snapshot().await?;
        Ok(Measured {
            wall,
            delta: snap.since(&self.snap),
            server_cpu_ns: server_cpu
                .zip(self.server_cpu)
                .map(|(b, a)| b.saturating_sub(a)),
            loadgen_cpu_ns: snap.cpu_ns.saturating_sub(self.snap.cpu_ns),
        })
    }

    /// From the window start to the latest delivery (the sending time if nothing arrived).
    fn delivery_span(&self, m: &Measured, fallback: Duration) -> Duration {
        if m.delta.delivered > 0 && m.delta.last_delivery_ns > self.t0_ns {
            Duration::from_nanos(m.delta.last_delivery_ns - self.t0_ns)
        } else {
            fallback
        }
    }
}

/// Server and load-generator CPU over the window; `ops` operations of kind `op`. Keys start
/// with `prefix`.
pub(crate) fn cpu_figures(r: &mut Report, prefix: &str, m: &Measured, ops: u64, op: &str) {
    let key = |k: &str| format!("{prefix}{k}");
    let wall = m.wall.as_secs_f64().max(1e-9);
    let lg = m.loadgen_cpu_ns as f64 / 1e9;
    r.set(&key("loadgen_cpu_s"), round3(lg));
    r.set(&key("loadgen_cpu_pct"), (lg / wall * 100.0).round());
    r.set(&key("op"), op);
    let mut line = format!(
        "load generator CPU {:.2} s over {:.2} s ({:.0}% of one core)",
        lg,
        wall,
        lg / wall * 100.0
    );
    if let Some(ns) = m.server_cpu_ns {
        let s = ns as f64 / 1e9;
        r.set(&key("server_cpu_s"), round3(s));
        r.set(&key("server_cpu_pct"), (s / wall * 100.0).round());
        if ops > 0 {
            let us = ns as f64 / 1e3 / ops as f64;
            r.set(&key("server_cpu_us_per_op"), round3(us));
            line = format!(
                "server CPU {s:.2} s ({:.0}% of one core), {} us per {op}; {line}",
                s / wall * 100.0,
                round3(us)
            );
        }
    }
    r.line(line);
}

/// Polls until `field(snapshot) - field(base) >= want`, or it stopped moving for `quiet`, or
/// `cap` passed. Returns the last snapshot and whether `want` was reached.
pub(crate) async fn wait_for(
    load: &mut Load,
    base: &Snapshot,
    field: fn(&Snapshot) -> u64,
    want: u64,
    quiet: Duration,
    cap: Duration,
) -> anyhow::Result<(Snapshot, bool)> {
    let start = Instant::now();
    let mut last = u64::MAX;
    let mut moved = Instant::now();
    let poll = if load.workers.is_some() {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(10)
    };
    loop {
        let s = load.snapshot().await?;
        let got = field(&s).saturating_sub(field(base));
        if got >= want {
            return Ok((s, true));
        }
        if got != last {
            last = got;
            moved = Instant::now();
        }
        if moved.elapsed() >= quiet || start.elapsed() >= cap {
            return Ok((s, false));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Holds the first failure message seen by any sender.
#[derive(Clone, Default)]
pub(crate) struct FirstError(Arc<Mutex<Option<String>>>);

impl FirstError {
    pub fn note(&self, e: impl FnOnce() -> String) {
        let mut g = self.0.lock().expect("not poisoned");
        if g.is_none() {
            *g = Some(e());
        }
    }
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// Paces one of `workers` senders so that together they send `rate` requests per second:
/// sender `w` sends its k-th request at `start + (k * workers + w) / rate`.
struct Pacer {
    start: tokio::time::Instant,
    period: Duration,
    offset: Duration,
    k: u32,
}

impl Pacer {
    fn new(rate: f64, workers: usize, w: usize) -> Pacer {
        Pacer {
            start: tokio::time::Instant::now(),
            period: Duration::from_secs_f64(workers as f64 / rate),
            offset: Duration::from_secs_f64(w as f64 / rate),
            k: 0,
        }
    }

    async fn wait(&mut self) {
        let at = self.start + self.offset + self.period * self.k;
        self.k += 1;
        tokio::time::sleep_until(at).await;
    }
}

/// xorshift64*: a cheap per-sender generator for picking clients.
pub(crate) struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n.max(1)
    }
}

/// Appends the fields every push carries, `data` stamped with the time now (last, just
/// before the request is written), then `pad` bytes of filler in `data` after the stamp (the
/// receivers read only the digits after the `t`).
fn push_tail(body: &mut Vec<u8>, code: i64, pad: usize) {
    body.push(b',');
    push_fields(body, code, pad);
}

/// The push fields with the send time stamped into `data`, and the closing brace.
fn push_fields(body: &mut Vec<u8>, code: i64, pad: usize) {
    push_fields_at(body, code, pad, sys::now_ns());
}

/// The push fields with `stamp` in `data`, and the closing brace.
fn push_fields_at(body: &mut Vec<u8>, code: i64, pad: usize, stamp: u64) {
    let _ = write!(
        body,
        "\"sendUserId\":\"perf\",\"code\":{code},\"msg\":\"perf\",\"data\":\"t{stamp}"
    );
    body.resize(body.len() + pad, b'.');
    body.extend_from_slice(b"\"}");
}

/// Body maker of a push to a random one of `targets` (JSON string literals), named by `key`:
/// `groupName` for `send_to_group`, `clientId` for `send_to_client`.
pub(crate) fn random_push(
    key: &'static str,
    targets: Arc<Vec<String>>,
    code: i64,
    pad: usize,
) -> impl Fn(&mut Vec<u8>, &mut Rng) + Clone + Send + 'static {
    move |body, rng| {
        let _ = write!(body, "{{\"{key}\":{}", targets[rng.below(targets.len())]);
        push_tail(body, code, pad);
    }
}

/// The senders of a window: `workers` loops posting to `path` until `duration` is over, each
/// with its own HTTP client, spread over the shards. `make` writes one request body. Each
/// sender's task ends with the number of its successful requests.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_senders<M>(
    ctx: &Ctx,
    workers: usize,
    close: bool,
    path: &'static str,
    duration: Duration,
    rate: Option<f64>,
    errors: &FirstError,
    make: M,
) -> Vec<tokio::task::JoinHandle<u64>>
where
    M: Fn(&mut Vec<u8>, &mut Rng) + Clone + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + duration;
    (0..workers)
        .map(|w| {
            let target = ctx.api_target.clone();
            let make = make.clone();
            let errors = errors.clone();
            ctx.shards.spawn(w, move |stats: Arc<Stats>| async move {
                let mut client =
                    HttpClient::new(target, close, sys::http_source(sys::run_base() + w));
                let mut pacer = rate.map(|r| Pacer::new(r, workers, w));
                let mut rng = Rng::new(w as u64 + 1 + sys::now_ns());
                let mut body = Vec::with_capacity(256);
                let mut ok = 0u64;
                while tokio::time::Instant::now() < deadline {
                    if let Some(p) = &mut pacer {
                        p.wait().await;
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                    body.clear();
                    make(&mut body, &mut rng);
                    let t0 = Instant::now();
                    match client.post(path, &body).await {
                        Ok((status, resp)) if api_ok(status, resp) => {
                            ok += 1;
                            stats.record_request(t0.elapsed().as_nanos() as u64);
                        }
                        Ok((status, resp)) => {
                            bump(&stats.requests_failed, 1);
                            errors.note(|| {
                                format!("{path}: {status} {}", String::from_utf8_lossy(resp))
                            });
                        }
                        Err(e) => {
                            bump(&stats.requests_failed, 1);
                            errors.note(|| format!("{path}: {e:#}"));
                            // Do not spin on a dead server.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                ok
            })
        })
        .collect()
}

pub(crate) fn opened_line(
    r: &mut Report,
    conns: usize,
    opened: &Opened,
    elapsed: Duration,
    procs: usize,
) {
    r.set("conns", conns);
    r.set("opened", opened.ids.len());
    r.set("connect_failed", opened.failed);
    r.set("procs", procs);
    r.line(format!(
        "{} of {conns} WebSockets open in {:.2} s ({} /s) from {procs} process(es){}",
        opened.ids.len(),
        elapsed.as_secs_f64(),
        grouped(rate(opened.ids.len() as u64, elapsed)),
        if opened.failed > 0 {
            format!(", {} failed", opened.failed)
        } else {
            String::new()
        }
    ));
}

/// `idle`: N connections, the server's RSS before and after.
pub async fn idle(
    ctx: &Ctx,
    conns: usize,
    settle: Duration,
    hold: Duration,
) -> anyhow::Result<Report> {
    let mut r = Report::new("idle");
    http::register(&ctx.api_target).await?;
    let rss_before = ctx.server.rss();
    let cpu_before = ctx.server.cpu_ns();
    let lg_before = ctx.shards.snapshot().cpu_ns;
    let (mut load, opened, elapsed) = ctx.open(conns, 0).await?;
    let cpu_after = ctx.server.cpu_ns();
    let procs = ctx.procs_for(conns);
    opened_line(&mut r, conns, &opened, elapsed, procs);
    r.set("connect_s", round3(elapsed.as_secs_f64()));
    r.set("connects_per_s", rate(opened.ids.len() as u64, elapsed));
    tokio::time::sleep(settle).await;
    let rss_after = ctx.server.rss();
    let snap = load.snapshot().await?;
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        let per = (b as f64 - a as f64) / opened.ids.len().max(1) as f64;
        r.set("rss_before", a);
        r.set("rss_after", b);
        r.set("rss_per_conn", per.round());
        r.line(format!(
            "server VmRSS {} -> {} bytes: {} bytes per connection (after {:.1} s settling)",
            grouped(a as f64),
            grouped(b as f64),
            grouped(per),
            settle.as_secs_f64()
        ));
    } else {
        r.line("server VmRSS: not measured (give --server-pid)".into());
    }
    if snap.closed > 0 {
        r.line(format!(
            "{} connections were closed by the server",
            snap.closed
        ));
    }
    r.set("closed", snap.closed);
    let m = Measured {
        wall: elapsed,
        delta: Snapshot::default(),
        server_cpu_ns: cpu_after.zip(cpu_before).map(|(b, a)| b.saturating_sub(a)),
        loadgen_cpu_ns: snap.cpu_ns.saturating_sub(lg_before),
    };
    cpu_figures(&mut r, "", &m, opened.ids.len() as u64, "connection");
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
        let end = load.snapshot().await?;
        r.set("pings", end.pings);
        r.set("closed", end.closed);
        r.line(format!(
            "held {:.0} s: {} server pings answered, {} connections closed by the server",
            hold.as_secs_f64(),
            end.pings,
            end.closed
        ));
    }
    load.stop();
    Ok(r)
}

/// `connect`: `total` connections, `inflight` handshakes at a time, each closed after its
/// welcome frame.
pub async fn connect(
    ctx: &Ctx,
    total: usize,
    inflight: usize,
    max: Duration,
) -> anyhow::Result<Report> {
    let mut r = Report::new("connect");
    http::register(&ctx.api_target).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let errors = FirstError::default();
    let before = ctx.shards.snapshot();
    let server_cpu = ctx.server.cpu_ns();
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + max;
    let base = sys::run_base() * sys::CONNS_PER_SOURCE;
    let loops: Vec<_> = (0..inflight.max(1))
        .map(|i| {
            let next = next.clone();
            let target = ctx.target.clone();
            let errors = errors.clone();
            ctx.shards.spawn(i, move |stats: Arc<Stats>| async move {
                let close = ws::close_frame();
                loop {
                    let idx = next.fetch_add(1, Ordering::Relaxed);
                    if idx >= total || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    let res = tokio::time::timeout(
                        fleet::CONNECT_TIMEOUT,
                        ws::open(&target, sys::ws_source(base + idx)),
                    )
                    .await;
                    match res {
                        Ok(Ok(conn)) => {
                            stats.record_request(t.elapsed().as_nanos() as u64);
                            // Say goodbye and drop: the slot is free for the next handshake.
                            let _ = conn.stream.try_write(&close);
                        }
                        Ok(Err(e)) => {
                            bump(&stats.requests_failed, 1);
                            errors.note(|| format!("{e:#}"));
                        }
                        Err(_) => {
                            bump(&stats.requests_failed, 1);
                            errors.note(|| "handshake timed out".into());
                        }
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await?;
    }
    let wall = t0.elapsed();
    let after = ctx.shards.snapshot();
    let m = Measured {
        wall,
        delta: after.since(&before),
        server_cpu_ns: ctx
            .server
            .cpu_ns()
            .zip(server_cpu)
            .map(|(b, a)| b.saturating_sub(a)),
        loadgen_cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
    };
    let ok = m.delta.requests_ok;
    let hs = Latency::of(&m.delta.request_hist);
    r.set("total", total);
    r.set("inflight", inflight);
    r.set("handshakes", ok);
    r.set("failed", m.delta.requests_failed);
    r.set("elapsed_s", round3(wall.as_secs_f64()));
    r.set("handshakes_per_s", rate(ok, wall));
    r.latency("handshake_", &hs);
    r.line(format!(
        "{} handshakes in {:.2} s: {} handshakes/s with {inflight} in flight; {} failed",
        ok,
        wall.as_secs_f64(),
        grouped(rate(ok, wall)),
        m.delta.requests_failed
    ));
    r.line(format!("connect to welcome frame: {}", hs.human()));
    if let Some(e) = errors.get() {
        r.line(format!("first error: {e}"));
        r.set("first_error", e);
    }
    cpu_figures(&mut r, "", &m, ok, "handshake");
    Ok(r)
}

/// How groups are built: `bind_workers` binds at a time over keep-alive HTTP, in chunks of
/// `bind_chunk`, each chunk's presence flood drained before the next.
pub struct BindArgs {
    pub bind_workers: usize,
    pub bind_chunk: usize,
    /// Give up when building takes longer.
    pub presence_cap: Duration,
    /// A presence stream that moves nothing for this long counts as drained.
    pub quiet: Duration,
}

/// Groups built by [`build_groups`].
pub struct Groups {
    /// Each group's name as a JSON string literal.
    pub names: Vec<String>,
    /// Each group's members by the server's own count (`get_online_list`).
    pub sizes: Vec<u64>,
}

/// Presence (1001) frames owed once the first `c` members are bound, bound group after group
/// with `group_size` members each: the k-th bind to a group pushes a 1001 to all k members.
fn presence_after(c: u64, group_size: u64) -> u64 {
    let (full, k) = (c / group_size, c % group_size);
    full * group_size * (group_size + 1) / 2 + k * (k + 1) / 2
}

/// Binds `members` (JSON string literals) in order, member `i` to group `i / group_size` (the
/// last group may be smaller), and reports what it took. Every bind pushes a 1001 to every
/// member already bound and to the new one, so a group of k costs k(k+1)/2 frames. Binding in
/// chunks and waiting for each chunk's flood keeps every member's server-side queue below the
/// chunk size (`QueueFrames` cuts slow consumers).
pub(crate) async fn build_groups(
    ctx: &Ctx,
    load: &mut Load,
    r: &mut Report,
    members: Vec<String>,
    group_size: usize,
    a: &BindArgs,
) -> anyhow::Result<Groups> {
    let m = members.len();
    let group_size = group_size.clamp(1, m.max(1));
    let prefix = format!("perf-{}-{}", std::process::id(), sys::now_ns());
    let names: Arc<Vec<String>> = Arc::new(
        (0..m.div_ceil(group_size))
            .map(|g| json_str(&format!("{prefix}-{g}")))
            .collect(),
    );
    let total_presence = presence_after(m as u64, group_size as u64);
    let base = load.snapshot().await?;
    let t_bind = Instant::now();
    let server_cpu0 = ctx.server.cpu_ns();
    let members = Arc::new(members);
    let errors = FirstError::default();
    let mut binds_ok = 0u64;
    let mut presence_complete = true;
    let mut progress = Instant::now();
    let chunk = a.bind_chunk.max(1);
    for chunk_start in (0..m).step_by(chunk) {
        let chunk_end = (chunk_start + chunk).min(m);
        let next = Arc::new(AtomicUsize::new(chunk_start));
        let binders: Vec<_> = (0..a.bind_workers.max(1))
            .map(|w| {
                let next = next.clone();
                let members = members.clone();
                let names = names.clone();
                let target = ctx.api_target.clone();
                let errors = errors.clone();
                ctx.shards.spawn(w, move |_stats| async move {
                    // A bind is answered after its presence push is queued to every member:
                    // late in a big group, behind a flood, that takes seconds.
                    let mut client = HttpClient::new(target, false, sys::http_source(sys::run_base() + w))
                        .with_timeout(Duration::from_secs(120));
                    let mut ok = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunk_end {
                            break;
                        }
                        let body = format!(
                            "{{\"clientId\":{},\"groupName\":{},\"userId\":\"u{i}\",\"extend\":\"perf\"}}",
                            members[i],
                            names[i / group_size]
                        );
                        match client.post("/api/bind_to_group", body.as_bytes()).await {
                            Ok((s, b)) if api_ok(s, b) => ok += 1,
                            Ok((s, b)) => errors.note(|| {
                                format!("bind_to_group: {s} {}", String::from_utf8_lossy(b))
                            }),
                            Err(e) => errors.note(|| format!("bind_to_group: {e:#}")),
                        }
                    }
                    ok
                })
            })
            .collect();
        for b in binders {
            binds_ok += b.await?;
        }
        // Every bind sent so far counts: one whose answer failed may still have been applied.
        let want = presence_after(chunk_end as u64, group_size as u64);
        let left = a.presence_cap.saturating_sub(t_bind.elapsed());
        let (snap, reached) = wait_for(load, &base, |s| s.presence, want, a.quiet, left).await?;
        if progress.elapsed() >= Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!(
                "groups: {chunk_end} of {m} binds sent, {} of {total_presence} presence frames, {:.0} s",
                snap.presence - base.presence,
                t_bind.elapsed().as_secs_f64()
            );
        }
        if !reached {
            presence_complete = false;
            if t_bind.elapsed() >= a.presence_cap {
                bail!(
                    "building the groups took over {:?} (--presence-cap); {chunk_end} binds sent",
                    a.presence_cap
                );
            }
        }
    }
    // Concurrent binds to one group on different server cores may each notify the other (both
    // are members when the other's presence fans out), so the count above is a floor: let the
    // stream go quiet before anything is measured.
    wait_for(
        load,
        &base,
        |s| s.presence,
        u64::MAX,
        Duration::from_millis(500),
        a.quiet,
    )
    .await?;
    let bind_wall = t_bind.elapsed();
    // The server's own count of each group decides how many deliveries a push owes.
    let mut sizes = Vec::with_capacity(names.len());
    let mut client = HttpClient::new(ctx.api_target.clone(), false, sys::http_source(0))
        .with_timeout(Duration::from_secs(60));
    for (g, name) in names.iter().enumerate() {
        let n = match online_count(&mut client, name).await {
            Ok(n) => n,
            Err(e) => {
                let planned = (m - g * group_size).min(group_size) as u64;
                r.line(format!(
                    "warning: get_online_list failed ({e:#}); taking {planned} members"
                ));
                planned
            }
        };
        sizes.push(n);
    }
    let bound: u64 = sizes.iter().sum();
    let presence = load.snapshot().await?.presence - base.presence;
    let want: u64 = sizes.iter().map(|b| b * (b + 1) / 2).sum();
    let bind_cpu = ctx
        .server
        .cpu_ns()
        .zip(server_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    r.set("members", m);
    r.set("groups", names.len());
    r.set("bound", bound);
    r.set("presence_frames", presence);
    r.set("presence_expected", want);
    r.set("bind_s", round3(bind_wall.as_secs_f64()));
    r.set("presence_per_s", rate(presence, bind_wall));
    r.line(format!(
        "{} built in {:.2} s: {} of {} presence (1001) frames drained, {} frames/s{}",
        if names.len() == 1 {
            format!("group of {bound}")
        } else {
            format!(
                "{} groups of up to {group_size} ({bound} members)",
                names.len()
            )
        },
        bind_wall.as_secs_f64(),
        grouped(presence as f64),
        grouped(want as f64),
        grouped(rate(presence, bind_wall)),
        bind_cpu.map_or(String::new(), |ns| format!(
            ", server CPU {:.3} us per frame",
            ns as f64 / 1e3 / presence.max(1) as f64
        ))
    ));
    if !presence_complete {
        r.line(format!(
            "warning: the presence stream went quiet {:?} before every 1001 frame arrived",
            a.quiet
        ));
    }
    if binds_ok < m as u64 {
        r.line(format!(
            "warning: {} of {m} binds got no success answer ({}); the groups have {bound} members",
            m as u64 - binds_ok,
            errors.get().unwrap_or_default()
        ));
    }
    Ok(Groups {
        names: Arc::unwrap_or_clone(names),
        sizes,
    })
}

/// Members of `group` (a JSON string literal) by the server's `get_online_list`.
pub(crate) async fn online_count(client: &mut HttpClient, group: &str) -> anyhow::Result<u64> {
    let body = format!("{{\"groupName\":{group}}}");
    let (status, resp) = client.post("/api/get_online_list", body.as_bytes()).await?;
    let v: Value = serde_json::from_slice(resp)?;
    match v.pointer("/data/count").and_then(Value::as_u64) {
        Some(n) if status == 200 => Ok(n),
        _ => bail!("get_online_list answered {status}: {v}"),
    }
}

/// How a window of pushes is sent.
#[derive(Clone)]
pub struct PushArgs {
    /// Seconds of sending.
    pub duration: Duration,
    /// Requests outstanding (one keep-alive connection each).
    pub inflight: usize,
    /// Requests per second in all (default: as fast as `inflight` allows).
    pub rate: Option<f64>,
    /// A stream that delivers nothing for this long counts as drained.
    pub quiet: Duration,
    /// Bytes appended to each push's `data` after the stamp (bigger frames).
    pub pad: usize,
}

/// What one window of `send_to_group` pushes gave.
pub(crate) struct PushWindow {
    pub w: Window,
    pub m: Measured,
    pub send_wall: Duration,
    pub expected: u64,
    pub complete: bool,
    inflight: usize,
    rate: Option<f64>,
}

/// One window of `send_to_group` to `group` (a JSON string literal), each push owing `owed`
/// deliveries: the senders run for the duration, then the drain waits until every delivery
/// owed arrived or the stream went quiet.
pub(crate) async fn group_window(
    ctx: &Ctx,
    load: &mut Load,
    group: &str,
    owed: u64,
    a: &PushArgs,
    errors: &FirstError,
) -> anyhow::Result<PushWindow> {
    let w = Window::start(load, ctx.server).await?;
    let make = random_push(
        "groupName",
        Arc::new(vec![group.to_string()]),
        ctx.code,
        a.pad,
    );
    let senders = spawn_senders(
        ctx,
        a.inflight.max(1),
        false,
        "/api/send_to_group",
        a.duration,
        a.rate,
        errors,
        make,
    );
    for s in senders {
        s.await?;
    }
    let send_wall = w.t0.elapsed();
    let sent = load.snapshot().await?.since(&w.snap);
    let expected = sent.requests_ok * owed;
    let (_, complete) = wait_for(
        load,
        &w.snap,
        |s| s.delivered,
        expected,
        a.quiet,
        a.duration + Duration::from_secs(60),
    )
    .await?;
    let m = w.end(load, ctx.server).await?;
    Ok(PushWindow {
        w,
        m,
        send_wall,
        expected,
        complete,
        inflight: a.inflight,
        rate: a.rate,
    })
}

/// One window of `send_to_group` to `group` in the regime where a push is in flight until
/// every one of its `owed` deliveries has been received: each of `inflight` senders posts a
/// push, waits for its answer, then for its last delivery (see [`crate::receipts`]), then
/// posts the next. A push not fully received within `quiet` is given up (counted in
/// `receipts_timed_out`).
pub(crate) async fn received_window(
    ctx: &Ctx,
    load: &mut Load,
    group: &str,
    owed: u64,
    a: &PushArgs,
    errors: &FirstError,
) -> anyhow::Result<(PushWindow, u64)> {
    if load.workers.is_some() {
        bail!("the received regime needs the receivers in this process (--procs 1)");
    }
    let workers = a.inflight.max(1);
    let slots = crate::receipts::slots(workers);
    if slots.len() < workers {
        bail!("receipt slots were made for {} senders", slots.len());
    }
    let timed_out = Arc::new(AtomicUsize::new(0));
    let w = Window::start(load, ctx.server).await?;
    let deadline = tokio::time::Instant::now() + a.duration;
    let (code, pad, quiet, rate) = (ctx.code, a.pad, a.quiet, a.rate);
    let senders: Vec<_> = (0..workers)
        .map(|i| {
            let target = ctx.api_target.clone();
            let errors = errors.clone();
            let group = group.to_string();
            let timed_out = timed_out.clone();
            ctx.shards.spawn(i, move |stats: Arc<Stats>| async move {
                let slot = &crate::receipts::slots(workers)[i];
                let mut client =
                    HttpClient::new(target, false, sys::http_source(sys::run_base() + i));
                let mut pacer = rate.map(|r| Pacer::new(r, workers, i));
                let mut body = Vec::with_capacity(256);
                while tokio::time::Instant::now() < deadline {
                    if let Some(p) = &mut pacer {
                        p.wait().await;
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                    body.clear();
                    let _ = write!(body, "{{\"groupName\":{group},");
                    let stamp = sys::now_ns();
                    push_fields_at(&mut body, code, pad, stamp);
                    slot.arm(stamp, owed);
                    let t0 = Instant::now();
                    match client.post("/api/send_to_group", &body).await {
                        Ok((status, resp)) if api_ok(status, resp) => {
                            stats.record_request(t0.elapsed().as_nanos() as u64);
                        }
                        Ok((status, resp)) => {
                            slot.disarm();
                            bump(&stats.requests_failed, 1);
                            errors.note(|| {
                                format!("send_to_group: {status} {}", String::from_utf8_lossy(resp))
                            });
                            continue;
                        }
                        Err(e) => {
                            slot.disarm();
                            bump(&stats.requests_failed, 1);
                            errors.note(|| format!("send_to_group: {e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    if tokio::time::timeout(quiet, slot.received(stamp))
                        .await
                        .is_err()
                    {
                        slot.disarm();
                        timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await?;
    }
    let send_wall = w.t0.elapsed();
    let sent = load.snapshot().await?.since(&w.snap);
    let expected = sent.requests_ok * owed;
    let (_, complete) = wait_for(
        load,
        &w.snap,
        |s| s.delivered,
        expected,
        a.quiet,
        Duration::from_secs(60),
    )
    .await?;
    let m = w.end(load, ctx.server).await?;
    let pw = PushWindow {
        w,
        m,
        send_wall,
        expected,
        complete,
        inflight: a.inflight,
        rate: a.rate,
    };
    Ok((pw, timed_out.load(Ordering::Relaxed) as u64))
}

impl PushWindow {
    /// Extends this window by `next`, which followed it with the same settings.
    pub fn then(&mut self, next: PushWindow) {
        self.m.delta.add(&next.m.delta);
        self.m.wall += next.m.wall;
        self.m.server_cpu_ns = self
            .m
            .server_cpu_ns
            .zip(next.m.server_cpu_ns)
            .map(|(a, b)| a + b);
        self.m.loadgen_cpu_ns += next.m.loadgen_cpu_ns;
        self.send_wall += next.send_wall;
        self.expected += next.expected;
        self.complete &= next.complete;
    }

    /// Push-to-receipt percentiles of the window.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.m.delta.delivery_hist)
    }

    /// The window's figures as keys starting with `prefix`, and their lines.
    pub fn report(&self, r: &mut Report, prefix: &str, errors: &FirstError) {
        let d = &self.m.delta;
        let span = self.w.delivery_span(&self.m, self.send_wall);
        let lat = self.latency();
        let api = Latency::of(&d.request_hist);
        let key = |k: &str| format!("{prefix}{k}");
        r.set(&key("duration_s"), round3(self.send_wall.as_secs_f64()));
        r.set(&key("inflight"), self.inflight);
        if let Some(rt) = self.rate {
            r.set(&key("rate"), rt);
        }
        r.set(&key("pushes"), d.requests_ok);
        r.set(&key("push_failed"), d.requests_failed);
        r.set(&key("deliveries"), d.delivered);
        r.set(&key("deliveries_expected"), self.expected);
        r.set(&key("pushes_per_s"), rate(d.requests_ok, self.send_wall));
        r.set(&key("deliveries_per_s"), rate(d.delivered, span));
        r.set(&key("delivery_span_s"), round3(span.as_secs_f64()));
        r.set(&key("closed"), d.closed);
        r.latency(prefix, &lat);
        r.latency(&key("api_"), &api);
        r.line(format!(
            "{} pushes in {:.2} s ({} /s, {} in flight{}) -> {} of {} deliveries in {:.2} s: {} deliveries/s",
            grouped(d.requests_ok as f64),
            self.send_wall.as_secs_f64(),
            grouped(rate(d.requests_ok, self.send_wall)),
            self.inflight,
            self.rate.map_or(String::new(), |r| format!(", paced at {r} /s")),
            grouped(d.delivered as f64),
            grouped(self.expected as f64),
            span.as_secs_f64(),
            grouped(rate(d.delivered, span)),
        ));
        r.line(format!("push to receipt: {}", lat.human()));
        r.line(format!("send_to_group round trip: {}", api.human()));
        if !self.complete {
            r.line(format!(
                "warning: {} deliveries missing when the stream went quiet",
                self.expected.saturating_sub(d.delivered)
            ));
        }
        if d.closed > 0 {
            r.line(format!(
                "warning: the server closed {} connections (slow consumer?)",
                d.closed
            ));
        }
        if d.requests_failed > 0 {
            r.line(format!(
                "warning: {} pushes failed: {}",
                d.requests_failed,
                errors.get().unwrap_or_default()
            ));
        }
    }
}

/// When a `fanout` push stops counting against `--inflight`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Regime {
    /// When its HTTP answer arrives (before or while it is delivered).
    Answer,
    /// When every member has received it.
    Received,
    /// One window of each, on the same group: `answer` first.
    Both,
}

impl Regime {
    pub fn name(self) -> &'static str {
        match self {
            Regime::Answer => "answer",
            Regime::Received => "received",
            Regime::Both => "both",
        }
    }
}

/// Flags of `fanout`.
pub struct FanoutArgs {
    pub conns: usize,
    pub members: usize,
    pub regime: Regime,
    pub push: PushArgs,
    pub bind: BindArgs,
}

/// `fanout`: `members` of `conns` connections in one group, `send_to_group` for the duration.
pub async fn fanout(ctx: &Ctx, a: &FanoutArgs) -> anyhow::Result<Report> {
    let mut r = Report::new("fanout");
    let (mut load, opened) = ctx.start(&mut r, a.conns, 0).await?;
    let n = opened.ids.len();
    let m = a.members.min(n);
    // Members spread evenly over the connections (so over source addresses and processes).
    let members: Vec<String> = (0..m)
        .map(|i| json_str(&opened.ids[i * n / m.max(1)]))
        .collect();
    if !ctx.read_interval.is_zero() {
        r.set("read_interval_ms", ctx.read_interval.as_secs_f64() * 1e3);
    }
    if m == 0 {
        bail!("no members to bind (--members 0)");
    }
    let groups = build_groups(ctx, &mut load, &mut r, members, m, &a.bind).await?;
    let (group, owed) = (&groups.names[0], groups.sizes[0]);
    r.set("regime", a.regime.name());
    if a.regime != Regime::Received {
        let errors = FirstError::default();
        let pw = group_window(ctx, &mut load, group, owed, &a.push, &errors).await?;
        r.line("-- regime: a push is done when its HTTP answer arrives".into());
        pw.report(&mut r, "", &errors);
        cpu_figures(&mut r, "", &pw.m, pw.m.delta.delivered, "delivery");
    }
    if a.regime != Regime::Answer {
        // Alone, the received regime's figures take the plain keys; after the answer
        // regime's, they start with `received_`.
        let prefix = if a.regime == Regime::Both {
            "received_"
        } else {
            ""
        };
        let errors = FirstError::default();
        let (pw, timed_out) =
            received_window(ctx, &mut load, group, owed, &a.push, &errors).await?;
        r.line("-- regime: a push is in flight until every member has received it".into());
        pw.report(&mut r, prefix, &errors);
        r.set(&format!("{prefix}receipts_timed_out"), timed_out);
        if timed_out > 0 {
            r.line(format!(
                "warning: {timed_out} pushes were not fully received within {:?}",
                a.push.quiet
            ));
        }
        cpu_figures(&mut r, prefix, &pw.m, pw.m.delta.delivered, "delivery");
    }
    load.stop();
    Ok(r)
}

/// Which API route a `unicast`-style run posts.
#[derive(Clone, Copy)]
pub enum PushRoute {
    /// `send_to_client` to a random client.
    Client,
    /// `send_to_clients` with this many consecutive clients from a random start.
    Clients(usize),
    /// `send_to_system`: every client receives every push.
    System,
}

/// Flags of `unicast`, `batch` and `system`.
pub struct UnicastArgs {
    pub clients: usize,
    pub workers: usize,
    pub duration: Duration,
    pub close: bool,
    pub rate: Option<f64>,
    pub send: PushRoute,
    pub quiet: Duration,
}

/// `unicast` (`send_to_client` to random clients) and `batch` (`send_to_clients` with
/// `ids_per_request` consecutive clients from a random start).
pub async fn unicast(ctx: &Ctx, a: &UnicastArgs) -> anyhow::Result<Report> {
    let (name, route) = match a.send {
        PushRoute::System => ("system", "send_to_system"),
        PushRoute::Clients(_) => ("batch", "send_to_clients"),
        PushRoute::Client => ("unicast", "send_to_client"),
    };
    let batch = matches!(a.send, PushRoute::Clients(_));
    let system = matches!(a.send, PushRoute::System);
    let mut r = Report::new(name);
    let (mut load, opened) = ctx.start(&mut r, a.clients, 0).await?;
    let ids: Arc<Vec<String>> = Arc::new(opened.ids.iter().map(|s| json_str(s)).collect());
    let per_request = match a.send {
        PushRoute::System => ids.len() as u64,
        PushRoute::Clients(k) => k.clamp(1, ids.len().max(1)) as u64,
        PushRoute::Client => 1,
    };
    let code = ctx.code;
    let errors = FirstError::default();
    let w = Window::start(&mut load, ctx.server).await?;
    let senders = if system {
        spawn_senders(
            ctx,
            a.workers,
            a.close,
            "/api/send_to_system",
            a.duration,
            a.rate,
            &errors,
            move |body, _rng| {
                body.push(b'{');
                push_fields(body, code, 0);
            },
        )
    } else if batch {
        let k = per_request as usize;
        let ids = ids.clone();
        spawn_senders(
            ctx,
            a.workers,
            a.close,
            "/api/send_to_clients",
            a.duration,
            a.rate,
            &errors,
            move |body, rng| {
                let start = rng.below(ids.len());
                body.extend_from_slice(b"{\"clientIds\":[");
                for j in 0..k {
                    if j > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(ids[(start + j) % ids.len()].as_bytes());
                }
                body.push(b']');
                push_tail(body, code, 0);
            },
        )
    } else {
        spawn_senders(
            ctx,
            a.workers,
            a.close,
            "/api/send_to_client",
            a.duration,
            a.rate,
            &errors,
            random_push("clientId", ids.clone(), code, 0),
        )
    };
    for s in senders {
        s.await?;
    }
    let send_wall = w.t0.elapsed();
    let sent = load.snapshot().await?.since(&w.snap);
    let expected = sent.requests_ok * per_request;
    let (_, complete) = wait_for(
        &mut load,
        &w.snap,
        |s| s.delivered,
        expected,
        a.quiet,
        Duration::from_secs(30),
    )
    .await?;
    let mm = w.end(&mut load, ctx.server).await?;
    let d = &mm.delta;
    let span = w.delivery_span(&mm, send_wall);
    let lat = Latency::of(&d.delivery_hist);
    let api = Latency::of(&d.request_hist);
    r.set("clients", a.clients);
    r.set("workers", a.workers);
    r.set(
        "http",
        if a.close {
            "1.0-close"
        } else {
            "1.1-keepalive"
        },
    );
    if batch {
        r.set("ids_per_request", per_request);
    }
    if let Some(rt) = a.rate {
        r.set("rate", rt);
    }
    r.set("duration_s", round3(send_wall.as_secs_f64()));
    r.set("requests", d.requests_ok);
    r.set("requests_failed", d.requests_failed);
    r.set("requests_per_s", rate(d.requests_ok, send_wall));
    r.set("deliveries", d.delivered);
    r.set("deliveries_expected", expected);
    r.set("deliveries_per_s", rate(d.delivered, span));
    r.set("closed", d.closed);
    r.latency("", &lat);
    r.latency("api_", &api);
    r.line(format!(
        "{} {} requests in {:.2} s by {} workers ({}{}): {} requests/s; {} of {} deliveries, {} deliveries/s",
        grouped(d.requests_ok as f64),
        route,
        send_wall.as_secs_f64(),
        a.workers,
        if a.close { "HTTP/1.0, Connection: close" } else { "HTTP/1.1 keep-alive" },
        a.rate.map_or(String::new(), |r| format!(", paced at {r} /s")),
        grouped(rate(d.requests_ok, send_wall)),
        grouped(d.delivered as f64),
        grouped(expected as f64),
        grouped(rate(d.delivered, span)),
    ));
    r.line(format!("push to receipt: {}", lat.human()));
    r.line(format!("API round trip: {}", api.human()));
    if !complete {
        r.line(format!(
            "warning: {} deliveries missing when the stream went quiet",
            expected.saturating_sub(d.delivered)
        ));
    }
    if d.requests_failed > 0 {
        r.line(format!(
            "warning: {} requests failed: {}",
            d.requests_failed,
            errors.get().unwrap_or_default()
        ));
    }
    if d.closed > 0 {
        r.line(format!(
            "warning: the server closed {} connections",
            d.closed
        ));
    }
    let (ops, op) = if batch || system {
        (d.delivered, "delivery")
    } else {
        (d.requests_ok, "request")
    };
    cpu_figures(&mut r, "", &mm, ops, op);
    if batch || system {
        if let Some(ns) = mm.server_cpu_ns {
            let per_req = ns as f64 / 1e3 / d.requests_ok.max(1) as f64;
            r.set("server_cpu_us_per_request", round3(per_req));
        }
    }
    load.stop();
    Ok(r)
}

/// The JSON line of a failed run, so `perf/run.sh` sees why.
pub fn failure(scenario: &str, e: &anyhow::Error) -> Value {
    json!({"scenario": scenario, "error": format!("{e:#}")})
}

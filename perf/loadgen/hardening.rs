//! The scenarios of the hardening issue:
//! - `stalled`: a share of a group's members stop reading (sockets open) while pushes go on at
//!   a steady rate; the readers' push delay is compared with the windows before and after in
//!   the same run, and the server is watched dropping the stalled ones (its group count, its
//!   log).
//! - `soak`: many connections bound into groups, held for minutes under steady group and
//!   unicast pushes, sampled every few seconds (server RSS and fds, connections, deliveries).

use crate::http::{json_str, HttpClient};
use crate::scenarios::{
    build_groups, cpu_figures, group_window, grouped, online_count, random_push, rate, round3,
    spawn_senders, wait_for, BindArgs, Ctx, FirstError, PushArgs, Report,
};
use crate::serverlog::{self, LogScan};
use crate::stats::{ms, Latency, Snapshot};
use crate::sys;
use anyhow::{bail, Context as _};
use std::collections::HashSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of `stalled`.
pub struct StalledArgs {
    pub clients: usize,
    /// Percent of the members that stop reading.
    pub stalled_pct: u32,
    /// Seconds of the unpaced window that measures the maximum rate (when `push.rate` is unset).
    pub max_secs: Duration,
    /// The windows before, during and after the stall (each `push.duration`, the stalled one
    /// at least that); `push.rate` unset: half the measured maximum.
    pub push: PushArgs,
    pub bind: BindArgs,
    /// The longest the stalled window may go on past `push.duration` in [`STEP`]s, waiting for
    /// the server to drop every stalled client.
    pub stall_cap: Duration,
}

/// The stalled window goes on in steps of this until the server has dropped every stalled
/// client, then one more, so the drops and what follows them fall inside the window.
const STEP: Duration = Duration::from_secs(5);

/// The server's member count of one group, polled on a shard until stopped: when the server
/// dropped the stalled clients, seen from outside.
struct GroupWatch {
    stop: Arc<AtomicBool>,
    latest: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<(u64, u64)>>,
}

impl GroupWatch {
    fn start(ctx: &Ctx, group: &str, size: u64, every: Duration) -> GroupWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(AtomicU64::new(size));
        let (halt, last) = (stop.clone(), latest.clone());
        let (target, group) = (ctx.api_target.clone(), group.to_string());
        let task = ctx.shards.spawn(0, move |_stats| async move {
            let mut client = HttpClient::new(target, false, sys::http_source(0));
            let mut seen = Vec::new();
            while !halt.load(Relaxed) {
                if let Ok(n) = online_count(&mut client, &group).await {
                    last.store(n, Relaxed);
                    seen.push((sys::now_ns(), n));
                }
                tokio::time::sleep(every).await;
            }
            seen
        });
        GroupWatch { stop, latest, task }
    }

    fn latest(&self) -> u64 {
        self.latest.load(Relaxed)
    }

    /// Stops polling; returns every (time in ns since the epoch, member count) seen.
    async fn stop(self) -> anyhow::Result<Vec<(u64, u64)>> {
        self.stop.store(true, Relaxed);
        Ok(self.task.await?)
    }
}

/// Seconds from `from_ns` to `ns`.
fn secs_after(ns: u64, from_ns: u64) -> f64 {
    (ns as f64 - from_ns as f64) / 1e9
}

/// `stalled`: every client in one group; a baseline window with all of them reading, a window
/// at the same rate with `stalled_pct` percent of them not reading, and one more with nobody
/// stalled (those left after the server dropped the stalled ones).
pub async fn stalled(ctx: &Ctx, a: &StalledArgs) -> anyhow::Result<Report> {
    let mut r = Report::new("stalled");
    let (mut load, opened) = ctx.start(&mut r, a.clients, a.stalled_pct).await?;
    let members = opened.ids.iter().map(|id| json_str(id)).collect();
    let groups = build_groups(ctx, &mut load, &mut r, members, opened.ids.len(), &a.bind).await?;
    let (group, size) = (groups.names[0].as_str(), groups.sizes[0]);
    let stalled = opened.stallable.len() as u64;
    let readers = size.saturating_sub(stalled);
    r.set("stalled_pct", a.stalled_pct);
    r.set("stalled_clients", stalled);
    r.set("pad", a.push.pad);
    let watch = GroupWatch::start(ctx, group, size, Duration::from_millis(250));
    let errors = FirstError::default();

    let push_rate = match a.push.rate {
        Some(rt) => rt,
        None => {
            r.line(format!(
                "-- maximum: {} pushes in flight, unpaced, {:.0} s",
                a.push.inflight,
                a.max_secs.as_secs_f64()
            ));
            let max = PushArgs {
                duration: a.max_secs,
                rate: None,
                ..a.push.clone()
            };
            let pw = group_window(ctx, &mut load, group, size, &max, &errors).await?;
            pw.report(&mut r, "max_", &errors);
            (rate(pw.m.delta.requests_ok, pw.send_wall) / 2.0).max(1.0)
        }
    };
    r.set("rate", push_rate);
    let paced = PushArgs {
        rate: Some(push_rate),
        ..a.push.clone()
    };

    r.line(format!(
        "-- baseline: all {size} members reading, {push_rate} pushes/s"
    ));
    let base = group_window(ctx, &mut load, group, size, &paced, &errors).await?;
    base.report(&mut r, "baseline_", &errors);
    cpu_figures(
        &mut r,
        "baseline_",
        &base.m,
        base.m.delta.delivered,
        "delivery",
    );

    load.stall(true)?;
    let stall_ns = sys::now_ns();
    r.line(format!(
        "-- stalled: {stalled} of {size} members stop reading (sockets kept open), \
         {push_rate} pushes/s; the delays are the {readers} readers'"
    ));
    let stall_t = Instant::now();
    let mut st = group_window(ctx, &mut load, group, readers, &paced, &errors).await?;
    // How long a stalled client lasts depends on the bytes pushed to it (the kernel's socket
    // buffers, then the server's queue), so on the rate measured above: go on in steps until
    // the server has dropped them all (it cuts each a second after its 1008 when even the close
    // frame cannot be written), then one step more.
    let step = PushArgs {
        duration: STEP,
        ..paced.clone()
    };
    let mut all_dropped: Option<Instant> = None;
    while stalled > 0 && stall_t.elapsed() + STEP <= a.push.duration + a.stall_cap {
        if watch.latest() <= readers {
            let at = *all_dropped.get_or_insert_with(Instant::now);
            if at.elapsed() >= STEP {
                break;
            }
        }
        st.then(group_window(ctx, &mut load, group, readers, &step, &errors).await?);
    }
    let window_end_ns = sys::now_ns();
    st.report(&mut r, "stalled_", &errors);
    cpu_figures(&mut r, "", &st.m, st.m.delta.delivered, "delivery");
    let seen = watch.stop().await?;
    // Let the stalled clients read again: what the kernel kept for them, then the end of the
    // connection (the 1008 close frame only if the server could still write it, else EOF).
    let before = load.snapshot().await?;
    load.stall(false)?;
    let (after, _) = wait_for(
        &mut load,
        &before,
        |s| s.closed,
        stalled,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await?;
    dropped_figures(&mut r, &seen, size, readers, stall_ns, window_end_ns);
    let ended = after.closed - before.closed;
    let got_1008 = after.closes_1008 - before.closes_1008;
    r.set("stalled_ended_on_resume", ended);
    r.set("stalled_1008_frames_read", got_1008);
    r.line(format!(
        "reading again, {ended} of the {stalled} stalled clients found their connection ended \
         ({got_1008} by a 1008 close frame, the rest by EOF after what the kernel had kept)"
    ));
    if let Some(path) = &ctx.server_log {
        match serverlog::scan(path) {
            Ok(log) => slow_log_figures(&mut r, &log, &opened.stallable, stall_ns),
            Err(e) => r.line(format!(
                "warning: reading the server log {}: {e}",
                path.display()
            )),
        }
    }

    // The same rate again with nobody stalled (the stalled ones are gone or read again): with
    // the baseline it brackets the stalled window, so a drift of the shared machine's load
    // during the run does not pass for an effect of the stall.
    r.line(format!(
        "-- after: the {} members left reading, {push_rate} pushes/s",
        size - ended
    ));
    let after_w = group_window(ctx, &mut load, group, size - ended, &paced, &errors).await?;
    after_w.report(&mut r, "after_", &errors);
    compare_delays(&mut r, &base.latency(), &st.latency(), &after_w.latency());
    load.stop();
    Ok(r)
}

/// The readers' delays in the stalled window against the mean of the windows before and after
/// it (nobody stalled), percentile by percentile.
fn compare_delays(r: &mut Report, before: &Latency, stalled: &Latency, after: &Latency) {
    let ratio = |x: f64, y: f64| if y > 0.0 { round3(x / y) } else { 0.0 };
    let pick = [
        ("p50", before.p50_ms, stalled.p50_ms, after.p50_ms),
        ("p99", before.p99_ms, stalled.p99_ms, after.p99_ms),
        ("p99.9", before.p999_ms, stalled.p999_ms, after.p999_ms),
    ];
    let mut parts = Vec::new();
    for (name, b, s, a) in pick {
        let key = name.replace('.', "");
        let vs = ratio(s, (b + a) / 2.0);
        r.set(&format!("{key}_ratio"), vs);
        r.set(&format!("drift_{key}_ratio"), ratio(a, b));
        parts.push(format!(
            "{name} {} / {} / {} ms: {vs:.2}x (after/before {:.2}x)",
            ms(b),
            ms(s),
            ms(a),
            ratio(a, b)
        ));
    }
    let p99 = ratio(stalled.p99_ms, (before.p99_ms + after.p99_ms) / 2.0);
    r.set("p99_within_20pct", p99 <= 1.2);
    r.line(format!(
        "readers' push delay before / stalled / after, stalled against the mean of before and \
         after: {}; p99 {} 20%",
        parts.join(", "),
        if p99 <= 1.2 { "within" } else { "NOT within" }
    ));
}

/// When the server's member count fell, from the polls `seen` (`size` members before the stall
/// at `stall_ns`, `readers` once every stalled client is gone).
fn dropped_figures(
    r: &mut Report,
    seen: &[(u64, u64)],
    size: u64,
    readers: u64,
    stall_ns: u64,
    window_end_ns: u64,
) {
    let count_at = |t: u64| {
        seen.iter()
            .take_while(|(ns, _)| *ns <= t)
            .last()
            .map_or(size, |&(_, n)| n)
    };
    let after_stall = || seen.iter().filter(|(ns, _)| *ns >= stall_ns);
    let first = after_stall()
        .find(|(_, n)| *n < size)
        .map(|&(ns, _)| secs_after(ns, stall_ns));
    let all = after_stall()
        .find(|(_, n)| *n <= readers)
        .map(|&(ns, _)| secs_after(ns, stall_ns));
    let in_window = size.saturating_sub(count_at(window_end_ns));
    let total = size.saturating_sub(count_at(u64::MAX));
    let stalled = size - readers;
    r.set("server_dropped_in_window", in_window);
    r.set("server_dropped", total);
    if let Some(t) = first {
        r.set("first_drop_s", round3(t));
    }
    if let Some(t) = all {
        r.set("all_dropped_s", round3(t));
    }
    let when = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.1} s"));
    r.line(format!(
        "server's group count (polled every 250 ms): {in_window} of {stalled} stalled clients \
         dropped within the window, {total} in all; first at {}, all at {} after the stall",
        when(first),
        when(all)
    ));
    if total > stalled {
        r.line(format!(
            "warning: the server dropped {} more members than stalled: readers were dropped",
            total - stalled
        ));
    }
}

/// The server log's slow-consumer lines against the stalled clients: one line each, none for a
/// reader, and when (seconds after the stall, by the log's timestamps).
fn slow_log_figures(r: &mut Report, log: &LogScan, stallable: &[String], stall_ns: u64) {
    let by = log.slow_by_client();
    let stalled: HashSet<&str> = stallable.iter().map(String::as_str).collect();
    let once = stallable
        .iter()
        .filter(|id| by.get(id.as_str()) == Some(&1))
        .count();
    let never = stallable
        .iter()
        .filter(|id| !by.contains_key(id.as_str()))
        .count();
    let more = stallable.len() - once - never;
    let readers_named = by.keys().filter(|id| !stalled.contains(*id)).count();
    let mut times: Vec<f64> = log
        .slow
        .iter()
        .filter_map(|(_, t)| t.map(|t| secs_after(t, stall_ns)))
        .collect();
    times.sort_by(f64::total_cmp);
    r.set("log_slow_consumer_lines", log.slow.len());
    r.set("log_stalled_named_once", once);
    r.set("log_stalled_not_named", never);
    r.set("log_stalled_named_more", more);
    r.set("log_readers_named", readers_named);
    r.set("log_other_warn_error", log.other + log.error);
    let mut when = String::new();
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        r.set("log_first_s", round3(*first));
        r.set("log_median_s", round3(median));
        r.set("log_last_s", round3(*last));
        when = format!(", {first:.1} to {last:.1} s after the stall (median {median:.1} s)");
    }
    r.line(format!(
        "server log: {} slow-consumer (1008) lines: {once} of {} stalled clients named once, \
         {never} never, {more} more than once; {readers_named} readers named{when}; {} other \
         WARN/ERROR lines",
        log.slow.len(),
        stallable.len(),
        log.other + log.error
    ));
    if let Some(line) = &log.first_other {
        r.line(format!("first other WARN/ERROR line: {line}"));
    }
}

/// Flags of `soak`.
pub struct SoakArgs {
    pub conns: usize,
    pub group_size: usize,
    pub duration: Duration,
    /// Time between samples.
    pub sample: Duration,
    /// `send_to_group` per second in all (to a random full group).
    pub group_rate: f64,
    /// `send_to_client` per second in all (to a random client).
    pub unicast_rate: f64,
    /// Senders of each kind (keep-alive HTTP connections).
    pub workers: usize,
    /// Where the samples go as CSV.
    pub csv: Option<PathBuf>,
    pub bind: BindArgs,
    pub quiet: Duration,
}

/// One sample of the soak.
struct Sample {
    t_s: f64,
    rss: Option<u64>,
    fds: Option<usize>,
    /// Connections the load generator holds open: opened minus ended.
    conns: u64,
    /// Counters since the pushes began.
    snap: Snapshot,
    server_cpu_ns: Option<u64>,
}

const CSV_HEADER: &str = "t_s,server_rss_bytes,server_fds,client_conns,deliveries,requests_ok,\
requests_failed,closed,pings,deliveries_per_s,p50_ms,p99_ms,max_ms,server_cpu_pct";

impl Sample {
    /// The CSV row; the rates and percentiles over the interval since `prev`.
    fn csv(&self, prev: Option<&Sample>) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let (per_s, p50, p99, max, cpu) = match prev {
            Some(p) => {
                let dt = (self.t_s - p.t_s).max(1e-9);
                let d = self.snap.since(&p.snap);
                let lat = Latency::of(&d.delivery_hist);
                let cpu = self
                    .server_cpu_ns
                    .zip(p.server_cpu_ns)
                    .map(|(b, a)| format!("{:.0}", (b - a) as f64 / 1e9 / dt * 100.0));
                (
                    format!("{:.0}", d.delivered as f64 / dt),
                    format!("{}", round3(lat.p50_ms)),
                    format!("{}", round3(lat.p99_ms)),
                    format!("{}", round3(lat.max_ms)),
                    opt(cpu),
                )
            }
            None => Default::default(),
        };
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{per_s},{p50},{p99},{max},{cpu}",
            self.t_s,
            opt(self.rss.map(|v| v.to_string())),
            opt(self.fds.map(|v| v.to_string())),
            self.conns,
            self.snap.delivered,
            self.snap.requests_ok,
            self.snap.requests_failed,
            self.snap.closed,
            self.snap.pings,
        )
    }
}

/// `soak`: `conns` connections in groups of `group_size`, `send_to_group` and `send_to_client`
/// at steady rates for the duration, sampled every `sample`.
pub async fn soak(ctx: &Ctx, a: &SoakArgs) -> anyhow::Result<Report> {
    let mut r = Report::new("soak");
    let (mut load, opened) = ctx.start(&mut r, a.conns, 0).await?;
    let ids: Arc<Vec<String>> = Arc::new(opened.ids.iter().map(|id| json_str(id)).collect());
    let groups = build_groups(ctx, &mut load, &mut r, ids.to_vec(), a.group_size, &a.bind).await?;
    // Pushes go to full groups only, so each owes exactly `group_size` deliveries.
    let full: Vec<String> = groups
        .names
        .iter()
        .zip(&groups.sizes)
        .filter(|(_, &n)| n == a.group_size as u64)
        .map(|(g, _)| g.clone())
        .collect();
    if full.is_empty() {
        bail!("no group has all its {} members", a.group_size);
    }
    if full.len() < groups.names.len() {
        r.line(format!(
            "{} of {} groups are full; pushes go to those",
            full.len(),
            groups.names.len()
        ));
    }
    let mut csv = match &a.csv {
        Some(p) => {
            let mut f =
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            writeln!(f, "{CSV_HEADER}")?;
            Some(f)
        }
        None => None,
    };

    let errors = FirstError::default();
    let base = load.snapshot().await?;
    let t0 = Instant::now();
    // `workers` senders of one API for the duration, at `rate` requests/s to random targets.
    let steady = |path, key, targets, rate| {
        let make = random_push(key, targets, ctx.code, 0);
        let w = a.workers.max(1);
        spawn_senders(ctx, w, false, path, a.duration, Some(rate), &errors, make)
    };
    let group_senders = steady(
        "/api/send_to_group",
        "groupName",
        Arc::new(full),
        a.group_rate,
    );
    let client_senders = steady(
        "/api/send_to_client",
        "clientId",
        ids.clone(),
        a.unicast_rate,
    );
    let opened_n = opened.ids.len() as u64;
    let mut samples: Vec<Sample> = Vec::new();
    let start = tokio::time::Instant::now();
    let mut k = 0u32;
    loop {
        let snap = load.snapshot().await?.since(&base);
        let s = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            rss: ctx.server.rss(),
            fds: ctx.server.fds(),
            conns: opened_n.saturating_sub(snap.closed),
            snap,
            server_cpu_ns: ctx.server.cpu_ns(),
        };
        let row = s.csv(samples.last());
        if let Some(f) = &mut csv {
            writeln!(f, "{row}")?;
        }
        eprintln!("soak: {row}");
        samples.push(s);
        if t0.elapsed() >= a.duration {
            break;
        }
        k += 1;
        tokio::time::sleep_until(start + a.sample * k).await;
    }
    let mut group_ok = 0;
    for s in group_senders {
        group_ok += s.await?;
    }
    let mut client_ok = 0;
    for s in client_senders {
        client_ok += s.await?;
    }
    let expected = group_ok * a.group_size as u64 + client_ok;
    let (end, complete) = wait_for(
        &mut load,
        &base,
        |s| s.delivered,
        expected,
        a.quiet,
        Duration::from_secs(60),
    )
    .await?;
    let d = end.since(&base);
    let flat = soak_summary(
        &mut r, a, &samples, &d, expected, complete, opened_n, &errors,
    );
    if let Some(log) = ctx
        .server_log
        .as_deref()
        .and_then(|p| serverlog::scan(p).ok())
    {
        let pass = flat && clean(&d, expected) && log.warn + log.error == 0;
        r.set("pass", pass);
        r.line(format!(
            "soak {}: RSS and connections flat, no failure, every delivery, no WARN/ERROR line",
            if pass { "PASSED" } else { "FAILED" }
        ));
    }
    load.stop();
    Ok(r)
}

/// "Flat", judged after a warm-up (the first fifth of the run, at most 60 s, while queues and
/// buffers find their size): the median server RSS of the second half of the samples is within
/// 2% of the first half's (a leak grows steadily, while the heartbeat bursts every 25 s move
/// single samples), the server's open fds move by at most 16 (HTTP sockets), and the clients
/// hold every connection at every sample.
const RSS_HALVES_MAX_PCT: f64 = 2.0;
const FD_SLACK: u64 = 16;

fn pct(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / (from.max(1) as f64) * 100.0
}

fn median(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The verdict on the samples, see [`RSS_HALVES_MAX_PCT`].
struct Flatness {
    warmup_s: f64,
    /// Median RSS of the first and the second half of the samples after the warm-up.
    rss_halves: Option<(u64, u64)>,
    fds_range: Option<u64>,
    conns_held: bool,
}

impl Flatness {
    fn of(samples: &[Sample], opened: u64, duration: Duration) -> Flatness {
        let warmup_s = (duration.as_secs_f64() / 5.0).min(60.0);
        let steady: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
        let rss: Vec<u64> = steady.iter().filter_map(|s| s.rss).collect();
        let (first, second) = rss.split_at(rss.len() / 2);
        let fds: Vec<u64> = steady
            .iter()
            .filter_map(|s| s.fds.map(|f| f as u64))
            .collect();
        Flatness {
            warmup_s,
            rss_halves: median(first).zip(median(second)),
            fds_range: fds
                .iter()
                .max()
                .zip(fds.iter().min())
                .map(|(hi, lo)| hi - lo),
            conns_held: samples.iter().all(|s| s.conns == opened),
        }
    }

    fn flat(&self) -> bool {
        self.rss_halves
            .is_some_and(|(a, b)| pct(a, b).abs() <= RSS_HALVES_MAX_PCT)
            && self.fds_range.is_some_and(|r| r <= FD_SLACK)
            && self.conns_held
    }
}

/// No request failed, no connection ended, every delivery arrived.
fn clean(d: &Snapshot, expected: u64) -> bool {
    d.requests_failed == 0 && d.closed == 0 && d.delivered == expected
}

#[allow(clippy::too_many_arguments)]
fn soak_summary(
    r: &mut Report,
    a: &SoakArgs,
    samples: &[Sample],
    d: &Snapshot,
    expected: u64,
    complete: bool,
    opened: u64,
    errors: &FirstError,
) -> bool {
    let wall = samples.last().map_or(0.0, |s| s.t_s);
    r.set("group_size", a.group_size);
    r.set("duration_s", round3(a.duration.as_secs_f64()));
    r.set("group_rate", a.group_rate);
    r.set("unicast_rate", a.unicast_rate);
    r.set("samples", samples.len());
    r.set("requests", d.requests_ok);
    r.set("requests_failed", d.requests_failed);
    r.set("deliveries", d.delivered);
    r.set("deliveries_expected", expected);
    r.set("closed", d.closed);
    r.set("pings", d.pings);
    let lat = Latency::of(&d.delivery_hist);
    r.latency("", &lat);
    r.line(format!(
        "{:.0} s of pushes: {} requests ({} failed), {} of {} deliveries, {} server pings \
         answered, {} connections ended",
        wall,
        grouped(d.requests_ok as f64),
        d.requests_failed,
        grouped(d.delivered as f64),
        grouped(expected as f64),
        grouped(d.pings as f64),
        d.closed
    ));
    r.line(format!("push to receipt: {}", lat.human()));
    if !complete {
        r.line(format!(
            "warning: {} deliveries missing when the stream went quiet",
            expected.saturating_sub(d.delivered)
        ));
    }
    if let Some(e) = errors.get() {
        r.line(format!("first request error: {e}"));
    }
    // first / last / min / max of one sampled figure, and the drift first -> last.
    let mut series = |name: &str, unit: &str, v: Vec<u64>| {
        let (Some(&first), Some(&last)) = (v.first(), v.last()) else {
            return;
        };
        let (min, max) = (*v.iter().min().unwrap_or(&0), *v.iter().max().unwrap_or(&0));
        let mid = v[v.len() / 2];
        r.set(&format!("{name}_first"), first);
        r.set(&format!("{name}_last"), last);
        r.set(&format!("{name}_min"), min);
        r.set(&format!("{name}_max"), max);
        r.set(&format!("{name}_drift_pct"), round3(pct(first, last)));
        r.set(
            &format!("{name}_second_half_drift_pct"),
            round3(pct(mid, last)),
        );
        r.line(format!(
            "{name}: first {} {unit}, last {}, min {}, max {}; drift {:+.2}% (second half {:+.2}%)",
            grouped(first as f64),
            grouped(last as f64),
            grouped(min as f64),
            grouped(max as f64),
            pct(first, last),
            pct(mid, last)
        ));
    };
    series("rss", "B", samples.iter().filter_map(|s| s.rss).collect());
    series(
        "server_fds",
        "",
        samples
            .iter()
            .filter_map(|s| s.fds.map(|f| f as u64))
            .collect(),
    );
    series("conns", "", samples.iter().map(|s| s.conns).collect());
    let f = Flatness::of(samples, opened, a.duration);
    if let Some((h1, h2)) = f.rss_halves {
        r.set("rss_median_first_half", h1);
        r.set("rss_median_second_half", h2);
        r.set("rss_halves_drift_pct", round3(pct(h1, h2)));
        r.line(format!(
            "after the {:.0} s warm-up: median RSS {} B in the first half of the samples, {} B in \
             the second ({:+.2}%)",
            f.warmup_s,
            grouped(h1 as f64),
            grouped(h2 as f64),
            pct(h1, h2)
        ));
    }
    let flat = f.flat();
    r.set("flat", flat);
    r.line(format!(
        "RSS and connections {} (median RSS of the halves within {RSS_HALVES_MAX_PCT}%, server \
         fds within {FD_SLACK}, every connection held at every sample){}",
        if flat { "flat" } else { "NOT flat" },
        if clean(d, expected) {
            "; no request failed, none ended, every delivery arrived"
        } else {
            "; WARNING: failures, ended connections or missing deliveries (above)"
        }
    ));
    flat
}

//! The receiving connections of a scenario: opened in this process, or, past one process's
//! open-files limit, in worker processes (this binary re-run as `worker`).
//!
//! Worker protocol, one JSON object per line: the worker opens its share and prints
//! `{"ev":"ready","ids":[...],"stallable":[...],"failed":N,"first_error":...}` on stdout; then
//! each `snap` line on its stdin is answered with `{"ev":"snap","snap":{...}}` (its counters and
//! histograms, see `Snapshot::to_json`); `stall` and `resume` lines (no answer) stop and restart
//! the reading of its stallable connections; end of stdin closes its connections and ends it.

use crate::shards::Shards;
use crate::stats::Snapshot;
use crate::sys;
use crate::ws::{self, Target};
use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Deadline of one connection's connect + handshake + welcome frame.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Sockets one process may hold besides its WebSockets (HTTP workers, pipes, epoll, ...).
const RESERVED_FDS: usize = 600;

/// Which connections to open.
#[derive(Clone, Debug)]
pub struct Spec {
    pub conns: usize,
    /// Index of the first connection among all processes' (it picks the source address).
    pub conn_offset: usize,
    /// The `code` counted as a delivery.
    pub code: i64,
    /// Handshakes in flight at once while opening.
    pub connect_inflight: usize,
    /// Pause of each reader after a read (see `ws::read_loop`); zero: read on readiness.
    pub read_interval: Duration,
    /// Percent of the connections that stall on [`Load::stall`] (spread evenly, see
    /// [`stallable`]); 0: none.
    pub stall_pct: u32,
}

/// Whether connection number `index` is one of the `pct` percent that may stall: every
/// (100 / pct)-th on average, so they are spread evenly over source addresses, processes and
/// (being bound in connection order) a group's fan-out order.
pub fn stallable(index: usize, pct: u32) -> bool {
    let pct = pct.min(100) as usize;
    (index + 1) * pct / 100 > index * pct / 100
}

/// What opening gave.
#[derive(Debug, Default)]
pub struct Opened {
    /// The clientIds of the open connections, in connection order.
    pub ids: Vec<String>,
    /// Those of them that stall on [`Load::stall`].
    pub stallable: Vec<String>,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl Opened {
    fn to_json(&self) -> Value {
        json!({"ev": "ready", "ids": self.ids, "stallable": self.stallable, "failed": self.failed,
            "first_error": self.first_error})
    }

    fn from_json(v: &Value) -> Option<Opened> {
        let strings = |k: &str| -> Option<Vec<String>> {
            Some(
                v.get(k)?
                    .as_array()?
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect(),
            )
        };
        Some(Opened {
            ids: strings("ids")?,
            stallable: strings("stallable")?,
            failed: v.get("failed")?.as_u64()? as usize,
            first_error: v
                .get("first_error")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }
}

/// Opens `spec.conns` WebSockets on the shards, each then read by [`ws::read_loop`] on its
/// shard until the shards stop; the stallable ones obey `stall`. Returns when every connection
/// has its welcome frame or failed.
pub async fn open_local(
    shards: &Shards,
    target: &Arc<Target>,
    spec: &Spec,
    stall: &watch::Sender<bool>,
) -> Opened {
    let sem = Arc::new(Semaphore::new(spec.connect_inflight.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<String, String>)>();
    for i in 0..spec.conns {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("bug: never closed");
        let tx = tx.clone();
        let target = target.clone();
        let code = spec.code;
        let interval = spec.read_interval;
        let source = sys::ws_source(spec.conn_offset + i);
        let stall = stallable(spec.conn_offset + i, spec.stall_pct).then(|| stall.subscribe());
        shards.spawn(i, move |stats| async move {
            let r = tokio::time::timeout(CONNECT_TIMEOUT, ws::open(&target, source)).await;
            drop(permit);
            match r {
                Ok(Ok(conn)) => {
                    let _ = tx.send((i, Ok(conn.client_id.clone())));
                    drop(tx);
                    ws::read_loop(conn, stats, code, interval, stall).await;
                }
                Ok(Err(e)) => {
                    let _ = tx.send((i, Err(format!("{e:#}"))));
                }
                Err(_) => {
                    let _ = tx.send((i, Err(format!("no welcome within {CONNECT_TIMEOUT:?}"))));
                }
            }
        });
    }
    drop(tx);
    let mut ids = vec![None; spec.conns];
    let mut opened = Opened::default();
    for _ in 0..spec.conns {
        let Some((i, r)) = rx.recv().await else {
            break;
        };
        match r {
            Ok(id) => {
                if stallable(spec.conn_offset + i, spec.stall_pct) {
                    opened.stallable.push(id.clone());
                }
                ids[i] = Some(id);
            }
            Err(e) => {
                opened.failed += 1;
                opened.first_error.get_or_insert(e);
            }
        }
    }
    opened.ids = ids.into_iter().flatten().collect();
    opened
}

/// How many processes `conns` WebSockets need under this process's open-files limit.
pub fn procs_for(conns: usize, nofile: u64) -> usize {
    let per_proc = (nofile as usize)
        .saturating_sub(RESERVED_FDS)
        .clamp(100, 19_000);
    conns.div_ceil(per_proc).max(1)
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl WorkerProc {
    async fn line(&mut self, within: Duration) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .map_err(|_| anyhow!("worker {} silent for {within:?}", self.child.id()))?
            .ok_or_else(|| anyhow!("worker {} exited", self.child.id()))?;
        serde_json::from_str(&line).with_context(|| format!("worker line: {line:.200}"))
    }
}

/// Worker processes holding the receiving connections.
pub struct Workers {
    procs: Vec<WorkerProc>,
}

impl Workers {
    /// Starts `procs` workers, each opening its share of `spec.conns` (worker `k` is told the
    /// index of its first connection, so the source addresses continue across processes).
    /// `args` are the common flags each worker gets (host, port, system, threads, ...).
    pub async fn start(
        args: &[String],
        spec: &Spec,
        procs: usize,
    ) -> anyhow::Result<(Workers, Opened)> {
        let exe = std::env::current_exe().context("finding my own executable")?;
        let mut workers = Workers { procs: Vec::new() };
        let mut offset = spec.conn_offset;
        for k in 0..procs {
            let share = spec.conns / procs + usize::from(k < spec.conns % procs);
            let mut child = Command::new(&exe)
                .args(args)
                .args([
                    "worker".to_string(),
                    "--conns".into(),
                    share.to_string(),
                    "--conn-offset".into(),
                    offset.to_string(),
                    "--code".into(),
                    spec.code.to_string(),
                    "--connect-inflight".into(),
                    (spec.connect_inflight / procs).max(8).to_string(),
                    "--read-interval-ms".into(),
                    (spec.read_interval.as_secs_f64() * 1e3).to_string(),
                    "--stall-pct".into(),
                    spec.stall_pct.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a worker process")?;
            offset += share;
            let stdout = child.stdout.take().expect("piped");
            let (tx, lines) = mpsc::unbounded_channel();
            // Blocking pipe reads on a plain thread; lines reach the async side by channel.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            workers.procs.push(WorkerProc {
                stdin: child.stdin.take(),
                child,
                lines,
            });
        }
        let mut opened = Opened::default();
        let within = CONNECT_TIMEOUT + Duration::from_secs(60 + spec.conns as u64 / 500);
        for w in &mut workers.procs {
            let v = w.line(within).await?;
            let o = Opened::from_json(&v).ok_or_else(|| anyhow!("bad ready line from a worker"))?;
            opened.ids.extend(o.ids);
            opened.stallable.extend(o.stallable);
            opened.failed += o.failed;
            if opened.first_error.is_none() {
                opened.first_error = o.first_error;
            }
        }
        Ok((workers, opened))
    }

    /// Writes `line` to every worker's stdin.
    fn tell(&mut self, line: &[u8]) -> anyhow::Result<()> {
        for w in &mut self.procs {
            let stdin = w
                .stdin
                .as_mut()
                .ok_or_else(|| anyhow!("worker already stopped"))?;
            stdin.write_all(line)?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// Every worker's counters added up, `cpu_ns` holding the sum of their CPU times.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        self.tell(b"snap\n")?;
        let mut total = Snapshot::default();
        for w in &mut self.procs {
            let v = w.line(Duration::from_secs(30)).await?;
            let s = v
                .get("snap")
                .and_then(Snapshot::from_json)
                .ok_or_else(|| anyhow!("bad snap line from a worker"))?;
            total.add(&s);
        }
        Ok(total)
    }

    /// Closes the workers' stdin (they close their connections and exit) and waits for them,
    /// killing any that has not exited after 10 s.
    pub fn stop(mut self) {
        for w in &mut self.procs {
            w.stdin = None;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for w in &mut self.procs {
            loop {
                match w.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.procs.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.procs {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// The receivers of a scenario plus this process's shards (which also run its senders).
pub struct Load {
    pub shards: Arc<Shards>,
    pub workers: Option<Workers>,
    /// The switch of this process's stallable readers (the workers hold their own).
    stall: watch::Sender<bool>,
}

impl Load {
    /// Opens the receivers: in this process when they fit, else in `procs` workers.
    pub async fn open(
        shards: Arc<Shards>,
        target: &Arc<Target>,
        spec: &Spec,
        procs: usize,
        worker_args: &[String],
    ) -> anyhow::Result<(Load, Opened)> {
        let (stall, _) = watch::channel(false);
        if procs <= 1 {
            let opened = open_local(&shards, target, spec, &stall).await;
            return Ok((
                Load {
                    shards,
                    workers: None,
                    stall,
                },
                opened,
            ));
        }
        let (workers, opened) = Workers::start(worker_args, spec, procs).await?;
        Ok((
            Load {
                shards,
                workers: Some(workers),
                stall,
            },
            opened,
        ))
    }

    /// Stops (`true`) or restarts the reading of every stallable connection.
    pub fn stall(&mut self, stalled: bool) -> anyhow::Result<()> {
        self.stall.send_replace(stalled);
        if let Some(w) = &mut self.workers {
            w.tell(if stalled { b"stall\n" } else { b"resume\n" })?;
        }
        Ok(())
    }

    /// All counters (this process's shards and every worker), `cpu_ns` the CPU time of all
    /// the load generator's processes so far.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let mut s = self.shards.snapshot();
        if let Some(w) = &mut self.workers {
            s.add(&w.snapshot().await?);
        }
        Ok(s)
    }

    pub fn stop(mut self) {
        if let Some(w) = self.workers.take() {
            w.stop();
        }
    }
}

/// Body of the hidden `worker` subcommand: open `spec` here, report, answer `snap` lines until
/// stdin ends.
pub fn worker_main(threads: usize, target: Arc<Target>, spec: Spec) -> anyhow::Result<()> {
    let shards = Shards::start(threads)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stall, _) = watch::channel(false);
    let opened = rt.block_on(open_local(&shards, &target, &spec, &stall));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", opened.to_json())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "snap" => {
                writeln!(
                    out,
                    "{}",
                    json!({"ev": "snap", "snap": shards.snapshot().to_json()})
                )?;
                out.flush()?;
            }
            "stall" => {
                stall.send_replace(true);
            }
            "resume" => {
                stall.send_replace(false);
            }
            "" => {}
            other => bail!("unknown worker command {other:?}"),
        }
    }
    drop(shards);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stallable_spreads_the_share_evenly() {
        let count = |pct| (0..1000).filter(|&i| stallable(i, pct)).count();
        assert_eq!(count(0), 0);
        assert_eq!(count(10), 100);
        assert_eq!(count(25), 250);
        assert_eq!(count(100), 1000);
        // 10%: one in every ten consecutive connections.
        for start in (0..1000).step_by(10) {
            assert_eq!((start..start + 10).filter(|&i| stallable(i, 10)).count(), 1);
        }
    }
}

//! # wspush-loadgen
//!
//! Drives a running wspush over real sockets and reports what the performance issue asks for:
//! idle memory per connection, handshakes/s, group fan-out deliveries/s, API requests/s, push
//! delay percentiles, and the server's CPU time per operation. See `perf/README.md`.
//!
//! ## Layout
//! - [`sys`]: `/proc` (server RSS and CPU), getrusage, the clock, source-address sockets.
//! - [`stats`]: per-thread counters and log-linear latency histograms; snapshots that add up.
//! - [`shards`]: one thread per `--threads`, each a current-thread tokio runtime.
//! - [`ws`]: handshake, frame parsing from a per-thread scratch buffer, code/stamp search.
//! - [`http`]: the API client (keep-alive or `Connection: close`; `Content-Length` or chunked).
//! - [`receipts`]: pushes in flight until every member received them (`fanout --regime received`).
//! - [`fleet`]: the receiving connections, in this process or in worker processes.
//! - [`scenarios`]: idle, connect, fanout, unicast, batch, and the pieces they share.
//! - [`hardening`]: stalled (slow consumers among readers), soak (many connections for minutes).
//! - [`serverlog`]: the server's stderr: WARN/ERROR lines, slow-consumer lines.

mod fleet;
mod hardening;
mod http;
mod receipts;
mod scenarios;
mod serverlog;
mod shards;
mod stats;
mod sys;
mod ws;

use clap::{Args, Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "wspush-loadgen",
    about = "Load generator for wspush: idle memory, handshakes/s, fan-out, unicast and batch pushes, slow consumers, soak",
    after_help = "Results: a human summary on stdout, or with --json a summary on stderr and one JSON line on stdout."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Server address (IP or name).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Server HTTP/WebSocket port (`HttpPort`).
    #[arg(long, global = true, default_value_t = 7800)]
    port: u16,
    /// Send the API requests (register, binds, pushes) to this port of the same host instead:
    /// another node of a cluster, so every push crosses a node link (cross-node scenarios).
    #[arg(long, global = true)]
    api_port: Option<u16>,
    /// The systemId used (registered first; "already registered" is fine).
    #[arg(long, global = true, default_value = "perf")]
    system: String,
    /// The server's pid: its VmRSS (idle) and CPU time per operation are reported.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The server's stderr (a file): its WARN/ERROR lines are counted after the run, and
    /// `stalled` matches its slow-consumer lines with the stalled clients.
    #[arg(long, global = true)]
    server_log: Option<PathBuf>,
    /// Print one JSON line of results on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Threads per process, each a current-thread runtime. Default: the CPUs this process
    /// may run on (1 under `taskset -c 1`).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Processes holding the WebSockets. Default: 1 while they fit under the open-files limit,
    /// else enough workers of ~19,000 connections each.
    #[arg(long, global = true)]
    procs: Option<usize>,
    /// Handshakes in flight while opening a scenario's connections.
    #[arg(long, global = true, default_value_t = 256)]
    connect_inflight: usize,
    /// The push `code` counted as a delivery (1001 presence frames never count).
    #[arg(
        long,
        global = true,
        default_value_t = 7,
        allow_negative_numbers = true
    )]
    code: i64,
    /// Milliseconds each reader pauses after a read, so one read takes many frames; adds up
    /// to this much to the measured delay. On loopback it moves ACK work onto the server's CPU
    /// instead of saving any (see perf/README.md). 0: read on readiness.
    #[arg(long, global = true, default_value_t = 0.0)]
    read_interval_ms: f64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections and measure the server's memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Seconds to wait after the last welcome frame before reading VmRSS again.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
        /// Seconds to keep the connections open after measuring.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// Handshake rate: connect, wait for the welcome frame, close; INFLIGHT at a time.
    Connect {
        #[arg(long, default_value_t = 20_000)]
        total: usize,
        #[arg(long, default_value_t = 32)]
        inflight: usize,
        /// Upper bound on the run in seconds.
        #[arg(long, default_value_t = 120.0)]
        max_secs: f64,
    },
    /// Group fan-out: MEMBERS of CONNS connections in one group, send_to_group for DURATION.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        /// Seconds of pushing (per regime with `--regime both`).
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        /// When a push stops counting against --inflight: `answer` (its HTTP answer came),
        /// `received` (every member received it; one process only), or `both` (one window
        /// each, `received_` keys for the second).
        #[arg(long, value_enum, default_value_t = scenarios::Regime::Answer)]
        regime: scenarios::Regime,
        /// Same as `--regime received`.
        #[arg(long, conflicts_with = "regime")]
        until_received: bool,
        #[command(flatten)]
        push: PushFlags,
        #[command(flatten)]
        bind: BindFlags,
    },
    /// send_to_client to random clients from WORKERS HTTP workers for DURATION.
    Unicast {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[arg(long, default_value_t = 64)]
        workers: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// HTTP/1.0 + Connection: close, a new TCP connection per request (as nginx sends).
        #[arg(long)]
        close: bool,
        /// Requests per second in all (default: as fast as the workers go).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 3.0)]
        quiet: f64,
    },
    /// send_to_clients with IDS_PER_REQUEST consecutive clients from a random start.
    Batch {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        ids_per_request: usize,
        #[arg(long, default_value_t = 16)]
        workers: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long)]
        close: bool,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 3.0)]
        quiet: f64,
    },
    /// send_to_system: every one of CLIENTS connections receives every push (the tenant
    /// broadcast of issue 7), WORKERS keep-alive senders for DURATION.
    System {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 3.0)]
        quiet: f64,
    },
    /// Slow consumers: CLIENTS in one group; a baseline window with all reading, one at the
    /// same rate with STALLED_PCT percent not reading (sockets open), one more after. Compares
    /// the readers' push delay and watches the server drop the stalled ones (1008).
    Stalled {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Percent of the clients that stop reading (0: a control run, two plain windows).
        #[arg(long, default_value_t = 10)]
        stalled_pct: u32,
        /// Seconds of each window (baseline, stalled, after). The stalled one goes on in 5-s steps
        /// until the server has dropped every stalled client, then 5 s more (see --stall-cap).
        #[arg(long, default_value_t = 40.0)]
        duration: f64,
        /// Seconds of the unpaced window that measures the maximum push rate, when no --rate
        /// is given (the paced windows then run at half of it).
        #[arg(long, default_value_t = 5.0)]
        max_secs: f64,
        /// Bytes of filler in each push's data: bigger frames fill a stalled socket sooner.
        /// 2000 keeps the frame below glibc's 2,112-byte `rep movsb` threshold (RESULTS.md).
        #[arg(long, default_value_t = 2000)]
        pad: usize,
        /// The most seconds the stalled window may run past --duration.
        #[arg(long, default_value_t = 120.0)]
        stall_cap: f64,
        #[command(flatten)]
        push: PushFlags,
        #[command(flatten)]
        bind: BindFlags,
    },
    /// Soak: CONNS connections in groups of GROUP_SIZE, send_to_group and send_to_client at
    /// steady rates for DURATION, sampled every SAMPLE seconds (server RSS and fds, client
    /// connections, deliveries, errors).
    Soak {
        #[arg(long, default_value_t = 18_000)]
        conns: usize,
        #[arg(long, default_value_t = 100)]
        group_size: usize,
        /// Seconds of pushing.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 10.0)]
        sample: f64,
        /// send_to_group per second (each to a random full group).
        #[arg(long, default_value_t = 20.0)]
        group_rate: f64,
        /// send_to_client per second (each to a random client).
        #[arg(long, default_value_t = 200.0)]
        unicast_rate: f64,
        /// Senders of each kind.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Write the samples to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        #[arg(long, default_value_t = 3.0)]
        quiet: f64,
        #[command(flatten)]
        bind: BindFlags,
    },
    /// (internal) A worker process: opens its share of connections, answers `snap` on stdin.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        conns: usize,
        #[arg(long, default_value_t = 0)]
        conn_offset: usize,
        #[arg(long, default_value_t = 0)]
        stall_pct: u32,
    },
}

/// How pushes are sent (fanout, stalled).
#[derive(Args)]
struct PushFlags {
    /// send_to_group requests outstanding (one keep-alive connection each).
    #[arg(long, default_value_t = 2)]
    inflight: usize,
    /// Pushes per second in all (default: fanout as fast as INFLIGHT allows; stalled half the
    /// measured maximum).
    #[arg(long)]
    rate: Option<f64>,
    /// A stream that delivers nothing for this long (seconds) counts as drained.
    #[arg(long, default_value_t = 3.0)]
    quiet: f64,
}

impl PushFlags {
    fn args(&self, duration: f64, pad: usize) -> scenarios::PushArgs {
        scenarios::PushArgs {
            duration: secs(duration),
            inflight: self.inflight,
            rate: self.rate,
            quiet: secs(self.quiet),
            pad,
        }
    }
}

/// How groups are built (fanout, stalled, soak).
#[derive(Args)]
struct BindFlags {
    /// Parallel bind_to_group requests while building the group.
    #[arg(long, default_value_t = 16)]
    bind_workers: usize,
    /// Binds per chunk; each chunk's presence flood is drained before the next.
    #[arg(long, default_value_t = 500)]
    bind_chunk: usize,
    /// Give up if building the group (binds + presence flood) takes longer (seconds).
    #[arg(long, default_value_t = 600.0)]
    presence_cap: f64,
}

impl BindFlags {
    /// `quiet`: seconds without a presence frame that count as drained.
    fn args(&self, quiet: f64) -> scenarios::BindArgs {
        scenarios::BindArgs {
            bind_workers: self.bind_workers,
            bind_chunk: self.bind_chunk,
            presence_cap: secs(self.presence_cap),
            quiet: secs(quiet),
        }
    }
}

/// The flags `unicast`, `batch` and `system` share, for `send_to_client`.
fn unicast_args(
    clients: usize,
    workers: usize,
    duration: f64,
    close: bool,
    rate: Option<f64>,
    quiet: f64,
) -> scenarios::UnicastArgs {
    scenarios::UnicastArgs {
        clients,
        workers,
        duration: secs(duration),
        close,
        rate,
        send: scenarios::PushRoute::Client,
        quiet: secs(quiet),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn resolve(c: &Common, port: u16) -> anyhow::Result<Arc<ws::Target>> {
    let server: SocketAddr = (c.host.as_str(), port)
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow::anyhow!("{} has no IPv4 address", c.host))?;
    Ok(Arc::new(ws::Target {
        server,
        host: format!("{}:{}", c.host, port),
        system: c.system.clone(),
        spread_sources: server.ip().is_loopback(),
    }))
}

fn main() {
    let cli = Cli::parse();
    let c = cli.common.clone();
    let nofile = sys::raise_nofile();
    let threads = c
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (target, api_target) = match resolve(&c, c.port)
        .and_then(|t| Ok((t, resolve(&c, c.api_port.unwrap_or(c.port))?)))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    if let Cmd::Worker {
        conns,
        conn_offset,
        stall_pct,
    } = cli.cmd
    {
        let spec = fleet::Spec {
            conns,
            conn_offset,
            code: c.code,
            connect_inflight: c.connect_inflight,
            read_interval: secs(c.read_interval_ms / 1e3),
            stall_pct,
        };
        if let Err(e) = fleet::worker_main(threads, target, spec) {
            eprintln!("worker error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let name = match &cli.cmd {
        Cmd::Idle { .. } => "idle",
        Cmd::Connect { .. } => "connect",
        Cmd::Fanout { .. } => "fanout",
        Cmd::Unicast { .. } => "unicast",
        Cmd::Batch { .. } => "batch",
        Cmd::System { .. } => "system",
        Cmd::Stalled { .. } => "stalled",
        Cmd::Soak { .. } => "soak",
        Cmd::Worker { .. } => unreachable!(),
    };
    let shards = match shards::Shards::start(threads) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: starting threads: {e}");
            std::process::exit(2);
        }
    };
    let ctx = scenarios::Ctx {
        target,
        api_target,
        shards: shards.clone(),
        server: sys::Server(c.server_pid),
        procs: c.procs,
        nofile,
        worker_args: vec![
            "--host".into(),
            c.host.clone(),
            "--port".into(),
            c.port.to_string(),
            "--system".into(),
            c.system.clone(),
            "--threads".into(),
            threads.to_string(),
        ],
        code: c.code,
        connect_inflight: c.connect_inflight,
        read_interval: secs(c.read_interval_ms / 1e3),
        server_log: c.server_log.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Idle {
                conns,
                settle,
                hold,
            } => scenarios::idle(&ctx, conns, secs(settle), secs(hold)).await,
            Cmd::Connect {
                total,
                inflight,
                max_secs,
            } => scenarios::connect(&ctx, total, inflight, secs(max_secs)).await,
            Cmd::Fanout {
                conns,
                members,
                duration,
                regime,
                until_received,
                push,
                bind,
            } => {
                let a = scenarios::FanoutArgs {
                    conns,
                    members,
                    regime: if until_received {
                        scenarios::Regime::Received
                    } else {
                        regime
                    },
                    push: push.args(duration, 0),
                    bind: bind.args(push.quiet),
                };
                scenarios::fanout(&ctx, &a).await
            }
            Cmd::Stalled {
                clients,
                stalled_pct,
                duration,
                max_secs,
                pad,
                stall_cap,
                push,
                bind,
            } => {
                let a = hardening::StalledArgs {
                    clients,
                    stalled_pct,
                    max_secs: secs(max_secs),
                    push: push.args(duration, pad),
                    bind: bind.args(push.quiet),
                    stall_cap: secs(stall_cap),
                };
                hardening::stalled(&ctx, &a).await
            }
            Cmd::Soak {
                conns,
                group_size,
                duration,
                sample,
                group_rate,
                unicast_rate,
                workers,
                csv,
                quiet,
                bind,
            } => {
                let a = hardening::SoakArgs {
                    conns,
                    group_size,
                    duration: secs(duration),
                    sample: secs(sample),
                    group_rate,
                    unicast_rate,
                    workers,
                    csv,
                    bind: bind.args(quiet),
                    quiet: secs(quiet),
                };
                hardening::soak(&ctx, &a).await
            }
            Cmd::Unicast {
                clients,
                workers,
                duration,
                close,
                rate,
                quiet,
            } => {
                let a = unicast_args(clients, workers, duration, close, rate, quiet);
                scenarios::unicast(&ctx, &a).await
            }
            Cmd::Batch {
                clients,
                ids_per_request,
                workers,
                duration,
                close,
                rate,
                quiet,
            } => {
                let a = scenarios::UnicastArgs {
                    send: scenarios::PushRoute::Clients(ids_per_request),
                    ..unicast_args(clients, workers, duration, close, rate, quiet)
                };
                scenarios::unicast(&ctx, &a).await
            }
            Cmd::System {
                clients,
                workers,
                duration,
                rate,
                quiet,
            } => {
                let a = scenarios::UnicastArgs {
                    send: scenarios::PushRoute::System,
                    ..unicast_args(clients, workers, duration, false, rate, quiet)
                };
                scenarios::unicast(&ctx, &a).await
            }
            Cmd::Worker { .. } => unreachable!(),
        }
    });
    // Stop the shards (closing every connection) before reading the children's CPU time.
    drop(ctx);
    drop(shards);
    let total_cpu = (sys::self_cpu_ns() + sys::children_cpu_ns()) as f64 / 1e9;
    match result {
        Ok(mut report) => {
            report.total_cpu(total_cpu);
            if let Some(path) = &c.server_log {
                report.server_log(path);
            }
            report.print(c.json);
        }
        Err(e) => {
            if c.json {
                println!("{}", scenarios::failure(name, &e));
            }
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

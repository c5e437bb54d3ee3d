//! Starting the cores and stopping them in order.
//!
//! `--cores N` glommio executors, pinned one per CPU when there are enough CPUs (unpinned, with a
//! warning, when there are not). They are joined by a full channel mesh for cross-core work.
//! A side thread waits for SIGTERM/SIGINT and rings each core's doorbell (a Unix socket pair);
//! each core then stops accepting, closes its clients with 1001 and drains for ShutdownGrace.

use crate::config::Config;
use crate::net::listener;
use crate::shard::inbox::CoreMsg;
use crate::shard::Shard;
use crate::sys;
use futures_lite::AsyncReadExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cores whose listener is bound and accepting, and how many there are in all. Read by `/readyz`.
static ACCEPTING: AtomicUsize = AtomicUsize::new(0);
static CORES: AtomicUsize = AtomicUsize::new(usize::MAX);

/// True once every core accepts and none is draining.
pub fn is_ready() -> bool {
    ACCEPTING.load(Ordering::Acquire) == CORES.load(Ordering::Acquire)
}

/// Capacity of each core-to-core channel. A full channel makes the sender wait (backpressure),
/// never drops.
const MESH_CHANNEL: usize = 4096;

/// Accept backlog of each core's listener (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;

/// What the start-up thread hands each core: its bound listener and its shutdown doorbell.
type CoreSockets = (std::net::TcpListener, UnixStream);

/// Runs the server until SIGTERM/SIGINT. Returns an error if a core could not start.
pub fn run(config: Config) -> anyhow::Result<()> {
    let cpus = sys::available_cpus();
    let cores = if config.cores == 0 {
        cpus
    } else {
        config.cores
    };
    anyhow::ensure!(
        cores <= 255,
        "--cores {cores}: at most 255 cores are supported"
    );
    let placement = if cores <= cpus {
        PoolPlacement::MaxSpread(cores, None)
    } else {
        tracing::warn!(cores, cpus, "more cores than CPUs: running unpinned");
        PoolPlacement::Unbound(cores)
    };
    CORES.store(cores, Ordering::Release);

    // Per core: its listening socket, and a shutdown doorbell the signal thread rings.
    sys::ensure_port_free(config.http_port)
        .map_err(|e| anyhow::anyhow!("cannot listen on HttpPort {}: {e}", config.http_port))?;
    let mut bells = Vec::with_capacity(cores);
    let mut handoff = Vec::with_capacity(cores);
    for _ in 0..cores {
        let listener = sys::reuseport_listener(config.http_port, LISTEN_BACKLOG)
            .map_err(|e| anyhow::anyhow!("cannot listen on HttpPort {}: {e}", config.http_port))?;
        let (bell, door) = UnixStream::pair()?;
        bells.push(bell);
        handoff.push(Some((listener, door)));
    }
    let handoff = Arc::new(Mutex::new(handoff));
    std::thread::Builder::new()
        .name("wspush-signals".into())
        .spawn(move || wait_for_signals(bells))?;

    let mesh = MeshBuilder::<CoreMsg, _>::full(cores, MESH_CHANNEL);
    let config = Arc::new(config);
    tracing::info!(
        http_port = config.http_port,
        cores,
        pinned = cores <= cpus,
        version = env!("CARGO_PKG_VERSION"),
        "wspush starting"
    );
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("wspush-core")
        // No file I/O here: keep the executor's DMA memory small (locked memory is scarce).
        .io_memory(1 << 20)
        .on_all_shards(move || {
            let config = config.clone();
            let mesh = mesh.clone();
            let handoff = handoff.clone();
            async move { run_core(config, mesh, handoff, cores).await }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the core executors: {e}"))?;
    let mut failed = None;
    for result in handles.join_all() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(anyhow::anyhow!("core executor failed: {e}")),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("wspush stopped");
            Ok(())
        }
    }
}

/// One core from start to stop.
async fn run_core(
    config: Arc<Config>,
    mesh: MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>,
    handoff: Arc<Mutex<Vec<Option<CoreSockets>>>>,
    cores: usize,
) -> anyhow::Result<()> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|e| anyhow::anyhow!("joining the core channel mesh failed: {e}"))?;
    let shard = Rc::new(Shard::new(config.clone(), senders, cores));
    // Start-up only: each core takes its sockets once.
    let (listener, door) = handoff
        .lock()
        .map_err(|_| anyhow::anyhow!("bug: socket hand-off list poisoned"))?[shard.id]
        .take()
        .ok_or_else(|| anyhow::anyhow!("bug: core {} sockets taken twice", shard.id))?;

    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.on_message(msg);
            }
        })
        .detach();
    }

    let listener = sys::glommio_listener(listener);
    let accept = glommio::spawn_local(listener::accept_loop(shard.clone(), listener));
    if ACCEPTING.fetch_add(1, Ordering::AcqRel) + 1 == cores {
        tracing::info!(http_port = config.http_port, cores, "wspush ready");
    }

    let heartbeat = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(shard.config.heartbeat_interval).await;
                shard.heartbeat();
            }
        })
    };

    let mut door = sys::glommio_unix_stream(door);
    let mut byte = [0u8; 1];
    let _ = door.read(&mut byte).await;

    ACCEPTING.fetch_sub(1, Ordering::AcqRel);
    shard.draining.set(true);
    accept.cancel().await;
    heartbeat.cancel().await;
    drain(&shard).await;
    Ok(())
}

/// Closes every client with 1001 and waits up to ShutdownGrace for them to go.
async fn drain(shard: &Rc<Shard>) {
    let conns = shard.all_conns();
    tracing::info!(core = shard.id, clients = conns.len(), "draining");
    for conn in &conns {
        conn.end_reason
            .set(Some(crate::shard::conn::EndReason::Shutdown));
        shard.enqueue_close(
            conn,
            crate::ws::frame::close_code::GOING_AWAY,
            "server shutting down",
        );
    }
    drop(conns);
    let deadline = Instant::now() + shard.config.shutdown_grace;
    while shard.connection_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    for conn in shard.all_conns() {
        conn.cut(crate::shard::conn::EndReason::Shutdown);
    }
}

/// The signal thread: first SIGTERM/SIGINT starts the drain, a second one exits at once.
fn wait_for_signals(bells: Vec<UnixStream>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers; SIGTERM will not drain");
            return;
        }
    };
    let mut seen = false;
    for signal in signals.forever() {
        if seen {
            tracing::warn!(signal, "second signal: exiting now");
            std::process::exit(1);
        }
        seen = true;
        tracing::info!(signal, "shutdown requested");
        for mut bell in &bells {
            let _ = bell.write_all(&[1]);
        }
    }
}

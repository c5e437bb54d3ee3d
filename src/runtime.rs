//! Starting the cores and stopping them in order.
//!
//! `--cores N` glommio executors, pinned one per CPU when there are enough CPUs (unpinned, with a
//! warning, when there are not), joined by a full channel mesh for cross-core work. Every core
//! gets its listening sockets (HTTP, and RPC in cluster mode) bound before the cores start, and a
//! control inbox: a lock-free queue plus a doorbell socket, through which the signal thread and
//! the etcd thread reach it. In cluster mode the etcd side thread keeps this node's membership
//! and pushes the peer table and the registered systems to every core.

use crate::cluster::link;
use crate::cluster::membership::{self, CoreNotifier, EtcdRequest, Membership, ToCores};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::net::listener;
use crate::readiness;
use crate::route::Router;
use crate::shard::inbox::CoreMsg;
use crate::shard::Shard;
use crate::sys;
use crate::types::SystemInfo;
use crossbeam_queue::SegQueue;
use futures_lite::AsyncReadExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often core 0 checks, while membership is lost, whether the node is cut off.
const ISOLATION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Capacity of each core-to-core channel. A full channel makes the sender wait (backpressure),
/// never drops.
const MESH_CHANNEL: usize = 4096;

/// Heartbeat ticks per HeartbeatInterval; each pings the connections of one slice.
const HEARTBEAT_SLICES: u32 = 20;

/// Accept backlog of each core's listeners (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;

/// What reaches a core from outside the executors.
#[derive(Debug, Clone)]
pub enum Control {
    Shutdown,
    Peers(Vec<SocketAddrV4>),
    /// Registered systems from etcd, each with its options (the same `Arc` on every core).
    Systems(Vec<(String, Arc<SystemInfo>)>),
}

/// A core's control inbox: any thread may push; the core drains it when its doorbell rings.
pub struct ControlInbox {
    queue: SegQueue<Control>,
    bell: UnixStream,
}

impl ControlInbox {
    pub fn send(&self, msg: Control) {
        self.queue.push(msg);
        // A full doorbell buffer already holds a pending wake-up: nothing is lost by skipping.
        let _ = (&self.bell).write(&[1]);
    }
}

/// Fans etcd news out to every core.
struct Notifier {
    inboxes: Vec<Arc<ControlInbox>>,
}

impl CoreNotifier for Notifier {
    fn notify(&self, msg: ToCores) {
        match msg {
            ToCores::EtcdConnected(up) => {
                readiness::set_membership(up);
                readiness::log_ready_once();
            }
            ToCores::Peers(peers) => {
                for inbox in &self.inboxes {
                    inbox.send(Control::Peers(peers.clone()));
                }
            }
            ToCores::SystemsAdded(systems) => {
                for inbox in &self.inboxes {
                    inbox.send(Control::Systems(systems.clone()));
                }
            }
        }
    }
}

/// What the start-up thread hands each core.
struct CoreStart {
    http: std::net::TcpListener,
    rpc: Option<std::net::TcpListener>,
    door: UnixStream,
}

/// The `[etcd]` credentials and the PEM files they name, read once at start (the config check
/// already found them readable; a file that went away since is a start error naming the key).
fn etcd_access(config: &Config) -> anyhow::Result<membership::EtcdAccess> {
    let read = |key: &str, path: &str| -> anyhow::Result<Option<Vec<u8>>> {
        if path.is_empty() {
            return Ok(None);
        }
        std::fs::read(path)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("cannot read {key} {path}: {e}"))
    };
    let user = (!config.etcd_user.is_empty())
        .then(|| (config.etcd_user.clone(), config.etcd_password.clone()));
    let cert = read("etcd.CertFile", &config.etcd_cert_file)?;
    let key = read("etcd.KeyFile", &config.etcd_key_file)?;
    Ok(membership::EtcdAccess {
        user,
        ca_pem: read("etcd.CaFile", &config.etcd_ca_file)?,
        identity_pem: cert.zip(key),
    })
}

/// Runs the server until SIGTERM/SIGINT. Returns an error if it could not start.
pub fn run(mut config: Config) -> anyhow::Result<()> {
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
    readiness::set_cores(cores);
    let node = SocketAddrV4::new(config.node_host(), config.rpc_port);

    let any = std::net::Ipv4Addr::UNSPECIFIED;
    sys::ensure_port_free(any, config.http_port)
        .map_err(|e| anyhow::anyhow!("cannot listen on HttpPort {}: {e}", config.http_port))?;
    // RPCPort listens on RPCBind, else AdvertiseHost: peers dial the advertised address, and
    // nothing else needs to reach the node port. An AdvertiseHost that is not an address of
    // this machine (a NAT's) cannot be bound: every address then, as before, with a warning.
    let mut rpc_host = config.rpc_bind_host();
    if config.cluster {
        let mut free = sys::ensure_port_free(rpc_host, config.rpc_port);
        if let Err(e) = &free {
            if e.kind() == std::io::ErrorKind::AddrNotAvailable && config.rpc_bind.is_none() {
                tracing::warn!(
                    advertise_host = %rpc_host,
                    "AdvertiseHost is not an address of this machine: RPCPort listens on every \
                     address; set [wspush] RPCBind to the one peers reach"
                );
                rpc_host = any;
                free = sys::ensure_port_free(rpc_host, config.rpc_port);
            }
        }
        free.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on RPCPort {rpc_host}:{}: {e}",
                config.rpc_port
            )
        })?;
    }
    let mut inboxes = Vec::with_capacity(cores);
    let mut starts = Vec::with_capacity(cores);
    for _ in 0..cores {
        let http = sys::reuseport_listener(any, config.http_port, LISTEN_BACKLOG, true)
            .map_err(|e| anyhow::anyhow!("cannot listen on HttpPort {}: {e}", config.http_port))?;
        let rpc = if config.cluster {
            Some(
                sys::reuseport_listener(rpc_host, config.rpc_port, LISTEN_BACKLOG, false).map_err(
                    |e| {
                        anyhow::anyhow!(
                            "cannot listen on RPCPort {rpc_host}:{}: {e}",
                            config.rpc_port
                        )
                    },
                )?,
            )
        } else {
            None
        };
        let (bell, door) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        inboxes.push(Arc::new(ControlInbox {
            queue: SegQueue::new(),
            bell,
        }));
        starts.push(Some(CoreStart { http, rpc, door }));
    }
    let starts = Arc::new(Mutex::new(starts));

    let membership = if config.cluster {
        readiness::expect_membership();
        let m = membership::spawn(
            membership::MembershipConfig {
                endpoints: config.etcd_endpoints.clone(),
                self_addr: node,
                lease_ttl_secs: config.lease_ttl.as_secs() as i64,
                request_timeout: config.rpc_timeout.min(Duration::from_secs(2)),
                access: etcd_access(&config)?,
            },
            Arc::new(Notifier {
                inboxes: inboxes.clone(),
            }),
        )?;
        Some(m)
    } else {
        None
    };

    {
        let inboxes = inboxes.clone();
        let membership = membership.clone();
        std::thread::Builder::new()
            .name("wspush-signals".into())
            .spawn(move || wait_for_signals(inboxes, membership))?;
    }

    // glommio's MeshBuilder is Send but counts its clones with a plain `Rc`, so cores cloning or
    // dropping theirs at once corrupt the count: a drop then frees it under another core, and
    // the heap corruption crashed the process at exit (SIGSEGV in the allocator, about one stop
    // in fifty). So every clone is made here, on one thread, before any core runs; each core
    // moves one out; and the original is leaked, so the cores' racing drops can at worst leave
    // the count too high (a few bytes never freed), never reach zero.
    let mesh = MeshBuilder::<CoreMsg, _>::full(cores, MESH_CHANNEL);
    let meshes = Arc::new(Mutex::new(
        (0..cores).map(|_| mesh.clone()).collect::<Vec<_>>(),
    ));
    std::mem::forget(mesh);
    let nofile = sys::raise_nofile_limit();
    // From here on the config holds the effective per-core limit, not 0 for "derive it".
    config.max_conns_per_core = config.conns_per_core(nofile, cores);
    let config = Arc::new(config);
    // Webhook threads (issue 7): fed by the cores, flushed after the cores have stopped.
    let webhooks = crate::webhook::start(crate::webhook::Settings::from_config(&config, node))?;
    tracing::info!(
        http_port = config.http_port,
        cores,
        open_files = nofile,
        max_conns_per_core = config.max_conns_per_core,
        pinned = cores <= cpus,
        cluster = config.cluster,
        node = %node,
        rpc_bind = %rpc_host,
        version = env!("CARGO_PKG_VERSION"),
        "wspush starting"
    );
    for warning in config.start_warnings() {
        tracing::warn!("{warning}");
    }
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("wspush-core")
        // No file I/O here: keep the executor's DMA memory small (locked memory is scarce).
        .io_memory(1 << 20)
        .on_all_shards(move || {
            let config = config.clone();
            // Moved out of `meshes`, never cloned here (see above).
            let mesh = meshes.lock().ok().and_then(|mut spare| spare.pop());
            let starts = starts.clone();
            let inboxes = inboxes.clone();
            let membership = membership.clone();
            async move {
                let mesh =
                    mesh.ok_or_else(|| anyhow::anyhow!("bug: no channel mesh left for a core"))?;
                run_core(config, mesh, starts, inboxes, membership, cores, node).await
            }
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
    webhooks.stop();
    match failed {
        Some(e) => Err(e),
        None => {
            if readiness::draining() {
                let (clients, cut) = readiness::drain_figures();
                tracing::info!(clients, cut, "drain finished");
            }
            tracing::info!("wspush stopped");
            Ok(())
        }
    }
}

/// One core from start to stop.
async fn run_core(
    config: Arc<Config>,
    mesh: MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>,
    starts: Arc<Mutex<Vec<Option<CoreStart>>>>,
    inboxes: Vec<Arc<ControlInbox>>,
    membership: Option<Membership>,
    cores: usize,
    node: SocketAddrV4,
) -> anyhow::Result<()> {
    let joined = async {
        let (senders, receivers) = mesh
            .join()
            .await
            .map_err(|e| anyhow::anyhow!("joining the core channel mesh failed: {e}"))?;
        let shard = Rc::new(Shard::new(config.clone(), senders.peer_id(), cores, node));
        // Start-up only: each core takes its sockets once.
        let start = starts
            .lock()
            .map_err(|_| anyhow::anyhow!("bug: socket hand-off list poisoned"))?[shard.id]
            .take()
            .ok_or_else(|| anyhow::anyhow!("bug: core {} sockets taken twice", shard.id))?;
        anyhow::Ok((shard, senders, receivers, start))
    }
    .await;
    let (shard, senders, receivers, start) = match joined {
        Ok(parts) => parts,
        Err(e) => {
            // The other cores may be waiting for this one in the mesh and cannot be stopped
            // from here; a node missing a core must not run half-alive: exit now, loudly.
            tracing::error!("core failed to start: {e:#}");
            std::process::exit(1);
        }
    };
    let inbox = inboxes[shard.id].clone();
    drop(inboxes);

    // Duplicates of the listening sockets, shut when the drain starts. Cancelling the accept
    // tasks alone leaves the sockets listening (io_uring's pending accept still holds them)
    // until exit, so new clients would complete a TCP handshake and then hang; after the
    // shutdown they are refused at once (or, with SO_REUSEPORT, go to a core still open).
    let listening: Vec<std::net::TcpListener> = [Some(&start.http), start.rpc.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|l| l.try_clone().ok())
        .collect();
    let (cluster, rpc) = match (membership, start.rpc) {
        (Some(membership), Some(rpc)) => {
            let cluster = Cluster::new(&config, node, shard.id, membership);
            (Some(Rc::new(cluster)), Some(rpc))
        }
        _ => (None, None),
    };
    let router = Rc::new(Router::new(shard.clone(), senders, cluster));
    crate::route::mesh::serve_cores(&router, receivers);
    let mut tasks = Vec::new();
    if let Some(rpc) = rpc {
        let fd = rpc.as_raw_fd();
        tasks.push(glommio::spawn_local(rpc_accept_loop(
            router.clone(),
            sys::glommio_listener(rpc),
            fd,
        )));
        if shard.id == 0 {
            tasks.push(glommio::spawn_local(isolation_loop(router.clone())));
        }
    }

    let fd = start.http.as_raw_fd();
    let http = sys::glommio_listener(start.http);
    tasks.push(glommio::spawn_local(listener::accept_loop(
        router.clone(),
        http,
        fd,
    )));
    if readiness::core_accepting() == cores {
        tracing::debug!(
            http_port = config.http_port,
            cores,
            "wspush accepting on every core"
        );
        readiness::log_ready_once();
    }

    tasks.push({
        let shard = shard.clone();
        glommio::spawn_local(async move {
            // The interval is cut into slices and each tick pings one slice of the
            // connections: every socket still gets a ping per HeartbeatInterval, but 18,000
            // pings (and their pongs) no longer land in one burst (p99 231 ms vs 7.7 ms).
            let step = shard.config.heartbeat_interval / HEARTBEAT_SLICES;
            let mut slice = 0;
            loop {
                glommio::timer::sleep(step).await;
                shard.heartbeat(slice, HEARTBEAT_SLICES);
                slice = (slice + 1) % HEARTBEAT_SLICES;
            }
        })
    });

    tasks.push({
        let shard = shard.clone();
        glommio::spawn_local(async move {
            // The status page's charts: this core's totals once a second, into a fixed ring.
            // Taken just after each second turns, so every core labels the same moment alike.
            loop {
                shard.sample_trend();
                let into = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_millis() as u64);
                glommio::timer::sleep(Duration::from_millis(1005 - into.min(1000))).await;
            }
        })
    });

    control_loop(&router, &inbox, start.door).await;

    readiness::core_stopped_accepting();
    shard.draining.set(true);
    for task in tasks {
        task.cancel().await;
    }
    for l in listening {
        sys::shutdown(l.as_raw_fd(), sys::Shutdown::Both);
    }
    drain(&shard).await;
    Ok(())
}

/// Applies control messages until Shutdown.
async fn control_loop(router: &Rc<Router>, inbox: &ControlInbox, door: UnixStream) {
    let mut door = sys::glommio_unix_stream(door);
    let mut bytes = [0u8; 64];
    loop {
        while let Some(msg) = inbox.queue.pop() {
            match msg {
                Control::Shutdown => return,
                Control::Peers(peers) => router.peers_changed(&peers),
                Control::Systems(systems) => router.shard.add_systems(&systems),
            }
        }
        match door.read(&mut bytes).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Accepts peer nodes' links on RPCPort; each runs requests on this node once its handshake
/// passed. Links beyond MaxNodeLinksPerCore / MaxNodeLinksPerPeer are closed at once.
async fn rpc_accept_loop(router: Rc<Router>, listener: glommio::net::TcpListener, fd: RawFd) {
    let Some(cluster) = router.cluster().cloned() else {
        return;
    };
    let shard = router.shard.clone();
    listener::accept_each(&listener, fd, shard.id, "RPC", |stream, peer| {
        let core = shard.id;
        let slot = match cluster.inbound.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(limit) => {
                shard.metrics.node_link_refused("limit");
                if let Some(skipped) = shard.throttles.link_refused.admit() {
                    let (key, held) = match limit {
                        link::LimitRefusal::Core(n) => ("MaxNodeLinksPerCore", n),
                        link::LimitRefusal::Peer(n) => ("MaxNodeLinksPerPeer", n),
                    };
                    tracing::warn!(core, %peer, held, also = skipped,
                        "node link refused: {key} reached on this core");
                }
                return;
            }
        };
        let shard = shard.clone();
        let cluster = cluster.clone();
        let router = router.clone();
        glommio::spawn_local(async move {
            let _slot = slot;
            let auth = &cluster.auth;
            let served = link::serve_peer(stream, core, auth, move |from, op| {
                let router = router.clone();
                async move { crate::route::remote::serve_remote(&router, from, op).await }
            })
            .await;
            if let Err(refused) = served {
                let e = &refused.error;
                shard.metrics.node_link_refused(e.reason());
                let claimed = refused.claimed.map(|n| n.to_string()).unwrap_or_default();
                // A socket that connects and leaves (a port check) is not worth a warning,
                // nor a peer repeating the same mistake within a minute.
                let quiet = matches!(e, crate::cluster::handshake::HandshakeError::Closed)
                    || !cluster.inbound.first_in_a_while(peer.ip(), e.reason());
                let logged = if quiet {
                    None
                } else {
                    shard.throttles.link_refused.admit()
                };
                match logged {
                    Some(skipped) => tracing::warn!(core, %peer, node = %claimed, error = %e,
                        also = skipped, "node link refused"),
                    None => tracing::debug!(core, %peer, node = %claimed, error = %e,
                        "node link refused"),
                }
            }
        })
        .detach();
    })
    .await
}

/// Core 0, cluster mode: once membership has been lost for LeaseTtl, asks the peers whether
/// the node is cut off (see `cluster::isolation_verdict`); if so, closes the clients of every
/// core with 1001 and refuses new ones with 503 until membership is back.
async fn isolation_loop(router: Rc<Router>) {
    use crate::cluster::{isolation_verdict, proto::RemoteOp, PeerView};
    let Some(cluster) = router.cluster().cloned() else {
        return;
    };
    let shard = &router.shard;
    let lease_ttl = shard.config.lease_ttl;
    let mut lost_since: Option<Instant> = None;
    loop {
        glommio::timer::sleep(ISOLATION_CHECK_EVERY).await;
        if readiness::membership_established() || readiness::draining() {
            lost_since = None;
            if readiness::set_cut_off(false) {
                tracing::info!("cluster membership is back: accepting WebSocket clients again");
            }
            continue;
        }
        // By LeaseTtl after the loss our lease has expired in a live etcd (the last keep-alive
        // was before the loss), so peers that reach etcd have dropped this node.
        let since = *lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() < lease_ttl {
            continue;
        }
        let peers = cluster.peers();
        let calls = peers
            .iter()
            .map(|&peer| cluster.call(peer, RemoteOp::Membership));
        let views: Vec<PeerView> = futures_util::future::join_all(calls)
            .await
            .iter()
            .map(PeerView::from_answer)
            .collect();
        let verdict = isolation_verdict(&views);
        if readiness::membership_established() {
            continue; // regained while we asked
        }
        match verdict {
            Some(why) => {
                let first = !readiness::set_cut_off(true);
                // Every tick while cut off, not only the first: a WebSocket whose upgrade
                // passed the check just before the flag was set is closed within a second.
                let closed = router.give_up_clients().await;
                if first {
                    tracing::warn!(
                        clients = closed,
                        lost_secs = since.elapsed().as_secs(),
                        peers = peers.len(),
                        "cut off from the cluster ({why}): closed every WebSocket client with \
                         1001, refusing new ones with 503 until etcd membership is back"
                    );
                } else if closed > 0 {
                    tracing::debug!(clients = closed, "cut off: closed late WebSocket clients");
                }
            }
            None if readiness::set_cut_off(false) => {
                tracing::info!("a peer vouches for the cluster again: accepting WebSocket clients");
            }
            None => {}
        }
    }
}

/// Closes every client with 1001 and waits up to ShutdownGrace for them to go.
async fn drain(shard: &Rc<Shard>) {
    let conns = shard.all_conns();
    tracing::debug!(core = shard.id, clients = conns.len(), "draining");
    readiness::drain_closed(conns.len());
    for conn in &conns {
        shard.close_as(
            conn,
            crate::shard::conn::EndReason::Shutdown,
            crate::ws::frame::close_code::GOING_AWAY,
            "server shutting down",
        );
    }
    drop(conns);
    let deadline = Instant::now() + shard.config.shutdown_grace;
    while shard.connection_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // The node drains as one: a core whose clients are gone keeps serving the HTTP connections
    // it holds (a balancer's kept-alive probe gets 503 "draining", an API request its answer)
    // until every core is done or the grace ends, instead of leaving them unanswered until the
    // process exits. Within the same deadline, so the cut below is never later than it was.
    readiness::core_drained();
    while !readiness::all_cores_drained() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = shard.all_conns();
    readiness::drain_cut(left.len());
    for conn in left {
        conn.cut(crate::shard::conn::EndReason::Shutdown);
        // The core stops right after this, so these sessions never reach end_conn: their
        // webhook offline event is sent from here.
        shard.webhook_event(crate::webhook::Kind::Offline, &conn, "");
    }
}

/// The signal thread: the first SIGTERM/SIGINT leaves etcd (so peers stop routing here at once)
/// and starts the drain; a second one exits at once.
fn wait_for_signals(inboxes: Vec<Arc<ControlInbox>>, membership: Option<Membership>) {
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
        readiness::start_draining();
        tracing::info!(signal, "drain started");
        if let Some(membership) = &membership {
            let (tx, rx) = tokio::sync::oneshot::channel();
            membership.send(EtcdRequest::Shutdown { reply: tx });
            // The etcd thread answers within its request deadline, or drops the sender.
            // The etcd thread logged whether the revoke worked.
            let _ = rx.blocking_recv();
            readiness::set_membership(false);
        }
        for inbox in &inboxes {
            inbox.send(Control::Shutdown);
        }
    }
}

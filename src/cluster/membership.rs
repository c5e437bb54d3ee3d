//! etcd membership: the one side thread of a cluster node that talks to etcd.
//!
//! etcd-client is tokio-based, so it runs on its own thread ("wspush-etcd") with a current-thread
//! tokio runtime; the glommio cores never wait on it. What the thread learns is pushed to every core
//! through a [`CoreNotifier`] ([`ToCores`]); what the cores need from etcd (register a system, ask
//! whether one is registered, leave) they send as an [`EtcdRequest`] through [`Membership::send`].
//!
//! Key layout (the original go-websocket's):
//! - `/wsServers/<host:port>` = `<host:port>`: one key per live node, attached to that node's lease
//!   (TTL 5 s, kept alive every TTL/3). A node that dies disappears from the others' peer tables when
//!   its lease expires, i.e. within the TTL; a node that leaves gracefully revokes its lease and
//!   disappears at once.
//! - `ws/account/<systemId>` = `{"systemId":"...","registerTime":<unix secs>}`: registered systems,
//!   created atomically (a transaction "create only if absent"). wspush adds `"secret"` and
//!   `"webhookUrl"` when the system was registered with them (issue 7); a value without them, as
//!   the original writes it, or one that is not JSON at all, is a system without a secret.
//!
//! The thread's life: connect -> grant lease -> put our key -> keep-alive -> read both prefixes at one
//! revision -> notify `Peers`, `SystemsAdded`, `EtcdConnected(true)` -> watch both prefixes from the
//! revision after the read. Any failure (a call, the watch, the keep-alive, an expired lease) sends
//! `EtcdConnected(false)` and starts over with a backoff (200 ms doubling to 2 s, forever). The last
//! known peer table is kept while etcd is away, so nodes keep forwarding to the peers they know.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::metrics::{self, EtcdCounters};
use crate::types::SystemInfo;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Prefix of the node keys, `/wsServers/<host:port>` (the original's `ETCD_SERVER_LIST`).
pub const SERVERS_PREFIX: &str = "/wsServers/";
/// Prefix of the registered systems, `ws/account/<systemId>` (the original's
/// `ETCD_PREFIX_ACCOUNT_INFO`).
pub const ACCOUNT_PREFIX: &str = "ws/account/";

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// While etcd stays unreachable, one warn line per this period (the first failure is logged at once).
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// What the cores learn from etcd. Sent to every core through `CoreNotifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCores {
    /// The complete current set of OTHER nodes (`/wsServers/<host:port>` keys minus our own), sent
    /// after every change and after every (re)connect. Sorted, without duplicates.
    Peers(Vec<SocketAddrV4>),
    /// Systems registered in etcd (`ws/account/<systemId>`) with the options read from their
    /// values: the full list once after each (re)connect, then each one put as it appears in the
    /// watch.
    SystemsAdded(Vec<(String, Arc<SystemInfo>)>),
    /// Whether membership is established (connected, lease granted, our key put). false as soon as
    /// etcd is lost.
    EtcdConnected(bool),
}

/// Receives [`ToCores`] messages on the etcd thread; implementations forward them to every core.
/// `notify` must not block for long (it runs on the thread that keeps the lease alive).
pub trait CoreNotifier: Send + Sync + 'static {
    fn notify(&self, msg: ToCores);
}

/// A request from a core to the etcd thread. Every reply comes within the config's
/// `request_timeout` (or at once when etcd is known to be unreachable).
pub enum EtcdRequest {
    /// Atomic register: an etcd transaction "create only if absent" on `ws/account/<systemId>`
    /// (compare CreateRevision == 0, then put; value JSON `{"systemId":"...","registerTime":<unix
    /// secs>}` like the original). Ok(true) created, Ok(false) already existed, Err(msg) when etcd
    /// cannot be reached/answer within the request deadline (msg says etcd is unreachable).
    /// The value carries `info`'s secret and webhook URL when set.
    Register {
        system: String,
        info: SystemInfo,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Is `ws/account/<systemId>` in etcd right now, and with which options? (fallback for a
    /// request racing the watch). Ok(None) when absent, or Err(msg).
    IsRegistered {
        system: String,
        reply: oneshot::Sender<Result<Option<SystemInfo>, String>>,
    },
    /// Graceful leave: revoke our lease (so peers drop us at once), then reply and stop the thread.
    Shutdown { reply: oneshot::Sender<()> },
}

#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// "host:port" strings from `[etcd] Endpoints` ("http://host:port" is accepted too).
    pub endpoints: Vec<String>,
    /// Our advertised host:RPCPort; our key is "/wsServers/<self_addr>".
    pub self_addr: SocketAddrV4,
    /// Lease TTL in seconds (5 in the original).
    pub lease_ttl_secs: i64,
    /// Deadline for each etcd call (e.g. 2 s).
    pub request_timeout: Duration,
    /// Credentials and TLS material (`[etcd] User`, `Password`, `CaFile`, `CertFile`, `KeyFile`).
    pub access: EtcdAccess,
}

/// How this node proves itself to etcd and checks etcd (issue 12; the original has neither).
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// `(user, password)`: etcd-client authenticates on connect and again when the token
    /// expires.
    pub user: Option<(String, String)>,
    /// PEM of the CA that signed etcd's server certificate. Set, every endpoint is TLS and only
    /// this CA is trusted (the build has no system roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for an etcd with `--client-cert-auth`.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdAccess")
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.identity_pem.is_some())
            .finish()
    }
}

/// Handle to the etcd thread. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Membership {
    tx: mpsc::UnboundedSender<EtcdRequest>,
}

impl Membership {
    /// Sends a request to the etcd thread (never blocks; usable from any thread, including glommio
    /// executors). If the thread has stopped, the request is dropped, so its reply channel closes
    /// (the caller's receiver gets an error).
    pub fn send(&self, req: EtcdRequest) {
        if self.tx.send(req).is_err() {
            tracing::debug!("etcd membership thread has stopped; request dropped");
        }
    }
}

/// Starts the "wspush-etcd" thread running a current-thread tokio runtime. Returns immediately; the
/// thread connects (and keeps reconnecting) by itself.
///
/// The thread stops on [`EtcdRequest::Shutdown`], or when every [`Membership`] handle has been
/// dropped (it then revokes the lease as on shutdown).
pub fn spawn(
    config: MembershipConfig,
    notifier: Arc<dyn CoreNotifier>,
) -> std::io::Result<Membership> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("wspush-etcd".to_string())
        .spawn(move || {
            let panic_notifier = notifier.clone();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                runtime.block_on(run(config, notifier, rx));
            }));
            if outcome.is_err() {
                // Safety net only: nothing in this module is meant to panic.
                tracing::error!("etcd membership thread panicked; cluster membership stopped");
                panic_notifier.notify(ToCores::EtcdConnected(false));
            }
        })?;
    Ok(Membership { tx })
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// The etcd key of a node: `/wsServers/<ip:port>`.
pub fn server_key(addr: SocketAddrV4) -> String {
    format!("{SERVERS_PREFIX}{addr}")
}

/// The etcd key of a system: `ws/account/<systemId>`.
pub fn account_key(system: &str) -> String {
    format!("{ACCOUNT_PREFIX}{system}")
}

/// Parses a node key `/wsServers/1.2.3.4:7900` into its address; when the key's suffix is not an
/// `ip:port`, falls back to the value (the original stored the address in both).
pub fn parse_server_key(key: &str, value: &[u8]) -> Option<SocketAddrV4> {
    let from_key = key
        .strip_prefix(SERVERS_PREFIX)
        .and_then(|rest| rest.trim().parse().ok());
    from_key.or_else(|| std::str::from_utf8(value).ok()?.trim().parse().ok())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AccountInfo<'a> {
    system_id: &'a str,
    register_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<&'a str>,
}

/// The value stored under `ws/account/<systemId>`: the original's
/// `{"systemId":"...","registerTime":<unix secs>}`, plus `"secret"` and `"webhookUrl"` only when
/// set, so a system without them reads exactly as the original wrote it.
pub fn account_json(system: &str, register_time: i64, info: &SystemInfo) -> String {
    match serde_json::to_string(&AccountInfo {
        system_id: system,
        register_time,
        secret: info.secret.as_deref(),
        webhook_url: info.webhook_url.as_deref(),
    }) {
        Ok(s) => s,
        // Not reachable for strings and an i64; kept panic-free anyway.
        Err(_) => format!("{{\"systemId\":\"\",\"registerTime\":{register_time}}}"),
    }
}

/// A system's options read from its `ws/account/<systemId>` value, leniently: the original's
/// values (no secret), values that are not JSON objects, and empty strings all mean "no secret"
/// rather than "no system", since the key alone registers it. A `secret` that is not a string
/// (an operator's `"secret": 12345`) is taken as its JSON text, not ignored: dropping it would
/// open a system its operator meant to close. An invalid `webhookUrl` is dropped with a warning.
pub fn parse_account(system: &str, value: &[u8]) -> SystemInfo {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(value)
    else {
        tracing::debug!(
            system,
            "account value is not a JSON object: a system without a secret"
        );
        return SystemInfo::default();
    };
    let secret = match map.get("secret") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
        Some(other) => {
            tracing::warn!(
                system,
                "account secret is not a JSON string: using its JSON text"
            );
            Some(other.to_string())
        }
    };
    let webhook_url = match map.get("webhookUrl") {
        Some(serde_json::Value::String(url)) if !url.is_empty() => {
            match crate::shard::system::check_webhook_url(url) {
                Ok(()) => Some(url.clone()),
                Err(why) => {
                    tracing::warn!(system, url, why, "account webhookUrl ignored");
                    None
                }
            }
        }
        _ => None,
    };
    SystemInfo {
        secret,
        webhook_url,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The node keys seen in etcd, and the peer set derived from them (all of them minus ourselves).
#[derive(Debug)]
struct PeerTable {
    self_addr: SocketAddrV4,
    by_key: BTreeMap<String, SocketAddrV4>,
    /// Keys already warned about (one warn per bad key).
    warned: HashSet<String>,
}

impl PeerTable {
    fn new(self_addr: SocketAddrV4) -> Self {
        PeerTable {
            self_addr,
            by_key: BTreeMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Replaces the whole table with a fresh read of the prefix.
    fn reset<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        self.by_key.clear();
        for (key, value) in kvs {
            self.put(key, value);
        }
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        match parse_server_key(key, value) {
            Some(addr) => {
                self.by_key.insert(key.to_string(), addr);
            }
            None => {
                self.by_key.remove(key);
                if self.warned.insert(key.to_string()) {
                    tracing::warn!(
                        key,
                        value = %String::from_utf8_lossy(value),
                        "ignoring etcd node key: neither key nor value is an ip:port"
                    );
                }
            }
        }
    }

    fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// The other nodes: sorted, deduplicated, without our own address.
    fn peers(&self) -> Vec<SocketAddrV4> {
        let set: BTreeSet<SocketAddrV4> = self
            .by_key
            .values()
            .copied()
            .filter(|a| *a != self.self_addr)
            .collect();
        set.into_iter().collect()
    }
}

/// Logs who joined and who left between two peer sets.
fn log_peer_diff(old: &[SocketAddrV4], new: &[SocketAddrV4]) {
    for a in new.iter().filter(|a| !old.contains(a)) {
        tracing::info!(peer = %a, "peer joined");
    }
    for a in old.iter().filter(|a| !new.contains(a)) {
        tracing::info!(peer = %a, "peer left");
    }
}

fn unreachable_msg(detail: &str) -> String {
    if detail.is_empty() {
        "etcd unreachable".to_string()
    } else {
        format!("etcd unreachable: {detail}")
    }
}

// ---------------------------------------------------------------------------------------------
// The thread
// ---------------------------------------------------------------------------------------------

/// State shared (on the one etcd thread) between the connection driver and the request handler.
#[derive(Default)]
struct Shared {
    /// The client of the current (or last) session, once its lease is granted.
    client: Option<Client>,
    /// Our current lease, once granted (revoked on shutdown).
    lease: Option<i64>,
    /// Membership established and not lost since.
    connected: bool,
    /// Why etcd is not reachable (for request errors).
    last_error: String,
}

async fn run(
    cfg: MembershipConfig,
    notifier: Arc<dyn CoreNotifier>,
    mut rx: mpsc::UnboundedReceiver<EtcdRequest>,
) {
    let shared = Rc::new(RefCell::new(Shared {
        last_error: "not connected yet".to_string(),
        ..Shared::default()
    }));
    let mut driver = Box::pin(drive(cfg.clone(), notifier, shared.clone()));
    let mut driver_done = false;
    let shutdown_reply = loop {
        tokio::select! {
            req = rx.recv() => match req {
                Some(EtcdRequest::Shutdown { reply }) => break Some(reply),
                Some(req) => serve(&cfg, &shared, req),
                None => break None,
            },
            () = &mut driver, if !driver_done => {
                // The driver never returns; if it ever did, keep serving requests (they fail fast).
                tracing::error!("etcd membership driver stopped unexpectedly");
                driver_done = true;
                shared.borrow_mut().connected = false;
            }
        }
    };
    // Stop the keep-alive and the watch first, then revoke: peers drop us at once.
    drop(driver);
    let (client, lease, connected) = {
        let mut s = shared.borrow_mut();
        let connected = std::mem::replace(&mut s.connected, false);
        (s.client.take(), s.lease.take(), connected)
    };
    match lease {
        Some(lease) => match revoke(&cfg, client.filter(|_| connected), lease).await {
            Ok(()) => tracing::info!(node = %cfg.self_addr, "left the cluster: etcd lease revoked"),
            Err(e) => tracing::warn!(
                error = %e,
                "leaving the cluster: could not revoke the etcd lease; peers drop this node when it expires"
            ),
        },
        None => tracing::info!("etcd membership stopped (no lease to revoke)"),
    }
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
}

/// Revokes `lease` within the request deadline, on the live client, or on a fresh one when the
/// session was lost (a lost session's channel may never recover).
async fn revoke(cfg: &MembershipConfig, live: Option<Client>, lease: i64) -> Result<(), String> {
    let t = cfg.request_timeout;
    let attempt = async {
        let mut client = match live {
            Some(c) => c,
            None => connect(cfg).await?,
        };
        client.lease_revoke(lease).await.map(|_| ())
    };
    with_deadline(t, "lease revoke", attempt).await
}

/// Serves a Register/IsRegistered request: fails fast when disconnected, else runs it as a task
/// with its own deadline (so it runs concurrently with the watch loop).
fn serve(cfg: &MembershipConfig, shared: &Rc<RefCell<Shared>>, req: EtcdRequest) {
    let client = {
        let s = shared.borrow();
        if s.connected {
            s.client.clone().ok_or_else(|| unreachable_msg("no client"))
        } else {
            Err(unreachable_msg(&s.last_error))
        }
    };
    let timeout = cfg.request_timeout;
    match req {
        EtcdRequest::Register {
            system,
            info,
            reply,
        } => match client {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(client) => {
                tokio::spawn(async move {
                    let r = register(client, &system, &info, timeout).await;
                    match &r {
                        // The core that asked logs the registration at info, once.
                        Ok(true) => tracing::debug!(system, "system registered in etcd"),
                        Ok(false) => tracing::debug!(system, "system already registered"),
                        Err(e) => tracing::warn!(system, error = %e, "register failed"),
                    }
                    let _ = reply.send(r);
                });
            }
        },
        EtcdRequest::IsRegistered { system, reply } => match client {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(client) => {
                tokio::spawn(async move {
                    let r = is_registered(client, &system, timeout).await;
                    if let Err(e) = &r {
                        tracing::warn!(system, error = %e, "registered-system lookup failed");
                    }
                    let _ = reply.send(r);
                });
            }
        },
        EtcdRequest::Shutdown { reply } => {
            // Handled by `run`; kept total for safety.
            let _ = reply.send(());
        }
    }
}

async fn register(
    mut client: Client,
    system: &str,
    info: &SystemInfo,
    timeout: Duration,
) -> Result<bool, String> {
    let key = account_key(system);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            account_json(system, unix_now(), info),
            None,
        )]);
    with_deadline(timeout, "register", client.txn(txn))
        .await
        .map(|resp| resp.succeeded())
        .map_err(|e| unreachable_msg(&e))
}

async fn is_registered(
    mut client: Client,
    system: &str,
    timeout: Duration,
) -> Result<Option<SystemInfo>, String> {
    with_deadline(timeout, "lookup", client.get(account_key(system), None))
        .await
        .map(|resp| {
            resp.kvs()
                .first()
                .map(|kv| parse_account(system, kv.value()))
        })
        .map_err(|e| unreachable_msg(&e))
}

/// Runs an etcd call under a deadline; the error says what failed.
async fn with_deadline<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
    }
}

/// Tracks an outage for logging: the first failure is logged, then one line per
/// `UNREACHABLE_WARN_EVERY`.
struct Outage {
    since: Instant,
    last_warn: Instant,
    attempts: u64,
}

/// The connection loop: never returns.
async fn drive(
    cfg: MembershipConfig,
    notifier: Arc<dyn CoreNotifier>,
    shared: Rc<RefCell<Shared>>,
) {
    let mut table = PeerTable::new(cfg.self_addr);
    let mut sent_peers: Vec<SocketAddrV4> = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut ever_connected = false;
    let mut outage: Option<Outage> = None;
    loop {
        match establish(&cfg, &shared).await {
            Ok((mut session, snapshot)) => {
                backoff = BACKOFF_MIN;
                table.reset(
                    snapshot
                        .servers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_slice())),
                );
                let peers = table.peers();
                log_peer_diff(&sent_peers, &peers);
                sent_peers = peers.clone();
                let peer_count = peers.len();
                notifier.notify(ToCores::Peers(peers));
                notifier.notify(ToCores::SystemsAdded(snapshot.systems));
                {
                    let mut s = shared.borrow_mut();
                    s.connected = true;
                    s.last_error.clear();
                }
                metrics::ETCD.connected.store(1, Ordering::Relaxed);
                EtcdCounters::bump(&metrics::ETCD.sessions);
                notifier.notify(ToCores::EtcdConnected(true));
                match outage.take() {
                    Some(o) if ever_connected => tracing::info!(
                        peers = peer_count,
                        down_secs = o.since.elapsed().as_secs(),
                        "etcd regained; membership re-established"
                    ),
                    _ => tracing::info!(
                        peers = peer_count,
                        node = %cfg.self_addr,
                        "etcd membership established"
                    ),
                }
                ever_connected = true;

                let reason = session
                    .run(&cfg, &*notifier, &mut table, &mut sent_peers)
                    .await;

                {
                    let mut s = shared.borrow_mut();
                    s.connected = false;
                    s.last_error.clone_from(&reason);
                }
                metrics::ETCD.connected.store(0, Ordering::Relaxed);
                notifier.notify(ToCores::EtcdConnected(false));
                tracing::warn!(
                    error = %reason,
                    peers = sent_peers.len(),
                    "etcd lost; keeping the known peers and reconnecting"
                );
                let now = Instant::now();
                outage = Some(Outage {
                    since: now,
                    last_warn: now,
                    attempts: 0,
                });
                drop(session);
                tokio::time::sleep(BACKOFF_MIN).await;
            }
            Err(e) => {
                shared.borrow_mut().last_error.clone_from(&e);
                EtcdCounters::bump(&metrics::ETCD.connect_failures);
                let now = Instant::now();
                match &mut outage {
                    None => {
                        tracing::warn!(
                            error = %e,
                            endpoints = ?cfg.endpoints,
                            "etcd unreachable; retrying in the background"
                        );
                        outage = Some(Outage {
                            since: now,
                            last_warn: now,
                            attempts: 1,
                        });
                    }
                    Some(o) => {
                        o.attempts += 1;
                        if now.duration_since(o.last_warn) >= UNREACHABLE_WARN_EVERY {
                            o.last_warn = now;
                            tracing::warn!(
                                error = %e,
                                attempts = o.attempts,
                                down_secs = now.duration_since(o.since).as_secs(),
                                "etcd still unreachable"
                            );
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What was read right after (re)connecting, at one revision.
struct Snapshot {
    servers: Vec<(String, Vec<u8>)>,
    systems: Vec<(String, Arc<SystemInfo>)>,
}

/// A live membership: the lease keep-alive and the watch on both prefixes.
struct Session {
    keeper: LeaseKeeper,
    keep_alive: LeaseKeepAliveStream,
    watch: WatchStream,
}

fn connect_options(timeout: Duration, access: &EtcdAccess) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        // Notices a dead connection (e.g. a network partition) even when no call is in flight.
        .with_keep_alive(Duration::from_secs(2), timeout)
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &access.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(ca) = &access.ca_pem {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &access.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    options
}

/// A connect error with its causes (a transport error's own text is only "transport error")
/// and, when it says etcd refused this node's credentials or certificate, which keys to check.
fn explain_connect_error(e: etcd_client::Error) -> etcd_client::Error {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("authentication failed") || lower.contains("invalid user") {
        "etcd refused the credentials: check [etcd] User and Password"
    } else if lower.contains("user name is empty") {
        "etcd has authentication enabled: set [etcd] User and Password"
    } else if lower.contains("certificate") || lower.contains("tls") {
        "TLS to etcd failed: check [etcd] CaFile (the CA of etcd's certificate), CertFile and KeyFile"
    } else if matches!(e, etcd_client::Error::TransportError(_)) {
        return etcd_client::Error::EndpointError(text);
    } else {
        return e;
    };
    etcd_client::Error::EndpointError(format!("{hint} ({text})"))
}

/// A new client for the configured endpoints (connections are made lazily, on the first call).
async fn connect(cfg: &MembershipConfig) -> Result<Client, etcd_client::Error> {
    let endpoints: Vec<&str> = cfg
        .endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    let options = connect_options(cfg.request_timeout, &cfg.access);
    Client::connect(&endpoints, Some(options))
        .await
        .map_err(explain_connect_error)
}

/// Connect, grant a lease, put our key, start the keep-alive, read both prefixes, start the watch.
/// A fresh client each time: a balanced channel whose endpoint failed may never recover.
async fn establish(
    cfg: &MembershipConfig,
    shared: &Rc<RefCell<Shared>>,
) -> Result<(Session, Snapshot), String> {
    let t = cfg.request_timeout;
    let mut client = with_deadline(t, "connect", connect(cfg)).await?;

    let lease = with_deadline(
        t,
        "lease grant",
        client.lease_grant(cfg.lease_ttl_secs, None),
    )
    .await?
    .id();
    let old_lease = {
        let mut s = shared.borrow_mut();
        s.client = Some(client.clone());
        s.lease.replace(lease)
    };
    let key = server_key(cfg.self_addr);
    let put_opts = PutOptions::new().with_lease(lease);
    with_deadline(
        t,
        "register node",
        client.put(key, cfg.self_addr.to_string(), Some(put_opts)),
    )
    .await?;
    if let Some(old) = old_lease.filter(|old| *old != lease) {
        // Our key now hangs on the new lease; drop the previous one rather than let it linger.
        let mut c = client.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(t, c.lease_revoke(old)).await;
        });
    }
    let (keeper, keep_alive) =
        with_deadline(t, "lease keep-alive", client.lease_keep_alive(lease)).await?;

    let servers_resp = with_deadline(
        t,
        "read nodes",
        client.get(SERVERS_PREFIX, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = servers_resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| "read nodes: response without a header".to_string())?;
    let systems = read_systems(&client, revision, t).await?;

    let servers = servers_resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    let from = revision + 1;
    let mut watch = with_deadline(
        t,
        "watch nodes",
        client.watch(
            SERVERS_PREFIX,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        ),
    )
    .await?;
    with_deadline(
        t,
        "watch systems",
        watch.watch(
            ACCOUNT_PREFIX,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        ),
    )
    .await?;

    Ok((
        Session {
            keeper,
            keep_alive,
            watch,
        },
        Snapshot { servers, systems },
    ))
}

/// Keys per page of the systems snapshot.
const SYSTEMS_PAGE: i64 = 1000;
/// Largest page response the snapshot's kv client decodes (tonic's default is 4 MiB).
const SYSTEMS_PAGE_BYTES: usize = 64 << 20;

/// Every `ws/account/` key at `revision`, in pages of [`SYSTEMS_PAGE`] keys, each page under its
/// own deadline. One response for all of them would not do: 100,000 systems are about 10 MB,
/// past the 4 MiB a gRPC response may have, and the node would never get its snapshot, so never
/// become ready. A page of 1,000 of the values this server writes (a 128-byte id, a secret, a
/// URL of at most 2 KiB) stays under 2.5 MB; values written into etcd by hand may be as large as
/// etcd takes (`--max-request-bytes`, 1.5 MiB by default), so a page is decoded up to
/// [`SYSTEMS_PAGE_BYTES`] and one that is larger still is read again in halves.
async fn read_systems(
    client: &Client,
    revision: i64,
    t: Duration,
) -> Result<Vec<(String, Arc<SystemInfo>)>, String> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(SYSTEMS_PAGE_BYTES);
    // The prefix's range end: its last byte plus one ('/' + 1 = '0').
    let mut end = ACCOUNT_PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = ACCOUNT_PREFIX.as_bytes().to_vec();
    let mut page = SYSTEMS_PAGE;
    let mut systems = Vec::new();
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_revision(revision)
            .with_limit(page);
        let resp = match tokio::time::timeout(t, kv.get(from.clone(), Some(opts))).await {
            Ok(Ok(resp)) => resp,
            // tonic's decode limit (its status text: etcd-client does not re-export its codes).
            Ok(Err(e)) if page > 1 && e.to_string().contains("message length too large") => {
                page /= 2;
                continue;
            }
            Ok(Err(e)) => return Err(format!("read systems: {e}")),
            Err(_) => return Err(format!("read systems: no answer within {t:?}")),
        };
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(system) = key.strip_prefix(ACCOUNT_PREFIX).filter(|s| !s.is_empty()) {
                let info = Arc::new(parse_account(system, kv.value()));
                systems.push((system.to_string(), info));
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                // The next key after the last one read: the same bytes with a NUL appended.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(systems)
}

/// Counts a session lost to its lease keep-alive (for `/metrics`) and passes the reason on.
fn keepalive_failed(reason: String) -> String {
    EtcdCounters::bump(&metrics::ETCD.keepalive_failures);
    reason
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Keeps the lease alive and follows the watch until something fails; returns why.
    async fn run(
        &mut self,
        cfg: &MembershipConfig,
        notifier: &dyn CoreNotifier,
        table: &mut PeerTable,
        sent_peers: &mut Vec<SocketAddrV4>,
    ) -> String {
        let t = cfg.request_timeout;
        let ttl_ms = u64::try_from(cfg.lease_ttl_secs.max(1)).unwrap_or(1) * 1000;
        let period = Duration::from_millis((ttl_ms / 3).max(100));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the oldest unanswered keep-alive must have been answered by.
        let mut answer_by: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if answer_by.is_none() {
                        answer_by = Some(Instant::now() + t);
                    }
                    match tokio::time::timeout(t, self.keeper.keep_alive()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return keepalive_failed(format!("lease keep-alive: {e}"));
                        }
                        Err(_) => {
                            let why = format!("lease keep-alive: could not send within {t:?}");
                            return keepalive_failed(why);
                        }
                    }
                }
                () = sleep_until_opt(answer_by) => {
                    return keepalive_failed(format!("lease keep-alive: no answer within {t:?}"));
                }
                msg = self.keep_alive.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => answer_by = None,
                    Ok(Some(_)) => return keepalive_failed("lease expired".to_string()),
                    Ok(None) => {
                        return keepalive_failed("lease keep-alive stream closed".to_string());
                    }
                    Err(e) => return keepalive_failed(format!("lease keep-alive: {e}")),
                },
                msg = self.watch.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return format!("watch canceled: {}", resp.cancel_reason());
                        }
                        apply_watch(&resp, notifier, table, sent_peers);
                    }
                    Ok(None) => return "watch stream closed".to_string(),
                    Err(e) => return format!("watch: {e}"),
                },
            }
        }
    }
}

/// Applies one watch response: a new `Peers` if the peer set changed, `SystemsAdded` for new systems.
fn apply_watch(
    resp: &WatchResponse,
    notifier: &dyn CoreNotifier,
    table: &mut PeerTable,
    sent_peers: &mut Vec<SocketAddrV4>,
) {
    let mut systems = Vec::new();
    let mut servers_touched = false;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key());
        if key.starts_with(SERVERS_PREFIX) {
            servers_touched = true;
            match ev.event_type() {
                EventType::Put => table.put(&key, kv.value()),
                EventType::Delete => table.remove(&key),
            }
        } else if let Some(system) = key.strip_prefix(ACCOUNT_PREFIX) {
            if ev.event_type() == EventType::Put && !system.is_empty() {
                // A later put of the same key in one response wins (etcd orders events).
                let info = Arc::new(parse_account(system, kv.value()));
                match systems.iter_mut().find(|(s, _)| s == system) {
                    Some(entry) => entry.1 = info,
                    None => systems.push((system.to_string(), info)),
                }
            }
        }
    }
    if servers_touched {
        let peers = table.peers();
        if peers != *sent_peers {
            log_peer_diff(sent_peers, &peers);
            *sent_peers = peers.clone();
            notifier.notify(ToCores::Peers(peers));
        }
    }
    if !systems.is_empty() {
        notifier.notify(ToCores::SystemsAdded(systems));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn parses_server_keys() {
        assert_eq!(
            parse_server_key("/wsServers/1.2.3.4:7900", b"1.2.3.4:7900"),
            Some(addr("1.2.3.4:7900"))
        );
        // The key wins; the value is the fallback.
        assert_eq!(
            parse_server_key("/wsServers/1.2.3.4:7900", b""),
            Some(addr("1.2.3.4:7900"))
        );
        assert_eq!(
            parse_server_key("/wsServers/node-a", b"10.0.0.1:7900"),
            Some(addr("10.0.0.1:7900"))
        );
        assert_eq!(parse_server_key("/wsServers/node-a", b"garbage"), None);
        assert_eq!(parse_server_key("/wsServers/1.2.3.4", b""), None);
        assert_eq!(parse_server_key("/wsServers/1.2.3.4:99999", b""), None);
        assert_eq!(parse_server_key("/wsServers/", b"\xff\xfe"), None);
        assert_eq!(parse_server_key("/other/1.2.3.4:7900", b""), None);
        assert_eq!(server_key(addr("1.2.3.4:7900")), "/wsServers/1.2.3.4:7900");
        assert_eq!(account_key("sys1"), "ws/account/sys1");
    }

    #[test]
    fn peer_set_excludes_self_and_bad_keys() {
        let me = addr("10.0.0.1:7900");
        let mut t = PeerTable::new(me);
        t.reset([
            ("/wsServers/10.0.0.1:7900", b"10.0.0.1:7900".as_slice()),
            ("/wsServers/10.0.0.3:7900", b"10.0.0.3:7900".as_slice()),
            ("/wsServers/10.0.0.2:7900", b"10.0.0.2:7900".as_slice()),
            ("/wsServers/bogus", b"bogus".as_slice()),
        ]);
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.2:7900"), addr("10.0.0.3:7900")]
        );
        assert!(t.warned.contains("/wsServers/bogus"));

        t.put("/wsServers/10.0.0.4:7900", b"10.0.0.4:7900");
        t.put("/wsServers/10.0.0.4:7900", b"10.0.0.4:7900");
        assert_eq!(t.peers().len(), 3);
        t.remove("/wsServers/10.0.0.2:7900");
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.3:7900"), addr("10.0.0.4:7900")]
        );
        // Our own key going away does not change the peer set.
        t.remove("/wsServers/10.0.0.1:7900");
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.3:7900"), addr("10.0.0.4:7900")]
        );
        // A reset replaces everything.
        t.reset([("/wsServers/10.0.0.9:7900", b"".as_slice())]);
        assert_eq!(t.peers(), vec![addr("10.0.0.9:7900")]);
        // Two keys naming the same address give it once.
        t.put("/wsServers/alias", b"10.0.0.9:7900");
        assert_eq!(t.peers(), vec![addr("10.0.0.9:7900")]);
    }

    #[test]
    fn account_json_matches_the_original() {
        let none = SystemInfo::default();
        assert_eq!(
            account_json("sys1", 1_700_000_000, &none),
            r#"{"systemId":"sys1","registerTime":1700000000}"#
        );
        let v: serde_json::Value = serde_json::from_str(&account_json("a\"b", 1, &none)).unwrap();
        assert_eq!(v["systemId"], "a\"b");
        assert_eq!(v["registerTime"], 1);
    }

    #[test]
    fn account_values_carry_options_and_parse_leniently() {
        let info = SystemInfo {
            secret: Some("s3cr3t-\"quoted\"-0123".into()),
            webhook_url: Some("http://127.0.0.1:9000/hook".into()),
        };
        let json = account_json("sys1", 5, &info);
        assert_eq!(parse_account("sys1", json.as_bytes()), info);
        // The original's value, a non-JSON one, and odd shapes: no secret, still a system.
        for value in [
            br#"{"systemId":"sys1","registerTime":1700000000}"#.as_slice(),
            b"garbage",
            b"",
            b"[1,2]",
            br#"{"secret":"","webhookUrl":""}"#,
            br#"{"secret":null}"#,
        ] {
            assert_eq!(
                parse_account("sys1", value),
                SystemInfo::default(),
                "{value:?}"
            );
        }
        // A secret an operator wrote as a number still closes the system.
        assert_eq!(
            parse_account("sys1", br#"{"secret":12345678901234567}"#).secret,
            Some("12345678901234567".into())
        );
        // An unusable webhook URL is dropped; the secret stays.
        let odd = parse_account(
            "sys1",
            br#"{"secret":"abcdefghijklmnop","webhookUrl":"ftp://x"}"#,
        );
        assert_eq!(odd.secret.as_deref(), Some("abcdefghijklmnop"));
        assert_eq!(odd.webhook_url, None);
    }

    #[test]
    fn unreachable_messages_say_so() {
        assert_eq!(unreachable_msg(""), "etcd unreachable");
        assert!(unreachable_msg("connect: refused").starts_with("etcd unreachable: "));
    }

    // -----------------------------------------------------------------------------------------
    // Against a real etcd (/usr/bin/etcd)
    // -----------------------------------------------------------------------------------------

    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;
    use std::time::Instant as StdInstant;

    const ETCD_BIN: &str = "/usr/bin/etcd";

    struct Recorder(Mutex<std_mpsc::Sender<ToCores>>);

    impl CoreNotifier for Recorder {
        fn notify(&self, msg: ToCores) {
            if let Ok(tx) = self.0.lock() {
                let _ = tx.send(msg);
            }
        }
    }

    fn recorder() -> (Arc<dyn CoreNotifier>, std_mpsc::Receiver<ToCores>) {
        let (tx, rx) = std_mpsc::channel();
        (Arc::new(Recorder(Mutex::new(tx))), rx)
    }

    /// Kills etcd and removes its data dir when dropped (also on panic).
    struct Etcd {
        child: Option<Child>,
        dir: PathBuf,
        client_port: u16,
        peer_port: u16,
    }

    impl Etcd {
        fn start(dir: PathBuf, client_port: u16, peer_port: u16) -> Etcd {
            let mut e = Etcd {
                child: None,
                dir,
                client_port,
                peer_port,
            };
            e.restart();
            e
        }

        fn restart(&mut self) {
            let client = format!("http://127.0.0.1:{}", self.client_port);
            let peer = format!("http://127.0.0.1:{}", self.peer_port);
            let log = std::fs::File::create(self.dir.with_extension("log")).ok();
            let stderr = match log {
                Some(f) => Stdio::from(f),
                None => Stdio::null(),
            };
            let child = Command::new(ETCD_BIN)
                .arg("--name=default")
                .arg(format!("--data-dir={}", self.dir.display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=default={peer}"))
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start /usr/bin/etcd");
            self.child = Some(child);
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn endpoint(&self) -> String {
            format!("127.0.0.1:{}", self.client_port)
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Receives until `pred` matches (returns the match) or `within` passes (panics, showing what
    /// came). Everything received before the match is appended to `seen`.
    fn wait_for(
        rx: &std_mpsc::Receiver<ToCores>,
        within: Duration,
        what: &str,
        seen: &mut Vec<ToCores>,
        pred: impl Fn(&ToCores) -> bool,
    ) -> ToCores {
        let deadline = StdInstant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(StdInstant::now());
            match rx.recv_timeout(left) {
                Ok(m) if pred(&m) => return m,
                Ok(m) => seen.push(m),
                Err(_) => panic!("timed out after {within:?} waiting for {what}; got {seen:?}"),
            }
        }
    }

    fn ask<T>(
        m: &Membership,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> EtcdRequest,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        m.send(make(tx));
        rx.blocking_recv()
            .expect("etcd thread answers every request")
    }

    fn register(m: &Membership, system: &str) -> Result<bool, String> {
        ask(m, |reply| EtcdRequest::Register {
            system: system.to_string(),
            info: SystemInfo::default(),
            reply,
        })
    }

    fn is_registered(m: &Membership, system: &str) -> Result<bool, String> {
        ask(m, |reply| EtcdRequest::IsRegistered {
            system: system.to_string(),
            reply,
        })
        .map(|info| info.is_some())
    }

    fn has_system(m: &ToCores, name: &str) -> bool {
        matches!(m, ToCores::SystemsAdded(s) if s.iter().any(|(s, _)| s == name))
    }

    fn shutdown(m: &Membership) {
        let (tx, rx) = oneshot::channel();
        m.send(EtcdRequest::Shutdown { reply: tx });
        rx.blocking_recv().expect("shutdown reply");
    }

    fn is_peers_with(addr: SocketAddrV4) -> impl Fn(&ToCores) -> bool {
        move |m| matches!(m, ToCores::Peers(p) if p.contains(&addr))
    }

    #[test]
    fn against_real_etcd() {
        if !std::path::Path::new(ETCD_BIN).exists() {
            eprintln!("skipping: {ETCD_BIN} not installed");
            return;
        }
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("wspush=debug")
            .try_init();
        let started = StdInstant::now();
        let dir = std::env::temp_dir().join(format!(
            "wspush-membership-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mut etcd = Etcd::start(dir, free_port(), free_port());
        let config = |self_addr: SocketAddrV4| MembershipConfig {
            endpoints: vec![etcd.endpoint()],
            self_addr,
            lease_ttl_secs: 5,
            request_timeout: Duration::from_secs(1),
            access: EtcdAccess::default(),
        };
        let a_addr = addr("127.0.0.1:17901");
        let b_addr = addr("127.0.0.1:17902");
        let c_addr = addr("127.0.0.1:17903");
        let (a_notifier, a_rx) = recorder();
        let (b_notifier, b_rx) = recorder();
        let a = spawn(config(a_addr), a_notifier).unwrap();
        let b = spawn(config(b_addr), b_notifier).unwrap();
        let long = Duration::from_secs(8);
        let mut seen_a = Vec::new();
        let mut seen_b = Vec::new();

        // Both establish membership and see each other.
        wait_for(&a_rx, long, "A connected", &mut seen_a, |m| {
            *m == ToCores::EtcdConnected(true)
        });
        wait_for(&b_rx, long, "B connected", &mut seen_b, |m| {
            *m == ToCores::EtcdConnected(true)
        });
        if !seen_a.iter().any(is_peers_with(b_addr)) {
            wait_for(&a_rx, long, "A sees B", &mut seen_a, is_peers_with(b_addr));
        }
        if !seen_b.iter().any(is_peers_with(a_addr)) {
            wait_for(&b_rx, long, "B sees A", &mut seen_b, is_peers_with(a_addr));
        }
        for (me, seen) in [(a_addr, &seen_a), (b_addr, &seen_b)] {
            for m in seen {
                assert!(
                    !matches!(m, ToCores::Peers(p) if p.contains(&me)),
                    "{me} listed itself: {m:?}"
                );
            }
        }

        // Atomic register; the other node learns it through the watch.
        assert_eq!(register(&a, "sysX"), Ok(true));
        assert_eq!(register(&b, "sysX"), Ok(false));
        assert_eq!(register(&a, "sysX"), Ok(false));
        let sys_x = |m: &ToCores| has_system(m, "sysX");
        wait_for(&b_rx, long, "B learns sysX", &mut seen_b, sys_x);
        wait_for(&a_rx, long, "A learns sysX", &mut seen_a, sys_x);
        assert_eq!(is_registered(&b, "sysX"), Ok(true));
        assert_eq!(is_registered(&b, "nope"), Ok(false));

        // Graceful leave: B's key goes at once (lease revoked), not after the TTL.
        let t0 = StdInstant::now();
        shutdown(&b);
        wait_for(
            &a_rx,
            Duration::from_millis(1500),
            "A drops B",
            &mut seen_a,
            |m| matches!(m, ToCores::Peers(p) if !p.contains(&b_addr)),
        );
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "peer drop took {:?}",
            t0.elapsed()
        );
        // A shut-down membership drops requests (their reply channel closes).
        let (tx, rx) = oneshot::channel();
        b.send(EtcdRequest::IsRegistered {
            system: "sysX".into(),
            reply: tx,
        });
        assert!(rx.blocking_recv().is_err());

        // A third node joins.
        let (c_notifier, c_rx) = recorder();
        let c = spawn(config(c_addr), c_notifier).unwrap();
        let mut seen_c = Vec::new();
        wait_for(&a_rx, long, "A sees C", &mut seen_a, is_peers_with(c_addr));
        wait_for(&c_rx, long, "C connected", &mut seen_c, |m| {
            *m == ToCores::EtcdConnected(true)
        });
        assert!(
            seen_c.iter().any(|m| has_system(m, "sysX")),
            "C got the full system list on connect: {seen_c:?}"
        );

        // A node that dies (nobody keeps its lease alive) is dropped when its lease expires; a node
        // key that is not an ip:port is ignored.
        let dead = addr("127.0.0.1:17999");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut raw = Client::connect([etcd.endpoint()], None).await.unwrap();
            let lease = raw.lease_grant(2, None).await.unwrap().id();
            raw.put("/wsServers/not-an-address", "nope", None)
                .await
                .unwrap();
            let opts = PutOptions::new().with_lease(lease);
            raw.put(server_key(dead), dead.to_string(), Some(opts))
                .await
                .unwrap();
        });
        drop(rt);
        let m = wait_for(
            &a_rx,
            long,
            "A sees the short-lived node",
            &mut seen_a,
            is_peers_with(dead),
        );
        assert_eq!(m, ToCores::Peers(vec![c_addr, dead]));
        let t0 = StdInstant::now();
        wait_for(
            &a_rx,
            Duration::from_secs(6),
            "A drops the dead node",
            &mut seen_a,
            |m| *m == ToCores::Peers(vec![c_addr]),
        );
        eprintln!(
            "dead node dropped {:?} after its last put (lease TTL 2 s)",
            t0.elapsed()
        );

        // etcd dies: both notice, requests fail fast, the peer table is kept (no Peers sent).
        seen_a.clear();
        etcd.kill();
        wait_for(&a_rx, long, "A loses etcd", &mut seen_a, |m| {
            *m == ToCores::EtcdConnected(false)
        });
        let t0 = StdInstant::now();
        let r = register(&a, "sysY");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "register while down took {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(&r, Err(e) if e.contains("etcd unreachable")),
            "{r:?}"
        );
        assert!(matches!(is_registered(&a, "sysX"), Err(e) if e.contains("etcd unreachable")));
        wait_for(&c_rx, long, "C loses etcd", &mut seen_c, |m| {
            *m == ToCores::EtcdConnected(false)
        });

        // etcd comes back on the same port and data: everything is re-established and re-sent.
        etcd.restart();
        let mut during = Vec::new();
        wait_for(
            &a_rx,
            Duration::from_secs(10),
            "A regains etcd",
            &mut during,
            |m| *m == ToCores::EtcdConnected(true),
        );
        assert!(
            during.iter().any(|m| has_system(m, "sysX")),
            "full system list re-sent: {during:?}"
        );
        assert!(
            !during
                .iter()
                .chain(&seen_a)
                .any(|m| *m == ToCores::Peers(vec![])),
            "an empty peer set was sent: {seen_a:?} {during:?}"
        );
        let peers_c = |m: &ToCores| *m == ToCores::Peers(vec![c_addr]);
        if !during.iter().any(peers_c) {
            wait_for(&a_rx, long, "A sees C again", &mut during, peers_c);
        }
        wait_for(&c_rx, long, "C regains etcd", &mut seen_c, |m| {
            *m == ToCores::EtcdConnected(true)
        });
        assert_eq!(register(&c, "sysZ"), Ok(true));
        wait_for(&a_rx, long, "A learns sysZ", &mut during, |m| {
            *m == ToCores::SystemsAdded(vec![("sysZ".to_string(), Arc::default())])
        });

        shutdown(&c);
        shutdown(&a);
        drop(etcd);
        eprintln!("against_real_etcd took {:?}", started.elapsed());
    }
}

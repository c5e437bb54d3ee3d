//! One membership session of the etcd thread: connect, grant a lease, put this node's key,
//! read both prefixes at one revision (the systems in pages), then keep the lease alive and
//! follow the watch until something fails. What the session learns goes to the cores through
//! the `CoreNotifier`; the client and lease it holds are left in [`Shared`] for the request
//! handler (`thread`).

use super::interface::{CoreNotifier, EtcdAccess, MembershipConfig, ToCores};
use super::keys::{parse_account, server_key, ACCOUNT_PREFIX, SERVERS_PREFIX};
use super::peers::{log_peer_diff, PeerTable};
use crate::counters::{EtcdCounters, ETCD};
use crate::types::SystemInfo;
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, WatchOptions, WatchResponse, WatchStream,
};
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// State shared (on the one etcd thread) between the connection driver and the request handler.
#[derive(Default)]
pub(super) struct Shared {
    /// The client of the current (or last) session, once its lease is granted.
    pub(super) client: Option<Client>,
    /// Our current lease, once granted (revoked on shutdown).
    pub(super) lease: Option<i64>,
    /// Membership established and not lost since.
    pub(super) connected: bool,
    /// Why etcd is not reachable (for request errors).
    pub(super) last_error: String,
}

/// Runs an etcd call under a deadline; the error says what failed.
pub(super) async fn with_deadline<T>(
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

/// What was read right after (re)connecting, at one revision.
pub(super) struct Snapshot {
    pub(super) servers: Vec<(String, Vec<u8>)>,
    pub(super) systems: Vec<(String, Arc<SystemInfo>)>,
}

/// A live membership: the lease keep-alive and the watch on both prefixes.
pub(super) struct Session {
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
pub(super) async fn connect(cfg: &MembershipConfig) -> Result<Client, etcd_client::Error> {
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
pub(super) async fn establish(
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
    EtcdCounters::bump(&ETCD.keepalive_failures);
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
    pub(super) async fn run(
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

//! The etcd thread's loop: it serves the cores' requests (register, look up, leave) while the
//! driver runs one session after another, reconnecting with a backoff and logging outages; on
//! shutdown it stops the session and revokes the lease so the peers drop this node at once.

use super::interface::{CoreNotifier, EtcdRequest, MembershipConfig, ToCores};
use super::keys::{account_json, account_key, parse_account, unix_now};
use super::peers::{log_peer_diff, PeerTable};
use super::session::{connect, establish, with_deadline, Shared};
use crate::counters::{EtcdCounters, ETCD};
use crate::types::SystemInfo;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use std::cell::RefCell;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// While etcd stays unreachable, one warn line per this period (the first failure is logged at once).
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn run(
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
                ETCD.connected.store(1, Ordering::Relaxed);
                EtcdCounters::bump(&ETCD.sessions);
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
                ETCD.connected.store(0, Ordering::Relaxed);
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
                EtcdCounters::bump(&ETCD.connect_failures);
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

fn unreachable_msg(detail: &str) -> String {
    if detail.is_empty() {
        "etcd unreachable".to_string()
    } else {
        format!("etcd unreachable: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_messages_say_so() {
        assert_eq!(unreachable_msg(""), "etcd unreachable");
        assert!(unreachable_msg("connect: refused").starts_with("etcd unreachable: "));
    }
}

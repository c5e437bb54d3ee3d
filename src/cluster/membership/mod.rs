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
//!
//! The files, in the order of the thread's work:
//! - [`interface`]: what the cores and the thread exchange ([`ToCores`], [`EtcdRequest`]) and
//!   the thread's configuration; this file starts the thread ([`spawn`]) and holds its handle.
//! - `thread`: the thread's loop: serving the cores' requests, reconnecting with a backoff,
//!   leaving on shutdown.
//! - `session`: one membership session: connect, lease, snapshot of both prefixes (paged),
//!   keep-alive and watch.
//! - `peers`: the peer table derived from the node keys.
//! - [`keys`]: the key layout and the values of the registered systems.

#[cfg(test)]
mod against_etcd;
pub mod interface;
pub mod keys;
mod peers;
mod session;
mod thread;

pub use interface::{CoreNotifier, EtcdAccess, EtcdRequest, MembershipConfig, ToCores};
pub use keys::{
    account_json, account_key, parse_account, parse_server_key, server_key, ACCOUNT_PREFIX,
    SERVERS_PREFIX,
};

use std::sync::Arc;
use tokio::sync::mpsc;

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
                runtime.block_on(thread::run(config, notifier, rx));
            }));
            if outcome.is_err() {
                // Safety net only: nothing in this module is meant to panic.
                tracing::error!("etcd membership thread panicked; cluster membership stopped");
                panic_notifier.notify(ToCores::EtcdConnected(false));
            }
        })?;
    Ok(Membership { tx })
}

//! What the etcd thread and the cores exchange: the news the thread sends every core
//! ([`ToCores`], through a [`CoreNotifier`]), the requests a core sends it ([`EtcdRequest`]),
//! and the thread's configuration ([`MembershipConfig`], [`EtcdAccess`]).

use crate::types::SystemInfo;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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

//! Configuration: the original's `conf/app.ini` keys, wspush's own keys, and CLI flags.
//!
//! One struct with documented defaults, filled from the file, overridden by `WSPUSH_<SECTION>_<KEY>`
//! environment variables, then by flags, then checked by [`Config::validate`] (`parse` reads,
//! `check` checks and warns). Unknown sections and keys are ignored, as go-ini does for the original.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

mod check;
pub mod parse;
#[cfg(test)]
mod tests;

/// Everything a node needs to know at start. Field docs give the ini key and the default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[common] HttpPort`, default 7800: HTTP API and `/ws`, bound on every core (SO_REUSEPORT).
    pub http_port: u16,
    /// `[common] RPCPort`, default 7900: node-to-node links (cluster mode). Also part of the node
    /// identity sealed into every clientId.
    pub rpc_port: u16,
    /// `[common] Cluster`, default false.
    pub cluster: bool,
    /// `[common] CryptoKey`, default `Adba723b7fe06819`: 16, 24 or 32 bytes; keys the clientId seal.
    pub crypto_key: String,
    /// `[etcd] Endpoints`, default empty: comma-separated `host:port` list (`https://host:port`
    /// or plain `host:port` with `CaFile`, which turns TLS on).
    pub etcd_endpoints: Vec<String>,
    /// `[etcd] User` and `[etcd] Password`, default empty = no etcd authentication (the
    /// original's). Both or neither: the etcd user this node authenticates as once etcd has
    /// `auth enable`d. It needs read and write on `/wsServers/` and `ws/account/` and leases.
    pub etcd_user: String,
    pub etcd_password: String,
    /// `[etcd] CaFile`, default empty = plain HTTP to etcd: a PEM file of the CA that signed
    /// etcd's server certificate. Set, the node speaks TLS to etcd and trusts that CA only.
    pub etcd_ca_file: String,
    /// `[etcd] CertFile` and `[etcd] KeyFile`, default empty: a PEM client certificate and its
    /// private key, for an etcd started with `--client-cert-auth`. Both or neither; need CaFile.
    pub etcd_cert_file: String,
    pub etcd_key_file: String,
    /// `[wspush] AdvertiseHost`: the IPv4 address peers reach this node at (its RPC link address
    /// and the node sealed into clientIds). Default: in cluster mode the first non-loopback IPv4
    /// address, as the original picks it, else 127.0.0.1. See [`Config::node_host`].
    pub advertise_host: Option<Ipv4Addr>,
    /// `[wspush] RpcTimeoutMs`, default 3000: deadline of every node-to-node call, so a dead or
    /// stalled peer delays an API answer by at most this.
    pub rpc_timeout: Duration,
    /// `[wspush] LeaseTtl` (seconds), default 5 (the original's): the etcd lease of this node's
    /// membership key; a node that dies leaves every peer table within it.
    pub lease_ttl: Duration,
    /// `[wspush] Cores` / `--cores`, default 0 = every available CPU.
    pub cores: usize,
    /// `[wspush] HeartbeatInterval` (seconds), default 25: how often the server pings each socket.
    pub heartbeat_interval: Duration,
    /// `[wspush] PongTimeout` (seconds), default 60: a connection that sent nothing (no pong, no
    /// frame) for this long is dropped. Keep it above HeartbeatInterval.
    pub pong_timeout: Duration,
    /// `[wspush] QueueFrames`, default 1024: frames a connection may have queued unsent; one more
    /// closes it with 1008 (slow consumer) instead of letting it grow without bound.
    pub queue_frames: usize,
    /// `[wspush] QueueBytes`, default 4 MiB: the same limit in bytes.
    pub queue_bytes: usize,
    /// `[wspush] FlushWindowUs`, default 2000: while a core is broadcasting (a push reached many
    /// of its sockets in the last few windows) and its writes cannot keep up (more was queued
    /// while it wrote), it writes each socket at most once per this long, so the pushes of that
    /// window reach each socket in one write (see `Shard::flusher`). A push that finds the core
    /// idle, and unicast traffic, are written at once. 0: never wait.
    pub flush_window: Duration,
    /// `[wspush] MaxMessageBytes`, default 8192 (the original's read limit): a larger client
    /// message closes the connection with 1009.
    pub max_message_bytes: usize,
    /// `[wspush] MaxHeadBytes`, default 8192: HTTP request head limit (431 above).
    pub max_head_bytes: usize,
    /// `[wspush] MaxBodyBytes`, default 1 MiB: HTTP body limit (413 above).
    pub max_body_bytes: usize,
    /// `[wspush] HeadTimeout` (seconds), default 10: time to receive a whole request head or
    /// body once its first byte arrived; bounds slowloris clients.
    pub head_timeout: Duration,
    /// `[wspush] KeepAliveTimeout` (seconds), default 60: idle HTTP keep-alive connections are
    /// closed after this.
    pub keepalive_timeout: Duration,
    /// `[wspush] HandshakeTimeout` (seconds), default 10: a new connection must deliver its first
    /// whole request head (the `/ws` upgrade or an API request) within this of being accepted, so
    /// sockets that connect and say nothing do not hold a slot for KeepAliveTimeout.
    pub handshake_timeout: Duration,
    /// `[wspush] MaxConnsPerCore`, default 0 = derived from the open-files limit (see
    /// [`Config::conns_per_core`]): WebSocket connections one core holds; one more upgrade is
    /// refused with 503 and a log line, instead of running into EMFILE.
    pub max_conns_per_core: usize,
    /// `[wspush] MaxHttpConnsPerCore`, default 1024: HTTP connections (API requests, probes,
    /// operations routes; not WebSockets) one core serves at once, counted from a connection's
    /// first request until it closes or upgrades. One more gets 503 + `Retry-After` and is
    /// closed (a probe or operations request is still answered, then closed), counted in
    /// `wspush_http_refused_total` and logged at most once a second. Each such connection may
    /// hold up to 2 * MaxBodyBytes of request in memory, so this bounds what slow or idle API
    /// clients can pin. The original's callers never come near it: nginx (HTTP/1.0) and PHP
    /// curl open one connection per request, so a core holds about (requests a second x
    /// seconds per request) of them: 100 at 100,000 requests a second taking 1 ms each.
    pub max_http_conns_per_core: usize,
    /// `[wspush] MaxGroupsPerClient`, default 1024: groups one connection may be bound to; one
    /// more `bind_to_group` answers code -1. Bounds the memory a caller can pin to one socket.
    pub max_groups_per_client: usize,
    /// `[wspush] MaxClientIdsPerRequest`, default 10000: ids one `send_to_clients` may list;
    /// more answers code -1. Opening an id costs ~0.5 µs of a core, so this bounds one request
    /// to a few milliseconds of work.
    pub max_client_ids_per_request: usize,
    /// `[wspush] MaxBatch`, default 100: operations one `/api/batch` may carry; more answers
    /// code -1 and runs none. Each is a push route's request, run in turn.
    pub max_batch: usize,
    /// `[wspush] MaxSystemIdBytes`, default 128: longest systemId (in `register`, the `SystemId`
    /// header and `/ws?systemId=`), in bytes of UTF-8. A systemId also becomes an etcd key, a
    /// header value and a log field, so it must also be free of control characters; anything
    /// else the original accepts (Chinese names, spaces, punctuation) stays accepted.
    pub max_system_id_bytes: usize,
    /// `[wspush] MaxSystems`, default 100000: systems this node knows of (single node: those
    /// registered; cluster: those it has read from etcd); one more `register` answers code -1.
    /// In a cluster, registrations racing on several nodes may overshoot it by a few.
    pub max_systems: usize,
    /// `[wspush] MaxNameBytes`, default 256: longest groupName, userId and sendUserId; longer
    /// answers code -1 naming the field. A bind keeps its groupName and userId for the life
    /// of the connection, so this bounds what one bind can pin.
    pub max_name_bytes: usize,
    /// `[wspush] MaxExtendBytes`, default 4096: longest `extend` of `bind_to_group`. It is kept
    /// with the connection and copied into every 1001/1002/1003 push to each member of each of
    /// its groups and into every webhook event.
    pub max_extend_bytes: usize,
    /// `[wspush] MaxMsgBytes`, default 65536: longest `msg` of a push. Pushes are not kept (the
    /// frame is built once and queued), and some callers carry content in `msg`, so the bound
    /// is generous; `MaxBodyBytes` caps the request as a whole anyway.
    pub max_msg_bytes: usize,
    /// `[wspush] MaxJsonDepth`, default 64: deepest nesting of a push's `data` (`[]` is 1,
    /// `[[1]]` 2); deeper answers code -1. `data` is relayed as received, and a client with a
    /// recursive JSON parser (most of them) overflows its stack on 100,000 levels.
    pub max_json_depth: usize,
    /// `[wspush] HistorySize`, default 0 (history off on this node): the most pushes one group
    /// stream keeps for recovery (docs/history.md). A system registered with a `history` asks
    /// for its own size, clamped to this; 0 refuses such registers here, and a stream this
    /// node owns keeps nothing.
    pub history_size: usize,
    /// `[wspush] HistoryTtl`, default 300 s: the longest a stream keeps a push; a system's
    /// `ttlSeconds` is clamped to it.
    pub history_ttl: Duration,
    /// `[wspush] HistoryMaxBytes`, default 1 MiB: the most frame bytes one stream keeps; the
    /// oldest pushes go first past it.
    pub history_max_bytes: usize,
    /// `[wspush] OfflineMax`, default 0 (off on this node): the most pushes kept for one
    /// (system, userId) by send_to_user with `store` (docs/history.md, "Offline messages");
    /// the oldest go first past it. 0: a `store` answers code -1.
    pub offline_max: usize,
    /// `[wspush] OfflineTtl`, default 86400 s: the longest a stored push is kept.
    pub offline_ttl: Duration,
    /// `[wspush] OfflineMaxBytes`, default 1 MiB: the most frame bytes kept for one user; the
    /// oldest pushes go first past it.
    pub offline_max_bytes: usize,
    /// `[wspush] WebhookQueue`, default 65536: webhook events the cores may have queued for the
    /// webhook thread (about 64 bytes a slot, allocated by the first event). One more is dropped,
    /// counted and logged (at most one line a second): a core never waits for webhooks.
    pub webhook_queue: usize,
    /// `[wspush] WebhookBuffer`, default 10000: events one webhook destination (a system's URL)
    /// may have waiting while its receiver fails or lags; one more drops the oldest.
    pub webhook_buffer: usize,
    /// `[wspush] WebhookWorkers`, default 4: threads POSTing webhooks, i.e. receivers served at
    /// once. A stuck receiver holds one of them at most, so it takes this many stuck receivers
    /// to delay the others.
    pub webhook_workers: usize,
    /// `[wspush] WebhookTimeoutMs`, default 5000: a webhook POST's connect, then its whole
    /// request and response, must each finish within this, or the POST counts as failed.
    pub webhook_timeout: Duration,
    /// `[wspush] WebhookBytes`, default 64 MiB: bytes of webhook events held at once, in all:
    /// the cores' queue, every destination's buffer and the batches in flight. An event that
    /// would pass it is dropped, counted and logged like one over `WebhookQueue`; without it,
    /// 65,536 queued events with 4 KiB extends (and a buffer per destination) could pin
    /// hundreds of MiB.
    pub webhook_bytes: usize,
    /// `[wspush] WebhookAllowPrivate`, default false: whether webhooks may go to loopback,
    /// link-local (169.254.0.0/16, the cloud metadata service), private, CGNAT, unique-local,
    /// multicast or unspecified addresses. Off, `register` refuses such an IP in `webhookUrl`,
    /// and a host name that resolves to one is refused at delivery (DNS rebinding). Turn it on
    /// when the receivers live on the private network.
    pub webhook_allow_private: bool,
    /// `[wspush] WebhookOccupancy`, default false: whether systems with a webhook also get
    /// `group_occupied` / `group_vacated` events (issue 17, docs/webhooks.md "Occupancy").
    /// Set it the same on every node of a cluster: the member's node decides whether to tell
    /// the group's owner.
    pub webhook_occupancy: bool,
    /// `[wspush] ShutdownGrace` (seconds), default 2: on SIGTERM, how long queued frames and
    /// close frames get to drain before sockets are cut.
    pub shutdown_grace: Duration,
    /// `[wspush] ApiKey`, default empty = off (the original's open API). When set, every
    /// `/api/*` request must carry `Authorization: apikey <key>`, else 403 (see `docs/auth.md`).
    /// At least 16 visible ASCII characters. `/ws` is not affected: browsers cannot hold a
    /// server-wide key; per-system secrets and connect tokens cover it.
    pub api_key: String,
    /// `[wspush] ClusterSecret`, default empty = a key derived from CryptoKey (so nodes that
    /// share a CryptoKey, as every cluster must, keep talking with no change). Keys the HMAC of
    /// the handshake that opens every node link on RPCPort: a link that cannot prove it knows
    /// the secret is closed before any frame is read. At least 16 visible ASCII characters;
    /// the same on every node. Never logged.
    pub cluster_secret: String,
    /// `[wspush] RPCBind`, default empty = `AdvertiseHost` when that is set, else `0.0.0.0`:
    /// the IPv4 address RPCPort listens on. An AdvertiseHost that is not an address of this
    /// machine (a NAT address) falls back to `0.0.0.0` with a warning; RPCBind set explicitly
    /// is used as it is.
    pub rpc_bind: Option<Ipv4Addr>,
    /// `[wspush] MaxNodeLinksPerCore`, default 8192: inbound node links (authenticated or still
    /// in their handshake) one core holds; one more is closed at once, counted and logged.
    /// Every core of every peer opens one link to this node, and SO_REUSEPORT may land them
    /// all on one core: 64 nodes of 64 cores are 4032 links, twice that covers reconnects
    /// overlapping the links they replace.
    pub max_node_links_per_core: usize,
    /// `[wspush] MaxNodeLinksPerPeer`, default 512: inbound node links from one IP address that
    /// one core holds. A peer of 255 cores (the most a node runs) opens 255, possibly all on one
    /// core; twice that covers reconnects. Several nodes behind one address share it.
    pub max_node_links_per_peer: usize,
    /// `[wspush] OpsRequireKey`, default true: when ApiKey is set, `/metrics`, `/status` and
    /// `/status.json` want it too (`Authorization: apikey <key>`, basic auth with the key as
    /// password, or `?apikey=<key>`; 401 otherwise). false leaves them open to anyone who
    /// reaches the port (e.g. a scraper on a private network) while `/api/*` keeps the key;
    /// the server then warns at start. No effect without ApiKey. `/healthz` and `/readyz`
    /// are always open (orchestrator probes).
    pub ops_require_key: bool,
    /// `[wspush] SignatureCompat`, default false: also accept the first signature scheme, an
    /// `X-Signature` over the body alone with no `X-Timestamp`, which a captured request can
    /// replay on any route for ever. Only for callers not yet moved to the scheme of
    /// `docs/auth.md`; logged at WARN on every start while on.
    pub signature_compat: bool,
    /// `[wspush] RefuseDefaultCryptoKey`, default false: refuse to start (exit 2, naming
    /// `common.CryptoKey`) while `CryptoKey` is the original's published default. Off, that key
    /// is only warned about at every start and on `/status`: the original ships it in its own
    /// `conf/app.ini`, so a drop-in deployment must keep starting with it.
    pub refuse_default_crypto_key: bool,
    /// `[wspush] LogFormat` / `--log-format` (the flag wins), default `text`: human-readable log
    /// lines, or `json`, one JSON object per line for a log pipeline (Loki, ELK, journald).
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_port: 7800,
            rpc_port: 7900,
            cluster: false,
            crypto_key: "Adba723b7fe06819".to_string(),
            etcd_endpoints: Vec::new(),
            etcd_user: String::new(),
            etcd_password: String::new(),
            etcd_ca_file: String::new(),
            etcd_cert_file: String::new(),
            etcd_key_file: String::new(),
            advertise_host: None,
            rpc_timeout: Duration::from_millis(3000),
            lease_ttl: Duration::from_secs(5),
            cores: 0,
            heartbeat_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            queue_frames: 1024,
            queue_bytes: 4 << 20,
            flush_window: Duration::from_micros(2000),
            max_message_bytes: 8192,
            max_head_bytes: 8192,
            max_body_bytes: 1 << 20,
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_conns_per_core: 0,
            max_http_conns_per_core: 1024,
            max_groups_per_client: 1024,
            max_client_ids_per_request: 10_000,
            max_batch: 100,
            max_system_id_bytes: 128,
            max_systems: 100_000,
            max_name_bytes: 256,
            max_extend_bytes: 4096,
            max_msg_bytes: 64 << 10,
            max_json_depth: 64,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            history_max_bytes: 1 << 20,
            offline_max: 0,
            offline_ttl: Duration::from_secs(86400),
            offline_max_bytes: 1 << 20,
            webhook_queue: 65_536,
            webhook_buffer: 10_000,
            webhook_workers: 4,
            webhook_timeout: Duration::from_millis(5000),
            webhook_bytes: 64 << 20,
            webhook_allow_private: false,
            webhook_occupancy: false,
            shutdown_grace: Duration::from_secs(2),
            api_key: String::new(),
            cluster_secret: String::new(),
            rpc_bind: None,
            max_node_links_per_core: 8192,
            max_node_links_per_peer: 512,
            ops_require_key: true,
            signature_compat: false,
            refuse_default_crypto_key: false,
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// WebSocket connections each of `cores` cores may hold: MaxConnsPerCore, or when it is 0,
    /// the open-files limit `nofile` less a reserve (API sockets, node links, etcd, logs) shared
    /// out over the cores, so the server says 503 before accept() runs into EMFILE.
    pub fn conns_per_core(&self, nofile: u64, cores: usize) -> usize {
        if self.max_conns_per_core > 0 {
            return self.max_conns_per_core;
        }
        let reserve = (nofile / 20).clamp(64, 4096).min(nofile / 2);
        let usable = nofile.saturating_sub(reserve) as usize;
        (usable / cores.max(1)).max(1)
    }

    /// The address RPCPort listens on: RPCBind, else AdvertiseHost, else every address.
    pub fn rpc_bind_host(&self) -> Ipv4Addr {
        self.rpc_bind
            .or(self.advertise_host)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The host this node advertises: the configured one, or the original's default.
    pub fn node_host(&self) -> Ipv4Addr {
        match self.advertise_host {
            Some(host) => host,
            None if self.cluster => {
                crate::sys::first_non_loopback_ipv4().unwrap_or(Ipv4Addr::LOCALHOST)
            }
            None => Ipv4Addr::LOCALHOST,
        }
    }
}

/// A configuration problem: which key, and what is wrong with it. Printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// `conf/app.ini`: every key with its default and what it does, as comments. `wspush
/// genconfig` prints it; tests/genconfig.rs checks that it parses to [`Config::default`] and
/// names every key of [`Config::values`].
pub const EXAMPLE_INI: &str = include_str!("../../conf/app.ini");

/// The original's published default `CryptoKey`: fine for a try-out, a known key in production.
pub const DEFAULT_CRYPTO_KEY: &str = "Adba723b7fe06819";

/// What the published default key lets anyone do, for the start-up warning, `/status` and the
/// refusal.
pub const DEFAULT_KEY_RISK: &str = "anyone who knows the published key can forge clientIds \
    and so push to, bind, unbind and close any client of any system";

impl Config {
    /// Every key wspush reads, as `section.Key`, with its value written the way app.ini takes it
    /// (seconds as whole numbers, lists comma-separated); `check-config` prints them. Secrets are
    /// not shown, only their length (the published default `CryptoKey` excepted, so it stands
    /// out). A key added to [`Config::parse`] belongs here too: `check-config` reports a file
    /// key missing from this list as one wspush does not read.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let secs = |d: Duration| d.as_secs().to_string();
        let secret = |s: &str| match s.len() {
            0 => String::new(),
            n => format!("<secret, {n} bytes>"),
        };
        let crypto_key = if self.crypto_key == DEFAULT_CRYPTO_KEY {
            self.crypto_key.clone()
        } else {
            secret(&self.crypto_key)
        };
        vec![
            ("common.HttpPort", self.http_port.to_string()),
            ("common.RPCPort", self.rpc_port.to_string()),
            ("common.Cluster", self.cluster.to_string()),
            ("common.CryptoKey", crypto_key),
            ("etcd.Endpoints", self.etcd_endpoints.join(", ")),
            ("etcd.User", self.etcd_user.clone()),
            ("etcd.Password", secret(&self.etcd_password)),
            ("etcd.CaFile", self.etcd_ca_file.clone()),
            ("etcd.CertFile", self.etcd_cert_file.clone()),
            ("etcd.KeyFile", self.etcd_key_file.clone()),
            (
                "wspush.AdvertiseHost",
                self.advertise_host
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            ),
            ("wspush.Cores", self.cores.to_string()),
            ("wspush.HeartbeatInterval", secs(self.heartbeat_interval)),
            ("wspush.PongTimeout", secs(self.pong_timeout)),
            ("wspush.QueueFrames", self.queue_frames.to_string()),
            ("wspush.QueueBytes", self.queue_bytes.to_string()),
            (
                "wspush.FlushWindowUs",
                self.flush_window.as_micros().to_string(),
            ),
            ("wspush.MaxMessageBytes", self.max_message_bytes.to_string()),
            ("wspush.MaxHeadBytes", self.max_head_bytes.to_string()),
            ("wspush.MaxBodyBytes", self.max_body_bytes.to_string()),
            ("wspush.HeadTimeout", secs(self.head_timeout)),
            ("wspush.KeepAliveTimeout", secs(self.keepalive_timeout)),
            ("wspush.HandshakeTimeout", secs(self.handshake_timeout)),
            (
                "wspush.MaxConnsPerCore",
                self.max_conns_per_core.to_string(),
            ),
            (
                "wspush.MaxHttpConnsPerCore",
                self.max_http_conns_per_core.to_string(),
            ),
            (
                "wspush.MaxGroupsPerClient",
                self.max_groups_per_client.to_string(),
            ),
            (
                "wspush.MaxClientIdsPerRequest",
                self.max_client_ids_per_request.to_string(),
            ),
            ("wspush.MaxBatch", self.max_batch.to_string()),
            (
                "wspush.MaxSystemIdBytes",
                self.max_system_id_bytes.to_string(),
            ),
            ("wspush.MaxSystems", self.max_systems.to_string()),
            ("wspush.MaxNameBytes", self.max_name_bytes.to_string()),
            ("wspush.MaxExtendBytes", self.max_extend_bytes.to_string()),
            ("wspush.MaxMsgBytes", self.max_msg_bytes.to_string()),
            ("wspush.MaxJsonDepth", self.max_json_depth.to_string()),
            ("wspush.HistorySize", self.history_size.to_string()),
            ("wspush.HistoryTtl", secs(self.history_ttl)),
            ("wspush.HistoryMaxBytes", self.history_max_bytes.to_string()),
            ("wspush.OfflineMax", self.offline_max.to_string()),
            ("wspush.OfflineTtl", secs(self.offline_ttl)),
            ("wspush.OfflineMaxBytes", self.offline_max_bytes.to_string()),
            ("wspush.WebhookQueue", self.webhook_queue.to_string()),
            ("wspush.WebhookBuffer", self.webhook_buffer.to_string()),
            ("wspush.WebhookWorkers", self.webhook_workers.to_string()),
            (
                "wspush.WebhookTimeoutMs",
                self.webhook_timeout.as_millis().to_string(),
            ),
            ("wspush.WebhookBytes", self.webhook_bytes.to_string()),
            (
                "wspush.WebhookAllowPrivate",
                self.webhook_allow_private.to_string(),
            ),
            (
                "wspush.WebhookOccupancy",
                self.webhook_occupancy.to_string(),
            ),
            (
                "wspush.RpcTimeoutMs",
                self.rpc_timeout.as_millis().to_string(),
            ),
            ("wspush.LeaseTtl", secs(self.lease_ttl)),
            ("wspush.ShutdownGrace", secs(self.shutdown_grace)),
            ("wspush.LogFormat", self.log_format.to_string()),
            ("wspush.ApiKey", secret(&self.api_key)),
            ("wspush.ClusterSecret", secret(&self.cluster_secret)),
            (
                "wspush.RPCBind",
                self.rpc_bind.map(|h| h.to_string()).unwrap_or_default(),
            ),
            (
                "wspush.MaxNodeLinksPerCore",
                self.max_node_links_per_core.to_string(),
            ),
            (
                "wspush.MaxNodeLinksPerPeer",
                self.max_node_links_per_peer.to_string(),
            ),
            ("wspush.OpsRequireKey", self.ops_require_key.to_string()),
            ("wspush.SignatureCompat", self.signature_compat.to_string()),
            (
                "wspush.RefuseDefaultCryptoKey",
                self.refuse_default_crypto_key.to_string(),
            ),
        ]
    }
}

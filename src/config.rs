//! Configuration: the original's `conf/app.ini` keys, wspush's own keys, and CLI flags.
//!
//! One struct with documented defaults, filled from the file, overridden by flags, then checked by
//! [`Config::validate`]. Unknown sections and keys are ignored, as go-ini does for the original.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

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
    /// of its sockets in the last few windows, see `Shard::flush_delay`), it waits this long
    /// before writing what was queued, so the pushes of that window reach each socket in one
    /// write. Sporadic pushes and unicast traffic are written at once. 0: always write at once.
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
            max_system_id_bytes: 128,
            max_systems: 100_000,
            max_name_bytes: 256,
            max_extend_bytes: 4096,
            max_msg_bytes: 64 << 10,
            max_json_depth: 64,
            webhook_queue: 65_536,
            webhook_buffer: 10_000,
            webhook_workers: 4,
            webhook_timeout: Duration::from_millis(5000),
            webhook_bytes: 64 << 20,
            webhook_allow_private: false,
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

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "config file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let config = Config::parse(&text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses ini text on top of the defaults. Does not validate cross-key rules. Stops at the
    /// first bad value; [`Config::parse_all`] reports every one.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (c, problems) = Config::parse_all(text);
        match problems.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(c),
        }
    }

    /// Parses ini text on top of the defaults, collecting every bad value (a bad key keeps its
    /// default). `check-config` uses it to name all the problems of a file at once.
    pub fn parse_all(text: &str) -> (Config, Vec<ConfigError>) {
        let mut c = Config::default();
        let mut problems = Vec::new();
        let mut entries = ini_entries(text);
        // `apply_entries` returns at the first bad value with the iterator just past it, so
        // calling it again resumes with the next entry.
        while let Err(e) = Config::apply_entries(&mut c, &mut entries) {
            problems.push(e);
        }
        (c, problems)
    }

    /// Applies `(section, key, value)` entries to `c` until they run out or one is bad.
    fn apply_entries<'a>(
        c: &mut Config,
        entries: &mut impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<(), ConfigError> {
        for (section, key, value) in entries {
            let full = format!("{section}.{key}");
            match (
                section.to_ascii_lowercase().as_str(),
                key.to_ascii_lowercase().as_str(),
            ) {
                ("common", "httpport") => c.http_port = port(&full, value)?,
                ("common", "rpcport") => c.rpc_port = port(&full, value)?,
                ("common", "cluster") => c.cluster = boolean(&full, value)?,
                ("common", "cryptokey") => c.crypto_key = value.to_string(),
                ("etcd", "endpoints") => {
                    c.etcd_endpoints = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }
                ("etcd", "user") => c.etcd_user = value.to_string(),
                ("etcd", "password") => c.etcd_password = value.to_string(),
                ("etcd", "cafile") => c.etcd_ca_file = value.to_string(),
                ("etcd", "certfile") => c.etcd_cert_file = value.to_string(),
                ("etcd", "keyfile") => c.etcd_key_file = value.to_string(),
                ("wspush", "advertisehost") if !value.is_empty() => {
                    c.advertise_host = Some(
                        value
                            .parse()
                            .map_err(|_| err(&full, format!("{value:?} is not an IPv4 address")))?,
                    )
                }
                ("wspush", "rpctimeoutms") => {
                    c.rpc_timeout = Duration::from_millis(number(&full, value)? as u64)
                }
                ("wspush", "leasettl") => c.lease_ttl = seconds(&full, value)?,
                ("wspush", "cores") => c.cores = number(&full, value)?,
                ("wspush", "heartbeatinterval") => c.heartbeat_interval = seconds(&full, value)?,
                ("wspush", "pongtimeout") => c.pong_timeout = seconds(&full, value)?,
                ("wspush", "queueframes") => c.queue_frames = number(&full, value)?,
                ("wspush", "flushwindowus") => {
                    c.flush_window = Duration::from_micros(number(&full, value)? as u64)
                }
                ("wspush", "queuebytes") => c.queue_bytes = number(&full, value)?,
                ("wspush", "maxmessagebytes") => c.max_message_bytes = number(&full, value)?,
                ("wspush", "maxheadbytes") => c.max_head_bytes = number(&full, value)?,
                ("wspush", "maxbodybytes") => c.max_body_bytes = number(&full, value)?,
                ("wspush", "headtimeout") => c.head_timeout = seconds(&full, value)?,
                ("wspush", "keepalivetimeout") => c.keepalive_timeout = seconds(&full, value)?,
                ("wspush", "apikey") => c.api_key = value.to_string(),
                ("wspush", "clustersecret") => c.cluster_secret = value.to_string(),
                ("wspush", "rpcbind") => {
                    c.rpc_bind = match value {
                        "" => None,
                        v => Some(
                            v.parse()
                                .map_err(|_| err(&full, format!("{v:?} is not an IPv4 address")))?,
                        ),
                    }
                }
                ("wspush", "maxnodelinkspercore") => {
                    c.max_node_links_per_core = number(&full, value)?
                }
                ("wspush", "maxnodelinksperpeer") => {
                    c.max_node_links_per_peer = number(&full, value)?
                }
                ("wspush", "signaturecompat") => c.signature_compat = boolean(&full, value)?,
                ("wspush", "refusedefaultcryptokey") => {
                    c.refuse_default_crypto_key = boolean(&full, value)?
                }
                ("wspush", "shutdowngrace") => c.shutdown_grace = seconds(&full, value)?,
                ("wspush", "handshaketimeout") => c.handshake_timeout = seconds(&full, value)?,
                ("wspush", "maxconnspercore") => c.max_conns_per_core = number(&full, value)?,
                ("wspush", "maxhttpconnspercore") => {
                    c.max_http_conns_per_core = number(&full, value)?
                }
                ("wspush", "opsrequirekey") => c.ops_require_key = boolean(&full, value)?,
                ("wspush", "maxgroupsperclient") => c.max_groups_per_client = number(&full, value)?,
                ("wspush", "maxclientidsperrequest") => {
                    c.max_client_ids_per_request = number(&full, value)?
                }
                ("wspush", "maxsystemidbytes") => c.max_system_id_bytes = number(&full, value)?,
                ("wspush", "maxsystems") => c.max_systems = number(&full, value)?,
                ("wspush", "maxnamebytes") => c.max_name_bytes = number(&full, value)?,
                ("wspush", "maxextendbytes") => c.max_extend_bytes = number(&full, value)?,
                ("wspush", "maxmsgbytes") => c.max_msg_bytes = number(&full, value)?,
                ("wspush", "maxjsondepth") => c.max_json_depth = number(&full, value)?,
                ("wspush", "webhookqueue") => c.webhook_queue = number(&full, value)?,
                ("wspush", "webhookbuffer") => c.webhook_buffer = number(&full, value)?,
                ("wspush", "webhookworkers") => c.webhook_workers = number(&full, value)?,
                ("wspush", "webhookbytes") => c.webhook_bytes = number(&full, value)?,
                ("wspush", "webhookallowprivate") => {
                    c.webhook_allow_private = boolean(&full, value)?
                }
                ("wspush", "webhooktimeoutms") => {
                    c.webhook_timeout = Duration::from_millis(number(&full, value)? as u64)
                }
                ("wspush", "logformat") => {
                    c.log_format = value.parse().map_err(|e: String| err(&full, e))?
                }
                _ => {} // unknown keys are ignored, as in the original
            }
        }
        Ok(())
    }

    /// The `(section, key)` of every `key = value` line of an ini text, as written there
    /// (`check-config` marks the values the file sets, and notes keys wspush does not read).
    pub fn file_keys(text: &str) -> Vec<(&str, &str)> {
        ini_entries(text).map(|(s, k, _)| (s, k)).collect()
    }

    /// Cross-key and range checks; the first failure, naming its key (the server's start
    /// reports one problem, then exits 2).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.validate_all().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every cross-key and range problem, each naming its key. Empty when the config is valid.
    pub fn validate_all(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let key_len = self.crypto_key.len();
        if ![16, 24, 32].contains(&key_len) {
            problems.push(err(
                "common.CryptoKey",
                format!("must be 16, 24 or 32 bytes long, got {key_len}"),
            ));
        }
        if self.refuse_default_crypto_key && self.crypto_key == DEFAULT_CRYPTO_KEY {
            problems.push(err(
                "common.CryptoKey",
                format!(
                    "is the original's published default and RefuseDefaultCryptoKey is on: \
                     set your own, e.g. `openssl rand -hex 16` (32 characters); \
                     {DEFAULT_KEY_RISK}"
                ),
            ));
        }
        if self.http_port == 0 {
            problems.push(err("common.HttpPort", "must be between 1 and 65535"));
        }
        if self.rpc_port == 0 {
            problems.push(err("common.RPCPort", "must be between 1 and 65535"));
        }
        if self.cluster && self.etcd_endpoints.is_empty() {
            problems.push(err(
                "etcd.Endpoints",
                "Cluster = true needs at least one etcd endpoint (host:port, comma-separated)",
            ));
        }
        if self.cluster && self.rpc_port == self.http_port {
            problems.push(err("common.RPCPort", "must differ from HttpPort"));
        }
        if self.flush_window > Duration::from_millis(100) {
            problems.push(err(
                "wspush.FlushWindowUs",
                "must be at most 100000 (100 ms): every broadcast waits this long",
            ));
        }
        // clientIds carry the core in one byte.
        if self.cores > 255 {
            problems.push(err("wspush.Cores", "at most 255 cores are supported"));
        }
        if self.rpc_timeout.is_zero() {
            problems.push(err("wspush.RpcTimeoutMs", "must be at least 1 ms"));
        }
        if self.lease_ttl.as_secs() < 2 {
            problems.push(err("wspush.LeaseTtl", "must be at least 2 seconds"));
        }
        if self.heartbeat_interval.is_zero() {
            problems.push(err("wspush.HeartbeatInterval", "must be at least 1 second"));
        }
        if self.pong_timeout <= self.heartbeat_interval {
            problems.push(err(
                "wspush.PongTimeout",
                "must be longer than HeartbeatInterval, or every idle client would be dropped",
            ));
        }
        for (key, value) in [
            ("wspush.QueueFrames", self.queue_frames),
            ("wspush.QueueBytes", self.queue_bytes),
            ("wspush.MaxMessageBytes", self.max_message_bytes),
            ("wspush.MaxBodyBytes", self.max_body_bytes),
            ("wspush.MaxGroupsPerClient", self.max_groups_per_client),
            ("wspush.MaxHttpConnsPerCore", self.max_http_conns_per_core),
            (
                "wspush.MaxClientIdsPerRequest",
                self.max_client_ids_per_request,
            ),
            ("wspush.MaxSystemIdBytes", self.max_system_id_bytes),
            ("wspush.MaxSystems", self.max_systems),
            ("wspush.MaxNameBytes", self.max_name_bytes),
            ("wspush.MaxExtendBytes", self.max_extend_bytes),
            ("wspush.MaxMsgBytes", self.max_msg_bytes),
            ("wspush.MaxJsonDepth", self.max_json_depth),
            ("wspush.WebhookBytes", self.webhook_bytes),
            ("wspush.WebhookQueue", self.webhook_queue),
            ("wspush.WebhookBuffer", self.webhook_buffer),
            ("wspush.WebhookWorkers", self.webhook_workers),
            ("wspush.MaxNodeLinksPerCore", self.max_node_links_per_core),
            ("wspush.MaxNodeLinksPerPeer", self.max_node_links_per_peer),
        ] {
            if value == 0 {
                problems.push(err(key, "must be greater than 0"));
            }
        }
        if self.webhook_timeout.is_zero() {
            problems.push(err("wspush.WebhookTimeoutMs", "must be at least 1 ms"));
        }
        if self.max_name_bytes < crate::ids::CLIENT_ID_LEN {
            problems.push(err(
                "wspush.MaxNameBytes",
                format!(
                    "must be at least {} (it bounds clientIds too, which are that long)",
                    crate::ids::CLIENT_ID_LEN
                ),
            ));
        }
        if self.max_head_bytes < 256 {
            problems.push(err("wspush.MaxHeadBytes", "must be at least 256"));
        }
        if !self.api_key.is_empty() {
            if let Err(problem) = crate::auth::check_api_key_config(&self.api_key) {
                problems.push(err("wspush.ApiKey", problem));
            }
        }
        if !self.cluster_secret.is_empty() {
            // Long enough not to be guessed offline from one captured handshake, and nothing
            // an ini editor or a copy-paste could silently change on one node only (spaces).
            let n = self.cluster_secret.len();
            if n < 16 {
                problems.push(err(
                    "wspush.ClusterSecret",
                    format!(
                        "must be at least 16 characters (got {n}); e.g. `openssl rand -hex 32`"
                    ),
                ));
            } else if !self.cluster_secret.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(err(
                    "wspush.ClusterSecret",
                    "must be visible ASCII without spaces",
                ));
            }
        }
        problems.extend(self.etcd_access_problems());
        for (key, value) in [
            ("wspush.HeadTimeout", self.head_timeout),
            ("wspush.KeepAliveTimeout", self.keepalive_timeout),
            ("wspush.HandshakeTimeout", self.handshake_timeout),
        ] {
            if value.is_zero() {
                problems.push(err(key, "must be at least 1 second"));
            }
        }
        problems
    }
}

/// The original's published default `CryptoKey`: fine for a try-out, a known key in production.
pub const DEFAULT_CRYPTO_KEY: &str = "Adba723b7fe06819";

/// What the published default key lets anyone do, for the start-up warning, `/status` and the
/// refusal.
pub const DEFAULT_KEY_RISK: &str = "anyone who knows the published key can forge clientIds \
    and so push to, bind, unbind and close any client of any system";

impl Config {
    /// The `[etcd]` credential and TLS keys: pairs set together, files readable PEM, and
    /// endpoint schemes that agree with CaFile.
    fn etcd_access_problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.etcd_user.is_empty() != self.etcd_password.is_empty() {
            let (key, other) = if self.etcd_user.is_empty() {
                ("etcd.User", "Password")
            } else {
                ("etcd.Password", "User")
            };
            problems.push(err(
                key,
                format!("is required with etcd.{other}: set both, or neither for an etcd without authentication"),
            ));
        }
        if self.etcd_cert_file.is_empty() != self.etcd_key_file.is_empty() {
            let (key, other) = if self.etcd_cert_file.is_empty() {
                ("etcd.CertFile", "KeyFile")
            } else {
                ("etcd.KeyFile", "CertFile")
            };
            problems.push(err(
                key,
                format!("is required with etcd.{other}: a client certificate needs its key"),
            ));
        }
        if !self.etcd_cert_file.is_empty() && self.etcd_ca_file.is_empty() {
            problems.push(err(
                "etcd.CaFile",
                "is required with etcd.CertFile: TLS to etcd trusts only the CA named here",
            ));
        }
        for (key, path) in [
            ("etcd.CaFile", &self.etcd_ca_file),
            ("etcd.CertFile", &self.etcd_cert_file),
            ("etcd.KeyFile", &self.etcd_key_file),
        ] {
            if path.is_empty() {
                continue;
            }
            match std::fs::read(path) {
                Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => {}
                Ok(_) => problems.push(err(key, format!("{path} is not a PEM file"))),
                Err(e) => problems.push(err(key, format!("cannot read {path}: {e}"))),
            }
        }
        let tls = !self.etcd_ca_file.is_empty();
        for endpoint in &self.etcd_endpoints {
            let lower = endpoint.to_ascii_lowercase();
            if tls && lower.starts_with("http://") {
                problems.push(err(
                    "etcd.Endpoints",
                    format!("{endpoint} is plain http:// while etcd.CaFile turns TLS on: write https://host:port or host:port"),
                ));
            } else if !tls && lower.starts_with("https://") {
                problems.push(err(
                    "etcd.Endpoints",
                    format!("{endpoint} is https:// but etcd.CaFile is not set: name the CA that signed etcd's certificate"),
                ));
            }
        }
        problems
    }

    /// What a node started with this config should tell the operator at every start (WARN):
    /// protections that are off or weakened on purpose, with what that allows.
    pub fn start_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.crypto_key == DEFAULT_CRYPTO_KEY {
            warnings.push(format!(
                "common.CryptoKey is the original's published default: {DEFAULT_KEY_RISK}; \
                 set your own on every node (e.g. `openssl rand -hex 16`, 32 characters), and \
                 RefuseDefaultCryptoKey = true to refuse the default"
            ));
        }
        if !self.etcd_user.is_empty() && self.etcd_ca_file.is_empty() {
            warnings.push(
                "etcd.User is set without etcd.CaFile: the etcd password and the systems' \
                 secrets cross the network to etcd in plain text; set CaFile (TLS) unless \
                 etcd is on this host"
                    .to_string(),
            );
        }
        if self.cluster && self.cluster_secret.is_empty() && self.crypto_key == DEFAULT_CRYPTO_KEY {
            warnings.push(
                "node links are authenticated with a key derived from the published default \
                 CryptoKey, so anyone who can reach RPCPort can open one: set [wspush] \
                 ClusterSecret (or your own CryptoKey) on every node"
                    .to_string(),
            );
        }
        if self.cluster && self.api_key.is_empty() {
            // The original's open API, kept by default for its callers; in a cluster it also
            // means that anyone who can reach an HttpPort registers systems every node holds.
            warnings.push(
                "cluster mode without ApiKey: anyone who reaches the HTTP port can register \
                 systems and push to any system; set [wspush] ApiKey (e.g. `openssl rand -hex \
                 32`, the same on every node) and send `Authorization: apikey <key>` on /api/* \
                 (docs/auth.md)"
                    .to_string(),
            );
        }
        if !self.api_key.is_empty() && !self.ops_require_key {
            warnings.push(
                "wspush.OpsRequireKey = false: /metrics, /status and /status.json are open to \
                 anyone who reaches HttpPort (system and group names included), while /api/* \
                 wants the ApiKey"
                    .to_string(),
            );
        }
        if self.signature_compat {
            warnings.push(
                "wspush.SignatureCompat is on: signatures over the body alone are accepted, \
                 and a captured signed request can be replayed on any route, at any time; \
                 move callers to X-Timestamp signatures (docs/auth.md) and turn it off"
                    .to_string(),
            );
        }
        warnings
    }
}

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
            (
                "wspush.MaxSystemIdBytes",
                self.max_system_id_bytes.to_string(),
            ),
            ("wspush.MaxSystems", self.max_systems.to_string()),
            ("wspush.MaxNameBytes", self.max_name_bytes.to_string()),
            ("wspush.MaxExtendBytes", self.max_extend_bytes.to_string()),
            ("wspush.MaxMsgBytes", self.max_msg_bytes.to_string()),
            ("wspush.MaxJsonDepth", self.max_json_depth.to_string()),
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

/// Yields `(section, key, value)` for every `key = value` line. Handles `[section]` headers,
/// full-line `;`/`#` comments, inline comments after whitespace (`7800 ; HTTP port`, as go-ini
/// reads them) and surrounding quotes.
fn ini_entries(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    let mut section = "";
    text.lines().filter_map(move |raw| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            return None;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim();
            return None;
        }
        let (key, value) = line.split_once('=').or_else(|| line.split_once(':'))?;
        let mut value = value.trim();
        for (i, ch) in value.char_indices() {
            if (ch == ';' || ch == '#') && (i == 0 || value[..i].ends_with(char::is_whitespace)) {
                value = value[..i].trim_end();
                break;
            }
        }
        let value = strip_quotes(value);
        Some((section, key.trim(), value))
    })
}

fn strip_quotes(v: &str) -> &str {
    for q in ['"', '\'', '`'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

fn port(key: &str, v: &str) -> Result<u16, ConfigError> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(err(key, format!("{v:?} is not a port number (1-65535)"))),
    }
}

fn boolean(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "" => Ok(false),
        _ => Err(err(key, format!("{v:?} is not a boolean (true/false)"))),
    }
}

fn number(key: &str, v: &str) -> Result<usize, ConfigError> {
    v.parse::<usize>()
        .map_err(|_| err(key, format!("{v:?} is not a non-negative integer")))
}

fn seconds(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let n: u64 = v
        .parse()
        .map_err(|_| err(key, format!("{v:?} is not a whole number of seconds")))?;
    Ok(Duration::from_secs(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_originals_file_with_inline_comments() {
        let c = Config::parse(
            "[common]\nHttpPort = 7801          ; HTTP API\nRPCPort = 7901\n# comment\n\
             Cluster = false\nCryptoKey = Adba723b7fe06819   ; 16 bytes\n[etcd]\n\
             Endpoints = 127.0.0.1:2379, 127.0.0.2:2379\n[other]\nHttpPort = 1\n",
        )
        .unwrap();
        assert_eq!(c.http_port, 7801);
        assert_eq!(c.rpc_port, 7901);
        assert!(!c.cluster);
        assert_eq!(c.crypto_key, "Adba723b7fe06819");
        assert_eq!(c.etcd_endpoints, vec!["127.0.0.1:2379", "127.0.0.2:2379"]);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Config::parse("[common]\nHttpPort = abc\n").unwrap_err();
        assert_eq!(e.key, "common.HttpPort");
        let e = Config::parse("[common]\nCryptoKey = short\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "common.CryptoKey");
        assert!(e.to_string().contains("16, 24 or 32"));
        let e = Config::parse("[wspush]\nHeartbeatInterval = 30\nPongTimeout = 10\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.PongTimeout");
    }

    #[test]
    fn connection_limit_follows_the_open_files_limit_unless_set() {
        let c = Config::default();
        // 20,000 files (this machine): 1,000 kept back, the rest shared by the cores.
        assert_eq!(c.conns_per_core(20_000, 2), 9_500);
        assert_eq!(c.conns_per_core(20_000, 1), 19_000);
        assert_eq!(c.conns_per_core(1 << 20, 16), ((1 << 20) - 4096) / 16);
        // A tiny limit still leaves room for a few connections and the listeners.
        assert_eq!(c.conns_per_core(64, 2), 16);
        let c = Config::parse("[wspush]\nMaxConnsPerCore = 7\n").unwrap();
        assert_eq!(c.conns_per_core(20_000, 2), 7);
        let e = Config::parse("[wspush]\nHandshakeTimeout = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.HandshakeTimeout");
        let e = Config::parse("[wspush]\nMaxGroupsPerClient = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.MaxGroupsPerClient");
        assert_eq!(Config::default().max_http_conns_per_core, 1024);
        let c =
            Config::parse("[wspush]\nMaxHttpConnsPerCore = 5\nOpsRequireKey = false\n").unwrap();
        assert_eq!((c.max_http_conns_per_core, c.ops_require_key), (5, false));
        let e = Config::parse("[wspush]\nMaxHttpConnsPerCore = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.MaxHttpConnsPerCore");
    }

    #[test]
    fn api_key_is_off_by_default_and_checked_when_set() {
        assert_eq!(Config::default().api_key, "");
        let c = Config::parse("[wspush]\nApiKey = 0123456789abcdef0123 ; comment\n").unwrap();
        assert_eq!(c.api_key, "0123456789abcdef0123");
        c.validate().unwrap();
        let e = Config::parse("[wspush]\nApiKey = short\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.ApiKey");
    }

    #[test]
    fn node_link_keys_parse_validate_and_pick_the_bind_address() {
        let c = Config::default();
        assert_eq!(c.cluster_secret, "");
        assert_eq!(c.rpc_bind_host(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            (c.max_node_links_per_core, c.max_node_links_per_peer),
            (8192, 512)
        );
        let c = Config::parse("[wspush]\nAdvertiseHost = 10.0.0.7\n").unwrap();
        assert_eq!(c.rpc_bind_host(), Ipv4Addr::new(10, 0, 0, 7));
        let c = Config::parse("[wspush]\nAdvertiseHost = 10.0.0.7\nRPCBind = 0.0.0.0\n").unwrap();
        assert_eq!(c.rpc_bind_host(), Ipv4Addr::UNSPECIFIED);
        let e = Config::parse("[wspush]\nRPCBind = eth0\n").unwrap_err();
        assert_eq!(e.key, "wspush.RPCBind");
        let c = Config::parse("[wspush]\nClusterSecret = 0123456789abcdef0123\n").unwrap();
        c.validate().unwrap();
        for bad in ["short", "has spaces in it, long enough"] {
            let e = Config::parse(&format!("[wspush]\nClusterSecret = {bad}\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(e.key, "wspush.ClusterSecret");
        }
        let e = Config::parse("[wspush]\nMaxNodeLinksPerPeer = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.MaxNodeLinksPerPeer");
        // Shown by length only.
        let shown = c
            .values()
            .into_iter()
            .find(|(k, _)| *k == "wspush.ClusterSecret");
        assert_eq!(shown.unwrap().1, "<secret, 20 bytes>");
    }

    #[test]
    fn issue_12_limits_have_their_defaults_and_are_checked() {
        let c = Config::default();
        assert_eq!(
            (
                c.max_system_id_bytes,
                c.max_systems,
                c.max_name_bytes,
                c.max_extend_bytes,
                c.max_msg_bytes,
                c.max_json_depth,
                c.webhook_bytes,
                c.webhook_allow_private,
            ),
            (128, 100_000, 256, 4096, 65_536, 64, 64 << 20, false)
        );
        let c = Config::parse(
            "[wspush]\nMaxSystems = 5\nMaxJsonDepth = 8\nWebhookAllowPrivate = true\n\
             WebhookBytes = 1000\n",
        )
        .unwrap();
        assert_eq!((c.max_systems, c.max_json_depth), (5, 8));
        assert_eq!((c.webhook_bytes, c.webhook_allow_private), (1000, true));
        c.validate().unwrap();
        // clientIds are bounded by MaxNameBytes too, so it cannot go below their length.
        let e = Config::parse("[wspush]\nMaxNameBytes = 58\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "wspush.MaxNameBytes");
        for key in [
            "MaxSystems",
            "MaxJsonDepth",
            "WebhookBytes",
            "MaxSystemIdBytes",
        ] {
            let e = Config::parse(&format!("[wspush]\n{key} = 0\n"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(e.key, format!("wspush.{key}"));
        }
    }

    #[test]
    fn unknown_keys_are_ignored_and_defaults_hold() {
        let c = Config::parse("[common]\nFoo = bar\n[x]\ny=z\n").unwrap();
        assert_eq!(c.http_port, 7800);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(25));
        c.validate().unwrap();
    }

    #[test]
    fn parse_all_and_validate_all_report_every_problem() {
        let (c, problems) = Config::parse_all(
            "[common]\nHttpPort = abc\nCryptoKey = short\n[wspush]\nCores = many\n\
             LogFormat = xml\nHeartbeatInterval = 30\nPongTimeout = 10\nQueueFrames = 0\n",
        );
        let keys: Vec<&str> = problems.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["common.HttpPort", "wspush.Cores", "wspush.LogFormat"]
        );
        // Values after a bad one still apply.
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        let keys: Vec<String> = c.validate_all().into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "common.CryptoKey",
                "wspush.PongTimeout",
                "wspush.QueueFrames"
            ]
        );
        // The single-problem forms give the first.
        assert_eq!(
            Config::parse("[common]\nHttpPort = abc\nRPCPort = x\n")
                .unwrap_err()
                .key,
            "common.HttpPort"
        );
        assert_eq!(c.validate().unwrap_err().key, "common.CryptoKey");
    }

    #[test]
    fn values_list_every_key_and_parse_back() {
        let text = "[common]\nHttpPort = 7801\nRPCPort = 7901\nCluster = true\n\
                    [etcd]\nEndpoints = a:1, b:2\n[wspush]\nAdvertiseHost = 10.0.0.7\n\
                    Cores = 3\nLogFormat = JSON\nRpcTimeoutMs = 1500\nShutdownGrace = 9\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        // Writing the listed values back as an ini file gives the same values.
        let mut ini = String::new();
        for (key, value) in c.values() {
            let (section, name) = key.split_once('.').unwrap();
            ini.push_str(&format!("[{section}]\n{name} = {value}\n"));
        }
        let again = Config::parse(&ini).unwrap();
        assert_eq!(again.values(), c.values());
        // A key read by parse but missing from values() would show up here as unchanged.
        assert_eq!(again.rpc_timeout, Duration::from_millis(1500));
        assert_eq!(again.shutdown_grace, Duration::from_secs(9));
        assert_eq!(again.advertise_host, Some(Ipv4Addr::new(10, 0, 0, 7)));
        // Secrets show their length only; the published default shows itself.
        let c = Config::parse("[common]\nCryptoKey = 0123456789abcdef\n").unwrap();
        let shown = c
            .values()
            .into_iter()
            .find(|(k, _)| *k == "common.CryptoKey");
        assert_eq!(shown.unwrap().1, "<secret, 16 bytes>");
        let shown = Config::default()
            .values()
            .into_iter()
            .find(|(k, _)| *k == "common.CryptoKey");
        assert_eq!(shown.unwrap().1, DEFAULT_CRYPTO_KEY);
        assert_eq!(
            Config::file_keys("[a]\nX = 1\n; c\nY=2\n"),
            [("a", "X"), ("a", "Y")]
        );
    }
}

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
    /// `[etcd] Endpoints`, default empty: comma-separated `host:port` list.
    pub etcd_endpoints: Vec<String>,
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
    /// `[wspush] MaxGroupsPerClient`, default 1024: groups one connection may be bound to; one
    /// more `bind_to_group` answers code -1. Bounds the memory a caller can pin to one socket.
    pub max_groups_per_client: usize,
    /// `[wspush] MaxClientIdsPerRequest`, default 10000: ids one `send_to_clients` may list;
    /// more answers code -1. Opening an id costs ~0.5 µs of a core, so this bounds one request
    /// to a few milliseconds of work.
    pub max_client_ids_per_request: usize,
    /// `[wspush] ShutdownGrace` (seconds), default 2: on SIGTERM, how long queued frames and
    /// close frames get to drain before sockets are cut.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_port: 7800,
            rpc_port: 7900,
            cluster: false,
            crypto_key: "Adba723b7fe06819".to_string(),
            etcd_endpoints: Vec::new(),
            advertise_host: None,
            rpc_timeout: Duration::from_millis(3000),
            lease_ttl: Duration::from_secs(5),
            cores: 0,
            heartbeat_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            queue_frames: 1024,
            queue_bytes: 4 << 20,
            max_message_bytes: 8192,
            max_head_bytes: 8192,
            max_body_bytes: 1 << 20,
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_conns_per_core: 0,
            max_groups_per_client: 1024,
            max_client_ids_per_request: 10_000,
            shutdown_grace: Duration::from_secs(2),
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

    /// Parses ini text on top of the defaults. Does not validate cross-key rules.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for (section, key, value) in ini_entries(text) {
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
                ("wspush", "queuebytes") => c.queue_bytes = number(&full, value)?,
                ("wspush", "maxmessagebytes") => c.max_message_bytes = number(&full, value)?,
                ("wspush", "maxheadbytes") => c.max_head_bytes = number(&full, value)?,
                ("wspush", "maxbodybytes") => c.max_body_bytes = number(&full, value)?,
                ("wspush", "headtimeout") => c.head_timeout = seconds(&full, value)?,
                ("wspush", "keepalivetimeout") => c.keepalive_timeout = seconds(&full, value)?,
                ("wspush", "shutdowngrace") => c.shutdown_grace = seconds(&full, value)?,
                ("wspush", "handshaketimeout") => c.handshake_timeout = seconds(&full, value)?,
                ("wspush", "maxconnspercore") => c.max_conns_per_core = number(&full, value)?,
                ("wspush", "maxgroupsperclient") => c.max_groups_per_client = number(&full, value)?,
                ("wspush", "maxclientidsperrequest") => {
                    c.max_client_ids_per_request = number(&full, value)?
                }
                _ => {} // unknown keys are ignored, as in the original
            }
        }
        Ok(c)
    }

    /// Cross-key and range checks. Each failure names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key_len = self.crypto_key.len();
        if ![16, 24, 32].contains(&key_len) {
            return Err(err(
                "common.CryptoKey",
                format!("must be 16, 24 or 32 bytes long, got {key_len}"),
            ));
        }
        if self.http_port == 0 {
            return Err(err("common.HttpPort", "must be between 1 and 65535"));
        }
        if self.rpc_port == 0 {
            return Err(err("common.RPCPort", "must be between 1 and 65535"));
        }
        if self.cluster && self.etcd_endpoints.is_empty() {
            return Err(err(
                "etcd.Endpoints",
                "Cluster = true needs at least one etcd endpoint (host:port, comma-separated)",
            ));
        }
        if self.cluster && self.rpc_port == self.http_port {
            return Err(err("common.RPCPort", "must differ from HttpPort"));
        }
        if self.rpc_timeout.is_zero() {
            return Err(err("wspush.RpcTimeoutMs", "must be at least 1 ms"));
        }
        if self.lease_ttl.as_secs() < 2 {
            return Err(err("wspush.LeaseTtl", "must be at least 2 seconds"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(err("wspush.HeartbeatInterval", "must be at least 1 second"));
        }
        if self.pong_timeout <= self.heartbeat_interval {
            return Err(err(
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
            (
                "wspush.MaxClientIdsPerRequest",
                self.max_client_ids_per_request,
            ),
        ] {
            if value == 0 {
                return Err(err(key, "must be greater than 0"));
            }
        }
        if self.max_head_bytes < 256 {
            return Err(err("wspush.MaxHeadBytes", "must be at least 256"));
        }
        for (key, value) in [
            ("wspush.HeadTimeout", self.head_timeout),
            ("wspush.KeepAliveTimeout", self.keepalive_timeout),
            ("wspush.HandshakeTimeout", self.handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(err(key, "must be at least 1 second"));
            }
        }
        Ok(())
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
    }

    #[test]
    fn unknown_keys_are_ignored_and_defaults_hold() {
        let c = Config::parse("[common]\nFoo = bar\n[x]\ny=z\n").unwrap();
        assert_eq!(c.http_port, 7800);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(25));
        c.validate().unwrap();
    }
}

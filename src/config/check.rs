//! Checks of a parsed [`Config`]: the cross-key and range problems that stop a start, and
//! the warnings a start logs for a config that runs but is not safe.

use super::{err, Config, ConfigError, DEFAULT_CRYPTO_KEY, DEFAULT_KEY_RISK};
use std::time::Duration;

impl Config {
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
                "must be at most 100000 (100 ms): a core under broadcast load writes each socket once per window",
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
            ("wspush.MaxBatch", self.max_batch),
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
        if self.history_size > 0 && self.history_ttl.is_zero() {
            problems.push(err(
                "wspush.HistoryTtl",
                "must be at least 1 second when HistorySize is set",
            ));
        }
        if self.history_size > 0 && self.history_max_bytes == 0 {
            problems.push(err(
                "wspush.HistoryMaxBytes",
                "must be greater than 0 when HistorySize is set",
            ));
        }
        if self.offline_max > 0 && self.offline_ttl.is_zero() {
            problems.push(err(
                "wspush.OfflineTtl",
                "must be at least 1 second when OfflineMax is set",
            ));
        }
        if self.offline_max > 0 && self.offline_max_bytes == 0 {
            problems.push(err(
                "wspush.OfflineMaxBytes",
                "must be greater than 0 when OfflineMax is set",
            ));
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

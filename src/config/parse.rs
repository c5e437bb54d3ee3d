//! Reading the ini text (and the environment) into a [`Config`]: the one place that knows
//! each key's spelling and how its value is written.

use super::{err, Config, ConfigError};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// The prefix of the environment variables that override app.ini keys: `WSPUSH_<SECTION>_<KEY>`,
/// e.g. `WSPUSH_COMMON_HTTPPORT=7801` or `WSPUSH_WSPUSH_ADVERTISEHOST=ws1` (any case).
pub const ENV_PREFIX: &str = "WSPUSH_";

/// The sections wspush reads, lower case; a `WSPUSH_` variable naming another is not ours
/// (`WSPUSH_SETUP_TEST`, say) and is left alone.
const SECTIONS: [&str; 3] = ["common", "etcd", "wspush"];

/// An environment variable that sets a key: which variable, which key (`section.Key`, spelled as
/// [`Config::values`] spells it) and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: String,
    pub key: &'static str,
    pub value: String,
}

impl Config {
    /// Reads `path`, applies it over the defaults, then the `WSPUSH_*` environment over the
    /// file, and validates. Flags go on top in `main`, which therefore uses the pieces.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::parse(&Config::read(path)?)?;
        let (overrides, _) = Config::env_overrides(std::env::vars());
        if let Some(e) = config.apply_env(&overrides).into_iter().next() {
            return Err(e);
        }
        config.validate()?;
        Ok(config)
    }

    /// The text of the config file, or the error that names it.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| {
            err(
                "config file",
                format!("cannot read {}: {e}", path.display()),
            )
        })
    }

    /// The overrides among `vars` (normally `std::env::vars()`), and a note for each `WSPUSH_`
    /// variable that names a section wspush reads but no key of it (a typo that would
    /// otherwise keep the file's value without a word).
    pub fn env_overrides(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> (Vec<EnvOverride>, Vec<String>) {
        let keys: Vec<&'static str> = Config::default().values().iter().map(|(k, _)| *k).collect();
        let mut overrides = Vec::new();
        let mut notes = Vec::new();
        for (var, value) in vars {
            let Some(rest) = var
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| &var[ENV_PREFIX.len()..])
            else {
                continue;
            };
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if !SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section)) {
                continue;
            }
            let wanted = format!("{section}.{key}");
            match keys.iter().find(|k| k.eq_ignore_ascii_case(&wanted)) {
                Some(key) => overrides.push(EnvOverride {
                    var: var.clone(),
                    key,
                    value,
                }),
                None => notes.push(format!(
                    "environment variable {var} names no key of [{}] (ignored)",
                    section.to_ascii_lowercase()
                )),
            }
        }
        overrides.sort_by(|a, b| a.var.cmp(&b.var));
        (overrides, notes)
    }

    /// Applies `overrides` over the current values; every bad value, each naming its variable
    /// (the key keeps its previous value).
    pub fn apply_env(&mut self, overrides: &[EnvOverride]) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for o in overrides {
            let (section, key) = o.key.split_once('.').unwrap_or(("", o.key));
            let mut one = std::iter::once((section, key, o.value.trim()));
            if let Err(e) = Config::apply_entries(self, &mut one) {
                problems.push(err(&format!("{} ({})", o.var, o.key), e.problem));
            }
        }
        problems
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
                ("wspush", "advertisehost") => c.advertise_host = host(&full, value)?,
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
                ("wspush", "rpcbind") => c.rpc_bind = host(&full, value)?,
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
                ("wspush", "maxbatch") => c.max_batch = number(&full, value)?,
                ("wspush", "maxsystemidbytes") => c.max_system_id_bytes = number(&full, value)?,
                ("wspush", "maxsystems") => c.max_systems = number(&full, value)?,
                ("wspush", "maxnamebytes") => c.max_name_bytes = number(&full, value)?,
                ("wspush", "maxextendbytes") => c.max_extend_bytes = number(&full, value)?,
                ("wspush", "maxmsgbytes") => c.max_msg_bytes = number(&full, value)?,
                ("wspush", "maxjsondepth") => c.max_json_depth = number(&full, value)?,
                ("wspush", "historysize") => c.history_size = number(&full, value)?,
                ("wspush", "historyttl") => c.history_ttl = seconds(&full, value)?,
                ("wspush", "historymaxbytes") => c.history_max_bytes = number(&full, value)?,
                ("wspush", "offlinemax") => c.offline_max = number(&full, value)?,
                ("wspush", "offlinettl") => c.offline_ttl = seconds(&full, value)?,
                ("wspush", "offlinemaxbytes") => c.offline_max_bytes = number(&full, value)?,
                ("wspush", "webhookqueue") => c.webhook_queue = number(&full, value)?,
                ("wspush", "webhookbuffer") => c.webhook_buffer = number(&full, value)?,
                ("wspush", "webhookworkers") => c.webhook_workers = number(&full, value)?,
                ("wspush", "webhookbytes") => c.webhook_bytes = number(&full, value)?,
                ("wspush", "webhookallowprivate") => {
                    c.webhook_allow_private = boolean(&full, value)?
                }
                ("wspush", "webhookoccupancy") => c.webhook_occupancy = boolean(&full, value)?,
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

/// An IPv4 address, or a host name resolved to its first IPv4 address now, at start (a
/// container's own name in a compose network, say); empty is `None`.
fn host(key: &str, v: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    if v.is_empty() {
        return Ok(None);
    }
    if let Ok(ip) = v.parse() {
        return Ok(Some(ip));
    }
    let is_name = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !is_name || v.starts_with(['-', '.']) {
        return Err(err(
            key,
            format!("{v:?} is not an IPv4 address or a host name"),
        ));
    }
    let resolved = (v, 0u16)
        .to_socket_addrs()
        .map_err(|e| err(key, format!("cannot resolve host name {v:?}: {e}")))?;
    resolved
        .filter_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .next()
        .map(Some)
        .ok_or_else(|| err(key, format!("host name {v:?} has no IPv4 address")))
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

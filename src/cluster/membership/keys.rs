//! The etcd key layout (the original go-websocket's) and the values under it: node keys
//! `/wsServers/<host:port>`, and the registered systems `ws/account/<systemId>` with the JSON
//! this server writes and the lenient reading of what others wrote. Pure functions.

use crate::types::{HistoryOpts, SystemInfo};
use serde::Serialize;
use std::net::SocketAddrV4;

/// Prefix of the node keys, `/wsServers/<host:port>` (the original's `ETCD_SERVER_LIST`).
pub const SERVERS_PREFIX: &str = "/wsServers/";
/// Prefix of the registered systems, `ws/account/<systemId>` (the original's
/// `ETCD_PREFIX_ACCOUNT_INFO`).
pub const ACCOUNT_PREFIX: &str = "ws/account/";

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
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<HistoryJson>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    single_connection: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryJson {
    size: u32,
    ttl_seconds: u32,
}

/// The value stored under `ws/account/<systemId>`: the original's
/// `{"systemId":"...","registerTime":<unix secs>}`, plus `"secret"`, `"webhookUrl"` and
/// `"history": {"size","ttlSeconds"}` and `"singleConnection": true` only when set, so a system
/// without them reads exactly as the original wrote it.
pub fn account_json(system: &str, register_time: i64, info: &SystemInfo) -> String {
    match serde_json::to_string(&AccountInfo {
        system_id: system,
        register_time,
        secret: info.secret.as_deref(),
        webhook_url: info.webhook_url.as_deref(),
        history: info.history.map(|h| HistoryJson {
            size: h.size,
            ttl_seconds: h.ttl_seconds,
        }),
        single_connection: info.single_connection,
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
        history: parse_history(system, map.get("history")),
        single_connection: parse_single_connection(system, map.get("singleConnection")),
    }
}

/// A system's `singleConnection` from its account value: only `true` turns it on (anything
/// else than a boolean or null is ignored, with a warning).
fn parse_single_connection(system: &str, value: Option<&serde_json::Value>) -> bool {
    match value {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(on)) => *on,
        Some(other) => {
            tracing::warn!(system, value = %other, "account singleConnection ignored: not a boolean");
            false
        }
    }
}

/// A system's `history` from its account value: an object with positive integer `size` and
/// `ttlSeconds`; anything else is no history (with a warning when something was there).
fn parse_history(system: &str, value: Option<&serde_json::Value>) -> Option<HistoryOpts> {
    let value = value.filter(|v| !v.is_null())?;
    let number = |key: &str| {
        let n = value.get(key)?.as_u64()?;
        u32::try_from(n).ok().filter(|&n| n > 0)
    };
    match (number("size"), number("ttlSeconds")) {
        (Some(size), Some(ttl_seconds)) => Some(HistoryOpts { size, ttl_seconds }),
        _ => {
            tracing::warn!(system, %value, "account history ignored: size and ttlSeconds must be integers above 0");
            None
        }
    }
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
            history: Some(HistoryOpts {
                size: 100,
                ttl_seconds: 60,
            }),
            single_connection: true,
        };
        let json = account_json("sys1", 5, &info);
        assert!(json.contains(r#""singleConnection":true"#), "{json}");
        let plain = account_json("sys1", 5, &SystemInfo::default());
        assert!(!plain.contains("singleConnection"), "{plain}");
        let odd = parse_account("s", br#"{"singleConnection":"yes"}"#);
        assert!(!odd.single_connection, "a non-boolean turns nothing on");
        assert_eq!(parse_account("sys1", json.as_bytes()), info);
        assert!(
            json.contains(r#""history":{"size":100,"ttlSeconds":60}"#),
            "{json}"
        );
        // History alone, and history values that make no sense (no history, still a system).
        let only = parse_account("s", br#"{"history":{"size":3,"ttlSeconds":9}}"#);
        assert_eq!(
            only.history,
            Some(HistoryOpts {
                size: 3,
                ttl_seconds: 9
            })
        );
        for odd in [
            br#"{"history":{"size":0,"ttlSeconds":9}}"#.as_slice(),
            br#"{"history":{"size":3}}"#,
            br#"{"history":"yes"}"#,
            br#"{"history":{"size":-1,"ttlSeconds":9}}"#,
        ] {
            assert_eq!(parse_account("s", odd), SystemInfo::default(), "{odd:?}");
        }
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
}

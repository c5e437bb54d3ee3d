//! Checks of what a system registers with: its systemId and its webhook URL. The original's
//! systems are bare names; wspush lets `register` attach an optional secret and a webhook URL
//! (the options themselves are [`crate::types::SystemInfo`]).

/// Checks a webhook URL given to `register`; the error completes "webhookUrl ...". The webhook
/// sender speaks plain HTTP/1.1 only, so the form is `http://host[:port][/path][?query]`
/// (port 80 when absent), host a name, an IPv4 address or a bracketed IPv6 one. No user info
/// and no fragment: neither means anything to a server-to-server POST.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    const FORM: &str = "must be an http://host:port/path URL";
    if url.len() > 2048 {
        return Err(format!("is too long ({} bytes, at most 2048)", url.len()));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{FORM} without spaces or non-ASCII characters"));
    }
    let scheme_end = url.find("://").ok_or_else(|| FORM.to_string())?;
    let scheme = &url[..scheme_end];
    if scheme.eq_ignore_ascii_case("https") {
        return Err(
            "must be an http:// URL: https is not supported by the webhook sender \
                    (point it at a local TLS-terminating proxy instead)"
                .into(),
        );
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("{FORM} (got scheme {scheme:?})"));
    }
    let rest = &url[scheme_end + 3..];
    if rest.contains('#') {
        return Err(format!("{FORM} without a #fragment"));
    }
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err(format!("{FORM} without user info (user@)"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or_else(|| FORM.to_string())?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{FORM}: {addr:?} is not an IPv6 address"));
            }
            match after {
                "" => (addr, None),
                _ => (
                    addr,
                    Some(after.strip_prefix(':').ok_or_else(|| FORM.to_string())?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let name_ok = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if host.is_empty() || (!authority.starts_with('[') && !name_ok(host)) {
        return Err(format!("{FORM}: the host is missing or invalid"));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("{FORM}: {port:?} is not a port (1-65535)")),
        }
    }
    Ok(())
}

/// Checks a systemId (from `register`, the `SystemId` header or `/ws?systemId=`); the error
/// completes "systemId ...". A systemId becomes an etcd key (`ws/account/<id>`), a header value
/// and a field of every log line about the system, so it is bounded (`MaxSystemIdBytes`) and may
/// not hold control characters (a newline would forge log lines, a NUL cuts C strings). Any
/// other text is accepted, spaces, `/` and non-ASCII (Chinese names) included: the original
/// takes any string, and systems registered with such names must keep working.
pub fn check_system_id(id: &str, max_bytes: usize) -> Result<(), String> {
    if id.len() > max_bytes {
        return Err(format!(
            "is too long ({} bytes, at most MaxSystemIdBytes = {max_bytes})",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// The address check of a webhook URL at `register` (after [`check_webhook_url`]); the error
/// completes "webhookUrl ...". A host written as an IP address in a private, loopback,
/// link-local or otherwise non-public range is refused unless `WebhookAllowPrivate` is on. A host
/// name is not resolved here (a core never waits for DNS): the sender checks what it resolves
/// to before every connect.
pub fn check_webhook_target(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let Ok(parsed) = crate::webhook::client::Url::parse(url) else {
        return Ok(()); // check_webhook_url reports the form
    };
    let Ok(ip) = parsed.host.parse::<std::net::IpAddr>() else {
        return Ok(());
    };
    match crate::webhook::client::private_range(ip) {
        Some(range) => Err(format!(
            "points at {ip}, a {range} address: refused unless WebhookAllowPrivate = true"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_system_id, check_webhook_target, check_webhook_url};

    #[test]
    fn system_ids() {
        for ok in ["app1", "a b/c", "系统一", "x".repeat(128).as_str(), "ü-ß"] {
            assert_eq!(check_system_id(ok, 128), Ok(()), "{ok:?}");
        }
        let long = check_system_id(&"x".repeat(129), 128).unwrap_err();
        assert!(
            long.contains("129 bytes") && long.contains("MaxSystemIdBytes"),
            "{long}"
        );
        // 43 three-byte characters are 129 bytes: the limit is in bytes, like the etcd key.
        assert!(check_system_id(&"系".repeat(43), 128).is_err());
        for bad in ["a\nb", "a\rb", "\0", "a\u{7f}", "a\u{85}b", "\t"] {
            let e = check_system_id(bad, 128).unwrap_err();
            assert!(e.contains("control"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn webhook_targets_that_are_private_addresses() {
        for bad in [
            "http://127.0.0.1:9000/hook",
            "http://127.1.2.3/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[ff02::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:c0a8:101::1]/",
        ] {
            let e = check_webhook_target(bad, false).unwrap_err();
            assert!(e.contains("WebhookAllowPrivate"), "{bad}: {e}");
            assert_eq!(check_webhook_target(bad, true), Ok(()), "{bad}");
        }
        for ok in [
            "http://8.8.8.8/",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://[2001:4860::8888]/",
            "http://[::ffff:8.8.8.8]/",
            // Names are checked by the sender when it resolves them, not here.
            "http://localhost:9000/",
            "http://hooks.internal/",
        ] {
            assert_eq!(check_webhook_target(ok, false), Ok(()), "{ok}");
        }
    }

    #[test]
    fn webhook_urls() {
        for ok in [
            "http://127.0.0.1:9000/hook",
            "http://hooks.internal/wspush?x=1",
            "HTTP://a:80",
            "http://[::1]:8080/h",
            "http://my_host-1.example.com:1/",
        ] {
            assert_eq!(check_webhook_url(ok), Ok(()), "{ok}");
        }
        let https = check_webhook_url("https://example.com/hook").unwrap_err();
        assert!(https.contains("https is not supported"), "{https}");
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "http://",
            "http:///path",
            "http://a:0/",
            "http://a:99999/",
            "http://a:x/",
            "http://a:/",
            "http://user:pw@a/",
            "http://a/#frag",
            "http://a b/",
            "http://[::1/",
            "http://[zz]/",
            "http://a%2f/",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}

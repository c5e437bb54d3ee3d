//! What a system registered with. The original's systems are bare names; wspush lets `register`
//! attach an optional secret (HMAC-signed API calls, JWT-authenticated connects) and a webhook
//! URL. Immutable once registered: every core holds the same `Arc`.

/// A registered system's options. `Default` is the original's behaviour: no secret, no webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// When set, the system's API calls must carry `X-Signature` and its connects a JWT.
    pub secret: Option<String>,
    /// When set, this node POSTs the system's connection events there.
    pub webhook_url: Option<String>,
}

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

#[cfg(test)]
mod tests {
    use super::check_webhook_url;

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

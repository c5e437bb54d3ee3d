//! The webhook URL a system registers: `http://host[:port][/path][?query]`, parsed once into
//! what a POST needs (host, port, request target, `Host` header), or why it cannot be sent to.

/// A parsed `http://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query as sent in the request line; `/` at least.
    pub target: String,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("webhookUrl must start with http:// (https is not supported: terminate TLS in front of the receiver, or keep it on a private network)")]
    Scheme,
    #[error("webhookUrl has no host")]
    NoHost,
    #[error("webhookUrl has a bad port")]
    Port,
    #[error("webhookUrl must not carry user:password@")]
    UserInfo,
    #[error("webhookUrl contains spaces or control characters")]
    BadChar,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::BadChar);
        }
        let rest = match text.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &text[7..],
            _ => return Err(UrlError::Scheme),
        };
        // The fragment never goes on the wire.
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or(UrlError::Port)?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let port = match port {
            None | Some("") => 80,
            // Digits only: u16's parser would take a leading '+'.
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => return Err(UrlError::Port),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(UrlError::Port),
            },
        };
        let target = match target.strip_prefix('?') {
            Some(_) => format!("/{target}"),
            None if target.is_empty() => "/".to_string(),
            None => target.to_string(),
        };
        Ok(Url {
            host: host.to_string(),
            port,
            target,
            authority: authority.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let u = Url::parse("http://example.com:8080/hooks/ws?x=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                host: "example.com".into(),
                port: 8080,
                target: "/hooks/ws?x=1".into(),
                authority: "example.com:8080".into(),
            }
        );
        let u = Url::parse("HTTP://10.0.0.1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("10.0.0.1", 80, "/")
        );
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!(u.target, "/?q");
        let u = Url::parse("http://[::1]:9000/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for (url, want) in [
            ("https://example.com/", UrlError::Scheme),
            ("ftp://x/", UrlError::Scheme),
            ("", UrlError::Scheme),
            ("http://", UrlError::NoHost),
            ("http://:80/", UrlError::NoHost),
            ("http://h:0/", UrlError::Port),
            ("http://h:99999/", UrlError::Port),
            ("http://h:+80/", UrlError::Port),
            ("http://u:p@h/", UrlError::UserInfo),
            ("http://h/a b", UrlError::BadChar),
            ("http://h/\r\nX-Injected: 1", UrlError::BadChar),
        ] {
            assert_eq!(Url::parse(url), Err(want), "{url:?}");
        }
    }
}

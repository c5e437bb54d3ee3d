//! The bytes of one webhook exchange: the POST request written in one buffer, the response
//! head read back, and [`PostError`], why a POST got no status.

use super::url::Url;
use std::io;
use std::net::IpAddr;

/// Largest response body read (and discarded) to keep the connection; a larger or chunked one
/// closes it instead.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// Why a POST got no status.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{host} is {addr}, a {range} address, and WebhookAllowPrivate is off")]
    Private {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
    #[error("no answer within the timeout ({0})")]
    Timeout(&'static str),
    #[error("the receiver closed the connection before answering")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

/// The request: head and body in one buffer, so it leaves in one write.
pub fn request_bytes(url: &Url, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(url.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(url.authority.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: wspush/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What the client needs from a response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: Option<usize>,
    /// HTTP/1.1 without `Connection: close`, and no chunked body.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`; None while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, PostError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(PostError::BadResponse("too many response headers"))
        }
        Err(_) => return Err(PostError::BadResponse("not an HTTP/1.x response")),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut content_length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n <= MAX_KEPT_BODY);
            if content_length.is_none() {
                keep_alive = false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    Ok(Some(Head {
        status,
        len,
        content_length,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_json_head_and_the_headers() {
        let u = Url::parse("http://h:81/p").unwrap();
        let r = request_bytes(&u, &[("X-Signature", "ab")], b"{}");
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("POST /p HTTP/1.1\r\nHost: h:81\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\nContent-Length: 2\r\n"));
        assert!(text.ends_with("\r\nX-Signature: ab\r\n\r\n{}"));
    }

    #[test]
    fn reads_status_and_whether_the_connection_can_be_kept() {
        let h = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.keep_alive),
            (204, Some(0), true)
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}

//! HTTP/1.x request heads (httparse) and responses, for the API and the WebSocket upgrade.
//!
//! Only what the routes need is copied out of a head, so the read buffer can be reused at once.
//! Bodies come with `Content-Length` (what the original's clients, PHP curl and nginx, send) or
//! `Transfer-Encoding: chunked` (streaming clients, decoded by [`super::chunked`], re-exported
//! here), both bounded by MaxBodyBytes.

pub use super::chunked::{chunked_wire_limit, dechunk, ChunkError, Dechunker};

const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// The parts of a request head wspush uses.
#[derive(Debug, Default, Clone)]
pub struct Head {
    pub method: Option<Method>,
    /// Path without the query string.
    pub path: String,
    /// Query string without the `?`, possibly empty.
    pub query: String,
    /// HTTP/1.x minor version: 0 or 1.
    pub minor_version: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Connection: close` (1.1) or no `Connection: keep-alive` (1.0).
    pub close: bool,
    pub expect_continue: bool,
    /// The `SystemId` header (any case), trimmed.
    pub system_id: Option<String>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// The `Authorization` header, trimmed (the ApiKey check, `auth::check_api_key`).
    pub authorization: Option<String>,
    /// The `X-Signature` header, trimmed (signed calls of a system with a secret).
    pub signature: Option<String>,
    /// The `X-Timestamp` header, trimmed: the unix time a signed call was signed at.
    pub timestamp: Option<String>,
}

/// Why a head could not be used; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head too large")]
    TooLarge,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("unsupported Transfer-Encoding: {0}")]
    UnsupportedCoding(String),
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::BadLength => 400,
            HeadError::TooLarge => 431,
            // RFC 9112 section 6.1: a transfer coding the server does not understand.
            HeadError::UnsupportedCoding(_) => 501,
        }
    }
}

/// Parses a head from the front of `buf`. `Ok(None)`: incomplete. `Ok(Some((head, len)))`: the
/// head used `len` bytes; the body (if any) follows.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let minor_version = req.version.unwrap_or(1);
    let mut head = Head {
        method: Some(match req.method {
            Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            _ => Method::Other,
        }),
        path: path.to_string(),
        query: query.to_string(),
        minor_version,
        close: minor_version == 0,
        ..Head::default()
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value).ok_or(HeadError::BadLength)?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadLength);
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Several headers form one list, in order (RFC 9110 section 5.3).
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if head.chunked {
                    // RFC 9112 section 6.3: chunked must be the last coding.
                    return Err(HeadError::Malformed(
                        "Transfer-Encoding: chunked is not the last coding".into(),
                    ));
                }
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(HeadError::UnsupportedCoding(
                        coding.chars().take(32).collect(),
                    ));
                }
                head.chunked = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                head.close = true;
            }
            if has_token(value, "keep-alive") && minor_version == 0 {
                head.close = false;
            }
            head.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("systemid") {
            head.system_id = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket = has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("x-signature") {
            head.signature = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("x-timestamp") {
            head.timestamp = Some(value.to_string());
        }
    }
    // RFC 9112 §6.3: a request with both is an error. Behind a proxy that picks the other
    // framing, accepting it would let one request smuggle a second one past the proxy.
    if head.chunked && head.content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding: chunked".into(),
        ));
    }
    // RFC 9112 section 6.1: "A server or client that receives an HTTP/1.0 message containing
    // a Transfer-Encoding header field MUST treat the message as if the framing is faulty,
    // even if a Content-Length is present, and close the connection after processing the
    // message. The message sender might have retained a portion of the message, in buffer,
    // that could be misinterpreted by further use of the connection." So it is answered, then
    // closed, whatever its `Connection: keep-alive` says.
    if head.chunked && minor_version == 0 {
        head.close = true;
    }
    Ok(Some((head, len)))
}

/// A `Content-Length` value: 1 to 19 ASCII digits and nothing else (RFC 9110 section 8.6). A
/// sign, a space or a list would be read differently by another parser in front of us.
fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Case-insensitive membership in a comma-separated header value.
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Appends a complete response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    close: bool,
) {
    // Appended piece by piece: `write!` through `fmt` cost about as much as the rest of
    // answering a keep-alive push.
    let mut number = itoa::Buffer::new();
    out.reserve(128 + extra_headers.len() + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(number.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(number.format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra_headers.as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_api_request() {
        let raw = b"POST /api/send_to_client HTTP/1.1\r\nHost: x\r\nsystemid:  app1 \r\n\
                    Content-Length: 12\r\nExpect: 100-continue\r\n\r\n{\"a\":1}";
        let (head, len) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(head.method, Some(Method::Post));
        assert_eq!(head.path, "/api/send_to_client");
        assert_eq!(head.system_id.as_deref(), Some("app1"));
        assert_eq!(head.content_length, Some(12));
        assert!(head.expect_continue);
        assert!(!head.close);
        assert_eq!(&raw[len..], b"{\"a\":1}");
    }

    #[test]
    fn both_content_length_and_chunked_is_refused() {
        // Either order: a proxy in front may frame by the other header (request smuggling).
        for raw in [
            &b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"[..],
        ] {
            let e = parse_head(raw, 8192).unwrap_err();
            assert_eq!(e.status(), 400, "{e:?}");
        }
        let chunked = b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked, 8192).unwrap().unwrap().0.chunked);
    }

    #[test]
    fn content_length_is_digits_only() {
        for bad in ["+5", "-5", "5 5", "5,5", "0x5", "", "12345678901234567890"] {
            let raw = format!("POST /api/x HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let e = parse_head(raw.as_bytes(), 8192).unwrap_err();
            assert_eq!(e, HeadError::BadLength, "Content-Length: {bad:?}");
        }
        let raw = b"POST /api/x HTTP/1.1\r\nContent-Length: 007\r\n\r\n";
        assert_eq!(
            parse_head(raw, 8192).unwrap().unwrap().0.content_length,
            Some(7)
        );
    }

    #[test]
    fn transfer_encoding_must_end_in_chunked_and_know_every_coding() {
        let status = |te: &str| {
            let raw = format!("POST /api/x HTTP/1.1\r\n{te}\r\n\r\n");
            parse_head(raw.as_bytes(), 8192)
                .map(|h| h.unwrap().0.chunked)
                .map_err(|e| e.status())
        };
        assert_eq!(status("Transfer-Encoding: chunked"), Ok(true));
        assert_eq!(status("Transfer-Encoding: CHUNKED"), Ok(true));
        // A coding we cannot decode: 501, never "no body" (the body would be read as a request).
        assert_eq!(status("Transfer-Encoding: gzip"), Err(501));
        assert_eq!(status("Transfer-Encoding: gzip, chunked"), Err(501));
        // chunked not last, or twice, across one or two headers: 400.
        assert_eq!(status("Transfer-Encoding: chunked, gzip"), Err(400));
        assert_eq!(
            status("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            Err(400)
        );
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let raw = b"POST /api/x HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(raw, 8192).unwrap().unwrap().0.close);
        let raw = b"POST /api/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(!parse_head(raw, 8192).unwrap().unwrap().0.close);
        let raw = b"POST /api/x HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(parse_head(raw, 8192).unwrap().unwrap().0.close);
        // Transfer-Encoding in HTTP/1.0 closes after the answer, keep-alive or not.
        let raw = b"POST /api/x HTTP/1.0\r\nConnection: keep-alive\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        assert!(parse_head(raw, 8192).unwrap().unwrap().0.close);
        let raw = b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!parse_head(raw, 8192).unwrap().unwrap().0.close);
    }

    #[test]
    fn parses_an_upgrade_with_query() {
        let raw = b"GET /ws?systemId=a%20b&x=1 HTTP/1.1\r\nUpgrade: WebSocket\r\n\
                    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Version: 13\r\n\r\n";
        let (head, _) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query, "systemId=a%20b&x=1");
        assert!(head.upgrade_websocket && head.connection_upgrade);
        assert_eq!(head.ws_version.as_deref(), Some("13"));
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\n", 8192).unwrap().is_none());
        assert_eq!(
            parse_head(&[b'a'; 300], 256).unwrap_err(),
            HeadError::TooLarge
        );
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 8192),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 8192).unwrap_err(),
            HeadError::BadLength
        );
        assert_eq!(
            parse_head(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                8192
            )
            .unwrap_err(),
            HeadError::BadLength
        );
    }
}

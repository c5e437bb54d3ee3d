//! HTTP/1.x request heads (httparse) and responses, for the API and the WebSocket upgrade.
//!
//! Only what the routes need is copied out of a head, so the read buffer can be reused at once.
//! Bodies come with `Content-Length` (what the original's clients, PHP curl and nginx, send) or
//! `Transfer-Encoding: chunked` (streaming clients), both bounded by MaxBodyBytes.

use std::fmt::Write as _;

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
        }
    }
    // RFC 9112 §6.3: a request with both is an error. Behind a proxy that picks the other
    // framing, accepting it would let one request smuggle a second one past the proxy.
    if head.chunked && head.content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding: chunked".into(),
        ));
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

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

/// Longest chunk-size line (size and extensions) accepted. Checked on complete lines as well as
/// on incomplete ones, so the answer does not depend on how TCP split the body.
const MAX_SIZE_LINE: usize = 1024;

/// The most bytes of chunked encoding read for a body of at most `max_body` bytes.
pub fn chunked_wire_limit(max_body: usize) -> usize {
    max_body.saturating_mul(2).saturating_add(16 * 1024)
}

/// Whether `buf[from..]` (with the 3 bytes before it, for a marker split between reads) holds
/// `\r\n\r\n`: a chunked body cannot be complete before its last chunk and trailers end with
/// one, so a reader decodes only when new bytes bring one (or the wire limit is passed),
/// instead of decoding the whole body again after every read.
pub fn may_end_chunked(buf: &[u8], from: usize) -> bool {
    let from = from.saturating_sub(3).min(buf.len());
    buf[from..].windows(4).any(|w| w == b"\r\n\r\n")
}

/// Decodes a complete chunked body at the front of `buf` (RFC 9112 section 7.1). `Ok(None)`:
/// incomplete. `Ok(Some((body, used)))`: the body and the bytes it took, trailers included.
///
/// The encoding is bounded as well as the body: framing, extensions and trailers count, and past
/// `2 * max_body + 16 KiB` bytes the body is refused as too large. Without that, endless
/// trailers or one-byte chunks with long extensions would make the caller buffer without end.
/// Twice the body limit leaves room for any sane chunk size.
pub fn dechunk(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let max_wire = chunked_wire_limit(max_body);
    match dechunk_within(&buf[..buf.len().min(max_wire)], max_body)? {
        None if buf.len() > max_wire => Err(ChunkError::TooLarge),
        done => Ok(done),
    }
}

fn dechunk_within(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..]) else {
            return if buf.len() - at > MAX_SIZE_LINE {
                Err(ChunkError::Malformed)
            } else {
                Ok(None)
            };
        };
        if eol > MAX_SIZE_LINE {
            return Err(ChunkError::Malformed);
        }
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| ChunkError::Malformed)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        // chunk-size = 1*HEXDIG: `from_str_radix` alone would also take a leading `+`.
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChunkError::Malformed);
        }
        // Hex digits only, so the one way to fail is a size past usize::MAX.
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ChunkError::TooLarge)?;
        at += eol + 2;
        if size == 0 {
            // Trailer fields until an empty line; they are read and ignored.
            loop {
                let Some(eol) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        // Subtract, never add: `body.len() + size` wrapped for a size near usize::MAX (body
        // `1\r\na\r\nffffffffffffffff\r\n`), and the slice below then panicked. The body so far
        // is within the limit, so this cannot underflow.
        if size > max_body - body.len() {
            return Err(ChunkError::TooLarge);
        }
        let rest = &buf[at..];
        if rest.len() < size || rest.len() - size < 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err(ChunkError::Malformed);
        }
        at += size + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
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
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    );
    out.extend_from_slice(head.as_bytes());
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
    fn a_chunked_end_is_seen_even_when_split_between_reads() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        assert!(may_end_chunked(body, 0));
        assert!(!may_end_chunked(&body[..body.len() - 1], 0));
        // New bytes from each possible split point: the marker straddles the boundary.
        for split in body.len() - 4..body.len() {
            assert!(may_end_chunked(body, split), "split at {split}");
        }
        assert!(!may_end_chunked(b"5\r\nhello\r\n", 3));
        assert!(!may_end_chunked(b"", 0));
        assert!(!may_end_chunked(b"ab", 7));
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
    fn dechunks_bodies() {
        let raw = b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let (body, used) = dechunk(raw, 100).unwrap().unwrap();
        assert_eq!(body, b"{\"a\":1}");
        assert_eq!(&raw[used..], b"NEXT");
        for cut in 0..used {
            assert_eq!(dechunk(&raw[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(dechunk(raw, 5), Err(ChunkError::TooLarge));
        assert_eq!(dechunk(b"zz\r\n", 100), Err(ChunkError::Malformed));
        assert_eq!(dechunk(b"2\r\nabX\r\n", 100), Err(ChunkError::Malformed));
    }

    #[test]
    fn dechunk_bounds_sizes_lines_and_framing() {
        // `body.len() + size` used to overflow here (fuzz/regressions/http_request/).
        assert_eq!(
            dechunk(b"1\r\na\r\nffffffffffffffff\r\n", 100),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            dechunk(b"fffffffffffffffff\r\n", 100),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            dechunk(b"+1\r\na\r\n0\r\n\r\n", 100),
            Err(ChunkError::Malformed)
        );
        // A long size line is refused whether or not its CRLF has arrived.
        let mut long = b"1;".to_vec();
        long.extend_from_slice(&[b'x'; 1100]);
        assert_eq!(dechunk(&long, 100), Err(ChunkError::Malformed));
        long.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(dechunk(&long, 100), Err(ChunkError::Malformed));
        // Endless trailers: refused once past the framing allowance, not buffered for ever.
        let mut trailers = b"1\r\na\r\n0\r\n".to_vec();
        while trailers.len() <= 2 * 100 + 16 * 1024 {
            trailers.extend_from_slice(b"X-Pad: yyyyyyyyyyyyyyyy\r\n");
        }
        assert_eq!(dechunk(&trailers, 100), Err(ChunkError::TooLarge));
        assert_eq!(dechunk(&trailers[..1000], 100), Ok(None));
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

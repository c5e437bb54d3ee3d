//! A small HTTP/1.x client for the API: write the request, read the status line, the headers
//! and a `Content-Length` or chunked body (Go's net/http, so the original go-websocket, sends
//! answers over 2 KiB chunked). Keep-alive (HTTP/1.1, the socket reused) or one-shot (HTTP/1.0
//! with `Connection: close` and a new TCP connection per request, which is what nginx sends to
//! `/api`). Buffers are reused across requests.

use crate::ws::{find, frame_code, Target};
use anyhow::{bail, Context as _};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline of one request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 1 << 20;

pub struct HttpClient {
    target: Arc<Target>,
    close: bool,
    source: Ipv4Addr,
    stream: Option<TcpStream>,
    timeout: Duration,
    req: Vec<u8>,
    resp: Vec<u8>,
}

impl HttpClient {
    /// `close`: HTTP/1.0 + `Connection: close`, one connection per request. `source`: the
    /// address its connections are bound to (on a loopback server).
    pub fn new(target: Arc<Target>, close: bool, source: Ipv4Addr) -> HttpClient {
        HttpClient {
            target,
            close,
            source,
            stream: None,
            timeout: REQUEST_TIMEOUT,
            req: Vec::with_capacity(512),
            resp: Vec::with_capacity(512),
        }
    }

    /// Another deadline per request than [`REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// POSTs `body` (JSON) to `path` with the `SystemId` header; returns the status and the
    /// response body. Fails on a connection error, a malformed response, or after the
    /// deadline ([`REQUEST_TIMEOUT`] unless set otherwise).
    pub async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, &[u8])> {
        self.req.clear();
        let (version, connection) = if self.close {
            ("1.0", "Connection: close\r\n")
        } else {
            ("1.1", "")
        };
        write!(
            self.req,
            "POST {path} HTTP/{version}\r\nHost: {}\r\nSystemId: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
            self.target.host,
            self.target.system,
            body.len()
        )?;
        self.req.extend_from_slice(body);
        let (status, start, end) = match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.stream = None;
                return Err(e);
            }
            Err(_) => {
                self.stream = None;
                bail!("no answer within {:?}", self.timeout);
            }
        };
        Ok((status, &self.resp[start..end]))
    }

    /// Sends `self.req`, reads the response into `self.resp`; returns status and body range.
    async fn exchange(&mut self) -> anyhow::Result<(u16, usize, usize)> {
        // A kept-alive socket the server has closed since is only found out by using it:
        // then retry once on a fresh connection.
        let reused = self.stream.is_some();
        match self.try_exchange().await {
            Err(_) if reused => {
                self.stream = None;
                self.try_exchange().await
            }
            r => r,
        }
    }

    async fn try_exchange(&mut self) -> anyhow::Result<(u16, usize, usize)> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.target.connect(self.source).await.context("connect")?,
        };
        stream.write_all(&self.req).await?;
        self.resp.clear();
        let mut keep = !self.close;
        let (status, head_len, content_length, chunked) = loop {
            if stream.read_buf(&mut self.resp).await? == 0 {
                bail!("connection closed before a complete response head");
            }
            if find(&self.resp, b"\r\n\r\n").is_none() {
                if self.resp.len() > 16 << 10 {
                    bail!("response head over 16 KiB");
                }
                continue;
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            let head_len = match r.parse(&self.resp)? {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => bail!("malformed response head"),
            };
            let mut content_length = None;
            let mut chunked = false;
            let mut closes = r.version == Some(0);
            for h in r.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    content_length = std::str::from_utf8(h.value)?.trim().parse::<usize>().ok();
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = find(&h.value.to_ascii_lowercase(), b"chunked").is_some();
                } else if h.name.eq_ignore_ascii_case("connection") {
                    closes = find(&h.value.to_ascii_lowercase(), b"close").is_some();
                }
            }
            if closes {
                // The server will not keep this one: do not reuse it.
                keep = false;
            }
            break (r.code.unwrap_or(0), head_len, content_length, chunked);
        };
        let end = match content_length {
            _ if chunked => loop {
                if let Some(body) = dechunk(&self.resp[head_len..])? {
                    self.resp.truncate(head_len);
                    self.resp.extend_from_slice(&body);
                    break self.resp.len();
                }
                if self.resp.len() > MAX_RESPONSE {
                    bail!("response over {MAX_RESPONSE} bytes");
                }
                if stream.read_buf(&mut self.resp).await? == 0 {
                    bail!("connection closed inside a chunked body");
                }
            },
            Some(n) => {
                while self.resp.len() < head_len + n {
                    if stream.read_buf(&mut self.resp).await? == 0 {
                        bail!("connection closed inside the response body");
                    }
                }
                head_len + n
            }
            None => {
                // No length: the body ends with the connection.
                while stream.read_buf(&mut self.resp).await? != 0 {
                    if self.resp.len() > MAX_RESPONSE {
                        bail!("response over {MAX_RESPONSE} bytes");
                    }
                }
                keep = false;
                self.resp.len()
            }
        };
        if keep {
            self.stream = Some(stream);
        }
        Ok((status, head_len, end))
    }
}

/// The body of a complete chunked encoding at the start of `buf`, or `None` while more bytes
/// are needed. Trailers are not expected (the last chunk must be followed by `\r\n`).
fn dechunk(buf: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (len, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => bail!("malformed chunk size"),
        };
        at += len;
        let size = usize::try_from(size)?;
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            bail!("chunk without its CRLF");
        }
        if size == 0 {
            return Ok(Some(body));
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// Whether an API answer is a success: HTTP 200 and `"code":0`.
pub fn api_ok(status: u16, body: &[u8]) -> bool {
    status == 200 && frame_code(body) == Some(0)
}

/// Registers the system; "already registered" is fine. Fails only when the server does not
/// answer like wspush.
pub async fn register(target: &Arc<Target>) -> anyhow::Result<()> {
    let mut c = HttpClient::new(target.clone(), false, crate::sys::http_source(0));
    let body = serde_json::json!({ "systemId": target.system }).to_string();
    let (status, resp) = c.post("/api/register", body.as_bytes()).await?;
    if status != 200 || frame_code(resp).is_none() {
        bail!(
            "register answered {status}: {}",
            String::from_utf8_lossy(resp)
        );
    }
    Ok(())
}

/// `s` as a JSON string literal, quotes included.
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunk_waits_for_the_last_chunk_and_joins_the_rest() {
        let full = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(dechunk(full).unwrap().as_deref(), Some(&b"hello world"[..]));
        for cut in 0..full.len() {
            assert_eq!(dechunk(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(dechunk(b"5\r\nhelloXX0\r\n\r\n").is_err());
    }
}

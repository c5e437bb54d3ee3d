//! The WebSocket opening handshake (RFC 6455 section 4.2), server side.

use super::http::{Head, Method};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 section 1.3: "the server has to take the value (as present in the header field) ...
/// and concatenate this with the Globally Unique Identifier (GUID, [RFC4122]) in string form,
/// "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ... A SHA-1 hash (160 bits), base64-encoded ... of this
/// concatenation is then returned in the server's handshake."
pub fn accept_key(key: &str) -> String {
    let mut out = Vec::with_capacity(ACCEPT_LEN);
    write_accept_key(key, &mut out);
    String::from_utf8(out).expect("bug: base64 is ASCII")
}

/// Length of an accept key: the base64 of a 20-byte SHA-1 digest.
const ACCEPT_LEN: usize = 28;

/// Appends [`accept_key`]'s value to `out`, allocating nothing itself.
fn write_accept_key(key: &str, out: &mut Vec<u8>) {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let mut encoded = [0u8; ACCEPT_LEN];
    let n = STANDARD
        .encode_slice(sha.finalize(), &mut encoded)
        .expect("bug: 28 bytes hold the base64 of 20");
    out.extend_from_slice(&encoded[..n]);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("WebSocket upgrade must use GET")]
    Method,
    #[error("missing Upgrade: websocket or Connection: Upgrade header")]
    NotUpgrade,
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    Version,
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
}

/// Checks an upgrade request and returns the `101` response to send.
pub fn response(head: &Head) -> Result<String, HandshakeError> {
    let mut out = Vec::with_capacity(160);
    write_response(head, &mut out)?;
    Ok(String::from_utf8(out).expect("bug: the 101 is ASCII"))
}

/// [`response`], appended to `out` (the buffer that also takes the welcome frame, so the two
/// leave in one write); `out` is unchanged on an error. Allocates nothing itself.
pub fn write_response(head: &Head, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
    if head.method != Some(Method::Get) {
        return Err(HandshakeError::Method);
    }
    if !head.upgrade_websocket || !head.connection_upgrade {
        return Err(HandshakeError::NotUpgrade);
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err(HandshakeError::Version);
    }
    // Section 4.1: the key is a base64-encoded 16-byte nonce.
    let key = head.ws_key.as_deref().ok_or(HandshakeError::Key)?;
    // Room for keys up to 32 characters; a longer one is refused as it would be after decoding
    // (it cannot be 16 bytes).
    let mut nonce = [0u8; 24];
    match STANDARD.decode_slice(key, &mut nonce) {
        Ok(16) => {}
        _ => return Err(HandshakeError::Key),
    }
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    write_accept_key(key, out);
    out.extend_from_slice(b"\r\n\r\n");
    Ok(())
}

/// The `systemId` query parameter, percent-decoded; `None` when absent or empty.
pub fn system_id(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "systemId")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_sample_key() {
        // Section 1.3's worked example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn validates_the_upgrade() {
        let mut head = Head {
            method: Some(Method::Get),
            upgrade_websocket: true,
            connection_upgrade: true,
            ws_version: Some("13".into()),
            ws_key: Some("dGhlIHNhbXBsZSBub25jZQ==".into()),
            ..Head::default()
        };
        assert_eq!(
            response(&head).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let mut out = b"kept".to_vec();
        head.ws_version = None;
        assert_eq!(
            write_response(&head, &mut out),
            Err(HandshakeError::Version)
        );
        assert_eq!(out, b"kept", "nothing appended on a refusal");
        head.ws_version = Some("13".into());
        head.ws_version = Some("8".into());
        assert_eq!(response(&head), Err(HandshakeError::Version));
        head.ws_version = Some("13".into());
        head.ws_key = Some("short".into());
        assert_eq!(response(&head), Err(HandshakeError::Key));
        // 17 and 24 bytes: well-formed base64, not a 16-byte nonce.
        head.ws_key = Some("dGhlIHNhbXBsZSBub25jZT8/".into());
        assert_eq!(response(&head), Err(HandshakeError::Key));
        head.ws_key = Some("dGhlIHNhbXBsZSBub25jZT8/Pz8/Pz8/".into());
        assert_eq!(response(&head), Err(HandshakeError::Key));
        head.ws_key = Some("dGhlIHNhbXBsZSBub25jZT8/Pz8/Pz8/Pz8/Pz8/Pz8/".into());
        assert_eq!(response(&head), Err(HandshakeError::Key));
        head.method = Some(Method::Post);
        assert_eq!(response(&head), Err(HandshakeError::Method));
    }

    #[test]
    fn reads_system_id() {
        assert_eq!(system_id("systemId=a%20b&x=1").as_deref(), Some("a b"));
        assert_eq!(system_id("systemId="), None);
        assert_eq!(system_id("other=1"), None);
    }
}

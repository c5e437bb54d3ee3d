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
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(sha.finalize())
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
    match STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    ))
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
        assert!(response(&head)
            .unwrap()
            .contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        head.ws_version = Some("8".into());
        assert_eq!(response(&head), Err(HandshakeError::Version));
        head.ws_version = Some("13".into());
        head.ws_key = Some("short".into());
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

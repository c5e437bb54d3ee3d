//! Authentication, all opt-in (issue 7): nothing here runs unless the operator sets `ApiKey` or a
//! system registers with a `secret`, so the original's callers see no difference.
//!
//! - **ApiKey** (`[wspush] ApiKey`): every `/api/*` request must carry
//!   `Authorization: apikey <key>`, else 403. Checked first, before the method and `SystemId`.
//! - **API signatures**: the calls of a system that has a secret carry `X-Timestamp: <unix
//!   seconds>` and `X-Signature: hex(HMAC-SHA256(secret, "POST\nPATH\nSYSTEMID\nTIMESTAMP\n"
//!   + raw body))`, within ±5 minutes of the server's clock, else 401 ([`verify_signature`]).
//!   Issue 12: a MAC over the body alone let a captured call be replayed on another route, at
//!   any time; that scheme is accepted only with `[wspush] SignatureCompat = true`.
//! - **Connect tokens**: a `/ws` connect of a system that has a secret carries `token=<JWT>` in
//!   its query: HS256, signed with the secret, `exp` required, optional `userId` (the connection
//!   starts bound to it) and `systemId` (must name the system connected to). Else 401
//!   ([`jwt`]).
//!
//! Every comparison of a secret value is constant-time: the ApiKey through SHA-256 digests and
//! `subtle` (so neither the content nor the length leaks through timing), signatures through
//! `Mac::verify_slice`. Pure functions only: the `/ws` upgrade's use of them, which reads the core's
//! systems, is `net::connect`. `docs/auth.md` is the caller's side of this file.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub mod jwt;

pub use jwt::{token_param, unix_now, verify_jwt, Claims, JwtError, JWT_LEEWAY_SECS};

type HmacSha256 = Hmac<Sha256>;

/// Shortest and longest secret `register` accepts. A short key makes HMAC guessable offline
/// from one signed request; the upper bound only keeps etcd values and memory small.
pub const SECRET_MIN_BYTES: usize = 16;
pub const SECRET_MAX_BYTES: usize = 256;

// ---- ApiKey ------------------------------------------------------------------------------------

/// Why a request was refused by the ApiKey check (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("Authorization header is required: this server wants Authorization: apikey <ApiKey>")]
    Missing,
    #[error("Authorization header must use the apikey scheme (Authorization: apikey <ApiKey>)")]
    Scheme,
    #[error("Authorization header does not carry this server's ApiKey")]
    Wrong,
}

/// Checks an `Authorization` header value against the configured key. The scheme name is
/// case-insensitive (RFC 9110 section 11.1); the key is compared as SHA-256 digests in constant
/// time, so timing reveals neither its bytes nor its length.
pub fn check_api_key(expected: &str, authorization: Option<&str>) -> Result<(), ApiKeyError> {
    let value = authorization.map(str::trim).unwrap_or("");
    if value.is_empty() {
        return Err(ApiKeyError::Missing);
    }
    let (scheme, key) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("apikey") {
        return Err(ApiKeyError::Scheme);
    }
    let given = Sha256::digest(key.trim().as_bytes());
    let wanted = Sha256::digest(expected.as_bytes());
    if bool::from(given.as_slice().ct_eq(wanted.as_slice())) {
        Ok(())
    } else {
        Err(ApiKeyError::Wrong)
    }
}

/// The config-time check of an ApiKey: it travels in a header, so visible ASCII only, and long
/// enough not to be guessed.
pub fn check_api_key_config(key: &str) -> Result<(), String> {
    if key.len() < 16 {
        return Err(format!(
            "must be at least 16 characters (got {}); e.g. `openssl rand -hex 32`",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII without spaces (it is sent in a header)".into());
    }
    Ok(())
}

// ---- secrets and API signatures ----------------------------------------------------------------

/// Checks a `secret` given to `register`; the error completes "secret ...".
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.is_empty() {
        return Err("must not be empty: leave it out for a system without a secret".into());
    }
    if secret.len() < SECRET_MIN_BYTES || secret.len() > SECRET_MAX_BYTES {
        return Err(format!(
            "must be {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes long (got {}); e.g. `openssl rand -hex 32`",
            secret.len()
        ));
    }
    Ok(())
}

/// HMAC-SHA256 (RFC 2104 with SHA-256) of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // new_from_slice accepts keys of every length for HMAC; the Err arm cannot happen.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The `X-Signature` value of `body` under `secret`: lowercase hex of its HMAC-SHA256. What a
/// caller sends; the server only verifies.
pub fn sign_hex(secret: &str, body: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    for b in hmac_sha256(secret.as_bytes(), body) {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// How far `X-Timestamp` may be from the server's clock, either way, in seconds: wide enough
/// for callers whose clocks drift (NTP keeps them within a second), narrow enough that a
/// captured request stops working within minutes.
pub const SIGNATURE_WINDOW_SECS: u64 = 300;

/// Why a signed call was refused (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Signature header is required: this system has a secret; send X-Timestamp (unix seconds) and X-Signature, the hex HMAC-SHA256 of POST\\n<path>\\n<SystemId>\\n<X-Timestamp>\\n<body> keyed by it (docs/auth.md)")]
    Missing,
    #[error("X-Timestamp header is required with X-Signature: the request's unix time in seconds, part of what is signed (docs/auth.md)")]
    MissingTimestamp,
    #[error("X-Timestamp must be the unix time in whole seconds (decimal digits only)")]
    BadTimestamp,
    #[error("X-Signature must be 64 hex digits: the HMAC-SHA256 of the signing string")]
    Malformed,
    #[error("X-Signature does not match the request: sign POST\\n<path>\\n<SystemId>\\n<X-Timestamp>\\n<exact body bytes> with HMAC-SHA256 and the system's secret")]
    Mismatch,
    /// Compatibility mode, a request without `X-Timestamp`: the old body-only signature.
    #[error("X-Signature does not match the request body: sign the exact body bytes sent, with HMAC-SHA256 and the system's secret")]
    BodyMismatch,
    /// Seconds the timestamp is ahead of (positive) or behind (negative) the server's clock.
    #[error("signature timestamp is {} s off ({}); the window is \u{b1}{SIGNATURE_WINDOW_SECS} s", .0.unsigned_abs(), if *.0 < 0 { "behind this server's clock" } else { "ahead of this server's clock" })]
    Stale(i64),
}

/// What a signed API call carries, as received: the path without the query, the `SystemId`,
/// `X-Timestamp` and `X-Signature` headers (trimmed), and the body after chunked decoding.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub path: &'a str,
    pub system: &'a str,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// The bytes an API signature covers: `POST\n<path>\n<SystemId>\n<X-Timestamp>\n<body>`.
/// The method and path bind the signature to one route (a captured `send_to_client` cannot be
/// sent to `close_client`), the SystemId to one system, and the timestamp to a five-minute
/// window. Only POST reaches the check (other methods are 405 before it).
pub fn signing_input(path: &str, system: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + path.len() + system.len() + timestamp.len() + body.len());
    for part in ["POST", path, system, timestamp] {
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// Verifies a signed call at unix time `now`: `X-Signature` over [`signing_input`], with
/// `X-Timestamp` within [`SIGNATURE_WINDOW_SECS`] of `now`. With `compat`
/// (`[wspush] SignatureCompat`), a request without `X-Timestamp` is checked the pre-v2 way,
/// over the body alone. Hex digits of either case; the MAC comparison is constant-time. The MAC
/// is checked before the window, so a stale request is only reported as stale when it was
/// signed with the secret.
pub fn verify_signature(
    secret: &str,
    req: &SignedRequest<'_>,
    now: u64,
    compat: bool,
) -> Result<(), SignatureError> {
    let signature = req.signature.map(str::trim).unwrap_or("");
    if signature.is_empty() {
        return Err(SignatureError::Missing);
    }
    let timestamp = req.timestamp.map(str::trim).filter(|t| !t.is_empty());
    let Some(timestamp) = timestamp else {
        if !compat {
            return Err(SignatureError::MissingTimestamp);
        }
        let tag = decode_hex32(signature).ok_or(SignatureError::Malformed)?;
        return verify_mac(secret, req.body, &tag).map_err(|()| SignatureError::BodyMismatch);
    };
    // At most 12 digits (the year 33658): the value fits an i64 with room to subtract.
    if timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let at: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let tag = decode_hex32(signature).ok_or(SignatureError::Malformed)?;
    let input = signing_input(req.path, req.system, timestamp, req.body);
    verify_mac(secret, &input, &tag).map_err(|()| SignatureError::Mismatch)?;
    let off = at - now as i64;
    if off.unsigned_abs() > SIGNATURE_WINDOW_SECS {
        return Err(SignatureError::Stale(off));
    }
    Ok(())
}

/// Constant-time check of an HMAC-SHA256 tag.
fn verify_mac(secret: &str, data: &[u8], tag: &[u8; 32]) -> Result<(), ()> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| ())?;
    mac.update(data);
    mac.verify_slice(tag).map_err(|_| ())
}

/// 64 hex digits (either case) to 32 bytes.
fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_rfc4231_vectors() {
        // RFC 4231 section 4.2, test case 1.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2: a key shorter than the output.
        assert_eq!(
            sign_hex("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block size is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// docs/auth.md's worked example, computed there with `openssl dgst`, not by this module.
    const DOC_SECRET: &str = "0f3c9c1e5b7a4d2e8f6a1b3c5d7e9f01";
    const DOC_BODY: &[u8] =
        br#"{"clientId":"c1","sendUserId":"","code":0,"msg":"","data":"hello"}"#;
    const DOC_SIGNATURE: &str = "6449892d5e489d7fc3636025e9923057d12394fd9ac5b60b55f9c84dfec58661";

    fn doc_request<'a>(
        timestamp: Option<&'a str>,
        signature: Option<&'a str>,
    ) -> SignedRequest<'a> {
        SignedRequest {
            path: "/api/send_to_client",
            system: "shop",
            timestamp,
            signature,
            body: DOC_BODY,
        }
    }

    #[test]
    fn signing_input_and_the_documented_vector() {
        let input = signing_input("/api/send_to_client", "shop", "1700000000", DOC_BODY);
        let mut want = b"POST\n/api/send_to_client\nshop\n1700000000\n".to_vec();
        want.extend_from_slice(DOC_BODY);
        assert_eq!(input, want);
        assert_eq!(sign_hex(DOC_SECRET, &input), DOC_SIGNATURE);
        let req = doc_request(Some("1700000000"), Some(DOC_SIGNATURE));
        assert_eq!(verify_signature(DOC_SECRET, &req, NOW, false), Ok(()));
        let upper = DOC_SIGNATURE.to_ascii_uppercase();
        let req = doc_request(Some(" 1700000000 "), Some(&upper));
        assert_eq!(verify_signature(DOC_SECRET, &req, NOW, false), Ok(()));
    }

    #[test]
    fn a_signature_covers_route_system_time_and_body() {
        let ok = doc_request(Some("1700000000"), Some(DOC_SIGNATURE));
        let mismatch = |req: SignedRequest<'_>| {
            assert_eq!(
                verify_signature(DOC_SECRET, &req, NOW, false),
                Err(SignatureError::Mismatch),
                "{req:?}"
            );
        };
        mismatch(SignedRequest {
            path: "/api/close_client",
            ..ok
        });
        mismatch(SignedRequest {
            system: "shop2",
            ..ok
        });
        mismatch(SignedRequest {
            timestamp: Some("1700000001"),
            ..ok
        });
        mismatch(SignedRequest {
            body: br#"{"clientId":"c2","sendUserId":"","code":0,"msg":"","data":"hello"}"#,
            ..ok
        });
        assert_eq!(
            verify_signature("another-secret-12345", &ok, NOW, false),
            Err(SignatureError::Mismatch)
        );
        // The old body-only signature is not a v2 one.
        let body_only = sign_hex(DOC_SECRET, DOC_BODY);
        mismatch(SignedRequest {
            signature: Some(&body_only),
            ..ok
        });
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        let signed_at = |ts: u64| {
            let ts = ts.to_string();
            let sig = sign_hex(DOC_SECRET, &signing_input("/p", "s", &ts, b"{}"));
            (ts, sig)
        };
        let check = |ts: u64| {
            let (ts, sig) = signed_at(ts);
            let req = SignedRequest {
                path: "/p",
                system: "s",
                timestamp: Some(&ts),
                signature: Some(&sig),
                body: b"{}",
            };
            verify_signature(DOC_SECRET, &req, NOW, false)
        };
        assert_eq!(check(NOW), Ok(()));
        assert_eq!(check(NOW - SIGNATURE_WINDOW_SECS), Ok(()));
        assert_eq!(check(NOW + SIGNATURE_WINDOW_SECS), Ok(()));
        assert_eq!(check(NOW - 612), Err(SignatureError::Stale(-612)));
        assert_eq!(check(NOW + 301), Err(SignatureError::Stale(301)));
        assert_eq!(check(0), Err(SignatureError::Stale(-(NOW as i64))));
        assert_eq!(
            SignatureError::Stale(-612).to_string(),
            "signature timestamp is 612 s off (behind this server's clock); the window is \u{b1}300 s"
        );
    }

    #[test]
    fn missing_and_malformed_parts() {
        let verify = |ts: Option<&str>, sig: Option<&str>, compat: bool| {
            verify_signature(DOC_SECRET, &doc_request(ts, sig), NOW, compat)
        };
        let ts = Some("1700000000");
        assert_eq!(verify(ts, None, false), Err(SignatureError::Missing));
        assert_eq!(verify(ts, Some("  "), false), Err(SignatureError::Missing));
        assert_eq!(
            verify(None, Some(DOC_SIGNATURE), false),
            Err(SignatureError::MissingTimestamp)
        );
        for bad in ["-1", "1.5", "17e8", "0x10", "1234567890123", "a"] {
            assert_eq!(
                verify(Some(bad), Some(DOC_SIGNATURE), false),
                Err(SignatureError::BadTimestamp),
                "{bad}"
            );
        }
        assert_eq!(
            verify(ts, Some(&DOC_SIGNATURE[..62]), false),
            Err(SignatureError::Malformed)
        );
        let bad_hex = format!("{}zz", &DOC_SIGNATURE[..62]);
        assert_eq!(
            verify(ts, Some(&bad_hex), false),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn compat_mode_takes_body_only_signatures_without_a_timestamp() {
        let body_only = sign_hex(DOC_SECRET, DOC_BODY);
        let verify = |ts: Option<&str>, sig: &str, compat: bool| {
            verify_signature(DOC_SECRET, &doc_request(ts, Some(sig)), NOW, compat)
        };
        assert_eq!(verify(None, &body_only, true), Ok(()));
        assert_eq!(
            verify(None, &body_only, false),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify(None, DOC_SIGNATURE, true),
            Err(SignatureError::BodyMismatch)
        );
        // With a timestamp, compat mode checks the v2 signature and its window as usual.
        assert_eq!(verify(Some("1700000000"), DOC_SIGNATURE, true), Ok(()));
        assert_eq!(
            verify(Some("1700000000"), &body_only, true),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn api_key_scheme_and_value() {
        let key = "0123456789abcdef0123";
        assert_eq!(
            check_api_key(key, Some("apikey 0123456789abcdef0123")),
            Ok(())
        );
        assert_eq!(
            check_api_key(key, Some("ApiKey  0123456789abcdef0123 ")),
            Ok(())
        );
        assert_eq!(
            check_api_key(key, Some("APIKEY\t0123456789abcdef0123")),
            Ok(())
        );
        assert_eq!(check_api_key(key, None), Err(ApiKeyError::Missing));
        assert_eq!(check_api_key(key, Some("  ")), Err(ApiKeyError::Missing));
        assert_eq!(
            check_api_key(key, Some("Bearer 0123456789abcdef0123")),
            Err(ApiKeyError::Scheme)
        );
        assert_eq!(check_api_key(key, Some(key)), Err(ApiKeyError::Scheme));
        assert_eq!(check_api_key(key, Some("apikey")), Err(ApiKeyError::Wrong));
        assert_eq!(
            check_api_key(key, Some("apikey 0123456789abcdef012")),
            Err(ApiKeyError::Wrong)
        );
        assert!(check_api_key_config("short").is_err());
        assert!(check_api_key_config("has a space in it, long").is_err());
        assert!(check_api_key_config(key).is_ok());
    }
}

//! Connect tokens: the JWT (HS256, signed with the system's secret) a `/ws` connect of a
//! system with a secret carries as `token=<JWT>`, and its claims (`exp` required, `nbf`,
//! optional `userId` and `systemId`). Pure functions; `net::connect` applies them to a connect.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew allowed on `exp` and `nbf`, in seconds: a token is still accepted this long after
/// it expired, so a backend whose clock is a little ahead of the server's does not see fresh
/// tokens refused. Keep token lifetimes well above it.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// Why a connect token was refused (401 on `/ws`). The texts go to the client as the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is required: this system needs token=<JWT> in the /ws query (HS256, signed with the system's secret)")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token alg must be HS256, got {0}")]
    Alg(String),
    #[error("token signature does not match this system's secret")]
    Signature,
    #[error("token has no exp claim: exp (seconds since the epoch) is required")]
    NoExp,
    #[error("token claim {0} must be a number of seconds since the epoch")]
    NotNumeric(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token userId must be a string")]
    UserId,
    #[error("token systemId names another system")]
    WrongSystem,
}

/// What a verified token says about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `userId` claim: the connection starts bound to it. `None` when absent or empty.
    pub user_id: Option<String>,
}

/// Verifies a compact JWS (RFC 7515) JWT (RFC 7519) for a connect to `system`, at unix time
/// `now`. Only HS256 (RFC 7518 section 3.2) is accepted: the algorithm is fixed by the server,
/// never chosen by the token, so `none` and every other `alg` are refused before the signature
/// is looked at. Parts are base64url without padding, as RFC 7515 section 2 defines them.
pub fn verify_jwt(secret: &str, token: &str, system: &str, now: u64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "not three dot-separated parts (header.payload.signature)",
        ));
    };
    let header = json_part(header, "the header is not base64url JSON")?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(JwtError::Alg(format!("{alg:?}"))),
        Some(_) => return Err(JwtError::Alg("a non-string".into())),
        None => return Err(JwtError::Alg("nothing (no alg in the header)".into())),
    }
    // RFC 7515 section 4.1.11: extensions marked critical that we do not know mean "refuse".
    if header.get("crit").is_some() {
        return Err(JwtError::Malformed(
            "crit header parameters are not supported",
        ));
    }
    let tag = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| JwtError::Signature)?;
    // The signing input is the two encoded parts as they appear in the token.
    let signed_len = token.len() - signature.len() - 1;
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&tag).map_err(|_| JwtError::Signature)?;

    let claims = json_part(payload, "the payload is not base64url JSON")?;
    let leeway = JWT_LEEWAY_SECS as f64;
    let now = now as f64;
    let exp = match claims.get("exp") {
        None | Some(Value::Null) => return Err(JwtError::NoExp),
        Some(v) => v.as_f64().ok_or(JwtError::NotNumeric("exp"))?,
    };
    if now > exp + leeway {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
        let nbf = nbf.as_f64().ok_or(JwtError::NotNumeric("nbf"))?;
        if now + leeway < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    match claims.get("systemId") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == system => {}
        Some(_) => return Err(JwtError::WrongSystem),
    }
    let user_id = match claims.get("userId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
        // PHP's json_encode writes integer ids as numbers: take them as their decimal text.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => return Err(JwtError::UserId),
    };
    Ok(Claims { user_id })
}

/// A base64url part that must hold a JSON object.
fn json_part(
    part: &str,
    problem: &'static str,
) -> Result<serde_json::Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(problem))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(problem)),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it, which then refuses every token).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `token` parameter of a `/ws` query, percent-decoded.
pub fn token_param(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hmac_sha256;

    /// A token built by hand with openssl (docs/auth.md's recipe), not by this module:
    /// header `{"alg":"HS256","typ":"JWT"}`, payload `{"exp":4102444800,"userId":"u42"}`.
    const HAND_MADE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJleHAiOjQxMDI0NDQ4MDAsInVzZXJJZCI6InU0MiJ9.\
        iomgREktkw-df02OKNYQwXZ91Ts5CPQdCzY9HQuuxZM";
    const HAND_SECRET: &str = "hand-made-secret-0123456789";
    const NOW: u64 = 1_700_000_000;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(secret: &str, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(secret.as_bytes(), input.as_bytes()));
        format!("{input}.{sig}")
    }

    fn hs256(payload: &str) -> String {
        token(HAND_SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, payload)
    }

    #[test]
    fn hand_made_token_verifies() {
        assert_eq!(
            verify_jwt(HAND_SECRET, HAND_MADE, "any", NOW),
            Ok(Claims {
                user_id: Some("u42".into())
            })
        );
        assert_eq!(hs256(r#"{"exp":4102444800,"userId":"u42"}"#), HAND_MADE);
        assert_eq!(
            verify_jwt("not-the-secret-0123", HAND_MADE, "any", NOW),
            Err(JwtError::Signature)
        );
        // One payload byte changed, signature kept.
        let tampered = HAND_MADE.replacen("eyJleHAiOjQx", "eyJleHAiOjUx", 1);
        assert_eq!(
            verify_jwt(HAND_SECRET, &tampered, "any", NOW),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn algorithm_is_fixed_to_hs256() {
        let payload = b64(r#"{"exp":4102444800}"#);
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none"}"#));
        assert!(matches!(
            verify_jwt(HAND_SECRET, &none, "s", NOW),
            Err(JwtError::Alg(_))
        ));
        let hs512 = token(HAND_SECRET, r#"{"alg":"HS512"}"#, r#"{"exp":4102444800}"#);
        assert!(matches!(
            verify_jwt(HAND_SECRET, &hs512, "s", NOW),
            Err(JwtError::Alg(_))
        ));
        let lower = token(HAND_SECRET, r#"{"alg":"hs256"}"#, r#"{"exp":4102444800}"#);
        assert!(matches!(
            verify_jwt(HAND_SECRET, &lower, "s", NOW),
            Err(JwtError::Alg(_))
        ));
        let missing = token(HAND_SECRET, r#"{"typ":"JWT"}"#, r#"{"exp":4102444800}"#);
        assert!(matches!(
            verify_jwt(HAND_SECRET, &missing, "s", NOW),
            Err(JwtError::Alg(_))
        ));
        let crit = token(
            HAND_SECRET,
            r#"{"alg":"HS256","crit":["x"],"x":1}"#,
            r#"{"exp":4102444800}"#,
        );
        assert!(matches!(
            verify_jwt(HAND_SECRET, &crit, "s", NOW),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn expiry_with_leeway() {
        let at = |exp: i64| hs256(&format!(r#"{{"exp":{exp}}}"#));
        let now = NOW as i64;
        assert!(verify_jwt(HAND_SECRET, &at(now + 60), "s", NOW).is_ok());
        assert!(verify_jwt(HAND_SECRET, &at(now - 10), "s", NOW).is_ok());
        assert!(verify_jwt(HAND_SECRET, &at(now - JWT_LEEWAY_SECS as i64), "s", NOW).is_ok());
        assert_eq!(
            verify_jwt(HAND_SECRET, &at(now - 31), "s", NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_jwt(HAND_SECRET, &at(-1), "s", NOW),
            Err(JwtError::Expired)
        );
        let frac = hs256(&format!(r#"{{"exp":{}.5}}"#, now + 5));
        assert!(verify_jwt(HAND_SECRET, &frac, "s", NOW).is_ok());
        assert_eq!(
            verify_jwt(HAND_SECRET, &hs256(r#"{"userId":"u"}"#), "s", NOW),
            Err(JwtError::NoExp)
        );
        assert_eq!(
            verify_jwt(HAND_SECRET, &hs256(r#"{"exp":"4102444800"}"#), "s", NOW),
            Err(JwtError::NotNumeric("exp"))
        );
        let early = hs256(&format!(r#"{{"exp":{},"nbf":{}}}"#, now + 600, now + 300));
        assert_eq!(
            verify_jwt(HAND_SECRET, &early, "s", NOW),
            Err(JwtError::NotYetValid)
        );
        let skewed = hs256(&format!(r#"{{"exp":{},"nbf":{}}}"#, now + 600, now + 20));
        assert!(verify_jwt(HAND_SECRET, &skewed, "s", NOW).is_ok());
    }

    #[test]
    fn claims_user_id_and_system() {
        let claims = |payload: &str| verify_jwt(HAND_SECRET, &hs256(payload), "shop", NOW);
        assert_eq!(
            claims(r#"{"exp":4102444800,"userId":7}"#)
                .unwrap()
                .user_id
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            claims(r#"{"exp":4102444800,"userId":""}"#).unwrap().user_id,
            None
        );
        assert_eq!(
            claims(r#"{"exp":4102444800,"userId":["a"]}"#),
            Err(JwtError::UserId)
        );
        assert!(claims(r#"{"exp":4102444800,"systemId":"shop"}"#).is_ok());
        assert_eq!(
            claims(r#"{"exp":4102444800,"systemId":"other"}"#),
            Err(JwtError::WrongSystem)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_not_panicked_on() {
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.AAAA",
            "e30.e30.!!!",
            "bnVsbA.e30.",                     // header `null`
            "eyJhbGciOiJIUzI1NiJ9.bnVsbA.",    // valid header, payload `null`, empty signature
            "eyJhbGciOiJIUzI1NiJ9==.e30.AAAA", // padding is not base64url-no-pad
            "..",
        ] {
            let got = verify_jwt(HAND_SECRET, bad, "s", NOW);
            assert!(got.is_err(), "{bad:?} was accepted");
        }
        // A well-formed token whose payload is not an object, signed correctly.
        assert!(matches!(
            verify_jwt(HAND_SECRET, &hs256("[1]"), "s", NOW),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(
            token_param("systemId=a&token=x.y.z").as_deref(),
            Some("x.y.z")
        );
        assert_eq!(token_param("systemId=a&token="), None);
    }
}

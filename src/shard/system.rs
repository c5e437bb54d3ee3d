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

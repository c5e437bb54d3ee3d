//! The handshake that opens every node link: before a single frame is decoded, each side proves
//! it holds the cluster secret (`[wspush] ClusterSecret`, or a key derived from CryptoKey).
//!
//! Three fixed-size messages, so nothing a stranger sends is ever a length to trust:
//! 1. connector -> acceptor, HELLO (52 bytes): magic `WSPUSH`, [`PROTO_VERSION`] (u16 BE), the
//!    connector's 32-byte random nonce, its node address (IPv4 + port BE) and the acceptor's node
//!    address as the connector dialed it (from etcd).
//! 2. acceptor -> connector, CHALLENGE (72 bytes): magic, version, the acceptor's nonce and its
//!    MAC.
//! 3. connector -> acceptor, PROOF (32 bytes): the connector's MAC.
//!
//! `MAC(role) = HMAC-SHA256(key, LABEL || role || version || nonce_c || nonce_a || id_c || id_a)`.
//! Each side's MAC covers a nonce it did not choose, so a recorded handshake cannot be replayed;
//! the role byte keeps one side's MAC from being reflected as the other's; the node addresses
//! bind the proof to this pair of nodes. Comparisons are constant-time. The connector always
//! sends its proof, even after it found the acceptor's MAC wrong, so that both ends of a
//! secret mismatch can say so in their logs (the proof is an HMAC over the acceptor's fresh
//! nonce and the connector's: it gives a stranger nothing to reuse).
//!
//! What it does not do: the frames that follow are neither signed nor encrypted. It keeps
//! strangers that can reach RPCPort off the node port; an attacker on the path between two
//! nodes can still read and inject. Between data centres, run node links over a private network
//! or a VPN (WireGuard, IPsec).

use super::proto::PROTO_VERSION;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use subtle::ConstantTimeEq;

const MAGIC: &[u8; 6] = b"WSPUSH";
const LABEL: &[u8] = b"wspush node link v1\0";
const NONCE: usize = 32;
const MAC_LEN: usize = 32;
/// Magic and version, at the head of the first two messages.
const HEAD: usize = MAGIC.len() + 2;
pub const HELLO_LEN: usize = HEAD + NONCE + 6 + 6;
pub const CHALLENGE_LEN: usize = HEAD + NONCE + MAC_LEN;
pub const PROOF_LEN: usize = MAC_LEN;

/// How long the accepting side gives a new link to finish the whole handshake. A node answers
/// in one round trip (well under a second between data centres); a socket that connects and
/// says nothing, or drips bytes, is gone after this.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most the connecting side waits for the acceptor's answer (a call's own deadline may cut
/// it shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte key of the handshake MACs. Its `Debug` never shows it.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(<secret>)")
    }
}

impl LinkKey {
    /// SHA-256 of a label and `ClusterSecret`, or when that is empty, of another label and
    /// `CryptoKey`: nodes that share a CryptoKey (as every node of a cluster must, to open each
    /// other's clientIds) share this key with no new setting. The labels keep it apart from the
    /// clientId seal key, which is SHA-256 of CryptoKey alone.
    pub fn new(cluster_secret: &str, crypto_key: &str) -> LinkKey {
        let mut hash = Sha256::new();
        if cluster_secret.is_empty() {
            hash.update(b"wspush node link key from CryptoKey v1\0");
            hash.update(crypto_key.as_bytes());
        } else {
            hash.update(b"wspush node link key from ClusterSecret v1\0");
            hash.update(cluster_secret.as_bytes());
        }
        LinkKey(hash.finalize().into())
    }

    fn mac(
        &self,
        role: Role,
        version: u16,
        nonces: (&[u8; NONCE], &[u8; NONCE]),
        ids: Ids,
    ) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("bug: HMAC takes any key length");
        mac.update(LABEL);
        mac.update(&[role as u8]);
        mac.update(&version.to_be_bytes());
        mac.update(nonces.0);
        mac.update(nonces.1);
        mac.update(&addr_bytes(ids.connector));
        mac.update(&addr_bytes(ids.acceptor));
        mac.finalize().into_bytes().into()
    }
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum Role {
    Acceptor = b'A',
    Connector = b'C',
}

#[derive(Clone, Copy)]
struct Ids {
    connector: SocketAddrV4,
    acceptor: SocketAddrV4,
}

/// Why a link was refused at its start. Each variant names who is at fault as far as a node
/// can tell; the text is what the log line says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a wspush node link (no handshake; an older wspush, or another protocol)")]
    NotANodeLink,
    #[error("peer speaks node protocol version {0}, this node {PROTO_VERSION}")]
    Version(u16),
    #[error("link addressed to node {addressed}, but this node is {this}")]
    WrongNode {
        addressed: SocketAddrV4,
        this: SocketAddrV4,
    },
    #[error("cluster secret mismatch: the peer's proof does not match this node's ClusterSecret (or, when unset, CryptoKey)")]
    SecretMismatch,
    #[error("handshake not finished within {0:?}")]
    TimedOut(Duration),
    #[error("peer closed the link during the handshake (it refused this node: see its log)")]
    Closed,
    #[error("handshake failed: {0}")]
    Io(String),
}

impl HandshakeError {
    /// The `reason` label of the refused-links counter.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::NotANodeLink => "not_a_node_link",
            HandshakeError::Version(_) => "version",
            HandshakeError::WrongNode { .. } => "wrong_node",
            HandshakeError::SecretMismatch => "secret_mismatch",
            HandshakeError::TimedOut(_) => "timeout",
            HandshakeError::Closed | HandshakeError::Io(_) => "closed",
        }
    }
}

fn addr_bytes(addr: SocketAddrV4) -> [u8; 6] {
    let mut out = [0u8; 6];
    out[..4].copy_from_slice(&addr.ip().octets());
    out[4..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

fn addr_from(bytes: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
        u16::from_be_bytes([bytes[4], bytes[5]]),
    )
}

/// Checks the magic and version of a message's first bytes, as far as they have arrived: a
/// stranger's bytes are refused at the first one that cannot start a handshake, without waiting
/// for a whole message.
fn check_head(got: &[u8]) -> Result<(), HandshakeError> {
    let magic = got.len().min(MAGIC.len());
    if got[..magic] != MAGIC[..magic] {
        return Err(HandshakeError::NotANodeLink);
    }
    if got.len() >= HEAD {
        let version = u16::from_be_bytes([got[6], got[7]]);
        if version != PROTO_VERSION {
            return Err(HandshakeError::Version(version));
        }
    }
    Ok(())
}

/// The connecting side of one handshake.
pub struct Connector {
    key: LinkKey,
    nonce: [u8; NONCE],
    ids: Ids,
}

impl Connector {
    /// A handshake from node `me` to node `them`, and the HELLO to send.
    pub fn new(
        key: &LinkKey,
        me: SocketAddrV4,
        them: SocketAddrV4,
    ) -> (Connector, [u8; HELLO_LEN]) {
        let nonce: [u8; NONCE] = rand::random();
        let mut hello = [0u8; HELLO_LEN];
        hello[..6].copy_from_slice(MAGIC);
        hello[6..8].copy_from_slice(&PROTO_VERSION.to_be_bytes());
        hello[8..40].copy_from_slice(&nonce);
        hello[40..46].copy_from_slice(&addr_bytes(me));
        hello[46..52].copy_from_slice(&addr_bytes(them));
        let ids = Ids {
            connector: me,
            acceptor: them,
        };
        let connector = Connector {
            key: key.clone(),
            nonce,
            ids,
        };
        (connector, hello)
    }

    /// Checks the acceptor's CHALLENGE; returns the verdict and the PROOF to send either way
    /// (see the module doc for why a failed check still sends it).
    pub fn finish(
        &self,
        challenge: &[u8; CHALLENGE_LEN],
    ) -> (Result<(), HandshakeError>, [u8; PROOF_LEN]) {
        if let Err(e) = check_head(challenge) {
            return (Err(e), [0; PROOF_LEN]);
        }
        let nonce_a: [u8; NONCE] = challenge[8..40].try_into().expect("bug: fixed slice");
        let nonces = (&self.nonce, &nonce_a);
        let want = self
            .key
            .mac(Role::Acceptor, PROTO_VERSION, nonces, self.ids);
        let proof = self
            .key
            .mac(Role::Connector, PROTO_VERSION, nonces, self.ids);
        let verdict = if bool::from(want.ct_eq(&challenge[40..72])) {
            Ok(())
        } else {
            Err(HandshakeError::SecretMismatch)
        };
        (verdict, proof)
    }
}

/// The accepting side of one handshake, after a valid HELLO.
pub struct Acceptor {
    key: LinkKey,
    nonces: ([u8; NONCE], [u8; NONCE]),
    ids: Ids,
}

impl Acceptor {
    /// Checks a HELLO sent to node `me`; the handshake and the CHALLENGE to answer with.
    pub fn new(
        key: &LinkKey,
        me: SocketAddrV4,
        hello: &[u8; HELLO_LEN],
    ) -> Result<(Acceptor, [u8; CHALLENGE_LEN]), HandshakeError> {
        check_head(hello)?;
        let addressed = addr_from(&hello[46..52]);
        if addressed != me {
            return Err(HandshakeError::WrongNode {
                addressed,
                this: me,
            });
        }
        let nonce_c: [u8; NONCE] = hello[8..40].try_into().expect("bug: fixed slice");
        let nonce_a: [u8; NONCE] = rand::random();
        let ids = Ids {
            connector: addr_from(&hello[40..46]),
            acceptor: me,
        };
        let mac = key.mac(Role::Acceptor, PROTO_VERSION, (&nonce_c, &nonce_a), ids);
        let mut challenge = [0u8; CHALLENGE_LEN];
        challenge[..6].copy_from_slice(MAGIC);
        challenge[6..8].copy_from_slice(&PROTO_VERSION.to_be_bytes());
        challenge[8..40].copy_from_slice(&nonce_a);
        challenge[40..72].copy_from_slice(&mac);
        let acceptor = Acceptor {
            key: key.clone(),
            nonces: (nonce_c, nonce_a),
            ids,
        };
        Ok((acceptor, challenge))
    }

    /// The node the connector says it is (proven once [`Acceptor::verify`] passed).
    pub fn connector(&self) -> SocketAddrV4 {
        self.ids.connector
    }

    /// Checks the connector's PROOF.
    pub fn verify(&self, proof: &[u8; PROOF_LEN]) -> Result<(), HandshakeError> {
        let nonces = (&self.nonces.0, &self.nonces.1);
        let want = self
            .key
            .mac(Role::Connector, PROTO_VERSION, nonces, self.ids);
        if bool::from(want.ct_eq(proof)) {
            Ok(())
        } else {
            Err(HandshakeError::SecretMismatch)
        }
    }
}

/// Reads exactly `buf.len()` bytes, refusing at once bytes that cannot start a handshake
/// message (when `head` says the message starts with the magic).
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    head: bool,
) -> Result<(), HandshakeError> {
    let mut got = 0;
    while got < buf.len() {
        let n = stream
            .read(&mut buf[got..])
            .await
            .map_err(|e| HandshakeError::Io(e.to_string()))?;
        if n == 0 {
            // Whatever came so far passed `check_head`: the peer simply went away.
            return Err(HandshakeError::Closed);
        }
        got += n;
        if head {
            check_head(&buf[..got.min(HEAD)])?;
        }
    }
    Ok(())
}

async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    match glommio::timer::timeout(limit, async { Ok(work.await) }).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::TimedOut(limit)),
    }
}

/// The connecting side, from node `me` to node `them`, within `limit`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &LinkKey,
    me: SocketAddrV4,
    them: SocketAddrV4,
    limit: Duration,
) -> Result<(), HandshakeError> {
    within(limit, async {
        let (connector, hello) = Connector::new(key, me, them);
        let io = |e: std::io::Error| HandshakeError::Io(e.to_string());
        stream.write_all(&hello).await.map_err(io)?;
        let mut challenge = [0u8; CHALLENGE_LEN];
        read_message(stream, &mut challenge, true).await?;
        let (verdict, proof) = connector.finish(&challenge);
        if verdict.is_ok() || verdict == Err(HandshakeError::SecretMismatch) {
            // Sent on a mismatch too, so the acceptor can log its side of it. Best effort.
            let _ = stream.write_all(&proof).await;
        }
        verdict
    })
    .await
}

/// A refused inbound handshake: why, and which node the connector said it was (unproven; for
/// the log line only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: HandshakeError,
    pub claimed: Option<SocketAddrV4>,
}

/// The accepting side on node `me`, within [`ACCEPT_TIMEOUT`]: the connector's node address
/// once it proved it holds the key.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &LinkKey,
    me: SocketAddrV4,
) -> Result<SocketAddrV4, Refused> {
    let mut claimed = None;
    let result = within(ACCEPT_TIMEOUT, async {
        let mut hello = [0u8; HELLO_LEN];
        read_message(stream, &mut hello, true).await?;
        let (acceptor, challenge) = Acceptor::new(key, me, &hello)?;
        claimed = Some(acceptor.connector());
        stream
            .write_all(&challenge)
            .await
            .map_err(|e| HandshakeError::Io(e.to_string()))?;
        let mut proof = [0u8; PROOF_LEN];
        read_message(stream, &mut proof, false).await?;
        acceptor.verify(&proof)?;
        Ok(acceptor.connector())
    })
    .await;
    result.map_err(|error| Refused { error, claimed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn run(a: &LinkKey, c: &LinkKey) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (me, them) = (addr("10.0.0.1:7901"), addr("10.0.0.2:7902"));
        let (connector, hello) = Connector::new(c, me, them);
        let (acceptor, challenge) = Acceptor::new(a, them, &hello).unwrap();
        assert_eq!(acceptor.connector(), me);
        let (verdict, proof) = connector.finish(&challenge);
        (verdict, acceptor.verify(&proof))
    }

    #[test]
    fn the_same_key_passes_both_ways_and_another_fails_both_ways() {
        let key = LinkKey::new("", "Adba723b7fe06819");
        assert_eq!(run(&key, &key.clone()), (Ok(()), Ok(())));
        let other = LinkKey::new("0123456789abcdef0123", "Adba723b7fe06819");
        assert_eq!(
            run(&key, &other),
            (
                Err(HandshakeError::SecretMismatch),
                Err(HandshakeError::SecretMismatch)
            )
        );
        // The default key follows CryptoKey; a ClusterSecret equal to the CryptoKey is still
        // another key (the labels differ).
        assert_ne!(
            LinkKey::new("", "Adba723b7fe06819").0,
            LinkKey::new("", "Adba723b7fe06810").0
        );
        assert_ne!(
            LinkKey::new("Adba723b7fe06819", "x").0,
            LinkKey::new("", "Adba723b7fe06819").0
        );
        assert_eq!(format!("{key:?}"), "LinkKey(<secret>)");
    }

    #[test]
    fn a_replayed_or_reflected_proof_fails() {
        let key = LinkKey::new("", "Adba723b7fe06819");
        let (me, them) = (addr("10.0.0.1:7901"), addr("10.0.0.2:7902"));
        // Replay: a proof recorded from one handshake does not pass the next (new nonce_a).
        let (connector, hello) = Connector::new(&key, me, them);
        let (first, challenge) = Acceptor::new(&key, them, &hello).unwrap();
        let (_, proof) = connector.finish(&challenge);
        assert_eq!(first.verify(&proof), Ok(()));
        let (second, _) = Acceptor::new(&key, them, &hello).unwrap();
        assert_eq!(second.verify(&proof), Err(HandshakeError::SecretMismatch));
        // Reflection: the acceptor's own MAC is not a valid proof.
        let mac: [u8; PROOF_LEN] = challenge[40..72].try_into().unwrap();
        assert_eq!(first.verify(&mac), Err(HandshakeError::SecretMismatch));
        // A tampered challenge nonce fails the connector's check.
        let mut bad = challenge;
        bad[10] ^= 1;
        assert_eq!(
            connector.finish(&bad).0,
            Err(HandshakeError::SecretMismatch)
        );
    }

    #[test]
    fn strangers_are_told_apart_from_the_first_bytes() {
        let key = LinkKey::new("", "Adba723b7fe06819");
        let me = addr("10.0.0.2:7902");
        assert_eq!(check_head(b"GET / "), Err(HandshakeError::NotANodeLink));
        assert_eq!(
            check_head(&[0xff, 0xff, 0xff, 0xff, 0, 1]),
            Err(HandshakeError::NotANodeLink)
        );
        assert_eq!(check_head(b"WSP"), Ok(()));
        let (_, mut hello) = Connector::new(&key, addr("10.0.0.1:7901"), me);
        hello[7] = hello[7].wrapping_add(1);
        assert!(matches!(
            Acceptor::new(&key, me, &hello).err(),
            Some(HandshakeError::Version(_))
        ));
        let (_, hello) = Connector::new(&key, addr("10.0.0.1:7901"), addr("10.0.0.3:7902"));
        assert!(matches!(
            Acceptor::new(&key, me, &hello).err(),
            Some(HandshakeError::WrongNode { .. })
        ));
    }
}

//! clientId: the owning node, core, registry slot and slot generation, sealed with CryptoKey.
//!
//! Layout of the sealed plaintext (16 bytes): version, node IPv4 (4), node RPC port (2), core (1),
//! slot (4), generation (4). It is encrypted with AES-256-GCM-SIV under SHA-256(CryptoKey) with a
//! random 96-bit nonce, and `nonce || ciphertext || tag` (44 bytes) is written as URL-safe base64
//! without padding: 59 characters, inside the original's 44-64.
//!
//! Why an AEAD and not the original's plain AES-CFB: a forged or tampered id must be rejected
//! outright, never decoded into an address to dial or a slot to touch. The generation makes a
//! reused slot refuse messages meant for the connection that held it before.

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::{Aes256GcmSiv, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, SocketAddrV4};

const VERSION: u8 = 1;
const AAD: &[u8] = b"wspush clientId v1";
const PLAIN_LEN: usize = 16;
const SEALED_LEN: usize = 12 + PLAIN_LEN + 16;
/// Length of every clientId this version produces.
pub const CLIENT_ID_LEN: usize = 59;

/// Where a client lives: enough to route a message to it without any lookup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    pub node: SocketAddrV4,
    pub core: u8,
    pub slot: u32,
    pub generation: u32,
}

/// Seals and opens clientIds. One per core (it is cheap to clone: the key schedule only).
#[derive(Clone)]
pub struct IdCodec {
    cipher: Aes256GcmSiv,
}

impl IdCodec {
    pub fn new(crypto_key: &str) -> IdCodec {
        let key = Sha256::digest(crypto_key.as_bytes());
        IdCodec {
            cipher: Aes256GcmSiv::new(&key),
        }
    }

    pub fn seal(&self, addr: &ClientAddr) -> String {
        let mut sealed = [0u8; SEALED_LEN];
        let (nonce, rest) = sealed.split_at_mut(12);
        let (plain, tag_out) = rest.split_at_mut(PLAIN_LEN);
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
        plain[0] = VERSION;
        plain[1..5].copy_from_slice(&addr.node.ip().octets());
        plain[5..7].copy_from_slice(&addr.node.port().to_be_bytes());
        plain[7] = addr.core;
        plain[8..12].copy_from_slice(&addr.slot.to_be_bytes());
        plain[12..16].copy_from_slice(&addr.generation.to_be_bytes());
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), AAD, plain)
            .expect("bug: AES-GCM-SIV cannot fail on a 16-byte plaintext");
        tag_out.copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(sealed)
    }

    /// Returns `None` for anything this node's key did not seal: garbage, truncation, tampering.
    pub fn open(&self, id: &str) -> Option<ClientAddr> {
        if id.len() != CLIENT_ID_LEN {
            return None;
        }
        let mut sealed = [0u8; SEALED_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(id, &mut sealed).ok()?;
        if n != SEALED_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at_mut(12);
        let (plain, tag) = rest.split_at_mut(PLAIN_LEN);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), AAD, plain, &tag)
            .ok()?;
        if plain[0] != VERSION {
            return None;
        }
        let ip = Ipv4Addr::new(plain[1], plain[2], plain[3], plain[4]);
        let port = u16::from_be_bytes([plain[5], plain[6]]);
        Some(ClientAddr {
            node: SocketAddrV4::new(ip, port),
            core: plain[7],
            slot: u32::from_be_bytes(plain[8..12].try_into().ok()?),
            generation: u32::from_be_bytes(plain[12..16].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> ClientAddr {
        ClientAddr {
            node: "10.1.2.3:7900".parse().unwrap(),
            core: 1,
            slot: 123_456,
            generation: 7,
        }
    }

    #[test]
    fn round_trip_and_length() {
        let codec = IdCodec::new("Adba723b7fe06819");
        let id = codec.seal(&addr());
        assert_eq!(id.len(), CLIENT_ID_LEN);
        assert_eq!(codec.open(&id), Some(addr()));
        // A random nonce: two seals of the same address differ but open alike.
        let again = codec.seal(&addr());
        assert_ne!(id, again);
        assert_eq!(codec.open(&again), Some(addr()));
    }

    #[test]
    fn rejects_tampering_truncation_garbage_and_other_keys() {
        let codec = IdCodec::new("Adba723b7fe06819");
        let id = codec.seal(&addr());
        for i in 0..id.len() {
            let mut bytes = id.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(codec.open(&tampered), None, "byte {i}");
        }
        assert_eq!(codec.open(&id[..id.len() - 1]), None);
        assert_eq!(codec.open(""), None);
        assert_eq!(codec.open("not an id at all"), None);
        assert_eq!(codec.open(&"é".repeat(30)), None);
        let other = IdCodec::new("0123456789abcdef0123456789abcdef");
        assert_eq!(other.open(&id), None);
    }
}

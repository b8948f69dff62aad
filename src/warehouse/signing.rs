//! Audit chain signatures: every audit row's hash is signed with the gateway's Ed25519 key, so a
//! row forged or altered by someone who can write to ClickHouse — and recompute the whole hash
//! chain — still fails verification against the public key. Only the public key is needed to
//! verify; the signing key never leaves the gateway's environment.
//!
//! What an auditor checks: `model-bridge audit verify --public-key <hex>` with the public key
//! recorded when the key was made (`model-bridge audit keygen`), never one read from the
//! database. Every row must then carry a valid signature, chains must be unbroken, and each
//! chain but the newest must link to the next; the newest head (chain, seq, hash) should match
//! the one kept outside the database (`audit-chain.head` beside the gateway's spool), since
//! cutting rows off the very end of the newest chain leaves a shorter, still valid trail.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Parses a signing key: the 32-byte seed, hex.
pub fn signing_key(hex_seed: &str) -> Result<SigningKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_seed.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the audit signing key must be 64 hex digits (a 32-byte Ed25519 seed)")?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Parses a public key: 32 bytes, hex.
pub fn verifying_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the audit public key must be 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("the audit public key is invalid: {e}"))
}

/// A new key pair: (seed, public key), hex.
pub fn keygen() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (
        hex::encode(seed),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

/// The public key of a signing key, hex (logged at start so operators can record it).
pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

/// The signature of a row hash, hex.
pub fn sign(key: &SigningKey, hash: &str) -> String {
    hex::encode(key.sign(hash.as_bytes()).to_bytes())
}

/// Whether `sig` (hex) is `key`'s signature of `hash`.
pub fn verify(key: &VerifyingKey, hash: &str, sig: &str) -> bool {
    let Some(bytes) = hex::decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify(hash.as_bytes(), &Signature::from_bytes(&bytes))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let (seed, public) = keygen();
        let k = signing_key(&seed).unwrap();
        let v = verifying_key(&public).unwrap();
        assert_eq!(public_hex(&k), public);
        let s = sign(&k, "abc");
        assert!(verify(&v, "abc", &s));
        assert!(!verify(&v, "abd", &s));
        assert!(!verify(&v, "abc", ""));
        let (_, other) = keygen();
        assert!(!verify(&verifying_key(&other).unwrap(), "abc", &s));
        assert!(signing_key("zz").is_err());
    }
}

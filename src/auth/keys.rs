//! Virtual API keys: `mbk_<id>_<secret>`. The id is visible (it names the key in lists, logs
//! and usage rows); the whole key is stored only as its SHA-256. Verification is constant-time
//! and takes the same path for unknown, revoked and expired keys.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "mbk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A key as stored: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    /// Visible id (part of the key), unique.
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    #[serde(default)]
    pub name: Option<String>,
    pub org: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Cost center charged by default.
    #[serde(default)]
    pub cost_center: Option<String>,
    /// Aliases this key may use; all that RBAC allows when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

impl KeyRecord {
    /// Usable at `now` (unix seconds): neither revoked nor expired.
    pub fn is_active(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A new random key: (the whole key, shown once; its id; its hash).
pub fn generate() -> (String, String, String) {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let id = pick(ID_LEN);
    let secret = pick(SECRET_LEN);
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    let h = hash(&key);
    (key, id, h)
}

/// The id part of a well-formed key.
pub fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id) && ok(secret) && secret.len() == SECRET_LEN).then_some(id)
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time comparison of `key`'s hash with a stored hex hash.
pub fn matches(key: &str, stored_hex: &str) -> bool {
    let got = Sha256::digest(key.as_bytes());
    let mut want = [0u8; 32];
    if hex::decode_to_slice(stored_hex, &mut want).is_err() {
        // Still do the comparison so a malformed record costs the same time.
        let _ = got.as_slice().ct_eq(&want);
        return false;
    }
    got.as_slice().ct_eq(&want).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match() {
        let (key, id, h) = generate();
        assert!(key.starts_with("mbk_"));
        assert_eq!(parse_id(&key), Some(id.as_str()));
        assert!(matches(&key, &h));
        assert!(!matches(&format!("{key}x"), &h));
        assert!(!matches(&key, "zz"));
        let (other, _, _) = generate();
        assert_ne!(key, other);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        assert_eq!(parse_id("sk-abc"), None);
        assert_eq!(parse_id("mbk_short"), None);
        assert_eq!(parse_id("mbk_ABCDEFGHIJKL_tooshort"), None);
    }

    #[test]
    fn activity() {
        let mut r = KeyRecord {
            id: "a".into(),
            hash: String::new(),
            name: None,
            org: "o".into(),
            team: None,
            user: None,
            roles: vec![],
            cost_center: None,
            models: None,
            created_at: 0,
            expires_at: Some(100),
            revoked_at: None,
        };
        assert!(r.is_active(99));
        assert!(!r.is_active(100));
        r.expires_at = None;
        r.revoked_at = Some(5);
        assert!(!r.is_active(1));
    }
}

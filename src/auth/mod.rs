//! Authentication: every data-plane request resolves to a `Principal` (org, team, user, key,
//! roles, default cost center) from a virtual key, or is refused with a reason that is the same
//! to the caller for unknown, revoked and expired keys.

pub mod attribution;
pub mod issue;
pub mod jwt;
pub mod keys;
pub mod store;

use crate::rbac::{Grants, Rbac};
use keys::KeyRecord;
use std::sync::Arc;
use store::KeyStore;

/// Why a credential was refused (metric and audit label; the caller sees one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// Who is calling, resolved once per request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org: Arc<str>,
    pub team: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub cost_center: Option<Arc<str>>,
    /// Aliases the key is restricted to, if any.
    pub models: Option<Arc<[String]>>,
    pub grants: Grants,
    /// Authentication is off: every decision allows.
    pub unrestricted: bool,
}

impl Principal {
    /// The caller when authentication is disabled.
    pub fn anonymous() -> Self {
        Self {
            org: Arc::from("default"),
            team: None,
            user: None,
            key_id: None,
            cost_center: None,
            models: None,
            grants: Grants::default(),
            unrestricted: true,
        }
    }

    pub fn can_invoke(&self, alias: &str) -> bool {
        if self.unrestricted {
            return true;
        }
        let listed = self
            .models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == alias));
        listed && self.grants.can_invoke(alias)
    }

    pub fn allows(&self, perm: &str) -> bool {
        self.unrestricted || self.grants.allows(perm)
    }

    /// Endpoint permission `i` (see `rbac::ENDPOINT_PERMISSIONS`), precompiled.
    pub fn allows_endpoint(&self, i: usize) -> bool {
        self.unrestricted || self.grants.allows_endpoint(i)
    }

    /// Actor name for audit events: key id, else user, else anonymous.
    pub fn actor(&self) -> String {
        match (&self.key_id, &self.user) {
            (Some(k), _) => format!("key:{k}"),
            (None, Some(u)) => format!("user:{u}"),
            _ => "anonymous".to_string(),
        }
    }
}

/// The bearer credential of a request: `Authorization: Bearer …` or Azure-style `api-key`.
pub fn credential<'a>(
    authorization: Option<&'a [u8]>,
    api_key: Option<&'a [u8]>,
) -> Option<&'a str> {
    if let Some(a) = authorization {
        let a = std::str::from_utf8(a).ok()?.trim();
        let (scheme, rest) = a.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    api_key
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::trim)
}

/// Hash of a key that cannot exist, compared against when the id is unknown so that unknown
/// and known ids cost the same.
const DUMMY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Resolves a virtual key. Config-declared keys shadow stored ones with the same id.
pub fn authenticate_key(
    key: &str,
    config_keys: &std::collections::HashMap<String, Arc<KeyRecord>>,
    store: &dyn KeyStore,
    now: u64,
) -> Result<Arc<KeyRecord>, AuthFailure> {
    let Some(id) = keys::parse_id(key) else {
        return Err(AuthFailure::Malformed);
    };
    let record = config_keys.get(id).cloned().or_else(|| store.get(id));
    let hash = record.as_ref().map_or(DUMMY_HASH, |r| r.hash.as_str());
    let matched = keys::matches(key, hash);
    match record {
        Some(r) if matched => {
            if r.revoked_at.is_some() {
                Err(AuthFailure::Revoked)
            } else if !r.is_active(now) {
                Err(AuthFailure::Expired)
            } else {
                Ok(r)
            }
        }
        _ => Err(AuthFailure::Unknown),
    }
}

/// The principal of an authenticated key.
pub fn key_principal(rec: &KeyRecord, rbac: &Rbac, now: u64) -> Principal {
    key_principal_until(rec, rbac, now).0
}

/// `key_principal`, and until when it holds (the first expiry of a binding it used).
pub fn key_principal_until(rec: &KeyRecord, rbac: &Rbac, now: u64) -> (Principal, Option<u64>) {
    let mut subjects = vec![format!("key:{}", rec.id)];
    if let Some(u) = &rec.user {
        subjects.push(format!("user:{u}"));
    }
    let (grants, until) = rbac.grants_until(
        rec.roles.iter().map(String::as_str),
        &subjects,
        &rec.org,
        now,
    );
    let p = Principal {
        org: Arc::from(rec.org.as_str()),
        team: rec.team.as_deref().map(Arc::from),
        user: rec.user.as_deref().map(Arc::from),
        key_id: Some(Arc::from(rec.id.as_str())),
        cost_center: rec.cost_center.as_deref().map(Arc::from),
        models: rec.models.as_ref().map(|m| Arc::from(m.as_slice())),
        grants,
        unrestricted: false,
    };
    (p, until)
}

/// Principals of keys, computed once per key and config generation. An entry is used only
/// while its key record is the very one the store holds (any change to the key — revocation,
/// rotation — replaces the record) and before the first expiry of a binding it used.
pub struct PrincipalCache {
    cache: moka::sync::Cache<String, Arc<CachedPrincipal>>,
}

pub struct CachedPrincipal {
    record: Arc<KeyRecord>,
    until: Option<u64>,
    principal: Arc<Principal>,
}

impl Default for PrincipalCache {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::new(100_000),
        }
    }
}

impl PrincipalCache {
    pub fn get(&self, rec: &Arc<KeyRecord>, rbac: &Rbac, now: u64) -> Arc<Principal> {
        if let Some(c) = self.cache.get(&rec.id) {
            if Arc::ptr_eq(&c.record, rec) && c.until.is_none_or(|u| now < u) {
                return c.principal.clone();
            }
        }
        let (p, until) = key_principal_until(rec, rbac, now);
        let p = Arc::new(p);
        self.cache.insert(
            rec.id.clone(),
            Arc::new(CachedPrincipal {
                record: rec.clone(),
                until,
                principal: p.clone(),
            }),
        );
        p
    }
}

/// The principal of a verified JWT; its org must be configured.
pub fn jwt_principal(
    id: &jwt::Identity,
    orgs: &std::collections::BTreeMap<String, crate::config::Org>,
    rbac: &Rbac,
    now: u64,
) -> Result<Principal, AuthFailure> {
    if !orgs.contains_key(&id.org) {
        return Err(AuthFailure::Unknown);
    }
    let mut subjects = Vec::with_capacity(1 + id.groups.len());
    subjects.push(format!("user:{}", id.user));
    subjects.extend(id.groups.iter().map(|g| format!("group:{g}")));
    Ok(Principal {
        org: Arc::from(id.org.as_str()),
        team: None,
        user: Some(Arc::from(id.user.as_str())),
        key_id: None,
        cost_center: None,
        models: None,
        grants: rbac.grants(id.roles.iter().map(String::as_str), &subjects, &id.org, now),
        unrestricted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers() {
        assert_eq!(credential(Some(b"Bearer abc"), None), Some("abc"));
        assert_eq!(credential(Some(b"bearer  abc "), None), Some("abc"));
        assert_eq!(credential(Some(b"Basic abc"), None), None);
        assert_eq!(credential(None, Some(b"k1")), Some("k1"));
        assert_eq!(credential(None, None), None);
    }

    #[test]
    fn unknown_revoked_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::FileKeyStore::open(&dir.path().join("k.json")).unwrap();
        let (key, id, hash) = keys::generate();
        let rec = KeyRecord {
            id: id.clone(),
            hash,
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
        store.insert(rec).unwrap();
        let none = Default::default();
        assert!(authenticate_key(&key, &none, &store, 50).is_ok());
        assert_eq!(
            authenticate_key(&key, &none, &store, 100).unwrap_err(),
            AuthFailure::Expired
        );
        let (other, _, _) = keys::generate();
        assert_eq!(
            authenticate_key(&other, &none, &store, 50).unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(
            authenticate_key("sk-x", &none, &store, 50).unwrap_err(),
            AuthFailure::Malformed
        );
        store.revoke(&id, 60).unwrap();
        assert_eq!(
            authenticate_key(&key, &none, &store, 70).unwrap_err(),
            AuthFailure::Revoked
        );
        // A wrong secret for a known id is "unknown", like an unknown id.
        let forged = format!(
            "{}{}",
            &key[..key.len() - 1],
            if key.ends_with('a') { 'b' } else { 'a' }
        );
        assert_eq!(
            authenticate_key(&forged, &none, &store, 50).unwrap_err(),
            AuthFailure::Unknown
        );
    }
}

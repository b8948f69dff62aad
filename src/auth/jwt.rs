//! SSO: `Authorization: Bearer <JWT>` from an OIDC identity provider. Asymmetric tokens (RS256,
//! ES256, EdDSA, …) are checked against a JWKS (file or URL) that is cached and refreshed when a
//! token names an unknown `kid` — at most once per `refresh_min` so that forged kids cannot turn
//! the gateway into a load generator against the IdP. HS256 with a shared secret is for tests.

use super::AuthFailure;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// Claim names that map a token to a principal.
#[derive(Debug, Clone)]
pub struct ClaimMap {
    pub org: String,
    pub user: String,
    pub groups: String,
    pub roles: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
    pub hs256_secret: Option<crate::routing::Secret>,
    pub jwks: Option<JwksSource>,
    pub claims: ClaimMap,
    /// Org of tokens that carry no org claim.
    pub default_org: Option<String>,
    /// Least time between two JWKS refreshes.
    pub refresh_min: Duration,
}

/// Fetches a JWKS document over HTTP(S); implemented by the proxy layer.
pub trait JwksFetch: Send + Sync {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
}

type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

pub struct JwtVerifier {
    pub settings: JwtSettings,
    keys: ArcSwap<KeyMap>,
    started: Instant,
    /// Milliseconds since `started` of the last refresh (0: never).
    last_refresh_ms: AtomicU64,
}

/// The claims of a verified token, as the principal needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: String,
    pub user: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
}

fn parse_jwks(bytes: &[u8]) -> Result<KeyMap, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("JWKS: {e}"))?;
    let mut map = KeyMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {i}: {e}"))?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .or(match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Some(Algorithm::ES256),
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
                _ => None,
            })
            .ok_or_else(|| format!("JWKS key {i}: unknown algorithm"))?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        map.insert(kid, (key, alg));
    }
    Ok(map)
}

impl JwtVerifier {
    /// Builds the verifier; a JWKS file is read now (so `check` validates it).
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        let keys = match &settings.jwks {
            Some(JwksSource::File(p)) => {
                parse_jwks(&std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?)?
            }
            _ => KeyMap::new(),
        };
        Ok(Self {
            settings,
            keys: ArcSwap::from_pointee(keys),
            started: Instant::now(),
            last_refresh_ms: AtomicU64::new(0),
        })
    }

    /// Whether `cred` looks like a JWT (three base64url parts).
    pub fn looks_like_jwt(cred: &str) -> bool {
        cred.split('.').count() == 3 && cred.starts_with("eyJ")
    }

    async fn refresh(&self, fetch: &dyn JwksFetch) {
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_refresh_ms.load(Ordering::Acquire);
        if last != 0 && now_ms - last < self.settings.refresh_min.as_millis() as u64 {
            return;
        }
        if self
            .last_refresh_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another request is refreshing
        }
        let bytes = match &self.settings.jwks {
            Some(JwksSource::File(p)) => std::fs::read(p).map_err(|e| e.to_string()),
            Some(JwksSource::Url(u)) => fetch.fetch(u).await,
            None => return,
        };
        match bytes.and_then(|b| parse_jwks(&b)) {
            Ok(keys) => {
                log::info!("JWKS refreshed: {} keys", keys.len());
                self.keys.store(Arc::new(keys));
            }
            Err(e) => log::error!("JWKS refresh failed: {e}"),
        }
    }

    /// Verifies signature, `exp`, `nbf`, `iss`, `aud`, and maps the claims.
    pub async fn verify(
        &self,
        token: &str,
        fetch: &dyn JwksFetch,
    ) -> Result<Identity, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        let (key, alg) = if header.alg == Algorithm::HS256 {
            let secret = self
                .settings
                .hs256_secret
                .as_ref()
                .ok_or(AuthFailure::Unknown)?;
            (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            )
        } else {
            let kid = header.kid.clone().unwrap_or_default();
            let mut found = self.keys.load().get(&kid).cloned();
            if found.is_none() {
                self.refresh(fetch).await;
                found = self.keys.load().get(&kid).cloned();
            }
            let (key, alg) = found.ok_or(AuthFailure::Unknown)?;
            if alg != header.alg {
                return Err(AuthFailure::Unknown);
            }
            (key, alg)
        };
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway_s;
        v.validate_nbf = true;
        // The library checks `iss` and `aud` only when the token carries them: a configured
        // claim must also be present, or tokens the same IdP issued for other applications
        // (no audience, another issuer left out) would replay here.
        let mut required = vec!["exp"];
        match &self.settings.issuer {
            Some(i) => {
                v.set_issuer(&[i]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.settings.audience {
            Some(a) => {
                v.set_audience(&[a]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature
                    | jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthFailure::Expired,
                    _ => AuthFailure::Unknown,
                }
            })?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthFailure> {
        let c = &self.settings.claims;
        let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let list = |name: &str| -> Vec<String> {
            match claims.get(name) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => s
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let org = string(&c.org)
            .or_else(|| self.settings.default_org.clone())
            .ok_or(AuthFailure::Unknown)?;
        let user = string(&c.user)
            .or_else(|| string("sub"))
            .ok_or(AuthFailure::Unknown)?;
        Ok(Identity {
            org,
            user,
            groups: list(&c.groups),
            roles: c.roles.as_deref().map(list).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    struct NoFetch;
    impl JwksFetch for NoFetch {
        fn fetch<'a>(
            &'a self,
            _url: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
            Box::pin(async { Err("no fetch in tests".to_string()) })
        }
    }

    const SECRET: &str = "test-secret-of-enough-length-0123456789";

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
            leeway_s: 0,
            hs256_secret: Some(crate::routing::Secret::new(SECRET.to_string())),
            jwks: None,
            claims: ClaimMap {
                org: "org".into(),
                user: "sub".into(),
                groups: "groups".into(),
                roles: None,
            },
            default_org: None,
            refresh_min: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verify(v: &JwtVerifier, claims: Value) -> Result<Identity, AuthFailure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(v.verify(&token(claims), &NoFetch))
    }

    #[test]
    fn configured_issuer_and_audience_must_be_present() {
        let exp = crate::time::now_unix() + 600;
        let v = verifier(Some("https://idp"), Some("model-bridge"));
        let full = json!({"sub": "u", "org": "acme", "exp": exp, "iss": "https://idp", "aud": "model-bridge"});
        assert!(verify(&v, full).is_ok());
        let no_aud = json!({"sub": "u", "org": "acme", "exp": exp, "iss": "https://idp"});
        assert_eq!(verify(&v, no_aud), Err(AuthFailure::Unknown));
        let no_iss = json!({"sub": "u", "org": "acme", "exp": exp, "aud": "model-bridge"});
        assert_eq!(verify(&v, no_iss), Err(AuthFailure::Unknown));
        let other_aud =
            json!({"sub": "u", "org": "acme", "exp": exp, "iss": "https://idp", "aud": "other"});
        assert_eq!(verify(&v, other_aud), Err(AuthFailure::Unknown));
        let no_exp =
            json!({"sub": "u", "org": "acme", "iss": "https://idp", "aud": "model-bridge"});
        assert_eq!(verify(&v, no_exp), Err(AuthFailure::Unknown));
        // Nothing configured: neither claim is needed.
        let open = verifier(None, None);
        assert!(verify(&open, json!({"sub": "u", "org": "acme", "exp": exp})).is_ok());
    }
}

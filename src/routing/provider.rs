//! An upstream provider in runtime form: where it is, how it authenticates, how its paths look,
//! and its timeouts. Built once per config generation.

use crate::config::raw::{ProviderKind, RawProvider};
use arc_swap::ArcSwapOption;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A credential that must never reach a log line or a response.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Per-provider timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// How long a DNS answer is trusted before the next request resolves again.
const DNS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Value of the `Host` header sent upstream.
    pub authority: String,
    /// Path prefix from the base URL, without a trailing slash.
    pub base_path: String,
    /// The credential header (name, full value), built once per config generation so a request
    /// does not format it again.
    credential: Option<(&'static str, Secret)>,
    pub api_version: Option<String>,
    pub timeouts: Timeouts,
    pub extra_headers: Vec<(String, String)>,
    pub verify_tls: bool,
    resolved: ArcSwapOption<(SocketAddr, Instant)>,
}

impl Provider {
    pub fn from_raw(name: &str, raw: &RawProvider) -> Result<Self, (&'static str, String)> {
        let uri: http::Uri = raw
            .base_url
            .parse()
            .map_err(|e| ("base_url", format!("not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(("base_url", "scheme must be http or https".into())),
        };
        let host = uri
            .host()
            .ok_or(("base_url", "no host".to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = match uri.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", uri.host().unwrap_or_default()),
            _ => uri.host().unwrap_or_default().to_string(),
        };
        if uri.query().is_some() {
            return Err(("base_url", "must not contain a query".into()));
        }
        let mut base_path = uri.path().trim_end_matches('/').to_string();
        if raw.kind == ProviderKind::Azure {
            if let Some(p) = base_path.strip_suffix("/openai") {
                base_path = p.to_string();
            }
            if raw.api_version.as_deref().unwrap_or("").is_empty() {
                return Err(("api_version", "required for kind = \"azure\"".into()));
            }
        }
        let ms = |v: u64, key: &'static str| {
            if v == 0 {
                Err((key, "must be greater than 0".to_string()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let timeouts = Timeouts {
            connect: ms(raw.connect_timeout_ms, "connect_timeout_ms")?,
            first_byte: ms(raw.first_byte_timeout_ms, "first_byte_timeout_ms")?,
            idle: ms(raw.idle_timeout_ms, "idle_timeout_ms")?,
            total: ms(raw.total_timeout_ms, "total_timeout_ms")?,
        };
        let mut extra_headers = Vec::new();
        for (k, v) in &raw.headers {
            http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ("headers", format!("invalid header name `{k}`")))?;
            http::HeaderValue::from_str(v)
                .map_err(|_| ("headers", format!("invalid value for header `{k}`")))?;
            extra_headers.push((k.to_ascii_lowercase(), v.clone()));
        }
        let credential = raw
            .api_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| {
                http::HeaderValue::from_str(k)
                    .map(|_| match raw.kind {
                        ProviderKind::Azure => ("api-key", Secret::new(k.clone())),
                        _ => ("authorization", Secret::new(format!("Bearer {k}"))),
                    })
                    .map_err(|_| {
                        (
                            "api_key",
                            "contains characters not allowed in a header".into(),
                        )
                    })
            })
            .transpose()?;
        Ok(Self {
            name: Arc::from(name),
            kind: raw.kind,
            tls,
            host,
            port,
            authority,
            base_path,
            credential,
            api_version: raw.api_version.clone(),
            timeouts,
            extra_headers,
            verify_tls: raw.verify_tls,
            resolved: ArcSwapOption::empty(),
        })
    }

    /// Path and query for an LLM endpoint. `suffix` is the part after `/v1`, e.g.
    /// `/chat/completions`; `model` is the provider model (Azure: deployment).
    pub fn endpoint_path(&self, suffix: &str, model: &str, query: Option<&str>) -> String {
        let mut p = String::with_capacity(self.base_path.len() + suffix.len() + 64);
        p.push_str(&self.base_path);
        match self.kind {
            ProviderKind::Azure => {
                p.push_str("/openai/deployments/");
                p.push_str(model);
                p.push_str(suffix);
                self.push_azure_query(&mut p, query);
            }
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                p.push_str(suffix);
                if let Some(q) = query.filter(|q| !q.is_empty()) {
                    p.push('?');
                    p.push_str(q);
                }
            }
        }
        p
    }

    /// Path and query for a passthrough `/v1/*` request.
    pub fn passthrough_path(&self, suffix: &str, query: Option<&str>) -> String {
        let mut p = String::with_capacity(self.base_path.len() + suffix.len() + 32);
        p.push_str(&self.base_path);
        match self.kind {
            ProviderKind::Azure => {
                p.push_str("/openai");
                p.push_str(suffix);
                self.push_azure_query(&mut p, query);
            }
            _ => {
                p.push_str(suffix);
                if let Some(q) = query.filter(|q| !q.is_empty()) {
                    p.push('?');
                    p.push_str(q);
                }
            }
        }
        p
    }

    fn push_azure_query(&self, p: &mut String, query: Option<&str>) {
        p.push_str("?api-version=");
        p.push_str(self.api_version.as_deref().unwrap_or_default());
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            // The caller's own api-version must not fight ours.
            for pair in q.split('&').filter(|kv| !kv.starts_with("api-version=")) {
                p.push('&');
                p.push_str(pair);
            }
        }
    }

    /// The credential header for this provider's kind, if a key is configured.
    pub fn auth_header(&self) -> Option<(&'static str, &str)> {
        self.credential.as_ref().map(|(n, v)| (*n, v.expose()))
    }

    /// Resolves the provider's address, caching the answer for `DNS_TTL`. IP literals never
    /// touch DNS; names use the system resolver off the async threads.
    pub async fn address(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        if let Some(c) = self.resolved.load().as_ref() {
            if c.1.elapsed() < DNS_TTL {
                return Ok(c.0);
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address for host"))?;
        self.resolved.store(Some(Arc::new((addr, Instant::now()))));
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: ProviderKind, url: &str) -> RawProvider {
        RawProvider {
            kind,
            base_url: url.into(),
            api_key: Some("sk-secret".into()),
            api_version: Some("2024-06-01".into()),
            connect_timeout_ms: 1,
            first_byte_timeout_ms: 1,
            idle_timeout_ms: 1,
            total_timeout_ms: 1,
            headers: Default::default(),
            verify_tls: true,
        }
    }

    #[test]
    fn openai_paths() {
        let p = Provider::from_raw(
            "o",
            &raw(ProviderKind::Openai, "https://api.openai.com/v1/"),
        )
        .unwrap();
        assert!(p.tls);
        assert_eq!(p.port, 443);
        assert_eq!(p.authority, "api.openai.com");
        assert_eq!(
            p.endpoint_path("/chat/completions", "m", None),
            "/v1/chat/completions"
        );
        assert_eq!(p.passthrough_path("/files", Some("a=1")), "/v1/files?a=1");
        assert_eq!(p.auth_header().unwrap().1, "Bearer sk-secret");
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    #[test]
    fn azure_paths() {
        let p = Provider::from_raw(
            "a",
            &raw(ProviderKind::Azure, "https://res.openai.azure.com/openai"),
        )
        .unwrap();
        assert_eq!(
            p.endpoint_path("/chat/completions", "dep1", Some("api-version=x&foo=1")),
            "/openai/deployments/dep1/chat/completions?api-version=2024-06-01&foo=1"
        );
        assert_eq!(p.auth_header().unwrap().0, "api-key");
    }

    #[test]
    fn compatible_with_port() {
        let p = Provider::from_raw(
            "v",
            &raw(ProviderKind::OpenaiCompatible, "http://127.0.0.1:8000/v1"),
        )
        .unwrap();
        assert_eq!(p.authority, "127.0.0.1:8000");
        assert!(!p.tls);
        assert!(Provider::from_raw("x", &raw(ProviderKind::Openai, "ftp://h/v1")).is_err());
    }
}

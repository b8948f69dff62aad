//! One usage record per request: what was asked, what served it, what it cost in tokens and time.

use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

/// Where the token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the provider (JSON `usage` or the final stream chunk).
    Provider,
    /// The provider reported nothing (cancelled stream, usage omitted): completion tokens are the
    /// content chunks relayed, prompt tokens unknown (0).
    Estimated,
    /// No tokens involved (refused before upstream, models list, passthrough).
    None,
}

impl UsageSource {
    /// The name in usage lines and warehouse rows (as serde writes it).
    pub fn label(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    /// Request start, Unix milliseconds.
    pub ts_ms: u64,
    pub request_id: String,
    pub endpoint: &'static str,
    pub method: Cow<'static, str>,
    pub path: Cow<'static, str>,
    /// `model` as the client sent it.
    pub requested_model: Option<String>,
    pub provider: Option<Arc<str>>,
    pub provider_model: Option<String>,
    pub stream: bool,
    /// Status sent to the client (0 when the client left before any response).
    pub status: u16,
    /// Gateway error code or `provider_error` for upstream 4xx/5xx.
    pub error_type: Option<&'static str>,
    /// The client went away before the response ended.
    pub cancelled: bool,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub usage_source: UsageSource,
    /// Cost in nano-USD (exact integer); `None` when the model has no price.
    pub cost_nanousd: Option<i64>,
    /// What the provider's prompt cache saved: the cost at the uncached prompt price minus
    /// the cost (nano-USD; 0 when unpriced or nothing was cached).
    pub cache_savings_nanousd: i64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub upstream_latency_ms: Option<f64>,
    /// Extra upstream attempts: retries of a target, fallbacks to the next, and a stale pooled
    /// connection retried on a fresh one.
    pub retries: u32,
    /// The A/B experiment and variant that routed the request.
    pub experiment: Option<Arc<str>>,
    pub variant: Option<Arc<str>>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub client_ip: Option<Arc<str>>,
    /// OpenAI's end-user field, when the client sent one.
    pub end_user: Option<String>,
    /// Attribution: the caller's org, team, user, key id (never the secret), cost center (with
    /// its department), project and tags.
    pub org: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub cost_center: Option<Arc<str>>,
    pub department: Option<String>,
    pub project: Option<String>,
    pub tags: Vec<String>,
    pub config_generation: u64,
}

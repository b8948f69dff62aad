//! Routing: which provider and provider model serve a client's model alias, and how the request
//! body is rewritten for it.

pub mod path;
pub mod provider;
pub mod resilience;
pub mod rewrite;
pub mod split;

pub use provider::{Provider, Secret, Timeouts};
use std::sync::Arc;

/// The OpenAI endpoints the gateway understands (and routes by `model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Models,
    Passthrough,
    /// `POST /v1/feedback`: a score for an earlier response (experiment reports).
    Feedback,
}

impl Endpoint {
    /// Maps a request path (no query) to an LLM endpoint.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.trim_end_matches('/');
        [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::Responses,
            Endpoint::Models,
            Endpoint::Feedback,
        ]
        .into_iter()
        .find(|e| e.canonical_path() == Some(path))
    }

    /// The path an LLM endpoint is served at (`from_path` recognises exactly these), as a
    /// constant: a request to it needs no copy of its path for the usage record.
    pub fn canonical_path(self) -> Option<&'static str> {
        Some(match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Models => "/v1/models",
            Endpoint::Feedback => "/v1/feedback",
            Endpoint::Passthrough => return None,
        })
    }

    /// The endpoint a (normalised) path is served as: an LLM endpoint, a model lookup, or
    /// passthrough for every other path.
    pub fn classify(path: &str) -> Endpoint {
        match Endpoint::from_path(path) {
            Some(e) => e,
            None if path.starts_with("/v1/models/") => Endpoint::Models,
            None => Endpoint::Passthrough,
        }
    }

    /// The path after `/v1`, as providers expect it.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Models => "/models",
            Endpoint::Passthrough | Endpoint::Feedback => "",
        }
    }

    /// How many endpoints there are: `index` is below it.
    pub const COUNT: usize = crate::rbac::ENDPOINT_PERMISSIONS.len();

    /// Bounded label for metrics and usage rows.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Models => "models",
            Endpoint::Passthrough => "passthrough",
            Endpoint::Feedback => "feedback",
        }
    }

    /// OpenTelemetry `gen_ai.operation.name` of an LLM endpoint; `None` for the others.
    pub fn gen_ai_operation(self) -> Option<&'static str> {
        match self {
            Endpoint::ChatCompletions | Endpoint::Responses => Some("chat"),
            Endpoint::Completions => Some("text_completion"),
            Endpoint::Embeddings => Some("embeddings"),
            Endpoint::Models | Endpoint::Passthrough | Endpoint::Feedback => None,
        }
    }

    /// Position in `rbac::ENDPOINT_PERMISSIONS`, `0..COUNT`.
    pub fn index(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Responses => 3,
            Endpoint::Models => 4,
            Endpoint::Passthrough => 5,
            Endpoint::Feedback => 6,
        }
    }

    /// The RBAC permission for calling this endpoint.
    pub fn permission(self) -> &'static str {
        crate::rbac::ENDPOINT_PERMISSIONS[self.index()]
    }

    /// Whether a streamed response needs `stream_options.include_usage` to report usage.
    pub fn needs_include_usage(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// A client-facing alias bound to one provider model.
#[derive(Debug)]
pub struct ModelRoute {
    pub alias: Arc<str>,
    pub provider: Arc<Provider>,
    pub provider_model: String,
    /// `provider_model` as a JSON string literal, ready to splice into a body.
    pub provider_model_json: Vec<u8>,
    /// Owning org; `None`: shared by all orgs.
    pub org: Option<String>,
    /// `None`: unpriced (cost recorded as unknown).
    pub price: Option<crate::usage::pricing::Price>,
    /// The primary target, then the fallbacks, in order.
    pub chain: Vec<Target>,
    /// Weighted variants of an experiment.
    pub split: Option<split::Split>,
    pub retry: resilience::RetryPolicy,
    /// Mirror a fraction of requests to a candidate, off the request path.
    pub shadow: Option<Shadow>,
    /// Live answers graded by a judge, sampled.
    pub online_eval: Option<OnlineEval>,
    /// This alias's metric series, resolved once per config generation.
    pub metrics: Arc<crate::metrics::ModelMetrics>,
}

/// `[models.X.online_eval]`: a share of the alias's chat completions graded by a judge alias.
#[derive(Debug, Clone)]
pub struct OnlineEval {
    /// The judge alias's primary target (called directly, off the request path).
    pub judge: Target,
    /// Share of requests graded, 0..=1.
    pub sample: f64,
    pub rubric: Arc<str>,
    /// What the judging may cost per month.
    pub budget: crate::limits::spec::Budget,
}

#[derive(Debug, Clone)]
pub struct Shadow {
    pub target: Target,
    /// Share of requests mirrored, 0..=1.
    pub fraction: f64,
    /// What the mirrored traffic may cost per month.
    pub budget: crate::limits::spec::Budget,
}

/// One place a request can go: a provider and its model name, with that model's price.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub provider_model: String,
    /// `provider_model` as a JSON string literal, ready to splice into a body.
    pub provider_model_json: Vec<u8>,
    pub price: Option<crate::usage::pricing::Price>,
    /// `provider/model`: breaker identity (with the base URL) and metric label.
    pub label: Arc<str>,
    /// Identity of the breaker: provider name, base URL and model.
    pub breaker_key: Arc<str>,
}

impl Target {
    pub fn new(
        provider: Arc<Provider>,
        provider_model: String,
        price: Option<crate::usage::pricing::Price>,
    ) -> Self {
        let label: Arc<str> = Arc::from(format!("{}/{}", provider.name, provider_model));
        let breaker_key = Arc::from(format!(
            "{}|{}://{}{}|{}",
            provider.name,
            if provider.tls { "https" } else { "http" },
            provider.authority,
            provider.base_path,
            provider_model
        ));
        Self {
            provider_model_json: serde_json::to_vec(&provider_model).unwrap_or_default(),
            provider,
            provider_model,
            price,
            label,
            breaker_key,
        }
    }
}

impl ModelRoute {
    pub fn new(
        alias: &str,
        provider: Arc<Provider>,
        provider_model: String,
        org: Option<String>,
    ) -> Self {
        let provider_model_json = serde_json::to_vec(&provider_model).unwrap_or_default();
        let alias: Arc<str> = Arc::from(alias);
        Self {
            metrics: Arc::new(crate::metrics::ModelMetrics::new(alias.clone())),
            alias,
            provider,
            provider_model,
            provider_model_json,
            org,
            price: None,
            chain: Vec::new(),
            split: None,
            retry: resilience::RetryPolicy::default(),
            shadow: None,
            online_eval: None,
        }
    }

    /// Whether callers of `org` may see and use this alias.
    pub fn visible_to(&self, org: &str) -> bool {
        self.org.as_deref().is_none_or(|o| o == org)
    }
}

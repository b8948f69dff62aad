//! Usage accounting: the per-request record, token extraction from JSON bodies and SSE streams,
//! and the sink that takes one record per request without blocking the request path.

pub mod estimate;
pub mod json;
pub mod pricing;
pub mod receipts;
pub mod record;
pub mod record_line;
pub mod sink;
pub mod sse;

pub use record::{UsageRecord, UsageSource};
pub use sink::{JsonLinesSink, UsageSink};

/// Token counts of one response.
/// Most tokens one request is counted with, per kind (2^32): figures above this from a provider
/// or a client (`max_tokens`) are taken as this.
pub const MAX_TOKENS: u64 = 1 << 32;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

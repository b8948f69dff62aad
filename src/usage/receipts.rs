//! Receipts: the finished usage records of recent browser requests (those from an origin the
//! console settings allow), kept in memory so the console can show what a playground request
//! cost, where it went and how long it took, without a warehouse, and a workflow step learns
//! the exact cost of its call. Only browser and workflow requests are kept: SDK traffic pays
//! nothing for this, and the ring is not flushed by it.

use super::UsageRecord;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Receipts kept; the oldest goes first.
const CAPACITY: usize = 1024;

pub struct Receipt {
    pub request_id: String,
    pub org: Option<String>,
    pub key_id: Option<String>,
    pub user: Option<String>,
    /// What the caller may read.
    pub body: Value,
}

#[derive(Default)]
pub struct Receipts {
    ring: Mutex<VecDeque<Receipt>>,
    /// Woken at every new receipt (a workflow step waits for its call's).
    kept: tokio::sync::Notify,
}

impl Receipts {
    pub fn keep(&self, r: &UsageRecord) {
        let cost = r.cost_nanousd;
        let body = json!({
            "object": "request.receipt",
            "request_id": r.request_id,
            "model": r.requested_model,
            "provider": r.provider.as_deref(),
            "provider_model": r.provider_model,
            "experiment": r.experiment.as_deref(),
            "variant": r.variant.as_deref(),
            "status": r.status,
            "stream": r.stream,
            "cancelled": r.cancelled,
            "error_type": r.error_type,
            "usage": {
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "completion_tokens": r.completion_tokens,
                "source": r.usage_source,
            },
            "cost_nanousd": cost,
            "cost_usd": cost.map(super::pricing::format_usd),
            "latency_ms": r.latency_ms,
            "ttft_ms": r.ttft_ms,
            "retries": r.retries,
        });
        let receipt = Receipt {
            request_id: r.request_id.clone(),
            org: r.org.as_deref().map(str::to_string),
            key_id: r.key_id.as_deref().map(str::to_string),
            user: r.user.as_deref().map(str::to_string),
            body,
        };
        if let Ok(mut q) = self.ring.lock() {
            if q.len() == CAPACITY {
                q.pop_front();
            }
            q.push_back(receipt);
        }
        self.kept.notify_waiters();
    }

    /// The receipt of `request_id` once it is kept (its request has finished) and `visible`
    /// says the caller may read it, or `None` after `limit`.
    pub async fn wait(
        &self,
        request_id: &str,
        limit: std::time::Duration,
        visible: impl Fn(&Receipt) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let kept = self.kept.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(v) = self.find(request_id, &visible) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, kept).await.is_err() {
                return None;
            }
        }
    }

    /// The receipt of `request_id` when `visible` says the caller may read it.
    pub fn find(&self, request_id: &str, visible: impl Fn(&Receipt) -> bool) -> Option<Value> {
        let q = self.ring.lock().ok()?;
        q.iter()
            .rev()
            .find(|r| r.request_id == request_id)
            .filter(|r| visible(r))
            .map(|r| r.body.clone())
    }
}

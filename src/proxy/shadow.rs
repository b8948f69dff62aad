//! Shadow traffic: a sampled copy of a request goes to a candidate target in a task of its own
//! — the caller's response never waits for it and never sees it. The copy asks for a plain JSON
//! answer (no stream), its usage is recorded as its own row (`experiment = "shadow"`, variant =
//! the target), and its cost is charged to the alias's monthly shadow budget; once that is spent
//! mirroring stops until the next month.

use super::client::Client;
use super::context::Ctx;
use super::headers;
use super::upstream::Upstream;
use crate::limits::budget::BudgetState;
use crate::metrics::METRICS;
use crate::routing::{Endpoint, ModelRoute, Shadow};
use crate::state::Shared;
use crate::usage::UsageSource;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// Completion tokens a mirrored request is assumed to use at most, for its budget reservation.
const SHADOW_MAX_TOKENS: u64 = 4096;

/// The copy of `body` for the shadow target: its model, no streaming.
fn shadow_body(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    o.insert("model".into(), serde_json::json!(model));
    o.insert("stream".into(), serde_json::json!(false));
    o.remove("stream_options");
    serde_json::to_vec(&v).ok()
}

#[allow(clippy::too_many_arguments)]
pub fn maybe_send(
    shared: &Arc<Shared>,
    upstream: &Arc<Upstream>,
    s: &Client,
    ctx: &Ctx,
    route: &ModelRoute,
    sh: &Shadow,
    ep: Endpoint,
    body: &Bytes,
    max_tokens: Option<u64>,
) {
    if sh.fraction <= 0.0 || rand::random::<f64>() >= sh.fraction {
        return;
    }
    let alias = route.alias.clone();
    let now = crate::time::now_unix();
    let budget = crate::state::get_or_insert(&shared.shadow_budgets, &alias, || {
        BudgetState::new(format!("shadow:{alias}"), &sh.budget, now)
    });
    let max_tokens = max_tokens.unwrap_or(SHADOW_MAX_TOKENS);
    let (_, worst) = crate::limits::worst_case(body.len(), max_tokens, sh.target.price);
    if budget.reserve(worst, now, None).is_err() {
        METRICS
            .shadow_requests
            .with_label_values(&[&alias, "skipped_budget"])
            .inc();
        return;
    }
    let Some(out) = shadow_body(body, &sh.target.provider_model) else {
        budget.settle(worst, 0, now);
        return;
    };
    let provider = sh.target.provider.clone();
    let path = provider.endpoint_path(ep.suffix(), &sh.target.provider_model, None);
    let mut record = ctx.record.clone();
    let Ok(header) = headers::upstream_request(
        s.headers(),
        &provider,
        "POST",
        &path,
        out.len(),
        &format!("{}-shadow", record.request_id),
        None,
    ) else {
        budget.settle(worst, 0, now);
        return;
    };
    let (upstream, target) = (upstream.clone(), sh.target.clone());
    let cut = shared.tasks.cut_signal();
    let tasks = &shared.tasks;
    let shared = shared.clone();
    tasks.spawn("shadow", async move {
        let started = Instant::now();
        record.request_id.push_str("-shadow");
        record.experiment = Some(Arc::from("shadow"));
        record.variant = Some(target.label.clone());
        record.provider = Some(provider.name.clone());
        record.provider_model = Some(target.provider_model.clone());
        record.stream = false;
        record.request_bytes = out.len() as u64;
        let (_, cost, sent) = send_recorded(
            &upstream,
            &target,
            header,
            Bytes::from(out),
            started,
            cut,
            &mut record,
        )
        .await;
        let outcome = if sent { "sent" } else { "failed" };
        METRICS
            .shadow_requests
            .with_label_values(&[&alias, outcome])
            .inc();
        budget.settle(worst, cost, crate::time::now_unix());
        record.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        shared.sink.submit(record);
    });
}

/// Sends a request of the gateway's own (a shadow copy, a judge's task) to `target` and records
/// its answer in `row`: status, upstream latency, usage and the target's price applied, or the
/// error. Returns the body (the first 4 MiB), the cost, and whether an answer came.
pub(super) async fn send_recorded(
    upstream: &Upstream,
    target: &crate::routing::Target,
    header: super::headers::RequestHead,
    body: Bytes,
    started: Instant,
    cut: impl std::future::Future<Output = ()>,
    row: &mut crate::usage::UsageRecord,
) -> (Vec<u8>, i64, bool) {
    let mut cost = 0;
    tokio::pin!(cut);
    let sent = tokio::select! {
        r = upstream.send(&target.provider, header, body, started) => r,
        _ = &mut cut => Err(crate::error::GatewayError::ShuttingDown),
    };
    let mut buf = Vec::new();
    let answered = match sent {
        Ok(mut resp) => {
            row.status = resp.status();
            row.upstream_latency_ms = Some(resp.header_latency.as_secs_f64() * 1e3);
            loop {
                let chunk = tokio::select! {
                    c = resp.chunk() => c,
                    _ = &mut cut => {
                        row.cancelled = true;
                        row.error_type = Some("shutting_down");
                        break;
                    }
                };
                let Ok(Some(chunk)) = chunk else { break };
                if buf.len() < 4 << 20 {
                    buf.extend_from_slice(&chunk);
                }
            }
            row.response_bytes = buf.len() as u64;
            resp.release(upstream);
            if let Some(u) = crate::usage::json::from_body(&buf) {
                row.prompt_tokens = u.prompt_tokens;
                row.cached_tokens = u.cached_tokens;
                row.completion_tokens = u.completion_tokens;
                row.usage_source = UsageSource::Provider;
                if let Some(p) = target.price {
                    cost = p.cost_nanousd(&u);
                }
            }
            row.cost_nanousd = target.price.map(|_| cost);
            true
        }
        Err(e) => {
            row.status = e.status();
            row.error_type = Some(e.code());
            false
        }
    };
    (buf, cost, answered)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shadow_body_is_plain_json_for_the_candidate() {
        let b = super::shadow_body(
            br#"{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            "cand",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["stream"].as_bool()),
            (Some("cand"), Some(false))
        );
        assert!(v.get("stream_options").is_none());
    }
}

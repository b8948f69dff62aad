//! `GET /admin/v1/status`: what an operator checks first — readiness, the config generation,
//! each provider and the circuit breakers of the targets that have seen traffic, the usage and
//! audit sinks (queue, ClickHouse, spool) and the control store.

use super::{Ctx, Reply};
use crate::metrics::METRICS;
use crate::routing::resilience::State;
use serde_json::{json, Value};

pub fn status(ctx: &Ctx<'_>) -> Reply {
    let cfg = &ctx.live.config;
    let providers: Vec<Value> = cfg
        .providers
        .values()
        .map(|p| {
            let scheme = if p.tls { "https" } else { "http" };
            json!({
                "name": p.name.as_ref(),
                "base_url": format!("{scheme}://{}{}", p.authority, p.base_path),
            })
        })
        .collect();
    let mut breakers: Vec<Value> = ctx
        .shared
        .breakers
        .iter()
        .map(|e| {
            // The key is `provider|base url|model` (routing::Target).
            let mut parts = e.key().splitn(3, '|');
            let provider = parts.next().unwrap_or_default();
            let model = parts.nth(1).unwrap_or_default();
            let state = match e.value().state() {
                State::Closed => "closed",
                State::Open => "open",
                State::HalfOpen => "half_open",
            };
            json!({"provider": provider, "model": model, "state": state})
        })
        .collect();
    breakers.sort_by_key(|b| b.to_string());
    let sink = |name: &str| {
        json!({
            "clickhouse_up": METRICS.sink_clickhouse_up.with_label_values(&[name]).get() == 1,
            "spool_bytes": METRICS.sink_spool_bytes.with_label_values(&[name]).get(),
            "spool_limit_bytes": METRICS.sink_spool_limit.with_label_values(&[name]).get(),
            "spool_segments": METRICS.sink_spool_segments.with_label_values(&[name]).get(),
        })
    };
    let warehouse = cfg.clickhouse.is_some();
    let ready = !ctx.shared.is_draining() && !cfg.models.is_empty();
    Reply::ok(json!({
        "object": "status",
        "ready": ready,
        "draining": ctx.shared.is_draining(),
        "config_generation": ctx.live.generation,
        "models": cfg.models.len(),
        "providers": providers,
        "breakers": breakers,
        "usage_sink": {
            "kind": format!("{:?}", cfg.usage.sink).to_lowercase(),
            "queue_depth": METRICS.usage_sink_queue_depth.get(),
            "backed_up": ctx.shared.sink.backed_up(),
            "warehouse": warehouse.then(|| sink("usage")),
        },
        "audit_sink": {
            "kind": format!("{:?}", cfg.audit_sink).to_lowercase(),
            "warehouse": warehouse.then(|| sink("audit")),
        },
        "control_store": ctx.shared.keys().map(|k| json!({
            "up": k.is_up(),
            "store": k.identity().split(':').next().unwrap_or_default().to_string(),
        })),
    }))
}

/// `GET /admin/v1/requests/{id}`: the receipt of a recent console request — the caller's own
/// (same key, or same user of the org), or any of its org's with `admin:spend:read`.
pub async fn receipt(ctx: &Ctx<'_>, id: &str) -> Reply {
    let p = ctx.principal;
    let reader = p.allows("admin:spend:read");
    let found = ctx
        .shared
        .receipts
        .wait(id, wait_of(ctx.req.query), |r| {
            let same_org = r.org.as_deref() == Some(p.org.as_ref());
            let own_key = p.key_id.is_some() && r.key_id.as_deref() == p.key_id.as_deref();
            let own_user =
                p.key_id.is_none() && p.user.is_some() && r.user.as_deref() == p.user.as_deref();
            same_org && (own_key || own_user || reader)
        })
        .await;
    match found {
        Some(v) => Reply::ok(v),
        None => Reply::error(
            404,
            "not_found",
            format!(
                "No receipt for `{id}` (kept for recent console, workflow and eval requests only)."
            ),
        ),
    }
}

/// `?wait_ms=` of a receipt request: how long to wait for a request still finishing (at most
/// 30 s; default: not at all).
pub fn wait_of(query: Option<&str>) -> std::time::Duration {
    let ms = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("wait_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::time::Duration::from_millis(ms.min(30_000))
}

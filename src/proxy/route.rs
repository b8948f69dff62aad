//! Where a request goes: the experiment variant (sticky per subject), then the target chain —
//! retries with jittered exponential backoff on connect errors, timeouts, 429 and 5xx while
//! nothing has reached the client, fallback to the next target (at once when `retry-after`
//! asks for longer than the backoff ceiling), circuit breakers skipping failing targets, and
//! a process-wide retry budget. A response that starts streaming is never retried: the loop
//! ends before the relay begins.

use super::client::Client;
use super::context::Ctx;
use super::headers;
use super::upstream::{Response, Upstream};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::resilience::Breaker;
use crate::routing::rewrite::RequestFields;
use crate::routing::split::{Params, Subject};
use crate::routing::{Endpoint, ModelRoute, Target};
use crate::state::Shared;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub struct Plan<'a> {
    pub targets: &'a [Target],
    pub params: Option<&'a Params>,
}

/// Picks the variant (when an experiment is running) and records it.
pub fn choose<'a>(ctx: &mut Ctx, route: &'a ModelRoute, fields: &RequestFields) -> Plan<'a> {
    let Some(split) = route
        .split
        .as_ref()
        .filter(|s| s.active(crate::time::now_unix()))
    else {
        return Plan {
            targets: &route.chain,
            params: None,
        };
    };
    let r = &ctx.record;
    let subject = match split.subject {
        Subject::EndUser => fields
            .user
            .as_deref()
            .or(r.user.as_deref())
            .or(r.key_id.as_deref()),
        Subject::User => r.user.as_deref().or(r.key_id.as_deref()),
        Subject::Key => r.key_id.as_deref().or(r.user.as_deref()),
    }
    .or(r.org.as_deref())
    .unwrap_or("anonymous");
    let v = split.assign(subject);
    METRICS
        .variant_requests
        .with_label_values(&[&route.alias, &v.name])
        .inc();
    ctx.record.experiment = Some(split.experiment.clone());
    ctx.record.variant = Some(v.name.clone());
    ctx.added_headers.push("x-model-bridge-variant", &v.name);
    Plan {
        targets: &v.targets,
        params: (!v.params.is_empty()).then_some(&v.params),
    }
}

fn breaker(shared: &Shared, t: &Target) -> Arc<Breaker> {
    crate::state::get_or_insert(&shared.breakers, &t.breaker_key, Breaker::default)
}

/// `retry-after` (seconds) or `retry-after-ms` of a response.
fn retry_after(resp: &Response) -> Option<Duration> {
    let h = resp.head();
    let get = |n: &str| h.get(n).and_then(|v| std::str::from_utf8(v).ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn attempt(target: &Target, outcome: &str) {
    METRICS
        .attempts
        .with_label_values(&[&target.label, outcome])
        .inc();
}

/// Sends the request along the target chain; returns the response to relay (a success, or
/// the last target's error response when every attempt failed).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    shared: &Shared,
    upstream: &Upstream,
    s: &Client,
    ctx: &mut Ctx,
    route: &ModelRoute,
    targets: &[Target],
    ep: Endpoint,
    body: &Bytes,
    fields: &RequestFields,
    inject: bool,
) -> Result<Response, GatewayError> {
    let settings = ctx.live.config.routing.breaker;
    shared.retry_budget.on_request();
    let mut attempts = 0u32;
    let mut last_err: Option<GatewayError> = None;
    let mut last_resp: Option<Response> = None;
    let mut wait_hint: Option<Duration> = None;
    'targets: for target in targets {
        let br = breaker(shared, target);
        for n in 0..=route.retry.retries {
            if br.open(&settings) {
                attempt(target, "breaker_open");
                continue 'targets;
            }
            if attempts > 0 {
                if !shared.retry_budget.try_retry() {
                    METRICS.retry_budget_exhausted.inc();
                    break 'targets;
                }
                let wait = if n == 0 {
                    // Falling back to another target: no reason to wait.
                    Duration::ZERO
                } else {
                    wait_hint
                        .filter(|w| *w <= route.retry.max_backoff)
                        .unwrap_or_else(|| route.retry.delay(n - 1))
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            // Taken only once the attempt will surely be made; dropped unsettled (an early
            // return below) it hands a half-open probe back.
            let Some(permit) = br.allow(&settings) else {
                attempt(target, "breaker_open");
                continue 'targets;
            };
            if attempts > 0 {
                METRICS
                    .retries
                    .with_label_values(&[&target.provider.name])
                    .inc();
            }
            attempts += 1;
            drop(last_resp.take());
            wait_hint = None;
            ctx.record.provider = Some(target.provider.name.clone());
            ctx.record.provider_model = Some(target.provider_model.clone());
            ctx.price = Some(target.price);
            ctx.record.retries = attempts - 1;
            let out = match fields.rewrite(body, &target.provider_model_json, inject) {
                Some(v) => Bytes::from(v),
                None => body.clone(),
            };
            let provider = &target.provider;
            let path = provider.endpoint_path(ep.suffix(), &target.provider_model, s.uri().query());
            // The attempt is a client span; the provider sees it as its parent.
            let span = ctx.trace.as_ref().map(|t| {
                let op = ep.gen_ai_operation().unwrap_or("chat");
                let span = t.child(
                    format!("{op} {}", target.provider_model),
                    opentelemetry::trace::SpanKind::Client,
                    vec![
                        opentelemetry::KeyValue::new("gen_ai.operation.name", op),
                        opentelemetry::KeyValue::new(
                            "gen_ai.request.model",
                            target.provider_model.clone(),
                        ),
                        opentelemetry::KeyValue::new(
                            "gen_ai.provider.name",
                            target.provider.name.to_string(),
                        ),
                        opentelemetry::KeyValue::new(
                            "server.address",
                            target.provider.authority.clone(),
                        ),
                        opentelemetry::KeyValue::new("model_bridge.attempt", i64::from(attempts)),
                    ],
                );
                let traceparent = t.traceparent(Some(&span));
                (span, traceparent)
            });
            let header = headers::upstream_request(
                s.headers(),
                provider,
                "POST",
                &path,
                out.len(),
                ctx.id(),
                span.as_ref().map(|(_, t)| t.as_str()),
            )?;
            let span = span.map(|(span, _)| span);
            let sent = upstream.send(provider, header, out, ctx.started).await;
            if let Some(span) = span {
                let (status, error) = match &sent {
                    Ok(resp) => {
                        let status = resp.status();
                        (
                            status,
                            (status >= 500 || status == 429).then(|| status.to_string()),
                        )
                    }
                    Err(e) => (0, Some(e.code().to_string())),
                };
                let attrs = if status > 0 {
                    vec![opentelemetry::KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    )]
                } else {
                    Vec::new()
                };
                span.end(attrs, error);
            }
            match sent {
                Ok(resp) => {
                    let status = resp.status();
                    ctx.record.retries = attempts - 1 + resp.retries;
                    if status != 429 && status < 500 {
                        set_state(target, permit.record(true, &settings));
                        attempt(target, "ok");
                        return Ok(resp);
                    }
                    set_state(target, permit.record(false, &settings));
                    attempt(target, if status == 429 { "429" } else { "5xx" });
                    wait_hint = retry_after(&resp);
                    last_resp = Some(resp);
                    last_err = None;
                    if wait_hint.is_some_and(|w| w > route.retry.max_backoff) {
                        // The provider asks for longer than we would wait: next target now.
                        continue 'targets;
                    }
                }
                Err(
                    e @ (GatewayError::UpstreamUnreachable { .. }
                    | GatewayError::UpstreamTimeout { .. }
                    | GatewayError::UpstreamProtocol { .. }),
                ) => {
                    set_state(target, permit.record(false, &settings));
                    attempt(
                        target,
                        if matches!(e, GatewayError::UpstreamTimeout { .. }) {
                            "timeout"
                        } else {
                            "error"
                        },
                    );
                    last_resp = None;
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(resp) = last_resp {
        // Every attempt failed: the provider's own error goes to the client.
        return Ok(resp);
    }
    Err(
        last_err.unwrap_or_else(|| GatewayError::UpstreamUnreachable {
            provider: route.alias.to_string(),
            detail: "every target's circuit breaker is open".into(),
        }),
    )
}

fn set_state(target: &Target, state: crate::routing::resilience::State) {
    METRICS
        .breaker_state
        .with_label_values(&[&target.label])
        .set(state.gauge());
}

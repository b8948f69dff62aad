//! The per-request context, filled step by step, and the one place a request is finished:
//! metrics recorded and exactly one usage record handed to the sink.

use crate::auth::Principal;
use crate::metrics::{status_class, ModelMetrics, METRICS};
use crate::routing::Endpoint;
use crate::state::{Live, Shared};
use crate::usage::{Usage, UsageRecord, UsageSource};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Label for a model the config does not know.
const UNKNOWN: &str = "unknown";

/// The series of requests that never resolved an alias.
static UNKNOWN_MODEL: std::sync::LazyLock<ModelMetrics> =
    std::sync::LazyLock::new(|| ModelMetrics::new(UNKNOWN.into()));

pub struct Ctx {
    pub started: Instant,
    pub live: Arc<Live>,
    pub endpoint: Endpoint,
    /// The configured alias (a bounded label) and its metric series, once routing found one.
    pub model_metrics: Option<Arc<ModelMetrics>>,
    /// Price of the routed model; `Some(None)`: routed to an unpriced model.
    pub price: Option<Option<crate::usage::pricing::Price>>,
    pub ttft: Option<Duration>,
    pub usage: Option<(Usage, UsageSource)>,
    pub principal: std::sync::Arc<Principal>,
    pub record: UsageRecord,
    /// What admission reserved; settled in `finish`.
    pub admission: Option<crate::limits::Admission>,
    /// `x-ratelimit-*`, `retry-after`, budget warning, variant, trace, CORS: added to whatever
    /// response is sent.
    pub added_headers: crate::header_list::HeaderList,
    /// The LLM request body as sent (a shared handle, no copy): prompt tokens are counted from
    /// it when the provider reports no usage.
    pub request_body: Option<bytes::Bytes>,
    /// The SSE scanner of a streamed response: its usage (or what was relayed, for an
    /// estimate) goes into the record however the request ends.
    pub scanner: Option<crate::usage::sse::SseScanner>,
    /// The request's trace when tracing is on.
    pub trace: Option<Box<crate::telemetry::RequestTrace>>,
    /// A browser request (allowed origin): its record is kept as a receipt too.
    pub receipt: bool,
    /// Drawn for online scoring: the judge gets the answer once the response is done.
    pub online: Option<super::online::Sampled>,
    /// A sampled non-streamed answer's body (the relay hands over what it held anyway).
    pub answer: Option<Vec<u8>>,
}

/// `req_` and 96 random bits in hex: the id in `x-request-id`, usage rows and audit events.
pub(super) fn new_request_id() -> String {
    let bits: [u8; 12] = rand::random();
    let mut id = *b"req_000000000000000000000000";
    // 12 bytes are 24 hex digits: the slice is exactly their size, so this cannot fail.
    let _ = hex::encode_to_slice(bits, &mut id[4..]);
    String::from_utf8_lossy(&id).into_owned()
}

/// A request method as text: the standard ones as constants (no copy per request), any other
/// as sent.
pub(super) fn method_text(m: &http::Method) -> Cow<'static, str> {
    use http::Method as M;
    Cow::Borrowed(match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => return Cow::Owned(m.as_str().to_string()),
    })
}

impl Ctx {
    pub fn new(
        live: Arc<Live>,
        method: Cow<'static, str>,
        path: Cow<'static, str>,
        client_ip: Option<Arc<str>>,
    ) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let generation = live.generation;
        let principal = live.anonymous.clone();
        Self {
            started: Instant::now(),
            live,
            endpoint: Endpoint::Passthrough,
            model_metrics: None,
            price: None,
            ttft: None,
            usage: None,
            principal,
            admission: None,
            added_headers: Default::default(),
            request_body: None,
            scanner: None,
            trace: None,
            receipt: false,
            online: None,
            answer: None,
            record: UsageRecord {
                ts_ms,
                request_id: new_request_id(),
                endpoint: Endpoint::Passthrough.label(),
                method,
                path,
                requested_model: None,
                provider: None,
                provider_model: None,
                stream: false,
                status: 0,
                error_type: None,
                cancelled: false,
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: 0,
                usage_source: UsageSource::None,
                cost_nanousd: None,
                cache_savings_nanousd: 0,
                latency_ms: 0.0,
                ttft_ms: None,
                upstream_latency_ms: None,
                retries: 0,
                experiment: None,
                variant: None,
                request_bytes: 0,
                response_bytes: 0,
                client_ip,
                end_user: None,
                org: None,
                team: None,
                user: None,
                key_id: None,
                cost_center: None,
                department: None,
                project: None,
                tags: Vec::new(),
                config_generation: generation,
            },
        }
    }

    pub fn set_endpoint(&mut self, e: Endpoint) {
        self.endpoint = e;
        self.record.endpoint = e.label();
    }

    pub fn id(&self) -> &str {
        &self.record.request_id
    }

    /// Starts the request's trace when tracing is on, continuing the client's `traceparent`;
    /// the response carries this request's own `traceparent` back.
    pub fn start_trace(
        &mut self,
        req: &impl super::client::RequestHeaders,
        method: &str,
        path: &str,
    ) {
        if self.live.config.tracing.is_none() {
            return;
        }
        let get = |n: &str| req.header_str(n);
        let name = format!("{method} {path}");
        self.trace =
            crate::telemetry::RequestTrace::start(get("traceparent"), get("tracestate"), &name);
        if let Some(t) = &self.trace {
            self.added_headers.push("traceparent", &t.traceparent(None));
        }
    }

    /// When a traced phase starts (`None`, and no clock read, without a trace).
    pub fn phase_start(&self) -> Option<SystemTime> {
        self.trace.as_ref().map(|_| SystemTime::now())
    }

    /// A finished phase of the request (a child span), from `start` to now.
    pub fn phase(&self, name: &'static str, start: Option<SystemTime>) {
        if let (Some(t), Some(start)) = (&self.trace, start) {
            t.phase(name, start, Vec::new());
        }
    }

    /// Records metrics and hands the usage record to the sink. Called once per request.
    pub fn finish(mut self, shared: &Shared) {
        let elapsed = self.started.elapsed();
        let r = &mut self.record;
        r.latency_ms = elapsed.as_secs_f64() * 1e3;
        r.ttft_ms = self.ttft.map(|t| t.as_secs_f64() * 1e3);
        // A provider that answered 2xx bills the prompt even when no usage came back (client
        // gone, upstream dropped, no usage in the stream): count it, marked estimated.
        let answered = (200..300).contains(&r.status) && r.provider.is_some();
        // A streamed answer drawn for online scoring: its text, as the scanner collected it.
        let streamed_text = self
            .online
            .as_ref()
            .and(self.scanner.as_ref())
            .map(|sc| sc.text().0);
        let streamed = self.scanner.take().map(|sc| stream_usage(&sc, r));
        let usage = match streamed.or(self.usage) {
            None if answered && self.request_body.is_some() => {
                Some((Usage::default(), UsageSource::Estimated))
            }
            other => other,
        };
        if let Some((mut u, source)) = usage {
            if source == UsageSource::Estimated && u.prompt_tokens == 0 {
                if let Some(body) = &self.request_body {
                    let model = r.provider_model.as_deref().unwrap_or_default();
                    u.prompt_tokens = crate::usage::estimate::prompt_tokens(model, body);
                }
            }
            r.prompt_tokens = u.prompt_tokens;
            r.cached_tokens = u.cached_tokens;
            r.completion_tokens = u.completion_tokens;
            r.usage_source = source;
        }
        let series = self.model_metrics.as_deref().unwrap_or(&UNKNOWN_MODEL);
        let model = series.alias();
        match self.price {
            Some(Some(p)) => {
                let usage = crate::usage::Usage {
                    prompt_tokens: r.prompt_tokens,
                    cached_tokens: r.cached_tokens,
                    completion_tokens: r.completion_tokens,
                };
                let cost = p.cost_nanousd(&usage);
                r.cost_nanousd = Some(cost);
                r.cache_savings_nanousd = p.cache_savings_nanousd(&usage);
                if cost > 0 {
                    series.cost_usd().inc_by(cost as f64 / 1e9);
                }
            }
            // Unpriced means a request a provider served whose cost we cannot know (an
            // unpriced model, or passthrough); one that never reached a model, or that the
            // provider refused, cost nothing.
            _ if answered => {
                if self.price.is_some() {
                    series.unpriced().inc();
                }
            }
            _ => r.cost_nanousd = Some(0),
        }
        let provider = r.provider.as_deref().unwrap_or("none");
        let endpoint = r.endpoint;
        series
            .duration(self.endpoint)
            .observe(elapsed.as_secs_f64());
        if let Some(t) = self.ttft {
            series.ttft().observe(t.as_secs_f64());
        }
        if r.cancelled {
            series.cancelled().inc();
        }
        // In `metrics::TOKEN_KINDS` order.
        for (kind, n) in [r.prompt_tokens, r.completion_tokens, r.cached_tokens]
            .into_iter()
            .enumerate()
        {
            if n > 0 {
                series.tokens(kind).inc_by(n);
            }
        }
        if let Some(adm) = self.admission.take() {
            let actual = crate::limits::Actual {
                tokens: r.prompt_tokens.saturating_add(r.completion_tokens),
                cost: r.cost_nanousd.unwrap_or(0),
            };
            for c in adm.settle(actual) {
                budget_crossed(shared, r, &c);
            }
        }
        if self.live.config.server.access_log {
            access_log(r, self.trace.as_deref());
        }
        if let Some(t) = self.trace.take() {
            let error =
                (r.status >= 500).then(|| r.error_type.unwrap_or("upstream_error").to_string());
            t.finish(span_attributes(r, self.endpoint), error);
        }
        // Counted last: a request that shows in requests_total has all its other metrics.
        METRICS
            .requests
            .with_label_values(&[
                endpoint,
                model,
                provider,
                status_class(r.status, r.cancelled),
            ])
            .inc();
        if self.receipt {
            shared.receipts.keep(&self.record);
        }
        if let Some(sampled) = self.online.take() {
            let answered = self.record.status == 200 && !self.record.cancelled;
            let text = streamed_text.or_else(|| {
                self.answer
                    .as_deref()
                    .and_then(super::online::answer_of_body)
            });
            if let Some(text) = text.filter(|_| answered) {
                super::online::judge(sampled, &self.record, self.request_body.as_ref(), text);
            }
        }
        shared.sink.submit(self.record);
    }
}

/// Usage of a streamed response: the provider's, or an estimate (marked so) with completion
/// tokens counted from the text relayed; the prompt is counted by `finish`.
fn stream_usage(sc: &crate::usage::sse::SseScanner, r: &UsageRecord) -> (Usage, UsageSource) {
    match sc.usage {
        Some(u) => (u, UsageSource::Provider),
        None => {
            let model = r.provider_model.as_deref().unwrap_or_default();
            let (text, beyond) = sc.text();
            let counted = crate::usage::estimate::text_tokens(model, &text, beyond);
            (
                Usage {
                    completion_tokens: counted.max(sc.content_events),
                    ..Default::default()
                },
                UsageSource::Estimated,
            )
        }
    }
}

/// OpenTelemetry GenAI semantic-convention attributes of the request's span, plus the
/// attribution finance and tenancy need (`model_bridge.*`).
fn span_attributes(r: &UsageRecord, endpoint: Endpoint) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let s = |v: &Option<Arc<str>>| v.as_deref().unwrap_or("").to_string();
    let mut a = vec![
        KeyValue::new("http.request.method", r.method.clone()),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("model_bridge.request_id", r.request_id.clone()),
        KeyValue::new("model_bridge.org", s(&r.org)),
        KeyValue::new("model_bridge.team", s(&r.team)),
        KeyValue::new("model_bridge.cost_center", s(&r.cost_center)),
        KeyValue::new("model_bridge.key_id", s(&r.key_id)),
        KeyValue::new("model_bridge.retries", i64::from(r.retries)),
        KeyValue::new("model_bridge.cancelled", r.cancelled),
    ];
    if let Some(op) = endpoint.gen_ai_operation() {
        a.push(KeyValue::new("gen_ai.operation.name", op));
        a.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            r.prompt_tokens as i64,
        ));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            r.completion_tokens as i64,
        ));
    }
    if let Some(m) = &r.requested_model {
        a.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &r.provider_model {
        a.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if let Some(p) = &r.provider {
        a.push(KeyValue::new("gen_ai.provider.name", p.to_string()));
    }
    if let Some(c) = r.cost_nanousd {
        a.push(KeyValue::new("model_bridge.cost_nanousd", c));
    }
    if let (Some(e), Some(v)) = (&r.experiment, &r.variant) {
        a.push(KeyValue::new("model_bridge.experiment", e.to_string()));
        a.push(KeyValue::new("model_bridge.variant", v.to_string()));
    }
    if let Some(t) = r.ttft_ms {
        a.push(KeyValue::new("gen_ai.server.time_to_first_token", t / 1e3));
    }
    a
}

/// One line per finished request (`[server] access_log`), with the ids that join it to its
/// usage row and its trace.
fn access_log(r: &UsageRecord, trace: Option<&crate::telemetry::RequestTrace>) {
    let trace_id = trace.map(|t| t.trace_id()).unwrap_or_default();
    tracing::info!(
        target: "model_bridge::access",
        request_id = %r.request_id,
        trace_id = %trace_id,
        org = r.org.as_deref().unwrap_or(""),
        endpoint = r.endpoint,
        model = r.requested_model.as_deref().unwrap_or(""),
        provider = r.provider.as_deref().unwrap_or(""),
        status = r.status,
        latency_ms = r.latency_ms,
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        cancelled = r.cancelled,
        "request"
    );
}

/// A soft budget threshold was crossed: metric and audit event (the warning header follows on
/// the next responses).
fn budget_crossed(shared: &Shared, r: &UsageRecord, c: &crate::limits::Crossing) {
    let pct = format!("{:.0}", c.fraction * 100.0);
    METRICS
        .budget_warnings
        .with_label_values(&[&c.budget, &pct])
        .inc();
    tracing::warn!(
        request_id = %r.request_id,
        "budget {} passed {pct}% ({} of {} USD)",
        c.budget,
        crate::usage::pricing::format_usd(c.spent),
        crate::usage::pricing::format_usd(c.limit)
    );
    if let Some(n) = shared.notifier() {
        n.send(crate::finance::webhook::Event {
            // The same on every replica that sees this crossing today.
            id: format!(
                "budget:{}:{pct}:{}",
                c.budget,
                crate::time::date(crate::time::now_unix())
            ),
            kind: "budget.threshold",
            data: serde_json::json!({
                "budget": c.budget,
                "org": r.org,
                "threshold": c.fraction,
                "spent_nanousd": c.spent,
                "spent_usd": crate::usage::pricing::format_usd(c.spent),
                "limit_nanousd": c.limit,
                "limit_usd": crate::usage::pricing::format_usd(c.limit),
                "request_id": r.request_id,
            }),
        });
    }
    shared.audit.record(crate::audit::AuditEvent {
        ts_ms: crate::time::now_unix_ms(),
        request_id: r.request_id.clone(),
        actor: "gateway:budget".into(),
        org: r.org.as_deref().map(str::to_string),
        action: "budget.threshold",
        resource: format!("budget:{}", c.budget),
        outcome: "warned",
        reason: Some(format!("{pct}% of the budget spent")),
        before: None,
        after: Some(serde_json::json!({
            "spent_usd": crate::usage::pricing::format_usd(c.spent),
            "limit_usd": crate::usage::pricing::format_usd(c.limit),
            "threshold": c.fraction,
        })),
        client_ip: r.client_ip.as_deref().map(str::to_string),
        user_agent: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_req_and_96_random_bits_in_lowercase_hex() {
        let ids: Vec<String> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            let hex = id.strip_prefix("req_").unwrap_or_else(|| panic!("{id}"));
            assert_eq!(hex.len(), 24, "{id}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position takes more than one value: no part of the id is fixed.
        for i in 4..28 {
            let at: std::collections::HashSet<_> = ids.iter().map(|id| &id[i..=i]).collect();
            assert!(at.len() > 1, "position {i} never varies");
        }
    }
}

//! A mock OpenAI-compatible provider for tests and benches: chat (JSON and SSE), completions,
//! embeddings, responses, models, and an echo for any other path. Knobs come from the command
//! line (defaults) and from `x-mock-*` request headers (per request).
//!
//! Usage is deterministic so tests can check the gateway's accounting: prompt tokens are
//! `max(1, body_bytes / 4)`, completion tokens the number of content chunks, cached tokens the
//! `x-mock-cached-tokens` knob. Every response carries `x-mock-usage: prompt,completion,cached`,
//! plus what the mock received (`x-mock-body-bytes`, `x-mock-body-fnv`, `x-mock-model`,
//! `x-mock-authorization`, `x-mock-include-usage`, `x-mock-path`).
//!
//! Scripted models answer from the request, so evals have known answers: `echo` repeats the
//! last user message, `echo-trunc-<n>` its first n characters; `judge-longer` compares the
//! `<answer_a>` and `<answer_b>` of the last user message and answers `A`, `B` or `TIE` for
//! the longer, `judge-first` always `A`, `judge-grade-<n>` `SCORE: <n>`; embeddings of model
//! `embed-letters` are each input's counts of the letters a-z; `fail-<pct>` answers 500 to that
//! share of requests (evenly spread). Their answers are streamed a
//! word per chunk (completion tokens: the number of words).

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Defaults for every request; headers override per request.
#[derive(Debug, Clone, clap::Args)]
pub struct Knobs {
    /// Delay before the response header, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Content chunks per response (= completion tokens).
    #[arg(long, default_value_t = 8)]
    pub chunks: u64,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_interval_ms: u64,
    /// Answer every request with this status and an OpenAI error body (0 = off).
    #[arg(long, default_value_t = 0)]
    pub status: u16,
    /// Drop the connection after this many stream chunks (0 = never).
    #[arg(long, default_value_t = 0)]
    pub disconnect_after: u64,
    /// Never report usage, even when asked.
    #[arg(long, default_value_t = false)]
    pub no_usage: bool,
    /// `retry-after` (seconds) on error responses (0 = none).
    #[arg(long, default_value_t = 0)]
    pub retry_after_s: u64,
}

pub struct MockApp {
    knobs: Knobs,
    options: HttpServerOptions,
}

impl MockApp {
    pub fn new(knobs: Knobs) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Self { knobs, options }
    }
}

/// FNV-1a 64: a cheap fingerprint of the received body for byte-exactness checks (the same
/// function that identifies config versions).
pub use crate::config::source_hash as fnv1a;

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Req {
    knobs: Knobs,
    cached: u64,
    path: String,
    method: String,
    body: Bytes,
    json: Value,
    auth: String,
    /// A scripted model's answer, in chunks.
    script: Option<Vec<String>>,
}

/// The text of the last user message of a chat.
fn last_user(json: &Value) -> String {
    json["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The text between `<tag>` and `</tag>`, trimmed.
fn tagged(text: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    text.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(inner, _)| inner.trim().to_string())
        .unwrap_or_default()
}

/// What a scripted model answers (see the module's doc), or `None` for any other model.
fn script(json: &Value) -> Option<Vec<String>> {
    let model = json["model"].as_str()?;
    let text = if model == "echo" {
        last_user(json)
    } else if let Some(n) = model.strip_prefix("echo-trunc-") {
        last_user(json).chars().take(n.parse().ok()?).collect()
    } else if model == "judge-longer" {
        let q = last_user(json);
        let (a, b) = (
            tagged(&q, "answer_a").chars().count(),
            tagged(&q, "answer_b").chars().count(),
        );
        match a.cmp(&b) {
            std::cmp::Ordering::Greater => "A",
            std::cmp::Ordering::Less => "B",
            std::cmp::Ordering::Equal => "TIE",
        }
        .to_string()
    } else if model == "judge-first" {
        "A".into()
    } else if let Some(n) = model.strip_prefix("judge-grade-") {
        format!("SCORE: {n}")
    } else {
        return None;
    };
    let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if words.is_empty() {
        words.push(String::new());
    }
    Some(words)
}

/// An input's counts of the letters a-z (case-folded).
fn letters(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 26];
    for c in text.chars().filter(char::is_ascii_alphabetic) {
        v[(c.to_ascii_lowercase() as u8 - b'a') as usize] += 1.0;
    }
    v
}

impl Req {
    fn prompt_tokens(&self) -> u64 {
        (self.body.len() as u64 / 4).max(1)
    }
    fn model(&self) -> String {
        self.json["model"].as_str().unwrap_or("mock").to_string()
    }
    fn stream(&self) -> bool {
        self.json["stream"].as_bool().unwrap_or(false)
    }
    fn include_usage(&self) -> bool {
        self.json["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false)
            && !self.knobs.no_usage
    }
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens(),
            "completion_tokens": self.knobs.chunks,
            "total_tokens": self.prompt_tokens() + self.knobs.chunks,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
    fn responses_usage(&self) -> Value {
        json!({
            "input_tokens": self.prompt_tokens(),
            "output_tokens": self.knobs.chunks,
            "total_tokens": self.prompt_tokens() + self.knobs.chunks,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens_details": {"reasoning_tokens": 0},
        })
    }
    fn text(&self) -> String {
        (0..self.knobs.chunks).map(|i| self.piece(i)).collect()
    }
    /// Content chunk `i`.
    fn piece(&self, i: u64) -> String {
        match &self.script {
            Some(words) => words.get(i as usize).cloned().unwrap_or_default(),
            None => format!("tok{i} "),
        }
    }
}

fn header_u64(s: &ServerSession, name: &str) -> Option<u64> {
    s.get_header(name)?.to_str().ok()?.parse().ok()
}

fn knobs_for(base: &Knobs, s: &ServerSession) -> Knobs {
    let mut k = base.clone();
    if let Some(v) = header_u64(s, "x-mock-latency-ms") {
        k.latency_ms = v;
    }
    if let Some(v) = header_u64(s, "x-mock-chunks") {
        k.chunks = v;
    }
    if let Some(v) = header_u64(s, "x-mock-chunk-interval-ms") {
        k.chunk_interval_ms = v;
    }
    if let Some(v) = header_u64(s, "x-mock-retry-after") {
        k.retry_after_s = v;
    }
    if let Some(v) = header_u64(s, "x-mock-status") {
        k.status = v as u16;
    }
    if let Some(v) = header_u64(s, "x-mock-disconnect-after") {
        k.disconnect_after = v;
    }
    if s.get_header("x-mock-no-usage").is_some() {
        k.no_usage = true;
    }
    k
}

#[async_trait]
impl HttpServerApp for MockApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !s.read_request().await.ok()? {
            return None;
        }
        s.set_keepalive(Some(60));
        let knobs = knobs_for(&self.knobs, &s);
        let mut body = BytesMut::new();
        while let Some(c) = s.read_request_body().await.ok()? {
            body.extend_from_slice(&c);
        }
        let body = body.freeze();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let script = script(&json);
        let mut knobs = knobs;
        if let Some(words) = &script {
            knobs.chunks = words.len() as u64;
        }
        let req = Req {
            script,
            cached: header_u64(&s, "x-mock-cached-tokens").unwrap_or(0),
            path: s.req_header().uri.path().to_string(),
            method: s.req_header().method.to_string(),
            auth: s
                .get_header("authorization")
                .or_else(|| s.get_header("api-key"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            knobs,
            body,
            json,
        };
        if req.knobs.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.knobs.latency_ms)).await;
        }
        let complete = respond(&mut s, &req).await;
        if !complete {
            return None; // mid-stream disconnect: drop the connection unfinished
        }
        let settings = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(Some(st)) => Some(ReusedHttpStream::from_reusable_stream(st, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

fn header(
    s: &ServerSession,
    req: &Req,
    status: u16,
    content_type: &str,
    len: Option<usize>,
) -> Option<Box<ResponseHeader>> {
    let Ok(mut h) = ResponseHeader::build(status, Some(12)) else {
        return None;
    };
    let _ = h.insert_header("content-type", content_type);
    if status >= 400 && req.knobs.retry_after_s > 0 {
        let _ = h.insert_header("retry-after", req.knobs.retry_after_s);
    }
    match len {
        Some(n) => {
            let _ = h.insert_header("content-length", n);
        }
        None if !s.is_http2() => {
            let _ = h.insert_header("transfer-encoding", "chunked");
        }
        None => {}
    }
    let completion = if req.knobs.no_usage {
        0
    } else {
        req.knobs.chunks
    };
    let _ = h.insert_header(
        "x-mock-usage",
        format!("{},{},{}", req.prompt_tokens(), completion, req.cached),
    );
    let _ = h.insert_header("x-mock-body-bytes", req.body.len());
    let _ = h.insert_header("x-mock-body-fnv", format!("{:016x}", fnv1a(&req.body)));
    let _ = h.insert_header("x-mock-model", req.model());
    let _ = h.insert_header("x-mock-include-usage", req.include_usage().to_string());
    let _ = h.insert_header("x-mock-authorization", req.auth.as_str());
    let _ = h.insert_header("x-mock-path", req.path.as_str());
    if let Some(q) = s.req_header().uri.query() {
        let _ = h.insert_header("x-mock-query", q);
    }
    if let Some(v) = s.get_header("user-agent") {
        let _ = h.insert_header("x-mock-user-agent", v.clone());
    }
    if let Some(v) = s.get_header("x-request-id") {
        let _ = h.insert_header("x-mock-request-id", v.clone());
    }
    // What trace context the provider received (tests check propagation).
    for (name, echo) in [
        ("traceparent", "x-mock-traceparent"),
        ("tracestate", "x-mock-tracestate"),
    ] {
        if let Some(v) = s.get_header(name) {
            let _ = h.insert_header(echo, v.clone());
        }
    }
    Some(Box::new(h))
}

async fn send_json(s: &mut ServerSession, req: &Req, status: u16, v: &Value) -> bool {
    let body = Bytes::from(v.to_string());
    let Some(h) = header(s, req, status, "application/json", Some(body.len())) else {
        return false;
    };
    s.write_response_header(h).await.is_ok() && s.write_response_body(body, true).await.is_ok()
}

/// Whether a request to model `fail-<pct>` fails: `pct` of every 100 requests to such models
/// do, spread evenly (a shared counter), so error rates are exact.
fn scripted_failure(model: &str) -> bool {
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(pct) = model
        .strip_prefix("fail-")
        .and_then(|p| p.parse::<u64>().ok())
    else {
        return false;
    };
    let i = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
    // Bresenham: request i fails when the running share of failures falls behind pct.
    (i + 1) * pct / 100 > i * pct / 100
}

async fn respond(s: &mut ServerSession, req: &Req) -> bool {
    if scripted_failure(&req.model()) {
        let v = json!({"error": {"message": "mock scripted failure", "type": "server_error", "param": null, "code": "mock"}});
        return send_json(s, req, 500, &v).await;
    }
    if req.knobs.status >= 400 {
        let v = json!({"error": {"message": format!("mock error {}", req.knobs.status), "type": "mock_error", "param": null, "code": "mock"}});
        return send_json(s, req, req.knobs.status, &v).await;
    }
    let model = req.model();
    match route_path(&req.path).as_str() {
        "/v1/chat/completions" if req.stream() => stream(s, req, Kind::Chat).await,
        "/v1/completions" if req.stream() => stream(s, req, Kind::Completion).await,
        "/v1/responses" if req.stream() => stream(s, req, Kind::Responses).await,
        "/v1/chat/completions" => {
            let usage = if req.knobs.no_usage {
                Value::Null
            } else {
                req.usage()
            };
            let v = json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": req.text()}, "finish_reason": "stop"}],
                "usage": usage,
            });
            send_json(s, req, 200, &v).await
        }
        "/v1/completions" => {
            let v = json!({
                "id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "text": req.text(), "finish_reason": "stop", "logprobs": null}],
                "usage": req.usage(),
            });
            send_json(s, req, 200, &v).await
        }
        "/v1/responses" => {
            let v = json!({
                "id": "resp_mock", "object": "response", "created_at": 1_700_000_000, "model": model, "status": "completed",
                "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": req.text(), "annotations": []}]}],
                "usage": req.responses_usage(),
            });
            send_json(s, req, 200, &v).await
        }
        "/v1/embeddings" => {
            let n = match &req.json["input"] {
                Value::Array(a) if a.first().is_some_and(|x| !x.is_number()) => a.len(),
                _ => 1,
            };
            let b64 = req.json["encoding_format"].as_str() == Some("base64");
            let by_letters = model == "embed-letters";
            let input = |i: usize| match &req.json["input"] {
                Value::Array(a) => a
                    .get(i)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            let data: Vec<Value> = (0..n)
                .map(|i| {
                    let vec: Vec<f32> = if by_letters {
                        letters(&input(i))
                    } else {
                        (0..8).map(|j| (i * 8 + j) as f32 / 100.0).collect()
                    };
                    let emb = if b64 {
                        let bytes: Vec<u8> = vec.iter().flat_map(|f| f.to_le_bytes()).collect();
                        Value::String(base64(&bytes))
                    } else {
                        json!(vec)
                    };
                    json!({"object": "embedding", "index": i, "embedding": emb})
                })
                .collect();
            let p = req.prompt_tokens();
            let v = json!({"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": p, "total_tokens": p}});
            send_json(s, req, 200, &v).await
        }
        "/v1/models" => {
            let v = json!({"object": "list", "data": [{"id": "mock-1", "object": "model", "created": 0, "owned_by": "mock"}]});
            send_json(s, req, 200, &v).await
        }
        _ => {
            let v = json!({"echo": true, "method": req.method, "path": req.path,
                           "body_bytes": req.body.len(), "fnv": format!("{:016x}", fnv1a(&req.body))});
            send_json(s, req, 200, &v).await
        }
    }
}

/// Azure-style `/openai/deployments/{name}/chat/completions` is served like `/v1/chat/completions`.
fn route_path(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        if let Some((_, endpoint)) = rest.split_once('/') {
            return format!("/v1/{endpoint}");
        }
    }
    path.to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
    Responses,
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn sse_event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

async fn stream(s: &mut ServerSession, req: &Req, kind: Kind) -> bool {
    let Some(h) = header(s, req, 200, "text/event-stream", None) else {
        return false;
    };
    if s.write_response_header(h).await.is_err() {
        return false;
    }
    let model = req.model();
    let usage_field = req.include_usage();
    let base = |choices: Value| {
        let mut v = json!({"id": "chatcmpl-mock", "object": if kind == Kind::Chat {"chat.completion.chunk"} else {"text_completion"},
                           "created": 1_700_000_000, "model": model, "choices": choices});
        if usage_field {
            v["usage"] = Value::Null;
        }
        v
    };
    let interval = Duration::from_millis(req.knobs.chunk_interval_ms);
    let mut events: Vec<Bytes> = Vec::with_capacity(req.knobs.chunks as usize + 4);
    match kind {
        Kind::Chat => {
            events.push(sse(&base(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]))));
        }
        Kind::Responses => {
            events.push(sse_event("response.created", &json!({"type": "response.created", "response": {"id": "resp_mock", "status": "in_progress"}})));
        }
        Kind::Completion => {}
    }
    for i in 0..req.knobs.chunks {
        let t = req.piece(i);
        events.push(match kind {
            Kind::Chat => sse(&base(
                json!([{"index": 0, "delta": {"content": t}, "finish_reason": null}]),
            )),
            Kind::Completion => sse(&base(
                json!([{"index": 0, "text": t, "finish_reason": null, "logprobs": null}]),
            )),
            Kind::Responses => sse_event(
                "response.output_text.delta",
                &json!({"type": "response.output_text.delta", "delta": t}),
            ),
        });
    }
    match kind {
        Kind::Chat => events.push(sse(&base(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        ))),
        Kind::Completion => events.push(sse(&base(
            json!([{"index": 0, "text": "", "finish_reason": "stop", "logprobs": null}]),
        ))),
        Kind::Responses => {
            let mut r = json!({"id": "resp_mock", "object": "response", "status": "completed", "model": model, "output": []});
            if !req.knobs.no_usage {
                r["usage"] = req.responses_usage();
            }
            events.push(sse_event(
                "response.completed",
                &json!({"type": "response.completed", "response": r}),
            ));
        }
    }
    if usage_field && kind != Kind::Responses {
        let mut v = base(json!([]));
        v["usage"] = req.usage();
        events.push(sse(&v));
    }
    if kind != Kind::Responses {
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    // Index of the first content event, for mid-stream disconnects counted in content chunks.
    let first_content = if kind == Kind::Completion { 0 } else { 1 };
    for (i, ev) in events.into_iter().enumerate() {
        if req.knobs.disconnect_after > 0
            && i >= first_content + req.knobs.disconnect_after as usize
        {
            return false;
        }
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if s.write_response_body(ev, false).await.is_err() {
            return false;
        }
    }
    s.write_response_body(Bytes::new(), true).await.is_ok()
}

/// Runs the mock until the process is stopped.
pub fn run(listen: &str, threads: usize, knobs: Knobs) {
    use pingora_core::server::configuration::ServerConf;
    use pingora_core::server::Server;
    use pingora_core::services::listening::Service;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: std::env::temp_dir()
            .join(format!("mock-openai-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut svc = Service::new("mock openai".to_string(), MockApp::new(knobs));
    svc.add_tcp(listen);
    server.add_service(svc);
    log::info!("mock OpenAI provider on {listen}");
    server.run_forever();
}

//! Micro-benches of the per-request hot functions: body parse + rewrite, SSE usage scanning,
//! JSON usage extraction, the usage record's JSON line, authentication + RBAC, limit admission.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use model_bridge::routing::rewrite::RequestFields;
use model_bridge::usage::json;
use model_bridge::usage::sse::SseScanner;

fn chat_body(content_len: usize, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "x".repeat(content_len)}
        ]
    }))
    .unwrap_or_default()
}

fn stream_events(chunks: usize) -> Vec<Bytes> {
    let mut v: Vec<Bytes> = (0..chunks)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    v.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":100,\"total_tokens\":110,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"));
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

fn rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    for (name, len) in [("1KiB", 1024), ("100KiB", 100 * 1024)] {
        let body = chat_body(len, true);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("parse+rewrite {name}"), |b| {
            b.iter(|| {
                let f = RequestFields::parse(black_box(&body)).unwrap_or_default();
                black_box(f.rewrite(&body, b"\"mock-1\"", true))
            })
        });
    }
    g.finish();
}

fn sse(c: &mut Criterion) {
    let events = stream_events(100);
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(events.len() as u64));
    for (name, strip) in [("strip usage chunk", true), ("pass through", false)] {
        g.bench_function(format!("100-chunk stream, {name}"), |b| {
            b.iter(|| {
                let mut s = SseScanner::new(strip);
                for e in &events {
                    black_box(s.feed(e.clone()));
                }
                black_box(s.usage)
            })
        });
    }
    g.finish();
}

fn json_usage(c: &mut Criterion) {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0}}}"#;
    c.bench_function("usage from JSON body", |b| {
        b.iter(|| black_box(json::from_body(black_box(body))))
    });
}

/// One usage record as a JSON line: the writer thread's work per request.
fn usage_line(c: &mut Criterion) {
    use model_bridge::usage::record::{UsageRecord, UsageSource};
    let text = |s: &str| Some(std::sync::Arc::<str>::from(s));
    let r = UsageRecord {
        ts_ms: 1_796_278_532_614,
        request_id: "req_ebd2c8bd7db1c8fe5ee30290".into(),
        endpoint: "chat_completions",
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        requested_model: Some("gpt-4o-mini".into()),
        provider: text("openai"),
        provider_model: Some("gpt-4o-mini-2024-07-18".into()),
        stream: false,
        status: 200,
        error_type: None,
        cancelled: false,
        prompt_tokens: 42,
        cached_tokens: 0,
        completion_tokens: 8,
        usage_source: UsageSource::Provider,
        cost_nanousd: Some(11_100),
        cache_savings_nanousd: 0,
        latency_ms: 4.363428,
        ttft_ms: None,
        upstream_latency_ms: Some(0.152868),
        retries: 0,
        experiment: text("bench"),
        variant: text("control"),
        request_bytes: 176,
        response_bytes: 331,
        client_ip: text("10.1.2.3"),
        end_user: None,
        org: text("acme"),
        team: text("search"),
        user: None,
        key_id: text("Q6jAbcbxCt3H"),
        cost_center: text("cc-4711"),
        department: None,
        project: None,
        tags: Vec::new(),
        config_generation: 1,
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("usage record line", |b| {
        b.iter(|| {
            out.clear();
            model_bridge::usage::record_line::write(black_box(&r), &mut out).unwrap_or_default();
            black_box(out.len())
        })
    });
    c.bench_function("usage record line (serde derive)", |b| {
        b.iter(|| {
            out.clear();
            serde_json::to_writer(&mut out, black_box(&r)).unwrap_or_default();
            black_box(out.len())
        })
    });
}

fn auth(c: &mut Criterion) {
    use model_bridge::auth::{self, keys, store::FileKeyStore, store::KeyStore};
    use model_bridge::rbac::Rbac;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = FileKeyStore::open(&dir.path().join("keys.json")).unwrap_or_else(|e| panic!("{e}"));
    let roles =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/roles.toml"))
            .unwrap_or_default();
    let aliases: Vec<String> = (0..50).map(|i| format!("model-{i}")).collect();
    let alias_refs: Vec<&str> = aliases.iter().map(String::as_str).collect();
    let rbac = Rbac::compile(&[("roles.toml".into(), roles)], &alias_refs).unwrap_or_default();
    let mut key = String::new();
    for i in 0..1000 {
        let (k, id, hash) = keys::generate();
        let rec = keys::KeyRecord {
            id,
            hash,
            name: None,
            org: "acme".into(),
            team: Some("ml".into()),
            user: Some(format!("u{i}")),
            roles: vec!["developer".into()],
            cost_center: None,
            models: None,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
        };
        let _ = store.insert(rec);
        key = k;
    }
    let config_keys = Default::default();
    let cache = auth::PrincipalCache::default();
    c.bench_function("auth: verify key + cached principal + RBAC decision", |b| {
        b.iter(|| {
            let rec = auth::authenticate_key(black_box(&key), &config_keys, &store, 1)
                .unwrap_or_else(|_| panic!("auth"));
            let p = cache.get(&rec, &rbac, 1);
            black_box(p.can_invoke("model-7") && p.allows_endpoint(0))
        })
    });
    let rec = store.list(None).pop().unwrap_or_else(|| panic!("no key"));
    c.bench_function("auth: principal computed uncached", |b| {
        b.iter(|| black_box(auth::key_principal(&rec, &rbac, 1)))
    });
}

/// Admission with every limit kind on at org, team and key level plus a cost-center budget
/// (local counters), then settlement: what a limited request adds to the hot path.
fn admission(c: &mut Criterion) {
    use model_bridge::config::Config;
    use model_bridge::limits::{Actual, Limiter, Request};
    let text = r#"
[providers.p]
kind = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
[models."gpt-4o-mini"]
provider = "p"
price = { input_per_1m = 0.15, output_per_1m = 0.60 }
[orgs.acme]
default_cost_center = "eng"
[orgs.acme.limits]
requests_per_second = 1000000000
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrent_requests = 1000000
[orgs.acme.key_limits]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[orgs.acme.teams.ml.limits]
requests_per_minute = 1000000000
concurrent_requests = 1000000
[orgs.acme.cost_centers.eng]
budget = { usd = "1000000", period = "month" }
"#;
    let cfg = Config::parse(text, std::path::Path::new("bench.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = Limiter::new(&cfg);
    let req = Request {
        org: Some("acme"),
        team: Some("ml"),
        key_id: Some("K0123456789a"),
        cost_center: Some("eng"),
        alias: "gpt-4o-mini",
        tokens: 1200,
        worst_cost: 700_000,
        request_id: "req_0",
    };
    c.bench_function(
        "admission: all limit kinds (org, team, key) + budget, admit + settle",
        |b| {
            b.iter(|| {
                let a = limiter
                    .admit_local(&cfg, black_box(&req))
                    .unwrap_or_else(|_| panic!("refused"));
                black_box(a.settle(Actual {
                    tokens: 900,
                    cost: 500_000,
                }))
            })
        },
    );
}

/// Sticky variant assignment: hash(experiment, subject) → cumulative weights.
fn variant_assignment(c: &mut Criterion) {
    use model_bridge::routing::split::{Params, Split, Subject, Variant};
    let variants = ["control", "a", "b"]
        .iter()
        .map(|n| Variant {
            name: std::sync::Arc::from(*n),
            weight: 33,
            targets: Vec::new(),
            params: Params::default(),
        })
        .collect();
    let split = Split::new("exp-2026-11-checkout", Subject::Key, 0, None, variants);
    c.bench_function("routing: variant assignment (3 variants)", |b| {
        b.iter(|| black_box(split.assign(black_box("Kx7QpR2mW9aZ")).name.len()))
    });
}

/// The headers of one proxied request: the client's request head parsed (a typical SDK
/// request), the provider's request head serialized from it, and the client's response head
/// from the provider's (a typical provider response).
fn headers(c: &mut Criterion) {
    use model_bridge::proxy::h1::request;
    use model_bridge::proxy::h1::response::parse_head;
    use model_bridge::proxy::headers::{client_response, upstream_request};
    use model_bridge::routing::Provider;
    let raw: model_bridge::config::raw::RawProvider = toml::from_str(
        r#"kind = "openai_compatible"
base_url = "https://api.example.com/v1"
api_key = "sk-bench""#,
    )
    .unwrap();
    let provider = Provider::from_raw("p", &raw).unwrap();
    let client: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway.example.com\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate\r\nAuthorization: Bearer mbk_0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: 180\r\nUser-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.0\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Retry-Count: 0\r\nConnection: keep-alive\r\n\r\n";
    c.bench_function("client request head parse", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(client));
            black_box(request::parse(&mut buf).unwrap().unwrap())
        })
    });
    let req = request::parse(&mut bytes::BytesMut::from(client))
        .unwrap()
        .unwrap();
    c.bench_function("upstream request head", |b| {
        b.iter(|| {
            black_box(upstream_request(
                black_box(&req).fields().iter(),
                &provider,
                "POST",
                "/v1/chat/completions",
                180,
                "req_0123456789abcdef01234567",
                None,
            ))
        })
    });
    // A typical OpenAI response head, as it arrives.
    let wire: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Wed, 02 Dec 2026 17:15:44 GMT\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nopenai-organization: org-bench\r\nopenai-processing-ms: 412\r\nopenai-version: 2020-10-01\r\nx-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\nx-request-id: req_provider\r\ncf-ray: 8f0c1d2e3a4b5c6d-AMS\r\n\r\n";
    c.bench_function("provider response head parse", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(wire));
            black_box(parse_head(&mut buf).unwrap().unwrap())
        })
    });
    let up = parse_head(&mut bytes::BytesMut::from(wire))
        .unwrap()
        .unwrap();
    // With every feature on: six rate-limit headers and the experiment's variant.
    let mut added = model_bridge::header_list::HeaderList::default();
    for name in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    ] {
        added.push_int(name, 1_000_000u64);
    }
    added.push("x-ratelimit-reset-requests", "6m0s");
    added.push("x-ratelimit-reset-tokens", "20ms");
    added.push("x-model-bridge-variant", "control");
    c.bench_function("client response header", |b| {
        b.iter(|| {
            black_box(client_response(
                black_box(&up),
                true,
                "req_0123456789abcdef01234567",
                "p",
                black_box(&added),
            ))
        })
    });
}

criterion_group!(
    benches,
    rewrite,
    sse,
    json_usage,
    usage_line,
    auth,
    admission,
    variant_assignment,
    headers
);
criterion_main!(benches);

//! The proxy core through its real HTTP surface: routing, rewrite, streaming usage, errors,
//! bodies of every size and framing, h2c, timeouts and cancellation.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json error body");
    (status, v)
}

#[tokio::test]
async fn non_stream_chat_is_routed_rewritten_and_accounted() {
    let g = Gateway::start();
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false)).unwrap();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", "Bearer caller-key-must-not-leak")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-mock-model"), "mock-1");
    assert_eq!(header(&r, "x-model-bridge-provider"), "mock");
    assert_eq!(
        header(&r, "x-mock-authorization"),
        format!("Bearer {PROVIDER_KEY}"),
        "the provider key is sent, the caller's is not"
    );
    let rid = header(&r, "x-request-id").to_string();
    assert!(rid.starts_with("req_"));
    assert_eq!(header(&r, "x-mock-request-id"), rid);
    // Byte-exact forwarding: only the model value changed.
    let expected = String::from_utf8(body)
        .unwrap()
        .replacen("\"gpt-4o-mini\"", "\"mock-1\"", 1);
    assert_eq!(header(&r, "x-mock-body-fnv"), fnv1a(expected.as_bytes()));
    let (p, c, cached) = mock_usage(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], p);
    let rec = g.record(&rid);
    assert_eq!(rec["prompt_tokens"], p);
    assert_eq!(rec["completion_tokens"], c);
    assert_eq!(rec["cached_tokens"], cached);
    assert_eq!(rec["usage_source"], "provider");
    assert_eq!(rec["requested_model"], "gpt-4o-mini");
    assert_eq!(rec["provider_model"], "mock-1");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["cancelled"], false);
    assert!(rec["upstream_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(!g.log_text().contains(PROVIDER_KEY));
    assert!(!g.log_text().contains("caller-key-must-not-leak"));
}

async fn stream_text(r: reqwest::Response) -> String {
    let mut s = r.bytes_stream();
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn stream_usage_is_exact_with_and_without_client_include_usage() {
    let g = Gateway::start();
    for client_asks in [false, true] {
        let mut body = chat("gpt-4o-mini", true);
        if client_asks {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .header("x-mock-chunks", "5")
            .header("x-mock-cached-tokens", "3")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-mock-include-usage"),
            "true",
            "gateway injects include_usage"
        );
        let rid = header(&r, "x-request-id").to_string();
        let (p, c, cached) = mock_usage(&r);
        let text = stream_text(r).await;
        let usage_chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter(|v| !v["usage"].is_null())
            .collect();
        if client_asks {
            assert_eq!(usage_chunks.len(), 1, "{text}");
            assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], p);
        } else {
            assert!(
                usage_chunks.is_empty(),
                "usage chunk must be removed: {text}"
            );
        }
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(text.matches("\"content\":\"tok").count(), 5);
        let rec = g.record(&rid);
        assert_eq!(
            (
                rec["prompt_tokens"].as_u64(),
                rec["completion_tokens"].as_u64(),
                rec["cached_tokens"].as_u64()
            ),
            (Some(p), Some(c), Some(cached))
        );
        assert_eq!(rec["stream"], true);
        assert!(rec["ttft_ms"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn completions_embeddings_responses_and_models() {
    let g = Gateway::start();
    let c = client();
    let r = c
        .post(g.url("/v1/completions"))
        .json(&json!({"model": "gpt-4o-mini", "prompt": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let (p, comp, _) = mock_usage(&r);
    let text = stream_text(r).await;
    assert!(!text.contains("\"usage\":{"), "{text}");
    let rec = g.record(&rid);
    assert_eq!(rec["endpoint"], "completions");
    assert_eq!(
        (
            rec["prompt_tokens"].as_u64(),
            rec["completion_tokens"].as_u64()
        ),
        (Some(p), Some(comp))
    );

    let r = c
        .post(g.url("/v1/embeddings"))
        .json(&json!({"model": "text-embedding-3-small", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-mock-model"), "mock-embed");
    let rid = header(&r, "x-request-id").to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(g.record(&rid)["prompt_tokens"], v["usage"]["prompt_tokens"]);

    for stream in [false, true] {
        let r = c
            .post(g.url("/v1/responses"))
            .json(&json!({"model": "gpt-4o-mini", "input": "hi", "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&r, "x-mock-include-usage"),
            "false",
            "responses API needs no injection"
        );
        let rid = header(&r, "x-request-id").to_string();
        let (p, comp, _) = mock_usage(&r);
        let _ = stream_text(r).await;
        let rec = g.record(&rid);
        assert_eq!(rec["endpoint"], "responses");
        assert_eq!(
            (
                rec["prompt_tokens"].as_u64(),
                rec["completion_tokens"].as_u64()
            ),
            (Some(p), Some(comp))
        );
    }

    let v: Value = c
        .get(g.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(v["object"], "list");
    assert_eq!(
        ids,
        [
            "dead-model",
            "gpt-4o-mini",
            "same-name",
            "text-embedding-3-small"
        ]
    );
    let r = c.get(g.url("/v1/models/gpt-4o-mini")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(g.url("/v1/models/nope")).send().await.unwrap();
    assert_eq!(error_of(r).await.1["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn gateway_errors_are_openai_shaped() {
    let g = Gateway::start_with(&[], "");
    let c = client();
    let post = |body: Vec<u8>| c.post(g.url("/v1/chat/completions")).body(body).send();

    let (s, v) = error_of(post(b"{\"model\":".to_vec()).await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (s, v) = error_of(post(b"{\"messages\":[]}".to_vec()).await.unwrap()).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("model")));
    let (s, v) = error_of(post(b"{\"model\":\"nope\"}".to_vec()).await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, v) = error_of(
        post(br#"{"model":"gpt-4o-mini","stream":"yes"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("stream")));

    let big = vec![b' '; 9 * 1024 * 1024];
    let (s, v) = error_of(post(big).await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );

    let (s, v) = error_of(
        post(serde_json::to_vec(&chat("dead-model", false)).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("upstream_unreachable"))
    );

    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-latency-ms", "3000")
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let (s, v) = error_of(r).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    assert_eq!(g.record(&rid)["error_type"], "upstream_timeout");

    // Provider errors pass through with their status and body.
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-status", "429")
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    let (s, v) = error_of(r).await;
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (429, Some("mock error 429"))
    );

    let r = c.get(g.url("/nope")).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
    let r = c.get(g.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 405);
    // Every request produced a record, including the refused ones.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(g.records().len() >= 10);
}

async fn body_roundtrip(c: &reqwest::Client, g: &Gateway, size: usize, chunked: bool) {
    let filler = "x".repeat(size);
    let body = serde_json::to_vec(
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": filler}]}),
    )
    .unwrap();
    let expected =
        String::from_utf8(body.clone())
            .unwrap()
            .replacen("\"gpt-4o-mini\"", "\"mock-1\"", 1);
    let req = c.post(g.url("/v1/chat/completions"));
    let req = if chunked {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(7919).map(|p| Ok(p.to_vec())).collect();
        req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
    } else {
        req.body(body.clone())
    };
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "size {size} chunked {chunked}");
    assert_eq!(header(&r, "x-mock-body-bytes"), expected.len().to_string());
    assert_eq!(header(&r, "x-mock-body-fnv"), fnv1a(expected.as_bytes()));
    let rid = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await.unwrap();
    assert_eq!(g.record(&rid)["request_bytes"], body.len());
}

#[tokio::test]
async fn bodies_of_every_size_h1_and_h2c_length_and_chunked() {
    let g = Gateway::start();
    for (name, c) in [("h1", client()), ("h2c", h2c_client())] {
        for size in [100, 100 * 1024, 5 * 1024 * 1024] {
            for chunked in [false, true] {
                body_roundtrip(&c, &g, size, chunked).await;
            }
        }
        let r = c.get(g.url("/v1/models")).send().await.unwrap();
        let want = if name == "h2c" {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(r.version(), want);
    }
}

#[tokio::test]
async fn h2c_streams() {
    let g = Gateway::start();
    let r = h2c_client()
        .post(g.url("/v1/chat/completions"))
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let rid = header(&r, "x-request-id").to_string();
    let text = stream_text(r).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(g.record(&rid)["usage_source"], "provider");
}

fn raw_exchange(port: u16, head: &str, body: &[u8], expect_continue: bool) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    if expect_continue {
        let n = s.read(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_string();
        if !got.starts_with("HTTP/1.1 100") {
            return got;
        }
    }
    s.write_all(body).unwrap();
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn expect_100_continue_and_early_413() {
    let g = Gateway::start();
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    let resp = raw_exchange(g.port, &head, &body, true);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\nexpect: 100-continue\r\n\r\n";
    let resp = raw_exchange(g.port, head, b"", true);
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "no 100 Continue for a body over the limit: {resp}"
    );
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let g = Gateway::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false)).unwrap();
    for _ in 0..3 {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        // Read one whole response: header, then Content-Length bytes.
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed between keep-alive requests");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if got.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200"));
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn passthrough_streams_other_v1_paths() {
    let g = Gateway::start();
    let c = client();
    let r = c.get(g.url("/v1/files?limit=2")).send().await.unwrap();
    assert_eq!(header(&r, "x-mock-query"), "limit=2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("GET"), Some("/v1/files"))
    );
    let big = vec![7u8; 3 * 1024 * 1024];
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(65536).map(|p| Ok(p.to_vec())).collect();
    let r = c
        .post(g.url("/v1/files"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_bytes"], big.len());
    assert_eq!(v["fnv"], fnv1a(&big));
    let rec = g.record(&rid);
    assert_eq!(rec["endpoint"], "passthrough");
    assert_eq!(rec["request_bytes"], big.len());
    let r = c.get(g.url("/v1/../admin")).send().await.unwrap();
    assert!(r.status().is_client_error());
}

/// A provider that reports no usage still bills: the record counts the prompt and the answer's
/// text, marked estimated (it used to record zero tokens and no cost).
#[tokio::test]
async fn a_provider_without_usage_is_still_counted() {
    let g = Gateway::start();
    for stream in [false, true] {
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .header("x-mock-no-usage", "1")
            .json(&chat("gpt-4o-mini", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let rid = header(&r, "x-request-id").to_string();
        let _ = r.bytes().await.unwrap();
        let rec = g.record(&rid);
        assert_eq!(rec["usage_source"], "estimated", "{rec}");
        assert!(rec["prompt_tokens"].as_u64().unwrap() > 0, "{rec}");
        // Eight chunks "tok0 " … "tok7 ": at least one token each.
        let c = rec["completion_tokens"].as_u64().unwrap();
        assert!((8..=40).contains(&c), "stream {stream}: {rec}");
        assert!(rec["cost_nanousd"].as_i64().unwrap() > 0, "{rec}");
    }
}

#[test]
fn client_disconnect_mid_stream_records_cancelled_usage() {
    let g = Gateway::start();
    let rid = abandon_stream(&g, None);
    let rec = g.record(&rid);
    assert_eq!(rec["cancelled"], true, "{rec}");
    assert_eq!(rec["usage_source"], "estimated");
    let c = rec["completion_tokens"].as_u64().unwrap();
    assert!((3..80).contains(&c), "tokens streamed so far: {c}");
    // The provider bills the prompt it received: counted, not dropped.
    let p = rec["prompt_tokens"].as_u64().unwrap();
    assert!(
        (5..40).contains(&p),
        "prompt tokens of one short message: {p}"
    );
    assert!(rec["cost_nanousd"].as_i64().unwrap() > 0);
    assert!(
        rec["latency_ms"].as_f64().unwrap() < 3000.0,
        "upstream read stopped early"
    );
}

#[tokio::test]
async fn upstream_failures_mid_stream_and_idle_timeout() {
    let g = Gateway::start();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-disconnect-after", "2")
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let mut s = r.bytes_stream();
    let mut failed = false;
    while let Some(b) = s.next().await {
        if b.is_err() {
            failed = true;
        }
    }
    assert!(
        failed,
        "the client must see a broken stream, not a clean end"
    );
    let rec = g.record(&rid);
    assert_eq!(rec["error_type"], "upstream_unreachable");
    assert_eq!(rec["usage_source"], "estimated");
    // "tok0 tok1 " relayed: counted with the tokenizer (or bytes / 4 before it has loaded).
    let c = rec["completion_tokens"].as_u64().unwrap();
    assert!((2..=8).contains(&c), "{rec}");
    assert!(rec["prompt_tokens"].as_u64().unwrap() > 0, "{rec}");

    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-chunk-interval-ms", "1500")
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await;
    assert_eq!(g.record(&rid)["error_type"], "upstream_timeout");
}

#[tokio::test]
async fn metrics_and_health() {
    let g = Gateway::start();
    let c = client();
    let r = c
        .post(g.url("/v1/chat/completions"))
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await;
    // The request is counted when it finishes, just after its last byte went out.
    let want = r#"model_bridge_requests_total{endpoint="chat_completions",model="gpt-4o-mini",provider="mock",status_class="2xx"} 1"#;
    let mut m = String::new();
    for _ in 0..100 {
        m = g.metrics().await;
        if m.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in [
        "model_bridge_requests_total",
        "model_bridge_request_duration_seconds",
        "model_bridge_time_to_first_token_seconds",
        "model_bridge_upstream_duration_seconds",
        "model_bridge_tokens_total",
        "model_bridge_inflight_requests",
        "model_bridge_usage_sink_queue_depth",
    ] {
        assert!(
            m.contains(name),
            "{name} missing; the request: {}",
            g.record(&rid)
        );
    }
    assert!(m.contains(want), "{m}");
    assert_eq!(
        c.get(g.ops_url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(g.ops_url("/readyz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn azure_provider_uses_deployment_path_api_version_and_api_key() {
    let mock = Mock::start(&[]);
    let extra = format!(
        r#"
[providers.azure]
kind = "azure"
base_url = "http://127.0.0.1:{}"
api_key = "azure-key-123"
api_version = "2024-06-01"

[models."azure-gpt"]
provider = "azure"
model = "dep-1"
"#,
        mock.port
    );
    let g = Gateway::start_with(&[], &extra);
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("api-key", "caller-azure-key")
        .json(&json!({"model": "azure-gpt", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-mock-path"),
        "/openai/deployments/dep-1/chat/completions"
    );
    assert_eq!(header(&r, "x-mock-query"), "api-version=2024-06-01");
    assert_eq!(header(&r, "x-mock-authorization"), "azure-key-123");
    let rid = header(&r, "x-request-id").to_string();
    let (p, c, _) = mock_usage(&r);
    let _ = r.bytes().await.unwrap();
    let rec = g.record(&rid);
    assert_eq!(
        (
            rec["prompt_tokens"].as_u64(),
            rec["completion_tokens"].as_u64()
        ),
        (Some(p), Some(c))
    );
    assert_eq!(rec["provider"], "azure");
}

#[tokio::test]
async fn total_timeout_bounds_a_slow_stream_and_h2c_get_passes_through() {
    let mock = Mock::start(&[]);
    let extra = format!(
        r#"
[providers.slow]
kind = "openai_compatible"
base_url = "{}"
idle_timeout_ms = 1000
total_timeout_ms = 700

[models."slow-model"]
provider = "slow"
"#,
        mock.url()
    );
    let g = Gateway::start_with(&[], &extra);
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-chunks", "20")
        .header("x-mock-chunk-interval-ms", "100")
        .json(&chat("slow-model", true))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await;
    let rec = g.record(&rid);
    assert_eq!(rec["error_type"], "upstream_timeout");
    let ms = rec["latency_ms"].as_f64().unwrap();
    assert!(
        (600.0..2000.0).contains(&ms),
        "stopped at the total deadline: {ms}"
    );

    let r = h2c_client()
        .get(g.url("/v1/files/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(header(&r, "x-mock-path"), "/v1/files/abc");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["method"].as_str(), v["body_bytes"].as_u64()),
        (Some("GET"), Some(0))
    );
}

#[tokio::test]
async fn cost_is_exact_and_unpriced_models_are_unknown_not_zero() {
    let g = Gateway::start();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-cached-tokens", "3")
        .header("x-mock-chunks", "11")
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let (p, c, cached) = mock_usage(&r);
    let _ = r.bytes().await.unwrap();
    // 0.15 / 0.075 / 0.60 USD per 1M tokens = 150 / 75 / 600 nano-USD per token.
    let expected = (p - cached) * 150 + cached * 75 + c * 600;
    assert_eq!(g.record(&rid)["cost_nanousd"], expected);

    let r = client()
        .post(g.url("/v1/chat/completions"))
        .json(&chat("same-name", false))
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await.unwrap();
    let rec = g.record(&rid);
    assert!(
        rec["cost_nanousd"].is_null(),
        "unpriced is unknown, not 0: {rec}"
    );
    assert!(rec["prompt_tokens"].as_u64().unwrap() > 0);
    let m = g.metrics().await;
    assert!(
        m.contains(r#"model_bridge_unpriced_requests_total{model="same-name"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"model_bridge_cost_usd_total{model="gpt-4o-mini"}"#));

    // Requests that never reached a model (unknown model, bad body) or that the provider
    // refused cost nothing: they are not "unpriced", and are labelled with their endpoint.
    for (body, status) in [
        (chat("no-such-model", false), 404),
        (json!({"messages": []}), 400),
    ] {
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let rec = g.record(header(&r, "x-request-id"));
        assert_eq!(rec["cost_nanousd"], 0, "{rec}");
        assert_eq!(rec["endpoint"], "chat_completions", "{rec}");
    }
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-status", "503")
        .json(&chat("same-name", false))
        .send()
        .await
        .unwrap();
    let rec = g.record(header(&r, "x-request-id"));
    assert_eq!(
        rec["cost_nanousd"], 0,
        "a refused request is not unpriced: {rec}"
    );
    let m = g.metrics().await;
    assert!(
        m.contains(r#"model_bridge_unpriced_requests_total{model="same-name"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn head_passthrough_ends_without_a_body_and_the_next_request_works() {
    let g = Gateway::start();
    let c = client();
    let mut heads = Vec::new();
    for _ in 0..3 {
        let r = c.head(g.url("/v1/files")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        heads.push(header(&r, "x-request-id").to_string());
        assert!(r.bytes().await.unwrap().is_empty());
        let r = c.get(g.url("/v1/files")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["method"], "GET");
    }
    for id in &heads {
        let rec = g.record(id);
        assert_eq!(
            (&rec["method"], &rec["status"], &rec["cancelled"]),
            (&json!("HEAD"), &json!(200), &json!(false)),
            "{rec}"
        );
    }
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn latency_mode_serves_everything_and_sleeps_once_traffic_stops() {
    let g = Gateway::start_edited(&[], "", |t| {
        t.replacen(
            "threads = 2",
            "threads = 2\nwork_stealing = false\nbusy_poll_us = 2000",
            1,
        )
    });
    let c = client();
    let ids = g.chats(&c, 40).await;
    let parallel = futures_util::future::join_all((0..16).map(|_| {
        c.post(g.url("/v1/chat/completions"))
            .json(&chat("gpt-4o-mini", false))
            .send()
    }))
    .await;
    assert!(parallel.iter().all(|r| r.as_ref().unwrap().status() == 200));
    for id in &ids {
        assert_eq!(g.record(id)["status"], 200);
    }
    // Spinning stops with the traffic: over a quiet second the process stays nearly idle
    // (a worker that kept polling would burn the whole second).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_seconds(g.proc.0.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(g.proc.0.id()) - before;
    assert!(used < 0.3, "idle gateway used {used:.2} s of CPU in 1 s");
}

/// Pooled provider connections that died while idle (the provider restarted) are never used
/// for a request: the next requests go out on fresh connections and succeed, every one, with
/// no retry spent on a dead connection.
#[tokio::test]
async fn provider_restart_leaves_no_dead_pooled_connection_in_the_way() {
    let mut g = Gateway::start();
    let c = client();
    let url = g.url("/v1/chat/completions");
    let burst = |c: &reqwest::Client| {
        futures_util::future::join_all(
            (0..8).map(|_| c.post(&url).json(&chat("gpt-4o-mini", false)).send()),
        )
    };
    // Several connections in the pool.
    for r in burst(&c).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let port = g.mock.port;
    let _ = g.mock.proc.0.kill();
    let _ = g.mock.proc.0.wait();
    g.mock = Mock::start_on(port, &[]);
    for round in 0..3 {
        for r in burst(&c).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 200, "round {round}: {:?}", r.text().await);
        }
    }
    let retries = g
        .metric("model_bridge_retries_total{provider=\"mock\"}")
        .await;
    assert_eq!(retries, 0.0, "a dead pooled connection was tried");
}

//! Hostile clients and hostile providers, through the real HTTP surface: what an attacker sends
//! (unparseable requests carrying credentials, encoded dot segments, pipelined bytes) and what a
//! broken or malicious provider does (endless 1xx answers), and a client that stops reading.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SECRET: &str = "mbk_ABCDEFGHIJKL_0123456789abcdefghij0123456789abcdef";

/// The `x-request-id` of a raw HTTP response.
fn request_id_of(response: &str) -> &str {
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("x-request-id")
        .trim()
}

fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Requests pingora cannot parse (a raw 0xFF in the path, a NUL in a header) carry a key: the
/// key never reaches the log of either plane (the ops plane used to log the raw bytes at ERROR).
#[test]
fn unparseable_requests_never_log_their_credentials() {
    let g = Gateway::start();
    for port in [g.ops, g.port] {
        let mut bad = b"GET /metrics\xff HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ".to_vec();
        bad.extend_from_slice(SECRET.as_bytes());
        bad.extend_from_slice(b"\r\n\r\n");
        raw(port, &bad);
        let nul =
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\napi-key: {SECRET}\r\n\r\n");
        raw(port, nul.as_bytes());
    }
    // Both planes still answer; the log never saw the secret.
    let ok = raw(
        g.ops,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let log = g.log_text();
    assert!(!log.contains("0123456789abcdefghij"), "{log}");
}

/// Percent-encoded dot segments never reach a provider; an encoded metered path is metered.
/// (Sent raw: HTTP client libraries resolve `%2e%2e` themselves before sending.)
#[test]
fn encoded_paths_are_normalised_or_refused() {
    let g = Gateway::start();
    for p in [
        "/v1/%2e%2e/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/.%2e/admin",
        "/v1/files%2f..%2fadmin",
        "/v1/files/%2e%2e",
        "/v1//chat/completions",
    ] {
        let out = raw(
            g.port,
            format!("GET {p} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        assert!(out.starts_with("HTTP/1.1 400"), "{p}: {out}");
        assert!(out.contains("invalid_request_error"), "{p}: {out}");
        assert!(
            !out.contains("x-mock-path"),
            "{p} reached the provider: {out}"
        );
    }
    // `%63hat` is `chat`: served (and recorded) as chat completions, not as passthrough.
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false)).unwrap();
    let out = raw(
        g.port,
        &[
            format!(
                "POST /v1/%63hat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            &body,
        ]
        .concat(),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-mock-path: /v1/chat/completions"), "{out}");
    let rid = request_id_of(&out);
    let rec = g.record(rid);
    assert_eq!(rec["endpoint"], "chat_completions");
    assert!(rec["cost_nanousd"].as_i64().unwrap() > 0);
}

/// A provider configured without a key (a local vLLM or Ollama) never gets the caller's key.
#[tokio::test]
async fn a_keyless_provider_never_sees_the_callers_credentials() {
    let g = Gateway::start_edited(&[], "", |t| {
        let mock = t
            .lines()
            .find_map(|l| l.strip_prefix("base_url = \"http://127.0.0.1:"))
            .map(|rest| rest.split('/').next().unwrap().to_string())
            .unwrap();
        format!(
            "{t}\n[providers.local]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:{mock}/v1\"\n\n[models.\"local-model\"]\nprovider = \"local\"\n"
        )
    });
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", "Bearer caller-secret-1")
        .header("api-key", "caller-secret-2")
        .header("x-api-key", "caller-secret-3")
        .json(&chat("local-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-mock-authorization"),
        "",
        "no credential at all"
    );
    let mock_saw = format!("{:?}", r.headers());
    assert!(!mock_saw.contains("caller-secret"), "{mock_saw}");
    // HTTP/1 names arrive in any case: the credentials are still never forwarded.
    let body = serde_json::to_vec(&chat("local-model", false)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAUTHORIZATION: Bearer caller-secret-4\r\nApi-Key: caller-secret-5\r\nX-Api-KEY: caller-secret-6\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let out = raw(g.port, &[head.as_bytes(), &body].concat());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("caller-secret"), "{out}");
}

/// Requests whose framing two HTTP implementations could read differently (the makings of
/// request smuggling) are refused with 400 before any provider sees them, and the connection
/// is closed, so nothing after them is served.
#[test]
fn ambiguous_request_framing_is_refused_and_the_connection_closed() {
    let g = Gateway::start();
    let smuggled = "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    for framing in [
        "content-length: 4\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
        "transfer-encoding: gzip, chunked\r\n",
        "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
        "content-length: 4\r\ncontent-length: 5\r\n",
        "content-length: +4\r\n",
        "Transfer-Encoding : chunked\r\n",
        "host: y\r\n",
    ] {
        let wire = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-chunks: 1\r\n{framing}\r\n0\r\n\r\n{smuggled}"
        );
        let out = raw(g.port, wire.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400"), "{framing}: {out}");
        assert!(out.contains("malformed_request"), "{framing}: {out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{framing}: {out}");
    }
    // A chunked body alone is read, and the request after it served on the same connection.
    let body = serde_json::to_vec(&chat("gpt-4o-mini", false)).unwrap();
    let wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        body.len(),
        String::from_utf8_lossy(&body)
    );
    let out = raw(g.port, wire.as_bytes());
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert!(out.contains("\"object\":\"list\""), "{out}");
}

/// Bytes after the request body (a stray CRLF, RFC 9112 §2.2, or a pipelined next request)
/// neither cut a live stream nor get lost: the stream completes and the next request is served.
#[test]
fn bytes_after_the_request_keep_the_stream_and_pipelined_requests_are_served() {
    let g = Gateway::start();
    let body = serde_json::to_vec(&chat("gpt-4o-mini", true)).unwrap();
    let one = |extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-chunks: 20\r\nx-mock-chunk-interval-ms: 10\r\ncontent-length: {}\r\n{extra}\r\n{}",
            body.len(),
            String::from_utf8_lossy(&body)
        )
    };
    let mut wire = one("");
    wire.push_str("\r\n"); // a stray CRLF while the stream is live
    wire.push_str(&one("connection: close\r\n"));
    let out = raw(g.port, wire.as_bytes());
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(out.matches("data: [DONE]").count(), 2, "{out}");
    let ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("x-request-id: "))
        .map(str::trim)
        .collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let rec = g.record(id);
        assert_eq!(rec["cancelled"], false, "{rec}");
        assert_eq!(rec["completion_tokens"], 20, "{rec}");
    }
}

/// A provider that answers `100 Continue` forever is cut off by the first-byte timeout.
#[tokio::test]
async fn an_endless_1xx_flood_times_out() {
    let flood = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = flood.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in flood.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                // The hostile provider's pace (the behaviour under test, not a synchronisation):
                // one answer every 100 ms, well inside the 700 ms first-byte timeout each time,
                // so only a deadline across all of them ends the request.
                while conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    let g = Gateway::start_with(
        &[],
        &format!(
            "\n[providers.flood]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nfirst_byte_timeout_ms = 700\ntotal_timeout_ms = 5000\n\n[models.\"flood-model\"]\nprovider = \"flood\"\n"
        ),
    );
    let started = Instant::now();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(g.url("/v1/chat/completions"))
        .json(&chat("flood-model", false))
        .send()
        .await
        .expect("the gateway answers instead of hanging");
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(started.elapsed() < Duration::from_secs(20));
    let rec = g.record(header(&r, "x-request-id"));
    assert!(
        rec["error_type"].as_str().unwrap().starts_with("upstream"),
        "{rec}"
    );
}

/// A client that stops reading a stream is cut off after the client write timeout; its record
/// says cancelled (the write failed) and the provider connection is let go.
#[test]
fn a_client_that_stops_reading_is_cut_off_and_recorded_cancelled() {
    let g = Gateway::start_edited(&[], "", |t| {
        t.replacen(
            "drain_timeout_ms = 10000",
            "drain_timeout_ms = 10000\nclient_write_timeout_ms = 300",
            1,
        )
        // The mock takes a while to build a stream this long.
        .replacen("idle_timeout_ms = 1000", "idle_timeout_ms = 20000", 1)
    });
    let body = serde_json::to_vec(&chat("gpt-4o-mini", true)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Never read past the header: ~8 MB of stream fill the socket buffers and the gateway's
    // writes stall.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-chunks: 60000\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut first = [0u8; 2048];
    let n = s.read(&mut first).unwrap();
    let text = String::from_utf8_lossy(&first[..n]).to_string();
    let rid = request_id_of(&text).to_string();
    // The record appears once the gateway gave up writing (it waits for it, with a deadline).
    let rec = g.record(&rid);
    assert_eq!(rec["cancelled"], true, "{rec}");
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    assert!(rec["latency_ms"].as_f64().unwrap() < 8000.0, "{rec}");
    drop(s);
}

/// An HTTP/1.0 client gets a stream delimited by closing the connection, never chunked.
#[test]
fn http10_streams_are_close_delimited() {
    let g = Gateway::start();
    let body = serde_json::to_vec(&chat("gpt-4o-mini", true)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let out = raw(g.port, &[head.as_bytes(), &body].concat());
    let (h, b) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        h.starts_with("HTTP/1.1 200") || h.starts_with("HTTP/1.0 200"),
        "{h}"
    );
    assert!(!h.to_ascii_lowercase().contains("transfer-encoding"), "{h}");
    assert!(h.to_ascii_lowercase().contains("connection: close"), "{h}");
    assert!(b.starts_with("data: "), "no chunk-size lines: {b}");
    assert!(b.trim_end().ends_with("data: [DONE]"), "{b}");
}

/// Header sections a server will not take are refused with 431 and an OpenAI-shaped body; a
/// huge model name is not echoed back whole, nor recorded whole.
#[test]
fn oversized_headers_get_431_and_huge_model_names_are_truncated() {
    let g = Gateway::start();
    let many: String = (0..1000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "a".repeat(2 << 20));
    for extra in [many, big] {
        let out = raw(
            g.port,
            format!("GET /v1/models HTTP/1.1\r\nhost: x\r\n{extra}\r\n").as_bytes(),
        );
        assert!(
            out.starts_with("HTTP/1.1 431"),
            "{}",
            &out[..out.len().min(200)]
        );
        assert!(out.contains("request_header_fields_too_large"), "{out}");
    }
    let name = "m".repeat(5 << 20);
    let body = serde_json::to_vec(&serde_json::json!({"model": name, "messages": []})).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let out = raw(g.port, &[head.as_bytes(), &body].concat());
    assert!(
        out.starts_with("HTTP/1.1 404"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(
        out.len() < 4096,
        "the name is echoed whole: {} bytes",
        out.len()
    );
    let rid = request_id_of(&out);
    let rec = g.record(rid);
    assert!(rec["requested_model"].as_str().unwrap().len() < 1024);
}

/// With a usage queue far too small for the load, nothing is lost: every answered request has
/// exactly one record, requests beyond what the sink can take are refused with 503 before a
/// provider sees them, and `lost` stays 0.
#[tokio::test]
async fn a_full_usage_queue_loses_no_record() {
    let g = Gateway::start_edited(&[], "", |t| {
        t.replacen(
            "flush_interval_ms = 20",
            "flush_interval_ms = 20\nqueue_capacity = 1",
            1,
        )
    });
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let round = futures_util::future::join_all((0..40).map(|_| {
            c.post(g.url("/v1/chat/completions"))
                .json(&chat("gpt-4o-mini", false))
                .send()
        }))
        .await;
        for r in round {
            let r = r.unwrap();
            let status = r.status().as_u16();
            assert!(status == 200 || status == 503, "{status}");
            if status == 503 {
                assert_eq!(header(&r, "retry-after"), "1");
                assert_eq!(header(&r, "x-mock-path"), "", "refused before the provider");
            }
            ids.push((header(&r, "x-request-id").to_string(), status));
        }
    }
    for (id, status) in &ids {
        assert_eq!(g.record(id)["status"], *status);
    }
    let records = g.records();
    assert_eq!(records.len(), ids.len(), "exactly one record per request");
    assert_eq!(
        g.metric(r#"model_bridge_usage_sink_rows_total{outcome="lost"}"#)
            .await,
        0.0
    );
}

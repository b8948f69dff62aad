//! Traces and structured logs: a request's trace reaches an OTLP/HTTP receiver (decoded with
//! the official protobuf definitions, `opentelemetry-proto`) with its span tree and GenAI
//! attributes, the provider receives the same trace, the client gets it back; JSON log lines
//! parse and carry the request's id and trace id, and no secret.

mod common;

use common::{chat, client, eventually, Gateway, PROVIDER_KEY};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    // Keep-alive: one request after another on the connection.
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        assert!(line.starts_with("POST /v1/traces "), "{line}");
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            conn.read_line(&mut h).await.unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap();
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                            if k.eq_ignore_ascii_case("content-type") {
                                assert_eq!(v.trim(), "application/x-protobuf");
                            }
                        }
                        let mut body = vec![0; len];
                        conn.read_exact(&mut body).await.unwrap();
                        let req = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP");
                        for rs in req.resource_spans {
                            for ss in rs.scope_spans {
                                store.lock().unwrap().extend(ss.spans);
                            }
                        }
                        let _ = conn
                            .get_mut()
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                    }
                });
            }
        });
        Receiver { port, spans }
    }

    /// The spans of `trace` once `n` of them have arrived.
    async fn trace(&self, trace: &[u8], n: usize) -> Vec<Span> {
        eventually(Duration::from_secs(20), || async {
            let got: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!(
                    "{} of {n} spans arrived: {:?}",
                    got.len(),
                    got.iter().map(|s| &s.name).collect::<Vec<_>>()
                ))
            }
        })
        .await
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(AnyValue::StringValue(v)) => v.clone(),
        other => panic!("{}: {key} = {other:?}", s.name),
    }
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(AnyValue::IntValue(v)) => *v,
        other => panic!("{}: {key} = {other:?}", s.name),
    }
}

/// (trace id, span id, flags) of a `traceparent` value.
fn parts(tp: &str) -> (Vec<u8>, Vec<u8>, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (
        hex::decode(p[1]).unwrap(),
        hex::decode(p[2]).unwrap(),
        p[3].to_string(),
    )
}

fn gateway(receiver: &Receiver) -> Gateway {
    let tracing = format!(
        "\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\nsample_ratio = 1.0\nexport_interval_ms = 100\n",
        receiver.port
    );
    Gateway::start_edited(&[], &tracing, |t| {
        t.replacen(
            "[server]\n",
            "[server]\nlog_format = \"json\"\naccess_log = true\n",
            1,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_trace_reaches_otlp_with_genai_attributes_and_the_provider_shares_it() {
    let receiver = Receiver::start().await;
    let g = gateway(&receiver);
    let c = client();
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";

    // Unsampled by the client: propagated, not recorded.
    let unsampled = "11111111111111111111111111111111";
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{unsampled}-{client_parent}-00"))
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    let (t, _, flags) = parts(common::header(&r, "traceparent"));
    assert_eq!(hex::encode(t), unsampled);
    assert_eq!(flags, "00");
    let _ = r.bytes().await;

    let r = c
        .post(g.url("/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{client_trace}-{client_parent}-01"),
        )
        .header("tracestate", "vendor=abc")
        .header(
            "authorization",
            "Bearer sk-caller-secret-must-not-be-logged-0001",
        )
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = common::header(&r, "x-request-id").to_string();
    // The client gets the gateway's span back; the provider got its attempt span as parent.
    let (echo_trace, server_span, _) = parts(common::header(&r, "traceparent"));
    let (up_trace, attempt_span, up_flags) = parts(common::header(&r, "x-mock-traceparent"));
    assert_eq!(hex::encode(&echo_trace), client_trace);
    assert_eq!(
        hex::encode(&up_trace),
        client_trace,
        "the provider shares the trace"
    );
    assert_eq!(up_flags, "01");
    assert_eq!(common::header(&r, "x-mock-tracestate"), "vendor=abc");
    let _ = r.bytes().await;

    let trace = hex::decode(client_trace).unwrap();
    let spans = receiver.trace(&trace, 5).await;
    let by_name = |n: &str| {
        spans.iter().find(|s| s.name == n).unwrap_or_else(|| {
            panic!(
                "no span {n}: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let root = by_name("POST /v1/chat/completions");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(
        root.span_id, server_span,
        "the echoed traceparent names the request span"
    );
    assert_eq!(root.parent_span_id, hex::decode(client_parent).unwrap());
    assert_eq!(str_attr(root, "gen_ai.operation.name"), "chat");
    assert_eq!(str_attr(root, "gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(str_attr(root, "gen_ai.response.model"), "mock-1");
    assert_eq!(str_attr(root, "gen_ai.provider.name"), "mock");
    assert_eq!(int_attr(root, "gen_ai.usage.output_tokens"), 8);
    assert!(int_attr(root, "gen_ai.usage.input_tokens") > 0);
    assert_eq!(int_attr(root, "http.response.status_code"), 200);
    assert_eq!(str_attr(root, "model_bridge.request_id"), request_id);
    assert!(attr(root, "model_bridge.org").is_some());
    assert!(attr(root, "model_bridge.cost_center").is_some());
    for child in ["authenticate", "admission", "relay"] {
        assert_eq!(by_name(child).parent_span_id, root.span_id, "{child}");
    }
    let attempt = by_name("chat mock-1");
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(attempt.parent_span_id, root.span_id);
    assert_eq!(
        attempt.span_id, attempt_span,
        "the provider's parent is the attempt span"
    );
    assert_eq!(str_attr(attempt, "gen_ai.provider.name"), "mock");
    assert_eq!(int_attr(attempt, "http.response.status_code"), 200);
    assert!(
        root.start_time_unix_nano <= attempt.start_time_unix_nano
            && attempt.end_time_unix_nano <= root.end_time_unix_nano
    );
    let unsampled_spans = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == unsampled)
        .count();
    assert_eq!(
        unsampled_spans, 0,
        "the client's unsampled decision is kept"
    );

    // Without a traceparent the gateway starts the trace, and says which.
    let r = c
        .post(g.url("/v1/chat/completions"))
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    let (new_trace, _, flags) = parts(common::header(&r, "traceparent"));
    assert_eq!(flags, "01");
    let (up_trace, _, _) = parts(common::header(&r, "x-mock-traceparent"));
    assert_eq!(up_trace, new_trace);
    let _ = r.bytes().await;
    let spans = receiver.trace(&new_trace, 5).await;
    assert!(spans
        .iter()
        .any(|s| s.parent_span_id.is_empty() && s.kind == SpanKind::Server as i32));

    // JSON logs: every line is one object; the access line joins request id and trace id.
    let text = eventually(Duration::from_secs(10), || async {
        let text = g.log_text();
        if text.contains(&request_id) {
            Ok(text)
        } else {
            Err(format!("no access line for {request_id}"))
        }
    })
    .await;
    let log: Vec<&str> = text.lines().collect();
    let mut access = None;
    for line in log.iter().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "{field} missing: {line}");
        }
        if v["request_id"] == request_id.as_str() {
            access = Some(v);
        }
    }
    let access = access.expect("an access line for the request");
    assert_eq!(access["trace_id"], client_trace);
    assert_eq!(access["target"], "model_bridge::access");
    assert_eq!(access["status"], 200);
    assert!(
        !text.contains("sk-caller-secret"),
        "a caller credential was logged"
    );
    assert!(!text.contains(PROVIDER_KEY));
}

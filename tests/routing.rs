//! Routing through the real HTTP surface: sticky weighted splits (distribution, stickiness, and
//! how many subjects a weight change moves), fallbacks on 500 / 429 with retry-after / timeouts /
//! refused connections, circuit breakers opening and closing, the retry budget, and a started
//! stream never retried.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn split_extra(w_control: u32, w_treat: u32) -> String {
    format!(
        r#"
[models.ab]
provider = "mock"
model = "mock-control"
[models.ab.split]
experiment = "exp-1"
subject = "end_user"
[[models.ab.split.variants]]
name = "control"
weight = {w_control}
[[models.ab.split.variants]]
name = "treatment"
weight = {w_treat}
provider = "mock"
model = "mock-treatment"
temperature = 0.1
"#
    )
}

/// Sends one chat per subject (concurrently, 16 at a time); returns subject → variant.
async fn assign(g: &Gateway, subjects: &[String]) -> HashMap<String, String> {
    let c = client();
    let mut out = HashMap::new();
    for chunk in subjects.chunks(16) {
        let mut tasks = Vec::new();
        for s in chunk {
            let c = c.clone();
            let url = g.url("/v1/chat/completions");
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let r = c
                    .post(&url)
                    .json(&json!({"model": "ab", "user": s, "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v = header(&r, "x-model-bridge-variant").to_string();
                let m = header(&r, "x-mock-model").to_string();
                // The variant's provider model is what the provider received.
                assert_eq!(m, format!("mock-{v}"));
                (s, v)
            }));
        }
        for t in tasks {
            let (s, v) = t.await.unwrap();
            out.insert(s, v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_are_weighted_sticky_and_move_only_what_must_move() {
    let g = Gateway::start_with(&[], &split_extra(50, 50));
    let subjects: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    // 10,000 requests: every subject ten times.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        for (s, v) in assign(&g, &subjects).await {
            *counts.entry(v.clone()).or_default() += 1;
            if let Some(prev) = seen.insert(s.clone(), v.clone()) {
                assert_eq!(prev, v, "{s} changed variant");
            }
        }
    }
    let control = f64::from(counts["control"]) / 10_000.0;
    assert!((control - 0.5).abs() <= 0.02, "control share {control}");
    // The usage record names the experiment and the variant.
    let recs = g.records();
    let rec = recs.iter().find(|r| r["requested_model"] == "ab").unwrap();
    assert_eq!(rec["experiment"], "exp-1");
    assert!(rec["variant"] == "control" || rec["variant"] == "treatment");

    // 50/50 → 60/40: about 10% of subjects move, all from treatment to control.
    let text = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(
        &g.config,
        text.replace("weight = 50\n[[models", "weight = 60\n[[models")
            .replace("weight = 50\nprovider", "weight = 40\nprovider"),
    )
    .unwrap();
    let start = Instant::now();
    while g.metric("model_bridge_config_generation").await < 2.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = assign(&g, &subjects).await;
    let mut moved = 0;
    for (s, v) in &after {
        if seen[s] != *v {
            moved += 1;
            assert_eq!((seen[s].as_str(), v.as_str()), ("treatment", "control"));
        }
    }
    let moved = f64::from(moved) / 1000.0;
    assert!((0.07..=0.13).contains(&moved), "moved {moved}");
}

/// `flaky` (primary, mock A started with `args`) falls back to `steady` (mock B).
fn chain_extra(a: &Mock, b: &Mock, provider_opts: &str, retry: &str) -> String {
    format!(
        r#"
[routing]
breaker_failures = 3
breaker_open_ms = 400

[providers.flaky]
kind = "openai_compatible"
base_url = "{}"
{provider_opts}

[providers.steady]
kind = "openai_compatible"
base_url = "{}"

[models.resilient]
provider = "flaky"
model = "m-a"
fallbacks = [{{ provider = "steady", model = "m-b" }}]
retry = {{ {retry} }}
"#,
        a.url(),
        b.url()
    )
}

async fn call(g: &Gateway, stream: bool) -> reqwest::Response {
    client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": "resilient", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_target_falls_back_and_its_breaker_opens_and_closes() {
    let a = Mock::start(&["--status", "500"]);
    let b = Mock::start(&[]);
    let extra = chain_extra(&a, &b, "", "retries = 1, backoff_ms = 5");
    let g = Gateway::start_with(&[], &extra);
    for _ in 0..10 {
        let r = call(&g, false).await;
        assert_eq!(r.status(), 200, "the caller never sees the 500");
        assert_eq!(header(&r, "x-model-bridge-provider"), "steady");
        let _ = r.bytes().await;
    }
    assert_eq!(
        g.metric("model_bridge_breaker_state{target=\"flaky/m-a\"}")
            .await,
        1.0,
        "open after 3 consecutive failures"
    );
    let tried = g
        .metric("model_bridge_upstream_attempts_total{outcome=\"5xx\",target=\"flaky/m-a\"}")
        .await;
    assert!(tried <= 4.0, "an open breaker stops the attempts: {tried}");
    assert!(
        g.metric(
            "model_bridge_upstream_attempts_total{outcome=\"breaker_open\",target=\"flaky/m-a\"}"
        )
        .await
            >= 5.0
    );
    // The provider recovers; after the open period one probe goes through and closes it.
    let port = a.port;
    drop(a);
    let _a = Mock::start_on(port, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    loop {
        let r = call(&g, false).await;
        assert_eq!(r.status(), 200);
        let p = header(&r, "x-model-bridge-provider").to_string();
        let _ = r.bytes().await;
        if p == "flaky" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never back on the primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        g.metric("model_bridge_breaker_state{target=\"flaky/m-a\"}")
            .await,
        0.0
    );
    // The usage row tells which target served it and how many attempts it took.
    let recs = g.records();
    assert!(recs
        .iter()
        .any(|r| r["provider"] == "steady" && r["retries"].as_u64() >= Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_asking_for_a_long_wait_moves_to_the_fallback_at_once() {
    let a = Mock::start(&["--status", "429", "--retry-after-s", "30"]);
    let b = Mock::start(&[]);
    let g = Gateway::start_with(&[], &chain_extra(&a, &b, "", "retries = 2, backoff_ms = 5"));
    let t = Instant::now();
    let r = call(&g, false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-model-bridge-provider"), "steady");
    assert!(t.elapsed() < Duration::from_secs(10), "did not wait 30 s");
    assert_eq!(
        g.metric("model_bridge_upstream_attempts_total{outcome=\"429\",target=\"flaky/m-a\"}")
            .await,
        1.0,
        "no retry on the same target when it asks for 30 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_and_refused_connections_fall_back() {
    let slow = Mock::start(&["--latency-ms", "3000"]);
    let b = Mock::start(&[]);
    let g = Gateway::start_with(
        &[],
        &chain_extra(&slow, &b, "first_byte_timeout_ms = 200", "retries = 0"),
    );
    let r = call(&g, false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-model-bridge-provider"), "steady");
    assert_eq!(
        g.metric("model_bridge_upstream_attempts_total{outcome=\"timeout\",target=\"flaky/m-a\"}")
            .await,
        1.0
    );
    drop(g);
    // A port nothing listens on.
    let refused = Mock::start(&[]);
    let port = refused.port;
    drop(refused);
    let dead = Mock {
        port,
        proc: Proc(std::process::Command::new("true").spawn().unwrap()),
    };
    let g = Gateway::start_with(
        &[],
        &chain_extra(&dead, &b, "", "retries = 1, backoff_ms = 5"),
    );
    let r = call(&g, true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-model-bridge-provider"), "steady");
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_started_stream_is_never_retried() {
    let a = Mock::start(&["--disconnect-after", "3", "--chunks", "20"]);
    let b = Mock::start(&[]);
    let g = Gateway::start_with(&[], &chain_extra(&a, &b, "", "retries = 2, backoff_ms = 5"));
    let r = call(&g, true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-model-bridge-provider"), "flaky");
    let _ = r.bytes().await;
    assert_eq!(
        g.metric("model_bridge_upstream_attempts_total{outcome=\"ok\",target=\"flaky/m-a\"}")
            .await,
        1.0
    );
    let others: f64 = g
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("model_bridge_upstream_attempts_total")
                && !l.contains("outcome=\"ok\",target=\"flaky/m-a\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        others, 0.0,
        "no second attempt once bytes reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_stay_within_the_retry_budget() {
    // Both targets fail: every request would retry and fall back without a budget.
    let a = Mock::start(&["--status", "503"]);
    let b = Mock::start(&["--status", "503"]);
    let extra = chain_extra(
        &a,
        &b,
        "",
        "retries = 3, backoff_ms = 1, max_backoff_ms = 2",
    )
    .replace(
        "breaker_failures = 3",
        "breaker_failures = 1000000\nbreaker_min_requests = 1000000",
    );
    let g = Gateway::start_with(&[], &extra);
    let n = 300;
    for _ in 0..n {
        let r = call(&g, false).await;
        assert_eq!(r.status(), 503, "the provider's error passes through");
        let _ = r.bytes().await;
    }
    let m = g.metrics().await;
    let attempts: f64 = m
        .lines()
        .filter(|l| l.starts_with("model_bridge_upstream_attempts_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // 20% extra load, plus the initial allowance of 10.
    assert!(
        attempts <= n as f64 * 1.2 + 10.0,
        "{attempts} attempts for {n} requests\n{m}"
    );
    assert!(g.metric("model_bridge_retry_budget_exhausted_total").await > 0.0);
    let _ = Value::Null;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_traffic_is_recorded_budgeted_and_never_waited_for() {
    // The candidate is slow and fails half the time: the caller must notice neither.
    let cand = Mock::start(&["--latency-ms", "1500"]);
    let extra = format!(
        r#"
[providers.cand]
kind = "openai_compatible"
base_url = "{}"

[models.mirrored]
provider = "mock"
model = "mock-1"
[models.mirrored.shadow]
provider = "cand"
model = "cand-1"
price = {{ input_per_1m = 0, output_per_1m = 1 }}
fraction = 1.0
budget_usd = "0.0025"
"#,
        cand.url()
    );
    let g = Gateway::start_with(&[], &extra);
    let c = client();
    let mut ids = Vec::new();
    let t = Instant::now();
    for _ in 0..5 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .json(&json!({"model": "mirrored", "max_tokens": 1000, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(header(&r, "x-request-id").to_string());
        let _ = r.bytes().await;
    }
    // Five primary answers before the first shadow answer could exist.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // Worst case of one copy: 1000 tokens at 1 USD / 1M = 0.001 USD: two fit in 0.0025.
    let recs = wait_lines(&g.usage, |l| {
        l.iter().filter(|r| r["experiment"] == "shadow").count() >= 2
    });
    let shadows: Vec<&Value> = recs
        .iter()
        .filter(|r| r["experiment"] == "shadow")
        .collect();
    assert_eq!(shadows.len(), 2, "the budget stops mirroring");
    for s in &shadows {
        let rid = s["request_id"].as_str().unwrap();
        assert!(ids.iter().any(|i| format!("{i}-shadow") == rid), "{rid}");
        assert_eq!(s["variant"], "cand/cand-1");
        assert_eq!(s["provider_model"], "cand-1");
        assert_eq!(s["stream"], false);
        assert_eq!(
            s["cost_nanousd"].as_u64().unwrap(),
            s["completion_tokens"].as_u64().unwrap() * 1000
        );
    }
    assert_eq!(
        g.metric(
            "model_bridge_shadow_requests_total{model=\"mirrored\",outcome=\"skipped_budget\"}"
        )
        .await,
        3.0
    );
    // Primary rows are untouched by the mirror.
    let primary: Vec<&Value> = recs
        .iter()
        .filter(|r| r["requested_model"] == "mirrored" && r["experiment"].is_null())
        .collect();
    assert_eq!(primary.len(), 5);
}

/// Shadow requests are background work with a place in shutdown: SIGTERM waits for them up to
/// the drain deadline, and one still running then is cut and still leaves its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_requests_are_drained_and_cut_at_shutdown() {
    // The candidate answers after 10 s: longer than the drain allows.
    let cand = Mock::start(&["--latency-ms", "10000"]);
    let extra = format!(
        r#"
[providers.cand]
kind = "openai_compatible"
base_url = "{}"
first_byte_timeout_ms = 30000
total_timeout_ms = 30000

[models.mirrored]
provider = "mock"
model = "mock-1"
[models.mirrored.shadow]
provider = "cand"
model = "cand-1"
fraction = 1.0
budget_usd = "10"
"#,
        cand.url()
    );
    let mut g = Gateway::start_edited(&[], &extra, |t| {
        t.replacen("drain_timeout_ms = 10000", "drain_timeout_ms = 500", 1)
    });
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": "mirrored", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-request-id").to_string();
    let _ = r.bytes().await;
    signal(&g.proc.0, "TERM");
    let start = Instant::now();
    let status = tokio::task::block_in_place(|| g.wait_exit(Duration::from_secs(8)));
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "the drain waited for the shadow request"
    );
    let shadow = g
        .records()
        .into_iter()
        .find(|r| r["request_id"] == format!("{id}-shadow"))
        .expect("the cut shadow request left its record");
    assert_eq!(shadow["error_type"], "shutting_down", "{shadow}");
    assert!(
        g.log_text().contains("shadow"),
        "the task is named in the log"
    );
}

//! Workflows through the real gateway and the mock provider: every step type in one run (a
//! loop over 10 items, parallel branches, a condition, an API call that fails, is retried and
//! lands in its error branch), the run's cost equal to its LLM rows' to the nano-dollar, the
//! workflow as a model (stream and not), cancellation, RBAC, SSRF refusals, definitions
//! rejected with their step paths, and an org's own versioned definitions and run limits
//! through the admin API.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An HTTP endpoint that always answers 500, counting the requests it got.
async fn failing_api() -> (u16, Arc<AtomicUsize>) {
    api("500 Internal Server Error", "").await
}

/// An HTTP endpoint with a fixed status line and extra header lines, counting requests.
async fn api(status: &'static str, extra: &'static str) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Up to the end of the headers and the announced body.
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"error":"down"}"#;
                let _ = sock
                    .write_all(format!("HTTP/1.1 {status}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    (port, hits)
}

fn full(api: u16) -> Value {
    json!({
        "name": "full", "version": 2,
        "steps": [
            {"id": "items", "type": "transform", "expr": "inputs.items"},
            {"id": "each", "type": "loop", "over": "steps.items.output", "parallelism": 4, "steps": [
                {"id": "ask", "type": "llm", "model": "gpt-4o-mini",
                 "messages": [{"role": "user", "content": "Item {{ index }}: {{ item }}"}]}
            ]},
            {"id": "both", "type": "parallel", "branches": {
                "summary": [{"id": "sum", "type": "llm", "model": "gpt-4o-mini",
                             "messages": [{"role": "system", "content": "Summarise."},
                                          {"role": "user", "content": "{{ steps.each.output }}"}],
                             "params": {"max_tokens": 50}}],
                "count": [{"id": "n", "type": "transform", "expr": "size(steps.each.output)"}]
            }},
            {"id": "big", "type": "condition", "if": "steps.both.output.count >= 10",
             "then": [{"id": "yes", "type": "transform", "expr": "'many'"}],
             "else": [{"id": "no", "type": "transform", "expr": "'few'"}]},
            {"id": "notify", "type": "api_call", "method": "POST",
             "url": format!("http://127.0.0.1:{api}/hook"),
             "body": "{\"verdict\": \"{{ steps.big.output }}\"}",
             "timeout_ms": 2000, "retries": {"max": 2, "backoff_ms": 10},
             "on_error": [{"id": "fallback", "type": "transform",
                           "expr": "'notify failed: ' + error.message"}]}
        ],
        "output": "{'verdict': steps.big.output, 'notify': steps.notify.output, 'summary': steps.both.output.summary}"
    })
}

/// A loop of LLM calls over `inputs.items`, one at a time.
fn slow() -> Value {
    json!({"name": "slow", "steps": [
        {"id": "each", "type": "loop", "over": "inputs.items", "steps": [
            {"id": "ask", "type": "llm", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ item }}"}]}]}]})
}

fn setup(defs: &[Value], allow: &str, mock: &[&str]) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    for d in defs {
        std::fs::write(
            wf.join(format!("{}.json", d["name"].as_str().unwrap())),
            d.to_string(),
        )
        .unwrap();
    }
    let policies = policies_dir(
        dir.path(),
        "[roles.no-workflows]\npermissions = [\"model:invoke:*\", \"endpoint:chat_completions\"]\n",
    );
    let extra = format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[orgs.a]

[orgs.b]

[workflows]
dir = "{}"
allow_hosts = [{allow}]
max_loop_items = 20
"#,
        policies.display(),
        wf.display()
    );
    (Gateway::start_with(mock, &extra), dir)
}

async fn post(g: &Gateway, key: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(g.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_workflow_with_every_step_type_runs_and_costs_exactly_its_rows() {
    let (api, hits) = failing_api().await;
    let ssrf = json!({"name": "ssrf", "steps": [
        {"id": "meta", "type": "api_call", "url": "http://169.254.169.254/latest/meta-data/"}]});
    let (g, _d) = setup(
        &[full(api), ssrf],
        &format!("\"127.0.0.1:{api}\", \"169.254.169.254\""),
        &[],
    );
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    let (denied, _) = g.create_key(&["--org", "a", "--role", "no-workflows"]);
    g.wait_key(&key).await;
    g.wait_key(&denied).await;
    let items: Vec<String> = (0..10).map(|i| format!("thing-{i}")).collect();

    let (s, run) = post(
        &g,
        &key,
        "/v1/workflows/full/runs",
        json!({"inputs": {"items": items}}),
    )
    .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["version"], 2);
    let out = &run["output"];
    assert_eq!(out["verdict"], "many");
    assert!(
        out["notify"]
            .as_str()
            .unwrap()
            .starts_with("notify failed: "),
        "{out}"
    );
    assert!(
        out["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{out}"
    );
    // The API call was tried three times (one + two retries), then its error branch ran.
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let steps = run["steps"].as_array().unwrap();
    let notify = steps.iter().find(|s| s["path"] == "steps.notify").unwrap();
    assert_eq!(
        (notify["attempts"].as_u64(), notify["status"].as_str()),
        (Some(3), Some("handled"))
    );
    let asks = steps
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with(".steps.ask"))
        .count();
    assert_eq!(asks, 10, "one LLM step per item");
    assert!(steps
        .iter()
        .any(|s| s["path"] == "steps.both.branches.summary.sum"));
    assert!(steps.iter().any(|s| s["path"] == "steps.big.then.yes"));
    assert_eq!(run["llm_calls"], 11);

    // The run's cost is the sum of its LLM rows', to the nano-dollar.
    let id = run["id"].as_str().unwrap().to_string();
    let tag = format!("workflow_run:{id}");
    let rows = eventually(Duration::from_secs(5), || async {
        let rows: Vec<Value> = g
            .records()
            .into_iter()
            .filter(|r| {
                r["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!(tag)))
            })
            .collect();
        if rows.len() == 11 {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await;
    let sum: i64 = rows
        .iter()
        .map(|r| r["cost_nanousd"].as_i64().unwrap())
        .sum();
    assert!(sum > 0);
    assert_eq!(run["cost_nanousd"].as_i64().unwrap(), sum);
    assert!(rows.iter().all(|r| r["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("workflow:full"))
        && r["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("workflow_version:2"))
        && r["key_id"].is_string()));
    assert!(rows.iter().any(|r| r["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("workflow_step:steps.each[7].steps.ask"))));
    // The run is its caller's to read.
    let r = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}")))
        .bearer_auth(&denied)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // RBAC: a key without workflow:run:full is refused, as a model too.
    let (s, v) = post(
        &g,
        &denied,
        "/v1/workflows/full/runs",
        json!({"inputs": {"items": []}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let (s, _) = post(
        &g,
        &denied,
        "/v1/chat/completions",
        json!({"model": "workflow:full", "messages": []}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, v) = post(&g, &key, "/v1/workflows/nope/runs", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("workflow_not_found")),
        "{v}"
    );
    // Limits: more items than a loop may take.
    let many: Vec<u32> = (0..21).collect();
    let (_, run) = post(
        &g,
        &key,
        "/v1/workflows/full/runs",
        json!({"inputs": {"items": many}}),
    )
    .await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"].as_str().unwrap().contains("limit of 20"),
        "{run}"
    );

    // SSRF: the metadata address is refused even when allow-listed, without retries.
    let (_, run) = post(&g, &key, "/v1/workflows/ssrf/runs", json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("metadata"), "{run}");
}

#[tokio::test]
async fn ssrf_through_the_ops_plane_or_a_redirect_is_refused() {
    let (target, target_hits) = api("200 OK", "").await;
    // Leaked to the redirect through a static: the handler's header is fixed text.
    let location: &'static str =
        Box::leak(format!("location: http://127.0.0.1:{target}/inner\r\n").into_boxed_str());
    let (redirector, _) = api("302 Found", location).await;
    let defs = [
        json!({"name": "ops", "steps": [{"id": "peek", "type": "api_call", "url": "http://127.0.0.1:{{ inputs.port }}/admin/v1/whoami"}]}),
        json!({"name": "hop", "steps": [{"id": "go", "type": "api_call", "url": format!("http://127.0.0.1:{redirector}/")}]}),
    ];
    // Every port of 127.0.0.1 is allow-listed: that does not make the ops plane reachable,
    // nor a redirect into a private range acceptable.
    let (g, _d) = setup(&defs, "\"127.0.0.1\"", &[]);
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let (_, run) = post(
        &g,
        &key,
        "/v1/workflows/ops/runs",
        json!({"inputs": {"port": g.ops}}),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("ops plane"),
        "{run}"
    );
    let (_, run) = post(&g, &key, "/v1/workflows/hop/runs", json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("private address range"),
        "{run}"
    );
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn cancelling_a_run_stops_its_pending_steps() {
    let slow = slow();
    let (g, _d) = setup(&[slow], "", &["--latency-ms", "300"]);
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let (s, run) = post(
        &g,
        &key,
        "/v1/workflows/slow/runs",
        json!({"wait": false, "inputs": {"items": [1, 2, 3, 4, 5, 6, 7, 8]}}),
    )
    .await;
    assert_eq!((s, run["status"].as_str()), (202, Some("running")), "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    // Once the first item's call is on its way, cancel.
    eventually(Duration::from_secs(5), || async {
        let r = client()
            .get(g.url(&format!("/v1/workflows/runs/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["path"] == "steps.each[0].steps.ask"))
        {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let (s, run) = post(
        &g,
        &key,
        &format!("/v1/workflows/runs/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(run["status"], "cancelled", "{run}");
    let asked = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with(".ask"))
        .count();
    assert!(asked < 8, "pending items never started: {asked} {run}");
    // Nothing more starts after the cancellation.
    let again: Value = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["steps"].as_array().unwrap().len(),
        run["steps"].as_array().unwrap().len()
    );
}

#[tokio::test]
async fn a_workflow_is_a_model() {
    let echo = json!({"name": "echo", "steps": [
        {"id": "answer", "type": "llm", "model": "gpt-4o-mini",
         "messages": [{"role": "user", "content": "Answer: {{ inputs.text }}"}]},
        {"id": "shout", "type": "transform", "expr": "'> ' + steps.answer.output"}]});
    let (g, _d) = setup(&[echo], "", &[]);
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let msgs = json!([{"role": "user", "content": "hello"}]);
    let (s, v) = post(
        &g,
        &key,
        "/v1/chat/completions",
        json!({"model": "workflow:echo", "messages": msgs}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("> "),
        "{v}"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "workflow:echo", "messages": msgs, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.starts_with("> "), "{text}");
    assert!(
        events.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[test]
fn invalid_definitions_are_refused_with_their_step_paths() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    std::fs::write(
        wf.join("bad.json"),
        json!({"name": "bad", "steps": [
            {"id": "a", "type": "teleport"},
            {"id": "b", "type": "loop", "over": "inputs.x", "steps": [
                {"id": "c", "type": "transform", "expr": "steps.zzz.output +"}]},
            {"id": "d", "type": "transform", "expr": "1", "needs": ["e"]},
            {"id": "e", "type": "transform", "expr": "1", "needs": ["d"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.mock]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n[models.m]\nprovider = \"mock\"\n\n[workflows]\ndir = \"{}\"\n",
            wf.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for want in [
        "workflows.bad.json.steps.a.type",
        "workflows.bad.json.steps.b.steps.c.expr",
        "workflows.bad.json.steps.d",
        "cycle",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}

#[tokio::test]
async fn a_restart_mid_run_leaves_the_run_failed_with_its_reason_never_missing() {
    let slow = slow();
    let done = json!({"name": "quick", "steps": [{"id": "one", "type": "transform", "expr": "1"}]});
    let (mut g, _d) = setup(&[slow, done], "", &["--latency-ms", "300"]);
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let (_, finished) = post(&g, &key, "/v1/workflows/quick/runs", json!({})).await;
    let (_, run) = post(
        &g,
        &key,
        "/v1/workflows/slow/runs",
        json!({"wait": false, "inputs": {"items": [1, 2, 3, 4, 5, 6]}}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), || async {
        let v: Value = client()
            .get(g.url(&format!("/v1/workflows/runs/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["steps"].as_array().is_some_and(|s| !s.is_empty()) {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    g.crash_and_restart();
    g.wait_key(&key).await;
    let get = |id: String| {
        let (g, key) = (&g, key.clone());
        async move {
            let r = client()
                .get(g.url(&format!("/v1/workflows/runs/{id}")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = get(id.clone()).await;
    assert_eq!(s, 200, "the run is not missing: {v}");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("restarted"), "{v}");
    // A run that had finished reads as it ended.
    let (s, v) = get(finished["id"].as_str().unwrap().to_string()).await;
    assert_eq!(
        (s, v["status"].as_str(), &v["output"]),
        (200, Some("succeeded"), &json!(1))
    );
    // Still its caller's only.
    let (other, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&other).await;
    let r = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_run_streams_its_step_events() {
    let slow = slow();
    let (g, _d) = setup(&[slow], "", &["--latency-ms", "50"]);
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let (_, run) = post(
        &g,
        &key,
        "/v1/workflows/slow/runs",
        json!({"wait": false, "inputs": {"items": [1, 2, 3]}}),
    )
    .await;
    let id = run["id"].as_str().unwrap();
    let r = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}/events")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for i in 0..3 {
        let path = format!("steps.each[{i}].steps.ask");
        assert!(
            events
                .iter()
                .any(|e| e["path"] == path && e["status"] == "running"),
            "{text}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["path"] == path && e["status"] == "succeeded"),
            "{text}"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["status"].as_str()),
        (Some("run"), Some("succeeded")),
        "{text}"
    );
    // Asked again once it ended: the same steps, then the end.
    let again = client()
        .get(g.url(&format!("/v1/workflows/runs/{id}/events")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.contains("event: run"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_steps_reach_clickhouse_and_the_cost_is_the_rows_sum() {
    let Some(url) = common::clickhouse::shared_url() else {
        return;
    };
    let db = common::clickhouse::new_db();
    let (api, _) = failing_api().await;
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    std::fs::write(wf.join("full.json"), full(api).to_string()).unwrap();
    let policies = policies_dir(dir.path(), "");
    let extra = format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n\n[orgs.a]\n\n[workflows]\ndir = \"{}\"\nallow_hosts = [\"127.0.0.1:{api}\"]\n",
        policies.display(),
        wf.display()
    );
    let g = Gateway::start_edited(&[], &extra, |t| {
        common::clickhouse::sink_config(t, &url, &db, "")
    });
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    let items: Vec<u32> = (0..10).collect();
    let (_, run) = post(
        &g,
        &key,
        "/v1/workflows/full/runs",
        json!({"inputs": {"items": items}}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["id"].as_str().unwrap();
    let steps = run["steps"].as_array().unwrap().len();
    common::clickhouse::wait_for(
        &url,
        &format!("SELECT count() FROM {db}.workflow_steps WHERE run_id = '{id}'"),
        &steps.to_string(),
        20,
    )
    .await;
    common::clickhouse::wait_for(
        &url,
        &format!("SELECT count() FROM {db}.workflow_runs WHERE run_id = '{id}'"),
        "1",
        20,
    )
    .await;
    let rows_sum = common::clickhouse::wait_for(
        &url,
        &format!(
            "SELECT sum(cost_nanousd) FROM {db}.usage_events WHERE has(tags, 'workflow_run:{id}')"
        ),
        &run["cost_nanousd"].to_string(),
        20,
    )
    .await;
    let recorded = common::clickhouse::query(&url, &format!("SELECT cost_nanousd, status, llm_calls, workflow, version FROM {db}.workflow_runs WHERE run_id = '{id}' FORMAT TSV")).await;
    assert_eq!(
        recorded.trim(),
        format!("{}\tsucceeded\t11\tfull\t2", rows_sum.trim())
    );
    let handled = common::clickhouse::query(&url, &format!("SELECT attempts, status FROM {db}.workflow_steps WHERE run_id = '{id}' AND path = 'steps.notify' FORMAT TSV")).await;
    assert_eq!(handled.trim(), "3\thandled");
    common::clickhouse::query(&url, &format!("DROP DATABASE {db}")).await;
}

/// A two-step workflow whose output names the version it came from.
fn greeting(tag: &str) -> Value {
    json!({"definition": {"description": format!("greets ({tag})"), "steps": [
        {"id": "who", "type": "transform", "expr": "inputs.name"},
        {"id": "say", "type": "transform", "expr": format!("'{tag}: ' + steps.who.output")}]}})
}

#[tokio::test]
async fn an_orgs_definitions_are_drafted_published_immutably_and_deployed_through_the_admin_api() {
    let (g, _d) = setup(&[slow()], "", &[]);
    let (god, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    let (author, _) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    let (caller, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    let (outsider, _) = g.create_key(&["--org", "b", "--role", "org-admin"]);
    for k in [&god, &author, &caller, &outsider] {
        g.wait_key(k).await;
    }
    let base = "/admin/v1/orgs/a/workflows/greet";
    let draft = format!("{base}/draft");
    let versions = format!("{base}/versions");
    let deployment = format!("{base}/deployment");
    let run = |key: &str| {
        let (g, key) = (&g, key.to_string());
        async move {
            post(
                g,
                &key,
                "/v1/workflows/greet/runs",
                json!({"inputs": {"name": "Ada"}}),
            )
            .await
        }
    };

    // Writing needs workflow:write, which an invoker lacks.
    let (s, v) = g.admin(&caller, "PUT", &draft, greeting("v1")).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("workflow:write"));

    // An invalid definition is refused with the step path of its problem.
    let bad = json!({"definition": {"steps": [
        {"id": "fan", "type": "parallel", "branches": {
            "x": [{"id": "deep", "type": "teleport"}],
            "y": [{"id": "fine", "type": "transform", "expr": "1"}]}}]}});
    let (s, v) = g.admin(&author, "PUT", &draft, bad).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_workflow")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("steps.fan.branches.x.deep"), "{msg}");
    let (s, v) = g
        .admin(
            &author,
            "PUT",
            &draft,
            json!({"definition": {"name": "other", "steps": []}}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("name")),
        "{v}"
    );
    // A name the config files define stays theirs.
    let (s, _) = g
        .admin(
            &author,
            "PUT",
            "/admin/v1/orgs/a/workflows/slow/draft",
            greeting("x"),
        )
        .await;
    assert_eq!(s, 409);

    // A draft does not run; publishing makes version 1 (from the draft, which then goes).
    assert_eq!(g.admin(&author, "PUT", &draft, greeting("v1")).await.0, 201);
    assert_eq!(g.admin(&author, "PUT", &draft, greeting("v1")).await.0, 200);
    let (s, v) = run(&caller).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("workflow_not_found")),
        "{v}"
    );
    let (s, v) = g.admin(&author, "POST", &versions, Value::Null).await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(1)), "{v}");
    let (s, v) = g.admin(&author, "POST", &versions, Value::Null).await;
    assert_eq!(s, 400, "the draft was consumed: {v}");
    let (s, v) = g.admin(&author, "POST", &versions, greeting("v2")).await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(2)), "{v}");

    // Published but not deployed: still not runnable. Only a published version deploys.
    assert_eq!(run(&caller).await.0, 404);
    let (s, _) = g
        .admin(&author, "PUT", &deployment, json!({"version": 3}))
        .await;
    assert_eq!(s, 404);
    let (s, v) = g
        .admin(&author, "PUT", &deployment, json!({"version": 1}))
        .await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = run(&caller).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["output"].as_str(), v["version"].as_u64()),
        (Some("v1: Ada"), Some(1)),
        "{v}"
    );
    // Another org neither runs nor sees it.
    assert_eq!(run(&outsider).await.0, 404);
    let (s, _) = g.admin(&outsider, "GET", base, Value::Null).await;
    assert_eq!(s, 404);
    let (_, v) = g
        .admin(&outsider, "GET", "/admin/v1/orgs/b/workflows", Value::Null)
        .await;
    assert!(!v.to_string().contains("greet"), "{v}");

    // Deploying version 2 switches what runs.
    assert_eq!(
        g.admin(&author, "PUT", &deployment, json!({"version": 2}))
            .await
            .0,
        200
    );
    let (_, v) = run(&caller).await;
    assert_eq!(
        (v["output"].as_str(), v["version"].as_u64()),
        (Some("v2: Ada"), Some(2)),
        "{v}"
    );

    // A published version has no way to change: there is no write of one, and a new publish
    // is a new number, leaving version 1 exactly as it was.
    let (s, _) = g.admin(&author, "PUT", &versions, greeting("v9")).await;
    assert_eq!(s, 405);
    let (s, _) = g
        .admin(&author, "PUT", &format!("{versions}/1"), greeting("v9"))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        g.admin(&author, "POST", &versions, greeting("v3")).await.0,
        201
    );
    let (s, v) = g.admin(&caller, "GET", base, Value::Null).await;
    assert_eq!(s, 403, "reading needs admin:workflows:read: {v}");
    let (s, v) = g.admin(&author, "GET", base, Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["deployed_version"].as_u64(), v["latest_version"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(
        v["versions"][0]["definition"],
        greeting("v1")["definition"],
        "{v}"
    );
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    let (_, list) = g
        .admin(&author, "GET", "/admin/v1/orgs/a/workflows", Value::Null)
        .await;
    let names: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap(),
                w["managed_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, vec![("slow", "file"), ("greet", "api")]);

    // The org's own run limits replace [workflows]'s: one step is too few for two.
    let (s, v) = g
        .admin(
            &god,
            "PUT",
            "/admin/v1/orgs/a/limits",
            json!({"workflow_limits": {"max_steps": 0}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = g
        .admin(
            &god,
            "PUT",
            "/admin/v1/orgs/a/limits",
            json!({"workflow_limits": {"max_steps": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = run(&caller).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("exceeded 1 step"),
        "{v}"
    );
    assert_eq!(
        g.admin(&god, "DELETE", "/admin/v1/orgs/a/limits", Value::Null)
            .await
            .0,
        200
    );
    assert_eq!(run(&caller).await.1["status"], "succeeded");

    // Undeployed, it takes no runs; every change was audited.
    assert_eq!(
        g.admin(&author, "DELETE", &deployment, Value::Null).await.0,
        200
    );
    assert_eq!(run(&caller).await.0, 404);
    // (The audit trail is written behind the requests: read until the last change is in.)
    eventually(Duration::from_secs(5), || async {
        let (_, audit) = g
            .admin(
                &god,
                "GET",
                "/admin/v1/audit?resource=workflow:a:greet",
                Value::Null,
            )
            .await;
        let mut actions: Vec<String> = audit["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["action"].as_str().unwrap_or_default().to_string())
            .collect();
        actions.sort_unstable();
        actions.dedup();
        let want = [
            "workflow.deploy",
            "workflow.draft",
            "workflow.publish",
            "workflow.undeploy",
        ];
        if actions == want {
            Ok(())
        } else {
            Err(format!("{actions:?}"))
        }
    })
    .await;
}

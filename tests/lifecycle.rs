//! Config validation from the CLI, hot reload (file change, SIGHUP, rejected configs, under
//! load) and draining on SIGTERM.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn check_reports_file_line_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[server]\nlisten = \"127.0.0.1:1\"\n\n[providers.x]\nkind = \"openai\"\nbase_ulr = \"https://a/v1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", p.display())), "{err}");
    assert!(err.contains("providers.x"), "{err}");
    assert!(err.contains("base_ulr"), "{err}");

    let good = dir.path().join("good.toml");
    let mock = "http://127.0.0.1:9/v1";
    std::fs::write(&good, config_text(1, 2, mock, &dir.path().join("u"), "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["check", "--config"])
        .arg(&good)
        .env("MB_TEST_PROVIDER_KEY", "k")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status_of(c: &reqwest::Client, g: &Gateway, model: &str) -> u16 {
    c.post(g.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_status(c: &reqwest::Client, g: &Gateway, model: &str, want: u16) {
    let start = Instant::now();
    while status_of(c, g, model).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{model} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_on_change_and_sighup_rejects_bad_configs() {
    let g = Gateway::start();
    let c = client();
    let base = std::fs::read_to_string(&g.config).unwrap();
    assert_eq!(status_of(&c, &g, "new-alias").await, 404);

    std::fs::write(
        &g.config,
        format!("{base}\n[models.\"new-alias\"]\nprovider = \"mock\"\n"),
    )
    .unwrap();
    wait_status(&c, &g, "new-alias", 200).await;

    // A broken file is rejected: the previous generation keeps serving.
    std::fs::write(
        &g.config,
        format!("{base}\n[models.\"x\"]\nprovider = \"missing\"\n"),
    )
    .unwrap();
    // The failure is counted (from 0: the series exists before any failure, for alerts).
    g.wait_metric(
        r#"model_bridge_config_reloads_total{result="failure"}"#,
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&c, &g, "new-alias").await, 200);
    assert!(g.log_text().contains("unknown provider `missing`"));

    // SIGHUP reloads even without a file watcher.
    std::fs::write(
        &g.config,
        base.replace(
            "poll_interval_ms = 100",
            "poll_interval_ms = 100\nwatch = false",
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::write(
        &g.config,
        format!(
            "{}\n[models.\"hup\"]\nprovider = \"mock\"\n",
            base.replace(
                "poll_interval_ms = 100",
                "poll_interval_ms = 100\nwatch = false"
            )
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        status_of(&c, &g, "hup").await,
        404,
        "watch = false: no reload on change"
    );
    signal(&g.proc.0, "HUP");
    wait_status(&c, &g, "hup", 200).await;
    assert_eq!(status_of(&c, &g, "new-alias").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request() {
    let g = Arc::new(Gateway::start());
    let base = std::fs::read_to_string(&g.config).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (g, stop, ok, failed) = (g.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post(g.url("/v1/chat/completions"))
                    .json(&json!({"model": "gpt-4o-mini", "stream": i % 2 == 0, "messages": []}))
                    .send()
                    .await;
                let good = match r {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    Ok(r) => {
                        eprintln!("status {} {:?}", r.status(), r.text().await);
                        false
                    }
                    Err(e) => {
                        eprintln!("error {e:?}");
                        false
                    }
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(
            &g.config,
            format!("{base}\n[models.\"gen{n}\"]\nprovider = \"mock\"\n"),
        )
        .unwrap();
        if n % 3 == 0 {
            signal(&g.proc.0, "HUP");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let m = g.metrics().await;
    let reloads: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"model_bridge_config_reloads_total{result="success"} "#))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(reloads >= 5, "reloads happened: {reloads}");
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams() {
    let mut g = Gateway::start();
    let c = client();
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("x-mock-chunks", "20")
        .header("x-mock-chunk-interval-ms", "50")
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    signal(&g.proc.0, "TERM");
    let start = Instant::now();
    loop {
        let ready = c
            .get(g.ops_url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(ready, Ok(503) | Err(_)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still ready while draining: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = r.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream finished during drain"
    );
    let status = g.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let rec = g.record(&rid);
    assert_eq!(rec["completion_tokens"], 20, "usage flushed before exit");
}

/// Streams still running at the drain deadline are cut, and each still leaves exactly one
/// record (marked cut by shutdown), written before the process exits.
#[tokio::test]
async fn streams_cut_at_the_drain_deadline_leave_their_records() {
    let mut g = Gateway::start_edited(&[], "", |t| {
        t.replacen("drain_timeout_ms = 10000", "drain_timeout_ms = 300", 1)
            .replacen("idle_timeout_ms = 1000", "idle_timeout_ms = 20000", 1)
    });
    let c = client();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .header("x-mock-chunks", "400")
            .header("x-mock-chunk-interval-ms", "50")
            .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": []}))
            .send()
            .await
            .unwrap();
        streams.push(r);
    }
    let ids: Vec<String> = streams
        .iter()
        .map(|r| r.headers()["x-request-id"].to_str().unwrap().to_string())
        .collect();
    signal(&g.proc.0, "TERM");
    let status = g.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let records = g.records();
    for id in &ids {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "exactly one record for {id}: {records:?}");
        assert_eq!(mine[0]["cancelled"], true, "{}", mine[0]);
        assert_eq!(mine[0]["error_type"], "shutting_down", "{}", mine[0]);
        assert!(
            mine[0]["completion_tokens"].as_u64().unwrap() > 0,
            "{}",
            mine[0]
        );
    }
    drop(streams);
}

#[test]
fn shipped_configs_pass_check() {
    for (file, env) in [
        ("config/dev.toml", None),
        ("config/gateway.toml", Some(("OPENAI_API_KEY", "sk-test"))),
        ("config/auth-example.toml", None),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_model-bridge"));
        cmd.args(["check", "--config"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + file);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readme_policy_example_compiles_and_decides() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("[roles.analyst]")
        .expect("policy example in README");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let roles =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/roles.toml"))
            .unwrap();
    let rbac = model_bridge::rbac::Rbac::compile(
        &[
            ("roles.toml".into(), roles),
            ("README.toml".into(), block.to_string()),
        ],
        &["gpt-4o-mini", "gpt-4o"],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let analyst = rbac.grants(["analyst"], &[], "acme", 0);
    assert!(analyst.can_invoke("gpt-4o-mini") && !analyst.can_invoke("gpt-4o"));
    assert!(
        analyst.allows("attribution:override"),
        "inherited from finance"
    );
    let group = rbac.grants([], &["group:ml-engineers".to_string()], "acme", 0);
    assert!(group.can_invoke("gpt-4o") && group.allows("endpoint:passthrough"));
    let other_org = rbac.grants([], &["group:ml-engineers".to_string()], "globex", 0);
    assert!(!other_org.can_invoke("gpt-4o"));
    let expired = rbac.grants(
        [],
        &["group:ml-engineers".to_string()],
        "acme",
        1_900_000_000,
    );
    assert!(!expired.can_invoke("gpt-4o"));
}

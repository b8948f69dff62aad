//! End to end: Debian's Prometheus on loopback scrapes a real gateway with the shipped rules,
//! and faults induced here — upstream 500s, ClickHouse stopped under load, a bad config
//! reload, the gateway killed — show as alerts through Prometheus's own API, which resolve
//! when the fault ends.
//!
//! The rules run time-compressed: every `[Nm]` window and `for: Nm` becomes N seconds (and
//! `[1h]` 60 s), with 1 s scrapes and evaluations — the same expressions on a clock 60x faster.

mod common;

use common::clickhouse::{new_db, shared_url, sink_config, PrivateClickHouse};
use common::{chat, client, eventually, free_port, Gateway, Proc};
use regex::Regex;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The shipped rules with every duration in minutes read as seconds.
fn compressed_rules() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus/model-bridge.rules.yml"
    ))
    .unwrap();
    let text = Regex::new(r"\[(\d+)m\]")
        .unwrap()
        .replace_all(&text, "[${1}s]");
    let text = Regex::new(r"\[1h\]").unwrap().replace_all(&text, "[60s]");
    let text = Regex::new(r"for: (\d+)m")
        .unwrap()
        .replace_all(&text, "for: ${1}s");
    assert!(!text.contains("m]"), "a window was not compressed");
    text.into_owned()
}

struct Prometheus {
    port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(ops_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model-bridge.rules.yml"),
            compressed_rules(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files: [model-bridge.rules.yml]\n\
                 scrape_configs:\n  - job_name: model-bridge\n    static_configs:\n      - targets: ['127.0.0.1:{ops_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (scripts/test.sh installs Debian's prometheus)");
        let p = Prometheus {
            port,
            _proc: Proc(child),
            _dir: dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        common::wait_tcp(port);
        p
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Active alerts: (name, state, labels).
    async fn alerts(&self) -> Vec<(String, String, Value)> {
        let Some(v) = self.get("/api/v1/alerts").await else {
            return vec![];
        };
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// A PromQL instant query's first value (None: empty result).
    async fn value(&self, q: &str) -> Option<f64> {
        let v = self
            .get(&format!("/api/v1/query?query={}", urlencode(q)))
            .await?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `alert` is in `state` ("firing", or "inactive": no longer active);
    /// returns the states it was seen in on the way.
    async fn wait_alert(&self, alert: &str, state: &str, limit: Duration) -> Vec<String> {
        let seen = std::cell::RefCell::new(Vec::<String>::new());
        let seen_ref = &seen;
        eventually(limit, move || async move {
            let active = self.alerts().await;
            let now: Vec<&String> = active
                .iter()
                .filter(|(n, _, _)| n == alert)
                .map(|(_, s, _)| s)
                .collect();
            for s in &now {
                if !seen_ref.borrow().contains(s) {
                    seen_ref.borrow_mut().push(s.to_string());
                }
            }
            let reached = if state == "inactive" {
                now.is_empty()
            } else {
                now.iter().any(|s| *s == state)
            };
            if reached {
                Ok(())
            } else {
                Err(format!(
                    "{alert} never became {state} (seen {:?}); active: {active:?}",
                    seen_ref.borrow()
                ))
            }
        })
        .await;
        seen.into_inner()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Requests until `stop`; while `fail` is set they ask the mock provider for a 500.
fn load(g: &Gateway, stop: Arc<AtomicBool>, fail: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = g.url("/v1/chat/completions");
    tokio::spawn(async move {
        let c = client();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut r = c.post(&url).json(&chat("gpt-4o-mini", false));
            if fail.load(Ordering::Relaxed) {
                r = r.header("x-mock-status", "500");
            }
            if let Ok(r) = r.send().await {
                let _ = r.bytes().await;
            }
            n += 1;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_fire_alerts_in_prometheus_and_resolve() {
    if shared_url().is_none() {
        return;
    }
    let ch = PrivateClickHouse::start();
    let db = new_db();
    let url = ch.url();
    let mut g = Gateway::start_edited(&[], "[routing]\nbreaker_open_ms = 1000\n", |t| {
        sink_config(t, &url, &db, "")
    });
    let prom = Prometheus::start(g.ops);
    let stop = Arc::new(AtomicBool::new(false));
    let fail = Arc::new(AtomicBool::new(false));
    let traffic = load(&g, stop.clone(), fail.clone());

    // Healthy: after 10 scrapes with traffic, no alert is active.
    eventually(Duration::from_secs(60), || async {
        match prom
            .value(r#"count_over_time(up{job="model-bridge"}[1m])"#)
            .await
        {
            Some(n) if n >= 10.0 => Ok(()),
            n => Err(format!("{n:?} scrapes")),
        }
    })
    .await;
    assert_eq!(
        prom.value(r#"up{job="model-bridge"}"#).await,
        Some(1.0),
        "scraped"
    );
    assert!(
        prom.alerts().await.is_empty(),
        "healthy gateway: {:?}",
        prom.alerts().await
    );

    // 1. The provider answers 500: the error ratio, upstream failures and the breaker.
    fail.store(true, Ordering::Relaxed);
    let limit = Duration::from_secs(60);
    let seen = prom
        .wait_alert("ModelBridgeHighErrorRatio", "firing", limit)
        .await;
    assert!(
        seen.contains(&"pending".to_string()),
        "pending before firing (for: 5s): {seen:?}"
    );
    prom.wait_alert("ModelBridgeUpstreamErrors", "firing", limit)
        .await;
    prom.wait_alert("ModelBridgeBreakerOpen", "firing", limit)
        .await;
    fail.store(false, Ordering::Relaxed);
    for a in [
        "ModelBridgeHighErrorRatio",
        "ModelBridgeUpstreamErrors",
        "ModelBridgeBreakerOpen",
    ] {
        prom.wait_alert(a, "inactive", limit).await;
    }

    // 2. ClickHouse stops under load: its alert fires, and clears once it is back.
    ch.kill();
    prom.wait_alert("ModelBridgeClickHouseUnreachable", "firing", limit)
        .await;
    ch.restart();
    prom.wait_alert("ModelBridgeClickHouseUnreachable", "inactive", limit)
        .await;

    // 3. A bad config reload on a process that never failed one before.
    let good = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(
        &g.config,
        format!("{good}\n[models.\"x\"]\nprovider = \"missing\"\n"),
    )
    .unwrap();
    prom.wait_alert("ModelBridgeConfigReloadFailed", "firing", limit)
        .await;
    std::fs::write(&g.config, &good).unwrap();
    prom.wait_alert("ModelBridgeConfigReloadFailed", "inactive", limit)
        .await;

    // 4. The gateway dies: down; it comes back: resolved.
    stop.store(true, Ordering::Relaxed);
    let served = traffic.await.unwrap();
    assert!(served > 100, "load ran: {served}");
    let _ = g.proc.0.kill();
    let _ = g.proc.0.wait();
    prom.wait_alert("ModelBridgeDown", "firing", limit).await;
    g.restart();
    prom.wait_alert("ModelBridgeDown", "inactive", limit).await;

    // Nothing was lost on the way, and no alert remains.
    let active = prom.alerts().await;
    assert!(
        !active.iter().any(|(n, _, _)| n.ends_with("Lost")),
        "{active:?}"
    );
    common::clickhouse::query(&url, &format!("DROP DATABASE IF EXISTS {db}")).await;
}

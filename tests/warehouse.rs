//! The ClickHouse warehouse against real servers: migrations, one row per request with exact
//! tokens, cost and attribution, and the sink's guarantees through outages — ClickHouse killed
//! under load, answers lost after an insert landed, a gateway restarted with a full spool.

mod common;

use common::clickhouse::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// (prompt, completion, cached) as the mock reported them.
type Tokens = (u64, u64, u64);

/// 0.15 / 0.075 / 0.60 USD per 1M tokens = 150 / 75 / 600 nano-USD per token.
fn mini_cost(p: u64, c: u64, cached: u64) -> u64 {
    (p - cached) * 150 + cached * 75 + c * 600
}

fn migrate(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["migrate", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const TENANTS: &str = r#"
[orgs.a]
default_cost_center = "a-eng"
[orgs.a.cost_centers.a-eng]
department = "Engineering"
[orgs.a.cost_centers.a-research]
department = "Research"
[orgs.a.teams.ml]
default_cost_center = "a-research"
"#;

fn auth_extra(dir: &std::path::Path) -> String {
    let policies = policies_dir(dir, "");
    format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n\n[audit]\nsink = \"clickhouse\"\n{TENANTS}",
        policies.display()
    )
}

/// Load: `n` workers sending non-stream chats until `stop`; returns (ok, failed, max latency).
async fn load(
    g: &Gateway,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, Duration) {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let url = g.url("/v1/chat/completions");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed, mut max) = (0u64, 0u64, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.post(&url).json(&chat("gpt-4o-mini", false)).send().await;
                let good = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                max = max.max(t.elapsed());
                if good {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            (ok, failed, max)
        }));
    }
    let mut total = (0, 0, Duration::ZERO);
    for t in tasks {
        let (o, f, m) = t.await.unwrap();
        total = (total.0 + o, total.1 + f, total.2.max(m));
    }
    total
}

#[tokio::test]
async fn migrations_apply_once_and_the_rollup_aggregates() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n"),
    )
    .unwrap();

    let first = migrate(&cfg);
    assert!(
        first.contains("applied [1, 2, 3, 4, 5, 6, 7, 8, 9]"),
        "{first}"
    );
    let second = migrate(&cfg);
    assert!(
        second.contains("applied [], already applied [1, 2, 3, 4, 5, 6, 7, 8, 9]"),
        "{second}"
    );
    let recorded = query(&url, &format!("SELECT count() FROM {db}.schema_migrations")).await;
    let all = model_bridge::warehouse::migrate::MIGRATIONS
        .len()
        .to_string();
    assert_eq!(recorded.trim(), all);
    // A run interrupted after a statement and before its record re-runs cleanly, the column
    // migration too (18.16 has no ADD COLUMN IF NOT EXISTS: the runner checks).
    query(
        &url,
        &format!("ALTER TABLE {db}.schema_migrations DELETE WHERE version = 5"),
    )
    .await;
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.schema_migrations WHERE version = 5"),
        "0",
        30,
    )
    .await;
    let again = migrate(&cfg);
    assert!(again.contains("applied [5]"), "{again}");

    let rows = [
        ("acme", "cc1", "gpt-4o-mini", 10, 5, 1_500),
        ("acme", "cc1", "gpt-4o-mini", 20, 7, 2_500),
        ("acme", "cc2", "gpt-4o", 1, 1, 100),
        ("globex", "cc9", "gpt-4o-mini", 3, 3, 0),
    ];
    let mut insert = format!("INSERT INTO {db}.usage_events (ts, ts_ms, request_id, org, cost_center, requested_model, prompt_tokens, completion_tokens, cost_nanousd, cost_known) FORMAT JSONEachRow\n");
    for (i, (org, cc, model, p, c, cost)) in rows.iter().enumerate() {
        insert.push_str(&format!(
            "{{\"ts\":\"2026-11-22 10:00:0{i}\",\"ts_ms\":0,\"request_id\":\"r{i}\",\"org\":\"{org}\",\"cost_center\":\"{cc}\",\"requested_model\":\"{model}\",\"prompt_tokens\":{p},\"completion_tokens\":{c},\"cost_nanousd\":{cost},\"cost_known\":{}}}\n",
            u8::from(*cost > 0)
        ));
    }
    query(&url, &insert).await;
    let spend = query(
        &url,
        &format!(
            "SELECT org, cost_center, model, sum(requests), sum(prompt_tokens), sum(cost_nanousd), sum(unpriced_requests) \
             FROM {db}.spend_daily GROUP BY org, cost_center, model ORDER BY org, cost_center FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        spend,
        "acme\tcc1\tgpt-4o-mini\t2\t30\t4000\t0\nacme\tcc2\tgpt-4o\t1\t1\t100\t0\nglobex\tcc9\tgpt-4o-mini\t1\t3\t0\t1\n"
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test]
async fn every_request_is_one_row_with_exact_tokens_cost_and_attribution() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let pol = tempfile::tempdir().unwrap();
    let extra = auth_extra(pol.path());
    let g = Gateway::start_edited(&[], &extra, |t| sink_config(t, &url, &db, ""));
    let (key, key_id) = g.create_key(&[
        "--org",
        "a",
        "--team",
        "ml",
        "--user",
        "bob@a.test",
        "--role",
        "developer",
    ]);
    g.wait_key(&key).await;

    // (request id, expected (prompt, completion, cached) or None when cancelled / refused)
    let mut expect: Vec<(String, Option<Tokens>, &str)> = Vec::new();
    let c = client();
    for (i, (stream, include)) in [(false, false), (true, false), (true, true)]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let mut body = chat("gpt-4o-mini", stream);
        if include {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = c
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-cached-tokens", (i % 3).to_string())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let rid = header(&r, "x-request-id").to_string();
        let usage = mock_usage(&r);
        let _ = r.bytes().await.unwrap();
        expect.push((rid, Some(usage), "chat"));
    }
    for _ in 0..2 {
        expect.push((abandon_stream(&g, Some(&key)), None, "cancelled"));
    }
    let r = c
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("no-such-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    expect.push((header(&r, "x-request-id").to_string(), None, "refused"));
    let r = c
        .post(g.url("/v1/chat/completions"))
        .bearer_auth("mbk_nothere12345_0000000000000000000000000000000000000000")
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let unauth = header(&r, "x-request-id").to_string();
    expect.push((unauth.clone(), None, "refused"));

    let n = expect.len();
    let got = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events"),
        &n.to_string(),
        20,
    )
    .await;
    assert_eq!(got, n.to_string(), "exactly one row per request");
    let rows = query(
        &url,
        &format!(
            "SELECT request_id, org, team, user, key_id, cost_center, department, status, cancelled, \
             prompt_tokens, completion_tokens, cached_tokens, cost_nanousd, cost_known, stream, usage_source \
             FROM {db}.usage_events FORMAT JSONEachRow"
        ),
    )
    .await;
    let rows: Vec<Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let num = |v: &Value| -> u64 {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap()
    };
    for (rid, usage, kind) in &expect {
        let matching: Vec<&Value> = rows.iter().filter(|r| r["request_id"] == *rid).collect();
        assert_eq!(matching.len(), 1, "{rid}: {matching:?}");
        let row = matching[0];
        if rid == &unauth {
            assert_eq!(row["status"], 401);
            assert_eq!(row["org"], "");
            continue;
        }
        assert_eq!(
            (
                row["org"].as_str(),
                row["team"].as_str(),
                row["user"].as_str(),
                row["key_id"].as_str(),
                row["cost_center"].as_str(),
                row["department"].as_str()
            ),
            (
                Some("a"),
                Some("ml"),
                Some("bob@a.test"),
                Some(key_id.as_str()),
                Some("a-research"),
                Some("Research")
            ),
            "{row}"
        );
        match (kind, usage) {
            (_, Some((p, comp, cached))) => {
                assert_eq!(num(&row["prompt_tokens"]), *p, "{row}");
                assert_eq!(num(&row["completion_tokens"]), *comp, "{row}");
                assert_eq!(num(&row["cached_tokens"]), *cached, "{row}");
                assert_eq!(num(&row["cost_nanousd"]), mini_cost(*p, *comp, *cached));
                assert_eq!(row["cost_known"], 1);
                assert_eq!(row["usage_source"], "provider");
            }
            (&"cancelled", None) => {
                assert_eq!(row["cancelled"], 1, "{row}");
                assert_eq!(row["stream"], 1);
                assert!(num(&row["completion_tokens"]) >= 3, "{row}");
            }
            _ => assert_eq!(row["status"], 404, "{row}"),
        }
    }
    // The refused credential is an audit row too.
    let audit = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.audit_events WHERE action = 'auth.failed' AND request_id = '{unauth}'"),
        "1",
        10,
    )
    .await;
    assert_eq!(audit, "1");
    assert_eq!(
        g.metric("model_bridge_usage_sink_rows_total{outcome=\"lost\"}")
            .await,
        0.0
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_killed_twice_under_load_loses_and_doubles_nothing() {
    if shared_url().is_none() {
        return;
    }
    let ch = PrivateClickHouse::start();
    let url = ch.url();
    let db = new_db();
    let g = Gateway::start_edited(&[], "", |t| sink_config(t, &url, &db, ""));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Outages run on a blocking thread while the load runs here.
    let outages = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(1500));
                ch.kill();
                std::thread::sleep(Duration::from_millis(2500));
                ch.restart();
            }
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            ch
        })
    };
    let ((ok, failed, max), ch) = tokio::join!(load(&g, 4, stop), outages);
    let ch = ch.unwrap();
    assert_eq!(failed, 0, "no request fails because ClickHouse does");
    assert!(ok > 100, "load ran: {ok}");
    // Requests never wait on ClickHouse: none took as long as one insert timeout (2 s).
    assert!(max < Duration::from_secs(2), "slowest request {max:?}");
    let got = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events"),
        &ok.to_string(),
        60,
    )
    .await;
    let distinct = query(
        &url,
        &format!("SELECT uniqExact(request_id) FROM {db}.usage_events"),
    )
    .await;
    let m = g.metrics().await;
    assert_eq!(got, ok.to_string(), "one row per served request\n{m}");
    assert_eq!(distinct.trim(), ok.to_string(), "no request counted twice");
    let spooled = g
        .metric("model_bridge_usage_sink_rows_total{outcome=\"spooled\"}")
        .await;
    assert!(spooled > 0.0, "outages made the sink spool\n{m}");
    assert_eq!(
        g.metric("model_bridge_usage_sink_rows_total{outcome=\"lost\"}")
            .await,
        0.0
    );
    eprintln!("served {ok}, spooled {spooled}, slowest request {max:?}");
    drop(ch);
}

#[tokio::test]
async fn an_insert_that_landed_but_was_not_acknowledged_is_not_counted_twice() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let proxy = FlakyProxy::start(port);
    // Migrate through the direct URL; rows go through the proxy.
    let g = Gateway::start_edited(&[], "", |t| {
        sink_config(t, &proxy.url(), &db, "\n[audit]\nsink = \"clickhouse\"\n")
    });
    let c = client();
    let send = |n: usize| {
        let c = c.clone();
        let u = g.url("/v1/chat/completions");
        async move {
            for _ in 0..n {
                let r = c
                    .post(&u)
                    .json(&chat("gpt-4o-mini", false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        }
    };
    send(5).await;
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events"),
        "5",
        10,
    )
    .await;
    // … and the gateway has its answer (a switch between the commit and the answer would
    // swallow it too).
    g.wait_metric_at_least(
        "model_bridge_usage_sink_rows_total{outcome=\"inserted\"}",
        5.0,
        Duration::from_secs(10),
    )
    .await;
    proxy.set(Mode::SwallowAnswers);
    send(7).await;
    // An audit event too (the reload SIGHUP asks for), through the same swallowed answers.
    common::signal(&g.proc.0, "HUP");
    // The insert reaches ClickHouse, its answer does not: the batch is spooled.
    for sink in ["usage", "audit"] {
        g.wait_metric_at_least(
            &format!("model_bridge_sink_batches_total{{outcome=\"failed\",sink=\"{sink}\"}}"),
            1.0,
            Duration::from_secs(15),
        )
        .await;
    }
    // ClickHouse commits the insert whose answer is swallowed in its own time (the client
    // gave up on it already).
    let landed = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events"),
        "12",
        15,
    )
    .await;
    assert_eq!(landed, "12", "the unacknowledged insert did land");
    proxy.set(Mode::Pass);
    for sink in ["usage", "audit"] {
        g.wait_metric_at_least(
            &format!("model_bridge_sink_batches_total{{outcome=\"replayed\",sink=\"{sink}\"}}"),
            1.0,
            Duration::from_secs(15),
        )
        .await;
    }
    let total = query(
        &url,
        &format!("SELECT count(), uniqExact(request_id) FROM {db}.usage_events FORMAT TSV"),
    )
    .await;
    assert_eq!(
        total.trim(),
        "12\t12",
        "replay skipped the rows that had landed"
    );
    let audit = query(
        &url,
        &format!("SELECT count() - uniqExact(chain, seq), countIf(action = 'config.reload') FROM {db}.audit_events FORMAT TSV"),
    )
    .await;
    assert_eq!(
        audit.trim(),
        "0\t1",
        "the audit replay skipped the landed event"
    );
    assert_eq!(
        g.metric("model_bridge_usage_sink_rows_total{outcome=\"duplicate_skipped\"}")
            .await,
        7.0
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test]
async fn a_gateway_restarted_with_a_full_spool_replays_it() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let proxy = FlakyProxy::start(port);
    let mut g = Gateway::start_edited(&[], "", |t| sink_config(t, &proxy.url(), &db, ""));
    proxy.set(Mode::Refuse);
    let c = client();
    let ids = g.chats(&c, 20).await;
    // SIGTERM: the queue is flushed to the spool because ClickHouse does not answer.
    g.stop();
    let spool = g.dir.path().join("spool/usage");
    let segments = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count();
    assert!(segments > 0, "rows wait in the spool");
    let before = try_query(&url, &format!("SELECT count() FROM {db}.usage_events"))
        .await
        .unwrap_or_default();
    assert_eq!(before.trim(), "0");
    proxy.set(Mode::Pass);
    g.restart();
    let got = wait_for(
        &url,
        &format!("SELECT count(), uniqExact(request_id) FROM {db}.usage_events FORMAT TSV"),
        "20\t20",
        20,
    )
    .await;
    assert_eq!(got, "20\t20");
    let stored = query(
        &url,
        &format!("SELECT request_id FROM {db}.usage_events ORDER BY request_id FORMAT TSV"),
    )
    .await;
    let mut want = ids.clone();
    want.sort();
    assert_eq!(stored.lines().collect::<Vec<_>>(), want);
    query(&url, &format!("DROP DATABASE {db}")).await;
}

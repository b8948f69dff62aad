//! Limits and budgets through the real HTTP surface: request-limit accuracy under a concurrent
//! burst (one gateway, and three replicas sharing Redis), a stream's tokens counting while it
//! runs, concurrency, the budget race, month-to-date spend restored from ClickHouse after a
//! restart, and a Redis outage falling back to local limits and recovering.

mod common;

use common::clickhouse::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn chat(stream: bool, max_tokens: Option<u64>) -> Value {
    let mut b = json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(m) = max_tokens {
        b["max_tokens"] = json!(m);
    }
    b
}

/// Fires `n` requests at once, spread over `urls`; returns the statuses.
async fn burst(urls: &[String], n: usize) -> Vec<(u16, reqwest::header::HeaderMap, String)> {
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = c.post(&url).json(&chat(false, None)).send().await.unwrap();
            let s = r.status().as_u16();
            let h = r.headers().clone();
            (s, h, r.text().await.unwrap_or_default())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn limits_extra(limits: &str, settings: &str) -> String {
    format!("[limits]\n{settings}\n[orgs.default]\n[orgs.default.limits]\n{limits}\n")
}

fn accepted(results: &[(u16, reqwest::header::HeaderMap, String)]) -> usize {
    results.iter().filter(|r| r.0 == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_gets_exactly_the_request_limit() {
    let g = Gateway::start_with(&[], &limits_extra("requests_per_minute = 40", ""));
    let results = burst(&[g.url("/v1/chat/completions")], 120).await;
    let ok = accepted(&results);
    assert!(
        (39..=41).contains(&ok),
        "accepted {ok} of 120 with a limit of 40"
    );
    for (s, h, body) in &results {
        assert_eq!(
            h["x-ratelimit-limit-requests"], "40",
            "every response says the limit"
        );
        assert!(h.contains_key("x-ratelimit-remaining-requests"));
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        if *s == 429 {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
            assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        }
    }
    let m = g.metrics().await;
    assert!(
        m.contains(&format!(
            "model_bridge_ratelimit_rejections_total{{org=\"default\",reason=\"requests\"}} {}",
            120 - ok
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_model_override_has_its_own_counter_and_a_reload_keeps_counters() {
    let extra = format!(
        "{PRICEY}\n{}[orgs.default.limits.models.pricey]\nrequests_per_minute = 2\n",
        limits_extra("requests_per_minute = 5", "")
    );
    let g = Gateway::start_with(&[], &extra);
    let c = client();
    let send = |model: &'static str| {
        c.post(g.url("/v1/chat/completions"))
            .json(&json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let mut pricey = Vec::new();
    for _ in 0..3 {
        pricey.push(send("pricey").await.unwrap().status().as_u16());
    }
    assert_eq!(pricey, vec![200, 200, 429], "the alias's own limit of 2");
    let mut mini = Vec::new();
    for _ in 0..4 {
        mini.push(send("gpt-4o-mini").await.unwrap().status().as_u16());
    }
    assert_eq!(
        mini,
        vec![200; 4],
        "the org limit of 5 is counted apart from the override"
    );
    // A reload that keeps the limits keeps their counts: one request left under the org limit.
    let text = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(&g.config, format!("{text}\n# touched\n")).unwrap();
    let start = Instant::now();
    while g.metric("model_bridge_config_generation").await < 2.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send("gpt-4o-mini").await.unwrap().status(), 200);
    assert_eq!(send("gpt-4o-mini").await.unwrap().status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_admit_the_limit_once() {
    let redis = PrivateRedis::start();
    let extra = limits_extra(
        "requests_per_minute = 30",
        &format!(
            "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 500",
            redis.url()
        ),
    );
    let gs: Vec<Gateway> = (0..3).map(|_| Gateway::start_with(&[], &extra)).collect();
    let urls: Vec<String> = gs.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let results = burst(&urls, 90).await;
    let ok = accepted(&results);
    assert!(
        (29..=31).contains(&ok),
        "accepted {ok} of 90 across 3 replicas, limit 30"
    );
    for g in &gs {
        assert_eq!(g.metric("model_bridge_limits_redis_up").await, 1.0);
        assert_eq!(g.metric("model_bridge_limits_fallback_total").await, 0.0);
    }
}

/// A stream reserves its tokens when admitted and holds them while it runs; the end settles
/// the reservation to what it really used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_stream_holds_its_tokens() {
    let g = Gateway::start_with(&[], &limits_extra("tokens_per_minute = 3000", ""));
    let c = client();
    let url = g.url("/v1/chat/completions");
    let long = c
        .post(&url)
        .header("x-mock-chunks", "40")
        .header("x-mock-chunk-interval-ms", "50")
        .json(&chat(true, Some(2000)))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    let remaining: u64 = header(&long, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        remaining < 1000,
        "the stream reserved its max_tokens: {remaining} left"
    );
    // While it streams, a second large request does not fit.
    let r = c
        .post(&url)
        .json(&chat(false, Some(2000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "tokens_limit_exceeded");
    let (p, comp, _) = mock_usage(&long);
    let _ = long.bytes().await.unwrap();
    // Settled to ~prompt + 40 tokens: the large request fits now.
    let start = Instant::now();
    loop {
        let r = c
            .post(&url)
            .json(&chat(false, Some(2000)))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "settlement should free the unused reservation (used {p}+{comp})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_is_limited_while_requests_run() {
    let g = Gateway::start_with(&[], &limits_extra("concurrent_requests = 2", ""));
    let c = client();
    let url = g.url("/v1/chat/completions");
    let slow = || {
        c.post(&url)
            .header("x-mock-chunks", "20")
            .header("x-mock-chunk-interval-ms", "50")
            .json(&chat(true, None))
            .send()
    };
    let (a, b) = tokio::join!(slow(), slow());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let r = c.post(&url).json(&chat(false, None)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "concurrency_limit_exceeded");
    let _ = (a.bytes().await, b.bytes().await);
    let r = c.post(&url).json(&chat(false, None)).send().await.unwrap();
    assert_eq!(r.status(), 200, "slots are released when the streams end");
}

/// `pricey`: 1 USD per 1M completion tokens, prompts free — worst case of a request with
/// `max_tokens = 100` is 100,000 nano-USD.
const PRICEY: &str = r#"
[models.pricey]
provider = "mock"
model = "mock-1"
price = { input_per_1m = 0, output_per_1m = 1 }
"#;

fn budget_extra(usd: &str) -> String {
    format!(
        "{PRICEY}\n[orgs.default]\ndefault_cost_center = \"cc\"\n[orgs.default.cost_centers.cc]\nbudget = {{ usd = \"{usd}\", period = \"month\", soft = [0.05] }}\n"
    )
}

async fn pricey(g: &Gateway) -> (u16, Value) {
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": "pricey", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_never_overshoot_the_budget() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    // Fits 10 worst cases.
    let g = Gateway::start_edited(&[], &budget_extra("0.001"), |t| {
        sink_config(t, &url, &db, "")
    });
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let u = g.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(&u)
                .json(&json!({"model": "pricey", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (s, v)
        }));
    }
    let mut ok = 0u64;
    let mut spent = 0u64;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 => {
                ok += 1;
                spent += v["usage"]["completion_tokens"].as_u64().unwrap() * 1000;
            }
            429 => assert_eq!(v["error"]["code"], "budget_exceeded", "{v}"),
            other => panic!("status {other}: {v}"),
        }
    }
    assert!(ok >= 10, "the budget fits at least 10 worst cases: {ok}");
    assert!(
        spent <= 1_000_000,
        "spent {spent} nano-USD of a 1,000,000 budget"
    );
    let rows = wait_for(
        &url,
        &format!("SELECT count(), sum(cost_nanousd) FROM {db}.usage_events WHERE status = 200 FORMAT TSV"),
        &format!("{ok}\t{spent}"),
        15,
    )
    .await;
    assert_eq!(
        rows,
        format!("{ok}\t{spent}"),
        "ClickHouse agrees with what was served"
    );
    let m = g.metrics().await;
    let shown = m
        .lines()
        .find_map(|l| l.strip_prefix("model_bridge_budget_spend_usd{budget=\"default/cc\"} "))
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert!((shown * 1e9 - spent as f64).abs() < 1.0, "{shown}");
    // Passing 5% of the budget was announced: metric, audit event, and the warning header.
    assert_eq!(
        g.metric("model_bridge_budget_warnings_total{budget=\"default/cc\",threshold=\"5\"}")
            .await,
        1.0
    );
    let audit = wait_lines(&g.dir.path().join("audit.jsonl"), |l| {
        l.iter().any(|e| e["action"] == "budget.threshold")
    });
    assert!(audit.iter().any(|e| e["action"] == "budget.threshold"));
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": "pricey", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    // (Unless the race spent the budget to the last nano-dollar.)
    if r.status() == 200 {
        assert!(
            header(&r, "x-model-bridge-budget-warning").contains("cost center default/cc has used"),
            "{:?}",
            r.headers()
        );
    }
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn month_to_date_spend_is_restored_from_clickhouse() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    // 130,000 nano-USD: a request reserves 100,000 and costs a few thousand.
    let mut g = Gateway::start_edited(&[], &budget_extra("0.00013"), |t| {
        sink_config(t, &url, &db, "")
    });
    let mut admitted = 0;
    loop {
        let (s, v) = pricey(&g).await;
        if s == 429 {
            assert_eq!(v["error"]["code"], "budget_exceeded");
            break;
        }
        assert_eq!(s, 200);
        admitted += 1;
        assert!(admitted < 20, "the budget must stop this");
    }
    assert!(admitted >= 2, "{admitted}");
    g.stop();
    g.restart();
    let (s, v) = pricey(&g).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("budget_exceeded")),
        "spend restored after the restart: {v}"
    );
    assert!(g
        .log_text()
        .contains("period spend of 1 budgets loaded from ClickHouse"));
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = PrivateRedis::start();
    let extra = limits_extra(
        "requests_per_minute = 20",
        &format!(
            "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 200\nfallback_share = 0.5",
            redis.url()
        ),
    );
    let g = Gateway::start_with(&[], &extra);
    let url = vec![g.url("/v1/chat/completions")];
    assert_eq!(accepted(&burst(&url, 5).await), 5);
    redis.kill();
    // Local limits at this replica's share (10 of 20): still limited, never unlimited.
    let during = burst(&url, 40).await;
    let ok = accepted(&during);
    assert!((9..=11).contains(&ok), "accepted {ok} while Redis is down");
    assert!(during.iter().all(|r| r.0 == 200 || r.0 == 429));
    assert_eq!(g.metric("model_bridge_limits_redis_up").await, 0.0);
    assert!(g.metric("model_bridge_limits_fallback_total").await > 0.0);
    assert!(g.log_text().contains("Redis unreachable"));
    redis.restart();
    // Redis is retried a second after the failure; the fresh Redis has empty counters.
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = burst(&url, 1).await;
        if g.metric("model_bridge_limits_redis_up").await == 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never back on Redis"
        );
    }
    let after = burst(&url, 40).await;
    let ok = accepted(&after);
    assert!(
        (18..=20).contains(&ok),
        "shared limit again after recovery: {ok} {:?} {:?}",
        after.iter().map(|r| &r.2).take(2).collect::<Vec<_>>(),
        g.log_text()
            .lines()
            .filter(|l| l.contains("limits"))
            .collect::<Vec<_>>()
    );
}

/// Waits until every replica reports `limits_redis_up` = `want`, within `secs` seconds.
async fn wait_redis_up(gs: &[Gateway], want: f64, secs: u64) {
    for g in gs {
        g.wait_metric(
            "model_bridge_limits_redis_up",
            want,
            Duration::from_secs(secs),
        )
        .await;
    }
}

/// One priced request (8,000 nano-USD, worst case = actual); its status and request id.
async fn priced(url: &str, c: &reqwest::Client) -> (u16, String) {
    match c
        .post(url)
        .header("x-model-bridge-cost-center", "cc2")
        .json(&json!({"model": "pricey", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
    {
        Ok(r) => (
            r.status().as_u16(),
            header(&r, "x-request-id").to_string(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// Total cost of the answered requests (`(status, id)` sent to replica `i % 3`), from their
/// records.
fn cost_of(gs: &[Gateway], sent: &[(u16, String)]) -> i64 {
    sent.iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == 200)
        .map(|(i, (_, id))| {
            gs[i % gs.len()].record(id)["cost_nanousd"]
                .as_i64()
                .unwrap()
        })
        .sum()
}

/// A budget's spend as Redis holds it.
fn redis_spent(redis: &PrivateRedis) -> i64 {
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "mb:b:*",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    let key = keys
        .lines()
        .find(|k| !k.ends_with(":l") && !k.ends_with(":a"))
        .expect("a budget key");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "HGET", key, "spent"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Three replicas on one Redis. Redis restarted while idle, and again under load: every replica
/// sees it go (without traffic) and come back within seconds, and then enforces the shared
/// limit to within 1% again. While it is away, a budget is never over-spent: each replica may
/// commit only its share of what was left, and pays what it spent into Redis when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarts_across_three_replicas_keep_limits_and_budgets() {
    let mut redis = PrivateRedis::start();
    // 8 completion tokens at 1 USD per 1M = 8,000 nano-USD per request, worst case = actual.
    // The budget (of cost center cc2, which the priced requests name) fits 50 of them; the
    // shared request limit per alias is 100 a minute.
    let extra = format!(
        "{PRICEY}\n[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 1000\nfallback_share = 0.3333\n\
         [orgs.default]\ndefault_cost_center = \"cc\"\n[orgs.default.limits.models.\"gpt-4o-mini\"]\nrequests_per_minute = 100\n\
         [orgs.default.limits.models.\"same-name\"]\nrequests_per_minute = 100\n\
         [orgs.default.cost_centers.cc]\n[orgs.default.cost_centers.cc2]\nbudget = {{ usd = \"0.0004\", period = \"month\" }}\n",
        redis.url()
    );
    let gs: Vec<Gateway> = (0..3).map(|_| Gateway::start_with(&[], &extra)).collect();
    wait_redis_up(&gs, 1.0, 10).await;
    let chats: Vec<String> = gs.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let c = client();

    // Spend 20 of the budget's 50 requests while Redis is up.
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(priced(&chats[i % 3], &c).await);
        assert_eq!(before[i].0, 200);
    }

    // Restart while idle: every replica notices with no traffic at all, and comes back.
    redis.kill();
    wait_redis_up(&gs, 0.0, 10).await;

    // During the outage: 150 priced requests at once across the replicas. Each may commit a
    // third of the 30 left; before, each replica admitted the whole budget again.
    let during = futures_util::future::join_all((0..150).map(|i| priced(&chats[i % 3], &c))).await;
    assert!(
        during.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{during:?}"
    );
    let spent = cost_of(&gs, &before) + cost_of(&gs, &during);
    assert!(
        spent <= 400_000,
        "budget 400000 nano-USD over-spent during the outage: {spent}"
    );
    assert!(
        spent >= 300_000,
        "the replicas' shares were usable: {spent}"
    );

    redis.restart();
    wait_redis_up(&gs, 1.0, 10).await;
    // The fresh Redis relearned the period's spend exactly: what the replicas saw before the
    // outage as a floor, plus what each spent during it.
    assert_eq!(
        redis_spent(&redis),
        spent,
        "Redis's spend after it came back empty"
    );
    // And the budget holds from there on.
    let after = futures_util::future::join_all((0..30).map(|i| priced(&chats[i % 3], &c))).await;
    let total = spent + cost_of(&gs, &after);
    assert!(total <= 400_000, "over-spent after recovery: {total}");
    assert!(
        total >= 392_000,
        "the rest of the budget was usable: {total}"
    );

    // Under load: a steady stream on one alias while Redis restarts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (chats, stop, c) = (chats.clone(), stop.clone(), c.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.post(&chats[i % 3]).json(&chat(false, None)).send().await;
                i += 1;
            }
        })
    };
    redis.kill();
    wait_redis_up(&gs, 0.0, 10).await;
    redis.restart();
    wait_redis_up(&gs, 1.0, 10).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    // Accuracy is back: a burst of 300 on an alias with its own limit of 100 admits 100 (±1%).
    let burst_at: Vec<String> = chats.clone();
    let results = futures_util::future::join_all((0..300).map(|i| {
        c.post(&burst_at[i % 3])
            .json(&json!({"model": "same-name", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    }))
    .await;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    let mut fallbacks = Vec::new();
    for g in &gs {
        fallbacks.push(g.metric("model_bridge_limits_fallback_total").await);
    }
    assert!(
        (99..=101).contains(&ok),
        "accepted {ok} of 300, shared limit 100 (fallbacks so far {fallbacks:?})"
    );
}

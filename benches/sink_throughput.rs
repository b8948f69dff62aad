//! Sink throughput (not a test): how many usage rows per second the ClickHouse sink sustains into
//! a real server. Pushes `MB_BENCH_ROWS` records (default 1,000,000) through `ClickHouseUsage` as
//! fast as its queue takes them (pacing only when the queue is 80% full, so nothing is lost),
//! then waits until ClickHouse holds them all. With `MB_BENCH_RATE=<rows/s>` rows are offered at
//! that steady rate instead, which shows whether inserts alone keep up (nothing spooled).
//!
//!   MB_CLICKHOUSE_URL=http://127.0.0.1:18123 cargo bench --bench sink_throughput
//! (benches/warehouse.sh starts a server and runs it.)

use model_bridge::metrics::METRICS;
use model_bridge::usage::{UsageRecord, UsageSink, UsageSource};
use model_bridge::warehouse::sinks::ClickHouseUsage;
use model_bridge::warehouse::ClickHouseSettings;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn record(i: u64, org: &Arc<str>, cc: &Arc<str>, provider: &Arc<str>) -> UsageRecord {
    UsageRecord {
        ts_ms: model_bridge::time::now_unix_ms(),
        request_id: format!("req_bench_{i:016x}"),
        endpoint: "chat_completions",
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        requested_model: Some("gpt-4o-mini".into()),
        provider: Some(provider.clone()),
        provider_model: Some("gpt-4o-mini-2024-07-18".into()),
        stream: i.is_multiple_of(2),
        status: 200,
        error_type: None,
        cancelled: false,
        prompt_tokens: 100 + i % 50,
        cached_tokens: i % 7,
        completion_tokens: 20 + i % 30,
        usage_source: UsageSource::Provider,
        cost_nanousd: Some(42_000 + (i % 1000) as i64),
        cache_savings_nanousd: 0,
        latency_ms: 123.4,
        ttft_ms: Some(45.6),
        upstream_latency_ms: Some(120.0),
        retries: 0,
        experiment: None,
        variant: None,
        request_bytes: 512,
        response_bytes: 1024,
        client_ip: Some("10.1.2.3".into()),
        end_user: None,
        org: Some(org.clone()),
        team: None,
        user: Some("user@example.com".into()),
        key_id: Some("Kbench000001".into()),
        cost_center: Some(cc.clone()),
        department: Some("Engineering".into()),
        project: None,
        tags: vec!["bench".into()],
        config_generation: 1,
    }
}

fn count(url: &str, db: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            url,
            "--data",
            &format!("SELECT count() FROM {db}.usage_events"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn main() {
    let Ok(url) = std::env::var("MB_CLICKHOUSE_URL") else {
        eprintln!("sink_throughput: set MB_CLICKHOUSE_URL (benches/warehouse.sh does)");
        return;
    };
    let rows: u64 = std::env::var("MB_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let spool = tempfile::tempdir().expect("tempdir");
    let db = format!("mb_bench_{}", std::process::id());
    let mut s = ClickHouseSettings::local(&url);
    s.database = db.clone();
    s.spool_dir = spool.path().to_path_buf();
    s.batch_rows = 50_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(model_bridge::warehouse::migrate::run(&s))
        .expect("migrate");
    let capacity = 65_536;
    let sink = ClickHouseUsage::start(s.db_client(), s.pipeline("usage", capacity)).expect("sink");
    let (org, cc, provider): (Arc<str>, Arc<str>, Arc<str>) =
        ("acme".into(), "cc-42".into(), "openai".into());

    let start = Instant::now();
    let mut paced = 0u64;
    // MB_BENCH_RATE: offer rows at this steady rate (rows/s) instead of as fast as possible.
    let rate: Option<f64> = std::env::var("MB_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok());
    for i in 0..rows {
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                if wait > Duration::from_micros(500) {
                    std::thread::sleep(wait);
                }
            }
        }
        while METRICS.usage_sink_queue_depth.get() > capacity as i64 * 8 / 10 {
            paced += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        sink.submit(record(i, &org, &cc, &provider));
    }
    let submitted = start.elapsed();
    sink.flush(Duration::from_secs(120));
    while count(&url, &db) < rows && start.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = start.elapsed();
    let stored = count(&url, &db);
    let rows_by = |o: &str| METRICS.usage_rows.with_label_values(&[o]).get();
    println!(
        "sink_throughput: {rows} rows submitted in {:.2}s, all {stored} in ClickHouse after {:.2}s → {:.0} rows/s sustained \
         (inserted {}, spooled {}, lost {}, pacing waits {paced})",
        submitted.as_secs_f64(),
        total.as_secs_f64(),
        stored as f64 / total.as_secs_f64(),
        rows_by("inserted"),
        rows_by("spooled"),
        rows_by("lost"),
    );
    let _ = std::process::Command::new("curl")
        .args(["-s", &url, "--data", &format!("DROP DATABASE {db}")])
        .output();
}

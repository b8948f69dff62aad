//! ClickHouse migrations against the real server that `scripts/test.sh` starts
//! (`MB_CLICKHOUSE_URL`): applied in order, recorded, idempotent, and the spend rollup
//! aggregates what lands in `usage_events`.

use std::process::Command;

fn clickhouse_url() -> Option<String> {
    match std::env::var("MB_CLICKHOUSE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            // The README's test command always provides a server; only a bare `cargo test`
            // outside it skips, and says so.
            assert!(
                !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
                "MB_CLICKHOUSE_URL must be set in CI"
            );
            eprintln!("SKIPPED: MB_CLICKHOUSE_URL not set (run scripts/test.sh)");
            None
        }
    }
}

async fn query(url: &str, sql: &str) -> String {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .body(sql.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {text}");
    text
}

fn migrate(config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
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

#[tokio::test]
async fn migrations_apply_once_and_the_rollup_aggregates() {
    let Some(url) = clickhouse_url() else { return };
    let db = format!("mb_test_{:x}", rand::random::<u32>());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n"),
    )
    .unwrap();

    let first = migrate(&cfg);
    assert!(first.contains("applied [1, 2, 3]"), "{first}");
    let second = migrate(&cfg);
    assert!(
        second.contains("applied [], already applied [1, 2, 3]"),
        "{second}"
    );
    let recorded = query(&url, &format!("SELECT count() FROM {db}.schema_migrations")).await;
    assert_eq!(recorded.trim(), "3");

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

//! Warehouse operations against the real server: the audit trail's hash chains verify and a
//! tampered row is found; erasure anonymises a user's rows (CLI and admin API) and is audited;
//! retention drops old months; the spend API answers from the rollup, RBAC-checked and
//! org-scoped, with totals equal to an independent computation.

mod common;

use common::clickhouse::*;
use common::*;
use serde_json::{json, Value};

fn extra(dir: &std::path::Path) -> String {
    let policies = policies_dir(dir, "");
    format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[audit]
sink = "clickhouse"

[orgs.a]
default_cost_center = "a-eng"
[orgs.a.cost_centers.a-eng]
[orgs.a.cost_centers.a-research]
[orgs.b]
[orgs.b.cost_centers.b-ops]
"#,
        policies.display()
    )
}

async fn admin(g: &Gateway, key: &str, method: &str, path: &str) -> (u16, Value) {
    let c = client();
    let req = match method {
        "GET" => c.get(g.ops_url(path)),
        _ => c.post(g.ops_url(path)),
    };
    let r = req.bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sends a priced chat as `key`; returns the cost an independent computation gives.
async fn chat(g: &Gateway, key: &str, cost_center: Option<&str>) -> u64 {
    let mut req = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-mock-cached-tokens", "2");
    if let Some(cc) = cost_center {
        req = req.header("x-model-bridge-cost-center", cc);
    }
    let r = req
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (p, c, cached) = mock_usage(&r);
    let _ = r.bytes().await;
    (p - cached) * 150 + cached * 75 + c * 600
}

fn verify(g: &Gateway) -> (bool, String) {
    let (ok, out, err) = g.cli(&["audit", "verify"]);
    (ok, format!("{out}{err}"))
}

#[tokio::test]
async fn the_audit_trail_verifies_and_a_tampered_row_is_found() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    // Rows are signed: the public key is all `audit verify` needs.
    let (seed, public) = model_bridge::warehouse::signing::keygen();
    let signed = extra(dir.path()).replacen(
        "sink = \"clickhouse\"",
        &format!("sink = \"clickhouse\"\nsigning_key = \"{seed}\""),
        1,
    );
    let mut g = Gateway::start_edited(&[], &signed, |t| sink_config(t, &url, &db, ""));
    assert!(
        !g.log_text().contains(&seed),
        "the signing key is never logged"
    );
    // A CLI key creation (its own chain), auth failures and admin denials (the gateway's chain).
    let (invoker, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&invoker).await;
    for _ in 0..4 {
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .bearer_auth("mbk_nothere12345_0000000000000000000000000000000000000000")
            .json(&json!({"model": "gpt-4o-mini", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(admin(&g, &invoker, "POST", "/admin/v1/reload").await.0, 403);
    // A restart starts a new chain linked to the last one.
    g.stop();
    g.restart();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let chains = wait_for(
        &url,
        &format!("SELECT uniqExact(chain) FROM {db}.audit_events"),
        "3",
        15,
    )
    .await;
    assert_eq!(chains, "3", "CLI chain and two gateway lifetimes");
    let (ok, out) = verify(&g);
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");
    let (ok, out, err) = g.cli(&["audit", "verify", "--public-key", &public]);
    assert!(ok, "every row is signed: {out}{err}");

    // Someone with write access appends a forged row with a correctly computed hash and link:
    // the chain alone cannot tell, the signature check can.
    let last = query(
        &url,
        &format!(
            "SELECT toUInt32(ts), ts_ms, chain, seq, prev_hash, hash, request_id, actor, org, action, \
             resource, outcome, reason, before, after, client_ip, user_agent FROM {db}.audit_events \
             ORDER BY ts_ms DESC, seq DESC LIMIT 1 FORMAT TSV"
        ),
    )
    .await;
    let f: Vec<&str> = last.trim_end_matches('\n').split('\t').collect();
    let mut row = model_bridge::warehouse::rows::AuditRow {
        ts: f[0].parse().unwrap(),
        ts_ms: f[1].parse::<u64>().unwrap() + 1,
        chain: f[2].into(),
        seq: f[3].parse::<u64>().unwrap() + 1,
        prev_hash: f[5].into(),
        hash: String::new(),
        request_id: "req_forged".into(),
        actor: "key:attacker".into(),
        org: "a".into(),
        action: "key.create".into(),
        resource: "key:backdoor".into(),
        outcome: "succeeded".into(),
        reason: String::new(),
        before: String::new(),
        after: String::new(),
        client_ip: String::new(),
        user_agent: String::new(),
        sig: String::new(),
    };
    row.hash = model_bridge::warehouse::chain::row_hash(&row);
    query(
        &url,
        &format!(
            "INSERT INTO {db}.audit_events (ts, ts_ms, chain, seq, prev_hash, hash, request_id, actor, org, action, resource, outcome) \
             VALUES ({}, {}, '{}', {}, '{}', '{}', 'req_forged', 'key:attacker', 'a', 'key.create', 'key:backdoor', 'succeeded')",
            row.ts, row.ts_ms, row.chain, row.seq, row.prev_hash, row.hash
        ),
    )
    .await;
    let (ok, out) = verify(&g);
    assert!(ok, "without the key a well-forged tail passes: {out}");
    let (ok, out, err) = g.cli(&["audit", "verify", "--public-key", &public]);
    assert!(!ok, "{out}{err}");
    assert!(out.contains("signature"), "{out}{err}");
    query(
        &url,
        &format!("ALTER TABLE {db}.audit_events DELETE WHERE request_id = 'req_forged'"),
    )
    .await;
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.audit_events WHERE request_id = 'req_forged'"),
        "0",
        30,
    )
    .await;

    // Someone turns a denial into an allowance.
    let chain = query(
        &url,
        &format!("SELECT chain FROM {db}.audit_events WHERE action = 'auth.failed' ORDER BY ts_ms LIMIT 1"),
    )
    .await;
    let chain = chain.trim();
    query(
        &url,
        &format!("ALTER TABLE {db}.audit_events UPDATE outcome = 'allowed' WHERE chain = '{chain}' AND seq = 2"),
    )
    .await;
    wait_for(
        &url,
        &format!("SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0"),
        "0",
        30,
    )
    .await;
    let (ok, out) = verify(&g);
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN") && out.contains(&format!("chain {chain} seq 2")),
        "{out}"
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test]
async fn erasure_retention_and_spend() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_edited(&[], &extra(dir.path()), |t| {
        sink_config(t, &url, &db, "usage_retention_months = 3")
    });
    let (carol, _) = g.create_key(&["--org", "a", "--user", "carol@a.test", "--role", "invoker"]);
    let (dave, _) = g.create_key(&[
        "--org",
        "a",
        "--user",
        "dave@a.test",
        "--role",
        "invoker",
        "--role",
        "finance",
    ]);
    let (bob, _) = g.create_key(&["--org", "b", "--role", "invoker"]);
    let (b_admin, _) = g.create_key(&["--org", "b", "--role", "org-admin"]);
    let (root, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    g.wait_key(&root).await;

    let mut cost_a = 0;
    let mut cost_research = 0;
    for _ in 0..3 {
        cost_a += chat(&g, &carol, None).await;
    }
    for _ in 0..2 {
        let c = chat(&g, &dave, Some("a-research")).await;
        cost_a += c;
        cost_research += c;
    }
    let cost_b = chat(&g, &bob, None).await;
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events"),
        "6",
        15,
    )
    .await;
    // Rows from long ago, as if the gateway had run then.
    query(
        &url,
        &format!(
            "INSERT INTO {db}.usage_events (ts, ts_ms, request_id, org, user, cost_nanousd, cost_known) VALUES \
             ('2020-01-15 00:00:00', 0, 'old1', 'a', 'carol@a.test', 5, 1), ('2020-02-15 00:00:00', 0, 'old2', 'a', 'x', 5, 1)"
        ),
    )
    .await;

    // Spend: the caller's org by default, grouped; totals equal the independent sums.
    let today = query(&url, "SELECT toString(today())").await;
    let q = format!(
        "/admin/v1/spend?from={}&to={}&group_by=cost_center,model",
        today.trim(),
        today.trim()
    );
    let (s, v) = admin(&g, &dave, "GET", &q).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["org"], "a");
    assert_eq!(v["total"]["requests"], 5);
    assert_eq!(v["total"]["cost_nanousd"], cost_a);
    let research = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["cost_center"] == "a-research")
        .unwrap();
    assert_eq!(research["cost_nanousd"], cost_research);
    assert_eq!(research["model"], "gpt-4o-mini");
    let (s, v) = admin(&g, &b_admin, "GET", &q).await;
    assert_eq!(
        (s, v["total"]["cost_nanousd"].as_u64()),
        (200, Some(cost_b))
    );
    assert_eq!(
        admin(&g, &b_admin, "GET", &format!("{q}&org=a")).await.0,
        404
    );
    assert_eq!(
        admin(&g, &b_admin, "GET", &format!("{q}&org=*")).await.0,
        403
    );
    assert_eq!(admin(&g, &carol, "GET", &q).await.0, 403, "invoker");
    let all = format!(
        "/admin/v1/spend?from={}&to={}&org=*&group_by=org",
        today.trim(),
        today.trim()
    );
    let (s, v) = admin(&g, &root, "GET", &all).await;
    assert_eq!(s, 200);
    assert_eq!(v["total"]["cost_nanousd"], cost_a + cost_b);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        admin(&g, &dave, "GET", "/admin/v1/spend?from=2026-13-01")
            .await
            .0,
        400
    );

    // By month, as CSV (chargeback): the API and the CLI give the same lines, whose figures
    // are the independent sums — the two old months of org a, and this month of each org.
    let since = format!(
        "/admin/v1/spend?from=2020-01-01&to={}&org=*&group_by=org,month&format=csv",
        today.trim()
    );
    let r = client()
        .get(g.ops_url(&since))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(common::header(&r, "content-type").starts_with("text/csv"));
    let csv_api = r.text().await.unwrap();
    let lines: Vec<&str> = csv_api.lines().collect();
    assert_eq!(
        lines[0],
        "org,month,requests,prompt_tokens,cached_tokens,completion_tokens,cost_nanousd,cost_usd,cache_savings_nanousd,unpriced_requests,errors"
    );
    let month = &today.trim()[..7];
    let cost_of = |org: &str, m: &str| -> Option<u64> {
        lines.iter().find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0] == org && f[1] == m).then(|| f[6].parse().unwrap())
        })
    };
    assert_eq!(cost_of("a", "2020-01"), Some(5));
    assert_eq!(cost_of("a", "2020-02"), Some(5));
    assert_eq!(cost_of("a", month), Some(cost_a));
    assert_eq!(cost_of("b", month), Some(cost_b));
    assert_eq!(lines.len(), 5, "{csv_api}");
    let today_s = today.trim().to_string();
    let cli = |format: &str| {
        let (ok, out, err) = g.cli(&[
            "report",
            "spend",
            "--from",
            "2020-01-01",
            "--to",
            &today_s,
            "--group-by",
            "org,month",
            "--format",
            format,
        ]);
        assert!(ok, "{err}");
        out
    };
    assert_eq!(cli("csv"), csv_api, "the CLI and the API agree");
    let json: Value = serde_json::from_str(&cli("json")).unwrap();
    assert_eq!(json["total"]["cost_nanousd"], cost_a + cost_b + 10);
    let table = cli("table");
    assert!(
        table.lines().last().unwrap().starts_with("TOTAL")
            && table.contains(&(cost_a + cost_b + 10).to_string()),
        "{table}"
    );
    assert_eq!(
        admin(&g, &root, "GET", "/admin/v1/spend?format=xml")
            .await
            .0,
        400
    );

    // Every column of the schema that can name a person is either erased or kept on purpose.
    let personal = query(
        &url,
        &format!(
            "SELECT table, name FROM system.columns WHERE database = '{db}' AND \
             match(name, '(^|_)user($|_)|client_ip|user_agent|comment|actor|email|(^|_)ip$') \
             AND table NOT LIKE '.inner%' FORMAT TSV"
        ),
    )
    .await;
    use model_bridge::warehouse::compliance::{KEPT, PERSONAL};
    let mut tables_seen = 0;
    for line in personal.lines() {
        let (table, column) = line.split_once('\t').unwrap();
        let erased = PERSONAL.iter().any(|p| {
            p.table == table && (p.user_columns.contains(&column) || p.cleared.contains(&column))
        });
        let kept = KEPT.iter().any(|(t, c, _)| *t == table && *c == column);
        assert!(
            erased || kept,
            "{table}.{column} names a person but erasure does not cover it"
        );
        tables_seen += 1;
    }
    assert!(tables_seen >= 6, "{personal}");
    // Carol also wrote feedback: erased with her usage rows.
    query(
        &url,
        &format!(
            "INSERT INTO {db}.feedback (ts, ts_ms, feedback_id, batch_id, request_id, score, comment, org, key_id, user) \
             VALUES (now(), 0, 'fb1', 'b', 'req_x', 1, 'call me at +1 555 0100', 'a', 'k', 'carol@a.test')"
        ),
    )
    .await;

    // Erasure by the CLI: carol's rows anonymised, tokens and cost kept.
    let (ok, out, err) = g.cli(&["erase", "--user", "carol@a.test"]);
    assert!(ok, "{out}{err}");
    let fb = query(
        &url,
        &format!(
            "SELECT user, comment, score FROM {db}.feedback WHERE feedback_id = 'fb1' FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(fb.trim(), "erased\t\t1", "feedback is erased too");
    assert!(out.contains("4 usage rows"), "{out}");
    let left = query(
        &url,
        &format!("SELECT countIf(user = 'carol@a.test'), countIf(user = 'erased'), sum(cost_nanousd) FROM {db}.usage_events WHERE org = 'a' FORMAT TSV"),
    )
    .await;
    assert_eq!(left.trim(), format!("0\t4\t{}", cost_a + 10));
    // … and by the admin API, which needs its own permission.
    let path = "/admin/v1/orgs/a/users/dave%40a.test/erase";
    assert_eq!(admin(&g, &dave, "POST", path).await.0, 403);
    let (s, v) = admin(&g, &root, "POST", path).await;
    assert_eq!((s, v["usage_rows"].as_u64()), (200, Some(2)), "{v}");
    let dave_left = query(
        &url,
        &format!("SELECT count() FROM {db}.usage_events WHERE user = 'dave@a.test'"),
    )
    .await;
    assert_eq!(dave_left.trim(), "0");

    // Retention: three months kept, so 2020 goes; today stays.
    let (ok, out, err) = g.cli(&["retention", "apply"]);
    assert!(ok, "{out}{err}");
    let rows = query(
        &url,
        &format!("SELECT count(), countIf(toYear(ts) = 2020) FROM {db}.usage_events FORMAT TSV"),
    )
    .await;
    assert_eq!(rows.trim(), "6\t0");

    // Every one of those actions is in the audit trail, which still verifies.
    let audited = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.audit_events WHERE action IN ('user.erase', 'retention.apply')"),
        "3",
        15,
    )
    .await;
    assert_eq!(audited, "3");
    let erased_by_api = query(
        &url,
        &format!("SELECT actor FROM {db}.audit_events WHERE action = 'user.erase' AND resource = 'user:dave@a.test'"),
    )
    .await;
    assert!(erased_by_api.starts_with("key:"), "{erased_by_api}");
    let (ok, out) = verify(&g);
    assert!(ok, "{out}");
    query(&url, &format!("DROP DATABASE {db}")).await;
}

/// Forecast and anomalies answer from the rollup: a flat cost center's month-end forecast is
/// its known answer, and the one spike of another is found, with the model that drove it.
#[tokio::test]
async fn forecast_and_anomalies_answer_from_the_rollup() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    // Monthly budgets: $5 for the flat cost center (already spent), $1M for the org (never).
    let tenants = extra(dir.path()).replace(
        "default_cost_center = \"a-eng\"",
        "default_cost_center = \"a-eng\"\nbudget = { usd = \"1000000\", period = \"month\" }",
    ) + "[orgs.a.cost_centers.flat]\nmonthly_budget_usd = \"5\"\n";
    let g = Gateway::start_edited(&[], &tenants, |t| sink_config(t, &url, &db, ""));
    let (dave, _) = g.create_key(&["--org", "a", "--role", "finance"]);
    let (bob, _) = g.create_key(&["--org", "b", "--role", "finance"]);
    g.wait_key(&dave).await;
    const USD: i64 = 1_000_000_000;
    let now = model_bridge::time::now_unix();
    let today = now - now % 86_400;
    let spike_day = today - 5 * 86_400;
    let mut rows = Vec::new();
    for i in 0..=70u64 {
        let day = today - i * 86_400;
        let ts = model_bridge::time::date(day);
        for cc in ["flat", "spiky"] {
            rows.push(format!(
                "('{ts} 00:00:01', 'r-{cc}-{i}', 'a', '{cc}', 'gpt-4o-mini', {}, 1)",
                10 * USD
            ));
        }
        if day == spike_day {
            rows.push(format!(
                "('{ts} 00:00:02', 'r-spike', 'a', 'spiky', 'gpt-spike', {}, 1)",
                40 * USD
            ));
        }
    }
    query(
        &url,
        &format!(
            "INSERT INTO {db}.usage_events (ts, request_id, org, cost_center, requested_model, cost_nanousd, cost_known) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;

    // Flat $10 a day: the month ends at what was spent plus $10 for each day (and the rest
    // of today) still to come.
    let (s, v) = admin(
        &g,
        &dave,
        "GET",
        "/admin/v1/spend/forecast?cost_center=flat",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (y, m) = model_bridge::time::year_month(now);
    let month_start =
        model_bridge::time::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z")).unwrap();
    let days_so_far = (today - month_start) / 86_400 + 1;
    assert_eq!(v["spent_nanousd"], days_so_far as i64 * 10 * USD, "{v}");
    let days_after = v["days_left"].as_i64().unwrap() - 1;
    let left_today = 1.0 - (now - today) as f64 / 86_400.0;
    let want =
        (days_so_far as i64 + days_after) * 10 * USD + (left_today * 10.0 * USD as f64) as i64;
    let got = v["forecast_nanousd"].as_i64().unwrap();
    assert!(
        (got - want).abs() < USD / 10,
        "forecast {got}, want {want}: {v}"
    );
    assert_eq!(v["budget_nanousd"], 5 * USD);
    assert_eq!(v["exhausted_on"], model_bridge::time::date(today), "{v}");
    let (_, v) = admin(&g, &dave, "GET", "/admin/v1/spend/forecast").await;
    assert_eq!(v["budget_usd"], "1000000.000000000", "{v}");
    assert_eq!(v["exhausted_on"], Value::Null, "{v}");

    // The spike is the one anomaly of the last 30 days, driven by the spike model.
    let (s, v) = admin(
        &g,
        &dave,
        "GET",
        "/admin/v1/spend/anomalies?cost_center=spiky",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["day"], model_bridge::time::date(spike_day));
    assert_eq!(data[0]["actual_nanousd"], 50 * USD);
    assert_eq!(data[0]["expected_nanousd"], 10 * USD);
    assert_eq!(data[0]["drivers"]["model"][0]["value"], "gpt-spike");
    assert_eq!(data[0]["drivers"]["model"][0]["cost_nanousd"], 40 * USD);
    // No anomaly in the flat cost center; nothing of org a for org b.
    let (_, v) = admin(
        &g,
        &dave,
        "GET",
        "/admin/v1/spend/anomalies?cost_center=flat",
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
    let (s, v) = admin(&g, &bob, "GET", "/admin/v1/spend/forecast").await;
    assert_eq!((s, v["spent_nanousd"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(
        admin(&g, &bob, "GET", "/admin/v1/spend/anomalies?org=a")
            .await
            .0,
        404
    );
    assert_eq!(
        admin(
            &g,
            &dave,
            "GET",
            "/admin/v1/spend/anomalies?from=2026-02-30"
        )
        .await
        .0,
        400
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

//! Finance analytics on the real ClickHouse server: a known set of usage rows (two orgs that
//! share a cost center name, several cost centers, departments, projects, teams, keys,
//! models, experiments and months, errors, unpriced and cached requests, one spike) is loaded,
//! and every finance dashboard query, the spend / chargeback / anomalies APIs and the CLI
//! reports must give exactly what an independent computation over those rows gives — to the
//! nano-dollar, and nothing of the other org. The rollups' backfill and reconciliation are
//! exact; retention keeps them equal to the raw rows for every kept month.

mod common;

use common::clickhouse::*;
use common::*;
use model_bridge::finance::allocation;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const USD: i64 = 1_000_000_000;

/// One usage row of the fixture, as the test knows it.
#[derive(Debug, Clone)]
struct Row {
    ts: u64,
    org: &'static str,
    team: &'static str,
    cc: &'static str,
    dept: &'static str,
    project: &'static str,
    key: &'static str,
    model: &'static str,
    provider: &'static str,
    experiment: &'static str,
    variant: &'static str,
    status: u16,
    prompt: i64,
    cached: i64,
    completion: i64,
    cost: i64,
    known: bool,
    savings: i64,
}

impl Row {
    fn day(&self) -> String {
        model_bridge::time::date(self.ts)
    }
    fn dim(&self, d: &str) -> String {
        match d {
            "org" => self.org.into(),
            "team" => self.team.into(),
            "cost_center" => self.cc.into(),
            "department" => self.dept.into(),
            "project" => self.project.into(),
            "key_id" => self.key.into(),
            "model" => self.model.into(),
            "provider" => self.provider.into(),
            "experiment" => self.experiment.into(),
            "variant" => self.variant.into(),
            "day" => self.day(),
            "month" => self.day()[..7].to_string(),
            other => panic!("no dimension {other}"),
        }
    }
}

/// What a set of rows sums to.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Agg {
    requests: i64,
    prompt: i64,
    cached: i64,
    completion: i64,
    cost: i64,
    savings: i64,
    errors: i64,
    unpriced: i64,
}

impl Agg {
    fn add(&mut self, r: &Row) {
        self.requests += 1;
        self.prompt += r.prompt;
        self.cached += r.cached;
        self.completion += r.completion;
        self.cost += r.cost;
        self.savings += r.savings;
        self.errors += i64::from(r.status >= 400);
        self.unpriced += i64::from(!r.known);
    }
    fn tokens(&self) -> i64 {
        self.prompt + self.completion
    }
}

fn sum<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Agg {
    let mut a = Agg::default();
    for r in rows {
        a.add(r);
    }
    a
}

fn group<'a>(rows: impl IntoIterator<Item = &'a Row>, dims: &[&str]) -> BTreeMap<Vec<String>, Agg> {
    let mut m: BTreeMap<Vec<String>, Agg> = BTreeMap::new();
    for r in rows {
        let key = dims.iter().map(|d| r.dim(d)).collect();
        m.entry(key).or_default().add(r);
    }
    m
}

/// The attributions the fixture cycles through per org.
struct Combo {
    team: &'static str,
    cc: &'static str,
    dept: &'static str,
    project: &'static str,
    key: &'static str,
    model: &'static str,
    provider: &'static str,
    experiment: &'static str,
    variant: &'static str,
}

const ACME: &[Combo] = &[
    Combo {
        team: "ml",
        cc: "eng",
        dept: "R&D",
        project: "apollo",
        key: "k-ml",
        model: "gpt-4o",
        provider: "openai",
        experiment: "",
        variant: "",
    },
    Combo {
        team: "ml",
        cc: "research",
        dept: "R&D",
        project: "",
        key: "k-shared",
        model: "gpt-4o-mini",
        provider: "openai",
        experiment: "exp-1",
        variant: "a",
    },
    Combo {
        team: "web",
        cc: "sales",
        dept: "GTM",
        project: "",
        key: "k-web",
        model: "gpt-4o-mini",
        provider: "azure",
        experiment: "exp-1",
        variant: "b",
    },
    Combo {
        team: "web",
        cc: "ops",
        dept: "IT",
        project: "hermes",
        key: "k-web2",
        model: "llama",
        provider: "vllm",
        experiment: "",
        variant: "",
    },
    Combo {
        team: "",
        cc: "sales",
        dept: "GTM",
        project: "apollo",
        key: "k-sales",
        model: "gpt-4o",
        provider: "azure",
        experiment: "",
        variant: "",
    },
];
const GLOBEX: &[Combo] = &[Combo {
    team: "ml",
    cc: "eng",
    dept: "R&D",
    project: "apollo",
    key: "k-g1",
    model: "gpt-4o",
    provider: "openai",
    experiment: "exp-1",
    variant: "a",
}];

/// 95 days of rows up to now: every combo twice a day (costs that do not divide evenly),
/// errors, unpriced and cached requests, and one spike of acme/sales three days ago.
fn fixture(now: u64) -> Vec<Row> {
    let today = now - now % 86_400;
    let mut rows = Vec::new();
    for d in 0..95u64 {
        let day = today - d * 86_400;
        for (org, combos) in [("acme", ACME), ("globex", GLOBEX)] {
            for (i, c) in combos.iter().enumerate() {
                for k in 0..2u64 {
                    let hour = (i as u64 * 5 + k * 11 + d) % 24;
                    let ts = day + hour * 3_600 + 60 * i as u64 + k;
                    // Rows of today only up to now.
                    if ts > now {
                        continue;
                    }
                    let n = (d * 7 + i as u64 * 3 + k) as i64;
                    let error = (d + i as u64).is_multiple_of(11) && k == 1;
                    let unpriced = (d + i as u64).is_multiple_of(13) && k == 0;
                    let cached = if i % 2 == 0 { 100 + n % 50 } else { 0 };
                    let cost = if error || unpriced {
                        0
                    } else {
                        USD / 2 + 1_000_003 * (i as i64 + 1) + n % 97
                    };
                    rows.push(Row {
                        ts,
                        org,
                        team: c.team,
                        cc: c.cc,
                        dept: c.dept,
                        project: c.project,
                        key: c.key,
                        model: c.model,
                        provider: c.provider,
                        experiment: c.experiment,
                        variant: c.variant,
                        status: if error { 500 } else { 200 },
                        prompt: if error { 0 } else { 1_000 + n },
                        cached: if error { 0 } else { cached },
                        completion: if error { 0 } else { 200 + n % 17 },
                        cost,
                        known: !unpriced,
                        savings: if cost > 0 { cached * 75 } else { 0 },
                    });
                }
            }
        }
    }
    // The spike: acme/sales spends $40 more three days ago, on a model, key and project of
    // its own.
    let spike = today - 3 * 86_400 + 15 * 3_600;
    rows.push(Row {
        ts: spike,
        org: "acme",
        team: "web",
        cc: "sales",
        dept: "GTM",
        project: "zeus",
        key: "k-spiky",
        model: "gpt-spike",
        provider: "openai",
        experiment: "",
        variant: "",
        status: 200,
        prompt: 50_000,
        cached: 0,
        completion: 9_000,
        cost: 40 * USD + 7,
        known: true,
        savings: 0,
    });
    rows
}

fn insert_sql(db: &str, rows: &[&Row]) -> String {
    let mut sql = format!("INSERT INTO {db}.usage_events (ts, ts_ms, request_id, org, team, cost_center, department, project, key_id, requested_model, provider, experiment, variant, status, prompt_tokens, cached_tokens, completion_tokens, cost_nanousd, cost_known, cache_savings_nanousd) FORMAT JSONEachRow\n");
    for (i, r) in rows.iter().enumerate() {
        let ts = model_bridge::time::date(r.ts)
            + &format!(
                " {:02}:{:02}:{:02}",
                r.ts % 86_400 / 3_600,
                r.ts % 3_600 / 60,
                r.ts % 60
            );
        sql.push_str(
            &json!({
                "ts": ts, "ts_ms": r.ts * 1000, "request_id": format!("req-{}-{i}", r.ts),
                "org": r.org, "team": r.team, "cost_center": r.cc, "department": r.dept,
                "project": r.project, "key_id": r.key, "requested_model": r.model,
                "provider": r.provider, "experiment": r.experiment, "variant": r.variant,
                "status": r.status, "prompt_tokens": r.prompt, "cached_tokens": r.cached,
                "completion_tokens": r.completion, "cost_nanousd": r.cost,
                "cost_known": u8::from(r.known), "cache_savings_nanousd": r.savings,
            })
            .to_string(),
        );
        sql.push('\n');
    }
    sql
}

fn tenants(dir: &std::path::Path) -> String {
    let policies = policies_dir(dir, "");
    format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[finance]
watch_interval_secs = 0

[orgs.acme]
budget = {{ usd = "1000", period = "month", soft = [0.5, 0.9] }}
[orgs.acme.teams.ml]
budget = {{ usd = "20", period = "month", soft = [0.25, 0.5] }}
[orgs.acme.teams.web]
[orgs.acme.cost_centers.eng]
department = "R&D"
monthly_budget_usd = "40"
[orgs.acme.cost_centers.research]
department = "R&D"
[orgs.acme.cost_centers.sales]
department = "GTM"
budget = {{ usd = "15", period = "month", soft = [0.8] }}
[orgs.acme.cost_centers.ops]
department = "IT"
budget = {{ usd = "5", period = "30d" }}
[[orgs.acme.allocations]]
source = "key:k-shared"
split = {{ eng = 60, sales = 40 }}
[[orgs.acme.allocations]]
source = "project:apollo"
split = {{ research = 33.33, eng = 33.33, sales = 33.34 }}
[[orgs.acme.allocations]]
source = "team:web"
split = {{ ops = 100 }}

[orgs.globex]
[orgs.globex.cost_centers.eng]
department = "R&D"
monthly_budget_usd = "100"
"#,
        policies.display()
    )
}

/// Grafana's template and macro expansion (the ClickHouse plugin's `$__dateFilter`,
/// `$__timeFilter`, `$__fromTime`, `$__toTime`; `${var:sqlstring}`), over `[from, to]`.
fn expand(sql: &str, vars: &[(&str, &str)], from: u64, to: u64) -> String {
    let mut out = sql.to_string();
    for (name, value) in vars {
        out = out.replace(
            &format!("${{{name}:sqlstring}}"),
            &format!("'{}'", value.replace('\'', "''")),
        );
    }
    let (fd, td) = (model_bridge::time::date(from), model_bridge::time::date(to));
    for (macro_name, expansion) in [
        (
            "$__dateFilter(",
            format!(">= toDate('{fd}') AND # <= toDate('{td}')"),
        ),
        (
            "$__timeFilter(",
            format!(">= toDateTime({from}) AND # <= toDateTime({to})"),
        ),
    ] {
        while let Some(at) = out.find(macro_name) {
            let rest = &out[at + macro_name.len()..];
            let close = rest.find(')').unwrap();
            let col = rest[..close].to_string();
            let replaced = format!("{col} {}", expansion.replace('#', &col));
            out = format!("{}{}{}", &out[..at], replaced, &rest[close + 1..]);
        }
    }
    out = out
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"));
    assert!(!out.contains('$'), "unexpanded macro or variable in {out}");
    out
}

async fn run(url: &str, db: &str, sql: &str) -> Vec<Value> {
    let r = query(
        &format!("{url}/?database={db}&output_format_json_quote_64bit_integers=0"),
        &format!("{sql} FORMAT JSON"),
    )
    .await;
    let v: Value = serde_json::from_str(&r).unwrap_or_else(|e| panic!("{e}: {r}"));
    v["data"].as_array().unwrap().clone()
}

fn nanos(v: &Value) -> i64 {
    (v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) * 1e9).round() as i64
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= want.abs() * 1e-9 + 1e-9,
        "{what}: {got} != {want}"
    );
}

const DIMS: &[&str] = &[
    "org",
    "team",
    "cost_center",
    "department",
    "project",
    "key_id",
    "model",
    "provider",
    "experiment",
    "variant",
    "day",
    "month",
];

/// Checks each measure a result row carries against the rows of its group.
fn check_measures(row: &Value, a: &Agg, what: &str) {
    for (col, v) in row.as_object().unwrap() {
        match col.as_str() {
            "cost_usd" => assert_eq!(nanos(v), a.cost, "{what}: {col}"),
            "savings_usd" => assert_eq!(nanos(v), a.savings, "{what}: {col}"),
            "requests" => assert_eq!(int(v), a.requests, "{what}: {col}"),
            "tokens" => assert_eq!(int(v), a.tokens(), "{what}: {col}"),
            "errors" => assert_eq!(int(v), a.errors, "{what}: {col}"),
            "cached_tokens" => assert_eq!(int(v), a.cached, "{what}: {col}"),
            "cached_pct" => close(
                v.as_f64().unwrap(),
                (10_000.0 * a.cached as f64 / a.prompt.max(1) as f64).round() / 100.0,
                what,
            ),
            "usd_per_1k_tokens" => close(
                v.as_f64().unwrap(),
                a.cost as f64 / 1e9 * 1000.0 / a.tokens().max(1) as f64,
                what,
            ),
            "usd_per_request" => close(
                v.as_f64().unwrap(),
                a.cost as f64 / 1e9 / a.requests.max(1) as f64,
                what,
            ),
            d if DIMS.contains(&d) => {}
            other => panic!("{what}: no independent check for column `{other}`"),
        }
    }
}

/// A grouped panel: every row equals its group, and the groups are all there (or the top
/// `limit` by cost).
fn check_groups(result: &[Value], rows: &[&Row], dims: &[&str], limit: Option<usize>, what: &str) {
    let want = group(rows.iter().copied(), dims);
    for r in result {
        let key: Vec<String> = dims
            .iter()
            .map(|d| {
                r[*d]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: {d} in {r}"))
                    .to_string()
            })
            .collect();
        let a = want
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: group {key:?} is not in the rows"));
        check_measures(r, a, &format!("{what} {key:?}"));
    }
    match limit {
        None => assert_eq!(result.len(), want.len(), "{what}: groups"),
        Some(n) => {
            assert_eq!(result.len(), want.len().min(n), "{what}: groups");
            let mut costs: Vec<i64> = want.values().map(|a| a.cost).collect();
            costs.sort_unstable_by(|a, b| b.cmp(a));
            let shown: Vec<i64> = result.iter().map(|r| nanos(&r["cost_usd"])).collect();
            assert_eq!(shown, costs[..shown.len()].to_vec(), "{what}: the top {n}");
        }
    }
}

/// Independent chargeback: each source's monthly spend split by its allocation.
fn chargeback(
    rows: &[&Row],
    allocations: &[allocation::Allocation],
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut by_source: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for r in rows {
        let src = allocation::applicable(allocations, r.key, r.project, r.team)
            .map(|a| a.source())
            .unwrap_or_default();
        let own = if src.is_empty() {
            r.cc.to_string()
        } else {
            String::new()
        };
        *by_source.entry((r.dim("month"), src, own)).or_default() += r.cost;
    }
    let mut out: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for ((month, src, own), s) in by_source {
        match allocations.iter().find(|a| a.source() == src) {
            Some(a) => {
                for ((cc, _), part) in a.shares.iter().zip(allocation::split(s, &a.shares)) {
                    let e = out.entry((month.clone(), cc.clone())).or_default();
                    e.0 += part;
                    e.1 += part;
                }
            }
            None => out.entry((month, own)).or_default().0 += s,
        }
    }
    out
}

fn board(name: &str) -> Value {
    let path = format!("{}/dashboards/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn panels(b: &Value) -> Vec<(String, String)> {
    b["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["title"].as_str().unwrap().to_string(),
                p["targets"][0]["rawSql"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub const BOARDS: &[&str] = &[
    "finance-executive.json",
    "finance-budgets.json",
    "finance-chargeback.json",
    "finance-models.json",
    "finance-anomalies.json",
];

#[tokio::test]
async fn every_finance_answer_equals_the_rows() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_edited(&[], &tenants(dir.path()), |t| sink_config(t, &url, &db, ""));
    let (finance, _) = g.create_key(&["--org", "acme", "--role", "finance"]);
    g.wait_key(&finance).await;
    let now = model_bridge::time::now_unix();
    let today = now - now % 86_400;
    let all = fixture(now);

    // Rows older than 60 days exist before the rollups do (an upgrade): the migration's
    // backfill brings them in; the rest arrive through the views.
    let (old, new): (Vec<&Row>, Vec<&Row>) = all.iter().partition(|r| r.ts < today - 60 * 86_400);
    query(&url, &insert_sql(&db, &old)).await;
    for stmt in [
        "DROP TABLE {db}.usage_daily_mv",
        "DROP TABLE {db}.usage_hourly_mv",
        "DROP TABLE {db}.usage_daily",
        "DROP TABLE {db}.usage_hourly",
        "ALTER TABLE {db}.schema_migrations DELETE WHERE version = 6",
    ] {
        query(&url, &stmt.replace("{db}", &db)).await;
    }
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.schema_migrations WHERE version = 6"),
        "0",
        30,
    )
    .await;
    let (ok, out, err) = g.cli(&["migrate"]);
    assert!(ok && out.contains("applied [6]"), "{out}{err}");
    query(&url, &insert_sql(&db, &new)).await;

    // Rollups equal the raw rows, per month, to the nano-dollar; a reconcile finds nothing.
    let per_month = |table: &str, col: &str| {
        format!("SELECT substring(toString(toDate({col})), 1, 7) AS m, toInt64(sum(requests)), sum(cost_nanousd), sum(cache_savings_nanousd), sum(errors) FROM {db}.{table} GROUP BY m ORDER BY m FORMAT TSV")
    };
    let raw = query(&url, &format!("SELECT substring(toString(toDate(ts)), 1, 7) AS m, toInt64(count()), sum(cost_nanousd), sum(cache_savings_nanousd), toInt64(sum(status >= 400)) FROM {db}.usage_events GROUP BY m ORDER BY m FORMAT TSV")).await;
    assert_eq!(query(&url, &per_month("usage_daily", "day")).await, raw);
    let months = group(all.iter(), &["month"]);
    assert_eq!(raw.lines().count(), months.len());
    for (line, (m, a)) in raw.lines().zip(&months) {
        assert_eq!(
            line,
            format!(
                "{}\t{}\t{}\t{}\t{}",
                m[0], a.requests, a.cost, a.savings, a.errors
            )
        );
    }
    let (ok, out, err) = g.cli(&["reconcile"]);
    assert!(
        ok && out.contains("usage_daily 0 keys corrected, usage_hourly 0 keys"),
        "{out}{err}"
    );
    // A damaged rollup (a stray row) is found and corrected.
    query(&url, &format!("INSERT INTO {db}.usage_daily (day, org, cost_center, requests, cost_nanousd) VALUES (today(), 'acme', 'eng', 1, 999)")).await;
    let (ok, out, err) = g.cli(&["reconcile"]);
    assert!(
        ok && out.contains("usage_daily 1 keys corrected"),
        "{out}{err}"
    );
    assert_eq!(query(&url, &per_month("usage_daily", "day")).await, raw);

    // The finance watch's pass: snapshot, forecasts, anomalies.
    let cfg = model_bridge::config::Config::parse(
        &std::fs::read_to_string(&g.config).unwrap(),
        &g.config,
        &|n| (n == "MB_TEST_PROVIDER_KEY").then(|| PROVIDER_KEY.to_string()),
    )
    .unwrap();
    let ch = cfg.clickhouse.clone().unwrap();
    // Two replicas run the watch on the same config: the dashboards show each budget,
    // allocation, forecast and anomaly once.
    model_bridge::finance::watch::run_once(&ch, &cfg)
        .await
        .unwrap();
    let mut replica = ch.clone();
    replica.node = "replica-b".into();
    model_bridge::finance::watch::run_once(&replica, &cfg)
        .await
        .unwrap();
    let twice = query(
        &url,
        &format!("SELECT count(DISTINCT node) FROM {db}.spend_anomalies FORMAT TSV"),
    )
    .await;
    assert_eq!(twice.trim(), "2");
    let acme_alloc = &cfg.orgs["acme"].allocations;

    // --- Dashboards -------------------------------------------------------------------
    let (y, m) = model_bridge::time::year_month(now);
    let (py, pm) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    let from = model_bridge::time::parse_rfc3339(&format!("{py:04}-{pm:02}-01T00:00:00Z")).unwrap();
    let month_start =
        model_bridge::time::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z")).unwrap();
    let to = now;
    let in_range = |r: &&Row| r.ts >= from && r.ts <= to;
    // Two selections: the whole org, and one cost center of one department; with globex's
    // cost center of the same name as the isolation trap.
    let selections: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("org", "acme"),
            ("cost_center", "__all"),
            ("department", "__all"),
            ("project", "__all"),
        ],
        vec![
            ("org", "acme"),
            ("cost_center", "eng"),
            ("department", "R&D"),
            ("project", "__all"),
        ],
        vec![
            ("org", "globex"),
            ("cost_center", "__all"),
            ("department", "__all"),
            ("project", "apollo"),
        ],
    ];
    let forecast_rows = run(&url, &db, "SELECT org, cost_center, computed_at, spent_nanousd, forecast_nanousd, budget_nanousd, exhausted_on FROM spend_forecasts").await;
    let mut checked = 0;
    for vars in &selections {
        let var = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
                .unwrap_or("__all")
        };
        let matches = |r: &&Row| {
            r.org == var("org")
                && ["cost_center", "department", "project"]
                    .iter()
                    .all(|d| var(d) == "__all" || r.dim(d) == var(d))
        };
        let scoped: Vec<&Row> = all.iter().filter(matches).collect();
        let ranged: Vec<&Row> = scoped.iter().copied().filter(in_range).collect();
        let org_rows: Vec<&Row> = all.iter().filter(|r| r.org == var("org")).collect();
        let cc_sel = var("cost_center");
        let mtd = |cc: Option<&str>| -> i64 {
            org_rows
                .iter()
                .filter(|r| r.ts >= month_start && cc.is_none_or(|c| r.cc == c))
                .map(|r| r.cost)
                .sum()
        };
        let latest_forecast = |cc: &str| -> Option<&Value> {
            forecast_rows
                .iter()
                .filter(|f| f["org"] == var("org") && f["cost_center"] == cc)
                .max_by_key(|f| f["computed_at"].as_str().unwrap().to_string())
        };
        for name in BOARDS {
            let b = board(name);
            // Every variable's own query is org-scoped and answers from the rows.
            for v in b["templating"]["list"].as_array().unwrap() {
                let Some(q) = v["query"].as_str().filter(|_| v["type"] == "query") else {
                    continue;
                };
                let got = run(&url, &db, &expand(q, vars, from, to)).await;
                let name = v["name"].as_str().unwrap();
                let mut want: Vec<String> = if name == "org" {
                    vec!["acme".into(), "globex".into()]
                } else {
                    org_rows
                        .iter()
                        .map(|r| r.dim(name))
                        .filter(|x| !x.is_empty())
                        .collect()
                };
                want.sort();
                want.dedup();
                let got: Vec<String> = got
                    .iter()
                    .map(|r| r[name].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(got, want, "{name} variable of {}", b["title"]);
            }
            for (title, sql) in panels(&b) {
                let what = format!("{} / {title} / {vars:?}", b["title"]);
                let result = run(&url, &db, &expand(&sql, vars, from, to)).await;
                checked += 1;
                match title.as_str() {
                    "Spend in range"
                    | "Requests and tokens"
                    | "Unit cost"
                    | "Cached-token savings" => {
                        assert_eq!(result.len(), 1, "{what}");
                        check_measures(&result[0], &sum(ranged.iter().copied()), &what);
                    }
                    "Top cost centers" | "Top departments" | "Top projects" | "Top models"
                    | "Top providers" => {
                        let dim = result.first().map(|r| {
                            r.as_object()
                                .unwrap()
                                .keys()
                                .find(|k| DIMS.contains(&k.as_str()))
                                .unwrap()
                                .clone()
                        });
                        if let Some(dim) = dim {
                            check_groups(&result, &ranged, &[&dim], Some(10), &what);
                        } else {
                            assert!(ranged.is_empty(), "{what}");
                        }
                    }
                    "Spend by cost center" => check_groups(
                        &result,
                        &ranged,
                        &["department", "cost_center"],
                        None,
                        &what,
                    ),
                    "Drill-down: department, cost center, project, team, key" => check_groups(
                        &result,
                        &ranged,
                        &["department", "cost_center", "project", "team", "key_id"],
                        None,
                        &what,
                    ),
                    "Spend and unit cost per model" => {
                        check_groups(&result, &ranged, &["model", "provider"], None, &what)
                    }
                    "Daily spend per provider" => {
                        check_groups(&result, &ranged, &["day", "provider"], None, &what)
                    }
                    "Experiment variants" => {
                        let exp: Vec<&Row> = ranged
                            .iter()
                            .copied()
                            .filter(|r| !r.experiment.is_empty())
                            .collect();
                        check_groups(
                            &result,
                            &exp,
                            &["experiment", "variant", "model"],
                            None,
                            &what,
                        )
                    }
                    "Daily spend" => {
                        let cc_rows: Vec<&Row> = org_rows
                            .iter()
                            .copied()
                            .filter(in_range)
                            .filter(|r| cc_sel == "__all" || r.cc == cc_sel)
                            .collect();
                        check_groups(&result, &cc_rows, &["day"], None, &what)
                    }
                    "Daily spend against the previous period" => {
                        let span = (to / 86_400 - from / 86_400 + 1) * 86_400;
                        let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                        for r in &scoped {
                            if in_range(r) {
                                want.entry(r.day()).or_default().0 += r.cost;
                            } else if r.ts >= from - span && r.ts < from {
                                want.entry(model_bridge::time::date(r.ts + span))
                                    .or_default()
                                    .1 += r.cost;
                            }
                        }
                        let got: BTreeMap<String, (i64, i64)> = result
                            .iter()
                            .map(|r| {
                                (
                                    r["day"].as_str().unwrap().to_string(),
                                    (nanos(&r["cost_usd"]), nanos(&r["previous_cost_usd"])),
                                )
                            })
                            .collect();
                        assert_eq!(got, want, "{what}");
                    }
                    "Month to date, forecast and budget" | "Forecast against budget" => {
                        let cc = if cc_sel == "__all" { "" } else { cc_sel };
                        let f = latest_forecast(cc).expect("a forecast row");
                        assert_eq!(
                            int(&f["spent_nanousd"]),
                            mtd((!cc.is_empty()).then_some(cc)),
                            "{what}"
                        );
                        // The row is the gateway's own forecast at the time it was computed.
                        let at = model_bridge::time::parse_rfc3339(
                            &(f["computed_at"].as_str().unwrap().replace(' ', "T") + "Z"),
                        )
                        .unwrap();
                        let budget =
                            (int(&f["budget_nanousd"]) > 0).then(|| int(&f["budget_nanousd"]));
                        let own = model_bridge::warehouse::watch::month_forecast(
                            &ch.db_client(),
                            Some(var("org")),
                            (!cc.is_empty()).then_some(cc),
                            budget,
                            at,
                        )
                        .await
                        .unwrap();
                        assert_eq!(int(&f["forecast_nanousd"]), own.forecast, "{what}");
                        if title.starts_with("Month") {
                            assert_eq!(result.len(), 1, "{what}");
                            assert_eq!(nanos(&result[0]["month_to_date_usd"]), own.spent, "{what}");
                            assert_eq!(nanos(&result[0]["forecast_usd"]), own.forecast, "{what}");
                            assert_eq!(
                                nanos(&result[0]["budget_usd"]),
                                budget.unwrap_or(0),
                                "{what}"
                            );
                        } else if let Some(limit) = budget {
                            let pct =
                                (10_000.0 * own.forecast as f64 / limit as f64).round() / 100.0;
                            close(
                                result[0]["forecast_pct_of_budget"].as_f64().unwrap(),
                                pct,
                                &what,
                            );
                        } else {
                            // No budget: nothing to compare with.
                            assert!(
                                result
                                    .iter()
                                    .all(|r| r["forecast_pct_of_budget"].as_f64() == Some(0.0)),
                                "{what}: {result:?}"
                            );
                        }
                    }
                    "Monthly budgets" => {
                        let org = &cfg.orgs[var("org")];
                        let mut want: Vec<(String, String, i64, i64, i64)> = Vec::new();
                        let mut add = |scope: &str,
                                       id: &str,
                                       b: &model_bridge::limits::spec::Budget,
                                       spent: i64| {
                            if matches!(b.period, model_bridge::limits::spec::Period::Month) {
                                let crossed = b
                                    .soft
                                    .iter()
                                    .filter(|t| spent as f64 >= **t * b.nano as f64)
                                    .count() as i64;
                                want.push((scope.into(), id.into(), b.nano, spent, crossed));
                            }
                        };
                        if let Some(b) = &org.budget {
                            add("org", var("org"), b, mtd(None));
                        }
                        for (t, team) in &org.teams {
                            if let Some(b) = &team.budget {
                                let spent = org_rows
                                    .iter()
                                    .filter(|r| r.ts >= month_start && r.team == t)
                                    .map(|r| r.cost)
                                    .sum();
                                add("team", t, b, spent);
                            }
                        }
                        for (c, cc) in &org.cost_centers {
                            if let Some(b) = &cc.budget {
                                add("cost_center", c, b, mtd(Some(c)));
                            }
                        }
                        want.sort();
                        let mut got: Vec<(String, String, i64, i64, i64)> = result
                            .iter()
                            .map(|r| {
                                (
                                    r["scope"].as_str().unwrap().to_string(),
                                    r["scope_id"].as_str().unwrap().to_string(),
                                    nanos(&r["limit_usd"]),
                                    nanos(&r["spent_usd"]),
                                    int(&r["thresholds_crossed"]),
                                )
                            })
                            .collect();
                        got.sort();
                        assert_eq!(got, want, "{what}");
                        for r in &result {
                            let cc = match r["scope"].as_str().unwrap() {
                                "org" => Some(""),
                                "cost_center" => r["scope_id"].as_str(),
                                _ => None,
                            };
                            let f = cc.and_then(latest_forecast);
                            assert_eq!(
                                nanos(&r["forecast_usd"]),
                                f.map_or(0, |f| int(&f["forecast_nanousd"])),
                                "{what}"
                            );
                            assert_eq!(
                                r["exhausted_on"],
                                f.map_or(json!(""), |f| f["exhausted_on"].clone()),
                                "{what}"
                            );
                        }
                    }
                    "Burn-down" => {
                        let org = &cfg.orgs[var("org")];
                        let limit = if cc_sel == "__all" {
                            org.budget.as_ref()
                        } else {
                            org.cost_centers.get(cc_sel).and_then(|c| c.budget.as_ref())
                        }
                        .map_or(0, |b| b.nano);
                        let mut cum = 0;
                        let mut want = Vec::new();
                        for (k, a) in group(
                            org_rows.iter().copied().filter(|r| {
                                r.ts >= month_start && (cc_sel == "__all" || r.cc == cc_sel)
                            }),
                            &["day"],
                        ) {
                            cum += a.cost;
                            want.push((k[0].clone(), cum, limit));
                        }
                        let got: Vec<(String, i64, i64)> = result
                            .iter()
                            .map(|r| {
                                (
                                    r["day"].as_str().unwrap().to_string(),
                                    nanos(&r["cumulative_usd"]),
                                    nanos(&r["limit_usd"]),
                                )
                            })
                            .collect();
                        assert_eq!(got, want, "{what}");
                    }
                    "Chargeback by cost center and month" => {
                        let allocs = &cfg.orgs[var("org")].allocations;
                        let r_org: Vec<&Row> = org_rows.iter().copied().filter(in_range).collect();
                        let want = chargeback(&r_org, allocs);
                        let got: BTreeMap<(String, String), (i64, i64)> = result
                            .iter()
                            .map(|r| {
                                let cost = int(&r["cost_nanousd"]);
                                assert_eq!(
                                    r["cost"],
                                    model_bridge::usage::pricing::format_usd(cost),
                                    "{what}"
                                );
                                (
                                    (
                                        r["month"].as_str().unwrap().to_string(),
                                        r["cost_center"].as_str().unwrap().to_string(),
                                    ),
                                    (cost, int(&r["allocated_nanousd"])),
                                )
                            })
                            .collect();
                        assert_eq!(got, want, "{what}");
                        // Allocation moves money, never makes or loses it.
                        assert_eq!(
                            got.values().map(|v| v.0).sum::<i64>(),
                            sum(r_org.iter().copied()).cost
                        );
                    }
                    "Allocations in force" => {
                        let allocs = &cfg.orgs[var("org")].allocations;
                        let want: Vec<(String, String, f64, i64)> = allocs
                            .iter()
                            .flat_map(|a| {
                                a.shares.iter().enumerate().map(move |(i, (cc, bp))| {
                                    (a.source(), cc.clone(), *bp as f64 / 100.0, i as i64)
                                })
                            })
                            .collect();
                        let mut want = want;
                        want.sort_by_key(|a| (a.0.clone(), a.3));
                        let got: Vec<(String, String, f64, i64)> = result
                            .iter()
                            .map(|r| {
                                (
                                    r["source"].as_str().unwrap().into(),
                                    r["cost_center"].as_str().unwrap().into(),
                                    r["share_pct"].as_f64().unwrap(),
                                    int(&r["rank"]),
                                )
                            })
                            .collect();
                        assert_eq!(got, want, "{what}");
                    }
                    "Anomalies" => {
                        // What the watch recorded is what the anomalies API finds over the
                        // days it looked at, for the org and each of its cost centers.
                        let last = today - 86_400;
                        let mut want = Vec::new();
                        let scopes: Vec<Option<&str>> = std::iter::once(None)
                            .chain(
                                cfg.orgs[var("org")]
                                    .cost_centers
                                    .keys()
                                    .map(|c| Some(c.as_str())),
                            )
                            .filter(|c| cc_sel == "__all" || *c == Some(cc_sel))
                            .collect();
                        for cc in scopes {
                            for f in model_bridge::warehouse::watch::detect(
                                &ch.db_client(),
                                Some(var("org")),
                                cc,
                                model_bridge::warehouse::spend::Grain::Day,
                                last - 29 * 86_400,
                                last,
                            )
                            .await
                            .unwrap()
                            {
                                want.push((
                                    format!("{} 00:00:00", f.bucket()),
                                    cc.unwrap_or("").to_string(),
                                    f.actual,
                                    f.expected,
                                ));
                            }
                        }
                        want.sort();
                        let mut got: Vec<(String, String, i64, i64)> = result
                            .iter()
                            .filter(|r| r["grain"] == "day")
                            .map(|r| {
                                (
                                    r["at"].as_str().unwrap().into(),
                                    r["cost_center"].as_str().unwrap().into(),
                                    nanos(&r["actual_usd"]),
                                    nanos(&r["expected_usd"]),
                                )
                            })
                            .collect();
                        got.sort();
                        assert_eq!(got, want, "{what}");
                        if var("org") == "acme" && (cc_sel == "__all" || cc_sel == "sales") {
                            // The spike is there, with what drove it.
                            let spike = model_bridge::time::date(today - 3 * 86_400);
                            let row = result
                                .iter()
                                .find(|r| {
                                    r["cost_center"] == "sales"
                                        && r["grain"] == "day"
                                        && r["at"].as_str().unwrap().starts_with(&spike)
                                })
                                .expect("the spike");
                            let drivers: Value =
                                serde_json::from_str(row["top_drivers"].as_str().unwrap()).unwrap();
                            assert_eq!(drivers["model"][0]["value"], "gpt-spike");
                            assert_eq!(drivers["key_id"][0]["value"], "k-spiky");
                            assert_eq!(drivers["project"][0]["value"], "zeus");
                        }
                    }
                    other => panic!("{what}: panel `{other}` has no independent check"),
                }
            }
        }
    }
    let per_selection: usize = BOARDS.iter().map(|b| panels(&board(b)).len()).sum();
    assert_eq!(checked, selections.len() * per_selection);
    assert!(per_selection >= 20, "{per_selection} panels");

    // --- The API and the CLI give the same answers -----------------------------------------
    let admin = |path: String| {
        let (g, key) = (&g, finance.clone());
        async move {
            let r = client()
                .get(g.ops_url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap())
        }
    };
    let (fd, td) = (model_bridge::time::date(from), model_bridge::time::date(to));
    let acme: Vec<&Row> = all
        .iter()
        .filter(|r| r.org == "acme" && in_range(r))
        .collect();
    for (group_by, period, filter) in [
        ("department,cost_center,project", "month", ""),
        ("key_id,model", "day", "&cost_center=eng"),
        ("team,provider,experiment,variant", "", "&department=R%26D"),
    ] {
        let (s, body) = admin(format!(
            "/admin/v1/spend?from={fd}&to={td}&group_by={group_by}&period={period}{filter}"
        ))
        .await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut dims: Vec<&str> = group_by.split(',').collect();
        if !period.is_empty() {
            dims.push(period);
        }
        let rows: Vec<&Row> = acme
            .iter()
            .copied()
            .filter(|r| match filter {
                "&cost_center=eng" => r.cc == "eng",
                "&department=R%26D" => r.dept == "R&D",
                _ => true,
            })
            .collect();
        let want = group(rows.iter().copied(), &dims);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), want.len(), "{group_by}");
        for d in data {
            let key: Vec<String> = dims
                .iter()
                .map(|k| d[*k].as_str().unwrap().to_string())
                .collect();
            let a = &want[&key];
            assert_eq!(
                (
                    d["requests"].as_i64().unwrap(),
                    d["cost_nanousd"].as_i64().unwrap(),
                    d["cache_savings_nanousd"].as_i64().unwrap(),
                    d["errors"].as_i64().unwrap(),
                    d["unpriced_requests"].as_i64().unwrap()
                ),
                (a.requests, a.cost, a.savings, a.errors, a.unpriced),
                "{group_by} {key:?}"
            );
            assert_eq!(
                d["cost_usd"],
                model_bridge::usage::pricing::format_usd(a.cost)
            );
        }
        assert_eq!(
            v["total"]["cost_nanousd"].as_i64().unwrap(),
            sum(rows.iter().copied()).cost
        );
    }
    // Hours come from the hourly rollup.
    let yesterday = model_bridge::time::date(today - 86_400);
    let (s, body) = admin(format!(
        "/admin/v1/spend?from={yesterday}&to={yesterday}&period=hour&group_by=cost_center"
    ))
    .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let hours: Vec<&Row> = all
        .iter()
        .filter(|r| r.org == "acme" && r.day() == yesterday)
        .collect();
    let mut want: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in &hours {
        let h = format!("{} {:02}:00:00", r.day(), r.ts % 86_400 / 3_600);
        *want.entry((r.cc.to_string(), h)).or_default() += r.cost;
    }
    let got: BTreeMap<(String, String), i64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                (
                    d["cost_center"].as_str().unwrap().into(),
                    d["hour"].as_str().unwrap().into(),
                ),
                d["cost_nanousd"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Chargeback: API JSON and CSV, and the CLI, equal the independent split.
    let want = chargeback(&acme, acme_alloc);
    let (s, body) = admin(format!("/admin/v1/chargeback?from={fd}&to={td}")).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let got: BTreeMap<(String, String), (i64, i64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                (
                    d["month"].as_str().unwrap().into(),
                    d["cost_center"].as_str().unwrap().into(),
                ),
                (
                    d["cost_nanousd"].as_i64().unwrap(),
                    d["allocated_nanousd"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    let (s, csv_api) = admin(format!("/admin/v1/chargeback?from={fd}&to={td}&format=csv")).await;
    assert_eq!(s, 200);
    let (ok, csv_cli, err) = g.cli(&[
        "report",
        "chargeback",
        "--org",
        "acme",
        "--from",
        &fd,
        "--to",
        &td,
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert_eq!(csv_cli, csv_api);
    assert_eq!(csv_api.lines().count(), want.len() + 1);
    for ((month, cc), (cost, _)) in &want {
        let line = format!(
            "{month},{cc},{cost},{}",
            model_bridge::usage::pricing::format_usd(*cost)
        );
        assert!(
            csv_api.lines().any(|l| l.starts_with(&line)),
            "{line} in {csv_api}"
        );
    }
    // The CLI spend report, every dimension and the month period, as the API.
    let (ok, csv_cli, err) = g.cli(&[
        "report",
        "spend",
        "--org",
        "acme",
        "--from",
        &fd,
        "--to",
        &td,
        "--group-by",
        "cost_center,project",
        "--period",
        "month",
        "--where",
        "department=GTM",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    let (_, csv_api) = admin(format!("/admin/v1/spend?from={fd}&to={td}&group_by=cost_center,project&period=month&department=GTM&format=csv")).await;
    assert_eq!(csv_cli, csv_api);
    let gtm = group(
        acme.iter().copied().filter(|r| r.dept == "GTM"),
        &["cost_center", "project", "month"],
    );
    assert_eq!(csv_cli.lines().count(), gtm.len() + 1);
    // Anomalies API: the spike, with its drivers; the other org sees none of it.
    let (s, body) = admin("/admin/v1/spend/anomalies?cost_center=sales".into()).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let spike = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["day"] == model_bridge::time::date(today - 3 * 86_400))
        .expect("the spike");
    assert_eq!(spike["drivers"]["key_id"][0]["value"], "k-spiky");
    assert_eq!(admin("/admin/v1/chargeback?org=globex".into()).await.0, 404);
    assert_eq!(admin("/admin/v1/spend?period=week".into()).await.0, 400);
    assert_eq!(
        admin("/admin/v1/spend?group_by=day,month".into()).await.0,
        400
    );
    assert_eq!(
        admin("/admin/v1/spend/anomalies?grain=minute".into())
            .await
            .0,
        400
    );

    // Retention drops raw months; the daily rollup keeps them, and for every month still
    // kept the rollup equals the raw rows.
    let cutoff = model_bridge::warehouse::compliance::cutoff_month(now, 2);
    let mut ch_ret = ch.clone();
    ch_ret.usage_retention_months = 2;
    let r = model_bridge::warehouse::compliance::apply_retention(&ch_ret, now)
        .await
        .unwrap();
    assert!(!r.usage_partitions_dropped.is_empty());
    let raw = query(&url, &format!("SELECT substring(toString(toDate(ts)), 1, 7) AS m, toInt64(count()), sum(cost_nanousd), sum(cache_savings_nanousd), toInt64(sum(status >= 400)) FROM {db}.usage_events GROUP BY m ORDER BY m FORMAT TSV")).await;
    let rolled = query(&url, &per_month("usage_daily", "day")).await;
    let kept: Vec<&str> = rolled
        .lines()
        .filter(|l| l[..7].replace('-', "").parse::<u32>().unwrap() >= cutoff)
        .collect();
    assert_eq!(kept.join("\n") + "\n", raw);
    assert_eq!(
        rolled.lines().count(),
        months.len(),
        "the rollup keeps dropped months"
    );
    query(&url, &format!("DROP DATABASE {db}")).await;
}

/// The directory `scripts/grafana-schema.sh` installs `@grafana/schema` and `tsc` into.
fn grafana_schema() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/grafana-schema");
    if dir.join("node_modules/.bin/tsc").exists() {
        return Some(dir);
    }
    assert!(
        !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
        "scripts/grafana-schema.sh install must run before the tests in CI"
    );
    eprintln!("SKIPPED: run scripts/grafana-schema.sh install");
    None
}

/// Type-checks `boards` (name, JSON) as object literals of `@grafana/schema`'s `Dashboard`:
/// every field must exist in the schema with the right type (excess-property checks).
fn type_check(dir: &std::path::Path, boards: &[(String, Value)]) -> Result<(), String> {
    let mut ts = String::from("import type { Dashboard } from '@grafana/schema';\n");
    for (i, (name, b)) in boards.iter().enumerate() {
        ts.push_str(&format!(
            "// {name}\nexport const d{i}: Dashboard = {};\n",
            serde_json::to_string_pretty(b).unwrap()
        ));
    }
    let file = dir.join(format!("check-{:08x}.ts", rand::random::<u32>()));
    std::fs::write(&file, ts).unwrap();
    let out = std::process::Command::new(dir.join("node_modules/.bin/tsc"))
        .args([
            "--noEmit",
            "--strict",
            "--module",
            "commonjs",
            "--moduleResolution",
            "node",
            "--target",
            "es2020",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn dashboards_match_grafanas_published_schema() {
    let Some(dir) = grafana_schema() else { return };
    let all: Vec<(String, Value)> =
        std::fs::read_dir(format!("{}/dashboards", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".json"))
            .map(|n| {
                let b = board(&n);
                (n, b)
            })
            .collect();
    assert!(all.len() >= BOARDS.len() + 2);
    type_check(&dir, &all).unwrap_or_else(|e| panic!("{e}"));
    // The check has teeth: a panel without its grid position, or a misspelt field, fails.
    let mut broken = board(BOARDS[0]);
    broken["panels"][0]["gridPos"]
        .as_object_mut()
        .unwrap()
        .remove("h");
    assert!(type_check(&dir, &[("broken".into(), broken)]).is_err());
    let mut misspelt = board(BOARDS[1]);
    misspelt["templating"]["list"][1]["inclueAll"] = json!(true);
    assert!(type_check(&dir, &[("misspelt".into(), misspelt)]).is_err());
    // Every finance panel reads ClickHouse through the provisioned datasource variable.
    for name in BOARDS {
        for p in board(name)["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["type"], "grafana-clickhouse-datasource",
                "{name}"
            );
            assert_eq!(
                p["targets"][0]["datasource"]["uid"], "${datasource}",
                "{name}"
            );
        }
    }
}

/// One delivery a webhook receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A webhook receiver on loopback: answers 503 to the first delivery of each event id (so
/// every event is retried once) and 200 after; sends each delivery down `tx`.
async fn receiver(tx: tokio::sync::mpsc::UnboundedSender<Delivery>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let mut headers = BTreeMap::new();
                    for line in text[..end].lines().skip(1) {
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    let id = headers
                        .get("x-model-bridge-event-id")
                        .cloned()
                        .unwrap_or_default();
                    let first = seen.lock().unwrap().insert(id);
                    let status = if first {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let _ = tx.send(Delivery { headers, body });
                    let _ = sock
                        .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                        .await;
                    return;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn budget_crossings_and_anomalies_reach_a_signed_webhook() {
    let Some(url) = shared_url() else { return };
    let db = new_db();
    const SECRET: &str = "whsec-test-0123456789abcdef";
    // The warehouse exists before the gateway, with 60 days of acme/sales spend and a spike
    // yesterday: the watch's first pass finds it.
    let mut settings = model_bridge::warehouse::ClickHouseSettings::local(&url);
    settings.database = db.clone();
    model_bridge::warehouse::migrate::run(&settings)
        .await
        .unwrap();
    let now = model_bridge::time::now_unix();
    let today = now - now % 86_400;
    let mut rows: Vec<Row> = Vec::new();
    for d in 1..=60u64 {
        let base = Row {
            ts: today - d * 86_400 + 3_600 * 10,
            org: "acme",
            team: "",
            cc: "sales",
            dept: "GTM",
            project: "",
            key: "k-web",
            model: "gpt-4o-mini",
            provider: "mock",
            experiment: "",
            variant: "",
            status: 200,
            prompt: 10,
            cached: 0,
            completion: 5,
            cost: 10 * USD,
            known: true,
            savings: 0,
        };
        if d == 1 {
            rows.push(Row {
                key: "k-leaked",
                cost: 90 * USD,
                ts: base.ts + 60,
                ..base.clone()
            });
        }
        rows.push(base);
    }
    query(&url, &insert_sql(&db, &rows.iter().collect::<Vec<_>>())).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let port = receiver(tx).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir(dir.path(), "");
    let extra = format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[finance]
watch_interval_secs = 3600
anomaly_grains = ["day"]
webhook_url = "http://127.0.0.1:{port}/hooks/finance"
webhook_secret = "${{MB_TEST_WEBHOOK_SECRET}}"
webhook_max_attempts = 4
webhook_backoff_ms = 20

[orgs.acme]
[orgs.acme.cost_centers.sales]
[orgs.beta]
budget = {{ usd = "0.0001", period = "month", soft = [0.2] }}
"#,
        policies.display()
    );
    std::env::set_var("MB_TEST_WEBHOOK_SECRET", SECRET);
    let g = Gateway::start_edited(&[], &extra, |t| sink_config(t, &url, &db, ""));
    let (key, _) = g.create_key(&["--org", "beta", "--role", "developer"]);
    g.wait_key(&key).await;

    let verify = |d: &Delivery| {
        let ts: u64 = d.headers["x-model-bridge-timestamp"].parse().unwrap();
        assert_eq!(
            d.headers["x-model-bridge-signature"],
            model_bridge::finance::webhook::signature(SECRET, ts, d.body.as_bytes()),
            "signature of {d:?}"
        );
        // The signature is over these exact bytes: one byte more and it no longer matches.
        assert_ne!(
            d.headers["x-model-bridge-signature"],
            model_bridge::finance::webhook::signature(
                SECRET,
                ts,
                format!("{} ", d.body).as_bytes()
            )
        );
        let v: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(v["id"], d.headers["x-model-bridge-event-id"].as_str());
        assert_eq!(v["type"], d.headers["x-model-bridge-event"].as_str());
        v
    };
    // Spend of beta until its soft threshold (20% of $0.0001) is crossed.
    let c = client();
    for _ in 0..3 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(&key)
            // A small max_tokens keeps the worst-case reservation inside the tiny budget.
            .json(&json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let mut got: Vec<(Delivery, Value)> = Vec::new();
    let anomaly_id = format!(
        "anomaly:acme:sales:day:{}",
        model_bridge::time::date(today - 86_400)
    );
    let budget_done = |got: &[(Delivery, Value)], kind: &str| {
        got.iter()
            .filter(|(d, _)| d.headers["x-model-bridge-event"] == kind)
            .count()
            >= 2
    };
    while !(budget_done(&got, "budget.threshold")
        && got
            .iter()
            .filter(|(d, _)| d.headers["x-model-bridge-event-id"] == anomaly_id)
            .count()
            >= 2)
    {
        let d = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("deliveries so far: {got:?}"))
            .unwrap();
        let v = verify(&d);
        got.push((d, v));
    }
    // The anomaly: the spike, expected $10, driven by the leaked key; retried once (503),
    // the retry carries the same id and a fresh valid signature.
    let (_, a) = got
        .iter()
        .find(|(d, _)| d.headers["x-model-bridge-event-id"] == anomaly_id)
        .unwrap();
    assert_eq!(a["data"]["actual_nanousd"], 100 * USD);
    assert_eq!(a["data"]["expected_nanousd"], 10 * USD);
    assert_eq!(a["data"]["drivers"]["key_id"][0]["value"], "k-leaked");
    let (b, bv) = got
        .iter()
        .find(|(d, _)| d.headers["x-model-bridge-event"] == "budget.threshold")
        .unwrap();
    assert_eq!(bv["data"]["budget"], "beta");
    assert_eq!(bv["data"]["threshold"], 0.2);
    assert_eq!(b.headers["content-type"], "application/json");
    // The metrics say the same, and the anomaly is in the warehouse once.
    g.wait_metric_at_least(
        r#"model_bridge_spend_anomalies_total{grain="day",org="acme"}"#,
        1.0,
        std::time::Duration::from_secs(10),
    )
    .await;
    g.wait_metric_at_least(
        r#"model_bridge_webhook_deliveries_total{event="spend.anomaly",outcome="delivered"}"#,
        1.0,
        std::time::Duration::from_secs(10),
    )
    .await;
    g.wait_metric_at_least(
        r#"model_bridge_webhook_deliveries_total{event="budget.threshold",outcome="delivered"}"#,
        1.0,
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(g.metric("model_bridge_webhook_retries_total").await >= 2.0);
    assert!(
        g.metric(r#"model_bridge_spend_anomaly_score{cost_center="sales",grain="day",org="acme"}"#)
            .await
            > 4.0
    );
    let stored = query(&url, &format!("SELECT count(), any(actual_nanousd) FROM {db}.spend_anomalies WHERE id = '{anomaly_id}' FORMAT TSV")).await;
    assert_eq!(stored.trim(), format!("1\t{}", 100 * USD));
    // The secret never reaches the log.
    assert!(!g.log_text().contains(SECRET));
    query(&url, &format!("DROP DATABASE {db}")).await;
}

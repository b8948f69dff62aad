//! The experiment report over data the gateway produced: traffic split between two variants on
//! two mock providers, some failures, streamed and non-streamed, feedback scores through
//! `POST /v1/feedback`; then the report (CLI and admin API) is checked against an independent
//! computation with scipy over the raw rows in ClickHouse.

mod common;

use common::clickhouse::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn python() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    assert!(
        !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
        ".venv (scripts/setup.sh) must exist in CI"
    );
    eprintln!("SKIPPED: no .venv with scipy (run scripts/test.sh)");
    None
}

const SCIPY: &str = r#"
import json, math, sys
from scipy import stats
d = json.load(open(sys.argv[1]))
rows, fb = d["rows"], d["feedback"]
def col(v, k, cond=lambda r: True):
    return [r[k] for r in rows if r["variant"] == v and cond(r)]
out = {}
for v in ("control", "treatment"):
    n = len(col(v, "status"))
    err = sum(1 for s in col(v, "status") if s >= 500 or s == 429)
    out[v] = {"n": n, "errors": err,
              "lat_mean": sum(col(v, "latency_ms")) / n,
              "cost_mean": sum(col(v, "cost_nanousd")) / n / 1e9,
              "score_mean": sum(f["score"] for f in fb if f["variant"] == v) / max(1, sum(1 for f in fb if f["variant"] == v))}
def welch(k, scale=1.0, cond=lambda r: True, src=None):
    if src is None:
        a = [x * scale for x in col("control", k, cond)]; b = [x * scale for x in col("treatment", k, cond)]
    else:
        a = [f["score"] for f in fb if f["variant"] == "control"]; b = [f["score"] for f in fb if f["variant"] == "treatment"]
    t = stats.ttest_ind(b, a, equal_var=False)
    ci = t.confidence_interval(confidence_level=0.95)
    return {"statistic": float(t.statistic), "p_value": float(t.pvalue),
            "difference": sum(b) / len(b) - sum(a) / len(a), "ci95": [float(ci.low), float(ci.high)]}
c, t = out["control"], out["treatment"]
p = (c["errors"] + t["errors"]) / (c["n"] + t["n"])
se = math.sqrt(p * (1 - p) * (1 / c["n"] + 1 / t["n"]))
p1, p2 = c["errors"] / c["n"], t["errors"] / t["n"]
z = (p2 - p1) / se
half = stats.norm.ppf(0.975) * math.sqrt(p1 * (1 - p1) / c["n"] + p2 * (1 - p2) / t["n"])
out["tests"] = {
    "latency_ms": welch("latency_ms"),
    "ttft_ms": welch("ttft_ms", cond=lambda r: r["ttft_ms"] > 0),
    "cost_per_request_usd": welch("cost_nanousd", scale=1e-9),
    "score": welch(None, src="fb"),
    "error_rate": {"statistic": z, "p_value": float(2 * stats.norm.sf(abs(z))),
                   "difference": p2 - p1, "ci95": [p2 - p1 - half, p2 - p1 + half]},
}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_matches_an_independent_computation() {
    let Some(url) = shared_url() else { return };
    let Some(py) = python() else { return };
    let db = new_db();
    let slow = Mock::start(&["--latency-ms", "4"]);
    let pol = tempfile::tempdir().unwrap();
    let policies = policies_dir(pol.path(), "");
    let extra = format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[orgs.default]

[providers.other]
kind = "openai_compatible"
base_url = "{}"

[models.ab]
provider = "mock"
model = "mock-a"
price = {{ input_per_1m = 0.15, output_per_1m = 0.60 }}
[models.ab.split]
experiment = "exp-r"
subject = "end_user"
[[models.ab.split.variants]]
name = "control"
weight = 50
[[models.ab.split.variants]]
name = "treatment"
weight = 50
provider = "other"
model = "mock-b"
price = {{ input_per_1m = 0.30, output_per_1m = 1.20 }}
"#,
        policies.display(),
        slow.url()
    );
    let g = Gateway::start_edited(&[], &extra, |t| sink_config(t, &url, &db, ""));
    let (key, _) = g.create_key(&["--org", "default", "--role", "super-admin"]);
    let (viewer_b, _) = g.create_key(&["--org", "default", "--role", "invoker"]);
    let c = client();
    g.wait_key(&viewer_b).await;
    let mut sent = 0;
    for i in 0..320u32 {
        let stream = i % 2 == 0;
        let mut req = c
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-chunks", (4 + i % 9).to_string());
        if i % 13 == 0 {
            req = req.header("x-mock-status", "500");
        }
        let r = req
            .json(
                &json!({"model": "ab", "stream": stream, "user": format!("u{}", i / 2),
                          "messages": [{"role": "user", "content": "hello"}]}),
            )
            .send()
            .await
            .unwrap();
        sent += 1;
        let status = r.status().as_u16();
        let variant = header(&r, "x-model-bridge-variant").to_string();
        let rid = header(&r, "x-request-id").to_string();
        let _ = r.bytes().await;
        if status == 200 {
            // The treatment is liked better: scores differ by 0.25 on average.
            let jitter = f64::from((i * 7919) % 100) / 100.0;
            let score = if variant == "treatment" {
                0.5 + 0.5 * jitter
            } else {
                0.25 + 0.5 * jitter
            };
            let f = c
                .post(g.url("/v1/feedback"))
                .bearer_auth(&key)
                .json(&json!({"request_id": rid, "score": score}))
                .send()
                .await
                .unwrap();
            assert_eq!(f.status(), 200, "{}", f.text().await.unwrap());
        }
    }
    let bad = c
        .post(g.url("/v1/feedback"))
        .bearer_auth(&key)
        .json(&json!({"request_id": "nope", "score": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events WHERE experiment = 'exp-r'"),
        &sent.to_string(),
        20,
    )
    .await;
    let fb_rows = query(
        &url,
        &format!(
            "SELECT count() FROM {db}.usage_events WHERE experiment = 'exp-r' AND status = 200"
        ),
    )
    .await;
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.feedback"),
        fb_rows.trim(),
        20,
    )
    .await;

    // The raw rows, for scipy.
    let rows = query(&url, &format!("SELECT variant, status, latency_ms, ttft_ms, cost_nanousd FROM {db}.usage_events WHERE experiment = 'exp-r' FORMAT JSONEachRow")).await;
    let fb = query(&url, &format!("SELECT u.variant AS variant, score FROM {db}.feedback ALL INNER JOIN (SELECT request_id, org, variant FROM {db}.usage_events WHERE experiment = 'exp-r') AS u USING (request_id, org) FORMAT JSONEachRow")).await;
    let parse = |t: &str| -> Vec<Value> {
        t.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                // ClickHouse quotes 64-bit integers in JSON.
                if let Some(s) = v["cost_nanousd"].as_str() {
                    v["cost_nanousd"] = json!(s.parse::<i64>().unwrap());
                }
                v
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.json");
    std::fs::write(
        &data,
        json!({"rows": parse(&rows), "feedback": parse(&fb)}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(py)
        .args(["-c", SCIPY])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (ok, stdout, stderr) = g.cli(&["report", "experiment", "exp-r"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["control"], "control");
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1e-9),
            "{what}: report {a} vs scipy {b}"
        );
    };
    for v in report["variants"].as_array().unwrap() {
        let name = v["variant"].as_str().unwrap();
        let w = &want[name];
        assert_eq!(v["requests"], w["n"], "{name}");
        assert_eq!(v["errors"], w["errors"], "{name}");
        close(
            v["latency_ms"]["mean"].as_f64().unwrap(),
            w["lat_mean"].as_f64().unwrap(),
            "latency mean",
        );
        close(
            v["cost_per_request_usd"].as_f64().unwrap(),
            w["cost_mean"].as_f64().unwrap(),
            "cost",
        );
        close(
            v["feedback"]["mean_score"].as_f64().unwrap(),
            w["score_mean"].as_f64().unwrap(),
            "score",
        );
        assert!(v["latency_ms"]["p50"].as_f64() <= v["latency_ms"]["p95"].as_f64());
        if name == "treatment" {
            for k in [
                "latency_ms",
                "ttft_ms",
                "cost_per_request_usd",
                "score",
                "error_rate",
            ] {
                let got = &v["vs_control"][k];
                close(
                    got["statistic"].as_f64().unwrap(),
                    want["tests"][k]["statistic"].as_f64().unwrap(),
                    k,
                );
                close(
                    got["p_value"].as_f64().unwrap(),
                    want["tests"][k]["p_value"].as_f64().unwrap(),
                    k,
                );
                // The difference and its 95% interval (scipy's Welch interval for means).
                let w = &want["tests"][k];
                let near = |a: f64, b: f64, what: &str| {
                    let scale = w["ci95"][1].as_f64().unwrap() - w["ci95"][0].as_f64().unwrap();
                    assert!(
                        (a - b).abs() <= 1e-6 * scale.abs().max(1e-12),
                        "{k} {what}: report {a} vs scipy {b}"
                    );
                };
                near(
                    got["difference"].as_f64().unwrap(),
                    w["difference"].as_f64().unwrap(),
                    "difference",
                );
                for i in 0..2 {
                    near(
                        got["ci95"][i].as_f64().unwrap(),
                        w["ci95"][i].as_f64().unwrap(),
                        "ci95",
                    );
                }
                assert!(got["mde"].as_f64().unwrap() > 0.0, "{k}");
            }
        }
    }
    assert_eq!(report["primary_metric"], "mean_score");
    assert_eq!(
        report["verdict"]["winner"], "treatment",
        "{}",
        report["verdict"]
    );

    // The admin API gives the same report, RBAC-checked.
    let r = c
        .get(g.ops_url("/admin/v1/experiments/exp-r/report"))
        .bearer_auth(&viewer_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an invoker may not read reports");
    let r = c
        .get(g.ops_url("/admin/v1/experiments/exp-r/report"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api: Value = r.json().await.unwrap();
    assert_eq!(api["verdict"], report["verdict"]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    query(&url, &format!("DROP DATABASE {db}")).await;
}

/// `promo`: the control fails every request (`fail-100`), the treatment none — a planted
/// winner on the error rate. `aa`: both variants the same model — nothing to find.
const AUTO: &str = r#"
[orgs.a]

[models.promo]
provider = "mock"
model = "fail-100"
retry = { retries = 0 }

[models.promo.split]
experiment = "promo"
subject = "end_user"

[[models.promo.split.variants]]
name = "control"
weight = 50

[[models.promo.split.variants]]
name = "treatment"
weight = 50
provider = "mock"
model = "mock-1"

[models.promo.split.auto_promote]
metric = "error_rate"
guardrails = ["latency"]
min_samples = 20
interval_ms = 200

[models.aa]
provider = "mock"
model = "mock-1"

[models.aa.split]
experiment = "aa"
subject = "end_user"

[[models.aa.split.variants]]
name = "control"
weight = 50

[[models.aa.split.variants]]
name = "same"
weight = 50
provider = "mock"
model = "mock-1"

[models.aa.split.auto_promote]
metric = "error_rate"
min_samples = 20
interval_ms = 200
"#;

/// A gateway with authentication, `models` and its rows in a fresh ClickHouse database, with
/// an invoker's key and a super-admin's; `None` without ClickHouse.
async fn with_warehouse(
    models: &str,
) -> Option<(Gateway, tempfile::TempDir, String, String, String, String)> {
    let url = shared_url()?;
    let db = new_db();
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir(dir.path(), "");
    let extra = format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n{models}",
        policies.display()
    );
    let g = Gateway::start_edited(&[], &extra, |t| sink_config(t, &url, &db, ""));
    let (key, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    let (admin, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    g.wait_key(&key).await;
    g.wait_key(&admin).await;
    Some((g, dir, url, db, key, admin))
}

/// Sends a chat to `model` as end user `user`; the variant that answered.
async fn variant(g: &Gateway, key: &str, model: &str, user: &str) -> String {
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    header(&r, "x-model-bridge-variant").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_promote_shifts_traffic_to_the_planted_winner_and_never_on_an_a_a_split() {
    let Some((g, _dir, _url, _db, key, admin)) = with_warehouse(AUTO).await else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..60 {
        seen.insert(variant(&g, &key, "promo", &format!("u{i}")).await);
        variant(&g, &key, "aa", &format!("u{i}")).await;
    }
    assert_eq!(seen.len(), 2, "both variants got traffic: {seen:?}");

    // The pass finds the winner and shifts the split: every new user lands on it.
    g.wait_metric(
        "model_bridge_experiment_promoted{experiment=\"promo\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    for i in 100..120 {
        assert_eq!(
            variant(&g, &key, "promo", &format!("u{i}")).await,
            "treatment"
        );
    }
    let (s, report) = g
        .admin(
            &admin,
            "GET",
            "/admin/v1/experiments/promo/report",
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{report}");
    let auto = &report["auto_promote"];
    assert_eq!(auto["promotion"]["winner"], "treatment", "{report}");
    assert_eq!(auto["promotion"]["state"], "promoted");
    assert_eq!(
        auto["evidence"]["sample_ratio"]["mismatch"], false,
        "{report}"
    );
    let audit = eventually(Duration::from_secs(5), || async {
        let (_, v) = g
            .admin(
                &admin,
                "GET",
                "/admin/v1/audit?action=experiment.promote&org=*",
                Value::Null,
            )
            .await;
        match v["data"].as_array().and_then(|d| d.first()) {
            Some(e) => Ok(e.clone()),
            None => Err(v.to_string()),
        }
    })
    .await;
    assert_eq!(audit["after"]["winner"], "treatment", "{audit}");

    // The A/A split was looked at with enough samples and never promoted.
    g.wait_metric_at_least(
        "model_bridge_experiment_evaluations_total{experiment=\"aa\",outcome=\"no_winner\"}",
        3.0,
        Duration::from_secs(30),
    )
    .await;
    let (_, aa) = g
        .admin(
            &admin,
            "GET",
            "/admin/v1/experiments/aa/report",
            Value::Null,
        )
        .await;
    assert_eq!(aa["auto_promote"]["promotion"], Value::Null, "{aa}");
    assert_eq!(
        aa["auto_promote"]["evidence"]["outcome"], "no_winner",
        "{aa}"
    );

    // Reverting restores the configured split and holds the experiment.
    let path = "/admin/v1/experiments/promo/promotion";
    let (s, v) = g.admin(&key, "DELETE", path, Value::Null).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = g.admin(&admin, "DELETE", path, Value::Null).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("held")), "{v}");
    let mut after = std::collections::BTreeSet::new();
    for i in 200..240 {
        after.insert(variant(&g, &key, "promo", &format!("u{i}")).await);
    }
    assert_eq!(
        after.len(),
        2,
        "the configured 50/50 split is back: {after:?}"
    );
    g.wait_metric(
        "model_bridge_experiment_promoted{experiment=\"promo\"}",
        0.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(g.admin(&admin, "DELETE", path, Value::Null).await.0, 404);
}

const ONLINE: &str = r#"
[orgs.a]

[models.live]
provider = "mock"
model = "mock-1"
price = { input_per_1m = 1, output_per_1m = 2 }

[models.live.split]
experiment = "online"
subject = "end_user"

[[models.live.split.variants]]
name = "control"
weight = 50

[[models.live.split.variants]]
name = "b"
weight = 50
provider = "mock"
model = "mock-1"

[models.live.online_eval]
judge = "grader"
sample = 1.0
rubric = "Is it a good answer?"
budget_usd = "1"

[models.grader]
provider = "mock"
model = "judge-grade-7"
price = { input_per_1m = 3, output_per_1m = 4 }

[models.cheap]
provider = "mock"
model = "mock-1"

[models.cheap.online_eval]
judge = "grader"
sample = 1.0
budget_usd = "0.000000001"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_are_graded_off_the_request_path_and_reach_the_report() {
    let Some((g, _dir, url, db, key, admin)) = with_warehouse(ONLINE).await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        let stream = i % 2 == 0;
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(
                &json!({"model": "live", "user": format!("u{i}"), "stream": stream,
                          "messages": [{"role": "user", "content": format!("question {i}")}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(header(&r, "x-request-id").to_string());
        r.bytes().await.unwrap();
    }
    // Every answer (streamed or not) got the judge's grade (SCORE: 7 → 0.7) as feedback.
    wait_for(
        &url,
        &format!("SELECT count() FROM {db}.feedback WHERE key_id = 'online_eval' AND score = 0.7"),
        "10",
        20,
    )
    .await;
    let graded = query(
        &url,
        &format!("SELECT request_id FROM {db}.feedback WHERE key_id = 'online_eval' ORDER BY request_id FORMAT TSV"),
    )
    .await;
    let mut want = ids.clone();
    want.sort();
    assert_eq!(graded.lines().collect::<Vec<_>>(), want);
    // The judge calls are rows of their own, priced, charged to the online-eval budget.
    let judged = wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events WHERE experiment = 'online_eval' AND cost_nanousd > 0 AND requested_model = 'live:judge'"),
        "10",
        20,
    )
    .await;
    assert_eq!(judged, "10");
    // The report shows the grades per variant, apart from posted feedback.
    let (_, report) = g
        .admin(
            &admin,
            "GET",
            "/admin/v1/experiments/online/report",
            Value::Null,
        )
        .await;
    let judged: u64 = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let j = &v["feedback"]["judge"];
            let mean = j["mean_score"].as_f64().unwrap();
            assert!((mean - 0.7).abs() < 1e-9, "{report}");
            assert_eq!(v["feedback"]["posted"]["n"], 0);
            j["n"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(judged, 10, "{report}");
    // An alias whose judging budget is spent answers as always and is not graded.
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    g.wait_metric(
        "model_bridge_online_evals_total{model=\"cheap\",outcome=\"skipped_budget\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
}

//! Evaluations through the real gateway and the mock's scripted models (known answers: `echo`
//! repeats the question, `echo-trunc-12` cuts it, `judge-longer` prefers the longer answer,
//! `embed-letters` embeds letter counts): per-case scores of two aliases, both orders of a
//! pairwise judge sent, costs equal to the usage rows, the regression gate failing on a
//! planted regression and passing a neutral change, the eval permission, and a budget that
//! stops a run which then resumes without sending finished cases again.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MODELS: &str = r#"
[orgs.a]

[models.good]
provider = "mock"
model = "echo"
price = { input_per_1m = 1, output_per_1m = 2 }

[models.same]
provider = "mock"
model = "echo"
price = { input_per_1m = 1, output_per_1m = 2 }

[models.bad]
provider = "mock"
model = "echo-trunc-12"
price = { input_per_1m = 1, output_per_1m = 2 }

[models.judge]
provider = "mock"
model = "judge-longer"
price = { input_per_1m = 3, output_per_1m = 4 }

[models.embed]
provider = "mock"
model = "embed-letters"
price = { input_per_1m = "0.5", output_per_1m = 0 }
"#;

fn start() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir(dir.path(), "");
    let extra = format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n{MODELS}",
        policies.display()
    );
    (Gateway::start_with(&[], &extra), dir)
}

/// Twenty cases: the even ones short (at most 12 characters), the odd ones long; each expects
/// its own question back.
fn dataset(dir: &Path) {
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let q = if i % 2 == 0 {
                format!("short {i}")
            } else {
                format!("a much longer question, number {i}")
            };
            json!({"id": format!("c{i:02}"), "messages": [{"role": "user", "content": q}], "expected": q, "tags": ["t"]})
                .to_string()
        })
        .collect();
    std::fs::write(dir.join("cases.jsonl"), lines.join("\n")).unwrap();
}

fn spec(dir: &Path, file: &str, targets: &str, extra: &str) -> String {
    let text = format!(
        "name = \"echo-quality\"\ndataset = \"cases.jsonl\"\ntargets = [{targets}]\nconcurrency = 4\n{extra}\n"
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const SCORERS: &str = r#"
[[scorers]]
type = "exact"

[[scorers]]
name = "judge"
type = "judge"
mode = "pairwise"
model = "judge"

[[scorers]]
type = "embedding"
model = "embed"
threshold = 0.999
"#;

/// Runs the CLI: (exit code, stdout as JSON, stderr).
fn cli(g: &Gateway, key: &str, dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .arg("eval")
        .args(args)
        .arg("--dir")
        .arg(dir.join("runs"))
        .args(if args[0] == "run" {
            vec!["--config".to_string(), g.config.display().to_string()]
        } else {
            vec![]
        })
        .env("MODEL_BRIDGE_API_KEY", key)
        .env("MB_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The run file's results, by (case, target).
fn results(dir: &Path, run: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("runs").join(format!("{run}.jsonl")))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tagged(g: &Gateway, tag: &str) -> Vec<Value> {
    g.records()
        .into_iter()
        .filter(|r| {
            r["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!(tag)))
        })
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eval_scores_two_aliases_and_gates_a_planted_regression() {
    let (g, d) = start();
    let (key, _) = g.create_key(&["--org", "a", "--role", "developer"]);
    g.wait_key(&key).await;
    let dir = d.path();
    dataset(dir);
    let both = spec(dir, "both.toml", "\"good\", \"bad\"", SCORERS);
    let (code, out, err) = cli(&g, &key, dir, &["run", &both]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(
        (out["pairs"].as_u64(), out["done"].as_u64()),
        (Some(40), Some(40)),
        "{out}"
    );
    let run = out["run_id"].as_str().unwrap().to_string();
    let rows = results(dir, &run);
    assert_eq!(rows.len(), 40);
    for r in &rows {
        let case: usize = r["case_id"].as_str().unwrap()[1..].parse().unwrap();
        let long = case % 2 == 1;
        let s = &r["scores"];
        match r["target"].as_str().unwrap() {
            "good" => {
                assert_eq!(s["exact"]["pass"], true, "{r}");
                assert_eq!(
                    s["judge"]["value"], 0.5,
                    "equal answers tie in both orders: {r}"
                );
                assert_eq!(s["embedding"]["pass"], true, "{r}");
            }
            _ => {
                assert_eq!(s["exact"]["pass"], !long, "{r}");
                assert_eq!(s["embedding"]["pass"], !long, "{r}");
                let want = if long { 0.0 } else { 0.5 };
                assert_eq!(s["judge"]["value"], want, "{r}");
            }
        }
        assert!(
            int(&r["ttft_ms"]) > 0 && int(&r["completion_tokens"]) > 0,
            "{r}"
        );
    }

    // Both orders of the pairwise judge were sent: with the truncated answer as A the judge
    // picks B (the reference), with it as B it picks A — the positions really swapped.
    let long_bad = rows
        .iter()
        .find(|r| r["target"] == "bad" && r["case_id"] == "c01")
        .unwrap();
    let orders = long_bad["scores"]["judge"]["detail"]["orders"]
        .as_array()
        .unwrap();
    let verdicts: Vec<(&str, &str)> = orders
        .iter()
        .map(|o| (o["order"].as_str().unwrap(), o["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(verdicts, vec![("ab", "B"), ("ba", "A")]);
    let judged = eventually(Duration::from_secs(5), || async {
        let rows = tagged(&g, &format!("eval_run:{run}"));
        let n = rows
            .iter()
            .filter(|r| r["requested_model"] == "judge")
            .count();
        // 40 answers, 80 judge calls (two orders each) and 40 embeddings.
        if (n, rows.len()) == (80, 160) {
            Ok(rows)
        } else {
            Err(format!("{n} judge rows of {}", rows.len()))
        }
    })
    .await;
    for o in orders {
        let row = judged
            .iter()
            .find(|r| r["request_id"] == o["request_id"])
            .unwrap_or_else(|| panic!("no usage row for {o}"));
        let order = format!("eval_order:{}", o["order"].as_str().unwrap());
        assert!(
            row["tags"].as_array().unwrap().contains(&json!(order)),
            "{row}"
        );
    }

    // Each case's cost is its usage row's, exactly; the scorers' calls are counted apart.
    for r in &rows {
        let row = judged
            .iter()
            .find(|u| u["request_id"] == r["request_id"])
            .unwrap_or_else(|| panic!("no usage row for {r}"));
        assert_eq!(int(&r["cost_nanousd"]), int(&row["cost_nanousd"]), "{r}");
        assert!(int(&r["cost_nanousd"]) > 0);
        let case = format!("eval_case:{}", r["case_id"].as_str().unwrap());
        assert!(row["tags"].as_array().unwrap().contains(&json!(case)));
    }
    let spent: i64 = judged.iter().map(|u| int(&u["cost_nanousd"])).sum();
    assert_eq!(
        out["spent_nanousd"],
        json!(spent.to_string()),
        "the run's spend is its rows'"
    );

    // The gate: the truncating alias regresses (10 cases newly failing, McNemar p ≈ 0.002)…
    let (code, report, err) = cli(
        &g,
        &key,
        dir,
        &[
            "compare",
            &run,
            &run,
            "--baseline-target",
            "good",
            "--candidate-target",
            "bad",
            "--margin",
            "0.05",
        ],
    );
    assert_eq!(code, 1, "{report} {err}");
    let exact = &report["scorers"]["exact"];
    assert_eq!(exact["mean_delta"], -0.5, "{report}");
    assert_eq!(exact["mcnemar"]["newly_failing"], 10);
    assert!(exact["mcnemar"]["p_value"].as_f64().unwrap() < 0.01);
    assert!(exact["ci95"][1].as_f64().unwrap() < 0.0);
    assert_eq!(report["regression"], true);
    // …and another alias of the same model is a neutral change.
    let same = spec(dir, "same.toml", "\"same\"", SCORERS);
    let (code, out2, err) = cli(&g, &key, dir, &["run", &same]);
    assert_eq!(code, 0, "{out2} {err}");
    let run2 = out2["run_id"].as_str().unwrap();
    let (code, report, err) = cli(
        &g,
        &key,
        dir,
        &[
            "compare",
            &run,
            run2,
            "--baseline-target",
            "good",
            "--margin",
            "0.05",
        ],
    );
    assert_eq!(code, 0, "{report} {err}");
    assert_eq!(report["scorers"]["exact"]["mean_delta"], 0.0);
    assert_eq!(report["regression"], false);
    // A run with several targets must name the one compared.
    let (code, _, err) = cli(&g, &key, dir, &["compare", &run, run2]);
    assert_eq!(code, 2);
    assert!(err.contains("name one"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_a_run_that_resumes_without_resending_finished_cases() {
    let (g, d) = start();
    let (key, _) = g.create_key(&["--org", "a", "--role", "developer"]);
    let (invoker, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    g.wait_key(&key).await;
    g.wait_key(&invoker).await;
    let dir = d.path();
    dataset(dir);
    // Tagging requests as an eval's needs eval:run: an invoker's cases all fail, with the reason.
    let plain = spec(
        dir,
        "plain.toml",
        "\"good\"",
        "[[scorers]]\ntype = \"exact\"\n",
    );
    let (code, out, err) = cli(&g, &invoker, dir, &["run", &plain]);
    assert_eq!(code, 4, "{out} {err}");
    let failed = results(dir, out["run_id"].as_str().unwrap());
    assert!(
        failed[0]["error"].as_str().unwrap().contains("eval:run"),
        "{}",
        failed[0]
    );

    // One case costs about 40 µUSD here: a 0.0002 USD cap stops the run after a few.
    let capped = spec(
        dir,
        "capped.toml",
        "\"good\"",
        "budget_usd = \"0.0002\"\n[[scorers]]\ntype = \"exact\"\n",
    );
    let (code, out, err) = cli(&g, &key, dir, &["run", &capped]);
    assert_eq!(code, 3, "{out} {err}");
    assert_eq!(out["ending"], "budget_exhausted");
    let first = out["done"].as_u64().unwrap();
    assert!((1..20).contains(&first), "{out}");
    let run = out["run_id"].as_str().unwrap().to_string();
    let done_before: Vec<Value> = results(dir, &run);

    // Resumed with a larger cap, it finishes; no case was sent twice.
    let (code, out, err) = cli(
        &g,
        &key,
        dir,
        &["run", &capped, "--resume", &run, "--budget-usd", "1"],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(
        (out["done"].as_u64(), out["run_id"].as_str()),
        (Some(20), Some(run.as_str()))
    );
    let rows = eventually(Duration::from_secs(5), || async {
        let rows = tagged(&g, &format!("eval_run:{run}"));
        if rows.len() == 20 {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await;
    for i in 0..20 {
        let case = json!(format!("eval_case:c{i:02}"));
        let n = rows
            .iter()
            .filter(|r| r["tags"].as_array().unwrap().contains(&case))
            .count();
        assert_eq!(n, 1, "case c{i:02} was sent {n} times");
    }
    let after = results(dir, &run);
    for r in &done_before {
        let same = after.iter().find(|x| x["case_id"] == r["case_id"]).unwrap();
        assert_eq!(
            same["request_id"], r["request_id"],
            "finished cases keep their result"
        );
    }
    let spent: i64 = rows.iter().map(|u| int(&u["cost_nanousd"])).sum();
    assert_eq!(out["spent_nanousd"], json!(spent.to_string()));

    // A changed dataset is a new version: the run cannot resume on it.
    std::fs::write(
        dir.join("cases.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    let (code, _, err) = cli(&g, &key, dir, &["run", &capped, "--resume", &run]);
    assert_eq!(code, 2);
    assert!(err.contains("start a new run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_land_in_clickhouse_with_costs_equal_to_the_usage_rows() {
    let Some(url) = common::clickhouse::shared_url() else {
        return;
    };
    let db = common::clickhouse::new_db();
    let d = tempfile::tempdir().unwrap();
    let policies = policies_dir(d.path(), "");
    let extra = format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n{MODELS}",
        policies.display()
    );
    let g = Gateway::start_edited(&[], &extra, |t| {
        common::clickhouse::sink_config(t, &url, &db, "")
    });
    let (key, _) = g.create_key(&["--org", "a", "--role", "developer"]);
    g.wait_key(&key).await;
    let dir = d.path();
    dataset(dir);
    let s = spec(
        dir,
        "s.toml",
        "\"good\", \"bad\"",
        "[[scorers]]\ntype = \"exact\"\n",
    );
    let (code, out, err) = cli(&g, &key, dir, &["run", &s]);
    assert_eq!((code, &out["clickhouse"]), (0, &json!(true)), "{out} {err}");
    let run = out["run_id"].as_str().unwrap();
    let q = |sql: String| {
        let url = url.clone();
        async move {
            common::clickhouse::query(&url, &sql)
                .await
                .trim()
                .to_string()
        }
    };
    assert_eq!(
        q(format!(
            "SELECT count() FROM {db}.eval_results WHERE run_id = '{run}'"
        ))
        .await,
        "40"
    );
    let passed = q(format!(
        "SELECT target, sum(score_passed[indexOf(score_names, 'exact')]) FROM {db}.eval_results \
         WHERE run_id = '{run}' GROUP BY target ORDER BY target FORMAT CSV"
    ))
    .await;
    assert_eq!(passed, "\"bad\",10\n\"good\",20");
    assert_eq!(
        q(format!(
            "SELECT count() FROM {db}.eval_cases WHERE dataset = 'cases'"
        ))
        .await,
        "20"
    );
    // The results' cost is the usage rows' (written behind the requests: wait for them).
    let rows = common::clickhouse::wait_for(
        &url,
        &format!("SELECT count() FROM {db}.usage_events WHERE has(tags, 'eval_run:{run}')"),
        "40",
        20,
    )
    .await;
    assert_eq!(rows, "40");
    let usage = q(format!(
        "SELECT sum(cost_nanousd) FROM {db}.usage_events WHERE has(tags, 'eval_run:{run}')"
    ))
    .await;
    let recorded = q(format!(
        "SELECT sum(cost_nanousd) FROM {db}.eval_results WHERE run_id = '{run}'"
    ))
    .await;
    assert_eq!(usage, recorded);
    assert_ne!(usage, "0");

    // A dataset registered through the admin API is a version named by its content hash; a
    // spec that names it runs its cases from ClickHouse.
    let (admin, _) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    g.wait_key(&admin).await;
    let put = |body: String| {
        let (g, admin) = (&g, admin.clone());
        async move {
            let r = client()
                .put(g.ops_url("/admin/v1/evals/datasets/reg"))
                .bearer_auth(&admin)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = put("{\"messages\": []}\nnot json\n".into()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 2"),
        "{v}"
    );
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let (s, v) = put(text.clone()).await;
    assert_eq!((s, v["cases"].as_u64()), (201, Some(20)), "{v}");
    let hash = v["hash"].as_str().unwrap().to_string();
    // The same bytes the file run used: the same version.
    assert_eq!(
        out["dataset"].as_str().unwrap(),
        format!("cases@{}", &hash[..12])
    );
    let (_, list) = g
        .admin(&admin, "GET", "/admin/v1/evals/datasets", Value::Null)
        .await;
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["hash"] == hash.as_str() && d["dataset"] == "reg"),
        "{list}"
    );
    // The file goes; the registered version stays.
    std::fs::remove_file(dir.join("cases.jsonl")).unwrap();
    let reg = spec(
        dir,
        "reg.toml",
        "\"good\"",
        "[[scorers]]\ntype = \"exact\"\n",
    );
    let text = std::fs::read_to_string(&reg).unwrap();
    std::fs::write(
        &reg,
        text.replace("dataset = \"cases.jsonl\"", "dataset = \"registered:reg\""),
    )
    .unwrap();
    let (code, out, err) = cli(&g, &key, dir, &["run", &reg]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out["done"], 20, "{out}");
    assert_eq!(out["dataset"], json!(format!("reg@{}", &hash[..12])));
    let rows = results(dir, out["run_id"].as_str().unwrap());
    assert!(
        rows.iter().all(|r| r["scores"]["exact"]["pass"] == true),
        "expected answers read back exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_evals_through_its_admin_api_and_on_a_schedule_that_catches_a_regression()
{
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir(dir.join("evals")).unwrap();
    dataset(&dir.join("evals"));
    std::fs::write(
        dir.join("evals/nightly.toml"),
        "name = \"nightly\"\ndataset = \"cases.jsonl\"\ntargets = [\"flip\"]\n[[scorers]]\ntype = \"exact\"\n",
    )
    .unwrap();
    let policies = policies_dir(dir, "");
    let flip = "\n[models.flip]\nprovider = \"mock\"\nmodel = \"echo\"\nprice = { input_per_1m = 1, output_per_1m = 2 }\n";
    let extra = format!(
        "[auth]\nkey_store = \"keys.json\"\npolicies = \"{}\"\n[orgs.b]\n{MODELS}{flip}\n[evals]\ndir = \"{}\"\nruns_dir = \"{}\"\n",
        policies.display(),
        dir.join("evals").display(),
        dir.join("runs").display()
    );
    let g = Gateway::start_with(&[], &extra);
    let (admin, _) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    let (outsider, _) = g.create_key(&["--org", "b", "--role", "org-admin"]);
    let (viewer, _) = g.create_key(&["--org", "a", "--role", "org-viewer"]);
    for k in [&admin, &outsider, &viewer] {
        g.wait_key(k).await;
    }
    let (s, list) = g.admin(&admin, "GET", "/admin/v1/evals", Value::Null).await;
    assert_eq!(
        (s, list["data"][0]["name"].as_str()),
        (200, Some("nightly")),
        "{list}"
    );

    // A run through the API, as the caller, in the background.
    let (s, v) = g
        .admin(&viewer, "POST", "/admin/v1/evals/nightly/runs", Value::Null)
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = g
        .admin(&admin, "POST", "/admin/v1/evals/nightly/runs", Value::Null)
        .await;
    assert_eq!(s, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let path = format!("/admin/v1/evals/runs/{run}");
    // Another org's admin learns nothing of it, in flight or ended.
    assert_eq!(g.admin(&outsider, "GET", &path, Value::Null).await.0, 404);
    let done = eventually(Duration::from_secs(20), || async {
        let (_, v) = g.admin(&admin, "GET", &path, Value::Null).await;
        if v["status"] == "ended" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let flip_scores = &done["targets"]["flip"];
    assert_eq!(flip_scores["cases"], 20, "{done}");
    assert_eq!(flip_scores["scores"]["exact"]["mean"], 1.0, "{done}");
    let rows = tagged(&g, &format!("eval_run:{run}"));
    assert!(
        rows.iter().all(|r| r["org"] == "a"),
        "the caller's own rows"
    );
    // Another org's admin does not see it; the comparison API answers for the owner.
    assert_eq!(g.admin(&outsider, "GET", &path, Value::Null).await.0, 404);
    let (s, cmp) = g
        .admin(
            &admin,
            "GET",
            &format!("/admin/v1/evals/compare?baseline={run}&candidate={run}"),
            Value::Null,
        )
        .await;
    assert_eq!((s, &cmp["regression"]), (200, &json!(false)), "{cmp}");

    // A schedule: its first run is the baseline; once the alias's model changes, the next
    // run regresses and the metric the alert watches goes to 1.
    let (dev, _) = g.create_key(&["--org", "a", "--role", "developer"]);
    g.wait_key(&dev).await;
    let text = std::fs::read_to_string(&g.config).unwrap();
    let scheduled =
        format!("{text}\n[[evals.schedules]]\neval = \"nightly\"\nevery_s = 1\nkey = \"{dev}\"\n");
    std::fs::write(&g.config, &scheduled).unwrap();
    // (Only scheduled runs set the timestamp: the API run above does not count.)
    g.wait_metric_at_least(
        "model_bridge_eval_last_run_timestamp_seconds{eval=\"nightly\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        g.metric("model_bridge_eval_regression{eval=\"nightly\"}")
            .await,
        0.0
    );
    let regressed = scheduled.replace(
        "[models.flip]\nprovider = \"mock\"\nmodel = \"echo\"",
        "[models.flip]\nprovider = \"mock\"\nmodel = \"echo-trunc-12\"",
    );
    assert_ne!(regressed, scheduled);
    std::fs::write(&g.config, regressed).unwrap();

    g.wait_metric(
        "model_bridge_eval_regression{eval=\"nightly\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let mean = g
        .metric("model_bridge_eval_mean_score{eval=\"nightly\",scorer=\"exact\",target=\"flip\"}")
        .await;
    assert_eq!(mean, 0.5, "the truncating model fails the long half");
}

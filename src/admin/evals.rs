//! Evals through the admin API: the specs of `[evals] dir` and the schedules, a run started in
//! the background as the caller (its requests go through the data plane with the caller's own
//! credential, never stored beyond the run), a run's progress and scores, and the comparison of
//! two results. A run started here belongs to the caller's org: another org's admins do not see
//! it; runs made by the CLI or a schedule are visible with `admin:all_orgs` only.

use super::handlers::query;
use super::warehouse::percent_decode;
use super::{Ctx, Reply, ALL_ORGS};
use crate::eval::runner::{self, RunFile, Start};
use crate::eval::{compare, spec};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

/// Runs in flight in this process.
static RUNNING: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

fn running(id: &str) -> bool {
    RUNNING.lock().map(|r| r.contains(id)).unwrap_or(false)
}

/// `GET /admin/v1/evals`: the specs and the schedules.
pub fn list(ctx: &Ctx<'_>) -> Reply {
    let s = &ctx.live.config.evals;
    let mut specs = Vec::new();
    if let Some(dir) = &s.dir {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            specs.push(match spec::load(&f) {
                Ok(sp) => json!({"name": name, "eval": sp.name, "targets": sp.targets,
                                 "scorers": sp.scorers.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
                                 "concurrency": sp.concurrency}),
                Err(e) => json!({"name": name, "error": e}),
            });
        }
    }
    let schedules: Vec<Value> = s
        .schedules
        .iter()
        .map(|x| {
            json!({"eval": x.eval, "every_s": x.every.as_secs(), "baseline": x.baseline,
                        "target": x.target, "margin": x.margin})
        })
        .collect();
    Reply::ok(json!({"object": "list", "data": specs, "schedules": schedules}))
}

/// `POST /admin/v1/evals/{id}/runs` `{"budget_usd": "…", "resume": "ev_…"}` (both optional):
/// starts the run in the background; 202 with its id.
pub fn start(ctx: &Ctx<'_>, name: &str) -> Reply {
    if ctx.live.config.evals.spec_path(name).is_none() {
        return Reply::error(404, "not_found", format!("No eval `{name}`."));
    }
    let body: Value =
        if ctx.req.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(ctx.req.body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return Reply::error(
                    400,
                    "invalid_request_error",
                    "The body is {\"budget_usd\": \"…\", \"resume\": \"ev_…\"} (both optional).",
                ),
            }
        };
    let budget = match body["budget_usd"]
        .as_str()
        .map(crate::usage::pricing::parse_usd)
    {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            return Reply::error(400, "invalid_request_error", format!("budget_usd: {e}"))
        }
    };
    let org = ctx.principal.org.to_string();
    let start = match body["resume"].as_str() {
        Some(id) => match visible(ctx, id) {
            Ok(_) if running(id) => {
                return Reply::error(409, "conflict", format!("Run `{id}` is running."))
            }
            Ok(_) => Start::Resume(id.to_string()),
            Err(r) => return r,
        },
        None => Start::New(runner::new_run_id()),
    };
    let id = match &start {
        Start::New(id) | Start::Resume(id) => id.clone(),
    };
    if let Ok(mut r) = RUNNING.lock() {
        r.insert(id.clone());
    }
    let live = ctx.shared.live();
    let key = ctx
        .req
        .credential
        .clone()
        .map(|c| c.strip_prefix("Bearer ").map(str::to_string).unwrap_or(c));
    // Who may read it: the org that started it.
    if matches!(start, Start::New(_)) {
        mark_owner(&live.config.evals.runs_dir, &id, &org);
    }
    let (run_name, run_id) = (name.to_string(), id.clone());
    tokio::spawn(async move {
        let out =
            crate::eval::schedule::run_named(&live.config, &run_name, key, start, budget).await;
        if let Err(e) = &out {
            log::warn!("eval {run_name} run {run_id}: {e}");
        }
        if let Ok(mut r) = RUNNING.lock() {
            r.remove(&run_id);
        }
    });
    ctx.audit(
        "eval.run",
        Some(&org),
        format!("eval:{name}"),
        None,
        Some(json!({"run_id": id, "budget_usd": body["budget_usd"], "resume": body["resume"]})),
    );
    Reply {
        status: 202,
        body: json!({"object": "eval.run", "run_id": id, "eval": name, "status": "running"}),
        text: None,
    }
}

/// The org that started run `id` through the API (a file beside the run's).
fn owner_path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("{id}.org"))
}

fn mark_owner(dir: &std::path::Path, id: &str, org: &str) {
    let written =
        std::fs::create_dir_all(dir).and_then(|()| std::fs::write(owner_path(dir, id), org));
    if let Err(e) = written {
        log::warn!("eval run {id}: owner not recorded: {e}");
    }
}

fn missing(id: &str) -> Reply {
    Reply::error(404, "not_found", format!("No eval run `{id}`."))
}

/// Refuses a run the caller may not see (its org's, or every run with `admin:all_orgs`).
fn may_see(ctx: &Ctx<'_>, id: &str) -> Result<(), Reply> {
    let valid = id.starts_with("ev_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit());
    let owner = std::fs::read_to_string(owner_path(&ctx.live.config.evals.runs_dir, id)).ok();
    let mine = owner.as_deref() == Some(ctx.principal.org.as_ref());
    if valid && (mine || ctx.principal.allows(ALL_ORGS)) {
        Ok(())
    } else {
        Err(missing(id))
    }
}

/// Run `id`, if the caller may see it.
fn visible(ctx: &Ctx<'_>, id: &str) -> Result<RunFile, Reply> {
    may_see(ctx, id)?;
    RunFile::read(&ctx.live.config.evals.runs_dir, id).map_err(|_| missing(id))
}

/// `GET /admin/v1/evals/runs/{id}`: progress, spend and each target's scores.
pub fn get(ctx: &Ctx<'_>, id: &str) -> Reply {
    if let Err(r) = may_see(ctx, id) {
        return r;
    }
    // A run just started may not have written its file yet.
    let run = match RunFile::read(&ctx.live.config.evals.runs_dir, id) {
        Ok(r) => r,
        Err(_) if running(id) => {
            return Reply::ok(json!({"object": "eval.run", "run_id": id, "status": "running"}))
        }
        Err(_) => return missing(id),
    };
    let mut targets = serde_json::Map::new();
    for t in &run.meta.targets {
        let ok = runner::by_case(&run, t);
        let cost: i64 = ok.values().map(|r| r.cost_nanousd).sum();
        targets.insert(
            t.clone(),
            json!({"cases": ok.len(), "cost_nanousd": cost.to_string(), "scores": run.scores(t)}),
        );
    }
    let errors = run.results.values().filter(|r| r.status != "ok").count();
    let status = if running(id) { "running" } else { "ended" };
    Reply::ok(json!({
        "object": "eval.run", "run_id": id, "status": status, "eval": run.meta.eval,
        "dataset": format!("{}@{}", run.meta.dataset, &run.meta.dataset_hash[..12]),
        "started": run.meta.started, "errors": errors,
        "spent_nanousd": run.spent().to_string(), "targets": targets,
    }))
}

/// `GET /admin/v1/evals/compare?baseline=&candidate=&baseline_target=&candidate_target=&margin=`.
pub fn compare_runs(ctx: &Ctx<'_>) -> Reply {
    let q = |n: &str| query(ctx, n).map(percent_decode).filter(|v| !v.is_empty());
    let (Some(b), Some(c)) = (q("baseline"), q("candidate")) else {
        return Reply::error(
            400,
            "invalid_request_error",
            "`baseline` and `candidate` are run ids.",
        );
    };
    let margin = match q("margin").map(|m| m.parse::<f64>()) {
        None => 0.0,
        Some(Ok(m)) if (0.0..=1.0).contains(&m) => m,
        _ => return Reply::error(400, "invalid_request_error", "`margin` is 0 to 1."),
    };
    let base = match visible(ctx, &b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let cand = match visible(ctx, &c) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let sides = compare::Side::new(&base, q("baseline_target").as_deref()).and_then(|bs| {
        let cs = compare::Side::new(&cand, q("candidate_target").as_deref())?;
        compare::compare(&bs, &cs, margin)
    });
    match sides {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::error(400, "invalid_request_error", e),
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Registered {
    dataset: String,
    dataset_hash: String,
    cases: u64,
    registered: u32,
}

/// `GET /admin/v1/evals/datasets`: every registered version, newest first.
pub async fn list_datasets(ctx: &Ctx<'_>) -> Reply {
    let Some(ch) = &ctx.live.config.clickhouse else {
        return Reply::error(
            409,
            "warehouse_not_configured",
            "Datasets are registered in ClickHouse: configure [clickhouse].",
        );
    };
    let rows: Result<Vec<Registered>, _> = ch
        .db_client()
        .query(
            "SELECT dataset, dataset_hash, uniqExact(case_id) AS cases, toUInt32(max(ts)) AS registered \
             FROM eval_cases GROUP BY dataset, dataset_hash ORDER BY registered DESC, dataset",
        )
        .fetch_all()
        .await;
    match rows {
        Ok(rows) => Reply::ok(json!({"object": "list", "data": rows.iter().map(|r| json!({
            "dataset": r.dataset, "hash": r.dataset_hash,
            "version": format!("{}@{}", r.dataset, &r.dataset_hash[..12.min(r.dataset_hash.len())]),
            "cases": r.cases, "registered_at": crate::time::rfc3339(u64::from(r.registered)),
        })).collect::<Vec<_>>()})),
        Err(e) => Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}")),
    }
}

/// `PUT /admin/v1/evals/datasets/{id}`: the body is the dataset's JSONL; registered as the
/// version its content hash names (specs use `dataset = "registered:<id>"`).
pub async fn register_dataset(ctx: &Ctx<'_>, name: &str) -> Reply {
    let Some(ch) = &ctx.live.config.clickhouse else {
        return Reply::error(
            409,
            "warehouse_not_configured",
            "Datasets are registered in ClickHouse: configure [clickhouse].",
        );
    };
    if !crate::config::valid_name(name) {
        return Reply::error(
            400,
            "invalid_request_error",
            "A dataset name is 1-64 of a-z, A-Z, 0-9, - _ .",
        );
    }
    let ds = match crate::eval::dataset::parse(name, ctx.req.body) {
        Ok(d) => d,
        Err(p) => {
            return Reply::error(
                400,
                "invalid_dataset",
                format!("Invalid dataset: {}", p.join("; ")),
            )
        }
    };
    if let Err(e) = crate::eval::store_cases(&ch.db_client(), &ds).await {
        return Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"));
    }
    let body = json!({"object": "eval.dataset", "dataset": name, "hash": ds.hash,
                      "version": ds.version(), "cases": ds.cases.len()});
    ctx.audit(
        "dataset.register",
        None,
        format!("dataset:{}", ds.version()),
        None,
        Some(body.clone()),
    );
    Reply {
        status: 201,
        body,
        text: None,
    }
}

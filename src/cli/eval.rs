//! `model-bridge eval run` and `eval compare`: an eval through a running gateway, and the
//! regression gate between two results. Exit codes: run — 0 every pair scored, 3 stopped by
//! its budget (resume with a larger `--budget-usd`), 4 some pairs failed (resume sends them
//! again); compare — 0 no regression, 1 regression; 2 for any error.

use crate::config::Config;
use crate::eval::compare;
use crate::eval::runner::{self, Ending, RunFile};
use std::path::PathBuf;

pub struct RunArgs {
    pub config: PathBuf,
    pub spec: PathBuf,
    pub gateway: Option<String>,
    pub ops: Option<String>,
    pub key: Option<String>,
    pub resume: Option<String>,
    pub budget_usd: Option<String>,
    pub dir: PathBuf,
}

/// The gateway as the config describes it (the URLs may be given instead).
fn endpoints(cfg: Option<&Config>, a: &RunArgs) -> Result<(String, String), String> {
    let local = cfg.map(|c| runner::Gateway::local(&c.server, None));
    let data = a
        .gateway
        .clone()
        .or_else(|| local.as_ref().map(|g| g.data_plane.clone()))
        .ok_or("no gateway: pass --gateway or a --config")?;
    let ops = a
        .ops
        .clone()
        .or_else(|| local.as_ref().map(|g| g.ops.clone()))
        .ok_or("no ops plane: pass --ops or a --config")?;
    Ok((
        data.trim_end_matches('/').to_string(),
        ops.trim_end_matches('/').to_string(),
    ))
}

pub fn run(a: RunArgs) -> Result<u8, String> {
    let cfg = if a.config.exists() {
        Some(Config::load(&a.config).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let (data_plane, ops) = endpoints(cfg.as_ref(), &a)?;
    let budget = a
        .budget_usd
        .as_deref()
        .map(|b| crate::usage::pricing::parse_usd(b).map_err(|e| format!("--budget-usd: {e}")))
        .transpose()?;
    let gw = runner::Gateway {
        data_plane,
        ops,
        key: a
            .key
            .clone()
            .or_else(|| std::env::var("MODEL_BRIDGE_API_KEY").ok()),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?,
    };
    let start = match a.resume.clone() {
        Some(id) => runner::Start::Resume(id),
        None => runner::Start::New(runner::new_run_id()),
    };
    let ch = cfg.as_ref().and_then(|c| c.clickhouse.as_ref());
    let (out, stored) = crate::warehouse::block_on(crate::eval::run_spec(
        &a.spec, gw, &a.dir, ch, start, budget,
    ))??;
    let summary = serde_json::json!({
        "object": "eval.run",
        "run_id": out.meta.run_id,
        "eval": out.meta.eval,
        "dataset": format!("{}@{}", out.meta.dataset, &out.meta.dataset_hash[..12]),
        "targets": out.meta.targets,
        "ending": out.ending,
        "pairs": out.pairs,
        "done": out.done,
        "errors": out.errors,
        "spent_nanousd": out.spent_nanousd.to_string(),
        "spent_usd": crate::usage::pricing::format_usd(i64::try_from(out.spent_nanousd).unwrap_or(i64::MAX)),
        "file": RunFile::path(&a.dir, &out.meta.run_id).display().to_string(),
        "clickhouse": stored.as_ref().map_or_else(|e| serde_json::json!({"error": e}), |s| serde_json::json!(s)),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(match out.ending {
        Ending::Completed => 0,
        Ending::BudgetExhausted => 3,
        Ending::WithErrors => 4,
    })
}

pub struct CompareArgs {
    pub baseline: String,
    pub candidate: String,
    pub baseline_target: Option<String>,
    pub candidate_target: Option<String>,
    pub margin: f64,
    pub dir: PathBuf,
}

pub fn compare(a: CompareArgs) -> Result<u8, String> {
    let base = RunFile::read(&a.dir, &a.baseline)?;
    let cand = RunFile::read(&a.dir, &a.candidate)?;
    let report = compare::compare(
        &compare::Side::new(&base, a.baseline_target.as_deref())?,
        &compare::Side::new(&cand, a.candidate_target.as_deref())?,
        a.margin,
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    Ok(u8::from(report["regression"] == true))
}

//! Evaluation: datasets of cases (`dataset`), an eval's definition (`spec`), scorers
//! (`scorer`), runs through the gateway's own data plane (`runner`), and case-by-case
//! comparison of two results as a regression gate (`compare`). Results are kept in a state
//! file per run (what resumes it) and written to ClickHouse (`eval_cases`, `eval_results`).

pub mod compare;
pub mod dataset;
pub mod runner;
pub mod schedule;
pub mod scorer;
pub mod spec;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Sending eval-tagged requests (`x-model-bridge-eval`).
pub const EVAL_PERMISSION: &str = "eval:run";

/// The usage-row tags of an `x-model-bridge-eval` value (`run=…; dataset=…; case=…;
/// target=…; scorer=…; order=…`): `eval_<key>:<value>` for the keys known, values cut at
/// 128 characters, at most 8.
pub fn tags(value: &str) -> Vec<String> {
    const KEYS: &[&str] = &["run", "dataset", "case", "target", "scorer", "order"];
    value
        .split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            (KEYS.contains(&k) && !v.is_empty())
                .then(|| format!("eval_{k}:{}", v.chars().take(128).collect::<String>()))
        })
        .take(8)
        .collect()
}

/// One case of a dataset version (`eval_cases`).
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct CaseRow {
    pub ts: u32,
    pub dataset: String,
    pub dataset_hash: String,
    pub case_id: String,
    pub input: String,
    pub expected: String,
    pub tags: Vec<String>,
}

/// One scored (case, target) of a run (`eval_results`).
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct ResultRow {
    pub ts: u32,
    pub run_id: String,
    pub eval: String,
    pub dataset: String,
    pub dataset_hash: String,
    pub target: String,
    pub case_id: String,
    pub status: String,
    pub error: String,
    pub output: String,
    pub request_id: String,
    pub latency_ms: u64,
    pub ttft_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanousd: i64,
    pub scoring_cost_nanousd: i64,
    pub score_names: Vec<String>,
    pub score_values: Vec<f64>,
    pub score_passed: Vec<u8>,
}

impl ResultRow {
    pub fn of(meta: &runner::Meta, r: &runner::CaseResult) -> Self {
        Self {
            ts: (r.ts_ms / 1000) as u32,
            run_id: meta.run_id.clone(),
            eval: meta.eval.clone(),
            dataset: meta.dataset.clone(),
            dataset_hash: meta.dataset_hash.clone(),
            target: r.target.clone(),
            case_id: r.case_id.clone(),
            status: r.status.clone(),
            error: r.error.clone().unwrap_or_default(),
            output: r.output.clone(),
            request_id: r.request_id.clone(),
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cost_nanousd: r.cost_nanousd,
            scoring_cost_nanousd: r.scoring_cost_nanousd,
            score_names: r.scores.keys().cloned().collect(),
            score_values: r.scores.values().map(|s| s.value).collect(),
            score_passed: r.scores.values().map(|s| u8::from(s.pass)).collect(),
        }
    }
}

/// Loads the spec at `path`, resolves its dataset, runs it through `gw` and stores what the run
/// produced in ClickHouse when one is configured: the outcome, and whether the results reached
/// ClickHouse (`Err`: they are in the run file only).
pub async fn run_spec(
    path: &std::path::Path,
    gw: runner::Gateway,
    dir: &std::path::Path,
    ch: Option<&crate::warehouse::ClickHouseSettings>,
    start: runner::Start,
    budget: Option<i128>,
) -> Result<(runner::Outcome, Result<bool, String>), String> {
    let spec = std::sync::Arc::new(spec::load(path)?);
    let ds = std::sync::Arc::new(resolve(&spec.dataset, ch).await?);
    let out = runner::run(spec, ds.clone(), gw, dir, start, budget).await?;
    let stored = match ch {
        Some(ch) => store(&ch.db_client(), &ds, &out.meta, &out.new)
            .await
            .map(|()| true)
            .map_err(|e| format!("results kept in the run file, not in ClickHouse: {e}")),
        None => Ok(false),
    };
    Ok((out, stored))
}

/// The cases of `r`: its file, or its registered version from ClickHouse.
pub async fn resolve(
    r: &spec::DatasetRef,
    ch: Option<&crate::warehouse::ClickHouseSettings>,
) -> Result<dataset::Dataset, String> {
    match r {
        spec::DatasetRef::File(p) => dataset::load(p),
        spec::DatasetRef::Registered { name, version } => {
            let ch = ch.ok_or("a registered dataset needs [clickhouse]")?;
            registered(&ch.db_client(), name, version.as_deref()).await
        }
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct VersionRow {
    dataset_hash: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredCase {
    case_id: String,
    input: String,
    expected: String,
    tags: Vec<String>,
}

/// A registered version of `name` (the latest registered, or the one whose hash starts with
/// `version`).
pub async fn registered(
    client: &clickhouse::Client,
    name: &str,
    version: Option<&str>,
) -> Result<dataset::Dataset, String> {
    let versions: Vec<VersionRow> = client
        .query(
            "SELECT dataset_hash FROM eval_cases WHERE dataset = ? AND dataset_hash LIKE ? \
             GROUP BY dataset_hash ORDER BY max(ts) DESC, dataset_hash LIMIT 2",
        )
        .bind(name)
        // Hex digits only (the spec checks), so the pattern has no wildcard of its own.
        .bind(format!("{}%", version.unwrap_or("")))
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    let hash = match (versions.as_slice(), version) {
        ([], _) => {
            return Err(format!(
                "no registered dataset `{name}`{}",
                version.map(|v| format!("@{v}")).unwrap_or_default()
            ))
        }
        ([_, _], Some(v)) => return Err(format!("`{name}@{v}` names more than one version")),
        ([first, ..], _) => first.dataset_hash.clone(),
    };
    let rows: Vec<StoredCase> = client
        .query(
            "SELECT case_id, any(input), any(expected), any(tags) FROM eval_cases \
             WHERE dataset = ? AND dataset_hash = ? GROUP BY case_id ORDER BY case_id",
        )
        .bind(name)
        .bind(&hash)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    dataset::from_rows(
        name,
        &hash,
        rows.into_iter()
            .map(|r| (r.case_id, r.input, r.expected, r.tags))
            .collect(),
    )
}

/// Writes a dataset version's cases and a run's new results to ClickHouse.
pub async fn store(
    client: &clickhouse::Client,
    ds: &dataset::Dataset,
    meta: &runner::Meta,
    results: &[runner::CaseResult],
) -> Result<(), String> {
    store_cases(client, ds).await?;
    if results.is_empty() {
        return Ok(());
    }
    let mut ins = client
        .insert::<ResultRow>("eval_results")
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        ins.write(&ResultRow::of(meta, r))
            .await
            .map_err(|e| e.to_string())?;
    }
    ins.end().await.map_err(|e| e.to_string())
}

/// Registers a dataset version's cases (`eval_cases`, deduplicated by version and case).
pub async fn store_cases(client: &clickhouse::Client, ds: &dataset::Dataset) -> Result<(), String> {
    let now = crate::time::now_unix() as u32;
    let mut ins = client
        .insert::<CaseRow>("eval_cases")
        .await
        .map_err(|e| e.to_string())?;
    for c in &ds.cases {
        ins.write(&CaseRow {
            ts: now,
            dataset: ds.name.clone(),
            dataset_hash: ds.hash.clone(),
            case_id: c.id.clone(),
            input: dataset::input_json(c),
            // JSON, so a registered version reads back exactly (a string stays a string).
            expected: c
                .expected
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            tags: c.tags.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    ins.end().await.map_err(|e| e.to_string())
}

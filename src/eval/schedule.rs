//! Evals the gateway runs itself (`[evals]`): specs in a directory (the admin API starts them
//! on demand), and schedules that run one every `every_s` through this gateway's own data
//! plane as a configured key, store the results like `model-bridge eval run`, compare each run
//! with the baseline (a configured run, else the schedule's first complete one) and publish
//! the outcome as metrics — `model_bridge_eval_regression{eval}` is what the shipped alert
//! `ModelBridgeEvalRegression` watches.

use super::runner::{self, Ending, RunFile, Start};
use super::{compare, spec};
use crate::metrics::METRICS;
use crate::routing::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvals {
    /// Eval specs (`<name>.toml`), relative to the config file.
    #[serde(default)]
    pub dir: Option<String>,
    /// Run files, relative to the config file (default `eval-runs`).
    #[serde(default)]
    pub runs_dir: Option<String>,
    #[serde(default)]
    pub schedules: Vec<RawSchedule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// A spec of `dir`, by name.
    pub eval: String,
    pub every_s: u64,
    /// The run compared against (default: the schedule's first complete run).
    #[serde(default)]
    pub baseline: Option<String>,
    /// The baseline's target (default: its only one, or the candidate's).
    #[serde(default)]
    pub baseline_target: Option<String>,
    /// The target compared (default: the spec's first).
    #[serde(default)]
    pub target: Option<String>,
    /// A drop beyond this (0-1), when significant, is a regression.
    #[serde(default)]
    pub margin: f64,
    /// The key the runs call as (`${ENV}`: never in the file itself).
    pub key: String,
}

#[derive(Debug)]
pub struct Schedule {
    pub eval: String,
    pub every: Duration,
    pub baseline: Option<String>,
    pub baseline_target: Option<String>,
    pub target: Option<String>,
    pub margin: f64,
    pub key: Secret,
}

#[derive(Debug, Default)]
pub struct Settings {
    pub dir: Option<PathBuf>,
    pub runs_dir: PathBuf,
    pub schedules: Vec<Schedule>,
}

impl Settings {
    /// The spec file of eval `name`, if `dir` has one.
    pub fn spec_path(&self, name: &str) -> Option<PathBuf> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        let p = self.dir.as_ref()?.join(format!("{name}.toml"));
        (ok && p.is_file()).then_some(p)
    }
}

pub fn settings(raw: &RawEvals, base: &Path, err: &mut dyn FnMut(&str, String)) -> Settings {
    let s = Settings {
        dir: raw.dir.as_ref().map(|d| base.join(d)),
        runs_dir: base.join(raw.runs_dir.as_deref().unwrap_or("eval-runs")),
        schedules: Vec::new(),
    };
    let mut schedules = Vec::new();
    for (i, r) in raw.schedules.iter().enumerate() {
        let at = format!("evals.schedules[{i}]");
        match s.spec_path(&r.eval) {
            None => err(
                &format!("{at}.eval"),
                format!("no spec `{}.toml` in evals.dir", r.eval),
            ),
            Some(p) => {
                if let Err(e) = spec::load(&p) {
                    err(&format!("{at}.eval"), e);
                }
            }
        }
        if r.every_s == 0 {
            err(&format!("{at}.every_s"), "at least 1".into());
        }
        if !(0.0..=1.0).contains(&r.margin) {
            err(&format!("{at}.margin"), "between 0 and 1".into());
        }
        schedules.push(Schedule {
            eval: r.eval.clone(),
            every: Duration::from_secs(r.every_s.max(1)),
            baseline: r.baseline.clone(),
            baseline_target: r.baseline_target.clone(),
            target: r.target.clone(),
            margin: r.margin,
            key: Secret::new(r.key.clone()),
        });
    }
    Settings { schedules, ..s }
}

/// Runs eval `name` of `settings` through this gateway as `key`, stores its results, and
/// returns the outcome.
pub async fn run_named(
    cfg: &crate::config::Config,
    name: &str,
    key: Option<String>,
    start: Start,
    budget: Option<i128>,
) -> Result<runner::Outcome, String> {
    let s = &cfg.evals;
    let path = s
        .spec_path(name)
        .ok_or_else(|| format!("no eval `{name}`"))?;
    let gw = runner::Gateway::local(&cfg.server, key);
    let ch = cfg.clickhouse.as_ref();
    let (out, stored) = super::run_spec(&path, gw, &s.runs_dir, ch, start, budget).await?;
    if let Err(e) = stored {
        log::warn!("eval {name}: {e}");
    }
    let label = match out.ending {
        Ending::Completed => "completed",
        Ending::BudgetExhausted => "budget_exhausted",
        Ending::WithErrors => "with_errors",
    };
    METRICS.eval_runs.with_label_values(&[name, label]).inc();
    Ok(out)
}

/// The schedules' thread: each schedule when due.
pub fn spawn(shared: Arc<crate::state::Shared>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut first: HashMap<String, String> = HashMap::new();
    crate::warehouse::every("eval-schedule", Duration::from_secs(1), move |rt| {
        let live = shared.live();
        let cfg = &live.config;
        // Looked at again soon even without schedules: a reload may add one.
        let mut next = Duration::from_secs(1);
        for s in &cfg.evals.schedules {
            next = next.min(s.every);
            if last.get(&s.eval).is_some_and(|t| t.elapsed() < s.every) {
                continue;
            }
            last.insert(s.eval.clone(), Instant::now());
            let key = Some(s.key.expose().to_string());
            let out = rt.block_on(run_named(
                cfg,
                &s.eval,
                key,
                Start::New(runner::new_run_id()),
                None,
            ));
            match out {
                Ok(out) => judge_run(cfg, s, &out, &mut first),
                Err(e) => {
                    log::warn!("scheduled eval {}: {e}", s.eval);
                    METRICS
                        .eval_runs
                        .with_label_values(&[&s.eval, "error"])
                        .inc();
                }
            }
        }
        next
    });
}

/// Publishes a scheduled run's scores and its comparison with the baseline.
fn judge_run(
    cfg: &crate::config::Config,
    s: &Schedule,
    out: &runner::Outcome,
    first: &mut HashMap<String, String>,
) {
    let dir = &cfg.evals.runs_dir;
    let Ok(run) = RunFile::read(dir, &out.meta.run_id) else {
        return;
    };
    METRICS
        .eval_last_run
        .with_label_values(&[&s.eval])
        .set(crate::time::now_unix() as i64);
    for target in &run.meta.targets {
        for (scorer, sum) in run.scores(target).iter().filter(|(_, x)| x.n > 0) {
            METRICS
                .eval_mean_score
                .with_label_values(&[&s.eval, target, scorer])
                .set(sum.mean);
        }
    }
    if out.ending != Ending::Completed {
        return;
    }
    let baseline = s.baseline.clone().or_else(|| first.get(&s.eval).cloned());
    let Some(baseline) = baseline else {
        log::info!(
            "scheduled eval {}: run {} is the baseline",
            s.eval,
            out.meta.run_id
        );
        first.insert(s.eval.clone(), out.meta.run_id.clone());
        METRICS.eval_regression.with_label_values(&[&s.eval]).set(0);
        return;
    };
    let report = RunFile::read(dir, &baseline).and_then(|base| {
        let target = s
            .target
            .clone()
            .unwrap_or_else(|| run.meta.targets[0].clone());
        let base_target = s
            .baseline_target
            .clone()
            .or_else(|| (base.meta.targets.len() == 1).then(|| base.meta.targets[0].clone()))
            .unwrap_or_else(|| target.clone());
        compare::compare(
            &compare::Side::new(&base, Some(&base_target))?,
            &compare::Side::new(&run, Some(&target))?,
            s.margin,
        )
    });
    match report {
        Ok(r) => {
            let regressed = r["regression"] == true;
            if regressed {
                log::warn!(
                    "scheduled eval {}: run {} regresses against {baseline}: {}",
                    s.eval,
                    out.meta.run_id,
                    r["verdict"]
                );
            }
            METRICS
                .eval_regression
                .with_label_values(&[&s.eval])
                .set(i64::from(regressed));
        }
        Err(e) => log::warn!("scheduled eval {}: no comparison: {e}", s.eval),
    }
}

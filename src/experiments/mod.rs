//! Experiment reports: per variant, from the usage rows (and feedback scores) in ClickHouse —
//! requests, error rate, latency and TTFT (mean, p50, p95), tokens, cost per request, mean
//! score — each compared with the control (Welch's t-test for means, two-proportion z-test for
//! error rates, p-value and minimum detectable effect), and a verdict.

pub mod promote;
pub mod sequential;
pub mod stats;

use serde_json::{json, Value};
use stats::{Sample, Test};

/// A request counts as an error when the gateway or the provider failed it (5xx, no answer) or
/// the provider refused it for capacity (429); client mistakes (other 4xx) do not count.
const ERROR: &str = "(status >= 500 OR status = 429)";

/// One variant's usage rows, summarised.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
pub struct UsageAgg {
    pub variant: String,
    pub n: u64,
    pub errors: u64,
    pub lat_mean: f64,
    pub lat_var: f64,
    pub lat_p50: f64,
    pub lat_p95: f64,
    pub ttft_n: u64,
    pub ttft_mean: f64,
    pub ttft_var: f64,
    pub ttft_p50: f64,
    pub ttft_p95: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_mean: f64,
    pub cost_var: f64,
}

/// One variant's feedback scores, summarised.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
pub struct ScoreAgg {
    pub variant: String,
    pub n: u64,
    pub mean: f64,
    pub var: f64,
    /// Of them, grades of the online judge (`[models.X.online_eval]`).
    pub judged_n: u64,
    pub judged_mean: f64,
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

pub(crate) fn sample(n: u64, mean: f64, var: f64) -> Sample {
    Sample {
        n,
        mean: finite(mean),
        var: finite(var),
    }
}

fn test_json(t: Option<Test>) -> Value {
    match t {
        Some(t) => json!({
            "statistic": t.statistic, "p_value": t.p_value, "df": t.df, "mde": t.mde,
            "difference": t.difference, "ci95": [t.ci95.0, t.ci95.1],
            "significant": t.p_value < 0.05,
        }),
        None => Value::Null,
    }
}

/// The control of `experiment` as the config declares it (its first variant).
pub fn control_of<'a>(cfg: &'a crate::config::Config, experiment: &str) -> Option<&'a str> {
    cfg.models
        .values()
        .filter_map(|m| m.split.as_ref())
        .find(|s| &*s.experiment == experiment)
        .and_then(|s| s.variants.first())
        .map(|v| &*v.name)
}

/// The report of `experiment`; `org` confines it to one org's rows; `control` names the
/// control variant (default: `control` if present, else the first by name). With an
/// auto-promotion policy the report shows it, the promotion in force (`promotion`), and — over
/// every org's rows, what the decision reads — its evidence.
pub async fn report(
    client: &clickhouse::Client,
    experiment: &str,
    org: Option<&str>,
    control: Option<&str>,
    auto: Option<(&promote::Policy, Option<Value>)>,
) -> Result<Value, String> {
    let (usage, scores) = aggregates(client, experiment, org).await?;
    let mut v = build(experiment, control, &usage, &scores);
    if let Some((policy, promotion)) = auto {
        let mut a = policy.json();
        a["promotion"] = promotion.unwrap_or(Value::Null);
        if org.is_none() {
            a["evidence"] = promote::decide(policy, &usage, &scores).json();
        }
        v["auto_promote"] = a;
    }
    Ok(v)
}

/// Each variant's usage and feedback of `experiment` (one org's, or every org's).
pub async fn aggregates(
    client: &clickhouse::Client,
    experiment: &str,
    org: Option<&str>,
) -> Result<(Vec<UsageAgg>, Vec<ScoreAgg>), String> {
    let scope = if org.is_some() { " AND org = ?" } else { "" };
    let sql = format!(
        "SELECT variant, count() AS n, countIf({ERROR}) AS errors, \
         avg(latency_ms), varSamp(latency_ms), quantileExact(0.5)(latency_ms), quantileExact(0.95)(latency_ms), \
         countIf(ttft_ms > 0), avgIf(ttft_ms, ttft_ms > 0), varSampIf(ttft_ms, ttft_ms > 0), \
         quantileExactIf(0.5)(ttft_ms, ttft_ms > 0), quantileExactIf(0.95)(ttft_ms, ttft_ms > 0), \
         sum(prompt_tokens), sum(completion_tokens), avg(cost_nanousd), varSamp(cost_nanousd) \
         FROM usage_events WHERE experiment = ?{scope} GROUP BY variant ORDER BY variant"
    );
    let mut q = client.query(&sql).bind(experiment);
    if let Some(o) = org {
        q = q.bind(o);
    }
    let usage: Vec<UsageAgg> = q.fetch_all().await.map_err(|e| e.to_string())?;
    // The joined subquery needs an alias: current ClickHouse refuses one without
    // (`joined_subquery_requires_alias`, on by default), 18.16 accepts both. GLOBAL: on a
    // cluster the subquery over the distributed usage table runs once and goes to every
    // shard (a distributed subquery inside a distributed query is refused); on one server it
    // changes nothing.
    let fsql = format!(
        "SELECT variant, count(), avg(score), varSamp(score), \
         countIf(key_id = 'online_eval'), avgIf(score, key_id = 'online_eval') FROM feedback \
         GLOBAL ALL INNER JOIN (SELECT request_id, org, variant FROM usage_events WHERE experiment = ?{scope}) AS u \
         USING (request_id, org) GROUP BY variant ORDER BY variant"
    );
    let mut q = client.query(&fsql).bind(experiment);
    if let Some(o) = org {
        q = q.bind(o);
    }
    let scores: Vec<ScoreAgg> = q.fetch_all().await.map_err(|e| e.to_string())?;
    Ok((usage, scores))
}

/// A variant's scores: all of them (what the tests use), and apart the posted ones and the
/// online judge's grades.
fn feedback_json(s: Option<&ScoreAgg>) -> Value {
    let Some(s) = s else {
        return json!({"n": 0, "mean_score": null, "posted": {"n": 0, "mean_score": null}, "judge": {"n": 0, "mean_score": null}});
    };
    let mean = |n: u64, m: f64| if n > 0 { json!(finite(m)) } else { Value::Null };
    let posted_n = s.n.saturating_sub(s.judged_n);
    let posted_mean = if posted_n > 0 {
        (s.n as f64 * finite(s.mean) - s.judged_n as f64 * finite(s.judged_mean)) / posted_n as f64
    } else {
        0.0
    };
    json!({
        "n": s.n,
        "mean_score": mean(s.n, s.mean),
        "posted": {"n": posted_n, "mean_score": mean(posted_n, posted_mean)},
        "judge": {"n": s.judged_n, "mean_score": mean(s.judged_n, s.judged_mean)},
    })
}

fn build(
    experiment: &str,
    control: Option<&str>,
    usage: &[UsageAgg],
    scores: &[ScoreAgg],
) -> Value {
    if usage.is_empty() {
        return json!({"object": "experiment.report", "experiment": experiment, "variants": [],
                      "verdict": {"winner": null, "text": "no traffic recorded for this experiment yet"}});
    }
    let control_name = control
        .filter(|c| usage.iter().any(|u| u.variant == *c))
        .map(str::to_string)
        .or_else(|| {
            usage
                .iter()
                .find(|u| u.variant == "control")
                .map(|u| u.variant.clone())
        })
        .unwrap_or_else(|| usage[0].variant.clone());
    let score_of = |v: &str| {
        scores
            .iter()
            .find(|s| s.variant == v)
            .map_or(sample(0, 0.0, 0.0), |s| sample(s.n, s.mean, s.var))
    };
    let ctl = usage
        .iter()
        .find(|u| u.variant == control_name)
        .unwrap_or(&usage[0]);
    let ctl_score = score_of(&ctl.variant);
    let use_score = usage.iter().all(|u| score_of(&u.variant).n >= 2);
    let mut variants = Vec::new();
    let mut winners: Vec<(String, f64)> = Vec::new();
    for u in usage {
        let score = score_of(&u.variant);
        let mut v = json!({
            "variant": u.variant,
            "control": u.variant == ctl.variant,
            "requests": u.n,
            "errors": u.errors,
            "error_rate": u.errors as f64 / u.n.max(1) as f64,
            "latency_ms": {"mean": finite(u.lat_mean), "p50": finite(u.lat_p50), "p95": finite(u.lat_p95)},
            "ttft_ms": {"n": u.ttft_n, "mean": finite(u.ttft_mean), "p50": finite(u.ttft_p50), "p95": finite(u.ttft_p95)},
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cost_per_request_usd": finite(u.cost_mean) / 1e9,
            "feedback": feedback_json(scores.iter().find(|s| s.variant == u.variant)),
        });
        if u.variant != ctl.variant {
            let err = stats::two_proportions(ctl.errors, ctl.n, u.errors, u.n);
            let lat = stats::welch(
                sample(ctl.n, ctl.lat_mean, ctl.lat_var),
                sample(u.n, u.lat_mean, u.lat_var),
            );
            let ttft = stats::welch(
                sample(ctl.ttft_n, ctl.ttft_mean, ctl.ttft_var),
                sample(u.ttft_n, u.ttft_mean, u.ttft_var),
            );
            let cost = stats::welch(
                sample(ctl.n, ctl.cost_mean / 1e9, ctl.cost_var / 1e18),
                sample(u.n, u.cost_mean / 1e9, u.cost_var / 1e18),
            );
            let sc = stats::welch(ctl_score, score);
            let better = if use_score {
                sc.filter(|t| t.p_value < 0.05 && t.statistic > 0.0).is_some()
                    // Guardrail: not significantly more errors.
                    && !err.is_some_and(|t| t.p_value < 0.05 && t.statistic > 0.0)
            } else {
                err.filter(|t| t.p_value < 0.05 && t.statistic < 0.0)
                    .is_some()
            };
            if better {
                let key = if use_score {
                    score.mean
                } else {
                    -(u.errors as f64 / u.n.max(1) as f64)
                };
                winners.push((u.variant.clone(), key));
            }
            v["vs_control"] = json!({
                "error_rate": test_json(err),
                "latency_ms": test_json(lat),
                "ttft_ms": test_json(ttft),
                "cost_per_request_usd": test_json(cost),
                "score": test_json(sc),
            });
        }
        variants.push(v);
    }
    let metric = if use_score {
        "mean_score"
    } else {
        "error_rate"
    };
    winners.sort_by(|a, b| b.1.total_cmp(&a.1));
    let verdict = match winners.first() {
        Some((w, _)) => json!({"winner": w, "metric": metric,
            "text": format!("winner: {w} beats {} on {metric} (p < 0.05)", ctl.variant)}),
        None => json!({"winner": null, "metric": metric,
            "text": format!("no winner yet: no variant beats {} on {metric} at p < 0.05 with the current samples (see each test's mde)", ctl.variant)}),
    };
    json!({
        "object": "experiment.report",
        "experiment": experiment,
        "control": ctl.variant,
        "primary_metric": metric,
        "variants": variants,
        "verdict": verdict,
    })
}

//! Experiments that pick their winner (`[models.X.split.auto_promote]`): a background pass reads
//! each variant's rows from ClickHouse and, once every side has `min_samples`, the assignment
//! matches the configured weights (no sample-ratio mismatch) and a variant beats the control
//! on the primary metric by the always-valid mSPRT at `alpha` without being significantly worse
//! on a guardrail, shifts the split to it: a control-store document (`experiment_promotion`)
//! every replica compiles into the split's weights (the winner takes all new traffic). The
//! promotion is audited and shown in the report; `DELETE /admin/v1/experiments/{id}/promotion`
//! reverts it and holds the experiment (no further promotion until its configuration
//! changes).

use super::sequential::{self, Sequential};
use super::stats::Sample;
use super::{sample, ScoreAgg, UsageAgg};
use crate::control::Doc;
use crate::metrics::METRICS;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The control-store document of an experiment's promotion (id: the experiment).
pub const DOC: &str = "experiment_promotion";

/// Below this p the counts do not fit the weights: assignment or logging is broken.
const SRM_P: f64 = 0.001;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Mean feedback score: higher is better.
    Score,
    /// Share of 5xx / 429 answers: lower is better.
    ErrorRate,
    /// Cost per request: lower is better.
    Cost,
    /// Latency: lower is better.
    Latency,
}

impl Metric {
    fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "score" => Metric::Score,
            "error_rate" => Metric::ErrorRate,
            "cost" => Metric::Cost,
            "latency" => Metric::Latency,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Score => "score",
            Metric::ErrorRate => "error_rate",
            Metric::Cost => "cost",
            Metric::Latency => "latency",
        }
    }

    /// +1 when a larger value is better, −1 when a smaller one is.
    fn better(self) -> f64 {
        if self == Metric::Score {
            1.0
        } else {
            -1.0
        }
    }

    /// A variant's sample of this metric.
    fn sample(self, u: &UsageAgg, scores: &[ScoreAgg]) -> Sample {
        match self {
            Metric::ErrorRate => {
                let p = u.errors as f64 / u.n.max(1) as f64;
                let n = u.n as f64;
                let var = if u.n > 1 {
                    p * (1.0 - p) * n / (n - 1.0)
                } else {
                    0.0
                };
                sample(u.n, p, var)
            }
            Metric::Latency => sample(u.n, u.lat_mean, u.lat_var),
            Metric::Cost => sample(u.n, u.cost_mean / 1e9, u.cost_var / 1e18),
            Metric::Score => scores
                .iter()
                .find(|s| s.variant == u.variant)
                .map_or(sample(0, 0.0, 0.0), |s| sample(s.n, s.mean, s.var)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// score, error_rate, cost or latency.
    pub metric: String,
    /// Metrics a winner may not be significantly worse on.
    #[serde(default)]
    pub guardrails: Vec<String>,
    /// Rows (scores for `score`) each side needs before a decision.
    #[serde(default = "default_min")]
    pub min_samples: u64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// How often the pass looks.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_min() -> u64 {
    1000
}
fn default_alpha() -> f64 {
    0.05
}
fn default_interval() -> u64 {
    60_000
}

/// An experiment's auto-promotion, as configured.
#[derive(Debug, Clone)]
pub struct Policy {
    pub experiment: String,
    pub alias: String,
    /// The first variant.
    pub control: String,
    /// The configured weights (what the sample-ratio check expects), in order.
    pub variants: Vec<(String, u32)>,
    pub metric: Metric,
    pub guardrails: Vec<Metric>,
    pub min_samples: u64,
    pub alpha: f64,
    pub interval: Duration,
    /// Names this configuration: a promotion or hold made under another one is ignored.
    pub config_hash: String,
}

impl Policy {
    pub fn json(&self) -> Value {
        json!({
            "metric": self.metric.name(),
            "guardrails": self.guardrails.iter().map(|g| g.name()).collect::<Vec<_>>(),
            "min_samples": self.min_samples,
            "alpha": self.alpha,
            "control": self.control,
            "configured_weights": self.variants.iter().map(|(n, w)| json!({"variant": n, "weight": w})).collect::<Vec<_>>(),
        })
    }
}

/// Validates a split's `auto_promote`; `variants` are the configured (name, weight) pairs.
pub fn policy(
    raw: &RawPolicy,
    experiment: &str,
    alias: &str,
    variants: Vec<(String, u32)>,
    at: &str,
    err: &mut dyn FnMut(&str, String),
) -> Option<Policy> {
    let metric = |s: &str, at: &str, err: &mut dyn FnMut(&str, String)| {
        let m = Metric::parse(s);
        if m.is_none() {
            err(
                at,
                format!("`{s}` is not a metric (score, error_rate, cost, latency)"),
            );
        }
        m
    };
    let primary = metric(&raw.metric, &format!("{at}.metric"), err);
    let mut guardrails = Vec::new();
    for (i, g) in raw.guardrails.iter().enumerate() {
        let gat = format!("{at}.guardrails[{i}]");
        if let Some(m) = metric(g, &gat, err) {
            if Some(m) == primary || guardrails.contains(&m) {
                err(&gat, format!("`{g}` is the primary metric or listed twice"));
            }
            guardrails.push(m);
        }
    }
    if !(raw.alpha > 0.0 && raw.alpha <= 0.2) {
        err(&format!("{at}.alpha"), "between 0 and 0.2".into());
    }
    if raw.min_samples < 10 {
        err(&format!("{at}.min_samples"), "at least 10".into());
    }
    if raw.interval_ms < 100 {
        err(&format!("{at}.interval_ms"), "at least 100".into());
    }
    let control = variants.first()?.0.clone();
    let config_hash = format!(
        "{:016x}",
        crate::config::source_hash(format!("{experiment}|{alias}|{variants:?}|{raw:?}").as_bytes())
    );
    Some(Policy {
        experiment: experiment.to_string(),
        alias: alias.to_string(),
        control,
        variants,
        metric: primary?,
        guardrails,
        min_samples: raw.min_samples,
        alpha: raw.alpha,
        interval: Duration::from_millis(raw.interval_ms),
        config_hash,
    })
}

/// The promotion document of `experiment` in force under `policy`'s configuration, if any.
pub fn promotion(docs: &[Doc], policy: &Policy) -> Option<Value> {
    docs.iter()
        .find(|d| d.kind == DOC && d.id == policy.experiment)
        .and_then(|d| serde_json::from_str::<Value>(&d.record).ok())
        .filter(|r| r["config_hash"] == policy.config_hash.as_str())
}

/// Shifts each promoted experiment's split to its winner (weight 100, the others 0).
pub fn apply(cfg: &mut crate::config::Config, docs: &[Doc]) {
    for p in cfg.auto_promote.clone() {
        let Some(rec) = promotion(docs, &p).filter(|r| r["state"] == "promoted") else {
            continue;
        };
        let Some(winner) = rec["winner"].as_str() else {
            continue;
        };
        let Some(split) = cfg.models.get_mut(&p.alias).and_then(|m| m.split.as_mut()) else {
            continue;
        };
        if !split.variants.iter().any(|v| &*v.name == winner) {
            continue;
        }
        let mut variants = split.variants.clone();
        for v in &mut variants {
            v.weight = if &*v.name == winner { 100 } else { 0 };
        }
        *split = crate::routing::split::Split::new(
            &split.experiment,
            split.subject,
            split.start,
            split.end,
            variants,
        );
    }
}

/// One variant's evidence against the control.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub variant: String,
    pub n: u64,
    pub primary: Option<Sequential>,
    pub guardrails: Vec<(Metric, Option<Sequential>)>,
    pub wins: bool,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: &'static str,
    pub winner: Option<String>,
    pub srm: (f64, f64),
    pub evidence: Vec<Evidence>,
    pub reason: String,
}

impl Decision {
    pub fn json(&self) -> Value {
        let seq = |s: &Option<Sequential>| match s {
            Some(s) => json!({"difference": s.difference, "always_valid_p": s.always_valid_p,
                              "lambda": if s.lambda.is_finite() { json!(s.lambda) } else { json!("inf") }}),
            None => Value::Null,
        };
        json!({
            "outcome": self.outcome,
            "winner": self.winner,
            "reason": self.reason,
            "sample_ratio": {"chi2": if self.srm.0.is_finite() { json!(self.srm.0) } else { json!("inf") },
                             "p_value": self.srm.1, "mismatch": self.srm.1 < SRM_P},
            "variants": self.evidence.iter().map(|e| json!({
                "variant": e.variant, "n": e.n, "wins": e.wins, "primary": seq(&e.primary),
                "guardrails": e.guardrails.iter().map(|(m, s)| json!({"metric": m.name(), "test": seq(s)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// What the rows say: a winner, or why there is none yet.
pub fn decide(p: &Policy, usage: &[UsageAgg], scores: &[ScoreAgg]) -> Decision {
    let mut d = Decision {
        outcome: "insufficient",
        winner: None,
        srm: (0.0, 1.0),
        evidence: Vec::new(),
        reason: String::new(),
    };
    let count = |name: &str| usage.iter().find(|u| u.variant == name).map_or(0, |u| u.n);
    let observed: Vec<u64> = p.variants.iter().map(|(n, _)| count(n)).collect();
    let weights: Vec<u32> = p.variants.iter().map(|(_, w)| *w).collect();
    d.srm = sequential::srm(&observed, &weights);
    let Some(ctl) = usage.iter().find(|u| u.variant == p.control) else {
        d.reason = format!("no rows of the control `{}` yet", p.control);
        return d;
    };
    let ctl_primary = p.metric.sample(ctl, scores);
    let mut best: Option<(f64, String)> = None;
    let mut enough = ctl_primary.n >= p.min_samples;
    for (name, weight) in p.variants.iter().skip(1) {
        if *weight == 0 {
            continue;
        }
        let Some(u) = usage.iter().find(|u| &u.variant == name) else {
            enough = false;
            continue;
        };
        let s = p.metric.sample(u, scores);
        enough &= s.n >= p.min_samples;
        let primary = sequential::msprt(ctl_primary, s);
        let better =
            primary.is_some_and(|t| t.rejects(p.alpha) && t.difference * p.metric.better() > 0.0);
        let guardrails: Vec<(Metric, Option<Sequential>)> = p
            .guardrails
            .iter()
            .map(|g| {
                (
                    *g,
                    sequential::msprt(g.sample(ctl, scores), g.sample(u, scores)),
                )
            })
            .collect();
        let harmed = guardrails
            .iter()
            .any(|(g, t)| t.is_some_and(|t| t.rejects(p.alpha) && t.difference * g.better() < 0.0));
        let wins = better && !harmed;
        if wins {
            let gain = primary.map_or(0.0, |t| t.difference * p.metric.better());
            if best.as_ref().is_none_or(|(g, _)| gain > *g) {
                best = Some((gain, name.clone()));
            }
        }
        d.evidence.push(Evidence {
            variant: name.clone(),
            n: s.n,
            primary,
            guardrails,
            wins,
        });
    }
    if !enough {
        d.reason = format!("every variant needs {} samples first", p.min_samples);
    } else if d.srm.1 < SRM_P {
        d.outcome = "srm";
        d.reason = format!(
            "sample ratio mismatch (p = {:.2e}): the counts do not fit the weights, so no result is trusted",
            d.srm.1
        );
    } else if let Some((_, w)) = best {
        d.outcome = "promoted";
        d.reason = format!(
            "`{w}` beats `{}` on {} (always-valid p < {}) and no guardrail is worse",
            p.control,
            p.metric.name(),
            p.alpha
        );
        d.winner = Some(w);
    } else {
        d.outcome = "no_winner";
        d.reason = format!(
            "no variant beats `{}` on {} at always-valid p < {} yet",
            p.control,
            p.metric.name(),
            p.alpha
        );
    }
    d
}

/// The background pass: each auto-promoted experiment at its interval, while no promotion or
/// hold of its configuration is in the store.
pub fn spawn(shared: Arc<crate::state::Shared>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    crate::warehouse::every(
        "experiment-promote",
        Duration::from_millis(200),
        move |rt| {
            let live = shared.live();
            let cfg = &live.config;
            let (Some(ch), Some(keys)) = (cfg.clickhouse.as_ref(), shared.keys()) else {
                return Duration::from_secs(30);
            };
            if cfg.auto_promote.is_empty() {
                return Duration::from_secs(30);
            }
            let client = ch.db_client();
            let mut next = Duration::from_secs(30);
            for p in &cfg.auto_promote {
                next = next.min(p.interval);
                if last
                    .get(&p.experiment)
                    .is_some_and(|t| t.elapsed() < p.interval)
                {
                    continue;
                }
                last.insert(p.experiment.clone(), Instant::now());
                let docs = keys.docs();
                if let Some(rec) = promotion(&docs, p) {
                    let promoted = i64::from(rec["state"] == "promoted");
                    METRICS
                        .experiment_promoted
                        .with_label_values(&[&p.experiment])
                        .set(promoted);
                    continue;
                }
                let decision = match rt.block_on(super::aggregates(&client, &p.experiment, None)) {
                    Ok((usage, scores)) => decide(p, &usage, &scores),
                    Err(e) => {
                        log::warn!("auto-promote {}: {e}", p.experiment);
                        METRICS
                            .experiment_evaluations
                            .with_label_values(&[&p.experiment, "error"])
                            .inc();
                        continue;
                    }
                };
                METRICS
                    .experiment_evaluations
                    .with_label_values(&[&p.experiment, decision.outcome])
                    .inc();
                if let Some(w) = &decision.winner {
                    promote(&shared, &keys, &docs, p, w, &decision);
                }
            }
            next
        },
    );
}

fn promote(
    shared: &crate::state::Shared,
    keys: &crate::auth::store::Keys,
    docs: &[Doc],
    p: &Policy,
    winner: &str,
    decision: &Decision,
) {
    let record = json!({
        "experiment": p.experiment, "alias": p.alias, "state": "promoted", "winner": winner,
        "control": p.control, "metric": p.metric.name(), "config_hash": p.config_hash,
        "at": crate::time::rfc3339(crate::time::now_unix()), "by": "auto_promote",
        "reason": decision.reason, "evidence": decision.json(),
    });
    let before = docs
        .iter()
        .find(|d| d.kind == DOC && d.id == p.experiment)
        .and_then(|d| serde_json::from_str::<Value>(&d.record).ok());
    let doc = Doc {
        kind: DOC.into(),
        id: p.experiment.clone(),
        org: String::new(),
        record: record.to_string(),
    };
    // Create-only when there is none, so two replicas deciding at once write it once.
    match keys.put_doc(DOC, &p.experiment, Some(doc), before.is_none()) {
        Ok(_) => {
            log::info!(
                "experiment {}: promoted `{winner}` ({})",
                p.experiment,
                decision.reason
            );
            METRICS
                .experiment_promoted
                .with_label_values(&[&p.experiment])
                .set(1);
            shared.audit.record(crate::audit::AuditEvent {
                ts_ms: crate::time::now_unix() * 1000,
                request_id: String::new(),
                actor: "system:auto_promote".into(),
                org: None,
                action: "experiment.promote",
                resource: format!("experiment:{}", p.experiment),
                outcome: "succeeded",
                reason: Some(decision.reason.clone()),
                before: Some(json!({"weights": p.variants.iter().map(|(n, w)| json!({"variant": n, "weight": w})).collect::<Vec<_>>()})),
                after: Some(json!({"winner": winner, "weights": p.variants.iter().map(|(n, _)| json!({"variant": n, "weight": if n == winner { 100 } else { 0 }})).collect::<Vec<_>>()})),
                client_ip: None,
                user_agent: None,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => log::warn!("auto-promote {}: not written: {e}", p.experiment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(variant: &str, n: u64, errors: u64) -> UsageAgg {
        UsageAgg {
            variant: variant.into(),
            n,
            errors,
            lat_mean: 100.0,
            lat_var: 25.0,
            lat_p50: 100.0,
            lat_p95: 110.0,
            ttft_n: 0,
            ttft_mean: 0.0,
            ttft_var: 0.0,
            ttft_p50: 0.0,
            ttft_p95: 0.0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_mean: 1000.0,
            cost_var: 0.0,
        }
    }

    fn policy_of(weights: &[(&str, u32)], guardrails: &[&str]) -> Policy {
        let raw = RawPolicy {
            metric: "error_rate".into(),
            guardrails: guardrails.iter().map(|g| g.to_string()).collect(),
            min_samples: 100,
            alpha: 0.05,
            interval_ms: 1000,
        };
        let v = weights.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        let mut errs = Vec::new();
        let p = policy(&raw, "e", "m", v, "at", &mut |a, r| {
            errs.push(format!("{a}: {r}"))
        });
        assert!(errs.is_empty(), "{errs:?}");
        p.unwrap()
    }

    #[test]
    fn a_clear_winner_is_promoted_only_with_enough_fitting_samples() {
        let p = policy_of(&[("control", 50), ("treatment", 50)], &["latency"]);
        let few = decide(&p, &[agg("control", 50, 25), agg("treatment", 50, 0)], &[]);
        assert_eq!(few.outcome, "insufficient");
        let clear = decide(
            &p,
            &[agg("control", 500, 250), agg("treatment", 500, 5)],
            &[],
        );
        assert_eq!(
            (clear.outcome, clear.winner.as_deref()),
            ("promoted", Some("treatment"))
        );
        // The same rates with a 500 / 800 split of a 50 / 50 experiment: mismatch, no verdict.
        let skewed = decide(
            &p,
            &[agg("control", 500, 250), agg("treatment", 800, 8)],
            &[],
        );
        assert_eq!(skewed.outcome, "srm");
        // A worse variant never wins; neither does an identical one.
        let worse = decide(
            &p,
            &[agg("control", 500, 5), agg("treatment", 500, 250)],
            &[],
        );
        assert_eq!(worse.outcome, "no_winner");
        let same = decide(&p, &[agg("control", 500, 0), agg("treatment", 500, 0)], &[]);
        assert_eq!(same.outcome, "no_winner");
    }

    #[test]
    fn a_guardrail_blocks_a_winner_that_harms_it() {
        let p = policy_of(&[("control", 50), ("treatment", 50)], &["latency"]);
        let mut slow = agg("treatment", 500, 5);
        slow.lat_mean = 300.0;
        let d = decide(&p, &[agg("control", 500, 250), slow], &[]);
        assert_eq!(d.outcome, "no_winner", "{}", d.json());
        assert!(!d.evidence[0].wins);
    }

    #[test]
    fn bad_policies_name_their_field() {
        let raw = RawPolicy {
            metric: "vibes".into(),
            guardrails: vec!["error_rate".into()],
            min_samples: 1,
            alpha: 0.5,
            interval_ms: 1,
        };
        let mut errs = Vec::new();
        policy(&raw, "e", "m", vec![("a".into(), 1)], "x", &mut |a, _| {
            errs.push(a.to_string())
        });
        assert_eq!(
            errs,
            ["x.metric", "x.alpha", "x.min_samples", "x.interval_ms"]
        );
    }
}

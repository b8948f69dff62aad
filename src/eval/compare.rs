//! Comparing two eval results case by case (a baseline and a candidate: two runs, or two
//! targets of one run, on the same dataset version): per scorer the paired mean score delta
//! with a bootstrap 95% confidence interval and McNemar's exact test on pass / fail; cost,
//! latency and time-to-first-token deltas. A regression gate fails when a scorer's mean drops
//! by more than the margin and the drop is significant (its interval lies below zero, or
//! McNemar finds significantly more new failures than new passes).

use super::runner::{by_case, CaseResult, RunFile};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Bootstrap resamples for the confidence interval.
const RESAMPLES: usize = 10_000;
const ALPHA: f64 = 0.05;

/// Mean and 95% percentile-bootstrap interval of `d` (resampled with a fixed seed, so the same
/// results always give the same report).
pub fn bootstrap_mean_ci(d: &[f64], seed: u64) -> (f64, (f64, f64)) {
    if d.is_empty() {
        return (0.0, (0.0, 0.0));
    }
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    (mean, (at(ALPHA / 2.0), at(1.0 - ALPHA / 2.0)))
}

/// McNemar's exact test: `b` pairs passed before and fail now, `c` failed before and pass
/// now. Two-sided p-value of the binomial test of min(b, c) in b + c at ½.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    use statrs::distribution::{Binomial, DiscreteCDF};
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    Binomial::new(0.5, n).map_or(1.0, |d| (2.0 * d.cdf(b.min(c))).min(1.0))
}

fn seed_of(a: &str, b: &str) -> u64 {
    crate::config::source_hash(format!("{a}\u{0}{b}").as_bytes())
}

/// A side of a comparison: a run's results for one target.
pub struct Side<'a> {
    pub run: &'a RunFile,
    pub target: String,
}

impl<'a> Side<'a> {
    /// `target` may be left out when the run has one.
    pub fn new(run: &'a RunFile, target: Option<&str>) -> Result<Self, String> {
        let target = match target {
            Some(t) if run.meta.targets.iter().any(|x| x == t) => t.to_string(),
            Some(t) => return Err(format!("run {} has no target `{t}`", run.meta.run_id)),
            None if run.meta.targets.len() == 1 => run.meta.targets[0].clone(),
            None => {
                return Err(format!(
                    "run {} has targets {}: name one",
                    run.meta.run_id,
                    run.meta.targets.join(", ")
                ))
            }
        };
        Ok(Side { run, target })
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// The comparison report; `regression` says whether the gate fails.
pub fn compare(base: &Side<'_>, cand: &Side<'_>, margin: f64) -> Result<Value, String> {
    let (bm, cm) = (&base.run.meta, &cand.run.meta);
    if bm.dataset_hash != cm.dataset_hash {
        return Err(format!(
            "the runs scored different datasets ({}@{} and {}@{})",
            bm.dataset,
            &bm.dataset_hash[..12],
            cm.dataset,
            &cm.dataset_hash[..12]
        ));
    }
    let b = by_case(base.run, &base.target);
    let c = by_case(cand.run, &cand.target);
    let mut ids: Vec<&str> = b.keys().filter(|k| c.contains_key(*k)).copied().collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err("no case was scored on both sides".into());
    }
    let pairs: Vec<(&CaseResult, &CaseResult)> = ids.iter().map(|id| (b[id], c[id])).collect();
    let seed = seed_of(&bm.run_id, &cm.run_id);
    let mut scorers = serde_json::Map::new();
    let mut regressed = Vec::new();
    let names: Vec<&String> = bm
        .scorers
        .iter()
        .filter(|s| cm.scorers.contains(s))
        .collect();
    for name in names {
        let scored: Vec<(&CaseResult, &CaseResult)> = pairs
            .iter()
            .filter(|(x, y)| x.scores.contains_key(name) && y.scores.contains_key(name))
            .copied()
            .collect();
        let deltas: Vec<f64> = scored
            .iter()
            .map(|(x, y)| y.scores[name].value - x.scores[name].value)
            .collect();
        let (delta, ci) = bootstrap_mean_ci(&deltas, seed);
        let lost = scored
            .iter()
            .filter(|(x, y)| x.scores[name].pass && !y.scores[name].pass)
            .count() as u64;
        let gained = scored
            .iter()
            .filter(|(x, y)| !x.scores[name].pass && y.scores[name].pass)
            .count() as u64;
        let p = mcnemar_exact(lost, gained);
        let significant = ci.1 < 0.0 || (p < ALPHA && lost > gained);
        let regression = delta < -margin && significant;
        if regression {
            regressed.push(name.clone());
        }
        let pass_rate = |candidate: bool| {
            mean(scored.iter().map(|(x, y)| {
                let r = if candidate { y } else { x };
                f64::from(u8::from(r.scores[name].pass))
            }))
        };
        scorers.insert(
            name.clone(),
            json!({
                "cases": scored.len(),
                "baseline_mean": mean(scored.iter().map(|(x, _)| x.scores[name].value)),
                "candidate_mean": mean(scored.iter().map(|(_, y)| y.scores[name].value)),
                "mean_delta": delta,
                "ci95": [ci.0, ci.1],
                "baseline_pass_rate": pass_rate(false),
                "candidate_pass_rate": pass_rate(true),
                "mcnemar": {"newly_failing": lost, "newly_passing": gained, "p_value": p},
                "regression": regression,
            }),
        );
    }
    let total = |f: fn(&CaseResult) -> i64, side: usize| -> i64 {
        pairs
            .iter()
            .map(|p| f(if side == 0 { p.0 } else { p.1 }))
            .sum()
    };
    let money = |f: fn(&CaseResult) -> i64| {
        let (x, y) = (total(f, 0), total(f, 1));
        json!({"baseline_nanousd": x, "candidate_nanousd": y, "delta_nanousd": y - x,
               "baseline_per_case_usd": x as f64 / 1e9 / pairs.len() as f64,
               "candidate_per_case_usd": y as f64 / 1e9 / pairs.len() as f64})
    };
    let timing = |f: fn(&CaseResult) -> u64| {
        let d: Vec<f64> = pairs
            .iter()
            .map(|(x, y)| f(y) as f64 - f(x) as f64)
            .collect();
        let (m, ci) = bootstrap_mean_ci(&d, seed);
        json!({"baseline_mean": mean(pairs.iter().map(|(x, _)| f(x) as f64)),
               "candidate_mean": mean(pairs.iter().map(|(_, y)| f(y) as f64)),
               "mean_delta": m, "ci95": [ci.0, ci.1]})
    };
    let verdict = if regressed.is_empty() {
        format!(
            "pass: no scorer dropped by more than {margin} with significance over {} cases",
            pairs.len()
        )
    } else {
        format!("regression on {}", regressed.join(", "))
    };
    Ok(json!({
        "object": "eval.comparison",
        "dataset": format!("{}@{}", bm.dataset, &bm.dataset_hash[..12]),
        "baseline": {"run_id": bm.run_id, "target": base.target},
        "candidate": {"run_id": cm.run_id, "target": cand.target},
        "cases": pairs.len(),
        "margin": margin,
        "scorers": scorers,
        "cost": money(|r| r.cost_nanousd),
        "scoring_cost": money(|r| r.scoring_cost_nanousd),
        "latency_ms": timing(|r| r.latency_ms),
        "ttft_ms": timing(|r| r.ttft_ms),
        "regression": !regressed.is_empty(),
        "verdict": verdict,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_scipy_binomtest() {
        // scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue
        let cases = [
            (10, 2, 0.038_574_218_75),
            (5, 5, 1.0),
            (0, 7, 0.015_625),
            (25, 12, 0.047_031_027_439_516_04),
        ];
        for (b, c, want) in cases {
            let got = mcnemar_exact(b, c);
            assert!((got - want).abs() < 1e-9, "b={b} c={c}: {got} vs {want}");
        }
        assert_eq!(mcnemar_exact(0, 0), 1.0);
    }

    #[test]
    fn the_bootstrap_interval_covers_the_mean_and_is_reproducible() {
        let d: Vec<f64> = (0..200)
            .map(|i| if i % 4 == 0 { -1.0 } else { 0.0 })
            .collect();
        let (m, (lo, hi)) = bootstrap_mean_ci(&d, 7);
        assert!((m + 0.25).abs() < 1e-12);
        // The normal approximation: ±1.96 · sd / √n = ±0.06.
        assert!(
            (lo + 0.31).abs() < 0.02 && (hi + 0.19).abs() < 0.02,
            "{lo} {hi}"
        );
        assert_eq!(bootstrap_mean_ci(&d, 7), (m, (lo, hi)));
        let zero = vec![0.0; 50];
        assert_eq!(bootstrap_mean_ci(&zero, 1), (0.0, (0.0, 0.0)));
    }
}

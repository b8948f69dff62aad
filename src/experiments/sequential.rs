//! Tests that stay valid however often an experiment is looked at: the mixture sequential
//! probability ratio test (mSPRT, Johari et al., "Always valid inference", the two-sample
//! normal form used for A/B tests) and the sample-ratio-mismatch check.
//!
//! mSPRT: with the difference of means d̂ (variant − control), its variance V (the sum of each
//! side's variance over its count) and a normal mixture of effects with variance τ², the
//! likelihood ratio against "no difference" is
//! Λ = √(V / (V + τ²)) · exp(τ² d̂² / (2 V (V + τ²))).
//! Rejecting when Λ ≥ 1/α holds the false-positive rate at α over every look, so auto-promotion
//! may check as often as it likes; 1/Λ is the always-valid p-value at this look.

use super::stats::Sample;

/// τ as a share of the per-observation standard deviation: the mixture expects effects of
/// about a tenth of a standard deviation (it detects larger ones sooner, smaller ones later).
pub const TAU_SHARE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sequential {
    /// Variant − control.
    pub difference: f64,
    /// The mixture likelihood ratio (∞ when both sides are constant and differ).
    pub lambda: f64,
    /// min(1, 1/Λ).
    pub always_valid_p: f64,
}

impl Sequential {
    pub fn rejects(&self, alpha: f64) -> bool {
        self.always_valid_p <= alpha
    }
}

/// The mSPRT of `b` (variant) against `a` (control); `None` with fewer than 2 per side.
pub fn msprt(a: Sample, b: Sample) -> Option<Sequential> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let difference = b.mean - a.mean;
    let v = a.var / a.n as f64 + b.var / b.n as f64;
    // The pooled per-observation variance (the two sides together) scales the mixture.
    let n = (a.n + b.n) as f64;
    let grand = (a.n as f64 * a.mean + b.n as f64 * b.mean) / n;
    let pooled = ((a.n as f64 - 1.0) * a.var
        + (b.n as f64 - 1.0) * b.var
        + a.n as f64 * (a.mean - grand).powi(2)
        + b.n as f64 * (b.mean - grand).powi(2))
        / (n - 1.0);
    let tau2 = TAU_SHARE * TAU_SHARE * pooled;
    let lambda = if v <= 0.0 {
        if difference == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        let ln =
            0.5 * (v / (v + tau2)).ln() + tau2 * difference * difference / (2.0 * v * (v + tau2));
        ln.exp()
    };
    Some(Sequential {
        difference,
        lambda,
        always_valid_p: if lambda > 1.0 { 1.0 / lambda } else { 1.0 },
    })
}

/// Sample-ratio mismatch: Pearson's χ² of the observed counts against the configured weights,
/// and its p-value. A tiny p (below 0.001 by convention) means assignment or logging is broken
/// and no result of the experiment should be trusted.
pub fn srm(observed: &[u64], weights: &[u32]) -> (f64, f64) {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let total: u64 = observed.iter().sum();
    let wsum: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 || wsum == 0 || observed.len() != weights.len() || observed.len() < 2 {
        return (0.0, 1.0);
    }
    let mut chi2 = 0.0;
    for (o, w) in observed.iter().zip(weights) {
        let expected = total as f64 * f64::from(*w) / wsum as f64;
        if expected > 0.0 {
            chi2 += (*o as f64 - expected).powi(2) / expected;
        } else if *o > 0 {
            // Traffic on a variant that should get none: as mismatched as it gets.
            return (f64::INFINITY, 0.0);
        }
    }
    let df = (weights.iter().filter(|w| **w > 0).count() as f64 - 1.0).max(1.0);
    let p = ChiSquared::new(df).map_or(1.0, |d| d.sf(chi2));
    (chi2, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A standard normal draw (Box–Muller).
    fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Running mean and variance of one side.
    #[derive(Default, Clone, Copy)]
    struct Acc {
        n: u64,
        sum: f64,
        sq: f64,
    }

    impl Acc {
        fn add(&mut self, x: f64) {
            self.n += 1;
            self.sum += x;
            self.sq += x * x;
        }
        fn sample(&self) -> Sample {
            let n = self.n as f64;
            let mean = self.sum / n;
            Sample {
                n: self.n,
                mean,
                var: (self.sq - n * mean * mean) / (n - 1.0),
            }
        }
    }

    /// The share of `runs` experiments that reject at some look (every `every` observations
    /// per side, up to `n`), with the variant's mean shifted by `effect` standard deviations.
    fn rejection_rate(effect: f64, runs: usize, n: u64, every: u64, seed: u64) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rejected = 0;
        for _ in 0..runs {
            let (mut a, mut b) = (Acc::default(), Acc::default());
            for i in 1..=n {
                a.add(normal(&mut rng));
                b.add(normal(&mut rng) + effect);
                if i % every == 0 && msprt(a.sample(), b.sample()).is_some_and(|t| t.rejects(0.05))
                {
                    rejected += 1;
                    break;
                }
            }
        }
        rejected as f64 / runs as f64
    }

    #[test]
    fn peeking_at_an_a_a_test_keeps_false_positives_at_or_below_alpha() {
        // 400 A/A experiments looked at every 20 observations up to 4,000 per side (200
        // looks each): a fixed-horizon test peeked at this often rejects far above 5%.
        let fpr = rejection_rate(0.0, 400, 4_000, 20, 11);
        eprintln!("A/A false-positive rate over 200 looks: {fpr}");
        assert!(fpr <= 0.05, "false-positive rate {fpr}");
    }

    #[test]
    fn a_planted_effect_is_found() {
        let power = rejection_rate(0.2, 200, 4_000, 20, 12);
        eprintln!("power at 0.2 standard deviations: {power}");
        assert!(power >= 0.9, "power {power}");
    }

    #[test]
    fn constant_sides_decide_at_once() {
        let s = |n, mean| Sample { n, mean, var: 0.0 };
        assert!(msprt(s(50, 1.0), s(50, 0.0)).unwrap().rejects(0.05));
        assert!(!msprt(s(50, 0.0), s(50, 0.0)).unwrap().rejects(0.05));
        assert!(msprt(s(1, 0.0), s(50, 0.0)).is_none());
    }

    #[test]
    fn srm_matches_scipy_chisquare() {
        // scipy.stats.chisquare([5200, 4800], [5000, 5000])
        let (chi2, p) = srm(&[5200, 4800], &[50, 50]);
        assert!((chi2 - 16.0).abs() < 1e-9);
        assert!((p - 6.334_248_366_623_996e-5).abs() < 1e-12, "{p}");
        // scipy.stats.chisquare([260, 740], [250, 750])
        let (chi2, p) = srm(&[260, 740], &[25, 75]);
        assert!((chi2 - 0.533_333_333_333_333_3).abs() < 1e-9);
        assert!((p - 0.465_208_818_452_141_7).abs() < 1e-9, "{p}");
        assert_eq!(srm(&[10, 1], &[100, 0]).1, 0.0);
        assert_eq!(srm(&[0, 0], &[50, 50]), (0.0, 1.0));
    }
}

//! The statistics of an experiment report: Welch's t-test for means, the two-proportion z-test
//! for rates, and the minimum detectable effect at the current sample sizes (two-sided
//! α = 0.05, power 0.8). The distributions (normal, Student's t: tail probabilities and
//! quantiles) are `statrs`'s; the tests check the results against scipy.

/// z for a two-sided α of 0.05, and for a power of 0.8.
const Z_ALPHA: f64 = 1.959_963_984_540_054;
const Z_POWER: f64 = 0.841_621_233_572_914_3;

/// Summary of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub n: u64,
    pub mean: f64,
    /// Unbiased (n − 1) variance.
    pub var: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Test {
    /// The t or z statistic (variant − control).
    pub statistic: f64,
    pub p_value: f64,
    /// Welch–Satterthwaite degrees of freedom (t-test only).
    pub df: Option<f64>,
    /// The smallest difference this sample size detects with 80% power.
    pub mde: f64,
    /// Variant − control (means, or rates).
    pub difference: f64,
    /// 95% confidence interval of the difference: Welch's for means, Wald's (unpooled) for
    /// rates.
    pub ci95: (f64, f64),
}

/// Two-sided 95% critical value of Student's t with `df` degrees of freedom.
fn t_critical(df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    // statrs panics on degenerate degrees of freedom; below one the interval is unbounded
    // in all but name, so the normal value stands in.
    if !(df.is_finite() && df >= 1.0) {
        return Z_ALPHA;
    }
    StudentsT::new(0.0, 1.0, df).map_or(Z_ALPHA, |t| t.inverse_cdf(0.975))
}

/// Two-sided p-value of a standard normal statistic (1 for NaN: no evidence).
pub fn normal_p(z: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    if z.is_nan() {
        return 1.0;
    }
    Normal::standard().sf(z.abs()) * 2.0
}

/// Two-sided p-value of Student's t with `df` degrees of freedom. Degenerate inputs (NaN, or
/// degrees of freedom that are not a positive finite number, as near-constant samples give)
/// are answered here: statrs panics on them.
pub fn t_p(t: f64, df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if t.is_nan() {
        return 1.0;
    }
    if t.is_infinite() {
        return 0.0;
    }
    if !(df.is_finite() && df >= 1e-3) {
        return if df.is_infinite() { normal_p(t) } else { 1.0 };
    }
    StudentsT::new(0.0, 1.0, df).map_or(normal_p(t), |d| d.sf(t.abs()) * 2.0)
}

/// Welch's t-test of `b` (variant) against `a` (control). `None` with fewer than 2 per side.
pub fn welch(a: Sample, b: Sample) -> Option<Test> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let (va, vb) = (a.var / a.n as f64, b.var / b.n as f64);
    let se = (va + vb).sqrt();
    let mde = (Z_ALPHA + Z_POWER) * se;
    let difference = b.mean - a.mean;
    if se == 0.0 {
        let p = if a.mean == b.mean { 1.0 } else { 0.0 };
        return Some(Test {
            statistic: 0.0,
            p_value: p,
            df: None,
            mde,
            difference,
            ci95: (difference, difference),
        });
    }
    let t = difference / se;
    let df = (va + vb).powi(2) / (va * va / (a.n as f64 - 1.0) + vb * vb / (b.n as f64 - 1.0));
    let half = t_critical(df) * se;
    Some(Test {
        statistic: t,
        p_value: t_p(t, df).clamp(0.0, 1.0),
        df: Some(df),
        mde,
        difference,
        ci95: (difference - half, difference + half),
    })
}

/// Two-proportion z-test of `x2 / n2` (variant) against `x1 / n1` (control), pooled.
pub fn two_proportions(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Test> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let p = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (p * (1.0 - p) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    let base = (p1 * (1.0 - p1)).max(p * (1.0 - p));
    let mde = (Z_ALPHA + Z_POWER) * (base * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    let difference = p2 - p1;
    let half = Z_ALPHA * (p1 * (1.0 - p1) / n1 as f64 + p2 * (1.0 - p2) / n2 as f64).sqrt();
    let ci95 = (difference - half, difference + half);
    if se == 0.0 {
        return Some(Test {
            statistic: 0.0,
            p_value: 1.0,
            df: None,
            mde,
            difference,
            ci95,
        });
    }
    let z = difference / se;
    Some(Test {
        statistic: z,
        p_value: normal_p(z).clamp(0.0, 1.0),
        df: None,
        mde,
        difference,
        ci95,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn tail_probabilities_match_scipy() {
        // scipy.stats.norm.sf(1.96) * 2
        close(normal_p(1.96), 0.049_995_790_296_440_6, 1e-9);
        // scipy.stats.t.sf(2.0, 10) * 2
        close(t_p(2.0, 10.0), 0.073_388_034_770_740_9, 1e-9);
        close(t_p(-2.0, 10.0), 0.073_388_034_770_740_9, 1e-9);
        // Degenerate inputs (near-constant samples) answer instead of panicking in statrs.
        for (t, df) in [
            (f64::NAN, 5.0),
            (1.0, f64::NAN),
            (-2.9e-8, 1e-300),
            (3.0, 0.0),
        ] {
            assert!((0.0..=1.0).contains(&t_p(t, df)), "{t} {df}");
        }
        assert_eq!(t_p(f64::INFINITY, 3.0), 0.0);
        assert_eq!(t_critical(f64::NAN), Z_ALPHA);
        let near_constant = welch(
            Sample {
                n: 6,
                mean: 0.7,
                var: 1.2e-33,
            },
            Sample {
                n: 4,
                mean: 0.7 + 1e-16,
                var: 3.1e-33,
            },
        )
        .unwrap();
        assert!((0.0..=1.0).contains(&near_constant.p_value));
    }

    #[test]
    fn welch_and_proportions() {
        // scipy.stats.ttest_ind_from_stats(10, sqrt(4), 30, 11, sqrt(9), 40, equal_var=False)
        let t = welch(
            Sample {
                n: 30,
                mean: 10.0,
                var: 4.0,
            },
            Sample {
                n: 40,
                mean: 11.0,
                var: 9.0,
            },
        )
        .unwrap();
        close(t.statistic, 1.670_538_139_169_113_4, 1e-9);
        close(t.p_value, 0.099_465_411_176_331_01, 1e-7);
        // 1 ∓ scipy.stats.t.ppf(0.975, df) * se
        close(t.ci95.0, -0.194_768_188_506_459_6, 1e-8);
        close(t.ci95.1, 2.194_768_188_506_459_6, 1e-8);
        let z = two_proportions(10, 100, 20, 100).unwrap();
        close(z.difference, 0.1, 1e-12);
        // 0.1 ∓ scipy.stats.norm.ppf(0.975) * sqrt(0.1 * 0.9 / 100 + 0.2 * 0.8 / 100)
        close(z.ci95.0, 0.1 - 1.959_963_984_540_054 * 0.05, 1e-9);
        close(z.statistic, 1.980_295_085_953_348_8, 1e-9);
        // 2 * scipy.stats.norm.sf(z)
        close(z.p_value, 0.047_670_380_656_161_41, 1e-8);
    }
}

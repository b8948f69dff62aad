//! The statistics of an experiment report: Welch's t-test for means, the two-proportion z-test
//! for rates, and the minimum detectable effect at the current sample sizes (two-sided
//! α = 0.05, power 0.8). Special functions are computed here (log-gamma by Lanczos, the
//! regularized incomplete beta and gamma functions by their continued fractions) and checked
//! against scipy by the tests. The confidence intervals' critical values come from `statrs`
//! (Student's t quantile at the Welch degrees of freedom).

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
    StudentsT::new(0.0, 1.0, df).map_or(Z_ALPHA, |t| t.inverse_cdf(0.975))
}

pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta I_x(a, b).
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Regularized upper incomplete gamma Q(a, x).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        // Series for P.
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..1000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - gln).exp()
    } else {
        // Continued fraction for Q.
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x + a * x.ln() - gln).exp() * h
    }
}

/// Two-sided p-value of a standard normal statistic: erfc(|z| / √2).
pub fn normal_p(z: f64) -> f64 {
    gamma_q(0.5, z * z / 2.0)
}

/// Two-sided p-value of Student's t with `df` degrees of freedom.
pub fn t_p(t: f64, df: f64) -> f64 {
    inc_beta(df / 2.0, 0.5, df / (df + t * t))
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
    fn special_functions_match_known_values() {
        close(ln_gamma(0.5), 0.572_364_942_924_700_1, 1e-12);
        close(ln_gamma(10.0), 12.801_827_480_081_469, 1e-12);
        // scipy.stats.norm.sf(1.96) * 2
        close(normal_p(1.96), 0.049_995_790_296_440_6, 1e-9);
        // scipy.stats.t.sf(2.0, 10) * 2
        close(t_p(2.0, 10.0), 0.073_388_034_770_740_9, 1e-9);
        // scipy.special.betainc(2, 3, 0.4)
        close(inc_beta(2.0, 3.0, 0.4), 0.5248, 1e-9);
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

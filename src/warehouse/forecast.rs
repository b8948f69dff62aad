//! Spend forecast and anomaly detection over daily spend series (nano-USD per UTC day).
//!
//! Forecast: a least-squares line through the trailing whole weeks plus a day-of-week effect
//! (each weekday's mean residual, estimated in turn with the line), projected over the rest of
//! the month; the month's forecast is what was spent so far plus that projection for the time
//! left. Anomalies: a day is anomalous when its deviation from what its weekday usually spends
//! (the median of the same weekday over the previous 8 weeks), relative to that, is more than
//! `K` robust standard deviations (1.4826 × MAD of the previous 28 days' deviations) from their
//! median — medians, so one spike neither hides another nor shifts the baseline.

/// Days of history the forecast fits, and over which anomaly scores measure the usual spread.
pub const WINDOW: usize = 28;
/// Robust z-score beyond which a day is an anomaly.
pub const K: f64 = 4.0;

/// Projection for the days `next .. next + days` of a series whose history is `history`
/// (oldest first, one value per day, the last at index `history.len() - 1`); `weekday(i)` is
/// the day of week (0..7) of day index `i`. Negative projections are clamped to 0.
pub fn project(history: &[i64], weekday: impl Fn(usize) -> usize, days: usize) -> Vec<f64> {
    // Whole weeks only, so every weekday weighs the same in the fit.
    let n = if history.len() >= 14 {
        history.len().min(WINDOW) / 7 * 7
    } else {
        history.len()
    };
    let start = history.len() - n;
    if n == 0 {
        return vec![0.0; days];
    }
    let ys: Vec<f64> = history[start..].iter().map(|v| *v as f64).collect();
    let dow = |i: usize| weekday(start + i) % 7;
    // Trend and weekday effect estimated in turn until they agree: the line through
    // the series without its weekday effect, then the effect as each weekday's mean residual
    // (alternating least squares; 28 points, so 50 rounds cost nothing).
    let mut effect = [0.0f64; 7];
    let (mut mean_y, mut slope) = (0.0, 0.0);
    let mx = (n as f64 - 1.0) / 2.0;
    for _ in 0..50 {
        let adj: Vec<f64> = ys
            .iter()
            .enumerate()
            .map(|(i, y)| y - effect[dow(i)])
            .collect();
        mean_y = adj.iter().sum::<f64>() / n as f64;
        let sxx: f64 = (0..n).map(|i| (i as f64 - mx).powi(2)).sum();
        let sxy: f64 = adj
            .iter()
            .enumerate()
            .map(|(i, y)| (i as f64 - mx) * (y - mean_y))
            .sum();
        slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        if n < 14 {
            break;
        }
        let mut sum = [0.0f64; 7];
        let mut count = [0usize; 7];
        for (i, y) in ys.iter().enumerate() {
            sum[dow(i)] += y - (mean_y + slope * (i as f64 - mx));
            count[dow(i)] += 1;
        }
        for d in 0..7 {
            effect[d] = if count[d] > 0 {
                sum[d] / count[d] as f64
            } else {
                0.0
            };
        }
    }
    (0..days)
        .map(|j| {
            let x = (n + j) as f64;
            let d = weekday(history.len() + j) % 7;
            (mean_y + slope * (x - mx) + effect[d]).max(0.0)
        })
        .collect()
}

/// What will have been spent by the end of today and of each day after it: `spent` so far
/// (today included), plus `projection` (today first) — only the `today_left` fraction of
/// today's. The last is the month's forecast when `projection` runs to the month's end; the
/// first day at or over a budget is when it runs out.
pub fn cumulative(projection: &[f64], spent: i64, today_left: f64) -> Vec<i64> {
    let mut total = 0.0;
    projection
        .iter()
        .enumerate()
        .map(|(j, p)| {
            total += if j == 0 {
                p * today_left.clamp(0.0, 1.0)
            } else {
                *p
            };
            spent.saturating_add(total.round() as i64)
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Seasons of history a point's expectation reads (the same weekday, or hour of the day, in
/// each).
const BASELINE_SEASONS: usize = 8;

/// How a series repeats: days repeat weekly, hours daily; `window` points of history give the
/// usual spread of deviations.
#[derive(Debug, Clone, Copy)]
pub struct Season {
    pub length: usize,
    pub window: usize,
}

/// Daily series: weekday baseline, spread over the previous 4 weeks.
pub const DAILY: Season = Season {
    length: 7,
    window: WINDOW,
};
/// Hourly series: hour-of-day baseline, spread over the previous week.
pub const HOURLY: Season = Season {
    length: 24,
    window: 7 * 24,
};
/// Smallest expected day the relative deviation divides by (0.001 USD).
const FLOOR: f64 = 1e6;

/// What a point was expected to spend: the median of the same point of the seasons before it
/// (the same weekday of the previous weeks) since the series began (`born`: its first spend —
/// the days before an org's first request are no history); `None` with less than two.
fn expected(series: &[i64], i: usize, season: Season, born: usize) -> Option<f64> {
    let mut same: Vec<f64> = (1..=BASELINE_SEASONS)
        .filter_map(|w| i.checked_sub(season.length * w))
        .filter(|j| *j >= born)
        .map(|j| series[j] as f64)
        .collect();
    (same.len() >= 2).then(|| median(&mut same))
}

/// A point's deviation from its expectation, relative to it (spend varies in proportion).
fn deviation(series: &[i64], i: usize, season: Season, born: usize) -> Option<(f64, f64)> {
    let e = expected(series, i, season, born)?;
    Some((e, (series[i] as f64 - e) / e.max(FLOOR)))
}

/// An anomalous day: its index, what it spent, what was expected, and its robust z-score.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub index: usize,
    pub actual: i64,
    pub expected: i64,
    pub score: f64,
}

/// The points of `series` (one value per day or hour, consecutive) from `from` on that are
/// anomalies.
pub fn anomalies(series: &[i64], from: usize, season: Season) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let born = series.iter().position(|v| *v != 0).unwrap_or(series.len());
    for i in from..series.len() {
        let Some((e, dev)) = deviation(series, i, season, born) else {
            continue;
        };
        // The usual spread: the deviations of the `window` points before.
        let mut window: Vec<f64> = (i.saturating_sub(season.window)..i)
            .filter_map(|j| deviation(series, j, season, born).map(|(_, d)| d))
            .collect();
        if window.len() < season.length {
            continue;
        }
        let mid = median(&mut window);
        let mut spread: Vec<f64> = window.iter().map(|d| (d - mid).abs()).collect();
        // A floor on the spread: on a flat series 1% off is not an anomaly.
        let sigma = (1.4826 * median(&mut spread)).max(0.01);
        let score = (dev - mid) / sigma;
        if score.abs() > K {
            out.push(Anomaly {
                index: i,
                actual: series[i],
                expected: e.round() as i64,
                score,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random normal series (Box–Muller over an LCG).
    fn noise(n: usize, seed: u64, sd: f64) -> Vec<f64> {
        let mut s = seed;
        let mut uniform = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    const USD: f64 = 1e9;

    #[test]
    fn a_linear_trend_is_projected_exactly() {
        // $100 a day growing by $2 a day.
        let h: Vec<i64> = (0..28)
            .map(|i| ((100.0 + 2.0 * i as f64) * USD) as i64)
            .collect();
        let p = project(&h, |i| i % 7, 3);
        for (j, v) in p.iter().enumerate() {
            let want = (100.0 + 2.0 * (28 + j) as f64) * USD;
            assert!((v - want).abs() < 1.0, "{v} vs {want}");
        }
        // Month: $500 spent, half of today and 2 days left.
        let by_day = cumulative(&project(&h, |i| i % 7, 3), (500.0 * USD) as i64, 0.5);
        let f = by_day[2];
        let want = 500.0 * USD + 0.5 * 156.0 * USD + (158.0 + 160.0) * USD;
        assert!((f as f64 - want).abs() < 2.0, "{f} vs {want}");
    }

    #[test]
    fn a_weekly_pattern_is_projected() {
        // $200 on weekdays, $20 on weekends (days 5 and 6 of each week).
        let day = |i: usize| if i % 7 >= 5 { 20.0 } else { 200.0 };
        let h: Vec<i64> = (0..28).map(|i| (day(i) * USD) as i64).collect();
        let p = project(&h, |i| i % 7, 7);
        for (j, v) in p.iter().enumerate() {
            let want = day(28 + j) * USD;
            assert!((v - want).abs() / want < 1e-6, "day {j}: {v} vs {want}");
        }
    }

    #[test]
    fn a_spike_is_found_and_noise_is_not() {
        // Weekly pattern plus 5% noise over three years; one injected 3x spike.
        let n = 3 * 365;
        let e = noise(n, 7, 0.05);
        let base = |i: usize| if i % 7 >= 5 { 30.0 } else { 100.0 };
        let mut series: Vec<i64> = (0..n)
            .map(|i| (base(i) * (1.0 + e[i]) * USD) as i64)
            .collect();
        let clean = anomalies(&series, 0, DAILY);
        let rate = clean.len() as f64 / (n - WINDOW) as f64;
        assert!(
            rate < 0.005,
            "false positives {} of {} days",
            clean.len(),
            n - WINDOW
        );
        series[600] *= 3;
        let found = anomalies(&series, 0, DAILY);
        let spike = found.iter().find(|a| a.index == 600).expect("the spike");
        assert!(spike.score > K && (spike.expected as f64 - base(600) * USD).abs() < 10.0 * USD);
        // A drop to zero (an outage of spending) is as anomalous as a spike.
        series[700] = 0;
        assert!(anomalies(&series, 690, DAILY)
            .iter()
            .any(|a| a.index == 700 && a.score < 0.0));
        // A flat series has no anomalies at all, nor one that starts from nothing.
        let flat = vec![(50.0 * USD) as i64; 100];
        assert!(anomalies(&flat, 0, DAILY).is_empty());
        let mut late = vec![0; 60];
        late.extend(vec![(50.0 * USD) as i64; 100]);
        let found = anomalies(&late, 61, DAILY);
        assert!(found.iter().all(|a| a.index < 60 + 14), "{found:?}");
    }

    #[test]
    fn an_hourly_spike_is_found_against_the_daily_cycle() {
        // Office hours cost 10x the night; 5% noise over 120 days; one injected 4x hour.
        let n = 120 * 24;
        let e = noise(n, 11, 0.05);
        let base = |i: usize| {
            if (9..18).contains(&(i % 24)) {
                50.0
            } else {
                5.0
            }
        };
        let mut series: Vec<i64> = (0..n)
            .map(|i| (base(i) * (1.0 + e[i]) * USD) as i64)
            .collect();
        let clean = anomalies(&series, 0, HOURLY);
        assert!(
            (clean.len() as f64) < 0.005 * n as f64,
            "false positives {} of {n} hours",
            clean.len()
        );
        // 3 a.m. on day 100 spends what an office hour does.
        let spike = 100 * 24 + 3;
        series[spike] = (50.0 * USD) as i64;
        let found = anomalies(&series, spike - 5, HOURLY);
        let a = found.iter().find(|a| a.index == spike).expect("the spike");
        assert!((a.expected as f64 - 5.0 * USD).abs() < 0.5 * USD, "{a:?}");
        // The same spend at 3 p.m. is ordinary.
        assert!(!found.iter().any(|a| a.index == 100 * 24 + 15));
    }
}

//! Spend anomalies over the rollups: one definition, read by the anomalies API and by the
//! finance watch that raises metrics, writes `spend_anomalies` and sends webhooks.

use super::forecast::{self, Season};
use super::spend::{self, Grain};
use crate::usage::pricing::format_usd;
use serde_json::{json, Value};

/// An anomalous day or hour of one org (or every org) and cost center (or all of it).
#[derive(Debug, Clone)]
pub struct Found {
    pub grain: Grain,
    /// Start of the day or hour (Unix seconds).
    pub start: u64,
    pub org: Option<String>,
    pub cost_center: Option<String>,
    pub actual: i64,
    pub expected: i64,
    pub score: f64,
    /// The largest models, keys and projects of the bucket.
    pub drivers: Value,
}

impl Found {
    /// `YYYY-MM-DD` of a day, `YYYY-MM-DDTHH:00:00Z` of an hour.
    pub fn bucket(&self) -> String {
        match self.grain {
            Grain::Day => crate::time::date(self.start),
            Grain::Hour => format!(
                "{}T{:02}:00:00Z",
                crate::time::date(self.start),
                self.start % 86_400 / 3_600
            ),
        }
    }

    /// Names this anomaly the same on every replica (webhook receivers dedupe on it).
    pub fn id(&self) -> String {
        format!(
            "anomaly:{}:{}:{}:{}",
            self.org.as_deref().unwrap_or("*"),
            self.cost_center.as_deref().unwrap_or("*"),
            self.grain.name(),
            self.bucket()
        )
    }

    pub fn json(&self) -> Value {
        json!({
            self.grain.name(): self.bucket(),
            "org": self.org,
            "cost_center": self.cost_center,
            "actual_nanousd": self.actual,
            "actual_usd": format_usd(self.actual),
            "expected_nanousd": self.expected,
            "expected_usd": format_usd(self.expected),
            "score": (self.score * 100.0).round() / 100.0,
            "drivers": self.drivers,
        })
    }
}

fn season(grain: Grain) -> Season {
    match grain {
        Grain::Day => forecast::DAILY,
        Grain::Hour => forecast::HOURLY,
    }
}

/// The anomalous days or hours whose start is in `[from, to]` (Unix seconds, bucket starts),
/// each with its drivers. Reads the history the baseline needs before `from`.
pub async fn detect(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    grain: Grain,
    from: u64,
    to: u64,
) -> Result<Vec<Found>, String> {
    let step = grain.seconds();
    let (from, to) = (from - from % step, to - to % step);
    let s = season(grain);
    // Eight seasons for the baseline of the earliest point of the spread window, and the window.
    let lead = (8 * s.length + s.window) as u64;
    let start = from.saturating_sub(lead * step);
    let series = spend::series(client, org, cost_center, grain, start, to).await?;
    let first = ((from - start) / step) as usize;
    let mut out = Vec::new();
    for a in forecast::anomalies(&series, first, s) {
        let at = start + a.index as u64 * step;
        let drivers = spend::drivers(client, org, cost_center, grain, at, at + step).await?;
        out.push(Found {
            grain,
            start: at,
            org: org.map(str::to_string),
            cost_center: cost_center.map(str::to_string),
            actual: a.actual,
            expected: a.expected,
            score: a.score,
            drivers,
        });
    }
    Ok(out)
}

/// This month so far and where it ends if the last four weeks' trend and weekday pattern
/// hold; with a monthly budget, the day the forecast reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthForecast {
    /// `YYYY-MM`.
    pub month: String,
    pub spent: i64,
    pub forecast: i64,
    /// Today included.
    pub days_left: u64,
    pub budget: Option<i64>,
    /// `YYYY-MM-DD`; today when already spent, `None` when not this month.
    pub exhausted_on: Option<String>,
}

pub async fn month_forecast(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    budget: Option<i64>,
    now: u64,
) -> Result<MonthForecast, String> {
    let today = now - now % 86_400;
    let (y, m) = crate::time::year_month(now);
    let month_start =
        crate::time::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z")).unwrap_or(today);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next_month = crate::time::parse_rfc3339(&format!("{ny:04}-{nm:02}-01T00:00:00Z"))
        .unwrap_or(today + 86_400);
    let from = today.saturating_sub(forecast::WINDOW as u64 * 86_400);
    let first = from.min(month_start);
    let days = spend::series(client, org, cost_center, Grain::Day, first, today).await?;
    // Complete days (up to yesterday) feed the projection; today is partly spent.
    let history = &days[..days.len() - 1];
    let weekday = |i: usize| ((first / 86_400 + i as u64 + 3) % 7) as usize;
    let month = crate::time::date(month_start);
    let spent: i64 = days[((month_start - first) / 86_400) as usize..]
        .iter()
        .fold(0i64, |a, c| a.saturating_add(*c));
    let today_left = 1.0 - (now - today) as f64 / 86_400.0;
    let days_after = ((next_month - today) / 86_400).saturating_sub(1) as usize;
    let by_day = forecast::cumulative(
        &forecast::project(history, weekday, days_after + 1),
        spent,
        today_left,
    );
    let projected = by_day.last().copied().unwrap_or(spent);
    let exhausted_on = budget.and_then(|limit| {
        let j = by_day.iter().position(|t| *t >= limit)?;
        Some(crate::time::date(today + j as u64 * 86_400))
    });
    Ok(MonthForecast {
        month: month[..7].to_string(),
        spent,
        forecast: projected,
        days_left: days_after as u64 + 1,
        budget,
        exhausted_on,
    })
}

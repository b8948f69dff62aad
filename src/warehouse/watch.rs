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
            match self.grain {
                Grain::Day => "day",
                Grain::Hour => "hour",
            },
            self.bucket()
        )
    }

    pub fn json(&self) -> Value {
        let when = match self.grain {
            Grain::Day => "day",
            Grain::Hour => "hour",
        };
        json!({
            when: self.bucket(),
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
    let series: Vec<i64> = match grain {
        Grain::Day => spend::daily(client, org, cost_center, start, to)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect(),
        Grain::Hour => spend::hourly(client, org, cost_center, start, to)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect(),
    };
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

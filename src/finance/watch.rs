//! The finance watch: a thread that, every `[finance] watch_interval_secs`, writes the
//! budgets / allocations snapshot when the config changed, the month-end forecast of every
//! org and cost center (`spend_forecasts`), and looks at the last complete day
//! and hour of every org and cost center for a spend anomaly — raising
//! `model_bridge_spend_anomaly_score`, recording it in `spend_anomalies` and sending a
//! webhook once per anomaly. It reads the warehouse only; nothing here touches the request
//! path.

use super::webhook::{Event, Notifier};
use crate::config::Config;
use crate::metrics::METRICS;
use crate::state::Shared;
use crate::warehouse::spend::Grain;
use crate::warehouse::watch::{detect, month_forecast, Found};
use crate::warehouse::ClickHouseSettings;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct AnomalyRow {
    detected_at: u32,
    node: String,
    id: String,
    grain: &'static str,
    bucket: u32,
    org: String,
    cost_center: String,
    actual_nanousd: i64,
    expected_nanousd: i64,
    score: f64,
    drivers: String,
}

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct ForecastRow {
    computed_at: u32,
    node: String,
    org: String,
    cost_center: String,
    month: String,
    spent_nanousd: i64,
    forecast_nanousd: i64,
    budget_nanousd: i64,
    has_budget: u8,
    exhausted_on: String,
}

/// What one process remembers between passes.
#[derive(Default)]
struct State {
    /// Content hash (file and control store) of the config whose snapshot is written.
    written: Option<u64>,
    /// Anomalies already announced: id → bucket start; pruned to the last week.
    seen: HashMap<String, u64>,
    /// Per grain, the start of the last bucket looked at.
    examined: HashMap<&'static str, u64>,
}

/// Buckets a fresh process looks back over (beyond the last complete one): the anomalies
/// dashboard's default 30 days, and two days of hours.
fn lookback(g: Grain) -> u64 {
    match g {
        Grain::Day => 29,
        Grain::Hour => 47,
    }
}

/// Starts the watch (it follows reloads: the interval, grains and webhook come from the live
/// config at each pass).
pub fn spawn(shared: Arc<Shared>) {
    let mut state = State::default();
    crate::warehouse::every("finance-watch", Duration::from_secs(1), move |rt| {
        let live = shared.live();
        let cfg = &live.config;
        let interval = cfg.finance.watch_interval;
        let Some(ch) = cfg.clickhouse.as_ref().filter(|_| !interval.is_zero()) else {
            // Off: look again later in case a reload turns it on.
            return Duration::from_secs(30);
        };
        match rt.block_on(pass(ch, cfg, &mut state, shared.notifier().as_ref())) {
            Ok(()) => METRICS
                .finance_watch_last_success
                .set(crate::time::now_unix() as i64),
            Err(e) => log::warn!("finance watch: {e}"),
        }
        interval
    });
}

/// One pass of the watch with nothing remembered and no webhook (what a fresh process does
/// first); for `model-bridge` tools and tests.
pub async fn run_once(ch: &ClickHouseSettings, cfg: &Config) -> Result<(), String> {
    pass(ch, cfg, &mut State::default(), None).await
}

async fn pass(
    ch: &ClickHouseSettings,
    cfg: &Config,
    state: &mut State,
    notifier: Option<&Notifier>,
) -> Result<(), String> {
    let generation = cfg.source_hash ^ cfg.control_hash;
    if state.written != Some(generation) {
        super::snapshot::write(ch, cfg).await?;
        state.written = Some(generation);
    }
    let client = ch.db_client();
    let now = crate::time::now_unix();
    forecasts(ch, cfg, now).await?;
    for grain in &cfg.finance.grains {
        let step = grain.seconds();
        // The last complete bucket: today and this hour are still filling up.
        let last = now - now % step - step;
        // From the bucket after the last one looked at; a fresh process looks back over
        // what the anomalies dashboard shows by default.
        let first = match state.examined.get(grain.name()) {
            Some(done) => done + step,
            None => last.saturating_sub(lookback(*grain) * step),
        };
        if first > last {
            continue;
        }
        for (org, o) in &cfg.orgs {
            let scopes =
                std::iter::once(None).chain(o.cost_centers.keys().map(|c| Some(c.as_str())));
            for cc in scopes {
                let found = detect(&client, Some(org), cc, *grain, first, last).await?;
                let labels = [org.as_str(), cc.unwrap_or(""), grain.name()];
                let score = found
                    .iter()
                    .find(|f| f.start == last)
                    .map_or(0.0, |f| f.score);
                METRICS
                    .spend_anomaly_score
                    .with_label_values(&labels)
                    .set(score);
                for f in found {
                    if state.seen.insert(f.id(), f.start).is_none() {
                        announce(ch, &f, notifier).await?;
                    }
                }
            }
        }
        state.examined.insert(grain.name(), last);
    }
    // Past the look-back no bucket is looked at again.
    let horizon = now.saturating_sub(31 * 86_400);
    state.seen.retain(|_, start| *start >= horizon);
    Ok(())
}

/// The month-end forecast of every org and cost center, against its monthly budget.
async fn forecasts(ch: &ClickHouseSettings, cfg: &Config, now: u64) -> Result<(), String> {
    let client = ch.db_client();
    let monthly = |b: Option<&crate::limits::spec::Budget>| {
        b.filter(|b| matches!(b.period, crate::limits::spec::Period::Month))
            .map(|b| b.nano)
    };
    let mut rows = Vec::new();
    for (org, o) in &cfg.orgs {
        let scopes = std::iter::once((None, monthly(o.budget.as_ref()))).chain(
            o.cost_centers
                .iter()
                .map(|(id, c)| (Some(id.as_str()), monthly(c.budget.as_ref()))),
        );
        for (cc, budget) in scopes {
            let f = month_forecast(&client, Some(org), cc, budget, now).await?;
            rows.push(ForecastRow {
                computed_at: now as u32,
                node: ch.node.clone(),
                org: org.clone(),
                cost_center: cc.unwrap_or("").to_string(),
                month: f.month,
                spent_nanousd: f.spent,
                forecast_nanousd: f.forecast,
                budget_nanousd: f.budget.unwrap_or(0),
                has_budget: u8::from(f.budget.is_some()),
                exhausted_on: f.exhausted_on.unwrap_or_default(),
            });
        }
    }
    super::insert(ch, "spend_forecasts", &rows).await
}

async fn announce(
    ch: &ClickHouseSettings,
    f: &Found,
    notifier: Option<&Notifier>,
) -> Result<(), String> {
    let grain = f.grain.name();
    METRICS
        .spend_anomalies
        .with_label_values(&[f.org.as_deref().unwrap_or(""), grain])
        .inc();
    log::warn!(
        "spend anomaly {}: {} USD against {} expected (score {:.1})",
        f.id(),
        crate::usage::pricing::format_usd(f.actual),
        crate::usage::pricing::format_usd(f.expected),
        f.score
    );
    let row = AnomalyRow {
        detected_at: crate::time::now_unix() as u32,
        node: ch.node.clone(),
        id: f.id(),
        grain,
        bucket: f.start as u32,
        org: f.org.clone().unwrap_or_default(),
        cost_center: f.cost_center.clone().unwrap_or_default(),
        actual_nanousd: f.actual,
        expected_nanousd: f.expected,
        score: f.score,
        drivers: f.drivers.to_string(),
    };
    super::insert(ch, "spend_anomalies", std::slice::from_ref(&row)).await?;
    if let Some(n) = notifier {
        n.send(Event {
            id: f.id(),
            kind: "spend.anomaly",
            data: f.json(),
        });
    }
    Ok(())
}

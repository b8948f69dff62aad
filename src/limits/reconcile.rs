//! Budgets survive restarts and agree across replicas through ClickHouse, the usage pipeline's
//! one definition of spend: at start (before serving) and then every `reconcile_interval`, each
//! configured budget takes the period's spend from ClickHouse — local state keeps the larger of
//! its own figure and ClickHouse's, Redis keeps the larger of the shared figure and ClickHouse's.

use super::{BudgetCheck, Limiter, Scope};
use crate::config::Config;
use crate::warehouse::spend::period_spend;
use std::time::Duration;

/// Every budget the config declares.
pub fn budgets(cfg: &Config) -> Vec<BudgetCheck<'_>> {
    let mut out = Vec::new();
    for org in cfg.orgs.values() {
        if let Some(b) = &org.budget {
            out.push(BudgetCheck {
                scope: Scope::Org,
                org: &org.id,
                id: &org.id,
                budget: b,
            });
        }
        for (t, team) in &org.teams {
            if let Some(b) = &team.budget {
                out.push(BudgetCheck {
                    scope: Scope::Team,
                    org: &org.id,
                    id: t,
                    budget: b,
                });
            }
        }
        for (k, p) in &org.keys {
            if let Some(b) = &p.budget {
                out.push(BudgetCheck {
                    scope: Scope::Key,
                    org: &org.id,
                    id: k,
                    budget: b,
                });
            }
        }
        for (c, cc) in &org.cost_centers {
            if let Some(b) = &cc.budget {
                out.push(BudgetCheck {
                    scope: Scope::CostCenter,
                    org: &org.id,
                    id: c,
                    budget: b,
                });
            }
        }
    }
    out
}

/// One pass over every budget; returns how many were reconciled.
pub async fn reconcile(cfg: &Config, limiter: &Limiter) -> Result<usize, String> {
    let Some(ch) = &cfg.clickhouse else {
        return Ok(0);
    };
    let client = ch.db_client();
    let now = crate::time::now_unix();
    let mut n = 0;
    for b in budgets(cfg) {
        let since = b.budget.period.start(now);
        let only = match b.scope {
            Scope::CostCenter => Some(("cost_center", b.id)),
            Scope::Team => Some(("team", b.id)),
            Scope::Key => Some(("key_id", b.id)),
            Scope::Org => None,
        };
        let spent = period_spend(&client, b.org, only, since).await?;
        let state = limiter.local().budget(&b, now);
        state.reconcile(spent, &b.budget.period.label(now), now);
        let mut shown = state.spent();
        if let Some(sh) = limiter.shared() {
            match sh.seed(&b, spent, now).await {
                Ok(v) => shown = v,
                Err(e) => log::warn!("budget {}: Redis seed failed: {e}", b.label()),
            }
        }
        crate::metrics::METRICS
            .budget_spend
            .with_label_values(&[&b.label()])
            .set(shown as f64 / 1e9);
        crate::metrics::METRICS
            .budget_limit
            .with_label_values(&[&b.label()])
            .set(b.budget.nano as f64 / 1e9);
        n += 1;
    }
    Ok(n)
}

/// Before serving: load month-to-date spend (bounded wait; a ClickHouse that does not answer
/// delays enforcement of history, not the start).
pub fn load_at_start(cfg: &Config, limiter: &Limiter) {
    if cfg.clickhouse.is_none() || budgets(cfg).is_empty() {
        return;
    }
    let load = crate::warehouse::block_on(async {
        tokio::time::timeout(Duration::from_secs(10), reconcile(cfg, limiter)).await
    });
    match load.unwrap_or_else(|e| Ok(Err(e))) {
        Ok(Ok(n)) => log::info!("budgets: period spend of {n} budgets loaded from ClickHouse"),
        Ok(Err(e)) => {
            log::warn!("budgets: ClickHouse spend not loaded ({e}); retrying in the background")
        }
        Err(_) => {
            log::warn!("budgets: ClickHouse did not answer in 10s; retrying in the background")
        }
    }
}

/// Reconciles every `reconcile_interval` on a thread of its own, with the live config.
pub fn spawn(shared: std::sync::Arc<crate::state::Shared>) {
    let first = shared.live().config.limits.reconcile_interval;
    crate::warehouse::every("budget-reconcile", first, move |rt| {
        let live = shared.live();
        if let Err(e) = rt.block_on(reconcile(&live.config, &shared.limiter)) {
            log::warn!("budgets: reconciliation with ClickHouse failed: {e}");
        }
        live.config.limits.reconcile_interval
    });
}

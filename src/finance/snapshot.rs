//! The configured budgets and allocations, written to the warehouse (`budgets`,
//! `allocations`) once per config generation, so dashboards show spend against limit and
//! apply allocations without reading the config.

use crate::config::Config;
use crate::limits::spec::{Budget, Period};
use crate::warehouse::ClickHouseSettings;

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct BudgetRow {
    pub written_at: u32,
    pub config_hash: String,
    pub node: String,
    pub org: String,
    /// `org`, `team` or `cost_center`.
    pub scope: &'static str,
    pub scope_id: String,
    pub name: String,
    pub department: String,
    /// `month`, or a rolling window as `30d`.
    pub period: String,
    pub limit_nanousd: i64,
    pub thresholds: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Serialize)]
pub struct AllocationRow {
    pub written_at: u32,
    pub config_hash: String,
    pub node: String,
    pub org: String,
    pub source: String,
    pub cost_center: String,
    pub basis_points: u32,
    /// 0 takes the split's remainder.
    pub rank: u8,
}

fn period(p: &Period) -> String {
    match p {
        Period::Month => "month".into(),
        Period::Rolling { days } => format!("{days}d"),
    }
}

/// The rows of `cfg`'s budgets and allocations, stamped `at` (Unix seconds).
pub fn rows(cfg: &Config, node: &str, at: u32) -> (Vec<BudgetRow>, Vec<AllocationRow>) {
    let hash = format!("{:016x}", cfg.source_hash ^ cfg.control_hash);
    let mut budgets = Vec::new();
    let mut allocations = Vec::new();
    for (org_id, org) in &cfg.orgs {
        let mut budget =
            |scope, id: &str, name: Option<&String>, dept: Option<&String>, b: &Budget| {
                budgets.push(BudgetRow {
                    written_at: at,
                    config_hash: hash.clone(),
                    node: node.to_string(),
                    org: org_id.clone(),
                    scope,
                    scope_id: id.to_string(),
                    name: name.cloned().unwrap_or_default(),
                    department: dept.cloned().unwrap_or_default(),
                    period: period(&b.period),
                    limit_nanousd: b.nano,
                    thresholds: b.soft.clone(),
                })
            };
        if let Some(b) = &org.budget {
            budget("org", org_id, org.name.as_ref(), None, b);
        }
        for (t, team) in &org.teams {
            if let Some(b) = &team.budget {
                budget("team", t, team.name.as_ref(), None, b);
            }
        }
        for (cc, c) in &org.cost_centers {
            if let Some(b) = &c.budget {
                budget("cost_center", cc, c.name.as_ref(), c.department.as_ref(), b);
            }
        }
        for a in &org.allocations {
            for (rank, (cc, bp)) in a.shares.iter().enumerate() {
                allocations.push(AllocationRow {
                    written_at: at,
                    config_hash: hash.clone(),
                    node: node.to_string(),
                    org: org_id.clone(),
                    source: a.source(),
                    cost_center: cc.clone(),
                    basis_points: *bp,
                    rank: u8::try_from(rank).unwrap_or(u8::MAX),
                });
            }
        }
    }
    (budgets, allocations)
}

/// Writes the snapshot of `cfg`: its budgets and allocations, and one `snapshot` marker row,
/// so the latest snapshot exists even for a config without budgets (readers take the rows of
/// the latest marker's `config_hash`: a removed budget disappears from dashboards).
pub async fn write(s: &ClickHouseSettings, cfg: &Config) -> Result<(), String> {
    let at = crate::time::now_unix() as u32;
    let (mut budgets, allocations) = rows(cfg, &s.node, at);
    budgets.push(BudgetRow {
        written_at: at,
        config_hash: format!("{:016x}", cfg.source_hash ^ cfg.control_hash),
        node: s.node.clone(),
        org: String::new(),
        scope: "snapshot",
        scope_id: String::new(),
        name: String::new(),
        department: String::new(),
        period: String::new(),
        limit_nanousd: 0,
        thresholds: Vec::new(),
    });
    super::insert(s, "budgets", &budgets).await?;
    super::insert(s, "allocations", &allocations).await
}

//! Chargeback: spend per cost center per month with allocations applied, exact to the
//! nano-dollar (see `finance::allocation` for the split rule; this SQL computes the same
//! parts, and the parts of every source sum to its spend).
//!
//! Allocations are those of the latest snapshot written by the gateway (`allocations`, per
//! config generation). Each source's monthly spend is split once, by the allocation its rows
//! follow: key, else project, else team; rows following none stay with their own cost
//! center.

use crate::usage::pricing::format_usd;
use serde_json::{json, Value};

/// The allocations of the latest snapshot, one row per (org, source, cost center).
pub const CURRENT_ALLOCATIONS: &str = "SELECT org, source, cost_center, any(basis_points) AS bp, any(rank) AS rk FROM allocations \
     WHERE config_hash = (SELECT argMax(config_hash, written_at) FROM budgets WHERE scope = 'snapshot') \
     GROUP BY org, source, cost_center";

/// The API's statement: days bound as `from`, `to`, then the org when `scope` names one.
pub fn sql(scope: &str) -> String {
    sql_over("day >= toDate(?) AND day <= toDate(?)", scope)
}

/// The chargeback dashboard's statement: the same lines over Grafana's time range and org
/// variable, with the money also as exact decimal strings.
pub fn dashboard_sql() -> String {
    let exact = |c: &str| {
        format!(
            "concat(toString(intDiv({c}, 1000000000)), '.', substring(toString(1000000000 + {c} % 1000000000), 2, 9))"
        )
    };
    format!(
        "SELECT month, cost_center, {} AS cost, cost_nanousd, {} AS allocated, allocated_nanousd FROM ({})",
        exact("cost_nanousd"),
        exact("allocated_nanousd"),
        sql_over("$__dateFilter(day)", " AND org = ${org:sqlstring}")
    )
}

/// The chargeback statement over `usage_daily` rows matching `days` and `scope`.
fn sql_over(days: &str, scope: &str) -> String {
    let sources = format!("(SELECT org, source FROM ({CURRENT_ALLOCATIONS}))");
    let part = |b: &str| format!("intDiv(s, 10000) * {b} + intDiv((s % 10000) * {b}, 10000)");
    format!(
        "SELECT month, cc AS cost_center, toInt64(sum(amount)) AS cost_nanousd, \
           toInt64(sum(if(allocated, amount, 0))) AS allocated_nanousd \
         FROM ( \
           SELECT month, notEmpty(ccs) AS allocated, \
             if(allocated, ccs, [own_cc]) AS out_ccs, \
             if(allocated, arrayMap((b, r) -> {share} + if(r = 0, s - arraySum(arrayMap(x -> {floor}, bps)), 0), bps, rks), [s]) AS out_amounts \
           FROM ( \
             SELECT month, org, src, own_cc, sum(cost_nanousd) AS s FROM ( \
               SELECT substring(toString(day), 1, 7) AS month, org, if(src = '', cost_center, '') AS own_cc, cost_nanousd, \
                 multiIf((org, concat('key:', key_id)) GLOBAL IN {sources}, concat('key:', key_id), \
                         project != '' AND (org, concat('project:', project)) GLOBAL IN {sources}, concat('project:', project), \
                         team != '' AND (org, concat('team:', team)) GLOBAL IN {sources}, concat('team:', team), '') AS src \
               FROM usage_daily WHERE {days}{scope} \
             ) GROUP BY month, org, src, own_cc \
           ) AS spend GLOBAL ANY LEFT JOIN ( \
             SELECT org, source AS src, groupArray(cost_center) AS ccs, groupArray(bp) AS bps, groupArray(rk) AS rks \
             FROM ({CURRENT_ALLOCATIONS}) GROUP BY org, source \
           ) AS shares USING (org, src) \
         ) ARRAY JOIN out_ccs AS cc, out_amounts AS amount \
         GROUP BY month, cost_center ORDER BY month, cost_center",
        share = part("b"),
        floor = part("x"),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Line {
    pub month: String,
    pub cost_center: String,
    pub cost_nanousd: i64,
    pub allocated_nanousd: i64,
}

/// Chargeback lines for the days `from ..= to` (`YYYY-MM-DD`; whole months are what
/// finance bills), of one org or all.
pub async fn lines(
    client: &clickhouse::Client,
    org: Option<&str>,
    from: &str,
    to: &str,
) -> Result<Vec<Line>, String> {
    let scope = if org.is_some() { " AND org = ?" } else { "" };
    let mut q = client.query(&sql(scope)).bind(from).bind(to);
    if let Some(o) = org {
        q = q.bind(o);
    }
    q.fetch_all().await.map_err(|e| e.to_string())
}

/// The answer of `GET /admin/v1/chargeback` and `report chargeback`.
pub fn json(org: Option<&str>, from: &str, to: &str, lines: &[Line]) -> Value {
    let total: i64 = lines.iter().map(|l| l.cost_nanousd).sum();
    json!({
        "object": "chargeback",
        "org": org,
        "from": from,
        "to": to,
        "currency": "USD",
        "total_nanousd": total,
        "total_usd": format_usd(total),
        "data": lines.iter().map(|l| json!({
            "month": l.month,
            "cost_center": l.cost_center,
            "cost_nanousd": l.cost_nanousd,
            "cost_usd": format_usd(l.cost_nanousd),
            "allocated_nanousd": l.allocated_nanousd,
            "allocated_usd": format_usd(l.allocated_nanousd),
        })).collect::<Vec<_>>(),
    })
}

/// The same lines as CSV (money as exact decimal strings).
pub fn csv(lines: &[Line]) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "month",
        "cost_center",
        "cost_nanousd",
        "cost_usd",
        "allocated_nanousd",
        "allocated_usd",
    ])
    .map_err(|e| e.to_string())?;
    for l in lines {
        w.write_record([
            l.month.clone(),
            l.cost_center.clone(),
            l.cost_nanousd.to_string(),
            format_usd(l.cost_nanousd),
            l.allocated_nanousd.to_string(),
            format_usd(l.allocated_nanousd),
        ])
        .map_err(|e| e.to_string())?;
    }
    String::from_utf8(w.into_inner().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chargeback dashboard runs this very statement (over Grafana's range and org).
    #[test]
    fn the_dashboard_runs_the_api_statement() {
        let board: Value =
            serde_json::from_str(include_str!("../../dashboards/finance-chargeback.json")).unwrap();
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let panel = board["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == "Chargeback by cost center and month")
            .unwrap();
        assert_eq!(
            words(panel["targets"][0]["rawSql"].as_str().unwrap()),
            words(&dashboard_sql())
        );
    }
}

//! Spend: the one definition of "how much was spent" that the admin API, dashboards and budget
//! checks share — sums over the `spend_daily` rollup (never the raw rows), in exact nano-USD.

use crate::usage::pricing::format_usd;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Dimensions a spend answer can be grouped by.
pub const DIMENSIONS: &[&str] = &["org", "cost_center", "model", "day", "month"];

/// The measures of every spend answer, in the order tables and CSV show them.
pub const MEASURES: &[&str] = &[
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_nanousd",
    "cost_usd",
    "unpriced_requests",
];

#[derive(Debug, Clone)]
pub struct SpendQuery {
    /// `None`: every org.
    pub org: Option<String>,
    /// Inclusive `YYYY-MM-DD` bounds (UTC days).
    pub from: String,
    pub to: String,
    pub group_by: Vec<&'static str>,
    pub cost_center: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanousd: i64,
    pub unpriced_requests: u64,
}

impl Totals {
    fn add(&mut self, r: &RollupRow) {
        self.requests = self.requests.saturating_add(r.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(r.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(r.cached_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(r.completion_tokens);
        self.cost_nanousd = self.cost_nanousd.saturating_add(r.cost_nanousd);
        self.unpriced_requests = self.unpriced_requests.saturating_add(r.unpriced_requests);
    }

    fn json(&self, into: &mut Map<String, Value>) {
        into.insert("requests".into(), json!(self.requests));
        into.insert("prompt_tokens".into(), json!(self.prompt_tokens));
        into.insert("cached_tokens".into(), json!(self.cached_tokens));
        into.insert("completion_tokens".into(), json!(self.completion_tokens));
        into.insert("cost_nanousd".into(), json!(self.cost_nanousd));
        into.insert("cost_usd".into(), json!(format_usd(self.cost_nanousd)));
        into.insert("unpriced_requests".into(), json!(self.unpriced_requests));
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct RollupRow {
    org: String,
    cost_center: String,
    model: String,
    day: String,
    requests: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
    cost_nanousd: i64,
    unpriced_requests: u64,
}

/// Checks a `YYYY-MM-DD` day.
pub fn valid_day(d: &str) -> bool {
    // Round trip: a day that does not exist (2026-02-30) would parse as another one.
    d.len() == 10
        && crate::time::parse_rfc3339(&format!("{d}T00:00:00Z"))
            .is_some_and(|t| crate::time::date(t) == d)
}

/// Parses a comma-separated `group_by`.
pub fn parse_group_by(text: &str) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(d) = DIMENSIONS.iter().find(|d| **d == part) else {
            return Err(format!(
                "unknown group_by `{part}` (one of {})",
                DIMENSIONS.join(", ")
            ));
        };
        if !out.contains(d) {
            out.push(*d);
        }
    }
    Ok(out)
}

/// ` AND org = ? AND cost_center = ?`, for the parts of a spend question's scope that are set;
/// `bind_scope` binds them in the same order.
fn scope_filter(org: Option<&str>, cost_center: Option<&str>) -> String {
    let mut f = String::new();
    if org.is_some() {
        f.push_str(" AND org = ?");
    }
    if cost_center.is_some() {
        f.push_str(" AND cost_center = ?");
    }
    f
}

fn bind_scope(
    mut q: clickhouse::query::Query,
    org: Option<&str>,
    cost_center: Option<&str>,
) -> clickhouse::query::Query {
    if let Some(o) = org {
        q = q.bind(o);
    }
    if let Some(c) = cost_center {
        q = q.bind(c);
    }
    q
}

/// Totals over the range, and one entry per group.
pub async fn spend(client: &clickhouse::Client, q: &SpendQuery) -> Result<Value, String> {
    let mut sql = String::from(
        "SELECT org, cost_center, model, toString(day) AS day_text, \
         sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens, \
         sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens, \
         sum(cost_nanousd) AS cost_nanousd, sum(unpriced_requests) AS unpriced_requests \
         FROM spend_daily WHERE day >= toDate(?) AND day <= toDate(?)",
    );
    let (org, cost_center) = (q.org.as_deref(), q.cost_center.as_deref());
    sql.push_str(&scope_filter(org, cost_center));
    // The rollup merges rows of one key lazily: always sum.
    sql.push_str(" GROUP BY org, cost_center, model, day");
    let query = bind_scope(
        client.query(&sql).bind(&q.from).bind(&q.to),
        org,
        cost_center,
    );
    let rows: Vec<RollupRow> = query.fetch_all().await.map_err(|e| e.to_string())?;
    let mut total = Totals::default();
    let mut groups: BTreeMap<Vec<String>, Totals> = BTreeMap::new();
    for r in &rows {
        total.add(r);
        let key = q
            .group_by
            .iter()
            .map(|d| match *d {
                "org" => r.org.clone(),
                "cost_center" => r.cost_center.clone(),
                "model" => r.model.clone(),
                // `YYYY-MM` of the day: months are sums of whole days.
                "month" => r.day.get(..7).unwrap_or(&r.day).to_string(),
                _ => r.day.clone(),
            })
            .collect();
        groups.entry(key).or_default().add(r);
    }
    let mut t = Map::new();
    total.json(&mut t);
    let data: Vec<Value> = if q.group_by.is_empty() {
        Vec::new()
    } else {
        groups
            .into_iter()
            .map(|(key, totals)| {
                let mut m = Map::new();
                for (d, v) in q.group_by.iter().zip(key) {
                    m.insert((*d).to_string(), json!(v));
                }
                totals.json(&mut m);
                Value::Object(m)
            })
            .collect()
    };
    Ok(json!({
        "object": "spend",
        "org": q.org,
        "from": q.from,
        "to": q.to,
        "group_by": q.group_by,
        "currency": "USD",
        "total": t,
        "data": data,
    }))
}

/// Spend per UTC day (nano-USD) from `from` to `to` inclusive, every day present (0 when
/// nothing was spent), for one org (or all) and optionally one cost center.
pub async fn daily(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    from: u64,
    to: u64,
) -> Result<Vec<(String, i64)>, String> {
    let mut sql = String::from(
        "SELECT toString(day) AS d, sum(cost_nanousd) AS c FROM spend_daily \
         WHERE day >= toDate(?) AND day <= toDate(?)",
    );
    sql.push_str(&scope_filter(org, cost_center));
    sql.push_str(" GROUP BY day ORDER BY day");
    let (from_day, to_day) = (crate::time::date(from), crate::time::date(to));
    let q = bind_scope(
        client.query(&sql).bind(&from_day).bind(&to_day),
        org,
        cost_center,
    );
    let rows: Vec<(String, i64)> = q.fetch_all().await.map_err(|e| e.to_string())?;
    let by_day: BTreeMap<String, i64> = rows.into_iter().collect();
    Ok((0..=(to.saturating_sub(from) / 86_400))
        .map(|i| {
            let d = crate::time::date(from + i * 86_400);
            let c = by_day.get(&d).copied().unwrap_or(0);
            (d, c)
        })
        .collect())
}

/// What drove one day's spend: its largest models, with their spend.
pub async fn drivers(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    day: &str,
) -> Result<Vec<(String, i64)>, String> {
    let mut sql =
        String::from("SELECT model, sum(cost_nanousd) AS c FROM spend_daily WHERE day = toDate(?)");
    sql.push_str(&scope_filter(org, cost_center));
    sql.push_str(" GROUP BY model ORDER BY c DESC, model LIMIT 3");
    bind_scope(client.query(&sql).bind(day), org, cost_center)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())
}

/// The rows of a spend answer (`data`, or the total alone when ungrouped) as CSV: the group
/// columns, then every measure; money as exact decimal strings.
pub fn to_csv(v: &Value) -> Result<String, String> {
    let (header, rows) = table_rows(v);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header).map_err(|e| e.to_string())?;
    for r in rows {
        w.write_record(&r).map_err(|e| e.to_string())?;
    }
    String::from_utf8(w.into_inner().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// The same rows as aligned text columns, with a total line.
pub fn to_table(v: &Value) -> String {
    let (header, mut rows) = table_rows(v);
    if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
        let dims = header.len() - MEASURES.len();
        let mut total: Vec<String> = (0..dims)
            .map(|i| {
                if i == 0 {
                    "TOTAL".into()
                } else {
                    String::new()
                }
            })
            .collect();
        total.extend(MEASURES.iter().map(|m| cell(&v["total"][*m])));
        rows.push(total);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i >= header.len() - MEASURES.len() {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header);
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table_rows(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let dims: Vec<String> = v["group_by"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut header = dims.clone();
    header.extend(MEASURES.iter().map(|m| m.to_string()));
    let row = |o: &Value| -> Vec<String> {
        dims.iter()
            .map(|d| cell(&o[d.as_str()]))
            .chain(MEASURES.iter().map(|m| cell(&o[*m])))
            .collect()
    };
    let rows = if dims.is_empty() {
        vec![row(&v["total"])]
    } else {
        v["data"]
            .as_array()
            .map(|d| d.iter().map(row).collect())
            .unwrap_or_default()
    };
    (header, rows)
}

/// Spend (nano-USD) since `since` (Unix seconds, a day boundary) of an org, or of one of its
/// cost centers or teams. Org and cost center read the rollup; teams are not in it, so they
/// read the rows.
pub async fn period_spend(
    client: &clickhouse::Client,
    org: &str,
    cost_center: Option<&str>,
    team: Option<&str>,
    since: u64,
) -> Result<i64, String> {
    let day = crate::time::date(since);
    let q = match (cost_center, team) {
        (Some(cc), _) => client
            .query("SELECT sum(cost_nanousd) FROM spend_daily WHERE org = ? AND cost_center = ? AND day >= toDate(?)")
            .bind(org)
            .bind(cc)
            .bind(day),
        (None, Some(t)) => client
            .query("SELECT sum(cost_nanousd) FROM usage_events WHERE org = ? AND team = ? AND ts >= toDateTime(?)")
            .bind(org)
            .bind(t)
            .bind(since as u32),
        (None, None) => client
            .query("SELECT sum(cost_nanousd) FROM spend_daily WHERE org = ? AND day >= toDate(?)")
            .bind(org)
            .bind(day),
    };
    q.fetch_one::<i64>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_and_days() {
        assert_eq!(
            parse_group_by("cost_center, model,day,model").unwrap(),
            vec!["cost_center", "model", "day"]
        );
        assert!(parse_group_by("user").is_err());
        assert!(valid_day("2026-11-01"));
        assert!(!valid_day("2026-13-01"));
        assert!(!valid_day("2026-11-01' OR 1"));
    }

    #[test]
    fn days_must_exist() {
        assert!(valid_day("2024-02-29") && valid_day("2026-12-31"));
        for bad in ["2026-02-30", "2025-02-29", "2026-1-01", "x"] {
            assert!(!valid_day(bad), "{bad}");
        }
    }

    #[test]
    fn csv_and_table_keep_every_figure_exact() {
        let v = json!({
            "group_by": ["cost_center", "model"],
            "total": {"requests": 3, "prompt_tokens": 30, "cached_tokens": 0, "completion_tokens": 9,
                      "cost_nanousd": 1000000001i64, "cost_usd": "1.000000001", "unpriced_requests": 0},
            "data": [
                {"cost_center": "r&d, east", "model": "gpt \"4o\"", "requests": 2, "prompt_tokens": 20,
                 "cached_tokens": 0, "completion_tokens": 6, "cost_nanousd": 1000000000i64,
                 "cost_usd": "1.000000000", "unpriced_requests": 0},
                {"cost_center": "ops", "model": "m", "requests": 1, "prompt_tokens": 10,
                 "cached_tokens": 0, "completion_tokens": 3, "cost_nanousd": 1,
                 "cost_usd": "0.000000001", "unpriced_requests": 0},
            ],
        });
        let csv = to_csv(&v).unwrap();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(&rows[0][0], "r&d, east");
        assert_eq!(&rows[0][1], "gpt \"4o\"");
        assert_eq!(&rows[0][7], "1.000000000");
        assert_eq!(&rows[1][6], "1");
        let t = to_table(&v);
        assert!(t.lines().last().unwrap().starts_with("TOTAL"));
        assert!(t.contains("1000000001") && t.contains("1.000000001"));
        // Ungrouped: the total alone.
        let mut total = v.clone();
        total["group_by"] = json!([]);
        assert_eq!(to_csv(&total).unwrap().lines().count(), 2);
    }
}

//! Spend: the one definition of "how much was spent" that the admin API, the CLI report,
//! forecasts and budget checks share — sums over the attribution rollups (`usage_daily`, and
//! `usage_hourly` for hours), never the raw rows, in exact nano-USD. Per-user questions are
//! not answered here: the rollups carry no user (see `rollup`).

use crate::usage::pricing::format_usd;
use serde_json::{json, Map, Value};

/// Attribution dimensions a spend answer can be grouped and filtered by.
pub const ATTRIBUTES: &[&str] = super::rollup::DIMENSIONS;

/// Time buckets a spend answer can be grouped by (at most one).
pub const PERIODS: &[&str] = &["month", "day", "hour"];

/// The measures of every spend answer, in the order tables and CSV show them.
pub const MEASURES: &[&str] = &[
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_nanousd",
    "cost_usd",
    "cache_savings_nanousd",
    "unpriced_requests",
    "errors",
];

#[derive(Debug, Clone, Default)]
pub struct SpendQuery {
    /// `None`: every org.
    pub org: Option<String>,
    /// Inclusive `YYYY-MM-DD` bounds (UTC days).
    pub from: String,
    pub to: String,
    /// Attribution dimensions, then at most one period, in the order asked.
    pub group_by: Vec<&'static str>,
    /// Equality filters on attribution dimensions other than `org`.
    pub filters: Vec<(&'static str, String)>,
}

impl SpendQuery {
    fn period(&self) -> Option<&'static str> {
        self.group_by.iter().copied().find(|d| PERIODS.contains(d))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanousd: i64,
    pub cache_savings_nanousd: i64,
    pub unpriced_requests: i64,
    pub errors: i64,
}

impl Totals {
    fn add(&mut self, r: &Totals) {
        self.requests = self.requests.saturating_add(r.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(r.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(r.cached_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(r.completion_tokens);
        self.cost_nanousd = self.cost_nanousd.saturating_add(r.cost_nanousd);
        self.cache_savings_nanousd = self
            .cache_savings_nanousd
            .saturating_add(r.cache_savings_nanousd);
        self.unpriced_requests = self.unpriced_requests.saturating_add(r.unpriced_requests);
        self.errors = self.errors.saturating_add(r.errors);
    }

    fn json(&self, into: &mut Map<String, Value>) {
        into.insert("requests".into(), json!(self.requests));
        into.insert("prompt_tokens".into(), json!(self.prompt_tokens));
        into.insert("cached_tokens".into(), json!(self.cached_tokens));
        into.insert("completion_tokens".into(), json!(self.completion_tokens));
        into.insert("cost_nanousd".into(), json!(self.cost_nanousd));
        into.insert("cost_usd".into(), json!(format_usd(self.cost_nanousd)));
        into.insert(
            "cache_savings_nanousd".into(),
            json!(self.cache_savings_nanousd),
        );
        into.insert("unpriced_requests".into(), json!(self.unpriced_requests));
        into.insert("errors".into(), json!(self.errors));
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct GroupRow {
    key: Vec<String>,
    requests: i64,
    prompt_tokens: i64,
    cached_tokens: i64,
    completion_tokens: i64,
    cost_nanousd: i64,
    cache_savings_nanousd: i64,
    unpriced_requests: i64,
    errors: i64,
}

impl GroupRow {
    fn totals(&self) -> Totals {
        Totals {
            requests: self.requests,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.completion_tokens,
            cost_nanousd: self.cost_nanousd,
            cache_savings_nanousd: self.cache_savings_nanousd,
            unpriced_requests: self.unpriced_requests,
            errors: self.errors,
        }
    }
}

/// Checks a `YYYY-MM-DD` day.
pub fn valid_day(d: &str) -> bool {
    // Round trip: a day that does not exist (2026-02-30) would parse as another one.
    d.len() == 10
        && crate::time::parse_rfc3339(&format!("{d}T00:00:00Z"))
            .is_some_and(|t| crate::time::date(t) == d)
}

/// Parses a comma-separated `group_by`: attribution dimensions and at most one period.
pub fn parse_group_by(text: &str) -> Result<Vec<&'static str>, String> {
    let mut out: Vec<&'static str> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(d) = ATTRIBUTES.iter().chain(PERIODS).find(|d| **d == part) else {
            return Err(format!(
                "unknown group_by `{part}` (one of {}, {})",
                ATTRIBUTES.join(", "),
                PERIODS.join(", ")
            ));
        };
        if PERIODS.contains(d) && out.iter().any(|o| PERIODS.contains(o) && o != d) {
            return Err("group_by takes one period: month, day or hour".into());
        }
        if !out.contains(d) {
            out.push(*d);
        }
    }
    Ok(out)
}

/// Adds `period` (month, day or hour; `None`: none) to a parsed `group_by`.
pub fn with_period(
    mut group_by: Vec<&'static str>,
    period: Option<&str>,
) -> Result<Vec<&'static str>, String> {
    let Some(p) = period.filter(|p| !p.is_empty()) else {
        return Ok(group_by);
    };
    let Some(p) = PERIODS.iter().find(|x| **x == p) else {
        return Err(format!("unknown period `{p}` (month, day or hour)"));
    };
    if group_by.iter().any(|o| PERIODS.contains(o) && o != p) {
        return Err("group_by takes one period: month, day or hour".into());
    }
    if !group_by.contains(p) {
        group_by.push(*p);
    }
    Ok(group_by)
}

/// The filter a request asks for on dimension `name`, when `name` is one.
pub fn filter_dimension(name: &str) -> Option<&'static str> {
    ATTRIBUTES
        .iter()
        .copied()
        .find(|d| *d == name && *d != "org")
}

/// ` AND org = ? AND <dim> = ? …` for a question's scope; `bind_scope` binds it in order.
fn scope_filter(org: Option<&str>, filters: &[(&'static str, String)]) -> String {
    let mut f = String::new();
    if org.is_some() {
        f.push_str(" AND org = ?");
    }
    for (d, _) in filters {
        // Dimension names come from `ATTRIBUTES` only: safe to splice.
        f.push_str(&format!(" AND {d} = ?"));
    }
    f
}

fn bind_scope(
    mut q: clickhouse::query::Query,
    org: Option<&str>,
    filters: &[(&'static str, String)],
) -> clickhouse::query::Query {
    if let Some(o) = org {
        q = q.bind(o);
    }
    for (_, v) in filters {
        q = q.bind(v.as_str());
    }
    q
}

/// The filters of a question about an org's cost center (the forecast's and anomalies').
pub fn cost_center_filter(cost_center: Option<&str>) -> Vec<(&'static str, String)> {
    cost_center
        .map(|c| vec![("cost_center", c.to_string())])
        .unwrap_or_default()
}

/// Totals over the range, and one entry per group, summed by ClickHouse over the rollup.
pub async fn spend(client: &clickhouse::Client, q: &SpendQuery) -> Result<Value, String> {
    let hourly = q.period() == Some("hour");
    let (table, day) = if hourly {
        ("usage_hourly", "toDate(hour)")
    } else {
        ("usage_daily", "day")
    };
    // Every group's key as one array of strings (dimension names come from the allowed
    // lists only, so they are safe to splice); `''` keeps the array typed when ungrouped.
    let mut key: Vec<String> = q
        .group_by
        .iter()
        .map(|d| match *d {
            "month" => "substring(toString(day), 1, 7)".to_string(),
            "day" => "toString(day)".to_string(),
            "hour" => "toString(hour)".to_string(),
            other => other.to_string(),
        })
        .collect();
    if key.is_empty() {
        key.push("''".into());
    }
    let mut sql = format!(
        "SELECT [{key}] AS key, sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens, \
         sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens, \
         sum(cost_nanousd) AS cost_nanousd, sum(cache_savings_nanousd) AS cache_savings_nanousd, \
         sum(unpriced_requests) AS unpriced_requests, sum(errors) AS errors FROM {table} WHERE {day} >= toDate(?) AND {day} <= toDate(?)",
        key = key.join(", ")
    );
    let org = q.org.as_deref();
    sql.push_str(&scope_filter(org, &q.filters));
    // The rollup merges rows of one key lazily: always sum.
    sql.push_str(" GROUP BY key ORDER BY key");
    let query = bind_scope(
        client.query(&sql).bind(&q.from).bind(&q.to),
        org,
        &q.filters,
    );
    let rows: Vec<GroupRow> = query.fetch_all().await.map_err(|e| e.to_string())?;
    let mut total = Totals::default();
    let mut data = Vec::new();
    for r in &rows {
        let totals = r.totals();
        total.add(&totals);
        if q.group_by.is_empty() {
            continue;
        }
        let mut m = Map::new();
        for (d, v) in q.group_by.iter().zip(&r.key) {
            m.insert((*d).to_string(), json!(v));
        }
        totals.json(&mut m);
        data.push(Value::Object(m));
    }
    let mut t = Map::new();
    total.json(&mut t);
    let filters: Map<String, Value> = q
        .filters
        .iter()
        .map(|(d, v)| ((*d).to_string(), json!(v)))
        .collect();
    Ok(json!({
        "object": "spend",
        "org": q.org,
        "from": q.from,
        "to": q.to,
        "group_by": q.group_by,
        "filters": filters,
        "currency": "USD",
        "source": table,
        "total": t,
        "data": data,
    }))
}

/// Spend (nano-USD) per day or hour of the buckets `from ..= to` (Unix seconds, bucket
/// starts), every bucket present (0 when nothing was spent), for one org (or all) and
/// optionally one cost center.
pub async fn series(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    grain: Grain,
    from: u64,
    to: u64,
) -> Result<Vec<i64>, String> {
    let filters = cost_center_filter(cost_center);
    let (table, bucket) = grain.rollup();
    let mut sql = format!(
        "SELECT toString({bucket}) AS b, sum(cost_nanousd) AS c FROM {table} WHERE {}",
        grain.range("<=")
    );
    sql.push_str(&scope_filter(org, &filters));
    sql.push_str(&format!(" GROUP BY {bucket}"));
    let q = grain.bind(grain.bind(client.query(&sql), from), to);
    let rows: Vec<(String, i64)> = bind_scope(q, org, &filters)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    let step = grain.seconds();
    let mut out = vec![0i64; (to.saturating_sub(from) / step + 1) as usize];
    for (b, c) in rows {
        let at = grain
            .parse(&b)
            .ok_or_else(|| format!("bucket `{b}` does not parse"))?;
        if let Some(slot) = at
            .checked_sub(from)
            .and_then(|d| out.get_mut((d / step) as usize))
        {
            *slot = c;
        }
    }
    Ok(out)
}

/// What drives spend in the buckets `[from, to)` (Unix seconds) of `grain`'s rollup: the
/// largest three values of each of model, key and project, with their spend.
pub async fn drivers(
    client: &clickhouse::Client,
    org: Option<&str>,
    cost_center: Option<&str>,
    grain: Grain,
    from: u64,
    to: u64,
) -> Result<Value, String> {
    let filters = cost_center_filter(cost_center);
    let (table, _) = grain.rollup();
    let mut out = Map::new();
    for dim in ["model", "key_id", "project"] {
        let mut sql = format!(
            "SELECT {dim} AS v, sum(cost_nanousd) AS c FROM {table} WHERE {}",
            grain.range("<")
        );
        sql.push_str(&scope_filter(org, &filters));
        sql.push_str(" GROUP BY v ORDER BY c DESC, v LIMIT 3");
        let q = grain.bind(grain.bind(client.query(&sql), from), to);
        let rows: Vec<(String, i64)> = bind_scope(q, org, &filters)
            .fetch_all()
            .await
            .map_err(|e| e.to_string())?;
        out.insert(
            dim.to_string(),
            rows.into_iter()
                .map(|(v, c)| json!({"value": v, "cost_nanousd": c, "cost_usd": format_usd(c)}))
                .collect(),
        );
    }
    Ok(Value::Object(out))
}

/// The time grain of a series: UTC days or hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    Day,
    Hour,
}

impl Grain {
    /// `day` or `hour`: in metric labels, ids and tables.
    pub fn name(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Hour => "hour",
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Grain::Day => 86_400,
            Grain::Hour => 3_600,
        }
    }

    /// The rollup of this grain and its bucket column.
    fn rollup(self) -> (&'static str, &'static str) {
        match self {
            Grain::Day => ("usage_daily", "day"),
            Grain::Hour => ("usage_hourly", "hour"),
        }
    }

    /// `bucket >= ? AND bucket <op> ?`. Days compare as dates (bound as `YYYY-MM-DD`), so no
    /// server time zone enters; hours are UTC DateTimes (bound as Unix seconds).
    fn range(self, op: &str) -> String {
        match self {
            Grain::Day => format!("day >= toDate(?) AND day {op} toDate(?)"),
            Grain::Hour => format!("hour >= toDateTime(?) AND hour {op} toDateTime(?)"),
        }
    }

    fn bind(self, q: clickhouse::query::Query, at: u64) -> clickhouse::query::Query {
        match self {
            Grain::Day => q.bind(crate::time::date(at)),
            Grain::Hour => q.bind(at as u32),
        }
    }

    /// Unix seconds of a bucket as `toString` prints it (`YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`).
    fn parse(self, text: &str) -> Option<u64> {
        match self {
            Grain::Day => crate::time::parse_rfc3339(&format!("{text}T00:00:00Z")),
            Grain::Hour => crate::time::parse_rfc3339(&format!("{}Z", text.replacen(' ', "T", 1))),
        }
    }
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
/// cost centers, teams or keys (`only`: the dimension and its value), from the daily rollup.
pub async fn period_spend(
    client: &clickhouse::Client,
    org: &str,
    only: Option<(&'static str, &str)>,
    since: u64,
) -> Result<i64, String> {
    let filters: Vec<(&'static str, String)> =
        only.map(|(c, v)| (c, v.to_string())).into_iter().collect();
    let mut sql = String::from("SELECT sum(cost_nanousd) FROM usage_daily WHERE day >= toDate(?)");
    sql.push_str(&scope_filter(Some(org), &filters));
    bind_scope(
        client.query(&sql).bind(crate::time::date(since)),
        Some(org),
        &filters,
    )
    .fetch_one::<i64>()
    .await
    .map_err(|e| e.to_string())
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
        assert!(parse_group_by("day,month").is_err());
        assert_eq!(
            with_period(parse_group_by("project").unwrap(), Some("hour")).unwrap(),
            vec!["project", "hour"]
        );
        assert!(with_period(vec!["day"], Some("month")).is_err());
        assert!(with_period(vec![], Some("week")).is_err());
        assert_eq!(filter_dimension("department"), Some("department"));
        assert_eq!(filter_dimension("org"), None);
        assert_eq!(filter_dimension("user"), None);
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

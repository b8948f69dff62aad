//! The attribution rollups (`usage_daily`, `usage_hourly`; migration 006) and their exact
//! backfill.
//!
//! A materialized view only sees rows inserted after it exists, so rows already in
//! `usage_events` when the views are created — and rows a rollup missed or double counted for
//! any other reason — are brought in by *reconciliation*: one statement per rollup computes, per
//! rollup key over a range of days, raw totals minus rollup totals and inserts the difference
//! as a row of its own (SummingMergeTree adds it in; a key whose difference is zero gets no
//! row). It is idempotent — a second run finds nothing to add — so the migration runs it once
//! after creating the views, `model-bridge warehouse reconcile` runs it on demand, and the
//! equality it establishes is exactly what dashboards rely on: rollup totals equal raw totals.
//!
//! The statement reads both tables at one moment; a gateway writing at that very moment can
//! land an insert in one snapshot and not the other, so the backfill is exact when run with no
//! writer (`model-bridge migrate` before a rollout) and converges on a re-run otherwise (the
//! report says how many keys differed; 0 means the range was already exact).

use super::ClickHouseSettings;

/// The dimensions every rollup carries, in table order.
pub const DIMENSIONS: &[&str] = &[
    "org",
    "team",
    "cost_center",
    "department",
    "project",
    "key_id",
    "model",
    "provider",
    "experiment",
    "variant",
];

/// The measures, in table order, with how a raw row contributes to each.
const MEASURES: &[(&str, &str)] = &[
    ("requests", "toInt64(count())"),
    ("prompt_tokens", "toInt64(sum(prompt_tokens))"),
    ("cached_tokens", "toInt64(sum(cached_tokens))"),
    ("completion_tokens", "toInt64(sum(completion_tokens))"),
    ("cost_nanousd", "sum(cost_nanousd)"),
    ("cache_savings_nanousd", "sum(cache_savings_nanousd)"),
    ("unpriced_requests", "toInt64(sum(1 - cost_known))"),
    ("errors", "toInt64(sum(status >= 400))"),
];

/// A rollup: its table, its time column and how a raw row's `ts` maps onto it.
pub struct Rollup {
    pub table: &'static str,
    pub bucket: &'static str,
    pub of_ts: &'static str,
    /// The table's partition expression.
    pub partition: &'static str,
}

pub const ROLLUPS: &[Rollup] = &[
    Rollup {
        table: "usage_daily",
        bucket: "day",
        of_ts: "toDate(ts)",
        partition: "toYYYYMM(day)",
    },
    Rollup {
        table: "usage_hourly",
        bucket: "hour",
        of_ts: "toStartOfHour(ts)",
        partition: "toYYYYMMDD(hour)",
    },
];

/// The statement inserting, for every key of `r` whose day is in `[from, to]` (bound as
/// `YYYY-MM-DD` twice, for the raw side then the rollup side), raw minus rollup.
fn reconcile_sql(db: &str, r: &Rollup) -> String {
    let dims = DIMENSIONS
        .iter()
        .map(|d| {
            if *d == "model" {
                "requested_model AS model"
            } else {
                d
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = format!("{}, {}", r.bucket, DIMENSIONS.join(", "));
    let raw: Vec<String> = MEASURES
        .iter()
        .map(|(m, e)| format!("{e} AS {m}"))
        .collect();
    let rolled: Vec<String> = MEASURES
        .iter()
        .map(|(m, _)| format!("-sum({m}) AS {m}"))
        .collect();
    let summed: Vec<String> = MEASURES
        .iter()
        .map(|(m, _)| format!("sum({m}) AS {m}"))
        .collect();
    let nonzero: Vec<String> = MEASURES.iter().map(|(m, _)| format!("{m} != 0")).collect();
    let columns: Vec<&str> = MEASURES.iter().map(|(m, _)| *m).collect();
    format!(
        "INSERT INTO {db}.{table} ({key}, {cols}) \
         SELECT {key}, {summed} FROM ( \
           SELECT {of_ts} AS {bucket}, {dims}, {raw} FROM {db}.usage_events \
             WHERE toDate(ts) >= toDate(?) AND toDate(ts) <= toDate(?) GROUP BY {key} \
           UNION ALL \
           SELECT {key}, {rolled} FROM {db}.{table} \
             WHERE toDate({bucket}) >= toDate(?) AND toDate({bucket}) <= toDate(?) GROUP BY {key} \
         ) GROUP BY {key} HAVING {nonzero}",
        table = r.table,
        cols = columns.join(", "),
        summed = summed.join(", "),
        of_ts = r.of_ts,
        bucket = r.bucket,
        raw = raw.join(", "),
        rolled = rolled.join(", "),
        nonzero = nonzero.join(" OR "),
    )
}

/// Keys of `r` in `[from, to]` whose rollup totals differ from the raw rows'.
fn differing_sql(db: &str, r: &Rollup) -> String {
    let insert = reconcile_sql(db, r);
    let select = &insert[insert.find("SELECT").unwrap_or(0)..];
    format!("SELECT count() FROM ({select})")
}

/// What a reconciliation found (keys whose rollup differed from the raw rows), per rollup.
#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Reconciled {
    pub usage_daily: u64,
    pub usage_hourly: u64,
}

/// Brings every rollup to the raw rows' totals for the days `from ..= to` (`YYYY-MM-DD`);
/// returns how many keys it corrected. The hourly rollup is only reconciled where its
/// partitions are kept (retention drops older hours on purpose).
pub async fn reconcile(s: &ClickHouseSettings, from: &str, to: &str) -> Result<Reconciled, String> {
    let client = s.db_client();
    let mut out = Reconciled::default();
    for r in ROLLUPS {
        let from = match (r.bucket, s.hourly_retention_days) {
            ("hour", days) if days > 0 => {
                let first = crate::time::date(
                    crate::time::now_unix().saturating_sub(u64::from(days - 1) * 86_400),
                );
                first.as_str().max(from).to_string()
            }
            _ => from.to_string(),
        };
        if from.as_str() > to {
            continue;
        }
        let bind = |sql: &str| client.query(sql).bind(&from).bind(to).bind(&from).bind(to);
        let differing: u64 = bind(&differing_sql(&s.database, r))
            .fetch_one()
            .await
            .map_err(|e| format!("reconciling {}: {e}", r.table))?;
        if differing > 0 {
            bind(&reconcile_sql(&s.database, r))
                .execute()
                .await
                .map_err(|e| format!("reconciling {}: {e}", r.table))?;
            settle(s, r, &from, to).await?;
        }
        match r.table {
            "usage_daily" => out.usage_daily = differing,
            _ => out.usage_hourly = differing,
        }
    }
    Ok(out)
}

/// A key the rollup had and the raw rows did not now sums to zero, but its rows stay (and
/// show as an empty group) until a merge: merges the partitions holding such keys now, on
/// every node (SummingMergeTree drops a key whose measures are all zero when it merges).
async fn settle(s: &ClickHouseSettings, r: &Rollup, from: &str, to: &str) -> Result<(), String> {
    let key = format!("{}, {}", r.bucket, DIMENSIONS.join(", "));
    let zero: Vec<String> = MEASURES
        .iter()
        .map(|(m, _)| format!("sum({m}) = 0"))
        .collect();
    let sql = format!(
        "SELECT DISTINCT toUInt32({partition}) FROM (SELECT {key} FROM {table} \
         WHERE toDate({bucket}) >= toDate(?) AND toDate({bucket}) <= toDate(?) \
         GROUP BY {key} HAVING {zero})",
        partition = r.partition,
        table = r.table,
        bucket = r.bucket,
        zero = zero.join(" AND "),
    );
    let partitions: Vec<u32> = s
        .db_client()
        .query(&sql)
        .bind(from)
        .bind(to)
        .fetch_all()
        .await
        .map_err(|e| format!("settling {}: {e}", r.table))?;
    let local = super::cluster::local_table(s, r.table);
    for node in s.node_clients() {
        for p in &partitions {
            // A partition id is a number: safe to splice.
            node.query(&format!(
                "OPTIMIZE TABLE {}.{local} PARTITION {p} FINAL",
                s.database
            ))
            .execute()
            .await
            .map_err(|e| format!("merging {} partition {p}: {e}", r.table))?;
        }
    }
    Ok(())
}

/// The first and last day with raw rows (`None` when there are none).
pub async fn raw_days(s: &ClickHouseSettings) -> Result<Option<(String, String)>, String> {
    let (n, first, last): (u64, String, String) = s
        .db_client()
        .query("SELECT count(), toString(min(toDate(ts))), toString(max(toDate(ts))) FROM usage_events")
        .fetch_one()
        .await
        .map_err(|e| e.to_string())?;
    Ok((n > 0).then_some((first, last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_statement_names_every_dimension_and_measure_once() {
        let sql = reconcile_sql("mb", &ROLLUPS[0]);
        assert!(sql.starts_with("INSERT INTO mb.usage_daily (day, org, team,"));
        assert_eq!(sql.matches('?').count(), 4);
        for (m, _) in MEASURES {
            assert!(sql.contains(&format!("-sum({m}) AS {m}")), "{m}");
            assert!(sql.contains(&format!("{m} != 0")), "{m}");
        }
        assert!(sql.contains("requested_model AS model"));
        let count = differing_sql("mb", &ROLLUPS[1]);
        assert!(count.starts_with("SELECT count() FROM (SELECT hour, org"));
        assert!(!count.contains("INSERT"));
    }
}

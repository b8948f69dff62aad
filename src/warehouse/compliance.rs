//! Compliance operations on the warehouse: erasing a user's personal data from usage rows, and
//! retention by dropping whole monthly partitions (no TTL: 18.16 has none worth trusting, and a
//! dropped partition is instant and leaves no half-deleted month).

use super::ClickHouseSettings;
use std::time::{Duration, Instant};

/// What an erasure leaves in place of a user id.
pub const ERASED: &str = "erased";

/// Where personal data lives: every table with a column that names a person (or text a person
/// wrote), the columns that identify the user, and the columns cleared with them. Erasure
/// covers exactly these; the suite checks this list against the live schema, so a new table or
/// column that names a user cannot be missed.
pub struct Personal {
    pub table: &'static str,
    /// Columns compared with the user id and replaced by `ERASED` where they match.
    pub user_columns: &'static [&'static str],
    /// Columns emptied on the user's rows (client IP, free text).
    pub cleared: &'static [&'static str],
}

pub const PERSONAL: &[Personal] = &[
    Personal {
        table: "usage_events",
        user_columns: &["user", "end_user"],
        cleared: &["client_ip"],
    },
    Personal {
        table: "feedback",
        user_columns: &["user"],
        cleared: &["comment"],
    },
    Personal {
        table: "workflow_runs",
        user_columns: &["user"],
        cleared: &[],
    },
];

/// Personal columns erasure leaves in place, and why. The audit trail is the record of who did
/// what (kept under GDPR Art. 17(3)(b) and (e)), and its rows are hash-chained: rewriting
/// them would make the chain unverifiable. Its retention is the audit retention setting.
pub const KEPT: &[(&str, &str, &str)] = &[
    ("audit_events", "actor", "record of actions, hash-chained"),
    (
        "audit_events",
        "client_ip",
        "record of actions, hash-chained",
    ),
    (
        "audit_events",
        "user_agent",
        "record of actions, hash-chained",
    ),
];

/// Anonymises every row of `user` in every table of `PERSONAL` (as the authenticated user,
/// OpenAI's end-user field, or the author of feedback), in one org or all: the ids are
/// replaced and client IPs and free text cleared; tokens, cost and scores stay, so spend totals
/// and the rollups remain true. Waits for the mutations (at most `wait`); returns the number
/// of usage rows it covered and whether every mutation finished.
pub async fn erase_user(
    s: &ClickHouseSettings,
    user: &str,
    org: Option<&str>,
    wait: Duration,
) -> Result<(u64, bool), String> {
    let client = s.db_client();
    let mut usage_rows = 0;
    let mut touched = Vec::new();
    for p in PERSONAL {
        let scope = if org.is_some() { " AND org = ?" } else { "" };
        let any = p
            .user_columns
            .iter()
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let filter = format!("({any}){scope}");
        let mut count = client.query(&format!("SELECT count() FROM {} WHERE {filter}", p.table));
        for _ in p.user_columns {
            count = count.bind(user);
        }
        if let Some(o) = org {
            count = count.bind(o);
        }
        let rows: u64 = count.fetch_one().await.map_err(|e| e.to_string())?;
        if p.table == "usage_events" {
            usage_rows = rows;
        }
        if rows == 0 {
            continue;
        }
        let sets: Vec<String> = p
            .user_columns
            .iter()
            .map(|c| format!("{c} = if({c} = ?, ?, {c})"))
            .chain(p.cleared.iter().map(|c| format!("{c} = ''")))
            .collect();
        // A mutation runs where the rows are: each node's own table.
        let sql = format!(
            "ALTER TABLE {}.{} UPDATE {} WHERE {filter}",
            s.database,
            super::cluster::local_table(s, p.table),
            sets.join(", ")
        );
        for node in s.node_clients() {
            let mut alter = node.query(&sql);
            for _ in p.user_columns {
                alter = alter.bind(user).bind(ERASED);
            }
            for _ in p.user_columns {
                alter = alter.bind(user);
            }
            if let Some(o) = org {
                alter = alter.bind(o);
            }
            alter.execute().await.map_err(|e| e.to_string())?;
        }
        touched.push(p.table);
    }
    let mut done = true;
    for t in touched {
        done &= wait_mutations(s, t, wait).await?;
    }
    Ok((usage_rows, done))
}

/// Waits until `table` has no unfinished mutation on any node.
async fn wait_mutations(
    s: &ClickHouseSettings,
    table: &str,
    wait: Duration,
) -> Result<bool, String> {
    let table = super::cluster::local_table(s, table);
    let nodes = s.node_clients();
    let start = Instant::now();
    loop {
        let mut pending = 0u64;
        for node in &nodes {
            let n: u64 = node
                .query("SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0")
                .bind(&s.database)
                .bind(&table)
                .fetch_one()
                .await
                .map_err(|e| e.to_string())?;
            pending += n;
        }
        if pending == 0 {
            return Ok(true);
        }
        if start.elapsed() >= wait {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RetentionReport {
    /// First month kept (YYYYMM), per table; 0 when the table keeps everything.
    pub usage_cutoff: u32,
    pub audit_cutoff: u32,
    pub usage_partitions_dropped: Vec<String>,
    pub audit_partitions_dropped: Vec<String>,
    /// First day kept (YYYYMMDD) of the hourly rollup; 0 when it keeps everything. The daily
    /// rollup has no retention: spend history outlives the raw rows (for every month whose
    /// raw rows are kept, the rollups' totals equal theirs).
    pub hourly_cutoff: u32,
    pub hourly_partitions_dropped: Vec<String>,
}

/// The first month (YYYYMM) kept when keeping `months` months up to and including the month
/// of `now` (Unix seconds).
pub fn cutoff_month(now: u64, months: u32) -> u32 {
    let (y, m) = crate::time::year_month(now);
    let total = y * 12 + (i64::from(m) - 1) - (i64::from(months) - 1);
    (total / 12) as u32 * 100 + (total % 12) as u32 + 1
}

/// Drops the partitions older than the configured retention of each table: months of raw
/// usage and audit rows, days of the hourly rollup.
pub async fn apply_retention(s: &ClickHouseSettings, now: u64) -> Result<RetentionReport, String> {
    let mut report = RetentionReport::default();
    for (table, months) in [
        ("usage_events", s.usage_retention_months),
        ("audit_events", s.audit_retention_months),
    ] {
        if months == 0 {
            continue;
        }
        let cutoff = cutoff_month(now, months);
        let dropped = drop_before(s, table, cutoff).await?;
        if table == "usage_events" {
            report.usage_cutoff = cutoff;
            report.usage_partitions_dropped = dropped;
        } else {
            report.audit_cutoff = cutoff;
            report.audit_partitions_dropped = dropped;
        }
    }
    // Workflow history and eval results (model outputs) are usage of their own: they are kept
    // as long as the raw usage rows.
    if s.usage_retention_months > 0 {
        let cutoff = cutoff_month(now, s.usage_retention_months);
        for table in ["workflow_runs", "workflow_steps", "eval_results"] {
            drop_before(s, table, cutoff).await?;
        }
    }
    if s.hourly_retention_days > 0 {
        let first = now.saturating_sub(u64::from(s.hourly_retention_days - 1) * 86_400);
        let cutoff: u32 = crate::time::date(first)
            .replace('-', "")
            .parse()
            .unwrap_or(0);
        report.hourly_cutoff = cutoff;
        report.hourly_partitions_dropped = drop_before(s, "usage_hourly", cutoff).await?;
    }
    Ok(report)
}

async fn drop_before(
    s: &ClickHouseSettings,
    table: &str,
    cutoff: u32,
) -> Result<Vec<String>, String> {
    let local = super::cluster::local_table(s, table);
    let mut dropped: Vec<String> = Vec::new();
    // Each node drops the months it holds.
    for node in s.node_clients() {
        let parts: Vec<String> = node
            .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active ORDER BY partition")
            .bind(&s.database)
            .bind(&local)
            .fetch_all()
            .await
            .map_err(|e| e.to_string())?;
        for p in parts {
            // Partitions are toYYYYMM / toYYYYMMDD: a plain number, safe to splice.
            let Ok(month) = p.parse::<u32>() else {
                continue;
            };
            if month >= cutoff {
                continue;
            }
            node.query(&format!(
                "ALTER TABLE {}.{local} DROP PARTITION {month}",
                s.database
            ))
            .execute()
            .await
            .map_err(|e| format!("dropping {table} partition {month}: {e}"))?;
            if !dropped.contains(&p) {
                dropped.push(p);
            }
        }
    }
    dropped.sort();
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs() {
        // 2026-11-22
        let now = 1_795_305_600;
        assert_eq!(cutoff_month(now, 1), 202611);
        assert_eq!(cutoff_month(now, 3), 202609);
        assert_eq!(cutoff_month(now, 11), 202601);
        assert_eq!(cutoff_month(now, 12), 202512);
        assert_eq!(cutoff_month(now, 25), 202411);
    }
}

//! Compliance operations on the warehouse: erasing a user's personal data from usage rows, and
//! retention by dropping whole monthly partitions (no TTL: 18.16 has none worth trusting, and a
//! dropped partition is instant and leaves no half-deleted month).

use super::ClickHouseSettings;
use std::time::{Duration, Instant};

/// What an erasure leaves in place of a user id.
pub const ERASED: &str = "erased";

/// Anonymises every usage row of `user` (as the authenticated user or as OpenAI's end-user
/// field), in one org or all: the ids and the client IP are replaced, tokens and cost stay, so
/// spend totals and the rollups remain true. Waits for the mutation (at most `wait`); returns
/// the number of rows it covered and whether it finished.
pub async fn erase_user(
    s: &ClickHouseSettings,
    user: &str,
    org: Option<&str>,
    wait: Duration,
) -> Result<(u64, bool), String> {
    let client = s.db_client();
    let scope = if org.is_some() { " AND org = ?" } else { "" };
    let filter = format!("(user = ? OR end_user = ?){scope}");
    let mut count = client
        .query(&format!("SELECT count() FROM usage_events WHERE {filter}"))
        .bind(user)
        .bind(user);
    if let Some(o) = org {
        count = count.bind(o);
    }
    let rows: u64 = count.fetch_one().await.map_err(|e| e.to_string())?;
    if rows == 0 {
        return Ok((0, true));
    }
    let on_cluster = s.on_cluster();
    let mut alter = client
        .query(&format!(
            "ALTER TABLE usage_events{on_cluster} UPDATE \
             user = if(user = ?, ?, user), end_user = if(end_user = ?, ?, end_user), client_ip = '' \
             WHERE {filter}"
        ))
        .bind(user)
        .bind(ERASED)
        .bind(user)
        .bind(ERASED)
        .bind(user)
        .bind(user);
    if let Some(o) = org {
        alter = alter.bind(o);
    }
    alter.execute().await.map_err(|e| e.to_string())?;
    Ok((rows, wait_mutations(s, "usage_events", wait).await?))
}

/// Waits until `table` has no unfinished mutation.
async fn wait_mutations(
    s: &ClickHouseSettings,
    table: &str,
    wait: Duration,
) -> Result<bool, String> {
    let client = s.client();
    let start = Instant::now();
    loop {
        let pending: u64 = client
            .query("SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0")
            .bind(&s.database)
            .bind(table)
            .fetch_one()
            .await
            .map_err(|e| e.to_string())?;
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
}

/// The first month (YYYYMM) kept when keeping `months` months up to and including the month
/// of `now` (Unix seconds).
pub fn cutoff_month(now: u64, months: u32) -> u32 {
    let (y, m) = crate::time::year_month(now);
    let total = y * 12 + (i64::from(m) - 1) - (i64::from(months) - 1);
    (total / 12) as u32 * 100 + (total % 12) as u32 + 1
}

/// Drops the monthly partitions older than the configured retention of each table.
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
    Ok(report)
}

async fn drop_before(
    s: &ClickHouseSettings,
    table: &str,
    cutoff: u32,
) -> Result<Vec<String>, String> {
    let client = s.client();
    let parts: Vec<String> = client
        .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active ORDER BY partition")
        .bind(&s.database)
        .bind(table)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    let on_cluster = s.on_cluster();
    let mut dropped = Vec::new();
    for p in parts {
        // Partitions are toYYYYMM(ts): a plain number, safe to splice.
        let Ok(month) = p.parse::<u32>() else {
            continue;
        };
        if month >= cutoff {
            continue;
        }
        client
            .query(&format!(
                "ALTER TABLE {}.{table}{on_cluster} DROP PARTITION {month}",
                s.database
            ))
            .execute()
            .await
            .map_err(|e| format!("dropping {table} partition {month}: {e}"))?;
        dropped.push(p);
    }
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

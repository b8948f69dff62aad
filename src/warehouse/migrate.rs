//! Versioned migrations: `config/clickhouse/NNN_name.sql`, embedded in the binary, applied in
//! order and recorded in `<database>.schema_migrations`. Every statement is idempotent
//! (`IF NOT EXISTS`), so a run interrupted between a statement and its record is safely re-run.

use super::ClickHouseSettings;

/// (version, name, SQL with a `{database}` placeholder), written for one server;
/// `cluster::distribute` rewrites each statement for a cluster.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "usage_events",
        include_str!("../../config/clickhouse/001_usage_events.sql"),
    ),
    (
        2,
        "spend_daily",
        include_str!("../../config/clickhouse/002_spend_daily.sql"),
    ),
    (
        3,
        "audit_events",
        include_str!("../../config/clickhouse/003_audit_events.sql"),
    ),
    (
        4,
        "feedback",
        include_str!("../../config/clickhouse/004_feedback.sql"),
    ),
    (
        5,
        "audit_signature",
        include_str!("../../config/clickhouse/005_audit_signature.sql"),
    ),
    (
        6,
        "usage_rollups",
        include_str!("../../config/clickhouse/006_usage_rollups.sql"),
    ),
    (
        7,
        "finance",
        include_str!("../../config/clickhouse/007_finance.sql"),
    ),
    (
        8,
        "workflows",
        include_str!("../../config/clickhouse/008_workflows.sql"),
    ),
    (
        9,
        "evals",
        include_str!("../../config/clickhouse/009_evals.sql"),
    ),
];

/// The migration creating the attribution rollups: once applied, the rows already in
/// `usage_events` are reconciled into them (see `rollup`).
const ROLLUPS_VERSION: u32 = 6;

/// `(table, column)` of an `ALTER TABLE db.table … ADD COLUMN column …` statement: 18.16 has no
/// `ADD COLUMN IF NOT EXISTS`, so the runner checks the column itself to stay re-runnable.
fn added_column(stmt: &str) -> Option<(&str, &str)> {
    let rest = stmt.strip_prefix("ALTER TABLE ")?;
    let table = rest.split_whitespace().next()?;
    let table = table.rsplit('.').next()?;
    let (_, after) = rest.split_once(" ADD COLUMN ")?;
    let column = after.split_whitespace().next()?;
    Some((table, column))
}

fn render(sql: &str, s: &ClickHouseSettings) -> String {
    sql.replace("{database}", &s.database)
}

/// Statements of a migration file: split on `;` at line ends, comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(";\n")
        .chain(std::iter::once(""))
        .map(|s| s.trim().trim_end_matches(';').trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
    pub server: (u32, u32),
    /// Rollup keys the backfill filled in (when the rollups were created by this run).
    pub backfilled: Option<super::rollup::Reconciled>,
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub async fn run(s: &ClickHouseSettings) -> Result<Report, String> {
    if !valid_ident(&s.database) || s.cluster.as_deref().is_some_and(|c| !valid_ident(c)) {
        return Err("database and cluster names must be letters, digits and _".into());
    }
    let mut report = Report::default();
    // Each node keeps its own record of what it has applied: a node added later, or one that
    // was down during a run, catches up on the next.
    for (i, client) in s.node_clients().into_iter().enumerate() {
        let node = run_on(s, &client).await.map_err(|e| match &s.cluster {
            Some(_) => format!("node {}: {e}", s.nodes.get(i).map_or("?", |n| n.as_str())),
            None => e,
        })?;
        if i == 0 {
            report = node;
        } else {
            for v in node.applied {
                if !report.applied.contains(&v) {
                    report.applied.push(v);
                }
            }
        }
    }
    if report.applied.contains(&ROLLUPS_VERSION) {
        // Backfill once every node has the views (so no row is missed between them), over
        // the whole cluster through the distributed tables.
        if let Some((first, last)) = super::rollup::raw_days(s).await? {
            report.backfilled = Some(super::rollup::reconcile(s, &first, &last).await?);
        }
    }
    Ok(report)
}

async fn run_on(s: &ClickHouseSettings, client: &clickhouse::Client) -> Result<Report, String> {
    let server = super::server_version(client).await?;
    let exec = |sql: String| {
        let client = client.clone();
        async move {
            client
                .query(&sql)
                .execute()
                .await
                .map_err(|e| format!("{e}\n  in: {}", sql.lines().next().unwrap_or("")))
        }
    };
    exec(format!("CREATE DATABASE IF NOT EXISTS {}", s.database)).await?;
    exec(format!(
        "CREATE TABLE IF NOT EXISTS {}.schema_migrations \
         (version UInt32, name String, applied_at DateTime('UTC')) \
         ENGINE = MergeTree() ORDER BY version",
        s.database
    ))
    .await?;
    let done: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {}.schema_migrations ORDER BY version",
            s.database
        ))
        .fetch_all()
        .await
        .map_err(|e| format!("reading schema_migrations: {e}"))?;
    let mut report = Report {
        server,
        ..Default::default()
    };
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            report.already.push(*version);
            continue;
        }
        for stmt in statements(&render(sql, s))
            .iter()
            .flat_map(|st| super::cluster::distribute(st, s))
        {
            if let Some((table, column)) = added_column(&stmt) {
                let exists: u64 = client
                    .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
                    .bind(&s.database)
                    .bind(table)
                    .bind(column)
                    .fetch_one()
                    .await
                    .map_err(|e| format!("migration {version} {name}: {e}"))?;
                if exists > 0 {
                    continue;
                }
            }
            exec(stmt)
                .await
                .map_err(|e| format!("migration {version} {name}: {e}"))?;
        }
        exec(format!(
            "INSERT INTO {}.schema_migrations (version, name, applied_at) VALUES ({version}, '{name}', now())",
            s.database
        ))
        .await?;
        report.applied.push(*version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_splits() {
        let s = ClickHouseSettings {
            database: "mb".into(),
            cluster: Some("c1".into()),
            ..ClickHouseSettings::local("http://127.0.0.1:8123")
        };
        for (version, _, sql) in MIGRATIONS {
            let stmts = statements(&render(sql, &s));
            let want = match *version {
                ROLLUPS_VERSION => 5,
                7 => 4,
                8 | 9 => 2,
                _ => 1,
            };
            assert_eq!(stmts.len(), want);
            for st in &stmts {
                assert!(st.contains("mb.") && !st.contains('{'));
                assert!(!st.ends_with(';'));
                // On a cluster each table (and column) becomes the local one and its
                // distributed twin; a view writing into a table becomes one local view.
                let into = st.contains(" TO mb.");
                assert_eq!(
                    super::super::cluster::distribute(st, &s).len(),
                    if into { 1 } else { 2 }
                );
            }
        }
        let alter = statements(&render(MIGRATIONS[4].2, &s));
        assert_eq!(added_column(&alter[0]), Some(("audit_events", "sig")));
        let local = super::super::cluster::distribute(&alter[0], &s);
        assert_eq!(added_column(&local[0]), Some(("audit_events_local", "sig")));
        assert_eq!(added_column("CREATE TABLE x"), None);
    }
}

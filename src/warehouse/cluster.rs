//! The schema on a ClickHouse cluster. Each table the gateway writes or reads is, per node, a
//! local table `<name>_local` (`Replicated*MergeTree` on the server's `{shard}` / `{replica}`
//! macros, or a plain MergeTree when `replicated = false`) and, under the table's own name, a
//! `Distributed` table over them. Inserts and every query use the plain names, so they reach
//! all shards; mutations, partition drops, migrations and their bookkeeping run on each node's
//! local tables directly (no `ON CLUSTER`, so no distributed DDL queue is needed).
//!
//! Migrations are written for one node; `distribute` rewrites each statement for a cluster.

use super::ClickHouseSettings;

/// The sharding key of a distributed table: rows of one request, or one audit chain, stay on
/// one shard (a chain is verified in order; the spool's duplicate check reads by batch).
fn shard_key(table: &str) -> &'static str {
    match table {
        "usage_events" | "feedback" => "cityHash64(request_id)",
        "audit_events" => "cityHash64(chain)",
        _ => "rand()",
    }
}

/// The table holding a node's own rows: `<table>_local` on a cluster, the table otherwise.
pub fn local_table(s: &ClickHouseSettings, table: &str) -> String {
    if s.cluster.is_some() {
        format!("{table}_local")
    } else {
        table.to_string()
    }
}

/// `ENGINE = X()` → `ENGINE = ReplicatedX('<path>', '{replica}')` when replicated.
fn engine(stmt: &str, s: &ClickHouseSettings, local: &str) -> String {
    if !s.replicated {
        return stmt.to_string();
    }
    let Some(at) = stmt.find("ENGINE = ") else {
        return stmt.to_string();
    };
    let rest = &stmt[at + "ENGINE = ".len()..];
    let Some(open) = rest.find("()") else {
        return stmt.to_string();
    };
    let name = &rest[..open];
    format!(
        "{}ENGINE = Replicated{name}('/clickhouse/tables/{{shard}}/{}.{local}', '{{replica}}'){}",
        &stmt[..at],
        s.database,
        &rest[open + 2..]
    )
}

/// A view's statement reading the node's own rows: its source becomes the local table.
fn local_source(stmt: &str, db: &str) -> String {
    match stmt.rfind(&format!("FROM {db}.")) {
        Some(at) => {
            let head = &stmt[..at];
            let rest = &stmt[at + format!("FROM {db}.").len()..];
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            format!("{head}FROM {db}.{}_local{}", &rest[..end], &rest[end..])
        }
        None => stmt.to_string(),
    }
}

/// The statements that make one node's part of `stmt` on a cluster (the statement itself on a
/// single server).
pub fn distribute(stmt: &str, s: &ClickHouseSettings) -> Vec<String> {
    let Some(cluster) = s.cluster.as_deref() else {
        return vec![stmt.to_string()];
    };
    let db = &s.database;
    let prefix = format!("{db}.");
    let name_after = |head: &str| -> Option<String> {
        let rest = stmt.strip_prefix(head)?.strip_prefix(&prefix)?;
        Some(
            rest.split(|c: char| c.is_whitespace() || c == '(')
                .next()?
                .to_string(),
        )
    };
    let distributed = |table: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table} AS {db}.{table}_local \
             ENGINE = Distributed({cluster}, {db}, {table}_local, {})",
            shard_key(table)
        )
    };
    if let Some(table) = name_after("CREATE TABLE IF NOT EXISTS ") {
        let local = format!("{table}_local");
        let stmt = stmt.replacen(&format!("{db}.{table}"), &format!("{db}.{local}"), 1);
        return vec![engine(&stmt, s, &local), distributed(&table)];
    }
    let view_into = stmt
        .starts_with("CREATE MATERIALIZED VIEW ")
        .then(|| stmt.split_once(" TO "))
        .flatten();
    if let Some(target) = view_into
        .and_then(|(_, rest)| rest.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
    {
        // A view writing into a table of its own: each node's view reads the node's
        // local rows into the node's local target (the target's replication and the
        // distributed table over it do the rest); the view itself is never queried.
        let stmt = stmt.replacen(
            &format!(" TO {db}.{target}"),
            &format!(" TO {db}.{target}_local"),
            1,
        );
        return vec![local_source(&stmt, db)];
    }
    if let Some(view) = name_after("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
        let local = format!("{view}_local");
        let stmt = stmt.replacen(&format!("{db}.{view}"), &format!("{db}.{local}"), 1);
        let stmt = local_source(&stmt, db);
        return vec![engine(&stmt, s, &local), distributed(&view)];
    }
    if let Some(table) = name_after("ALTER TABLE ") {
        if stmt.contains(" ADD COLUMN ") {
            // Both the local table and the distributed one over it get the column.
            let local = stmt.replacen(&format!("{db}.{table}"), &format!("{db}.{table}_local"), 1);
            return vec![local, stmt.to_string()];
        }
    }
    vec![stmt.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(replicated: bool) -> ClickHouseSettings {
        let mut s = ClickHouseSettings::local("http://x:8123");
        s.database = "mb".into();
        s.cluster = Some("c2".into());
        s.nodes = vec!["http://a:8123".into(), "http://b:8123".into()];
        s.replicated = replicated;
        s
    }

    #[test]
    fn tables_views_and_columns_become_local_plus_distributed() {
        let s = settings(true);
        let t = distribute(
            "CREATE TABLE IF NOT EXISTS mb.usage_events (ts DateTime) ENGINE = MergeTree() ORDER BY ts",
            &s,
        );
        assert_eq!(
            t,
            [
                "CREATE TABLE IF NOT EXISTS mb.usage_events_local (ts DateTime) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/mb.usage_events_local', '{replica}') ORDER BY ts",
                "CREATE TABLE IF NOT EXISTS mb.usage_events AS mb.usage_events_local ENGINE = Distributed(c2, mb, usage_events_local, cityHash64(request_id))",
            ]
        );
        let v = distribute(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS mb.spend_daily\nENGINE = SummingMergeTree()\nORDER BY day\nAS SELECT toDate(ts) AS day FROM mb.usage_events\nGROUP BY day",
            &settings(false),
        );
        assert_eq!(
            v[0],
            "CREATE MATERIALIZED VIEW IF NOT EXISTS mb.spend_daily_local\nENGINE = SummingMergeTree()\nORDER BY day\nAS SELECT toDate(ts) AS day FROM mb.usage_events_local\nGROUP BY day"
        );
        assert!(v[1].contains("Distributed(c2, mb, spend_daily_local, rand())"));
        let to = distribute(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS mb.usage_daily_mv TO mb.usage_daily\nAS SELECT toDate(ts) AS day FROM mb.usage_events\nGROUP BY day",
            &s,
        );
        assert_eq!(
            to,
            ["CREATE MATERIALIZED VIEW IF NOT EXISTS mb.usage_daily_mv TO mb.usage_daily_local\nAS SELECT toDate(ts) AS day FROM mb.usage_events_local\nGROUP BY day"]
        );
        let a = distribute(
            "ALTER TABLE mb.audit_events ADD COLUMN sig String DEFAULT ''",
            &s,
        );
        assert_eq!(
            a,
            [
                "ALTER TABLE mb.audit_events_local ADD COLUMN sig String DEFAULT ''",
                "ALTER TABLE mb.audit_events ADD COLUMN sig String DEFAULT ''",
            ]
        );
        let mut single = s.clone();
        single.cluster = None;
        assert_eq!(
            distribute(
                "CREATE TABLE IF NOT EXISTS mb.x (a UInt8) ENGINE = MergeTree() ORDER BY a",
                &single
            )
            .len(),
            1
        );
    }
}

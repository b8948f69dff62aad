//! The ClickHouse warehouse: connection settings and versioned schema migrations (`model-bridge migrate`).
//! SQL stays portable across Debian's 18.16 and current servers (see DESIGN §4); anything newer
//! is gated on `version()`.

pub mod chain;
pub mod chargeback;
pub mod cluster;
pub mod compliance;
pub mod forecast;
pub mod migrate;
pub mod oneshot;
pub mod rollup;
pub mod rows;
pub mod signing;
pub mod sink;
pub mod sinks;
pub mod spend;
pub mod spool;
pub mod verify;
pub mod watch;

use crate::routing::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// Where usage and audit rows go.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    /// Cluster name (`remote_servers`): tables are local per node behind `Distributed` ones.
    pub cluster: Option<String>,
    /// HTTP URL of every node of the cluster: DDL, migrations, mutations and partition drops
    /// run on each (empty without a cluster).
    pub nodes: Vec<String>,
    /// Local tables are `Replicated*MergeTree` (on the `{shard}` / `{replica}` macros; needs
    /// ClickHouse Keeper) rather than plain MergeTree.
    pub replicated: bool,
    pub migrate_on_start: bool,
    pub batch_rows: usize,
    pub batch_interval: Duration,
    pub insert_timeout: Duration,
    pub max_inflight_inserts: usize,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub node: String,
    pub usage_retention_months: u32,
    pub audit_retention_months: u32,
    /// Days of the hourly rollup kept (0: keep all).
    pub hourly_retention_days: u32,
    pub retention_interval: Duration,
}

impl ClickHouseSettings {
    /// Defaults for a server at `url` (tests and tools; `serve` takes them from config).
    pub fn local(url: &str) -> Self {
        Self {
            url: url.to_string(),
            user: "default".into(),
            password: None,
            database: "model_bridge".into(),
            cluster: None,
            nodes: Vec::new(),
            replicated: true,
            migrate_on_start: false,
            batch_rows: 10_000,
            batch_interval: Duration::from_secs(1),
            insert_timeout: Duration::from_secs(5),
            max_inflight_inserts: 2,
            spool_dir: PathBuf::from("data/spool"),
            spool_max_bytes: 1 << 30,
            node: host_name(),
            usage_retention_months: 0,
            audit_retention_months: 0,
            hourly_retention_days: 35,
            retention_interval: Duration::ZERO,
        }
    }

    /// A client without a default database (migrations create it).
    pub fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            // 18.16 does not know the crate's schema validation queries.
            .with_validation(false);
        if let Some(p) = &self.password {
            c = c.with_password(p.expose());
        }
        c
    }

    /// A client for each node that DDL, mutations and partition drops run on: every node of
    /// the cluster, or the one server.
    pub fn node_clients(&self) -> Vec<clickhouse::Client> {
        if self.cluster.is_none() || self.nodes.is_empty() {
            return vec![self.client()];
        }
        self.nodes
            .iter()
            .map(|url| {
                let mut one = self.clone();
                one.url = url.clone();
                one.client()
            })
            .collect()
    }

    /// A client whose default database is ours (sinks, queries). On a cluster an insert is
    /// acknowledged only once every shard has its rows, so a spooled batch's duplicate check
    /// sees exactly what landed.
    pub fn db_client(&self) -> clickhouse::Client {
        let c = self.client().with_database(&self.database);
        if self.cluster.is_some() {
            c.with_setting("insert_distributed_sync", "1")
        } else {
            c
        }
    }

    /// Pipeline settings for one sink; each has its own spool below `spool_dir`.
    pub fn pipeline(&self, sink: &str, queue_capacity: usize) -> sink::PipelineSettings {
        sink::PipelineSettings {
            batch_rows: self.batch_rows,
            batch_interval: self.batch_interval,
            insert_timeout: self.insert_timeout,
            max_inflight_inserts: self.max_inflight_inserts,
            queue_capacity,
            spool_dir: self.spool_dir.join(sink),
            spool_max_bytes: self.spool_max_bytes,
            node: self.node.clone(),
        }
    }
}

/// Runs a warehouse call from synchronous code (CLI, start-up) on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f))
}

/// Runs `job` on a thread of its own with a runtime of its own — background warehouse work
/// (DDL, reconciliation) never shares the request workers — first after `first`, then after
/// the wait each run returns.
pub fn every(
    name: &str,
    first: Duration,
    mut job: impl FnMut(&tokio::runtime::Runtime) -> Duration + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let mut wait = first;
            loop {
                std::thread::sleep(wait);
                wait = job(&rt);
            }
        });
    if let Err(e) = spawned {
        log::error!("{name} thread: {e}");
    }
}

/// This machine's name, reduced to the characters batch ids and chain ids allow.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "node".into()
    } else {
        name
    }
}

/// `(major, minor)` of the server's `version()`.
pub async fn server_version(client: &clickhouse::Client) -> Result<(u32, u32), String> {
    let v: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(|e| format!("version(): {e}"))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

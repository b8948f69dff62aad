//! The ClickHouse warehouse: connection settings and versioned schema migrations (`model-bridge migrate`).
//! SQL stays portable across Debian's 18.16 and current servers (see DESIGN §4); anything newer
//! is gated on `version()`.

pub mod migrate;

use crate::routing::Secret;

/// Where usage and audit rows go.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    /// `ON CLUSTER <name>` for every DDL statement, when set.
    pub cluster: Option<String>,
}

impl ClickHouseSettings {
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

//! Finance: what the gateway does for the people who pay for it, beyond the request path —
//! allocations for chargeback, the snapshot of budgets and allocations written to the
//! warehouse per config generation, and the watch that turns budget crossings and spend
//! anomalies into metrics and signed webhooks.

pub mod allocation;
pub mod snapshot;
pub mod webhook;

/// `[finance]`.
#[derive(Debug, Clone)]
pub struct FinanceSettings {
    /// Zero: the watch is off.
    pub watch_interval: std::time::Duration,
    pub grains: Vec<crate::warehouse::spend::Grain>,
    pub webhook: Option<webhook::WebhookSettings>,
}
pub mod watch;

/// Inserts `rows` into `table` of the warehouse, bounded by the insert timeout (the finance
/// tables are written from the watch's thread, never from a request).
async fn insert<T: for<'a> clickhouse::Row<Value<'a> = T> + serde::Serialize>(
    s: &crate::warehouse::ClickHouseSettings,
    table: &str,
    rows: &[T],
) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let client = s.db_client();
    let t = s.insert_timeout;
    let work = async {
        let mut ins = client
            .insert::<T>(table)
            .await
            .map_err(|e| e.to_string())?
            .with_timeouts(Some(t), Some(t));
        for r in rows {
            ins.write(r).await.map_err(|e| e.to_string())?;
        }
        ins.end().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(t, work)
        .await
        .map_err(|_| format!("{table} insert timed out after {t:?}"))?
}

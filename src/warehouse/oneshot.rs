//! Audit events from one-off processes (the CLI): straight into ClickHouse on a chain of their
//! own. The CLI has no spool — a running gateway owns it — so a failed insert is an error the
//! operator sees, not a silent loss.

use super::chain::Chain;
use super::rows::AuditRow;
use super::ClickHouseSettings;
use crate::audit::AuditEvent;

pub async fn record(
    s: &ClickHouseSettings,
    signer: Option<ed25519_dalek::SigningKey>,
    event: AuditEvent,
) -> Result<(), String> {
    let mut chain = Chain::detached(&s.node, "cli").signed_by(signer);
    let mut row = AuditRow::from_event(event);
    chain.stamp(&mut row);
    let client = s.db_client();
    let t = s.insert_timeout;
    let work = async {
        let mut ins = client
            .insert::<AuditRow>("audit_events")
            .await
            .map_err(|e| e.to_string())?
            .with_timeouts(Some(t), Some(t));
        ins.write(&row).await.map_err(|e| e.to_string())?;
        ins.end().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(t, work)
        .await
        .map_err(|_| format!("audit insert timed out after {t:?}"))?
}

//! Which usage and audit sinks `serve` starts: JSON lines, or the ClickHouse warehouse (with
//! migrations first when `migrate_on_start` is set).

use crate::audit::{AuditSink, JsonLinesAudit};
use crate::config::raw::{AuditSinkKind, SinkKind};
use crate::config::Config;
use crate::usage::{JsonLinesSink, UsageSink};
use crate::warehouse::sinks::{
    ClickHouseAudit, ClickHouseFeedback, ClickHouseUsage, ClickHouseWorkflows,
};
use std::sync::Arc;
use std::time::Duration;

type Sinks = (Arc<dyn UsageSink>, Arc<dyn AuditSink>);

pub fn start(config: &Config) -> Result<Sinks, String> {
    if let Some(ch) = config.clickhouse.as_ref().filter(|c| c.migrate_on_start) {
        migrate(ch)?;
    }
    let usage: Arc<dyn UsageSink> = match (config.usage.sink, &config.clickhouse) {
        (SinkKind::Clickhouse, Some(ch)) => ClickHouseUsage::start(
            ch.db_client(),
            ch.pipeline("usage", config.usage.queue_capacity),
        )
        .map_err(|e| format!("usage sink: {e}"))?,
        (kind, _) => {
            let path = (kind == SinkKind::Jsonl).then(|| config.usage.path.clone());
            JsonLinesSink::start(
                path,
                config.usage.queue_capacity,
                config.usage.flush_interval,
            )
            .map_err(|e| format!("usage sink {}: {e}", config.usage.path.display()))?
        }
    };
    let audit: Arc<dyn AuditSink> = match (config.audit_sink, &config.clickhouse) {
        (AuditSinkKind::Clickhouse, Some(ch)) => ClickHouseAudit::start(
            ch.db_client(),
            ch.pipeline("audit", 16_384),
            config.audit_signing_key.clone(),
        )
        .map_err(|e| format!("audit sink: {e}"))?,
        _ => JsonLinesAudit::start(config.audit_path.clone())
            .map_err(|e| format!("audit sink {}: {e}", config.audit_path.display()))?,
    };
    if let Some(ch) = config
        .clickhouse
        .as_ref()
        .filter(|c| !c.retention_interval.is_zero())
    {
        schedule_retention(ch.clone(), audit.clone());
    }
    Ok((usage, audit))
}

/// The feedback sink, when a warehouse is configured.
pub fn feedback(config: &Config) -> Result<Option<Arc<ClickHouseFeedback>>, String> {
    let Some(ch) = &config.clickhouse else {
        return Ok(None);
    };
    ClickHouseFeedback::start(ch.db_client(), ch.pipeline("feedback", 16_384))
        .map(Some)
        .map_err(|e| format!("feedback sink: {e}"))
}

/// The workflow history sink (runs and steps), when a warehouse is configured.
pub fn workflows(config: &Config) -> Result<Option<Arc<ClickHouseWorkflows>>, String> {
    let Some(ch) = &config.clickhouse else {
        return Ok(None);
    };
    ClickHouseWorkflows::start(
        ch.db_client(),
        ch.pipeline("workflow_runs", 16_384),
        ch.pipeline("workflow_steps", 65_536),
    )
    .map(Some)
    .map_err(|e| format!("workflow history sink: {e}"))
}

/// Applies retention a minute after start and then every `retention_interval`, on a thread of
/// its own (DDL can take seconds; nothing here may touch the request path).
fn schedule_retention(ch: crate::warehouse::ClickHouseSettings, audit: Arc<dyn AuditSink>) {
    crate::warehouse::every("retention", Duration::from_secs(60), move |rt| {
        let now = crate::time::now_unix();
        match rt.block_on(crate::warehouse::compliance::apply_retention(&ch, now)) {
            Ok(r) => audit.record(crate::audit::AuditEvent {
                ts_ms: crate::time::now_unix_ms(),
                request_id: String::new(),
                actor: "gateway:retention".into(),
                org: None,
                action: "retention.apply",
                resource: format!("database:{}", ch.database),
                outcome: "succeeded",
                reason: None,
                before: None,
                after: serde_json::to_value(&r).ok(),
                client_ip: None,
                user_agent: None,
            }),
            Err(e) => log::warn!("scheduled retention: {e}"),
        }
        ch.retention_interval
    });
}

/// Applies migrations before serving; a gateway that cannot reach ClickHouse still starts
/// (rows spool until it answers), but one whose schema is wrong would spool forever, so a
/// migration that ClickHouse refuses stops the start.
fn migrate(ch: &crate::warehouse::ClickHouseSettings) -> Result<(), String> {
    match crate::warehouse::block_on(crate::warehouse::migrate::run(ch))? {
        Ok(r) => {
            log::info!("migrations: applied {:?}", r.applied);
            Ok(())
        }
        Err(e) if e.contains("connect") || e.contains("Network") => {
            log::warn!("migrations skipped, ClickHouse unreachable: {e}");
            Ok(())
        }
        Err(e) => Err(format!("migrations: {e}")),
    }
}

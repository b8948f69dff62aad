//! Warehouse subcommands: `migrate`, `audit verify`, `erase`, `retention apply`, and the audit
//! trail of CLI actions (ClickHouse when the audit sink is, JSON lines otherwise).

use crate::audit::{AuditEvent, AuditSink, JsonLinesAudit};
use crate::config::raw::AuditSinkKind;
use crate::config::Config;
use crate::warehouse::{block_on, compliance, migrate, oneshot, verify, ClickHouseSettings};
use std::time::Duration;

fn settings(cfg: &Config) -> Result<&ClickHouseSettings, String> {
    cfg.clickhouse
        .as_ref()
        .ok_or_else(|| format!("{} has no [clickhouse] section", cfg.path.display()))
}

/// Who the CLI acts as in the audit trail.
pub fn cli_actor() -> String {
    std::env::var("USER").map_or_else(|_| "cli".into(), |u| format!("cli:{u}"))
}

/// Records a CLI action where the gateway records its own.
pub fn audit(cfg: &Config, event: AuditEvent) -> Result<(), String> {
    match (&cfg.clickhouse, cfg.audit_sink) {
        (Some(ch), AuditSinkKind::Clickhouse) => {
            block_on(oneshot::record(ch, cfg.audit_signing_key.clone(), event))?
                .map_err(|e| format!("audit event not recorded in ClickHouse: {e}"))
        }
        _ => {
            let sink = JsonLinesAudit::start(cfg.audit_path.clone())
                .map_err(|e| format!("audit log {}: {e}", cfg.audit_path.display()))?;
            sink.record(event);
            if sink.flush(Duration::from_secs(5)) {
                Ok(())
            } else {
                Err("audit log not flushed".into())
            }
        }
    }
}

fn event(action: &'static str, resource: String, after: serde_json::Value) -> AuditEvent {
    AuditEvent {
        ts_ms: crate::time::now_unix_ms(),
        request_id: String::new(),
        actor: cli_actor(),
        org: None,
        action,
        resource,
        outcome: "succeeded",
        reason: None,
        before: None,
        after: Some(after),
        client_ip: None,
        user_agent: Some("model-bridge-cli".into()),
    }
}

pub fn run_migrate(cfg: &Config) -> Result<(), String> {
    let ch = settings(cfg)?;
    let r = block_on(migrate::run(ch))??;
    println!(
        "ClickHouse {}.{} at {}: database {} — applied {:?}, already applied {:?}",
        r.server.0, r.server.1, ch.url, ch.database, r.applied, r.already
    );
    Ok(())
}

/// Exit status: Ok(true) intact, Ok(false) broken.
pub fn audit_verify(cfg: &Config, public_key: Option<&str>) -> Result<bool, String> {
    let ch = settings(cfg)?;
    let key = match public_key {
        Some(k) => Some(crate::warehouse::signing::verifying_key(k)?),
        None => cfg.audit_verify_key,
    };
    if key.is_none() {
        println!("note: no public key given: hash chains are checked, signatures are not");
    }
    let r = block_on(verify::verify(&ch.db_client(), key.as_ref()))??;
    for n in &r.notes {
        println!("note: {n}");
    }
    match r.first_break {
        None => {
            println!(
                "audit trail intact: {} events in {} chains",
                r.rows, r.chains
            );
            Ok(true)
        }
        Some(b) => {
            println!("audit trail BROKEN: {b}");
            Ok(false)
        }
    }
}

pub fn erase(cfg: &Config, user: &str, org: Option<&str>) -> Result<(), String> {
    let ch = settings(cfg)?;
    if user.is_empty() {
        return Err("--user must not be empty".into());
    }
    let (rows, done) = block_on(compliance::erase_user(
        ch,
        user,
        org,
        Duration::from_secs(120),
    ))??;
    audit(
        cfg,
        AuditEvent {
            org: org.map(str::to_string),
            ..event(
                "user.erase",
                format!("user:{user}"),
                serde_json::json!({"usage_rows": rows, "finished": done, "org": org}),
            )
        },
    )?;
    println!(
        "{rows} usage rows of {user} anonymised{}",
        if done {
            ""
        } else {
            " (mutation still running in ClickHouse)"
        }
    );
    Ok(())
}

pub fn retention_apply(cfg: &Config) -> Result<(), String> {
    let ch = settings(cfg)?;
    let r = block_on(compliance::apply_retention(ch, crate::time::now_unix()))??;
    audit(
        cfg,
        event(
            "retention.apply",
            format!("database:{}", ch.database),
            serde_json::to_value(&r).unwrap_or_default(),
        ),
    )?;
    println!(
        "usage_events: kept from {} (dropped {:?}); audit_events: kept from {} (dropped {:?})",
        r.usage_cutoff, r.usage_partitions_dropped, r.audit_cutoff, r.audit_partitions_dropped
    );
    Ok(())
}

pub fn report_experiment(cfg: &Config, id: &str, org: Option<&str>) -> Result<(), String> {
    let ch = settings(cfg)?;
    let control = crate::experiments::control_of(cfg, id);
    let v = block_on(crate::experiments::report(
        &ch.db_client(),
        id,
        org,
        control,
    ))??;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

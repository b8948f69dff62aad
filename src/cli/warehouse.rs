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

/// `model-bridge migrate`: the control store's schema (when `[control]` is set) and the
/// ClickHouse schema (when `[clickhouse]` is).
pub fn run_migrate(cfg: &Config) -> Result<(), String> {
    if cfg.control.is_none() && cfg.clickhouse.is_none() {
        return Err(format!(
            "{} has neither [control] nor [clickhouse]",
            cfg.path.display()
        ));
    }
    if let Some(c) = &cfg.control {
        let applied = crate::control::migrate(c)?;
        println!("control store {}: applied {applied:?}", c.identity());
    }
    let Some(ch) = &cfg.clickhouse else {
        return Ok(());
    };
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

/// `model-bridge reconcile`: the rollups brought to the raw rows' totals; audited.
pub fn reconcile(cfg: &Config, from: Option<String>, to: Option<String>) -> Result<(), String> {
    use crate::warehouse::{rollup, spend};
    let ch = settings(cfg)?;
    let Some((first, last)) = block_on(rollup::raw_days(ch))?? else {
        println!("no usage rows: nothing to reconcile");
        return Ok(());
    };
    let (from, to) = (from.unwrap_or(first), to.unwrap_or(last));
    if !spend::valid_day(&from) || !spend::valid_day(&to) {
        return Err("--from and --to are YYYY-MM-DD days".into());
    }
    let r = block_on(rollup::reconcile(ch, &from, &to))??;
    audit(
        cfg,
        event(
            "rollups.reconcile",
            format!("database:{}", ch.database),
            serde_json::json!({"from": from, "to": to, "corrected": r}),
        ),
    )?;
    println!(
        "{from} to {to}: usage_daily {} keys corrected, usage_hourly {} keys corrected",
        r.usage_daily, r.usage_hourly
    );
    Ok(())
}

/// What `report spend` was asked.
pub struct SpendArgs<'a> {
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: &'a str,
    /// month, day or hour.
    pub period: Option<String>,
    pub org: Option<String>,
    /// `dimension=value` filters (cost_center=eng, project=apollo, …).
    pub filters: Vec<String>,
    pub format: &'a str,
}

/// `model-bridge report spend`: the spend API's answer as a table, CSV or JSON.
pub fn report_spend(cfg: &Config, a: SpendArgs) -> Result<(), String> {
    use crate::warehouse::spend;
    let ch = settings(cfg)?;
    let today = crate::time::date(crate::time::now_unix());
    let from = a.from.unwrap_or_else(|| format!("{}-01", &today[..7]));
    let to = a.to.unwrap_or(today);
    if !spend::valid_day(&from) || !spend::valid_day(&to) {
        return Err("--from and --to are YYYY-MM-DD days".into());
    }
    if !matches!(a.format, "table" | "csv" | "json") {
        return Err(format!(
            "unknown --format `{}` (table, csv or json)",
            a.format
        ));
    }
    let mut filters = Vec::new();
    for f in &a.filters {
        let (d, v) = f
            .split_once('=')
            .and_then(|(d, v)| Some((spend::filter_dimension(d)?, v)))
            .ok_or_else(|| {
                format!(
                    "--where `{f}`: dimension=value, over {}",
                    spend::ATTRIBUTES
                        .iter()
                        .filter(|d| **d != "org")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        filters.push((d, v.to_string()));
    }
    let q = spend::SpendQuery {
        org: a.org,
        from,
        to,
        group_by: spend::with_period(spend::parse_group_by(a.group_by)?, a.period.as_deref())?,
        filters,
    };
    let v = block_on(spend::spend(&ch.db_client(), &q))??;
    match a.format {
        "csv" => print!("{}", spend::to_csv(&v)?),
        "json" => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        _ => print!("{}", spend::to_table(&v)),
    }
    Ok(())
}

/// `model-bridge report chargeback`: the chargeback API's answer as a table, CSV or JSON.
pub fn report_chargeback(
    cfg: &Config,
    org: Option<&str>,
    from: Option<String>,
    to: Option<String>,
    format: &str,
) -> Result<(), String> {
    use crate::warehouse::{chargeback, spend};
    let ch = settings(cfg)?;
    let today = crate::time::date(crate::time::now_unix());
    let from = from.unwrap_or_else(|| format!("{}-01", &today[..7]));
    let to = to.unwrap_or(today);
    if !spend::valid_day(&from) || !spend::valid_day(&to) {
        return Err("--from and --to are YYYY-MM-DD days".into());
    }
    let lines = block_on(chargeback::lines(&ch.db_client(), org, &from, &to))??;
    match format {
        "csv" => print!("{}", chargeback::csv(&lines)?),
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&chargeback::json(org, &from, &to, &lines))
                .unwrap_or_default()
        ),
        "table" => {
            let total: i64 = lines.iter().map(|l| l.cost_nanousd).sum();
            println!(
                "{:<8}  {:<24}  {:>22}  {:>22}",
                "month", "cost_center", "cost_usd", "allocated_usd"
            );
            for l in &lines {
                println!(
                    "{:<8}  {:<24}  {:>22}  {:>22}",
                    l.month,
                    l.cost_center,
                    crate::usage::pricing::format_usd(l.cost_nanousd),
                    crate::usage::pricing::format_usd(l.allocated_nanousd)
                );
            }
            println!(
                "{:<8}  {:<24}  {:>22}",
                "TOTAL",
                "",
                crate::usage::pricing::format_usd(total)
            );
        }
        other => return Err(format!("unknown --format `{other}` (table, csv or json)")),
    }
    Ok(())
}

pub fn report_experiment(cfg: &Config, id: &str, org: Option<&str>) -> Result<(), String> {
    let ch = settings(cfg)?;
    let control = crate::experiments::control_of(cfg, id);
    let policy = cfg.auto_promote.iter().find(|p| p.experiment == id);
    let v = block_on(crate::experiments::report(
        &ch.db_client(),
        id,
        org,
        control,
        policy.map(|p| (&**p, None)),
    ))??;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

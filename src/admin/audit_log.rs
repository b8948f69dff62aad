//! The audit trail through the admin API: events filtered by actor, action, resource, outcome
//! and time (the caller's org; every org with `admin:all_orgs`), from ClickHouse when the
//! audit sink writes there, else from the JSON lines file; and the hash chain's verification
//! (ClickHouse only: the file has no chain).

use super::handlers::query;
use super::warehouse::percent_decode;
use super::{Ctx, Reply, ALL_ORGS};
use serde_json::{json, Value};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// The JSON lines file is read from its end, at most this much.
const FILE_TAIL: u64 = 16 << 20;

/// The filters of one question.
struct Filter {
    org: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    outcome: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    limit: usize,
}

impl Filter {
    fn parse(ctx: &Ctx<'_>) -> Result<Self, Reply> {
        let text = |n: &str| query(ctx, n).map(percent_decode).filter(|v| !v.is_empty());
        let time = |n: &str| -> Result<Option<u64>, Reply> {
            match text(n) {
                None => Ok(None),
                Some(t) => crate::time::parse_rfc3339(&t)
                    .or_else(|| crate::time::parse_rfc3339(&format!("{t}T00:00:00Z")))
                    .map(|s| Some(s * 1000))
                    .ok_or_else(|| {
                        Reply::error(
                            400,
                            "invalid_request_error",
                            format!("`{n}` is an RFC 3339 time or a YYYY-MM-DD day"),
                        )
                    }),
            }
        };
        let limit = match query(ctx, "limit").map(str::parse::<usize>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Reply::error(
                    400,
                    "invalid_request_error",
                    format!("limit is 1..={MAX_LIMIT}"),
                ))
            }
        };
        let org = match text("org").as_deref() {
            Some("*") if ctx.principal.allows(ALL_ORGS) => None,
            Some(o) if ctx.may_access_org(o) => Some(o.to_string()),
            Some(o) => return Err(Reply::error(404, "not_found", format!("No org `{o}`."))),
            None => Some(ctx.principal.org.to_string()),
        };
        Ok(Self {
            org,
            actor: text("actor"),
            action: text("action"),
            resource: text("resource"),
            outcome: text("outcome"),
            from_ms: time("from")?,
            to_ms: time("to")?,
            limit,
        })
    }

    fn keeps(&self, e: &Value) -> bool {
        let eq = |field: &str, want: &Option<String>| {
            want.as_deref().is_none_or(|w| e[field].as_str() == Some(w))
        };
        let contains = |field: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| e[field].as_str().is_some_and(|v| v.contains(w)))
        };
        let ts = e["ts_ms"].as_u64().unwrap_or(0);
        eq("org", &self.org)
            && contains("actor", &self.actor)
            && eq("action", &self.action)
            && contains("resource", &self.resource)
            && eq("outcome", &self.outcome)
            && self.from_ms.is_none_or(|f| ts >= f)
            && self.to_ms.is_none_or(|t| ts < t)
    }
}

/// `GET /admin/v1/audit?actor=&action=&resource=&outcome=&from=&to=&limit=&org=`: newest
/// first. `actor` and `resource` match a part; the others match whole.
pub async fn list(ctx: &Ctx<'_>) -> Reply {
    let f = match Filter::parse(ctx) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (source, events) = match ctx.live.config.audit_sink {
        crate::config::raw::AuditSinkKind::Clickhouse if ctx.live.config.clickhouse.is_some() => {
            match from_clickhouse(ctx, &f).await {
                Ok(e) => ("clickhouse", e),
                Err(e) => {
                    log::warn!("audit query: {e}");
                    return Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"));
                }
            }
        }
        _ => ("file", from_file(&ctx.live.config.audit_path, &f)),
    };
    Reply::ok(json!({"object": "list", "source": source, "data": events}))
}

async fn from_clickhouse(ctx: &Ctx<'_>, f: &Filter) -> Result<Vec<Value>, String> {
    let Some(ch) = &ctx.live.config.clickhouse else {
        return Ok(Vec::new());
    };
    let mut sql = String::from("SELECT ?fields FROM audit_events WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    let mut add = |clause: &str, v: String| {
        sql.push_str(clause);
        binds.push(v);
    };
    if let Some(o) = &f.org {
        add(" AND org = ?", o.clone());
    }
    if let Some(a) = &f.actor {
        add(" AND positionCaseInsensitive(actor, ?) > 0", a.clone());
    }
    if let Some(a) = &f.action {
        add(" AND action = ?", a.clone());
    }
    if let Some(r) = &f.resource {
        add(" AND positionCaseInsensitive(resource, ?) > 0", r.clone());
    }
    if let Some(o) = &f.outcome {
        add(" AND outcome = ?", o.clone());
    }
    let mut times: Vec<u64> = Vec::new();
    if let Some(t) = f.from_ms {
        sql.push_str(" AND ts_ms >= ?");
        times.push(t);
    }
    if let Some(t) = f.to_ms {
        sql.push_str(" AND ts_ms < ?");
        times.push(t);
    }
    sql.push_str(&format!(" ORDER BY ts_ms DESC, seq DESC LIMIT {}", f.limit));
    let mut q = ch.db_client().query(&sql);
    for b in &binds {
        q = q.bind(b.as_str());
    }
    for t in &times {
        q = q.bind(*t);
    }
    let rows = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        q.fetch_all::<crate::warehouse::rows::AuditRow>(),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(row_json).collect())
}

fn row_json(r: crate::warehouse::rows::AuditRow) -> Value {
    let parsed = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let text = |s: String| (!s.is_empty()).then_some(s);
    json!({
        "ts_ms": r.ts_ms,
        "request_id": text(r.request_id),
        "actor": r.actor,
        "org": text(r.org),
        "action": r.action,
        "resource": r.resource,
        "outcome": r.outcome,
        "reason": text(r.reason),
        "before": parsed(&r.before),
        "after": parsed(&r.after),
        "client_ip": text(r.client_ip),
        "chain": r.chain,
        "seq": r.seq,
        "hash": r.hash,
    })
}

/// The newest events of the JSON lines file that pass `f` (its last `FILE_TAIL` bytes).
fn from_file(path: &std::path::Path, f: &Filter) -> Vec<Value> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(FILE_TAIL);
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    // A tail starting mid-line drops that partial line.
    let skip = if start > 0 { 1 } else { 0 };
    let lines: Vec<&str> = text.lines().skip(skip).collect();
    let mut out: Vec<Value> = lines
        .into_iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| f.keeps(e))
        .take(f.limit)
        .collect();
    for e in &mut out {
        if let Some(o) = e.as_object_mut() {
            o.remove("user_agent");
        }
    }
    out
}

/// `GET /admin/v1/audit/verify`: recomputes every chain in ClickHouse.
pub async fn verify(ctx: &Ctx<'_>) -> Reply {
    let Some(ch) =
        ctx.live.config.clickhouse.as_ref().filter(|_| {
            ctx.live.config.audit_sink == crate::config::raw::AuditSinkKind::Clickhouse
        })
    else {
        return Reply::ok(json!({
            "verified": null,
            "reason": "The audit trail is a JSON lines file here; hash chains live in ClickHouse.",
        }));
    };
    let client = ch.db_client();
    let key = ctx.live.config.audit_verify_key.as_ref();
    let run = crate::warehouse::verify::verify(&client, key);
    match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(r)) => Reply::ok(json!({
            "verified": r.first_break.is_none(),
            "chains": r.chains,
            "rows": r.rows,
            "first_break": r.first_break,
            "notes": r.notes,
            "signed": key.is_some(),
        })),
        Ok(Err(e)) => Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}")),
        Err(_) => Reply::error(503, "warehouse_unavailable", "Verification timed out."),
    }
}

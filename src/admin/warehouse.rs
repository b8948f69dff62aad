//! Admin handlers over the ClickHouse warehouse: spend (the rollup's one definition) and the
//! erasure of a user's personal data.

use super::handlers::query;
use super::{Ctx, Reply, ALL_ORGS};
use crate::warehouse::{compliance, spend, ClickHouseSettings};
use serde_json::json;
use std::time::Duration;

fn warehouse<'a>(ctx: &'a Ctx<'_>) -> Result<&'a ClickHouseSettings, Reply> {
    ctx.live.config.clickhouse.as_ref().ok_or_else(|| {
        Reply::error(
            503,
            "warehouse_not_configured",
            "This gateway has no [clickhouse] section.",
        )
    })
}

/// `GET /admin/v1/spend?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=<dims>&period=month|day|hour
/// [&org=<id>|*][&<dim>=<value>…][&format=json|csv]`: the caller's org unless `org` names
/// another (which needs `admin:all_orgs`); `*` is every org. `<dims>` are the rollups'
/// attribution dimensions (cost_center, department, project, team, key_id, model, provider,
/// experiment, variant, org); each may also filter. CSV has one line per group.
pub async fn spend(ctx: &Ctx<'_>) -> Reply {
    let ch = match warehouse(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (from, to, csv) = match days_and_format(ctx) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let group_by =
        match spend::parse_group_by(&percent_decode(query(ctx, "group_by").unwrap_or("")))
            .and_then(|g| spend::with_period(g, query(ctx, "period")))
        {
            Ok(g) => g,
            Err(e) => return Reply::error(400, "invalid_request_error", e),
        };
    let org = match org_scope(ctx) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let q = spend::SpendQuery {
        org,
        from,
        to,
        group_by,
        filters: filters(ctx),
    };
    match spend::spend(&ch.db_client(), &q).await {
        Ok(v) if csv => match spend::to_csv(&v) {
            Ok(text) => Reply::text("text/csv; charset=utf-8", text),
            Err(e) => Reply::error(500, "api_error", e),
        },
        Ok(v) => Reply::ok(v),
        Err(e) => unavailable(e),
    }
}

/// The `from` / `to` days of a question (default: this month so far) and whether it asked
/// for CSV.
fn days_and_format(ctx: &Ctx<'_>) -> Result<(String, String, bool), Reply> {
    let today = crate::time::date(crate::time::now_unix());
    let month_start = format!("{}-01", &today[..7]);
    let from = query(ctx, "from").unwrap_or(&month_start).to_string();
    let to = query(ctx, "to").unwrap_or(&today).to_string();
    if !spend::valid_day(&from) || !spend::valid_day(&to) {
        return Err(Reply::error(
            400,
            "invalid_request_error",
            "from and to are YYYY-MM-DD days",
        ));
    }
    match query(ctx, "format").unwrap_or("json") {
        "json" => Ok((from, to, false)),
        "csv" => Ok((from, to, true)),
        other => Err(Reply::error(
            400,
            "invalid_request_error",
            format!("unknown format `{other}` (json or csv)"),
        )),
    }
}

/// The dimension filters of a spend question (`cost_center=…&project=…`), values decoded.
fn filters(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
    ctx.req
        .query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((spend::filter_dimension(k)?, percent_decode(v))))
        .collect()
}

/// The org a spend question is about: the caller's unless `org` names another (which needs
/// access to it) or `*` (every org, which needs `admin:all_orgs`).
fn org_scope(ctx: &Ctx<'_>) -> Result<Option<String>, Reply> {
    match query(ctx, "org") {
        Some("*") if ctx.principal.allows(ALL_ORGS) => Ok(None),
        Some("*") => Err(Reply::error(
            403,
            "permission_denied",
            format!("Spend of every org needs `{ALL_ORGS}`."),
        )),
        Some(o) if ctx.may_access_org(o) => Ok(Some(o.to_string())),
        Some(o) => Err(Reply::error(404, "not_found", format!("No org `{o}`."))),
        None => Ok(Some(ctx.principal.org.to_string())),
    }
}

/// The warehouse, org and cost center a forecast or anomaly question is about.
fn spend_scope<'a>(
    ctx: &'a Ctx<'_>,
) -> Result<(&'a ClickHouseSettings, Option<String>, Option<String>), Reply> {
    Ok((
        warehouse(ctx)?,
        org_scope(ctx)?,
        query(ctx, "cost_center").map(percent_decode),
    ))
}

fn unavailable(e: String) -> Reply {
    log::warn!("spend query: {e}");
    Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"))
}

/// `GET /admin/v1/spend/forecast[?org=…][&cost_center=…]`: this month so far, and where it ends
/// if the last four weeks' trend and weekday pattern hold.
pub async fn forecast(ctx: &Ctx<'_>) -> Reply {
    let (ch, org, cc) = match spend_scope(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cc = cc.as_deref();
    // The calendar-month budget of what was asked about (the org, or its cost center).
    let budget = org.as_deref().and_then(|o| {
        let org = ctx.live.config.orgs.get(o)?;
        let b = match cc {
            Some(c) => org.cost_centers.get(c)?.budget.as_ref()?,
            None => org.budget.as_ref()?,
        };
        matches!(b.period, crate::limits::spec::Period::Month).then_some(b.nano)
    });
    let f = match crate::warehouse::watch::month_forecast(
        &ch.db_client(),
        org.as_deref(),
        cc,
        budget,
        crate::time::now_unix(),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    Reply::ok(json!({
        "object": "spend.forecast",
        "org": org,
        "cost_center": cc,
        "month": f.month,
        "spent_nanousd": f.spent,
        "spent_usd": crate::usage::pricing::format_usd(f.spent),
        "forecast_nanousd": f.forecast,
        "forecast_usd": crate::usage::pricing::format_usd(f.forecast),
        "days_left": f.days_left,
        "budget_nanousd": f.budget,
        "budget_usd": f.budget.map(crate::usage::pricing::format_usd),
        "exhausted_on": f.exhausted_on,
        "method": "least-squares trend and weekday effect over the last 4 whole weeks",
    }))
}

/// `GET /admin/v1/spend/anomalies?from=…&to=…[&grain=day|hour][&org=…][&cost_center=…]`: the
/// days (or hours) whose spend departs from their seasonal baseline, with the models, keys and
/// projects that drove them. Hours read the hourly rollup, so only its retained weeks.
pub async fn anomalies(ctx: &Ctx<'_>) -> Reply {
    let (ch, org, cc) = match spend_scope(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let grain = match query(ctx, "grain").unwrap_or("day") {
        "day" => spend::Grain::Day,
        "hour" => spend::Grain::Hour,
        other => {
            return Reply::error(
                400,
                "invalid_request_error",
                format!("unknown grain `{other}` (day or hour)"),
            )
        }
    };
    let now = crate::time::now_unix();
    let today = now - now % 86_400;
    let day_of = |name: &str, default: u64| match query(ctx, name) {
        None => Ok(default),
        Some(d) if spend::valid_day(d) => {
            crate::time::parse_rfc3339(&format!("{d}T00:00:00Z")).ok_or(())
        }
        Some(_) => Err(()),
    };
    let default_from = match grain {
        spend::Grain::Day => today - 30 * 86_400,
        spend::Grain::Hour => today - 86_400,
    };
    let (Ok(from), Ok(to)) = (day_of("from", default_from), day_of("to", today)) else {
        return Reply::error(
            400,
            "invalid_request_error",
            "from and to are YYYY-MM-DD days",
        );
    };
    let longest = match grain {
        spend::Grain::Day => 366 * 86_400,
        spend::Grain::Hour => 31 * 86_400,
    };
    if to < from || to - from > longest {
        return Reply::error(
            400,
            "invalid_request_error",
            format!(
                "from must be before to, at most {} days apart",
                longest / 86_400
            ),
        );
    }
    let client = ch.db_client();
    let found = match crate::warehouse::watch::detect(
        &client,
        org.as_deref(),
        cc.as_deref(),
        grain,
        from,
        // Through the end of the last day asked about.
        to + 86_400 - grain.seconds(),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    let data: Vec<_> = found.iter().map(|a| a.json()).collect();
    Reply::ok(json!({
        "object": "list",
        "org": org,
        "cost_center": cc,
        "grain": grain,
        "from": crate::time::date(from),
        "to": crate::time::date(to),
        "data": data,
    }))
}

/// `GET /admin/v1/chargeback?from=…&to=…[&org=…|*][&format=json|csv]`: spend per cost center
/// per month with allocations applied (default: this month).
pub async fn chargeback(ctx: &Ctx<'_>) -> Reply {
    let ch = match warehouse(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let org = match org_scope(ctx) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (from, to, csv) = match days_and_format(ctx) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let lines = match crate::warehouse::chargeback::lines(
        &ch.db_client(),
        org.as_deref(),
        &from,
        &to,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    if csv {
        match crate::warehouse::chargeback::csv(&lines) {
            Ok(text) => Reply::text("text/csv; charset=utf-8", text),
            Err(e) => Reply::error(500, "api_error", e),
        }
    } else {
        Reply::ok(crate::warehouse::chargeback::json(
            org.as_deref(),
            &from,
            &to,
            &lines,
        ))
    }
}

/// `POST /admin/v1/orgs/{org}/users/{id}/erase`: anonymises the user's usage rows in the org.
pub async fn erase_user(ctx: &Ctx<'_>, org: &str, user: &str) -> Reply {
    let ch = match warehouse(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let user = percent_decode(user);
    match compliance::erase_user(ch, &user, Some(org), Duration::from_secs(30)).await {
        Ok((rows, finished)) => {
            ctx.audit(
                "user.erase",
                Some(org),
                format!("user:{user}"),
                None,
                Some(json!({"usage_rows": rows, "finished": finished, "org": org})),
            );
            Reply {
                status: if finished { 200 } else { 202 },
                body: json!({"user": user, "org": org, "usage_rows": rows, "finished": finished}),
                text: None,
            }
        }
        Err(e) => {
            log::warn!("erase: {e}");
            Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"))
        }
    }
}

/// `GET /admin/v1/experiments/{id}/report`: the caller's org's traffic, every org's with
/// `admin:all_orgs`.
pub async fn experiment_report(ctx: &Ctx<'_>, id: &str) -> Reply {
    let ch = match warehouse(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let org = (!ctx.principal.allows(ALL_ORGS)).then(|| ctx.principal.org.to_string());
    let control = crate::experiments::control_of(&ctx.live.config, id);
    let docs = ctx.shared.keys().map(|k| k.docs()).unwrap_or_default();
    let auto = policy_of(ctx, id).map(|p| {
        let promotion = crate::experiments::promote::promotion(&docs, p);
        (p, promotion)
    });
    match crate::experiments::report(&ch.db_client(), id, org.as_deref(), control, auto).await {
        Ok(v) => Reply::ok(v),
        Err(e) => {
            log::warn!("experiment report: {e}");
            Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"))
        }
    }
}

fn policy_of<'a>(ctx: &'a Ctx<'_>, id: &str) -> Option<&'a crate::experiments::promote::Policy> {
    ctx.live
        .config
        .auto_promote
        .iter()
        .find(|p| p.experiment == id)
        .map(|p| &**p)
}

/// `DELETE /admin/v1/experiments/{id}/promotion`: back to the configured weights, and no
/// further auto-promotion until the experiment's configuration changes.
pub fn revert_promotion(ctx: &Ctx<'_>, id: &str) -> Reply {
    let Some(p) = policy_of(ctx, id) else {
        return Reply::error(
            404,
            "not_found",
            format!("Experiment `{id}` has no auto_promote."),
        );
    };
    let Some(keys) = ctx.shared.keys() else {
        return Reply::error(409, "policy_not_writable", "Authentication is off.");
    };
    let docs = keys.docs();
    let Some(before) =
        crate::experiments::promote::promotion(&docs, p).filter(|r| r["state"] == "promoted")
    else {
        return Reply::error(
            404,
            "not_found",
            format!("Experiment `{id}` is not promoted."),
        );
    };
    let record = json!({
        "experiment": id, "alias": p.alias, "state": "held", "winner": null,
        "config_hash": p.config_hash, "at": crate::time::rfc3339(crate::time::now_unix()),
        "by": ctx.principal.actor(), "reverted": before.clone(),
    });
    let doc = crate::control::Doc {
        kind: crate::experiments::promote::DOC.into(),
        id: id.to_string(),
        org: String::new(),
        record: record.to_string(),
    };
    match keys.put_doc(crate::experiments::promote::DOC, id, Some(doc), false) {
        Ok(_) => {
            crate::metrics::METRICS
                .experiment_promoted
                .with_label_values(&[id])
                .set(0);
            ctx.audit(
                "experiment.revert",
                None,
                format!("experiment:{id}"),
                Some(before),
                Some(record.clone()),
            );
            Reply::ok(record)
        }
        Err(e) => super::policy::written(e, "The revert"),
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes() {
        assert_eq!(super::percent_decode("bob%40a.test"), "bob@a.test");
        assert_eq!(super::percent_decode("a%2"), "a%2");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }
}

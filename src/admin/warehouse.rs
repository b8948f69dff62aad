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

/// `GET /admin/v1/spend?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=cost_center,model,day|month
/// [&org=<id>|*][&cost_center=<id>][&format=json|csv]`: the caller's org unless `org` names
/// another (which needs `admin:all_orgs`); `*` is every org. CSV has one line per group.
pub async fn spend(ctx: &Ctx<'_>) -> Reply {
    let ch = match warehouse(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let today = crate::time::date(crate::time::now_unix());
    let month_start = format!("{}-01", &today[..7]);
    let from = query(ctx, "from").unwrap_or(&month_start).to_string();
    let to = query(ctx, "to").unwrap_or(&today).to_string();
    if !spend::valid_day(&from) || !spend::valid_day(&to) {
        return Reply::error(
            400,
            "invalid_request_error",
            "from and to are YYYY-MM-DD days",
        );
    }
    let csv = match query(ctx, "format").unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => {
            return Reply::error(
                400,
                "invalid_request_error",
                format!("unknown format `{other}` (json or csv)"),
            )
        }
    };
    let group_by = match spend::parse_group_by(query(ctx, "group_by").unwrap_or("")) {
        Ok(g) => g,
        Err(e) => return Reply::error(400, "invalid_request_error", e),
    };
    let org = match query(ctx, "org") {
        Some("*") if ctx.principal.allows(ALL_ORGS) => None,
        Some("*") => {
            return Reply::error(
                403,
                "permission_denied",
                format!("Spend of every org needs `{ALL_ORGS}`."),
            )
        }
        Some(o) if ctx.may_access_org(o) => Some(o.to_string()),
        Some(o) => return Reply::error(404, "not_found", format!("No org `{o}`.")),
        None => Some(ctx.principal.org.to_string()),
    };
    let q = spend::SpendQuery {
        org,
        from,
        to,
        group_by,
        cost_center: query(ctx, "cost_center").map(str::to_string),
    };
    match spend::spend(&ch.db_client(), &q).await {
        Ok(v) if csv => match spend::to_csv(&v) {
            Ok(text) => Reply::text("text/csv; charset=utf-8", text),
            Err(e) => Reply::error(500, "api_error", e),
        },
        Ok(v) => Reply::ok(v),
        Err(e) => {
            log::warn!("spend query: {e}");
            Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"))
        }
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
    match crate::experiments::report(&ch.db_client(), id, org.as_deref(), control).await {
        Ok(v) => Reply::ok(v),
        Err(e) => {
            log::warn!("experiment report: {e}");
            Reply::error(503, "warehouse_unavailable", format!("ClickHouse: {e}"))
        }
    }
}

fn percent_decode(s: &str) -> String {
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

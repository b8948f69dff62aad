//! Chargeback allocations through the API: a source's (`key:<id>`, `project:<name>`,
//! `team:<id>`) monthly spend split across the org's cost centers, the config file's
//! `[[orgs.<org>.allocations]]` kept in the control store (doc `allocation`, id
//! `<org>:<source>`). A source the file allocates stays read-only.

use super::policy::{check_config, docs_of, store, with_doc, written};
use super::{Ctx, Reply};
use crate::control::Doc;
use serde_json::{json, Map, Value};

/// `GET /admin/v1/orgs/{org}/allocations`: every allocation in force, the file's and the API's.
pub fn list(ctx: &Ctx<'_>, org: &str) -> Reply {
    let api: Vec<String> = ctx
        .shared
        .keys()
        .map(|k| docs_of(&k, "allocation", org))
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.id)
        .collect();
    let data: Vec<Value> = ctx.live.config.orgs[org]
        .allocations
        .iter()
        .map(|a| {
            let source = a.source();
            let split: Map<String, Value> = a
                .shares
                .iter()
                .map(|(cc, bp)| (cc.clone(), percent(*bp)))
                .collect();
            let by_api = api.contains(&format!("{org}:{source}"));
            json!({
                "source": source,
                "split": split,
                "managed_by": if by_api { "api" } else { "file" },
            })
        })
        .collect();
    Reply::ok(json!({"object": "list", "data": data}))
}

/// Basis points as the percentage the config file writes (at most two decimals).
fn percent(bp: u32) -> Value {
    if bp.is_multiple_of(100) {
        json!(bp / 100)
    } else {
        json!(f64::from(bp) / 100.0)
    }
}

/// `PUT /admin/v1/orgs/{org}/allocations/{source}`: `{"split": {"<cost center>": percent, …}}`,
/// summing to 100; creates or replaces the API's allocation of the source.
pub fn put(ctx: &Ctx<'_>, org: &str, source: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let split = match serde_json::from_slice::<Value>(ctx.req.body) {
        Ok(Value::Object(mut m))
            if m.len() == 1 && m.get("split").is_some_and(Value::is_object) =>
        {
            m.remove("split").unwrap_or_default()
        }
        _ => {
            return Reply::error(
                400,
                "invalid_request_error",
                "The body is {\"split\": {\"<cost center>\": <percent>, …}}.",
            )
        }
    };
    let id = format!("{org}:{source}");
    let before = docs_of(&k, "allocation", org)
        .into_iter()
        .find(|d| d.id == id);
    let in_file = ctx.live.config.orgs[org]
        .allocations
        .iter()
        .any(|a| a.source() == source);
    if in_file && before.is_none() {
        return Reply::error(
            409,
            "conflict",
            format!("`{source}` is allocated in the config file."),
        );
    }
    let record = json!({"source": source, "split": split});
    let doc = Doc {
        kind: "allocation".into(),
        id: id.clone(),
        org: org.to_string(),
        record: record.to_string(),
    };
    let docs = with_doc(&k, &doc);
    if let Err(r) = check_config(ctx, &docs) {
        return r;
    }
    match k.put_doc("allocation", &id, Some(doc), false) {
        Ok(_) => {
            let was = before.and_then(|d| serde_json::from_str(&d.record).ok());
            let status = if was.is_some() { 200 } else { 201 };
            ctx.audit(
                "allocation.put",
                Some(org),
                format!("allocation:{org}:{source}"),
                was,
                Some(record.clone()),
            );
            let mut shown = record;
            shown["org"] = json!(org);
            shown["managed_by"] = json!("api");
            Reply {
                status,
                body: shown,
                text: None,
            }
        }
        Err(e) => written(e, "The allocation"),
    }
}

/// `DELETE /admin/v1/orgs/{org}/allocations/{source}`: the API's allocation of the source.
pub fn delete(ctx: &Ctx<'_>, org: &str, source: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let id = format!("{org}:{source}");
    let Some(before) = docs_of(&k, "allocation", org)
        .into_iter()
        .find(|d| d.id == id)
    else {
        let in_file = ctx.live.config.orgs[org]
            .allocations
            .iter()
            .any(|a| a.source() == source);
        return if in_file {
            Reply::error(
                409,
                "conflict",
                format!("`{source}` is allocated in the config file."),
            )
        } else {
            Reply::error(404, "not_found", format!("No allocation of `{source}`."))
        };
    };
    match k.put_doc("allocation", &id, None, false) {
        Ok(_) => {
            ctx.audit(
                "allocation.delete",
                Some(org),
                format!("allocation:{org}:{source}"),
                serde_json::from_str(&before.record).ok(),
                None,
            );
            Reply::ok(json!({"source": source, "deleted": true}))
        }
        Err(e) => written(e, "The allocation"),
    }
}

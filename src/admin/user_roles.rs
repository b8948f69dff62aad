//! A user's role assignments in an org: the bindings of subject `user:<id>`, from the policy
//! files (read-only) and the control store, seen and changed as one user's roles with an
//! optional expiry. Assigning goes through the same checks as any binding (no escalation,
//! the user belongs to the org); unassigning removes the role from the user's API bindings.

use super::policy::{bind, binding_json, docs_of, store, written, BindingSpec};
use super::{Ctx, Reply};
use crate::control::Doc;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /admin/v1/orgs/{org}/users/{id}/roles`: every binding of the user that applies in the
/// org, whether it is in force now, and the roles the user holds now through them.
pub fn list(ctx: &Ctx<'_>, org: &str, user: &str) -> Reply {
    let subject = format!("user:{user}");
    let now = crate::time::now_unix();
    let rbac = &ctx.live.config.rbac;
    let api = ctx
        .shared
        .keys()
        .map(|k| docs_of(&k, "binding", org))
        .unwrap_or_default();
    let mut held: Vec<&str> = Vec::new();
    let assignments: Vec<Value> = rbac
        .bindings_of(&subject)
        .iter()
        .filter(|b| b.org.as_deref().is_none_or(|o| o == org))
        .map(|b| {
            let active = b.expires_at.is_none_or(|e| now < e);
            if active {
                held.extend(b.roles.iter().map(String::as_str));
            }
            let from_store = b.file.as_os_str() == "control-store";
            let id = from_store
                .then(|| api.iter().find(|d| same_binding(d, &subject, &b.roles)))
                .flatten()
                .map(|d| d.id.clone());
            json!({
                "roles": b.roles,
                "expires_at": b.expires_at.map(crate::time::rfc3339),
                "active": active,
                "managed_by": if from_store { "api" } else { "file" },
                "binding": id,
            })
        })
        .collect();
    held.sort_unstable();
    held.dedup();
    Reply::ok(json!({
        "object": "user.roles",
        "user": user,
        "org": org,
        "roles": held,
        "assignments": assignments,
    }))
}

fn same_binding(d: &Doc, subject: &str, roles: &[String]) -> bool {
    let v: Value = serde_json::from_str(&d.record).unwrap_or(Value::Null);
    v["subject"] == subject && v["roles"] == json!(roles)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assignment {
    roles: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /admin/v1/orgs/{org}/users/{id}/roles`: `{"roles": […], "expires_at": "…"}` binds
/// the roles to the user (one binding), checked as any binding is.
pub fn assign(ctx: &Ctx<'_>, org: &str, user: &str) -> Reply {
    match serde_json::from_slice::<Assignment>(ctx.req.body) {
        Ok(a) => bind(
            ctx,
            org,
            BindingSpec {
                subject: format!("user:{user}"),
                roles: a.roles,
                expires_at: a.expires_at,
            },
        ),
        Err(e) => Reply::error(
            400,
            "invalid_request_error",
            format!("Invalid role assignment: {e}"),
        ),
    }
}

/// `DELETE /admin/v1/orgs/{org}/users/{id}/roles/{role}`: takes the role out of each of the
/// user's API bindings in the org (a binding left with no role goes). A role the user holds
/// only through a policy file cannot be removed here.
pub fn unassign(ctx: &Ctx<'_>, org: &str, user: &str, role: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let subject = format!("user:{user}");
    // Callers name an org's own role by its short name; bindings store `<org>:<name>`.
    let own = format!("{org}:{role}");
    let names = |r: &Value| r.as_str().is_some_and(|r| r == role || r == own);
    let mut changed = Vec::new();
    for d in docs_of(&k, "binding", org) {
        let v: Value = serde_json::from_str(&d.record).unwrap_or(Value::Null);
        if v["subject"] != subject.as_str() {
            continue;
        }
        let roles = v["roles"].as_array().cloned().unwrap_or_default();
        if !roles.iter().any(names) {
            continue;
        }
        let mut after = v.clone();
        after["roles"] = Value::Array(roles.into_iter().filter(|r| !names(r)).collect());
        changed.push((d, after));
    }
    if changed.is_empty() {
        let in_file = ctx
            .live
            .config
            .rbac
            .bindings_of(&subject)
            .iter()
            .any(|b| b.roles.iter().any(|r| r == role || *r == own));
        return if in_file {
            Reply::error(
                409,
                "conflict",
                format!("`{user}` holds `{role}` through a policy file."),
            )
        } else {
            Reply::error(
                404,
                "not_found",
                format!("`{user}` has no API assignment of `{role}` in org `{org}`."),
            )
        };
    }
    for (d, after) in &changed {
        let empty = after["roles"].as_array().is_none_or(Vec::is_empty);
        let next = (!empty).then(|| Doc {
            record: after.to_string(),
            ..d.clone()
        });
        if let Err(e) = k.put_doc("binding", &d.id, next, false) {
            return written(e, "The assignment");
        }
        ctx.audit(
            "role.unassign",
            Some(org),
            format!("binding:{subject}"),
            Some(binding_json(d)),
            (!empty).then(|| after.clone()),
        );
    }
    Reply::ok(json!({"user": user, "org": org, "role": role, "removed": true}))
}

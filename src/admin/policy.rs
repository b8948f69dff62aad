//! Admin handlers for the policy the control store holds: an org's custom roles and its role
//! bindings (subjects `key:<id>`, `user:<id>`, `group:<name>` → roles, with an optional
//! expiry). File-declared roles and bindings stay read-only; these live in the store, reach
//! every replica through it, and are compiled into RBAC with the files.
//!
//! No escalation: a role is created, and a binding made, only when everything it would grant —
//! the role's permissions with its inheritance, or the bound roles' — is within what the
//! caller holds. A refusal is audited.

use super::handlers::{org_keys, user_org_elsewhere};
use super::{Ctx, Reply};
use crate::auth::store::Keys;
use crate::control::Doc;
use crate::rbac::Rbac;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The control store (none while authentication is off).
pub(super) fn store(ctx: &Ctx<'_>) -> Result<Arc<Keys>, Reply> {
    ctx.shared.keys().ok_or_else(|| {
        Reply::error(
            409,
            "policy_not_writable",
            "Authentication is off: there are no roles to manage.",
        )
    })
}

pub(super) fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A role name as the org's callers write it: the org's own custom role of that name when
/// there is one, else a file role.
pub(super) fn resolve(rbac: &Rbac, org: &str, name: &str) -> String {
    let own = format!("{org}:{name}");
    if rbac.has_role(&own) {
        own
    } else {
        name.to_string()
    }
}

/// Compiles the policy files with `docs` as the store's policy: what RBAC will be once the
/// change is written (its errors are the caller's).
pub(super) fn candidate(ctx: &Ctx<'_>, docs: &[Doc]) -> Result<Rbac, Reply> {
    let Some(a) = ctx.live.config.auth.as_ref() else {
        return Err(Reply::error(
            409,
            "policy_not_writable",
            "Authentication is off.",
        ));
    };
    let mut aliases: Vec<&str> = ctx.live.config.models.keys().map(String::as_str).collect();
    aliases.sort_unstable();
    Rbac::load_with(&a.policies, &aliases, Some(&crate::control::render(docs))).map_err(|errs| {
        let reasons: Vec<String> = errs
            .iter()
            .map(|e| format!("{} {}", e.path, e.reason).trim().to_string())
            .collect();
        Reply::error(400, "invalid_request_error", reasons.join("; "))
    })
}

/// Refuses (403, audited) when `grants` hold anything the caller does not.
pub(super) fn no_escalation(
    ctx: &Ctx<'_>,
    resource: &str,
    grants: &crate::rbac::Grants,
) -> Result<(), Reply> {
    if let Some(perm) = grants.uncovered_by(&ctx.principal.grants) {
        let reason = format!("would grant `{perm}`, which the caller does not hold");
        ctx.deny(resource.to_string(), &reason);
        return Err(Reply::error(
            403,
            "permission_denied",
            format!("This would grant permission `{perm}`, which you do not hold."),
        ));
    }
    Ok(())
}

pub(super) fn written(e: std::io::Error, what: &str) -> Reply {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Reply::error(409, "conflict", format!("{what} exists already."))
        }
        std::io::ErrorKind::NotConnected => Reply::error(
            503,
            "control_store_unavailable",
            format!("The control store is unreachable; {what} was not written. Retry later."),
        ),
        _ => {
            log::error!("control store: {e}");
            Reply::error(500, "store_error", format!("{what} could not be written."))
        }
    }
}

/// The store's documents as they would be with `doc` written: it replaces the document of
/// the same kind and id, if any (what a write's candidate config or RBAC is built from).
pub(super) fn with_doc(k: &Keys, doc: &Doc) -> Vec<Doc> {
    let mut docs: Vec<Doc> = k
        .docs()
        .iter()
        .filter(|d| !(d.kind == doc.kind && d.id == doc.id))
        .cloned()
        .collect();
    docs.push(doc.clone());
    docs
}

pub(super) fn docs_of(k: &Keys, kind: &str, org: &str) -> Vec<Doc> {
    k.docs()
        .iter()
        .filter(|d| d.kind == kind && d.org == org)
        .cloned()
        .collect()
}

fn role_json(d: &Doc) -> Value {
    let mut v: Value = serde_json::from_str(&d.record).unwrap_or(Value::Null);
    let name = d.id.split_once(':').map_or(d.id.as_str(), |(_, n)| n);
    v["id"] = json!(name);
    v["org"] = json!(d.org);
    v["managed_by"] = json!("api");
    v
}

pub(super) fn binding_json(d: &Doc) -> Value {
    let mut v: Value = serde_json::from_str(&d.record).unwrap_or(Value::Null);
    v["id"] = json!(d.id);
    v["managed_by"] = json!("api");
    v
}

/// `GET /admin/v1/orgs/{org}/roles`: the org's custom roles.
pub fn list_roles(ctx: &Ctx<'_>, org: &str) -> Reply {
    let Some(k) = ctx.shared.keys() else {
        return Reply::ok(json!({"object": "list", "data": []}));
    };
    let data: Vec<Value> = docs_of(&k, "role", org).iter().map(role_json).collect();
    Reply::ok(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    inherits: Vec<String>,
}

/// `POST /admin/v1/orgs/{org}/roles`: a custom role of the org (`{org}:{name}` in RBAC).
pub fn create_role(ctx: &Ctx<'_>, org: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let spec: RoleSpec = match serde_json::from_slice(ctx.req.body) {
        Ok(s) => s,
        Err(e) => return Reply::error(400, "invalid_request_error", format!("Invalid role: {e}")),
    };
    if !valid_name(&spec.name) {
        return Reply::error(
            400,
            "invalid_request_error",
            "A role name is 1-64 of a-z, 0-9, - and _.",
        );
    }
    let rbac = &ctx.live.config.rbac;
    let inherits: Vec<String> = spec
        .inherits
        .iter()
        .map(|i| resolve(rbac, org, i))
        .collect();
    let id = format!("{org}:{}", spec.name);
    let record = json!({"description": spec.description, "permissions": spec.permissions, "inherits": inherits});
    let doc = Doc {
        kind: "role".into(),
        id: id.clone(),
        org: org.to_string(),
        record: record.to_string(),
    };
    let docs = with_doc(&k, &doc);
    let next = match candidate(ctx, &docs) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let resource = format!("role:{id}");
    let grants = next.grants([id.as_str()], &[], org, crate::time::now_unix());
    if let Err(r) = no_escalation(ctx, &resource, &grants) {
        return r;
    }
    match k.put_doc("role", &id, Some(doc.clone()), true) {
        Ok(_) => {
            ctx.audit(
                "role.create",
                Some(org),
                resource,
                None,
                Some(role_json(&doc)),
            );
            Reply {
                status: 201,
                body: role_json(&doc),
                text: None,
            }
        }
        Err(e) => written(e, &format!("Role `{}`", spec.name)),
    }
}

/// `DELETE /admin/v1/orgs/{org}/roles/{name}`; refused while a binding of the store names it.
pub fn delete_role(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let id = format!("{org}:{name}");
    let Some(before) = docs_of(&k, "role", org).into_iter().find(|d| d.id == id) else {
        return Reply::error(404, "not_found", format!("No custom role `{name}`."));
    };
    let used = k
        .docs()
        .iter()
        .any(|d| d.kind == "binding" && d.record.contains(&format!("\"{id}\"")));
    if used {
        return Reply::error(
            409,
            "conflict",
            format!("Role `{name}` is bound; delete its bindings first."),
        );
    }
    match k.put_doc("role", &id, None, false) {
        Ok(_) => {
            ctx.audit(
                "role.delete",
                Some(org),
                format!("role:{id}"),
                Some(role_json(&before)),
                None,
            );
            Reply::ok(json!({"id": name, "deleted": true}))
        }
        Err(e) => written(e, &format!("Role `{name}`")),
    }
}

/// `GET /admin/v1/orgs/{org}/bindings`: the org's bindings made through the API.
pub fn list_bindings(ctx: &Ctx<'_>, org: &str) -> Reply {
    let Some(k) = ctx.shared.keys() else {
        return Reply::ok(json!({"object": "list", "data": []}));
    };
    let data: Vec<Value> = docs_of(&k, "binding", org)
        .iter()
        .map(binding_json)
        .collect();
    Reply::ok(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindingSpec {
    pub subject: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /admin/v1/orgs/{org}/bindings`: binds roles to a key, user or group of the org.
pub fn create_binding(ctx: &Ctx<'_>, org: &str) -> Reply {
    match serde_json::from_slice(ctx.req.body) {
        Ok(spec) => bind(ctx, org, spec),
        Err(e) => Reply::error(
            400,
            "invalid_request_error",
            format!("Invalid binding: {e}"),
        ),
    }
}

/// Writes one binding after checking its subject, roles and expiry, and that it grants
/// nothing the caller lacks.
pub(super) fn bind(ctx: &Ctx<'_>, org: &str, spec: BindingSpec) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let bad = |m: String| Reply::error(400, "invalid_request_error", m);
    if spec.roles.is_empty() {
        return bad("A binding names at least one role.".into());
    }
    match spec.subject.split_once(':') {
        Some(("key", id)) if org_keys(ctx, org).iter().any(|(k, _)| k.id == id) => {}
        Some(("key", id)) => {
            return Reply::error(404, "not_found", format!("No key `{id}` in org `{org}`."))
        }
        Some(("user", u)) if !u.is_empty() => {
            if let Some(other) = user_org_elsewhere(ctx, org, u) {
                return Reply::error(
                    403,
                    "permission_denied",
                    format!("User `{u}` belongs to org `{other}`."),
                );
            }
        }
        Some(("group", g)) if !g.is_empty() => {}
        _ => return bad("The subject is key:<id>, user:<id> or group:<name>.".into()),
    }
    if let Some(e) = &spec.expires_at {
        if crate::time::parse_rfc3339(e).is_none() {
            return bad(format!("expires_at `{e}` is not an RFC 3339 UTC time."));
        }
    }
    let rbac = &ctx.live.config.rbac;
    let roles: Vec<String> = spec.roles.iter().map(|r| resolve(rbac, org, r)).collect();
    // The visible id part of a fresh key: random, 12 characters.
    let id = crate::auth::keys::generate().1;
    let record =
        json!({"subject": spec.subject, "roles": roles, "org": org, "expires_at": spec.expires_at});
    let doc = Doc {
        kind: "binding".into(),
        id: id.clone(),
        org: org.to_string(),
        record: record.to_string(),
    };
    let docs = with_doc(&k, &doc);
    let next = match candidate(ctx, &docs) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let resource = format!("binding:{}", spec.subject);
    let grants = next.grants(roles.iter().map(String::as_str), &[], org, 0);
    if let Err(r) = no_escalation(ctx, &resource, &grants) {
        return r;
    }
    match k.put_doc("binding", &id, Some(doc.clone()), true) {
        Ok(_) => {
            ctx.audit(
                "binding.create",
                Some(org),
                resource,
                None,
                Some(binding_json(&doc)),
            );
            Reply {
                status: 201,
                body: binding_json(&doc),
                text: None,
            }
        }
        Err(e) => written(e, "The binding"),
    }
}

/// `DELETE /admin/v1/orgs/{org}/bindings/{id}`.
pub fn delete_binding(ctx: &Ctx<'_>, org: &str, id: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(before) = docs_of(&k, "binding", org).into_iter().find(|d| d.id == id) else {
        return Reply::error(404, "not_found", format!("No binding `{id}`."));
    };
    match k.put_doc("binding", id, None, false) {
        Ok(_) => {
            ctx.audit(
                "binding.delete",
                Some(org),
                format!("binding:{id}"),
                Some(binding_json(&before)),
                None,
            );
            Reply::ok(json!({"id": id, "deleted": true}))
        }
        Err(e) => written(e, "The binding"),
    }
}

/// What an org entry written through the API is: a team or a cost center (the config file's
/// `[orgs.<org>.teams.<id>]` / `[orgs.<org>.cost_centers.<id>]`, same fields).
#[derive(Clone, Copy)]
pub enum Entry {
    Team,
    CostCenter,
}

impl Entry {
    fn kind(self) -> &'static str {
        match self {
            Entry::Team => "team",
            Entry::CostCenter => "cost_center",
        }
    }

    fn exists(self, ctx: &Ctx<'_>, org: &str, id: &str) -> bool {
        let o = &ctx.live.config.orgs[org];
        match self {
            Entry::Team => o.teams.contains_key(id),
            Entry::CostCenter => o.cost_centers.contains_key(id),
        }
    }
}

/// The config this process would serve with `docs` as the store's documents: its errors are
/// the caller's (an unknown cost center, a bad budget).
pub(super) fn check_config(ctx: &Ctx<'_>, docs: &[Doc]) -> Result<(), Reply> {
    let path = ctx.shared.config_path();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Reply::error(500, "api_error", format!("config unreadable: {e}")))?;
    crate::config::Config::parse_with(&text, path, &|n| std::env::var(n).ok(), docs)
        .map(|_| ())
        .map_err(|e| {
            let reasons: Vec<String> =
                e.0.iter()
                    .map(|x| format!("{}: {}", x.path, x.reason))
                    .collect();
            Reply::error(400, "invalid_request_error", reasons.join("; "))
        })
}

/// `POST /admin/v1/orgs/{org}/teams` · `…/cost_centers`: `{"id": …}` and the fields the config
/// file takes for one (name, default_cost_center, limits, budget · name, department,
/// monthly_budget_usd, budget). A file-declared id cannot be replaced.
pub fn create_entry(ctx: &Ctx<'_>, org: &str, what: Entry) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let mut body: serde_json::Map<String, Value> = match serde_json::from_slice(ctx.req.body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Reply::error(
                400,
                "invalid_request_error",
                "The body is a JSON object with an `id`.",
            )
        }
    };
    let Some(id) = body
        .remove("id")
        .and_then(|v| v.as_str().map(str::to_string))
    else {
        return Reply::error(400, "invalid_request_error", "`id` is required.");
    };
    if !valid_name(&id) {
        return Reply::error(
            400,
            "invalid_request_error",
            "An id is 1-64 of a-z, 0-9, - and _.",
        );
    }
    if what.exists(ctx, org, &id) {
        return Reply::error(409, "conflict", format!("`{id}` exists already."));
    }
    let doc = Doc {
        kind: what.kind().into(),
        id: format!("{org}:{id}"),
        org: org.to_string(),
        record: Value::Object(body.clone()).to_string(),
    };
    let docs = with_doc(&k, &doc);
    if let Err(r) = check_config(ctx, &docs) {
        return r;
    }
    let mut shown = Value::Object(body);
    shown["id"] = json!(id);
    shown["org"] = json!(org);
    shown["managed_by"] = json!("api");
    match k.put_doc(what.kind(), &doc.id, Some(doc.clone()), true) {
        Ok(_) => {
            let action = match what {
                Entry::Team => "team.create",
                Entry::CostCenter => "cost_center.create",
            };
            ctx.audit(
                action,
                Some(org),
                format!("{}:{org}:{id}", what.kind()),
                None,
                Some(shown.clone()),
            );
            Reply {
                status: 201,
                body: shown,
                text: None,
            }
        }
        Err(e) => written(e, &format!("`{id}`")),
    }
}

/// `DELETE /admin/v1/orgs/{org}/teams/{id}` · `…/cost_centers/{id}`: only API-managed ones, and
/// only when nothing in the config still names it.
pub fn delete_entry(ctx: &Ctx<'_>, org: &str, id: &str, what: Entry) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let doc_id = format!("{org}:{id}");
    let Some(before) = docs_of(&k, what.kind(), org)
        .into_iter()
        .find(|d| d.id == doc_id)
    else {
        return if what.exists(ctx, org, id) {
            Reply::error(
                409,
                "conflict",
                format!("`{id}` is declared in the config file."),
            )
        } else {
            Reply::error(404, "not_found", format!("No `{id}`."))
        };
    };
    let docs: Vec<Doc> = k.docs().iter().filter(|d| **d != before).cloned().collect();
    if let Err(r) = check_config(ctx, &docs) {
        return Reply::error(
            409,
            "conflict",
            format!("`{id}` is still named: {}", r.body["error"]["message"]),
        );
    }
    match k.put_doc(what.kind(), &doc_id, None, false) {
        Ok(_) => {
            let action = match what {
                Entry::Team => "team.delete",
                Entry::CostCenter => "cost_center.delete",
            };
            let was: Value = serde_json::from_str(&before.record).unwrap_or(Value::Null);
            ctx.audit(
                action,
                Some(org),
                format!("{}:{doc_id}", what.kind()),
                Some(was),
                None,
            );
            Reply::ok(json!({"id": id, "deleted": true}))
        }
        Err(e) => written(e, &format!("`{id}`")),
    }
}

/// What `PUT …/limits` sets: an org's limits, per-key limits and budget (doc `org_limits`,
/// id the org), or one key's own limits and budget (doc `key_policy`, id `<org>:<key>`; the
/// config file's `[orgs.<org>.keys.<key>]`).
#[derive(Clone, Copy)]
pub enum LimitTarget<'a> {
    Org,
    Key(&'a str),
}

impl LimitTarget<'_> {
    fn fields(self) -> &'static [&'static str] {
        match self {
            LimitTarget::Org => &["limits", "key_limits", "budget", "workflow_limits"],
            LimitTarget::Key(_) => &["limits", "budget"],
        }
    }

    fn kind(self) -> &'static str {
        match self {
            LimitTarget::Org => "org_limits",
            LimitTarget::Key(_) => "key_policy",
        }
    }

    fn doc_id(self, org: &str) -> String {
        match self {
            LimitTarget::Org => org.to_string(),
            LimitTarget::Key(k) => format!("{org}:{k}"),
        }
    }

    fn resource(self, org: &str) -> String {
        match self {
            LimitTarget::Org => format!("org:{org}"),
            LimitTarget::Key(k) => format!("key:{k}"),
        }
    }

    fn action(self) -> &'static str {
        match self {
            LimitTarget::Org => "org.limits",
            LimitTarget::Key(_) => "key.limits",
        }
    }

    /// Whether the live config (file plus store) sets `field`.
    fn is_set(self, ctx: &Ctx<'_>, org: &str, field: &str) -> bool {
        let o = &ctx.live.config.orgs[org];
        match (self, field) {
            (LimitTarget::Org, "limits") => o.limits.is_some(),
            (LimitTarget::Org, "key_limits") => o.key_limits.is_some(),
            (LimitTarget::Org, "workflow_limits") => o.workflow_limits.is_some(),
            (LimitTarget::Org, _) => o.budget.is_some(),
            (LimitTarget::Key(k), "limits") => o.keys.get(k).is_some_and(|p| p.limits.is_some()),
            (LimitTarget::Key(k), _) => o.keys.get(k).is_some_and(|p| p.budget.is_some()),
        }
    }

    /// Refuses a key that is not the org's.
    fn check(self, ctx: &Ctx<'_>, org: &str) -> Result<(), Reply> {
        match self {
            LimitTarget::Key(k) if !org_keys(ctx, org).iter().any(|(r, _)| r.id == k) => Err(
                Reply::error(404, "not_found", format!("No key `{k}` in org `{org}`.")),
            ),
            _ => Ok(()),
        }
    }
}

/// `PUT /admin/v1/orgs/{org}/limits` · `PUT …/keys/{id}/limits`: the config file's syntax; a
/// field the file sets cannot be set here.
pub fn put_limits(ctx: &Ctx<'_>, org: &str, target: LimitTarget<'_>) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err(r) = target.check(ctx, org) {
        return r;
    }
    let body: serde_json::Map<String, Value> = match serde_json::from_slice(ctx.req.body) {
        Ok(Value::Object(m)) => m,
        _ => return Reply::error(400, "invalid_request_error", "The body is a JSON object."),
    };
    let fields = target.fields();
    if let Some(f) = body.keys().find(|f| !fields.contains(&f.as_str())) {
        return Reply::error(
            400,
            "invalid_request_error",
            format!("Unknown field `{f}` ({}).", fields.join(", ")),
        );
    }
    let doc_id = target.doc_id(org);
    let before = docs_of(&k, target.kind(), org)
        .into_iter()
        .find(|d| d.id == doc_id);
    let set_here = |f: &str| {
        before
            .as_ref()
            .and_then(|d| serde_json::from_str::<Value>(&d.record).ok())
            .is_some_and(|v| !v[f].is_null())
    };
    if let Some(f) = body
        .keys()
        .find(|f| target.is_set(ctx, org, f) && !set_here(f))
    {
        return Reply::error(
            409,
            "conflict",
            format!(
                "`{f}` of `{}` is set in the config file.",
                target.resource(org)
            ),
        );
    }
    let doc = Doc {
        kind: target.kind().into(),
        id: doc_id.clone(),
        org: org.to_string(),
        record: Value::Object(body.clone()).to_string(),
    };
    let docs = with_doc(&k, &doc);
    if let Err(r) = check_config(ctx, &docs) {
        return r;
    }
    match k.put_doc(target.kind(), &doc_id, Some(doc), false) {
        Ok(_) => {
            let was = before.and_then(|d| serde_json::from_str(&d.record).ok());
            ctx.audit(
                target.action(),
                Some(org),
                target.resource(org),
                was,
                Some(Value::Object(body.clone())),
            );
            let mut shown = json!({"org": org, "limits": body, "managed_by": "api"});
            if let LimitTarget::Key(id) = target {
                shown["key"] = json!(id);
            }
            Reply::ok(shown)
        }
        Err(e) => written(e, "The limits"),
    }
}

/// `DELETE /admin/v1/orgs/{org}/limits` · `…/keys/{id}/limits`: back to what the config file
/// sets.
pub fn delete_limits(ctx: &Ctx<'_>, org: &str, target: LimitTarget<'_>) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let doc_id = target.doc_id(org);
    let Some(before) = docs_of(&k, target.kind(), org)
        .into_iter()
        .find(|d| d.id == doc_id)
    else {
        return Reply::error(
            404,
            "not_found",
            format!(
                "`{}` has no limits set through the API.",
                target.resource(org)
            ),
        );
    };
    match k.put_doc(target.kind(), &doc_id, None, false) {
        Ok(_) => {
            let was = serde_json::from_str(&before.record).ok();
            ctx.audit(target.action(), Some(org), target.resource(org), was, None);
            Reply::ok(json!({"org": org, "deleted": true}))
        }
        Err(e) => written(e, "The limits"),
    }
}

//! Admin handlers: plain functions over the live config, the key store and the caller.

use super::policy::LimitTarget;
use super::{Ctx, Op, Params, Reply, ALL_ORGS};
use crate::auth::issue::{issue, redacted, KeySpec};
use crate::auth::keys::KeyRecord;
use crate::auth::store::KeyStore;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub async fn run(ctx: &Ctx<'_>, op: Op, p: &Params<'_>) -> Reply {
    let org = p.org.unwrap_or_default();
    let id = p.id.unwrap_or_default();
    match op {
        Op::Whoami => whoami(ctx),
        Op::ListOrgs => list_orgs(ctx),
        Op::GetOrg => get_org(ctx, org),
        Op::ListTeams => list_teams(ctx, org),
        Op::ListCostCenters => list_cost_centers(ctx, org),
        Op::ListUsers => list_users(ctx, org),
        Op::ListKeys => list_keys(ctx, org),
        Op::CreateKey => create_key(ctx, org),
        Op::PutOrgLimits => super::policy::put_limits(ctx, org, LimitTarget::Org),
        Op::DeleteOrgLimits => super::policy::delete_limits(ctx, org, LimitTarget::Org),
        Op::PutKeyLimits => super::policy::put_limits(ctx, org, LimitTarget::Key(id)),
        Op::DeleteKeyLimits => super::policy::delete_limits(ctx, org, LimitTarget::Key(id)),
        Op::ListAudit => super::audit_log::list(ctx).await,
        Op::VerifyAudit => super::audit_log::verify(ctx).await,
        Op::Status => super::status::status(ctx),
        Op::RequestReceipt => super::status::receipt(ctx, id).await,
        Op::ListExperiments => list_experiments(ctx),
        Op::ListAllocations => super::allocations::list(ctx, org),
        Op::ListWorkflows => super::workflows::list(ctx, org),
        Op::GetWorkflow => super::workflows::get(ctx, org, id),
        Op::PutWorkflowDraft => super::workflows::put_draft(ctx, org, id),
        Op::DeleteWorkflowDraft => super::workflows::delete_draft(ctx, org, id),
        Op::PublishWorkflow => super::workflows::publish(ctx, org, id),
        Op::DeployWorkflow => super::workflows::deploy(ctx, org, id),
        Op::UndeployWorkflow => super::workflows::undeploy(ctx, org, id),
        Op::PutAllocation => super::allocations::put(ctx, org, id),
        Op::DeleteAllocation => super::allocations::delete(ctx, org, id),
        Op::ListUserRoles => super::user_roles::list(ctx, org, id),
        Op::AssignUserRoles => super::user_roles::assign(ctx, org, id),
        Op::UnassignUserRole => {
            super::user_roles::unassign(ctx, org, id, p.role.unwrap_or_default())
        }
        Op::CreateTeam => super::policy::create_entry(ctx, org, super::policy::Entry::Team),
        Op::DeleteTeam => super::policy::delete_entry(ctx, org, id, super::policy::Entry::Team),
        Op::CreateCostCenter => {
            super::policy::create_entry(ctx, org, super::policy::Entry::CostCenter)
        }
        Op::DeleteCostCenter => {
            super::policy::delete_entry(ctx, org, id, super::policy::Entry::CostCenter)
        }
        Op::ListOrgRoles => super::policy::list_roles(ctx, org),
        Op::CreateOrgRole => super::policy::create_role(ctx, org),
        Op::DeleteOrgRole => super::policy::delete_role(ctx, org, id),
        Op::ListOrgBindings => super::policy::list_bindings(ctx, org),
        Op::CreateOrgBinding => super::policy::create_binding(ctx, org),
        Op::DeleteOrgBinding => super::policy::delete_binding(ctx, org, id),
        Op::GetKey => get_key(ctx, org, id),
        Op::RevokeKey => revoke_key(ctx, org, id),
        Op::RotateKey => rotate_key(ctx, org, id),
        Op::ListRoles => list_roles(ctx),
        Op::ListBindings => list_bindings(ctx),
        Op::Reload => reload(ctx),
        Op::Spend => super::warehouse::spend(ctx).await,
        Op::SpendForecast => super::warehouse::forecast(ctx).await,
        Op::SpendAnomalies => super::warehouse::anomalies(ctx).await,
        Op::Chargeback => super::warehouse::chargeback(ctx).await,
        Op::ExperimentReport => super::warehouse::experiment_report(ctx, id).await,
        Op::RevertPromotion => super::warehouse::revert_promotion(ctx, id),
        Op::ListEvals => super::evals::list(ctx),
        Op::StartEvalRun => super::evals::start(ctx, id),
        Op::GetEvalRun => super::evals::get(ctx, id),
        Op::CompareEvalRuns => super::evals::compare_runs(ctx),
        Op::ListDatasets => super::evals::list_datasets(ctx).await,
        Op::RegisterDataset => super::evals::register_dataset(ctx, id).await,
        Op::EraseUser => super::warehouse::erase_user(ctx, org, id).await,
    }
}

pub(super) fn query<'a>(ctx: &'a Ctx<'_>, name: &str) -> Option<&'a str> {
    ctx.req
        .query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One page of `items` sorted by id: `limit` (1..=100) after the cursor `after`.
fn page(ctx: &Ctx<'_>, items: Vec<(String, Value)>) -> Reply {
    let limit = match query(ctx, "limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Reply::error(400, "invalid_request_error", "limit must be 1 to 100"),
    };
    let after = query(ctx, "after");
    let rest: Vec<(String, Value)> = items
        .into_iter()
        .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
        .collect();
    let has_more = rest.len() > limit;
    let data: Vec<(String, Value)> = rest.into_iter().take(limit).collect();
    let last_id = data.last().map(|(id, _)| id.clone());
    Reply::ok(json!({
        "object": "list",
        "data": data.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "has_more": has_more,
        "last_id": last_id,
    }))
}

fn whoami(ctx: &Ctx<'_>) -> Reply {
    let p = ctx.principal;
    // The admin permissions the caller holds, of those the routes need: what a client (the
    // console) may offer; the routes still decide.
    let mut can: Vec<&str> = super::ROUTES
        .iter()
        .filter_map(|r| r.permission)
        .filter(|perm| p.allows(perm))
        .collect();
    can.sort_unstable();
    can.dedup();
    let writable = ctx.live.config.admin_writable;
    Reply::ok(json!({
        "org": p.org.as_ref(),
        "team": p.team.as_deref(),
        "user": p.user.as_deref(),
        "key_id": p.key_id.as_deref(),
        "roles": p.grants.role_names(),
        "all_orgs": p.allows(ALL_ORGS),
        "can": can,
        "admin_writable": writable,
    }))
}

/// `GET /admin/v1/experiments`: the splits of aliases the caller's org can use.
fn list_experiments(ctx: &Ctx<'_>) -> Reply {
    let all = ctx.principal.allows(ALL_ORGS);
    let mut data: Vec<Value> = ctx
        .live
        .config
        .models
        .values()
        .filter(|m| all || m.visible_to(&ctx.principal.org))
        .filter_map(|m| {
            let s = m.split.as_ref()?;
            Some(json!({
                "id": s.experiment.as_ref(),
                "alias": m.alias.as_ref(),
                "variants": s.variants.iter().map(|v| json!({"name": v.name.as_ref(), "weight": v.weight})).collect::<Vec<_>>(),
                "start": crate::time::rfc3339(s.start),
                "end": s.end.map(crate::time::rfc3339),
            }))
        })
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Reply::ok(json!({"object": "list", "data": data}))
}

fn org_json(ctx: &Ctx<'_>, id: &str) -> Value {
    let o = &ctx.live.config.orgs[id];
    json!({
        "id": id,
        "name": o.name,
        "default_cost_center": o.default_cost_center,
        "teams": o.teams.keys().collect::<Vec<_>>(),
        "cost_centers": o.cost_centers.keys().collect::<Vec<_>>(),
        "managed_by": "config",
    })
}

fn list_orgs(ctx: &Ctx<'_>) -> Reply {
    let items = ctx
        .live
        .config
        .orgs
        .keys()
        .filter(|o| ctx.may_access_org(o))
        .map(|o| (o.clone(), org_json(ctx, o)))
        .collect();
    page(ctx, items)
}

fn get_org(ctx: &Ctx<'_>, org: &str) -> Reply {
    Reply::ok(org_json(ctx, org))
}

fn list_teams(ctx: &Ctx<'_>, org: &str) -> Reply {
    let o = &ctx.live.config.orgs[org];
    let items = o
        .teams
        .iter()
        .map(|(id, t)| (id.clone(), json!({"id": id, "org": org, "name": t.name, "default_cost_center": t.default_cost_center,
                                           "managed_by": managed_by("team", org, id)})))
        .collect();
    page(ctx, items)
}

/// `api` for an entry the control store added, `file` otherwise.
fn managed_by(kind: &str, org: &str, id: &str) -> &'static str {
    let doc = format!("{org}:{id}");
    if crate::control::docs()
        .iter()
        .any(|d| d.kind == kind && d.id == doc)
    {
        "api"
    } else {
        "file"
    }
}

fn list_cost_centers(ctx: &Ctx<'_>, org: &str) -> Reply {
    let o = &ctx.live.config.orgs[org];
    let items = o
        .cost_centers
        .iter()
        .map(|(id, c)| {
            (
                id.clone(),
                json!({"id": id, "org": org, "name": c.name, "department": c.department,
                "managed_by": managed_by("cost_center", org, id),
                "budget": c.budget.as_ref().map(|b| json!({
                    "usd": crate::usage::pricing::format_usd(b.nano),
                    "period": match b.period {
                        crate::limits::spec::Period::Month => "month".to_string(),
                        crate::limits::spec::Period::Rolling { days } => format!("{days}d"),
                    },
                    "soft": b.soft,
                }))}),
            )
        })
        .collect();
    page(ctx, items)
}

pub(super) fn org_keys(ctx: &Ctx<'_>, org: &str) -> Vec<(KeyRecord, &'static str)> {
    let mut out: Vec<(KeyRecord, &'static str)> = Vec::new();
    if let Some(a) = &ctx.live.config.auth {
        out.extend(
            a.keys
                .values()
                .filter(|k| k.org == org)
                .map(|k| ((**k).clone(), "config")),
        );
    }
    if let Some(store) = ctx.shared.keys() {
        out.extend(
            store
                .list(Some(org))
                .into_iter()
                .map(|k| ((*k).clone(), "store")),
        );
    }
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out
}

fn key_json(k: &KeyRecord, source: &str) -> Value {
    let mut v = redacted(k);
    v["managed_by"] = json!(source);
    v["active"] = json!(k.is_active(crate::time::now_unix()));
    v["object"] = json!("key");
    v
}

fn list_users(ctx: &Ctx<'_>, org: &str) -> Reply {
    let mut users: BTreeSet<String> = org_keys(ctx, org)
        .into_iter()
        .filter_map(|(k, _)| k.user)
        .collect();
    for b in ctx.live.config.rbac.bindings() {
        if b.org.as_deref() == Some(org) {
            if let Some(u) = b.subject.strip_prefix("user:") {
                users.insert(u.to_string());
            }
        }
    }
    let items = users
        .into_iter()
        .map(|u| (u.clone(), json!({"id": u, "org": org})))
        .collect();
    page(ctx, items)
}

fn list_keys(ctx: &Ctx<'_>, org: &str) -> Reply {
    let items = org_keys(ctx, org)
        .into_iter()
        .map(|(k, src)| (k.id.clone(), key_json(&k, src)))
        .collect();
    page(ctx, items)
}

fn find_key(ctx: &Ctx<'_>, org: &str, id: &str) -> Option<(KeyRecord, &'static str)> {
    org_keys(ctx, org).into_iter().find(|(k, _)| k.id == id)
}

fn get_key(ctx: &Ctx<'_>, org: &str, id: &str) -> Reply {
    match find_key(ctx, org, id) {
        Some((k, src)) => Reply::ok(key_json(&k, src)),
        None => Reply::error(404, "not_found", format!("No key `{id}`.")),
    }
}

/// A caller may never mint a credential that can do more than it can itself. The key's
/// *effective* grants count, not just the roles it names: its roles with their inheritance and
/// every binding its user would pick up in `org`. Explicit roles must also be held by the caller
/// (or any, with `admin:roles:assign_any` — which still cannot exceed the caller's own
/// permissions). A key may name only a user of its own org.
fn check_grant(
    ctx: &Ctx<'_>,
    org: &str,
    roles: &[String],
    user: Option<&str>,
) -> Result<(), Reply> {
    let denied = |msg: String| Err(Reply::error(403, "permission_denied", msg));
    let caller = &ctx.principal.grants;
    if !ctx.principal.allows("admin:roles:assign_any") {
        if let Some(r) = roles.iter().find(|r| !caller.holds(r)) {
            return denied(format!(
                "You cannot grant role `{r}`, which you do not hold."
            ));
        }
    }
    let mut subjects = Vec::new();
    if let Some(u) = user {
        if let Some(other) = user_org_elsewhere(ctx, org, u) {
            return denied(format!(
                "User `{u}` belongs to org `{other}`; a key may only name a user of its own org."
            ));
        }
        subjects.push(format!("user:{u}"));
    }
    let rbac = &ctx.live.config.rbac;
    let effective = rbac.grants(
        roles.iter().map(String::as_str),
        &subjects,
        org,
        crate::time::now_unix(),
    );
    if let Some(perm) = effective.uncovered_by(caller) {
        return denied(format!(
            "The key would hold permission `{perm}` (through its roles or its user's bindings), which you do not hold."
        ));
    }
    Ok(())
}

/// Another org that `user` belongs to, if any: a binding of the user scoped to another org, or a
/// key of another org naming the user.
pub(super) fn user_org_elsewhere(ctx: &Ctx<'_>, org: &str, user: &str) -> Option<String> {
    let subject = format!("user:{user}");
    let bound = ctx
        .live
        .config
        .rbac
        .bindings_of(&subject)
        .iter()
        .filter_map(|b| b.org.clone())
        .find(|o| o != org);
    if bound.is_some() {
        return bound;
    }
    let mut keys: Vec<std::sync::Arc<KeyRecord>> = Vec::new();
    if let Some(a) = &ctx.live.config.auth {
        keys.extend(a.keys.values().cloned());
    }
    if let Some(store) = ctx.shared.keys() {
        keys.extend(store.list(None));
    }
    keys.into_iter()
        .find(|k| k.org != org && k.user.as_deref() == Some(user))
        .map(|k| k.org.clone())
}

fn store(ctx: &Ctx<'_>) -> Result<std::sync::Arc<crate::auth::store::Keys>, Reply> {
    ctx.shared
        .keys()
        .ok_or_else(|| Reply::error(503, "unavailable", "No key store is configured."))
}

/// A key store write that failed: 503 while the shared control store is unreachable (the
/// write can be retried), 500 otherwise.
fn store_failed(e: std::io::Error, what: &str) -> Reply {
    log::error!("key store: {e}");
    if e.kind() == std::io::ErrorKind::NotConnected {
        Reply::error(
            503,
            "control_store_unavailable",
            format!("The control store is unreachable; the key was not {what}. Retry later."),
        )
    } else {
        Reply::error(500, "store_error", format!("The key could not be {what}."))
    }
}

fn created(
    ctx: &Ctx<'_>,
    org: &str,
    key: String,
    rec: &KeyRecord,
    action: &'static str,
    before: Option<Value>,
) -> Reply {
    ctx.audit(
        action,
        Some(org),
        format!("key:{}", rec.id),
        before,
        Some(redacted(rec)),
    );
    let mut v = key_json(rec, "store");
    v["key"] = json!(key);
    Reply {
        status: 201,
        body: v,
        text: None,
    }
}

fn create_key(ctx: &Ctx<'_>, org: &str) -> Reply {
    let spec: KeySpec = match serde_json::from_slice(ctx.req.body) {
        Ok(s) => s,
        Err(e) => {
            return Reply::error(
                400,
                "invalid_request_error",
                format!("Invalid key spec: {e}"),
            )
        }
    };
    if let Err(r) = check_grant(ctx, org, &spec.roles, spec.user.as_deref()) {
        return r;
    }
    let (key, rec) = match issue(&ctx.live.config, org, spec) {
        Ok(x) => x,
        Err(e) => return Reply::error(400, "invalid_request_error", e),
    };
    let s = match store(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = s.insert(rec.clone()) {
        return store_failed(e, "stored");
    }
    created(ctx, org, key, &rec, "key.create", None)
}

fn revoke_key(ctx: &Ctx<'_>, org: &str, id: &str) -> Reply {
    let Some((before, src)) = find_key(ctx, org, id) else {
        return Reply::error(404, "not_found", format!("No key `{id}`."));
    };
    if src == "config" {
        return Reply::error(
            409,
            "managed_by_config",
            "This key is declared in the config file; remove it there.",
        );
    }
    let s = match store(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.revoke(id, crate::time::now_unix()) {
        Ok(Some(after)) => {
            ctx.audit(
                "key.revoke",
                Some(org),
                format!("key:{id}"),
                Some(redacted(&before)),
                Some(redacted(&after)),
            );
            Reply::ok(key_json(&after, "store"))
        }
        Ok(None) => Reply::error(404, "not_found", format!("No key `{id}`.")),
        Err(e) => store_failed(e, "revoked"),
    }
}

fn rotate_key(ctx: &Ctx<'_>, org: &str, id: &str) -> Reply {
    let Some((old, src)) = find_key(ctx, org, id) else {
        return Reply::error(404, "not_found", format!("No key `{id}`."));
    };
    if src == "config" {
        return Reply::error(
            409,
            "managed_by_config",
            "This key is declared in the config file; rotate it there.",
        );
    }
    if let Err(r) = check_grant(ctx, org, &old.roles, old.user.as_deref()) {
        return r;
    }
    let spec = KeySpec {
        name: old.name.clone(),
        team: old.team.clone(),
        user: old.user.clone(),
        roles: old.roles.clone(),
        cost_center: old.cost_center.clone(),
        models: old.models.clone().unwrap_or_default(),
        expires_at: None,
    };
    let (key, mut rec) = match issue(&ctx.live.config, org, spec) {
        Ok(x) => x,
        Err(e) => {
            return Reply::error(
                409,
                "invalid_request_error",
                format!("The key cannot be re-issued: {e}"),
            )
        }
    };
    rec.expires_at = old.expires_at;
    let s = match store(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = s
        .insert(rec.clone())
        .and_then(|()| s.revoke(id, crate::time::now_unix()).map(|_| ()))
    {
        return store_failed(e, "rotated");
    }
    created(ctx, org, key, &rec, "key.rotate", Some(redacted(&old)))
}

fn list_roles(ctx: &Ctx<'_>) -> Reply {
    let rbac = &ctx.live.config.rbac;
    let all = ctx.principal.allows(ALL_ORGS);
    let own = format!("{}:", ctx.principal.org);
    let items = rbac
        .roles
        .values()
        // Custom roles of an org are `<org>:<name>`, from the control store: another org's
        // are not the caller's to see.
        .filter(|r| all || !r.name.contains(':') || r.name.starts_with(&own))
        .map(|r| {
            // Every permission the role grants: its own and those of everything it inherits.
            let mut effective: Vec<&str> = r
                .closure
                .iter()
                .filter_map(|n| rbac.roles.get(n))
                .flat_map(|x| x.declared.iter().map(String::as_str))
                .collect();
            effective.sort_unstable();
            effective.dedup();
            (
                r.name.clone(),
                json!({"id": r.name, "description": r.description, "permissions": r.declared,
                       "inherits": r.inherits, "effective": effective,
                       "managed_by": if r.name.contains(':') { "api" } else { "file" }}),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    page(ctx, items)
}

fn list_bindings(ctx: &Ctx<'_>) -> Reply {
    let all = ctx.principal.allows(ALL_ORGS);
    let mine = ctx.principal.org.as_ref();
    let items = ctx
        .live
        .config
        .rbac
        .bindings()
        .into_iter()
        .filter(|b| all || b.org.as_deref() == Some(mine))
        .enumerate()
        .map(|(i, b)| {
            (
                format!("{i:06}"),
                json!({"subject": b.subject, "roles": b.roles, "org": b.org, "expires_at": b.expires_at,
                       "file": b.file.display().to_string(),
                       "managed_by": if b.file.as_os_str() == "control-store" { "api" } else { "file" }}),
            )
        })
        .collect();
    page(ctx, items)
}

fn reload(ctx: &Ctx<'_>) -> Reply {
    match ctx.shared.reload() {
        Ok(generation) => {
            // Shared::reload audits the reload itself; this event names who asked for it.
            ctx.audit(
                "config.reload.request",
                None,
                "config".into(),
                None,
                Some(json!({"generation": generation})),
            );
            Reply::ok(json!({"reloaded": true, "generation": generation}))
        }
        Err(e) => Reply::error(422, "invalid_config", e.to_string()),
    }
}

//! The admin API (`/admin/v1/*` on the ops plane). One route table drives both dispatch and the
//! OpenAPI document, so the two cannot drift. Every route names the permission it needs; every
//! org-scoped route is confined to the caller's org unless it holds `admin:all_orgs`; every write
//! is audited with before / after (secrets redacted).

mod allocations;
mod audit_log;
mod evals;
mod handlers;
mod policy;
mod status;
pub use status::wait_of as receipt_wait;
mod user_roles;
mod warehouse;
mod workflows;

use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::state::{Live, Shared};
use serde_json::{json, Value};

/// Permission to act on every org, not only the caller's own.
pub const ALL_ORGS: &str = "admin:all_orgs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Whoami,
    ListOrgs,
    GetOrg,
    ListTeams,
    ListCostCenters,
    ListUsers,
    ListKeys,
    CreateKey,
    GetKey,
    RevokeKey,
    RotateKey,
    ListRoles,
    ListBindings,
    PutOrgLimits,
    DeleteOrgLimits,
    PutKeyLimits,
    DeleteKeyLimits,
    ListUserRoles,
    AssignUserRoles,
    UnassignUserRole,
    ListAllocations,
    PutAllocation,
    DeleteAllocation,
    ListAudit,
    VerifyAudit,
    Status,
    RequestReceipt,
    ListExperiments,
    CreateTeam,
    DeleteTeam,
    CreateCostCenter,
    DeleteCostCenter,
    ListOrgRoles,
    CreateOrgRole,
    DeleteOrgRole,
    ListOrgBindings,
    CreateOrgBinding,
    DeleteOrgBinding,
    Reload,
    Spend,
    SpendForecast,
    SpendAnomalies,
    Chargeback,
    EraseUser,
    ExperimentReport,
    ListWorkflows,
    GetWorkflow,
    PutWorkflowDraft,
    DeleteWorkflowDraft,
    PublishWorkflow,
    DeployWorkflow,
    UndeployWorkflow,
    RevertPromotion,
    ListEvals,
    StartEvalRun,
    GetEvalRun,
    CompareEvalRuns,
    ListDatasets,
    RegisterDataset,
}

impl Op {
    /// Writes control state (keys, roles, bindings): what `[admin] writable = false` turns off.
    fn writes_control_state(self) -> bool {
        matches!(
            self,
            Op::CreateKey
                | Op::RevokeKey
                | Op::RotateKey
                | Op::PutOrgLimits
                | Op::DeleteOrgLimits
                | Op::PutKeyLimits
                | Op::DeleteKeyLimits
                | Op::AssignUserRoles
                | Op::UnassignUserRole
                | Op::PutAllocation
                | Op::DeleteAllocation
                | Op::CreateTeam
                | Op::DeleteTeam
                | Op::CreateCostCenter
                | Op::DeleteCostCenter
                | Op::CreateOrgRole
                | Op::DeleteOrgRole
                | Op::CreateOrgBinding
                | Op::DeleteOrgBinding
                | Op::PutWorkflowDraft
                | Op::DeleteWorkflowDraft
                | Op::PublishWorkflow
                | Op::DeployWorkflow
                | Op::UndeployWorkflow
                | Op::RevertPromotion
        )
    }
}

pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// `None`: any authenticated caller.
    pub permission: Option<&'static str>,
    pub op: Op,
    pub summary: &'static str,
}

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/admin/v1/whoami",
        permission: None,
        op: Op::Whoami,
        summary: "The authenticated caller: org, user, key, roles.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs",
        permission: Some("admin:orgs:read"),
        op: Op::ListOrgs,
        summary: "Orgs the caller may see.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}",
        permission: Some("admin:orgs:read"),
        op: Op::GetOrg,
        summary: "One org with its teams and cost centers.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/teams",
        permission: Some("admin:teams:read"),
        op: Op::ListTeams,
        summary: "Teams of an org.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/cost_centers",
        permission: Some("admin:cost_centers:read"),
        op: Op::ListCostCenters,
        summary: "Cost centers of an org.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/users",
        permission: Some("admin:users:read"),
        op: Op::ListUsers,
        summary: "Users of an org (from its keys and bindings).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/keys",
        permission: Some("admin:keys:read"),
        op: Op::ListKeys,
        summary: "Keys of an org, without secrets (paginated: limit, after).",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/keys",
        permission: Some("admin:keys:write"),
        op: Op::CreateKey,
        summary: "Create a key; the secret is returned once.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/keys/{id}",
        permission: Some("admin:keys:read"),
        op: Op::GetKey,
        summary: "One key, without its secret.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/keys/{id}/revoke",
        permission: Some("admin:keys:write"),
        op: Op::RevokeKey,
        summary: "Revoke a key; effective on its next request.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/keys/{id}/rotate",
        permission: Some("admin:keys:write"),
        op: Op::RotateKey,
        summary: "Revoke a key and issue a replacement with the same bindings.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/roles",
        permission: Some("admin:roles:read"),
        op: Op::ListRoles,
        summary: "Roles (file-managed, read-only).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/bindings",
        permission: Some("admin:bindings:read"),
        op: Op::ListBindings,
        summary: "Role bindings visible to the caller (file-managed and API-managed).",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/orgs/{org}/limits",
        permission: Some("admin:limits:write"),
        op: Op::PutOrgLimits,
        summary: "Set the org's limits, per-key limits and budget (the config file's syntax) where the file sets none.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/limits",
        permission: Some("admin:limits:write"),
        op: Op::DeleteOrgLimits,
        summary: "Remove the limits set through the API.",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/orgs/{org}/keys/{id}/limits",
        permission: Some("admin:limits:write"),
        op: Op::PutKeyLimits,
        summary: "Set one key's own limits (replacing the org's per-key limits for it) and budget, where the file sets none.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/keys/{id}/limits",
        permission: Some("admin:limits:write"),
        op: Op::DeleteKeyLimits,
        summary: "Remove the key's limits and budget set through the API.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/teams",
        permission: Some("admin:teams:write"),
        op: Op::CreateTeam,
        summary: "Add a team to the org (id and the config file's team fields: name, default_cost_center, limits, budget).",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/teams/{id}",
        permission: Some("admin:teams:write"),
        op: Op::DeleteTeam,
        summary: "Remove a team added through the API that nothing names.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/cost_centers",
        permission: Some("admin:cost_centers:write"),
        op: Op::CreateCostCenter,
        summary: "Add a cost center (id, name, department, monthly_budget_usd or budget).",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/cost_centers/{id}",
        permission: Some("admin:cost_centers:write"),
        op: Op::DeleteCostCenter,
        summary: "Remove a cost center added through the API that nothing names.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/roles",
        permission: Some("admin:roles:read"),
        op: Op::ListOrgRoles,
        summary: "The org's custom roles (API-managed, in the control store).",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/roles",
        permission: Some("admin:roles:write"),
        op: Op::CreateOrgRole,
        summary: "Create a custom role of the org (name, description, permissions, inherits); refused if it would hold a permission the caller lacks.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/roles/{id}",
        permission: Some("admin:roles:write"),
        op: Op::DeleteOrgRole,
        summary: "Delete a custom role that no binding names.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/bindings",
        permission: Some("admin:bindings:read"),
        op: Op::ListOrgBindings,
        summary: "The org's role bindings made through the API.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/bindings",
        permission: Some("admin:bindings:write"),
        op: Op::CreateOrgBinding,
        summary: "Bind roles to a key, user or group of the org (subject, roles, expires_at); refused if the roles hold a permission the caller lacks.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/bindings/{id}",
        permission: Some("admin:bindings:write"),
        op: Op::DeleteOrgBinding,
        summary: "Remove a binding made through the API.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/reload",
        permission: Some("admin:reload:write"),
        op: Op::Reload,
        summary: "Reload the config file now.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/spend",
        permission: Some("admin:spend:read"),
        op: Op::Spend,
        summary: "Spend from the attribution rollups: totals and groups (from, to, group_by over org, team, cost_center, department, project, key_id, model, provider, experiment, variant; period=month|day|hour; the same names as filters; format=json|csv).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/spend/forecast",
        permission: Some("admin:spend:read"),
        op: Op::SpendForecast,
        summary: "This month's spend so far and its forecast to month end (trend and weekday pattern of the last 4 weeks; org, cost_center).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/spend/anomalies",
        permission: Some("admin:spend:read"),
        op: Op::SpendAnomalies,
        summary: "Days or hours whose spend departs from its seasonal baseline (robust z-score over median and MAD), with their top models, keys and projects (from, to, grain=day|hour, org, cost_center).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/chargeback",
        permission: Some("admin:spend:read"),
        op: Op::Chargeback,
        summary: "Spend per cost center per month with allocations applied, exact to the nano-dollar (from, to, org, format=json|csv).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/allocations",
        permission: Some("admin:cost_centers:read"),
        op: Op::ListAllocations,
        summary: "The org's chargeback allocations in force (config file and API).",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/orgs/{org}/allocations/{id}",
        permission: Some("admin:cost_centers:write"),
        op: Op::PutAllocation,
        summary: "Create or replace the allocation of a source (key:<id>, project:<name>, team:<id>) across cost centers; not one the file allocates.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/allocations/{id}",
        permission: Some("admin:cost_centers:write"),
        op: Op::DeleteAllocation,
        summary: "Remove the API's allocation of a source.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/users/{id}/roles",
        permission: Some("admin:bindings:read"),
        op: Op::ListUserRoles,
        summary: "A user's role assignments in the org (policy files and API), with expiry, and the roles held now.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/users/{id}/roles",
        permission: Some("admin:bindings:write"),
        op: Op::AssignUserRoles,
        summary: "Assign roles to a user, optionally until an expiry; only roles within the caller's own permissions.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/users/{id}/roles/{role}",
        permission: Some("admin:bindings:write"),
        op: Op::UnassignUserRole,
        summary: "Remove a role from a user's API assignments in the org.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/users/{id}/erase",
        permission: Some("admin:users:erase"),
        op: Op::EraseUser,
        summary: "Anonymise a user's usage rows in the org (right to erasure); audited.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/audit",
        permission: Some("admin:audit:read"),
        op: Op::ListAudit,
        summary: "Audit events, newest first, filtered by actor, action, resource, outcome and time (the caller's org; all with admin:all_orgs).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/audit/verify",
        permission: Some("admin:audit:read"),
        op: Op::VerifyAudit,
        summary: "Recompute every audit hash chain in ClickHouse (and signatures when a verify key is set); reports the first break.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/status",
        permission: Some("admin:status:read"),
        op: Op::Status,
        summary: "Readiness, config generation, providers and circuit breakers, usage and audit sinks, control store.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/requests/{id}",
        permission: None,
        op: Op::RequestReceipt,
        summary: "The usage, cost, route and timing of a recent console (browser) request: the caller's own, or its org's with admin:spend:read.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/experiments",
        permission: Some("admin:experiments:read"),
        op: Op::ListExperiments,
        summary: "Experiments (model aliases with a split) the caller's org can use, with variants and weights.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/experiments/{id}/report",
        permission: Some("admin:experiments:read"),
        op: Op::ExperimentReport,
        summary: "Per-variant results of an experiment with significance tests and a verdict (the caller's org; all with admin:all_orgs).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/evals",
        permission: Some("admin:evals:read"),
        op: Op::ListEvals,
        summary: "The eval specs of [evals] dir and the schedules.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/evals/{id}/runs",
        permission: Some("admin:evals:write"),
        op: Op::StartEvalRun,
        summary: "Run (or resume) an eval in the background as the caller ({\"budget_usd\", \"resume\"}, optional); 202 with the run id.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/evals/runs/{id}",
        permission: Some("admin:evals:read"),
        op: Op::GetEvalRun,
        summary: "An eval run's progress, spend and each target's scores (runs the caller's org started; all with admin:all_orgs).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/evals/datasets",
        permission: Some("admin:evals:read"),
        op: Op::ListDatasets,
        summary: "Every registered dataset version (name, content hash, cases, when).",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/evals/datasets/{id}",
        permission: Some("admin:evals:write"),
        op: Op::RegisterDataset,
        summary: "Register a dataset (the body is its JSONL) in ClickHouse as the version its SHA-256 names; specs use dataset = \"registered:<name>\".",
    },
    Route {
        method: "GET",
        path: "/admin/v1/evals/compare",
        permission: Some("admin:evals:read"),
        op: Op::CompareEvalRuns,
        summary: "Compare two eval results case by case: bootstrap CI of score deltas, McNemar, cost and latency deltas, regression verdict (baseline, candidate, baseline_target, candidate_target, margin).",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/experiments/{id}/promotion",
        permission: Some("admin:experiments:write"),
        op: Op::RevertPromotion,
        summary: "Revert an auto-promotion: the split goes back to its configured weights and the experiment is held (no promotion until its configuration changes).",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/workflows",
        permission: Some("admin:workflows:read"),
        op: Op::ListWorkflows,
        summary: "The workflows the org's callers can run (config files and API), with deployed and latest versions.",
    },
    Route {
        method: "GET",
        path: "/admin/v1/orgs/{org}/workflows/{id}",
        permission: Some("admin:workflows:read"),
        op: Op::GetWorkflow,
        summary: "A workflow: its published versions with their definitions, its draft and its deployment.",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/orgs/{org}/workflows/{id}/draft",
        permission: Some("workflow:write"),
        op: Op::PutWorkflowDraft,
        summary: "Create or replace the workflow's draft ({\"definition\": …}); invalid definitions are refused with the step path of each problem.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/workflows/{id}/draft",
        permission: Some("workflow:write"),
        op: Op::DeleteWorkflowDraft,
        summary: "Discard the workflow's draft.",
    },
    Route {
        method: "POST",
        path: "/admin/v1/orgs/{org}/workflows/{id}/versions",
        permission: Some("workflow:write"),
        op: Op::PublishWorkflow,
        summary: "Publish the next version (immutable) from {\"definition\": …}, or from the draft when the body is empty.",
    },
    Route {
        method: "PUT",
        path: "/admin/v1/orgs/{org}/workflows/{id}/deployment",
        permission: Some("workflow:write"),
        op: Op::DeployWorkflow,
        summary: "Deploy a published version ({\"version\": n}): the one the org's callers run.",
    },
    Route {
        method: "DELETE",
        path: "/admin/v1/orgs/{org}/workflows/{id}/deployment",
        permission: Some("workflow:write"),
        op: Op::UndeployWorkflow,
        summary: "Stop running the workflow (its versions are kept).",
    },
];

/// A request as the admin handlers see it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub request_id: &'a str,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The caller's `Authorization` value, for work done as the caller (an eval run's
    /// requests); never logged or stored.
    pub credential: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// A non-JSON answer (`format=csv`): its content type and text, sent instead of `body`.
    pub text: Option<(&'static str, String)>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            text: None,
        }
    }

    /// A 200 answer in another format than JSON.
    pub fn text(content_type: &'static str, text: String) -> Self {
        Self {
            status: 200,
            body: Value::Null,
            text: Some((content_type, text)),
        }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        let kind = match status {
            401 => "invalid_request_error",
            403 => "permission_error",
            404 => "invalid_request_error",
            _ if status >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        Self {
            status,
            body: json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
            text: None,
        }
    }
}

/// Path parameters matched from a route template.
pub struct Params<'a> {
    pub org: Option<&'a str>,
    pub id: Option<&'a str>,
    /// `{role}`: a role name.
    pub role: Option<&'a str>,
}

fn matches<'a>(template: &str, path: &'a str) -> Option<Params<'a>> {
    let mut t = template.split('/');
    let mut p = path.trim_end_matches('/').split('/');
    let mut params = Params {
        org: None,
        id: None,
        role: None,
    };
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some("{org}"), Some(v)) if !v.is_empty() => params.org = Some(v),
            (Some("{id}"), Some(v)) if !v.is_empty() => params.id = Some(v),
            (Some("{role}"), Some(v)) if !v.is_empty() => params.role = Some(v),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Everything a handler may use.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub live: &'a Live,
    pub principal: &'a Principal,
    pub req: &'a Request<'a>,
}

impl Ctx<'_> {
    /// Audits a successful write.
    pub fn audit(
        &self,
        action: &'static str,
        org: Option<&str>,
        resource: String,
        before: Option<Value>,
        after: Option<Value>,
    ) {
        self.shared.audit.record(AuditEvent {
            ts_ms: crate::time::now_unix() * 1000,
            request_id: self.req.request_id.to_string(),
            actor: self.principal.actor(),
            org: org.map(str::to_string),
            action,
            resource,
            outcome: "succeeded",
            reason: None,
            before,
            after,
            client_ip: self.req.client_ip.clone(),
            user_agent: self.req.user_agent.clone(),
        });
    }

    pub(super) fn deny(&self, resource: String, reason: &str) {
        self.shared.audit.record(AuditEvent {
            ts_ms: crate::time::now_unix() * 1000,
            request_id: self.req.request_id.to_string(),
            actor: self.principal.actor(),
            org: Some(self.principal.org.to_string()),
            action: "admin.denied",
            resource,
            outcome: "denied",
            reason: Some(reason.to_string()),
            before: None,
            after: None,
            client_ip: self.req.client_ip.clone(),
            user_agent: self.req.user_agent.clone(),
        });
    }

    /// Whether the caller may act inside `org` (which must exist).
    pub fn may_access_org(&self, org: &str) -> bool {
        self.live.config.orgs.contains_key(org)
            && (self.principal.org.as_ref() == org || self.principal.allows(ALL_ORGS))
    }
}

/// Dispatches one authenticated admin request.
pub async fn handle(
    shared: &Shared,
    live: &Live,
    principal: &Principal,
    req: &Request<'_>,
) -> Reply {
    let mut method_mismatch = false;
    for r in ROUTES {
        let Some(params) = matches(r.path, req.path) else {
            continue;
        };
        if r.method != req.method {
            method_mismatch = true;
            continue;
        }
        let ctx = Ctx {
            shared,
            live,
            principal,
            req,
        };
        if let Some(perm) = r.permission {
            if !principal.allows(perm) {
                crate::metrics::METRICS
                    .denials
                    .with_label_values(&["admin"])
                    .inc();
                ctx.deny(format!("{} {}", r.method, r.path), perm);
                return Reply::error(
                    403,
                    "permission_denied",
                    format!("This needs the `{perm}` permission."),
                );
            }
        }
        if !live.config.admin_writable && r.op.writes_control_state() {
            return Reply::error(
                403,
                "admin_read_only",
                "API writes are turned off here ([admin] writable = false): change keys, roles and bindings through the config and the CLI.",
            );
        }
        if let Some(org) = params.org {
            if !ctx.may_access_org(org) {
                // Another org's resources do not exist for this caller.
                ctx.deny(format!("org:{org}"), "other org");
                return Reply::error(404, "not_found", format!("No org `{org}`."));
            }
        }
        return handlers::run(&ctx, r.op, &params).await;
    }
    if method_mismatch {
        Reply::error(405, "method_not_allowed", "Method not allowed on this URL.")
    } else {
        Reply::error(404, "unknown_url", "Unknown admin URL.")
    }
}

/// The OpenAPI 3 document of `ROUTES`.
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        let mut params = Vec::new();
        for name in ["org", "id", "role"] {
            if let Some(desc) = path_param(r.path, name) {
                params.push(json!({"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}}));
            }
        }
        let query = |name: &str, desc: &str| json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string"}});
        let org = "Org id, or * for all (needs admin:all_orgs); default: the caller's";
        match r.op {
            Op::SpendForecast => {
                params.push(query("org", org));
                params.push(query("cost_center", "Only this cost center"));
            }
            Op::SpendAnomalies => {
                params.push(query(
                    "from",
                    "First day, YYYY-MM-DD (default: 30 days ago; hours: yesterday)",
                ));
                params.push(query("to", "Last day, inclusive (default: today)"));
                params.push(query("grain", "day (default) or hour"));
                params.push(query("org", org));
                params.push(query("cost_center", "Only this cost center"));
            }
            Op::Chargeback | Op::Spend => {
                params.push(query(
                    "from",
                    "First day, YYYY-MM-DD (default: first of this month)",
                ));
                params.push(query("to", "Last day, inclusive (default: today)"));
                params.push(query("org", org));
                params.push(query(
                    "format",
                    "json (default) or csv (one line per row; money as decimal strings)",
                ));
            }
            _ => {}
        }
        if r.op == Op::Spend {
            params.push(query(
                "group_by",
                "Comma-separated: org, team, cost_center, department, project, key_id, model, provider, experiment, variant, and at most one of month, day, hour",
            ));
            params.push(query(
                "period",
                "month, day or hour (hours: the hourly rollup's retained weeks)",
            ));
            for d in crate::warehouse::spend::ATTRIBUTES
                .iter()
                .filter(|d| **d != "org")
            {
                params.push(query(d, &format!("Only this {}", d.replace('_', " "))));
            }
        }
        if r.op == Op::ListKeys {
            params.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}));
            params.push(json!({"name": "after", "in": "query", "description": "Cursor: the last id of the previous page", "schema": {"type": "string"}}));
        }
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{:?}", r.op),
            "parameters": params,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"}
            }
        });
        if let Some(p) = r.permission {
            op["x-permission"] = json!(p);
        }
        if let Some(schema) = request_body(r.op) {
            // Publishing takes the draft, and an eval run the spec's caps, when the body is empty.
            let required = !matches!(r.op, Op::PublishWorkflow | Op::StartEvalRun);
            op["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        if r.op == Op::RegisterDataset {
            op["requestBody"] = json!({"required": true, "content": {"application/x-ndjson": {"schema": {"type": "string",
                "description": "JSONL: one case per line — messages or vars, expected, tags, id"}}}});
        }
        entry[r.method.to_ascii_lowercase()] = op;
    }
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let values = json!({"type": "object", "additionalProperties": false, "properties": {
        "requests_per_second": {"type": "integer"}, "requests_per_minute": {"type": "integer"},
        "tokens_per_minute": {"type": "integer"}, "concurrent_requests": {"type": "integer"}}});
    let mut limits = values.clone();
    limits["properties"]["models"] =
        json!({"type": "object", "description": "Per model alias", "additionalProperties": values});
    let budget = json!({"type": "object", "required": ["usd", "period"], "properties": {
        "usd": {"type": "string", "description": "Decimal USD"}, "period": {"type": "string", "pattern": "^(month|[0-9]{1,3}d)$", "description": "month (calendar, UTC) or <n>d (the last n days)"},
        "soft": {"type": "array", "items": {"type": "number"}, "description": "Warning fractions, 0-1"}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Model Bridge admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A virtual key (mbk_…) or an SSO JWT"}},
            "responses": {"Error": {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string", "nullable": true}, "code": {"type": "string"}}}}},
                "KeySpec": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string"}, "team": {"type": "string"}, "user": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}}, "cost_center": {"type": "string"},
                    "models": {"type": "array", "items": {"type": "string"}}, "expires_at": {"type": "string", "format": "date-time"}}},
                "RoleSpec": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}, "description": {"type": "string"},
                    "permissions": strings.clone(), "inherits": strings.clone()}},
                "BindingSpec": {"type": "object", "additionalProperties": false, "required": ["subject", "roles"], "properties": {
                    "subject": {"type": "string", "description": "key:<id>, user:<id> or group:<name>"},
                    "roles": strings.clone(), "expires_at": {"type": "string", "format": "date-time"}}},
                "RoleAssignment": {"type": "object", "additionalProperties": false, "required": ["roles"], "properties": {
                    "roles": strings.clone(), "expires_at": {"type": "string", "format": "date-time"}}},
                "TeamSpec": {"type": "object", "additionalProperties": false, "required": ["id"], "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "default_cost_center": {"type": "string"},
                    "limits": limits.clone(), "budget": budget.clone()}},
                "CostCenterSpec": {"type": "object", "additionalProperties": false, "required": ["id"], "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "department": {"type": "string"},
                    "monthly_budget_usd": {"type": "string", "description": "Decimal USD"}, "budget": budget.clone()}},
                "OrgLimits": {"type": "object", "additionalProperties": false, "properties": {
                    "limits": limits.clone(), "key_limits": limits.clone(), "budget": budget.clone(),
                    "workflow_limits": {"type": "object", "additionalProperties": false, "description": "Workflow run limits in place of [workflows]'s", "properties": {
                        "max_concurrent_runs": {"type": "integer", "minimum": 1}, "max_steps": {"type": "integer", "minimum": 1},
                        "max_loop_items": {"type": "integer", "minimum": 0}, "max_duration_s": {"type": "integer", "minimum": 1}}}}},
                "KeyLimits": {"type": "object", "additionalProperties": false, "properties": {
                    "limits": limits, "budget": budget}},
                "AllocationSpec": {"type": "object", "additionalProperties": false, "required": ["split"], "properties": {
                    "split": {"type": "object", "description": "Percent per cost center of the org (at most two decimals), summing to 100",
                              "additionalProperties": {"type": "number"}}}},
                "WorkflowDefinition": {"type": "object", "additionalProperties": false, "required": ["definition"], "properties": {
                    "definition": {"type": "object", "description": "A workflow definition as a config file's (steps, output, description); name defaults to the URL's; the store numbers versions"}}},
                "WorkflowDeployment": {"type": "object", "additionalProperties": false, "required": ["version"], "properties": {
                    "version": {"type": "integer", "minimum": 1}}},
                "EvalRunSpec": {"type": "object", "properties": {
                    "budget_usd": {"type": "string", "description": "Decimal USD cap, in place of the spec's"},
                    "resume": {"type": "string", "description": "A run id: cases already scored are not sent again"}}}
            }
        }
    })
}

/// The schema of a route's JSON body, if it takes one.
fn request_body(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::CreateKey => "KeySpec",
        Op::CreateOrgRole => "RoleSpec",
        Op::CreateOrgBinding => "BindingSpec",
        Op::AssignUserRoles => "RoleAssignment",
        Op::CreateTeam => "TeamSpec",
        Op::CreateCostCenter => "CostCenterSpec",
        Op::PutOrgLimits => "OrgLimits",
        Op::PutKeyLimits => "KeyLimits",
        Op::PutAllocation => "AllocationSpec",
        Op::PutWorkflowDraft => "WorkflowDefinition",
        Op::PublishWorkflow => "WorkflowDefinition",
        Op::DeployWorkflow => "WorkflowDeployment",
        Op::StartEvalRun => "EvalRunSpec",
        _ => return None,
    })
}

/// What a path parameter of `path` names (the segment before it says), if `path` has it.
fn path_param(path: &str, name: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().position(|s| *s == format!("{{{name}}}"))?;
    Some(match (name, segments[at - 1]) {
        ("org", _) => "Org id",
        ("role", _) => "Role name",
        (_, "keys") => "Key id",
        (_, "teams") => "Team id",
        (_, "cost_centers") => "Cost center id",
        (_, "roles") => "Role name",
        (_, "bindings") => "Binding id",
        (_, "users") => "User id",
        (_, "allocations") => "Source: key:<id>, project:<name> or team:<id>",
        (_, "experiments") => "Experiment id",
        (_, "requests") => "Request id (x-request-id)",
        (_, "workflows") => "Workflow name",
        (_, "evals") => "Eval name (a spec of [evals] dir)",
        (_, "runs") => "Eval run id (ev_…)",
        (_, "datasets") => "Dataset name",
        _ => "Id",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_match() {
        let p = matches(
            "/admin/v1/orgs/{org}/keys/{id}/revoke",
            "/admin/v1/orgs/acme/keys/K1/revoke",
        )
        .unwrap();
        assert_eq!((p.org, p.id), (Some("acme"), Some("K1")));
        assert!(matches("/admin/v1/orgs/{org}", "/admin/v1/orgs/acme/keys").is_none());
        assert!(matches("/admin/v1/orgs/{org}", "/admin/v1/orgs/").is_none());
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = openapi();
        // Writes without a body: their path says everything.
        let bodiless = [Op::RevokeKey, Op::RotateKey, Op::Reload, Op::EraseUser];
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            if matches!(r.method, "POST" | "PUT") && !bodiless.contains(&r.op) {
                if r.op == Op::RegisterDataset {
                    assert!(op["requestBody"]["content"]["application/x-ndjson"].is_object());
                    continue;
                }
                let schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} {} has no request body", r.method, r.path));
                let name = schema.rsplit('/').next().unwrap();
                assert!(doc["components"]["schemas"][name].is_object(), "{name}");
            }
            for p in op["parameters"].as_array().unwrap() {
                if p["in"] == "path" {
                    assert_ne!(p["description"], "Id", "{} {}", r.method, r.path);
                }
            }
        }
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method.to_ascii_lowercase()].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}

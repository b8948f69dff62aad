//! The request's identity steps on the data plane: authenticate (before any body is read),
//! attribute, authorize; every refusal is counted and audited.

use super::client::{Client, RequestHeaders};
use super::context::Ctx;
use crate::audit::AuditEvent;
use crate::auth::attribution::{self, Overrides};
use crate::auth::jwt::JwtVerifier;
use crate::auth::{self, AuthFailure, Principal};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::{Endpoint, ModelRoute};
use crate::state::{Live, Shared};
use std::sync::Arc;

fn audit(
    shared: &Shared,
    s: &Client,
    ctx: &Ctx,
    action: &'static str,
    resource: String,
    reason: String,
) {
    shared.audit.record(AuditEvent {
        ts_ms: ctx.record.ts_ms,
        request_id: ctx.record.request_id.clone(),
        actor: ctx.principal.actor(),
        org: ctx.record.org.as_deref().map(str::to_string),
        action,
        resource,
        outcome: "denied",
        reason: Some(reason),
        before: None,
        after: None,
        client_ip: ctx.record.client_ip.as_deref().map(str::to_string),
        user_agent: s
            .header_str("user-agent")
            .map(|u| u.chars().take(256).collect()),
    });
}

/// The caller behind a credential (virtual key or JWT); `Ok(None)` when authentication is off.
pub async fn principal_of(
    shared: &Shared,
    live: &Live,
    fetch: &dyn crate::auth::jwt::JwksFetch,
    cred: Option<&str>,
) -> Result<Option<Arc<Principal>>, AuthFailure> {
    let (Some(a), Some(store)) = (&live.config.auth, shared.keys()) else {
        return Ok(None);
    };
    let now = crate::time::now_unix();
    let cfg = &live.config;
    match (cred, &a.jwt) {
        (None, _) => Err(AuthFailure::Missing),
        (Some(c), Some(jwt)) if JwtVerifier::looks_like_jwt(c) => {
            let id = jwt.verify(c, fetch).await?;
            auth::jwt_principal(&id, &cfg.orgs, &cfg.rbac, now).map(|p| Some(Arc::new(p)))
        }
        (Some(c), _) => auth::authenticate_key(c, &a.keys, store.as_ref(), now)
            .map(|rec| Some(live.principals.get(&rec, &cfg.rbac, now))),
    }
}

/// Resolves the caller and its attribution into `ctx`.
pub async fn authenticate(
    shared: &Shared,
    fetch: &dyn crate::auth::jwt::JwksFetch,
    s: &Client,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    let live = ctx.live.clone();
    let cred = auth::credential(s.header("authorization"), s.header("api-key"));
    let principal = match principal_of(shared, &live, fetch, cred).await {
        Ok(p) => p.unwrap_or_else(|| live.anonymous.clone()),
        Err(f) => {
            METRICS.auth_failures.with_label_values(&[f.label()]).inc();
            // The key id (never the secret) helps trace probing of a known key.
            let resource = cred
                .and_then(auth::keys::parse_id)
                .map_or_else(|| "credential".to_string(), |id| format!("key:{id}"));
            audit(
                shared,
                s,
                ctx,
                "auth.failed",
                resource,
                f.label().to_string(),
            );
            return Err(GatewayError::Unauthenticated(f));
        }
    };
    let r = &mut ctx.record;
    r.org = Some(principal.org.clone());
    r.team = principal.team.clone();
    r.user = principal.user.clone();
    r.key_id = principal.key_id.clone();
    ctx.principal = principal;
    let overrides = Overrides {
        cost_center: s.header_str("x-model-bridge-cost-center"),
        project: s.header_str("x-model-bridge-project"),
        tags: s.header_str("x-model-bridge-tags"),
    };
    match attribution::resolve(&ctx.principal, &live.config.orgs, &overrides) {
        Ok(a) => {
            ctx.record.cost_center = a.cost_center;
            ctx.record.department = a.department;
            ctx.record.project = a.project;
            ctx.record.tags = a.tags;
            // A workflow step's own call: tagged with its run and step, and its receipt
            // kept for the step's exact cost.
            if let Some(t) = s
                .header_str(crate::workflow::INTERNAL_HEADER)
                .and_then(crate::workflow::internal_tags)
            {
                ctx.record.tags.extend(t);
                ctx.receipt = true;
            }
            // An eval's call: tagged with its run and case, its receipt kept for the
            // exact cost the eval reads back.
            if let Some(v) = s.header_str(crate::eval::runner::EVAL_HEADER) {
                if !ctx.principal.allows(crate::eval::EVAL_PERMISSION) {
                    return Err(GatewayError::PermissionDenied(format!(
                        "Tagging a request as an eval's needs the `{}` permission.",
                        crate::eval::EVAL_PERMISSION
                    )));
                }
                ctx.record.tags.extend(crate::eval::tags(v));
                ctx.receipt = true;
            }
            Ok(())
        }
        Err(e) => {
            METRICS.denials.with_label_values(&["attribution"]).inc();
            let cc = overrides.cost_center.unwrap_or("-");
            audit(
                shared,
                s,
                ctx,
                "rbac.denied",
                format!("cost_center:{cc}"),
                e.message(),
            );
            Err(e)
        }
    }
}

/// May this principal call `endpoint` at all?
pub fn authorize_endpoint(
    shared: &Shared,
    s: &Client,
    ctx: &Ctx,
    endpoint: Endpoint,
) -> Result<(), GatewayError> {
    if ctx.principal.allows_endpoint(endpoint.index()) {
        return Ok(());
    }
    METRICS.denials.with_label_values(&["endpoint"]).inc();
    let msg = format!(
        "You are not allowed to use the {} endpoint.",
        endpoint.label()
    );
    audit(
        shared,
        s,
        ctx,
        "rbac.denied",
        endpoint.permission().to_string(),
        msg.clone(),
    );
    Err(GatewayError::PermissionDenied(msg))
}

/// May this principal invoke this alias? Another org's alias does not exist for it.
pub fn authorize_model(
    shared: &Shared,
    s: &Client,
    ctx: &Ctx,
    route: &ModelRoute,
) -> Result<(), GatewayError> {
    if !route.visible_to(&ctx.principal.org) {
        METRICS.denials.with_label_values(&["tenant"]).inc();
        audit(
            shared,
            s,
            ctx,
            "rbac.denied",
            format!("model:{}", route.alias),
            "other org".into(),
        );
        return Err(GatewayError::ModelNotFound(route.alias.to_string()));
    }
    if ctx.principal.can_invoke(&route.alias) {
        return Ok(());
    }
    METRICS.denials.with_label_values(&["model"]).inc();
    let msg = format!("You are not allowed to use model `{}`.", route.alias);
    audit(
        shared,
        s,
        ctx,
        "rbac.denied",
        format!("model:{}", route.alias),
        msg.clone(),
    );
    Err(GatewayError::PermissionDenied(msg))
}

/// The caller's credential as an `Authorization` value (`api-key` as a bearer token), for work
/// done later as the caller (a workflow's LLM steps, an eval run); held in memory only.
pub fn caller_credential(s: &impl RequestHeaders) -> Option<String> {
    s.header_str("authorization")
        .map(str::to_string)
        .or_else(|| s.header_str("api-key").map(|k| format!("Bearer {k}")))
}

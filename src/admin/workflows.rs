//! Workflow definitions through the admin API (`workflow::store`): an org's draft of a workflow
//! (editable), its published versions (immutable: each is written once, numbered by the store),
//! and the one deployed version its callers run. Writes need `workflow:write`, are checked
//! with the validation the files get (problems name the step path), and are audited. A name a
//! config file defines stays the file's.

use super::policy::{store, written};
use super::{Ctx, Reply};
use crate::auth::store::Keys;
use crate::control::Doc;
use crate::workflow::store::{self as wf, DEPLOYMENT, DRAFT, VERSION};
use serde_json::{json, Value};

/// Refuses a name a config file defines, or one no definition could have.
fn writable_name(ctx: &Ctx<'_>, name: &str) -> Result<(), Reply> {
    if ctx.live.config.workflows.defs.contains_key(name) {
        return Err(Reply::error(
            409,
            "conflict",
            format!("Workflow `{name}` is defined in the config files; change it there."),
        ));
    }
    if crate::config::valid_name(name) {
        Ok(())
    } else {
        Err(Reply::error(
            400,
            "invalid_request_error",
            "A workflow name is 1-64 of a-z, A-Z, 0-9, - _ and .",
        ))
    }
}

/// The definition in a request body (`{"definition": {…}}`), validated as `name` would run it.
fn definition(ctx: &Ctx<'_>, org: &str, name: &str) -> Result<Value, Reply> {
    let body: Value = serde_json::from_slice(ctx.req.body).map_err(|e| {
        Reply::error(
            400,
            "invalid_request_error",
            format!("The body is {{\"definition\": {{…}}}}: {e}"),
        )
    })?;
    let Some(def) = body
        .get("definition")
        .filter(|_| body.as_object().map(|o| o.len()) == Some(1))
    else {
        return Err(Reply::error(
            400,
            "invalid_request_error",
            "The body is {\"definition\": {…}}.",
        ));
    };
    wf::compile(def, name, 0, &wf::source(org, name, None))
        .map(|_| def.clone())
        .map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let mut r = Reply::error(
                400,
                "invalid_workflow",
                format!("Invalid workflow: {}", text.join("; ")),
            );
            r.body["error"]["param"] = json!(problems[0].path);
            r
        })
}

fn doc(kind: &str, id: String, org: &str, record: &Value) -> Doc {
    Doc {
        kind: kind.into(),
        id,
        org: org.to_string(),
        record: record.to_string(),
    }
}

fn actor_stamp(ctx: &Ctx<'_>) -> (String, String) {
    (
        crate::time::rfc3339(crate::time::now_unix()),
        ctx.principal.actor(),
    )
}

/// `GET /admin/v1/orgs/{org}/workflows`: the config files' workflows and the org's own, with
/// their deployed and latest versions.
pub fn list(ctx: &Ctx<'_>, org: &str) -> Reply {
    let mut data: Vec<Value> = ctx
        .live
        .config
        .workflows
        .defs
        .values()
        .map(|w| {
            json!({"name": w.name, "managed_by": "file", "deployed_version": w.version,
                   "latest_version": w.version, "description": w.description, "has_draft": false})
        })
        .collect();
    if let Some(k) = ctx.shared.keys() {
        let docs = k.docs();
        for name in wf::names(&docs, org) {
            data.push(summary(&docs, org, &name));
        }
    }
    Reply::ok(json!({"object": "list", "data": data}))
}

fn summary(docs: &[Doc], org: &str, name: &str) -> Value {
    let versions = wf::versions(docs, org, name);
    let deployed = wf::record(docs, DEPLOYMENT, org, name);
    let latest = versions.last();
    json!({
        "name": name,
        "managed_by": "api",
        "deployed_version": deployed.as_ref().map(|d| d["version"].clone()),
        "latest_version": latest.map(|v| v.version),
        "description": latest.map(|v| v.record["definition"]["description"].clone()),
        "has_draft": wf::record(docs, DRAFT, org, name).is_some(),
    })
}

/// `GET /admin/v1/orgs/{org}/workflows/{id}`: every version with its definition, the draft and
/// the deployment.
pub fn get(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    if let Some(w) = ctx.live.config.workflows.defs.get(name) {
        return Reply::ok(
            json!({"name": name, "managed_by": "file", "source": w.source,
                                "deployed_version": w.version}),
        );
    }
    let Some(k) = ctx.shared.keys() else {
        return not_found(name);
    };
    let docs = k.docs();
    if !wf::names(&docs, org).iter().any(|n| n == name) {
        return not_found(name);
    }
    let mut body = summary(&docs, org, name);
    body["versions"] = wf::versions(&docs, org, name)
        .into_iter()
        .map(|v| v.record)
        .collect();
    body["draft"] = wf::record(&docs, DRAFT, org, name).unwrap_or(Value::Null);
    body["deployment"] = wf::record(&docs, DEPLOYMENT, org, name).unwrap_or(Value::Null);
    Reply::ok(body)
}

fn not_found(name: &str) -> Reply {
    Reply::error(404, "not_found", format!("No workflow `{name}`."))
}

/// `PUT /admin/v1/orgs/{org}/workflows/{id}/draft`: creates or replaces the draft.
pub fn put_draft(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err(r) = writable_name(ctx, name) {
        return r;
    }
    let def = match definition(ctx, org, name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let before = wf::record(&k.docs(), DRAFT, org, name);
    let (at, by) = actor_stamp(ctx);
    let record = json!({"name": name, "definition": def, "updated_at": at, "updated_by": by});
    let d = doc(DRAFT, wf::workflow_id(org, name), org, &record);
    match k.put_doc(DRAFT, &d.id.clone(), Some(d), false) {
        Ok(_) => {
            let status = if before.is_some() { 200 } else { 201 };
            ctx.audit(
                "workflow.draft",
                Some(org),
                format!("workflow:{org}:{name}"),
                before,
                Some(record.clone()),
            );
            Reply {
                status,
                body: record,
                text: None,
            }
        }
        Err(e) => written(e, "The draft"),
    }
}

/// `DELETE /admin/v1/orgs/{org}/workflows/{id}/draft`.
pub fn delete_draft(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(before) = wf::record(&k.docs(), DRAFT, org, name) else {
        return Reply::error(404, "not_found", format!("Workflow `{name}` has no draft."));
    };
    match k.put_doc(DRAFT, &wf::workflow_id(org, name), None, false) {
        Ok(_) => {
            ctx.audit(
                "workflow.draft_delete",
                Some(org),
                format!("workflow:{org}:{name}"),
                Some(before),
                None,
            );
            Reply::ok(json!({"name": name, "draft": null}))
        }
        Err(e) => written(e, "The draft"),
    }
}

/// `POST /admin/v1/orgs/{org}/workflows/{id}/versions`: publishes `{"definition": …}`, or the
/// draft when the body is empty (the draft is then removed), as the next version. A version
/// is written only if its number is free, so two publishes racing on two replicas cannot
/// overwrite one another: the loser is told to retry.
pub fn publish(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err(r) = writable_name(ctx, name) {
        return r;
    }
    let docs = k.docs();
    let from_draft = ctx.req.body.iter().all(u8::is_ascii_whitespace);
    let def = if from_draft {
        match wf::record(&docs, DRAFT, org, name) {
            Some(d) => d["definition"].clone(),
            None => {
                return Reply::error(
                    400,
                    "invalid_request_error",
                    format!("Workflow `{name}` has no draft: send {{\"definition\": {{…}}}}."),
                )
            }
        }
    } else {
        match definition(ctx, org, name) {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let version = wf::versions(&docs, org, name)
        .last()
        .map_or(1, |v| v.version + 1);
    let (at, by) = actor_stamp(ctx);
    let record = json!({"name": name, "version": version, "definition": def,
                        "published_at": at, "published_by": by});
    let id = wf::version_id(org, name, version);
    match k.put_doc(
        VERSION,
        &id,
        Some(doc(VERSION, id.clone(), org, &record)),
        true,
    ) {
        Ok(_) => {
            if from_draft {
                if let Err(e) = k.put_doc(DRAFT, &wf::workflow_id(org, name), None, false) {
                    log::warn!("workflow {id}: published, draft kept: {e}");
                }
            }
            ctx.audit(
                "workflow.publish",
                Some(org),
                format!("workflow:{org}:{name}"),
                None,
                Some(json!({"version": version, "definition": record["definition"]})),
            );
            Reply {
                status: 201,
                body: record,
                text: None,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Reply::error(
            409,
            "conflict",
            format!("Version {version} of `{name}` was published meanwhile; retry."),
        ),
        Err(e) => written(e, "The version"),
    }
}

/// `PUT /admin/v1/orgs/{org}/workflows/{id}/deployment`: `{"version": n}`, a published version,
/// becomes the one the org's callers run (runs in flight keep theirs).
pub fn deploy(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err(r) = writable_name(ctx, name) {
        return r;
    }
    let version = match serde_json::from_slice::<Value>(ctx.req.body) {
        Ok(v) if v.as_object().map(|o| o.len()) == Some(1) => v["version"].as_u64(),
        _ => None,
    };
    let Some(version) = version.and_then(|v| u32::try_from(v).ok()) else {
        return Reply::error(
            400,
            "invalid_request_error",
            "The body is {\"version\": <n>}.",
        );
    };
    let docs = k.docs();
    if !wf::versions(&docs, org, name)
        .iter()
        .any(|v| v.version == version)
    {
        return Reply::error(
            404,
            "not_found",
            format!("Workflow `{name}` has no published version {version}."),
        );
    }
    deployment(ctx, &k, org, name, Some(version))
}

/// `DELETE /admin/v1/orgs/{org}/workflows/{id}/deployment`: the workflow stops taking runs.
pub fn undeploy(ctx: &Ctx<'_>, org: &str, name: &str) -> Reply {
    let k = match store(ctx) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if wf::record(&k.docs(), DEPLOYMENT, org, name).is_none() {
        return Reply::error(
            404,
            "not_found",
            format!("Workflow `{name}` is not deployed."),
        );
    }
    deployment(ctx, &k, org, name, None)
}

fn deployment(ctx: &Ctx<'_>, k: &Keys, org: &str, name: &str, version: Option<u32>) -> Reply {
    let before = wf::record(&k.docs(), DEPLOYMENT, org, name);
    let (at, by) = actor_stamp(ctx);
    let id = wf::workflow_id(org, name);
    let record =
        version.map(|v| json!({"name": name, "version": v, "deployed_at": at, "deployed_by": by}));
    let d = record.as_ref().map(|r| doc(DEPLOYMENT, id.clone(), org, r));
    match k.put_doc(DEPLOYMENT, &id, d, false) {
        Ok(_) => {
            let action = if version.is_some() {
                "workflow.deploy"
            } else {
                "workflow.undeploy"
            };
            ctx.audit(
                action,
                Some(org),
                format!("workflow:{org}:{name}"),
                before,
                record.clone(),
            );
            Reply::ok(record.unwrap_or_else(|| json!({"name": name, "deployed_version": null})))
        }
        Err(e) => written(e, "The deployment"),
    }
}

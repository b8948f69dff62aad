//! Workflows on the data plane: `POST /v1/workflows/{name}/runs` (wait for the result, or
//! answer the run id at once), `GET /v1/workflows/runs/{id}`, `POST …/runs/{id}/cancel`, and
//! the model `workflow:<name>` on chat completions (the messages are the input; the answer is
//! a chat completion, streamed when asked). Runs need `workflow:run:<name>`; a run is read or
//! cancelled by the caller that started it.

use super::client::Client;
use super::context::Ctx;
use super::data_plane::write_json;
use super::relay::Outcome;
use super::response_head::ResponseHead;
use crate::error::GatewayError;
use crate::state::Shared;
use crate::workflow::exec::{self, Env};
use crate::workflow::run::{Run, Status};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

fn refused(status: u16, code: &'static str, message: String) -> GatewayError {
    GatewayError::Refused {
        status,
        code,
        message,
    }
}

/// Starts a run of `name` as the caller, in the background.
fn start(
    shared: &Arc<Shared>,
    s: &Client,
    ctx: &Ctx,
    name: &str,
    inputs: Value,
) -> Result<Arc<Run>, GatewayError> {
    let settings = ctx.live.config.workflows.clone();
    let org = ctx.principal.org.as_ref();
    let Some(wf) = settings.find(org, name) else {
        return Err(refused(
            404,
            "workflow_not_found",
            format!("No workflow `{name}`."),
        ));
    };
    if !ctx.principal.allows(&format!("workflow:run:{name}")) {
        return Err(GatewayError::PermissionDenied(format!(
            "You are not allowed to run workflow `{name}` (workflow:run:{name})."
        )));
    }
    let p = &ctx.principal;
    let limits = settings.limits.with(
        ctx.live
            .config
            .orgs
            .get(org)
            .and_then(|o| o.workflow_limits.as_ref()),
    );
    let run = Arc::new(Run::new(
        wf,
        p.org.to_string(),
        p.key_id.as_deref().map(str::to_string),
        p.user.as_deref().map(str::to_string),
    ));
    shared
        .workflows
        .runs
        .admit(run.clone(), limits.max_concurrent_runs)
        .map_err(|n| {
            refused(
                429,
                "too_many_workflow_runs",
                format!("Your org has {n} workflow runs in flight, the most allowed."),
            )
        })?;
    // The caller's own credential, for its LLM steps (never stored beyond the run).
    let credential = super::identity::caller_credential(s);
    let env = Env {
        run: run.clone(),
        settings,
        limits,
        shared: shared.clone(),
        credential,
        data_plane: crate::workflow::loopback(&ctx.live.config.server),
        client: shared.workflows.client.clone(),
    };
    if let Some(j) = shared.workflows.journal.get() {
        j.started(&run);
    }
    tokio::spawn(exec::run(env, inputs));
    Ok(run)
}

/// Routes `/v1/workflows/…`.
pub async fn handle(
    shared: &Arc<Shared>,
    s: &mut Client,
    ctx: &mut Ctx,
    method: &str,
    path: &str,
) -> Result<Outcome, GatewayError> {
    let rest = path.trim_start_matches("/v1/workflows/");
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", [name, "runs"]) => {
            let body = super::body::read_bounded(s, ctx.live.config.server.max_body_bytes).await?;
            ctx.record.request_bytes = body.len() as u64;
            let req: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| GatewayError::InvalidJson(e.to_string()))?
            };
            let wait = req["wait"].as_bool().unwrap_or(true);
            let inputs = req.get("inputs").cloned().unwrap_or(json!({}));
            let run = start(shared, s, ctx, name, inputs)?;
            if wait {
                run.wait().await;
                write_json(s, ctx, 200, Bytes::from(run.json().to_string())).await
            } else {
                write_json(s, ctx, 202, Bytes::from(run.json().to_string())).await
            }
        }
        ("GET", ["runs", id]) => {
            let body = match owned(shared, ctx, id) {
                Ok(run) => run.json(),
                Err(e) => restored(shared, ctx, id).ok_or(e)?,
            };
            write_json(s, ctx, 200, Bytes::from(body.to_string())).await
        }
        ("GET", ["runs", id, "events"]) => {
            let run = owned(shared, ctx, id)?;
            events(s, ctx, &run).await
        }
        ("POST", ["runs", id, "cancel"]) => {
            let run = owned(shared, ctx, id)?;
            let _ = s.drain_body().await;
            run.cancel();
            run.wait().await;
            write_json(s, ctx, 200, Bytes::from(run.json().to_string())).await
        }
        (_, [_, "runs"]) | (_, ["runs", _]) | (_, ["runs", _, "cancel" | "events"]) => {
            Err(GatewayError::MethodNotAllowed)
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// A run the caller started (another caller's is not found, as if it did not exist).
fn owned(shared: &Shared, ctx: &Ctx, id: &str) -> Result<Arc<Run>, GatewayError> {
    let p = &ctx.principal;
    shared
        .workflows
        .runs
        .get(id)
        .filter(|r| r.owned_by(&p.org, p.key_id.as_deref(), p.user.as_deref()))
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> GatewayError {
    refused(404, "run_not_found", format!("No workflow run `{id}`."))
}

/// A run of an earlier process of this gateway, from the journal, if the caller started it.
fn restored(shared: &Shared, ctx: &Ctx, id: &str) -> Option<Value> {
    let p = &ctx.principal;
    let r = shared.workflows.restored.get(id)?;
    let mine = crate::workflow::run::same_caller(
        (&r.org, r.key_id.as_deref(), r.user.as_deref()),
        (&p.org, p.key_id.as_deref(), p.user.as_deref()),
    );
    mine.then(|| r.run.clone())
}

/// `GET /v1/workflows/runs/{id}/events`: server-sent events — each step as it starts and
/// ends (those before the request first), then the run's end.
async fn events(s: &mut Client, ctx: &mut Ctx, run: &Run) -> Result<Outcome, GatewayError> {
    let (mut rx, past) = run.subscribe();
    let Some(mut h) = ResponseHead::new(200, 6) else {
        return Ok(Outcome::Abort);
    };
    h.push("content-type", "text/event-stream");
    h.push("cache-control", "no-cache");
    h.push("x-request-id", ctx.id());
    super::headers::add(&mut h, &ctx.added_headers);
    ctx.record.status = 200;
    if s.write_head(&h).await.is_err() {
        return Ok(Outcome::Abort);
    }
    let send = |e: &Value| {
        Bytes::from(format!(
            "event: {}\ndata: {e}\n\n",
            e["type"].as_str().unwrap_or("step")
        ))
    };
    for e in &past {
        if s.write_body(send(e), false).await.is_err() {
            return Ok(Outcome::Abort);
        }
    }
    if !run.is_done() {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let last = e["type"] == "run";
                    if s.write_body(send(&e), false).await.is_err() {
                        return Ok(Outcome::Abort);
                    }
                    if last {
                        break;
                    }
                }
                // A slow reader missed events: the run's state is still exact in GET.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    } else if s.write_body(send(&run.end_event()), false).await.is_err() {
        return Ok(Outcome::Abort);
    }
    if s.write_body(Bytes::new(), true).await.is_err() {
        return Ok(Outcome::Abort);
    }
    Ok(Outcome::Done)
}

/// `model = "workflow:<name>"`: the chat's messages are the input (`inputs.messages`, and the
/// last user message as `inputs.text`); the run's output is the assistant's answer.
pub async fn chat(
    shared: &Arc<Shared>,
    s: &mut Client,
    ctx: &mut Ctx,
    name: &str,
    body: &[u8],
    stream: bool,
    include_usage: bool,
) -> Result<Outcome, GatewayError> {
    let req: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let messages = req["messages"].clone();
    let text = messages
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| m["content"].clone())
        .unwrap_or(Value::Null);
    let run = start(
        shared,
        s,
        ctx,
        name,
        json!({"messages": messages, "text": text}),
    )?;
    run.wait().await;
    let (status, output, error, usage) = {
        let st = run.lock();
        let u = &st.totals;
        (
            st.status,
            st.output.clone(),
            st.error.clone(),
            json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                   "total_tokens": u.prompt_tokens + u.completion_tokens}),
        )
    };
    if status != Status::Succeeded {
        return Err(refused(
            500,
            "workflow_failed",
            format!(
                "Workflow run {} {}: {}",
                run.id,
                status.name(),
                error.unwrap_or_default()
            ),
        ));
    }
    let content = match output {
        Some(Value::String(t)) => t,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let model = format!("workflow:{name}");
    let created = crate::time::now_unix();
    let id = format!("chatcmpl-{}", run.id);
    if !stream {
        let answer = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": usage,
            "workflow_run": run.id,
        });
        return write_json(s, ctx, 200, Bytes::from(answer.to_string())).await;
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": content}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if include_usage {
        events.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [], "usage": usage}),
        );
    }
    let mut text = String::new();
    for e in events {
        text.push_str("data: ");
        text.push_str(&e.to_string());
        text.push_str("\n\n");
    }
    text.push_str("data: [DONE]\n\n");
    write_sse(s, ctx, Bytes::from(text)).await
}

async fn write_sse(s: &mut Client, ctx: &mut Ctx, body: Bytes) -> Result<Outcome, GatewayError> {
    let Some(mut h) = ResponseHead::new(200, 6) else {
        return Ok(Outcome::Abort);
    };
    h.push("content-type", "text/event-stream");
    h.push("cache-control", "no-cache");
    h.push("content-length", body.len().to_string());
    h.push("x-request-id", ctx.id());
    super::headers::add(&mut h, &ctx.added_headers);
    ctx.record.status = 200;
    ctx.record.response_bytes = body.len() as u64;
    if s.write_head(&h).await.is_err() || s.write_body(body, true).await.is_err() {
        ctx.record.cancelled = true;
        return Ok(Outcome::Abort);
    }
    Ok(Outcome::Done)
}

//! Running a workflow: each block's steps as a DAG (a step starts when the steps it needs have
//! finished; independent steps run together), each step under its timeout, retried with
//! exponential backoff, its error branch taken when it fails for good, everything stopped by
//! cancellation. LLM steps go through the gateway's own data plane as the caller (the same
//! authentication, RBAC, limits, routing and usage rows as a direct call), their rows tagged
//! with the workflow, version, run and step; a step's cost is its row's, so a run's cost is the
//! exact sum of its rows.

use super::def::{Block, Kind, Step};
use super::run::{Run, StepRecord};
use super::Settings;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// What a run's steps need beyond the run itself.
pub struct Env {
    pub run: Arc<Run>,
    pub settings: Arc<Settings>,
    /// The run's limits: `[workflows]`'s with its org's own in place.
    pub limits: super::Limits,
    pub shared: Arc<crate::state::Shared>,
    /// The caller's `Authorization` value, for its LLM calls (held in memory for the run only).
    pub credential: Option<String>,
    /// The data plane as this process reaches it.
    pub data_plane: String,
    pub client: reqwest::Client,
}

/// Why a step (or the run) stopped.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: String,
    pub message: String,
    pub retriable: bool,
}

fn fail(step: &Step, message: String, retriable: bool) -> Failure {
    Failure {
        step: step.path.clone(),
        message,
        retriable,
    }
}

/// The outputs of a block's steps by id, and its last step's output.
type BlockResult = Result<(Map<String, Value>, Value), Failure>;

/// Runs a block with `scope` (inputs, outer steps, item/index/error); answers the outputs of
/// its steps by id and the output of the last step in definition order.
pub fn run_block<'a>(
    env: &'a Env,
    block: &'a Block,
    scope: Value,
    prefix: String,
) -> BoxFuture<'a, BlockResult> {
    Box::pin(async move {
        let n = block.steps.len();
        let mut outputs: Map<String, Value> = Map::new();
        let mut done = vec![false; n];
        let mut started = vec![false; n];
        let mut running = FuturesUnordered::new();
        loop {
            for (i, begun) in started.iter_mut().enumerate() {
                if !*begun && block.deps[i].iter().all(|d| done[*d]) {
                    *begun = true;
                    let mut sc = scope.clone();
                    if let Some(steps) = sc.get_mut("steps").and_then(Value::as_object_mut) {
                        for (k, v) in &outputs {
                            steps.insert(k.clone(), json!({ "output": v }));
                        }
                    }
                    let step = block.steps[i].clone();
                    let path = format!("{prefix}{}", step.id);
                    running.push(async move { (i, run_step(env, step, sc, path).await) });
                }
            }
            let Some((i, result)) = running.next().await else {
                break;
            };
            match result {
                Ok(v) => {
                    done[i] = true;
                    outputs.insert(block.steps[i].id.clone(), v);
                }
                // The first failure ends the block: steps still running are dropped
                // (stopped), steps not started never start.
                Err(f) => return Err(f),
            }
        }
        let last = block
            .steps
            .last()
            .and_then(|s| outputs.get(&s.id).cloned())
            .unwrap_or(Value::Null);
        Ok((outputs, last))
    })
}

/// One step: attempts under the timeout, backoff between them, then the error branch.
fn run_step<'a>(
    env: &'a Env,
    step: Arc<Step>,
    scope: Value,
    path: String,
) -> BoxFuture<'a, Result<Value, Failure>> {
    Box::pin(async move {
        if env.run.is_cancelled() {
            return Err(fail(&step, "cancelled".into(), false));
        }
        {
            let mut s = env.run.lock();
            s.executed += 1;
            if s.executed > env.limits.max_steps {
                return Err(fail(
                    &step,
                    format!("the run exceeded {} step executions", env.limits.max_steps),
                    false,
                ));
            }
        }
        let index = {
            let mut s = env.run.lock();
            s.steps.push(StepRecord {
                path: path.clone(),
                kind: step.kind.name(),
                status: "running",
                attempts: 0,
                started_ms: crate::time::now_unix_ms(),
                ended_ms: None,
                error: None,
                cost_nanousd: 0,
                request_ids: Vec::new(),
            });
            s.steps.len() - 1
        };
        env.run.step_event(index);
        let mut cancel = env.run.cancelled();
        let mut last: Option<Failure> = None;
        for attempt in 0..=step.retries {
            if attempt > 0 {
                let wait = step.backoff * 2u32.saturating_pow(attempt - 1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.wait_for(|c| *c) => {}
                }
            }
            if env.run.is_cancelled() {
                last = Some(fail(&step, "cancelled".into(), false));
                break;
            }
            env.run.lock().steps[index].attempts = attempt + 1;
            let work = execute(env, &step, &scope, &path, index);
            let result = tokio::select! {
                r = async {
                    match step.timeout {
                        Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| {
                            Err(fail(&step, format!("timed out after {} ms", t.as_millis()), true))
                        }),
                        None => work.await,
                    }
                } => r,
                _ = cancel.wait_for(|c| *c) => Err(fail(&step, "cancelled".into(), false)),
            };
            match result {
                Ok(v) => {
                    {
                        let mut s = env.run.lock();
                        let r = &mut s.steps[index];
                        r.status = "succeeded";
                        r.ended_ms = Some(crate::time::now_unix_ms());
                    }
                    env.run.step_event(index);
                    return Ok(v);
                }
                Err(f) => {
                    let again = f.retriable && attempt < step.retries;
                    last = Some(f);
                    if !again {
                        break;
                    }
                }
            }
        }
        let f = last.unwrap_or_else(|| fail(&step, "failed".into(), false));
        {
            let mut s = env.run.lock();
            let r = &mut s.steps[index];
            r.status = "failed";
            r.error = Some(f.message.clone());
            r.ended_ms = Some(crate::time::now_unix_ms());
        }
        env.run.step_event(index);
        match (&step.on_error, env.run.is_cancelled()) {
            (Some(handler), false) => {
                let mut sc = scope;
                sc["error"] = json!({"message": f.message, "step": f.step});
                let (_, out) = run_block(env, handler, sc, format!("{path}.on_error.")).await?;
                env.run.lock().steps[index].status = "handled";
                env.run.step_event(index);
                Ok(out)
            }
            _ => Err(f),
        }
    })
}

/// One attempt of a step's work.
async fn execute(
    env: &Env,
    step: &Step,
    scope: &Value,
    path: &str,
    index: usize,
) -> Result<Value, Failure> {
    let eval_err = |e: String| fail(step, e, false);
    match &step.kind {
        Kind::Invalid => Err(fail(step, "the step did not validate".into(), false)),
        Kind::Transform(e) => e.eval(scope).map_err(eval_err),
        Kind::Condition {
            cond,
            then,
            otherwise,
        } => {
            let take = match cond.eval(scope).map_err(eval_err)? {
                Value::Bool(b) => b,
                other => return Err(fail(step, format!("`if` gave {other}, not a bool"), false)),
            };
            let (branch, name) = if take {
                (then, "then")
            } else {
                (otherwise, "else")
            };
            if branch.steps.is_empty() {
                return Ok(Value::Null);
            }
            let (_, out) = run_block(env, branch, scope.clone(), format!("{path}.{name}.")).await?;
            Ok(out)
        }
        Kind::Loop {
            over,
            body,
            parallelism,
        } => {
            let items = match over.eval(scope).map_err(eval_err)? {
                Value::Array(a) => a,
                other => {
                    return Err(fail(
                        step,
                        format!("`over` gave {other}, not a list"),
                        false,
                    ))
                }
            };
            if items.len() > env.limits.max_loop_items {
                return Err(fail(
                    step,
                    format!(
                        "{} items is over the limit of {} loop iterations",
                        items.len(),
                        env.limits.max_loop_items
                    ),
                    false,
                ));
            }
            let runs = items.into_iter().enumerate().map(|(i, item)| {
                let mut sc = scope.clone();
                sc["item"] = item;
                sc["index"] = json!(i);
                run_block(env, body, sc, format!("{path}[{i}].steps."))
            });
            // In order, at most `parallelism` at a time; the first failure stops the rest
            // (dropping the stream drops the iterations in flight and starts no more).
            let mut outs = futures_util::stream::iter(runs).buffered(*parallelism);
            let mut out = Vec::new();
            while let Some(o) = outs.next().await {
                out.push(o?.1);
            }
            Ok(Value::Array(out))
        }
        Kind::Parallel(branches) => {
            let runs = branches.iter().map(|(name, b)| async move {
                run_block(env, b, scope.clone(), format!("{path}.branches.{name}."))
                    .await
                    .map(|(_, out)| (name.clone(), out))
            });
            let outs = futures_util::future::try_join_all(runs).await?;
            Ok(Value::Object(outs.into_iter().collect()))
        }
        Kind::ApiCall {
            method,
            url,
            headers,
            secret_headers,
            body,
        } => {
            let url = url.render(scope).map_err(eval_err)?;
            let mut hs = Vec::new();
            for (k, t) in headers {
                hs.push((k.clone(), t.render(scope).map_err(eval_err)?));
            }
            for (k, var) in secret_headers {
                let v = std::env::var(var).map_err(|_| {
                    fail(
                        step,
                        format!("secret header `{k}`: ${var} is not set"),
                        false,
                    )
                })?;
                hs.push((k.clone(), v));
            }
            let body = match body {
                Some(b) => Some(b.render(scope).map_err(eval_err)?),
                None => None,
            };
            let limit = step.timeout.unwrap_or(Duration::from_secs(30));
            env.settings
                .guard
                .call(method.clone(), &url, &hs, body, limit)
                .await
                .map(|(status, body)| json!({"status": status, "body": body}))
                .map_err(|e| fail(step, e.message, e.retriable))
        }
        Kind::Llm {
            model,
            messages,
            params,
        } => {
            let mut msgs = Vec::with_capacity(messages.len());
            for (role, t) in messages {
                msgs.push(json!({"role": role, "content": t.render(scope).map_err(eval_err)?}));
            }
            let mut body = params.clone();
            body.insert("model".into(), json!(model));
            body.insert("messages".into(), Value::Array(msgs));
            llm_call(env, step, path, index, Value::Object(body)).await
        }
    }
}

/// One chat completion through the data plane as the caller; the step's usage and exact cost
/// come from the call's own usage record (its receipt).
async fn llm_call(
    env: &Env,
    step: &Step,
    path: &str,
    index: usize,
    body: Value,
) -> Result<Value, Failure> {
    let wf = &env.run.workflow;
    let mut req = env
        .client
        .post(format!("{}/v1/chat/completions", env.data_plane))
        .header(
            super::INTERNAL_HEADER,
            super::internal_value(&wf.name, wf.version, &env.run.id, path),
        )
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(c) = &env.credential {
        req = req.header("authorization", c.as_str());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| fail(step, format!("LLM call: {e}"), true))?;
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| fail(step, format!("LLM answer: {e}"), true))?;
    let answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(step, format!("LLM answer is not JSON: {e}"), true))?;
    // Even a refused call leaves a row: its request id belongs to the step.
    if let Some(r) = &rid {
        env.run.lock().steps[index].request_ids.push(r.clone());
    }
    if status != 200 {
        let msg = answer["error"]["message"]
            .as_str()
            .unwrap_or("error")
            .to_string();
        return Err(fail(
            step,
            format!("{model} answered {status}: {msg}", model = body["model"]),
            status == 429 || status >= 500,
        ));
    }
    let content = answer["choices"][0]["message"]["content"].clone();
    if let Some(r) = &rid {
        let receipt = env
            .shared
            .receipts
            .wait(r, Duration::from_secs(10), |_| true)
            .await;
        let cost = receipt
            .as_ref()
            .and_then(|v| v["cost_nanousd"].as_i64())
            .unwrap_or(0);
        let mut s = env.run.lock();
        s.steps[index].cost_nanousd += cost;
        s.totals.cost_nanousd += cost;
        s.totals.llm_calls += 1;
        if let Some(v) = receipt {
            s.totals.prompt_tokens += v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            s.totals.completion_tokens += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        }
    }
    Ok(content)
}

/// Runs the whole workflow with `inputs`; the run ends succeeded, failed or cancelled.
pub async fn run(env: Env, inputs: Value) {
    let wf = env.run.workflow.clone();
    let scope = json!({"inputs": inputs, "steps": {}});
    let work = run_block(&env, &wf.steps, scope.clone(), "steps.".into());
    let result = tokio::time::timeout(env.limits.max_duration, work).await;
    let run = &env.run;
    match result {
        Ok(Ok((outputs, last))) => {
            let output = match &wf.output {
                Some(e) => {
                    let mut sc = scope;
                    sc["steps"] = Value::Object(
                        outputs
                            .into_iter()
                            .map(|(k, v)| (k, json!({"output": v})))
                            .collect(),
                    );
                    e.eval(&sc)
                }
                None => Ok(last),
            };
            match output {
                Ok(v) => run.finish(super::run::Status::Succeeded, Some(v), None),
                Err(e) => run.finish(
                    super::run::Status::Failed,
                    None,
                    Some(format!("output: {e}")),
                ),
            }
        }
        Ok(Err(f)) if run.is_cancelled() => run.finish(
            super::run::Status::Cancelled,
            None,
            Some(format!("cancelled at {}", f.step)),
        ),
        Ok(Err(f)) => run.finish(
            super::run::Status::Failed,
            None,
            Some(format!("{}: {}", f.step, f.message)),
        ),
        Err(_) => {
            run.cancel();
            run.finish(
                super::run::Status::Failed,
                None,
                Some(format!(
                    "the run exceeded its {} s limit",
                    env.limits.max_duration.as_secs()
                )),
            )
        }
    }
    if let Some(j) = env.shared.workflows.journal.get() {
        j.ended(run);
    }
    if let Some(h) = env.shared.workflows.history.get() {
        let (r, steps) = run.rows();
        h.submit(r, steps);
    }
    env.shared.workflows.runs.ended(&run.id);
}

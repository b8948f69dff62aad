//! Online scoring: a sampled share of an alias's live chat completions is graded by a judge
//! (`[models.X.online_eval]`), off the request path — the caller's response never waits. The
//! sample is drawn when the request is routed; the answer is kept only for sampled requests
//! (the JSON body the relay already holds, or the streamed text the SSE scanner already
//! collects). Once the response is done, a task of its own sends the judge (the judge alias's
//! primary target, directly, like shadow traffic) the question, the answer and the rubric,
//! records the judge call's usage as its own row (`experiment = "online_eval"`), charges the
//! alias's monthly online-eval budget, and stores the grade (0-1) as feedback on the request —
//! so experiment reports show it per variant next to posted feedback.

use super::headers;
use super::upstream::Upstream;
use crate::limits::budget::BudgetState;
use crate::metrics::METRICS;
use crate::routing::{OnlineEval, Target};
use crate::state::Shared;
use crate::usage::UsageRecord;
use crate::warehouse::rows::FeedbackRow;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// The `key_id` of judge grades in `feedback` (what tells them from posted scores).
pub const SOURCE: &str = "online_eval";

/// Completion tokens a judge is assumed to use at most, for its budget reservation.
const JUDGE_MAX_TOKENS: u64 = 64;

/// A request drawn for scoring, with what its judging will need.
pub struct Sampled {
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    alias: Arc<str>,
    judge: Target,
    rubric: Arc<str>,
    budget: Arc<BudgetState>,
}

/// Draws the sample for a chat completion of an alias with `online_eval`.
pub fn sample(
    shared: &Arc<Shared>,
    upstream: &Arc<Upstream>,
    alias: &Arc<str>,
    oe: &OnlineEval,
) -> Option<Sampled> {
    if oe.sample <= 0.0 || rand::random::<f64>() >= oe.sample {
        return None;
    }
    let now = crate::time::now_unix();
    let budget = crate::state::get_or_insert(
        &shared.shadow_budgets,
        &Arc::from(format!("online:{alias}")),
        || BudgetState::new(format!("online_eval:{alias}"), &oe.budget, now),
    );
    // A zero reservation fails only once the month's budget is used up.
    if budget.reserve(0, now, None).is_err() {
        METRICS
            .online_evals
            .with_label_values(&[alias, "skipped_budget"])
            .inc();
        return None;
    }
    Some(Sampled {
        shared: shared.clone(),
        upstream: upstream.clone(),
        alias: alias.clone(),
        judge: oe.judge.clone(),
        rubric: oe.rubric.clone(),
        budget,
    })
}

/// The text of the last user message of a chat request body.
fn question(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?;
    Some(match &m["content"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The answer's text from a non-streamed chat completion body.
pub fn answer_of_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
}

/// Sends the judge its task in a task of its own: `record` is the finished request's.
pub fn judge(s: Sampled, record: &UsageRecord, request: Option<&Bytes>, answer: String) {
    let Some(q) = request.and_then(|b| question(b)) else {
        return;
    };
    let messages = crate::eval::scorer::grade_prompt(&s.rubric, &q, &answer, None);
    let body = serde_json::json!({"model": s.judge.provider_model, "messages": messages,
                                  "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS});
    let Ok(out) = serde_json::to_vec(&body) else {
        return;
    };
    let now = crate::time::now_unix();
    let (_, worst) = crate::limits::worst_case(out.len(), JUDGE_MAX_TOKENS, s.judge.price);
    if s.budget.reserve(worst, now, None).is_err() {
        METRICS
            .online_evals
            .with_label_values(&[&s.alias, "skipped_budget"])
            .inc();
        return;
    }
    let provider = s.judge.provider.clone();
    let path = provider.endpoint_path(
        crate::routing::Endpoint::ChatCompletions.suffix(),
        &s.judge.provider_model,
        None,
    );
    let request_id = format!("{}-judge", record.request_id);
    let Ok(header) = headers::internal_request(&provider, "POST", &path, out.len(), &request_id)
    else {
        s.budget.settle(worst, 0, now);
        return;
    };
    let mut row = record.clone();
    let scored = record.request_id.clone();
    let shared = s.shared.clone();
    let cut = shared.tasks.cut_signal();
    shared.clone().tasks.spawn("online_eval", async move {
        let started = Instant::now();
        row.request_id = request_id;
        row.experiment = Some(Arc::from(SOURCE));
        row.variant = Some(s.judge.label.clone());
        row.requested_model = Some(format!("{}:judge", s.alias));
        row.provider = Some(provider.name.clone());
        row.provider_model = Some(s.judge.provider_model.clone());
        row.stream = false;
        row.request_bytes = out.len() as u64;
        row.response_bytes = 0;
        row.ttft_ms = None;
        let (body, cost, _) = super::shadow::send_recorded(
            &s.upstream,
            &s.judge,
            header,
            Bytes::from(out),
            started,
            cut,
            &mut row,
        )
        .await;
        let grade = answer_of_body(&body).and_then(|t| crate::eval::scorer::parse_grade(&t));
        s.budget.settle(worst, cost, crate::time::now_unix());
        row.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let outcome = match (grade, &shared.feedback) {
            (Some(g), Some(sink)) => {
                let now = crate::time::now_unix_ms();
                sink.submit(FeedbackRow {
                    ts: (now / 1000) as u32,
                    ts_ms: now,
                    feedback_id: format!(
                        "fb_{:024x}",
                        rand::random::<u128>() & ((1u128 << 96) - 1)
                    ),
                    batch_id: String::new(),
                    request_id: scored,
                    score: g,
                    comment: format!("judge {}", s.judge.label),
                    org: row.org.as_deref().unwrap_or_default().to_string(),
                    key_id: SOURCE.into(),
                    user: String::new(),
                });
                "scored"
            }
            (Some(_), None) => "no_warehouse",
            (None, _) => "failed",
        };
        METRICS
            .online_evals
            .with_label_values(&[&s.alias, outcome])
            .inc();
        shared.sink.submit(row);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_and_the_answer_are_read_from_the_bodies() {
        let req = br#"{"messages":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":"last"}]}"#;
        assert_eq!(question(req).as_deref(), Some("last"));
        assert_eq!(question(b"{}"), None);
        let resp = br#"{"choices":[{"message":{"role":"assistant","content":"42"}}]}"#;
        assert_eq!(answer_of_body(resp).as_deref(), Some("42"));
    }
}

//! Runs: each run's state (status, per-step progress, output, error, cost) in memory, its
//! cancellation, and the registry that counts an org's runs in flight.

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use super::def::Workflow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One step execution (a loop's body runs once per item: `steps.each[3].steps.up`).
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub path: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub attempts: u32,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub error: Option<String>,
    pub cost_nanousd: i64,
    pub request_ids: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Totals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanousd: i64,
    pub llm_calls: u64,
}

#[derive(Debug)]
pub struct State {
    pub status: Status,
    pub steps: Vec<StepRecord>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub ended_ms: Option<u64>,
    pub totals: Totals,
    /// Step executions so far (bounded per run).
    pub executed: u32,
}

pub struct Run {
    pub id: String,
    pub workflow: Arc<Workflow>,
    pub org: String,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub started_ms: u64,
    pub state: Mutex<State>,
    cancel: watch::Sender<bool>,
    done: watch::Sender<bool>,
    /// Step and run events as they happen (the run's SSE stream).
    events: tokio::sync::broadcast::Sender<Value>,
}

impl Run {
    pub fn new(
        workflow: Arc<Workflow>,
        org: String,
        key_id: Option<String>,
        user: Option<String>,
    ) -> Self {
        let v: u128 = rand::random();
        Self {
            id: format!("wfr_{:024x}", v & ((1u128 << 96) - 1)),
            workflow,
            org,
            key_id,
            user,
            started_ms: crate::time::now_unix_ms(),
            state: Mutex::new(State {
                status: Status::Running,
                steps: Vec::new(),
                output: None,
                error: None,
                ended_ms: None,
                totals: Totals::default(),
                executed: 0,
            }),
            cancel: watch::channel(false).0,
            done: watch::channel(false).0,
            events: tokio::sync::broadcast::channel(256).0,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    pub fn finish(&self, status: Status, output: Option<Value>, error: Option<String>) {
        {
            let mut s = self.lock();
            s.status = status;
            s.output = output;
            s.error = error;
            s.ended_ms = Some(crate::time::now_unix_ms());
        }
        let _ = self.events.send(self.end_event());
        self.done.send_replace(true);
    }

    /// The event that ends a run's stream.
    pub fn end_event(&self) -> Value {
        let s = self.lock();
        json!({"type": "run", "id": self.id, "status": s.status.name(), "output": s.output,
               "error": s.error, "cost_nanousd": s.totals.cost_nanousd})
    }

    /// Tells subscribers that step `index` changed.
    pub fn step_event(&self, index: usize) {
        let event = {
            let s = self.lock();
            let Some(r) = s.steps.get(index) else { return };
            json!({"type": "step", "path": r.path, "step_type": r.kind, "status": r.status,
                   "attempts": r.attempts, "error": r.error, "cost_nanousd": r.cost_nanousd})
        };
        let _ = self.events.send(event);
    }

    /// Events from now on, and the steps so far as events (subscribed first, so nothing
    /// falls between the two).
    pub fn subscribe(&self) -> (tokio::sync::broadcast::Receiver<Value>, Vec<Value>) {
        let rx = self.events.subscribe();
        let s = self.lock();
        let past = s
            .steps
            .iter()
            .map(|r| {
                json!({"type": "step", "path": r.path, "step_type": r.kind, "status": r.status,
                       "attempts": r.attempts, "error": r.error, "cost_nanousd": r.cost_nanousd})
            })
            .collect();
        (rx, past)
    }

    /// Resolves once the run has ended.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Whether `key_id` / `user` (the caller) started this run.
    pub fn owned_by(&self, org: &str, key_id: Option<&str>, user: Option<&str>) -> bool {
        same_caller(
            (&self.org, self.key_id.as_deref(), self.user.as_deref()),
            (org, key_id, user),
        )
    }

    pub fn json(&self) -> Value {
        let s = self.lock();
        let steps: Vec<Value> = s
            .steps
            .iter()
            .map(|r| {
                json!({
                    "path": r.path, "type": r.kind, "status": r.status, "attempts": r.attempts,
                    "started_ms": r.started_ms, "ended_ms": r.ended_ms, "error": r.error,
                    "cost_nanousd": r.cost_nanousd, "request_ids": r.request_ids,
                })
            })
            .collect();
        json!({
            "object": "workflow.run",
            "id": self.id,
            "workflow": self.workflow.name,
            "version": self.workflow.version,
            "status": s.status.name(),
            "started_ms": self.started_ms,
            "ended_ms": s.ended_ms,
            "output": s.output,
            "error": s.error,
            "usage": {
                "prompt_tokens": s.totals.prompt_tokens,
                "completion_tokens": s.totals.completion_tokens,
                "total_tokens": s.totals.prompt_tokens + s.totals.completion_tokens,
            },
            "llm_calls": s.totals.llm_calls,
            "cost_nanousd": s.totals.cost_nanousd,
            "cost_usd": crate::usage::pricing::format_usd(s.totals.cost_nanousd),
            "steps": steps,
        })
    }
}

/// Whether two (org, key id, user) name the same caller: the same key, or without a key the
/// same user (an SSO caller), always in the same org.
pub fn same_caller(
    a: (&str, Option<&str>, Option<&str>),
    b: (&str, Option<&str>, Option<&str>),
) -> bool {
    a.0 == b.0
        && match (b.1, b.2) {
            (Some(k), _) => a.1 == Some(k),
            (None, Some(u)) => a.1.is_none() && a.2 == Some(u),
            (None, None) => a.1.is_none() && a.2.is_none(),
        }
}

impl Run {
    /// The run and its step executions as warehouse rows (once it has ended).
    pub fn rows(
        &self,
    ) -> (
        crate::warehouse::rows::WorkflowRunRow,
        Vec<crate::warehouse::rows::WorkflowStepRow>,
    ) {
        let s = self.lock();
        let ended = s.ended_ms.unwrap_or_else(crate::time::now_unix_ms);
        let ts = (ended / 1000) as u32;
        let wf = &self.workflow;
        let steps = s
            .steps
            .iter()
            .map(|r| crate::warehouse::rows::WorkflowStepRow {
                ts,
                batch_id: String::new(),
                run_id: self.id.clone(),
                workflow: wf.name.clone(),
                version: wf.version,
                org: self.org.clone(),
                path: r.path.clone(),
                step_type: r.kind.to_string(),
                status: r.status.to_string(),
                attempts: r.attempts,
                started_ms: r.started_ms,
                ended_ms: r.ended_ms.unwrap_or(ended),
                error: r.error.clone().unwrap_or_default(),
                cost_nanousd: r.cost_nanousd,
                request_ids: r.request_ids.clone(),
            })
            .collect();
        let run = crate::warehouse::rows::WorkflowRunRow {
            ts,
            batch_id: String::new(),
            run_id: self.id.clone(),
            workflow: wf.name.clone(),
            version: wf.version,
            org: self.org.clone(),
            key_id: self.key_id.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            status: s.status.name().to_string(),
            error: s.error.clone().unwrap_or_default(),
            started_ms: self.started_ms,
            ended_ms: ended,
            steps: s.steps.len() as u32,
            llm_calls: s.totals.llm_calls,
            prompt_tokens: s.totals.prompt_tokens,
            completion_tokens: s.totals.completion_tokens,
            cost_nanousd: s.totals.cost_nanousd,
        };
        (run, steps)
    }
}

/// Runs of this process, by id; ended runs are kept (the newest `KEEP_ENDED`) for reading.
#[derive(Default)]
pub struct Registry {
    runs: dashmap::DashMap<String, Arc<Run>>,
    ended: Mutex<std::collections::VecDeque<String>>,
}

const KEEP_ENDED: usize = 10_000;

impl Registry {
    /// Adds a run unless its org has `max` in flight already.
    pub fn admit(&self, run: Arc<Run>, max: usize) -> Result<(), usize> {
        let active = self
            .runs
            .iter()
            .filter(|r| r.org == run.org && !r.is_done())
            .count();
        if active >= max {
            return Err(active);
        }
        self.runs.insert(run.id.clone(), run);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        self.runs.get(id).map(|r| r.clone())
    }

    /// Notes that a run ended; the oldest ended runs beyond the bound are forgotten.
    pub fn ended(&self, id: &str) {
        let mut q = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(id.to_string());
        while q.len() > KEEP_ENDED {
            if let Some(old) = q.pop_front() {
                self.runs.remove(&old);
            }
        }
    }
}

//! Rows as ClickHouse stores them (RowBinary, column names = field names) and how a request's
//! usage record or an audit event becomes one. Absent values are empty strings / 0: the columns
//! are not Nullable, which keeps them portable and cheap on 18.16.

use crate::audit::AuditEvent;
use crate::usage::UsageRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct UsageRow {
    pub ts: u32,
    pub ts_ms: u64,
    pub request_id: String,
    /// Which sink batch carried the row: the replayer's duplicate check looks rows up by it.
    pub batch_id: String,
    pub org: String,
    pub team: String,
    pub user: String,
    pub key_id: String,
    pub cost_center: String,
    pub department: String,
    pub project: String,
    pub tags: Vec<String>,
    pub endpoint: String,
    pub requested_model: String,
    pub provider: String,
    pub provider_model: String,
    pub experiment: String,
    pub variant: String,
    pub stream: u8,
    pub status: u16,
    pub error_type: String,
    pub cancelled: u8,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub usage_source: String,
    pub cost_nanousd: i64,
    pub cost_known: u8,
    /// Rows spooled before this column existed read as 0.
    #[serde(default)]
    pub cache_savings_nanousd: i64,
    pub latency_ms: f64,
    pub ttft_ms: f64,
    pub upstream_latency_ms: f64,
    pub retries: u32,
    pub client_ip: String,
    pub end_user: String,
}

fn s(v: &Option<impl AsRef<str>>) -> String {
    v.as_ref()
        .map(|v| v.as_ref().to_string())
        .unwrap_or_default()
}

impl UsageRow {
    pub fn from_record(r: UsageRecord, batch_id: &str) -> Self {
        Self {
            ts: (r.ts_ms / 1000) as u32,
            ts_ms: r.ts_ms,
            batch_id: batch_id.to_string(),
            org: s(&r.org),
            team: s(&r.team),
            user: s(&r.user),
            key_id: s(&r.key_id),
            cost_center: s(&r.cost_center),
            department: r.department.unwrap_or_default(),
            project: r.project.unwrap_or_default(),
            tags: r.tags,
            endpoint: r.endpoint.to_string(),
            requested_model: r.requested_model.unwrap_or_default(),
            provider: s(&r.provider),
            provider_model: r.provider_model.unwrap_or_default(),
            experiment: s(&r.experiment),
            variant: s(&r.variant),
            stream: r.stream as u8,
            status: r.status,
            error_type: r.error_type.unwrap_or_default().to_string(),
            cancelled: r.cancelled as u8,
            prompt_tokens: r.prompt_tokens,
            cached_tokens: r.cached_tokens,
            completion_tokens: r.completion_tokens,
            usage_source: r.usage_source.label().to_string(),
            cost_nanousd: r.cost_nanousd.unwrap_or(0),
            cost_known: r.cost_nanousd.is_some() as u8,
            cache_savings_nanousd: r.cache_savings_nanousd,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms.unwrap_or(0.0),
            upstream_latency_ms: r.upstream_latency_ms.unwrap_or(0.0),
            retries: r.retries,
            client_ip: r.client_ip.as_deref().unwrap_or_default().to_string(),
            end_user: r.end_user.unwrap_or_default(),
            request_id: r.request_id,
        }
    }
}

/// One score a client gave a response.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct FeedbackRow {
    pub ts: u32,
    pub ts_ms: u64,
    pub feedback_id: String,
    pub batch_id: String,
    pub request_id: String,
    pub score: f64,
    pub comment: String,
    pub org: String,
    pub key_id: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct AuditRow {
    pub ts: u32,
    pub ts_ms: u64,
    /// One chain per gateway process lifetime; its first event links to the previous chain's
    /// last hash on this node.
    pub chain: String,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub request_id: String,
    pub actor: String,
    pub org: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub reason: String,
    pub before: String,
    pub after: String,
    pub client_ip: String,
    pub user_agent: String,
    /// Ed25519 signature (hex) of `hash` by the audit signing key; empty when signing is off.
    /// (Defaulted so spool segments written before the column existed still replay.)
    #[serde(default)]
    pub sig: String,
}

impl AuditRow {
    /// The row without its chain position (`chain`, `seq`, hashes are set by the chain).
    pub fn from_event(e: AuditEvent) -> Self {
        let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
        Self {
            ts: (e.ts_ms / 1000) as u32,
            ts_ms: e.ts_ms,
            chain: String::new(),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            request_id: e.request_id,
            actor: e.actor,
            org: e.org.unwrap_or_default(),
            action: e.action.to_string(),
            resource: e.resource,
            outcome: e.outcome.to_string(),
            reason: e.reason.unwrap_or_default(),
            before: json(e.before),
            after: json(e.after),
            client_ip: e.client_ip.unwrap_or_default(),
            user_agent: e.user_agent.unwrap_or_default(),
            sig: String::new(),
        }
    }
}

/// One ended workflow run (`workflow_runs`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct WorkflowRunRow {
    pub ts: u32,
    pub batch_id: String,
    pub run_id: String,
    pub workflow: String,
    pub version: u32,
    pub org: String,
    pub key_id: String,
    pub user: String,
    pub status: String,
    pub error: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub steps: u32,
    pub llm_calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanousd: i64,
}

/// One step execution of a run (`workflow_steps`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct WorkflowStepRow {
    pub ts: u32,
    pub batch_id: String,
    pub run_id: String,
    pub workflow: String,
    pub version: u32,
    pub org: String,
    pub path: String,
    pub step_type: String,
    pub status: String,
    pub attempts: u32,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub error: String,
    pub cost_nanousd: i64,
    pub request_ids: Vec<String>,
}

//! Audit events: who did what to which resource, from where, and how it ended. Denials on the
//! data plane and admin writes are audited through the `AuditSink` trait; this version ships a
//! JSON-lines implementation.

use crate::jsonl::{Counters, JsonLines, Target};
use crate::metrics::METRICS;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub ts_ms: u64,
    pub request_id: String,
    /// `key:<id>`, `user:<id>`, or `anonymous`.
    pub actor: String,
    pub org: Option<String>,
    /// e.g. `auth.failed`, `rbac.denied`, `key.create`, `key.revoke`, `config.reload`.
    pub action: &'static str,
    /// e.g. `model:gpt-4o`, `key:<id>`.
    pub resource: String,
    /// `allowed`, `denied`, `failed`, `succeeded`.
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

pub trait AuditSink: Send + Sync {
    /// Takes one event; must return at once.
    fn record(&self, event: AuditEvent);
    fn flush(&self, timeout: Duration) -> bool;
}

pub struct JsonLinesAudit(JsonLines<AuditEvent>);

/// Audit events are rare next to requests: serde's derived form is the line.
impl crate::jsonl::JsonLine for AuditEvent {
    fn write_line<W: std::io::Write>(&self, out: &mut W) -> std::io::Result<()> {
        serde_json::to_writer(out, self).map_err(std::io::Error::from)
    }
}

impl JsonLinesAudit {
    pub fn start(path: PathBuf) -> std::io::Result<Arc<Self>> {
        let counters = Counters {
            depth: METRICS.audit_queue_depth.clone(),
            outcomes: METRICS.audit_events.clone(),
        };
        JsonLines::start(
            "audit",
            Target::File(path),
            16_384,
            Duration::from_millis(100),
            counters,
        )
        .map(|w| Arc::new(Self(w)))
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&self, event: AuditEvent) {
        self.0.submit(event)
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.0.flush(timeout)
    }
}

//! The usage and audit sinks on top of the warehouse pipeline: which table, which key the
//! duplicate check compares, and how an item becomes a row.

use super::chain::Chain;
use super::rows::{AuditRow, FeedbackRow, UsageRow, WorkflowRunRow, WorkflowStepRow};
use super::sink::{Pipeline, PipelineSettings, Stamp, Table};
use crate::audit::{AuditEvent, AuditSink};
use crate::metrics::METRICS;
use crate::usage::{UsageRecord, UsageSink};
use clickhouse::Client;
use std::sync::Arc;
use std::time::Duration;

impl Table for UsageRow {
    const TABLE: &'static str = "usage_events";

    fn key(&self) -> String {
        self.request_id.clone()
    }

    fn stored_keys(client: &Client, batch_id: &str, rows: &[Self]) -> clickhouse::query::Query {
        // The time bounds let ClickHouse skip every partition the batch cannot be in.
        let lo = rows.iter().map(|r| r.ts).min().unwrap_or(0);
        let hi = rows.iter().map(|r| r.ts).max().unwrap_or(u32::MAX);
        client
            .query(
                "SELECT request_id FROM usage_events \
                 WHERE batch_id = ? AND ts >= toDateTime(?) AND ts <= toDateTime(?)",
            )
            .bind(batch_id)
            .bind(lo)
            .bind(hi)
    }
}

impl Table for AuditRow {
    const TABLE: &'static str = "audit_events";

    fn key(&self) -> String {
        self.seq.to_string()
    }

    fn stored_keys(client: &Client, _batch_id: &str, rows: &[Self]) -> clickhouse::query::Query {
        let chain = rows.first().map(|r| r.chain.as_str()).unwrap_or("");
        let lo = rows.iter().map(|r| r.seq).min().unwrap_or(0);
        let hi = rows.iter().map(|r| r.seq).max().unwrap_or(0);
        client
            .query(
                "SELECT toString(seq) FROM audit_events WHERE chain = ? AND seq >= ? AND seq <= ?",
            )
            .bind(chain)
            .bind(lo)
            .bind(hi)
    }
}

impl Table for FeedbackRow {
    const TABLE: &'static str = "feedback";

    fn key(&self) -> String {
        self.feedback_id.clone()
    }

    fn stored_keys(client: &Client, batch_id: &str, _rows: &[Self]) -> clickhouse::query::Query {
        client
            .query("SELECT feedback_id FROM feedback WHERE batch_id = ?")
            .bind(batch_id)
    }
}

struct FeedbackStamp;

impl Stamp<FeedbackRow, FeedbackRow> for FeedbackStamp {
    fn row(&mut self, mut item: FeedbackRow, batch_id: &str) -> FeedbackRow {
        item.batch_id = batch_id.to_string();
        item
    }
}

/// Feedback scores, through the same never-lose pipeline as usage.
pub struct ClickHouseFeedback(Pipeline<FeedbackRow>);

impl ClickHouseFeedback {
    pub fn start(client: Client, settings: PipelineSettings) -> std::io::Result<Arc<Self>> {
        Pipeline::start::<FeedbackRow, _>(
            "feedback",
            client,
            settings,
            FeedbackStamp,
            METRICS.feedback_queue_depth.clone(),
            &METRICS.feedback_rows,
        )
        .map(|p| Arc::new(Self(p)))
    }

    pub fn submit(&self, row: FeedbackRow) {
        self.0.submit(row)
    }

    pub fn flush(&self, timeout: Duration) -> bool {
        self.0.flush(timeout)
    }
}

impl Table for WorkflowRunRow {
    const TABLE: &'static str = "workflow_runs";

    fn key(&self) -> String {
        self.run_id.clone()
    }

    fn stored_keys(client: &Client, batch_id: &str, _rows: &[Self]) -> clickhouse::query::Query {
        client
            .query("SELECT run_id FROM workflow_runs WHERE batch_id = ?")
            .bind(batch_id)
    }
}

impl Table for WorkflowStepRow {
    const TABLE: &'static str = "workflow_steps";

    fn key(&self) -> String {
        format!("{} {}", self.run_id, self.path)
    }

    fn stored_keys(client: &Client, batch_id: &str, _rows: &[Self]) -> clickhouse::query::Query {
        client
            .query("SELECT concat(run_id, ' ', path) FROM workflow_steps WHERE batch_id = ?")
            .bind(batch_id)
    }
}

struct RunStamp;

impl Stamp<WorkflowRunRow, WorkflowRunRow> for RunStamp {
    fn row(&mut self, mut item: WorkflowRunRow, batch_id: &str) -> WorkflowRunRow {
        item.batch_id = batch_id.to_string();
        item
    }
}

struct StepStamp;

impl Stamp<WorkflowStepRow, WorkflowStepRow> for StepStamp {
    fn row(&mut self, mut item: WorkflowStepRow, batch_id: &str) -> WorkflowStepRow {
        item.batch_id = batch_id.to_string();
        item
    }
}

/// Workflow history: runs and their steps, through the same never-lose pipeline as usage.
pub struct ClickHouseWorkflows {
    runs: Pipeline<WorkflowRunRow>,
    steps: Pipeline<WorkflowStepRow>,
}

impl ClickHouseWorkflows {
    pub fn start(
        client: Client,
        runs: PipelineSettings,
        steps: PipelineSettings,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            runs: Pipeline::start::<WorkflowRunRow, _>(
                "workflow_runs",
                client.clone(),
                runs,
                RunStamp,
                METRICS.workflow_queue_depth.clone(),
                &METRICS.workflow_rows,
            )?,
            steps: Pipeline::start::<WorkflowStepRow, _>(
                "workflow_steps",
                client,
                steps,
                StepStamp,
                METRICS.workflow_queue_depth.clone(),
                &METRICS.workflow_rows,
            )?,
        }))
    }

    pub fn submit(&self, run: WorkflowRunRow, steps: Vec<WorkflowStepRow>) {
        for s in steps {
            self.steps.submit(s);
        }
        self.runs.submit(run);
    }

    pub fn flush(&self, timeout: Duration) -> bool {
        let s = self.steps.flush(timeout);
        self.runs.flush(timeout) && s
    }
}

struct UsageStamp;

impl Stamp<UsageRecord, UsageRow> for UsageStamp {
    fn row(&mut self, item: UsageRecord, batch_id: &str) -> UsageRow {
        UsageRow::from_record(item, batch_id)
    }
}

impl Stamp<AuditEvent, AuditRow> for Chain {
    fn row(&mut self, item: AuditEvent, _batch_id: &str) -> AuditRow {
        let mut row = AuditRow::from_event(item);
        self.stamp(&mut row);
        row
    }

    fn durable(&mut self) {
        self.persist();
    }
}

pub struct ClickHouseUsage(Pipeline<UsageRecord>);

impl ClickHouseUsage {
    pub fn start(client: Client, settings: PipelineSettings) -> std::io::Result<Arc<Self>> {
        Pipeline::start::<UsageRow, _>(
            "usage",
            client,
            settings,
            UsageStamp,
            METRICS.usage_sink_queue_depth.clone(),
            &METRICS.usage_rows,
        )
        .map(|p| Arc::new(Self(p)))
    }
}

impl UsageSink for ClickHouseUsage {
    fn submit(&self, record: UsageRecord) {
        self.0.submit(record)
    }

    fn backed_up(&self) -> bool {
        self.0.backed_up()
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.0.flush(timeout)
    }
}

pub struct ClickHouseAudit(Pipeline<AuditEvent>);

impl ClickHouseAudit {
    pub fn start(
        client: Client,
        settings: PipelineSettings,
        signer: Option<ed25519_dalek::SigningKey>,
    ) -> std::io::Result<Arc<Self>> {
        match &signer {
            Some(k) => log::info!(
                "audit rows signed; public key {}",
                super::signing::public_hex(k)
            ),
            None => log::warn!(
                "audit rows are hash-chained but not signed: set [audit] signing_key to make tampering detectable without trusting the database"
            ),
        }
        let chain = Chain::start(&settings.node, &settings.spool_dir).signed_by(signer);
        log::info!("audit chain {}", chain.id);
        Pipeline::start::<AuditRow, _>(
            "audit",
            client,
            settings,
            chain,
            METRICS.audit_queue_depth.clone(),
            &METRICS.audit_events,
        )
        .map(|p| Arc::new(Self(p)))
    }
}

impl AuditSink for ClickHouseAudit {
    fn record(&self, event: AuditEvent) {
        self.0.submit(event)
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.0.flush(timeout)
    }
}

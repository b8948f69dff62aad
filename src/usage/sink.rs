//! `UsageSink`: the request path hands over one record with a call that never blocks. This
//! version ships the JSON-lines sink (file or stdout).

use super::UsageRecord;
use crate::jsonl::{Counters, JsonLines, Target};
use crate::metrics::METRICS;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub trait UsageSink: Send + Sync {
    /// Takes one record; must return at once.
    fn submit(&self, record: UsageRecord);
    /// Writes out everything submitted so far, waiting at most `timeout`.
    fn flush(&self, timeout: Duration) -> bool;
    /// The sink's queue is full: the data plane refuses new requests (503) before they reach a
    /// provider, so nothing is served whose record could not be queued.
    fn backed_up(&self) -> bool {
        false
    }
}

pub struct JsonLinesSink(JsonLines<UsageRecord>);

impl JsonLinesSink {
    /// Starts the writer; `path: None` writes to standard output.
    pub fn start(
        path: Option<PathBuf>,
        capacity: usize,
        flush_interval: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let target = path.map_or(Target::Stdout, Target::File);
        let counters = Counters {
            depth: METRICS.usage_sink_queue_depth.clone(),
            outcomes: METRICS.usage_rows.clone(),
        };
        JsonLines::start("usage", target, capacity, flush_interval, counters)
            .map(|w| Arc::new(Self(w)))
    }
}

impl UsageSink for JsonLinesSink {
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

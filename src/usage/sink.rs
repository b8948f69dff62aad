//! `UsageSink`: the request path hands over one record with a call that never blocks. This file
//! has the JSON-lines sink (file or stdout) behind a bounded queue and one writer thread.

use super::UsageRecord;
use crate::metrics::METRICS;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub trait UsageSink: Send + Sync {
    /// Takes one record; must return at once.
    fn submit(&self, record: UsageRecord);
    /// Writes out everything submitted so far, waiting at most `timeout`.
    fn flush(&self, timeout: Duration) -> bool;
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(mpsc::SyncSender<()>),
}

/// Where JSON lines go.
pub enum Target {
    File(PathBuf),
    Stdout,
}

pub struct JsonLinesSink {
    tx: SyncSender<Msg>,
}

impl JsonLinesSink {
    /// Starts the writer thread. Fails only if the file cannot be opened.
    pub fn start(
        target: Target,
        capacity: usize,
        flush_interval: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = match target {
            Target::File(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )
            }
            Target::Stdout => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("usage-jsonl".into())
            .spawn(move || writer(rx, out, flush_interval))?;
        Ok(Arc::new(Self { tx }))
    }
}

impl UsageSink for JsonLinesSink {
    fn submit(&self, record: UsageRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => METRICS.usage_sink_queue_depth.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // The durable spool arrives with the ClickHouse sink; here a full queue is
                // counted loudly rather than blocking the request.
                METRICS.usage_rows.with_label_values(&["lost"]).inc();
                log::error!("usage queue full: record lost");
            }
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// How often the writer drains the queue: short, so each burst of serialization stays small next
/// to the request threads (a long interval at high load means multi-millisecond bursts).
const DRAIN_TICK: Duration = Duration::from_millis(5);

/// The writer never blocks in `recv`: it wakes every `DRAIN_TICK`, drains the queue, and hands
/// the buffered lines to the OS every `flush_interval`. So `submit` never has a sleeping thread
/// to wake, and a busy gateway pays no futex wake-up per request.
fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>, flush_interval: Duration) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
    let mut last_flush = Instant::now();
    loop {
        let mut acks = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Msg::Record(r)) => {
                    METRICS.usage_sink_queue_depth.dec();
                    let ok =
                        serde_json::to_writer(&mut out, &r).is_ok() && out.write_all(b"\n").is_ok();
                    let outcome = if ok { "inserted" } else { "lost" };
                    METRICS.usage_rows.with_label_values(&[outcome]).inc();
                    if !ok {
                        log::error!("usage record could not be written");
                    }
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if !acks.is_empty() || last_flush.elapsed() >= flush_interval {
            if out.flush().is_err() {
                log::error!("usage sink: flush failed");
            }
            last_flush = Instant::now();
        }
        for ack in acks {
            let _ = ack.send(());
        }
        std::thread::sleep(DRAIN_TICK.min(flush_interval));
    }
}

//! The warehouse pipeline behind `UsageSink` / `AuditSink`: the request path does one `try_send`
//! into a bounded queue; one thread (its own single-threaded runtime, so nothing here competes
//! with the proxy's workers) drains it every few milliseconds into batches cut by rows and by
//! age, and inserts each batch (RowBinary, LZ4) with a timeout. A batch ClickHouse did not
//! acknowledge — error, timeout, or too many inserts already in flight — goes to the spool, and
//! while ClickHouse is failing new batches go there directly instead of waiting on timeouts.
//! The replayer re-inserts spooled batches oldest first and deletes a segment only after its
//! insert succeeded.
//!
//! Never double-counting: an insert whose answer was lost may have landed, wholly or partly
//! (one part per partition). Every batch has an id unique across processes, stored in its rows
//! (usage: `batch_id`; audit: `chain` + `seq` range); before replaying, the replayer asks which
//! of the batch's keys are already stored and inserts only the others. Only replays pay that
//! query, and it is bounded to the batch's time range and partitions.

use super::spool::{self, ReadError, Spool};
use crate::handoff::Msg;
use crate::metrics::METRICS;
use clickhouse::Client;
use prometheus::{Histogram, IntCounter, IntGauge};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How often the queue is drained: short enough to keep batches flowing, long enough that the
/// request path never has to wake the sink thread.
const DRAIN_TICK: Duration = Duration::from_millis(5);
/// Pause between replay attempts while ClickHouse is down.
const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// A ClickHouse table the pipeline writes.
pub trait Table: clickhouse::Row + Serialize + DeserializeOwned + Send + Sync + 'static
where
    Self: for<'a> clickhouse::RowWrite<Value<'a> = Self>,
{
    const TABLE: &'static str;
    /// The row's identity within its batch (what the duplicate check compares).
    fn key(&self) -> String;
    /// A query returning, as strings, the keys of this batch's rows already stored.
    fn stored_keys(client: &Client, batch_id: &str, rows: &[Self]) -> clickhouse::query::Query;
}

/// Turns queued items into rows; owned by the sink thread, so it may keep state (the audit
/// chain does).
pub trait Stamp<I, R>: Send + 'static {
    fn row(&mut self, item: I, batch_id: &str) -> R;
    /// Called once the rows stamped so far are durable (inserted or spooled).
    fn durable(&mut self) {}
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub batch_rows: usize,
    pub batch_interval: Duration,
    pub insert_timeout: Duration,
    pub max_inflight_inserts: usize,
    pub queue_capacity: usize,
    pub spool_dir: std::path::PathBuf,
    pub spool_max_bytes: u64,
    /// Names batches: unique per node and process start.
    pub node: String,
}

/// The metric handles of one sink, resolved once.
#[derive(Clone)]
struct Meters {
    depth: IntGauge,
    inserted: IntCounter,
    spooled: IntCounter,
    replayed: IntCounter,
    duplicate: IntCounter,
    lost: IntCounter,
    overflowed: IntCounter,
    b_inserted: IntCounter,
    b_spooled: IntCounter,
    b_replayed: IntCounter,
    b_failed: IntCounter,
    insert_latency: Histogram,
    spool_bytes: IntGauge,
    spool_segments: IntGauge,
    spool_near_full: IntGauge,
    up: IntGauge,
}

impl Meters {
    fn new(sink: &str, depth: IntGauge, rows: &prometheus::IntCounterVec) -> Self {
        let b = |o: &str| METRICS.sink_batches.with_label_values(&[sink, o]);
        Self {
            depth,
            inserted: rows.with_label_values(&["inserted"]),
            spooled: rows.with_label_values(&["spooled"]),
            replayed: rows.with_label_values(&["replayed"]),
            duplicate: rows.with_label_values(&["duplicate_skipped"]),
            lost: rows.with_label_values(&["lost"]),
            overflowed: rows.with_label_values(&["overflowed"]),
            b_inserted: b("inserted"),
            b_spooled: b("spooled"),
            b_replayed: b("replayed"),
            b_failed: b("failed"),
            insert_latency: METRICS.sink_insert_duration.with_label_values(&[sink]),
            spool_bytes: METRICS.sink_spool_bytes.with_label_values(&[sink]),
            spool_segments: METRICS.sink_spool_segments.with_label_values(&[sink]),
            spool_near_full: METRICS.sink_spool_near_full.with_label_values(&[sink]),
            up: METRICS.sink_clickhouse_up.with_label_values(&[sink]),
        }
    }

    fn spool(&self, s: &Spool) {
        self.spool_bytes.set(s.bytes() as i64);
        self.spool_segments.set(s.len() as i64);
        let near = s.bytes() * 10 > s.max_bytes() * 8;
        if near && self.spool_near_full.get() == 0 {
            log::error!(
                "warehouse spool over 80% full ({} of {} bytes): ClickHouse has been unreachable for long; rows will be lost when it is full",
                s.bytes(),
                s.max_bytes()
            );
        }
        self.spool_near_full.set(near as i64);
    }
}

/// The request path's handle.
pub struct Pipeline<I> {
    queue: crate::handoff::Queue<I>,
    meters: Meters,
    what: &'static str,
}

/// What the sink thread shares with its insert and replay tasks.
struct Core<R: Table> {
    client: Client,
    spool: Mutex<Spool>,
    up: AtomicBool,
    inflight: AtomicU64,
    settings: PipelineSettings,
    meters: Meters,
    _rows: std::marker::PhantomData<fn() -> R>,
}

impl<I: Send + 'static> Pipeline<I> {
    /// Opens the spool (failing if another process holds it) and starts the sink thread.
    pub fn start<R: Table, S: Stamp<I, R>>(
        what: &'static str,
        client: Client,
        settings: PipelineSettings,
        stamp: S,
        depth: IntGauge,
        rows: &prometheus::IntCounterVec,
    ) -> std::io::Result<Self> {
        let spool = Spool::open(&settings.spool_dir, settings.spool_max_bytes)?;
        let meters = Meters::new(what, depth, rows);
        METRICS
            .sink_spool_limit
            .with_label_values(&[what])
            .set(settings.spool_max_bytes as i64);
        meters.spool(&spool);
        meters.up.set(1);
        if !spool.is_empty() {
            log::info!(
                "{what} spool holds {} batches ({} bytes) from an earlier run: replaying",
                spool.len(),
                spool.bytes()
            );
        }
        let (queue, rx) = crate::handoff::channel(settings.queue_capacity, meters.depth.clone());
        let core = Arc::new(Core::<R> {
            client,
            spool: Mutex::new(spool),
            up: AtomicBool::new(true),
            inflight: AtomicU64::new(0),
            settings,
            meters: meters.clone(),
            _rows: std::marker::PhantomData,
        });
        std::thread::Builder::new()
            .name(format!("{what}-sink"))
            .spawn(move || {
                crate::jsonl::lower_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("{what} sink runtime: {e}");
                        return;
                    }
                };
                rt.block_on(run(what, core, rx, stamp));
            })?;
        Ok(Self {
            queue,
            meters,
            what,
        })
    }

    /// Queues one item; never blocks, never drops.
    pub fn submit(&self, item: I) {
        let m = &self.meters;
        self.queue.submit(item, &m.overflowed, &m.lost, self.what);
    }

    /// The queue is full: new requests are refused until it drains.
    pub fn backed_up(&self) -> bool {
        self.queue.backed_up()
    }

    /// Waits (at most `timeout`) until everything queued so far is inserted or spooled.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.queue.flush(timeout)
    }
}

async fn run<I, R: Table, S: Stamp<I, R>>(
    what: &'static str,
    core: Arc<Core<R>>,
    mut rx: crate::handoff::Drain<I>,
    mut stamp: S,
) {
    let started = crate::time::now_unix_ms();
    let mut batch_no = 0u64;
    let mut new_batch_id = || {
        batch_no += 1;
        format!("{}-{started}-{batch_no}", core.settings.node)
    };
    let mut batch_id = new_batch_id();
    let mut rows: Vec<R> = Vec::new();
    let mut opened = Instant::now();
    let mut inserts: JoinSet<()> = JoinSet::new();
    let mut replay: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_replay = Instant::now() - REPLAY_RETRY;
    let hold_limit = core.settings.batch_rows.saturating_mul(4).max(1);
    loop {
        let mut acks = Vec::new();
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Item(item)) => {
                    core.meters.depth.dec();
                    if rows.is_empty() {
                        opened = Instant::now();
                    }
                    rows.push(stamp.row(item, &batch_id));
                    if rows.len() >= hold_limit {
                        // Inserts have been busy for a while: the spool takes the overflow.
                        dispatch(
                            &core,
                            &mut inserts,
                            std::mem::take(&mut batch_id),
                            &mut rows,
                        );
                        batch_id = new_batch_id();
                    }
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        while inserts.try_join_next().is_some() {}
        let must = closed || !acks.is_empty();
        if must {
            // Each insert ends within its timeout and spools on failure.
            while inserts.join_next().await.is_some() {}
        }
        let due = !rows.is_empty()
            && (must
                || rows.len() >= core.settings.batch_rows
                || opened.elapsed() >= core.settings.batch_interval);
        let busy =
            core.inflight.load(Ordering::Acquire) >= core.settings.max_inflight_inserts as u64;
        // While ClickHouse is healthy but every insert slot is taken, the batch keeps growing
        // (up to `hold_limit`) rather than going to disk.
        let wait_for_slot = busy && core.up.load(Ordering::Acquire);
        if due && !wait_for_slot {
            dispatch(
                &core,
                &mut inserts,
                std::mem::take(&mut batch_id),
                &mut rows,
            );
            batch_id = new_batch_id();
        }
        if must {
            while inserts.join_next().await.is_some() {}
        }
        // Every row stamped so far is durable once none waits in the open batch and every
        // insert task has ended (inserted, or spooled on failure).
        if rows.is_empty() && inserts.is_empty() {
            stamp.durable();
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if closed {
            return;
        }
        let replaying = replay.as_ref().is_some_and(|h| !h.is_finished());
        let backlog = !core.spool.lock().map(|s| s.is_empty()).unwrap_or(true);
        let down = !core.up.load(Ordering::Acquire);
        if !replaying && (backlog || down) && last_replay.elapsed() >= REPLAY_RETRY {
            last_replay = Instant::now();
            replay = Some(tokio::spawn(replay_all(what, core.clone())));
        }
        tokio::time::sleep(DRAIN_TICK).await;
    }
}

/// Sends a batch to ClickHouse, or straight to the spool while ClickHouse is failing or enough
/// inserts are already in flight.
fn dispatch<R: Table>(
    core: &Arc<Core<R>>,
    inserts: &mut JoinSet<()>,
    batch_id: String,
    rows: &mut Vec<R>,
) {
    let batch = std::mem::take(rows);
    let busy = core.inflight.load(Ordering::Acquire) >= core.settings.max_inflight_inserts as u64;
    if !core.up.load(Ordering::Acquire) || busy {
        spool_batch(core, &batch_id, &batch);
        return;
    }
    core.inflight.fetch_add(1, Ordering::AcqRel);
    let core = core.clone();
    inserts.spawn(async move {
        match insert(&core, &batch).await {
            Ok(()) => {
                core.meters.inserted.inc_by(batch.len() as u64);
                core.meters.b_inserted.inc();
            }
            Err(e) => {
                if core.up.swap(false, Ordering::AcqRel) {
                    log::warn!(
                        "ClickHouse insert into {} failed ({e}); spooling until it answers again",
                        R::TABLE
                    );
                }
                core.meters.up.set(0);
                core.meters.b_failed.inc();
                spool_batch(&core, &batch_id, &batch);
            }
        }
        core.inflight.fetch_sub(1, Ordering::AcqRel);
    });
}

fn spool_batch<R: Table>(core: &Core<R>, batch_id: &str, rows: &[R]) {
    let Ok(mut spool) = core.spool.lock() else {
        core.meters.lost.inc_by(rows.len() as u64);
        return;
    };
    match spool.write(batch_id, rows) {
        Ok(()) => {
            core.meters.spooled.inc_by(rows.len() as u64);
            core.meters.b_spooled.inc();
        }
        Err(e) => {
            core.meters.lost.inc_by(rows.len() as u64);
            log::error!("{} rows LOST: spool write failed: {e}", rows.len());
        }
    }
    core.meters.spool(&spool);
}

async fn insert<R: Table>(core: &Core<R>, rows: &[R]) -> Result<(), String> {
    let t = core.settings.insert_timeout;
    let start = Instant::now();
    let work = async {
        let mut ins = core
            .client
            .insert::<R>(R::TABLE)
            .await
            .map_err(|e| e.to_string())?
            .with_timeouts(Some(t), Some(t));
        for r in rows {
            ins.write(r).await.map_err(|e| e.to_string())?;
        }
        ins.end().await.map_err(|e| e.to_string())
    };
    let out = match tokio::time::timeout(t, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {t:?}")),
    };
    core.meters
        .insert_latency
        .observe(start.elapsed().as_secs_f64());
    out
}

/// Replays spooled batches oldest first until the spool is empty or ClickHouse fails again.
async fn replay_all<R: Table>(what: &'static str, core: Arc<Core<R>>) {
    if !core.up.load(Ordering::Acquire) {
        let probe = tokio::time::timeout(
            core.settings.insert_timeout,
            core.client.query("SELECT 1").fetch_one::<u8>(),
        )
        .await;
        if !matches!(probe, Ok(Ok(1))) {
            return;
        }
    }
    while let Some((seq, path)) = core.spool.lock().ok().and_then(|s| s.oldest()) {
        let segment = match spool::read::<R>(&path) {
            Ok(s) => s,
            Err(ReadError::Corrupt(why)) => {
                log::error!(
                    "{what} spool segment {} is damaged ({why}): quarantined, its rows are LOST",
                    path.display()
                );
                core.meters.lost.inc();
                if let Ok(mut s) = core.spool.lock() {
                    let _ = s.quarantine(seq);
                    core.meters.spool(&s);
                }
                continue;
            }
            Err(ReadError::Io(e)) => {
                log::error!("{what} spool segment {}: {e}", path.display());
                return;
            }
        };
        match replay_one(&core, &segment.batch_id, segment.rows).await {
            Ok((sent, skipped)) => {
                core.meters.replayed.inc_by(sent);
                core.meters.duplicate.inc_by(skipped);
                core.meters.b_replayed.inc();
                if let Ok(mut s) = core.spool.lock() {
                    if let Err(e) = s.remove(seq) {
                        log::error!("{what} spool: removing {}: {e}", path.display());
                    }
                    core.meters.spool(&s);
                }
                if skipped > 0 {
                    log::info!(
                        "{what} batch {}: {skipped} rows had landed before the failure; not inserted again",
                        segment.batch_id
                    );
                }
            }
            Err(e) => {
                core.up.store(false, Ordering::Release);
                core.meters.up.set(0);
                log::debug!("{what} replay: {e}");
                return;
            }
        }
    }
    if !core.up.swap(true, Ordering::AcqRel) {
        log::info!("ClickHouse answers again: {what} rows go straight to it");
    }
    core.meters.up.set(1);
}

/// Inserts the rows of a spooled batch that are not stored yet; returns (inserted, skipped).
async fn replay_one<R: Table>(
    core: &Core<R>,
    batch_id: &str,
    rows: Vec<R>,
) -> Result<(u64, u64), String> {
    let t = core.settings.insert_timeout;
    let stored: HashSet<String> = tokio::time::timeout(
        t,
        R::stored_keys(&core.client, batch_id, &rows).fetch_all::<String>(),
    )
    .await
    .map_err(|_| format!("duplicate check timed out after {t:?}"))?
    .map_err(|e| format!("duplicate check: {e}"))?
    .into_iter()
    .collect();
    let total = rows.len() as u64;
    let missing: Vec<R> = if stored.is_empty() {
        rows
    } else {
        rows.into_iter()
            .filter(|r| !stored.contains(&r.key()))
            .collect()
    };
    let sent = missing.len() as u64;
    if !missing.is_empty() {
        insert(core, &missing).await?;
    }
    Ok((sent, total - sent))
}

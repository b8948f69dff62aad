//! The request path's side of a background writer: a bounded queue that takes an item with one
//! `try_send` (never blocking, never waking the writer — writers drain on a short tick) and a
//! flush barrier that waits until everything queued before it has been handled. The JSON-lines
//! writers and the warehouse sinks share it.

use prometheus::{IntCounter, IntGauge};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

pub enum Msg<T> {
    Item(T),
    /// Answered once every item queued before it is handled.
    Flush(SyncSender<()>),
}

/// Queues one item; counts it in `depth`, or in `lost` (loudly) when the queue is full.
pub fn submit<T>(
    tx: &SyncSender<Msg<T>>,
    item: T,
    depth: &IntGauge,
    lost: &IntCounter,
    what: &str,
) {
    match tx.try_send(Msg::Item(item)) {
        Ok(()) => depth.inc(),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            lost.inc();
            log::error!("{what} queue full: record lost");
        }
    }
}

/// Waits (at most `timeout`) until everything queued so far is handled.
pub fn flush<T>(tx: &SyncSender<Msg<T>>, timeout: Duration) -> bool {
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
    let deadline = Instant::now() + timeout;
    let mut msg = Msg::Flush(ack_tx);
    loop {
        match tx.try_send(msg) {
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

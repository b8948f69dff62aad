//! The request path's side of a background writer: a bounded queue that takes an item with one
//! `try_send` (never blocking, never waking the writer — writers drain on a short tick) and a
//! flush barrier that waits until everything queued before it has been handled. The JSON-lines
//! writers and the warehouse sinks share it.
//!
//! Nothing handed over is ever dropped: when the queue is full, the item goes to an overflow
//! lane (a short, uncontended lock, taken only in that state) that the writer drains right after
//! the queue. The overflow cannot grow without bound because the data plane refuses new
//! requests with 503 while a sink is backed up (`Queue::backed_up`): only the records of
//! requests already in flight, and of those refusals, land there.

use prometheus::{IntCounter, IntGauge};
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub enum Msg<T> {
    Item(T),
    /// Answered once every item queued before it is handled.
    Flush(SyncSender<()>),
}

type Overflow<T> = Arc<Mutex<Vec<T>>>;

/// The submitting side.
pub struct Queue<T> {
    tx: SyncSender<Msg<T>>,
    overflow: Overflow<T>,
    capacity: i64,
    depth: IntGauge,
}

/// The writer's side: the queue, then the overflow lane.
pub struct Drain<T> {
    rx: Receiver<Msg<T>>,
    overflow: Overflow<T>,
    pending: VecDeque<T>,
    /// A flush barrier waiting for overflow items submitted before it.
    held_flush: Option<SyncSender<()>>,
}

/// A queue of `capacity` items whose depth is reported in `depth`.
pub fn channel<T>(capacity: usize, depth: IntGauge) -> (Queue<T>, Drain<T>) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let overflow: Overflow<T> = Arc::new(Mutex::new(Vec::new()));
    (
        Queue {
            tx,
            overflow: overflow.clone(),
            capacity: capacity.max(1) as i64,
            depth,
        },
        Drain {
            rx,
            overflow,
            pending: VecDeque::new(),
            held_flush: None,
        },
    )
}

impl<T> Queue<T> {
    /// Queues one item, never blocking: into the queue, or when it is full into the overflow
    /// lane (counted in `overflowed`). Lost (counted in `lost`, loudly) only if the writer is
    /// gone.
    pub fn submit(&self, item: T, overflowed: &IntCounter, lost: &IntCounter, what: &str) {
        match self.tx.try_send(Msg::Item(item)) {
            Ok(()) => self.depth.inc(),
            Err(TrySendError::Full(Msg::Item(item))) => {
                self.overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(item);
                self.depth.inc();
                overflowed.inc();
            }
            Err(_) => {
                lost.inc();
                log::error!("{what} writer is gone: record lost");
            }
        }
    }

    /// The queue is full (or overflowing): new requests should be refused until it drains.
    pub fn backed_up(&self) -> bool {
        self.depth.get() >= self.capacity
    }

    /// Waits (at most `timeout`) until everything queued so far is handled.
    pub fn flush(&self, timeout: Duration) -> bool {
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

impl<T> Drain<T> {
    fn take_overflow(&mut self) {
        let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.extend(o.drain(..));
    }

    /// The next message: queued items, then overflowed ones; a flush barrier is answered only
    /// after the overflowed items submitted before it.
    pub fn try_recv(&mut self) -> Result<Msg<T>, TryRecvError> {
        if let Some(item) = self.pending.pop_front() {
            return Ok(Msg::Item(item));
        }
        if let Some(ack) = self.held_flush.take() {
            return Ok(Msg::Flush(ack));
        }
        match self.rx.try_recv() {
            Ok(Msg::Flush(ack)) => {
                self.take_overflow();
                match self.pending.pop_front() {
                    Some(item) => {
                        self.held_flush = Some(ack);
                        Ok(Msg::Item(item))
                    }
                    None => Ok(Msg::Flush(ack)),
                }
            }
            Ok(item) => Ok(item),
            Err(e) => {
                self.take_overflow();
                match self.pending.pop_front() {
                    Some(item) => Ok(Msg::Item(item)),
                    None => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_overflows_instead_of_losing() {
        let depth = IntGauge::new("d", "d").unwrap();
        let (over, lost) = (
            IntCounter::new("o", "o").unwrap(),
            IntCounter::new("l", "l").unwrap(),
        );
        let (q, mut d) = channel::<u32>(2, depth.clone());
        for i in 0..5 {
            q.submit(i, &over, &lost, "test");
        }
        assert!(q.backed_up());
        assert_eq!((over.get(), lost.get(), depth.get()), (3, 0, 5));
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        // The barrier queued now must come after every item, overflowed ones included.
        let mut seen = Vec::new();
        let mut flushed_after = None;
        while let Ok(m) = d.try_recv() {
            match m {
                Msg::Item(i) => {
                    seen.push(i);
                    if seen.len() == 2 {
                        let _ = q.tx.try_send(Msg::Flush(ack_tx.clone()));
                    }
                }
                Msg::Flush(a) => {
                    flushed_after = Some(seen.len());
                    let _ = a.send(());
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(flushed_after, Some(5));
        assert!(ack_rx.try_recv().is_ok());
    }
}

//! A JSON-lines writer behind a bounded queue and one thread: `submit` never blocks and never
//! wakes the writer (it drains on a short tick), so callers on the request path pay only a
//! `try_send`. Usage records and audit events both go through it.

use crate::handoff::{self, Drain, Msg, Queue};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

/// How often the writer drains the queue: short, so each burst of serialization stays small next
/// to the request threads.
const DRAIN_TICK: Duration = Duration::from_millis(5);

/// Bytes per `write`. A kernel built without preemption (the usual server setting) runs a
/// system call to its end, so a request worker sharing the core waits out a whole write: 64 KiB
/// is tens of microseconds, and still about 80 usage lines per call.
const WRITE_SIZE: usize = 64 * 1024;

/// An item the writer turns into one JSON line.
pub trait JsonLine: Send + 'static {
    /// Writes the item as one JSON value, without the newline.
    fn write_line<W: Write>(&self, out: &mut W) -> std::io::Result<()>;
}

/// Where JSON lines go.
pub enum Target {
    File(PathBuf),
    Stdout,
}

/// Metrics a writer reports into: queue depth and items by outcome (`inserted`, `lost`).
#[derive(Clone)]
pub struct Counters {
    pub depth: IntGauge,
    pub outcomes: IntCounterVec,
}

pub struct JsonLines<T> {
    queue: Queue<Box<T>>,
    /// Resolved once: a label lookup per submitted item is a hash and a lock on the hot path.
    overflowed: IntCounter,
    lost: IntCounter,
    what: &'static str,
}

impl<T: JsonLine> JsonLines<T> {
    /// Starts the writer thread. Fails only if the file cannot be opened.
    pub fn start(
        what: &'static str,
        target: Target,
        capacity: usize,
        flush_interval: Duration,
        counters: Counters,
    ) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::File(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                crate::drop_behind::wrap(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )?
            }
            Target::Stdout => Box::new(std::io::stdout()),
        };
        let (queue, drain) = handoff::channel(capacity, counters.depth.clone());
        let c = counters.clone();
        std::thread::Builder::new()
            .name(format!("{what}-jsonl"))
            .spawn(move || writer(drain, out, flush_interval, c))?;
        Ok(Self {
            queue,
            overflowed: counters.outcomes.with_label_values(&["overflowed"]),
            lost: counters.outcomes.with_label_values(&["lost"]),
            what,
        })
    }

    /// Queues one item; never blocks, never drops.
    pub fn submit(&self, item: T) {
        self.queue
            .submit(Box::new(item), &self.overflowed, &self.lost, self.what);
    }

    /// The queue is full: new requests are refused until it drains.
    pub fn backed_up(&self) -> bool {
        self.queue.backed_up()
    }

    /// Waits (at most `timeout`) until everything queued so far is written out.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.queue.flush(timeout)
    }
}

/// Background writers (this one, the warehouse sinks) run at a lower CPU priority: when they
/// share a core with request workers, a burst of serialization or compression must not delay a
/// response. They still get the CPU whenever the workers leave it idle.
pub fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread; no memory is shared with them.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

fn writer<T: JsonLine>(
    mut rx: Drain<Box<T>>,
    out: Box<dyn Write + Send>,
    flush_interval: Duration,
    counters: Counters,
) {
    lower_priority();
    let inserted = counters.outcomes.with_label_values(&["inserted"]);
    let lost = counters.outcomes.with_label_values(&["lost"]);
    let mut out = std::io::BufWriter::with_capacity(WRITE_SIZE, out);
    let mut last_flush = Instant::now();
    loop {
        let mut acks = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Msg::Item(r)) => {
                    counters.depth.dec();
                    let ok = r.write_line(&mut out).is_ok() && out.write_all(b"\n").is_ok();
                    if ok { &inserted } else { &lost }.inc();
                    if !ok {
                        log::error!("JSON-lines record could not be written");
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
                log::error!("JSON-lines flush failed");
            }
            last_flush = Instant::now();
        }
        for ack in acks {
            let _ = ack.send(());
        }
        std::thread::sleep(DRAIN_TICK.min(flush_interval));
    }
}

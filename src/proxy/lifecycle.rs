//! Process lifecycle: signals (SIGTERM drains, SIGINT exits, SIGQUIT hands listeners to a new
//! binary, SIGHUP reloads) and the config file watcher.

use crate::state::Shared;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How long a changed config file must stay unchanged before it is reloaded.
const SETTLE: Duration = Duration::from_millis(100);

/// How long usage records and audit events may take to reach their sinks at exit (an insert
/// that does not finish within its own timeout is spooled, so this covers that timeout).
const SINK_FLUSH: Duration = Duration::from_secs(15);

/// How long cut requests get to write their records after the drain deadline.
const CUT_GRACE: Duration = Duration::from_secs(2);

pub struct Signals {
    pub shared: Arc<Shared>,
    pub drain_timeout: Duration,
}

impl Signals {
    /// Whether requests or their background tasks (shadow requests) are still running.
    fn busy(&self) -> bool {
        self.shared.inflight.load(Ordering::Acquire) > 0 || !self.shared.tasks.running().is_empty()
    }

    /// Stops advertising readiness and waits until in-flight requests and their background
    /// tasks are done (bounded). What is still running at the deadline is cut — each request
    /// records itself as cut by shutdown — and only then are the sinks flushed, so no record
    /// is lost with the runtime.
    async fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while self.busy() && start.elapsed() < self.drain_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.busy() {
            let left = self.shared.inflight.load(Ordering::Acquire);
            log::warn!(
                "drain timeout: cutting {left} requests and tasks {:?}",
                self.shared.tasks.running()
            );
            self.shared.tasks.cut();
            let cut_at = Instant::now();
            while self.busy() && cut_at.elapsed() < CUT_GRACE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            log::info!("drained in {:?}", start.elapsed());
        }
        self.flush_sink().await;
    }

    async fn flush_sink(&self) {
        let sink = self.shared.sink.clone();
        let audit = self.shared.audit.clone();
        let feedback = self.shared.feedback.clone();
        let history = self.shared.workflows.history.get().cloned();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(f) = feedback {
                f.flush(SINK_FLUSH);
            }
            if let Some(h) = history {
                h.flush(SINK_FLUSH);
            }
            // Each sink inserts or spools what it holds; both run within the same bound.
            let a = std::thread::spawn(move || audit.flush(SINK_FLUSH));
            let t = std::thread::spawn(crate::telemetry::shutdown);
            sink.flush(SINK_FLUSH);
            let _ = a.join();
            let _ = t.join();
        })
        .await;
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; exiting");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: draining in-flight requests (up to {:?})", self.drain_timeout);
                self.drain().await;
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: exiting");
                self.flush_sink().await;
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing listeners over for a graceful upgrade");
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Reloads on SIGHUP and, while the live config's `reload.watch` is on, when the config file's
/// contents change. Watch settings are read from the live generation, so a reload can turn the
/// watcher off or change its interval.
pub struct Reloader {
    pub shared: Arc<Shared>,
    pub path: std::path::PathBuf,
}

/// The config file's bytes and their hash.
fn content(path: &std::path::Path) -> Option<(Vec<u8>, u64)> {
    std::fs::read(path).ok().map(|b| {
        let h = crate::config::source_hash(&b);
        (b, h)
    })
}

fn content_hash(path: &std::path::Path) -> Option<u64> {
    content(path).map(|(_, h)| h)
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::error!("cannot install SIGHUP handler; reload by file change only");
            return;
        };
        // Compared with what the live generation was actually parsed from (not with the file
        // as first seen here), so a change between loading and this task starting is not missed.
        let mut failed: Option<u64> = None;
        loop {
            let settings = self.shared.live().config.reload.clone();
            tokio::select! {
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading {}", self.path.display());
                    failed = self.shared.reload().err().and(content_hash(&self.path));
                }
                _ = tokio::time::sleep(settings.poll_interval) => {
                    if !settings.watch {
                        continue;
                    }
                    let Some((mut bytes, mut now)) = content(&self.path) else {
                        continue;
                    };
                    if now == self.shared.live().config.source_hash || Some(now) == failed {
                        continue;
                    }
                    // A file being written in place (truncate, then write) can parse while
                    // half-written: reload only once its contents hold still, and from the
                    // very bytes seen to hold still (reading it again could catch the next
                    // write half-done).
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        match content(&self.path) {
                            Some((_, again)) if again == now => break,
                            Some((b, again)) => (bytes, now) = (b, again),
                            None => break,
                        }
                    }
                    log::info!("{} changed: reloading", self.path.display());
                    let text = String::from_utf8_lossy(&bytes);
                    failed = self.shared.reload_text(&text).err().map(|_| now);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

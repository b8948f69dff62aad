//! Work the request path starts and does not wait for (shadow requests): every such task has a
//! name, is counted while it runs so shutdown waits for it, and sees the cut that ends
//! in-flight work at the drain deadline — so it still leaves its record instead of vanishing
//! with the runtime.

use dashmap::DashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub struct Tasks {
    running: Arc<DashMap<&'static str, AtomicI64>>,
    cut: watch::Sender<bool>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            running: Arc::new(DashMap::new()),
            cut: watch::channel(false).0,
        }
    }
}

/// Counts one running task of a name; uncounts it however the task ends (even by panic).
struct Running {
    running: Arc<DashMap<&'static str, AtomicI64>>,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(n) = self.running.get(self.name) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Tasks {
    /// Runs `fut` on the current runtime as a task named `name`.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.running
            .entry(name)
            .or_insert_with(|| AtomicI64::new(0))
            .fetch_add(1, Ordering::AcqRel);
        let guard = Running {
            running: self.running.clone(),
            name,
        };
        tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    /// Tasks running now, by name (names with none are left out).
    pub fn running(&self) -> Vec<(&'static str, i64)> {
        let mut v: Vec<_> = self
            .running
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Acquire)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort_unstable();
        v
    }

    /// Ends in-flight requests and tasks now (the drain deadline passed): each records itself
    /// as cut by shutdown.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Resolves once `cut` was called (at once if it already was).
    pub fn cut_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cut.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_names_and_cuts() {
        let t = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cut = t.cut_signal();
        t.spawn("shadow", async move {
            let _ = rx.await;
        });
        assert_eq!(t.running(), vec![("shadow", 1)]);
        tx.send(()).unwrap();
        while !t.running().is_empty() {
            tokio::task::yield_now().await;
        }
        t.cut();
        cut.await; // resolves: created before the cut
        t.cut_signal().await; // and after it
    }
}

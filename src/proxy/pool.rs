//! Idle upstream connections kept for reuse, by pool key (pingora's peer `reuse_hash`).
//!
//! Pingora's transport pool parks every idle connection behind a watcher task: a task spawned
//! per release, and a notify, lock and hand-off between tasks per reuse. At concurrency 1 on
//! the bench VM that cost ~10 µs of added latency per request. Here an idle connection just
//! waits in a list: liveness is checked when it is taken (one non-blocking read: end of stream
//! or unexpected bytes mean the provider is done with it), and a background sweep closes expired
//! and dead ones, so a provider's closed connections do not linger while traffic is quiet.
//! A connection that dies between the check and the request is caught by the upstream client's
//! one retry on a fresh connection.

use async_trait::async_trait;
use dashmap::DashMap;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often idle connections are checked when nobody takes them.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Idle {
    stream: Stream,
    since: Instant,
}

pub struct Pool {
    idle: DashMap<u64, Vec<Idle>>,
    /// Most idle connections kept per key; the oldest go first.
    max_per_key: usize,
    /// Longest a connection is kept idle.
    max_idle: Duration,
}

impl Pool {
    pub fn new(max_per_key: usize, max_idle: Duration) -> Self {
        Self {
            idle: DashMap::new(),
            max_per_key,
            max_idle,
        }
    }

    /// The most recently released live connection for `key`, if any (the warmest, and the least
    /// likely to have been closed by the provider).
    pub fn take(&self, key: u64) -> Option<Stream> {
        loop {
            // The map guard is dropped before the liveness check.
            let mut idle = self.idle.get_mut(&key)?.pop()?;
            if self.usable(&mut idle) {
                return Some(idle.stream);
            }
        }
    }

    /// Keeps a connection whose response was read to the end.
    pub fn put(&self, key: u64, stream: Stream) {
        let mut list = self.idle.entry(key).or_default();
        if list.len() >= self.max_per_key {
            list.remove(0);
        }
        list.push(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes expired connections and those the provider closed; returns how many stay.
    fn sweep(&self) -> usize {
        let mut kept = 0;
        for mut list in self.idle.iter_mut() {
            list.retain_mut(|i| self.usable(i));
            kept += list.len();
        }
        self.idle.retain(|_, list| !list.is_empty());
        kept
    }

    /// Not idle too long, and still open.
    fn usable(&self, idle: &mut Idle) -> bool {
        idle.since.elapsed() < self.max_idle && open(&mut idle.stream)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle.iter().map(|l| l.len()).sum()
    }
}

/// An idle connection is open while reading it would block: no end of stream, no bytes the
/// provider sent unasked (an error page, garbage). Read through the stream, not peeked on the
/// socket, so TLS records that carry no data (a late session ticket) are consumed, not
/// mistaken for data.
fn open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut cx = Context::from_waker(Waker::noop());
    // Unconstrained: a spent cooperative budget would also read as "would block".
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut cx).is_pending()
}

/// The background sweep, as a pingora service: it stops with the server.
pub struct Sweeper(pub Arc<Pool>);

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {
                    let idle = self.0.sweep();
                    crate::metrics::METRICS.upstream_idle_connections.set(idle as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (
            Box::new(pingora_core::protocols::l4::stream::Stream::from(client)),
            server,
        )
    }

    #[tokio::test]
    async fn takes_the_newest_live_connection_and_drops_closed_ones() {
        let pool = Pool::new(2, Duration::from_secs(60));
        let (a, _sa) = pair().await;
        let (b, sb) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(7, a);
        pool.put(7, b);
        assert!(pool.take(8).is_none(), "other keys see nothing");
        // The provider closed b while it was idle: it is skipped and a comes back.
        drop(sb);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = pool.take(7).expect("a is alive");
        assert_eq!(got.id(), a_id);
        assert_ne!(got.id(), b_id);
        assert!(pool.take(7).is_none());
    }

    #[tokio::test]
    async fn unasked_bytes_expiry_bounds_and_the_sweep() {
        let pool = Pool::new(2, Duration::from_millis(50));
        let (a, mut sa) = pair().await;
        sa.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.put(1, a);
        assert!(
            pool.take(1).is_none(),
            "a connection with unasked bytes is not reused"
        );

        let (mut keep, mut peers) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (s, p) = pair().await;
            keep.push(s.id());
            pool.put(2, s);
            peers.push(p);
        }
        assert_eq!(pool.len(), 2, "bounded per key, oldest dropped");
        assert_eq!(pool.take(2).unwrap().id(), keep[2]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            pool.sweep(),
            0,
            "expired connections are closed by the sweep"
        );
    }
}

//! Timeouts that cost nothing when the work is already done.
//!
//! Most client writes, and many reads, complete on their first poll: the socket has room, or
//! the bytes are already there. A timer armed for them is pure cost — a clock read for the
//! deadline and a registration in the timer wheel, several times per request (clock reads
//! alone were ~4% of the gateway's CPU). `within` polls the work once first, and only work
//! that has to wait gets a timer, its duration computed only then.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub use pingora_timeout::Elapsed;

/// `work`'s output, or `Elapsed` once `wait()` has passed while it waited.
pub async fn within<F: Future>(
    wait: impl FnOnce() -> Duration,
    work: F,
) -> Result<F::Output, Elapsed> {
    let mut work = pin!(work);
    // A poll with no waker: if the work cannot finish now it is polled again below with the
    // task's own (tokio's I/O keeps the latest waker), so nothing is lost.
    if let Poll::Ready(out) = work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return Ok(out);
    }
    pingora_timeout::timeout(wait(), work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_work_needs_no_timer_and_waiting_work_gets_one() {
        let mut asked = false;
        let out = within(
            || {
                asked = true;
                Duration::ZERO
            },
            async { 7 },
        )
        .await;
        assert_eq!(out.ok(), Some(7));
        assert!(!asked, "no deadline computed for ready work");
        let out = within(|| Duration::from_millis(5), std::future::pending::<()>()).await;
        assert!(out.is_err(), "waiting work times out");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let send = async move {
            tokio::task::yield_now().await;
            tx.send(3).unwrap();
        };
        let (out, ()) = tokio::join!(within(|| Duration::from_secs(5), rx), send);
        assert_eq!(
            out.unwrap().unwrap(),
            3,
            "woken by the real waker after the first poll"
        );
    }
}

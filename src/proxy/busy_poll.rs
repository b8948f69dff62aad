//! Busy polling of the data-plane workers (`server.busy_poll_us`): after a request arrives or
//! finishes, its worker keeps polling its sockets without sleeping for a short window, so the
//! next packet — the provider's answer, the client's next request on a kept-alive connection —
//! is picked up without a cross-core wake-up. On the 2-vCPU VM the benches run on, waking a
//! thread blocked in `epoll_wait` on the other core costs ~40 µs (an IPI to a halted vCPU);
//! a polled hand-off costs ~1 µs. The price is CPU: a worker spins through every idle gap
//! shorter than the window, and sleeps as usual once traffic stops.
//!
//! How: one spinner task per worker thread. While the window is open it yields in a loop;
//! tokio answers a yield by polling its I/O driver with a zero timeout before running the task
//! again, so the worker keeps collecting readiness without ever blocking. When the window
//! closes the spinner parks until the next `touch` re-opens it. It relies on every worker being
//! its own current-thread runtime (`work_stealing = false`), which config validation demands:
//! a stolen spinner would spin on the wrong thread.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// One worker thread's polling window.
struct Window {
    until: Cell<Option<Instant>>,
    parked: RefCell<Option<Waker>>,
    spinner: Cell<bool>,
}

thread_local! {
    static WINDOW: Window = const {
        Window {
            until: Cell::new(None),
            parked: RefCell::new(None),
            spinner: Cell::new(false),
        }
    };
}

/// Opens (or extends) this worker's polling window; starts the worker's spinner on first use.
/// Must run on a data-plane worker (inside its tokio runtime). A zero window does nothing.
pub fn touch(window: Duration) {
    if window.is_zero() {
        return;
    }
    WINDOW.with(|w| {
        w.until.set(Some(Instant::now() + window));
        if !w.spinner.replace(true) {
            // Lives as long as the worker's runtime; dropped with it at shutdown.
            tokio::spawn(spin());
        } else if let Some(waker) = w.parked.borrow_mut().take() {
            waker.wake();
        }
    });
}

fn open(w: &Window) -> bool {
    w.until.get().is_some_and(|t| Instant::now() < t)
}

async fn spin() {
    loop {
        if WINDOW.with(open) {
            tokio::task::yield_now().await;
            continue;
        }
        std::future::poll_fn(|cx| {
            WINDOW.with(|w| {
                if open(w) {
                    Poll::Ready(())
                } else {
                    *w.parked.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spinner runs while the window is open, parks once it closes, and wakes on the next
    /// touch — all without holding the runtime: timers on the same thread still fire. (Windows
    /// are either far longer or far shorter than the sleeps, so a slow machine cannot flip them.)
    #[test]
    fn spins_only_inside_the_window() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            touch(Duration::from_secs(5));
            assert!(WINDOW.with(|w| w.spinner.get()));
            // Other tasks and timers progress while it spins.
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(WINDOW.with(|w| w.parked.borrow().is_none()), "spinning");
            // A window that is already over: the spinner parks.
            touch(Duration::from_nanos(1));
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(
                WINDOW.with(|w| w.parked.borrow().is_some()),
                "parked after the window"
            );
            touch(Duration::from_secs(5));
            assert!(
                WINDOW.with(|w| w.parked.borrow().is_none()),
                "woken by touch"
            );
            tokio::task::yield_now().await;
        });
    }
}

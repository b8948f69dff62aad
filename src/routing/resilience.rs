//! Riding out a provider's bad minute: retry policy with jittered exponential backoff, a
//! process-wide retry budget (retries may add at most a fraction of the request load, so they
//! cannot amplify an outage), and per-target circuit breakers fed by real traffic (passive
//! health): consecutive failures or an error rate over a window open a breaker; after a pause
//! one probe is let through (half-open), and its outcome closes or re-opens it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts on the same target before falling back.
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 1,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(max, base · 2^n)].
    pub fn delay(&self, n: u32) -> Duration {
        let cap = self
            .backoff
            .saturating_mul(1u32 << n.min(16))
            .min(self.max_backoff);
        cap.mul_f64(rand::random::<f64>())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

struct Inner {
    state: State,
    consecutive: u32,
    window_start: Instant,
    requests: u32,
    failures: u32,
    opened_at: Instant,
    probe_out: bool,
}

pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                window_start: now,
                requests: 0,
                failures: 0,
                opened_at: now,
                probe_out: false,
            }),
        }
    }
}

impl Breaker {
    /// Whether a request may go to this target now (half-open lets one probe through).
    pub fn allow(&self, s: &BreakerSettings) -> bool {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match i.state {
            State::Closed => true,
            State::Open if i.opened_at.elapsed() >= s.open_for => {
                i.state = State::HalfOpen;
                i.probe_out = true;
                true
            }
            State::Open => false,
            State::HalfOpen if !i.probe_out => {
                i.probe_out = true;
                true
            }
            State::HalfOpen => false,
        }
    }

    /// Records an outcome; returns the state after it.
    pub fn record(&self, ok: bool, s: &BreakerSettings) -> State {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if i.window_start.elapsed() >= s.window {
            i.window_start = Instant::now();
            i.requests = 0;
            i.failures = 0;
        }
        i.requests += 1;
        if ok {
            i.consecutive = 0;
        } else {
            i.consecutive += 1;
            i.failures += 1;
        }
        let rate_trip = i.requests >= s.min_requests
            && f64::from(i.failures) / f64::from(i.requests) >= s.error_rate;
        i.state = match (i.state, ok) {
            (State::HalfOpen, true) => {
                i.window_start = Instant::now();
                i.requests = 0;
                i.failures = 0;
                State::Closed
            }
            (State::HalfOpen, false) => {
                i.opened_at = Instant::now();
                State::Open
            }
            (State::Closed, false) if i.consecutive >= s.consecutive_failures || rate_trip => {
                i.opened_at = Instant::now();
                State::Open
            }
            (st, _) => st,
        };
        i.probe_out = false;
        i.state
    }

    pub fn state(&self) -> State {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).state
    }
}

/// Retries may add at most `ratio` of the request load (plus a small floor so a quiet gateway
/// can still retry): every request deposits `ratio`, every retry withdraws 1.
pub struct RetryBudget {
    /// Milli-retries available.
    balance: AtomicI64,
    ratio_milli: i64,
    cap_milli: i64,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor: u32) -> Self {
        let cap = i64::from(floor.max(1)) * 1000;
        Self {
            balance: AtomicI64::new(cap),
            ratio_milli: (ratio * 1000.0) as i64,
            cap_milli: cap.max(10_000),
        }
    }

    pub fn on_request(&self) {
        let r = self.ratio_milli;
        let cap = self.cap_milli;
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + r).min(cap))
            });
    }

    /// Takes one retry if the budget allows it.
    pub fn try_retry(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let s = BreakerSettings {
            consecutive_failures: 3,
            open_for: Duration::from_millis(30),
            ..Default::default()
        };
        let b = Breaker::default();
        for _ in 0..3 {
            assert!(b.allow(&s));
            b.record(false, &s);
        }
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(&s));
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(&s), "one probe");
        assert!(!b.allow(&s), "only one");
        assert_eq!(b.record(false, &s), State::Open, "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(&s));
        assert_eq!(b.record(true, &s), State::Closed);
    }

    #[test]
    fn retry_budget_bounds_amplification() {
        let b = RetryBudget::new(0.2, 1);
        let mut retries = 0;
        for _ in 0..1000 {
            b.on_request();
            if b.try_retry() {
                retries += 1;
            }
        }
        assert!(retries <= 200 + 10, "{retries}");
        assert!(retries >= 190, "{retries}");
    }
}

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

/// Leave to send one request to a target. It must end in `record`; a permit dropped without
/// an outcome (the attempt was given up: retry budget, client gone, an early return) hands a
/// half-open probe back, so the next request probes instead of the breaker staying shut.
#[must_use = "a permit is settled with `record` or released by dropping it"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// Records the attempt's outcome; returns the breaker's state after it.
    pub fn record(mut self, ok: bool, s: &BreakerSettings) -> State {
        self.settled = true;
        self.breaker.record(ok, self.probe, s)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            let mut i = self.breaker.lock();
            if i.state == State::HalfOpen {
                i.probe_out = false;
            }
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request could go to this target now, without taking a permit.
    pub fn open(&self, s: &BreakerSettings) -> bool {
        let i = self.lock();
        match i.state {
            State::Closed => false,
            State::Open => i.opened_at.elapsed() < s.open_for,
            State::HalfOpen => i.probe_out,
        }
    }

    /// A permit to send now, if the breaker lets one through (half-open: one probe at a time).
    pub fn allow(&self, s: &BreakerSettings) -> Option<Permit<'_>> {
        let mut i = self.lock();
        let probe = match i.state {
            State::Closed => false,
            State::Open if i.opened_at.elapsed() >= s.open_for => {
                i.state = State::HalfOpen;
                true
            }
            State::Open => return None,
            State::HalfOpen if !i.probe_out => true,
            State::HalfOpen => return None,
        };
        if probe {
            i.probe_out = true;
        }
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// Records an outcome; returns the state after it. Outcomes of requests let through before
    /// the breaker opened do not decide a half-open breaker: only its probe does.
    fn record(&self, ok: bool, probe: bool, s: &BreakerSettings) -> State {
        let mut i = self.lock();
        if !probe && i.state != State::Closed {
            return i.state;
        }
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
                i.consecutive = 0;
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
        if probe {
            i.probe_out = false;
        }
        i.state
    }

    pub fn state(&self) -> State {
        self.lock().state
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
            b.allow(&s).unwrap().record(false, &s);
        }
        assert_eq!(b.state(), State::Open);
        assert!(b.allow(&s).is_none());
        assert!(b.open(&s));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.open(&s));
        let probe = b.allow(&s).expect("one probe");
        assert!(b.allow(&s).is_none(), "only one");
        assert_eq!(
            probe.record(false, &s),
            State::Open,
            "failed probe re-opens"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(&s).unwrap().record(true, &s), State::Closed);
    }

    #[test]
    fn a_probe_given_up_is_handed_back() {
        let s = BreakerSettings {
            consecutive_failures: 1,
            open_for: Duration::from_millis(20),
            ..Default::default()
        };
        let b = Breaker::default();
        let early = b.allow(&s).unwrap(); // sent while closed, answers late
        b.allow(&s).unwrap().record(false, &s);
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.allow(&s).expect("probe");
        drop(probe); // e.g. the retry budget refused the attempt
        assert_eq!(b.state(), State::HalfOpen);
        // A late success from before the breaker opened does not close it...
        assert_eq!(early.record(true, &s), State::HalfOpen);
        // ...and the next request gets the probe that was handed back.
        let probe = b.allow(&s).expect("the probe was released");
        assert_eq!(probe.record(true, &s), State::Closed);
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

//! A weighted GCRA (token bucket as a theoretical arrival time) that can also take tokens back:
//! token limits reserve an estimate at admission and settle to the real usage when the response
//! ends, which `governor` (used for request rates) cannot express. One atomic; lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Process-wide time origin: TATs are nanoseconds since it.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

/// `limit` units per `period`, bursting to `limit`.
pub struct Gcra {
    tat: AtomicU64,
    /// Nanoseconds per unit.
    t: u64,
    period: u64,
    pub limit: u64,
}

/// State after a decision: what is left and when the bucket is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub remaining: u64,
    pub reset: Duration,
}

impl Gcra {
    pub fn new(limit: u64, period: Duration) -> Self {
        let period = period.as_nanos() as u64;
        Self {
            tat: AtomicU64::new(0),
            t: (period / limit.max(1)).max(1),
            period,
            limit,
        }
    }

    fn snapshot(&self, tat: u64, now: u64) -> Snapshot {
        let used = tat.saturating_sub(now);
        Snapshot {
            remaining: self.period.saturating_sub(used) / self.t,
            reset: Duration::from_nanos(used),
        }
    }

    /// Takes `n` units, or says how long until they fit.
    pub fn take(&self, n: u64, now: u64) -> Result<Snapshot, Duration> {
        let cost = n.saturating_mul(self.t);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let new = tat.max(now).saturating_add(cost);
            if new - now > self.period {
                return Err(Duration::from_nanos(new - now - self.period));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(self.snapshot(new, now)),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Settles a reservation: `delta > 0` charges more (even past the limit: the tokens were
    /// used), `delta < 0` gives back what was not used.
    pub fn adjust(&self, delta: i64, now: u64) {
        let cost = delta.unsigned_abs().saturating_mul(self.t);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let new = if delta >= 0 {
                tat.max(now).saturating_add(cost)
            } else {
                tat.saturating_sub(cost).max(now.min(tat))
            };
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }

    pub fn peek(&self, now: u64) -> Snapshot {
        self.snapshot(self.tat.load(Ordering::Acquire), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_refill_and_refund() {
        let g = Gcra::new(100, Duration::from_secs(60));
        let now = 1_000_000_000;
        assert_eq!(g.take(60, now).unwrap().remaining, 40);
        assert!(g.take(50, now).is_err(), "over the burst");
        assert_eq!(g.take(40, now).unwrap().remaining, 0);
        let wait = g.take(1, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(600));
        // 0.6 s later one token is back.
        assert!(g.take(1, now + 600_000_000).is_ok());
        // Giving back 30 unused tokens makes room for 30.
        g.adjust(-30, now + 600_000_000);
        assert_eq!(g.peek(now + 600_000_000).remaining, 30);
        // Charging past the limit is recorded as debt.
        g.adjust(100, now + 600_000_000);
        assert!(g.take(1, now + 600_000_000).is_err());
    }
}

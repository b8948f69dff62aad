//! Budget state of one org, team or cost center in this process: spend settled in the current
//! period, reservations of requests in flight, and the warnings already given. Admission
//! reserves a request's worst-case cost and is refused when spent + reserved + worst case would
//! pass the hard limit, so concurrent requests can overshoot by nothing more than what their
//! real cost exceeds their reservation (never, when `max_tokens` bounds the answer).

use super::spec::{Budget, Period};
use std::sync::Mutex;

pub struct BudgetState {
    pub label: String,
    pub limit: i64,
    period: Period,
    soft: Vec<f64>,
    inner: Mutex<Inner>,
    /// `budget_spend{budget}`, resolved at the first settle and kept: settling is per request.
    spend_gauge: std::sync::OnceLock<prometheus::Gauge>,
}

struct Inner {
    period_label: String,
    /// When the current period ends (Unix seconds): the request path compares a number instead
    /// of formatting the label.
    period_end: u64,
    /// Spend of the period known from ClickHouse at the last reconciliation.
    baseline: i64,
    /// Spend settled here since then.
    settled: i64,
    reserved: i64,
    /// Soft thresholds already announced this period.
    warned: usize,
    /// While the shared store (Redis) is unreachable: the spend known when it went away. This
    /// replica may then commit only its share of what was left, so replicas together cannot
    /// pass the limit by more than their reservations in flight.
    fallback_base: Option<i64>,
}

/// After admission: how full the budget is (for the warning header).
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub spent: i64,
    pub fraction: f64,
    pub over_soft: bool,
}

impl Level {
    /// How full a budget of `limit` with warning fractions `soft` is at `spent`.
    pub fn of(spent: i64, limit: i64, soft: &[f64]) -> Level {
        let fraction = if limit > 0 {
            spent as f64 / limit as f64
        } else {
            1.0
        };
        Level {
            spent,
            fraction,
            over_soft: soft.first().is_some_and(|s| fraction >= *s),
        }
    }
}

impl BudgetState {
    pub fn new(label: String, b: &Budget, now: u64) -> Self {
        Self {
            label,
            limit: b.nano,
            period: b.period,
            soft: b.soft.clone(),
            inner: Mutex::new(Inner {
                period_label: b.period.label(now),
                period_end: b.period.end(now),
                baseline: 0,
                settled: 0,
                reserved: 0,
                warned: 0,
                fallback_base: None,
            }),
            spend_gauge: std::sync::OnceLock::new(),
        }
    }

    /// This budget's `budget_spend` series.
    pub fn spend_gauge(&self) -> &prometheus::Gauge {
        self.spend_gauge.get_or_init(|| {
            crate::metrics::METRICS
                .budget_spend
                .with_label_values(&[&self.label])
        })
    }

    pub fn period(&self) -> Period {
        self.period
    }

    fn roll(&self, i: &mut Inner, now: u64) {
        if now >= i.period_end {
            // A new month starts from zero; reservations in flight stay reserved.
            i.period_label = self.period.label(now);
            i.period_end = self.period.end(now);
            i.baseline = 0;
            i.settled = 0;
            i.warned = 0;
        }
    }

    fn level(&self, spent: i64) -> Level {
        Level::of(spent, self.limit, &self.soft)
    }

    /// Reserves `worst` nano-USD, or refuses. `fallback_share`: the shared store is down and
    /// this replica may commit only that share of what was left when it went away.
    pub fn reserve(
        &self,
        worst: i64,
        now: u64,
        fallback_share: Option<f64>,
    ) -> Result<Level, Level> {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut i, now);
        let spent = i.baseline + i.settled;
        let committed = spent + i.reserved;
        let limit = match fallback_share {
            None => self.limit,
            Some(share) => {
                let base = *i.fallback_base.get_or_insert(committed);
                let left = (self.limit - base).max(0);
                base + (left as f64 * share.clamp(0.0, 1.0)) as i64
            }
        };
        // A request of unknown cost still may not start once the budget is used up.
        if committed + worst > limit || (worst == 0 && committed >= limit) {
            return Err(self.level(spent));
        }
        i.reserved += worst;
        Ok(self.level(spent))
    }

    /// The shared store's spend for this period (it answered): the local view follows it, and
    /// a fallback episode is over.
    pub fn observe_global(&self, spent: i64) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.baseline = spent.max(i.baseline + i.settled);
        i.settled = 0;
        i.fallback_base = None;
    }

    /// Ends a reservation with the real cost; returns the soft thresholds crossed by it.
    pub fn settle(&self, worst: i64, actual: i64, now: u64) -> (Level, Vec<f64>) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.reserved -= worst;
        self.roll(&mut i, now);
        i.settled += actual;
        let spent = i.baseline + i.settled;
        let level = self.level(spent);
        let mut crossed = Vec::new();
        while i.warned < self.soft.len() && level.fraction >= self.soft[i.warned] {
            crossed.push(self.soft[i.warned]);
            i.warned += 1;
        }
        (level, crossed)
    }

    /// Takes ClickHouse's view of the period's spend. Rows still on their way to ClickHouse
    /// are in `settled` but not in `ch`, other replicas' spend is in `ch` only: the larger of
    /// the two views wins, so reconciliation never forgets spend.
    pub fn reconcile(&self, ch: i64, label: &str, now: u64) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut i, now);
        if i.period_label == label {
            i.baseline = ch.max(i.baseline + i.settled);
            i.settled = 0;
        }
    }

    pub fn spent(&self) -> i64 {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.baseline + i.settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_settle_reconcile() {
        let b = Budget {
            nano: 1_000,
            period: Period::Month,
            soft: vec![0.5, 0.9],
        };
        let now = 1_795_400_000;
        let s = BudgetState::new("cc".into(), &b, now);
        // Ten requests of worst case 100 fit; the eleventh does not.
        for _ in 0..10 {
            s.reserve(100, now, None).unwrap();
        }
        assert!(s.reserve(100, now, None).is_err());
        let mut crossings = Vec::new();
        for _ in 0..5 {
            let (_, crossed) = s.settle(100, 100, now);
            crossings.extend(crossed);
        }
        assert_eq!(
            crossings,
            vec![0.5],
            "announced once, when 500 of 1000 was reached"
        );
        assert_eq!(s.spent(), 500);
        // ClickHouse knows of more (another replica): it wins; it never lowers what we know.
        s.reconcile(800, "2026-11", now);
        assert_eq!(s.spent(), 800);
        s.reconcile(10, "2026-11", now);
        assert_eq!(s.spent(), 800);
        // 5 reservations of 100 still in flight: 800 + 500 > 1000.
        assert!(s.reserve(1, now, None).is_err());
        // A new month starts empty.
        let next = now + 40 * 86_400;
        assert!(s.reserve(100, next, None).is_ok());
        assert_eq!(s.spent(), 0);
    }

    #[test]
    fn fallback_commits_only_a_share_of_what_was_left() {
        let b = Budget {
            nano: 1_000,
            period: Period::Month,
            soft: vec![],
        };
        let now = 1_800_000_000;
        let s = BudgetState::new("x".into(), &b, now);
        // Redis said 400 of 1000 spent; three replicas at a third each: this one may commit
        // 200 of the 600 left.
        s.observe_global(400);
        for _ in 0..2 {
            s.reserve(100, now, Some(1.0 / 3.0)).unwrap();
        }
        assert!(s.reserve(1, now, Some(1.0 / 3.0)).is_err());
        s.settle(100, 100, now);
        s.settle(100, 100, now);
        assert!(
            s.reserve(1, now, Some(1.0 / 3.0)).is_err(),
            "the share is spent"
        );
        // Redis answers again (with every replica's spend): the episode ends.
        s.observe_global(1_000);
        assert!(s.reserve(1, now, None).is_err());
    }
}

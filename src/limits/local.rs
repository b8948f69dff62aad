//! Limits counted in this process: `governor` (GCRA) for request rates, a weighted GCRA with
//! refunds for tokens, an atomic counter for concurrency, `BudgetState` for budgets. Counters
//! are found by the identity of their check, so a reload that keeps a limit keeps its counts.

use super::budget::BudgetState;
use super::gcra::{now_ns, Gcra};
use super::spec::LimitValues;
use super::{
    Actual, BudgetCheck, Crossing, Exceeded, LimitCheck, Refusal, Request, Status, Window,
};
use crate::metrics::METRICS;
use crate::state::get_or_insert;
use dashmap::DashMap;
use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Gov = RateLimiter<NotKeyed, InMemoryState, QuantaClock, StateInformationMiddleware>;

struct Rate {
    gov: Gov,
    limit: u64,
    period: Duration,
}

impl Rate {
    fn new(limit: u64, period: Duration) -> Self {
        // governor counts in u32; a larger limit is effectively no limit, and clamping keeps the
        // window arithmetic below from dividing by a truncated zero.
        let limit = limit.clamp(1, u64::from(u32::MAX));
        let n = NonZeroU32::new(limit as u32).unwrap_or(NonZeroU32::MIN);
        let quota = if period.as_secs() == 1 {
            Quota::per_second(n)
        } else {
            Quota::per_minute(n)
        };
        Self {
            gov: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            limit,
            period,
        }
    }

    fn check(&self) -> Result<Window, Duration> {
        match self.gov.check() {
            Ok(snap) => {
                let remaining = u64::from(snap.remaining_burst_capacity());
                let per = self.period / self.limit.max(1) as u32;
                Ok(Window {
                    limit: self.limit,
                    remaining,
                    reset: per * (self.limit - remaining.min(self.limit)) as u32,
                })
            }
            Err(nu) => Err(nu.wait_time_from(self.gov.clock().now())),
        }
    }
}

pub struct Entity {
    rps: Option<Rate>,
    rpm: Option<Rate>,
    tpm: Option<Gcra>,
    concurrent: Option<(AtomicU64, u64)>,
}

impl Entity {
    fn new(v: &LimitValues) -> Self {
        Self {
            rps: v.rps.map(|l| Rate::new(l, Duration::from_secs(1))),
            rpm: v.rpm.map(|l| Rate::new(l, Duration::from_secs(60))),
            tpm: v.tpm.map(|l| Gcra::new(l, Duration::from_secs(60))),
            concurrent: v.concurrent.map(|l| (AtomicU64::new(0), l)),
        }
    }
}

/// A replica's share of a limit while Redis is down (never below 1).
pub fn scale(v: LimitValues, share: f64) -> LimitValues {
    let s = |x: Option<u64>| x.map(|x| ((x as f64 * share).floor() as u64).max(1));
    LimitValues {
        rps: s(v.rps),
        rpm: s(v.rpm),
        tpm: s(v.tpm),
        concurrent: s(v.concurrent),
    }
}

#[derive(Default)]
pub struct Local {
    entities: DashMap<u64, Arc<Entity>>,
    budgets: DashMap<u64, Arc<BudgetState>>,
}

/// What a request holds, inline: an org, a team and a key each hold at most one of a kind,
/// so three fit every plan without a heap list per kind per request (more would spill).
#[derive(Default)]
pub struct Holds {
    tokens: SmallVec<[(Arc<Entity>, u64); 3]>,
    concurrency: SmallVec<[Arc<Entity>; 3]>,
    budgets: SmallVec<[(Arc<BudgetState>, i64); 3]>,
}

impl Holds {
    pub fn settle(self, actual: Actual) -> Vec<Crossing> {
        let now = now_ns();
        for (e, reserved) in &self.tokens {
            if let Some(g) = &e.tpm {
                g.adjust(actual.tokens as i64 - *reserved as i64, now);
            }
        }
        for e in &self.concurrency {
            if let Some((n, _)) = &e.concurrent {
                n.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let unix = crate::time::now_unix();
        let mut crossings = Vec::new();
        for (b, worst) in &self.budgets {
            let (level, crossed) = b.settle(*worst, actual.cost, unix);
            b.spend_gauge().set(level.spent as f64 / 1e9);
            for fraction in crossed {
                crossings.push(Crossing {
                    budget: b.label.clone(),
                    fraction,
                    spent: level.spent,
                    limit: b.limit,
                });
            }
        }
        crossings
    }
}

impl Local {
    fn entity(&self, c: &LimitCheck) -> Arc<Entity> {
        get_or_insert(&self.entities, &c.identity(), || Entity::new(&c.values))
    }

    pub fn budget(&self, b: &BudgetCheck, now: u64) -> Arc<BudgetState> {
        get_or_insert(&self.budgets, &b.identity(), || {
            METRICS
                .budget_limit
                .with_label_values(&[&b.label()])
                .set(b.budget.nano as f64 / 1e9);
            BudgetState::new(b.label(), b.budget, now)
        })
    }

    /// Decides a request with this process's counters; `fallback_share`: the shared store is
    /// down, and budgets allow only this replica's share of what was left.
    pub fn admit(
        &self,
        limits: &[LimitCheck],
        budgets: &[BudgetCheck],
        r: &Request<'_>,
        now: u64,
        fallback_share: Option<f64>,
    ) -> Result<(Status, Holds), Box<Refusal>> {
        let mut status = Status::default();
        let mut holds = Holds::default();
        let entities: SmallVec<[(Arc<Entity>, &LimitCheck); 4]> =
            limits.iter().map(|c| (self.entity(c), c)).collect();
        // Request rates first (the most common refusal, and the cheapest to undo: nothing).
        for (e, c) in &entities {
            for (rate, per_second) in [(&e.rps, true), (&e.rpm, false)] {
                let Some(rate) = rate else { continue };
                match rate.check() {
                    Ok(w) => Status::offer(&mut status.requests, w),
                    Err(retry) => {
                        status.requests = Some(Window {
                            limit: rate.limit,
                            remaining: 0,
                            reset: retry,
                        });
                        let x = Exceeded::Requests {
                            limit: rate.limit,
                            per_second,
                        };
                        return Err(Refusal::new(x, &c.describe(), r, retry, status));
                    }
                }
            }
        }
        let ns = now_ns();
        for (e, c) in &entities {
            if let Some(g) = &e.tpm {
                match g.take(r.tokens, ns) {
                    Ok(s) => {
                        holds.tokens.push((e.clone(), r.tokens));
                        Status::offer(
                            &mut status.tokens,
                            Window {
                                limit: g.limit,
                                remaining: s.remaining,
                                reset: s.reset,
                            },
                        );
                    }
                    Err(retry) => {
                        let peek = g.peek(ns);
                        status.tokens = Some(Window {
                            limit: g.limit,
                            remaining: peek.remaining,
                            reset: peek.reset,
                        });
                        holds.settle(Actual::default());
                        let x = Exceeded::Tokens { limit: g.limit };
                        return Err(Refusal::new(x, &c.describe(), r, retry, status));
                    }
                }
            }
        }
        for (e, c) in &entities {
            if let Some((n, limit)) = &e.concurrent {
                if n.fetch_add(1, Ordering::AcqRel) >= *limit {
                    n.fetch_sub(1, Ordering::AcqRel);
                    holds.settle(Actual::default());
                    let x = Exceeded::Concurrency { limit: *limit };
                    let retry = Duration::from_secs(1);
                    return Err(Refusal::new(x, &c.describe(), r, retry, status));
                }
                holds.concurrency.push(e.clone());
            }
        }
        for b in budgets {
            let state = self.budget(b, now);
            match state.reserve(r.worst_cost, now, fallback_share) {
                Ok(level) => {
                    if level.over_soft {
                        status.budget_warning = Some(super::headers::budget_warning(b, level));
                    }
                    holds.budgets.push((state, r.worst_cost));
                }
                Err(level) => {
                    holds.settle(Actual::default());
                    let retry = super::headers::until_period_end(b.budget.period, now);
                    let x = Exceeded::Budget {
                        limit: b.budget.nano,
                        spent: level.spent,
                    };
                    let who = super::headers::budget_name(b);
                    return Err(Refusal::new(x, &who, r, retry, status));
                }
            }
        }
        Ok((status, holds))
    }

    /// Every budget state, for reconciliation.
    pub fn budget_states(&self) -> Vec<Arc<BudgetState>> {
        self.budgets.iter().map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_limits_do_not_overflow() {
        let r = Rate::new(10_000_000_000, Duration::from_secs(60));
        let w = r.check().unwrap();
        assert_eq!(w.limit, u64::from(u32::MAX));
        let e = Entity::new(&LimitValues {
            rps: Some(u64::MAX),
            rpm: Some(u64::MAX),
            tpm: Some(u64::MAX),
            concurrent: Some(u64::MAX),
        });
        assert!(e.rps.as_ref().unwrap().check().is_ok());
        assert!(e.tpm.as_ref().unwrap().take(1_000_000, now_ns()).is_ok());
    }
}

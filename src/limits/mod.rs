//! Admission control: request, token and concurrency limits per org, team and key (with
//! per-model overrides) and USD budgets per org, team and cost center. `admit` runs on the
//! request path before anything goes upstream; the returned `Admission` holds what the request
//! reserved (tokens, a concurrency slot, worst-case cost) and `settle` replaces the estimates
//! with the real usage when the response ends. Counters live in this process (`local`) or in
//! Redis shared by every replica (`shared`), with local limits as the fallback when Redis is
//! unreachable.

pub mod budget;
pub mod gcra;
pub mod headers;
mod local;
pub mod reconcile;
pub mod shared;
pub mod spec;

use crate::config::Config;
use smallvec::SmallVec;
use spec::{Budget, LimitValues};
use std::sync::Arc;
use std::time::Duration;

/// Which limit refused a request; also the `code` of the 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    Concurrency,
    Budget,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Requests => "rate_limit_exceeded",
            Kind::Tokens => "tokens_limit_exceeded",
            Kind::Concurrency => "concurrency_limit_exceeded",
            Kind::Budget => "budget_exceeded",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
            Kind::Concurrency => "concurrency",
            Kind::Budget => "budget",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Org,
    Team,
    Key,
    CostCenter,
}

/// One set of limit values that applies to a request.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a> {
    pub scope: Scope,
    pub org: &'a str,
    /// Team id, key id, or the org id again.
    pub id: &'a str,
    /// The alias when the values are its override (its own counters).
    pub model: Option<&'a str>,
    pub values: LimitValues,
}

impl LimitCheck<'_> {
    /// Identity of the counters: scope, names and values. A reload that keeps all of them keeps
    /// the counters; changed values start fresh ones.
    pub fn identity(&self) -> u64 {
        let mut h = Fnv::new();
        h.u8(self.scope as u8);
        h.str(self.org);
        h.str(self.id);
        h.str(self.model.unwrap_or(""));
        for v in [
            self.values.rps,
            self.values.rpm,
            self.values.tpm,
            self.values.concurrent,
        ] {
            h.u64(v.map_or(u64::MAX, |v| v));
        }
        h.finish()
    }

    pub fn describe(&self) -> String {
        let who = match self.scope {
            Scope::Org => format!("org {}", self.org),
            Scope::Team => format!("team {}/{}", self.org, self.id),
            Scope::Key => format!("key {}", self.id),
            Scope::CostCenter => format!("cost center {}/{}", self.org, self.id),
        };
        match self.model {
            Some(m) => format!("{who} (model {m})"),
            None => who,
        }
    }
}

/// One budget that applies to a request.
#[derive(Debug, Clone, Copy)]
pub struct BudgetCheck<'a> {
    pub scope: Scope,
    pub org: &'a str,
    pub id: &'a str,
    pub budget: &'a Budget,
}

impl BudgetCheck<'_> {
    pub fn identity(&self) -> u64 {
        let mut h = Fnv::new();
        h.u8(self.scope as u8 | 0x80);
        h.str(self.org);
        h.str(self.id);
        h.u64(self.budget.nano as u64);
        h.u64(match self.budget.period {
            spec::Period::Month => 0,
            spec::Period::Rolling { days } => u64::from(days),
        });
        h.finish()
    }

    /// Bounded metric label and message name: `org/cost_center`, `org/team`, or `org`.
    pub fn label(&self) -> String {
        match self.scope {
            Scope::Org => self.org.to_string(),
            _ => format!("{}/{}", self.org, self.id),
        }
    }
}

/// Prompt tokens an estimate assumes per body byte (over-estimates English and JSON, so
/// reservations err on the safe side and are settled to the real count).
const BYTES_PER_TOKEN: u64 = 3;

/// The most a request of `body_len` bytes with a completion bound of `completion` tokens may
/// use: (tokens, cost in nano-USD at `price`, 0 when unpriced). Admission reserves this; the
/// end settles the real usage.
pub fn worst_case(
    body_len: usize,
    completion: u64,
    price: Option<crate::usage::pricing::Price>,
) -> (u64, i64) {
    let prompt = (body_len as u64).div_ceil(BYTES_PER_TOKEN);
    // `max_tokens` is the client's: bounded like every token figure, so nothing here wraps.
    let completion = completion.min(crate::usage::MAX_TOKENS);
    let cost = price.map_or(0, |p| {
        p.cost_nanousd(&crate::usage::Usage {
            prompt_tokens: prompt,
            cached_tokens: 0,
            completion_tokens: completion,
        })
    });
    (prompt.saturating_add(completion), cost)
}

/// The caller and request as admission sees them.
pub struct Request<'a> {
    pub org: Option<&'a str>,
    pub team: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub cost_center: Option<&'a str>,
    pub alias: &'a str,
    /// Prompt estimate + completion bound.
    pub tokens: u64,
    /// Worst-case cost, nano-USD (0 when the model has no price).
    pub worst_cost: i64,
    pub request_id: &'a str,
}

/// What the limits that apply look like after a decision: OpenAI's `x-ratelimit-*` values for
/// the most constrained request and token limits, and a budget warning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
    pub budget_warning: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl Status {
    /// Keeps the window with the least left.
    pub fn offer(slot: &mut Option<Window>, w: Window) {
        if slot.is_none_or(|s| w.remaining < s.remaining) {
            *slot = Some(w);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
    pub retry_after: Duration,
    pub status: Status,
    /// Org label for the rejection metric.
    pub org: String,
}

/// What the refusing limit says, for the message: its value (and period for request rates, the
/// period's spend for budgets).
#[derive(Debug, Clone, Copy)]
pub enum Exceeded {
    Requests { limit: u64, per_second: bool },
    Tokens { limit: u64 },
    Concurrency { limit: u64 },
    Budget { limit: i64, spent: i64 },
}

impl Exceeded {
    fn kind(self) -> Kind {
        match self {
            Exceeded::Requests { .. } => Kind::Requests,
            Exceeded::Tokens { .. } => Kind::Tokens,
            Exceeded::Concurrency { .. } => Kind::Concurrency,
            Exceeded::Budget { .. } => Kind::Budget,
        }
    }
}

impl Refusal {
    /// The refusal of `r` by `who`'s limit (both backends word it alike).
    pub fn new(
        x: Exceeded,
        who: &str,
        r: &Request<'_>,
        retry: Duration,
        status: Status,
    ) -> Box<Refusal> {
        use crate::usage::pricing::format_usd;
        let kind = x.kind();
        let (head, what) = match x {
            Exceeded::Requests { limit, per_second } => (
                "Rate limit reached",
                format!(
                    "{limit} requests per {}",
                    if per_second { "second" } else { "minute" }
                ),
            ),
            // A request larger than the whole limit can never fit.
            Exceeded::Tokens { limit } if r.tokens > limit => (
                "Token rate limit reached",
                format!(
                    "{limit} tokens per minute, and this request may use up to {} (lower max_tokens)",
                    r.tokens
                ),
            ),
            Exceeded::Tokens { limit } => (
                "Token rate limit reached",
                format!("{limit} tokens per minute, {} requested", r.tokens),
            ),
            Exceeded::Concurrency { limit } => (
                "Too many concurrent requests",
                format!("{limit} requests at once"),
            ),
            Exceeded::Budget { limit, spent } => (
                "Budget exhausted",
                format!(
                    "{} of {} USD spent this period, and this request may cost up to {} USD",
                    format_usd(spent),
                    format_usd(limit),
                    format_usd(r.worst_cost)
                ),
            ),
        };
        Box::new(Refusal {
            kind,
            message: format!(
                "{head} for {who}: {what}. Please try again in {}.",
                headers::duration_text(retry.max(Duration::from_millis(1)))
            ),
            retry_after: retry,
            status,
            org: r.org.unwrap_or("").to_string(),
        })
    }
}

/// What a request holds until it is settled.
pub struct Admission {
    pub status: Status,
    holds: Holds,
}

enum Holds {
    None,
    Local(local::Holds),
    Shared(shared::Holds),
    /// Local holds taken while Redis was down: settled here, and their spend owed to Redis.
    Fallback {
        local: local::Holds,
        shared: Arc<shared::Shared>,
        /// Redis budget keys this request's spend counts against.
        owes: Vec<String>,
    },
}

impl Holds {
    fn settle(self, actual: Actual) -> Vec<Crossing> {
        match self {
            Holds::None => Vec::new(),
            Holds::Local(h) => h.settle(actual),
            Holds::Shared(h) => h.settle(actual),
            Holds::Fallback {
                local,
                shared,
                owes,
            } => {
                for key in &owes {
                    shared.owe(key, actual.cost);
                }
                local.settle(actual)
            }
        }
    }
}

/// The usage a request really had.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actual {
    pub tokens: u64,
    pub cost: i64,
}

/// A soft budget threshold crossed by a request's spend (for the audit trail).
#[derive(Debug, Clone)]
pub struct Crossing {
    pub budget: String,
    pub fraction: f64,
    pub spent: i64,
    pub limit: i64,
}

impl Admission {
    pub fn unlimited() -> Self {
        Self {
            status: Status::default(),
            holds: Holds::None,
        }
    }

    /// Replaces the reservations with the real usage; returns soft thresholds crossed.
    pub fn settle(mut self, actual: Actual) -> Vec<Crossing> {
        std::mem::replace(&mut self.holds, Holds::None).settle(actual)
    }
}

impl Drop for Admission {
    /// An admission dropped without settling (the request failed before any usage) gives
    /// everything back.
    fn drop(&mut self) {
        std::mem::replace(&mut self.holds, Holds::None).settle(Actual::default());
    }
}

/// Limit sets that apply to a request (an org's, a team's, a key's), inline.
type LimitChecks<'a> = SmallVec<[LimitCheck<'a>; 3]>;
/// Budgets that apply to a request (an org's, a team's, a key's, a cost center's), inline.
type BudgetChecks<'a> = SmallVec<[BudgetCheck<'a>; 4]>;

/// The checks that apply to a request under `cfg`, in a fixed order (org, team, key).
pub fn plan<'a>(cfg: &'a Config, r: &Request<'a>) -> (LimitChecks<'a>, BudgetChecks<'a>) {
    let mut limits = LimitChecks::new();
    let mut budgets = BudgetChecks::new();
    let Some(org_id) = r.org else {
        return (limits, budgets);
    };
    let Some(org) = cfg.orgs.get(org_id) else {
        return (limits, budgets);
    };
    let mut add = |scope, id: &'a str, set: &'a spec::LimitSet| {
        let (values, own) = set.for_model(r.alias);
        if !values.is_empty() {
            limits.push(LimitCheck {
                scope,
                org: &org.id,
                id,
                model: own.then_some(r.alias),
                values,
            });
        }
    };
    if let Some(set) = &org.limits {
        add(Scope::Org, &org.id, set);
    }
    let team = r.team.and_then(|t| org.teams.get_key_value(t));
    if let Some((tid, t)) = team {
        if let Some(set) = &t.limits {
            add(Scope::Team, tid, set);
        }
    }
    // A key's own entry replaces the org's per-key limits for it.
    let own = r.key_id.and_then(|k| org.keys.get_key_value(k));
    let key_set = own
        .and_then(|(_, p)| p.limits.as_ref())
        .or(org.key_limits.as_ref());
    if let (Some(set), Some(key)) = (key_set, r.key_id) {
        add(Scope::Key, key, set);
    }
    if let Some(b) = &org.budget {
        budgets.push(BudgetCheck {
            scope: Scope::Org,
            org: &org.id,
            id: &org.id,
            budget: b,
        });
    }
    if let Some((tid, t)) = team {
        if let Some(b) = &t.budget {
            budgets.push(BudgetCheck {
                scope: Scope::Team,
                org: &org.id,
                id: tid,
                budget: b,
            });
        }
    }
    if let Some((kid, b)) = own.and_then(|(k, p)| Some((k, p.budget.as_ref()?))) {
        budgets.push(BudgetCheck {
            scope: Scope::Key,
            org: &org.id,
            id: kid,
            budget: b,
        });
    }
    if let Some((cid, cc)) = r
        .cost_center
        .and_then(|c| org.cost_centers.get_key_value(c))
    {
        if let Some(b) = &cc.budget {
            budgets.push(BudgetCheck {
                scope: Scope::CostCenter,
                org: &org.id,
                id: cid,
                budget: b,
            });
        }
    }
    (limits, budgets)
}

/// The process's limiter: local counters always (they are the fallback), Redis when configured.
pub struct Limiter {
    local: Arc<local::Local>,
    shared: Option<Arc<shared::Shared>>,
}

impl Limiter {
    pub fn new(cfg: &Config) -> Self {
        let shared = match (cfg.limits.backend, &cfg.limits.redis_url) {
            (spec::Backend::Redis, Some(url)) => match shared::Shared::new(url, &cfg.limits) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!("limits: Redis URL rejected ({e}); enforcing limits locally");
                    None
                }
            },
            _ => None,
        };
        Self {
            local: Arc::new(local::Local::default()),
            shared,
        }
    }

    /// Decides one request with local counters only (what `admit` does without Redis).
    pub fn admit_local(&self, cfg: &Config, r: &Request<'_>) -> Result<Admission, Box<Refusal>> {
        let (limits, budgets) = plan(cfg, r);
        if limits.is_empty() && budgets.is_empty() {
            return Ok(Admission::unlimited());
        }
        self.admit_counted(&limits, &budgets, r, crate::time::now_unix())
    }

    /// Decides one request.
    pub async fn admit(&self, cfg: &Config, r: &Request<'_>) -> Result<Admission, Box<Refusal>> {
        let Some(sh) = &self.shared else {
            return self.admit_local(cfg, r);
        };
        let (limits, budgets) = plan(cfg, r);
        if limits.is_empty() && budgets.is_empty() {
            return Ok(Admission::unlimited());
        }
        let now = crate::time::now_unix();
        match sh.admit(&limits, &budgets, r, now).await {
            Ok(Ok((status, mut holds))) => {
                // The local budget states follow Redis: they are the baseline of a fallback.
                for &(bi, spent) in &holds.budget_spent {
                    let state = self.local.budget(&budgets[bi], now);
                    state.observe_global(spent);
                    holds.shadows.push((bi, state));
                }
                Ok(Admission {
                    status,
                    holds: Holds::Shared(holds),
                })
            }
            Ok(Err(refusal)) => Err(refusal),
            Err(()) => {
                // Redis is unreachable: local limits and budgets, scaled to this replica's
                // share; budget spend is owed to Redis until it answers again.
                let share = cfg.limits.fallback_share;
                let scaled: Vec<LimitCheck> = limits
                    .iter()
                    .map(|c| LimitCheck {
                        values: local::scale(c.values, share),
                        ..*c
                    })
                    .collect();
                let (status, local) = self.local.admit(&scaled, &budgets, r, now, Some(share))?;
                Ok(Admission {
                    status,
                    holds: Holds::Fallback {
                        local,
                        shared: sh.clone(),
                        owes: budgets.iter().map(|b| shared::budget_key(b, now)).collect(),
                    },
                })
            }
        }
    }

    fn admit_counted(
        &self,
        limits: &[LimitCheck],
        budgets: &[BudgetCheck],
        r: &Request<'_>,
        now: u64,
    ) -> Result<Admission, Box<Refusal>> {
        self.local
            .admit(limits, budgets, r, now, None)
            .map(|(status, holds)| Admission {
                status,
                holds: Holds::Local(holds),
            })
    }

    /// Budget states this process keeps (reconciliation and metrics).
    pub fn local(&self) -> &Arc<local::Local> {
        &self.local
    }

    pub fn shared(&self) -> Option<&Arc<shared::Shared>> {
        self.shared.as_ref()
    }
}

/// FNV-1a over typed fields: the identity hashes above.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf29ce484222325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x100000001b3);
        }
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::pricing::{parse_usd, Price};

    #[test]
    fn worst_case_never_wraps() {
        let p = Price {
            input: parse_usd("1000").unwrap(),
            cached_input: 0,
            output: parse_usd("1000").unwrap(),
        };
        let (tokens, cost) = worst_case(usize::MAX, u64::MAX, Some(p));
        assert_eq!(
            tokens,
            (usize::MAX as u64).div_ceil(BYTES_PER_TOKEN) + crate::usage::MAX_TOKENS
        );
        assert!(cost > 0, "a wrapped sum would price as (nearly) nothing");
        let (tokens, _) = worst_case(10, u64::MAX - 1, None);
        assert!(tokens > crate::usage::MAX_TOKENS);
    }
}

//! Limits shared by every replica in Redis: one Lua script decides a request against all of
//! its limits and budgets atomically (one round trip), using Redis's clock so replicas agree;
//! another settles it when it ends (off the request path). Request and token limits are GCRA
//! (the same algorithm as locally), concurrency is a sorted set of leases that expire if a
//! replica dies mid-request, budgets are a hash of spend and reservations with expiring leases.
//!
//! When Redis errors or answers slower than `redis_timeout`, the caller falls back to local
//! limits scaled to `fallback_share` (budgets too: each replica may spend only its share of
//! what was left when Redis went away, and what it spends is paid into Redis when it returns).
//!
//! The connection lives on a runtime of its own that always runs (thread `limits-redis`): a
//! connection's driver task must outlive whatever runtime first needed it (start-up budget
//! loading runs on a throwaway one). A prober there notices an outage while idle, and after any
//! error or timeout drops the connection and makes a new one — the request path never waits to
//! connect: without a connection it falls back at once.

use super::budget::Level;
use super::{
    Actual, BudgetCheck, Crossing, Exceeded, LimitCheck, Refusal, Request, Status, Window,
};
use crate::metrics::METRICS;
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A request may hold a concurrency slot or a budget reservation at most this long if its
/// replica dies before settling it.
const LEASE_TTL_US: u64 = 15 * 60 * 1_000_000;
/// Marks one Redis lifetime: set if missing by the first replica to connect.
const EPOCH_KEY: &str = "mb:epoch";

/// How often the prober reconnects while Redis is down, and pings it while it is up.
const PROBE_EVERY: Duration = Duration::from_millis(250);

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local rid = ARGV[2]
local n = tonumber(ARGV[3])
local keep = {}
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit, period, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local key = KEYS[i]
  if kind == 'r' or kind == 't' then
    local T = period / limit
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new = tat + amount * T
    if new - now > period then
      return {0, i, math.ceil(new - now - period), math.floor((period - (tat - now)) / T), math.ceil(tat - now)}
    end
    keep[i] = new
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local c = redis.call('ZCARD', key)
    if c >= limit then return {0, i, 1000000, 0, 0} end
    keep[i] = c
  else
    local leases, amounts = key .. ':l', key .. ':a'
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
      redis.call('HINCRBY', key, 'reserved', -tonumber(redis.call('HGET', amounts, m) or '0'))
      redis.call('HDEL', amounts, m)
    end
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
    local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
    if spent + reserved + amount > limit or (amount == 0 and spent + reserved >= limit) then
      return {0, i, 0, spent, 0}
    end
    keep[i] = spent
  end
end
local out = {1}
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit, period, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local key = KEYS[i]
  if kind == 'r' or kind == 't' then
    local T = period / limit
    redis.call('SET', key, string.format('%.0f', keep[i]), 'PX', math.ceil(period / 1000) + 1000)
    out[#out + 1] = math.floor((period - (keep[i] - now)) / T)
    out[#out + 1] = math.ceil(keep[i] - now)
  elseif kind == 'c' then
    redis.call('ZADD', key, now + ttl, rid)
    redis.call('PEXPIRE', key, math.ceil(ttl / 1000))
    out[#out + 1] = limit - keep[i] - 1
    out[#out + 1] = 0
  else
    redis.call('ZADD', key .. ':l', now + ttl, rid)
    redis.call('HSET', key .. ':a', rid, amount)
    redis.call('HINCRBY', key, 'reserved', amount)
    for _, k in ipairs({key, key .. ':l', key .. ':a'}) do redis.call('PEXPIRE', k, period) end
    out[#out + 1] = keep[i]
    out[#out + 1] = 0
  end
end
return out
"#;

const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local kind, limit, period, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local key = KEYS[i]
  if kind == 't' then
    local T = period / limit
    local tat = tonumber(redis.call('GET', key) or '0')
    local new
    if amount >= 0 then
      new = math.max(tat, now) + amount * T
    else
      new = math.max(tat + amount * T, math.min(now, tat))
    end
    redis.call('SET', key, string.format('%.0f', new), 'PX', math.ceil(period / 1000) + 1000)
    out[#out + 1] = 0
  elseif kind == 'c' then
    redis.call('ZREM', key, rid)
    out[#out + 1] = 0
  else
    local a = redis.call('HGET', key .. ':a', rid)
    if a then
      redis.call('HINCRBY', key, 'reserved', -tonumber(a))
      redis.call('HDEL', key .. ':a', rid)
      redis.call('ZREM', key .. ':l', rid)
    end
    out[#out + 1] = redis.call('HINCRBY', key, 'spent', amount)
  end
end
return out
"#;

/// Spend of a budget period known elsewhere (ClickHouse): Redis keeps the larger value.
const SEED: &str = r#"
local s = tonumber(redis.call('HGET', KEYS[1], 'spent') or '-1')
if s < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(redis.call('HGET', KEYS[1], 'spent'))
"#;

pub struct Shared {
    client: redis::Client,
    /// The live connection; `None` while Redis is down (the prober makes a new one).
    conn: ArcSwapOption<ConnectionManager>,
    timeout: Duration,
    admit: redis::Script,
    settle: redis::Script,
    seed: redis::Script,
    up: AtomicBool,
    /// The `limits-redis` runtime: connections, the prober, settlements.
    rt: tokio::runtime::Handle,
    /// Budget spend settled while Redis was unreachable, by Redis budget key: paid in when it
    /// answers again, so other replicas see it.
    owed: Mutex<HashMap<String, i64>>,
    /// Everything this replica spent per budget key (in Redis or owed): when Redis comes back
    /// empty (a new epoch), every replica adds its own total, and together they restore the
    /// period's spend exactly, in whatever order they reconnect.
    own: Mutex<HashMap<String, i64>>,
    /// The Redis epoch (a marker key) this replica last saw; a different one means Redis lost
    /// its data.
    epoch: Mutex<Option<String>>,
}

/// One line of a script call.
struct Item {
    key: String,
    kind: &'static str,
    limit: u64,
    period_us: u64,
    amount: i64,
    /// What it describes (messages) and, for budgets, their index in the admission's budget
    /// checks and their metric label.
    who: String,
    budget: Option<(usize, String)>,
}

pub struct Holds {
    shared: Arc<Shared>,
    request_id: String,
    items: Vec<Item>,
    reserved_tokens: u64,
    /// Budgets' spend as Redis reported it at admission (index into the budget checks).
    pub budget_spent: Vec<(usize, i64)>,
    /// This process's budget states, kept level with Redis's spend (the fallback's baseline).
    pub shadows: Vec<(usize, Arc<super::budget::BudgetState>)>,
}

impl Holds {
    /// Settles in the background: the response is already on its way.
    pub fn settle(self, actual: Actual) -> Vec<Crossing> {
        let Holds {
            shared,
            request_id,
            items,
            reserved_tokens,
            shadows,
            ..
        } = self;
        let rt = shared.rt.clone();
        {
            rt.spawn(async move {
                let delta = actual.tokens as i64 - reserved_tokens as i64;
                let items: Vec<Item> = items
                    .into_iter()
                    .filter(|i| i.kind != "r")
                    .map(|mut i| {
                        i.amount = match i.kind {
                            "t" => delta,
                            "c" => 0,
                            _ => actual.cost,
                        };
                        i
                    })
                    .collect();
                if items.is_empty() {
                    return;
                }
                match shared.run(&shared.settle, &request_id, &items, false).await {
                    Ok(spent) => {
                        for (item, s) in items.iter().zip(spent) {
                            if let Some((bi, label)) = &item.budget {
                                shared.spent_here(&item.key, item.amount);
                                METRICS
                                    .budget_spend
                                    .with_label_values(&[label])
                                    .set(s as f64 / 1e9);
                                if let Some((_, st)) = shadows.iter().find(|(i, _)| i == bi) {
                                    st.observe_global(s);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // The reservation's lease expires in Redis; the spend must not vanish.
                        log::debug!(
                            "limits: settling in Redis failed ({e}); owed until it answers"
                        );
                        for item in items.iter().filter(|i| i.kind == "b") {
                            shared.owe(&item.key, item.amount);
                        }
                    }
                }
            });
        }
        Vec::new()
    }
}

impl Shared {
    pub fn new(url: &str, s: &super::spec::LimitSettings) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let rt = redis_runtime()?;
        let shared = Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            timeout: s.redis_timeout,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            seed: redis::Script::new(SEED),
            up: AtomicBool::new(false),
            rt: rt.clone(),
            owed: Mutex::new(HashMap::new()),
            own: Mutex::new(HashMap::new()),
            epoch: Mutex::new(None),
        });
        METRICS.limits_redis_up.set(0);
        // One bounded attempt before serving, so the first requests are not all local.
        let (tx, rx) = std::sync::mpsc::channel();
        let first = shared.clone();
        rt.spawn(async move {
            if let Err(e) = first.reconnect().await {
                log::warn!("limits: Redis not reachable at start ({e}); local limits until it is");
            }
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(3));
        rt.spawn(probe(Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// The live connection, if Redis is up; never waits to connect.
    fn conn(&self) -> Result<ConnectionManager, String> {
        match self.conn.load_full() {
            Some(c) if self.up.load(Ordering::Acquire) => Ok((*c).clone()),
            _ => Err("Redis is not connected".into()),
        }
    }

    /// Connects anew (on the `limits-redis` runtime: the connection's task lives there), pays
    /// what is owed, and marks Redis up.
    async fn reconnect(&self) -> Result<(), String> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.timeout.max(Duration::from_millis(200)))
            .set_number_of_retries(0);
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if self.lost_data(&mut c).await? {
            self.restore_own(&mut c).await?;
        } else {
            self.pay_owed(&mut c).await?;
        }
        self.conn.store(Some(Arc::new(c)));
        self.mark(true, "");
        Ok(())
    }

    /// Adds fallback spend to Redis's budgets (what is not paid stays owed).
    async fn pay_owed(&self, c: &mut ConnectionManager) -> Result<(), String> {
        let owed: Vec<(String, i64)> = {
            let mut o = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            o.drain().collect()
        };
        for (i, (key, amount)) in owed.iter().enumerate() {
            let paid: Result<i64, _> = redis::cmd("HINCRBY")
                .arg(key)
                .arg("spent")
                .arg(*amount)
                .query_async(c)
                .await;
            if let Err(e) = paid {
                for (k, a) in &owed[i..] {
                    self.owe(k, *a);
                }
                return Err(e.to_string());
            }
        }
        if !owed.is_empty() {
            log::info!(
                "limits: paid {} budgets' fallback spend into Redis",
                owed.len()
            );
        }
        Ok(())
    }

    /// Whether Redis lost its data since this replica last saw it: its epoch marker (set once
    /// by whichever replica finds it missing) changed.
    async fn lost_data(&self, c: &mut ConnectionManager) -> Result<bool, String> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let _: Option<String> = redis::cmd("SET")
            .arg(EPOCH_KEY)
            .arg(&fresh)
            .arg("NX")
            .query_async(c)
            .await
            .map_err(|e| e.to_string())?;
        let now: String = redis::cmd("GET")
            .arg(EPOCH_KEY)
            .query_async(c)
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let lost = seen.as_ref().is_some_and(|e| *e != now);
        *seen = Some(now);
        Ok(lost)
    }

    /// After Redis lost its data: adds everything this replica spent per budget (what was owed
    /// included), so the replicas' totals add up to the period's spend again.
    async fn restore_own(&self, c: &mut ConnectionManager) -> Result<(), String> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let own: Vec<(String, i64)> = self
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, spent) in &own {
            let _: i64 = redis::cmd("HINCRBY")
                .arg(key)
                .arg("spent")
                .arg(*spent)
                .query_async(c)
                .await
                .map_err(|e| e.to_string())?;
            let _: i64 = redis::cmd("PEXPIRE")
                .arg(key)
                .arg(40u64 * 86_400_000)
                .query_async(c)
                .await
                .map_err(|e| e.to_string())?;
        }
        log::warn!(
            "limits: Redis lost its data; restored this replica's spend of {} budgets",
            own.len()
        );
        Ok(())
    }

    /// Counts spend of this replica against a budget key.
    fn spent_here(&self, key: &str, amount: i64) {
        if amount > 0 {
            *self
                .own
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_string())
                .or_default() += amount;
        }
    }

    /// Records spend Redis has not seen (settled while it was unreachable, for the budget at
    /// `key`): paid in when it answers again.
    pub fn owe(&self, key: &str, amount: i64) {
        self.spent_here(key, amount);
        if amount > 0 {
            *self
                .owed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_string())
                .or_default() += amount;
        }
    }

    fn mark(&self, ok: bool, why: &str) {
        let was = self.up.swap(ok, Ordering::AcqRel);
        METRICS.limits_redis_up.set(i64::from(ok));
        if ok && !was {
            log::warn!("limits: Redis answers; shared limits in force");
        }
        if !ok {
            // A connection that failed or timed out is not trusted again: the prober makes a
            // new one.
            self.conn.store(None);
            if was {
                log::error!("limits: Redis unreachable ({why}); enforcing local limits scaled to this replica's share");
            }
        }
    }

    /// Runs a script over `items`; Ok(reply) or Err when Redis failed (marks it down).
    async fn run(
        &self,
        script: &redis::Script,
        request_id: &str,
        items: &[Item],
        admit: bool,
    ) -> Result<Vec<i64>, String> {
        let mut inv = script.prepare_invoke();
        for i in items {
            inv.key(&i.key);
        }
        if admit {
            inv.arg(LEASE_TTL_US);
        }
        inv.arg(request_id).arg(items.len());
        for i in items {
            inv.arg(i.kind).arg(i.limit).arg(i.period_us).arg(i.amount);
        }
        let start = Instant::now();
        let mut conn = self.conn()?;
        let out = tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
        METRICS
            .limits_redis_duration
            .observe(start.elapsed().as_secs_f64());
        match out {
            Ok(Ok(v)) => {
                self.mark(true, "");
                Ok(v)
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                self.mark(false, &e);
                Err(e)
            }
            Err(_) => {
                self.mark(false, "timed out");
                Err("timed out".into())
            }
        }
    }

    /// `Ok(decision)`, or `Err(())` when Redis cannot decide (the caller falls back).
    pub async fn admit(
        self: &Arc<Self>,
        limits: &[LimitCheck<'_>],
        budgets: &[BudgetCheck<'_>],
        r: &Request<'_>,
        now: u64,
    ) -> Result<Result<(Status, Holds), Box<Refusal>>, ()> {
        if !self.up.load(Ordering::Acquire) {
            METRICS.limits_fallbacks.inc();
            return Err(());
        }
        let mut items = Vec::with_capacity(limits.len() * 4 + budgets.len());
        for c in limits {
            let id = format!("mb:l:{:016x}", c.identity());
            let v = c.values;
            for (kind, limit, period, amount, suffix) in [
                ("r", v.rps, 1_000_000u64, 1i64, "s"),
                ("r", v.rpm, 60_000_000, 1, "m"),
                ("t", v.tpm, 60_000_000, r.tokens as i64, "t"),
                ("c", v.concurrent, 0, 0, "c"),
            ] {
                if let Some(limit) = limit {
                    items.push(Item {
                        key: format!("{id}:{suffix}"),
                        kind,
                        limit,
                        period_us: period,
                        amount,
                        who: c.describe(),
                        budget: None,
                    });
                }
            }
        }
        for (bi, b) in budgets.iter().enumerate() {
            let period_ms = match b.budget.period {
                super::spec::Period::Month => 40 * 86_400_000u64,
                super::spec::Period::Rolling { days } => u64::from(days + 1) * 86_400_000,
            };
            items.push(Item {
                key: budget_key(b, now),
                kind: "b",
                limit: b.budget.nano as u64,
                period_us: period_ms,
                amount: r.worst_cost,
                who: super::headers::budget_name(b),
                budget: Some((bi, b.label())),
            });
        }
        let reply = match self.run(&self.admit, r.request_id, &items, true).await {
            Ok(v) => v,
            Err(_) => {
                METRICS.limits_fallbacks.inc();
                return Err(());
            }
        };
        let mut status = Status::default();
        let mut budget_spent = Vec::new();
        if reply.first() == Some(&1) {
            for (i, item) in items.iter().enumerate() {
                let (a, b) = (
                    reply.get(1 + 2 * i).copied().unwrap_or(0),
                    reply.get(2 + 2 * i).copied().unwrap_or(0),
                );
                let w = Window {
                    limit: item.limit,
                    remaining: a.max(0) as u64,
                    reset: Duration::from_micros(b.max(0) as u64),
                };
                match item.kind {
                    "r" => Status::offer(&mut status.requests, w),
                    "t" => Status::offer(&mut status.tokens, w),
                    "b" => {
                        if let Some((bi, _)) = &item.budget {
                            budget_spent.push((*bi, a));
                        }
                        if let Some(bc) = item.budget.as_ref().map(|(bi, _)| &budgets[*bi]) {
                            let level = Level::of(a, bc.budget.nano, &bc.budget.soft);
                            if level.over_soft {
                                status.budget_warning =
                                    Some(super::headers::budget_warning(bc, level));
                            }
                        }
                    }
                    _ => {}
                }
            }
            return Ok(Ok((
                status,
                Holds {
                    shared: self.clone(),
                    request_id: r.request_id.to_string(),
                    items,
                    reserved_tokens: r.tokens,
                    budget_spent,
                    shadows: Vec::new(),
                },
            )));
        }
        // Refused: which item, how long to wait.
        let idx = reply.get(1).copied().unwrap_or(1).max(1) as usize - 1;
        let item = &items[idx.min(items.len() - 1)];
        let retry_us = reply.get(2).copied().unwrap_or(0).max(0) as u64;
        let spent_or_remaining = reply.get(3).copied().unwrap_or(0);
        let mut retry = Duration::from_micros(retry_us);
        let x = match item.kind {
            "r" => Exceeded::Requests {
                limit: item.limit,
                per_second: item.period_us == 1_000_000,
            },
            "t" => Exceeded::Tokens { limit: item.limit },
            "c" => Exceeded::Concurrency { limit: item.limit },
            _ => {
                let b = item.budget.as_ref().map(|(bi, _)| &budgets[*bi]);
                retry = b.map_or(Duration::from_secs(3600), |b| {
                    super::headers::until_period_end(b.budget.period, now)
                });
                Exceeded::Budget {
                    limit: item.limit as i64,
                    spent: spent_or_remaining,
                }
            }
        };
        let window = Window {
            limit: item.limit,
            remaining: spent_or_remaining.max(0) as u64,
            reset: Duration::from_micros(reply.get(4).copied().unwrap_or(0).max(0) as u64),
        };
        match x {
            Exceeded::Requests { .. } => status.requests = Some(window),
            Exceeded::Tokens { .. } => status.tokens = Some(window),
            _ => {}
        }
        Ok(Err(Refusal::new(x, &item.who, r, retry, status)))
    }

    /// Raises a budget period's shared spend to at least `spent` (ClickHouse's figure).
    pub async fn seed(&self, b: &BudgetCheck<'_>, spent: i64, now: u64) -> Result<i64, String> {
        let key = budget_key(b, now);
        let mut conn = self.conn()?;
        let mut inv = self.seed.prepare_invoke();
        inv.key(key).arg(spent).arg(40u64 * 86_400_000);
        tokio::time::timeout(
            self.timeout.max(Duration::from_secs(1)),
            inv.invoke_async::<i64>(&mut conn),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
    }
}

/// The Redis key of a budget's current period.
pub fn budget_key(b: &BudgetCheck<'_>, now: u64) -> String {
    format!("mb:b:{:016x}:{}", b.identity(), b.budget.period.label(now))
}

/// The process's `limits-redis` runtime, started once and never stopped.
fn redis_runtime() -> Result<tokio::runtime::Handle, String> {
    static RT: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    if let Some(h) = RT.get() {
        return Ok(h.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("limits-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        })
        .map_err(|e| e.to_string())?;
    let h = rx
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("limits-redis runtime: {e}"))?;
    Ok(RT.get_or_init(|| h).clone())
}

/// Keeps the connection: reconnects while Redis is down, pings it while up (so an outage is
/// seen, and `limits_redis_up` true, even with no traffic). Ends with its `Shared`.
async fn probe(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(s) = shared.upgrade() else { return };
        if s.up.load(Ordering::Acquire) {
            let Ok(mut c) = s.conn() else { continue };
            let ping = tokio::time::timeout(
                s.timeout.max(Duration::from_millis(200)),
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await;
            match ping {
                Ok(Ok(_)) => {
                    // A Redis that restarted empty between two pings is caught here too.
                    let settled = match s.lost_data(&mut c).await {
                        Ok(true) => s.restore_own(&mut c).await,
                        Ok(false) => s.pay_owed(&mut c).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = settled {
                        s.mark(false, &e);
                    }
                }
                Ok(Err(e)) => s.mark(false, &e.to_string()),
                Err(_) => s.mark(false, "ping timed out"),
            }
        } else if let Err(e) = s.reconnect().await {
            log::debug!("limits: Redis reconnect failed: {e}");
        }
    }
}

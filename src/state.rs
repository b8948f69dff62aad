//! Live state: one config generation and everything compiled from it, swapped atomically on
//! reload. A request loads one `Arc<Live>` at its start and keeps it to the end.

use crate::audit::AuditSink;
use crate::auth::store::Keys;
use crate::config::{Config, ConfigErrors};
use crate::metrics::METRICS;
use crate::usage::UsageSink;
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Live {
    pub config: Config,
    pub generation: u64,
    /// Pre-rendered `GET /v1/models` answer.
    pub models_json: Bytes,
    /// Key principals computed against this generation's RBAC.
    pub principals: crate::auth::PrincipalCache,
    /// The caller when authentication is off.
    pub anonymous: Arc<crate::auth::Principal>,
}

impl Live {
    pub fn new(config: Config, generation: u64) -> Self {
        let models_json = render_models(&config);
        Self {
            config,
            generation,
            models_json,
            principals: Default::default(),
            anonymous: Arc::new(crate::auth::Principal::anonymous()),
        }
    }
}

fn render_models(config: &Config) -> Bytes {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aliases: Vec<&str> = config.models.keys().map(String::as_str).collect();
    aliases.sort_unstable();
    let data: Vec<serde_json::Value> = aliases
        .iter()
        .map(|a| {
            let owner = &config.models[*a].provider.name;
            serde_json::json!({
                "id": a,
                "object": "model",
                "created": created,
                "owned_by": owner.as_ref(),
            })
        })
        .collect();
    let v = serde_json::json!({"object": "list", "data": data});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// Starts, replaces or stops the finance webhook thread to match `cfg` (an unchanged webhook
/// keeps its thread and queue; a replaced one ends once its queue is drained).
fn refresh_notifier(
    slot: &arc_swap::ArcSwapOption<(
        crate::finance::webhook::WebhookSettings,
        crate::finance::webhook::Notifier,
    )>,
    cfg: &Config,
) {
    let current = slot.load_full();
    match (&cfg.finance.webhook, current.as_deref()) {
        (Some(want), Some((have, _))) if want.same_as(have) => {}
        (Some(want), _) => match crate::finance::webhook::Notifier::start(want.clone()) {
            Ok(n) => slot.store(Some(Arc::new((want.clone(), n)))),
            Err(e) => log::error!("finance webhooks: {e}"),
        },
        (None, _) => slot.store(None),
    }
}

/// Process-wide state shared by both planes.
pub struct Shared {
    live: ArcSwap<Live>,
    config_path: PathBuf,
    next_generation: AtomicU64,
    pub sink: Arc<dyn UsageSink>,
    pub audit: Arc<dyn AuditSink>,
    /// The key store named by the live config (`None` while authentication is off).
    keys: arc_swap::ArcSwapOption<Keys>,
    /// Set on SIGTERM: readiness fails, connections are not kept alive.
    pub draining: AtomicBool,
    /// Requests in progress on the data plane.
    pub inflight: AtomicI64,
    /// Limit and budget counters: outlive config generations (a reload keeps unchanged ones).
    pub limiter: Arc<crate::limits::Limiter>,
    /// Circuit breakers by target identity: a reload keeps the state of unchanged targets.
    pub breakers: dashmap::DashMap<Arc<str>, Arc<crate::routing::resilience::Breaker>>,
    /// Finished records of recent browser requests, for the console.
    pub receipts: crate::usage::receipts::Receipts,
    /// Workflow runs of this process.
    pub workflows: crate::workflow::Engine,
    pub retry_budget: crate::routing::resilience::RetryBudget,
    /// Monthly spend of shadow traffic, per alias.
    pub shadow_budgets: dashmap::DashMap<Arc<str>, Arc<crate::limits::budget::BudgetState>>,
    /// Feedback scores (`POST /v1/feedback`); `None` without a warehouse.
    pub feedback: Option<Arc<crate::warehouse::sinks::ClickHouseFeedback>>,
    /// Background work of the request path, and the cut at the drain deadline.
    pub tasks: crate::tasks::Tasks,
    /// Finance webhooks, with the settings they were started with (`None`: none configured).
    notifier: arc_swap::ArcSwapOption<(
        crate::finance::webhook::WebhookSettings,
        crate::finance::webhook::Notifier,
    )>,
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: &Path,
        sink: Arc<dyn UsageSink>,
        audit: Arc<dyn AuditSink>,
        feedback: Option<Arc<crate::warehouse::sinks::ClickHouseFeedback>>,
    ) -> std::io::Result<Arc<Self>> {
        METRICS.config_generation.set(1);
        METRICS.prime(&config);
        let keys = arc_swap::ArcSwapOption::empty();
        keys.store(Keys::open(&config)?.map(Arc::new));
        let limiter = Arc::new(crate::limits::Limiter::new(&config));
        let retry_budget =
            crate::routing::resilience::RetryBudget::new(config.routing.retry_budget_ratio, 10);
        let notifier = arc_swap::ArcSwapOption::empty();
        refresh_notifier(&notifier, &config);
        let shared = Arc::new(Self {
            notifier,
            limiter,
            breakers: Default::default(),
            receipts: Default::default(),
            workflows: Default::default(),
            shadow_budgets: Default::default(),
            feedback,
            tasks: Default::default(),
            retry_budget,
            keys,
            audit,
            live: ArcSwap::from_pointee(Live::new(config, 1)),
            config_path: config_path.to_path_buf(),
            next_generation: AtomicU64::new(2),
            sink,
            draining: AtomicBool::new(false),
            inflight: AtomicI64::new(0),
        });
        shared.follow_control_policy();
        shared
            .workflows
            .open_journal(&shared.live().config.workflows);
        Ok(shared)
    }

    /// With a control store, a change of its documents (custom roles, bindings, org records,
    /// workflows) reloads the config, so it compiles them; and what the store already held
    /// when the gateway started is compiled now.
    fn follow_control_policy(self: &Arc<Self>) {
        let Some(c) = self.keys() else { return };
        let weak = Arc::downgrade(self);
        c.on_policy_change(move || {
            if let Some(s) = weak.upgrade() {
                if let Err(e) = s.reload() {
                    log::error!("control store policy: reload failed: {e}");
                }
            }
        });
        // Anything the store holds (policy, org records, workflows) joins the config now.
        if !crate::control::docs().is_empty() {
            if let Err(e) = self.reload() {
                log::error!("control store policy: reload failed: {e}");
            }
        }
    }

    fn audit_reload(&self, outcome: &'static str, reason: Option<String>, generation: u64) {
        self.audit.record(crate::audit::AuditEvent {
            ts_ms: crate::time::now_unix() * 1000,
            request_id: String::new(),
            actor: "system".into(),
            org: None,
            action: "config.reload",
            resource: self.config_path.display().to_string(),
            outcome,
            reason,
            before: None,
            after: (generation > 0).then(|| serde_json::json!({"generation": generation})),
            client_ip: None,
            user_agent: None,
        });
    }

    /// Where finance events go, if a webhook is configured.
    pub fn notifier(&self) -> Option<crate::finance::webhook::Notifier> {
        self.notifier.load().as_ref().map(|n| n.1.clone())
    }

    /// The key store, if authentication is on.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.load_full()
    }

    /// The config file this process serves.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The generation serving now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Loads the config file again and swaps it in whole; on any error the old generation keeps
    /// serving and the errors are returned.
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        self.apply(Config::load(&self.config_path))
    }

    /// Reloads from config text already read (and seen to hold still) by the file watcher: the
    /// file is not read again, so a write that starts meanwhile cannot slip in half-done.
    pub fn reload_text(&self, text: &str) -> Result<u64, ConfigErrors> {
        self.apply(Config::parse(text, &self.config_path, &|n| {
            std::env::var(n).ok()
        }))
    }

    fn apply(&self, result: Result<Config, ConfigErrors>) -> Result<u64, ConfigErrors> {
        let result = result.and_then(|cfg| {
            // Open the key store before the swap: a config whose store cannot be read is rejected.
            let wanted = Keys::identity_of(&cfg);
            let current = self.keys.load_full();
            match (wanted, current) {
                (Some(w), Some(cur)) if cur.identity() == w => {}
                (Some(_), _) => match Keys::open(&cfg) {
                    Ok(s) => self.keys.store(s.map(Arc::new)),
                    Err(e) => {
                        return Err(ConfigErrors(vec![crate::config::ConfigError {
                            file: self.config_path.display().to_string(),
                            line: None,
                            path: "auth.key_store".into(),
                            reason: e.to_string(),
                        }]))
                    }
                },
                (None, _) => self.keys.store(None),
            }
            Ok(cfg)
        });
        match result {
            Ok(cfg) => {
                let old = self.live.load();
                let s = &old.config.server;
                if cfg.server.listen != s.listen
                    || cfg.server.ops_listen != s.ops_listen
                    || cfg.server.threads != s.threads
                    || cfg.server.work_stealing != s.work_stealing
                    || cfg.server.busy_poll != s.busy_poll
                    || cfg.server.tls.is_some() != s.tls.is_some()
                {
                    log::warn!("reload: listener, thread and busy-poll settings take effect only on restart");
                }
                let (l, ol) = (&cfg.limits, &old.config.limits);
                if l.backend != ol.backend || l.redis_url != ol.redis_url {
                    log::warn!(
                        "reload: the limits backend and Redis URL take effect only on restart"
                    );
                }
                if cfg.usage.sink != old.config.usage.sink
                    || cfg.audit_sink != old.config.audit_sink
                    || cfg.clickhouse.as_ref().map(|c| (&c.url, &c.database))
                        != old
                            .config
                            .clickhouse
                            .as_ref()
                            .map(|c| (&c.url, &c.database))
                {
                    log::warn!("reload: usage / audit sinks and the ClickHouse connection take effect only on restart");
                }
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                METRICS.prime(&cfg);
                refresh_notifier(&self.notifier, &cfg);
                self.live.store(Arc::new(Live::new(cfg, generation)));
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                METRICS.config_generation.set(generation as i64);
                self.audit_reload("succeeded", None, generation);
                log::info!("config reloaded: generation {generation}");
                Ok(generation)
            }
            Err(e) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                self.audit_reload("failed", Some(e.to_string()), 0);
                log::error!("config reload rejected, previous config keeps serving:\n{e}");
                Err(e)
            }
        }
    }
}

/// The shared value under `key`, created by `make` on first use: a read-locked lookup on the
/// hot path, the shard's write lock only the first time (counters, breakers, budgets).
pub fn get_or_insert<K, V>(
    map: &dashmap::DashMap<K, Arc<V>>,
    key: &K,
    make: impl FnOnce() -> V,
) -> Arc<V>
where
    K: std::hash::Hash + Eq + Clone,
{
    if let Some(v) = map.get(key) {
        return v.clone();
    }
    map.entry(key.clone())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

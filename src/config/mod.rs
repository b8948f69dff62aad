//! Configuration: parse strictly (`raw`), expand `${VAR}` (`interpolate`), validate into the
//! runtime form (`Config`). Every error names the file, the line, the key path and the reason.

pub mod interpolate;
pub mod raw;
mod span;

use crate::auth::keys::KeyRecord;
use crate::limits::spec::{Backend, Budget, LimitSet, LimitSettings, LimitValues, Period};
use crate::rbac::Rbac;
use crate::routing::resilience::{BreakerSettings, RetryPolicy};
use crate::routing::split::{Params, Split, Subject, Variant};
use crate::routing::{ModelRoute, Provider, Target};
use raw::{RawConfig, SinkKind};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `providers.openai.base_url`.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// All errors of one load, for printing one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_path: String,
    pub key_path: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub threads: usize,
    pub work_stealing: bool,
    /// Busy-poll window of the data-plane workers (zero: off).
    pub busy_poll: Duration,
    pub max_body_bytes: usize,
    pub h2c: bool,
    pub keepalive_timeout_s: u64,
    pub drain_timeout: Duration,
    pub client_write_timeout: Duration,
    pub tls: Option<TlsSettings>,
    pub log_format: crate::logging::LogFormat,
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct UsageSettings {
    pub sink: SinkKind,
    pub path: PathBuf,
    pub queue_capacity: usize,
    pub flush_interval: Duration,
    pub tokenizer_preload: bool,
}

#[derive(Debug, Clone)]
pub struct ReloadSettings {
    pub watch: bool,
    pub poll_interval: Duration,
}

#[derive(Clone)]
pub struct AuthSettings {
    pub key_store: PathBuf,
    pub policies: PathBuf,
    /// Config-declared keys by id.
    pub keys: HashMap<String, Arc<KeyRecord>>,
    pub jwt: Option<Arc<crate::auth::jwt::JwtVerifier>>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("key_store", &self.key_store)
            .field("policies", &self.policies)
            .field("keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct CostCenter {
    pub name: Option<String>,
    pub department: Option<String>,
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone)]
pub struct Team {
    pub name: Option<String>,
    pub default_cost_center: Option<String>,
    pub limits: Option<LimitSet>,
    pub budget: Option<Budget>,
}

/// One key's own limits and budget (`[orgs.<org>.keys.<key id>]`).
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// Replaces the org's `key_limits` for this key.
    pub limits: Option<LimitSet>,
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: Option<String>,
    pub teams: BTreeMap<String, Team>,
    pub cost_centers: BTreeMap<String, CostCenter>,
    pub default_cost_center: Option<String>,
    pub limits: Option<LimitSet>,
    /// Applied to each key of the org separately.
    pub key_limits: Option<LimitSet>,
    pub budget: Option<Budget>,
    /// Keys with limits or a budget of their own, by key id.
    pub keys: BTreeMap<String, KeyPolicy>,
    /// Chargeback allocations, by source (no source twice).
    pub allocations: Vec<crate::finance::allocation::Allocation>,
    /// Workflow run limits of the org's own.
    pub workflow_limits: Option<crate::workflow::LimitOverrides>,
}

/// The validated, runtime form of one config file.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub usage: UsageSettings,
    pub reload: ReloadSettings,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub models: HashMap<String, ModelRoute>,
    pub passthrough: Option<Arc<Provider>>,
    /// `None`: authentication disabled.
    pub auth: Option<AuthSettings>,
    /// Compiled policies (empty when authentication is disabled).
    pub rbac: Rbac,
    pub orgs: BTreeMap<String, Org>,
    pub audit_path: PathBuf,
    pub audit_sink: raw::AuditSinkKind,
    /// Signs audit rows written to ClickHouse.
    pub audit_signing_key: Option<ed25519_dalek::SigningKey>,
    /// Checks them in `audit verify`.
    pub audit_verify_key: Option<ed25519_dalek::VerifyingKey>,
    pub clickhouse: Option<crate::warehouse::ClickHouseSettings>,
    pub limits: LimitSettings,
    pub routing: RoutingSettings,
    /// `None`: tracing off.
    pub tracing: Option<crate::telemetry::TracingSettings>,
    pub finance: crate::finance::FinanceSettings,
    /// `None`: keys created through the API or CLI live in `[auth] key_store`.
    pub control: Option<crate::control::ControlSettings>,
    /// `[admin] writable`: whether the admin API may write control state.
    pub admin_writable: bool,
    pub console: crate::console::ConsoleSettings,
    pub workflows: Arc<crate::workflow::Settings>,
    /// Hash of the text this config was parsed from (the file watcher compares against it).
    pub source_hash: u64,
    /// Hash of the control store's documents the config was built with (teams and cost
    /// centers join it from there): with `source_hash`, what names a generation's content.
    pub control_hash: u64,
    /// Experiments that promote their winner.
    pub auto_promote: Vec<Arc<crate::experiments::promote::Policy>>,
    pub evals: crate::eval::schedule::Settings,
}

/// A name a file or the API gives a workflow or a dataset: 1-64 of A-Z, a-z, 0-9, `-`, `_`, `.`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// FNV-1a 64 of config text: identifies one version of a config file.
pub fn source_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

impl Config {
    /// Reads, parses and validates `path`, with the process environment for `${VAR}`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: None,
                path: String::new(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(&text, path, &|n| std::env::var(n).ok())
    }

    /// Parses and validates config text; `path` is used for messages and relative paths. The
    /// teams and cost centers of the control store (in a process running one) join the file's.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Self::parse_with(text, path, env, &crate::control::docs())
    }

    /// `parse` with the control store's documents given (an admin write checks the config
    /// its change would make).
    pub fn parse_with(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        docs: &[crate::control::Doc],
    ) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let err = |key: &str, reason: String| ConfigError {
            file: file.clone(),
            line: span::line_of(text, key),
            path: key.to_string(),
            reason,
        };
        let mut tree: toml::Value = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| span::line_at(text, s.start));
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line,
                path: String::new(),
                reason: e.message().trim().to_string(),
            }])
        })?;
        interpolate::expand_tree(&mut tree, &mut Vec::new(), env)
            .map_err(|(p, reason)| ConfigErrors(vec![err(&p, reason)]))?;
        crate::control::merge_org_docs(&mut tree, docs);
        let raw: RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let p = e.path().to_string();
            let p = if p == "." { String::new() } else { p };
            let reason = e.into_inner().message().trim().to_string();
            ConfigErrors(vec![err(&p, reason)])
        })?;
        let mut errors = Vec::new();
        let mut cfg = validate(raw, path, &mut |k: &str, r: String| errors.push(err(k, r)));
        cfg.source_hash = source_hash(text.as_bytes());
        cfg.control_hash = source_hash(format!("{docs:?}").as_bytes());
        if let Some(w) = Arc::get_mut(&mut cfg.workflows) {
            w.org_defs = crate::workflow::store::deployed(docs, &|o| cfg.orgs.contains_key(o));
        }
        crate::experiments::promote::apply(&mut cfg, docs);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Longest busy-poll window accepted (`server.busy_poll_us`).
const MAX_BUSY_POLL_US: u64 = 10_000;

fn validate(raw: RawConfig, path: &Path, err: &mut dyn FnMut(&str, String)) -> Config {
    let addr = |v: &str, key: &str, err: &mut dyn FnMut(&str, String)| {
        v.parse::<SocketAddr>().unwrap_or_else(|e| {
            err(key, format!("`{v}` is not an address (ip:port): {e}"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    };
    let s = &raw.server;
    let listen = addr(&s.listen, "server.listen", err);
    let ops_listen = addr(&s.ops_listen, "server.ops_listen", err);
    if listen == ops_listen && listen.port() != 0 {
        err("server.ops_listen", "must differ from server.listen".into());
    }
    if s.threads == 0 {
        err("server.threads", "must be at least 1".into());
    }
    if s.busy_poll_us > MAX_BUSY_POLL_US {
        err(
            "server.busy_poll_us",
            format!("must be at most {MAX_BUSY_POLL_US} (a longer spin only burns CPU)"),
        );
    }
    if s.busy_poll_us > 0 && s.work_stealing {
        err(
            "server.busy_poll_us",
            "needs `work_stealing = false` (each worker polls its own sockets)".into(),
        );
    }
    if s.max_body_bytes == 0 {
        err("server.max_body_bytes", "must be greater than 0".into());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let tls = s.tls.as_ref().map(|t| {
        for (k, p) in [
            ("server.tls.cert_path", &t.cert_path),
            ("server.tls.key_path", &t.key_path),
        ] {
            if !base.join(p).is_file() {
                err(k, format!("file `{p}` does not exist"));
            }
        }
        TlsSettings {
            cert_path: base.join(&t.cert_path).display().to_string(),
            key_path: base.join(&t.key_path).display().to_string(),
        }
    });
    if raw.usage.queue_capacity == 0 {
        err("usage.queue_capacity", "must be greater than 0".into());
    }
    if raw.reload.poll_interval_ms == 0 {
        err("reload.poll_interval_ms", "must be greater than 0".into());
    }

    let mut providers = BTreeMap::new();
    for (name, p) in &raw.providers {
        match Provider::from_raw(name, p) {
            Ok(p) => {
                providers.insert(name.clone(), Arc::new(p));
            }
            Err((key, reason)) => err(&format!("providers.{name}.{key}"), reason),
        }
    }
    let mut models = HashMap::new();
    let mut auto_promote = Vec::new();
    for (alias, m) in &raw.models {
        if alias.is_empty() {
            err("models", "an alias must not be empty".into());
            continue;
        }
        let Some(provider) = providers.get(&m.provider) else {
            if !raw.providers.contains_key(&m.provider) {
                err(
                    &format!("models.{alias}.provider"),
                    format!("unknown provider `{}`", m.provider),
                );
            }
            continue;
        };
        let provider_model = m.model.clone().unwrap_or_else(|| alias.clone());
        if provider_model.is_empty() {
            err(&format!("models.{alias}.model"), "must not be empty".into());
            continue;
        }
        if let Some(o) = &m.org {
            if !raw.orgs.contains_key(o) {
                err(&format!("models.{alias}.org"), format!("unknown org `{o}`"));
            }
        }
        let mut route = ModelRoute::new(alias, provider.clone(), provider_model, m.org.clone());
        if let Some(p) = &m.price {
            route.price = parse_price(p, &format!("models.{alias}.price"), err);
        }
        let at = format!("models.{alias}");
        route.chain.push(Target::new(
            provider.clone(),
            route.provider_model.clone(),
            route.price,
        ));
        let fallbacks = targets(&m.fallbacks, &providers, &format!("{at}.fallbacks"), err);
        route.chain.extend(fallbacks.iter().cloned());
        if let Some(r) = &m.retry {
            let d = RetryPolicy::default();
            route.retry = RetryPolicy {
                retries: r.retries.unwrap_or(d.retries),
                backoff: r.backoff_ms.map_or(d.backoff, Duration::from_millis),
                max_backoff: r
                    .max_backoff_ms
                    .map_or(d.max_backoff, Duration::from_millis),
            };
        }
        if let Some(sh) = &m.shadow {
            let sat = format!("{at}.shadow");
            match providers.get(&sh.provider) {
                None => err(
                    &format!("{sat}.provider"),
                    format!("unknown provider `{}`", sh.provider),
                ),
                Some(p) => {
                    if !(0.0..=1.0).contains(&sh.fraction) {
                        err(&format!("{sat}.fraction"), "must be between 0 and 1".into());
                    }
                    let price = sh
                        .price
                        .as_ref()
                        .and_then(|pr| parse_price(pr, &format!("{sat}.price"), err));
                    let b = budget(
                        &raw::RawBudget {
                            usd: sh.budget_usd.clone(),
                            period: "month".into(),
                            soft: vec![],
                        },
                        &format!("{sat}.budget_usd"),
                        err,
                    );
                    if let Some(b) = b {
                        route.shadow = Some(crate::routing::Shadow {
                            target: Target::new(p.clone(), sh.model.clone(), price),
                            fraction: sh.fraction,
                            budget: b,
                        });
                    }
                }
            }
        }
        if let Some(sp) = &m.split {
            route.split = split(sp, &route, &fallbacks, &providers, &at, err);
            if let Some(ap) = &sp.auto_promote {
                let at = format!("{at}.split.auto_promote");
                if raw.clickhouse.is_none() || raw.auth.as_ref().is_none_or(|a| !a.enabled) {
                    err(
                        &at,
                        "needs [clickhouse] (the rows it reads) and [auth] (the control store that holds promotions)".into(),
                    );
                }
                let configured = sp
                    .variants
                    .iter()
                    .map(|v| (v.name.clone(), v.weight))
                    .collect();
                if let Some(p) = crate::experiments::promote::policy(
                    ap,
                    &sp.experiment,
                    alias,
                    configured,
                    &at,
                    err,
                ) {
                    auto_promote.push(Arc::new(p));
                }
            }
        }
        models.insert(alias.clone(), route);
    }
    online_evals(&raw, &mut models, err);
    let orgs = validate_orgs(&raw, err);
    let (auth, rbac) = match &raw.auth {
        Some(a) if a.enabled => {
            let policies = base.join(&a.policies);
            let mut aliases: Vec<&str> = models.keys().map(String::as_str).collect();
            aliases.sort_unstable();
            // With authentication on, the key store is the control store (configured or the
            // embedded default), so its policy always joins the files'.
            let overlay = crate::control::policy_overlay();
            let rbac = match Rbac::load_with(&policies, &aliases, Some(overlay.as_str())) {
                Ok(r) => r,
                Err(errs) => {
                    for e in errs {
                        let at = if e.path.is_empty() {
                            e.file.clone()
                        } else {
                            format!("{} {}", e.file, e.path)
                        };
                        err("auth.policies", format!("{at}: {}", e.reason));
                    }
                    Rbac::default()
                }
            };
            let keys = validate_keys(a, &raw, &models, &rbac, err);
            let jwt = a
                .jwt
                .as_ref()
                .and_then(|j| jwt_verifier(j, &raw, base, err));
            (
                Some(AuthSettings {
                    key_store: base.join(&a.key_store),
                    policies,
                    keys,
                    jwt,
                }),
                rbac,
            )
        }
        _ => (None, Rbac::default()),
    };
    if raw.clickhouse.is_none() {
        if raw.usage.sink == SinkKind::Clickhouse {
            err(
                "usage.sink",
                "`clickhouse` needs a [clickhouse] section".into(),
            );
        }
        if raw.audit.sink == raw::AuditSinkKind::Clickhouse {
            err(
                "audit.sink",
                "`clickhouse` needs a [clickhouse] section".into(),
            );
        }
    }
    let passthrough = raw.passthrough.as_ref().and_then(|p| {
        let found = providers.get(&p.provider).cloned();
        if found.is_none() && !raw.providers.contains_key(&p.provider) {
            err(
                "passthrough.provider",
                format!("unknown provider `{}`", p.provider),
            );
        }
        found
    });
    Config {
        path: path.to_path_buf(),
        server: ServerSettings {
            listen,
            ops_listen,
            threads: s.threads,
            work_stealing: s.work_stealing,
            busy_poll: Duration::from_micros(s.busy_poll_us),
            max_body_bytes: s.max_body_bytes,
            h2c: s.h2c,
            keepalive_timeout_s: s.keepalive_timeout_s,
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            client_write_timeout: Duration::from_millis(s.client_write_timeout_ms.max(1)),
            log_format: s.log_format,
            access_log: s.access_log,
            tls,
        },
        usage: UsageSettings {
            sink: raw.usage.sink,
            path: base.join(&raw.usage.path),
            queue_capacity: raw.usage.queue_capacity,
            flush_interval: Duration::from_millis(raw.usage.flush_interval_ms.max(1)),
            tokenizer_preload: raw.usage.tokenizer_preload,
        },
        reload: ReloadSettings {
            watch: raw.reload.watch,
            poll_interval: Duration::from_millis(raw.reload.poll_interval_ms.max(1)),
        },
        providers,
        models,
        passthrough,
        auth,
        rbac,
        orgs,
        audit_path: base.join(&raw.audit.path),
        audit_sink: raw.audit.sink,
        audit_signing_key: raw.audit.signing_key.as_deref().and_then(|k| {
            crate::warehouse::signing::signing_key(k)
                .map_err(|e| err("audit.signing_key", e))
                .ok()
        }),
        audit_verify_key: raw.audit.verify_key.as_deref().and_then(|k| {
            crate::warehouse::signing::verifying_key(k)
                .map_err(|e| err("audit.verify_key", e))
                .ok()
        }),
        limits: limit_settings(&raw.limits, err),
        routing: routing_settings(&raw.routing, err),
        tracing: raw.tracing.as_ref().map(|t| {
            if !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://"))
            {
                err("tracing.otlp_endpoint", "must be an http(s) URL".into());
            }
            let ratio = t.sample_ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                err("tracing.sample_ratio", "must be between 0 and 1".into());
            }
            crate::telemetry::TracingSettings {
                otlp_endpoint: t.otlp_endpoint.clone(),
                sample_ratio: ratio,
                service_name: t
                    .service_name
                    .clone()
                    .unwrap_or_else(|| "model-bridge".into()),
                export_interval: Duration::from_millis(t.export_interval_ms.unwrap_or(5000).max(1)),
            }
        }),
        finance: finance_settings(&raw.finance, err),
        admin_writable: raw.admin.writable,
        console: crate::console::settings(&raw.console, raw.auth.as_ref(), &raw.server, err),
        workflows: Arc::new(crate::workflow::settings(
            &raw.workflows,
            base,
            raw.server.ops_listen.parse().ok(),
            err,
        )),
        control: raw.control.as_ref().map_or_else(
            || {
                // With authentication and no [control]: the embedded store, beside the
                // JSON key store of older versions (imported once, then retired).
                let a = raw.auth.as_ref().filter(|a| a.enabled)?;
                let json = base.join(&a.key_store);
                Some(crate::control::ControlSettings {
                    kind: crate::control::StoreKind::Sqlite(json.with_file_name("control.db")),
                    poll: Duration::from_millis(250),
                    timeout: Duration::from_secs(3),
                    import_from: Some(json),
                })
            },
            |c| {
                let kind = match (c.store.as_str(), &c.url) {
                    ("sqlite", _) => crate::control::StoreKind::Sqlite(base.join(&c.path)),
                    ("postgres", Some(url))
                        if url.starts_with("postgres://") || url.starts_with("postgresql://") =>
                    {
                        crate::control::StoreKind::Postgres(crate::routing::Secret::new(
                            url.clone(),
                        ))
                    }
                    ("postgres", _) => {
                        err("control.url", "a postgres:// URL (use ${ENV_VAR})".into());
                        return None;
                    }
                    (other, _) => {
                        err(
                            "control.store",
                            format!("unknown store `{other}` (sqlite or postgres)"),
                        );
                        return None;
                    }
                };
                Some(crate::control::ControlSettings {
                    kind,
                    poll: Duration::from_millis(c.poll_ms.max(10)),
                    timeout: Duration::from_millis(c.timeout_ms.max(100)),
                    import_from: raw.auth.as_ref().map(|a| base.join(&a.key_store)),
                })
            },
        ),
        clickhouse: raw.clickhouse.as_ref().map(|c| {
            let ident = |v: &str| {
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                err("clickhouse.url", "must be an http(s) URL".into());
            }
            if !ident(&c.database) {
                err("clickhouse.database", "letters, digits and _ only".into());
            }
            if c.cluster.as_deref().is_some_and(|v| !ident(v)) {
                err("clickhouse.cluster", "letters, digits and _ only".into());
            }
            match (&c.cluster, c.nodes.is_empty()) {
                (Some(_), true) => err(
                    "clickhouse.nodes",
                    "a cluster needs the HTTP URL of every node (DDL and mutations run on each)"
                        .into(),
                ),
                (None, false) => err("clickhouse.nodes", "only with clickhouse.cluster".into()),
                _ => {}
            }
            if c.nodes
                .iter()
                .any(|n| !(n.starts_with("http://") || n.starts_with("https://")))
            {
                err("clickhouse.nodes", "each must be an http(s) URL".into());
            }
            if c.batch_rows == 0 {
                err("clickhouse.batch_rows", "must be at least 1".into());
            }
            if c.node.as_deref().is_some_and(|n| {
                !n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            }) {
                err(
                    "clickhouse.node",
                    "letters, digits, '.' and '_' only".into(),
                );
            }
            crate::warehouse::ClickHouseSettings {
                url: c.url.trim_end_matches('/').to_string(),
                user: c.user.clone(),
                password: c
                    .password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(crate::routing::Secret::new),
                database: c.database.clone(),
                cluster: c.cluster.clone().filter(|v| !v.is_empty()),
                nodes: c.nodes.clone(),
                replicated: c.replicated.unwrap_or(true),
                migrate_on_start: c.migrate_on_start,
                batch_rows: c.batch_rows,
                batch_interval: Duration::from_millis(c.batch_interval_ms.max(1)),
                insert_timeout: Duration::from_millis(c.insert_timeout_ms.max(1)),
                max_inflight_inserts: c.max_inflight_inserts.max(1),
                spool_dir: base.join(&c.spool_dir),
                spool_max_bytes: c.spool_max_bytes,
                node: c
                    .node
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(crate::warehouse::host_name),
                usage_retention_months: c.usage_retention_months,
                audit_retention_months: c.audit_retention_months,
                hourly_retention_days: c.hourly_retention_days,
                retention_interval: Duration::from_secs(c.retention_interval_hours * 3600),
            }
        }),
        source_hash: 0,
        control_hash: 0,
        auto_promote,
        evals: crate::eval::schedule::settings(&raw.evals, base, err),
    }
}

fn parse_price(
    p: &raw::RawPrice,
    at: &str,
    err: &mut dyn FnMut(&str, String),
) -> Option<crate::usage::pricing::Price> {
    use crate::usage::pricing::{parse_usd, Price};
    let mut one = |v: &toml::Value, key: &str| -> Option<i128> {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            // Shortest round-trip text of the number as written, e.g. 0.15 → "0.15".
            toml::Value::Float(f) => f.to_string(),
            _ => String::new(),
        };
        parse_usd(&text)
            .map_err(|e| err(&format!("{at}.{key}"), e))
            .ok()
    };
    let input = one(&p.input_per_1m, "input_per_1m")?;
    let cached_input = match &p.cached_input_per_1m {
        Some(v) => one(v, "cached_input_per_1m")?,
        None => input,
    };
    let output = match &p.output_per_1m {
        Some(v) => one(v, "output_per_1m")?,
        None => 0,
    };
    Some(Price {
        input,
        cached_input,
        output,
    })
}

fn jwt_verifier(
    j: &raw::RawJwt,
    raw: &RawConfig,
    base: &Path,
    err: &mut dyn FnMut(&str, String),
) -> Option<Arc<crate::auth::jwt::JwtVerifier>> {
    use crate::auth::jwt::{ClaimMap, JwksSource, JwtSettings, JwtVerifier};
    let jwks = match (&j.jwks_path, &j.jwks_url) {
        (Some(_), Some(_)) => {
            err(
                "auth.jwt.jwks_url",
                "set jwks_path or jwks_url, not both".into(),
            );
            return None;
        }
        (Some(p), None) => Some(JwksSource::File(base.join(p))),
        (None, Some(u)) => {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                err("auth.jwt.jwks_url", "must be an http(s) URL".into());
            }
            Some(JwksSource::Url(u.clone()))
        }
        (None, None) => None,
    };
    let secret = j.hs256_secret.clone().filter(|s| !s.is_empty());
    if jwks.is_none() && secret.is_none() {
        err(
            "auth.jwt",
            "needs jwks_path, jwks_url or hs256_secret".into(),
        );
        return None;
    }
    if let Some(o) = j
        .default_org
        .as_deref()
        .filter(|o| !raw.orgs.contains_key(*o))
    {
        err("auth.jwt.default_org", format!("unknown org `{o}`"));
    }
    let settings = JwtSettings {
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        leeway_s: j.leeway_s,
        hs256_secret: secret.map(crate::routing::Secret::new),
        jwks,
        claims: ClaimMap {
            org: j.claims.org.clone(),
            user: j.claims.user.clone(),
            groups: j.claims.groups.clone(),
            roles: j.claims.roles.clone(),
        },
        default_org: j.default_org.clone(),
        refresh_min: std::time::Duration::from_secs(j.jwks_refresh_min_s),
    };
    match JwtVerifier::new(settings) {
        Ok(v) => Some(Arc::new(v)),
        Err(e) => {
            err("auth.jwt.jwks_path", e);
            None
        }
    }
}

fn finance_settings(
    f: &raw::RawFinance,
    err: &mut dyn FnMut(&str, String),
) -> crate::finance::FinanceSettings {
    let mut grains = Vec::new();
    for g in &f.anomaly_grains {
        match g.as_str() {
            "day" => grains.push(crate::warehouse::spend::Grain::Day),
            "hour" => grains.push(crate::warehouse::spend::Grain::Hour),
            other => err(
                "finance.anomaly_grains",
                format!("unknown grain `{other}` (day or hour)"),
            ),
        }
    }
    let webhook = match (&f.webhook_url, &f.webhook_secret) {
        (None, None) => None,
        (Some(url), Some(secret)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                err("finance.webhook_url", "must be an http(s) URL".into());
            }
            if secret.len() < 16 {
                err(
                    "finance.webhook_secret",
                    "at least 16 characters (use ${ENV_VAR})".into(),
                );
            }
            if f.webhook_max_attempts == 0 {
                err("finance.webhook_max_attempts", "at least 1".into());
            }
            Some(crate::finance::webhook::WebhookSettings {
                url: url.clone(),
                secret: crate::routing::Secret::new(secret.clone()),
                timeout: Duration::from_millis(f.webhook_timeout_ms.max(1)),
                max_attempts: f.webhook_max_attempts.max(1),
                backoff: Duration::from_millis(f.webhook_backoff_ms),
            })
        }
        (Some(_), None) => {
            err(
                "finance.webhook_secret",
                "a webhook needs a secret to sign with".into(),
            );
            None
        }
        (None, Some(_)) => {
            err(
                "finance.webhook_url",
                "a secret without a webhook URL".into(),
            );
            None
        }
    };
    crate::finance::FinanceSettings {
        watch_interval: Duration::from_secs(f.watch_interval_secs),
        grains,
        webhook,
    }
}

fn validate_orgs(raw: &RawConfig, err: &mut dyn FnMut(&str, String)) -> BTreeMap<String, Org> {
    let mut orgs = BTreeMap::new();
    for (id, o) in &raw.orgs {
        let has_cc = |cc: &str| o.cost_centers.contains_key(cc);
        if let Some(cc) = o.default_cost_center.as_deref().filter(|cc| !has_cc(cc)) {
            err(
                &format!("orgs.{id}.default_cost_center"),
                format!("unknown cost center `{cc}` in org `{id}`"),
            );
        }
        let mut cc_budgets = BTreeMap::new();
        for (cc, c) in &o.cost_centers {
            let at = format!("orgs.{id}.cost_centers.{cc}");
            let b = match (&c.budget, &c.monthly_budget_usd) {
                (Some(_), Some(_)) => {
                    err(
                        &format!("{at}.monthly_budget_usd"),
                        "set either budget or monthly_budget_usd".into(),
                    );
                    None
                }
                (Some(b), None) => budget(b, &format!("{at}.budget"), err),
                (None, Some(usd)) => budget(
                    &raw::RawBudget {
                        usd: usd.clone(),
                        period: "month".into(),
                        soft: vec![0.8],
                    },
                    &format!("{at}.monthly_budget_usd"),
                    err,
                ),
                (None, None) => None,
            };
            cc_budgets.insert(cc.clone(), b);
        }
        let limits_of =
            |l: &Option<raw::RawLimits>, at: String, err: &mut dyn FnMut(&str, String)| {
                l.as_ref().map(|l| limit_set(l, &at, raw, err))
            };
        let org_limits = limits_of(&o.limits, format!("orgs.{id}.limits"), err);
        let key_limits = limits_of(&o.key_limits, format!("orgs.{id}.key_limits"), err);
        let org_budget = o
            .budget
            .as_ref()
            .and_then(|b| budget(b, &format!("orgs.{id}.budget"), err));
        let mut team_extras = BTreeMap::new();
        for (t, team) in &o.teams {
            let l = limits_of(&team.limits, format!("orgs.{id}.teams.{t}.limits"), err);
            let b = team
                .budget
                .as_ref()
                .and_then(|b| budget(b, &format!("orgs.{id}.teams.{t}.budget"), err));
            team_extras.insert(t.clone(), (l, b));
        }
        let mut keys = BTreeMap::new();
        for (k, p) in &o.keys {
            let at = format!("orgs.{id}.keys.{k}");
            let limits = limits_of(&p.limits, format!("{at}.limits"), err);
            let budget = p
                .budget
                .as_ref()
                .and_then(|b| budget(b, &format!("{at}.budget"), err));
            keys.insert(k.clone(), KeyPolicy { limits, budget });
        }
        let mut allocations: Vec<crate::finance::allocation::Allocation> = Vec::new();
        for (i, a) in o.allocations.iter().enumerate() {
            let at = format!("orgs.{id}.allocations.{i}");
            match crate::finance::allocation::parse(
                &a.source,
                &a.split,
                &|t| o.teams.contains_key(t),
                &has_cc,
            ) {
                Ok(a) if allocations.iter().any(|b| b.source() == a.source()) => err(
                    &format!("{at}.source"),
                    format!("`{}` is allocated twice", a.source()),
                ),
                Ok(a) => allocations.push(a),
                Err((field, reason)) => err(&format!("{at}.{field}"), reason),
            }
        }
        if let Some(w) = &o.workflow_limits {
            for at in w.problems(&format!("orgs.{id}.workflow_limits")) {
                err(&at, "must be at least 1".into());
            }
        }
        for (t, team) in &o.teams {
            if let Some(cc) = team.default_cost_center.as_deref().filter(|cc| !has_cc(cc)) {
                err(
                    &format!("orgs.{id}.teams.{t}.default_cost_center"),
                    format!("unknown cost center `{cc}` in org `{id}`"),
                );
            }
        }
        orgs.insert(
            id.clone(),
            Org {
                id: id.clone(),
                name: o.name.clone(),
                teams: o
                    .teams
                    .iter()
                    .map(|(k, t)| {
                        (
                            k.clone(),
                            Team {
                                name: t.name.clone(),
                                default_cost_center: t.default_cost_center.clone(),
                                limits: team_extras.get(k).and_then(|e| e.0.clone()),
                                budget: team_extras.get(k).and_then(|e| e.1.clone()),
                            },
                        )
                    })
                    .collect(),
                cost_centers: o
                    .cost_centers
                    .iter()
                    .map(|(k, c)| {
                        (
                            k.clone(),
                            CostCenter {
                                name: c.name.clone(),
                                department: c.department.clone(),
                                budget: cc_budgets.get(k).cloned().flatten(),
                            },
                        )
                    })
                    .collect(),
                default_cost_center: o.default_cost_center.clone(),
                limits: org_limits,
                key_limits,
                budget: org_budget,
                keys,
                allocations,
                workflow_limits: o.workflow_limits.clone(),
            },
        );
    }
    orgs
}

#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub retry_budget_ratio: f64,
    pub breaker: BreakerSettings,
}

fn routing_settings(r: &raw::RawRouting, err: &mut dyn FnMut(&str, String)) -> RoutingSettings {
    let d = BreakerSettings::default();
    let ratio = r.retry_budget_ratio.unwrap_or(0.2);
    if !(0.0..=10.0).contains(&ratio) {
        err(
            "routing.retry_budget_ratio",
            "must be between 0 and 10".into(),
        );
    }
    let rate = r.breaker_error_rate.unwrap_or(d.error_rate);
    if !(rate > 0.0 && rate <= 1.0) {
        err("routing.breaker_error_rate", "must be in (0, 1]".into());
    }
    RoutingSettings {
        retry_budget_ratio: ratio,
        breaker: BreakerSettings {
            consecutive_failures: r.breaker_failures.unwrap_or(d.consecutive_failures).max(1),
            error_rate: rate,
            window: r.breaker_window_ms.map_or(d.window, Duration::from_millis),
            min_requests: r.breaker_min_requests.unwrap_or(d.min_requests).max(1),
            open_for: r.breaker_open_ms.map_or(d.open_for, Duration::from_millis),
        },
    }
}

fn targets(
    raw: &[raw::RawTarget],
    providers: &BTreeMap<String, Arc<Provider>>,
    at: &str,
    err: &mut dyn FnMut(&str, String),
) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let Some(p) = providers.get(&t.provider) else {
            err(
                &format!("{at}[{i}].provider"),
                format!("unknown provider `{}`", t.provider),
            );
            continue;
        };
        let model = t.model.clone().unwrap_or_default();
        if model.is_empty() {
            err(
                &format!("{at}[{i}].model"),
                "needed (the provider's model name)".into(),
            );
            continue;
        }
        let price = t
            .price
            .as_ref()
            .and_then(|pr| parse_price(pr, &format!("{at}[{i}].price"), err));
        out.push(Target::new(p.clone(), model, price));
    }
    out
}

/// Each alias's `online_eval`: its judge is another alias (any order in the file), whose
/// primary target grades.
fn online_evals(
    raw: &RawConfig,
    models: &mut HashMap<String, ModelRoute>,
    err: &mut dyn FnMut(&str, String),
) {
    for (alias, m) in &raw.models {
        let Some(oe) = &m.online_eval else { continue };
        let at = format!("models.{alias}.online_eval");
        if !(0.0..=1.0).contains(&oe.sample) {
            err(&format!("{at}.sample"), "must be between 0 and 1".into());
        }
        if raw.clickhouse.is_none() {
            err(
                &at,
                "needs [clickhouse] (grades are stored as feedback)".into(),
            );
        }
        let judge = match models
            .get(&oe.judge)
            .filter(|_| oe.judge != *alias)
            .and_then(|j| j.chain.first())
        {
            Some(t) => t.clone(),
            None => {
                err(
                    &format!("{at}.judge"),
                    format!("`{}` is not another model alias", oe.judge),
                );
                continue;
            }
        };
        let budget = budget(
            &raw::RawBudget {
                usd: oe.budget_usd.clone(),
                period: "month".into(),
                soft: vec![],
            },
            &format!("{at}.budget_usd"),
            err,
        );
        if let (Some(b), Some(route)) = (budget, models.get_mut(alias)) {
            route.online_eval = Some(crate::routing::OnlineEval {
                judge,
                sample: oe.sample,
                rubric: Arc::from(
                    oe.rubric
                        .as_deref()
                        .unwrap_or("Judge whether the answer is correct, complete and helpful."),
                ),
                budget: b,
            });
        }
    }
}

fn split(
    sp: &raw::RawSplit,
    route: &ModelRoute,
    fallbacks: &[Target],
    providers: &BTreeMap<String, Arc<Provider>>,
    at: &str,
    err: &mut dyn FnMut(&str, String),
) -> Option<Split> {
    let at = format!("{at}.split");
    let ok_id = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !ok_id(&sp.experiment) {
        err(
            &format!("{at}.experiment"),
            "letters, digits, '-', '_', '.' only".into(),
        );
    }
    let Some(subject) = Subject::parse(&sp.subject) else {
        err(
            &format!("{at}.subject"),
            "one of key, user, end_user".into(),
        );
        return None;
    };
    let time = |v: &Option<String>, key: &str, err: &mut dyn FnMut(&str, String)| {
        v.as_ref().and_then(|t| {
            let parsed = crate::time::parse_rfc3339(t);
            if parsed.is_none() {
                err(
                    &format!("{at}.{key}"),
                    format!("`{t}` is not an RFC 3339 UTC time"),
                );
            }
            parsed
        })
    };
    let start = time(&sp.start, "start", err).unwrap_or(0);
    let end = time(&sp.end, "end", err);
    if sp.variants.len() < 2 {
        err(
            &format!("{at}.variants"),
            "an experiment needs at least two variants".into(),
        );
    }
    let mut variants = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, v) in sp.variants.iter().enumerate() {
        let vat = format!("{at}.variants[{i}]");
        if !ok_id(&v.name) || !names.insert(v.name.clone()) {
            err(
                &format!("{vat}.name"),
                "unique; letters, digits, '-', '_', '.'".into(),
            );
        }
        let targets = match &v.provider {
            None => route.chain.clone(),
            Some(pname) => {
                let Some(p) = providers.get(pname) else {
                    err(
                        &format!("{vat}.provider"),
                        format!("unknown provider `{pname}`"),
                    );
                    continue;
                };
                let model = v
                    .model
                    .clone()
                    .unwrap_or_else(|| route.provider_model.clone());
                let price = v
                    .price
                    .as_ref()
                    .and_then(|pr| parse_price(pr, &format!("{vat}.price"), err));
                let mut t = vec![Target::new(p.clone(), model, price)];
                t.extend(fallbacks.iter().cloned());
                t
            }
        };
        variants.push(Variant {
            name: Arc::from(v.name.as_str()),
            weight: v.weight,
            targets,
            params: Params {
                temperature: v.temperature,
                max_tokens_cap: v.max_tokens_cap,
            },
        });
    }
    if variants.iter().all(|v| v.weight == 0) {
        err(
            &format!("{at}.variants"),
            "at least one weight must be above 0".into(),
        );
        return None;
    }
    Some(Split::new(&sp.experiment, subject, start, end, variants))
}

fn limit_settings(l: &raw::RawLimitSettings, err: &mut dyn FnMut(&str, String)) -> LimitSettings {
    let d = LimitSettings::default();
    let backend = match l.backend {
        raw::LimitBackend::Local => Backend::Local,
        raw::LimitBackend::Redis => Backend::Redis,
    };
    let url_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    match (&l.redis_url, backend) {
        (None, Backend::Redis) => err("limits.redis_url", "needed with backend = \"redis\"".into()),
        (Some(u), _) if !url_ok(u) => err(
            "limits.redis_url",
            "must be a redis:// or rediss:// URL".into(),
        ),
        _ => {}
    }
    let share = l.fallback_share.unwrap_or(d.fallback_share);
    if !(share > 0.0 && share <= 1.0) {
        err("limits.fallback_share", "must be in (0, 1]".into());
    }
    LimitSettings {
        backend,
        redis_url: l.redis_url.clone(),
        redis_timeout: l
            .redis_timeout_ms
            .map_or(d.redis_timeout, |ms| Duration::from_millis(ms.max(1))),
        fallback_share: share,
        default_max_tokens: l.default_max_tokens.unwrap_or(d.default_max_tokens),
        reconcile_interval: l
            .reconcile_interval_s
            .map_or(d.reconcile_interval, |s| Duration::from_secs(s.max(1))),
    }
}

fn limit_values(
    v: &raw::RawLimitValues,
    at: &str,
    err: &mut dyn FnMut(&str, String),
) -> LimitValues {
    for (key, val) in [
        ("requests_per_second", v.requests_per_second),
        ("requests_per_minute", v.requests_per_minute),
        ("tokens_per_minute", v.tokens_per_minute),
        ("concurrent_requests", v.concurrent_requests),
    ] {
        if val == Some(0) {
            err(
                &format!("{at}.{key}"),
                "must be at least 1 (omit it for no limit)".into(),
            );
        }
    }
    LimitValues {
        rps: v.requests_per_second,
        rpm: v.requests_per_minute,
        tpm: v.tokens_per_minute,
        concurrent: v.concurrent_requests,
    }
}

fn limit_set(
    l: &raw::RawLimits,
    at: &str,
    raw: &RawConfig,
    err: &mut dyn FnMut(&str, String),
) -> LimitSet {
    let base = limit_values(&l.values, at, err);
    let mut models = HashMap::new();
    for (alias, v) in &l.models {
        let m_at = format!("{at}.models.{alias}");
        if !raw.models.contains_key(alias) {
            err(&m_at, format!("unknown model alias `{alias}`"));
        }
        models.insert(alias.clone(), limit_values(v, &m_at, err));
    }
    LimitSet { base, models }
}

fn budget(b: &raw::RawBudget, at: &str, err: &mut dyn FnMut(&str, String)) -> Option<Budget> {
    let text = match &b.usd {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        _ => String::new(),
    };
    let nano = match crate::usage::pricing::parse_usd(&text) {
        Ok(n) => i64::try_from(n).ok(),
        Err(e) => {
            err(&format!("{at}.usd"), e);
            return None;
        }
    };
    let Some(nano) = nano else {
        err(&format!("{at}.usd"), "too large".into());
        return None;
    };
    let Some(period) = Period::parse(&b.period) else {
        err(
            &format!("{at}.period"),
            format!("`{}`: use `month` or a rolling window like `30d`", b.period),
        );
        return None;
    };
    let mut soft = b.soft.clone();
    if soft
        .iter()
        .any(|f| !(f.is_finite() && *f > 0.0 && *f < 1.0))
    {
        err(
            &format!("{at}.soft"),
            "fractions between 0 and 1, e.g. [0.8, 0.9]".into(),
        );
    }
    soft.sort_by(f64::total_cmp);
    Some(Budget { nano, period, soft })
}

fn validate_keys(
    a: &raw::RawAuth,
    raw: &RawConfig,
    models: &HashMap<String, ModelRoute>,
    rbac: &Rbac,
    err: &mut dyn FnMut(&str, String),
) -> HashMap<String, Arc<KeyRecord>> {
    let mut keys = HashMap::new();
    for (i, k) in a.keys.iter().enumerate() {
        let at = |f: &str| format!("auth.keys.{i}.{f}");
        let valid_id = k.id.len() == 12 && k.id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid_id {
            err(
                &at("id"),
                "must be the 12 letters and digits after `mbk_`".into(),
            );
        }
        if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            err(&at("sha256"), "must be 64 hex digits".into());
        }
        let Some(org) = raw.orgs.get(&k.org) else {
            err(&at("org"), format!("unknown org `{}`", k.org));
            continue;
        };
        if let Some(t) = k.team.as_deref().filter(|t| !org.teams.contains_key(*t)) {
            err(
                &at("team"),
                format!("unknown team `{t}` in org `{}`", k.org),
            );
        }
        if let Some(cc) = k
            .cost_center
            .as_deref()
            .filter(|c| !org.cost_centers.contains_key(*c))
        {
            err(
                &at("cost_center"),
                format!("unknown cost center `{cc}` in org `{}`", k.org),
            );
        }
        if let Some(r) = k.roles.iter().find(|r| !rbac.has_role(r)) {
            err(&at("roles"), format!("unknown role `{r}`"));
        }
        for m in k.models.iter().flatten() {
            if !models.get(m).is_some_and(|r| r.visible_to(&k.org)) {
                err(
                    &at("models"),
                    format!("unknown model `{m}` for org `{}`", k.org),
                );
            }
        }
        let expires_at = match &k.expires_at {
            Some(s) => {
                let t = crate::time::parse_rfc3339(s);
                if t.is_none() {
                    err(&at("expires_at"), format!("`{s}` is not RFC 3339 UTC"));
                }
                t
            }
            None => None,
        };
        if keys.contains_key(&k.id) {
            err(&at("id"), format!("duplicate key id `{}`", k.id));
        }
        keys.insert(
            k.id.clone(),
            Arc::new(KeyRecord {
                id: k.id.clone(),
                hash: k.sha256.to_ascii_lowercase(),
                name: k.name.clone(),
                org: k.org.clone(),
                team: k.team.clone(),
                user: k.user.clone(),
                roles: k.roles.clone(),
                cost_center: k.cost_center.clone(),
                models: k.models.clone(),
                created_at: 0,
                expires_at,
                revoked_at: None,
            }),
        );
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("gw.toml"), &|n| {
            (n == "KEY").then(|| "sk-test".to_string())
        })
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:18080"

[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18081/v1"
api_key = "${KEY}"

[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"

[passthrough]
provider = "mock"
"#;

    #[test]
    fn good_config_loads() {
        let c = parse(GOOD).unwrap();
        let r = &c.models["gpt-4o-mini"];
        assert_eq!(r.provider_model, "mock-1");
        assert_eq!(
            r.provider.auth_header(),
            Some(("authorization", "Bearer sk-test")),
            "interpolated from the environment"
        );
        assert!(c.passthrough.is_some());
    }

    #[test]
    fn an_orgs_workflow_limits_replace_the_global_ones_field_by_field() {
        let with = |limits: &str| {
            parse(&format!(
                "{GOOD}\n[workflows]\nmax_steps = 40\nmax_loop_items = 9\n\n[orgs.acme.workflow_limits]\n{limits}\n"
            ))
        };
        let c = with("max_steps = 3\nmax_duration_s = 7").unwrap();
        let l = c
            .workflows
            .limits
            .with(c.orgs["acme"].workflow_limits.as_ref());
        assert_eq!((l.max_steps, l.max_loop_items), (3, 9));
        assert_eq!(l.max_duration, std::time::Duration::from_secs(7));
        let e = with("max_concurrent_runs = 0").unwrap_err();
        assert_eq!(e.0[0].path, "orgs.acme.workflow_limits.max_concurrent_runs");
        assert!(with("max_stepz = 3").is_err(), "unknown fields are refused");
    }

    #[test]
    fn misspelled_key_is_rejected_with_path_and_line() {
        let bad = GOOD.replace("base_url =", "base_ur1 =");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("gw.toml:"), "{e}");
        assert!(e.contains("providers.mock"), "{e}");
        assert!(e.contains("base_ur1"), "{e}");
    }

    #[test]
    fn unknown_provider_names_path_and_line() {
        let bad = GOOD.replace("provider = \"mock\"\nmodel", "provider = \"nope\"\nmodel");
        let errs = parse(&bad).unwrap_err();
        let e = &errs.0[0];
        assert_eq!(e.path, "models.gpt-4o-mini.provider");
        assert_eq!(e.line, Some(11));
        assert!(e.reason.contains("unknown provider `nope`"));
    }

    #[test]
    fn prices_parse_exactly_or_name_the_key() {
        let priced = GOOD.replace(
            "model = \"mock-1\"",
            "model = \"mock-1\"\nprice = { input_per_1m = 0.15, output_per_1m = \"0.6\" }",
        );
        let c = parse(&priced).unwrap();
        let p = c.models["gpt-4o-mini"].price.unwrap();
        assert_eq!(
            (p.input, p.cached_input, p.output),
            (150_000_000, 150_000_000, 600_000_000)
        );
        let bad = GOOD.replace(
            "model = \"mock-1\"",
            "model = \"mock-1\"\nprice = { input_per_1m = -1 }",
        );
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("models.gpt-4o-mini.price.input_per_1m"), "{e}");
    }

    #[test]
    fn missing_env_var_is_an_error() {
        let bad = GOOD.replace("${KEY}", "${NOT_SET_ANYWHERE}");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("providers.mock.api_key"), "{e}");
        assert!(e.contains("NOT_SET_ANYWHERE"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("[server]\nlisten = \n").unwrap_err();
        assert_eq!(e.0[0].line, Some(2));
    }

    #[test]
    fn bad_address_and_url() {
        let bad = GOOD
            .replace("127.0.0.1:18080", "nowhere")
            .replace("http://127.0.0.1:18081/v1", "gopher://x");
        let errs = parse(&bad).unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"server.listen"), "{paths:?}");
        assert!(paths.contains(&"providers.mock.base_url"), "{paths:?}");
    }

    #[test]
    fn busy_poll_needs_per_thread_runtimes_and_a_bound() {
        let with = |extra: &str| GOOD.replacen("[server]\n", &format!("[server]\n{extra}\n"), 1);
        let c = parse(&with("work_stealing = false\nbusy_poll_us = 150")).unwrap();
        assert_eq!(c.server.busy_poll, Duration::from_micros(150));
        assert!(
            parse(GOOD).unwrap().server.busy_poll.is_zero(),
            "off by default"
        );
        let e = parse(&with("busy_poll_us = 150")).unwrap_err();
        assert_eq!(e.0[0].path, "server.busy_poll_us");
        assert!(e.0[0].reason.contains("work_stealing = false"), "{e}");
        let e = parse(&with("work_stealing = false\nbusy_poll_us = 10001")).unwrap_err();
        assert!(e.0[0].reason.contains("at most 10000"), "{e}");
    }
}

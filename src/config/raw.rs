//! The TOML file as written: strict serde structs (`deny_unknown_fields`), defaults in named
//! functions, one doc comment per knob. `validate` turns this into the runtime form.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Top level of `gateway.toml`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners, body limits, shutdown.
    #[serde(default)]
    pub server: RawServer,
    /// Where usage records go.
    #[serde(default)]
    pub usage: RawUsage,
    /// Config file watching.
    #[serde(default)]
    pub reload: RawReload,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Client-facing model aliases.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Where `/v1/*` paths other than the LLM endpoints go.
    #[serde(default)]
    pub passthrough: Option<RawPassthrough>,
    /// Caller authentication and RBAC; absent: every caller is anonymous and unrestricted.
    #[serde(default)]
    pub auth: Option<RawAuth>,
    /// Audit events (denials, admin writes).
    #[serde(default)]
    pub audit: RawAudit,
    /// Tenants: organizations with their teams and cost centers.
    #[serde(default)]
    pub orgs: BTreeMap<String, RawOrg>,
    /// The ClickHouse warehouse for usage and audit rows.
    #[serde(default)]
    pub clickhouse: Option<RawClickHouse>,
    /// Where rate-limit and budget counters live, and how admission estimates tokens.
    #[serde(default)]
    pub limits: RawLimitSettings,
    /// Retry budget and circuit breakers.
    #[serde(default)]
    pub routing: RawRouting,
    /// OpenTelemetry traces over OTLP/HTTP; off when absent.
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    /// The finance watch (budget and allocation snapshots, spend anomalies) and its webhooks.
    #[serde(default)]
    pub finance: RawFinance,
    /// The shared control store for keys created through the API or CLI; without it they live
    /// in `[auth] key_store` (one node).
    #[serde(default)]
    pub control: Option<RawControl>,
    /// The admin API.
    #[serde(default)]
    pub admin: RawAdmin,
    /// The browser console on the ops plane.
    #[serde(default)]
    pub console: RawConsole,
    /// Multi-step workflows the gateway runs.
    #[serde(default)]
    pub workflows: crate::workflow::RawSettings,
    /// Evals the gateway runs: specs for the admin API, and schedules.
    #[serde(default)]
    pub evals: crate::eval::schedule::RawEvals,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    /// Serve `/console/` on the ops plane.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where browsers reach the data plane (the playground's requests); default: the page's
    /// own host name with the data plane's port.
    #[serde(default)]
    pub data_plane_url: Option<String>,
    /// Origins (`scheme://host:port`) whose pages may call the data plane from a browser;
    /// default: pages served from the ops plane's port (the console itself).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Sign-in with the identity provider of `[auth.jwt]` (authorization code + PKCE): the
    /// client id registered there for the console (a public client).
    #[serde(default)]
    pub oidc_client_id: Option<String>,
    /// The IdP's issuer URL for discovery; default `[auth.jwt] issuer`.
    #[serde(default)]
    pub oidc_issuer: Option<String>,
    /// Scopes asked for at sign-in.
    #[serde(default = "default_oidc_scopes")]
    pub oidc_scopes: String,
}

fn default_oidc_scopes() -> String {
    "openid profile email".into()
}

impl Default for RawConsole {
    fn default() -> Self {
        Self {
            enabled: true,
            data_plane_url: None,
            origins: Vec::new(),
            oidc_client_id: None,
            oidc_issuer: None,
            oidc_scopes: default_oidc_scopes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `false`: the admin API only reads; keys, roles and bindings change through config
    /// files and the CLI (GitOps).
    #[serde(default = "default_true")]
    pub writable: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { writable: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    /// `sqlite` (one node: `path`) or `postgres` (a fleet: `url`).
    pub store: String,
    /// SQLite file (relative to this file).
    #[serde(default = "default_control_path")]
    pub path: String,
    /// PostgreSQL URL (`postgres://user:password@host:port/db`; use `${ENV_VAR}`). Never logged.
    #[serde(default)]
    pub url: Option<String>,
    /// How often each replica compares the change version (the safety net under NOTIFY).
    #[serde(default = "default_control_poll_ms")]
    pub poll_ms: u64,
    /// How long an admin write waits for the store before answering 503.
    #[serde(default = "default_control_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_control_path() -> String {
    "control.db".into()
}
fn default_control_poll_ms() -> u64 {
    250
}
fn default_control_timeout_ms() -> u64 {
    3_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFinance {
    /// Seconds between finance watch passes (0: off); needs `[clickhouse]`.
    #[serde(default = "default_watch_interval_secs")]
    pub watch_interval_secs: u64,
    /// `day`, `hour`: the grains anomalies are looked for in.
    #[serde(default = "default_anomaly_grains")]
    pub anomaly_grains: Vec<String>,
    /// Where budget crossings and anomalies are POSTed (JSON, HMAC-signed).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The HMAC key (use `${ENV_VAR}`; at least 16 characters). Never logged.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub webhook_timeout_ms: u64,
    #[serde(default = "default_webhook_max_attempts")]
    pub webhook_max_attempts: u32,
    /// First retry delay; doubled per retry.
    #[serde(default = "default_webhook_backoff_ms")]
    pub webhook_backoff_ms: u64,
}

impl Default for RawFinance {
    fn default() -> Self {
        Self {
            watch_interval_secs: default_watch_interval_secs(),
            anomaly_grains: default_anomaly_grains(),
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout_ms: default_webhook_timeout_ms(),
            webhook_max_attempts: default_webhook_max_attempts(),
            webhook_backoff_ms: default_webhook_backoff_ms(),
        }
    }
}

fn default_watch_interval_secs() -> u64 {
    300
}
fn default_anomaly_grains() -> Vec<String> {
    vec!["day".into(), "hour".into()]
}
fn default_webhook_timeout_ms() -> u64 {
    10_000
}
fn default_webhook_max_attempts() -> u32 {
    6
}
fn default_webhook_backoff_ms() -> u64 {
    1_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// Share of the traces the gateway starts that are sampled, 0..=1 (default 1); a client's
    /// `traceparent` sampled flag is followed.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    #[serde(default)]
    pub service_name: Option<String>,
    /// Batch export interval in milliseconds (default 5000).
    #[serde(default)]
    pub export_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    /// Counters in this process.
    #[default]
    Local,
    /// Counters shared by every replica in Redis.
    Redis,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimitSettings {
    #[serde(default)]
    pub backend: LimitBackend,
    /// `redis://host:port[/db]` (or `rediss://` for TLS) when `backend = "redis"`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// A Redis answer slower than this counts as Redis being down (milliseconds).
    #[serde(default)]
    pub redis_timeout_ms: Option<u64>,
    /// While Redis is down each replica enforces this share of every limit locally (e.g. 0.34
    /// with three replicas). Default 1.0.
    #[serde(default)]
    pub fallback_share: Option<f64>,
    /// Completion tokens reserved for a request that sets no `max_tokens` (default 4096).
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// How often budgets are reconciled with ClickHouse spend (seconds; default 60).
    #[serde(default)]
    pub reconcile_interval_s: Option<u64>,
}

/// Limit values; every one optional.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimitValues {
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub concurrent_requests: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(flatten)]
    pub values: RawLimitValues,
    /// Per model alias: these values replace the ones above for requests to that alias.
    #[serde(default)]
    pub models: BTreeMap<String, RawLimitValues>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// USD (decimal text or number).
    pub usd: toml::Value,
    /// `month` (calendar month, UTC) or a rolling window like `30d`.
    #[serde(default = "default_budget_period")]
    pub period: String,
    /// Fractions of the budget that raise a warning (metric, audit event, response header).
    #[serde(default = "default_soft")]
    pub soft: Vec<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClickHouse {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123` or a ClickHouse Cloud URL on 8443.
    pub url: String,
    #[serde(default = "default_ch_user")]
    pub user: String,
    /// Use `${CLICKHOUSE_PASSWORD}`; never logged.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_ch_database")]
    pub database: String,
    /// Cluster name (from the servers' `remote_servers`): each table is local per node behind
    /// a `Distributed` table that inserts and queries use.
    #[serde(default)]
    pub cluster: Option<String>,
    /// With `cluster`: the HTTP URL of every node; migrations, mutations (erasure) and
    /// partition drops (retention) run on each.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// With `cluster`: `Replicated*MergeTree` local tables on the `{shard}` / `{replica}`
    /// macros (needs ClickHouse Keeper); `false` for plain MergeTree shards (default true).
    #[serde(default)]
    pub replicated: Option<bool>,
    /// Apply migrations when `serve` starts (otherwise run `model-bridge migrate`).
    #[serde(default)]
    pub migrate_on_start: bool,
    /// A batch is inserted when it has this many rows…
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// …or when its oldest row is this old (milliseconds).
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// An insert not acknowledged within this time is spooled (milliseconds).
    #[serde(default = "default_insert_timeout_ms")]
    pub insert_timeout_ms: u64,
    /// Inserts in flight at once per sink; further batches are spooled.
    #[serde(default = "default_max_inflight_inserts")]
    pub max_inflight_inserts: usize,
    /// Where batches wait while ClickHouse is unreachable (relative to this file). One gateway
    /// process per directory.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    /// Spool size limit per sink, bytes; a loud metric fires at 80%.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Names this gateway in batch ids and audit chains (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// Months of usage rows kept by `model-bridge retention apply` (0: keep all).
    #[serde(default)]
    pub usage_retention_months: u32,
    /// Months of audit rows kept (0: keep all).
    #[serde(default)]
    pub audit_retention_months: u32,
    /// Days of the hourly spend rollup kept (0: keep all); the daily rollup is kept whole,
    /// so finance history outlives the raw rows' retention.
    #[serde(default = "default_hourly_retention_days")]
    pub hourly_retention_days: u32,
    /// Apply retention this often while serving (hours; 0: only by the CLI).
    #[serde(default)]
    pub retention_interval_hours: u64,
}

fn default_hourly_retention_days() -> u32 {
    35
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Require a credential on the data plane.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Beside this path (relative to this file) lives the embedded control store, `control.db`;
    /// a JSON key store of older versions found here is imported into it once.
    #[serde(default = "default_key_store")]
    pub key_store: String,
    /// Directory of RBAC policy files (relative to this file).
    #[serde(default = "default_policies")]
    pub policies: String,
    /// Keys declared in config, by hash (file-managed, read-only through the API).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// SSO: JWTs from an OIDC identity provider.
    #[serde(default)]
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Expected `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Expected `aud`.
    #[serde(default)]
    pub audience: Option<String>,
    /// JWKS file (relative to this file).
    #[serde(default)]
    pub jwks_path: Option<String>,
    /// JWKS URL (the IdP's `jwks_uri`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Shared secret for HS256 tokens (testing only).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Clock skew allowed on `exp` / `nbf`, in seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Org of tokens without an org claim.
    #[serde(default)]
    pub default_org: Option<String>,
    /// Least seconds between two JWKS refreshes (a token with an unknown `kid` triggers one).
    #[serde(default = "default_jwks_refresh_s")]
    pub jwks_refresh_min_s: u64,
    /// Claim names.
    #[serde(default)]
    pub claims: RawClaims,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    #[serde(default = "default_org_claim")]
    pub org: String,
    #[serde(default = "default_user_claim")]
    pub user: String,
    #[serde(default = "default_groups_claim")]
    pub groups: String,
    /// Claim listing role names directly (trusts the IdP's role assignment).
    #[serde(default)]
    pub roles: Option<String>,
}

impl Default for RawClaims {
    fn default() -> Self {
        Self {
            org: default_org_claim(),
            user: default_user_claim(),
            groups: default_groups_claim(),
            roles: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Visible key id (the 12 characters after `mbk_`).
    pub id: String,
    /// Hex SHA-256 of the whole key (`model-bridge keys hash` prints it).
    pub sha256: String,
    #[serde(default)]
    pub name: Option<String>,
    pub org: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub cost_center: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// RFC 3339 UTC.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `jsonl` (the file below) or `clickhouse` (the `[clickhouse]` warehouse).
    #[serde(default = "default_audit_sink")]
    pub sink: AuditSinkKind,
    /// JSON-lines file for audit events (relative to this file).
    #[serde(default = "default_audit_path")]
    pub path: String,
    /// Ed25519 seed (64 hex digits) that signs every audit row written to ClickHouse; use
    /// `${ENV_VAR}`. Make one with `model-bridge audit keygen`. Never logged.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The matching public key (64 hex digits), for `audit verify` when it is not given on
    /// the command line: every row must then carry a valid signature.
    #[serde(default)]
    pub verify_key: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            sink: default_audit_sink(),
            path: default_audit_path(),
            signing_key: None,
            verify_key: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOrg {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub teams: BTreeMap<String, RawTeam>,
    #[serde(default)]
    pub cost_centers: BTreeMap<String, RawCostCenter>,
    /// Cost center of this org's callers that name none.
    #[serde(default)]
    pub default_cost_center: Option<String>,
    /// Limits of the whole org.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Limits of each key of the org, counted per key.
    #[serde(default)]
    pub key_limits: Option<RawLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
    /// One key's own limits (instead of `key_limits`) and budget, by key id.
    #[serde(default)]
    pub keys: BTreeMap<String, RawKeyPolicy>,
    /// Spend of a key, project or team shared across cost centers by percentage, for
    /// chargeback.
    #[serde(default)]
    pub allocations: Vec<RawAllocation>,
    /// The org's own workflow run limits, in place of `[workflows]`'s.
    #[serde(default)]
    pub workflow_limits: Option<crate::workflow::LimitOverrides>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllocation {
    /// `key:<id>`, `project:<name>` or `team:<id>`.
    pub source: String,
    /// Percent per cost center of the org (at most two decimals), summing to 100.
    pub split: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub default_cost_center: Option<String>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKeyPolicy {
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCostCenter {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    /// Shorthand for `budget = { usd = …, period = "month" }`.
    #[serde(default)]
    pub monthly_budget_usd: Option<toml::Value>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Data plane address (OpenAI API surface).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Ops plane address (metrics, health, admin).
    #[serde(default = "default_ops_listen")]
    pub ops_listen: String,
    /// Worker threads of the data plane.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Tokio work stealing between data-plane threads; off pins each connection to one
    /// single-threaded runtime (less cross-thread traffic, no rebalancing of long streams).
    #[serde(default = "default_true")]
    pub work_stealing: bool,
    /// Latency mode: after each request arrives or finishes, a worker keeps polling its sockets
    /// for this many microseconds instead of sleeping, so the provider's answer and the client's
    /// next request are picked up without a cross-core wake-up. Costs CPU in idle gaps shorter
    /// than the window; 0 (default) turns it off. Needs `work_stealing = false`; at most 10000.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// Largest request body accepted, in bytes (413 above).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Accept HTTP/2 with prior knowledge on plaintext listeners.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// Idle keep-alive of client connections, in seconds.
    #[serde(default = "default_keepalive_s")]
    pub keepalive_timeout_s: u64,
    /// On SIGTERM, how long in-flight requests may take to finish before exit.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Longest wait for a client to take one piece of a response, in milliseconds: a client
    /// that stops reading is cut off (its record marked cancelled) instead of holding the
    /// request and the provider connection. Also bounded by the provider's total timeout.
    #[serde(default = "default_client_write_timeout_ms")]
    pub client_write_timeout_ms: u64,
    /// TLS for the data plane; plaintext when absent.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// `text` (default) or `json`: one JSON object per line (time, level, target, message,
    /// request id, trace id). Read at start.
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
    /// One `info` line per finished request (id, trace id, org, model, provider, status,
    /// latency, tokens). Off by default: usage rows are the record of every request.
    #[serde(default)]
    pub access_log: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            ops_listen: default_ops_listen(),
            threads: default_threads(),
            work_stealing: true,
            busy_poll_us: 0,
            max_body_bytes: default_max_body_bytes(),
            h2c: true,
            keepalive_timeout_s: default_keepalive_s(),
            drain_timeout_ms: default_drain_timeout_ms(),
            client_write_timeout_ms: default_client_write_timeout_ms(),
            tls: None,
            log_format: Default::default(),
            access_log: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// One JSON object per line, appended to `usage.path`.
    Jsonl,
    /// One JSON object per line on standard output.
    Stdout,
    /// Rows in the `[clickhouse]` warehouse (spooled while it is unreachable).
    Clickhouse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSinkKind {
    Jsonl,
    Clickhouse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// Sink kind.
    #[serde(default = "default_sink")]
    pub sink: SinkKind,
    /// File for the `jsonl` sink.
    #[serde(default = "default_usage_path")]
    pub path: String,
    /// Records buffered between the request path and the writer.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Largest delay before buffered records are written, in milliseconds.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Load the tokenizer encodings (~35 MB each) at start instead of when the first estimated
    /// record needs one; until an encoding is loaded, estimates count 4 bytes per token.
    #[serde(default)]
    pub tokenizer_preload: bool,
}

impl Default for RawUsage {
    fn default() -> Self {
        Self {
            sink: default_sink(),
            path: default_usage_path(),
            queue_capacity: default_queue_capacity(),
            flush_interval_ms: default_flush_interval_ms(),
            tokenizer_preload: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// Reload when the config file changes on disk.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often the file is checked, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval_ms: default_poll_ms(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// api.openai.com: `Authorization: Bearer`.
    Openai,
    /// Azure OpenAI: deployment in the path, `api-version` query, `api-key` header.
    Azure,
    /// Any OpenAI-compatible `/v1` endpoint (vLLM, Ollama, Groq, Together, …).
    OpenaiCompatible,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Provider protocol flavour.
    pub kind: ProviderKind,
    /// Base URL, e.g. `https://api.openai.com/v1` or `https://res.openai.azure.com`.
    pub base_url: String,
    /// Credential; use `${ENV_VAR}`. Never logged.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Azure `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// TCP (+TLS) connect timeout, in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Time from request sent to response header, in milliseconds.
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest gap between two body chunks, in milliseconds.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Whole-request deadline, in milliseconds.
    #[serde(default = "default_total_ms")]
    pub total_timeout_ms: u64,
    /// Extra headers sent to this provider (e.g. `OpenAI-Organization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Verify the provider's TLS certificate.
    #[serde(default = "default_true")]
    pub verify_tls: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Provider name (a key of `[providers]`).
    pub provider: String,
    /// The provider's model name (Azure: the deployment). Defaults to the alias.
    #[serde(default)]
    pub model: Option<String>,
    /// Owning org: only its callers see and use the alias. Shared by all orgs when absent.
    #[serde(default)]
    pub org: Option<String>,
    /// USD per one million tokens; absent: cost is recorded as unknown (never as zero).
    #[serde(default)]
    pub price: Option<RawPrice>,
    /// Tried in order when the primary target fails before anything reached the client.
    #[serde(default)]
    pub fallbacks: Vec<RawTarget>,
    /// Retries per target before falling back.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// A/B experiment: weighted sticky variants.
    #[serde(default)]
    pub split: Option<RawSplit>,
    /// Mirror a fraction of requests to a candidate (its answers are recorded, never returned).
    #[serde(default)]
    pub shadow: Option<RawShadow>,
    /// Grade a sampled share of live answers with a judge alias, off the request path.
    #[serde(default)]
    pub online_eval: Option<RawOnlineEval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnlineEval {
    /// The judge's alias (its primary target is called).
    pub judge: String,
    /// Share of chat completions graded (0..=1).
    pub sample: f64,
    #[serde(default)]
    pub rubric: Option<String>,
    /// USD per calendar month the judging may cost; grading stops when it is spent.
    pub budget_usd: toml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub price: Option<RawPrice>,
    /// Share of requests mirrored (0..=1).
    pub fraction: f64,
    /// USD per calendar month the shadow traffic may cost; mirroring stops when it is spent.
    pub budget_usd: toml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub price: Option<RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Extra attempts on the same target (default 1).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Base of the jittered exponential backoff, ms (default 50).
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Backoff ceiling, ms (default 2000); a `retry-after` longer than this moves on to the next
    /// target instead of waiting.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub experiment: String,
    /// `key`, `user` or `end_user` (the request's `user` field).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// RFC 3339; default: always active.
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    pub variants: Vec<RawVariant>,
    /// Shift the split to a winner once one is established (see `experiments::promote`).
    #[serde(default)]
    pub auto_promote: Option<crate::experiments::promote::RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub weight: u32,
    /// Default: the alias's own provider, model and price.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub price: Option<RawPrice>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens_cap: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Retries may add at most this fraction of the request load (default 0.2).
    #[serde(default)]
    pub retry_budget_ratio: Option<f64>,
    /// Breaker: consecutive failures that open it (default 5).
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// Breaker: error rate over the window that opens it (default 0.5, with at least 20 requests).
    #[serde(default)]
    pub breaker_error_rate: Option<f64>,
    #[serde(default)]
    pub breaker_window_ms: Option<u64>,
    #[serde(default)]
    pub breaker_min_requests: Option<u32>,
    /// How long an open breaker stays open before one probe (default 5000).
    #[serde(default)]
    pub breaker_open_ms: Option<u64>,
}

/// Prices as decimal USD per 1M tokens, written as numbers or strings (`0.15` or `"0.15"`);
/// parsed from their decimal text, never through binary floating point arithmetic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_1m: toml::Value,
    /// Cached prompt tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_per_1m: Option<toml::Value>,
    /// Completion tokens; 0 for embeddings when absent.
    #[serde(default)]
    pub output_per_1m: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    /// Provider that receives other `/v1/*` paths.
    pub provider: String,
}

fn default_ch_user() -> String {
    "default".into()
}
fn default_ch_database() -> String {
    "model_bridge".into()
}
fn default_jwks_refresh_s() -> u64 {
    10
}
fn default_leeway_s() -> u64 {
    30
}
fn default_org_claim() -> String {
    "org".into()
}
fn default_user_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_key_store() -> String {
    "data/keys.json".into()
}
fn default_policies() -> String {
    "../policies".into()
}
fn default_audit_path() -> String {
    "audit.jsonl".into()
}
fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_ops_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
fn default_max_body_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_keepalive_s() -> u64 {
    60
}
fn default_client_write_timeout_ms() -> u64 {
    30_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_subject() -> String {
    "key".into()
}
fn default_budget_period() -> String {
    "month".into()
}
fn default_soft() -> Vec<f64> {
    vec![0.8]
}
fn default_audit_sink() -> AuditSinkKind {
    AuditSinkKind::Jsonl
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_interval_ms() -> u64 {
    1_000
}
fn default_insert_timeout_ms() -> u64 {
    5_000
}
fn default_max_inflight_inserts() -> usize {
    2
}
fn default_spool_dir() -> String {
    "data/spool".into()
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_sink() -> SinkKind {
    SinkKind::Jsonl
}
fn default_usage_path() -> String {
    "usage.jsonl".into()
}
fn default_queue_capacity() -> usize {
    65_536
}
fn default_flush_interval_ms() -> u64 {
    200
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_connect_ms() -> u64 {
    5_000
}
fn default_first_byte_ms() -> u64 {
    120_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_total_ms() -> u64 {
    600_000
}

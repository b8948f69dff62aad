//! Prometheus metrics, prefix `model_bridge_`. Every label value comes from a bounded set
//! (configured aliases and providers, enum labels) — never from request data.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

pub mod tls;

pub struct Metrics {
    pub registry: Registry,
    /// {endpoint, model, provider, status_class}
    pub requests: IntCounterVec,
    /// {endpoint, model}
    pub request_duration: HistogramVec,
    /// {model}
    pub ttft: HistogramVec,
    /// {provider}
    pub upstream_duration: HistogramVec,
    /// {model, kind}
    pub tokens: IntCounterVec,
    /// {model}: spend in USD (display only; the exact figure is nano-USD in the usage rows).
    pub cost_usd: prometheus::CounterVec,
    /// {model}: requests routed to a model without a price (cost unknown, never counted as 0).
    pub unpriced: IntCounterVec,
    /// {provider, reason}
    pub upstream_errors: IntCounterVec,
    /// {provider}
    pub retries: IntCounterVec,
    /// {reason}: refusals the gateway itself produced.
    pub gateway_errors: IntCounterVec,
    pub inflight: IntGauge,
    /// Idle pooled upstream connections, as of the last pool sweep.
    pub upstream_idle_connections: IntGauge,
    pub usage_sink_queue_depth: IntGauge,
    /// {outcome}
    pub usage_rows: IntCounterVec,
    /// {result}
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub audit_queue_depth: IntGauge,
    /// {outcome}
    pub audit_events: IntCounterVec,
    /// {reason}: refused credentials.
    pub auth_failures: IntCounterVec,
    /// {reason}: RBAC and tenancy denials.
    pub denials: IntCounterVec,
    /// {model}: streams the client left early.
    pub cancelled: IntCounterVec,
    pub body_bytes: Histogram,
    /// {sink, outcome}: warehouse batches (inserted, spooled, replayed, failed).
    pub sink_batches: IntCounterVec,
    /// {sink}: ClickHouse insert latency, successful or not.
    pub sink_insert_duration: HistogramVec,
    /// {sink}: bytes in the on-disk spool, its limit, segments waiting for replay.
    pub sink_spool_bytes: IntGaugeVec,
    pub sink_spool_limit: IntGaugeVec,
    pub sink_spool_segments: IntGaugeVec,
    /// {sink}: 1 when the spool is over 80% of its limit (rows are lost when it is full).
    pub sink_spool_near_full: IntGaugeVec,
    /// {sink}: 1 while the last ClickHouse insert or probe succeeded.
    pub sink_clickhouse_up: IntGaugeVec,
    /// {reason, org}: requests refused by a limit or budget.
    pub rate_limited: IntCounterVec,
    /// {budget}: spend of the current period and the hard limit, USD (`org`, `org/team`,
    /// `org/cost_center` — from config, bounded).
    pub budget_spend: prometheus::GaugeVec,
    pub budget_limit: prometheus::GaugeVec,
    /// {budget, threshold}: soft thresholds crossed.
    pub budget_warnings: IntCounterVec,
    /// {org, cost_center, grain}: robust z-score of the last complete day or hour when it is
    /// an anomaly, 0 when it is not (orgs and cost centers from config, bounded).
    pub spend_anomaly_score: prometheus::GaugeVec,
    /// {org, grain}: anomalies the finance watch found.
    pub spend_anomalies: IntCounterVec,
    /// {event, outcome}: finance webhooks (delivered, failed after every retry, dropped when
    /// the queue was full).
    pub webhook_deliveries: IntCounterVec,
    /// Finance webhook attempts that were retried.
    pub webhook_retries: prometheus::IntCounter,
    /// Unix time of the last finance watch pass that read the warehouse.
    pub finance_watch_last_success: IntGauge,
    /// 1 while the control store (`[control]`) answers; 0: serving the last snapshot.
    pub control_store_up: IntGauge,
    pub limits_redis_up: IntGauge,
    pub limits_redis_duration: Histogram,
    /// Admissions decided locally because Redis was unreachable.
    pub limits_fallbacks: prometheus::IntCounter,
    pub feedback_queue_depth: IntGauge,
    pub workflow_queue_depth: IntGauge,
    pub workflow_rows: IntCounterVec,
    /// {outcome}
    pub feedback_rows: IntCounterVec,
    /// {model, variant}: requests routed by an experiment.
    pub variant_requests: IntCounterVec,
    /// {model, outcome}: live answers sent to a judge (scored, failed, skipped_budget,
    /// no_warehouse).
    pub online_evals: IntCounterVec,
    /// {eval, ending}: eval runs the gateway made (completed, budget_exhausted, with_errors,
    /// error).
    pub eval_runs: IntCounterVec,
    /// {eval}: 1 when the last scheduled run regressed against its baseline.
    pub eval_regression: prometheus::IntGaugeVec,
    /// {eval}: Unix time of the last scheduled run.
    pub eval_last_run: prometheus::IntGaugeVec,
    /// {eval, target, scorer}: the last scheduled run's mean score.
    pub eval_mean_score: prometheus::GaugeVec,
    /// {experiment, outcome}: auto-promotion passes (insufficient, no_winner, srm, promoted).
    pub experiment_evaluations: IntCounterVec,
    /// {experiment}: 1 once auto-promotion shifted the split to a winner.
    pub experiment_promoted: prometheus::IntGaugeVec,
    /// {target, outcome}: upstream attempts (ok, 5xx, 429, timeout, error, breaker_open).
    pub attempts: IntCounterVec,
    /// {target}: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// {model, outcome}: mirrored requests (sent, skipped_budget, failed).
    pub shadow_requests: IntCounterVec,
    /// Retries not made because the retry budget was spent.
    pub retry_budget_exhausted: prometheus::IntCounter,
    /// 1 while `/readyz` would answer 200 (serving a config with models, not draining).
    pub ready: IntGauge,
    /// {listener}: `notAfter` of the served TLS certificate, Unix seconds.
    pub tls_cert_not_after: IntGaugeVec,
}

/// Every outcome a warehouse sink counts rows under (primed at 0 so `increase()` sees the first).
pub const ROW_OUTCOMES: &[&str] = &[
    "inserted",
    "spooled",
    "replayed",
    "duplicate_skipped",
    "lost",
    "overflowed",
];

/// Every outcome of an upstream attempt (`proxy::route`).
pub const ATTEMPT_OUTCOMES: &[&str] = &["ok", "5xx", "429", "timeout", "error", "breaker_open"];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("model_bridge_{name}"), help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(format!("model_bridge_{name}"), help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    h
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(format!("model_bridge_{name}"), help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

fn fgauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(format!("model_bridge_{name}"), help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

/// A labelled integer gauge, registered (the full metric name).
fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("model_bridge_{name}"), help)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let body_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "model_bridge_request_body_bytes",
                "Size of LLM request bodies.",
            )
            .buckets(prometheus::exponential_buckets(256.0, 4.0, 10).unwrap_or_default()),
        )
        .unwrap_or_else(|e| panic!("metric body_bytes: {e}"));
        r.register(Box::new(body_bytes.clone()))
            .unwrap_or_else(|e| panic!("register body_bytes: {e}"));
        Self {
            requests: counter(
                &r,
                "requests_total",
                "Requests finished, by endpoint, model alias, provider and status class.",
                &["endpoint", "model", "provider", "status_class"],
            ),
            request_duration: histogram(
                &r,
                "request_duration_seconds",
                "Time from request start to the last response byte.",
                &["endpoint", "model"],
            ),
            ttft: histogram(
                &r,
                "time_to_first_token_seconds",
                "Time from request start to the first content chunk of a stream.",
                &["model"],
            ),
            upstream_duration: histogram(
                &r,
                "upstream_duration_seconds",
                "Time from sending upstream to the response header.",
                &["provider"],
            ),
            tokens: counter(
                &r,
                "tokens_total",
                "Tokens by model alias and kind (prompt, completion, cached).",
                &["model", "kind"],
            ),
            cost_usd: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "model_bridge_cost_usd_total",
                        "Spend in USD by model alias.",
                    ),
                    &["model"],
                )
                .unwrap_or_else(|e| panic!("metric cost_usd_total: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register cost_usd_total: {e}"));
                c
            },
            unpriced: counter(
                &r,
                "unpriced_requests_total",
                "Requests to a model without a configured price.",
                &["model"],
            ),
            upstream_errors: counter(
                &r,
                "upstream_errors_total",
                "Upstream failures by provider and reason.",
                &["provider", "reason"],
            ),
            retries: counter(
                &r,
                "retries_total",
                "Extra upstream attempts by provider.",
                &["provider"],
            ),
            gateway_errors: counter(
                &r,
                "gateway_errors_total",
                "Errors the gateway produced itself, by reason.",
                &["reason"],
            ),
            inflight: gauge(&r, "inflight_requests", "Requests in progress."),
            upstream_idle_connections: gauge(
                &r,
                "upstream_idle_connections",
                "Idle keep-alive connections to providers (sampled every 5 s).",
            ),
            usage_sink_queue_depth: gauge(
                &r,
                "usage_sink_queue_depth",
                "Usage records waiting for the sink writer.",
            ),
            usage_rows: counter(
                &r,
                "usage_sink_rows_total",
                "Usage records by outcome (inserted, spooled, replayed, lost).",
                &["outcome"],
            ),
            config_reloads: counter(
                &r,
                "config_reloads_total",
                "Config reload attempts by result.",
                &["result"],
            ),
            config_generation: gauge(
                &r,
                "config_generation",
                "Generation of the config now serving.",
            ),
            audit_queue_depth: gauge(
                &r,
                "audit_queue_depth",
                "Audit events waiting for the writer.",
            ),
            audit_events: counter(
                &r,
                "audit_events_total",
                "Audit events by outcome (inserted, spooled, replayed, lost).",
                &["outcome"],
            ),
            auth_failures: counter(
                &r,
                "auth_failures_total",
                "Refused credentials by reason (missing, malformed, unknown, revoked, expired).",
                &["reason"],
            ),
            denials: counter(
                &r,
                "permission_denials_total",
                "Authorization refusals by reason.",
                &["reason"],
            ),
            cancelled: counter(
                &r,
                "cancelled_requests_total",
                "Requests whose client disconnected before the response ended.",
                &["model"],
            ),
            body_bytes,
            sink_batches: counter(
                &r,
                "sink_batches_total",
                "Warehouse batches by sink and outcome (inserted, spooled, replayed, failed).",
                &["sink", "outcome"],
            ),
            sink_insert_duration: histogram(
                &r,
                "sink_insert_duration_seconds",
                "ClickHouse insert latency by sink.",
                &["sink"],
            ),
            sink_spool_bytes: gauge_vec(
                &r,
                "sink_spool_bytes",
                "Bytes of spooled batches waiting for ClickHouse.",
                &["sink"],
            ),
            sink_spool_limit: gauge_vec(
                &r,
                "sink_spool_limit_bytes",
                "Spool size limit; rows are lost beyond it.",
                &["sink"],
            ),
            sink_spool_segments: gauge_vec(
                &r,
                "sink_spool_segments",
                "Spooled batches waiting for ClickHouse.",
                &["sink"],
            ),
            sink_spool_near_full: gauge_vec(
                &r,
                "sink_spool_near_full",
                "1 when the spool is over 80% of its limit.",
                &["sink"],
            ),
            sink_clickhouse_up: gauge_vec(
                &r,
                "sink_clickhouse_up",
                "1 while ClickHouse accepts inserts.",
                &["sink"],
            ),
            rate_limited: counter(
                &r,
                "ratelimit_rejections_total",
                "Requests refused by a limit, by reason (requests, tokens, concurrency, budget) and org.",
                &["reason", "org"],
            ),
            budget_spend: fgauge_vec(
                &r,
                "budget_spend_usd",
                "Spend of the current budget period, USD.",
                &["budget"],
            ),
            budget_limit: fgauge_vec(&r, "budget_limit_usd", "Hard budget limit, USD.", &["budget"]),
            budget_warnings: counter(
                &r,
                "budget_warnings_total",
                "Soft budget thresholds crossed.",
                &["budget", "threshold"],
            ),
            spend_anomaly_score: fgauge_vec(
                &r,
                "spend_anomaly_score",
                "Robust z-score of the last complete day or hour's spend when anomalous, else 0.",
                &["org", "cost_center", "grain"],
            ),
            spend_anomalies: counter(
                &r,
                "spend_anomalies_total",
                "Spend anomalies found by the finance watch.",
                &["org", "grain"],
            ),
            webhook_deliveries: counter(
                &r,
                "webhook_deliveries_total",
                "Finance webhooks by event and outcome (delivered, failed, dropped).",
                &["event", "outcome"],
            ),
            webhook_retries: {
                let c = prometheus::IntCounter::new(
                    "model_bridge_webhook_retries_total",
                    "Finance webhook attempts retried after a failure.",
                )
                .unwrap_or_else(|e| panic!("metric webhook_retries: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("metric webhook_retries: {e}"));
                c
            },
            control_store_up: gauge(
                &r,
                "control_store_up",
                "1 while the shared control store answers; 0 while replicas serve their last snapshot.",
            ),
            finance_watch_last_success: gauge(
                &r,
                "finance_watch_last_success_seconds",
                "Unix time of the finance watch's last pass over the warehouse.",
            ),
            limits_redis_up: {
                let g = gauge(&r, "limits_redis_up", "1 while Redis decides admissions (distributed mode).");
                g.set(1);
                g
            },
            limits_redis_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "model_bridge_limits_redis_duration_seconds",
                        "Redis round trip of one admission or settlement.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap_or_else(|e| panic!("metric redis duration: {e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("register redis duration: {e}"));
                h
            },
            limits_fallbacks: {
                let c = prometheus::IntCounter::new(
                    "model_bridge_limits_fallback_total",
                    "Admissions decided by local limits because Redis was unreachable.",
                )
                .unwrap_or_else(|e| panic!("metric fallbacks: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register fallbacks: {e}"));
                c
            },
            feedback_queue_depth: gauge(
                &r,
                "feedback_queue_depth",
                "Feedback scores waiting for the sink.",
            ),
            feedback_rows: counter(
                &r,
                "feedback_rows_total",
                "Feedback scores by outcome (inserted, spooled, replayed, lost).",
                &["outcome"],
            ),
            workflow_queue_depth: gauge(
                &r,
                "workflow_history_queue_depth",
                "Workflow run and step rows waiting for the sink.",
            ),
            workflow_rows: counter(
                &r,
                "workflow_history_rows_total",
                "Workflow run and step rows by outcome (inserted, spooled, replayed, lost).",
                &["outcome"],
            ),
            variant_requests: counter(
                &r,
                "variant_requests_total",
                "Requests routed by an experiment, by alias and variant.",
                &["model", "variant"],
            ),
            eval_runs: counter(
                &r,
                "eval_runs_total",
                "Eval runs the gateway made (scheduled or through the admin API), by eval and ending.",
                &["eval", "ending"],
            ),
            eval_regression: int_gauge_vec(
                &r,
                "model_bridge_eval_regression",
                "1 when the eval's last scheduled run regressed against its baseline.",
                &["eval"],
            ),
            eval_last_run: int_gauge_vec(
                &r,
                "model_bridge_eval_last_run_timestamp_seconds",
                "Unix time of the eval's last scheduled run.",
                &["eval"],
            ),
            eval_mean_score: {
                let g = prometheus::GaugeVec::new(
                    prometheus::Opts::new(
                        "model_bridge_eval_mean_score",
                        "The last scheduled run's mean score, by eval, target and scorer.",
                    ),
                    &["eval", "target", "scorer"],
                )
                .unwrap_or_else(|e| panic!("metric eval_mean_score: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("register eval_mean_score: {e}"));
                g
            },
            online_evals: counter(
                &r,
                "online_evals_total",
                "Sampled live answers graded by a judge alias, by alias and outcome (scored, failed, skipped_budget, no_warehouse).",
                &["model", "outcome"],
            ),
            experiment_evaluations: counter(
                &r,
                "experiment_evaluations_total",
                "Auto-promotion passes over an experiment, by outcome (insufficient, no_winner, srm, promoted, error).",
                &["experiment", "outcome"],
            ),
            experiment_promoted: int_gauge_vec(
                &r,
                "model_bridge_experiment_promoted",
                "1 while an experiment's split is shifted to its auto-promoted winner.",
                &["experiment"],
            ),
            attempts: counter(
                &r,
                "upstream_attempts_total",
                "Upstream attempts by target (provider/model) and outcome.",
                &["target", "outcome"],
            ),
            breaker_state: gauge_vec(
                &r,
                "breaker_state",
                "Circuit breaker of a target: 0 closed, 1 open, 2 half-open.",
                &["target"],
            ),
            shadow_requests: counter(
                &r,
                "shadow_requests_total",
                "Shadow (mirrored) requests by alias and outcome.",
                &["model", "outcome"],
            ),
            retry_budget_exhausted: {
                let c = prometheus::IntCounter::new(
                    "model_bridge_retry_budget_exhausted_total",
                    "Retries not made because retries would exceed their share of the load.",
                )
                .unwrap_or_else(|e| panic!("metric retry budget: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register retry budget: {e}"));
                c
            },
            ready: gauge(
                &r,
                "ready",
                "1 while the gateway is ready for traffic (config with models loaded, not draining).",
            ),
            tls_cert_not_after: gauge_vec(
                &r,
                "tls_cert_not_after_seconds",
                "Expiry (notAfter) of the TLS certificate a listener serves, Unix seconds.",
                &["listener"],
            ),
            registry: {
                build_info(&r);
                #[cfg(target_os = "linux")]
                r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
                    .unwrap_or_else(|e| panic!("register process collector: {e}"));
                r
            },
        }
    }

    /// Creates, at 0, every series an alert reads with `increase()` or a ratio, for the label
    /// values this config can produce: a series born at 1 hides its first event from
    /// `increase()`, and a replica that never failed must still show `failure` 0. Called at
    /// start and after each reload; series of removed targets keep their last values until
    /// restart (clearing them would reset counters mid-window).
    pub fn prime(&self, config: &crate::config::Config) {
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for rows in [&self.usage_rows, &self.audit_events, &self.feedback_rows] {
            for o in ROW_OUTCOMES {
                rows.with_label_values(&[o]);
            }
        }
        let mut targets: Vec<&crate::routing::Target> = Vec::new();
        for m in config.models.values() {
            targets.extend(m.chain.iter());
            if let Some(split) = &m.split {
                for v in &split.variants {
                    targets.extend(v.targets.iter());
                }
            }
        }
        for t in targets {
            for o in ATTEMPT_OUTCOMES {
                self.attempts.with_label_values(&[&*t.label, o]);
            }
            self.breaker_state.with_label_values(&[&t.label]);
        }
        self.ready.set(!config.models.is_empty() as i64);
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// `model_bridge_build_info{version, commit} 1`: join it to any series to see what runs.
fn build_info(r: &Registry) {
    let g = IntGaugeVec::new(
        Opts::new(
            "model_bridge_build_info",
            "Version and commit of the running binary (always 1).",
        ),
        &["version", "commit"],
    )
    .unwrap_or_else(|e| panic!("metric build_info: {e}"));
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("MB_GIT_COMMIT")])
        .set(1);
    r.register(Box::new(g))
        .unwrap_or_else(|e| panic!("register build_info: {e}"));
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// `2xx`, `4xx`, … for a status code; `cancelled` when the client left first.
pub fn status_class(status: u16, cancelled: bool) -> &'static str {
    if cancelled {
        return "cancelled";
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// One model alias's series, each resolved from its vector at first use and then kept with
/// the alias's route: a labelled lookup (hashing the labels, a read lock on the vector's map)
/// once per alias and config generation instead of several per request. A series still
/// appears only when first counted, as with a lookup per use.
#[derive(Debug)]
pub struct ModelMetrics {
    alias: std::sync::Arc<str>,
    /// {endpoint, model}, by `Endpoint::index`.
    duration: [std::sync::OnceLock<Histogram>; crate::routing::Endpoint::COUNT],
    ttft: std::sync::OnceLock<Histogram>,
    /// prompt, completion, cached.
    tokens: [std::sync::OnceLock<prometheus::IntCounter>; 3],
    cost_usd: std::sync::OnceLock<prometheus::Counter>,
    unpriced: std::sync::OnceLock<prometheus::IntCounter>,
    cancelled: std::sync::OnceLock<prometheus::IntCounter>,
}

/// Token kinds, in `ModelMetrics::tokens` order.
pub const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

impl ModelMetrics {
    pub fn new(alias: std::sync::Arc<str>) -> Self {
        Self {
            alias,
            duration: Default::default(),
            ttft: Default::default(),
            tokens: Default::default(),
            cost_usd: Default::default(),
            unpriced: Default::default(),
            cancelled: Default::default(),
        }
    }

    /// The alias: the `model` label of every series here.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    pub fn duration(&self, endpoint: crate::routing::Endpoint) -> &Histogram {
        self.duration[endpoint.index()].get_or_init(|| {
            METRICS
                .request_duration
                .with_label_values(&[endpoint.label(), &self.alias])
        })
    }

    pub fn ttft(&self) -> &Histogram {
        self.ttft
            .get_or_init(|| METRICS.ttft.with_label_values(&[&self.alias]))
    }

    /// `kind`: an index into `TOKEN_KINDS`.
    pub fn tokens(&self, kind: usize) -> &prometheus::IntCounter {
        self.tokens[kind].get_or_init(|| {
            METRICS
                .tokens
                .with_label_values(&[&self.alias, TOKEN_KINDS[kind]])
        })
    }

    pub fn cost_usd(&self) -> &prometheus::Counter {
        self.cost_usd
            .get_or_init(|| METRICS.cost_usd.with_label_values(&[&self.alias]))
    }

    pub fn unpriced(&self) -> &prometheus::IntCounter {
        self.unpriced
            .get_or_init(|| METRICS.unpriced.with_label_values(&[&self.alias]))
    }

    pub fn cancelled(&self) -> &prometheus::IntCounter {
        self.cancelled
            .get_or_init(|| METRICS.cancelled.with_label_values(&[&self.alias]))
    }
}

#[cfg(test)]
mod model_metrics_tests {
    use super::*;
    use crate::routing::Endpoint;

    fn exposed(name: &str, alias: &str) -> Vec<String> {
        let text = String::from_utf8(METRICS.render()).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("model=\"{alias}\"")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn an_alias_series_is_the_labelled_one_and_appears_only_once_counted() {
        let alias = "model-metrics-test-alias";
        let m = ModelMetrics::new(alias.into());
        assert!(exposed("model_bridge_tokens_total", alias).is_empty());
        m.tokens(1).inc_by(5);
        m.tokens(1).inc_by(2);
        assert_eq!(
            METRICS
                .tokens
                .with_label_values(&[alias, "completion"])
                .get(),
            7
        );
        assert_eq!(exposed("model_bridge_tokens_total", alias).len(), 1);
        m.duration(Endpoint::Embeddings).observe(0.5);
        assert_eq!(
            METRICS
                .request_duration
                .with_label_values(&["embeddings", alias])
                .get_sample_count(),
            1
        );
        assert_eq!(
            METRICS
                .request_duration
                .with_label_values(&["chat_completions", alias])
                .get_sample_count(),
            0
        );
        m.cancelled().inc();
        m.unpriced().inc();
        m.cost_usd().inc_by(0.25);
        m.ttft().observe(0.1);
        assert_eq!(METRICS.cancelled.with_label_values(&[alias]).get(), 1);
        assert_eq!(METRICS.unpriced.with_label_values(&[alias]).get(), 1);
        assert_eq!(METRICS.cost_usd.with_label_values(&[alias]).get(), 0.25);
        assert_eq!(
            METRICS.ttft.with_label_values(&[alias]).get_sample_count(),
            1
        );
    }
}

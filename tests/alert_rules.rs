//! The shipped Prometheus rules (config/prometheus/model-bridge.rules.yml): `promtool check
//! rules`, then `promtool test rules` on scenarios written here — each alert fires on its fault
//! and stays silent on healthy series. Expected annotations are the rule's own templates with
//! `{{ $labels.x }}` filled in, so a test pins which alert and labels fire, not its prose.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/model-bridge.rules.yml")
}

/// alert name → its annotation templates.
fn annotations() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(rules_path()).expect("rules file");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules YAML");
    let mut out = BTreeMap::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let ann = rule["annotations"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{name} has no annotations"))
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap_or_default().to_string(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            out.insert(name.to_string(), ann);
        }
    }
    out
}

/// `{{ $labels.x }}` → the label's value (the only template the rules use).
fn render(template: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    assert!(
        !out.contains("{{"),
        "unrendered template (only $labels is allowed): {out}"
    );
    out
}

/// Labels of one firing alert (besides `alertname`).
type Labels = Vec<(&'static str, &'static str)>;
/// `(eval_time, alert, every firing alert's labels)`.
type Check = (&'static str, &'static str, Vec<Labels>);

/// One scenario: input series (`name{labels}`, promtool's expanding notation), and checks
/// `(eval_time, alert, firing label sets)`; an empty list means the alert is silent (or only
/// pending) at that time.
struct Case {
    name: &'static str,
    series: Vec<(&'static str, &'static str)>,
    checks: Vec<Check>,
}

const A: (&str, &str) = ("instance", "gw-a:9090");
const JOB: (&str, &str) = ("job", "model-bridge");

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "replica down, then a healthy one",
            series: vec![
                (r#"up{job="model-bridge",instance="gw-a:9090"}"#, "1 1 0x6"),
                (r#"up{job="model-bridge",instance="gw-b:9090"}"#, "1x8"),
            ],
            checks: vec![
                ("2m", "ModelBridgeDown", vec![]), // pending: down for less than 1m
                (
                    "5m",
                    "ModelBridgeDown",
                    vec![vec![JOB, A, ("severity", "page")]],
                ),
            ],
        },
        Case {
            name: "not ready (draining or no models)",
            series: vec![
                (
                    r#"model_bridge_ready{job="model-bridge",instance="gw-a:9090"}"#,
                    "1 0x6",
                ),
                (
                    r#"model_bridge_ready{job="model-bridge",instance="gw-b:9090"}"#,
                    "1x7",
                ),
            ],
            checks: vec![
                ("2m", "ModelBridgeNotReady", vec![]),
                (
                    "5m",
                    "ModelBridgeNotReady",
                    vec![vec![JOB, A, ("severity", "page")]],
                ),
            ],
        },
        Case {
            // Two replicas: 20 of 220 requests per minute fail on one of them = 9% of the fleet.
            name: "error ratio over the fleet",
            series: vec![
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="gpt",provider="openai",status_class="2xx"}"#,
                    "0+100x20",
                ),
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="gpt",provider="openai",status_class="5xx"}"#,
                    "0+20x20",
                ),
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-b:9090",endpoint="chat",model="gpt",provider="openai",status_class="2xx"}"#,
                    "0+100x20",
                ),
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-b:9090",endpoint="chat",model="gpt",provider="openai",status_class="5xx"}"#,
                    "0x20",
                ),
                // Cancelled streams are neither errors nor in the denominator.
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-b:9090",endpoint="chat",model="gpt",provider="openai",status_class="cancelled"}"#,
                    "0+500x20",
                ),
            ],
            checks: vec![(
                "15m",
                "ModelBridgeHighErrorRatio",
                vec![vec![JOB, ("severity", "page")]],
            )],
        },
        Case {
            // 1 of 201 requests per minute fails: 0.5%.
            name: "healthy error ratio",
            series: vec![
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="gpt",provider="openai",status_class="2xx"}"#,
                    "0+200x20",
                ),
                (
                    r#"model_bridge_requests_total{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="gpt",provider="openai",status_class="5xx"}"#,
                    "0+1x20",
                ),
            ],
            checks: vec![("15m", "ModelBridgeHighErrorRatio", vec![])],
        },
        Case {
            name: "p99 latency and TTFT over their thresholds for one model, not another",
            series: vec![
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="slow",le="60"}"#,
                    "0x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="slow",le="120"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="slow",le="+Inf"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="fast",le="1"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="fast",le="60"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="fast",le="120"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_request_duration_seconds_bucket{job="model-bridge",instance="gw-a:9090",endpoint="chat",model="fast",le="+Inf"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="slow",le="10"}"#,
                    "0x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="slow",le="30"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="slow",le="+Inf"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="fast",le="1"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="fast",le="10"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="fast",le="30"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_time_to_first_token_seconds_bucket{job="model-bridge",instance="gw-a:9090",model="fast",le="+Inf"}"#,
                    "0+10x20",
                ),
            ],
            checks: vec![
                ("10m", "ModelBridgeHighLatencyP99", vec![]), // pending
                (
                    "16m",
                    "ModelBridgeHighLatencyP99",
                    vec![vec![JOB, ("model", "slow"), ("severity", "ticket")]],
                ),
                (
                    "16m",
                    "ModelBridgeHighTimeToFirstToken",
                    vec![vec![JOB, ("model", "slow"), ("severity", "ticket")]],
                ),
            ],
        },
        Case {
            name: "upstream failures and an open breaker on one target",
            series: vec![
                (
                    r#"model_bridge_upstream_attempts_total{job="model-bridge",instance="gw-a:9090",target="openai/gpt-4o",outcome="ok"}"#,
                    "0+10x20",
                ),
                (
                    r#"model_bridge_upstream_attempts_total{job="model-bridge",instance="gw-a:9090",target="openai/gpt-4o",outcome="5xx"}"#,
                    "0+5x20",
                ),
                (
                    r#"model_bridge_upstream_attempts_total{job="model-bridge",instance="gw-a:9090",target="openai/gpt-4o",outcome="breaker_open"}"#,
                    "0+50x20",
                ),
                (
                    r#"model_bridge_upstream_attempts_total{job="model-bridge",instance="gw-a:9090",target="azure/gpt-4o",outcome="ok"}"#,
                    "0+100x20",
                ),
                (
                    r#"model_bridge_upstream_attempts_total{job="model-bridge",instance="gw-a:9090",target="azure/gpt-4o",outcome="timeout"}"#,
                    "0+1x20",
                ),
                (
                    r#"model_bridge_breaker_state{job="model-bridge",instance="gw-a:9090",target="openai/gpt-4o"}"#,
                    "0 1x19",
                ),
                (
                    r#"model_bridge_breaker_state{job="model-bridge",instance="gw-a:9090",target="azure/gpt-4o"}"#,
                    "0 2 0x18",
                ),
            ],
            checks: vec![
                (
                    "15m",
                    "ModelBridgeUpstreamErrors",
                    vec![vec![
                        JOB,
                        ("target", "openai/gpt-4o"),
                        ("severity", "ticket"),
                    ]],
                ),
                (
                    "3m",
                    "ModelBridgeBreakerOpen",
                    vec![vec![
                        JOB,
                        ("target", "openai/gpt-4o"),
                        ("severity", "ticket"),
                    ]],
                ),
            ],
        },
        Case {
            name: "usage rows and audit events lost, then nothing more for a while",
            series: vec![
                (
                    r#"model_bridge_usage_sink_rows_total{job="model-bridge",instance="gw-a:9090",outcome="lost"}"#,
                    "0 0 3x20",
                ),
                (
                    r#"model_bridge_usage_sink_rows_total{job="model-bridge",instance="gw-a:9090",outcome="spooled"}"#,
                    "0+100x22",
                ),
                (
                    r#"model_bridge_audit_events_total{job="model-bridge",instance="gw-a:9090",outcome="lost"}"#,
                    "0 0 1x20",
                ),
                (
                    r#"model_bridge_usage_sink_rows_total{job="model-bridge",instance="gw-b:9090",outcome="lost"}"#,
                    "0x22",
                ),
            ],
            checks: vec![
                (
                    "3m",
                    "ModelBridgeUsageRowsLost",
                    vec![vec![JOB, A, ("outcome", "lost"), ("severity", "page")]],
                ),
                (
                    "3m",
                    "ModelBridgeAuditEventsLost",
                    vec![vec![JOB, A, ("outcome", "lost"), ("severity", "page")]],
                ),
                ("20m", "ModelBridgeUsageRowsLost", vec![]),
            ],
        },
        Case {
            name: "ClickHouse unreachable, then the spool fills",
            series: vec![
                (
                    r#"model_bridge_sink_clickhouse_up{job="model-bridge",instance="gw-a:9090",sink="usage"}"#,
                    "1 0x9",
                ),
                (
                    r#"model_bridge_sink_clickhouse_up{job="model-bridge",instance="gw-a:9090",sink="audit"}"#,
                    "1x10",
                ),
                (
                    r#"model_bridge_sink_spool_near_full{job="model-bridge",instance="gw-a:9090",sink="usage"}"#,
                    "0x5 1x5",
                ),
            ],
            checks: vec![
                ("2m", "ModelBridgeClickHouseUnreachable", vec![]),
                (
                    "4m",
                    "ModelBridgeClickHouseUnreachable",
                    vec![vec![JOB, A, ("sink", "usage"), ("severity", "ticket")]],
                ),
                ("4m", "ModelBridgeSpoolNearFull", vec![]),
                (
                    "7m",
                    "ModelBridgeSpoolNearFull",
                    vec![vec![JOB, A, ("sink", "usage"), ("severity", "page")]],
                ),
            ],
        },
        Case {
            name: "Redis down on one replica",
            series: vec![
                (
                    r#"model_bridge_limits_redis_up{job="model-bridge",instance="gw-a:9090"}"#,
                    "1 0x5",
                ),
                (
                    r#"model_bridge_limits_redis_up{job="model-bridge",instance="gw-b:9090"}"#,
                    "1x6",
                ),
            ],
            checks: vec![(
                "4m",
                "ModelBridgeRedisDown",
                vec![vec![JOB, A, ("severity", "page")]],
            )],
        },
        Case {
            // Both replicas report the shared (Redis) figure: max, not sum, of spend and limit.
            name: "budget near exhaustion, one under it, one without a limit",
            series: vec![
                (
                    r#"model_bridge_budget_spend_usd{job="model-bridge",instance="gw-a:9090",budget="acme"}"#,
                    "95x5",
                ),
                (
                    r#"model_bridge_budget_spend_usd{job="model-bridge",instance="gw-b:9090",budget="acme"}"#,
                    "95x5",
                ),
                (
                    r#"model_bridge_budget_limit_usd{job="model-bridge",instance="gw-a:9090",budget="acme"}"#,
                    "100x5",
                ),
                (
                    r#"model_bridge_budget_limit_usd{job="model-bridge",instance="gw-b:9090",budget="acme"}"#,
                    "100x5",
                ),
                (
                    r#"model_bridge_budget_spend_usd{job="model-bridge",instance="gw-a:9090",budget="acme/research"}"#,
                    "50x5",
                ),
                (
                    r#"model_bridge_budget_limit_usd{job="model-bridge",instance="gw-a:9090",budget="acme/research"}"#,
                    "100x5",
                ),
                (
                    r#"model_bridge_budget_spend_usd{job="model-bridge",instance="gw-a:9090",budget="beta"}"#,
                    "5x5",
                ),
                (
                    r#"model_bridge_budget_limit_usd{job="model-bridge",instance="gw-a:9090",budget="beta"}"#,
                    "0x5",
                ),
            ],
            checks: vec![(
                "1m",
                "ModelBridgeBudgetNearExhaustion",
                vec![vec![JOB, ("budget", "acme"), ("severity", "ticket")]],
            )],
        },
        Case {
            name: "a spend anomaly seen by two replicas, and a normal cost center",
            series: vec![
                (
                    r#"model_bridge_spend_anomaly_score{job="model-bridge",instance="gw-a:9090",org="acme",cost_center="sales",grain="day"}"#,
                    "6.5x5",
                ),
                (
                    r#"model_bridge_spend_anomaly_score{job="model-bridge",instance="gw-b:9090",org="acme",cost_center="sales",grain="day"}"#,
                    "6.5x5",
                ),
                (
                    r#"model_bridge_spend_anomaly_score{job="model-bridge",instance="gw-a:9090",org="acme",cost_center="eng",grain="day"}"#,
                    "0x5",
                ),
                (
                    r#"model_bridge_spend_anomaly_score{job="model-bridge",instance="gw-a:9090",org="acme",cost_center="",grain="hour"}"#,
                    "-5.1x5",
                ),
            ],
            checks: vec![(
                "1m",
                "ModelBridgeSpendAnomaly",
                vec![
                    vec![
                        JOB,
                        ("cost_center", "sales"),
                        ("grain", "day"),
                        ("org", "acme"),
                        ("severity", "ticket"),
                    ],
                    // An empty label is no label: the org as a whole.
                    vec![
                        JOB,
                        ("grain", "hour"),
                        ("org", "acme"),
                        ("severity", "ticket"),
                    ],
                ],
            )],
        },
        Case {
            name: "a scheduled eval regresses on one replica, another eval holds",
            series: vec![
                (
                    r#"model_bridge_eval_regression{job="model-bridge",instance="gw-a:9090",eval="support"}"#,
                    "0 0 1x5",
                ),
                (
                    r#"model_bridge_eval_regression{job="model-bridge",instance="gw-b:9090",eval="support"}"#,
                    "0x7",
                ),
                (
                    r#"model_bridge_eval_regression{job="model-bridge",instance="gw-a:9090",eval="billing"}"#,
                    "0x7",
                ),
            ],
            checks: vec![
                ("1m", "ModelBridgeEvalRegression", vec![]),
                (
                    "3m",
                    "ModelBridgeEvalRegression",
                    vec![vec![JOB, ("eval", "support"), ("severity", "ticket")]],
                ),
            ],
        },
        Case {
            name: "webhooks fail after their retries, then 30 quiet minutes",
            series: vec![
                (
                    r#"model_bridge_webhook_deliveries_total{job="model-bridge",instance="gw-a:9090",event="spend.anomaly",outcome="failed"}"#,
                    "0 1 1x40",
                ),
                (
                    r#"model_bridge_webhook_deliveries_total{job="model-bridge",instance="gw-a:9090",event="spend.anomaly",outcome="delivered"}"#,
                    "0 5 10x40",
                ),
            ],
            checks: vec![
                (
                    "3m",
                    "ModelBridgeWebhookFailing",
                    vec![vec![
                        JOB,
                        ("event", "spend.anomaly"),
                        ("outcome", "failed"),
                        ("severity", "ticket"),
                    ]],
                ),
                ("40m", "ModelBridgeWebhookFailing", vec![]),
            ],
        },
        Case {
            // A fresh process exposes failure=0 (primed), so its very first failure is an increase.
            name: "config reload fails on a fresh process, then 15 quiet minutes",
            series: vec![
                (
                    r#"model_bridge_config_reloads_total{job="model-bridge",instance="gw-a:9090",result="failure"}"#,
                    "0 0 1x25",
                ),
                (
                    r#"model_bridge_config_reloads_total{job="model-bridge",instance="gw-a:9090",result="success"}"#,
                    "0x27",
                ),
                (
                    r#"model_bridge_config_reloads_total{job="model-bridge",instance="gw-b:9090",result="failure"}"#,
                    "0x27",
                ),
            ],
            checks: vec![
                (
                    "3m",
                    "ModelBridgeConfigReloadFailed",
                    vec![vec![JOB, A, ("result", "failure"), ("severity", "ticket")]],
                ),
                ("25m", "ModelBridgeConfigReloadFailed", vec![]),
            ],
        },
        Case {
            // promtool's clock starts at 0: the values are notAfter in seconds from then.
            name: "certificates: 2 days, 10 days and 90 days left",
            series: vec![
                (
                    r#"model_bridge_tls_cert_not_after_seconds{job="model-bridge",instance="gw-a:9090",listener="data"}"#,
                    "172800x3",
                ),
                (
                    r#"model_bridge_tls_cert_not_after_seconds{job="model-bridge",instance="gw-b:9090",listener="data"}"#,
                    "864000x3",
                ),
                (
                    r#"model_bridge_tls_cert_not_after_seconds{job="model-bridge",instance="gw-c:9090",listener="data"}"#,
                    "7776000x3",
                ),
            ],
            checks: vec![
                (
                    "1m",
                    "ModelBridgeCertificateExpiring",
                    vec![
                        vec![JOB, A, ("listener", "data"), ("severity", "ticket")],
                        vec![
                            JOB,
                            ("instance", "gw-b:9090"),
                            ("listener", "data"),
                            ("severity", "ticket"),
                        ],
                    ],
                ),
                (
                    "1m",
                    "ModelBridgeCertificateExpiringSoon",
                    vec![vec![JOB, A, ("listener", "data"), ("severity", "page")]],
                ),
            ],
        },
    ]
}

fn promtool() -> Command {
    Command::new("promtool")
}

#[test]
fn rules_pass_promtool_check() {
    let out = promtool()
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The promtool unit-test document for `cases`.
fn test_document(cases: &[Case]) -> Value {
    let ann = annotations();
    let tests: Vec<Value> = cases
        .iter()
        .map(|c| {
            let series: Vec<Value> = c
                .series
                .iter()
                .map(|(s, v)| json!({"series": s, "values": v}))
                .collect();
            let alerts: Vec<Value> = c
                .checks
                .iter()
                .map(|(at, alert, firing)| {
                    let templates = ann
                        .get(*alert)
                        .unwrap_or_else(|| panic!("{}: no alert {alert} in the rules", c.name));
                    let exp: Vec<Value> = firing
                        .iter()
                        .map(|labels| {
                            let labels: BTreeMap<String, String> = labels
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect();
                            let annotations: BTreeMap<&String, String> = templates
                                .iter()
                                .map(|(k, t)| (k, render(t, &labels)))
                                .collect();
                            json!({"exp_labels": labels, "exp_annotations": annotations})
                        })
                        .collect();
                    json!({"eval_time": at, "alertname": alert, "exp_alerts": exp})
                })
                .collect();
            json!({"name": c.name, "interval": "1m", "input_series": series, "alert_rule_test": alerts})
        })
        .collect();
    json!({
        "rule_files": [rules_path()],
        "evaluation_interval": "1m",
        "tests": tests,
    })
}

fn promtool_test(doc: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.test.yml");
    std::fs::write(&path, serde_yaml::to_string(doc).expect("YAML")).expect("write test file");
    let out = promtool()
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_alert_fires_on_its_fault_and_not_on_healthy_series() {
    let cases = cases();
    let ann = annotations();
    // Every alert in the file is exercised firing at least once.
    for alert in ann.keys() {
        assert!(
            cases
                .iter()
                .flat_map(|c| &c.checks)
                .any(|(_, a, firing)| a == alert && !firing.is_empty()),
            "alert {alert} has no firing scenario here"
        );
    }
    for (k, v) in &ann {
        assert!(
            v.contains_key("runbook") && v.contains_key("summary"),
            "{k} lacks a runbook or summary"
        );
    }
    let (ok, out) = promtool_test(&test_document(&cases));
    assert!(ok, "promtool test rules:\n{out}");
}

/// The harness can fail: an alert expected where the series are healthy is reported.
#[test]
fn a_wrong_expectation_fails_promtool() {
    let case = Case {
        name: "healthy Redis is not an alert",
        series: vec![(
            r#"model_bridge_limits_redis_up{job="model-bridge",instance="gw-a:9090"}"#,
            "1x6",
        )],
        checks: vec![(
            "4m",
            "ModelBridgeRedisDown",
            vec![vec![JOB, A, ("severity", "page")]],
        )],
    };
    let (ok, out) = promtool_test(&test_document(&[case]));
    assert!(!ok, "promtool accepted an alert that cannot fire:\n{out}");
}

/// Every Prometheus query in the shipped Grafana dashboards parses (promtool) and is scoped to
/// the `job` / `instance` variables, so a fleet is one view and one replica can be picked.
#[test]
fn dashboard_queries_parse_and_follow_job_and_instance() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let selector = regex::Regex::new(r"(model_bridge_[a-z_]+)(\{[^}]*\})?").unwrap();
    let mut rules = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .map(|l| l.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        let prometheus = d["templating"]["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|v| v["query"] == "prometheus"));
        if !prometheus {
            continue;
        }
        assert!(
            vars.contains(&"job") && vars.contains(&"instance"),
            "{}: no job / instance variables",
            path.display()
        );
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                for m in selector.captures_iter(expr) {
                    let labels = m.get(2).map(|l| l.as_str()).unwrap_or("");
                    assert!(
                        labels.contains(r#"job=~"$job""#)
                            && labels.contains(r#"instance=~"$instance""#),
                        "{}: {} is not scoped to $job / $instance in {expr}",
                        path.display(),
                        &m[1]
                    );
                }
                let concrete = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$job", ".*")
                    .replace("$instance", ".*")
                    .replace("$model", ".*");
                rules.push(json!({"record": "dashboard:query", "expr": concrete}));
            }
        }
    }
    assert!(rules.len() > 20, "dashboard queries found: {}", rules.len());
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboards.rules.yml");
    let doc = json!({"groups": [{"name": "dashboards", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Identity through the real HTTP surface: virtual keys (created with the CLI against a running
//! gateway), tenant isolation, RBAC decisions, attribution overrides, revocation and expiry,
//! audit events, and no secret in any output.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn auth_config(dir: &std::path::Path) -> String {
    let policies = policies_dir(
        dir,
        r#"
[roles.mini-only]
permissions = ["model:invoke:gpt-4o*", "endpoint:chat_completions"]

[[bindings]]
subject = "user:alice@a.test"
roles = ["finance"]
org = "a"

[[bindings]]
subject = "user:old@a.test"
roles = ["finance"]
expires_at = "2020-01-01T00:00:00Z"
"#,
    );
    format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[audit]
path = "audit.jsonl"

[orgs.a]
default_cost_center = "a-eng"
[orgs.a.cost_centers.a-eng]
department = "Engineering"
[orgs.a.cost_centers.a-research]
department = "Research"
[orgs.a.teams.ml]
default_cost_center = "a-research"

[orgs.b]
[orgs.b.cost_centers.b-ops]
department = "Ops"

[models."a-private"]
provider = "mock"
org = "a"

[models."b-private"]
provider = "mock"
org = "b"
"#,
        policies.display()
    )
}

/// The gateway, and the temp dir holding its policies (kept alive as long as the gateway).
fn start() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let extra = auth_config(dir.path());
    (Gateway::start_with(&[], &extra), dir)
}

async fn call(
    g: &Gateway,
    key: Option<&str>,
    model: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client()
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), h)
}

/// Waits until the gateway sees a key created by the CLI.
async fn wait_key(g: &Gateway, key: &str) {
    let start = Instant::now();
    while call(g, Some(key), "gpt-4o-mini", &[]).await.0 == 401 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gateway never saw the new key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn models_of(g: &Gateway, key: &str) -> Vec<String> {
    let v: Value = client()
        .get(g.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn keys_tenancy_rbac_attribution_and_audit() {
    let (g, _policies) = start();
    let (ka, ida) = g.create_key(&["--org", "a", "--role", "invoker", "--name", "a-app"]);
    let (ka_ml, _) = g.create_key(&["--org", "a", "--team", "ml", "--role", "invoker"]);
    let (kb, _) = g.create_key(&["--org", "b", "--role", "developer"]);
    let (k_mini, _) = g.create_key(&["--org", "a", "--role", "mini-only"]);
    let (k_alice, _) = g.create_key(&["--org", "a", "--user", "alice@a.test", "--role", "invoker"]);
    let (k_old, _) = g.create_key(&["--org", "a", "--user", "old@a.test", "--role", "invoker"]);
    let (k_expired, _) = g.create_key(&[
        "--org",
        "a",
        "--role",
        "invoker",
        "--expires-at",
        "2021-01-01T00:00:00Z",
    ]);
    // Created last, so waiting for it below means every earlier key is loaded too.
    let (k_listed, _) =
        g.create_key(&["--org", "a", "--role", "invoker", "--model", "gpt-4o-mini"]);
    for k in [&ka, &ka_ml, &kb, &k_mini, &k_alice, &k_old, &k_listed] {
        wait_key(&g, k).await;
    }

    // 401: missing, malformed, unknown, expired — one message for the last three.
    let (s, v, h) = call(&g, None, "gpt-4o-mini", &[]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    // Classified from the path before authentication, and not an unpriced request.
    let rec = g.record(h["x-request-id"].to_str().unwrap());
    assert_eq!(
        (rec["endpoint"].as_str(), rec["cost_nanousd"].as_i64()),
        (Some("chat_completions"), Some(0)),
        "{rec}"
    );
    let m = g.metrics().await;
    assert!(
        m.contains(r#"model_bridge_requests_total{endpoint="chat_completions",model="unknown",provider="none",status_class="4xx"}"#),
        "{m}"
    );
    let (s, malformed, _) = call(&g, Some("sk-not-ours"), "gpt-4o-mini", &[]).await;
    assert_eq!(s, 401);
    let fake = format!("mbk_{}_{}", "Z".repeat(12), "q".repeat(40));
    let (s, unknown, _) = call(&g, Some(&fake), "gpt-4o-mini", &[]).await;
    assert_eq!(s, 401);
    let (s, expired, _) = call(&g, Some(&k_expired), "gpt-4o-mini", &[]).await;
    assert_eq!(s, 401);
    assert_eq!(unknown, expired);
    assert_eq!(unknown, malformed);

    // Tenancy: shared and own aliases work; the other org's alias does not exist.
    let table: &[(&str, &str, u16)] = &[
        (&ka, "gpt-4o-mini", 200),
        (&ka, "a-private", 200),
        (&ka, "b-private", 404),
        (&kb, "b-private", 200),
        (&kb, "a-private", 404),
        (&k_mini, "gpt-4o-mini", 200),
        (&k_mini, "same-name", 403),
        (&k_listed, "gpt-4o-mini", 200),
        (&k_listed, "same-name", 403),
    ];
    for (key, model, want) in table {
        let (s, v, _) = call(&g, Some(key), model, &[]).await;
        assert_eq!(s, *want, "{model}: {v}");
        if *want == 403 {
            assert_eq!(v["error"]["code"], "permission_denied");
        }
    }
    let a_models = models_of(&g, &ka).await;
    assert!(
        a_models.contains(&"a-private".to_string()) && !a_models.contains(&"b-private".to_string()),
        "{a_models:?}"
    );
    let b_models = models_of(&g, &kb).await;
    assert!(
        b_models.contains(&"b-private".to_string()) && !b_models.contains(&"a-private".to_string()),
        "{b_models:?}"
    );
    assert_eq!(models_of(&g, &k_listed).await, ["gpt-4o-mini"]);
    let r = client()
        .get(g.url("/v1/models/b-private"))
        .bearer_auth(&ka)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Endpoint permissions: mini-only may not embed; invoker may not pass through.
    let r = client()
        .post(g.url("/v1/embeddings"))
        .bearer_auth(&k_mini)
        .json(&json!({"model": "gpt-4o-mini", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .get(g.url("/v1/files"))
        .bearer_auth(&ka)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .get(g.url("/v1/files"))
        .bearer_auth(&kb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "developer may pass through");

    // Attribution: defaults, overrides only with permission and only into the own org.
    let (_, _, h) = call(&g, Some(&ka), "gpt-4o-mini", &[]).await;
    let rec = g.record(h["x-request-id"].to_str().unwrap());
    assert_eq!(
        (
            rec["org"].as_str(),
            rec["cost_center"].as_str(),
            rec["department"].as_str()
        ),
        (Some("a"), Some("a-eng"), Some("Engineering"))
    );
    assert_eq!(rec["key_id"], ida.as_str());
    let (_, _, h) = call(&g, Some(&ka_ml), "gpt-4o-mini", &[]).await;
    let rec = g.record(h["x-request-id"].to_str().unwrap());
    assert_eq!(
        (rec["team"].as_str(), rec["cost_center"].as_str()),
        (Some("ml"), Some("a-research"))
    );
    let (s, _, _) = call(
        &g,
        Some(&ka),
        "gpt-4o-mini",
        &[("x-model-bridge-cost-center", "a-research")],
    )
    .await;
    assert_eq!(s, 403, "invoker may not override attribution");
    let over = [
        ("x-model-bridge-cost-center", "a-research"),
        ("x-model-bridge-project", "p1"),
        ("x-model-bridge-tags", "x, y"),
    ];
    let (s, _, h) = call(&g, Some(&k_alice), "gpt-4o-mini", &over).await;
    assert_eq!(s, 200, "alice is bound to finance");
    let rec = g.record(h["x-request-id"].to_str().unwrap());
    assert_eq!(
        (
            rec["cost_center"].as_str(),
            rec["department"].as_str(),
            rec["project"].as_str()
        ),
        (Some("a-research"), Some("Research"), Some("p1"))
    );
    assert_eq!(rec["tags"], json!(["x", "y"]));
    assert_eq!(rec["user"], "alice@a.test");
    let (s, _, _) = call(
        &g,
        Some(&k_alice),
        "gpt-4o-mini",
        &[("x-model-bridge-cost-center", "b-ops")],
    )
    .await;
    assert_eq!(s, 403, "no attribution into another org's cost center");
    let (s, _, _) = call(
        &g,
        Some(&k_old),
        "gpt-4o-mini",
        &[("x-model-bridge-cost-center", "a-research")],
    )
    .await;
    assert_eq!(s, 403, "expired binding grants nothing");

    // Revocation through the CLI: refused on a following request.
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["keys", "revoke", "--config"])
        .arg(&g.config)
        .arg(&ida)
        .env("MB_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    loop {
        let (s, v, _) = call(&g, Some(&ka), "gpt-4o-mini", &[]).await;
        if s == 401 {
            assert_eq!(v, unknown, "revoked looks like unknown to the caller");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation not effective"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Audit: failures and denials, never secrets; no secret anywhere on disk or in logs.
    let audit_path = g.dir.path().join("audit.jsonl");
    let events = wait_lines(&audit_path, |ev| {
        ev.iter()
            .any(|e| e["action"] == "auth.failed" && e["reason"] == "revoked")
    });
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(events
        .iter()
        .any(|e| e["action"] == "auth.failed" && e["reason"] == "expired"));
    assert!(events
        .iter()
        .any(|e| e["action"] == "rbac.denied" && e["resource"] == "model:same-name"));
    assert!(events.iter().any(|e| e["action"] == "key.create"));
    assert!(events
        .iter()
        .any(|e| e["action"] == "key.revoke" && e["resource"] == format!("key:{ida}")));
    let m = g.metrics().await;
    assert!(
        m.contains(r#"model_bridge_auth_failures_total{reason="revoked"}"#),
        "{m}"
    );
    // The key store (the embedded control store's file) holds hashes only.
    let mut store_bytes = std::fs::read(g.dir.path().join("control.db")).unwrap();
    store_bytes.extend(std::fs::read(g.dir.path().join("control.db-wal")).unwrap_or_default());
    let keys_file = String::from_utf8_lossy(&store_bytes).to_string();
    let usage = std::fs::read_to_string(&g.usage).unwrap();
    for secret in [&ka, &kb, &k_alice, &k_expired, &ka_ml] {
        for (what, text) in [
            ("log", g.log_text()),
            ("audit", audit.clone()),
            ("usage", usage.clone()),
            ("control.db", keys_file.clone()),
            ("metrics", m.clone()),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {what}"
            );
        }
    }
}

#[test]
fn check_rejects_bad_policies_and_key_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = auth_config(dir.path());
    std::fs::write(
        dir.path().join("policies/cycle.toml"),
        "[roles.x]\ninherits = [\"y\"]\n[roles.y]\ninherits = [\"x\"]\n",
    )
    .unwrap();
    extra.push_str("\n[[auth.keys]]\nid = \"ABCDEFGHIJKL\"\nsha256 = \"00\"\norg = \"nope\"\n");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config_text(1, 2, "http://127.0.0.1:9/v1", &dir.path().join("u"), &extra),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("MB_TEST_PROVIDER_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inheritance cycle"), "{err}");
    assert!(err.contains("auth.keys.0.sha256"), "{err}");
    assert!(err.contains("unknown org `nope`"), "{err}");
}

//! The admin API through its real HTTP surface: RBAC on every route, org isolation, the key
//! lifecycle (create → secret once, list without secrets, revoke, rotate), pagination, audit of
//! every write, and an OpenAPI document that matches the routes.

mod common;

use common::*;
use serde_json::{json, Value};

/// Distinct paths in the admin route table (a new route must be added here deliberately).
const ROUTE_PATHS: usize = 48;

fn start() -> (Gateway, tempfile::TempDir) {
    start_with_policies("")
}

fn start_with_policies(bindings: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir(dir.path(), bindings);
    let extra = format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[audit]
path = "audit.jsonl"

[orgs.a]
name = "Org A"
[orgs.a.teams.ml]
[orgs.a.cost_centers.a-cc]
department = "R&D"

[orgs.b]
[orgs.b.cost_centers.b-cc]
"#,
        policies.display()
    );
    (Gateway::start_with(&[], &extra), dir)
}

async fn admin(
    g: &Gateway,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = client();
    let mut req = match method {
        "GET" => c.get(g.ops_url(path)),
        "DELETE" => c.delete(g.ops_url(path)),
        "PUT" => c.put(g.ops_url(path)),
        _ => c.post(g.ops_url(path)),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn chat_status(g: &Gateway, key: &str) -> u16 {
    client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn admin_api_rbac_isolation_lifecycle_and_audit() {
    let (g, _dir) = start();
    let (admin_a, admin_a_id) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    let (admin_b, _) = g.create_key(&["--org", "b", "--role", "org-admin"]);
    let (root, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    let (invoker, _) = g.create_key(&["--org", "a", "--role", "invoker"]);
    // The store file was written by another process: wait until the gateway has the last key.
    g.wait_key(&invoker).await;

    // Authentication and per-route permissions.
    assert_eq!(
        admin(&g, None, "GET", "/admin/v1/whoami", None).await.0,
        401
    );
    let (s, who) = admin(&g, Some(&admin_a), "GET", "/admin/v1/whoami", None).await;
    assert_eq!(
        (s, who["org"].as_str(), who["key_id"].as_str()),
        (200, Some("a"), Some(admin_a_id.as_str()))
    );
    let (s, v) = admin(&g, Some(&invoker), "GET", "/admin/v1/orgs/a/keys", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );
    assert_eq!(
        admin(&g, Some(&admin_a), "POST", "/admin/v1/reload", None)
            .await
            .0,
        403
    );
    assert_eq!(
        admin(&g, Some(&root), "POST", "/admin/v1/reload", None)
            .await
            .0,
        200
    );

    // Org isolation: org A's admin sees nothing of org B.
    let (_, orgs) = admin(&g, Some(&admin_a), "GET", "/admin/v1/orgs", None).await;
    assert_eq!(orgs["data"].as_array().unwrap().len(), 1);
    for (m, path, body) in [
        ("GET", "/admin/v1/orgs/b", None),
        ("GET", "/admin/v1/orgs/b/keys", None),
        ("GET", "/admin/v1/orgs/b/cost_centers", None),
        ("POST", "/admin/v1/orgs/b/keys", Some(json!({"roles": []}))),
    ] {
        assert_eq!(
            admin(&g, Some(&admin_a), m, path, body).await.0,
            404,
            "{m} {path}"
        );
    }
    let (_, b_keys) = admin(&g, Some(&admin_b), "GET", "/admin/v1/orgs/b/keys", None).await;
    let b_key_id = b_keys["data"][0]["id"].as_str().unwrap().to_string();
    let revoke_b = format!("/admin/v1/orgs/b/keys/{b_key_id}/revoke");
    assert_eq!(
        admin(&g, Some(&admin_a), "POST", &revoke_b, None).await.0,
        404
    );
    let cross = format!("/admin/v1/orgs/a/keys/{b_key_id}");
    assert_eq!(
        admin(&g, Some(&admin_a), "GET", &cross, None).await.0,
        404,
        "B's key is not in A"
    );
    let (_, all) = admin(&g, Some(&root), "GET", "/admin/v1/orgs", None).await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        2,
        "super-admin sees every org"
    );

    // Key lifecycle: the secret once, usable at once; no escalation beyond held roles.
    let (s, made) = admin(
        &g,
        Some(&admin_a),
        "POST",
        "/admin/v1/orgs/a/keys",
        Some(json!({"name": "svc", "roles": ["invoker"], "cost_center": "a-cc"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let secret = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(made.get("hash").is_none());
    assert_eq!(chat_status(&g, &secret).await, 200);
    let (s, _) = admin(
        &g,
        Some(&admin_a),
        "POST",
        "/admin/v1/orgs/a/keys",
        Some(json!({"roles": ["super-admin"]})),
    )
    .await;
    assert_eq!(s, 403, "cannot grant a role one does not hold");
    let (s, _) = admin(
        &g,
        Some(&admin_a),
        "POST",
        "/admin/v1/orgs/a/keys",
        Some(json!({"roles": ["invoker"], "cost_center": "b-cc"})),
    )
    .await;
    assert_eq!(s, 400, "another org's cost center");
    let (s, got) = admin(
        &g,
        Some(&admin_a),
        "GET",
        &format!("/admin/v1/orgs/a/keys/{id}"),
        None,
    )
    .await;
    assert_eq!((s, got["name"].as_str()), (200, Some("svc")));
    assert!(got.get("key").is_none() && got.get("hash").is_none());

    let (s, rotated) = admin(
        &g,
        Some(&admin_a),
        "POST",
        &format!("/admin/v1/orgs/a/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let new_secret = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(
        chat_status(&g, &secret).await,
        401,
        "rotated-out key refused on its next request"
    );
    assert_eq!(chat_status(&g, &new_secret).await, 200);
    let new_id = rotated["id"].as_str().unwrap().to_string();
    let (s, _) = admin(
        &g,
        Some(&admin_a),
        "POST",
        &format!("/admin/v1/orgs/a/keys/{new_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        chat_status(&g, &new_secret).await,
        401,
        "revoked key refused on its next request"
    );

    // Pagination.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/admin/v1/orgs/a/keys?limit=2".to_string()
        } else {
            format!("/admin/v1/orgs/a/keys?limit=2&after={after}")
        };
        let (_, page) = admin(&g, Some(&admin_a), "GET", &path, None).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().unwrap().to_string();
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 5, "org A has 5 keys: {seen:?}");
    let (s, _) = admin(
        &g,
        Some(&admin_a),
        "GET",
        "/admin/v1/orgs/a/keys?limit=0",
        None,
    )
    .await;
    assert_eq!(s, 400);

    // Read-only listings.
    for path in [
        "/admin/v1/roles",
        "/admin/v1/bindings",
        "/admin/v1/orgs/a/teams",
        "/admin/v1/orgs/a/cost_centers",
        "/admin/v1/orgs/a/users",
        "/admin/v1/orgs/a",
    ] {
        assert_eq!(
            admin(&g, Some(&admin_a), "GET", path, None).await.0,
            200,
            "{path}"
        );
    }

    // The OpenAPI document matches the routes: every documented operation is served.
    let (s, doc) = admin(&g, None, "GET", "/admin/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), ROUTE_PATHS);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{org}", "a")
                .replace("{id}", &admin_a_id)
                .replace("{role}", "developer");
            let (s, v) = admin(
                &g,
                Some(&root),
                &method.to_uppercase(),
                &concrete,
                if method == "post" {
                    Some(json!({}))
                } else {
                    None
                },
            )
            .await;
            assert!(
                v["error"]["code"] != "unknown_url" && s != 405,
                "{method} {path} is documented but not served ({s})"
            );
        }
    }
    assert_eq!(
        admin(&g, Some(&root), "GET", "/admin/v1/nothing", None)
            .await
            .1["error"]["code"],
        "unknown_url"
    );

    // Audit of every write, without secrets.
    let audit_path = g.dir.path().join("audit.jsonl");
    let wanted = [
        "key.create",
        "key.rotate",
        "key.revoke",
        "config.reload",
        "config.reload.request",
        "admin.denied",
    ];
    let events = wait_lines(&audit_path, |ev| {
        wanted.iter().all(|a| ev.iter().any(|e| e["action"] == *a))
    });
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let writes: Vec<&str> = events
        .iter()
        .filter(|e| e["outcome"] == "succeeded")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "key.create",
        "key.rotate",
        "key.revoke",
        "config.reload",
        "config.reload.request",
    ] {
        assert!(writes.contains(&action), "{action} not audited: {writes:?}");
    }
    let rotate = events.iter().find(|e| e["action"] == "key.rotate").unwrap();
    assert_eq!(rotate["before"]["id"], id.as_str());
    assert!(rotate["client_ip"].is_string() && rotate["actor"] == format!("key:{admin_a_id}"));
    assert!(events.iter().any(|e| e["action"] == "admin.denied"));
    for s in [&secret, &new_secret, &admin_a, &root] {
        assert!(!audit.contains(s.as_str()) && !g.log_text().contains(s.as_str()));
    }
}

#[tokio::test]
async fn keys_created_through_the_api_survive_a_crash() {
    let (mut g, _dir) = start();
    let (root, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    g.wait_key(&root).await;
    let (_, kept) = admin(
        &g,
        Some(&root),
        "POST",
        "/admin/v1/orgs/a/keys",
        Some(json!({"roles": ["invoker"]})),
    )
    .await;
    let (_, gone) = admin(
        &g,
        Some(&root),
        "POST",
        "/admin/v1/orgs/a/keys",
        Some(json!({"roles": ["invoker"]})),
    )
    .await;
    let gone_id = gone["id"].as_str().unwrap();
    let (s, _) = admin(
        &g,
        Some(&root),
        "POST",
        &format!("/admin/v1/orgs/a/keys/{gone_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    g.crash_and_restart();
    assert_eq!(chat_status(&g, kept["key"].as_str().unwrap()).await, 200);
    assert_eq!(chat_status(&g, gone["key"].as_str().unwrap()).await, 401);
}

/// A key carries every binding of the user it names: an org admin must not be able to name a
/// super-admin (or a user of another org) and so mint a key with more power than its own.
#[tokio::test]
async fn a_key_cannot_exceed_its_creator_through_its_user() {
    let (g, _dir) = start_with_policies(
        r#"
[[bindings]]
subject = "user:boss@corp.test"
roles = ["super-admin"]

[[bindings]]
subject = "user:bob@b.test"
roles = ["invoker"]
org = "b"

[[bindings]]
subject = "user:alice@a.test"
roles = ["invoker"]
org = "a"
"#,
    );
    let (admin_a, _) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    let (root, _) = g.create_key(&["--org", "a", "--role", "super-admin"]);
    g.wait_key(&root).await;
    let create = |key: String, body: Value| {
        let g = &g;
        async move { admin(g, Some(&key), "POST", "/admin/v1/orgs/a/keys", Some(body)).await }
    };
    // The exploit: an allowed role plus a super-admin's user name.
    let (s, v) = create(
        admin_a.clone(),
        json!({"roles": ["invoker"], "user": "boss@corp.test"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    // A user of another org.
    let (s, v) = create(
        admin_a.clone(),
        json!({"roles": ["invoker"], "user": "bob@b.test"}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("org `b`"),
        "{v}"
    );
    // A user of the caller's org, and a new user, are fine; the key does not list org B.
    for user in ["alice@a.test", "new@a.test"] {
        let (s, v) = create(admin_a.clone(), json!({"roles": ["invoker"], "user": user})).await;
        assert_eq!(s, 201, "{user}: {v}");
    }
    // The super-admin may name the super-admin user; rotating that key as the org admin fails.
    let (s, boss_key) = create(
        root.clone(),
        json!({"roles": ["invoker"], "user": "boss@corp.test"}),
    )
    .await;
    assert_eq!(s, 201, "{boss_key}");
    let id = boss_key["id"].as_str().unwrap();
    let (s, _) = admin(
        &g,
        Some(&admin_a),
        "POST",
        &format!("/admin/v1/orgs/a/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(s, 403, "rotation re-issues the user's bindings too");
    // No key the org admin created can reach org B.
    let (_, keys) = admin(
        &g,
        Some(&admin_a),
        "GET",
        "/admin/v1/orgs/a/keys?limit=100",
        None,
    )
    .await;
    for k in keys["data"].as_array().unwrap() {
        assert_ne!(k["user"], "bob@b.test");
    }
    assert_eq!(
        admin(&g, Some(&admin_a), "GET", "/admin/v1/orgs/b/keys", None)
            .await
            .0,
        404
    );
}

//! The shared control store, with gateways as child processes: three replicas on one real
//! PostgreSQL see each other's key creations and revocations; PostgreSQL killed under load
//! costs no data-plane request, admin writes answer 503, and everything catches up when it
//! returns. The embedded SQLite store imports the JSON key store on first start and follows
//! what the CLI writes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Propagation is specified as within 1 s; the deadline here leaves room for a loaded CI
/// machine, and the time it took is printed.
const PROPAGATION: Duration = Duration::from_secs(5);

fn tenants(dir: &std::path::Path, control: &str) -> String {
    let policies = policies_dir(dir, "");
    format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[orgs.acme]
[orgs.beta]

{control}
"#,
        policies.display()
    )
}

async fn models_status(g: &Gateway, key: &str) -> u16 {
    client()
        .get(g.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `key` gets `want` from every gateway; returns how long it took.
async fn everywhere(gs: &[&Gateway], key: &str, want: u16) -> Duration {
    let start = Instant::now();
    eventually(PROPAGATION, || async {
        for g in gs {
            let s = models_status(g, key).await;
            if s != want {
                return Err(format!("{} answered {s}", g.port));
            }
        }
        Ok(())
    })
    .await;
    start.elapsed()
}

/// Creates a developer key of acme through `g`'s admin API as `caller`: (status, answer).
async fn api_key(g: &Gateway, caller: &str) -> (u16, Value) {
    admin(
        g,
        caller,
        "POST",
        "/admin/v1/orgs/acme/keys",
        json!({"roles": ["developer"]}),
    )
    .await
}

#[tokio::test]
async fn three_replicas_share_keys_through_postgres() {
    let pg = PrivatePostgres::start();
    // The version check is a minute apart: what arrives within the deadline came by NOTIFY.
    let control = format!(
        "[control]\nstore = \"postgres\"\nurl = \"{}\"\npoll_ms = 60000\n",
        pg.url
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let gs: Vec<Gateway> = dirs
        .iter()
        .map(|d| Gateway::start_with(&[], &tenants(d.path(), &control)))
        .collect();
    let all: Vec<&Gateway> = gs.iter().collect();
    for g in &gs {
        g.wait_metric("model_bridge_control_store_up", 1.0, PROPAGATION)
            .await;
    }
    // A key made with the CLI of replica 1 works on all three.
    let (root, _) = gs[0].create_key(&["--org", "acme", "--role", "org-admin"]);
    let took = everywhere(&all, &root, 200).await;
    eprintln!("CLI key on every replica after {took:?}");

    // A key created through replica 1's admin API authenticates on 2 and 3.
    let (s, v) = api_key(&gs[0], &root).await;
    assert_eq!(s, 201, "{v}");
    let (dev, dev_id) = (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    );
    let took = everywhere(&all, &dev, 200).await;
    eprintln!("API key on every replica after {took:?}");
    // Listed the same everywhere, never with its secret or hash.
    for g in &gs {
        let (s, v) = admin(g, &root, "GET", "/admin/v1/orgs/acme/keys", Value::Null).await;
        assert_eq!(s, 200);
        let text = v.to_string();
        assert!(text.contains(&dev_id) && !text.contains(&dev) && !text.contains("hash"));
    }

    // Revoked on replica 3: refused on 1 and 2.
    let (s, v) = admin(
        &gs[2],
        &root,
        "POST",
        &format!("/admin/v1/orgs/acme/keys/{dev_id}/revoke"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let took = everywhere(&all, &dev, 401).await;
    eprintln!("revocation on every replica after {took:?}");

    // PostgreSQL killed under load: the data plane keeps serving from the snapshot, admin
    // writes answer 503, the store is reported down.
    let (s, v) = api_key(&gs[1], &root).await;
    assert_eq!(s, 201, "{v}");
    let live = v["key"].as_str().unwrap().to_string();
    everywhere(&all, &live, 200).await;
    pg.kill();
    let load = {
        let urls: Vec<String> = gs.iter().map(|g| g.url("/v1/chat/completions")).collect();
        let key = live.clone();
        tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for i in 0..150 {
                let r = c
                    .post(&urls[i % urls.len()])
                    .bearer_auth(&key)
                    .json(&chat("gpt-4o-mini", false))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                let _ = r.bytes().await;
            }
            statuses
        })
    };
    for g in &gs {
        g.wait_metric("model_bridge_control_store_up", 0.0, PROPAGATION)
            .await;
    }
    let (s, v) = api_key(&gs[0], &root).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "control_store_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().is_some());
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every data-plane request served during the outage: {statuses:?}"
    );

    // Back: every replica reconnects; a key created now works everywhere, and nothing made
    // before the outage was lost.
    pg.restart();
    for g in &gs {
        g.wait_metric(
            "model_bridge_control_store_up",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    }
    let (s, v) = admin(
        &gs[2],
        &root,
        "POST",
        "/admin/v1/orgs/beta/keys",
        json!({"roles": ["developer"]}),
    )
    .await;
    // An org-admin of acme may not make keys in beta.
    assert_eq!(s, 404, "{v}");
    let (s, v) = api_key(&gs[2], &root).await;
    assert_eq!(s, 201, "{v}");
    everywhere(&all, v["key"].as_str().unwrap(), 200).await;
    everywhere(&all, &live, 200).await;
    everywhere(&all, &dev, 401).await;
    // The secret and the store's password-bearing URL never reach a log.
    for g in &gs {
        let log = g.log_text();
        assert!(!log.contains(&live) && !log.contains(&root));
        assert!(!log.contains(&pg.url));
    }
}

#[tokio::test]
async fn the_sqlite_store_imports_the_json_store_and_follows_the_cli() {
    // A key store an older version left: the JSON file, one key in it.
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_with(&[], &tenants(dir.path(), ""));
    g.stop();
    g.wait_exit(Duration::from_secs(20));
    let base = g.config.parent().unwrap().to_path_buf();
    let _ = std::fs::remove_file(base.join("control.db"));
    let _ = std::fs::remove_file(base.join("control.db-wal"));
    let _ = std::fs::remove_file(base.join("control.db-shm"));
    let (old, id, hash) = model_bridge::auth::keys::generate();
    let record: model_bridge::auth::keys::KeyRecord = serde_json::from_value(json!({
        "id": id, "hash": hash, "org": "acme", "roles": ["developer"], "created_at": 1,
    }))
    .unwrap();
    {
        use model_bridge::auth::store::KeyStore;
        model_bridge::auth::store::FileKeyStore::open(&base.join("keys.json"))
            .unwrap()
            .insert(record)
            .unwrap();
    }
    // The embedded control store (the default) imports it on start and retires the file.
    g.restart();
    assert_eq!(models_status(&g, &old).await, 200);
    let base = g.config.parent().unwrap().to_path_buf();
    assert!(base.join("control.db").exists());
    assert!(!base.join("keys.json").exists());
    assert!(base.join("keys.json.imported").exists());
    // A key the CLI writes into the store reaches the running gateway; so does a revocation.
    let (new, new_id) = g.create_key(&["--org", "acme", "--role", "developer"]);
    everywhere(&[&g], &new, 200).await;
    let (ok, out, err) = g.cli(&["keys", "revoke", &new_id]);
    assert!(ok, "{out}{err}");
    everywhere(&[&g], &new, 401).await;
    // And the store survives a restart (it is the one source now).
    g.stop();
    g.wait_exit(Duration::from_secs(20));
    g.restart();
    assert_eq!(models_status(&g, &old).await, 200);
    assert_eq!(models_status(&g, &new).await, 401);
}

#[tokio::test]
async fn roles_and_bindings_made_on_one_replica_decide_on_all_without_escalation() {
    let pg = PrivatePostgres::start();
    let control = format!("[control]\nstore = \"postgres\"\nurl = \"{}\"\n", pg.url);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let gs: Vec<Gateway> = dirs
        .iter()
        .map(|d| Gateway::start_with(&[], &tenants(d.path(), &control)))
        .collect();
    let all: Vec<&Gateway> = gs.iter().collect();
    let (root, _) = gs[0].create_key(&["--org", "acme", "--role", "org-admin"]);
    let (god, _) = gs[0].create_key(&["--org", "acme", "--role", "super-admin"]);
    everywhere(&all, &root, 200).await;
    everywhere(&all, &god, 200).await;
    // A key with no role may call nothing.
    let (s, v) = admin(
        &gs[0],
        &root,
        "POST",
        "/admin/v1/orgs/acme/keys",
        json!({"roles": []}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (bare, bare_id) = (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    );
    everywhere(&all, &bare, 200).await;
    let chat_status = |g: &Gateway, key: String| {
        let url = g.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(key)
                .json(&chat("gpt-4o-mini", false))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    for g in &gs {
        assert_eq!(chat_status(g, bare.clone()).await, 403);
    }

    // A custom role made on replica 1, bound to the key on replica 1: it may chat on both.
    let (s, v) = admin(
        &gs[0],
        &root,
        "POST",
        "/admin/v1/orgs/acme/roles",
        json!({"name": "chatter", "permissions": ["model:invoke:gpt-4o-mini", "endpoint:chat_completions"]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(
        &gs[0],
        &root,
        "POST",
        "/admin/v1/orgs/acme/bindings",
        json!({"subject": format!("key:{bare_id}"), "roles": ["chatter"]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let binding = v["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    eventually(PROPAGATION, || async {
        for g in &gs {
            let s = chat_status(g, bare.clone()).await;
            if s != 200 {
                return Err(format!("{} answered {s}", g.port));
            }
        }
        Ok(())
    })
    .await;
    eprintln!(
        "binding in force on every replica after {:?}",
        start.elapsed()
    );
    let (_, v) = admin(
        &gs[1],
        &root,
        "GET",
        "/admin/v1/orgs/acme/roles",
        Value::Null,
    )
    .await;
    assert_eq!(v["data"][0]["id"], "chatter", "{v}");
    assert_eq!(v["data"][0]["managed_by"], "api");

    // Removed on replica 2: refused again on both.
    let c = client();
    let r = c
        .delete(gs[1].ops_url(&format!("/admin/v1/orgs/acme/bindings/{binding}")))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(PROPAGATION, || async {
        for g in &gs {
            let s = chat_status(g, bare.clone()).await;
            if s != 403 {
                return Err(format!("{} answered {s}", g.port));
            }
        }
        Ok(())
    })
    .await;

    // No escalation: a role with a permission the caller lacks (directly or inherited), a
    // binding of a role it lacks — 403, and audited; the super-admin may make the same.
    for (key, path, body, want) in [
        (
            &root,
            "roles",
            json!({"name": "sneaky", "permissions": ["admin:reload:write"]}),
            403,
        ),
        (
            &root,
            "roles",
            json!({"name": "heir", "inherits": ["super-admin"]}),
            403,
        ),
        (
            &root,
            "bindings",
            json!({"subject": format!("key:{bare_id}"), "roles": ["super-admin"]}),
            403,
        ),
        (
            &god,
            "roles",
            json!({"name": "operator", "permissions": ["admin:reload:write"]}),
            201,
        ),
        (
            &god,
            "bindings",
            json!({"subject": "user:alice", "roles": ["operator"]}),
            201,
        ),
    ] {
        let (s, v) = admin(
            &gs[0],
            key,
            "POST",
            &format!("/admin/v1/orgs/acme/{path}"),
            body,
        )
        .await;
        assert_eq!(s, want, "{path}: {v}");
    }
    // … so the org-admin may not mint a key for that user, on either replica.
    let g1 = &gs[1];
    eventually(PROPAGATION, || async {
        let (s, v) = admin(
            g1,
            &root,
            "POST",
            "/admin/v1/orgs/acme/keys",
            json!({"roles": ["developer"], "user": "alice"}),
        )
        .await;
        if s == 403 {
            Ok(())
        } else {
            Err(format!("{s} {v}"))
        }
    })
    .await;
    // A cost center added on replica 1 (with its monthly budget) exists on replica 2: a key
    // there may be charged to it; a bad budget is refused; file-declared ones stay.
    let (s, v) = admin(
        &gs[0],
        &root,
        "POST",
        "/admin/v1/orgs/acme/cost_centers",
        json!({"id": "research", "department": "R&D", "monthly_budget_usd": "250"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(
        &gs[0],
        &root,
        "POST",
        "/admin/v1/orgs/acme/cost_centers",
        json!({"id": "broken", "monthly_budget_usd": "-3"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let g1 = &gs[1];
    eventually(PROPAGATION, || async {
        let (_, v) = admin(
            g1,
            &root,
            "GET",
            "/admin/v1/orgs/acme/cost_centers",
            Value::Null,
        )
        .await;
        let found = v["data"].as_array().into_iter().flatten().any(|c| {
            c["id"] == "research"
                && c["managed_by"] == "api"
                && c["budget"]["usd"] == "250.000000000"
        });
        if found {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let (s, v) = admin(
        g1,
        &root,
        "POST",
        "/admin/v1/orgs/acme/keys",
        json!({"roles": ["developer"], "cost_center": "research"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let r = c
        .delete(gs[1].ops_url("/admin/v1/orgs/acme/cost_centers/research"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An org budget set through replica 1's API is enforced by replica 2 (far below one
    // request's worst case: refused), and lifted again; an org-admin may not set it.
    let (_, v) = api_key(&gs[0], &root).await;
    let spender = v["key"].as_str().unwrap().to_string();
    everywhere(&all, &spender, 200).await;
    assert_eq!(chat_status(&gs[1], spender.clone()).await, 200);
    let budget = json!({"budget": {"usd": "0.000001", "period": "month"}});
    let put = |key: &str| {
        client()
            .put(gs[0].ops_url("/admin/v1/orgs/acme/limits"))
            .bearer_auth(key)
            .json(&budget)
            .send()
    };
    assert_eq!(put(&root).await.unwrap().status(), 403);
    assert_eq!(put(&god).await.unwrap().status(), 200);
    eventually(PROPAGATION, || async {
        match chat_status(&gs[1], spender.clone()).await {
            429 => Ok(()),
            s => Err(format!("answered {s}")),
        }
    })
    .await;
    let r = c
        .delete(gs[1].ops_url("/admin/v1/orgs/acme/limits"))
        .bearer_auth(&god)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(PROPAGATION, || async {
        match chat_status(&gs[0], spender.clone()).await {
            200 => Ok(()),
            s => Err(format!("answered {s}")),
        }
    })
    .await;

    // A binding of a role that does not exist is refused as such.
    let (s, v) = admin(
        &gs[0],
        &god,
        "POST",
        "/admin/v1/orgs/acme/bindings",
        json!({"subject": "user:bob", "roles": ["no-such-role"]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-role"),
        "{v}"
    );
    // A bound role cannot be deleted.
    let r = c
        .delete(gs[0].ops_url("/admin/v1/orgs/acme/roles/operator"))
        .bearer_auth(&god)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // The refusals are in the audit trail.
    let audit =
        std::fs::read_to_string(gs[0].config.parent().unwrap().join("audit.jsonl")).unwrap();
    let denied: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "admin.denied")
        .collect();
    for resource in [
        "role:acme:sneaky",
        "role:acme:heir",
        &format!("binding:key:{bare_id}"),
    ] {
        assert!(
            denied.iter().any(|e| e["resource"] == resource),
            "{resource} not audited: {denied:?}"
        );
    }
    let writes: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "role.create" || e["action"] == "binding.create")
        .collect();
    assert!(
        writes.iter().any(|e| e["after"]["id"] == "chatter"),
        "{writes:?}"
    );
}

#[tokio::test]
async fn a_read_only_admin_api_refuses_every_control_write() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_with(&[], &tenants(dir.path(), "[admin]\nwritable = false\n"));
    // GitOps: the CLI still bootstraps keys; the API only reads.
    let (root, root_id) = g.create_key(&["--org", "acme", "--role", "org-admin"]);
    g.wait_key(&root).await;
    let (s, _) = admin(&g, &root, "GET", "/admin/v1/orgs/acme/keys", Value::Null).await;
    assert_eq!(s, 200);
    for path in [
        "/admin/v1/orgs/acme/keys".to_string(),
        format!("/admin/v1/orgs/acme/keys/{root_id}/revoke"),
        format!("/admin/v1/orgs/acme/keys/{root_id}/rotate"),
        "/admin/v1/orgs/acme/roles".to_string(),
        "/admin/v1/orgs/acme/bindings".to_string(),
    ] {
        let (s, v) = admin(&g, &root, "POST", &path, json!({"roles": ["developer"]})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("admin_read_only")),
            "{path}: {v}"
        );
    }
    assert_eq!(models_status(&g, &root).await, 200, "nothing was revoked");
}

/// Sends `method path` with a JSON body to `g`'s ops plane as `key`.
async fn admin(g: &Gateway, key: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    g.admin(key, method, path, body).await
}

async fn chat_status(g: &Gateway, key: &str) -> u16 {
    client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `key`'s chat completions answer `want`.
async fn chat_becomes(g: &Gateway, key: &str, want: u16) {
    eventually(PROPAGATION, || async {
        match chat_status(g, key).await {
            s if s == want => Ok(()),
            s => Err(format!("answered {s}")),
        }
    })
    .await;
}

#[tokio::test]
async fn key_limits_allocations_and_user_roles_through_the_api_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_with(&[], &tenants(dir.path(), ""));
    let (god, _) = g.create_key(&["--org", "acme", "--role", "super-admin"]);
    let (root, _) = g.create_key(&["--org", "acme", "--role", "org-admin"]);
    g.wait_key(&god).await;
    g.wait_key(&root).await;
    let new_key = |body: Value| {
        let (g, root) = (&g, root.clone());
        async move {
            let (s, v) = admin(g, &root, "POST", "/admin/v1/orgs/acme/keys", body).await;
            assert_eq!(s, 201, "{v}");
            (
                v["key"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        }
    };
    let (capped, capped_id) = new_key(json!({"roles": ["developer"]})).await;
    let (other, _) = new_key(json!({"roles": ["developer"]})).await;
    g.wait_key(&capped).await;
    g.wait_key(&other).await;

    // One key's own limits and budget: an org admin may not set them, unknown keys and
    // fields are refused, and they hold for that key only.
    let limits = format!("/admin/v1/orgs/acme/keys/{capped_id}/limits");
    let rpm = json!({"limits": {"requests_per_minute": 1}});
    assert_eq!(admin(&g, &root, "PUT", &limits, rpm.clone()).await.0, 403);
    let (s, v) = admin(
        &g,
        &god,
        "PUT",
        "/admin/v1/orgs/acme/keys/nosuchkey123/limits",
        rpm.clone(),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = admin(&g, &god, "PUT", &limits, json!({"key_limits": {}})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(
        &g,
        &god,
        "PUT",
        &limits,
        json!({"budget": {"usd": "-1", "period": "month"}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(&g, &god, "PUT", &limits, rpm).await;
    assert_eq!(
        (s, v["key"].as_str()),
        (200, Some(capped_id.as_str())),
        "{v}"
    );
    chat_becomes(&g, &capped, 429).await;
    assert_eq!(
        chat_status(&g, &other).await,
        200,
        "the limit is the key's own"
    );
    let budget = json!({"budget": {"usd": "0.000001", "period": "month"}});
    assert_eq!(admin(&g, &god, "PUT", &limits, budget).await.0, 200);
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(&capped)
        .json(&chat("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("key acme/{capped_id}")),
        "the refusal names the key's budget: {body}"
    );
    assert_eq!(chat_status(&g, &other).await, 200);
    assert_eq!(admin(&g, &god, "DELETE", &limits, Value::Null).await.0, 200);
    chat_becomes(&g, &capped, 200).await;
    assert_eq!(admin(&g, &god, "DELETE", &limits, Value::Null).await.0, 404);

    // Allocations of a source across cost centers the API created.
    for cc in ["ml", "ops"] {
        let (s, v) = admin(
            &g,
            &root,
            "POST",
            "/admin/v1/orgs/acme/cost_centers",
            json!({"id": cc}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let alloc = format!("/admin/v1/orgs/acme/allocations/key:{capped_id}");
    let (s, v) = admin(&g, &root, "PUT", &alloc, json!({"split": {"ml": 50}})).await;
    assert_eq!(s, 400, "a split must sum to 100: {v}");
    let (s, v) = admin(
        &g,
        &root,
        "PUT",
        &alloc,
        json!({"split": {"ml": 50, "nowhere": 50}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(
        &g,
        &root,
        "PUT",
        &alloc,
        json!({"split": {"ml": 60, "ops": 40}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(
        &g,
        &root,
        "PUT",
        &alloc,
        json!({"split": {"ml": 62.5, "ops": 37.5}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually(PROPAGATION, || async {
        let (_, v) = admin(&g, &root, "GET", "/admin/v1/orgs/acme/allocations", Value::Null).await;
        let want = json!([{"source": format!("key:{capped_id}"), "split": {"ml": 62.5, "ops": 37.5}, "managed_by": "api"}]);
        if v["data"] == want { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    // A cost center an allocation names cannot go.
    let (s, v) = admin(
        &g,
        &root,
        "DELETE",
        "/admin/v1/orgs/acme/cost_centers/ops",
        Value::Null,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(admin(&g, &root, "DELETE", &alloc, Value::Null).await.0, 200);
    assert_eq!(admin(&g, &root, "DELETE", &alloc, Value::Null).await.0, 404);

    // A user's roles, with expiry: a key made for the user holds what the user is assigned.
    let (alice, _) = new_key(json!({"user": "alice", "roles": []})).await;
    g.wait_key(&alice).await;
    assert_eq!(chat_status(&g, &alice).await, 403);
    let roles = "/admin/v1/orgs/acme/users/alice/roles";
    let (s, v) = admin(&g, &root, "POST", roles, json!({"roles": ["super-admin"]})).await;
    assert_eq!(s, 403, "no escalation through an assignment: {v}");
    let (s, v) = admin(
        &g,
        &root,
        "POST",
        roles,
        json!({"roles": ["developer"], "expires_at": "tomorrow"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(
        &g,
        &root,
        "POST",
        roles,
        json!({"roles": ["developer"], "expires_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    chat_becomes(&g, &alice, 200).await;
    let (s, v) = admin(&g, &root, "GET", roles, Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(v["roles"], json!(["developer"]), "{v}");
    assert_eq!(
        v["assignments"][0]["expires_at"], "2099-01-01T00:00:00Z",
        "{v}"
    );
    assert_eq!(v["assignments"][0]["managed_by"], "api", "{v}");
    assert_eq!(v["assignments"][0]["active"], true, "{v}");
    let (s, v) = admin(
        &g,
        &root,
        "DELETE",
        &format!("{roles}/developer"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    chat_becomes(&g, &alice, 403).await;
    let (s, _) = admin(
        &g,
        &root,
        "DELETE",
        &format!("{roles}/developer"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);
    let (_, v) = admin(&g, &root, "GET", roles, Value::Null).await;
    assert_eq!(v["roles"], json!([]), "{v}");

    // Every write is audited with before and after (the audit file is written behind the
    // requests: read until the last event is there).
    type Check = (&'static str, fn(&Value) -> bool);
    let checks: [Check; 6] = [
        ("key.limits", |e| {
            e["after"]["limits"]["requests_per_minute"] == 1
        }),
        ("key.limits", |e| {
            e["before"]["budget"]["usd"] == "0.000001" && e["after"].is_null()
        }),
        ("allocation.put", |e| {
            e["before"]["split"]["ml"] == 60 && e["after"]["split"]["ml"] == 62.5
        }),
        ("allocation.delete", |e| e["after"].is_null()),
        ("role.unassign", |e| e["before"]["subject"] == "user:alice"),
        ("admin.denied", |e| e["resource"] == "binding:user:alice"),
    ];
    let path = g.config.parent().unwrap().join("audit.jsonl");
    eventually(PROPAGATION, || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        match checks
            .iter()
            .find(|(action, check)| !events.iter().any(|e| e["action"] == *action && check(e)))
        {
            None => Ok(()),
            Some((action, _)) => Err(format!("{action} not audited as expected")),
        }
    })
    .await;
}

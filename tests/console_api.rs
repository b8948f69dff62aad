//! What the console relies on, through the real HTTP surfaces: its assets and security headers
//! on the ops plane, CORS on the data plane for the console's origin only, receipts of browser
//! requests readable by their caller alone, the audit log scoped to the caller's org, and the
//! status and whoami answers that decide which controls a page shows.

mod common;

use common::*;
use serde_json::{json, Value};

fn start() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir(dir.path(), "");
    let extra = format!(
        r#"
[auth]
key_store = "keys.json"
policies = "{}"

[audit]
path = "audit.jsonl"

[orgs.a]
[orgs.b]
"#,
        policies.display()
    );
    (Gateway::start_with(&[], &extra), dir)
}

async fn get(url: String, key: &str) -> (u16, Value) {
    let r = client().get(url).bearer_auth(key).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_console_is_served_locked_down() {
    let (g, _d) = start();
    let r = client().get(g.ops_url("/console/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("connect-src 'self' http://127.0.0.1:{};", g.port)),
        "the data plane, as the page's host reaches it: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js">"#));
    let cfg: Value = client()
        .get(g.ops_url("/console/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cfg["data_plane_url"],
        format!("http://127.0.0.1:{}", g.port)
    );
    let r = client()
        .get(g.ops_url("/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A hostile Host header is not echoed into the policy or the config.
    let r = client()
        .get(g.ops_url("/console/config.json"))
        .header("host", "evil'; script-src *:1")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["data_plane_url"].is_null(), "{v}");
}

#[tokio::test]
async fn cors_receipts_audit_and_status_follow_the_caller() {
    let (g, _d) = start();
    let (a_admin, _) = g.create_key(&["--org", "a", "--role", "org-admin"]);
    let (a_dev, _) = g.create_key(&["--org", "a", "--role", "developer"]);
    let (b_admin, _) = g.create_key(&["--org", "b", "--role", "org-admin"]);
    for k in [&a_admin, &a_dev, &b_admin] {
        g.wait_key(k).await;
    }
    let console = format!("http://localhost:{}", g.ops);

    // Preflight: answered before authentication for the console's origin only.
    let pre = |origin: String| {
        client()
            .request(reqwest::Method::OPTIONS, g.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = pre(console.clone()).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], console.as_str());
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    let r = pre("http://evil.example".into()).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_ne!(r.status(), 204);

    // A browser request from the console: CORS headers, and a receipt for its caller.
    let chat = |key: &str, origin: Option<&str>| {
        let mut req = client()
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat("gpt-4o-mini", false));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let r = chat(&a_dev, Some(&console)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], console.as_str());
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id") && exposed.contains("x-model-bridge-provider"));
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let receipt = format!("/admin/v1/requests/{rid}");
    let v = eventually(std::time::Duration::from_secs(5), || async {
        match get(g.ops_url(&receipt), &a_dev).await {
            (200, v) => Ok(v),
            (s, v) => Err(format!("{s} {v}")),
        }
    })
    .await;
    assert_eq!(v["request_id"], rid.as_str());
    assert_eq!(v["provider"], "mock");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    // Another org's admin cannot read it; the caller's own org admin (spend reader) can.
    assert_eq!(get(g.ops_url(&receipt), &b_admin).await.0, 404);
    assert_eq!(get(g.ops_url(&receipt), &a_admin).await.0, 200);
    // Requests without an allowed origin (SDKs) keep no receipt.
    let r = chat(&a_dev, None).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let sdk_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = chat(&a_dev, Some("http://evil.example")).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let evil_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // (Finished after the console request's receipt, which is there: these would be too.)
    let later = chat(&a_dev, Some(&console)).await.unwrap();
    let later_rid = later.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    eventually(std::time::Duration::from_secs(5), || async {
        match get(
            g.ops_url(&format!("/admin/v1/requests/{later_rid}")),
            &a_dev,
        )
        .await
        {
            (200, _) => Ok(()),
            (s, v) => Err(format!("{s} {v}")),
        }
    })
    .await;
    for id in [sdk_rid, evil_rid] {
        let (s, _) = get(g.ops_url(&format!("/admin/v1/requests/{id}")), &a_dev).await;
        assert_eq!(s, 404, "{id}");
    }

    // whoami names the admin permissions held; status and audit need theirs.
    let (_, me) = get(g.ops_url("/admin/v1/whoami"), &a_admin).await;
    let can: Vec<&str> = me["can"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        can.contains(&"admin:keys:write") && can.contains(&"admin:audit:read"),
        "{can:?}"
    );
    assert!(!can.contains(&"admin:limits:write"), "{can:?}");
    let (_, me) = get(g.ops_url("/admin/v1/whoami"), &a_dev).await;
    assert_eq!(me["can"], json!([]));
    assert_eq!(get(g.ops_url("/admin/v1/status"), &a_dev).await.0, 403);
    let (s, st) = get(g.ops_url("/admin/v1/status"), &a_admin).await;
    assert_eq!(s, 200);
    assert_eq!(st["ready"], true);
    assert_eq!(st["breakers"][0]["state"], "closed", "{st}");
    assert!(
        !st.to_string().contains("provider-secret"),
        "no credential in status"
    );

    // The audit log is the caller's org's: b's admin sees none of a's key creations.
    let (s, _) = client()
        .post(g.ops_url("/admin/v1/orgs/a/keys"))
        .bearer_auth(&a_admin)
        .json(&json!({"roles": ["invoker"], "name": "from-api"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(s, 201);
    let a_events = eventually(std::time::Duration::from_secs(5), || async {
        let (_, v) = get(g.ops_url("/admin/v1/audit?action=key.create"), &a_admin).await;
        match v["data"].as_array() {
            Some(d) if !d.is_empty() => Ok(d.clone()),
            _ => Err(v.to_string()),
        }
    })
    .await;
    assert!(a_events
        .iter()
        .all(|e| e["org"] == "a" && e["action"] == "key.create"));
    let (_, v) = get(g.ops_url("/admin/v1/audit"), &b_admin).await;
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org"] == "b"),
        "{v}"
    );
    let (s, _) = get(g.ops_url("/admin/v1/audit?org=a"), &b_admin).await;
    assert_eq!(s, 404);
    let (_, v) = get(g.ops_url("/admin/v1/audit/verify"), &a_admin).await;
    assert!(
        v["verified"].is_null(),
        "no chain in a JSON lines trail: {v}"
    );
    // Roles of another org stay out of sight.
    let (s, _) = client()
        .post(g.ops_url("/admin/v1/orgs/b/roles"))
        .bearer_auth(&b_admin)
        .json(&json!({"name": "b-secret", "permissions": ["endpoint:chat_completions"]}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(s, 201);
    let (_, roles) = get(g.ops_url("/admin/v1/roles?limit=100"), &a_admin).await;
    assert!(!roles.to_string().contains("b-secret"), "{roles}");
    let (_, roles) = get(g.ops_url("/admin/v1/roles?limit=100"), &b_admin).await;
    let admin_role = roles["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "org-admin")
        .unwrap()
        .clone();
    assert!(
        admin_role["effective"]
            .as_array()
            .unwrap()
            .contains(&json!("endpoint:passthrough")),
        "inherited through developer: {admin_role}"
    );
    assert!(roles.to_string().contains("b:b-secret"), "{roles}");
}

#[tokio::test]
async fn without_authentication_the_playground_works_as_anyone() {
    let g = Gateway::start_with(&[], "");
    let console = format!("http://127.0.0.1:{}", g.ops);
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("origin", &console)
        .json(&chat("gpt-4o-mini", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], console.as_str());
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = r.text().await.unwrap();
    let v = eventually(std::time::Duration::from_secs(5), || async {
        let r = client()
            .get(g.ops_url(&format!("/admin/v1/requests/{rid}")))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => Ok(r.json::<Value>().await.unwrap()),
            s => Err(s.to_string()),
        }
    })
    .await;
    assert_eq!(v["stream"], true);
    // The rest of the admin API stays off: the console shows the playground and health only.
    let r = client()
        .get(g.ops_url("/admin/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "admin_disabled");
}

//! `model-bridge keys create|list|revoke`: bootstrap and operate the key store without the
//! admin API (e.g. the first admin key). The running gateway picks the change up on its own.

use crate::audit::AuditEvent;
use crate::auth::issue::{issue, redacted, KeySpec};
use crate::auth::keys::KeyRecord;
use crate::auth::store::{KeyStore, Keys};
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Org the key belongs to.
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    /// Role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    #[arg(long)]
    pub cost_center: Option<String>,
    /// Allowed model alias (repeatable); all that RBAC allows when none.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// RFC 3339 UTC expiry.
    #[arg(long)]
    pub expires_at: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
}

fn store_of(cfg: &Config) -> Result<Keys, String> {
    let keys = Keys::open(cfg)
        .map_err(|e| format!("key store: {e}"))?
        .ok_or("authentication is not configured ([auth] is absent)")?;
    if !keys.is_up() {
        return Err("the control store is unreachable".into());
    }
    Ok(keys)
}

fn audit(cfg: &Config, action: &'static str, rec: &KeyRecord, before: Option<&KeyRecord>) {
    let event = AuditEvent {
        ts_ms: crate::time::now_unix_ms(),
        request_id: String::new(),
        actor: super::warehouse::cli_actor(),
        org: Some(rec.org.clone()),
        action,
        resource: format!("key:{}", rec.id),
        outcome: "succeeded",
        reason: None,
        before: before.and_then(|b| serde_json::to_value(redacted(b)).ok()),
        after: serde_json::to_value(redacted(rec)).ok(),
        client_ip: None,
        user_agent: Some("model-bridge-cli".into()),
    };
    // The key change itself is done and durable; a missing audit row is reported, not fatal.
    if let Err(e) = super::warehouse::audit(cfg, event) {
        eprintln!("warning: {e}");
    }
}

pub fn create(cfg: &Config, a: CreateArgs) -> Result<(), String> {
    let spec = KeySpec {
        name: a.name,
        team: a.team,
        user: a.user,
        roles: a.roles,
        cost_center: a.cost_center,
        models: a.models,
        expires_at: a.expires_at,
    };
    let (key, rec) = issue(cfg, &a.org, spec)?;
    let store = store_of(cfg)?;
    store.insert(rec.clone()).map_err(|e| e.to_string())?;
    audit(cfg, "key.create", &rec, None);
    let mut out = redacted(&rec);
    if let Some(o) = out.as_object_mut() {
        o.insert("key".into(), serde_json::Value::String(key));
    }
    println!("{out}");
    eprintln!("The key is shown once: store it now.");
    Ok(())
}

pub fn list(cfg: &Config, org: Option<&str>) -> Result<(), String> {
    let store = store_of(cfg)?;
    let now = crate::time::now_unix();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for k in cfg.auth.iter().flat_map(|a| a.keys.values()) {
        if org.is_none_or(|o| k.org == o) {
            let mut v = redacted(k);
            v["source"] = "config".into();
            v["active"] = k.is_active(now).into();
            rows.push(v);
        }
    }
    for k in store.list(org) {
        let mut v = redacted(&k);
        v["source"] = "store".into();
        v["active"] = k.is_active(now).into();
        rows.push(v);
    }
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

pub fn revoke(cfg: &Config, id: &str) -> Result<(), String> {
    let store = store_of(cfg)?;
    let before = store
        .get(id)
        .ok_or_else(|| format!("no key `{id}` in the store"))?;
    let after = store
        .revoke(id, crate::time::now_unix())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no key `{id}` in the store"))?;
    audit(cfg, "key.revoke", &after, Some(&before));
    println!("{}", redacted(&after));
    Ok(())
}

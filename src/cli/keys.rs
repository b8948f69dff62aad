//! `model-bridge keys create|list|revoke`: bootstrap and operate the key store without the
//! admin API (e.g. the first admin key). The running gateway picks the change up on its own.

use crate::audit::{AuditEvent, AuditSink, JsonLinesAudit};
use crate::auth::keys::{self, KeyRecord};
use crate::auth::store::{FileKeyStore, KeyStore};
use crate::config::Config;
use std::time::Duration;

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

fn store_of(cfg: &Config) -> Result<FileKeyStore, String> {
    let a = cfg
        .auth
        .as_ref()
        .ok_or("authentication is not configured ([auth] is absent)")?;
    FileKeyStore::open(&a.key_store).map_err(|e| format!("key store: {e}"))
}

fn audit(cfg: &Config, action: &'static str, rec: &KeyRecord, before: Option<&KeyRecord>) {
    let Ok(sink) = JsonLinesAudit::start(cfg.audit_path.clone()) else {
        eprintln!(
            "warning: audit log {} not writable",
            cfg.audit_path.display()
        );
        return;
    };
    let actor = std::env::var("USER").map_or_else(|_| "cli".into(), |u| format!("cli:{u}"));
    sink.record(AuditEvent {
        ts_ms: crate::time::now_unix() * 1000,
        request_id: String::new(),
        actor,
        org: Some(rec.org.clone()),
        action,
        resource: format!("key:{}", rec.id),
        outcome: "succeeded",
        reason: None,
        before: before.and_then(|b| serde_json::to_value(redacted(b)).ok()),
        after: serde_json::to_value(redacted(rec)).ok(),
        client_ip: None,
        user_agent: Some("model-bridge-cli".into()),
    });
    sink.flush(Duration::from_secs(5));
}

/// A record as shown anywhere outside the store: without its hash.
pub fn redacted(r: &KeyRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("hash");
    }
    v
}

pub fn create(cfg: &Config, a: CreateArgs) -> Result<(), String> {
    let org = cfg
        .orgs
        .get(&a.org)
        .ok_or_else(|| format!("unknown org `{}`", a.org))?;
    if let Some(t) = a.team.as_deref().filter(|t| !org.teams.contains_key(*t)) {
        return Err(format!("unknown team `{t}` in org `{}`", a.org));
    }
    if let Some(cc) = a
        .cost_center
        .as_deref()
        .filter(|c| !org.cost_centers.contains_key(*c))
    {
        return Err(format!("unknown cost center `{cc}` in org `{}`", a.org));
    }
    if let Some(r) = a.roles.iter().find(|r| !cfg.rbac.has_role(r)) {
        return Err(format!("unknown role `{r}`"));
    }
    for m in &a.models {
        if !cfg.models.get(m).is_some_and(|r| r.visible_to(&a.org)) {
            return Err(format!("unknown model `{m}` for org `{}`", a.org));
        }
    }
    let expires_at = match &a.expires_at {
        Some(s) => Some(crate::time::parse_rfc3339(s).ok_or(format!("`{s}` is not RFC 3339 UTC"))?),
        None => None,
    };
    let store = store_of(cfg)?;
    let (key, id, hash) = keys::generate();
    let rec = KeyRecord {
        id,
        hash,
        name: a.name,
        org: a.org,
        team: a.team,
        user: a.user,
        roles: a.roles,
        cost_center: a.cost_center,
        models: (!a.models.is_empty()).then_some(a.models),
        created_at: crate::time::now_unix(),
        expires_at,
        revoked_at: None,
    };
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

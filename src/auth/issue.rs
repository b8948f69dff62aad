//! Issuing a key: validation against the live config (org, team, cost center, roles, models,
//! expiry) shared by the admin API and the CLI.

use super::keys::{self, KeyRecord};
use crate::config::Config;
use serde::Deserialize;

/// What a new key is bound to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub cost_center: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    /// RFC 3339 UTC.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A new key for `org`: (the secret key, shown once; its record).
pub fn issue(cfg: &Config, org_id: &str, spec: KeySpec) -> Result<(String, KeyRecord), String> {
    let org = cfg
        .orgs
        .get(org_id)
        .ok_or_else(|| format!("unknown org `{org_id}`"))?;
    if let Some(t) = spec.team.as_deref().filter(|t| !org.teams.contains_key(*t)) {
        return Err(format!("unknown team `{t}` in org `{org_id}`"));
    }
    if let Some(cc) = spec
        .cost_center
        .as_deref()
        .filter(|c| !org.cost_centers.contains_key(*c))
    {
        return Err(format!("unknown cost center `{cc}` in org `{org_id}`"));
    }
    if let Some(r) = spec.roles.iter().find(|r| !cfg.rbac.has_role(r)) {
        return Err(format!("unknown role `{r}`"));
    }
    for m in &spec.models {
        if !cfg.models.get(m).is_some_and(|r| r.visible_to(org_id)) {
            return Err(format!("unknown model `{m}` for org `{org_id}`"));
        }
    }
    let expires_at = match &spec.expires_at {
        Some(s) => Some(crate::time::parse_rfc3339(s).ok_or(format!("`{s}` is not RFC 3339 UTC"))?),
        None => None,
    };
    if let Some(u) = &spec.user {
        if u.is_empty() || u.len() > 200 || u.chars().any(char::is_control) {
            return Err("user must be 1 to 200 characters without control characters".into());
        }
    }
    if spec.name.as_deref().is_some_and(|n| n.len() > 200) {
        return Err("name is longer than 200 characters".into());
    }
    let (key, id, hash) = keys::generate();
    Ok((
        key,
        KeyRecord {
            id,
            hash,
            name: spec.name,
            org: org_id.to_string(),
            team: spec.team,
            user: spec.user,
            roles: spec.roles,
            cost_center: spec.cost_center,
            models: (!spec.models.is_empty()).then_some(spec.models),
            created_at: crate::time::now_unix(),
            expires_at,
            revoked_at: None,
        },
    ))
}

/// A record as shown anywhere outside the store: without its hash.
pub fn redacted(r: &KeyRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("hash");
    }
    v
}

//! Who pays: the cost center, department, project and tags of a request, from the principal's
//! defaults (key, then team, then org) or from the override headers when the principal may
//! override attribution — and then only into its own org's cost centers.

use super::Principal;
use crate::config::Org;
use crate::error::GatewayError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The caller's override headers, as sent.
#[derive(Debug, Default)]
pub struct Overrides<'a> {
    pub cost_center: Option<&'a str>,
    pub project: Option<&'a str>,
    pub tags: Option<&'a str>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub cost_center: Option<Arc<str>>,
    pub department: Option<String>,
    pub project: Option<String>,
    pub tags: Vec<String>,
}

pub const OVERRIDE_PERMISSION: &str = "attribution:override";

pub fn resolve(
    p: &Principal,
    orgs: &BTreeMap<String, Org>,
    o: &Overrides<'_>,
) -> Result<Attribution, GatewayError> {
    let org = orgs.get(p.org.as_ref());
    let overriding = o.cost_center.is_some() || o.project.is_some() || o.tags.is_some();
    if overriding && !p.allows(OVERRIDE_PERMISSION) {
        return Err(GatewayError::PermissionDenied(
            "You are not allowed to override cost attribution.".into(),
        ));
    }
    let cost_center: Option<Arc<str>> = match o.cost_center {
        Some(cc) => {
            // Known only within the caller's own org: naming another org's cost center is
            // refused exactly like naming one that does not exist.
            let known = org.is_some_and(|org| org.cost_centers.contains_key(cc));
            // Without auth and without a configured org there is no list to check against.
            let unchecked = p.unrestricted && org.is_none();
            if !(known || unchecked) {
                return Err(GatewayError::PermissionDenied(format!(
                    "Unknown cost center `{cc}` for your organization."
                )));
            }
            Some(Arc::from(cc))
        }
        None => p.cost_center.clone().or_else(|| {
            let org = org?;
            let team_default = p
                .team
                .as_deref()
                .and_then(|t| org.teams.get(t))
                .and_then(|t| t.default_cost_center.as_deref());
            team_default
                .or(org.default_cost_center.as_deref())
                .map(Arc::from)
        }),
    };
    let department = cost_center
        .as_deref()
        .and_then(|cc| org?.cost_centers.get(cc)?.department.clone());
    let tags = o
        .tags
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .take(32)
                .map(|t| t.chars().take(64).collect())
                .collect()
        })
        .unwrap_or_default();
    Ok(Attribution {
        cost_center,
        department,
        project: o.project.map(|p| p.chars().take(128).collect()),
        tags,
    })
}

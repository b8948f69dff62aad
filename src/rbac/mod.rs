//! RBAC: roles (permissions, `inherits`, wildcards) and bindings of subjects to roles, loaded
//! from `policies/*.toml` and compiled once per config generation. Per request, the only string
//! work left is looking up the alias in each role's precompiled set of invocable aliases.
//!
//! Permissions are `:`-separated names; a pattern ending in `*` matches every permission that
//! starts with what precedes it (`model:invoke:gpt-4o*`, `admin:keys:*`, `*`).
//! Data plane: `model:invoke:<alias>`, `endpoint:<endpoint>` (chat_completions, completions,
//! embeddings, responses, passthrough), `attribution:override`. Admin plane:
//! `admin:<resource>:read|write`.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    bindings: Vec<RawBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    inherits: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    /// `key:<id>`, `user:<id>` or `group:<name>`.
    subject: String,
    roles: Vec<String>,
    /// Only for principals of this org.
    #[serde(default)]
    org: Option<String>,
    /// RFC 3339 UTC; the binding stops counting then.
    #[serde(default)]
    expires_at: Option<String>,
}

/// A permission pattern set with exact entries hashed and prefix entries listed.
#[derive(Debug, Default, Clone)]
pub struct Patterns {
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl Patterns {
    fn add(&mut self, p: &str) {
        match p.strip_suffix('*') {
            Some(prefix) => self.prefixes.push(prefix.to_string()),
            None => {
                self.exact.insert(p.to_string());
            }
        }
    }

    pub fn allows(&self, perm: &str) -> bool {
        self.exact.contains(perm) || self.prefixes.iter().any(|p| perm.starts_with(p.as_str()))
    }
}

/// Data-plane endpoint permissions, decided per role at load (index = `Endpoint::index()`).
pub const ENDPOINT_PERMISSIONS: [&str; 7] = [
    "endpoint:chat_completions",
    "endpoint:completions",
    "endpoint:embeddings",
    "endpoint:responses",
    "endpoint:models",
    "endpoint:passthrough",
    "endpoint:feedback",
];

#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub description: Option<String>,
    /// Flattened over `inherits`.
    pub patterns: Patterns,
    /// Every configured alias this role may invoke.
    invocable: HashSet<String>,
    /// Declared (not inherited) permissions and parents, for the admin API.
    pub declared: Vec<String>,
    pub inherits: Vec<String>,
    /// This role and every role it inherits, transitively.
    pub closure: HashSet<String>,
    /// Bit i: `ENDPOINT_PERMISSIONS[i]` allowed.
    endpoints: u8,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub subject: String,
    pub roles: Vec<String>,
    pub org: Option<String>,
    pub expires_at: Option<u64>,
    pub file: PathBuf,
}

#[derive(Debug, Default)]
pub struct Rbac {
    pub roles: HashMap<String, Arc<Role>>,
    bindings: HashMap<String, Vec<Binding>>,
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.path, self.reason)
    }
}

/// The roles a principal holds this request, resolved once.
#[derive(Debug, Default, Clone)]
pub struct Grants(Vec<Arc<Role>>);

impl Grants {
    pub fn can_invoke(&self, alias: &str) -> bool {
        self.0.iter().any(|r| r.invocable.contains(alias))
    }

    pub fn allows(&self, perm: &str) -> bool {
        self.0.iter().any(|r| r.patterns.allows(perm))
    }

    /// Endpoint `i` of `ENDPOINT_PERMISSIONS`, decided at load: no string work per request.
    pub fn allows_endpoint(&self, i: usize) -> bool {
        self.0.iter().any(|r| r.endpoints & (1 << i) != 0)
    }

    /// Whether `role` is among the held roles or inherited by one of them.
    pub fn holds(&self, role: &str) -> bool {
        self.0.iter().any(|r| r.closure.contains(role))
    }

    /// The first permission these grants allow that `caller` does not (`None`: every
    /// permission here is also the caller's). A pattern `p*` is covered only by a caller
    /// pattern that is a prefix of it, so wildcards never widen.
    pub fn uncovered_by(&self, caller: &Grants) -> Option<String> {
        for r in &self.0 {
            for e in &r.patterns.exact {
                if !caller.allows(e) {
                    return Some(e.clone());
                }
            }
            for p in &r.patterns.prefixes {
                let covered = caller.0.iter().any(|c| {
                    c.patterns
                        .prefixes
                        .iter()
                        .any(|q| p.starts_with(q.as_str()))
                });
                if !covered {
                    return Some(format!("{p}*"));
                }
            }
        }
        None
    }

    pub fn role_names(&self) -> Vec<&str> {
        self.0.iter().map(|r| r.name.as_str()).collect()
    }
}

impl Rbac {
    /// Loads every `*.toml` in `dir` (sorted) and compiles roles against `aliases`.
    pub fn load(dir: &Path, aliases: &[&str]) -> Result<Rbac, Vec<PolicyError>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                return Err(vec![PolicyError {
                    file: dir.display().to_string(),
                    path: String::new(),
                    reason: format!("cannot read policy directory: {e}"),
                }])
            }
        };
        files.sort();
        let mut sources = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => sources.push((f, t)),
                Err(e) => {
                    return Err(vec![PolicyError {
                        file: f.display().to_string(),
                        path: String::new(),
                        reason: e.to_string(),
                    }])
                }
            }
        }
        Self::compile(&sources, aliases)
    }

    /// `load`, then the control store's policy (custom roles and bindings written through
    /// the admin API) as one more policy file after the directory's.
    pub fn load_with(
        dir: &Path,
        aliases: &[&str],
        overlay: Option<&str>,
    ) -> Result<Rbac, Vec<PolicyError>> {
        let Some(text) = overlay.filter(|t| !t.trim().is_empty()) else {
            return Self::load(dir, aliases);
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                vec![PolicyError {
                    file: dir.display().to_string(),
                    path: String::new(),
                    reason: format!("cannot read policy directory: {e}"),
                }]
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut sources = Vec::new();
        for f in files {
            let t = std::fs::read_to_string(&f).map_err(|e| {
                vec![PolicyError {
                    file: f.display().to_string(),
                    path: String::new(),
                    reason: e.to_string(),
                }]
            })?;
            sources.push((f, t));
        }
        sources.push((PathBuf::from("control-store"), text.to_string()));
        Self::compile(&sources, aliases)
    }

    /// Compiles policy texts (file name, contents).
    pub fn compile(
        sources: &[(PathBuf, String)],
        aliases: &[&str],
    ) -> Result<Rbac, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut raw_roles: BTreeMap<String, (RawRole, PathBuf)> = BTreeMap::new();
        let mut raw_bindings = Vec::new();
        for (file, text) in sources {
            let err = |path: String, reason: String| PolicyError {
                file: file.display().to_string(),
                path,
                reason,
            };
            let parsed: Result<RawPolicy, _> = toml::from_str::<toml::Value>(text)
                .map_err(|e| err(String::new(), e.message().to_string()))
                .and_then(|v| {
                    serde_path_to_error::deserialize(v).map_err(|e| {
                        err(e.path().to_string(), e.into_inner().message().to_string())
                    })
                });
            match parsed {
                Ok(p) => {
                    for (name, r) in p.roles {
                        if raw_roles.contains_key(&name) {
                            errors.push(err(format!("roles.{name}"), "role defined twice".into()));
                            continue;
                        }
                        raw_roles.insert(name, (r, file.clone()));
                    }
                    for (i, b) in p.bindings.into_iter().enumerate() {
                        raw_bindings.push((i, b, file.clone()));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let mut rbac = Rbac::default();
        for (name, (role, file)) in &raw_roles {
            for (i, p) in role.permissions.iter().enumerate() {
                if p.is_empty() || p.trim_end_matches('*').contains('*') {
                    errors.push(PolicyError {
                        file: file.display().to_string(),
                        path: format!("roles.{name}.permissions.{i}"),
                        reason: format!("`{p}`: `*` may only end a permission"),
                    });
                }
            }
        }
        for name in raw_roles.keys() {
            let mut patterns = Patterns::default();
            let mut seen = Vec::new();
            let mut closure = HashSet::new();
            if let Err(reason) = flatten(name, &raw_roles, &mut seen, &mut patterns, &mut closure) {
                let file = raw_roles[name].1.display().to_string();
                errors.push(PolicyError {
                    file,
                    path: format!("roles.{name}.inherits"),
                    reason,
                });
                continue;
            }
            let invocable = aliases
                .iter()
                .filter(|a| patterns.allows(&format!("model:invoke:{a}")))
                .map(|a| a.to_string())
                .collect();
            let endpoints = ENDPOINT_PERMISSIONS
                .iter()
                .enumerate()
                .filter(|(_, p)| patterns.allows(p))
                .fold(0u8, |m, (i, _)| m | (1 << i));
            let (raw, _) = &raw_roles[name];
            rbac.roles.insert(
                name.clone(),
                Arc::new(Role {
                    name: name.clone(),
                    description: raw.description.clone(),
                    patterns,
                    invocable,
                    declared: raw.permissions.clone(),
                    inherits: raw.inherits.clone(),
                    closure,
                    endpoints,
                }),
            );
        }
        for (i, b, file) in raw_bindings {
            let path = format!("bindings.{i}");
            let err = |reason: String| PolicyError {
                file: file.display().to_string(),
                path: path.clone(),
                reason,
            };
            if !["key:", "user:", "group:"]
                .iter()
                .any(|p| b.subject.starts_with(p))
            {
                errors.push(err(format!(
                    "subject `{}` must start with key:, user: or group:",
                    b.subject
                )));
                continue;
            }
            if let Some(r) = b.roles.iter().find(|r| !raw_roles.contains_key(*r)) {
                errors.push(err(format!("unknown role `{r}`")));
                continue;
            }
            let expires_at = match &b.expires_at {
                Some(s) => match crate::time::parse_rfc3339(s) {
                    Some(t) => Some(t),
                    None => {
                        errors.push(err(format!("expires_at `{s}` is not RFC 3339 UTC")));
                        continue;
                    }
                },
                None => None,
            };
            rbac.bindings
                .entry(b.subject.clone())
                .or_default()
                .push(Binding {
                    subject: b.subject,
                    roles: b.roles,
                    org: b.org,
                    expires_at,
                    file,
                });
        }
        if errors.is_empty() {
            Ok(rbac)
        } else {
            Err(errors)
        }
    }

    pub fn has_role(&self, name: &str) -> bool {
        self.roles.contains_key(name)
    }

    /// Roles of a principal at `now`: its own, plus unexpired bindings of each subject that
    /// apply to its org. Unknown role names are ignored (config validation reports them).
    pub fn grants<'a>(
        &self,
        own: impl IntoIterator<Item = &'a str>,
        subjects: &[String],
        org: &str,
        now: u64,
    ) -> Grants {
        self.grants_until(own, subjects, org, now).0
    }

    /// `grants`, and the first time (Unix seconds) at which a binding it used expires: the
    /// decision may be cached until then.
    pub fn grants_until<'a>(
        &self,
        own: impl IntoIterator<Item = &'a str>,
        subjects: &[String],
        org: &str,
        now: u64,
    ) -> (Grants, Option<u64>) {
        let mut names: Vec<&str> = own.into_iter().collect();
        let mut until: Option<u64> = None;
        for s in subjects {
            for b in self.bindings.get(s).into_iter().flatten() {
                let live = b.expires_at.is_none_or(|e| now < e);
                let in_org = b.org.as_deref().is_none_or(|o| o == org);
                if live && in_org {
                    names.extend(b.roles.iter().map(String::as_str));
                    if let Some(e) = b.expires_at {
                        until = Some(until.map_or(e, |u| u.min(e)));
                    }
                }
            }
        }
        names.sort_unstable();
        names.dedup();
        let roles = names.iter().filter_map(|n| self.roles.get(*n).cloned());
        (Grants(roles.collect()), until)
    }

    /// Bindings of one subject (`user:<id>`, `key:<id>`, `group:<name>`).
    pub fn bindings_of(&self, subject: &str) -> &[Binding] {
        self.bindings.get(subject).map_or(&[], Vec::as_slice)
    }

    pub fn bindings(&self) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self.bindings.values().flatten().collect();
        v.sort_by(|a, b| a.subject.cmp(&b.subject));
        v
    }
}

fn flatten(
    name: &str,
    roles: &BTreeMap<String, (RawRole, PathBuf)>,
    stack: &mut Vec<String>,
    out: &mut Patterns,
    closure: &mut HashSet<String>,
) -> Result<(), String> {
    if stack.iter().any(|s| s == name) {
        stack.push(name.to_string());
        return Err(format!("inheritance cycle: {}", stack.join(" -> ")));
    }
    let Some((role, _)) = roles.get(name) else {
        return Err(format!("unknown role `{name}`"));
    };
    stack.push(name.to_string());
    closure.insert(name.to_string());
    for p in &role.permissions {
        out.add(p);
    }
    for parent in &role.inherits {
        flatten(parent, roles, stack, out, closure)?;
    }
    stack.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[roles.viewer]
permissions = ["admin:keys:read"]

[roles.developer]
inherits = ["viewer"]
permissions = ["model:invoke:gpt-4o*", "endpoint:*"]

[roles.admin]
permissions = ["*"]

[[bindings]]
subject = "group:ml"
roles = ["developer"]
org = "acme"

[[bindings]]
subject = "user:temp@acme.test"
roles = ["admin"]
expires_at = "2030-01-01T00:00:00Z"
"#;

    fn rbac() -> Rbac {
        Rbac::compile(
            &[(PathBuf::from("p.toml"), POLICY.to_string())],
            &["gpt-4o", "gpt-4o-mini", "o4-mini"],
        )
        .unwrap()
    }

    #[test]
    fn table_of_decisions() {
        let r = rbac();
        let t2029 = 1_861_920_000; // 2029-01-01
        let t2031 = 1_924_992_000; // 2031-01-01
                                   // own roles, subjects, org, now, permission or `invoke:<alias>`, expected
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a str, u64, &'a str, bool);
        let cases: &[Case] = &[
            // own roles, subjects, org, now, permission or alias, expected
            (&["developer"], &[], "acme", 0, "invoke:gpt-4o-mini", true),
            (&["developer"], &[], "acme", 0, "invoke:o4-mini", false),
            (
                &["developer"],
                &[],
                "acme",
                0,
                "endpoint:chat_completions",
                true,
            ),
            (&["developer"], &[], "acme", 0, "admin:keys:read", true), // inherited
            (&["developer"], &[], "acme", 0, "admin:keys:write", false),
            (&["viewer"], &[], "acme", 0, "invoke:gpt-4o", false),
            (&[], &["group:ml"], "acme", 0, "invoke:gpt-4o", true),
            (&[], &["group:ml"], "other", 0, "invoke:gpt-4o", false), // org-scoped binding
            (
                &[],
                &["user:temp@acme.test"],
                "x",
                t2029,
                "admin:orgs:write",
                true,
            ),
            (
                &[],
                &["user:temp@acme.test"],
                "x",
                t2031,
                "admin:orgs:write",
                false,
            ), // expired
            (&["admin"], &[], "x", 0, "invoke:o4-mini", true),
            (&["nonexistent"], &[], "x", 0, "invoke:o4-mini", false),
        ];
        for (own, subjects, org, now, what, want) in cases {
            let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
            let g = r.grants(own.iter().copied(), &subjects, org, *now);
            let got = match what.strip_prefix("invoke:") {
                Some(alias) => g.can_invoke(alias),
                None => g.allows(what),
            };
            assert_eq!(got, *want, "{own:?} {subjects:?} {org} {now} {what}");
        }
    }

    #[test]
    fn coverage_of_grants() {
        let r = rbac();
        let g = |roles: &[&str]| r.grants(roles.iter().copied(), &[], "acme", 0);
        assert_eq!(g(&["developer"]).uncovered_by(&g(&["developer"])), None);
        assert_eq!(g(&["viewer"]).uncovered_by(&g(&["developer"])), None);
        assert_eq!(g(&["developer"]).uncovered_by(&g(&["admin"])), None);
        assert!(g(&["developer"]).uncovered_by(&g(&["viewer"])).is_some());
        // `*` is covered only by `*`.
        assert_eq!(
            g(&["admin"]).uncovered_by(&g(&["developer"])).as_deref(),
            Some("*")
        );
        // A user's binding counts: its admin role is not covered by a developer.
        let bound = r.grants(["viewer"], &["user:temp@acme.test".to_string()], "acme", 0);
        assert!(bound.uncovered_by(&g(&["developer"])).is_some());
    }

    #[test]
    fn cycles_and_unknown_roles_are_errors() {
        let bad = "[roles.a]\ninherits = [\"b\"]\n[roles.b]\ninherits = [\"a\"]\n[[bindings]]\nsubject = \"key:x\"\nroles = [\"zz\"]\n";
        let errs = Rbac::compile(&[(PathBuf::from("bad.toml"), bad.into())], &[]).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|e| e.contains("cycle: a -> b -> a")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("unknown role `zz`")),
            "{text:?}"
        );
        let typo = "[roles.a]\npermisions = []\n";
        let errs = Rbac::compile(&[(PathBuf::from("t.toml"), typo.into())], &[]).unwrap_err();
        assert!(errs[0].to_string().contains("permisions"), "{errs:?}");
    }
}

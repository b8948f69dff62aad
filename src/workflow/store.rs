//! Workflows an org defines through the admin API, as control-store documents: a draft per
//! workflow (editable), published versions (numbered 1, 2, …, written once and never again, so
//! a published version cannot change on any replica), and the deployment naming the one
//! version that runs. Every replica compiles the deployed versions when the store changes.

use super::def::{self, Problem, Workflow};
use crate::control::Doc;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `<org>:<name>` → `{name, definition, updated_at, updated_by}`.
pub const DRAFT: &str = "workflow_draft";
/// `<org>:<name>:<version>` → `{name, version, definition, published_at, published_by}`.
pub const VERSION: &str = "workflow_version";
/// `<org>:<name>` → `{name, version, deployed_at, deployed_by}`.
pub const DEPLOYMENT: &str = "workflow_deployment";

pub fn workflow_id(org: &str, name: &str) -> String {
    format!("{org}:{name}")
}

pub fn version_id(org: &str, name: &str, version: u32) -> String {
    format!("{org}:{name}:{version}")
}

/// Where a stored definition came from, as its problems and runs name it.
pub fn source(org: &str, name: &str, version: Option<u32>) -> String {
    match version {
        Some(v) => format!("api:{org}/{name}@{v}"),
        None => format!("api:{org}/{name} (draft)"),
    }
}

/// Validates `definition` as the workflow `name` at `version` (a draft: 0). A `name` in the
/// definition must be the URL's; a `version` in it is ignored — the store numbers versions.
pub fn compile(
    definition: &Value,
    name: &str,
    version: u32,
    source: &str,
) -> Result<Workflow, Vec<Problem>> {
    let Some(obj) = definition.as_object() else {
        return Err(vec![Problem {
            path: "(definition)".into(),
            reason: "a definition is a JSON object".into(),
        }]);
    };
    if let Some(given) = obj.get("name").filter(|n| n.as_str() != Some(name)) {
        return Err(vec![Problem {
            path: "name".into(),
            reason: format!("{given} is not the workflow's name `{name}`"),
        }]);
    }
    let mut obj = obj.clone();
    obj.insert("name".into(), Value::from(name));
    obj.insert("version".into(), Value::from(version));
    let raw: def::RawWorkflow = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        vec![Problem {
            path: "(definition)".into(),
            reason: e.to_string(),
        }]
    })?;
    def::validate(raw, source)
}

/// A published version as stored.
pub struct Version {
    pub version: u32,
    pub record: Value,
}

/// The published versions of `org`'s workflow `name`, oldest first.
pub fn versions(docs: &[Doc], org: &str, name: &str) -> Vec<Version> {
    let prefix = format!("{}:", workflow_id(org, name));
    let mut out: Vec<Version> = docs
        .iter()
        .filter(|d| d.kind == VERSION && d.org == org)
        .filter_map(|d| {
            let v: u32 = d.id.strip_prefix(&prefix)?.parse().ok()?;
            Some(Version {
                version: v,
                record: serde_json::from_str(&d.record).ok()?,
            })
        })
        .collect();
    out.sort_by_key(|v| v.version);
    out
}

/// The record of `org`'s document `kind` for workflow `name`, if any (drafts, deployments).
pub fn record(docs: &[Doc], kind: &str, org: &str, name: &str) -> Option<Value> {
    let id = workflow_id(org, name);
    docs.iter()
        .find(|d| d.kind == kind && d.id == id)
        .and_then(|d| serde_json::from_str(&d.record).ok())
}

/// The names of every workflow `org` has a document of.
pub fn names(docs: &[Doc], org: &str) -> Vec<String> {
    let mut out: Vec<String> = docs
        .iter()
        .filter(|d| d.org == org && [DRAFT, VERSION, DEPLOYMENT].contains(&d.kind.as_str()))
        .filter_map(|d| {
            let rest = d.id.strip_prefix(org)?.strip_prefix(':')?;
            Some(rest.split(':').next().unwrap_or(rest).to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The deployed version of every org's workflows, compiled, for the orgs `known` admits. A
/// version that no longer compiles (it did when published) is left out and logged.
pub fn deployed(
    docs: &[Doc],
    known: &dyn Fn(&str) -> bool,
) -> HashMap<String, BTreeMap<String, Arc<Workflow>>> {
    let mut out: HashMap<String, BTreeMap<String, Arc<Workflow>>> = HashMap::new();
    for d in docs
        .iter()
        .filter(|d| d.kind == DEPLOYMENT && known(&d.org))
    {
        let Ok(dep) = serde_json::from_str::<Value>(&d.record) else {
            continue;
        };
        let (Some(name), Some(version)) = (dep["name"].as_str(), dep["version"].as_u64()) else {
            continue;
        };
        let Ok(version) = u32::try_from(version) else {
            continue;
        };
        let id = version_id(&d.org, name, version);
        let Some(rec) = docs
            .iter()
            .find(|v| v.kind == VERSION && v.id == id)
            .and_then(|v| serde_json::from_str::<Value>(&v.record).ok())
        else {
            log::error!("workflow {id}: deployed but not published");
            continue;
        };
        let src = source(&d.org, name, Some(version));
        match compile(&rec["definition"], name, version, &src) {
            Ok(w) => {
                out.entry(d.org.clone())
                    .or_default()
                    .insert(name.to_string(), Arc::new(w));
            }
            Err(p) => log::error!("workflow {src}: no longer valid: {}", p[0]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(kind: &str, id: &str, record: Value) -> Doc {
        Doc {
            kind: kind.into(),
            id: id.into(),
            org: id.split(':').next().unwrap().into(),
            record: record.to_string(),
        }
    }

    fn definition(expr: &str) -> Value {
        json!({"steps": [{"id": "a", "type": "transform", "expr": expr}]})
    }

    #[test]
    fn the_deployed_version_is_compiled_for_known_orgs_only() {
        let docs = vec![
            doc(VERSION, "acme:w:1", json!({"definition": definition("1")})),
            doc(VERSION, "acme:w:2", json!({"definition": definition("2")})),
            doc(DEPLOYMENT, "acme:w", json!({"name": "w", "version": 1})),
            doc(VERSION, "gone:w:1", json!({"definition": definition("1")})),
            doc(DEPLOYMENT, "gone:w", json!({"name": "w", "version": 1})),
        ];
        let d = deployed(&docs, &|o| o == "acme");
        assert_eq!(d.len(), 1);
        let w = &d["acme"]["w"];
        assert_eq!((w.name.as_str(), w.version), ("w", 1));
        assert_eq!(w.source, "api:acme/w@1");
        assert_eq!(versions(&docs, "acme", "w").len(), 2);
        assert_eq!(names(&docs, "acme"), vec!["w".to_string()]);
    }

    #[test]
    fn compile_names_the_step_path_and_guards_the_name() {
        let bad = json!({"steps": [{"id": "a", "type": "teleport"}]});
        let p = compile(&bad, "w", 1, "t").unwrap_err();
        assert!(p[0].path.starts_with("steps.a"), "{}", p[0]);
        let renamed = json!({"name": "other", "steps": []});
        assert_eq!(compile(&renamed, "w", 1, "t").unwrap_err()[0].path, "name");
        assert!(compile(&json!([1]), "w", 1, "t").is_err());
        let ok = compile(&definition("inputs"), "w", 7, "t").unwrap();
        assert_eq!(ok.version, 7);
    }
}

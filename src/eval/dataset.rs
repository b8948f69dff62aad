//! Datasets: JSONL files of cases. A case is one line — `messages` (a chat) or `vars` (values
//! for the eval's prompt template), an optional `expected` output, `tags`, and an `id`
//! (default: its line number). The dataset's version is the SHA-256 of its bytes, so every
//! result names the exact cases it was scored on.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub messages: Option<Vec<Value>>,
    pub vars: Value,
    pub expected: Option<Value>,
    pub tags: Vec<String>,
}

impl Case {
    /// The expected output as text (a string as is, anything else as JSON).
    pub fn expected_text(&self) -> Option<String> {
        self.expected.as_ref().map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    /// Hex SHA-256 of the file's bytes.
    pub hash: String,
    pub cases: Vec<Case>,
}

impl Dataset {
    /// `name@<first 12 hex digits of the hash>`: how results and reports name this version.
    pub fn version(&self) -> String {
        format!("{}@{}", self.name, &self.hash[..12])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    vars: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    expected: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Parses a dataset's text; every problem names its line.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Dataset, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| vec![format!("not UTF-8: {e}")])?;
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawCase = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("line {n}: {e}"));
                continue;
            }
        };
        let id = match raw.id {
            None => n.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(x)) => x.to_string(),
            Some(other) => {
                problems.push(format!("line {n}: id {other} is not a string or number"));
                continue;
            }
        };
        if raw.messages.is_none() && raw.vars.is_none() {
            problems.push(format!("line {n}: a case has `messages` or `vars`"));
            continue;
        }
        if let Some(m) = &raw.messages {
            if m.is_empty() || !m.iter().all(|x| x["role"].is_string()) {
                problems.push(format!(
                    "line {n}: `messages` is a non-empty list of {{role, content}}"
                ));
                continue;
            }
        }
        if !ids.insert(id.clone()) {
            problems.push(format!("line {n}: id `{id}` appears twice"));
            continue;
        }
        cases.push(Case {
            id,
            messages: raw.messages,
            vars: Value::Object(raw.vars.unwrap_or_default()),
            expected: raw.expected,
            tags: raw.tags,
        });
    }
    if cases.is_empty() && problems.is_empty() {
        problems.push("no cases".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Dataset {
        name: name.to_string(),
        hash: hex::encode(Sha256::digest(bytes)),
        cases,
    })
}

/// A registered version's cases as `eval_cases` holds them: (id, input JSON, expected JSON or
/// empty, tags).
pub fn from_rows(
    name: &str,
    hash: &str,
    rows: Vec<(String, String, String, Vec<String>)>,
) -> Result<Dataset, String> {
    let mut cases = Vec::new();
    for (id, input, expected, tags) in rows {
        let input: Value = serde_json::from_str(&input).map_err(|e| format!("case {id}: {e}"))?;
        let expected = if expected.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&expected).map_err(|e| format!("case {id}: {e}"))?)
        };
        let (messages, vars) = match input {
            Value::Array(m) => (Some(m), Value::Object(Default::default())),
            v => (None, v),
        };
        cases.push(Case {
            id,
            messages,
            vars,
            expected,
            tags,
        });
    }
    if cases.is_empty() {
        return Err(format!("dataset {name}@{hash} has no cases"));
    }
    Ok(Dataset {
        name: name.to_string(),
        hash: hash.to_string(),
        cases,
    })
}

/// A case's input as `eval_cases` stores it: the messages (a JSON array) or the vars (an
/// object).
pub fn input_json(c: &Case) -> String {
    match &c.messages {
        Some(m) => Value::Array(m.clone()).to_string(),
        None => c.vars.to_string(),
    }
}

pub fn load(path: &std::path::Path) -> Result<Dataset, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    parse(&name, &bytes).map_err(|p| format!("{}: {}", path.display(), p.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_with_line_numbered_problems_and_a_content_hash() {
        let good = b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"expected\": \"hi\"}\n\n{\"id\": \"b\", \"vars\": {\"x\": 1}, \"tags\": [\"t\"]}\n";
        let d = parse("d", good).unwrap();
        assert_eq!(d.cases.len(), 2);
        assert_eq!((d.cases[0].id.as_str(), d.cases[1].id.as_str()), ("1", "b"));
        assert_eq!(d.hash.len(), 64);
        let other = parse("d", b"{\"vars\": {\"x\": 2}}").unwrap();
        assert_ne!(d.hash, other.hash, "a change of content is a new version");
        let bad = b"{\"vars\": {}}\n{\"id\": \"1\", \"vars\": {}}\nnot json\n{\"tags\": []}\n";
        let p = parse("d", bad).unwrap_err();
        assert!(p[0].starts_with("line 2: id `1` appears twice"), "{p:?}");
        assert!(p[1].starts_with("line 3:"), "{p:?}");
        assert!(p[2].starts_with("line 4: a case has"), "{p:?}");
    }
}

//! An eval's definition (TOML): the dataset, the aliases it runs against, how a case becomes a
//! chat (its own `messages`, or the `prompt` template over its `vars`), request parameters,
//! scorers, and the run's caps (concurrency, USD budget).

use super::dataset::Dataset;
use super::scorer::{self, Named, ScorerSpec};
use crate::workflow::expr::Template;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    /// Relative to the spec file.
    dataset: String,
    targets: Vec<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    /// Decimal USD: no case starts once the run has spent this much.
    #[serde(default)]
    budget_usd: Option<String>,
    #[serde(default)]
    system: Option<String>,
    /// `{{ vars.<name> }}` templates (CEL) for cases given as `vars`.
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    scorers: Vec<ScorerSpec>,
}

fn default_concurrency() -> usize {
    4
}

/// Where a spec's cases come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetRef {
    /// A JSONL file.
    File(PathBuf),
    /// A dataset registered in ClickHouse (`registered:<name>`, or `registered:<name>@<hash
    /// prefix>` for one version; default its latest).
    Registered {
        name: String,
        version: Option<String>,
    },
}

pub struct Spec {
    pub name: String,
    pub dataset: DatasetRef,
    pub targets: Vec<String>,
    pub concurrency: usize,
    pub budget_nanousd: Option<i128>,
    pub system: Option<String>,
    pub prompt: Option<Template>,
    pub params: serde_json::Map<String, Value>,
    pub scorers: Vec<Named>,
}

/// Request fields the eval sets itself.
const RESERVED: &[&str] = &["model", "messages", "stream", "stream_options", "n"];

pub fn parse(text: &str, base: &Path) -> Result<Spec, String> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    if raw.targets.is_empty() {
        return Err("targets: at least one model alias".into());
    }
    if !(1..=64).contains(&raw.concurrency) {
        return Err("concurrency: 1 to 64".into());
    }
    if let Some(k) = raw.params.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(format!("params.{k}: set by the eval itself"));
    }
    let budget_nanousd = raw
        .budget_usd
        .as_deref()
        .map(|b| crate::usage::pricing::parse_usd(b).map_err(|e| format!("budget_usd: {e}")))
        .transpose()?;
    let prompt = raw
        .prompt
        .as_deref()
        .map(|p| Template::parse(p).map_err(|e| format!("prompt: {e}")))
        .transpose()?;
    let mut scorers = Vec::new();
    for s in &raw.scorers {
        let n = scorer::compile(s)?;
        if scorers.iter().any(|x: &Named| x.name == n.name) {
            return Err(format!("scorers: `{}` twice (give one a `name`)", n.name));
        }
        scorers.push(n);
    }
    Ok(Spec {
        name: raw.name,
        dataset: match raw.dataset.strip_prefix("registered:") {
            Some(r) => {
                let (name, version) = match r.split_once('@') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (r.to_string(), None),
                };
                if name.is_empty()
                    || version
                        .as_ref()
                        .is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(
                        "dataset: registered:<name> or registered:<name>@<hash prefix>".into(),
                    );
                }
                DatasetRef::Registered { name, version }
            }
            None => DatasetRef::File(base.join(raw.dataset)),
        },
        targets: raw.targets,
        concurrency: raw.concurrency,
        budget_nanousd,
        system: raw.system,
        prompt,
        params: raw.params,
        scorers,
    })
}

pub fn load(path: &Path) -> Result<Spec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
}

impl Spec {
    /// The chat a case becomes.
    pub fn messages(&self, case: &super::dataset::Case) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        if let Some(s) = &self.system {
            out.push(json!({"role": "system", "content": s}));
        }
        match (&case.messages, &self.prompt) {
            (Some(m), _) => out.extend(m.iter().cloned()),
            (None, Some(t)) => {
                let text = t.render(&json!({"vars": case.vars}))?;
                out.push(json!({"role": "user", "content": text}));
            }
            (None, None) => return Err("the case has only `vars` and the eval no `prompt`".into()),
        }
        Ok(out)
    }

    /// Checks every case becomes a chat before anything is sent.
    pub fn check(&self, d: &Dataset) -> Result<(), String> {
        for c in &d.cases {
            self.messages(c)
                .map_err(|e| format!("case `{}`: {e}", c.id))?;
        }
        Ok(())
    }
}

/// The question a judge sees: the case's last user message.
pub fn question(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the fenced block that follows `marker` in the README.
    fn block_after<'a>(readme: &'a str, marker: &str) -> &'a str {
        let at = readme.find(marker).expect("the marker");
        let open = at + readme[at..].find("```").expect("a block");
        let start = open + readme[open..].find('\n').expect("its first line") + 1;
        let end = start + readme[start..].find("\n```").expect("its end");
        &readme[start..end]
    }

    #[test]
    fn the_readme_example_parses_and_its_cases_become_chats() {
        let readme = include_str!("../../README.md");
        let spec = parse(
            block_after(readme, "The eval (`evals/support.toml`)"),
            Path::new("evals"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.targets, ["support-bot", "support-bot-next"]);
        assert_eq!(spec.budget_nanousd, Some(2_500_000_000));
        assert_eq!(spec.scorers.len(), 4);
        let cases = block_after(readme, "`evals/support.jsonl`");
        let ds = super::super::dataset::parse("support", cases.as_bytes()).unwrap();
        spec.check(&ds).unwrap();
        let chat = spec.messages(&ds.cases[1]).unwrap();
        assert_eq!(chat[1]["content"], "Give the status of order A-17 as JSON.");
        assert_eq!(question(&chat), "Give the status of order A-17 as JSON.");
    }

    #[test]
    fn a_spec_refuses_what_it_cannot_run() {
        let base = Path::new(".");
        let ok = "name = \"e\"\ndataset = \"d.jsonl\"\ntargets = [\"m\"]\n";
        assert!(parse(ok, base).is_ok());
        for (bad, why) in [
            ("targets = []", "targets"),
            ("concurrency = 0", "concurrency"),
            ("params = { stream = false }", "params.stream"),
            ("budget_usd = \"-1\"", "budget_usd"),
            ("prompt = \"{{ vars.\"", "prompt"),
        ] {
            let text = if bad.starts_with("targets") {
                ok.replace("targets = [\"m\"]", bad)
            } else {
                format!("{ok}{bad}\n")
            };
            let e = parse(&text, base)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with(why), "{bad}: {e}");
        }
    }
}

//! Workflow definitions: a name, a version, and a block of steps — each block a DAG (a step
//! runs after those it `needs`, by default after the step before it; steps whose needs are met
//! run together). Step types: `llm`, `transform`, `condition`, `loop`, `parallel`,
//! `api_call`; each may have a timeout, retries with backoff, and an error branch
//! (`on_error`, a block that runs when the step fails for good and gives the step's output).
//! Validation names the step path of every problem (`steps.each.steps.summarize.messages.0`).

use super::expr::{Expr, Template};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub name: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<RawStep>,
    /// The run's result; default: the last step's output.
    #[serde(default)]
    pub output: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub needs: Option<Vec<String>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub on_error: Option<Vec<RawStep>>,
    // llm
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, Value>>,
    // transform
    #[serde(default)]
    pub expr: Option<String>,
    // condition
    #[serde(default, rename = "if")]
    pub cond: Option<String>,
    #[serde(default)]
    pub then: Option<Vec<RawStep>>,
    #[serde(default, rename = "else")]
    pub otherwise: Option<Vec<RawStep>>,
    // loop
    #[serde(default)]
    pub over: Option<String>,
    #[serde(default)]
    pub steps: Option<Vec<RawStep>>,
    #[serde(default)]
    pub parallelism: Option<usize>,
    // parallel
    #[serde(default)]
    pub branches: Option<BTreeMap<String, Vec<RawStep>>>,
    // api_call
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Header name → environment variable holding its value (a secret never in the file).
    #[serde(default)]
    pub secret_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub max: u32,
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_backoff() -> u64 {
    100
}

/// A validated workflow.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    pub steps: Block,
    pub output: Option<Expr>,
    /// Where it was defined (a file path).
    pub source: String,
}

/// Steps in dependency order: `deps[i]` are the indices `steps[i]` waits for.
#[derive(Debug, Default)]
pub struct Block {
    pub steps: Vec<Arc<Step>>,
    pub deps: Vec<Vec<usize>>,
}

#[derive(Debug)]
pub struct Step {
    pub id: String,
    /// Dotted path from the workflow's root (`steps.each.steps.summarize`).
    pub path: String,
    pub kind: Kind,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
    pub on_error: Option<Block>,
}

#[derive(Debug)]
pub enum Kind {
    Llm {
        model: String,
        messages: Vec<(String, Template)>,
        params: serde_json::Map<String, Value>,
    },
    Transform(Expr),
    Condition {
        cond: Expr,
        then: Block,
        otherwise: Block,
    },
    Loop {
        over: Expr,
        body: Block,
        parallelism: usize,
    },
    Parallel(Vec<(String, Block)>),
    ApiCall {
        method: reqwest::Method,
        url: Template,
        headers: Vec<(String, Template)>,
        secret_headers: Vec<(String, String)>,
        body: Option<Template>,
    },
    /// What a step that failed validation holds; a workflow with one is never built.
    Invalid,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Llm { .. } => "llm",
            Kind::Transform(_) => "transform",
            Kind::Condition { .. } => "condition",
            Kind::Loop { .. } => "loop",
            Kind::Parallel(_) => "parallel",
            Kind::ApiCall { .. } => "api_call",
            Kind::Invalid => "invalid",
        }
    }
}

/// One problem, at a step path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

const TYPES: &[&str] = &[
    "llm",
    "transform",
    "condition",
    "loop",
    "parallel",
    "api_call",
];

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Validates a parsed definition; every problem is reported, each at its step path.
pub fn validate(raw: RawWorkflow, source: &str) -> Result<Workflow, Vec<Problem>> {
    let mut problems = Vec::new();
    if !crate::config::valid_name(&raw.name) {
        problems.push(Problem {
            path: "name".into(),
            reason: format!("`{}` is not 1-64 of a-z, 0-9, - _ .", raw.name),
        });
    }
    let steps = block(&raw.steps, "steps", &HashSet::new(), &mut problems);
    let every: HashSet<String> = all_ids(&raw.steps);
    let output = raw.output.as_deref().and_then(|o| match Expr::compile(o) {
        Ok(e) => {
            for r in e.step_refs() {
                if !every.contains(&r) {
                    problems.push(Problem {
                        path: "output".into(),
                        reason: format!("refers to step `{r}`, which does not exist"),
                    });
                }
            }
            Some(e)
        }
        Err(reason) => {
            problems.push(Problem {
                path: "output".into(),
                reason,
            });
            None
        }
    });
    if raw.steps.is_empty() {
        problems.push(Problem {
            path: "steps".into(),
            reason: "a workflow has at least one step".into(),
        });
    }
    if problems.is_empty() {
        Ok(Workflow {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            steps,
            output,
            source: source.to_string(),
        })
    } else {
        Err(problems)
    }
}

fn all_ids(steps: &[RawStep]) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in steps {
        out.insert(s.id.clone());
        for b in [&s.then, &s.otherwise, &s.steps, &s.on_error]
            .into_iter()
            .flatten()
        {
            out.extend(all_ids(b));
        }
        for b in s.branches.iter().flat_map(|b| b.values()) {
            out.extend(all_ids(b));
        }
    }
    out
}

/// Validates one block: ids, the DAG of needs (default: the previous step), and each step.
/// `outer` are the ids that ran before this block (readable through `steps.<id>`).
fn block(raw: &[RawStep], at: &str, outer: &HashSet<String>, problems: &mut Vec<Problem>) -> Block {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in raw.iter().enumerate() {
        let path = format!("{at}.{}", s.id);
        if !valid_id(&s.id) {
            problems.push(Problem {
                path: format!("{at}.{i}"),
                reason: format!(
                    "step id `{}` is not a-z, 0-9, _ (not starting with a digit)",
                    s.id
                ),
            });
        } else if index.insert(&s.id, i).is_some() || outer.contains(&s.id) {
            problems.push(Problem {
                path,
                reason: format!("step id `{}` is used twice", s.id),
            });
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let path = format!("{at}.{}", s.id);
        let d = match &s.needs {
            None => i.checked_sub(1).into_iter().collect(),
            Some(needs) => {
                let mut d = Vec::new();
                for n in needs {
                    match index.get(n.as_str()) {
                        Some(j) => d.push(*j),
                        None => problems.push(Problem {
                            path: format!("{path}.needs"),
                            reason: format!("needs `{n}`, which is not a step of this block"),
                        }),
                    }
                }
                d
            }
        };
        deps.push(d);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle.iter().map(|i| raw[*i].id.as_str()).collect();
        problems.push(Problem {
            path: format!("{at}.{}", raw[cycle[0]].id),
            reason: format!("needs form a cycle: {}", names.join(" -> ")),
        });
    }
    let mut steps = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        // What this step may read: the outer ids and every step it (transitively) needs.
        let mut visible = outer.clone();
        let mut stack = deps[i].clone();
        let mut seen = HashSet::new();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                visible.insert(raw[j].id.clone());
                stack.extend(deps[j].iter().copied());
            }
        }
        steps.push(Arc::new(step(
            s,
            &format!("{at}.{}", s.id),
            &visible,
            problems,
        )));
    }
    Block { steps, deps }
}

/// A cycle among `deps`, as indices, if any.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state = vec![0u8; deps.len()];
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> bool {
        state[i] = 1;
        path.push(i);
        for &j in &deps[i] {
            if state[j] == 1 {
                let from = path.iter().position(|p| *p == j).unwrap_or(0);
                path.drain(..from);
                path.push(j);
                return true;
            }
            if state[j] == 0 && visit(j, deps, state, path) {
                return true;
            }
        }
        path.pop();
        state[i] = 2;
        false
    }
    for i in 0..deps.len() {
        let mut path = Vec::new();
        if state[i] == 0 && visit(i, deps, &mut state, &mut path) {
            return Some(path);
        }
    }
    None
}

fn step(s: &RawStep, path: &str, visible: &HashSet<String>, problems: &mut Vec<Problem>) -> Step {
    // This step's own problems (nested blocks report into `problems` directly).
    let mut own: Vec<Problem> = Vec::new();
    let mut bad = |field: &str, reason: String| {
        own.push(Problem {
            path: if field.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{field}")
            },
            reason,
        })
    };
    // Reads of steps that have not run by then are dangling.
    let check_refs = |field: &str, refs: Vec<String>, bad: &mut dyn FnMut(&str, String)| {
        for r in refs {
            if !visible.contains(&r) {
                bad(
                    field,
                    format!("refers to step `{r}`, which does not run before this step"),
                );
            }
        }
    };
    let expr = |field: &str, text: Option<&String>, bad: &mut dyn FnMut(&str, String)| match text
        .map(|t| Expr::compile(t))
    {
        Some(Ok(e)) => {
            check_refs(field, e.step_refs(), bad);
            Some(e)
        }
        Some(Err(r)) => {
            bad(field, r);
            None
        }
        None => {
            bad(field, "is required".into());
            None
        }
    };
    let template =
        |field: &str, text: &str, bad: &mut dyn FnMut(&str, String)| match Template::parse(text) {
            Ok(t) => {
                check_refs(field, t.step_refs(), bad);
                Some(t)
            }
            Err(r) => {
                bad(field, r);
                None
            }
        };
    let nested = |b: Option<&[RawStep]>, field: &str, problems: &mut Vec<Problem>| {
        b.map(|b| block(b, &format!("{path}.{field}"), visible, problems))
            .unwrap_or_default()
    };
    let placeholder = || Kind::Invalid;
    let kind = match s.kind.as_str() {
        "llm" => {
            let model = s.model.clone().unwrap_or_default();
            if model.is_empty() {
                bad("model", "is required".into());
            } else if model.starts_with("workflow:") {
                bad("model", "a workflow step cannot call a workflow".into());
            }
            let mut messages = Vec::new();
            match &s.messages {
                Some(m) if !m.is_empty() => {
                    for (i, msg) in m.iter().enumerate() {
                        if !["system", "user", "assistant", "developer"]
                            .contains(&msg.role.as_str())
                        {
                            bad(
                                &format!("messages.{i}.role"),
                                format!("unknown role `{}`", msg.role),
                            );
                        }
                        if let Some(t) =
                            template(&format!("messages.{i}.content"), &msg.content, &mut bad)
                        {
                            messages.push((msg.role.clone(), t));
                        }
                    }
                }
                _ => bad("messages", "at least one message is required".into()),
            }
            let params = s.params.clone().unwrap_or_default();
            for k in ["model", "messages", "stream", "stream_options"] {
                if params.contains_key(k) {
                    bad(&format!("params.{k}"), "is set by the step itself".into());
                }
            }
            Kind::Llm {
                model,
                messages,
                params,
            }
        }
        "transform" => {
            expr("expr", s.expr.as_ref(), &mut bad).map_or_else(placeholder, Kind::Transform)
        }
        "condition" => {
            let cond = expr("if", s.cond.as_ref(), &mut bad);
            let then = nested(s.then.as_deref(), "then", problems);
            let otherwise = nested(s.otherwise.as_deref(), "else", problems);
            cond.map_or_else(placeholder, |cond| Kind::Condition {
                cond,
                then,
                otherwise,
            })
        }
        "loop" => {
            let over = expr("over", s.over.as_ref(), &mut bad);
            if s.steps.as_ref().is_none_or(Vec::is_empty) {
                bad("steps", "a loop has at least one step".into());
            }
            let body = nested(s.steps.as_deref(), "steps", problems);
            let parallelism = s.parallelism.unwrap_or(1);
            if !(1..=64).contains(&parallelism) {
                bad("parallelism", "is 1..=64".into());
            }
            over.map_or_else(placeholder, |over| Kind::Loop {
                over,
                body,
                parallelism: parallelism.clamp(1, 64),
            })
        }
        "parallel" => {
            let mut branches = Vec::new();
            match &s.branches {
                Some(b) if b.len() >= 2 => {
                    for (name, steps) in b {
                        if steps.is_empty() {
                            bad(
                                &format!("branches.{name}"),
                                "a branch has at least one step".into(),
                            );
                        }
                        let b = nested(Some(steps), &format!("branches.{name}"), problems);
                        branches.push((name.clone(), b));
                    }
                }
                _ => bad(
                    "branches",
                    "a parallel step has at least two branches".into(),
                ),
            }
            Kind::Parallel(branches)
        }
        "api_call" => {
            let method = match s
                .method
                .as_deref()
                .unwrap_or("GET")
                .to_ascii_uppercase()
                .as_str()
            {
                "GET" => reqwest::Method::GET,
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                "DELETE" => reqwest::Method::DELETE,
                m => {
                    bad(
                        "method",
                        format!("`{m}` is not GET, POST, PUT, PATCH or DELETE"),
                    );
                    reqwest::Method::GET
                }
            };
            let url = match &s.url {
                Some(u) => template("url", u, &mut bad),
                None => {
                    bad("url", "is required".into());
                    None
                }
            };
            let mut headers = Vec::new();
            for (k, v) in s.headers.iter().flatten() {
                if let Some(t) = template(&format!("headers.{k}"), v, &mut bad) {
                    headers.push((k.clone(), t));
                }
            }
            let secret_headers: Vec<(String, String)> = s
                .secret_headers
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let body = s.body.as_ref().and_then(|b| template("body", b, &mut bad));
            match url {
                Some(url) => Kind::ApiCall {
                    method,
                    url,
                    headers,
                    secret_headers,
                    body,
                },
                None => placeholder(),
            }
        }
        other => {
            bad(
                "type",
                format!("unknown step type `{other}` (one of {})", TYPES.join(", ")),
            );
            placeholder()
        }
    };
    let retries = s.retries.map_or(0, |r| r.max);
    if retries > 10 {
        bad("retries.max", "is at most 10".into());
    }
    let on_error = s.on_error.as_ref().map(|b| {
        let mut v = visible.clone();
        v.insert(s.id.clone());
        block(b, &format!("{path}.on_error"), &v, problems)
    });
    problems.extend(own);
    Step {
        id: s.id.clone(),
        path: path.to_string(),
        kind,
        timeout: s.timeout_ms.map(Duration::from_millis),
        retries: retries.min(10),
        backoff: Duration::from_millis(s.retries.map_or(100, |r| r.backoff_ms)),
        on_error,
    }
}

/// Parses a definition file's text (JSON, or TOML for `.toml` paths) and validates it.
pub fn parse(text: &str, path: &str) -> Result<Workflow, Vec<Problem>> {
    let raw: Result<RawWorkflow, String> = if path.ends_with(".toml") {
        toml::from_str(text).map_err(|e| e.message().to_string())
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())
    };
    match raw {
        Ok(r) => validate(r, path),
        Err(reason) => Err(vec![Problem {
            path: "(file)".into(),
            reason,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        match validate(serde_json::from_value(v).unwrap(), "t.json") {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_definition_validates() {
        let p = problems(json!({"name": "w", "steps": [
            {"id": "a", "type": "transform", "expr": "inputs.items"},
            {"id": "each", "type": "loop", "over": "steps.a.output", "parallelism": 4, "steps": [
                {"id": "up", "type": "transform", "expr": "item * 2"}]},
            {"id": "both", "type": "parallel", "branches": {
                "x": [{"id": "x1", "type": "transform", "expr": "steps.each.output"}],
                "y": [{"id": "y1", "type": "transform", "expr": "1"}]}},
            {"id": "c", "type": "condition", "if": "size(steps.each.output) > 2",
             "then": [{"id": "t", "type": "transform", "expr": "'big'"}],
             "else": [{"id": "e", "type": "transform", "expr": "'small'"}]},
            {"id": "call", "type": "api_call", "url": "http://x/{{ steps.c.output }}",
             "retries": {"max": 2}, "on_error": [{"id": "f", "type": "transform", "expr": "error.message"}]}
        ], "output": "steps.call.output"}));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn every_problem_names_its_step_path() {
        let p = problems(json!({"name": "w", "steps": [
            {"id": "a", "type": "nope"},
            {"id": "b", "type": "transform", "expr": "1 +"},
            {"id": "c", "type": "transform", "expr": "steps.later.output"},
            {"id": "later", "type": "transform", "expr": "1"},
            {"id": "loop", "type": "loop", "over": "inputs.x", "steps": [
                {"id": "inner", "type": "llm", "model": "m", "messages": [{"role": "user", "content": "{{ steps.ghost.output }}"}]}]},
            {"id": "d", "type": "transform", "expr": "1", "needs": ["missing"]}
        ]}));
        let want = [
            "steps.a.type: unknown step type `nope`",
            "steps.b.expr: expression `1 +` does not compile",
            "steps.c.expr: refers to step `later`, which does not run before this step",
            "steps.loop.steps.inner.messages.0.content: refers to step `ghost`",
            "steps.d.needs: needs `missing`",
        ];
        for w in want {
            assert!(p.iter().any(|x| x.starts_with(w)), "{w} not in {p:?}");
        }
    }

    #[test]
    fn cycles_are_named() {
        let p = problems(json!({"name": "w", "steps": [
            {"id": "a", "type": "transform", "expr": "1", "needs": ["b"]},
            {"id": "b", "type": "transform", "expr": "1", "needs": ["a"]}
        ]}));
        assert!(
            p.iter()
                .any(|x| x.contains("needs form a cycle: a -> b -> a")),
            "{p:?}"
        );
    }

    #[test]
    fn the_readme_example_validates_and_its_expressions_run() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("{\n  \"name\": \"triage\"")
            .expect("the example");
        let end = start + readme[start..].find("\n```").expect("its end");
        let w = parse(&readme[start..end], "triage.json").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!((w.name.as_str(), w.version), ("triage", 3));
        let count = Expr::compile("steps.each.output.filter(c, c == 'bug').size()").unwrap();
        let scope = json!({"steps": {"each": {"output": ["bug", "other", "bug"]}}});
        assert_eq!(count.eval(&scope).unwrap(), json!(2));
    }
}

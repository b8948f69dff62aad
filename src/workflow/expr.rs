//! Expressions and templates of workflow steps, in CEL (the `cel` crate, the cel-rust
//! interpreter: the language Envoy and agentgateway use for policy). An expression sees
//! `inputs`, `steps` (`steps.<id>.output`), and in a loop `item` / `index`, in an error branch
//! `error` (`error.message`, `error.step`). A template is text with `{{ <expression> }}` parts.

use serde_json::Value;
use std::sync::Arc;

/// CEL's standard functions and macros, built once (building them per evaluation was most of
/// a step's cost).
static STDLIB: std::sync::LazyLock<Arc<cel::Env>> =
    std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled expression, shareable across runs.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
    /// The variables it reads, and the step ids it reads through `steps`: only those are
    /// converted for an evaluation (a long run's `steps` is not copied at every step).
    vars: Arc<[String]>,
    steps: Arc<[String]>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({})", self.source)
    }
}

impl Expr {
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = cel::Program::compile(source).map_err(|e| {
            let text = e.to_string();
            format!(
                "expression `{source}` does not compile: {}",
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        let vars: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Self {
            source: Arc::from(source),
            program: Arc::new(program),
            vars: vars.into(),
            steps: step_refs(source).into(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Step ids this expression reads through `steps.<id>`.
    pub fn step_refs(&self) -> Vec<String> {
        step_refs(&self.source)
    }

    /// Evaluates against `scope` (a JSON object of the variables).
    pub fn eval(&self, scope: &Value) -> Result<Value, String> {
        let mut ctx = cel::Context::with_env(STDLIB.clone());
        for name in self.vars.iter() {
            let Some(v) = scope.get(name.as_str()) else {
                continue;
            };
            let value = match (name.as_str(), v.as_object()) {
                // `steps.<id>` with ids named literally: just those steps.
                ("steps", Some(all)) if !self.steps.is_empty() => {
                    let some: std::collections::HashMap<String, cel::Value> = self
                        .steps
                        .iter()
                        .filter_map(|id| all.get(id).map(|s| (id.clone(), to_cel(s))))
                        .collect();
                    cel::Value::from(some)
                }
                _ => to_cel(v),
            };
            ctx.add_variable_from_value(name.as_str(), value);
        }
        let out = self
            .program
            .execute(&ctx)
            .map_err(|e| format!("`{}`: {e}", self.source))?;
        out.json()
            .map_err(|e| format!("`{}`: result is not JSON: {e:?}", self.source))
    }
}

/// JSON as CEL values: whole numbers are `int` (as CEL literals are), so `n * 2` works on a
/// number from JSON; only those beyond i64 are `uint`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let m: std::collections::HashMap<String, cel::Value> =
                o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(m)
        }
    }
}

/// `steps.<id>` occurrences in an expression's text.
fn step_refs(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("steps.") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i + 6..];
        let id: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !id.is_empty()
            && !out.contains(&id)
        {
            out.push(id.clone());
        }
        rest = &tail[id.len()..];
    }
    out
}

/// Text with `{{ expression }}` parts: strings are inserted as they are, other values as JSON.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("template `{text}` has an unclosed `{{{{`"))?;
            parts.push(Part::Expr(Expr::compile(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    pub fn step_refs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.parts {
            if let Part::Expr(e) = p {
                for r in e.step_refs() {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    pub fn render(&self, scope: &Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match e.eval(scope)? {
                    Value::String(s) => out.push_str(&s),
                    v => out.push_str(&v.to_string()),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_read_the_run() {
        let scope =
            json!({"inputs": {"n": 3, "items": [1, 2, 3]}, "steps": {"a": {"output": "x"}}});
        let e = Expr::compile("size(inputs.items) > 2 && steps.a.output == 'x'").unwrap();
        assert_eq!(e.eval(&scope).unwrap(), json!(true));
        assert_eq!(
            Expr::compile("inputs.items.map(i, i * 2)")
                .unwrap()
                .eval(&scope)
                .unwrap(),
            json!([2, 4, 6])
        );
        assert_eq!(e.step_refs(), vec!["a".to_string()]);
        assert!(Expr::compile("inputs.").is_err());
        // An unknown name fails when evaluated (macros bind names of their own, so the
        // variables read are not known before).
        let err = Expr::compile("secrets.token")
            .unwrap()
            .eval(&scope)
            .unwrap_err();
        assert!(err.contains("secrets"), "{err}");
    }

    #[test]
    fn templates_insert_values() {
        let scope = json!({"inputs": {"name": "Ann", "tags": ["a"]}, "steps": {}});
        let t = Template::parse("Hi {{ inputs.name }}, tags {{inputs.tags}}.").unwrap();
        assert_eq!(t.render(&scope).unwrap(), r#"Hi Ann, tags ["a"]."#);
        assert!(Template::parse("{{ inputs.name ").is_err());
        let t = Template::parse("{{ steps.first.output }} and {{ steps.second.output }}").unwrap();
        assert_eq!(
            t.step_refs(),
            vec!["first".to_string(), "second".to_string()]
        );
    }
}

//! Scorers: each turns a case's output into a score in [0, 1] and a pass. Deterministic ones —
//! exact, contains, regex, JSON validity, JSON-schema conformance (the `jsonschema` crate),
//! numeric tolerance — and model-based ones that call the gateway like any case: embedding
//! similarity through an embeddings alias, and LLM-as-judge through a judge alias with a rubric,
//! either grading (`SCORE: <0-10>`) or comparing with the expected answer pairwise in both
//! orders, so a judge that favours a position cancels out.

use super::dataset::Case;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSpec {
    #[serde(rename = "type")]
    pub kind: String,
    /// Default: the type.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// The alias an embedding or judge scorer calls.
    #[serde(default)]
    pub model: Option<String>,
    /// Pass at or above this score (embedding: cosine similarity; default 0.8; judge: 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub rubric: Option<String>,
    /// Judge: `grade` (default) or `pairwise` (against the case's expected output).
    #[serde(default)]
    pub mode: Option<String>,
}

/// What a scorer does, compiled once per run.
pub enum Scorer {
    Exact {
        ignore_case: bool,
    },
    Contains {
        ignore_case: bool,
    },
    Regex(regex::Regex),
    JsonValid,
    JsonSchema(Box<jsonschema::Validator>),
    Numeric {
        tolerance: f64,
    },
    Embedding {
        model: String,
        threshold: f64,
    },
    Judge {
        model: String,
        rubric: String,
        pairwise: bool,
        threshold: f64,
    },
}

pub struct Named {
    pub name: String,
    pub scorer: Scorer,
}

pub fn compile(spec: &ScorerSpec) -> Result<Named, String> {
    let name = spec.name.clone().unwrap_or_else(|| spec.kind.clone());
    let model = || {
        spec.model
            .clone()
            .ok_or_else(|| format!("scorer `{name}`: `{}` needs `model`", spec.kind))
    };
    let scorer = match spec.kind.as_str() {
        "exact" => Scorer::Exact {
            ignore_case: spec.ignore_case,
        },
        "contains" => Scorer::Contains {
            ignore_case: spec.ignore_case,
        },
        "regex" => {
            let p = spec
                .pattern
                .as_deref()
                .ok_or_else(|| format!("scorer `{name}`: regex needs `pattern`"))?;
            Scorer::Regex(
                regex::RegexBuilder::new(p)
                    .case_insensitive(spec.ignore_case)
                    .build()
                    .map_err(|e| format!("scorer `{name}`: {e}"))?,
            )
        }
        "json_valid" => Scorer::JsonValid,
        "json_schema" => {
            let s = spec
                .schema
                .as_ref()
                .ok_or_else(|| format!("scorer `{name}`: json_schema needs `schema`"))?;
            Scorer::JsonSchema(Box::new(
                jsonschema::validator_for(s).map_err(|e| format!("scorer `{name}`: {e}"))?,
            ))
        }
        "numeric" => Scorer::Numeric {
            tolerance: spec.tolerance.unwrap_or(0.0).abs(),
        },
        "embedding" => Scorer::Embedding {
            model: model()?,
            threshold: spec.threshold.unwrap_or(0.8),
        },
        "judge" => {
            let pairwise = match spec.mode.as_deref() {
                None | Some("grade") => false,
                Some("pairwise") => true,
                Some(m) => return Err(format!("scorer `{name}`: mode `{m}` is grade or pairwise")),
            };
            Scorer::Judge {
                model: model()?,
                rubric: spec
                    .rubric
                    .clone()
                    .unwrap_or_else(|| "Judge correctness, completeness and clarity.".into()),
                pairwise,
                threshold: spec.threshold.unwrap_or(0.5),
            }
        }
        k => {
            return Err(format!(
                "scorer `{name}`: unknown type `{k}` (exact, contains, regex, json_valid, json_schema, numeric, embedding, judge)"
            ))
        }
    };
    Ok(Named { name, scorer })
}

/// One scorer's verdict on one output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    pub value: f64,
    pub pass: bool,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl Score {
    fn binary(pass: bool) -> Score {
        Score {
            value: if pass { 1.0 } else { 0.0 },
            pass,
            detail: Value::Null,
        }
    }
}

fn fold(s: &str, ignore_case: bool) -> String {
    if ignore_case {
        s.trim().to_lowercase()
    } else {
        s.trim().to_string()
    }
}

/// The first JSON value in `text` (a fenced ```json block or the whole text).
fn json_in(text: &str) -> Option<Value> {
    let t = text.trim();
    let inner = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(inner.trim()).ok()
}

fn number_in(text: &str) -> Option<f64> {
    // A literal pattern: it compiles, so the `None` arm is never taken.
    static NUM: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?").ok());
    NUM.as_ref()?.find(text)?.as_str().parse().ok()
}

/// Scores a deterministic scorer; `None` for the model-based ones.
pub fn score_local(s: &Scorer, case: &Case, output: &str) -> Option<Result<Score, String>> {
    let expected = case.expected_text();
    let need = || {
        expected
            .clone()
            .ok_or_else(|| "the case has no `expected`".to_string())
    };
    Some(match s {
        Scorer::Exact { ignore_case } => {
            need().map(|e| Score::binary(fold(output, *ignore_case) == fold(&e, *ignore_case)))
        }
        Scorer::Contains { ignore_case } => need()
            .map(|e| Score::binary(fold(output, *ignore_case).contains(&fold(&e, *ignore_case)))),
        Scorer::Regex(r) => Ok(Score::binary(r.is_match(output))),
        Scorer::JsonValid => Ok(Score::binary(json_in(output).is_some())),
        Scorer::JsonSchema(v) => Ok(match json_in(output) {
            None => Score {
                value: 0.0,
                pass: false,
                detail: json!({"error": "not JSON"}),
            },
            Some(doc) => {
                let errors: Vec<String> =
                    v.iter_errors(&doc).take(3).map(|e| e.to_string()).collect();
                Score {
                    value: if errors.is_empty() { 1.0 } else { 0.0 },
                    pass: errors.is_empty(),
                    detail: if errors.is_empty() {
                        Value::Null
                    } else {
                        json!({"errors": errors})
                    },
                }
            }
        }),
        Scorer::Numeric { tolerance } => {
            let want = case
                .expected
                .as_ref()
                .and_then(|e| e.as_f64().or_else(|| e.as_str().and_then(number_in)));
            match (want, number_in(output)) {
                (None, _) => Err("the case's `expected` is not a number".into()),
                (Some(_), None) => Ok(Score::binary(false)),
                (Some(w), Some(got)) => Ok(Score::binary((got - w).abs() <= *tolerance)),
            }
        }
        Scorer::Embedding { .. } | Scorer::Judge { .. } => return None,
    })
}

/// Cosine similarity of two vectors (0 when either is all zeros or they differ in length).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The judge's messages for grading `answer` to `question`.
pub fn grade_prompt(rubric: &str, question: &str, answer: &str, reference: Option<&str>) -> Value {
    let reference = reference
        .map(|r| format!("<reference>\n{r}\n</reference>\n"))
        .unwrap_or_default();
    json!([
        {"role": "system", "content": format!("You are an impartial judge. Rubric: {rubric}\nReply with one line: SCORE: <0-10>.")},
        {"role": "user", "content": format!("<question>\n{question}\n</question>\n{reference}<answer>\n{answer}\n</answer>")}
    ])
}

/// The judge's messages comparing answer A with answer B.
pub fn pairwise_prompt(rubric: &str, question: &str, a: &str, b: &str) -> Value {
    json!([
        {"role": "system", "content": format!("You are an impartial judge. Rubric: {rubric}\nCompare the two answers; reply with exactly one of: A, B, TIE.")},
        {"role": "user", "content": format!("<question>\n{question}\n</question>\n<answer_a>\n{a}\n</answer_a>\n<answer_b>\n{b}\n</answer_b>")}
    ])
}

/// `SCORE: n` (0-10) in a judge's reply, as a fraction.
pub fn parse_grade(reply: &str) -> Option<f64> {
    let at = reply.to_ascii_uppercase().rfind("SCORE")?;
    let n = number_in(&reply[at..])?;
    (0.0..=10.0).contains(&n).then_some(n / 10.0)
}

/// `A`, `B` or `TIE` in a judge's reply.
pub fn parse_choice(reply: &str) -> Option<char> {
    let t = reply
        .trim()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric());
    match t.to_ascii_uppercase().as_str() {
        "A" => Some('A'),
        "B" => Some('B'),
        "TIE" => Some('T'),
        _ => None,
    }
}

/// The candidate's points from the two orders: `ab` has the candidate as A, `ba` as B. A win
/// is 1, a tie ½, a loss 0; the score is their mean, so a judge that always picks the same
/// position scores every pair ½.
pub fn pairwise_points(ab: char, ba: char) -> f64 {
    let p = |c: char, mine: char| match c {
        c if c == mine => 1.0,
        'T' => 0.5,
        _ => 0.0,
    };
    (p(ab, 'A') + p(ba, 'B')) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expected: Value) -> Case {
        Case {
            id: "1".into(),
            messages: None,
            vars: json!({}),
            expected: Some(expected),
            tags: vec![],
        }
    }

    fn spec(kind: &str, extra: Value) -> ScorerSpec {
        let mut v = json!({"type": kind});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn run(kind: &str, extra: Value, expected: Value, output: &str) -> Score {
        let s = compile(&spec(kind, extra)).unwrap();
        score_local(&s.scorer, &case(expected), output)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn deterministic_scorers_have_known_answers() {
        assert!(run("exact", json!({}), json!("Paris"), " Paris\n").pass);
        assert!(!run("exact", json!({}), json!("Paris"), "paris").pass);
        assert!(
            run(
                "exact",
                json!({"ignore_case": true}),
                json!("Paris"),
                "paris"
            )
            .pass
        );
        assert!(run("contains", json!({}), json!("42"), "it is 42.").pass);
        assert!(run("regex", json!({"pattern": "^\\d{3}$"}), json!(null), "123").pass);
        assert!(!run("regex", json!({"pattern": "^\\d{3}$"}), json!(null), "1234").pass);
        assert!(
            run(
                "json_valid",
                json!({}),
                json!(null),
                "```json\n{\"a\": 1}\n```"
            )
            .pass
        );
        assert!(!run("json_valid", json!({}), json!(null), "{a: 1}").pass);
        let schema = json!({"schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}});
        assert!(run("json_schema", schema.clone(), json!(null), "{\"a\": 3}").pass);
        let miss = run("json_schema", schema, json!(null), "{\"a\": \"x\"}");
        assert!(!miss.pass && miss.detail["errors"].is_array(), "{miss:?}");
        assert!(
            run(
                "numeric",
                json!({"tolerance": 0.01}),
                json!(12.345),
                "about 12.34"
            )
            .pass
        );
        assert!(
            !run(
                "numeric",
                json!({"tolerance": 0.001}),
                json!("12.345"),
                "12.34"
            )
            .pass
        );
        assert!(compile(&spec("regex", json!({"pattern": "("}))).is_err());
        assert!(
            compile(&spec("judge", json!({}))).is_err(),
            "a judge needs a model"
        );
        assert!(compile(&spec("teleport", json!({}))).is_err());
    }

    #[test]
    fn judges_replies_parse_and_position_bias_cancels() {
        assert_eq!(parse_grade("Reasoning…\nSCORE: 7"), Some(0.7));
        assert_eq!(parse_grade("score: 11"), None);
        assert_eq!(parse_choice(" b. "), Some('B'));
        assert_eq!(parse_choice("TIE"), Some('T'));
        assert_eq!(parse_choice("both"), None);
        assert_eq!(
            pairwise_points('A', 'B'),
            1.0,
            "the candidate won in both orders"
        );
        assert_eq!(pairwise_points('A', 'A'), 0.5, "a judge that always says A");
        assert_eq!(pairwise_points('B', 'A'), 0.0);
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
    }
}

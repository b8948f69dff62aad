//! Runs an eval: every (case, target) pair as a chat through the gateway's data plane, as the
//! caller's key — authentication, RBAC, limits, budgets and routing apply as to any request —
//! streamed, so latency and time to first token are the client's own. Each request carries
//! `x-model-bridge-eval` (run, eval, dataset version, case, target), which tags its usage row
//! and keeps its receipt, from which the exact cost is read. Scorer calls (embeddings, judges)
//! go the same way and count toward the run's spend.
//!
//! The run's state is a JSONL file (`<dir>/<run id>.jsonl`): its description, then one line
//! per finished pair. A run resumes from it: pairs already scored are not sent again. Once
//! the run has spent its budget no further pair starts (pairs in flight finish and count).

use super::dataset::{Case, Dataset};
use super::scorer::{self, Score, Scorer};
use super::spec::{question, Spec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header that tags a request as an eval's (needs `eval:run`).
pub const EVAL_HEADER: &str = "x-model-bridge-eval";

/// Where the gateway is and who calls it.
#[derive(Clone)]
pub struct Gateway {
    /// The data plane, e.g. `http://127.0.0.1:8080`.
    pub data_plane: String,
    /// The ops plane (receipts).
    pub ops: String,
    pub key: Option<String>,
    pub client: reqwest::Client,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub run_id: String,
    pub eval: String,
    pub dataset: String,
    pub dataset_hash: String,
    pub targets: Vec<String>,
    pub scorers: Vec<String>,
    pub started: String,
}

/// One pair's result: a line of the state file and a row of `eval_results`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseResult {
    pub case_id: String,
    pub target: String,
    /// `ok` or `error` (the request failed: an error is sent again on resume).
    pub status: String,
    pub output: String,
    #[serde(default)]
    pub error: Option<String>,
    pub request_id: String,
    pub latency_ms: u64,
    pub ttft_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanousd: i64,
    /// What the scorers' own calls cost.
    pub scoring_cost_nanousd: i64,
    pub scores: BTreeMap<String, Score>,
    pub ts_ms: u64,
}

/// A run as its state file holds it.
pub struct RunFile {
    pub meta: Meta,
    /// The last result of each (case, target).
    pub results: BTreeMap<(String, String), CaseResult>,
}

impl RunFile {
    pub fn path(dir: &Path, run_id: &str) -> PathBuf {
        dir.join(format!("{run_id}.jsonl"))
    }

    pub fn read(dir: &Path, run_id: &str) -> Result<RunFile, String> {
        let path = Self::path(dir, run_id);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = text.lines();
        let meta: Meta = lines
            .next()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|v| serde_json::from_value(v["run"].clone()).ok())
            .ok_or_else(|| format!("{}: no run description", path.display()))?;
        let mut results = BTreeMap::new();
        for l in lines {
            // A line cut by a crash mid-write is skipped: its pair runs again.
            if let Ok(r) = serde_json::from_str::<CaseResult>(l) {
                results.insert((r.case_id.clone(), r.target.clone()), r);
            }
        }
        Ok(RunFile { meta, results })
    }

    /// Each scorer's summary over `target`'s scored cases.
    pub fn scores(&self, target: &str) -> BTreeMap<String, ScoreSummary> {
        let ok = by_case(self, target);
        self.meta
            .scorers
            .iter()
            .map(|sc| {
                let s: Vec<&Score> = ok.values().filter_map(|r| r.scores.get(sc)).collect();
                let n = s.len();
                let of = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
                let summary = ScoreSummary {
                    n,
                    mean: of(s.iter().map(|x| x.value).sum()),
                    pass_rate: of(s.iter().filter(|x| x.pass).count() as f64),
                };
                (sc.clone(), summary)
            })
            .collect()
    }

    pub fn spent(&self) -> i128 {
        self.results
            .values()
            .map(|r| i128::from(r.cost_nanousd) + i128::from(r.scoring_cost_nanousd))
            .sum()
    }
}

/// One scorer over one target's cases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreSummary {
    pub n: usize,
    pub mean: f64,
    pub pass_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Every pair has a result.
    Completed,
    /// The budget ran out with pairs left.
    BudgetExhausted,
    /// Some pairs failed (they run again on resume).
    WithErrors,
}

pub struct Outcome {
    pub meta: Meta,
    pub ending: Ending,
    pub pairs: usize,
    pub done: usize,
    pub errors: usize,
    pub spent_nanousd: i128,
    /// The results this invocation produced (for the warehouse).
    pub new: Vec<CaseResult>,
}

pub fn new_run_id() -> String {
    let v: u64 = rand::random();
    format!("ev_{v:016x}")
}

impl Gateway {
    /// This gateway as its own config describes it (plain HTTP ops plane on loopback).
    pub fn local(server: &crate::config::ServerSettings, key: Option<String>) -> Gateway {
        let mut ops = server.clone();
        ops.listen = server.ops_listen;
        ops.tls = None;
        Gateway {
            data_plane: crate::workflow::loopback(server),
            ops: crate::workflow::loopback(&ops),
            key,
            client: reqwest::Client::builder()
                .no_proxy()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap_or_default(),
        }
    }
}

/// A new run (its id) or the run to resume.
#[derive(Debug, Clone)]
pub enum Start {
    New(String),
    Resume(String),
}

/// Runs (or resumes) an eval. `budget` replaces the spec's cap when given.
pub async fn run(
    spec: Arc<Spec>,
    ds: Arc<Dataset>,
    gw: Gateway,
    dir: &Path,
    start: Start,
    budget: Option<i128>,
) -> Result<Outcome, String> {
    spec.check(&ds)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (meta, done) = match &start {
        Start::Resume(id) => {
            let f = RunFile::read(dir, id)?;
            if f.meta.dataset_hash != ds.hash {
                return Err(format!(
                    "run {id} scored dataset {}@{}; {} is now {}: start a new run",
                    f.meta.dataset,
                    &f.meta.dataset_hash[..12],
                    ds.name,
                    &ds.hash[..12]
                ));
            }
            (f.meta.clone(), f)
        }
        Start::New(id) => {
            let meta = Meta {
                run_id: id.clone(),
                eval: spec.name.clone(),
                dataset: ds.name.clone(),
                dataset_hash: ds.hash.clone(),
                targets: spec.targets.clone(),
                scorers: spec.scorers.iter().map(|s| s.name.clone()).collect(),
                started: crate::time::rfc3339(crate::time::now_unix()),
            };
            let mut f = std::fs::File::create(RunFile::path(dir, &meta.run_id))
                .map_err(|e| e.to_string())?;
            writeln!(f, "{}", json!({"run": meta})).map_err(|e| e.to_string())?;
            (
                meta.clone(),
                RunFile {
                    meta,
                    results: BTreeMap::new(),
                },
            )
        }
    };
    let cap = budget.or(spec.budget_nanousd);
    let spent = Arc::new(AtomicI64::new(
        i64::try_from(done.spent()).unwrap_or(i64::MAX),
    ));
    let pending: Vec<(Case, String)> = ds
        .cases
        .iter()
        .flat_map(|c| meta.targets.iter().map(move |t| (c.clone(), t.clone())))
        .filter(|(c, t)| {
            done.results
                .get(&(c.id.clone(), t.clone()))
                .is_none_or(|r| r.status != "ok")
        })
        .collect();
    let pairs = ds.cases.len() * meta.targets.len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(RunFile::path(dir, &meta.run_id))
        .map_err(|e| e.to_string())?;
    let sem = Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopped = false;
    let mut new = Vec::new();
    let over =
        |spent: &AtomicI64| cap.is_some_and(|c| i128::from(spent.load(Ordering::SeqCst)) >= c);
    for (case, target) in pending {
        // Wait for a slot, recording what finished meanwhile (it may exhaust the budget).
        let permit = loop {
            tokio::select! {
                p = sem.clone().acquire_owned() => break p.map_err(|e| e.to_string())?,
                Some(r) = tasks.join_next() => {
                    let r: CaseResult = r.map_err(|e| e.to_string())?;
                    writeln!(file, "{}", serde_json::to_string(&r).unwrap_or_default()).map_err(|e| e.to_string())?;
                    new.push(r);
                }
            }
        };
        if over(&spent) {
            stopped = true;
            break;
        }
        let (spec, gw, meta, spent) = (spec.clone(), gw.clone(), meta.clone(), spent.clone());
        let version = format!("{}@{}", meta.dataset, &meta.dataset_hash[..12]);
        tasks.spawn(async move {
            let _permit = permit;
            let r = pair(&spec, &gw, &meta.run_id, &version, &case, &target).await;
            spent.fetch_add(r.cost_nanousd + r.scoring_cost_nanousd, Ordering::SeqCst);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())?;
        writeln!(file, "{}", serde_json::to_string(&r).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        new.push(r);
    }
    file.flush().map_err(|e| e.to_string())?;
    let all = RunFile::read(dir, &meta.run_id)?;
    let ok = all.results.values().filter(|r| r.status == "ok").count();
    let errors = all.results.values().filter(|r| r.status != "ok").count();
    let ending = if ok == pairs {
        Ending::Completed
    } else if stopped || over(&spent) {
        Ending::BudgetExhausted
    } else {
        Ending::WithErrors
    };
    Ok(Outcome {
        meta,
        ending,
        pairs,
        done: ok,
        errors,
        spent_nanousd: all.spent(),
        new,
    })
}

/// What one call through the gateway gave.
struct Answer {
    text: String,
    request_id: String,
    ttft_ms: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_nanousd: i64,
}

fn eval_header(run: &str, version: &str, case: &str, target: &str, scorer: Option<&str>) -> String {
    let mut v = format!("run={run}; dataset={version}; case={case}; target={target}");
    if let Some(s) = scorer {
        v.push_str(&format!("; scorer={s}"));
    }
    v
}

async fn pair(
    spec: &Spec,
    gw: &Gateway,
    run: &str,
    version: &str,
    case: &Case,
    target: &str,
) -> CaseResult {
    let started = Instant::now();
    let mut r = CaseResult {
        case_id: case.id.clone(),
        target: target.to_string(),
        status: "error".into(),
        output: String::new(),
        error: None,
        request_id: String::new(),
        latency_ms: 0,
        ttft_ms: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_nanousd: 0,
        scoring_cost_nanousd: 0,
        scores: BTreeMap::new(),
        ts_ms: crate::time::now_unix() * 1000,
    };
    let messages = match spec.messages(case) {
        Ok(m) => m,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let mut body = json!({"model": target, "messages": messages, "stream": true,
                          "stream_options": {"include_usage": true}});
    for (k, v) in &spec.params {
        body[k] = v.clone();
    }
    let tag = eval_header(run, version, &case.id, target, None);
    match chat_stream(gw, &body, &tag).await {
        Err(e) => {
            r.error = Some(e);
            r.latency_ms = started.elapsed().as_millis() as u64;
            return r;
        }
        Ok(a) => {
            r.latency_ms = started.elapsed().as_millis() as u64;
            r.status = "ok".into();
            r.output = a.text;
            r.request_id = a.request_id;
            r.ttft_ms = a.ttft_ms;
            r.prompt_tokens = a.prompt_tokens;
            r.completion_tokens = a.completion_tokens;
            r.cost_nanousd = a.cost_nanousd;
        }
    }
    let q = question(&messages);
    for s in &spec.scorers {
        let (score, cost) = match scorer::score_local(&s.scorer, case, &r.output) {
            Some(res) => (res, 0),
            None => {
                let tag = eval_header(run, version, &case.id, target, Some(&s.name));
                remote(gw, &s.scorer, case, &q, &r.output, &tag).await
            }
        };
        r.scoring_cost_nanousd += cost;
        let score = score.unwrap_or_else(|e| Score {
            value: 0.0,
            pass: false,
            detail: json!({"error": e}),
        });
        r.scores.insert(s.name.clone(), score);
    }
    r
}

/// Scores with a model: embedding similarity or a judge. Returns the score and its cost.
async fn remote(
    gw: &Gateway,
    s: &Scorer,
    case: &Case,
    q: &str,
    output: &str,
    tag: &str,
) -> (Result<Score, String>, i64) {
    let mut cost = 0;
    let res = async {
        match s {
            Scorer::Embedding { model, threshold } => {
                let expected = case.expected_text().ok_or("the case has no `expected`")?;
                let body = json!({"model": model, "input": [output, expected]});
                let (v, c) = call(gw, "/v1/embeddings", &body, tag).await?;
                cost += c;
                let vec = |i: usize| -> Result<Vec<f64>, String> {
                    v["data"][i]["embedding"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .ok_or_else(|| "the embeddings answer has no vectors".to_string())
                };
                let sim = scorer::cosine(&vec(0)?, &vec(1)?).clamp(0.0, 1.0);
                Ok(Score {
                    value: sim,
                    pass: sim >= *threshold,
                    detail: Value::Null,
                })
            }
            Scorer::Judge {
                model,
                rubric,
                pairwise: false,
                threshold,
            } => {
                let msgs =
                    scorer::grade_prompt(rubric, q, output, case.expected_text().as_deref());
                let (text, id, c) = judge(gw, model, msgs, tag).await?;
                cost += c;
                let g = scorer::parse_grade(&text)
                    .ok_or_else(|| format!("the judge gave no SCORE: {text:.200}"))?;
                Ok(Score {
                    value: g,
                    pass: g >= *threshold,
                    detail: json!({"request_id": id}),
                })
            }
            Scorer::Judge {
                model,
                rubric,
                pairwise: true,
                threshold,
            } => {
                let reference = case
                    .expected_text()
                    .ok_or("a pairwise judge needs the case's `expected`")?;
                // Both orders, so a judge's preference for a position cancels out.
                let ab = scorer::pairwise_prompt(rubric, q, output, &reference);
                let ba = scorer::pairwise_prompt(rubric, q, &reference, output);
                let (tag_ab, tag_ba) = (format!("{tag}; order=ab"), format!("{tag}; order=ba"));
                let (first, second) = tokio::join!(
                    judge(gw, model, ab, &tag_ab),
                    judge(gw, model, ba, &tag_ba)
                );
                let (t1, id1, c1) = first?;
                let (t2, id2, c2) = second?;
                cost += c1 + c2;
                let pick = |t: &str| {
                    scorer::parse_choice(t).ok_or_else(|| format!("the judge chose none of A, B, TIE: {t:.200}"))
                };
                let (v1, v2) = (pick(&t1)?, pick(&t2)?);
                let points = scorer::pairwise_points(v1, v2);
                let shown = |c: char| if c == 'T' { "TIE".to_string() } else { c.to_string() };
                Ok(Score {
                    value: points,
                    pass: points >= *threshold,
                    detail: json!({"orders": [
                        {"order": "ab", "candidate": "A", "verdict": shown(v1), "request_id": id1},
                        {"order": "ba", "candidate": "B", "verdict": shown(v2), "request_id": id2}]}),
                })
            }
            _ => Err("not a model scorer".to_string()),
        }
    }
    .await;
    (res, cost)
}

async fn judge(
    gw: &Gateway,
    model: &str,
    messages: Value,
    tag: &str,
) -> Result<(String, String, i64), String> {
    let body = json!({"model": model, "messages": messages, "temperature": 0});
    let (v, cost) = call(gw, "/v1/chat/completions", &body, tag).await?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = v["_request_id"].as_str().unwrap_or_default().to_string();
    Ok((text, id, cost))
}

fn request(gw: &Gateway, path: &str, body: &Value, tag: &str) -> reqwest::RequestBuilder {
    let mut req = gw
        .client
        .post(format!("{}{path}", gw.data_plane))
        .header("content-type", "application/json")
        .header(EVAL_HEADER, tag)
        .body(body.to_string());
    if let Some(k) = &gw.key {
        req = req.bearer_auth(k);
    }
    req
}

fn failure(status: reqwest::StatusCode, body: &str) -> String {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("HTTP {}: {msg}", status.as_u16())
}

/// A non-streamed call; its JSON (with `_request_id`) and its cost.
async fn call(gw: &Gateway, path: &str, body: &Value, tag: &str) -> Result<(Value, i64), String> {
    let resp = request(gw, path, body, tag)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let id = request_id(&resp);
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(failure(status, &text));
    }
    let mut v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["_request_id"] = json!(id);
    let cost = receipt_cost(gw, &id).await?;
    Ok((v, cost))
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A streamed chat: its text, time to first token and usage, and its cost.
async fn chat_stream(gw: &Gateway, body: &Value, tag: &str) -> Result<Answer, String> {
    let started = Instant::now();
    let mut resp = request(gw, "/v1/chat/completions", body, tag)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let id = request_id(&resp);
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(failure(status, &text));
    }
    let mut a = Answer {
        text: String::new(),
        request_id: id,
        ttft_ms: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_nanousd: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut ended = false;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    ended = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
                if v.get("error").is_some() {
                    return Err(format!("stream failed: {}", v["error"]["message"]));
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    if !t.is_empty() && a.ttft_ms == 0 {
                        a.ttft_ms = (started.elapsed().as_millis() as u64).max(1);
                    }
                    a.text.push_str(t);
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    a.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                    a.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    if !ended {
        return Err("the stream ended before [DONE]".into());
    }
    a.cost_nanousd = receipt_cost(gw, &a.request_id).await?;
    Ok(a)
}

/// The exact cost the gateway recorded for `request_id`, from its receipt (the ops plane
/// waits until the request's record is complete).
async fn receipt_cost(gw: &Gateway, request_id: &str) -> Result<i64, String> {
    let mut req = gw
        .client
        .get(format!(
            "{}/admin/v1/requests/{request_id}?wait_ms=10000",
            gw.ops
        ))
        .timeout(Duration::from_secs(15));
    if let Some(k) = &gw.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| format!("receipt: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "receipt of {request_id}: {}",
            failure(status, &text)
        ));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["cost_nanousd"]
        .as_i64()
        .or_else(|| v["cost_nanousd"].as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("receipt of {request_id} has no cost"))
}

/// Results keyed by case for one target (what a comparison pairs).
pub fn by_case<'a>(f: &'a RunFile, target: &str) -> HashMap<&'a str, &'a CaseResult> {
    f.results
        .values()
        .filter(|r| r.target == target && r.status == "ok")
        .map(|r| (r.case_id.as_str(), r))
        .collect()
}

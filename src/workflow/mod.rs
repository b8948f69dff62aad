//! Workflows: multi-step LLM pipelines the gateway runs — definitions from files (`def`), CEL
//! expressions and templates (`expr`), runs and their registry (`run`), the executor (`exec`),
//! the guard of `api_call` steps (`http`), and the versions orgs publish through the admin API
//! (`store`). They are called through
//! `POST /v1/workflows/{name}/runs` or as the model `workflow:<name>`.

pub mod def;
pub mod exec;
pub mod expr;
pub mod http;
pub mod journal;
pub mod run;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// What `[workflows]` configures, with the definitions it loaded.
#[derive(Debug, Default)]
pub struct Settings {
    /// The config files' definitions: every org's.
    pub defs: BTreeMap<String, Arc<def::Workflow>>,
    /// The deployed version of each workflow an org defined through the admin API, by org.
    pub org_defs: HashMap<String, BTreeMap<String, Arc<def::Workflow>>>,
    /// Run limits of an org that sets none of its own (`[orgs.<org>.workflow_limits]`).
    pub limits: Limits,
    pub guard: http::Guard,
    /// The run journal (beside the config file by default when definitions are configured).
    pub journal: Option<std::path::PathBuf>,
}

impl Settings {
    /// The workflow `name` as `org`'s callers see it: a config file's, else the org's deployed
    /// one.
    pub fn find(&self, org: &str, name: &str) -> Option<Arc<def::Workflow>> {
        self.defs
            .get(name)
            .or_else(|| self.org_defs.get(org)?.get(name))
            .cloned()
    }
}

/// What one org's runs may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Runs in flight per org.
    pub max_concurrent_runs: usize,
    /// Step executions per run (a loop's body counts once per item).
    pub max_steps: u32,
    pub max_loop_items: usize,
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_runs: default_concurrent(),
            max_steps: default_steps(),
            max_loop_items: default_loop_items(),
            max_duration: Duration::from_secs(default_duration()),
        }
    }
}

impl Limits {
    /// These limits with an org's own values in place of those it sets.
    pub fn with(self, own: Option<&LimitOverrides>) -> Limits {
        let Some(o) = own else { return self };
        Limits {
            max_concurrent_runs: o.max_concurrent_runs.unwrap_or(self.max_concurrent_runs),
            max_steps: o.max_steps.unwrap_or(self.max_steps),
            max_loop_items: o.max_loop_items.unwrap_or(self.max_loop_items),
            max_duration: o
                .max_duration_s
                .map_or(self.max_duration, Duration::from_secs),
        }
    }
}

/// An org's own run limits (`[orgs.<org>.workflow_limits]`, or through the admin API's org
/// limits); each field it leaves out is `[workflows]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_runs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_loop_items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
}

impl LimitOverrides {
    /// The fields that must be positive and are not, as config paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let zero = [
            ("max_concurrent_runs", self.max_concurrent_runs == Some(0)),
            ("max_steps", self.max_steps == Some(0)),
            ("max_duration_s", self.max_duration_s == Some(0)),
        ];
        zero.iter()
            .filter(|(_, z)| *z)
            .map(|(f, _)| format!("{at}.{f}"))
            .collect()
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Directory of definitions (`*.json`, `*.toml`), relative to the config file.
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default = "default_concurrent")]
    pub max_concurrent_runs: usize,
    #[serde(default = "default_steps")]
    pub max_steps: u32,
    #[serde(default = "default_loop_items")]
    pub max_loop_items: usize,
    #[serde(default = "default_duration")]
    pub max_duration_s: u64,
    /// Hosts `api_call` steps may reach: `host` or `host:port`.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// The run journal (relative to the config file); default `workflow-runs.jsonl` when
    /// `dir` is set.
    #[serde(default)]
    pub journal: Option<String>,
}

fn default_concurrent() -> usize {
    16
}
fn default_steps() -> u32 {
    500
}
fn default_loop_items() -> usize {
    100
}
fn default_duration() -> u64 {
    300
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_concurrent_runs: default_concurrent(),
            max_steps: default_steps(),
            max_loop_items: default_loop_items(),
            max_duration_s: default_duration(),
            allow_hosts: Vec::new(),
            journal: None,
        }
    }
}

/// Loads and validates every definition under `dir`; problems are reported at
/// `workflows.<file>.<step path>`.
pub fn settings(
    raw: &RawSettings,
    base: &std::path::Path,
    ops: Option<std::net::SocketAddr>,
    err: &mut dyn FnMut(&str, String),
) -> Settings {
    let mut defs = BTreeMap::new();
    if let Some(dir) = &raw.dir {
        let dir = base.join(dir);
        match std::fs::read_dir(&dir) {
            Err(e) => err("workflows.dir", format!("{}: {e}", dir.display())),
            Ok(entries) => {
                let mut files: Vec<_> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "toml"))
                    .collect();
                files.sort();
                for f in files {
                    let name = f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let text = match std::fs::read_to_string(&f) {
                        Ok(t) => t,
                        Err(e) => {
                            err(&format!("workflows.{name}"), e.to_string());
                            continue;
                        }
                    };
                    match def::parse(&text, &f.display().to_string()) {
                        Ok(w) if defs.contains_key(&w.name) => err(
                            &format!("workflows.{name}"),
                            format!("workflow `{}` is defined twice", w.name),
                        ),
                        Ok(w) => {
                            defs.insert(w.name.clone(), Arc::new(w));
                        }
                        Err(problems) => {
                            for p in problems {
                                err(&format!("workflows.{name}.{}", p.path), p.reason);
                            }
                        }
                    }
                }
            }
        }
    }
    Settings {
        defs,
        org_defs: HashMap::new(),
        limits: Limits {
            max_concurrent_runs: raw.max_concurrent_runs.max(1),
            max_steps: raw.max_steps.max(1),
            max_loop_items: raw.max_loop_items,
            max_duration: Duration::from_secs(raw.max_duration_s.max(1)),
        },
        guard: http::Guard {
            allow_hosts: raw.allow_hosts.clone(),
            ops,
        },
        journal: raw
            .journal
            .clone()
            .or_else(|| raw.dir.as_ref().map(|_| "workflow-runs.jsonl".to_string()))
            .map(|j| base.join(j)),
    }
}

/// The process's workflow engine: its runs, the client of its LLM calls, and the journal with
/// the runs of earlier processes.
pub struct Engine {
    pub runs: run::Registry,
    pub client: reqwest::Client,
    pub journal: std::sync::OnceLock<journal::Journal>,
    pub restored: dashmap::DashMap<String, journal::Restored>,
    /// Where ended runs and their steps go for history (ClickHouse), when configured.
    pub history: std::sync::OnceLock<Arc<crate::warehouse::sinks::ClickHouseWorkflows>>,
}

impl Engine {
    /// Opens the journal `settings` names (once per process); runs an earlier process left in
    /// flight are marked failed.
    pub fn open_journal(&self, settings: &Settings) {
        let Some(path) = &settings.journal else {
            return;
        };
        if self.journal.get().is_some() {
            return;
        }
        match journal::Journal::open(path) {
            Ok((j, runs)) => {
                for (id, r) in runs {
                    self.restored.insert(id, r);
                }
                let _ = self.journal.set(j);
            }
            Err(e) => log::error!("workflow journal {}: {e}", path.display()),
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            runs: run::Registry::default(),
            journal: std::sync::OnceLock::new(),
            restored: Default::default(),
            history: std::sync::OnceLock::new(),
            // Loopback to this very process: no proxy, and a TLS data plane's own
            // certificate need not name 127.0.0.1.
            client: reqwest::Client::builder()
                .no_proxy()
                .danger_accept_invalid_certs(true)
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
        }
    }
}

/// The header an LLM step's call carries: this process's secret, then the workflow, version,
/// run and step its usage row is tagged with. Only this process knows the secret, so a client
/// cannot tag rows this way.
pub const INTERNAL_HEADER: &str = "x-model-bridge-workflow";

static SECRET: LazyLock<String> = LazyLock::new(|| {
    let v: u128 = rand::random();
    format!("{v:032x}")
});

pub fn internal_value(name: &str, version: u32, run: &str, step: &str) -> String {
    format!("{} {name} {version} {run} {step}", *SECRET)
}

/// The tags of a call that carries this process's secret; `None` for anything else.
pub fn internal_tags(value: &str) -> Option<Vec<String>> {
    let mut parts = value.splitn(5, ' ');
    let secret = parts.next()?;
    let same: bool = subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), SECRET.as_bytes()).into();
    if !same {
        return None;
    }
    let (name, version, run, step) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(vec![
        format!("workflow:{name}"),
        format!("workflow_version:{version}"),
        format!("workflow_run:{run}"),
        format!("workflow_step:{step}"),
    ])
}

/// The data plane's URL as this process reaches itself.
pub fn loopback(server: &crate::config::ServerSettings) -> String {
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = server.listen.ip();
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("{scheme}://{host}:{}", server.listen.port())
}

//! The run journal: one JSON line when a run starts and one when it ends, so a restart never
//! loses a run silently. At start the journal is read back: ended runs stay readable, and a
//! run that started but never ended is marked failed with the reason — it is not resumed,
//! because its LLM steps ran with the caller's credential, which is never written anywhere.

use super::run::Run;
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Runs read back from the journal, newest last, at most this many.
const KEEP: usize = 10_000;

pub struct Journal {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// A run from an earlier process: who started it, and its last state.
pub struct Restored {
    pub org: String,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub run: Value,
}

impl Journal {
    /// Opens (creating) the journal; returns it and the runs it holds, with every run left in
    /// flight by an earlier process marked failed (and that written back).
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<(String, Restored)>)> {
        let mut runs: Vec<(String, Restored)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue; // a torn last line of a crash
                };
                let Some(id) = v["run"]["id"].as_str().map(str::to_string) else {
                    continue;
                };
                let r = Restored {
                    org: v["org"].as_str().unwrap_or_default().to_string(),
                    key_id: v["key_id"].as_str().map(str::to_string),
                    user: v["user"].as_str().map(str::to_string),
                    run: v["run"].clone(),
                };
                match index.get(&id) {
                    Some(&i) => runs[i].1 = r,
                    None => {
                        index.insert(id.clone(), runs.len());
                        runs.push((id, r));
                    }
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let j = Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        };
        for (_, r) in runs.iter_mut() {
            if r.run["status"] == "running" {
                r.run["status"] = json!("failed");
                r.run["ended_ms"] = json!(crate::time::now_unix_ms());
                r.run["error"] = json!(
                    "the gateway restarted while this run was in flight; it was not resumed (its LLM steps run with the caller's credential, which is never stored)"
                );
                j.write(
                    "end",
                    &r.org,
                    r.key_id.as_deref(),
                    r.user.as_deref(),
                    &r.run,
                );
            }
        }
        if runs.len() > KEEP {
            runs.drain(..runs.len() - KEEP);
        }
        Ok((j, runs))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, event: &str, org: &str, key_id: Option<&str>, user: Option<&str>, run: &Value) {
        let line = json!({"event": event, "org": org, "key_id": key_id, "user": user, "run": run});
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{line}") {
            log::error!("workflow journal {}: {e}", self.path.display());
        }
    }

    pub fn started(&self, run: &Run) {
        self.write(
            "start",
            &run.org,
            run.key_id.as_deref(),
            run.user.as_deref(),
            &run.json(),
        );
    }

    pub fn ended(&self, run: &Run) {
        self.write(
            "end",
            &run.org,
            run.key_id.as_deref(),
            run.user.as_deref(),
            &run.json(),
        );
    }
}

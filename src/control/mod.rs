//! The control store: control state the admin API and the CLI write (virtual keys today),
//! shared by every replica — an embedded SQLite file for a single node, PostgreSQL for a
//! fleet (`[control]`).
//!
//! The request path never touches the store: it reads an in-memory snapshot. A thread of the
//! store's own keeps the snapshot current — on PostgreSQL it LISTENs for the NOTIFY every
//! write sends and, as the safety net, compares the change version every `poll`; on SQLite it
//! compares the version — so a change made on any replica is in force everywhere well within a
//! second. Writes go through the same thread and reload the snapshot before they answer (the
//! writing replica sees its own change at once).
//!
//! Fail-static: when the store cannot be reached the snapshot keeps serving (a key revoked
//! during the outage keeps working until the store is back — the trade-off of not failing
//! every request), writes answer "unavailable" (the admin API's 503),
//! `model_bridge_control_store_up` is 0, and the thread reconnects and reloads when the store
//! returns.

pub mod backend;
pub mod postgres;
pub mod sqlite;

use crate::auth::keys::KeyRecord;
use crate::auth::store::KeyStore;
use crate::metrics::METRICS;
use crate::routing::Secret;
use arc_swap::ArcSwap;
pub use backend::Doc;
use backend::{Backend, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum StoreKind {
    Sqlite(PathBuf),
    Postgres(Secret),
}

#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub kind: StoreKind,
    /// How often the version is compared (the safety net under NOTIFY).
    pub poll: Duration,
    /// How long a write waits for the store.
    pub timeout: Duration,
    /// A JSON key store to import on first start (then renamed `*.imported`).
    pub import_from: Option<PathBuf>,
}

impl ControlSettings {
    /// Names the store (a reload that names the same one keeps the running store).
    pub fn identity(&self) -> String {
        match &self.kind {
            StoreKind::Sqlite(p) => format!("sqlite:{}", p.display()),
            StoreKind::Postgres(url) => format!(
                "postgres:{:016x}",
                crate::config::source_hash(url.expose().as_bytes())
            ),
        }
    }

    pub fn open(&self) -> Result<Box<dyn Backend>, String> {
        Ok(match &self.kind {
            StoreKind::Sqlite(p) => Box::new(sqlite::Sqlite::open(p, self.timeout)?),
            StoreKind::Postgres(url) => {
                Box::new(postgres::Postgres::connect(url.expose(), self.timeout)?)
            }
        })
    }
}

/// Applies the control store's migrations (`model-bridge migrate`).
pub fn migrate(s: &ControlSettings) -> Result<Vec<i64>, String> {
    let mut b = s.open()?;
    let applied = b.migrate()?;
    import_json(s, b.as_mut())?;
    Ok(applied)
}

/// Imports the JSON key store named by `import_from` into an empty store, then retires the
/// file (renamed `<file>.imported`): from then on the store is the one source.
fn import_json(s: &ControlSettings, b: &mut dyn Backend) -> Result<(), String> {
    let Some(path) = s.import_from.as_ref().filter(|p| p.exists()) else {
        return Ok(());
    };
    if !b.keys()?.is_empty() {
        log::warn!(
            "control store: {} not imported, the store already has keys",
            path.display()
        );
        return Ok(());
    }
    let file = crate::auth::store::FileKeyStore::open(path).map_err(|e| e.to_string())?;
    let records: Vec<KeyRecord> = file.list(None).iter().map(|k| (**k).clone()).collect();
    b.insert_keys(&records).map_err(|e| e.to_string())?;
    let retired = path.with_extension("json.imported");
    std::fs::rename(path, &retired).map_err(|e| format!("{}: {e}", path.display()))?;
    log::info!(
        "control store: imported {} keys from {} (now {})",
        records.len(),
        path.display(),
        retired.display()
    );
    Ok(())
}

/// A write for the store's thread. It runs against the backend (`None`: the store is down)
/// and answers its caller itself; it returns whether the store failed.
type Write = Box<dyn for<'a> FnOnce(Option<(&'a mut dyn Backend, &'a Snapshot)>) -> bool + Send>;

/// The policy of the control store (custom roles, bindings) as one policy file's TOML: RBAC
/// compiles it after the files of `[auth] policies` (empty without a control store).
static POLICY: std::sync::LazyLock<ArcSwap<String>> =
    std::sync::LazyLock::new(|| ArcSwap::from_pointee(String::new()));

/// Every document of the control store (empty in a process without one).
static DOCS: std::sync::LazyLock<ArcSwap<Vec<Doc>>> =
    std::sync::LazyLock::new(|| ArcSwap::from_pointee(Vec::new()));

/// The control store's documents now.
pub fn docs() -> Arc<Vec<Doc>> {
    DOCS.load_full()
}

/// Adds what the API set for orgs to a config tree, each record as the config file writes it:
/// teams, cost centers and key policies (`kind` team / cost_center / key_policy, `id`
/// `<org>:<name>`), an org's limits (`org_limits`) and allocations (`allocation`). The file's
/// own entries win.
pub fn merge_org_docs(tree: &mut toml::Value, docs: &[Doc]) {
    for d in docs {
        let Some(record) = toml_of(&d.record) else {
            continue;
        };
        // An org the file does not declare gets nothing.
        let Some(org) = tree
            .get_mut("orgs")
            .and_then(|o| o.get_mut(&d.org))
            .and_then(toml::Value::as_table_mut)
        else {
            continue;
        };
        match d.kind.as_str() {
            // The org's limits, per-key limits and budget: each field where the file sets none.
            "org_limits" => {
                if let toml::Value::Table(fields) = record {
                    for (k, v) in fields {
                        org.entry(k).or_insert(v);
                    }
                }
            }
            // Joins the org's allocations unless the file allocates the same source.
            "allocation" => {
                let list = org
                    .entry("allocations")
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                if let Some(list) = list.as_array_mut() {
                    if !list.iter().any(|a| a.get("source") == record.get("source")) {
                        list.push(record);
                    }
                }
            }
            kind => {
                let section = match kind {
                    "team" => "teams",
                    "cost_center" => "cost_centers",
                    "key_policy" => "keys",
                    _ => continue,
                };
                let Some((_, name)) = d.id.split_once(':') else {
                    continue;
                };
                let entries = org
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let Some(t) = entries.as_table_mut() {
                    t.entry(name).or_insert(record);
                }
            }
        }
    }
}

/// The control store's policy, as policy-file TOML.
pub fn policy_overlay() -> Arc<String> {
    POLICY.load_full()
}

/// A document's JSON record as TOML, as a config or policy file would write it (TOML has no
/// null: an absent optional field is left out).
fn toml_of(record: &str) -> Option<toml::Value> {
    let mut v: serde_json::Value = serde_json::from_str(record).ok()?;
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    toml::Value::try_from(v).ok()
}

/// Renders policy documents as one policy file.
pub fn render(docs: &[Doc]) -> String {
    let mut roles = toml::map::Map::new();
    let mut bindings = Vec::new();
    for d in docs {
        let Some(t) = toml_of(&d.record) else {
            continue;
        };
        match d.kind.as_str() {
            "role" => {
                roles.insert(d.id.clone(), t);
            }
            "binding" => bindings.push(t),
            _ => {}
        }
    }
    let mut root = toml::map::Map::new();
    if !roles.is_empty() {
        root.insert("roles".into(), toml::Value::Table(roles));
    }
    if !bindings.is_empty() {
        root.insert("bindings".into(), toml::Value::Array(bindings));
    }
    toml::to_string(&toml::Value::Table(root)).unwrap_or_default()
}

/// What the store's thread keeps current, and who to tell when the policy changes.
struct Snapshot {
    keys: Arc<ArcSwap<HashMap<String, Arc<KeyRecord>>>>,
    docs: Arc<ArcSwap<Vec<Doc>>>,
    on_policy: Arc<Mutex<Option<PolicyHook>>>,
}

type PolicyHook = Box<dyn Fn() + Send>;

/// The key store over the control store: snapshot reads, writes through the store's thread.
pub struct ControlKeys {
    identity: String,
    map: Arc<ArcSwap<HashMap<String, Arc<KeyRecord>>>>,
    docs: Arc<ArcSwap<Vec<Doc>>>,
    on_policy: Arc<Mutex<Option<PolicyHook>>>,
    up: Arc<AtomicBool>,
    commands: Mutex<mpsc::Sender<Write>>,
    timeout: Duration,
}

impl ControlKeys {
    /// The store `cfg` names (`None` while authentication is off).
    pub fn open(cfg: &crate::config::Config) -> std::io::Result<Option<Self>> {
        match (&cfg.auth, &cfg.control) {
            (Some(_), Some(c)) => Self::start(c.clone())
                .map(Some)
                .map_err(std::io::Error::other),
            _ => Ok(None),
        }
    }

    /// Names the store `cfg` configures: a reload naming the same one keeps it.
    pub fn identity_of(cfg: &crate::config::Config) -> Option<String> {
        cfg.auth.as_ref()?;
        cfg.control.as_ref().map(ControlSettings::identity)
    }

    /// Starts the store's thread; returns once the first snapshot is loaded (or the first
    /// connection failed: the gateway then starts with no store keys and catches up).
    pub fn start(s: ControlSettings) -> Result<Self, String> {
        let map = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let docs = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let on_policy: Arc<Mutex<Option<PolicyHook>>> = Arc::new(Mutex::new(None));
        let up = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let identity = s.identity();
        let timeout = s.timeout;
        let snapshot = Snapshot {
            keys: map.clone(),
            docs: docs.clone(),
            on_policy: on_policy.clone(),
        };
        let u = up.clone();
        std::thread::Builder::new()
            .name("control-store".into())
            .spawn(move || run(s, snapshot, u, rx, ready_tx))
            .map_err(|e| format!("control store thread: {e}"))?;
        // The first load, or the first failure, whichever comes first.
        let _ = ready_rx.recv_timeout(timeout + Duration::from_secs(1));
        Ok(Self {
            identity,
            map,
            docs,
            on_policy,
            up,
            commands: Mutex::new(tx),
            timeout,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Called (on the store's thread) whenever the store's policy changed: the gateway
    /// reloads its config then, so RBAC compiles the new policy.
    pub fn on_policy_change(&self, hook: impl Fn() + Send + 'static) {
        if let Ok(mut h) = self.on_policy.lock() {
            *h = Some(Box::new(hook));
        }
    }

    /// The policy documents now (custom roles and bindings).
    pub fn docs(&self) -> Arc<Vec<Doc>> {
        self.docs.load_full()
    }

    /// Writes (`Some`) or deletes (`None`) the policy document `kind`/`id`; the document
    /// before. Answers once every part of this process sees the change.
    pub fn put_doc(
        &self,
        kind: &str,
        id: &str,
        doc: Option<Doc>,
        create: bool,
    ) -> std::io::Result<Option<Doc>> {
        let (kind, id) = (kind.to_string(), id.to_string());
        Ok(self.write(move |b| b.put_doc(&kind, &id, doc.as_ref(), create))?)
    }

    /// Runs `op` on the store's thread; once it succeeded, every part of this process sees the
    /// change (the snapshot is reloaded before the answer).
    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        let job: Write = Box::new(move |store| {
            let Some((b, snap)) = store else {
                let _ = tx.send(Err(StoreError::Unavailable(
                    "the control store is down".into(),
                )));
                return false;
            };
            let r = op(b);
            let failed = matches!(r, Err(StoreError::Unavailable(_)));
            let _ =
                tx.send(r.and_then(|v| load(b, snap).map(|()| v).map_err(StoreError::Unavailable)));
            failed
        });
        self.commands
            .lock()
            .map_err(|_| StoreError::Unavailable("store thread poisoned".into()))?
            .send(job)
            .map_err(|_| StoreError::Unavailable("store thread ended".into()))?;
        rx.recv_timeout(self.timeout)
            .map_err(|_| StoreError::Unavailable("timed out".into()))?
    }
}
impl KeyStore for ControlKeys {
    fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        self.map.load().get(id).cloned()
    }

    fn list(&self, org: Option<&str>) -> Vec<Arc<KeyRecord>> {
        crate::auth::store::sorted(&self.map.load(), org)
    }

    fn insert(&self, record: KeyRecord) -> std::io::Result<()> {
        Ok(self.write(move |b| b.insert_keys(std::slice::from_ref(&record)))?)
    }

    fn revoke(&self, id: &str, at: u64) -> std::io::Result<Option<Arc<KeyRecord>>> {
        let id = id.to_string();
        let rec = self.write(move |b| b.revoke_key(&id, at))?;
        Ok(rec.map(|r| self.get(&r.id).unwrap_or_else(|| Arc::new(r))))
    }
}

/// How often the thread looks for work: commands, announcements, the version.
const TICK: Duration = Duration::from_millis(25);

/// The store's thread: connect, migrate, import, load; then serve commands and follow
/// changes until the store fails; then fail static and reconnect. Ends when the
/// `ControlKeys` is dropped.
fn run(
    s: ControlSettings,
    map: Snapshot,
    up: Arc<AtomicBool>,
    rx: mpsc::Receiver<Write>,
    ready: mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = (|| -> Result<(Box<dyn Backend>, i64), String> {
            let mut b = s.open()?;
            b.migrate()?;
            import_json(&s, b.as_mut())?;
            let version = b.version()?;
            load(b.as_mut(), &map)?;
            Ok((b, version))
        })();
        match session {
            Ok((mut b, version)) => {
                up.store(true, Ordering::Relaxed);
                METRICS.control_store_up.set(1);
                let _ = ready.send(());
                backoff = Duration::from_millis(100);
                match follow(&s, b.as_mut(), version, &map, &rx) {
                    Ok(()) => return,
                    Err(e) => log::error!("control store: {e}; serving the last snapshot"),
                }
            }
            Err(e) => log::error!("control store: {e}; serving the last snapshot"),
        }
        up.store(false, Ordering::Relaxed);
        METRICS.control_store_up.set(0);
        let _ = ready.send(());
        // Down: writes are refused at once, and the store is tried again after `backoff`.
        let until = Instant::now() + backoff;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(job) => {
                    job(None);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Loads keys and policy; when the policy changed, publishes it and tells the hook.
fn load(b: &mut dyn Backend, snap: &Snapshot) -> Result<(), String> {
    let keys = b.keys()?;
    let docs = b.docs()?;
    snap.keys.store(Arc::new(
        keys.into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect(),
    ));
    if **snap.docs.load() != docs {
        let text = render(&docs);
        let docs = Arc::new(docs);
        snap.docs.store(docs.clone());
        DOCS.store(docs);
        POLICY.store(Arc::new(text));
        if let Ok(hook) = snap.on_policy.lock() {
            if let Some(h) = hook.as_ref() {
                h();
            }
        }
    }
    Ok(())
}

/// Serves commands and follows changes; `Ok` when the `ControlKeys` is gone, `Err` when the
/// store failed.
fn follow(
    s: &ControlSettings,
    b: &mut dyn Backend,
    mut version: i64,
    map: &Snapshot,
    rx: &mpsc::Receiver<Write>,
) -> Result<(), String> {
    let mut checked = Instant::now();
    loop {
        match rx.recv_timeout(TICK) {
            Ok(job) => {
                if job(Some((b, map))) {
                    return Err("write failed".into());
                }
                version = b.version()?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // NOTIFY says at once; the version, compared every `poll`, says it anyway.
        let announced = b.announced()?;
        if announced || checked.elapsed() >= s.poll {
            checked = Instant::now();
            let now = b.version()?;
            if now != version {
                load(b, map)?;
                version = now;
            }
        }
    }
}

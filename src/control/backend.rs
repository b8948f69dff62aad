//! What a control-store backend does: versioned schema, the key table, and a change version
//! that every write bumps (and, on PostgreSQL, announces with NOTIFY). Both backends are
//! blocking and used from the store's own thread (or a one-shot CLI call), never from a
//! request.

use crate::auth::keys::KeyRecord;

/// Why a write did not happen.
#[derive(Debug)]
pub enum StoreError {
    /// The store cannot be reached (or answered with an error): retry later.
    Unavailable(String),
    /// The id exists already.
    Exists,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "control store unavailable: {e}"),
            StoreError::Exists => f.write_str("exists"),
        }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists => {
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "key id exists")
            }
            StoreError::Unavailable(m) => std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("control store unavailable: {m}"),
            ),
        }
    }
}

/// Versioned migrations, the same statements for both backends (portable SQL): applied in
/// order, each recorded in `control_migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
    1,
    "keys",
    "CREATE TABLE IF NOT EXISTS control_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
     INSERT INTO control_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
     CREATE TABLE IF NOT EXISTS virtual_keys (
         id TEXT PRIMARY KEY,
         org TEXT NOT NULL,
         record TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         revoked_at BIGINT
     );
     CREATE INDEX IF NOT EXISTS virtual_keys_org ON virtual_keys (org);",
    ),
    (
        2,
        "policy",
        "CREATE TABLE IF NOT EXISTS policy_docs (
             kind TEXT NOT NULL,
             id TEXT NOT NULL,
             org TEXT NOT NULL,
             record TEXT NOT NULL,
             PRIMARY KEY (kind, id)
         );",
    ),
];

/// A policy document: an org's custom role (`kind = "role"`, `id = "<org>:<name>"`) or a
/// role binding (`kind = "binding"`), its record as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub kind: String,
    pub id: String,
    pub org: String,
    pub record: String,
}

pub trait Backend: Send {
    /// Applies the migrations not applied yet; returns the versions it applied.
    fn migrate(&mut self) -> Result<Vec<i64>, String>;
    /// The change version (bumped by every write).
    fn version(&mut self) -> Result<i64, String>;
    /// Whether a change was announced since the last call (PostgreSQL's NOTIFY; the SQLite
    /// backend has none and answers false: its callers compare versions).
    fn announced(&mut self) -> Result<bool, String>;
    fn keys(&mut self) -> Result<Vec<KeyRecord>, String>;
    /// Adds keys in one transaction (all or none); `Exists` if any id is taken.
    fn insert_keys(&mut self, records: &[KeyRecord]) -> Result<(), StoreError>;
    /// Marks a key revoked at `at` (an earlier revocation stands); the record after.
    fn revoke_key(&mut self, id: &str, at: u64) -> Result<Option<KeyRecord>, StoreError>;
    fn docs(&mut self) -> Result<Vec<Doc>, String>;
    /// Writes a document (`create`: refuse an existing id) or deletes one (`None`); the
    /// document before.
    fn put_doc(
        &mut self,
        kind: &str,
        id: &str,
        doc: Option<&Doc>,
        create: bool,
    ) -> Result<Option<Doc>, StoreError>;
}

pub fn encode(r: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(r).map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub fn decode(text: &str) -> Result<KeyRecord, String> {
    serde_json::from_str(text).map_err(|e| format!("a stored key does not parse: {e}"))
}

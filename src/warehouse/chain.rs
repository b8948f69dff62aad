//! Tamper evidence for audit rows: each row's hash covers its own fields and the previous row's
//! hash, so altering, removing or reordering a stored row breaks every later link. A chain is
//! one gateway process lifetime on one node (replicas never contend for a shared head); its
//! first row links to the last hash this node wrote before, kept in a small head file next to
//! the spool, so chains join up across restarts too.

use super::rows::AuditRow;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `prev_hash` of the first row a node ever writes.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a row given its `prev_hash`: SHA-256 over length-prefixed fields, so no two
/// different rows serialize alike.
pub fn row_hash(r: &AuditRow) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(r.prev_hash.as_bytes());
    field(r.chain.as_bytes());
    field(r.seq.to_string().as_bytes());
    field(r.ts.to_string().as_bytes());
    field(r.ts_ms.to_string().as_bytes());
    for f in [
        &r.request_id,
        &r.actor,
        &r.org,
        &r.action,
        &r.resource,
        &r.outcome,
        &r.reason,
        &r.before,
        &r.after,
        &r.client_ip,
        &r.user_agent,
    ] {
        field(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The writer's end of one chain.
pub struct Chain {
    pub id: String,
    seq: u64,
    last_hash: String,
    head_path: PathBuf,
    /// The seq the head file holds: `persist` writes only when the chain moved on.
    persisted: u64,
    /// Signs every row's hash (`None`: signing off).
    signer: Option<ed25519_dalek::SigningKey>,
}

impl Chain {
    /// Starts a new chain for this process, linked to the node's previous head if there is one.
    pub fn start(node: &str, dir: &Path) -> Self {
        let head_path = dir.join("audit-chain.head");
        let last_hash = std::fs::read_to_string(&head_path)
            .ok()
            .and_then(|t| t.split_whitespace().nth(2).map(str::to_string))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| GENESIS.to_string());
        let started = crate::time::now_unix_ms();
        Self {
            id: format!("{node}-{started}-{}", std::process::id()),
            seq: 0,
            last_hash,
            head_path,
            persisted: 0,
            signer: None,
        }
    }

    /// Signs every row from now on with `key`.
    pub fn signed_by(mut self, key: Option<ed25519_dalek::SigningKey>) -> Self {
        self.signer = key;
        self
    }

    /// A chain of its own for a one-off writer (the CLI), starting at genesis.
    pub fn detached(node: &str, what: &str) -> Self {
        let started = crate::time::now_unix_ms();
        Self {
            id: format!("{node}-{what}-{started}-{}", std::process::id()),
            seq: 0,
            last_hash: GENESIS.to_string(),
            head_path: PathBuf::new(),
            persisted: 0,
            signer: None,
        }
    }

    /// Places a row at the end of the chain.
    pub fn stamp(&mut self, row: &mut AuditRow) {
        self.seq += 1;
        row.chain.clone_from(&self.id);
        row.seq = self.seq;
        row.prev_hash = std::mem::take(&mut self.last_hash);
        row.hash = row_hash(row);
        if let Some(k) = &self.signer {
            row.sig = super::signing::sign(k, &row.hash);
        }
        self.last_hash.clone_from(&row.hash);
    }

    /// Records the head once the rows up to it are durable (inserted or spooled), so the next
    /// process links to a row that exists.
    pub fn persist(&mut self) {
        if self.head_path.as_os_str().is_empty() || self.persisted == self.seq {
            return;
        }
        let text = format!("{} {} {}\n", self.id, self.seq, self.last_hash);
        let tmp = self.head_path.with_extension("tmp");
        let ok = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.head_path));
        match ok {
            Ok(()) => self.persisted = self.seq,
            Err(e) => log::warn!("audit chain head {}: {e}", self.head_path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditRow {
        AuditRow::from_event(crate::audit::AuditEvent {
            ts_ms: 1_700_000_000_123,
            request_id: "r1".into(),
            actor: "key:abc".into(),
            org: Some("acme".into()),
            action: "key.create",
            resource: "key:def".into(),
            outcome: "succeeded",
            reason: None,
            before: None,
            after: Some(serde_json::json!({"name": "ci"})),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
        })
    }

    #[test]
    fn links_and_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Chain::start("n", dir.path());
        let (mut a, mut b) = (row(), row());
        c.stamp(&mut a);
        c.stamp(&mut b);
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(row_hash(&b), b.hash);
        let mut t = b.clone();
        t.resource = "key:other".into();
        assert_ne!(row_hash(&t), b.hash);
        c.persist();
        let next = Chain::start("n", dir.path());
        assert_eq!(next.last_hash, b.hash);
    }
}

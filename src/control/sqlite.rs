//! The embedded SQLite backend, for a single node: one file beside the config, shared by the
//! gateway and the CLI (WAL mode; a writer waits for the other's lock). Changes are seen by
//! comparing the version (there is no NOTIFY).

use super::backend::{decode, encode, Backend, StoreError, MIGRATIONS};
use crate::auth::keys::KeyRecord;
use rusqlite::{params, OptionalExtension};

pub struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    pub fn open(path: &std::path::Path, timeout: std::time::Duration) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let conn =
            rusqlite::Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(timeout).map_err(|e| e.to_string())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| e.to_string())?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| e.to_string())?;
        Ok(Self { conn })
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Backend for Sqlite {
    fn migrate(&mut self) -> Result<Vec<i64>, String> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS control_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .map_err(|e| e.to_string())?;
        let done: Vec<i64> = {
            let mut st = tx
                .prepare("SELECT version FROM control_migrations")
                .map_err(|e| e.to_string())?;
            let rows = st.query_map([], |r| r.get(0)).map_err(|e| e.to_string())?;
            rows.collect::<Result<_, _>>().map_err(|e| e.to_string())?
        };
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.execute_batch(sql)
                .map_err(|e| format!("control migration {version} {name}: {e}"))?;
            tx.execute(
                "INSERT INTO control_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, crate::time::now_unix() as i64],
            )
            .map_err(|e| e.to_string())?;
            applied.push(*version);
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(applied)
    }

    fn version(&mut self) -> Result<i64, String> {
        self.conn
            .query_row(
                "SELECT version FROM control_version WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())
    }

    fn announced(&mut self) -> Result<bool, String> {
        Ok(false)
    }

    fn keys(&mut self) -> Result<Vec<KeyRecord>, String> {
        let mut st = self
            .conn
            .prepare("SELECT record FROM virtual_keys")
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        rows.map(|r| r.map_err(|e| e.to_string()).and_then(|t| decode(&t)))
            .collect()
    }

    fn insert_keys(&mut self, records: &[KeyRecord]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        for r in records {
            let inserted = tx
                .execute(
                    "INSERT INTO virtual_keys (id, org, record, created_at, revoked_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
                    params![
                        r.id,
                        r.org,
                        encode(r)?,
                        r.created_at as i64,
                        r.revoked_at.map(|t| t as i64)
                    ],
                )
                .map_err(unavailable)?;
            if inserted == 0 {
                return Err(StoreError::Exists);
            }
        }
        tx.execute(
            "UPDATE control_version SET version = version + 1 WHERE id = 1",
            [],
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }

    fn revoke_key(&mut self, id: &str, at: u64) -> Result<Option<KeyRecord>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let Some(text) = tx
            .query_row("SELECT record FROM virtual_keys WHERE id = ?1", [id], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mut rec = decode(&text).map_err(StoreError::Unavailable)?;
        rec.revoked_at.get_or_insert(at);
        tx.execute(
            "UPDATE virtual_keys SET record = ?2, revoked_at = ?3 WHERE id = ?1",
            params![id, encode(&rec)?, rec.revoked_at.map(|t| t as i64)],
        )
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE control_version SET version = version + 1 WHERE id = 1",
            [],
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(Some(rec))
    }

    fn docs(&mut self) -> Result<Vec<super::backend::Doc>, String> {
        let mut st = self
            .conn
            .prepare("SELECT kind, id, org, record FROM policy_docs ORDER BY kind, id")
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map([], |r| {
                Ok(super::backend::Doc {
                    kind: r.get(0)?,
                    id: r.get(1)?,
                    org: r.get(2)?,
                    record: r.get(3)?,
                })
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    fn put_doc(
        &mut self,
        kind: &str,
        id: &str,
        doc: Option<&super::backend::Doc>,
        create: bool,
    ) -> Result<Option<super::backend::Doc>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let before = tx
            .query_row(
                "SELECT kind, id, org, record FROM policy_docs WHERE kind = ?1 AND id = ?2",
                [kind, id],
                |r| {
                    Ok(super::backend::Doc {
                        kind: r.get(0)?,
                        id: r.get(1)?,
                        org: r.get(2)?,
                        record: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)?;
        if create && before.is_some() {
            return Err(StoreError::Exists);
        }
        match doc {
            Some(d) => tx.execute(
                "INSERT INTO policy_docs (kind, id, org, record) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind, id) DO UPDATE SET org = excluded.org, record = excluded.record",
                params![d.kind, d.id, d.org, d.record],
            ),
            None => tx.execute(
                "DELETE FROM policy_docs WHERE kind = ?1 AND id = ?2",
                [kind, id],
            ),
        }
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE control_version SET version = version + 1 WHERE id = 1",
            [],
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(before)
    }
}

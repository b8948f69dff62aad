//! The PostgreSQL backend, for fleets: every replica connects to the same database; a write
//! bumps the version and NOTIFYs in its transaction (delivered at commit), and every replica
//! LISTENs.

use super::backend::{decode, encode, Backend, StoreError, MIGRATIONS};
use crate::auth::keys::KeyRecord;
use postgres::fallible_iterator::FallibleIterator;

const CHANNEL: &str = "model_bridge_control";
/// Serializes migrations of replicas starting together.
const MIGRATION_LOCK: i64 = 0x6d62_636f_6e74;

pub struct Postgres {
    client: postgres::Client,
}

impl Postgres {
    pub fn connect(url: &str, timeout: std::time::Duration) -> Result<Self, String> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| format!("control store URL: {e}"))?;
        config.connect_timeout(timeout);
        config.application_name("model-bridge");
        let mut client = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| e.to_string())?;
        Ok(Self { client })
    }
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Backend for Postgres {
    fn migrate(&mut self) -> Result<Vec<i64>, String> {
        let mut tx = self.client.transaction().map_err(|e| e.to_string())?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| e.to_string())?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS control_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .map_err(|e| e.to_string())?;
        let done: Vec<i64> = tx
            .query("SELECT version FROM control_migrations", &[])
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql)
                .map_err(|e| format!("control migration {version} {name}: {e}"))?;
            let now = crate::time::now_unix() as i64;
            tx.execute(
                "INSERT INTO control_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[version, name, &now],
            )
            .map_err(|e| e.to_string())?;
            applied.push(*version);
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(applied)
    }

    fn version(&mut self) -> Result<i64, String> {
        self.client
            .query_one("SELECT version FROM control_version WHERE id = 1", &[])
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())
    }

    fn announced(&mut self) -> Result<bool, String> {
        let mut n = self.client.notifications();
        let mut any = false;
        // A short wait: the non-blocking iterator only sees what an earlier query happened to
        // read off the socket; waiting a moment makes the client read it.
        let mut it = n.timeout_iter(std::time::Duration::from_millis(1));
        loop {
            match it.next() {
                Ok(Some(_)) => any = true,
                Ok(None) => return Ok(any),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn keys(&mut self) -> Result<Vec<KeyRecord>, String> {
        self.client
            .query("SELECT record FROM virtual_keys", &[])
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| decode(r.get(0)))
            .collect()
    }

    fn insert_keys(&mut self, records: &[KeyRecord]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(unavailable)?;
        for r in records {
            let created = r.created_at as i64;
            let revoked = r.revoked_at.map(|t| t as i64);
            let inserted = tx
                .execute(
                    "INSERT INTO virtual_keys (id, org, record, created_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                    &[&r.id, &r.org, &encode(r)?, &created, &revoked],
                )
                .map_err(unavailable)?;
            if inserted == 0 {
                return Err(StoreError::Exists);
            }
        }
        bump(&mut tx)?;
        tx.commit().map_err(unavailable)
    }

    fn revoke_key(&mut self, id: &str, at: u64) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.client.transaction().map_err(unavailable)?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM virtual_keys WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mut rec = decode(row.get(0)).map_err(StoreError::Unavailable)?;
        rec.revoked_at.get_or_insert(at);
        let revoked = rec.revoked_at.map(|t| t as i64);
        tx.execute(
            "UPDATE virtual_keys SET record = $2, revoked_at = $3 WHERE id = $1",
            &[&id, &encode(&rec)?, &revoked],
        )
        .map_err(unavailable)?;
        bump(&mut tx)?;
        tx.commit().map_err(unavailable)?;
        Ok(Some(rec))
    }

    fn docs(&mut self) -> Result<Vec<super::backend::Doc>, String> {
        Ok(self
            .client
            .query(
                "SELECT kind, id, org, record FROM policy_docs ORDER BY kind, id",
                &[],
            )
            .map_err(|e| e.to_string())?
            .iter()
            .map(Self::doc_of)
            .collect())
    }

    fn put_doc(
        &mut self,
        kind: &str,
        id: &str,
        doc: Option<&super::backend::Doc>,
        create: bool,
    ) -> Result<Option<super::backend::Doc>, StoreError> {
        let mut tx = self.client.transaction().map_err(unavailable)?;
        let before = tx
            .query_opt(
                "SELECT kind, id, org, record FROM policy_docs WHERE kind = $1 AND id = $2 FOR UPDATE",
                &[&kind, &id],
            )
            .map_err(unavailable)?
            .map(|r| Self::doc_of(&r));
        if create && before.is_some() {
            return Err(StoreError::Exists);
        }
        match doc {
            Some(d) => {
                tx.execute(
                    "INSERT INTO policy_docs (kind, id, org, record) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, id) DO UPDATE SET org = EXCLUDED.org, record = EXCLUDED.record",
                    &[&d.kind, &d.id, &d.org, &d.record],
                )
                .map_err(unavailable)?;
            }
            None => {
                tx.execute(
                    "DELETE FROM policy_docs WHERE kind = $1 AND id = $2",
                    &[&kind, &id],
                )
                .map_err(unavailable)?;
            }
        }
        bump(&mut tx)?;
        tx.commit().map_err(unavailable)?;
        Ok(before)
    }
}

impl Postgres {
    fn doc_of(row: &postgres::Row) -> super::backend::Doc {
        super::backend::Doc {
            kind: row.get(0),
            id: row.get(1),
            org: row.get(2),
            record: row.get(3),
        }
    }
}

/// Bumps the version and announces the change (NOTIFY is delivered when the transaction
/// commits, so no replica reloads before the change is visible).
fn bump(tx: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(&format!(
        "UPDATE control_version SET version = version + 1 WHERE id = 1; NOTIFY {CHANNEL}"
    ))
    .map_err(unavailable)
}

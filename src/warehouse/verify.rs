//! `model-bridge audit verify`: recomputes every audit chain from ClickHouse and reports the
//! first break — a row whose hash does not match its fields, a link to a previous hash that is
//! not the previous row's, a gap or a repeat in the sequence, or a chain whose first row links
//! to an event that is not stored.

use super::chain::{row_hash, GENESIS};
use super::rows::AuditRow;
use std::collections::HashSet;

pub struct Report {
    pub chains: usize,
    pub rows: u64,
    /// What is acceptable but worth saying (chains shortened by retention).
    pub notes: Vec<String>,
    /// The first problem found, `None` when the trail is intact.
    pub first_break: Option<String>,
}

pub async fn verify(
    client: &clickhouse::Client,
    key: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<Report, String> {
    let mut cursor = client
        .query("SELECT ?fields FROM audit_events ORDER BY chain, seq")
        .fetch::<AuditRow>()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    while let Some(r) = cursor.next().await.map_err(|e| e.to_string())? {
        rows.push(r);
    }
    Ok(check(&rows, key))
}

/// The checks over rows sorted by (chain, seq); with `key`, every row must also carry its
/// valid signature (a forged row with a correctly recomputed hash has none).
pub fn check(rows: &[AuditRow], key: Option<&ed25519_dalek::VerifyingKey>) -> Report {
    let hashes: HashSet<&str> = rows.iter().map(|r| r.hash.as_str()).collect();
    // Retention drops whole months of audit rows; a chain that began before the cutoff then
    // starts mid-way, which is not a break once retention has been recorded as applied.
    let retention_applied = rows.iter().any(|r| {
        r.action == "retention.apply"
            && serde_json::from_str::<serde_json::Value>(&r.after)
                .ok()
                .and_then(|v| {
                    v["audit_partitions_dropped"]
                        .as_array()
                        .map(|a| !a.is_empty())
                })
                .unwrap_or(false)
    });
    let mut report = Report {
        chains: 0,
        rows: rows.len() as u64,
        notes: Vec::new(),
        first_break: None,
    };
    let mut prev: Option<&AuditRow> = None;
    for r in rows {
        let at = format!("chain {} seq {}", r.chain, r.seq);
        let problem = match prev.filter(|p| p.chain == r.chain) {
            Some(p) if p.seq == r.seq => Some(format!("{at}: stored twice")),
            Some(p) if p.seq + 1 != r.seq => Some(format!(
                "{at}: rows {}..{} are missing",
                p.seq + 1,
                r.seq - 1
            )),
            Some(p) if r.prev_hash != p.hash => Some(format!(
                "{at}: prev_hash does not match the hash of seq {}",
                p.seq
            )),
            Some(_) => None,
            None => {
                report.chains += 1;
                if r.seq != 1 {
                    if retention_applied {
                        report.notes.push(format!(
                            "chain {} begins at seq {} (earlier rows dropped by retention)",
                            r.chain, r.seq
                        ));
                        None
                    } else {
                        Some(format!("{at}: rows 1..{} are missing", r.seq - 1))
                    }
                } else if r.prev_hash != GENESIS && !hashes.contains(r.prev_hash.as_str()) {
                    if retention_applied {
                        report.notes.push(format!(
                            "chain {} links to an event dropped by retention",
                            r.chain
                        ));
                        None
                    } else {
                        Some(format!(
                            "{at}: links to a previous event that is not stored"
                        ))
                    }
                } else {
                    None
                }
            }
        };
        let problem = problem
            .or_else(|| {
                (row_hash(r) != r.hash)
                    .then(|| format!("{at}: hash does not match the row's fields"))
            })
            .or_else(|| {
                let k = key?;
                (!super::signing::verify(k, &r.hash, &r.sig)).then(|| {
                    format!("{at}: signature missing or not made by the audit signing key")
                })
            });
        if let Some(p) = problem {
            report.first_break = Some(p);
            return report;
        }
        prev = Some(r);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::chain::Chain;

    fn rows(n: usize) -> Vec<AuditRow> {
        signed_rows(n, None)
    }

    fn signed_rows(n: usize, key: Option<ed25519_dalek::SigningKey>) -> Vec<AuditRow> {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Chain::start("n", dir.path()).signed_by(key);
        (0..n)
            .map(|i| {
                let mut r = AuditRow::from_event(crate::audit::AuditEvent {
                    ts_ms: 1_000 + i as u64,
                    request_id: format!("r{i}"),
                    actor: "key:k".into(),
                    org: None,
                    action: "auth.failed",
                    resource: "model:x".into(),
                    outcome: "denied",
                    reason: None,
                    before: None,
                    after: None,
                    client_ip: None,
                    user_agent: None,
                });
                c.stamp(&mut r);
                r
            })
            .collect()
    }

    fn check_(rows: &[AuditRow]) -> Report {
        check(rows, None)
    }

    /// A forged row appended with a correctly computed hash and link passes the unkeyed chain,
    /// and fails against the public key; so does every unsigned or re-signed row.
    #[test]
    fn a_forged_tail_fails_the_signature_check() {
        use crate::warehouse::signing;
        let (seed, public) = signing::keygen();
        let public = signing::verifying_key(&public).unwrap();
        let ok = signed_rows(4, Some(signing::signing_key(&seed).unwrap()));
        assert!(check(&ok, Some(&public)).first_break.is_none());
        let mut forged = ok.clone();
        let mut f = ok[3].clone();
        f.seq = 5;
        f.prev_hash = ok[3].hash.clone();
        f.actor = "key:attacker".into();
        f.hash = row_hash(&f);
        f.sig = String::new();
        forged.push(f.clone());
        assert!(
            check(&forged, None).first_break.is_none(),
            "the unkeyed chain is fooled"
        );
        let b = check(&forged, Some(&public)).first_break.unwrap();
        assert!(b.contains("seq 5") && b.contains("signature"), "{b}");
        // Signed with another key: still refused.
        let (other, _) = signing::keygen();
        forged[4].sig = signing::sign(&signing::signing_key(&other).unwrap(), &f.hash);
        assert!(check(&forged, Some(&public)).first_break.is_some());
        // Unsigned rows fail once a key is given.
        assert!(check(&rows(2), Some(&public)).first_break.is_some());
    }

    #[test]
    fn intact_altered_missing_and_repeated() {
        let ok = rows(5);
        let r = check_(&ok);
        assert!(r.first_break.is_none());
        assert_eq!((r.chains, r.rows), (1, 5));

        let mut altered = ok.clone();
        altered[2].outcome = "allowed".into();
        let b = check_(&altered).first_break.unwrap();
        assert!(
            b.contains("seq 3") && b.contains("hash does not match"),
            "{b}"
        );

        let mut missing = ok.clone();
        missing.remove(3);
        let b = check_(&missing).first_break.unwrap();
        assert!(b.contains("seq 5") && b.contains("4..4"), "{b}");

        let mut head_cut = ok.clone();
        head_cut.remove(0);
        assert!(check_(&head_cut).first_break.unwrap().contains("rows 1..1"));

        let mut twice = ok.clone();
        twice.insert(2, ok[1].clone());
        assert!(check_(&twice).first_break.unwrap().contains("stored twice"));

        // Re-hashing an altered row does not help: the next row's link breaks.
        let mut rehashed = ok;
        rehashed[1].resource = "model:y".into();
        rehashed[1].hash = row_hash(&rehashed[1]);
        let b = check_(&rehashed).first_break.unwrap();
        assert!(b.contains("seq 3") && b.contains("prev_hash"), "{b}");
    }
}

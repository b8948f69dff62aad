-- Audit trail: who did what to which resource, with a hash chained to the previous event of the
-- same chain (tamper evidence).
CREATE TABLE IF NOT EXISTS {database}.audit_events (
    ts DateTime('UTC'),
    ts_ms UInt64,
    chain String,
    seq UInt64,
    prev_hash String,
    hash String,
    request_id String,
    actor String,
    org String,
    action String,
    resource String,
    outcome String,
    reason String,
    before String,
    after String,
    client_ip String,
    user_agent String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (chain, seq);

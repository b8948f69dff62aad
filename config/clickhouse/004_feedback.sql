-- Client feedback on responses (POST /v1/feedback): joined to usage_events by request id (and
-- org, so one tenant cannot score another's requests) for experiment reports.
CREATE TABLE IF NOT EXISTS {database}.feedback (
    ts DateTime('UTC'),
    ts_ms UInt64,
    feedback_id String,
    batch_id String,
    request_id String,
    score Float64,
    comment String,
    org String,
    key_id String,
    user String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (request_id, ts);

-- One row per request. Money is fixed-point: nano-USD in Int64 (portable to 18.16, where
-- Decimal is experimental). Partitioned by month (retention drops partitions), ordered for
-- per-org / per-cost-center time scans.
CREATE TABLE IF NOT EXISTS {database}.usage_events (
    ts DateTime('UTC'),
    ts_ms UInt64,
    request_id String,
    batch_id String,
    org String,
    team String,
    user String,
    key_id String,
    cost_center String,
    department String,
    project String,
    tags Array(String),
    endpoint String,
    requested_model String,
    provider String,
    provider_model String,
    experiment String,
    variant String,
    stream UInt8,
    status UInt16,
    error_type String,
    cancelled UInt8,
    prompt_tokens UInt64,
    cached_tokens UInt64,
    completion_tokens UInt64,
    usage_source String,
    cost_nanousd Int64,
    cost_known UInt8,
    latency_ms Float64,
    ttft_ms Float64,
    upstream_latency_ms Float64,
    retries UInt32,
    client_ip String,
    end_user String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (org, cost_center, ts, request_id);

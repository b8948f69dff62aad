-- What finance dashboards read besides spend: the configured budgets and allocations, one
-- snapshot per config generation (`config_hash`; every replica serving that config writes the
-- same rows, so readers take one row per key of the latest snapshot), and the spend
-- anomalies and month-end forecasts the gateway's finance watch computed (dashboards show
-- the gateway's own figures instead of re-deriving them in SQL).
CREATE TABLE IF NOT EXISTS {database}.budgets (
    written_at DateTime('UTC'),
    config_hash String,
    node String,
    org String,
    scope String,
    scope_id String,
    name String,
    department String,
    period String,
    limit_nanousd Int64,
    thresholds Array(Float64)
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(written_at)
ORDER BY (org, written_at, scope, scope_id);
CREATE TABLE IF NOT EXISTS {database}.allocations (
    written_at DateTime('UTC'),
    config_hash String,
    node String,
    org String,
    source String,
    cost_center String,
    basis_points UInt32,
    rank UInt8
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(written_at)
ORDER BY (org, written_at, source, rank);
CREATE TABLE IF NOT EXISTS {database}.spend_anomalies (
    detected_at DateTime('UTC'),
    node String,
    id String,
    grain String,
    bucket DateTime('UTC'),
    org String,
    cost_center String,
    actual_nanousd Int64,
    expected_nanousd Int64,
    score Float64,
    drivers String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (org, bucket, cost_center, grain);
CREATE TABLE IF NOT EXISTS {database}.spend_forecasts (
    computed_at DateTime('UTC'),
    node String,
    org String,
    cost_center String,
    month String,
    spent_nanousd Int64,
    forecast_nanousd Int64,
    budget_nanousd Int64,
    has_budget UInt8,
    exhausted_on String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(computed_at)
ORDER BY (org, cost_center, computed_at)

-- Rollups carrying every attribution dimension, for finance dashboards and spend reports:
-- per UTC day (kept as long as finance needs it) and per UTC hour (kept for recent weeks,
-- `[clickhouse] hourly_retention_days`). Each is a SummingMergeTree table written by a
-- materialized view into it (`TO`: no hidden `.inner` table, so the table can be read,
-- backfilled, corrected and dropped like any other). Measures are Int64 so a correction row
-- (`model-bridge warehouse reconcile`) can subtract. No user column: per-user questions read
-- the raw rows, so erasure stays in one place and never changes a rollup total.
-- First, what prompt caching saved per request (cost at the uncached price minus cost).
ALTER TABLE {database}.usage_events ADD COLUMN cache_savings_nanousd Int64 DEFAULT 0;
CREATE TABLE IF NOT EXISTS {database}.usage_daily (
    day Date,
    org String,
    team String,
    cost_center String,
    department String,
    project String,
    key_id String,
    model String,
    provider String,
    experiment String,
    variant String,
    requests Int64,
    prompt_tokens Int64,
    cached_tokens Int64,
    completion_tokens Int64,
    cost_nanousd Int64,
    cache_savings_nanousd Int64,
    unpriced_requests Int64,
    errors Int64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (org, day, cost_center, department, project, team, key_id, model, provider, experiment, variant);
CREATE TABLE IF NOT EXISTS {database}.usage_hourly (
    hour DateTime('UTC'),
    org String,
    team String,
    cost_center String,
    department String,
    project String,
    key_id String,
    model String,
    provider String,
    experiment String,
    variant String,
    requests Int64,
    prompt_tokens Int64,
    cached_tokens Int64,
    completion_tokens Int64,
    cost_nanousd Int64,
    cache_savings_nanousd Int64,
    unpriced_requests Int64,
    errors Int64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMMDD(hour)
ORDER BY (org, hour, cost_center, department, project, team, key_id, model, provider, experiment, variant);
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_mv TO {database}.usage_daily
AS SELECT
    toDate(ts) AS day,
    org, team, cost_center, department, project, key_id,
    requested_model AS model, provider, experiment, variant,
    toInt64(count()) AS requests,
    toInt64(sum(prompt_tokens)) AS prompt_tokens,
    toInt64(sum(cached_tokens)) AS cached_tokens,
    toInt64(sum(completion_tokens)) AS completion_tokens,
    sum(cost_nanousd) AS cost_nanousd,
    sum(cache_savings_nanousd) AS cache_savings_nanousd,
    toInt64(sum(1 - cost_known)) AS unpriced_requests,
    toInt64(sum(status >= 400)) AS errors
FROM {database}.usage_events
GROUP BY day, org, team, cost_center, department, project, key_id, model, provider, experiment, variant;
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_hourly_mv TO {database}.usage_hourly
AS SELECT
    toStartOfHour(ts) AS hour,
    org, team, cost_center, department, project, key_id,
    requested_model AS model, provider, experiment, variant,
    toInt64(count()) AS requests,
    toInt64(sum(prompt_tokens)) AS prompt_tokens,
    toInt64(sum(cached_tokens)) AS cached_tokens,
    toInt64(sum(completion_tokens)) AS completion_tokens,
    sum(cost_nanousd) AS cost_nanousd,
    sum(cache_savings_nanousd) AS cache_savings_nanousd,
    toInt64(sum(1 - cost_known)) AS unpriced_requests,
    toInt64(sum(status >= 400)) AS errors
FROM {database}.usage_events
GROUP BY hour, org, team, cost_center, department, project, key_id, model, provider, experiment, variant

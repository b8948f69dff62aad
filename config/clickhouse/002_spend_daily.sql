-- Spend per day x org x cost center x model: what finance dashboards and budget checks read.
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.spend_daily
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (org, cost_center, model, day)
AS SELECT
    toDate(ts) AS day,
    org,
    cost_center,
    requested_model AS model,
    count() AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cost_nanousd) AS cost_nanousd,
    sum(1 - cost_known) AS unpriced_requests
FROM {database}.usage_events
GROUP BY day, org, cost_center, model;

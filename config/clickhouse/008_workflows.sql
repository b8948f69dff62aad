-- Workflow runs and their step executions, written when a run ends (through the same
-- never-lose pipeline as usage): history per workflow, version and org. A run's cost equals
-- the sum of its LLM rows in usage_events (tag workflow_run:<id>).
CREATE TABLE IF NOT EXISTS {database}.workflow_runs (
    ts DateTime('UTC'),
    batch_id String,
    run_id String,
    workflow String,
    version UInt32,
    org String,
    key_id String,
    user String,
    status String,
    error String,
    started_ms UInt64,
    ended_ms UInt64,
    steps UInt32,
    llm_calls UInt64,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    cost_nanousd Int64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (org, workflow, ts, run_id);

CREATE TABLE IF NOT EXISTS {database}.workflow_steps (
    ts DateTime('UTC'),
    batch_id String,
    run_id String,
    workflow String,
    version UInt32,
    org String,
    path String,
    step_type String,
    status String,
    attempts UInt32,
    started_ms UInt64,
    ended_ms UInt64,
    error String,
    cost_nanousd Int64,
    request_ids Array(String)
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (org, run_id, started_ms, path);

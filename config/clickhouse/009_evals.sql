-- Evaluations: the cases of each dataset version (content hash), registered when a run uses
-- them, and one row per scored (case, target) of each eval run, with its scores, latency,
-- tokens and exact cost. A case's usage row carries the tags eval_run:<id> and
-- eval_case:<id>, so its cost here equals that row's.
CREATE TABLE IF NOT EXISTS {database}.eval_cases (
    ts DateTime('UTC'),
    dataset String,
    dataset_hash String,
    case_id String,
    input String,
    expected String,
    tags Array(String)
) ENGINE = ReplacingMergeTree()
ORDER BY (dataset, dataset_hash, case_id);

CREATE TABLE IF NOT EXISTS {database}.eval_results (
    ts DateTime('UTC'),
    run_id String,
    eval String,
    dataset String,
    dataset_hash String,
    target String,
    case_id String,
    status String,
    error String,
    output String,
    request_id String,
    latency_ms UInt64,
    ttft_ms UInt64,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    cost_nanousd Int64,
    scoring_cost_nanousd Int64,
    score_names Array(String),
    score_values Array(Float64),
    score_passed Array(UInt8)
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (eval, run_id, target, case_id);

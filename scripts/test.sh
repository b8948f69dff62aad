#!/usr/bin/env bash
# The whole test suite: lints, Rust unit and integration tests, then the official OpenAI Python
# SDK against the gateway and the mock provider, the console in headless Chromium, then every
# SQL statement the suite issued replayed on a current ClickHouse engine (chdb). Every server
# runs on loopback ephemeral ports and is stopped by the tests themselves; ClickHouse runs on
# 18123/19000 (MB_CH_HTTP_PORT, MB_CH_TCP_PORT) for the duration of this script; tests start
# their own redis-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== ClickHouse (Debian's clickhouse-server on loopback, temp data dir)"
export MB_CH_DIR="$(mktemp -d)"
trap 'scripts/clickhouse.sh stop; rm -rf "$MB_CH_DIR"' EXIT
MB_CLICKHOUSE_URL="$(scripts/clickhouse.sh start)"
export MB_CLICKHOUSE_URL
echo "$MB_CLICKHOUSE_URL"

echo "== Redis (Debian's redis-server; tests start their own instances on ephemeral ports)"
scripts/redis.sh install

echo "== PostgreSQL (Debian's postgresql; the control-store tests start their own servers)"
scripts/postgres.sh install

echo "== Prometheus (Debian's prometheus + promtool; the alert tests start their own server)"
scripts/prometheus.sh install

echo "== Grafana's dashboard schema (@grafana/schema + tsc, pinned, under .run/)"
scripts/grafana-schema.sh install

echo "== Chromium (Debian's chromium + chromium-driver; the console tests start it headless)"
scripts/chromium.sh install

# A CI run builds once from a clean clone: incremental caches (~1.5 GB) would never be read.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --quiet 2>&1 | tee /tmp/model-bridge-cargo-test.log
echo "== OpenAI SDK client tests"
cargo build --quiet --bins
MB_BIN_DIR="$PWD/target/debug" .venv/bin/python -m pytest -q tests/sdk
echo "== Console in headless Chromium (Selenium; screenshots in target/console-screenshots/)"
MB_BIN_DIR="$PWD/target/debug" .venv/bin/python -m pytest -q tests/console
echo "== SQL on a current ClickHouse (chdb): every statement the suite ran on 18.16"
.venv/bin/python scripts/chdb_check.py

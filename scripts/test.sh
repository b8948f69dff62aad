#!/usr/bin/env bash
# The whole test suite: lints, Rust unit and integration tests, then the official OpenAI Python
# SDK against the gateway and the mock provider. Every server runs on loopback ephemeral ports
# and is stopped by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --quiet 2>&1 | tee /tmp/model-bridge-cargo-test.log
echo "== OpenAI SDK client tests"
cargo build --quiet --bins
MB_BIN_DIR="$PWD/target/debug" .venv/bin/python -m pytest -q tests/sdk

#!/usr/bin/env bash
# Quickstart: builds the gateway and the mock provider, starts both on the shipped dev profile
# (config/dev.toml: no API key, no internet), sends one chat completion through the gateway and
# keeps serving on http://127.0.0.1:8080/v1 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bins
mkdir -p .run
./target/release/mock-openai --listen 127.0.0.1:18081 --threads 2 > .run/mock.log 2>&1 &
mock=$!
./target/release/model-bridge serve --config config/dev.toml > .run/gateway.log 2>&1 &
gw=$!
trap 'kill $gw $mock 2>/dev/null; wait $gw 2>/dev/null; exit 0' INT TERM EXIT
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "== POST /v1/chat/completions through the gateway"
curl -s http://127.0.0.1:8080/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'
echo
echo "== its usage record (.run/usage.jsonl)"
sleep 0.5; tail -n 1 .run/usage.jsonl
echo
echo "Gateway: http://127.0.0.1:8080/v1   console: http://127.0.0.1:9090/console/   metrics: http://127.0.0.1:9090/metrics   logs: .run/"
echo "Ctrl-C to stop."
wait $gw

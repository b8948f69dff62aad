#!/usr/bin/env bash
# Warehouse bench (not a test), one invocation:
#  1. the sink alone: 1M usage rows into a local ClickHouse, offered as fast as the queue takes
#     them and at steady rates — rows/s sustained, and whether anything had to spool;
#  2. the gateway under load (wrk, non-streaming chat, gateway pinned to core 0, loader + mock
#     to core 1) with the JSON-lines sink and with the ClickHouse sink: RPS, p50, p99, peak RSS,
#     and rows in ClickHouse vs requests served.
#
#   benches/warehouse.sh [duration_s=10] [concurrency=32]
# SINK_RATES="max 100000" picks the sink-alone runs ("" skips them); SINK_SETTINGS adds lines to
# the gateway's [clickhouse] section (e.g. "batch_rows = 2000").
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONC=${2:-32}
. benches/lib.sh
need wrk
cargo build --release --quiet --bins

WORK=$(mktemp -d)
export MB_CH_HTTP_PORT=${MB_CH_HTTP_PORT:-18223} MB_CH_TCP_PORT=${MB_CH_TCP_PORT:-19223} MB_CH_DIR=$WORK/ch
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; scripts/clickhouse.sh stop; rm -rf "$WORK"; }
trap cleanup EXIT
# ClickHouse shares core 1 with the loader and the mock: core 0 is the gateway's alone.
CH=$(taskset -c 1 scripts/clickhouse.sh start)

echo "== sink alone: 1,000,000 rows into ClickHouse $CH"
for rate in ${SINK_RATES-max 100000 150000 200000}; do
  [ "$rate" = max ] && rate=""
  MB_CLICKHOUSE_URL=$CH MB_BENCH_ROWS=1000000 MB_BENCH_RATE=$rate cargo bench --quiet --bench sink_throughput 2>/dev/null | grep '^sink_throughput' | sed "s/^/offered ${rate:-max} rows\/s: /"
done

MOCK=$(port); GJ=$(port); OJ=$(port); GC=$(port); OC=$(port)
taskset -c 1 ./target/release/mock-openai --listen 127.0.0.1:$MOCK --threads 1 >/dev/null 2>&1 &
pids+=($!)
conf() { # listen ops sink
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
ops_listen = "127.0.0.1:$2"
threads = 1
[usage]
sink = "$3"
path = "$WORK/usage.jsonl"
[reload]
watch = false
[clickhouse]
url = "$CH"
database = "mb_load"
migrate_on_start = true
spool_dir = "$WORK/spool-$1"
${SINK_SETTINGS:-}
[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:$MOCK/v1"
api_key = "sk-bench"
[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"
price = { input_per_1m = 0.15, cached_input_per_1m = 0.075, output_per_1m = 0.60 }
TOML
}
conf $GJ $OJ jsonl > "$WORK/jsonl.toml"
conf $GC $OC clickhouse > "$WORK/ch.toml"
RUST_LOG=warn taskset -c 0 ./target/release/model-bridge serve --config "$WORK/jsonl.toml" >"$WORK/gj.log" 2>&1 &
pids+=($!); PJ=$!
RUST_LOG=warn taskset -c 0 ./target/release/model-bridge serve --config "$WORK/ch.toml" >"$WORK/gc.log" 2>&1 &
pids+=($!); PC=$!
wait_port $MOCK; wait_port $GJ; wait_port $GC

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one sentence about gateways."}]}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.1f %.1f %.1f %d\n", summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
run() { taskset -c 1 wrk -t1 -c"$CONC" -d"${DUR}s" -s "$WORK/post.lua" "http://127.0.0.1:$1/v1/chat/completions" 2>&1 | awk '/^RESULT/ {print $2, $3, $4, $5, $6}'; }
for p in $GJ $GC; do taskset -c 1 wrk -t1 -c8 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null 2>&1; done
sleep 2
warm_rows=$(curl -s "$CH" --data "SELECT count() FROM mb_load.usage_events")

echo "== gateway under load: non-streaming chat, concurrency $CONC, ${DUR}s per run (latency in us)"
printf "%-12s %10s %10s %10s %8s\n" sink rps p50_us p99_us errors
served=0
for round in 1 2; do
  for s in jsonl clickhouse; do
    p=$GJ; [ $s = clickhouse ] && p=$GC
    read -r n rps p50 p99 err <<<"$(run $p)"
    [ $s = clickhouse ] && served=$((served + n))
    printf "%-12s %10.0f %10.1f %10.1f %8s\n" "$s" "$rps" "$p50" "$p99" "$err"
  done
done
sleep 3
rows=$(curl -s "$CH" --data "SELECT count() FROM mb_load.usage_events")
echo "clickhouse sink: $((rows - warm_rows)) rows for $served requests served (wrk counts requests it completed)"
curl -s "127.0.0.1:$OC/metrics" | grep -E '^model_bridge_usage_sink_rows_total|^model_bridge_sink_spool_bytes\{sink="usage"'
# The sink's own effect, free of the machine's: ClickHouse ingesting on core 1 slows the loader
# and the mock there too (direct-to-mock p99 rises ~3x while it ingests 20k rows/s), so compare
# the time each request spent inside the gateway (total minus upstream), from its own records.
inside_ch=$(curl -s "$CH" --data "SELECT round(quantileExact(0.5)(latency_ms - upstream_latency_ms) * 1000), round(quantileExact(0.99)(latency_ms - upstream_latency_ms) * 1000) FROM mb_load.usage_events WHERE upstream_latency_ms > 0 FORMAT TSV")
inside_j=$(python3 -c '
import json, sys
d = sorted((r["latency_ms"] - r["upstream_latency_ms"]) * 1000 for r in map(json.loads, open(sys.argv[1])) if r.get("upstream_latency_ms"))
print(round(d[len(d) // 2]), round(d[int(len(d) * 0.99)]))' "$WORK/usage.jsonl")
echo "time inside the gateway (us, p50 p99): jsonl sink $inside_j; clickhouse sink $inside_ch"
echo "peak RSS: jsonl gateway $(awk '/VmHWM/ {print $2, $3}' /proc/$PJ/status), clickhouse gateway $(awk '/VmHWM/ {print $2, $3}' /proc/$PC/status)"

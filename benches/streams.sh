#!/usr/bin/env bash
# Memory at scale: N concurrent slow streams (40 chunks, one every 100 ms: 4 s per stream)
# through the gateway, held for DUR seconds by wrk with N connections. Reports the gateway's
# RSS idle, at its peak under load and after, its CPU use, and the streams completed, next to
# the same load direct to the mock. Gateway pinned to core 0, mock and loader to core 1.
#
#   benches/streams.sh [streams=10000] [duration_s=20]
#   GW_BIN=old/model-bridge benches/streams.sh ...   # measure another build's gateway
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
DUR=${2:-20}
# The gateway holds two sockets per stream: N streams need 2N + a few descriptors.
ulimit -n "$(ulimit -Hn)"
if [ $((2 * N + 100)) -gt "$(ulimit -n)" ]; then
  N=$(( ($(ulimit -n) - 100) / 2 ))
  echo "open-file limit $(ulimit -n) (hard): measuring $N streams" >&2
fi
. benches/lib.sh
need wrk
cargo build --release --quiet --bins

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
MOCK=$(port); GW=$(port); OPS=$(port)

taskset -c 1 ./target/release/mock-openai --listen 127.0.0.1:$MOCK --threads 1 --chunks 40 --chunk-interval-ms 100 >/dev/null 2>&1 &
pids+=($!)
cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
ops_listen = "127.0.0.1:$OPS"
threads = 1
[usage]
sink = "jsonl"
path = "$WORK/usage.jsonl"
[reload]
watch = false
# 10,000 connections opened at once overflow the one-core mock's accept queue: SYNs are
# retransmitted after 1, 3, 7 s. With the default connect timeout and breaker, the first
# timeouts opened the breaker and most "streams" were instant 502s, measuring nothing.
[routing]
breaker_failures = 1000000
breaker_error_rate = 1.0
[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:$MOCK/v1"
api_key = "sk-bench"
connect_timeout_ms = 30000
first_byte_timeout_ms = 30000
[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"
TOML
RUST_LOG=error taskset -c 0 "${GW_BIN:-./target/release/model-bridge}" serve --config "$WORK/gateway.toml" >"$WORK/gw.log" 2>&1 &
GWPID=$!; pids+=($GWPID)
wait_port $MOCK; wait_port $GW

cat > "$WORK/stream.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one sentence about gateways."}],"stream":true}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Upstream streams the gateway holds now: its established connections to the mock.
held() { ss -Htn state established "dst 127.0.0.1:$MOCK" 2>/dev/null | wc -l; }

load() { # port -> "streams errors p50_ms p99_ms peak_rss_kib cpu_s held_at_peak"
  local before peak=0 r out h=0
  before=$(cpu $GWPID)
  taskset -c 1 wrk -t1 -c"$N" -d"${DUR}s" --timeout 30s -s "$WORK/stream.lua" "http://127.0.0.1:$1/v1/chat/completions" >"$WORK/wrk.out" 2>&1 &
  local w=$!
  while kill -0 $w 2>/dev/null; do
    r=$(rss $GWPID); [ "$r" -gt "$peak" ] && { peak=$r; h=$(held); }
    sleep 0.5
  done
  out=$(awk '/^RESULT/ {print $2, $3, $4, $5}' "$WORK/wrk.out")
  echo "$out $peak $(awk -v a="$(cpu $GWPID)" -v b="$before" 'BEGIN { printf "%.1f", a - b }') $h"
}

echo "== $N concurrent streams (40 chunks, 100 ms apart), ${DUR}s"
idle=$(rss $GWPID)
read -r dn derr dp50 dp99 _ _ <<<"$(load $MOCK)"
read -r gn gerr gp50 gp99 gpeak gcpu gheld <<<"$(load $GW)"
after=$(rss $GWPID)
# The process's high-water mark, whatever the sampling missed: it includes the burst when
# wrk hangs up on all streams at once (each cancelled stream's record, with its estimated
# usage, is written then).
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$GWPID/status")
printf "%-8s %9s %7s %9s %9s\n" target streams errors p50_ms p99_ms
printf "%-8s %9s %7s %9s %9s\n" direct "$dn" "$derr" "$dp50" "$dp99"
printf "%-8s %9s %7s %9s %9s\n" gateway "$gn" "$gerr" "$gp50" "$gp99"
awk -v i="$idle" -v p="$gpeak" -v a="$after" -v hw="$hwm" -v n="$gheld" -v c="$gcpu" -v d="$DUR" 'BEGIN {
  printf "gateway RSS: idle %.1f MB, peak %.1f MB with %d upstream streams held (%.1f KB per stream), after %.1f MB, high-water mark %.1f MB; CPU %.1f s over %d s (%.0f%% of a core)\n",
    i/1024, p/1024, n, (p-i)/(n > 0 ? n : 1), a/1024, hw/1024, c, d, c*100/d }'

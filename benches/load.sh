#!/usr/bin/env bash
# End-to-end load bench, one invocation: the same non-streaming chat load (wrk, POST) direct to the
# mock provider, through a plain nginx reverse proxy (one worker, upstream keep-alive) and through
# the gateway (plain, with auth, with every limit kind on, with an experiment split and fallbacks,
# in latency mode: per-thread runtimes with busy polling, and with every request traced). nginx and the gateways are pinned
# to core 0, the loader and the mock to core 1.
# Prints RPS, p50 and p99 for each, and the gateway's ratios (RPS vs nginx, added p50 vs direct);
# latency at 80% of the all-on gateway's saturation (a fixed request rate, h2load) direct, through
# nginx and through the gateways; streaming targets with CPU per stream and per relayed chunk.
#
#   benches/load.sh [duration_s=10] [concurrency list="32 1"]
#   BASE_BIN=/path/to/base/model-bridge benches/load.sh ...   # adds an alternating A/B table
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONCS=${2:-"32 1"}
# Cores: the prescribed layout pins nginx and the gateway to core 0, wrk and the mock to core 1.
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
. benches/lib.sh
need wrk nginx h2load:nghttp2-client
cargo build --release --quiet --bins

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

MOCK=$(port); NGX=$(port); GW=$(port); OPS=$(port); GWA=$(port); OPSA=$(port)

taskset -c $LOAD_CPU ./target/release/mock-openai --listen 127.0.0.1:$MOCK --threads 1 --chunks 8 >/dev/null 2>&1 &
pids+=($!)

cat > "$WORK/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx closes a keep-alive connection after 1,000 requests by default (client side and
  # upstream): h2load does not reconnect, so at 1,000 requests/s per connection nginx's latency
  # rows were empty, and the reconnects were a cost the gateway does not pay.
  keepalive_requests 1000000;
  client_body_temp_path $WORK/ngx-body;
  proxy_temp_path $WORK/ngx-proxy;
  upstream mock { server 127.0.0.1:$MOCK; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
taskset -c $PROXY_CPU nginx -c "$WORK/nginx.conf" &
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
[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:$MOCK/v1"
api_key = "sk-bench"
[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"
TOML
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway.toml" >"$WORK/gw.log" 2>&1 &
pids+=($!)

# The same gateway with authentication on: a virtual key, RBAC from policies/, an org.
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWA/; s/127.0.0.1:$OPS/127.0.0.1:$OPSA/; s#usage.jsonl#usage-auth.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-auth.toml"
cat >> "$WORK/gateway-auth.toml" <<TOML
[auth]
key_store = "keys.json"
policies = "$PWD/policies"
[audit]
path = "$WORK/audit.jsonl"
[orgs.bench]
[orgs.bench.cost_centers.cc]
TOML
# The same gateway with every limit kind on (never reached) and an org budget.
GWL=$(port); OPSL=$(port)
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWL/; s/127.0.0.1:$OPS/127.0.0.1:$OPSL/; s#usage.jsonl#usage-limits.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-limits.toml"
cat >> "$WORK/gateway-limits.toml" <<TOML
[orgs.default.limits]
requests_per_second = 1000000000
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrent_requests = 1000000
[orgs.default.budget]
usd = "1000000"
TOML
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-limits.toml" >"$WORK/gwl.log" 2>&1 &
pids+=($!); PID_GWL=$!

# The same gateway with routing on: a two-variant experiment on the alias and a fallback chain.
GWR=$(port); OPSR=$(port)
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWR/; s/127.0.0.1:$OPS/127.0.0.1:$OPSR/; s#usage.jsonl#usage-routing.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-routing.toml"
cat >> "$WORK/gateway-routing.toml" <<TOML
fallbacks = [{ provider = "mock", model = "mock-fallback" }]
[models."gpt-4o-mini".split]
experiment = "bench"
[[models."gpt-4o-mini".split.variants]]
name = "control"
weight = 50
[[models."gpt-4o-mini".split.variants]]
name = "treatment"
weight = 50
provider = "mock"
model = "mock-2"
TOML
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-routing.toml" >"$WORK/gwr.log" 2>&1 &
pids+=($!); PID_GWR=$!

# The same gateway in latency mode: one runtime per thread, workers busy-poll 200 us after
# each request instead of sleeping (no cross-core wake-up for the provider's answer).
GWP=$(port); OPSP=$(port)
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWP/; s/127.0.0.1:$OPS/127.0.0.1:$OPSP/; s#usage.jsonl#usage-poll.jsonl#; s/^threads = 1$/threads = 1\nwork_stealing = false\nbusy_poll_us = 200/" "$WORK/gateway.toml" > "$WORK/gateway-poll.toml"
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-poll.toml" >"$WORK/gwp.log" 2>&1 &
pids+=($!); PID_GWP=$!

# The plain gateway with tracing on, every request sampled (the worst case): spans built and
# exported in batches over OTLP/HTTP (to the mock, which answers any POST).
GWT=$(port); OPST=$(port)
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWT/; s/127.0.0.1:$OPS/127.0.0.1:$OPST/; s#usage.jsonl#usage-trace.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-trace.toml"
printf '\n[tracing]\notlp_endpoint = "http://127.0.0.1:%s/v1/traces"\nsample_ratio = 1.0\nexport_interval_ms = 1000\n' "$MOCK" >> "$WORK/gateway-trace.toml"
RUST_LOG=error taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-trace.toml" >"$WORK/gwt.log" 2>&1 &
pids+=($!); PID_GWT=$!

KEY=$(./target/release/model-bridge keys create --config "$WORK/gateway-auth.toml" --org bench --role invoker --cost-center cc 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export MB_KEY=$KEY
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-auth.toml" >"$WORK/gwa.log" 2>&1 &
pids+=($!); PID_GWA=$!

# Every feature on at once: the virtual key and RBAC, org limits of every kind and a budget,
# a 50/50 split with a fallback chain, usage and audit as JSON lines.
GWX=$(port); OPSX=$(port)
sed -e "s/127.0.0.1:$GW/127.0.0.1:$GWX/; s/127.0.0.1:$OPS/127.0.0.1:$OPSX/; s#usage.jsonl#usage-all.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-all.toml"
cat >> "$WORK/gateway-all.toml" <<TOML
fallbacks = [{ provider = "mock", model = "mock-fallback" }]
[models."gpt-4o-mini".split]
experiment = "bench"
[[models."gpt-4o-mini".split.variants]]
name = "control"
weight = 50
[[models."gpt-4o-mini".split.variants]]
name = "treatment"
weight = 50
provider = "mock"
model = "mock-2"
[auth]
key_store = "keys.json"
policies = "$PWD/policies"
[audit]
path = "$WORK/audit-all.jsonl"
[orgs.bench]
[orgs.bench.cost_centers.cc]
[orgs.bench.limits]
requests_per_second = 1000000000
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrent_requests = 1000000
[orgs.bench.budget]
usd = "1000000"
TOML
RUST_LOG=warn taskset -c $PROXY_CPU ./target/release/model-bridge serve --config "$WORK/gateway-all.toml" >"$WORK/gwx.log" 2>&1 &
pids+=($!); PID_GWX=$!
wait_port $MOCK; wait_port $NGX; wait_port $GW; wait_port $GWA; wait_port $GWL; wait_port $GWR; wait_port $GWP; wait_port $GWT; wait_port $GWX

# BASE_BIN=path: a second plain and all-on gateway from another build (the change's base), for
# the A/B table at the end. On this kind of VM one run's numbers swing by tens of percent;
# rounds alternating the two builds side by side are what shows a change.
if [ -n "${BASE_BIN:-}" ]; then
  GWB=$(port); OPSB=$(port); GWXB=$(port); OPSXB=$(port)
  sed -e "s/127.0.0.1:$GW\"/127.0.0.1:$GWB\"/; s/127.0.0.1:$OPS\"/127.0.0.1:$OPSB\"/; s#usage.jsonl#usage-base.jsonl#" "$WORK/gateway.toml" > "$WORK/gateway-base.toml"
  sed -e "s/127.0.0.1:$GWX\"/127.0.0.1:$GWXB\"/; s/127.0.0.1:$OPSX\"/127.0.0.1:$OPSXB\"/; s#usage-all.jsonl#usage-all-base.jsonl#; s#audit-all.jsonl#audit-all-base.jsonl#" "$WORK/gateway-all.toml" > "$WORK/gateway-all-base.toml"
  RUST_LOG=warn taskset -c $PROXY_CPU "$BASE_BIN" serve --config "$WORK/gateway-base.toml" >"$WORK/gwb.log" 2>&1 &
  pids+=($!); PID_GWB=$!
  RUST_LOG=warn taskset -c $PROXY_CPU "$BASE_BIN" serve --config "$WORK/gateway-all-base.toml" >"$WORK/gwxb.log" 2>&1 &
  pids+=($!); PID_GWXB=$!
  wait_port $GWB; wait_port $GWXB
fi

# Non-streaming and streaming (20 chunks, with and without include_usage) request scripts.
lua() { # file body extra-header
  cat > "$WORK/$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$3
local key = os.getenv("MB_KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end
wrk.body = '$2'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.1f %.1f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.requests))
end
LUA
}
MSG='"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about gateways."}]'
lua post.lua "{\"model\":\"gpt-4o-mini\",$MSG,\"temperature\":0.2}" ''
lua stream.lua "{\"model\":\"gpt-4o-mini\",$MSG,\"stream\":true}" 'wrk.headers["x-mock-chunks"] = "20"'
lua stream-usage.lua "{\"model\":\"gpt-4o-mini\",$MSG,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" 'wrk.headers["x-mock-chunks"] = "20"'

# CPU seconds (user + system) a process has used, from /proc (clock ticks).
NGX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)

run() { # port conc script pid -> "rps p50 p99 errors requests cpu_us_per_request"
  local before after out
  before=$(cpu "$4")
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$2" -d"${DUR}s" -s "$WORK/$3" "http://127.0.0.1:$1/v1/chat/completions" 2>&1 | awk '/^RESULT/ {print $2, $3, $4, $5, $6}')
  after=$(cpu "$4")
  read -r rps p50 p99 err n <<<"$out"
  echo "$rps $p50 $p99 $err $n $(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? (a - b) * 1e6 / n : 0) }')"
}

# Requests at a fixed rate for the latency table: port connections rate -> "rps p50 p99 p99.9 errors".
# h2load paces each connection on its own timer; opened together, the timers fire together and
# every connection's request lands in the same instant (bursts of `connections` requests, whose
# queueing then is most of the p99 of every target, direct included). Connections open 1 ms
# apart instead, so their requests interleave over the period as independent clients' would.
printf '%s' "{\"model\":\"gpt-4o-mini\",$MSG,\"temperature\":0.2}" > "$WORK/post.json"
paced() {
  local auth=()
  [ -n "${MB_KEY:-}" ] && auth=(-H "authorization: Bearer $MB_KEY")
  rm -f "$WORK/paced.log"
  taskset -c $LOAD_CPU h2load --h1 -c"$2" --rps=$(( $3 / $2 )) -n $(( $3 * DUR )) -r 1 --rate-period=1ms \
    -d "$WORK/post.json" -H 'content-type: application/json' "${auth[@]}" --log-file="$WORK/paced.log" \
    "http://127.0.0.1:$1/v1/chat/completions" >/dev/null 2>&1 || true
  python3 - "$WORK/paced.log" "$2" <<'PY'
import sys
import os
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()] if os.path.exists(sys.argv[1]) else []
if rows:
    # Left out: the first second after the last connection opened (connections still opening).
    t0 = min(int(r[0]) for r in rows) + int(sys.argv[2]) * 1000
    rows = [r for r in rows if int(r[0]) - t0 >= 1_000_000]
lat = sorted(int(r[2]) for r in rows if r[1] == "200")
if not lat:
    # Nothing answered after the first second (the target died, or h2load could not run): a
    # row of dashes, not a traceback that ends the whole bench.
    print(f"- - - - {len(rows) or 'all'}")
    sys.exit()
span = (max(int(r[0]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{len(rows) / span:.0f} {pct(0.5)} {pct(0.99)} {pct(0.999)} {len(rows) - len(lat)}")
PY
}

# Warm up every path (connection pools, caches).
for p in $MOCK $NGX $GW $GWA $GWL $GWR $GWP $GWT $GWX; do
  taskset -c $LOAD_CPU wrk -t1 -c8 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null 2>&1
  taskset -c $LOAD_CPU wrk -t1 -c8 -d1s -s "$WORK/stream.lua" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null 2>&1
done

pid_of() { # target -> pid whose CPU is charged (the pinned proxy; the mock for direct)
  case $1 in direct) echo "${pids[0]}";; nginx) echo "$NGX_WORKER";; gateway) echo "${pids[2]}";;
    gw+auth) echo "$PID_GWA";; gw+limits) echo "$PID_GWL";; gw+routing) echo "$PID_GWR";;
    gw+latency) echo "$PID_GWP";; gw+tracing) echo "$PID_GWT";; gw+all-on) echo "$PID_GWX";; esac
}
port_of() {
  case $1 in direct) echo $MOCK;; nginx) echo $NGX;; gateway) echo $GW;; gw+auth) echo $GWA;; gw+limits) echo $GWL;;
    gw+routing) echo $GWR;; gw+latency) echo $GWP;; gw+tracing) echo $GWT;; gw+all-on) echo $GWX;; esac
}

for c in $CONCS; do
  echo "== non-streaming chat, concurrency $c, ${DUR}s each (latency in us; CPU us per request of the proxy's core, the mock's for direct)"
  printf "%-11s %10s %9s %9s %7s %9s\n" target rps p50_us p99_us errors cpu_us
  declare -A R
  for t in direct nginx gateway gw+auth gw+limits gw+routing gw+latency gw+tracing gw+all-on; do
    R[$t]=$(run "$(port_of $t)" "$c" post.lua "$(pid_of $t)")
    read -r rps p50 p99 err _ cpu_us <<<"${R[$t]}"
    printf "%-11s %10.0f %9.1f %9.1f %7s %9s\n" $t "$rps" "$p50" "$p99" "$err" "$cpu_us"
  done
  read -r drps dp50 _ _ _ _ <<<"${R[direct]}"
  read -r nrps np50 _ _ _ ncpu <<<"${R[nginx]}"
  read -r grps gp50 _ _ _ gcpu <<<"${R[gateway]}"
  read -r arps ap50 _ _ _ _ <<<"${R[gw+auth]}"
  read -r lrps lp50 _ _ _ _ <<<"${R[gw+limits]}"
  read -r rrps rp50 _ _ _ _ <<<"${R[gw+routing]}"
  read -r prps pp50 _ _ _ _ <<<"${R[gw+latency]}"
  read -r trps tp50 _ _ _ _ <<<"${R[gw+tracing]}"
  read -r xrps xp50 _ _ _ xcpu <<<"${R[gw+all-on]}"
  awk -v g="$grps" -v n="$nrps" -v gp="$gp50" -v dp="$dp50" -v np="$np50" -v a="$arps" -v ap="$ap50" -v l="$lrps" -v lp="$lp50" -v rr="$rrps" -v rp="$rp50" -v pr="$prps" -v pp="$pp50" -v tr="$trps" -v tp="$tp50" -v x="$xrps" -v xp="$xp50" -v nc="$ncpu" -v gc="$gcpu" -v xc="$xcpu" 'BEGIN {
    printf "gateway/nginx rps ratio: %.2f   gateway added p50: %.1f us   nginx added p50: %.1f us\n", g/n, gp-dp, np-dp
    printf "all features on/nginx rps ratio: %.2f   CPU per request: gateway %.1f us, all-on %.1f us, nginx %.1f us\n", x/n, gc, xc, nc
    # nginx here is often held back by the loader and mock sharing core 1, not by its own core:
    # requests per core-second is the per-core comparison.
    printf "per core (requests per CPU-second of the proxy core) vs nginx: gateway %.2f   all features on %.2f\n", nc/gc, nc/xc
    printf "auth on vs off: throughput %+.1f%%   p50 %+.1f us\n", (a/g-1)*100, ap-gp
    printf "limits on vs off: throughput %+.1f%%   p50 %+.1f us\n", (l/g-1)*100, lp-gp
    printf "routing (split + fallback chain) vs plain: throughput %+.1f%%   p50 %+.1f us\n", (rr/g-1)*100, rp-gp
    printf "latency mode (busy_poll_us = 200): gateway/nginx rps ratio %.2f   added p50 over direct %.1f us\n", pr/n, pp-dp
    printf "tracing on, every request sampled and exported vs plain: throughput %+.1f%%   p50 %+.1f us\n", (tr/g-1)*100, tp-gp }'

  if [ "$c" -gt 1 ]; then
    # Latency at 80% of saturation: requests sent at a fixed rate (h2load --rps, open loop per
    # connection), 80% of what the all-on gateway serves flat out, the same rate for every
    # target. Saturation is the median of three samples (the run above and two more): one 5 s
    # sample on a shared VM can read 20% high, and "80%" was then the gateway's limit.
    # The first second is left out (connections opening). Added = target minus direct.
    sat=$( { echo "$xrps"
      for _ in 1 2; do run "$(port_of gw+all-on)" "$c" post.lua "$(pid_of gw+all-on)" | cut -d' ' -f1; done
    } | sort -n | sed -n 2p)
    rate=$(awk -v x="$sat" 'BEGIN { printf "%d", x * 0.8 }')
    # Tail latency on a shared 2-core VM swings from run to run: three rounds, the targets
    # alternating within each, and the median round of each target is reported.
    echo "== latency at 80% load: $rate requests/s (80% of all-on's saturation, median of 3 samples: $sat/s), $c connections, ${DUR}s each, median of 3 rounds (us)"
    printf "%-11s %10s %9s %9s %9s %7s\n" target rps p50_us p99_us p99.9_us errors
    declare -A L
    for round in 1 2 3; do
      for t in direct nginx gateway gw+all-on; do
        L[$t]+="$(paced "$(port_of $t)" "$c" "$rate")"$'\n'
      done
    done
    for t in direct nginx gateway gw+all-on; do
      # The median round by p99 (its p50 and p99.9 from the same round).
      L[$t]=$(printf '%s' "${L[$t]}" | sort -k3,3n | sed -n 2p)
      printf "%-11s %10s %9s %9s %9s %7s\n" $t ${L[$t]}
    done
    read -r _ dp50 dp99 _ _ <<<"${L[direct]}"
    for t in nginx gateway gw+all-on; do
      read -r _ p50 p99 _ _ <<<"${L[$t]}"
      awk -v t=$t -v p="$p50" -v q="$p99" -v dp="$dp50" -v dq="$dp99" 'BEGIN {
        printf "%-11s added over direct at 80%% load: p50 %+.0f us, p99 %+.0f us\n", t, p - dp, q - dq }'
    done
  fi

  for script in stream.lua stream-usage.lua; do
    echo "== streaming chat (20 chunks, $script), concurrency $c, ${DUR}s each (CPU us per stream and per chunk)"
    printf "%-11s %10s %9s %9s %7s %9s %9s\n" target streams/s p50_us p99_us errors cpu_us us/chunk
    declare -A S
    for t in direct nginx gateway gw+all-on; do
      S[$t]=$(run "$(port_of $t)" "$c" "$script" "$(pid_of $t)")
      read -r rps p50 p99 err _ cpu_us <<<"${S[$t]}"
      printf "%-11s %10.0f %9.1f %9.1f %7s %9s %9.2f\n" $t "$rps" "$p50" "$p99" "$err" "$cpu_us" "$(awk -v c="$cpu_us" 'BEGIN { print c / 22 }')"
    done
    read -r nrps _ _ _ _ ncpu <<<"${S[nginx]}"
    read -r grps _ _ _ _ gcpu <<<"${S[gateway]}"
    read -r xrps _ _ _ _ xcpu <<<"${S[gw+all-on]}"
    awk -v g="$grps" -v n="$nrps" -v x="$xrps" -v nc="$ncpu" -v gc="$gcpu" -v xc="$xcpu" 'BEGIN {
      printf "streams/s vs nginx: gateway %.2f   all features on %.2f\n", g/n, x/n
      printf "CPU per relayed chunk over nginx (stream CPU difference / 22 pieces): gateway %.2f us   all features on %.2f us\n", (gc-nc)/22, (xc-nc)/22 }'
  done
done
if [ -n "${BASE_BIN:-}" ]; then
  echo "== A/B: this build vs $BASE_BIN, concurrency 32, ${DUR}s per target, 3 alternating rounds (CPU us per request or stream; median round)"
  printf "%-12s %12s %12s %12s %12s %7s\n" script "base plain" "this plain" "base all-on" "this all-on" nginx
  for p in $GWB $GWXB; do
    taskset -c $LOAD_CPU wrk -t1 -c8 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null 2>&1
  done
  for script in post.lua stream.lua; do
    declare -A AB=()
    for round in 1 2 3; do
      for t in bp tp bx tx n; do
        case $t in bp) a="$GWB $PID_GWB";; tp) a="$GW ${pids[2]}";; bx) a="$GWXB $PID_GWXB";; tx) a="$GWX $PID_GWX";; n) a="$NGX $NGX_WORKER";; esac
        read -r port pid <<<"$a"
        read -r _ _ _ _ _ cpu_us <<<"$(run "$port" 32 "$script" "$pid")"
        AB[$t]+="$cpu_us"$'\n'
      done
    done
    med() { printf '%s' "${AB[$1]}" | sort -n | sed -n 2p; }
    printf "%-12s %12s %12s %12s %12s %7s\n" "$script" "$(med bp)" "$(med tp)" "$(med bx)" "$(med tx)" "$(med n)"
  done
fi
rows=$(wc -l < "$WORK/usage.jsonl")
echo "gateway wrote $rows usage records; RSS $(ps -o rss= -p "${pids[2]}" | tr -d ' ') KiB"

#!/usr/bin/env bash
# A throwaway ClickHouse for tests and local runs: Debian's clickhouse-server (installed if
# missing), our own config, loopback only, non-default ports, data in a temp dir; no systemd.
#   scripts/clickhouse.sh start   # prints the HTTP URL; idempotent
#   scripts/clickhouse.sh stop
# Every query is logged to system.query_log: scripts/chdb_check.py replays what the code issued
# on a current ClickHouse engine.
# Ports: MB_CH_HTTP_PORT (default 18123), MB_CH_TCP_PORT (default 19000). Data: MB_CH_DIR.
# Cluster: MB_CH_CLUSTER="name=9001,9002" declares a cluster of one-replica shards on loopback
# with those TCP ports (each node of a test cluster gets the same declaration).
set -euo pipefail
cd "$(dirname "$0")/.."
HTTP_PORT=${MB_CH_HTTP_PORT:-18123}
TCP_PORT=${MB_CH_TCP_PORT:-19000}
DIR=${MB_CH_DIR:-${TMPDIR:-/tmp}/model-bridge-clickhouse-$HTTP_PORT}
PIDFILE=$DIR/clickhouse.pid

install() {
  command -v clickhouse-server >/dev/null && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

ready() { curl -fsS "http://127.0.0.1:$HTTP_PORT/?query=SELECT%201" 2>/dev/null | grep -q '^1$'; }

start() {
  if ready; then echo "http://127.0.0.1:$HTTP_PORT"; return; fi
  install
  cluster_xml=""
  if [ -n "${MB_CH_CLUSTER:-}" ]; then
    shards=""
    for p in $(echo "${MB_CH_CLUSTER#*=}" | tr ',' ' '); do
      shards="$shards<shard><replica><host>127.0.0.1</host><port>$p</port></replica></shard>"
    done
    cluster_xml="<remote_servers><${MB_CH_CLUSTER%%=*}>$shards</${MB_CH_CLUSTER%%=*}></remote_servers>"
  fi
  mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/user_files" "$DIR/format_schemas" "$DIR/log"
  cat > "$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$DIR/log/server.log</log><errorlog>$DIR/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$HTTP_PORT</http_port>
  <tcp_port>$TCP_PORT</tcp_port>
  <path>$DIR/data/</path>
  <tmp_path>$DIR/tmp/</tmp_path>
  <user_files_path>$DIR/user_files/</user_files_path>
  <format_schema_path>$DIR/format_schemas/</format_schema_path>
  <users_config>$DIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  $cluster_xml
  <query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></query_log>
</yandex>
XML
  cat > "$DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type><log_queries>1</log_queries></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  nohup clickhouse-server --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 300); do
    if ready; then echo "http://127.0.0.1:$HTTP_PORT"; return; fi
    sleep 0.1
  done
  echo "clickhouse did not start; see $DIR/log" >&2
  tail -20 "$DIR/log/error.log" >&2 || true
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

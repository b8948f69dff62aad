#!/usr/bin/env bash
# Redis for tests and local runs: Debian's redis-server (installed if missing), loopback only,
# a non-default port, no persistence; no systemd.
#   scripts/redis.sh install        # just make sure redis-server exists (tests start their own)
#   scripts/redis.sh start          # prints the URL; idempotent
#   scripts/redis.sh stop
# Port: MB_REDIS_PORT (default 16379).
set -euo pipefail
PORT=${MB_REDIS_PORT:-16379}
PIDFILE=${TMPDIR:-/tmp}/model-bridge-redis-$PORT.pid

install() {
  command -v redis-server >/dev/null && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package starts a system instance on 6379; tests never use it.
}

ready() { redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG; }

start() {
  install
  if ready; then echo "redis://127.0.0.1:$PORT"; return; fi
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$PIDFILE" >/dev/null
  for _ in $(seq 100); do
    if ready; then echo "redis://127.0.0.1:$PORT"; return; fi
    sleep 0.05
  done
  echo "redis did not start" >&2; exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  kill "$(cat "$PIDFILE")" 2>/dev/null || true
  rm -f "$PIDFILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A throwaway PostgreSQL for the control-store tests and local fleets: Debian's postgresql
# (installed if missing), loopback only, a non-default port, data in a temp dir, trust auth for
# the local superuser; no systemd. Tests that kill and restart it start their own with this
# script (their own MB_PG_PORT and MB_PG_DIR).
#   scripts/postgres.sh install # the package only (tests start their own servers)
#   scripts/postgres.sh start   # prints the connection URL; idempotent
#   scripts/postgres.sh stop
# Port: MB_PG_PORT (default 15432). Data: MB_PG_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${MB_PG_PORT:-15432}
DIR=${MB_PG_DIR:-${TMPDIR:-/tmp}/model-bridge-postgres-$PORT}
USER_NAME=$(id -un)

bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && echo "$d"
}

install() {
  [ -n "$(bin)" ] && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

url() { echo "postgres://$USER_NAME@127.0.0.1:$PORT/postgres"; }

# PostgreSQL refuses to run as root: the server runs as the `postgres` system user then.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  install
  local b
  b=$(bin)
  if [ "$(id -u)" -eq 0 ]; then USER_NAME=postgres; fi
  if "$b/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then url; return; fi
  mkdir -p "$DIR"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$DIR"; fi
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    as_owner "$b/initdb" -D "$DIR/data" -U "$USER_NAME" --auth=trust -E UTF8 >/dev/null
  fi
  as_owner "$b/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c max_connections=200" start >/dev/null
  url
}

stop() {
  local b
  b=$(bin) || true
  [ -n "$b" ] && [ -f "$DIR/data/postmaster.pid" ] || return 0
  as_owner "$b/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac

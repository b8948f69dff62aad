#!/usr/bin/env bash
# Grafana's published dashboard schema for the dashboard tests: the `@grafana/schema` npm
# package (its TypeScript types) and the TypeScript compiler, pinned, installed into
# .run/grafana-schema (Node.js from Debian when missing). Prints the directory.
#   scripts/grafana-schema.sh install
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=5.9.3
dir=.run/grafana-schema

install() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  stamp="$dir/.versions"
  want="@grafana/schema@$SCHEMA_VERSION typescript@$TYPESCRIPT_VERSION"
  if [ ! -x "$dir/node_modules/.bin/tsc" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    npm install --prefix "$dir" --no-audit --no-fund --silent --save-exact $want >/dev/null
    echo "$want" > "$stamp"
  fi
  echo "$PWD/$dir"
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Prometheus and promtool for the alert-rule tests: Debian's prometheus package (installed if
# missing; its system service is never used — tests start their own server on loopback, on an
# ephemeral port, with a temp data dir).
#   scripts/prometheus.sh install
set -euo pipefail

install() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac

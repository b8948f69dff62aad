#!/usr/bin/env bash
# Headless Chromium for the console's browser tests: Debian's chromium and chromium-driver
# (installed if missing; browsers cannot be downloaded by test tools here). The tests start
# the browser themselves, headless, with a temporary profile.
#   scripts/chromium.sh install
set -euo pipefail

install() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Installs redis-server (Debian package) for the tests that check rate limits across worker
# processes. Idempotent: does nothing when redis-server is already on PATH. The tests start
# their own redis-server on a free loopback port and stop it; nothing is left running.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# the package may start a system service; the tests need none
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
command -v redis-server >/dev/null

#!/bin/sh
# Headless Chromium and its WebDriver for the web UI tests (Debian packages; never a downloaded browser).
# Idempotent: does nothing when both are already installed.
set -e
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core

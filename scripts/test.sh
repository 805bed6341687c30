#!/usr/bin/env bash
# Set up (venv, pinned requirements, Debian's Chromium for the browser test) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is not installed and cannot be (no root): the browser test will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"

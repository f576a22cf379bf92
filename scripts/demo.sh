#!/usr/bin/env bash
# Run the server with demo data and an embedded Redis: http://127.0.0.1:8000/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run
exec .venv/bin/stories serve --demo "$@"

#!/usr/bin/env bash
# Sets up keychest in .venv and runs `keychest serve` on SQLite in ./data (flags are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/keychest serve --data-dir "${KEYCHEST_DATA_DIR:-data}" "$@"

#!/usr/bin/env bash
# The house rules as checks (docs/architecture.md): style, formatting, layers, types.
# Runs every check, then fails if any failed. Needs the `dev` (or `test`) extra installed:
# `bash scripts/bootstrap.sh test`, as .ci/run does.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bin=.venv/bin
failed=()
run() {
  echo "lint: $*"
  "$@" || failed+=("${*:1:2}")
}
run "$bin/ruff" check --output-format concise
run "$bin/ruff" format --check --output-format concise
run "$bin/lint-imports" --no-cache
run "$bin/mypy" src
if ((${#failed[@]})); then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"

#!/usr/bin/env bash
# The test suite on a fresh machine: install featvis with its dev tools, lint, and run every test (what CI runs).
#   bash scripts/test.sh            ruff + every test
#   bash scripts/test.sh --quick    ruff + the tests not marked `slow` or `integration` (the tier to run while editing)
# Any other argument goes to pytest, e.g. `bash scripts/test.sh --quick tests/attribution -x`.
source "$(dirname "$0")/_venv.sh"
quick=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then quick=1; else args+=("$arg"); fi
done
ruff check .
if [ "$quick" -eq 1 ]; then
  python -m pytest -q -m "not slow and not integration" ${args[@]+"${args[@]}"}
else
  python -m pytest -q ${args[@]+"${args[@]}"}
fi

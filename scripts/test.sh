#!/usr/bin/env bash
# The test suite on a fresh machine: install featvis with its dev tools, lint, and run every test (what CI runs).
#   bash scripts/test.sh            ruff, then the quick tier, then the slow tier (together: every test), each timed
#   bash scripts/test.sh --quick    ruff + the tests not marked `slow` or `integration` (the tier to run while editing)
# Any other argument goes to pytest, e.g. `bash scripts/test.sh --quick tests/attribution -x`.
source "$(dirname "$0")/_venv.sh"
quick=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then quick=1; else args+=("$arg"); fi
done
tier() {  # tier NAME MARKERS: one pytest run over the tests MARKERS selects, timed; its exit status is kept
  local t0 rc=0
  t0=$(date +%s)
  python -m pytest -q -m "$2" ${args[@]+"${args[@]}"} || rc=$?
  [ "$rc" -eq 5 ] && rc=0  # no test selected (a path given to one tier only)
  echo "$1 tier: $(( $(date +%s) - t0 )) s (exit $rc)"
  return "$rc"
}
ruff check .
quick_rc=0
tier quick "not slow and not integration" || quick_rc=$?
[ "$quick" -eq 1 ] && exit "$quick_rc"
slow_rc=0
tier slow "slow or integration" || slow_rc=$?
[ "$quick_rc" -eq 0 ] || exit "$quick_rc"
exit "$slow_rc"

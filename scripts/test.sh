#!/usr/bin/env bash
# The test suite: lint, Ansible syntax and lint, unit tests, then the lab integration tests (root).
#
#   ./scripts/test.sh            everything; the unit tests run beside the lab tests (two pytest processes:
#                                lab runs spend much of their time waiting on targets and daemons)
#   ./scripts/test.sh ARGS...    one pytest process with these arguments (e.g. -m "not lab", -k tls)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== ansible syntax"; ansible-playbook --syntax-check -i inventories/example site.yml
echo "== ansible-lint"; ansible-lint --profile production --offline -q site.yml playbooks roles
if [ "$#" -gt 0 ]; then
    echo "== pytest"; exec pytest "$@"
fi

echo "== pytest: unit tests (in the background) and lab tests"
# Separate base temp dirs: each process cleans up only its own. Left in place afterwards (never rm -rf'd
# here: a lab target that failed to stop may still have its filesystem mounted below).
work=$(mktemp -d /tmp/deepseek-node-tests.XXXXXX)
pytest -m "not lab" --basetemp="$work/unit" -p no:cacheprovider >"$work/unit.log" 2>&1 &
unit=$!
lab_rc=0
pytest -m lab --basetemp="$work/lab" -p no:cacheprovider || lab_rc=$?
unit_rc=0
wait "$unit" || unit_rc=$?
echo "== pytest: unit tests (output of the background run)"
cat "$work/unit.log"
echo "== pytest: lab tests exit $lab_rc, unit tests exit $unit_rc"
# 5 is pytest's "no tests ran": a failure here too.
[ "$lab_rc" -eq 0 ] && [ "$unit_rc" -eq 0 ]

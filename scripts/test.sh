#!/usr/bin/env bash
# The test suite: lint, Ansible syntax and lint, unit tests, then the lab integration tests (root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== ansible syntax"; ansible-playbook --syntax-check -i inventories/example site.yml
echo "== ansible-lint"; ansible-lint --profile production --offline -q site.yml playbooks roles
echo "== pytest"; exec pytest "$@"

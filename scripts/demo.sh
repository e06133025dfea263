#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): set up, then run the demo on the local lab.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/provision demo "$@"

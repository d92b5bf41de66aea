#!/usr/bin/env bash
# Install (as scripts/setup.sh) and run the whole test suite: unit, export and end-to-end
# tests against a real tritonserver. Extra arguments go to pytest (e.g. -m "not e2e").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

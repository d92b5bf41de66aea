#!/usr/bin/env bash
# Install (as scripts/setup.sh) and run the whole test suite: unit, export and end-to-end
# tests against a real tritonserver. Extra arguments go to pytest (e.g. -m "not e2e").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# wrk, the C load generator `hf2triton perf --load-generator wrk` and perf/bench.py use: its
# tests skip without it. Installed here only where apt-get runs without a password prompt.
if ! command -v wrk >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    echo "installing wrk with apt-get (for the load-generator tests)" >&2
    apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; } \
        || echo "note: could not install wrk; its tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"

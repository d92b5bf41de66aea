#!/usr/bin/env bash
# Create .venv (if missing) and install hf2triton with the exact versions in constraints.txt.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'; then
    echo "error: hf2triton needs Python 3.10-3.13 (the bundled tritonserver has stubs for those); found $("$PYTHON" --version)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
# torch is pinned to 2.13.0 in constraints.txt: other specifiers pull gigabytes of CUDA wheels.
.venv/bin/python -m pip install --quiet --constraint constraints.txt --editable ".[test]"

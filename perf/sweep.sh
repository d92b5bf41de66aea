#!/usr/bin/env bash
# perf_analyzer sweep of an hf2triton model, run inside the Triton SDK container (the `sdk`
# compose service), against a running server:
#
#   bash perf/sweep.sh [MODEL]
#
# Measures the ensemble and each step separately (tokenizer, model, postprocess), over gRPC
# and HTTP, in concurrency mode (CONCURRENCY values) and request-rate mode (REQUEST_RATES
# range), with stable time windows (STABILITY %, MAX_TRIALS), server metrics
# (--collect-metrics) and perf_analyzer's -f CSV per run in $RESULTS. Input data: real text
# from perf/make_input_data.py (made here when missing); the model step uses token ids from
# perf/data/tokens.json when present (make it on the host, see perf/README.md), else zeros.
#
# Environment (defaults in brackets): TRITON_HOST [localhost], HTTP_PORT [8000],
# GRPC_PORT [8001], METRICS_PORT [8002], PROTOCOLS ["grpc http"], CONCURRENCY
# ["1 2 4 8 16 32 64"], REQUEST_RATES [20:200:20], BATCH_SIZE [1], WINDOW_MS [5000],
# STABILITY [10], MAX_TRIALS [10], STEPS ["ensemble tokenizer model postprocess"],
# RESULTS [perf/results/sdk], MODEL_SHAPES / POSTPROCESS_SHAPES (shapes for generated data).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${1:-all_minilm_l6_v2}"
HOST="${TRITON_HOST:-localhost}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
PROTOCOLS="${PROTOCOLS:-grpc http}"
CONCURRENCY="${CONCURRENCY:-1 2 4 8 16 32 64}"
REQUEST_RATES="${REQUEST_RATES:-20:200:20}"
BATCH_SIZE="${BATCH_SIZE:-1}"
WINDOW_MS="${WINDOW_MS:-5000}"
STABILITY="${STABILITY:-10}"
MAX_TRIALS="${MAX_TRIALS:-10}"
STEPS="${STEPS:-ensemble tokenizer model postprocess}"
RESULTS="${RESULTS:-perf/results/sdk}"
MODEL_SHAPES="${MODEL_SHAPES:-input_ids:32 attention_mask:32 token_type_ids:32}"
POSTPROCESS_SHAPES="${POSTPROCESS_SHAPES:-last_hidden_state:32,384 attention_mask:32}"
TEXT_DATA=perf/data/text.json
TOKEN_DATA=perf/data/tokens.json

command -v perf_analyzer >/dev/null || { echo "perf_analyzer not found: run this in the Triton SDK container" >&2; exit 2; }
mkdir -p "$RESULTS"
[ -f "$TEXT_DATA" ] || python3 perf/make_input_data.py --output "$TEXT_DATA"

# The model name, input-data flags and label of one step.
step_model() {
    case "$1" in
        ensemble) echo "$MODEL" ;;
        *) echo "${MODEL}_$1" ;;
    esac
}

step_data_flags() {
    local shape
    case "$1" in
        ensemble | tokenizer) echo "--input-data $TEXT_DATA" ;;
        model)
            if [ -f "$TOKEN_DATA" ]; then
                echo "--input-data $TOKEN_DATA"
            else
                printf -- '--input-data zero'
                for shape in $MODEL_SHAPES; do printf -- ' --shape %s' "$shape"; done
                echo
            fi ;;
        postprocess)
            printf -- '--input-data random'
            for shape in $POSTPROCESS_SHAPES; do printf -- ' --shape %s' "$shape"; done
            echo ;;
    esac
}

endpoint() {
    if [ "$1" = grpc ]; then echo "$HOST:$GRPC_PORT"; else echo "$HOST:$HTTP_PORT"; fi
}

# run_pa CSV_FILE MODEL PROTOCOL DATA_FLAGS LOAD_FLAGS...
run_pa() {
    local csv="$1" model="$2" protocol="$3" data_flags="$4"
    shift 4
    # shellcheck disable=SC2086  # data_flags holds several flags on purpose
    perf_analyzer -m "$model" -u "$(endpoint "$protocol")" -i "$protocol" -b "$BATCH_SIZE" \
        $data_flags \
        --measurement-mode time_windows --measurement-interval "$WINDOW_MS" \
        --stability-percentage "$STABILITY" --max-trials "$MAX_TRIALS" --percentile 99 \
        --collect-metrics --metrics-url "http://$HOST:$METRICS_PORT/metrics" --metrics-interval 1000 \
        -f "$csv" "$@"
}

# One CSV per (step, protocol, mode); concurrency values are run one by one and merged under
# a single header, since perf_analyzer's --concurrency-range steps linearly.
for step in $STEPS; do
    model="$(step_model "$step")"
    data_flags="$(step_data_flags "$step")"
    for protocol in $PROTOCOLS; do
        base="$RESULTS/${step}_${protocol}_b${BATCH_SIZE}"
        echo "== $model over $protocol: concurrency $CONCURRENCY"
        rm -f "$base.concurrency.csv"
        for c in $CONCURRENCY; do
            run_pa "$base.c$c.csv" "$model" "$protocol" "$data_flags" --concurrency-range "$c:$c"
            if [ -f "$base.concurrency.csv" ]; then
                tail -n +2 "$base.c$c.csv" >> "$base.concurrency.csv"
            else
                cp "$base.c$c.csv" "$base.concurrency.csv"
            fi
            rm -f "$base.c$c.csv"
        done
        echo "== $model over $protocol: request rate $REQUEST_RATES"
        run_pa "$base.request_rate.csv" "$model" "$protocol" "$data_flags" --request-rate-range "$REQUEST_RATES"
    done
done
echo "CSV files in $RESULTS"

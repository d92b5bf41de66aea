#!/usr/bin/env bash
# Raw KServe v2 JSON inference with curl: no Python, no tritonclient.
#
#   client/curl_kserve.sh                          # two example sentences
#   client/curl_kserve.sh "first text" "second"    # your texts (one batch row each)
#   URL=http://127.0.0.1:8000 MODEL=all_minilm_l6_v2 client/curl_kserve.sh "text"
#
# TEXT is BYTES with dims [1], so n texts are shape [n, 1]. The response lists each
# output (EMBEDDING or LABEL/SCORES, and TRUNCATED) as flat JSON data; it is
# pretty-printed with jq when jq is installed. Server-side input errors come back as
# HTTP 400 with {"error": "..."}; curl then exits non-zero and the body is printed.
set -euo pipefail

URL="${URL:-http://127.0.0.1:8000}"
MODEL="${MODEL:-all_minilm_l6_v2}"

if [ "$#" -eq 0 ]; then
    set -- "Triton serves many models at once." "The cat sat on the mat."
fi

json_string() {  # JSON string literal of $1 (used when jq is absent)
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

if command -v jq >/dev/null 2>&1; then
    body=$(jq -cn '{inputs: [{name: "TEXT", shape: [($ARGS.positional | length), 1],
                              datatype: "BYTES", data: $ARGS.positional}]}' --args "$@")
else
    data=""
    for text in "$@"; do
        data+="${data:+,}$(json_string "$text")"
    done
    body="{\"inputs\":[{\"name\":\"TEXT\",\"shape\":[$#,1],\"datatype\":\"BYTES\",\"data\":[$data]}]}"
fi

response=$(curl --silent --show-error --fail-with-body \
    -H 'Content-Type: application/json' \
    -d "$body" \
    "${URL%/}/v2/models/${MODEL}/infer") || { echo "$response" >&2; exit 1; }

if command -v jq >/dev/null 2>&1; then
    printf '%s\n' "$response" | jq .
else
    printf '%s\n' "$response"
fi

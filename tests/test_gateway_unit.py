"""The gateway without a Triton behind it: input checks, error shapes, auth, limits, metrics, CLI.

A real gateway (uvicorn in a thread) is pointed at a closed port, so everything that
must be answered before Triton is asked is checked here in seconds, and "Triton down"
is real: the gateway must answer 503, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gateway_http import assert_openai_error, assert_tei_error, get, post
from hf2triton.errors import OptionsError
from hf2triton.gateway import GatewaySettings, start_gateway
from hf2triton.gateway.service import renormalised
from hf2triton.serving import free_port

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def dead_triton_url() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def gateway(dead_triton_url):
    settings = GatewaySettings(triton_url=dead_triton_url, port=0, max_inputs=4, max_request_bytes=2000,
                               refresh_interval_s=60)
    with start_gateway(settings) as running:
        yield running.url


@pytest.fixture(scope="module")
def locked_gateway(dead_triton_url):
    with start_gateway(GatewaySettings(triton_url=dead_triton_url, port=0, api_key=KEY)) as running:
        yield running.url


def test_triton_down_is_503_in_each_api_shape(gateway):
    assert_openai_error(post(gateway, "/v1/embeddings", {"model": "m", "input": "hi"}), 503, "Triton")
    assert_tei_error(post(gateway, "/embed", {"inputs": "hi"}), 503, "Triton")
    assert_tei_error(get(gateway, "/health"), 503, "Triton")
    assert_openai_error(get(gateway, "/v1/models"), 503)


def test_openai_sdk_sees_triton_down_as_a_503(gateway):
    import openai

    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="all_minilm_l6_v2", input=["hello"])
    assert caught.value.status_code == 503


@pytest.mark.parametrize("body, words", [
    ({"input": "hi"}, ["'model' is required"]),
    ({"model": 3, "input": "hi"}, ["'model' must be a string", "integer"]),
    ({"model": "m"}, ["'input' is required"]),
    ({"model": "m", "input": 5}, ["'input' must be a string or a list of strings"]),
    ({"model": "m", "input": []}, ["empty list"]),
    ({"model": "m", "input": ["ok", 7, None]}, ["input[1] is an integer", "input[2]"]),
    ({"model": "m", "input": [[1, 2, 3]]}, ["token-id input is not supported"]),
    ({"model": "m", "input": "hi", "encoding_format": "int8"}, ["'encoding_format' must be one of float, base64"]),
    ({"model": "m", "input": "hi", "dimensions": "8"}, ["'dimensions' must be an integer"]),
    ({"model": "m", "input": "hi", "dimensions": True}, ["'dimensions' must be an integer", "boolean"]),
    ({"model": "m", "input": "\ud800"}, ["not valid JSON", "surrogate"]),
])
def test_openai_bad_requests_are_400_naming_the_field(gateway, body, words):
    error = assert_openai_error(post(gateway, "/v1/embeddings", body), 400, *words)
    assert error["type"] == "invalid_request_error"


def test_bad_json_and_non_objects_are_400(gateway):
    assert_openai_error(post(gateway, "/v1/embeddings", raw=b'{"model": "m", "input": '), 400, "not valid JSON")
    assert_openai_error(post(gateway, "/v1/embeddings", raw=b"[1, 2]"), 400, "must be a JSON object")
    assert_openai_error(post(gateway, "/v1/embeddings", raw=b""), 400, "empty")
    assert_tei_error(post(gateway, "/embed", raw=b"\xff\xfe not json"), 400, "not valid JSON")


def test_limits_are_413_naming_the_limit(gateway):
    assert_openai_error(post(gateway, "/v1/embeddings", {"model": "m", "input": ["a"] * 5}), 413,
                        "5 texts", "limit of 4")
    assert_tei_error(post(gateway, "/embed", {"inputs": ["a"] * 5}), 413, "limit of 4")
    assert_openai_error(post(gateway, "/v1/embeddings", {"model": "m", "input": "x" * 3000}), 413,
                        "limit of 2000 bytes")


def test_tei_inputs_are_checked_as_tei_does(gateway):
    assert_tei_error(post(gateway, "/embed", {"inputs": "hi", "normalize": False}), 400, "normalize")
    assert_tei_error(post(gateway, "/embed", {"inputs": "hi", "truncation_direction": "Left"}), 400, "Right")
    assert_tei_error(post(gateway, "/predict", {"inputs": ["a", "b", "c"]}), 400, "one pair")
    assert_tei_error(post(gateway, "/predict", {"inputs": [["a", "b", "c"]]}), 400, "inputs[0]")
    assert_tei_error(post(gateway, "/predict", {"inputs": "a", "raw_scores": True}), 400, "raw_scores")
    assert_tei_error(post(gateway, "/rerank", {"query": "q"}), 400, "'texts'")
    assert_tei_error(post(gateway, "/rerank", {"query": "q", "texts": ["a"], "top_n": 0}), 400, "top_n")
    assert_openai_error(post(gateway, "/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}), 400,
                        "documents[0]")


def test_unknown_routes_and_methods_answer_in_shape(gateway):
    assert_tei_error(get(gateway, "/nope"), 404, "no route")
    assert_openai_error(get(gateway, "/v1/nope"), 404, "no route")
    assert_openai_error(get(gateway, "/v1/embeddings"), 405, "GET")


def test_api_key_is_required_except_for_probes(locked_gateway):
    body = {"model": "m", "input": "hi"}
    missing = post(locked_gateway, "/v1/embeddings", body)
    assert_openai_error(missing, 401, "API key")
    assert missing.headers.get("www-authenticate") == "Bearer"
    assert_openai_error(post(locked_gateway, "/v1/embeddings", body, headers={"Authorization": "Bearer wrong"}),
                        401)
    assert_tei_error(post(locked_gateway, "/embed", {"inputs": "hi"}), 401)
    # The right key passes auth (and then meets the absent Triton).
    assert_openai_error(post(locked_gateway, "/v1/embeddings", body, headers={"Authorization": f"Bearer {KEY}"}),
                        503)
    assert get(locked_gateway, "/health").status == 503  # open: probes carry no key
    assert get(locked_gateway, "/metrics").status == 200


def test_metrics_count_requests_latency_and_errors_per_endpoint(gateway):
    post(gateway, "/v1/embeddings", raw=b"nope")
    text = get(gateway, "/metrics").body.decode()
    assert 'hf2triton_gateway_requests_total{endpoint="/v1/embeddings",status="400"}' in text
    assert 'hf2triton_gateway_errors_total{endpoint="/v1/embeddings",status="400"}' in text
    assert 'hf2triton_gateway_request_duration_seconds_count{endpoint="/v1/embeddings"}' in text
    assert 'endpoint="/nope"' not in text  # unknown paths share one label value


def test_settings_are_validated_with_every_problem_named():
    with pytest.raises(OptionsError) as caught:
        GatewaySettings(triton_url="http://x:1", port=70000, max_inputs=0, api_key="short")
    message = str(caught.value)
    for words in ("triton_url", "port", "max_inputs", "API key"):
        assert words in message
    assert "short" not in repr(GatewaySettings(api_key="long-enough-key"))


def test_renormalised_truncates_to_unit_vectors():
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    cut = renormalised(vectors, 2)
    np.testing.assert_allclose(cut[0], [0.6, 0.8], rtol=1e-6)
    assert np.isfinite(cut).all()  # a zero prefix stays finite


def test_cli_reports_bad_settings_without_traceback():
    done = subprocess.run([sys.executable, "-m", "hf2triton.cli", "gateway", "--triton-url", "nonsense"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "triton_url must be HOST:GRPC_PORT" in done.stderr
    assert "Traceback" not in done.stderr

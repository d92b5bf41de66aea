"""Unit tests of hf2triton.client: pure helpers on real arrays, error mapping on real
tritonclient exceptions, and real clients against a closed port (no server needed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from hf2triton import client as client_module
from hf2triton import contract
from hf2triton.client import (
    AsyncClient,
    Classification,
    Client,
    Embedding,
    Entity,
    ModelInfo,
    chunk,
    decode_outputs,
    encode_texts,
    model_info_from_config,
    to_client_error,
)
from hf2triton.client.results import RESULT_TYPES
from hf2triton.errors import ClientError, Hf2TritonError, InvalidInputError, OptionsError, ServerUnavailableError
from hf2triton.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
# Generous bound against hangs only (connection refused answers in milliseconds).
HANG_GUARD_S = 20.0

EMB_INFO = ModelInfo("emb", "embeddings", (), False, 4, 32, 128)
CLS_INFO = ModelInfo("cls", "sequence-classification", ("negative", "neutral", "positive"), False, 4, 1000, 128)
MULTI_INFO = ModelInfo("tags", "sequence-classification", ("sports", "politics", "tech"), True, 4, 1000, 128)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensemble_config(**params: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="cls", platform="ensemble", max_batch_size=16)
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


FULL_PARAMS = {
    contract.PARAM_TASK: "sequence-classification",
    contract.PARAM_LABELS: json.dumps(["negative", "positive"]),
    contract.PARAM_MULTI_LABEL: "true",
    contract.PARAM_MAX_TEXT_BYTES: "4096",
    contract.PARAM_MAX_SEQUENCE_LENGTH: "256",
}


# ----------------------------------------------------------------------------- decoding


def test_decode_embeddings_keeps_order_vectors_and_truncated_flags():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    truncated = np.array([[False], [True], [False]])
    results = decode_outputs(EMB_INFO, {contract.OUTPUT_EMBEDDING: vectors, contract.OUTPUT_TRUNCATED: truncated})
    assert [type(r) for r in results] == [Embedding] * 3
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vector, vectors[i])
        assert result.vector.dtype == np.float32
    assert [r.truncated for r in results] == [False, True, False]
    assert all(isinstance(r.truncated, bool) for r in results)


def test_decode_classification_with_bytes_labels():
    scores = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    labels = np.array([[b"positive"], [b"negative"]], dtype=np.object_)
    truncated = np.array([[True], [False]])
    results = decode_outputs(
        CLS_INFO,
        {contract.OUTPUT_LABEL: labels, contract.OUTPUT_SCORES: scores, contract.OUTPUT_TRUNCATED: truncated},
    )
    first, second = results
    assert isinstance(first, Classification)
    assert first.label == "positive" and first.score == pytest.approx(0.7)
    assert first.scores == pytest.approx({"negative": 0.1, "neutral": 0.2, "positive": 0.7})
    assert list(first.scores) == ["negative", "neutral", "positive"]  # class-id order
    assert first.truncated is True
    assert second.label == "negative" and second.score == pytest.approx(0.6) and second.truncated is False


def test_decode_multi_label_and_threshold():
    scores = np.array([[0.9, 0.2, 0.95], [0.1, 0.3, 0.2]], dtype=np.float32)
    labels = np.array([[b"tech"], [b"politics"]], dtype=np.object_)
    truncated = np.zeros((2, 1), dtype=bool)
    first, second = decode_outputs(
        MULTI_INFO,
        {contract.OUTPUT_LABEL: labels, contract.OUTPUT_SCORES: scores, contract.OUTPUT_TRUNCATED: truncated},
    )
    assert first.labels() == ("tech", "sports")  # sorted by score, highest first
    assert first.labels(threshold=0.92) == ("tech",)
    assert first.labels(threshold=0.0) == ("tech", "sports", "politics")
    assert second.labels() == ()
    assert second.label == "politics" and second.score == pytest.approx(0.3)


def test_decode_classification_without_published_labels_uses_hf_default_names():
    info = ModelInfo("cls", "sequence-classification", (), False, 4, 0, 0)
    (result,) = decode_outputs(
        info,
        {
            contract.OUTPUT_LABEL: np.array([[b"LABEL_1"]], dtype=np.object_),
            contract.OUTPUT_SCORES: np.array([[0.25, 0.75]], dtype=np.float32),
            contract.OUTPUT_TRUNCATED: np.array([[False]]),
        },
    )
    assert result.scores == pytest.approx({"LABEL_0": 0.25, "LABEL_1": 0.75})
    assert result.label == "LABEL_1" and result.score == pytest.approx(0.75)


def test_decode_rejects_label_count_mismatch_and_missing_outputs():
    outputs = {
        contract.OUTPUT_LABEL: np.array([[b"a"]], dtype=np.object_),
        contract.OUTPUT_SCORES: np.array([[0.5, 0.5]], dtype=np.float32),
        contract.OUTPUT_TRUNCATED: np.array([[False]]),
    }
    with pytest.raises(ClientError, match="publishes 3 labels .* returned 2 scores"):
        decode_outputs(CLS_INFO, outputs)
    with pytest.raises(ClientError, match="no output 'TRUNCATED'"):
        decode_outputs(EMB_INFO, {contract.OUTPUT_EMBEDDING: np.zeros((1, 4), np.float32)})
    with pytest.raises(ClientError, match="'TRUNCATED' has shape \\[2, 1\\], expected 1 rows"):
        decode_outputs(
            EMB_INFO,
            {contract.OUTPUT_EMBEDDING: np.zeros((1, 4), np.float32), contract.OUTPUT_TRUNCATED: np.zeros((2, 1), bool)},
        )


def test_decode_unknown_task_names_supported_tasks():
    info = ModelInfo("ner", "some-future-task", (), False, 4, 0, 0)
    with pytest.raises(ClientError, match="'some-future-task'.*embeddings, rerank, sequence-classification"):
        decode_outputs(info, {})


def test_decode_entities_per_text_with_offsets_and_truncation():
    info = ModelInfo("ner", "token-classification", ("O", "B-PER", "I-PER"), False, 4, 0, 0, "simple")
    documents = np.array(
        [
            [json.dumps([{"entity_group": "PER", "score": 0.9, "word": "ana", "start": 0, "end": 3}]).encode()],
            [b"[]"],
            [json.dumps([{"entity": "B-PER", "score": 0.5, "index": 1, "word": "\u00e9", "start": 2, "end": 3}]).encode()],
        ],
        dtype=object,
    )
    results = decode_outputs(info, {"ENTITIES": documents, "TRUNCATED": np.array([[False], [True], [False]])})
    assert [type(r).__name__ for r in results] == ["Entities"] * 3
    assert results[0].entities == (Entity("PER", 0.9, "ana", 0, 3),)
    assert results[1].entities == () and results[1].truncated
    assert results[2].entities[0] == Entity("B-PER", 0.5, "é", 2, 3, index=1)


def test_decode_entities_rejects_malformed_documents():
    info = ModelInfo("ner", "token-classification", (), False, 4, 0, 0)
    with pytest.raises(ClientError, match="not JSON"):
        decode_outputs(info, {"ENTITIES": np.array([[b"{oops"]], dtype=object), "TRUNCATED": np.array([[False]])})
    with pytest.raises(ClientError, match="malformed entity"):
        decode_outputs(info, {"ENTITIES": np.array([[b'[{"score": 1}]']], dtype=object), "TRUNCATED": np.array([[False]])})


def test_every_task_requests_truncated_and_has_a_decoder():
    for name, task in TASKS.items():
        assert contract.OUTPUT_TRUNCATED in task.served_outputs, name
        assert task.answer in RESULT_TYPES, name


# ----------------------------------------------------------------------------- encoding / chunking


def test_encode_texts_utf8_object_array():
    batch = encode_texts(["héllo", "", "日本"])
    assert batch.shape == (3, 1) and batch.dtype == np.object_
    assert list(batch[:, 0]) == ["héllo".encode(), b"", "日本".encode()]
    single = encode_texts("one text")
    assert single.shape == (1, 1) and single[0, 0] == b"one text"
    assert encode_texts([]).shape == (0, 1)


def test_encode_texts_counts_utf8_bytes_against_limit():
    assert encode_texts(["é" * 10], max_text_bytes=20)[0, 0] == "é".encode() * 10  # 20 bytes: at the limit
    with pytest.raises(InvalidInputError) as err:
        encode_texts(["ok", "é" * 11], max_text_bytes=20)
    message = str(err.value)
    assert "texts[1]" in message and "22 UTF-8 bytes" in message and "limit of 20 bytes" in message
    assert contract.PARAM_MAX_TEXT_BYTES in message
    assert "texts[0]" not in message


def test_encode_texts_reports_every_problem_with_index_and_type():
    with pytest.raises(InvalidInputError) as err:
        encode_texts(["fine", 3, None, "x" * 50, "\ud800"], max_text_bytes=10)
    message = str(err.value)
    assert "4 problems" in message
    assert "texts[1] is int, expected str" in message
    assert "texts[2] is NoneType, expected str" in message
    assert "texts[3] is 50 UTF-8 bytes, over the limit of 10 bytes" in message
    assert "texts[4] cannot be encoded as UTF-8" in message


def test_encode_texts_caps_long_problem_lists():
    with pytest.raises(InvalidInputError, match="and 15 more$"):
        encode_texts(list(range(25)))


@pytest.mark.parametrize("bad", [b"bytes", 42, None])
def test_encode_texts_rejects_non_sequence(bad):
    with pytest.raises(InvalidInputError, match="texts must be a str or a sequence of str"):
        encode_texts(bad)


def test_chunk_keeps_order_and_sizes():
    items = list(range(10))
    parts = chunk(items, 4)
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [x for part in parts for x in part] == items
    assert chunk(items, 10) == [items] and chunk(items, 64) == [items]
    assert chunk([], 3) == []
    batch = encode_texts([str(i) for i in range(7)])
    array_parts = chunk(batch, 3)
    assert [p.shape for p in array_parts] == [(3, 1), (3, 1), (1, 1)]
    assert np.concatenate(array_parts)[:, 0].tolist() == batch[:, 0].tolist()
    with pytest.raises(ValueError):
        chunk(items, 0)


# ----------------------------------------------------------------------------- config


def test_model_info_from_grpc_json_shape():
    # Exactly what tritonclient.grpc get_model_config(as_json=True) builds from the protobuf.
    answer = {
        "config": json.loads(
            json_format.MessageToJson(ensemble_config(**FULL_PARAMS), preserving_proto_field_name=True)
        )
    }
    info = model_info_from_config("cls", answer)
    assert info == ModelInfo("cls", "sequence-classification", ("negative", "positive"), True, 16, 4096, 256)


def test_model_info_from_http_dict_shape():
    answer = json_format.MessageToDict(ensemble_config(**FULL_PARAMS), preserving_proto_field_name=True)
    assert "config" not in answer
    info = model_info_from_config("cls", answer)
    assert info.labels == ("negative", "positive") and info.multi_label is True
    assert info.max_batch_size == 16 and info.max_text_bytes == 4096 and info.max_sequence_length == 256


def test_model_info_defaults_for_embeddings():
    answer = {"max_batch_size": 8, "parameters": {contract.PARAM_TASK: {"string_value": "embeddings"}}}
    assert model_info_from_config("emb", answer) == ModelInfo("emb", "embeddings", (), False, 8, 0, 0)


@pytest.mark.parametrize(
    ("params", "max_batch_size", "pattern"),
    [
        ({}, 8, "not an hf2triton ensemble.*hf2triton.task"),
        ({contract.PARAM_TASK: "embeddings", contract.PARAM_LABELS: "[oops"}, 8, "hf2triton.labels is not JSON"),
        ({contract.PARAM_TASK: "embeddings", contract.PARAM_LABELS: '{"a": 1}'}, 8, "must be a JSON list"),
        ({contract.PARAM_TASK: "embeddings", contract.PARAM_MULTI_LABEL: "maybe"}, 8, "expected true/false"),
        ({contract.PARAM_TASK: "embeddings", contract.PARAM_MAX_TEXT_BYTES: "lots"}, 8, "expected an integer"),
        ({contract.PARAM_TASK: "embeddings"}, 0, "max_batch_size 0"),
    ],
)
def test_model_info_rejects_bad_configs(params, max_batch_size, pattern):
    config = {"max_batch_size": max_batch_size, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    with pytest.raises(ClientError, match=pattern):
        model_info_from_config("m", config)


# ----------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize("status", ["400", "StatusCode.INVALID_ARGUMENT"])
def test_invalid_argument_maps_to_invalid_input_keeping_message(status):
    exc = InferenceServerException("in ensemble 'emb', text 3 is not valid UTF-8", status=status)
    mapped = to_client_error(exc, url="127.0.0.1:8001", model="emb")
    assert type(mapped) is InvalidInputError
    assert str(mapped) == "in ensemble 'emb', text 3 is not valid UTF-8"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("503", "Server not ready"),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses"),
        ("404", "Request for unknown model: 'emb' is not found"),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'emb' is not found"),
        ("400", "Request for unknown model: 'emb' has no available versions"),
        ("StatusCode.UNAVAILABLE", "Request for unknown model: 'emb' is not ready"),
    ],
)
def test_unavailable_and_unknown_model_map_to_server_unavailable(status, message):
    mapped = to_client_error(InferenceServerException(message, status=status), url="h:1", model="emb")
    assert type(mapped) is ServerUnavailableError
    assert message in str(mapped) and "h:1" in str(mapped) and "'emb'" in str(mapped)


@pytest.mark.parametrize("status", ["500", "StatusCode.INTERNAL", None])
def test_other_statuses_map_to_plain_client_error(status):
    mapped = to_client_error(InferenceServerException("boom", status=status))
    assert type(mapped) is ClientError and "boom" in str(mapped)


def test_transport_errors_are_mapped():
    import aiohttp

    assert type(to_client_error(ConnectionRefusedError(111, "Connection refused"))) is ServerUnavailableError
    assert type(to_client_error(aiohttp.ServerDisconnectedError())) is ServerUnavailableError
    timeout = to_client_error(TimeoutError("read timed out"), url="h:1")
    assert type(timeout) is ClientError and "timed out" in str(timeout)
    deadline = to_client_error(InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"))
    assert type(deadline) is ClientError and "timed out" in str(deadline)
    assert type(to_client_error(RuntimeError("weird"))) is ClientError
    ours = InvalidInputError("already ours")
    assert to_client_error(ours) is ours
    assert all(issubclass(t, Hf2TritonError) for t in (ClientError, InvalidInputError, ServerUnavailableError))


# ----------------------------------------------------------------------------- real clients, no server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_wait_for_model_on_closed_port_raises_server_unavailable(protocol):
    url = f"127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with Client(url, protocol=protocol, model="all_minilm_l6_v2", timeout_s=5) as client:
        with pytest.raises(ServerUnavailableError) as err:
            client.wait_for_model(timeout_s=1)
    assert time.monotonic() - start < HANG_GUARD_S
    message = str(err.value)
    assert url in message and "'all_minilm_l6_v2'" in message and protocol in message
    # The transport's exception is chained, not leaked.
    assert isinstance(err.value.__cause__, ServerUnavailableError)
    assert err.value.__cause__.__cause__ is not None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_wait_for_model_on_closed_port_raises_server_unavailable(protocol):
    url = f"127.0.0.1:{closed_port()}"

    async def scenario() -> None:
        async with AsyncClient(url, protocol=protocol, model="m", timeout_s=5) as client:
            with pytest.raises(ServerUnavailableError, match=f"'m' at {url}"):
                await client.wait_for_model(timeout_s=1)
            with pytest.raises(ClientError, match="no model info yet"):
                client.info  # noqa: B018 - property access is the test
            assert await client.infer([]) == []

    start = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - start < HANG_GUARD_S


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_calls_on_closed_port_raise_our_errors(protocol):
    with Client(f"127.0.0.1:{closed_port()}", protocol=protocol, model="emb", timeout_s=5) as client:
        assert client.infer([]) == []  # no request at all
        assert client.embed([]).shape == (0, 0)
        with pytest.raises(InvalidInputError, match="texts\\[1\\] is int"):
            client.infer(["ok", 1])  # validated before any request
        with pytest.raises(ServerUnavailableError):
            client.infer(["hello"])  # needs the model config first
        with pytest.raises(ServerUnavailableError):
            client.fetch_info()


def test_known_info_validates_limits_and_task_before_sending():
    with Client(f"127.0.0.1:{closed_port()}", protocol="grpc", model="emb", info=EMB_INFO, timeout_s=5) as client:
        assert client.info is EMB_INFO
        with pytest.raises(InvalidInputError, match="texts\\[2\\] is 40 UTF-8 bytes, over the limit of 32 bytes"):
            client.infer(["a", "b", "x" * 40])
        with pytest.raises(ClientError, match="serves task 'embeddings'.*classify"):
            client.classify(["a"])
        with pytest.raises(ServerUnavailableError):
            client.embed(["a"] * 9)  # three chunks of max_batch_size 4; the first fails to connect
    with pytest.raises(ClientError, match="is closed"):
        client.infer(["a"])


def test_client_arguments():
    with Client(protocol="http") as client:
        assert client.url == "127.0.0.1:8000"
    with Client("http://localhost:9000/", protocol="http") as client:
        assert client.url == "localhost:9000"
    assert Client(protocol="grpc").url == "127.0.0.1:8001"
    with pytest.raises(ValueError, match="protocol"):
        Client("h:1", protocol="websocket")
    with pytest.raises(ValueError, match="max_concurrency"):
        AsyncClient("h:1", max_concurrency=0)


def test_connect_closes_client_and_raises_when_not_ready():
    with pytest.raises(ServerUnavailableError):
        client_module.connect(f"127.0.0.1:{closed_port()}", "grpc", "m", wait_s=0.5)


# ----------------------------------------------------------------------------- public surface


PUBLIC_API = {
    "DEFAULT_MODEL", "TASK_EMBEDDINGS", "TASK_SEQUENCE_CLASSIFICATION", "TASK_TOKEN_CLASSIFICATION", "TASK_RERANK",
    "ModelInfo", "Embedding", "Classification", "Entity", "Entities", "Score", "RerankResult", "Result",
    "Client", "AsyncClient", "connect", "Endpoint", "TLSOptions", "parse_endpoint",
    "encode_texts", "chunk", "decode_outputs", "model_info_from_config", "to_client_error",
}


def test_all_lists_exactly_the_public_names():
    # A name added to or dropped from the package's surface must be a deliberate change here too.
    assert len(set(client_module.__all__)) == len(client_module.__all__)
    assert set(client_module.__all__) == PUBLIC_API
    for name in client_module.__all__:
        assert getattr(client_module, name) is not None, name
    public = {name for name in vars(client_module) if not name.startswith("_")}
    submodules = {"aio", "base", "inputs", "results", "sync", "transport", "verify"}
    assert public - submodules - {"annotations"} == PUBLIC_API


def test_importing_the_client_needs_neither_torch_nor_tritonclient():
    code = "import sys, hf2triton.client; print(sorted(m for m in ('torch', 'tritonclient') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env=_example_env(), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- examples


def test_curl_script_is_valid_bash_and_executable():
    script = ROOT / "client" / "curl_kserve.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text and "/v2/models/${MODEL}/infer" in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_script_fails_cleanly_on_closed_port():
    env = {**os.environ, "URL": f"http://127.0.0.1:{closed_port()}", "MODEL": "m"}
    proc = subprocess.run(
        ["bash", str(ROOT / "client" / "curl_kserve.sh"), "a text"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0


def _example_env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("example", ["sync_client.py", "async_client.py"])
def test_python_examples_run_help_and_report_unreachable_server(example):
    path = str(ROOT / "client" / example)
    helped = subprocess.run([sys.executable, path, "--help"], env=_example_env(), capture_output=True, text=True)
    assert helped.returncode == 0 and "--url" in helped.stdout and "--model" in helped.stdout
    failed = subprocess.run(
        [sys.executable, path, "--url", f"127.0.0.1:{closed_port()}", "--wait", "0.5", "some text"],
        env=_example_env(), capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr


# ----------------------------------------------------------------------------- urls, options, TLS


@pytest.mark.parametrize(
    ("url", "protocol", "pattern"),
    [
        ("https://x:70000", "http", "port in 1..65535"),
        ("h:port", "grpc", "port in 1..65535"),
        (":8001", "grpc", "host:port"),
        ("ftp://h:1", "http", "url must be host:port"),
        ("http://h:1/v2", "http", "no path"),
        ("h:1", "websocket", "protocol must be 'grpc' or 'http'"),
    ],
)
def test_bad_urls_and_protocols_are_option_errors(url, protocol, pattern):
    with pytest.raises(OptionsError, match=pattern):
        Client(url, protocol=protocol)
    with pytest.raises(OptionsError, match=pattern):
        AsyncClient(url, protocol=protocol)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM), made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_options_reach_each_tritonclient_flavour(certificate):
    cert, key = certificate
    https = client_module.parse_endpoint("https://h:8000", "http")
    assert https.address == "h:8000" and https.tls == client_module.TLSOptions()
    assert str(https) == "https://h:8000"
    assert client_module.parse_endpoint("h:8001", "grpc").tls is None
    mutual = client_module.parse_endpoint(
        "h:8001", "grpc", ssl=True, root_certificates=cert, private_key=key, certificate_chain=cert
    )
    assert mutual.tls.grpc_kwargs() == {
        "ssl": True, "root_certificates": str(cert), "private_key": str(key), "certificate_chain": str(cert)}
    assert mutual.tls.http_options() == {"ca_certs": str(cert), "keyfile": str(key), "certfile": str(cert)}
    assert mutual.tls.ssl_context().verify_mode.name == "CERT_REQUIRED"
    with Client("h:8001", ssl=True, root_certificates=cert) as grpc_tls:
        assert grpc_tls.tls and grpc_tls.url == "h:8001"
    with Client("https://h:8000", protocol="http", root_certificates=str(cert)) as http_tls:
        assert http_tls.tls and http_tls.url == "h:8000"
    with Client("h:8000", protocol="http") as plain:
        assert not plain.tls


def test_tls_option_mistakes_are_option_errors(certificate, tmp_path):
    cert, key = certificate
    with pytest.raises(OptionsError, match="need TLS: pass ssl=True or an https:// url"):
        Client("h:1", root_certificates=cert)
    with pytest.raises(OptionsError, match="both private_key and certificate_chain"):
        Client("h:1", ssl=True, private_key=key)
    with pytest.raises(OptionsError, match="root_certificates .*missing.pem.* is not a file"):
        AsyncClient("h:1", ssl=True, root_certificates=tmp_path / "missing.pem")


class _TLSListener:
    """A real TLS endpoint (not Triton: it completes handshakes, then closes the connection)."""

    def __init__(self, cert: Path, key: Path) -> None:
        import ssl
        import threading

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.set_alpn_protocols(["h2", "http/1.1"])  # gRPC insists on h2
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    self.handshakes += 1
            except OSError:
                conn.close()  # the client refused our certificate

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tls_listener(certificate):
    listener = _TLSListener(*certificate)
    yield listener
    listener.close()


def test_https_client_trusts_exactly_the_given_root_certificate(certificate, tls_listener):
    cert, _ = certificate
    url = f"https://127.0.0.1:{tls_listener.port}"
    with Client(url, protocol="http", model="m", timeout_s=5) as untrusting:
        with pytest.raises(ServerUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.fetch_info()  # self-signed: the system trust store refuses it
    assert tls_listener.handshakes == 0
    with Client(url, protocol="http", model="m", timeout_s=5, root_certificates=cert) as trusting:
        with pytest.raises(ClientError) as err:
            trusting.fetch_info()  # the handshake succeeds; this listener then hangs up
    assert "CERTIFICATE_VERIFY_FAILED" not in str(err.value)
    assert tls_listener.handshakes >= 1


def test_async_https_client_trusts_exactly_the_given_root_certificate(certificate, tls_listener):
    cert, _ = certificate
    url = f"https://127.0.0.1:{tls_listener.port}"

    async def scenario() -> tuple[str, str]:
        messages = []
        for roots in (None, cert):
            async with AsyncClient(url, protocol="http", model="m", timeout_s=5, root_certificates=roots) as client:
                with pytest.raises(ClientError) as err:
                    await client.fetch_info()
                messages.append(str(err.value))
        return messages[0], messages[1]

    refused, accepted = asyncio.run(scenario())
    assert "certificate verify failed" in refused.lower()
    assert "certificate verify failed" not in accepted.lower()
    assert tls_listener.handshakes >= 1


def test_grpc_tls_clients_trust_exactly_the_given_root_certificate(certificate, tls_listener):
    cert, _ = certificate
    url = f"127.0.0.1:{tls_listener.port}"
    messages = []
    for roots in (None, cert):
        with Client(url, model="m", timeout_s=5, ssl=True, root_certificates=roots) as client:
            with pytest.raises(ServerUnavailableError) as err:
                client.fetch_info()
            messages.append(str(err.value))

    async def scenario() -> str:
        async with AsyncClient(url, model="m", timeout_s=5, ssl=True, root_certificates=cert) as client:
            with pytest.raises(ServerUnavailableError) as err:
                await client.fetch_info()
            return str(err.value)

    messages.append(asyncio.run(scenario()))
    refused, *accepted = messages
    assert "CERTIFICATE_VERIFY_FAILED" in refused
    assert all("CERTIFICATE_VERIFY_FAILED" not in message for message in accepted)
    assert tls_listener.handshakes >= 2

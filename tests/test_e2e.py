"""End to end: exported ensembles served by a real tritonserver, answered over HTTP and gRPC
(sync and asyncio), compared with PyTorch run in-process on the same texts."""

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import DEFAULT, NER, NER_MAX_LENGTH, SENTIMENT, TOPICS
from hf2triton.client import AsyncClient, Classification, Client, Embedding, Entities, Entity
from hf2triton.errors import InvalidInputError, ServerUnavailableError
from hf2triton.export.parity import LONG_TEXT, PARITY_TEXTS

pytestmark = pytest.mark.e2e

TEXTS = list(PARITY_TEXTS)
PROTOCOLS = ("grpc", "http")


def url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.fixture(scope="module")
def sentence_transformer_embeddings(default_model_dir):
    """The reference users compare with: sentence-transformers itself on the default model."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir), device="cpu")
    return model.encode(TEXTS, batch_size=4, convert_to_numpy=True)


def torch_probabilities(checkpoint_dir, texts, multi_label: bool) -> np.ndarray:
    """transformers' own tokenizer and model, as a user would run the checkpoint."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)).numpy()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_embeddings_match_sentence_transformers(server, protocol, sentence_transformer_embeddings):
    with Client(url(server, protocol), protocol=protocol, model=DEFAULT) as client:
        info = client.wait_for_model(timeout_s=60)
        assert (info.task, info.max_sequence_length) == ("embeddings", 256)
        results = client.infer(TEXTS)
    assert all(isinstance(r, Embedding) for r in results)
    served = np.stack([r.vector for r in results])
    cosine = (served * sentence_transformer_embeddings).sum(axis=1)
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    assert [r.truncated for r in results] == [text == LONG_TEXT for text in TEXTS]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_classifier_matches_pytorch(server, protocol, minilm_classifier_dir):
    expected = torch_probabilities(minilm_classifier_dir, TEXTS, multi_label=False)
    labels = ["negative", "neutral", "positive"]
    with Client(url(server, protocol), protocol=protocol, model=SENTIMENT) as client:
        client.wait_for_model(timeout_s=60)
        results = client.classify(TEXTS)
    assert [r.label for r in results] == [labels[i] for i in expected.argmax(axis=1)]
    served = np.array([[r.scores[label] for label in labels] for r in results])
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert all(abs(r.score - max(r.scores.values())) < 1e-7 for r in results)


def test_multi_label_roberta_chunks_past_the_max_batch(server, tiny_roberta_multilabel_dir):
    texts = [f"{TEXTS[i % len(TEXTS)][:200]} #{i}" for i in range(21)]  # max batch is 8: 3 requests
    expected = torch_probabilities(tiny_roberta_multilabel_dir, texts, multi_label=True)
    with Client(server.grpc_url, model=TOPICS) as client:
        info = client.wait_for_model(timeout_s=60)
        assert info.max_batch_size == 8 and info.multi_label
        results = client.classify(texts)
    assert len(results) == 21
    served = np.array([[r.scores[label] for label in info.labels] for r in results])
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert all(isinstance(r, Classification) for r in results)


def pipeline_entities(checkpoint_dir, texts, aggregation: str, max_length: int) -> list[list[Entity]]:
    """transformers' TokenClassificationPipeline with the served max length, as typed entities."""
    import warnings

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir, model_max_length=max_length)
    pipe = transformers.pipeline("token-classification", model=str(checkpoint_dir), tokenizer=tokenizer,
                                 aggregation_strategy=aggregation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [pipe(text) if text else [] for text in texts]
    return [[Entity(e.get("entity_group", e.get("entity")), float(e["score"]), e["word"], e["start"], e["end"])
             for e in row] for row in rows]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_entities_match_the_transformers_pipeline(server, repository, protocol, tiny_checkpoint):
    """The model step serves the NER model's packed graph: texts of a request share rows."""
    root, _ = repository
    assert (root / f"{NER}_model" / "1" / "model.packed.onnx").is_file()
    checkpoint = tiny_checkpoint("bert", "token-classification")
    with Client(url(server, protocol), protocol=protocol, model=NER) as client:
        info = client.wait_for_model(timeout_s=60)
        assert (info.task, info.aggregation, info.max_sequence_length) == ("token-classification", "first", 48)
        results = client.entities(TEXTS)
    expected = pipeline_entities(checkpoint, TEXTS, "first", NER_MAX_LENGTH)
    assert all(isinstance(r, Entities) for r in results)
    assert sum(len(row) for row in expected) > 20
    for text, result, want in zip(TEXTS, results, expected):
        got = result.entities
        assert [(e.label, e.start, e.end, e.word) for e in got] == [(e.label, e.start, e.end, e.word) for e in want]
        np.testing.assert_allclose([e.score for e in got], [e.score for e in want], atol=1e-4)
        assert all(text[e.start:e.end].strip() for e in got)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert [r.truncated for r in results] == [len(tokenizer(t)["input_ids"]) > NER_MAX_LENGTH for t in TEXTS]
    assert any(r.truncated for r in results)


def test_cli_infer_prints_entities_with_their_spans(server):
    text = "Angela Merkel met Emmanuel Macron in Paris 🎉"
    result = subprocess.run(
        [sys.executable, "-m", "hf2triton.cli", "infer", "--url", server.grpc_url, "--model", NER, text],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{text!r}: ") and lines[0].endswith("entities")
    count = int(lines[0].split(": ")[1].split()[0])
    assert count >= 1 and len(lines) == 1 + count
    assert all(line.startswith("  ") and "[" in line for line in lines[1:])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_clients_answer_like_the_sync_one(server, protocol):
    texts = [f"request number {i}: {TEXTS[i % len(TEXTS)][:300]}" for i in range(50)]

    async def ask():
        async with AsyncClient(url(server, protocol), protocol=protocol, model=DEFAULT) as client:
            await client.wait_for_model(timeout_s=60)
            return await client.embed(texts)

    served = asyncio.run(ask())
    with Client(server.grpc_url, model=DEFAULT) as client:
        expected = client.embed(texts)
    assert served.shape == (50, 384)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_requests_of_different_lengths_share_model_and_postprocess_executions(server):
    """Ragged inputs: Triton hands the model and postprocess steps several queued requests of
    different widths in one execution, and each request still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [" ".join(["word"] * (3 * i + 1)) for i in range(16)]  # 16 distinct token widths

    def counts() -> dict[str, tuple[int, int]]:
        with grpcclient.InferenceServerClient(server.grpc_url) as stats_client:
            stats = stats_client.get_inference_statistics(as_json=True)["model_stats"]
        return {s["name"]: (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)))
                for s in stats if s["name"].startswith(f"{DEFAULT}_")}

    with Client(server.grpc_url, model=DEFAULT) as client:
        expected = client.embed(texts)
    before = counts()
    with ThreadPoolExecutor(16) as pool, Client(server.grpc_url, model=DEFAULT) as client:
        for _ in range(4):
            answers = list(pool.map(lambda text: client.embed([text])[0], texts))
            np.testing.assert_allclose(np.stack(answers), expected, atol=1e-5)
    after = counts()
    for step in (f"{DEFAULT}_model", f"{DEFAULT}_postprocess"):
        requests = after[step][0] - before[step][0]
        executions = after[step][1] - before[step][1]
        assert requests == 64 and executions < requests, (step, requests, executions)


def test_served_int8_variant_answers_like_the_in_process_int8_model(server, repository):
    """The int8 QDQ ensemble served beside fp32 gives what its ONNX file gives in-process."""
    from hf2triton.precision.accuracy import task_answers
    from hf2triton.backends.onnx_model import create_session
    from hf2triton.backends.tokenizer import TokenizerSettings, encode_requests, load_tokenizer
    from hf2triton.repository import parse_pbtxt

    root, results = repository
    texts = [text[:300] for text in TEXTS[:8]]  # the topics model's byte limit is 2000
    tokenizer_dir = root / f"{TOPICS}_tokenizer"
    config = parse_pbtxt((tokenizer_dir / "config.pbtxt").read_text())
    settings = TokenizerSettings.from_json(config.parameters["settings"].string_value)
    tokenizer = load_tokenizer(tokenizer_dir / "1" / "tokenizer.json", settings.max_length)
    session = create_session(root / f"{TOPICS}_model_int8_qdq" / "1" / "model.onnx")
    expected = task_answers(session, encode_requests(tokenizer, [texts], settings), results[TOPICS].checkpoint)
    with Client(server.grpc_url, model=f"{TOPICS}_int8_qdq") as client:
        info = client.wait_for_model(timeout_s=60)
        served = np.array([[r.scores[label] for label in info.labels] for r in client.classify(texts)])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert {v.name for v in results[TOPICS].variants} >= {"fp32", "int8_qdq", "int8_dynamic"}


# ---------------------------------------------------------------- bad input, server keeps serving


def raw_infer(server, protocol: str, model: str, array: np.ndarray):
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url(server, protocol))
    tensor = module.InferInput("TEXT", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def assert_client_error(server, protocol, array, message):
    with pytest.raises(InferenceServerException) as caught:
        raw_infer(server, protocol, DEFAULT, array)
    status = caught.value.status()
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), status
    assert message in caught.value.message()
    # ... and the server still answers a good request right after.
    good = raw_infer(server, protocol, DEFAULT, np.array([[b"still serving"]], dtype=object))
    assert good.as_numpy("EMBEDDING").shape == (1, 384)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_utf8_is_a_client_error(server, protocol):
    bad = np.array([["fine".encode()], [b"caf\xe9 latin-1"]], dtype=object)
    assert_client_error(server, protocol, bad, "TEXT[1] is not valid UTF-8")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_over_the_byte_limit_is_a_client_error(server, protocol):
    big = np.array([[b"x" * (64 * 1024 + 1)]], dtype=object)
    assert_client_error(server, protocol, big, "over the limit of 65536 bytes")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_over_the_max_batch_is_a_client_error(server, protocol):
    assert_client_error(server, protocol, np.array([[b"a"]] * 33, dtype=object), "batch-size must be <= 32")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_request_is_a_client_error(server, protocol):
    assert_client_error(server, protocol, np.zeros((0, 1), dtype=object), "got 0")


def test_client_maps_errors_and_validates_before_sending(server):
    with Client(server.grpc_url, model=TOPICS) as client:
        client.wait_for_model(timeout_s=60)
        with pytest.raises(InvalidInputError, match=r"texts\[1\] is 2001 UTF-8 bytes, over the limit of 2000"):
            client.classify(["ok", "y" * 2001])
        assert client.infer([]) == []
        assert client.classify([""])[0].label in client.info.labels  # an empty string is valid
    with Client(server.http_url, protocol="http", model="no_such_model") as client:
        with pytest.raises(ServerUnavailableError):
            client.wait_for_model(timeout_s=1)


def test_cli_infer_prints_answers(server):
    result = subprocess.run(
        [sys.executable, "-m", "hf2triton.cli", "infer", "--url", server.grpc_url, "--model", SENTIMENT,
         "what a great day", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and "'what a great day':" in lines[0]
    assert any(label in lines[0] for label in ("negative", "neutral", "positive"))


def test_cli_infer_reports_an_unreachable_server_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "hf2triton.cli", "infer", "--url", "127.0.0.1:9", "--timeout", "1", "hello"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the client/ examples, for real

EXAMPLES = Path(__file__).resolve().parents[1] / "client"


def run_example(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_client_example(server, protocol):
    result = run_example(sys.executable, str(EXAMPLES / "sync_client.py"), "--protocol", protocol,
                         "--url", url(server, protocol), "--model", SENTIMENT, "I love it", "I hate it")
    assert result.returncode == 0, result.stderr
    assert f"via {protocol}" in result.stdout and "'I love it'" in result.stdout


def test_sync_client_example_prints_entity_spans(server):
    text = "Angela Merkel met Emmanuel Macron in Paris"
    result = run_example(sys.executable, str(EXAMPLES / "sync_client.py"), "--url", server.grpc_url,
                         "--model", NER, text)
    assert result.returncode == 0, result.stderr
    assert "task=token-classification" in result.stdout and f"entities  {text!r}" in result.stdout


def test_async_client_example(server):
    result = run_example(sys.executable, str(EXAMPLES / "async_client.py"), "--url", server.grpc_url,
                         "--copies", "3")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_kserve_example(server):
    env = {**os.environ, "URL": f"http://{server.http_url}", "MODEL": DEFAULT}
    result = run_example("bash", str(EXAMPLES / "curl_kserve.sh"), "raw KServe v2 JSON", env=env)
    assert result.returncode == 0, result.stderr
    assert '"EMBEDDING"' in result.stdout.replace(" ", "") or "EMBEDDING" in result.stdout

"""The gateway in front of a real tritonserver serving the real default export (and the session's
classifiers): the unchanged OpenAI SDK and raw TEI-shaped requests get the right answers."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from conftest import DEFAULT, SENTIMENT, TOPICS
from gateway_http import assert_openai_error, assert_tei_error, get, post
from hf2triton.client import Client
from hf2triton.export.parity import LONG_TEXT, PARITY_TEXTS
from hf2triton.gateway import GatewaySettings, start_beside, start_gateway

pytestmark = pytest.mark.e2e

TEXTS = list(PARITY_TEXTS)
MAX_LENGTH = 256  # the default model's served max sequence length


@pytest.fixture(scope="module")
def gateway(server, repository):
    """Beside the repository: token counts from each model's own tokenizer.json."""
    root, _ = repository
    with start_beside(server, port=0) as running:  # what `hf2triton serve --gateway-port` starts
        assert running.settings.model_repository == root
        yield running.url


@pytest.fixture(scope="module")
def remote_gateway(server):
    """Away from the repository: token counts from the tokenizer step on Triton; TEI default model set."""
    settings = GatewaySettings(triton_url=server.grpc_url, port=0, default_model=SENTIMENT)
    with start_gateway(settings) as running:
        yield running.url


@pytest.fixture(scope="module")
def openai_client(gateway):
    import openai

    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def sentence_transformer(default_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_model_dir), device="cpu")


@pytest.fixture(scope="module")
def token_counts(default_model_dir) -> list[int]:
    """The tokenizer's own counts (transformers, special tokens in, truncated to the served length)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    return [len(ids) for ids in tokenizer(TEXTS, truncation=True, max_length=MAX_LENGTH)["input_ids"]]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_openai_sdk_embeddings_equal_sentence_transformers(openai_client, sentence_transformer, token_counts):
    response = openai_client.embeddings.create(model=DEFAULT, input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    expected = sentence_transformer.encode(TEXTS, convert_to_numpy=True)
    assert served.shape == expected.shape
    assert cosines(served, expected).min() >= 0.9999
    assert response.model == DEFAULT
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(token_counts)


def test_dimensions_equal_sentence_transformers_truncate_dim(openai_client, default_model_dir):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(default_model_dir), device="cpu", truncate_dim=64).encode(
        TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    response = openai_client.embeddings.create(model=DEFAULT, input=TEXTS, dimensions=64, encoding_format="float")
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert served.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    assert cosines(served, expected).min() >= 0.9999


def test_base64_decodes_to_the_same_floats(gateway):
    body = {"model": DEFAULT, "input": TEXTS[:3], "user": "ignored"}
    as_float = post(gateway, "/v1/embeddings", {**body, "encoding_format": "float"}).json()
    as_b64 = post(gateway, "/v1/embeddings", {**body, "encoding_format": "base64"}).json()
    floats = np.array([d["embedding"] for d in as_float["data"]], dtype=np.float32)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in as_b64["data"]])
    np.testing.assert_array_equal(floats, decoded)
    assert as_float["object"] == "list" and as_float["data"][0]["object"] == "embedding"


def test_usage_from_the_tokenizer_step_when_away_from_the_repository(remote_gateway, token_counts):
    """The ensemble's tokenizer step counts (the fused model answers TOKENS: tests/test_fused.py)."""
    answer = post(remote_gateway, "/v1/embeddings", {"model": DEFAULT, "input": TEXTS}).json()
    assert answer["usage"] == {"prompt_tokens": sum(token_counts), "total_tokens": sum(token_counts)}


def test_models_lists_the_served_ensembles_with_their_tasks(openai_client, gateway):
    ids = {m.id for m in openai_client.models.list()}
    assert {DEFAULT, SENTIMENT, TOPICS} <= ids
    assert not any(name.endswith(("_tokenizer", "_model", "_postprocess")) for name in ids)
    tasks = {m["id"]: m["task"] for m in get(gateway, "/v1/models").json()["data"]}
    assert tasks[DEFAULT] == "embeddings" and tasks[SENTIMENT] == "sequence-classification"


def test_tei_embed_documented_examples(gateway, sentence_transformer):
    # curl 127.0.0.1:8080/embed -X POST -d '{"inputs":"What is Deep Learning?"}' -H 'Content-Type: application/json'
    single = post(gateway, "/embed", {"inputs": "What is Deep Learning?"})
    assert single.status == 200
    vectors = np.array(single.json(), dtype=np.float32)
    assert vectors.shape == (1, 384)
    batch = post(gateway, "/embed", {"inputs": ["Today is a nice day", "I like you"]}).json()
    expected = sentence_transformer.encode(["What is Deep Learning?", "Today is a nice day", "I like you"])
    assert cosines(np.vstack([vectors, np.array(batch, dtype=np.float32)]), expected).min() >= 0.9999


def test_tei_embed_refuses_over_long_texts_unless_truncate(gateway):
    assert_tei_error(post(gateway, "/embed", {"inputs": ["short", LONG_TEXT]}), 413, "inputs[1]",
                     f"max length of {MAX_LENGTH} tokens", "truncate")
    assert len(post(gateway, "/embed", {"inputs": ["short", LONG_TEXT], "truncate": True}).json()) == 2


def sentiment_probabilities(checkpoint_dir, texts) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()


def test_tei_predict_documented_examples(gateway, remote_gateway, minilm_classifier_dir):
    labels = json.loads((minilm_classifier_dir / "config.json").read_text())["id2label"]
    names = [labels[str(i)] for i in range(len(labels))]
    expected = sentiment_probabilities(minilm_classifier_dir, ["I like you.", "I hate you."])
    # curl 127.0.0.1:8080/predict -X POST -d '{"inputs":"I like you."}' (TEI names no model: the default is used)
    single = post(remote_gateway, "/predict", {"inputs": "I like you."})
    assert single.status == 200, single.body
    predictions = single.json()
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    got = {p["label"]: p["score"] for p in predictions}
    np.testing.assert_allclose([got[n] for n in names], expected[0], atol=1e-4)
    batch = post(gateway, "/predict", {"model": SENTIMENT, "inputs": [["I like you."], ["I hate you."]]}).json()
    assert len(batch) == 2
    np.testing.assert_allclose([{p["label"]: p["score"] for p in batch[1]}[n] for n in names], expected[1], atol=1e-4)
    assert_tei_error(post(gateway, "/predict", {"model": SENTIMENT, "inputs": ["I like you.", "I hate you."]}),
                     400, "no text pairs")
    # Several classifiers are served and none is the default: the gateway asks which.
    assert_tei_error(post(gateway, "/predict", {"inputs": "I like you."}), 400, "name one", SENTIMENT)


def test_rerank_routes_refuse_models_that_are_no_rerankers(gateway):
    # curl 127.0.0.1:8080/rerank -X POST -d '{"query":"What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."]}'
    documented = {"query": "What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."]}
    assert_tei_error(post(gateway, "/rerank", documented), 400, "rerank model", "none is served")
    assert_tei_error(post(gateway, "/rerank", {**documented, "model": DEFAULT}), 400,
                     f"model '{DEFAULT}' is not a reranker")
    cohere = {"model": DEFAULT, "query": "What is Deep Learning?", "documents": ["a", {"text": "b"}], "top_n": 1}
    assert_openai_error(post(gateway, "/v1/rerank", cohere), 400, "is not a reranker")


def test_errors_in_openai_shape(gateway, openai_client, server):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.embeddings.create(model="no_such_model", input="hi")
    assert caught.value.code == "model_not_found" and DEFAULT in caught.value.message
    assert_openai_error(post(gateway, "/v1/embeddings", {"model": SENTIMENT, "input": "hi"}), 400,
                        "serves task 'sequence-classification'")
    assert_openai_error(post(gateway, "/v1/embeddings", {"model": DEFAULT, "input": "hi", "dimensions": 385}), 400,
                        "between 1 and 384")
    with Client(server.grpc_url, model=DEFAULT) as client:
        limit = client.fetch_info().max_text_bytes
    big = {"model": DEFAULT, "input": ["fine", "é" * (limit // 2 + 1)]}
    assert_openai_error(post(gateway, "/v1/embeddings", big), 413, "input[1]", f"limit of {limit} bytes")


def test_gateway_keeps_serving_through_bad_requests(gateway):
    good = {"model": DEFAULT, "input": ["still here"]}
    bad = [{"model": DEFAULT, "input": [1]}, {"model": "nope", "input": "x"}, {"model": SENTIMENT, "input": "x"}]

    async def storm() -> list[int]:
        jobs = [asyncio.to_thread(post, gateway, "/v1/embeddings", body) for body in (bad * 4 + [good] * 6)]
        return [answer.status for answer in await asyncio.gather(*jobs)]

    statuses = asyncio.run(storm())
    assert statuses[:12].count(200) == 0 and statuses[12:] == [200] * 6
    assert not any(status >= 500 for status in statuses)
    assert post(gateway, "/v1/embeddings", good).status == 200
    assert get(gateway, "/health").json()["status"] == "ok"
    metrics = get(gateway, "/metrics").body.decode()
    assert 'hf2triton_gateway_requests_total{endpoint="/v1/embeddings",status="200"}' in metrics
    assert 'hf2triton_gateway_errors_total{endpoint="/v1/embeddings",status="404"}' in metrics


def test_gateway_follows_model_loads_and_unloads(repository, tmp_path):
    """A server with explicit model control: the gateway notices an unload (404) and a reload (200)."""
    import tritonclient.grpc as grpcclient

    from hf2triton.serving import LocalTritonServer, ServerConfig

    root, _ = repository
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0,
                          model_control_mode="explicit", allow_unauthenticated_model_control=True,
                          load_models=(DEFAULT,), log_file=tmp_path / "triton.log")
    body = {"model": DEFAULT, "input": "hello"}
    with LocalTritonServer(config).start(ready_timeout_s=180) as server, \
            start_gateway(GatewaySettings(triton_url=server.grpc_url, port=0, refresh_interval_s=3600)) as gateway:
        assert post(gateway.url, "/v1/embeddings", body).status == 200
        assert_openai_error(post(gateway.url, "/v1/embeddings", {**body, "model": SENTIMENT}), 404, "not served")
        control = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            control.unload_model(DEFAULT)
            assert_openai_error(post(gateway.url, "/v1/embeddings", body), 404, f"'{DEFAULT}' is not served")
            control.load_model(SENTIMENT)
            control.load_model(DEFAULT)
        finally:
            control.close()
        assert post(gateway.url, "/v1/embeddings", body).status == 200
        assert SENTIMENT in {m["id"] for m in get(gateway.url, "/v1/models").json()["data"]}

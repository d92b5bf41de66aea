"""Text pairs and cross-encoder rerankers (issue 13, parts 1, 2 and 5).

Unit tests: task detection, the CrossEncoder activation, pair tokenization against
transformers' own ``tokenizer(text, text_pair)``. End to end, on one real tritonserver:
a tiny BERT pair classifier (ensemble and fused layouts) against
``pipeline("text-classification")``, rerankers (ensemble; fused with an identity
activation) against ``sentence_transformers.CrossEncoder.predict``, raw KServe v2 requests
over HTTP and gRPC, bad pairs refused alone, and the gateway's ``/rerank`` and ``/v1/rerank``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import checkpoints
from gateway_http import assert_openai_error, post
from hf2triton.backends import tokenizer as steps
from hf2triton.client import AsyncClient, Client
from hf2triton.errors import CheckpointError, InvalidInputError
from hf2triton.export.checkpoint import cross_encoder_activation, detect_task, inspect_checkpoint
from hf2triton.export.parity import LONG_TEXT

MAX_LENGTH = 64
IDENTITY = "torch.nn.modules.linear.Identity"
FIRSTS = ["The cat sat on the mat.", "A man is playing a guitar.", LONG_TEXT, "", "Paris is in France 🇫🇷",
          "short", LONG_TEXT]
SECONDS = ["A cat is sitting on a mat.", "Nobody plays anything.", "short", "only the second text", LONG_TEXT,
           "", LONG_TEXT]
QUERY = "How do cats sit?"
DOCUMENTS = ["A cat is sitting on a mat.", "Guitars have six strings.", LONG_TEXT, "", "Cats sit upright.",
             "Le chat est assis.", "ok", "Dogs bark at night.", "猫が座っている"]


# ----------------------------------------------------------------- unit: detection and tokenization


def test_one_label_classifiers_are_rerankers_and_their_activation_is_read(tiny_checkpoint, tmp_path):
    assert detect_task(("BertForSequenceClassification",), None, num_labels=1).name == "rerank"
    assert detect_task(("BertForSequenceClassification",), None, num_labels=3).name == "sequence-classification"
    with pytest.raises(CheckpointError, match="--task rerank needs a checkpoint with one output label.*has 3"):
        detect_task(("BertForSequenceClassification",), "rerank", num_labels=3)
    assert cross_encoder_activation({}) == "sigmoid"  # CrossEncoder's default for one label
    assert cross_encoder_activation({"sentence_transformers": {"activation_fn": IDENTITY}}) == "identity"
    # Not under torch.: CrossEncoder does not trust it without trust_remote_code and uses its default.
    assert cross_encoder_activation({"sentence_transformers": {"activation_fn": "my.Activation"}}) == "sigmoid"
    with pytest.raises(CheckpointError, match="torch.nn.Softplus.*supported"):
        cross_encoder_activation({"sentence_transformers": {"activation_fn": "torch.nn.Softplus"}})
    checkpoint = inspect_checkpoint(tiny_checkpoint("bert", "rerank"))
    assert (checkpoint.task.name, checkpoint.activation, checkpoint.labels) == ("rerank", "sigmoid", ("LABEL_0",))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_pairs_tokenize_like_transformers_with_longest_first_truncation(tiny_checkpoint, model_type):
    import transformers

    folder = tiny_checkpoint(model_type, "sequence-classification")
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    encoder = steps.load_tokenizer(folder / "tokenizer.json", MAX_LENGTH)
    settings = steps.TokenizerSettings(MAX_LENGTH, (16, MAX_LENGTH), 0, 1 << 20, ("input_ids",))
    firsts, seconds = FIRSTS + ["x " * 4000], SECONDS + ["y"]  # a whitespace run: the prefix must grow
    encodings = steps.tokenize_pairs(encoder, firsts, seconds, settings)
    expected = reference(firsts, seconds, truncation=True, max_length=MAX_LENGTH)
    for row, encoding in enumerate(encodings):
        assert encoding.ids == expected["input_ids"][row], row
        if "token_type_ids" in expected:  # BERT: the second text has token type 1
            assert encoding.type_ids == expected["token_type_ids"][row], row
        whole = len(reference(firsts[row], seconds[row])["input_ids"])
        assert bool(encoding.overflowing) == (whole > MAX_LENGTH), row  # TRUNCATED is reported
    template = reference.convert_ids_to_tokens(encodings[0].ids)
    assert template.count(reference.sep_token) == (3 if model_type == "roberta" else 2)  # </s></s> vs [SEP]


def test_a_text_pair_must_match_text_row_for_row():
    pairs = np.array([[b"a"], [b"b"]], dtype=object)
    assert steps.decode_pairs(pairs, 2, 100) == ["a", "b"]
    with pytest.raises(steps.TextInputError, match="TEXT_PAIR has 2 rows but TEXT has 3: send one TEXT_PAIR per TEXT"):
        steps.decode_pairs(pairs, 3, 100)
    with pytest.raises(steps.TextInputError, match=r"TEXT_PAIR\[1\] is 5 bytes, over the limit of 4"):
        steps.decode_pairs(np.array([[b"a"], [b"bbbbb"]], dtype=object), 2, 4)


def test_client_ranks_scores_and_reads_what_the_model_publishes():
    from hf2triton.client import RerankResult, Score, decode_outputs, model_info_from_config
    from hf2triton.client.inputs import encode_pairs
    from hf2triton.client.results import ranked
    from hf2triton.errors import ClientError

    config = {"max_batch_size": 4, "parameters": {"hf2triton.task": {"string_value": "rerank"},
                                                   "hf2triton.text_pair": {"string_value": "true"},
                                                   "hf2triton.activation": {"string_value": "sigmoid"}}}
    info = model_info_from_config("reranker", config)
    assert (info.task, info.text_pair, info.activation) == ("rerank", True, "sigmoid")
    outputs = {"SCORES": np.array([[0.2], [0.9], [0.2]], dtype=np.float32), "TRUNCATED": np.array([[False]] * 3)}
    scores = decode_outputs(info, outputs)
    assert scores == [Score(pytest.approx(0.2), False), Score(pytest.approx(0.9), False), Score(pytest.approx(0.2), False)]
    documents = ["a", "b", "c"]
    assert [r.index for r in ranked(scores, documents, None, False)] == [1, 0, 2]  # ties keep the order sent
    assert ranked(scores, documents, 1, True) == [RerankResult(1, pytest.approx(0.9), "b", False)]
    with pytest.raises(ClientError, match=r"expected \[n, 1\]"):
        decode_outputs(info, {**outputs, "SCORES": np.zeros((3, 2), dtype=np.float32)})
    from hf2triton.errors import OptionsError

    with Client("127.0.0.1:1", info=info) as client:  # refused before any request: nothing listens there
        with pytest.raises(OptionsError, match="top_n must be a positive integer"):
            client.rerank("q", ["a"], top_n=0)
        with pytest.raises(InvalidInputError, match="query is bytes"):
            client.rerank(b"q", ["a"])
        assert client.rerank("q", []) == []
    assert encode_pairs(["x", "y"], 2).shape == (2, 1)
    with pytest.raises(InvalidInputError, match=r"text_pair\[1\] is int, expected str"):
        encode_pairs(["x", 3], 2)


# ----------------------------------------------------------------- served (one real tritonserver)

PAIRS, PAIRS_FUSED, RERANKER, RERANKER_FUSED, EMBEDDER = "pairs", "pairs_fused", "reranker", "reranker_fused", "embedder"


@pytest.fixture(scope="module")
def identity_reranker_dir(checkpoint_root):
    return checkpoints.tiny_encoder(checkpoint_root / "roberta-rerank-identity", "roberta", "rerank",
                                    activation=IDENTITY, seed=1)


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory, tiny_checkpoint, identity_reranker_dir):
    """A pair classifier (both layouts), rerankers (ensemble, max batch 4; fused, identity) and an
    embedder, which takes no pairs."""
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root = tmp_path_factory.mktemp("pairs") / "model_repository"
    fused = ServingOptions(layout="fused")
    exports = {
        PAIRS: (tiny_checkpoint("bert", "sequence-classification"), ServingOptions()),
        PAIRS_FUSED: (tiny_checkpoint("bert", "sequence-classification"), fused),
        RERANKER: (tiny_checkpoint("bert", "rerank"), ServingOptions(max_batch_size=4)),
        RERANKER_FUSED: (identity_reranker_dir, fused),
        EMBEDDER: (tiny_checkpoint("bert", "embeddings"), fused),
    }
    results = {}
    for name, (folder, serving) in exports.items():
        results[name] = export_checkpoint(ExportOptions(checkpoint=folder, output_dir=root, name=name,
                                                        max_length=MAX_LENGTH, serving=serving))
        assert results[name].parity.passed, results[name].parity.summary()
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0,
                          log_file=root.parent / "tritonserver.log")
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield running, results


def pipeline_answers(folder, firsts, seconds=None) -> list[dict[str, float]]:
    """transformers' pipeline("text-classification") given {"text", "text_pair"}: every label's probability."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(folder), device="cpu")
    items = firsts if seconds is None else [{"text": a, "text_pair": b} for a, b in zip(firsts, seconds)]
    answers = classifier(items, top_k=None, truncation=True, max_length=MAX_LENGTH)
    return [{d["label"]: d["score"] for d in answer} for answer in answers]


def cross_encoder_scores(folder, query, documents) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", max_length=MAX_LENGTH)
    return np.asarray(model.predict([(query, d) for d in documents], show_progress_bar=False))


def assert_like_pipeline(served, expected):
    assert len(served) == len(expected)
    for result, probabilities in zip(served, expected):
        assert result.label == max(probabilities, key=probabilities.get)
        assert set(result.scores) == set(probabilities)
        for label, p in probabilities.items():
            assert abs(result.scores[label] - p) <= 1e-4, (label, result.scores[label], p)


def test_pair_models_serve_packed_graphs_that_take_token_types_and_first_tokens(pair_server):
    """Every pair model here runs a packed graph, so the tests below check packed answers
    against transformers: BERT's graph takes the token types (RoBERTa has none), and the
    pairs they send share rows."""
    import onnx

    from hf2triton.backends import batching, onnx_model

    _, results = pair_server
    for name, types in ((PAIRS, True), (PAIRS_FUSED, True), (RERANKER, True), (RERANKER_FUSED, False)):
        packed = results[name].layout.onnx_file.with_name(onnx_model.PACKED_FILE)
        inputs = [i.name for i in onnx.load(str(packed), load_external_data=False).graph.input]
        assert batching.TEXT_STARTS in inputs and (batching.TOKEN_TYPES in inputs) == types, name
    result = results[PAIRS_FUSED]
    encoder = steps.load_tokenizer(result.layout.tokenizer_file, result.settings.max_length)
    lengths = np.array([len(e.ids) for e in steps.tokenize_pairs(encoder, FIRSTS, SECONDS, result.settings)])
    assert any(len(row) > 1 for call in batching.pack_calls(lengths, 256) for row in call)


@pytest.mark.e2e
@pytest.mark.parametrize("model", [PAIRS, PAIRS_FUSED])
def test_pairs_are_classified_like_the_pipeline_over_grpc_and_http(pair_server, model):
    server, results = pair_server
    folder = results[model].checkpoint.path
    expected_pairs = pipeline_answers(folder, FIRSTS, SECONDS)
    expected_single = pipeline_answers(folder, FIRSTS)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with Client(url, protocol=protocol, model=model) as client:
            info = client.wait_for_model(timeout_s=60)
            assert info.text_pair
            paired = client.classify(FIRSTS, text_pair=SECONDS)
            assert_like_pipeline(paired, expected_pairs)
            assert_like_pipeline(client.classify(FIRSTS), expected_single)  # single texts keep working
    assert [r.truncated for r in paired] == [False, False, True, False, True, False, True]
    # The comparison can fail: the second text changes the answer.
    assert any(abs(a.scores[k] - b.scores[k]) > 1e-3 for a, b in zip(paired, client_single(server, model))
               for k in a.scores)


def client_single(server, model):
    with Client(server.grpc_url, model=model) as client:
        return client.classify(FIRSTS)


def kserve(server, model: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def pair_body(firsts: list[str], seconds: list[str]) -> dict:
    return {"inputs": [
        {"name": "TEXT", "shape": [len(firsts), 1], "datatype": "BYTES", "data": firsts},
        {"name": "TEXT_PAIR", "shape": [len(seconds), 1], "datatype": "BYTES", "data": seconds},
    ]}


@pytest.mark.e2e
def test_raw_kserve_pairs_over_http_and_grpc_and_bad_pairs_fail_alone(pair_server):
    import tritonclient.grpc as grpcclient

    server, results = pair_server
    expected = pipeline_answers(results[PAIRS].checkpoint.path, FIRSTS[:2], SECONDS[:2])
    # curl -X POST localhost:8000/v2/models/pairs/infer -d '{"inputs": [{"name": "TEXT", ...}, {"name": "TEXT_PAIR", ...}]}'
    status, answer = kserve(server, PAIRS, pair_body(FIRSTS[:2], SECONDS[:2]))
    assert status == 200, answer
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    labels = results[PAIRS].checkpoint.labels
    for row, probabilities in enumerate(expected):
        served = dict(zip(labels, outputs["SCORES"][row * len(labels):(row + 1) * len(labels)]))
        assert all(abs(served[k] - p) <= 1e-4 for k, p in probabilities.items())
        assert outputs["LABEL"][row] == max(probabilities, key=probabilities.get)

    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, texts in (("TEXT", FIRSTS[:2]), ("TEXT_PAIR", SECONDS[:2])):
        tensor = grpcclient.InferInput(name, [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        inputs.append(tensor)
    scores = client.infer(PAIRS, inputs).as_numpy("SCORES")
    np.testing.assert_allclose(scores, [[p[k] for k in labels] for p in expected], atol=1e-4)

    # One TEXT_PAIR per TEXT: otherwise a 400 (Triton compares the batch sizes before any step runs;
    # the steps check it again for direct callers), in either layout, and the server goes on.
    for model in (PAIRS, PAIRS_FUSED):
        body = pair_body(FIRSTS[:3], SECONDS[:3])
        body["inputs"][1] = {"name": "TEXT_PAIR", "shape": [2, 1], "datatype": "BYTES", "data": SECONDS[:2]}
        status, answer = kserve(server, model, body)
        assert status == 400 and "batch size does not match" in answer["error"], answer
    # A pair to a model that takes none: Triton refuses the input by name; the client before sending.
    status, answer = kserve(server, EMBEDDER, pair_body(["a"], ["b"]))
    assert status == 400 and "TEXT_PAIR" in answer["error"], answer
    with Client(server.grpc_url, model=EMBEDDER) as embedder, pytest.raises(InvalidInputError, match="takes no text pairs"):
        embedder.infer(["a"], text_pair=["b"])
    with Client(server.grpc_url, model=PAIRS) as paired, pytest.raises(InvalidInputError, match="1 text_pair items for 2"):
        paired.classify(["a", "b"], text_pair=["c"])
    status, _ = kserve(server, PAIRS, pair_body(FIRSTS[:2], SECONDS[:2]))
    assert status == 200


@pytest.mark.e2e
@pytest.mark.parametrize("model", [RERANKER, RERANKER_FUSED])
def test_rerank_equals_cross_encoder_sorted_with_original_indices(pair_server, model):
    server, results = pair_server
    assert results[model].checkpoint.task.name == "rerank"
    expected = cross_encoder_scores(results[model].checkpoint.path, QUERY, DOCUMENTS)
    assert np.ptp(expected) > 1e-2  # the comparison can fail: documents score differently
    with Client(server.grpc_url, model=model) as client:
        info = client.wait_for_model(timeout_s=60)
        ranked = client.rerank(QUERY, DOCUMENTS)
        top = client.rerank(QUERY, DOCUMENTS, top_n=3, return_documents=True)
    assert info.activation == ("sigmoid" if model == RERANKER else "identity")
    assert sorted(r.index for r in ranked) == list(range(len(DOCUMENTS)))  # 9 documents, max batch 4: split
    assert [r.index for r in ranked] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    np.testing.assert_allclose([r.score for r in ranked], expected[[r.index for r in ranked]], atol=1e-4)
    assert [(r.index, r.document) for r in top] == [(r.index, DOCUMENTS[r.index]) for r in ranked[:3]]
    assert ranked[0].document is None and any(r.truncated for r in ranked)

    async def rerank_async():
        async with AsyncClient(server.http_url, protocol="http", model=model) as client:
            return await client.rerank(QUERY, DOCUMENTS, top_n=2)

    assert [(r.index, r.score) for r in asyncio.run(rerank_async())] == [(r.index, r.score) for r in ranked[:2]]


@pytest.mark.e2e
def test_verify_checks_pairs_and_rerank(pair_server):
    from hf2triton.client.verify import verify

    server, results = pair_server
    urls = {"grpc": server.grpc_url, "http": server.http_url}
    texts = (*FIRSTS[:3], "ok")
    for model in (PAIRS, RERANKER_FUSED):
        report = verify(model, results[model].checkpoint.path, urls, texts=texts)
        assert report.passed, "\n".join(report.table())
        pairs_checked = [c for c in report.checks if " | " in c.text]
        assert len(pairs_checked) == 2 * len(texts)
        assert len(report.checks) == (4 if model == PAIRS else 2) * len(texts)


@pytest.mark.e2e
def test_gateway_rerank_routes_answer_with_the_served_reranker(pair_server):
    from hf2triton.gateway import GatewaySettings, start_gateway

    server, results = pair_server
    scores = {model: cross_encoder_scores(results[model].checkpoint.path, QUERY, DOCUMENTS)
              for model in (RERANKER, RERANKER_FUSED)}
    order = {model: sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i]) for model, expected in scores.items()}
    # Away from the repository: token counts come from the reranker's tokenizer step, in chunks of its max batch.
    settings = GatewaySettings(triton_url=server.grpc_url, port=0, default_model=RERANKER_FUSED)
    with start_gateway(settings) as gateway:
        # curl 127.0.0.1:8080/rerank -X POST -d '{"query": "...", "texts": [...], "return_text": true, "top_n": 4}'
        tei = post(gateway.url, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True, "top_n": 4})
        assert tei.status == 200, tei.body
        assert [item["index"] for item in tei.json()] == order[RERANKER_FUSED][:4]
        for item in tei.json():
            assert abs(item["score"] - scores[RERANKER_FUSED][item["index"]]) <= 1e-4
            assert item["text"] == DOCUMENTS[item["index"]]
        # curl 127.0.0.1:8080/v1/rerank -d '{"model": "reranker", "query": "...", "documents": [...]}'
        cohere = post(gateway.url, "/v1/rerank", {"model": RERANKER, "query": QUERY,
                                                   "documents": DOCUMENTS, "return_documents": True})
        assert cohere.status == 200, cohere.body
        answer = cohere.json()
        assert [r["index"] for r in answer["results"]] == order[RERANKER]
        for item in answer["results"]:
            assert abs(item["relevance_score"] - scores[RERANKER][item["index"]]) <= 1e-4
            assert item["document"] == {"text": DOCUMENTS[item["index"]]}
        assert answer["usage"]["total_tokens"] > len(DOCUMENTS)
        assert_openai_error(post(gateway.url, "/v1/rerank", {"model": PAIRS, "query": QUERY, "documents": ["a"]}),
                            400, "is not a reranker")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_carries_text_pair_and_request_parameters_together(protocol):
    """Pairs (this branch) and KServe request parameters (prompts, dimensions) share one request."""
    from hf2triton.client.transport import Transport, parse_endpoint

    transport = Transport(parse_endpoint("127.0.0.1:1", protocol), "m", asynchronous=False, timeout_s=1.0)
    texts = np.array([[b"a"], [b"b"]], dtype=object)
    request = transport.request(texts, ["SCORES"], texts[::-1], {"dimensions": 8})
    assert [tensor.name() for tensor in request.inputs] == ["TEXT", "TEXT_PAIR"]
    assert dict(request.parameters) == {"dimensions": 8}
    assert [tensor.name() for tensor in transport.request(texts, ["SCORES"]).inputs] == ["TEXT"]


def test_infer_takes_text_pair_and_parameters_by_keyword_only():
    with Client("127.0.0.1:1", model="m") as client:
        with pytest.raises(TypeError):
            client.infer(["a"], ["b"])  # Client.infer(texts, *, text_pair=..., parameters=...)


@pytest.mark.e2e
def test_perf_sweeps_a_reranker_with_pairs_and_refuses_pairs_for_a_model_without_them(pair_server, tmp_path,
                                                                                        caplog):
    """``hf2triton perf --pairs``: every request is built with TEXT_PAIR (each text with the next)
    and the served rerankers answer them all; an embedder takes no pairs, which the sweep says
    up front."""
    import json

    from hf2triton.cli import main
    from hf2triton.errors import ClientError
    from hf2triton.perf.corpus import load_texts
    from hf2triton.perf.sweep import SweepSettings, request_batches, run_sweep

    server, _ = pair_server
    texts = load_texts()[:40]
    batch = request_batches(texts, 3, count=2, pairs=True)[1]
    assert batch.texts[:, 0].tolist() == [t.encode() for t in texts[3:6]]
    assert batch.pairs[:, 0].tolist() == [t.encode() for t in texts[4:7]]
    assert request_batches(texts, 3, count=1)[0].pairs is None

    settings = SweepSettings(model=RERANKER, urls={"grpc": server.grpc_url, "http": server.http_url},
                             concurrencies=(2,), batch_sizes=(1, 4), window_s=0.3, warmup_s=0.1,
                             stable_windows=1, max_windows=2, pairs=True)
    points = run_sweep(settings, texts)
    assert len(points) == 4 and all(p.requests > 0 and p.errors == 0 for p in points)
    with pytest.raises(ClientError, match=f"'{EMBEDDER}' takes no TEXT_PAIR input"):
        run_sweep(SweepSettings(model=EMBEDDER, urls={"grpc": server.grpc_url}, concurrencies=(1,), pairs=True),
                  texts)
    with caplog.at_level("WARNING"):
        run_sweep(SweepSettings(model=RERANKER, urls={"grpc": server.grpc_url}, concurrencies=(1,), window_s=0.3,
                                warmup_s=0.1, stable_windows=1, max_windows=1), texts)
    assert "sends each text alone" in caplog.text
    assert main(["perf", "--model", RERANKER_FUSED, "--grpc-url", server.grpc_url, "--concurrency", "1",
                 "--window", "0.3", "--warmup", "0.1", "--stable-windows", "1", "--max-windows", "1",
                 "--pairs", "-o", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["settings"]["pairs"] is True

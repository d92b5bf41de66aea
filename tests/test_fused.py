"""The fused layout: one python model doing tokenize + ONNX Runtime + postprocess, same client contract."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import DEFAULT, NER, TOPICS, TOPICS_FUSED
from hf2triton.backends import batching, fused, onnx_model, postprocess, tokenizer
from hf2triton.client import Client
from hf2triton.errors import OptionsError
from hf2triton.export.parity import PARITY_TEXTS
from hf2triton.perf.corpus import load_texts
from hf2triton.perf.sweep import SweepSettings, run_sweep
from hf2triton.repository import ServingOptions
from hf2triton.repository import parse_pbtxt

TEXTS = list(PARITY_TEXTS)


def test_fused_folder_is_self_contained_and_carries_the_contract(repository):
    root, results = repository
    layout = results[TOPICS_FUSED].layout
    assert layout.kind == "fused" and layout.model_dirs == (root / TOPICS_FUSED,)
    assert not (root / f"{TOPICS_FUSED}_tokenizer").exists()
    version = root / TOPICS_FUSED / "1"
    assert {p.name for p in version.iterdir()} >= {"model.py", "tokenizer.py", "batching.py", "onnx_model.py",
                                                    "postprocess.py", "tokenizer.json", "model.onnx"}
    assert (version / onnx_model.PACKED_FILE).exists()  # a classifier packs too: its head reads each text's first token
    fused_config = parse_pbtxt((root / TOPICS_FUSED / "config.pbtxt").read_text())
    ensemble_config = parse_pbtxt((root / TOPICS / "config.pbtxt").read_text())
    assert fused_config.backend == "python"
    assert [(t.name, t.dims) for t in fused_config.input] == [(t.name, t.dims) for t in ensemble_config.input]
    # The ensemble's outputs, plus the tokens each text used (the gateway's usage counts).
    assert [(t.name, t.dims) for t in fused_config.output] == [(t.name, t.dims) for t in ensemble_config.output] + [
        ("TOKENS", [1])]
    for key, value in ensemble_config.parameters.items():
        assert fused_config.parameters[key].string_value == value.string_value


@pytest.mark.parametrize("max_batch_tokens", [0, 64, 8192])
def test_fused_pipeline_matches_the_ensemble_steps_in_process(repository, max_batch_tokens):
    """Same code path as the three steps on the default model; neither bucket grouping nor
    length-sorted sub-batches under a token budget change the answers."""
    root, results = repository
    layout = results[DEFAULT].layout
    step_config = parse_pbtxt((root / f"{DEFAULT}_tokenizer" / "config.pbtxt").read_text())
    settings = tokenizer.TokenizerSettings.from_json(step_config.parameters["settings"].string_value)
    encoder = tokenizer.load_tokenizer(root / f"{DEFAULT}_tokenizer" / "1" / "tokenizer.json", settings.max_length)
    session = onnx_model.create_session(layout.onnx_file)
    answer = fused.AnswerSettings(task="embeddings", model_output="last_hidden_state")
    outputs = fused.run_texts(session, settings, answer, TEXTS, encoder, max_batch_tokens=max_batch_tokens)
    expected = []
    for text in TEXTS:  # one text per request, as the ensemble serves it
        (batch,) = tokenizer.encode_requests(encoder, [[text]], settings)
        (hidden,) = session.run(["last_hidden_state"], batch.arrays)
        expected.append(postprocess.embed(hidden, batch.arrays["attention_mask"], "mean", True)[0])
    assert outputs["EMBEDDING"].shape == (len(TEXTS), 384)
    np.testing.assert_allclose(outputs["EMBEDDING"], np.stack(expected), atol=1e-5)
    assert outputs["TRUNCATED"].shape == (len(TEXTS), 1) and outputs["TRUNCATED"].any()


def test_python_model_step_takes_ragged_batches_and_container_flavours_keep_buckets(repository):
    """python-ort: the model step's inputs allow ragged batches and sort texts itself, so the
    tokenizer pads each request to its own longest text; the container's native model steps
    take dense bucketed tensors."""
    import json

    from hf2triton.repository.models import step_models

    root, results = repository
    model = parse_pbtxt((root / f"{DEFAULT}_model" / "config.pbtxt").read_text())
    assert all(t.allow_ragged_batch for t in model.input)
    postprocess_config = parse_pbtxt((root / f"{DEFAULT}_postprocess" / "config.pbtxt").read_text())
    assert all(t.allow_ragged_batch for t in postprocess_config.input)  # it answers each request on its own
    assert int(model.parameters["max_batch_tokens"].string_value) == ServingOptions().max_batch_tokens > 0
    limits = json.loads(model.parameters["limits"].string_value)
    assert limits == {"vocab_size": 30522, "type_vocab_size": 2, "max_length": 256, "pad_id": 0}
    step = parse_pbtxt((root / f"{DEFAULT}_tokenizer" / "config.pbtxt").read_text())
    assert tokenizer.TokenizerSettings.from_json(step.parameters["settings"].string_value).ragged
    fused_config = parse_pbtxt((root / TOPICS_FUSED / "config.pbtxt").read_text())
    assert int(fused_config.parameters["max_batch_tokens"].string_value) > 0
    result = results[DEFAULT]
    settings = tokenizer.TokenizerSettings.from_json(step.parameters["settings"].string_value)
    for backend in ("onnxruntime", "tensorrt"):
        tok, native, _ = step_models(DEFAULT, result.checkpoint, settings, ServingOptions(backend=backend))
        assert not any(t.ragged for t in native.inputs) and native.parameters["max_batch_tokens"] == "0"
        assert not tokenizer.TokenizerSettings.from_json(tok.parameters["settings"]).ragged
    tok, _, _ = step_models(DEFAULT, result.checkpoint, settings, ServingOptions(max_batch_tokens=0))
    assert not tokenizer.TokenizerSettings.from_json(tok.parameters["settings"]).ragged


def test_model_instances_share_the_cores_unless_threads_are_set():
    assert onnx_model.threads_per_instance(0, instances=2, cores=2) == 1
    assert onnx_model.threads_per_instance(0, instances=2, cores=16) == 8
    assert onnx_model.threads_per_instance(0, instances=4, cores=2) == 1
    assert onnx_model.threads_per_instance(3, instances=2, cores=2) == 3
    assert onnx_model.instance_count({"instance_group": [{"count": 2, "kind": "KIND_CPU"}]}) == 2


def test_switching_layout_replaces_the_other_layouts_folders(repository, tmp_path):
    from hf2triton.repository import RepositorySpec, write_repository

    root, results = repository
    result = results[TOPICS]
    target = tmp_path / "model_repository"

    manifest = {"checkpoint": {"fingerprint": result.checkpoint.fingerprint}}

    def write(layout: str):  # the same checkpoint again: no --overwrite needed
        return write_repository(RepositorySpec(target, "m", result.checkpoint, result.layout.onnx_file,
                                               result.tokenizer_json, result.settings, ServingOptions(layout=layout),
                                               manifest))

    write("ensemble")
    assert sorted(p.name for p in target.iterdir()) == ["m", "m_model", "m_postprocess", "m_tokenizer"]
    write("fused")
    assert sorted(p.name for p in target.iterdir()) == ["m"]
    assert parse_pbtxt((target / "m" / "config.pbtxt").read_text()).backend == "python"
    write("ensemble")
    assert len(list(target.iterdir())) == 4
    assert parse_pbtxt((target / "m" / "config.pbtxt").read_text()).platform == "ensemble"


def test_auto_layout_is_fused_unless_the_export_needs_the_ensemble(repository, tmp_path):
    from dataclasses import replace

    from hf2triton.backends.tokenizer import TextOptions
    from hf2triton.repository.assembly import RepositorySpec, choose_layout

    root, results = repository
    assert results[NER].layout.kind == "ensemble" and results[TOPICS].layout.kind == "ensemble"  # NER; variants
    result = results[DEFAULT]
    plain = RepositorySpec(tmp_path, "m", result.checkpoint, result.layout.onnx_file, result.tokenizer_json,
                           result.settings)
    assert choose_layout(plain)[0] == "fused"
    cases = {
        "onnxruntime backend": replace(plain, serving=ServingOptions(backend="onnxruntime")),
        "windows": replace(plain, text=TextOptions(stride=16, max_windows=4)),
        "variants": replace(plain, variants={"int8_dynamic": result.layout.onnx_file}),
        "an ensemble already there": replace(plain, root=root, name=DEFAULT),
    }
    for why, spec in cases.items():
        assert choose_layout(spec)[0] == "ensemble", why
    assert choose_layout(replace(plain, root=root, name=DEFAULT, overwrite=True))[0] == "fused"
    assert choose_layout(replace(plain, root=root, name=TOPICS_FUSED))[0] == "fused"  # a fused model stays fused


def test_unknown_layout_is_refused():
    with pytest.raises(OptionsError, match="layout"):
        ServingOptions(layout="pipeline")
    with pytest.raises(OptionsError, match="preferred"):
        ServingOptions(max_batch_size=8, preferred_batch_sizes=(16,))


def test_model_instances_prefer_batch_sizes_that_share_a_long_queue():
    assert ServingOptions().model_batch_sizes(32) == (8, 16, 32)
    assert ServingOptions().model_batch_sizes(3) == (1, 3)
    assert ServingOptions(model_instances=1).model_batch_sizes(32) == ()  # it would only split its own queue
    assert ServingOptions(backend="onnxruntime", layout="ensemble").model_batch_sizes(32) == ()  # unmeasured there
    assert ServingOptions(preferred_batch_sizes=()).model_batch_sizes(32) == ()  # --preferred-batch-size alone
    assert ServingOptions(preferred_batch_sizes=(4,)).model_batch_sizes(32) == (4,)


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_fused_model_answers_like_the_ensemble(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with Client(url, protocol=protocol, model=TOPICS) as ensemble, \
            Client(url, protocol=protocol, model=TOPICS_FUSED) as fused_client:
        ensemble.wait_for_model(60)
        info = fused_client.wait_for_model(60)
        assert (info.task, info.multi_label, info.max_batch_size) == ("sequence-classification", True, 8)
        texts = [t for t in TEXTS if len(t.encode()) <= 2000]  # the topics model's byte limit
        expected, got = ensemble.classify(texts), fused_client.classify(texts)  # chunked by 8
        assert [r.label for r in got] == [r.label for r in expected]
        assert [r.truncated for r in got] == [r.truncated for r in expected]
        for a, b in zip(got, expected):
            assert a.scores == pytest.approx(b.scores, abs=1e-5)
        assert len(got) == len(texts) > 8


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The default model exported with every default (--layout auto), served on its own server."""
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root = tmp_path_factory.mktemp("auto") / "model_repository"
    result = export_checkpoint(ExportOptions(output_dir=root))
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0)
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield result, running


@pytest.mark.e2e
def test_default_export_is_served_fused_and_answers_like_sentence_transformers(default_export, default_model_dir):
    """Every default: one python model; embeddings equal sentence-transformers, and TOKENS
    equal the served tokenizer's count for each text (truncation included)."""
    import tritonclient.grpc as grpcclient
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    result, server = default_export
    assert result.layout.kind == "fused" and not (result.layout.root / f"{DEFAULT}_tokenizer").exists()
    assert (result.layout.onnx_file.parent / onnx_model.PACKED_FILE).is_file()  # an embedder: packed rows
    texts = [*TEXTS, "x " * 400]  # the last one is truncated
    with Client(server.grpc_url, model=DEFAULT) as client:
        served = client.embed(texts)
    expected = SentenceTransformer(str(default_model_dir), device="cpu").encode(texts, convert_to_numpy=True)
    assert ((served * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)).min() >= 0.9999
    encoder = Tokenizer.from_file(str(result.layout.tokenizer_file))
    encoder.no_padding()
    encoder.enable_truncation(max_length=result.settings.max_length)
    counts = [len(encoder.encode(text).ids) for text in texts]
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        tensor = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
        answer = raw.infer(DEFAULT, [tensor], outputs=[grpcclient.InferRequestedOutput("TOKENS")])
    assert answer.as_numpy("TOKENS").reshape(-1).tolist() == counts
    assert counts[-1] == result.settings.max_length


@pytest.mark.e2e
def test_served_packed_rows_answer_like_each_text_alone(default_export):
    """Short texts of mixed lengths in one request share packed rows; each embedding equals
    the one the text gets alone (one row, nothing packed beside it)."""
    result, server = default_export
    texts = ["ok", "Terrible service. Never again.", "I loved this film, the acting was superb and the music too!",
             "A medium-length sentence about distributed inference servers and dynamic batching.", "Fine."]
    encoder = tokenizer.load_tokenizer(result.layout.tokenizer_file, result.settings.max_length)
    lengths = np.array([len(e.ids) for e in tokenizer.tokenize(encoder, texts, result.settings)])
    assert any(len(row) > 1 for call in batching.pack_calls(lengths, 256) for row in call)
    with Client(server.grpc_url, model=DEFAULT) as client:
        together = client.embed(texts)
        alone = np.concatenate([client.embed([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def stub_args(model_dir, config=None) -> dict:
    """``initialize``'s arguments as tritonserver's python stub passes them, for version 1."""
    import json

    from google.protobuf import json_format

    config = config or parse_pbtxt((model_dir / "config.pbtxt").read_text())
    return {"model_config": json.dumps(json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)),
            "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name}


def test_fused_model_runs_the_packed_graph_of_a_version_that_has_one(default_export):
    """As tritonserver's stub loads it: the version's packed graph, rows of up to pack_tokens
    (0 in the config: one text per row on the same graph, so an older version still loads)."""
    result, _ = default_export
    config = parse_pbtxt((result.layout.root / DEFAULT / "config.pbtxt").read_text())
    for pack_tokens, rows in (("256", 256), ("0", 1)):
        config.parameters["pack_tokens"].string_value = pack_tokens
        model = fused.TritonPythonModel()
        model.initialize(stub_args(result.layout.root / DEFAULT, config))
        session = model.sessions.session
        assert [i.name for i in session.get_inputs()] == list(batching.PACKED_INPUTS)
        assert model.packed_rows == rows
        assert model._run_texts(TEXTS)["EMBEDDING"].shape == (len(TEXTS), 384)


@pytest.mark.parametrize("user_setting", [None, "true"])
def test_served_models_tokenize_on_the_calling_thread(default_export, repository, monkeypatch, user_setting):
    """The fused model and the ensemble's tokenizer step turn off the tokenizers library's
    thread pool in their stub process, unless its environment says otherwise."""
    result, _ = default_export
    root, _ = repository
    for model, model_dir in ((fused.TritonPythonModel(), result.layout.root / DEFAULT),
                             (tokenizer.TritonPythonModel(), root / f"{DEFAULT}_tokenizer")):
        if user_setting is None:
            monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
        else:
            monkeypatch.setenv("TOKENIZERS_PARALLELISM", user_setting)
        model.initialize(stub_args(model_dir))
        assert os.environ["TOKENIZERS_PARALLELISM"] == (user_setting or "false"), model_dir.name


@pytest.mark.e2e
def test_verify_passes_on_the_default_export(default_export):
    from hf2triton.client.verify import verify

    result, server = default_export
    report = verify(DEFAULT, result.checkpoint.path, {"grpc": server.grpc_url, "http": server.http_url})
    assert report.passed and report.checks, "\n".join(report.table())


@pytest.mark.e2e
def test_gateway_away_from_the_repository_reads_usage_from_the_fused_model(default_export):
    import json
    import urllib.request

    from hf2triton.gateway.run import start_gateway
    from hf2triton.gateway.settings import GatewaySettings

    result, server = default_export
    encoder = tokenizer.load_tokenizer(result.layout.tokenizer_file, result.settings.max_length)
    counts = [len(e.ids) for e in tokenizer.tokenize(encoder, TEXTS, result.settings)]
    with start_gateway(GatewaySettings(triton_url=server.grpc_url, port=0)) as gateway:
        request = urllib.request.Request(f"{gateway.url}/v1/embeddings", method="POST",
                                         data=json.dumps({"model": DEFAULT, "input": TEXTS}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    assert len(answer["data"]) == len(TEXTS)
    assert answer["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}


@pytest.mark.e2e
def test_fused_model_rejects_invalid_utf8_like_the_tokenizer_step(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    text = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"fine"], [b"\xff broken"]], dtype=object))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="TEXT\\[1\\] is not valid UTF-8") as caught:
        client.infer(TOPICS_FUSED, [text])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.close()


@pytest.mark.e2e
def test_sweep_of_the_fused_model_reports_its_single_step(server):
    settings = SweepSettings(model=TOPICS_FUSED, urls={"grpc": server.grpc_url}, concurrencies=(2,),
                             window_s=0.3, warmup_s=0.1, stable_windows=1, max_windows=1)
    (point,) = run_sweep(settings, load_texts())
    assert point.errors == 0 and [s.model for s in point.steps] == [TOPICS_FUSED]
    assert point.steps[0].requests > 0


@pytest.mark.e2e
def test_requests_of_different_lengths_share_model_executions_and_get_their_own_rows(server, repository):
    """The ragged model step: concurrent requests of many lengths are merged by Triton (fewer
    executions than requests) and each gets what its own padded tensors give in-process."""
    import threading

    import tritonclient.http as httpclient

    root, results = repository
    step = f"{DEFAULT}_model"
    session = onnx_model.create_session(results[DEFAULT].layout.onnx_file)
    step_config = parse_pbtxt((root / f"{DEFAULT}_tokenizer" / "config.pbtxt").read_text())
    settings = tokenizer.TokenizerSettings.from_json(step_config.parameters["settings"].string_value)
    encoder = tokenizer.load_tokenizer(root / f"{DEFAULT}_tokenizer" / "1" / "tokenizer.json", settings.max_length)
    requests = [[" ".join(["word"] * (1 + k * 3)), "short"] for k in range(24)]  # 24 different widths
    batches = tokenizer.encode_requests(encoder, requests, settings)
    client = httpclient.InferenceServerClient(server.http_url)  # one per thread: they are not thread-safe

    def stats() -> tuple[int, int]:
        (model,) = client.get_inference_statistics(step)["model_stats"]
        return int(model["inference_count"]), int(model["execution_count"])

    before = stats()
    answers: list = [None] * len(batches)
    barrier = threading.Barrier(len(batches))

    def send(k: int) -> None:
        own = httpclient.InferenceServerClient(server.http_url)
        inputs = []
        for name, array in batches[k].arrays.items():
            item = httpclient.InferInput(name, list(array.shape), "INT64")
            item.set_data_from_numpy(array)
            inputs.append(item)
        barrier.wait()
        answers[k] = own.infer(step, inputs).as_numpy("last_hidden_state")
        own.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = stats()
    client.close()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    print(f"\nragged model step: {inferences} rows in {executions} executions")
    assert inferences == 2 * len(batches) and executions < len(batches)
    for batch, served in zip(batches, answers):
        (expected,) = session.run(["last_hidden_state"], batch.arrays)
        mask = batch.arrays["attention_mask"][:, :, None].astype(bool)
        assert served.shape == expected.shape
        np.testing.assert_allclose(np.where(mask, served, 0), np.where(mask, expected, 0), atol=1e-4)

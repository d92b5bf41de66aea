"""Packed rows: several texts per row of a packed graph, each attending only to itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hf2triton.backends import batching, fused, onnx_model, tokenizer
from hf2triton.export import packing
from hf2triton.export.parity import PARITY_TEXTS

MIXED = ["ok", "Terrible service. Never again.", "I loved this film, the acting was superb and the music too!",
         "A medium-length sentence about distributed inference servers and dynamic batching."]


def plan_texts(plan: list[list[list[int]]]) -> list[int]:
    return sorted(i for call in plan for row in call for i in row)


@pytest.mark.parametrize("lengths", [[5], [3, 40, 7, 22, 9], [30] * 32, [512, 4, 4, 4], list(range(1, 90, 3))])
@pytest.mark.parametrize("row_tokens", [1, 64, 256])
def test_every_text_runs_exactly_once(lengths, row_tokens):
    plan = batching.pack_calls(np.array(lengths), row_tokens, max_batch_tokens=256)
    assert plan_texts(plan) == list(range(len(lengths)))
    assert all(call and all(call) for call in plan)


def test_short_texts_of_mixed_lengths_share_a_row_and_equal_lengths_do_not():
    mixed = batching.pack_calls(np.array([9, 31, 14, 22]), 256)
    assert len(mixed) == 1 and len(mixed[0]) < 4  # one call, texts sharing rows: little padding
    equal = batching.pack_calls(np.array([30] * 32), 256)
    assert all(len(row) == 1 for call in equal for row in call)  # padding-free already: short rows win
    unpacked = batching.pack_calls(np.array([9, 31, 14, 22]), 1)  # row_tokens 1: the padded plan
    assert all(len(row) == 1 for call in unpacked for row in call)


def test_a_token_budget_cuts_calls_and_a_longer_text_runs_alone():
    lengths = np.array([300, 40, 40, 40, 40, 40, 40])
    plan = batching.pack_calls(lengths, 256, max_batch_tokens=128)
    assert [[0]] in plan  # over the budget: alone
    for call in plan:
        assert sum(int(lengths[i]) for row in call for i in row) <= 128 or call == [[0]]


def test_packed_batch_numbers_positions_per_text_and_unpacks_to_padded_rows():
    token_ids = [[101, 7, 8, 102], [101, 9, 102], [101, 102]]
    batch = batching.packed_batch(token_ids, [[0, 2], [1]], pad_id=0)
    assert batch.feeds["input_ids"].tolist() == [[101, 7, 8, 102, 101, 102], [101, 9, 102, 0, 0, 0]]
    assert batch.feeds["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
    assert batch.feeds["segment_ids"].tolist() == [[1, 1, 1, 1, 2, 2], [1, 1, 1, 0, 0, 0]]
    per_token = batch.feeds["input_ids"][..., None].astype(np.float32)  # a stand-in output: the ids themselves
    padded, mask = batching.unpack(per_token, batch, np.array([4, 3, 2]), [2, 0, 1])
    assert padded[..., 0].tolist() == [[101, 102, 0, 0], [101, 7, 8, 102], [101, 9, 102, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default checkpoint: torch model, padded graph, served tokenizer."""
    from hf2triton.export.checkpoint import default_checkpoint, inspect_checkpoint
    from hf2triton.export.onnx_export import export_onnx, load_torch_model
    from hf2triton.export.tokenization import served_tokenizer, tokenizer_settings, write_tokenizer_json

    work = tmp_path_factory.mktemp("packing")
    checkpoint = inspect_checkpoint(default_checkpoint())
    tokenizer_json = write_tokenizer_json(checkpoint, work / "tokenizer.json")
    settings = tokenizer_settings(tokenizer_json, checkpoint, 64 * 1024)
    model = load_torch_model(checkpoint)
    padded = export_onnx(model, checkpoint, work / "model.onnx")
    return model, checkpoint, padded, served_tokenizer(tokenizer_json, settings), settings, work


def test_the_packed_graph_matches_the_padded_one_and_serves_the_same_embeddings(exported):
    model, checkpoint, padded, encoder, settings, work = exported
    packed = packing.packed_graph(model, checkpoint, padded, work / "model.packed.onnx", encoder, settings)
    assert packed is not None and packed.is_file()
    check = packing.check_packed(packed, padded, checkpoint, encoder, settings)
    assert check.passed and check.max_abs_diff < 1e-4 and check.texts == len(PARITY_TEXTS)
    assert check.rows < check.texts  # texts shared rows
    answer = fused.AnswerSettings(task="embeddings", model_output="last_hidden_state")
    texts = MIXED + list(PARITY_TEXTS)
    lengths = np.array([len(e.ids) for e in tokenizer.tokenize(encoder, MIXED, settings)])
    assert any(len(row) > 1 for call in batching.pack_calls(lengths, 256) for row in call)  # MIXED gets packed
    got = fused.run_texts(onnx_model.create_session(packed), settings, answer, texts, encoder,
                          max_batch_tokens=8192, packed_rows=256)
    want = fused.run_texts(onnx_model.create_session(padded), settings, answer, texts, encoder, max_batch_tokens=8192)
    np.testing.assert_allclose(got["EMBEDDING"], want["EMBEDDING"], atol=1e-5)
    for name in ("TRUNCATED", "TOKENS"):
        assert got[name].tolist() == want[name].tolist()
    assert got["TRUNCATED"].any()


def test_a_packed_graph_that_does_not_match_is_not_served(exported, monkeypatch, caplog):
    """Wrong positions (as if RoBERTa's offset were applied to BERT): the check catches it."""
    model, checkpoint, padded, encoder, settings, work = exported
    monkeypatch.setattr(packing, "position_offset", lambda _model: 2)
    assert packing.packed_graph(model, checkpoint, padded, work / "wrong.onnx", encoder, settings) is None
    assert "does NOT match" in caplog.text and "the padded graph serves" in caplog.text


def test_roberta_positions_start_after_the_padding_index(tiny_checkpoint):
    from hf2triton.export.checkpoint import inspect_checkpoint
    from hf2triton.export.onnx_export import load_torch_model

    roberta = load_torch_model(inspect_checkpoint(tiny_checkpoint("roberta")))
    bert = load_torch_model(inspect_checkpoint(tiny_checkpoint("bert")))
    assert packing.position_offset(roberta) == roberta.config.pad_token_id + 1
    assert packing.position_offset(bert) == 0


def test_packed_inputs_follow_the_task(tiny_checkpoint):
    """Per-token outputs take the three packed inputs; a classifier's head also takes each
    text's first token, and a model that takes pairs (classifiers, rerankers) and token types
    takes those too."""
    from hf2triton.export.checkpoint import inspect_checkpoint

    def names(model_type, task):
        return packing.packed_input_names(inspect_checkpoint(tiny_checkpoint(model_type, task)))

    base = batching.PACKED_INPUTS
    assert names("bert", "embeddings") == base
    assert names("bert", "token-classification") == base
    assert names("bert", "sequence-classification") == (*base, batching.TOKEN_TYPES, batching.TEXT_STARTS)
    assert names("bert", "rerank") == (*base, batching.TOKEN_TYPES, batching.TEXT_STARTS)
    assert names("roberta", "rerank") == (*base, batching.TEXT_STARTS)  # RoBERTa has no token types


def export_tiny(tiny_checkpoint, model_type: str, task: str, folder):
    """(checkpoint, torch model, padded graph, served tokenizer, settings) of a tiny encoder."""
    from hf2triton.export.checkpoint import inspect_checkpoint
    from hf2triton.export.onnx_export import export_onnx, load_torch_model
    from hf2triton.export.tokenization import served_tokenizer, tokenizer_settings, write_tokenizer_json

    checkpoint = inspect_checkpoint(tiny_checkpoint(model_type, task))
    tokenizer_json = write_tokenizer_json(checkpoint, folder / "tokenizer.json")
    settings = tokenizer_settings(tokenizer_json, checkpoint, 64 * 1024)
    model = load_torch_model(checkpoint)
    padded = export_onnx(model, checkpoint, folder / "model.onnx")
    return checkpoint, model, padded, served_tokenizer(tokenizer_json, settings), settings


@pytest.mark.parametrize("task", ["embeddings", "sequence-classification", "rerank"])
@pytest.mark.parametrize("model_type, packs", [("bert", True), ("roberta", True), ("xlm-roberta", True),
                                               ("electra", True), ("mpnet", True), ("distilbert", True),
                                               ("deberta-v2", False)])
def test_packed_graphs_of_each_encoder_and_task_pass_their_check_or_are_left_out(
        tiny_checkpoint, model_type, packs, task, tmp_path, caplog):
    """RoBERTa counts positions from padding_idx + 1: the packed graph adds it, the check proves
    it. A classifier's head and a reranker's (pairs: token types) read each text's first token:
    the check compares their logits per text. DeBERTa-v2 (relative positions) takes no 4-D
    mask: no packed graph, the padded one serves."""
    checkpoint, model, padded, encoder, settings = export_tiny(tiny_checkpoint, model_type, task, tmp_path)
    packed = packing.packed_graph(model, checkpoint, padded, tmp_path / "model.packed.onnx", encoder, settings)
    if not packs:
        assert packed is None and "no packed graph (the padded one serves)" in caplog.text
        return
    assert packed is not None
    check = packing.check_packed(packed, padded, checkpoint, encoder, settings)
    assert check.max_abs_diff < 1e-4 and check.rows < check.texts
    assert not isinstance(model.base_model, packing.FirstTokens)  # the model is left as it was


def test_a_packed_head_that_reads_the_wrong_token_is_caught(tiny_checkpoint, tmp_path):
    """The check compares each text's logits: starts shifted by one token give other answers."""
    checkpoint, model, padded, encoder, settings = export_tiny(tiny_checkpoint, "bert", "rerank", tmp_path)
    packed = packing.export_packed(model, checkpoint, tmp_path / "model.packed.onnx")
    assert packing.check_packed(packed, padded, checkpoint, encoder, settings).passed
    graph = onnx.load(str(packed))
    for node in graph.graph.node:  # every reader of the starts reads them one token on
        node.input[:] = ["next_tokens" if name == batching.TEXT_STARTS else name for name in node.input]
    graph.graph.initializer.append(onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [], [1]))
    graph.graph.node.insert(0, onnx.helper.make_node("Add", [batching.TEXT_STARTS, "one"], ["next_tokens"]))
    shifted = tmp_path / "shifted.onnx"
    onnx.save(graph, str(shifted))
    assert not packing.check_packed(shifted, padded, checkpoint, encoder, settings).passed


def test_export_cli_pack_tokens_zero_writes_no_packed_graph_and_a_bad_value_is_refused(tiny_checkpoint, tmp_path):
    """--pack-tokens reaches the fused model's config; 0 leaves the packed graph out."""
    import subprocess
    import sys
    from pathlib import Path

    from hf2triton.repository import parse_pbtxt

    root = Path(__file__).resolve().parents[1]
    embedder = str(tiny_checkpoint("bert", "embeddings"))
    for pack_tokens, packed in (("0", False), ("64", True)):
        out = tmp_path / f"r{pack_tokens}"
        done = subprocess.run([sys.executable, "build/export.py", embedder, "-o", str(out), "-n", "tiny",
                               "--pack-tokens", pack_tokens], capture_output=True, text=True, cwd=root, timeout=600)
        assert done.returncode == 0, done.stderr
        assert (out / "tiny" / "1" / onnx_model.PACKED_FILE).is_file() == packed
        config = parse_pbtxt((out / "tiny" / "config.pbtxt").read_text())
        assert config.parameters["pack_tokens"].string_value == pack_tokens
    refused = subprocess.run([sys.executable, "build/export.py", embedder, "-o", str(tmp_path / "bad"),
                              "--pack-tokens", "-1"], capture_output=True, text=True, cwd=root, timeout=600)
    assert refused.returncode != 0 and "pack tokens must be 0" in refused.stderr and "Traceback" not in refused.stderr


def test_only_an_fp32_export_served_by_python_ort_gets_a_packed_graph(exported):
    from hf2triton.pipeline import ExportOptions, packed_served_graph
    from hf2triton.precision.variants import Variant
    from hf2triton.repository import ServingOptions

    model, checkpoint, padded, encoder, settings, work = exported
    folder = work / "served"
    folder.mkdir()

    def packed(variant: str, serving: ServingOptions):
        served = Variant(variant, padded, None, padded.stat().st_size)
        return packed_served_graph(model, checkpoint, served, folder, encoder, settings, ExportOptions(serving=serving))

    assert packed("fp32", ServingOptions(layout="fused")) == folder / "model.packed.onnx"
    assert packed("fp32", ServingOptions(layout="ensemble")) == folder / "model.packed.onnx"  # python-ort step
    assert packed("int8_dynamic", ServingOptions(layout="fused")) is None  # measured no faster
    assert packed("fp32", ServingOptions(layout="ensemble", backend="onnxruntime")) is None  # the container's step
    assert packed("fp32", ServingOptions(layout="fused", pack_tokens=0)) is None


def test_the_model_step_runs_pairs_packed_with_their_token_types_one_answer_per_pair(tiny_checkpoint, tmp_path):
    """A reranker's model step: requests of pairs (and a lone text) in, each pair's logits
    back as the padded graph gives them, whatever the packing put beside it."""
    checkpoint, model, padded, encoder, settings = export_tiny(tiny_checkpoint, "bert", "rerank", tmp_path)
    packed = packing.packed_graph(model, checkpoint, padded, tmp_path / "model.packed.onnx", encoder, settings)
    requests = [(MIXED[:2], ["a short answer", MIXED[3]]), ([MIXED[2]], [MIXED[0]]), (MIXED, MIXED[::-1])]
    feeds = [dict(b.arrays) for first, second in requests
             for b in tokenizer.encode_pair_requests(encoder, [first], [second], settings)]
    feeds.append(dict(tokenizer.encode_requests(encoder, [["no pair here"]], settings)[0].arrays))
    lengths = onnx_model.request_rows(feeds)[1]
    assert any(len(row) > 1 for call in batching.pack_calls(lengths, 256) for row in call)  # pairs share rows
    names = ["logits"]
    want = onnx_model.run_ragged(onnx_model.create_session(padded), feeds, names, set(), 8192)
    got = onnx_model.run_packed(onnx_model.create_session(packed), feeds, names, 8192, 256)
    for feed, (a,), (b,) in zip(feeds, got, want):
        assert a.shape == b.shape == (len(feed["input_ids"]), 1)
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len({float(a[0][0, 0]) for a in got}) == len(feeds)  # the pairs' answers differ: the check can fail


def test_the_model_step_runs_requests_packed_like_the_ragged_path_and_isolates_a_failing_one(exported):
    """The ensemble's python-ort model step on a packed graph: padded requests in, each back at
    its own width with the padded graph's values on every real token; a request whose call
    raises gets its own error, its batch-mates their answers."""
    model, checkpoint, padded, encoder, settings, work = exported
    packed = packing.packed_graph(model, checkpoint, padded, work / "step.packed.onnx", encoder, settings)
    groups = [MIXED[:2], [PARITY_TEXTS[4]], MIXED[2:] + ["ok"], ["", "Fine."]]
    feeds = [dict(batch.arrays) for batch in tokenizer.encode_requests(encoder, groups, settings)]
    names = ["last_hidden_state"]
    want = onnx_model.run_ragged(onnx_model.create_session(padded), feeds, names, set(names), 8192)
    got = onnx_model.run_packed(onnx_model.create_session(packed), feeds, names, 8192, 256)
    for feed, (a,), (b,) in zip(feeds, got, want):
        assert a.shape == b.shape == (*feed["input_ids"].shape, 384)
        real = feed["attention_mask"] != 0
        np.testing.assert_allclose(a[real], b[real], atol=1e-4)
        assert not a[~real].any()  # zero past each row's length

    class FailsOnMarker:
        """ONNX Runtime raising for any call that holds the marker id."""

        def __init__(self, session):
            self.session = session
            self.get_inputs = session.get_inputs

        def run(self, names, feeds):
            if (feeds["input_ids"] == 7592).any():  # "hello"
                raise RuntimeError("bad tensor")
            return self.session.run(names, feeds)

    bad = dict(tokenizer.encode_requests(encoder, [["hello there"]], settings)[0].arrays)
    results = onnx_model.run_packed(FailsOnMarker(onnx_model.create_session(packed)), feeds[:2] + [bad], names,
                                    8192, 256)
    assert isinstance(results[2], RuntimeError) and "bad tensor" in str(results[2])
    for (a,), (b,), feed in zip(results[:2], want[:2], feeds[:2]):
        real = feed["attention_mask"] != 0
        np.testing.assert_allclose(a[real], b[real], atol=1e-4)

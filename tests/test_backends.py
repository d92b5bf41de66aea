"""The python-backend step modules' pure functions, run outside Triton on real data."""

import numpy as np
import pytest
import torch

from hf2triton.backends import batching, onnx_model, postprocess, tokenizer
from hf2triton.backends.tokenizer import TextInputError, TokenizerSettings


@pytest.fixture(scope="module")
def settings():
    return TokenizerSettings(max_length=32, buckets=(16, 32), pad_id=0, max_text_bytes=100,
                             input_names=("input_ids", "attention_mask", "token_type_ids"))


@pytest.fixture(scope="module")
def wordpiece(default_model_dir, settings):
    return tokenizer.load_tokenizer(default_model_dir / "tokenizer.json", settings.max_length)


def test_default_buckets_end_at_max_length():
    assert tokenizer.default_buckets(256) == (16, 32, 64, 128, 256)
    assert tokenizer.default_buckets(100) == (16, 32, 64, 100)
    assert tokenizer.default_buckets(8) == (8,)


def test_choose_bucket():
    assert [tokenizer.choose_bucket(n, (16, 32, 64)) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]


def test_checkpoint_padding_is_removed(wordpiece):
    # The default model's tokenizer.json pads every text to 128 tokens (DESIGN.md).
    assert wordpiece.padding is None
    assert len(wordpiece.encode("short").ids) == 3


def test_requests_are_padded_to_their_own_bucket_and_truncation_is_flagged(wordpiece, settings):
    long_text = "word " * 100
    short, long = tokenizer.encode_requests(wordpiece, [["hi", "hello there"], ["hi", long_text]], settings)
    assert short.arrays["input_ids"].shape == (2, 16)
    assert long.arrays["input_ids"].shape == (2, 32)
    assert short.truncated.tolist() == [False, False]
    assert long.truncated.tolist() == [False, True]
    assert short.arrays["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert short.arrays["input_ids"][0, 3:].tolist() == [settings.pad_id] * 13
    assert set(long.arrays) == {"input_ids", "attention_mask", "token_type_ids"}


def test_only_the_model_inputs_are_produced(wordpiece, settings):
    two = TokenizerSettings(32, (16, 32), 0, 100, ("input_ids", "attention_mask"))
    (batch,) = tokenizer.encode_requests(wordpiece, [["x"]], two)
    assert set(batch.arrays) == {"input_ids", "attention_mask"}


def test_empty_string_is_valid(wordpiece, settings):
    (batch,) = tokenizer.encode_requests(wordpiece, [[""]], settings)
    assert batch.arrays["attention_mask"].sum() == 2  # [CLS] [SEP]


def test_decode_texts_enforces_utf8_and_byte_limit():
    good = np.array([["héllo".encode()], [b""]], dtype=object)
    assert tokenizer.decode_texts(good, 100) == ["héllo", ""]
    with pytest.raises(TextInputError, match=r"TEXT\[1\] is not valid UTF-8"):
        tokenizer.decode_texts(np.array([[b"ok"], [b"\xff"]], dtype=object), 100)
    with pytest.raises(TextInputError, match=r"TEXT\[0\] is 101 bytes, over the limit of 100"):
        tokenizer.decode_texts(np.array([[b"x" * 101]], dtype=object), 100)


def test_settings_round_trip(settings):
    assert TokenizerSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len"])
def test_pooling_matches_torch_reference(mode):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    h, m = torch.from_numpy(hidden), torch.from_numpy(mask).unsqueeze(-1).float()
    expected = {
        "mean": (h * m).sum(1) / m.sum(1),
        "cls": h[:, 0],
        "max": torch.where(m > 0, h, torch.tensor(-1e9)).max(1).values,
        "mean_sqrt_len": (h * m).sum(1) / m.sum(1).sqrt(),
    }[mode]
    np.testing.assert_allclose(postprocess.pool(hidden, mask, mode), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_embed_normalizes():
    hidden = np.ones((2, 3, 4), dtype=np.float32)
    vectors = postprocess.embed(hidden, np.ones((2, 3)), "mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling mode"):
        postprocess.pool(np.zeros((1, 1, 1), np.float32), np.ones((1, 1)), "weird")


def test_classify_softmax_and_sigmoid():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]], dtype=np.float32)
    probs, top = postprocess.classify(logits, ["a", "b", "c"], multi_label=False)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), rtol=1e-6)
    assert top.tolist() == [b"b", b"a"]
    probs, top = postprocess.classify(logits, ["a", "b", "c"], multi_label=True)
    np.testing.assert_allclose(probs, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=1e-6)


def test_postprocess_output_names_match_the_contract():
    from hf2triton import contract

    assert (postprocess.LABEL_OUTPUT, postprocess.SCORES_OUTPUT) == (contract.OUTPUT_LABEL, contract.OUTPUT_SCORES)


def test_run_batched_groups_equal_shapes_and_keeps_order(tmp_path):
    # A real ONNX graph: y = x * 2 with dynamic batch and length.
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["x", "two"], ["y"])
    graph = helper.make_graph(
        [node], "double",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor("two", TensorProto.INT64, [], [2])],
    )
    path = tmp_path / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = onnx_model.create_session(path, intra_op_threads=1)
    feeds = [{"x": np.full((1, 4), 1)}, {"x": np.full((2, 8), 2)}, {"x": np.full((3, 4), 3)}]
    assert onnx_model.group_by_shape(feeds) == {((4,),): [0, 2], ((8,),): [1]}
    outputs = onnx_model.run_batched(session, feeds, ["y"])
    assert [o[0].shape for o in outputs] == [(1, 4), (2, 8), (3, 4)]
    assert [int(o[0][0, 0]) for o in outputs] == [2, 4, 6]


# ----------------------------------------------------------------- bounded tokenization

VARIED_PARTS = ("hello", "world,", "中文字符", "🎉🔥", "👩‍👩‍👧", "e\u0301\u0302", "naïve", "Ωmega", "x",
                "supercalifragilisticexpialidocious" * 3, "a" * 150, "   ", "\t\n ", "!!!", "٣٤٥", "ｆｕｌｌ")


def varied_texts(count: int, seed: int = 0) -> list[str]:
    """Long and short texts of CJK, emoji, combining marks, long words and whitespace runs."""
    import random

    rng = random.Random(seed)
    texts = []
    for k in range(count):
        joiner = " " if k % 2 else ""
        texts.append(joiner.join(rng.choice(VARIED_PARTS) for _ in range(rng.randint(1, 300))))
    return texts + ["a" * 3000, " " * 3000 + "end", "!" * 3000, "中" * 3000, "e\u0301" * 2000, ""]


def assert_same_encodings(full: list, bounded: list) -> None:
    for index, (a, b) in enumerate(zip(full, bounded, strict=True)):
        assert (a.ids, a.offsets, a.type_ids, a.special_tokens_mask) == (
            b.ids, b.offsets, b.type_ids, b.special_tokens_mask), f"text {index}"
        assert bool(a.overflowing) == bool(b.overflowing), f"TRUNCATED of text {index}"


@pytest.mark.parametrize("max_length", [16, 64])
def test_bounded_tokenization_equals_whole_text_wordpiece(default_model_dir, max_length):
    served = tokenizer.load_tokenizer(default_model_dir / "tokenizer.json", max_length)
    texts = varied_texts(200)
    result = tokenizer.tokenize_bounded(served, texts, max_length)
    assert_same_encodings(served.encode_batch(texts), result.encodings)
    assert result.chars_tokenized < sum(map(len, texts))  # prefixes were used


def test_bounded_tokenization_equals_whole_text_byte_level_bpe(tmp_path):
    import checkpoints

    checkpoints.byte_level_bpe_tokenizer(tmp_path)
    served = tokenizer.load_tokenizer(tmp_path / "tokenizer.json", 24)
    texts = varied_texts(200, seed=1)
    assert_same_encodings(served.encode_batch(texts), tokenizer.tokenize_bounded(served, texts, 24).encodings)


@pytest.mark.parametrize("character", ["!", "中", ".", "🎉 ", "a "])
def test_huge_texts_cost_a_bounded_amount_of_tokenization(default_model_dir, character):
    """32 texts of 64 KiB of one repeated character: the work is bounded by the max length.

    (A text that is one single word, e.g. 64 KiB of "a", is still tokenized whole: only
    the model knows how a cut word ends; WordPiece turns it into one [UNK] cheaply.)
    """
    max_length = 256
    served = tokenizer.load_tokenizer(default_model_dir / "tokenizer.json", max_length)
    texts = [character * (64 * 1024 // len(character.encode()))] * 32
    result = tokenizer.tokenize_bounded(served, texts, max_length)
    budget = tokenizer.PREFIX_CHARS_PER_TOKEN * max_length
    assert result.chars_tokenized <= 32 * budget < sum(map(len, texts)) // 8
    assert all(len(e.ids) == max_length and e.overflowing for e in result.encodings)
    assert result.encodings[0].ids == served.encode(texts[0]).ids


def test_decode_texts_refuses_nul_lone_surrogates_and_bad_shapes():
    with pytest.raises(TextInputError, match=r"TEXT\[1\] contains a NUL byte at offset 2"):
        tokenizer.decode_texts(np.array([[b"ok"], [b"ab\x00c"]], dtype=object), 100)
    with pytest.raises(TextInputError, match=r"TEXT\[0\] is not valid UTF-8"):
        tokenizer.decode_texts(np.array([["\ud800".encode("utf-8", "surrogatepass")]], dtype=object), 100)
    with pytest.raises(TextInputError, match=r"shape \[n, 1\], got object \[1, 2\]"):
        tokenizer.decode_texts(np.array([[b"a", b"b"]], dtype=object), 100)


# ----------------------------------------------------------------- per-request validation

LIMITS = onnx_model.InputLimits(vocab_size=100, type_vocab_size=2, max_length=8)


def feed(length: int = 4, rows: int = 1, **overrides) -> dict[str, np.ndarray]:
    arrays = {name: np.ones((rows, length), dtype=np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    arrays["token_type_ids"][:] = 0
    arrays.update(overrides)
    return arrays


def test_model_step_accepts_a_good_request():
    onnx_model.check_feed(feed(), LIMITS)
    assert onnx_model.InputLimits.from_json(LIMITS.to_json()) == LIMITS


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (feed(input_ids=np.array([[1, 100, 2, 3]])), r"input_ids holds 100, outside the vocabulary \(0\.\.99\)"),
        (feed(input_ids=np.array([[1, -5, 2, 3]])), r"input_ids holds -5, outside the vocabulary"),
        (feed(token_type_ids=np.array([[0, 0, 2, 0]])), r"token_type_ids holds 2, outside the token types \(0\.\.1\)"),
        (feed(length=9), r"sequence length 9 is over the model's limit of 8 positions"),
        (feed(input_ids=np.ones((1, 4), dtype=np.int32)), r"input_ids must be INT64, got int32"),
        (feed(input_ids=np.ones((1, 4, 1), dtype=np.int64)), r"input_ids must have shape \[batch, sequence\]"),
        (feed(attention_mask=np.ones((1, 5), dtype=np.int64)), r"inputs must have one shape.*attention_mask \[1, 5\]"),
        (feed(attention_mask=np.ones((2, 4), dtype=np.int64)), r"inputs must have one shape"),
        (feed(attention_mask=np.full((1, 4), 7)), r"attention_mask must hold only 0 and 1"),
        (feed(length=0), r"at least one text of one token"),
    ],
)
def test_model_step_refuses_bad_requests_naming_the_problem(bad, message):
    with pytest.raises(onnx_model.RequestError, match=message):
        onnx_model.check_feed(bad, LIMITS)


def test_run_batched_retries_a_failed_batch_request_by_request(tmp_path):
    """A merged run that raises (an index past a Gather table) fails only the culprit's request."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Gather", ["table", "x"], ["y"])
    graph = helper.make_graph(
        [node], "lookup",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor("table", TensorProto.FLOAT, [4], [0.0, 1.0, 2.0, 3.0])],
    )
    path = tmp_path / "lookup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = onnx_model.create_session(path, intra_op_threads=1)
    feeds = [{"x": np.array([[1, 2]])}, {"x": np.array([[0, 99]])}, {"x": np.array([[3, 3]])}]
    good, culprit, other = onnx_model.run_batched(session, feeds, ["y"])
    assert isinstance(culprit, Exception)
    assert good[0].tolist() == [[1.0, 2.0]] and other[0].tolist() == [[3.0, 3.0]]


def embedding_feed(**overrides) -> dict[str, np.ndarray]:
    arrays = {"last_hidden_state": np.zeros((2, 5, 4), np.float32), "attention_mask": np.ones((2, 5), np.int64)}
    return {**arrays, **overrides}


def ner_feed(**overrides) -> dict[str, np.ndarray]:
    arrays = {
        "TEXT": np.array([[b"ab cd"]], dtype=object), "input_ids": np.ones((1, 3), np.int64),
        "offset_mapping": np.array([[[0, 0], [0, 2], [3, 5]]], np.int64),
        "special_tokens_mask": np.array([[1, 0, 0]], np.int64), "logits": np.zeros((1, 3, 4), np.float32),
    }
    return {**arrays, **overrides}


def test_postprocess_accepts_good_requests():
    postprocess.check_inputs(embedding_feed(), "embeddings", 4)
    postprocess.check_inputs({"logits": np.zeros((3, 2), np.float32)}, "sequence-classification", 2)
    postprocess.check_inputs(ner_feed(), "token-classification", 4)
    postprocess.check_offsets(["ab cd"], ner_feed()["offset_mapping"], ner_feed()["special_tokens_mask"])


@pytest.mark.parametrize(
    ("task", "bad", "message"),
    [
        ("embeddings", embedding_feed(attention_mask=np.ones((2, 6), np.int64)), r"one sequence length"),
        ("embeddings", embedding_feed(attention_mask=np.ones((3, 5), np.int64)), r"one batch size"),
        ("embeddings", embedding_feed(last_hidden_state=np.zeros((2, 5, 3), np.float32)),
         r"last_hidden_state has width 3, the model's is 4"),
        ("embeddings", embedding_feed(last_hidden_state=np.zeros((2, 5, 4), np.float64)), r"must be float32"),
        ("embeddings", embedding_feed(last_hidden_state=np.zeros((2, 4), np.float32)), r"must have 3 dimensions"),
        ("sequence-classification", {"logits": np.zeros((3, 5), np.float32)}, r"logits has width 5, the model's is 4"),
        ("token-classification", ner_feed(logits=np.zeros((1, 4, 4), np.float32)), r"one sequence length"),
        ("token-classification", ner_feed(special_tokens_mask=np.array([[1, 0, 3]])), r"only 0 and 1"),
        ("token-classification", ner_feed(input_ids=np.array([[1, -1, 2]])), r"input_ids must not be negative"),
    ],
)
def test_postprocess_refuses_bad_requests_naming_the_problem(task, bad, message):
    with pytest.raises(postprocess.RequestError, match=message):
        postprocess.check_inputs(bad, task, 4)


def test_postprocess_refuses_offsets_outside_the_text_and_invalid_utf8():
    spans = np.array([[[0, 0], [0, 2], [3, 9]]], np.int64)
    with pytest.raises(postprocess.RequestError, match=r"offset_mapping\[0\] holds spans outside TEXT\[0\] \(0\.\.5"):
        postprocess.check_offsets(["ab cd"], spans, np.array([[1, 0, 0]]))
    with pytest.raises(postprocess.RequestError, match=r"TEXT\[0\] is not valid UTF-8"):
        postprocess.as_texts(np.array([[b"\xff"]], dtype=object))


def test_export_refuses_a_tokenizer_with_ids_past_the_vocabulary(default_model_dir, tmp_path):
    from types import SimpleNamespace

    from tokenizers import Tokenizer

    from hf2triton.errors import CheckpointError
    from hf2triton.export.tokenization import check_vocabulary

    grown = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    grown.add_tokens(["<brand-new>", "<another>"])
    path = tmp_path / "tokenizer.json"
    grown.save(str(path))
    checkpoint = SimpleNamespace(path=tmp_path)
    check_vocabulary(path, checkpoint, 30524)  # the embeddings were resized: fine
    with pytest.raises(CheckpointError, match=r"2 token\(s\) with ids past the model's vocabulary of 30522.*"
                                              r"'<brand-new>' \(30522\), '<another>' \(30523\)"):
        check_vocabulary(path, checkpoint, 30522)


# ----------------------------------------------------------------- length-aware batching (ragged model step)


def test_plan_batches_sorts_by_length_and_keeps_the_token_budget():
    lengths = np.array([30, 5, 7, 100, 6, 31, 300])
    batches = batching.plan_batches(lengths, max_batch_tokens=64)
    assert [b.tolist() for b in batches] == [[1, 4, 2], [0, 5], [3], [6]]  # 3x7, 2x31, 100 and 300 alone
    assert all(len(b) * lengths[b].max() <= 64 or len(b) == 1 for b in batches)
    assert [b.tolist() for b in batching.plan_batches(lengths, 10_000, max_rows=2)] == [[1], [4, 2], [0, 5], [3], [6]]


def test_plan_batches_cuts_where_padding_costs_more_than_a_call():
    # Four short rows and a long one: padding the short ones to 100 costs more than a second call.
    assert [b.tolist() for b in batching.plan_batches(np.array([100, 10, 10, 10, 10]), 8192)] == [[1, 2, 3, 4], [0]]
    # Nearly equal rows share one call: a second call costs more than one position of padding.
    assert [b.tolist() for b in batching.plan_batches(np.array([11, 10]), 8192)] == [[1, 0]]
    assert len(batching.plan_batches(np.array([11, 10]), 8192, call_cost=0)) == 2


def test_plan_batches_is_the_cheapest_cut_of_the_sorted_rows():
    """Against every way to cut the sorted rows (brute force), on random lengths."""
    from itertools import combinations

    rng = np.random.default_rng(7)
    for _ in range(40):
        lengths = rng.integers(1, 90, size=int(rng.integers(1, 9)))
        ordered = np.sort(lengths)

        def cost(cuts):
            edges = [0, *cuts, len(ordered)]
            return sum(16 + (b - a) * ordered[b - 1] for a, b in zip(edges, edges[1:]))

        cheapest = min(cost(c) for k in range(len(ordered)) for c in combinations(range(1, len(ordered)), k))
        batches = batching.plan_batches(lengths, 10_000, call_cost=16)
        assert sum(16 + len(b) * lengths[b].max() for b in batches) == cheapest
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))


def test_row_lengths_end_at_the_last_attended_token():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert onnx_model.row_lengths(mask).tolist() == [2, 4, 1, 3]


class RecordingSession:
    """A real ONNX Runtime session that records the shapes of each run."""

    def __init__(self, session):
        self.session, self.shapes = session, []

    def run(self, names, feed):
        self.shapes.append(next(iter(feed.values())).shape)
        return self.session.run(names, feed)


def positionwise_model(tmp_path):
    """hidden[b, s, 0] = input_ids * mask (a sequence output); total[b, 0] = sum over s (no sequence axis)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["masked_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["masked_f", "last"], ["last_hidden_state"]),
        helper.make_node("ReduceSum", ["masked_f", "one"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "positionwise",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 1]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("last", TensorProto.INT64, [1], [2]), helper.make_tensor("one", TensorProto.INT64, [1], [1])],
    )
    path = tmp_path / "positionwise.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return onnx_model.create_session(path, intra_op_threads=1)


def padded_request(lengths: list[int], width: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, 50, size=length)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_run_ragged_answers_each_request_at_its_own_width(tmp_path):
    session = RecordingSession(positionwise_model(tmp_path))
    feeds = [padded_request([3, 9], 9, 0), padded_request([2], 2, 1), padded_request([8, 4, 4], 8, 2),
             padded_request([40], 40, 3)]
    names = ["last_hidden_state", "total"]
    got = onnx_model.run_ragged(session, feeds, names, {"last_hidden_state"}, max_batch_tokens=32)
    for feed, outputs in zip(feeds, got):
        expected = session.session.run(names, feed)
        assert [o.shape for o in outputs] == [e.shape for e in expected]
        for o, e in zip(outputs, expected):
            np.testing.assert_array_equal(o, e)
    # Sorted across requests: [2, 3, 4, 4] share one padded run, [8, 9] another, 40 runs alone.
    assert session.shapes == [(4, 4), (2, 9), (1, 40)]


def test_run_ragged_fails_only_the_culprit(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["y"])], "lookup",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor("table", TensorProto.FLOAT, [4], [0.0, 1.0, 2.0, 3.0])],
    )
    path = tmp_path / "lookup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = onnx_model.create_session(path, intra_op_threads=1)
    feeds = [{"input_ids": np.array([[1, 2]]), "attention_mask": np.ones((1, 2), np.int64)},
             {"input_ids": np.array([[0, 99, 1]]), "attention_mask": np.ones((1, 3), np.int64)},
             {"input_ids": np.array([[3]]), "attention_mask": np.ones((1, 1), np.int64)}]
    good, culprit, other = onnx_model.run_ragged(session, feeds, ["y"], {"y"}, max_batch_tokens=100)
    assert isinstance(culprit, Exception)
    assert good[0].tolist() == [[1.0, 2.0]] and other[0].tolist() == [[3.0]]


def test_ragged_tokenizer_pads_each_request_to_its_own_longest(wordpiece, settings):
    from dataclasses import replace

    ragged = replace(settings, ragged=True)
    short, longer = tokenizer.encode_requests(wordpiece, [["hi", "hello there"], ["one two three four five"]], ragged)
    assert short.arrays["input_ids"].shape == (2, 4) and longer.arrays["input_ids"].shape == (1, 7)
    assert TokenizerSettings.from_json(ragged.to_json()) == ragged


def test_a_lone_text_gets_every_core_unless_the_model_is_big_or_it_is_off():
    mib = 2**20
    assert onnx_model.lone_text_threads(0, instance_threads=1, model_bytes=90 * mib, cores=2) == 2
    assert onnx_model.lone_text_threads(0, instance_threads=2, model_bytes=90 * mib, cores=2) == 0  # nothing to add
    assert onnx_model.lone_text_threads(0, instance_threads=1, model_bytes=600 * mib, cores=2) == 0  # weights x2
    assert onnx_model.lone_text_threads(4, instance_threads=1, model_bytes=600 * mib, cores=2) == 4  # asked for
    assert onnx_model.lone_text_threads(1, instance_threads=1, model_bytes=90 * mib, cores=16) == 0  # off


def test_lone_text_session_counts_external_weights(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 100)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 1000)
    (tmp_path / "model.py").write_text("# step code is no weight")
    assert onnx_model.model_bytes(model) == 1100


def test_served_sessions_spin_briefly_and_stop_when_a_run_ends(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    served = onnx_model.create_session(path, 2, spinning=False).get_session_options()
    assert served.get_session_config_entry("session.intra_op.spin_duration_us") == str(onnx_model.SERVED_SPIN_US)
    assert served.get_session_config_entry("session.force_spinning_stop") == "1"
    default = onnx_model.create_session(path, 2).get_session_options()
    with pytest.raises(Exception, match="session.force_spinning_stop"):  # ONNX Runtime's default: not set
        default.get_session_config_entry("session.force_spinning_stop")
    (answer,) = onnx_model.create_session(path, 2, spinning=False).run(None, {"x": np.ones(1, np.float32)})
    assert answer.tolist() == [1.0]


def test_sessions_run_add_and_layer_norm_instead_of_the_fused_skip_layer_norm(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    shape = [2, 3, 8]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.ones(8, np.float32), "gamma"), numpy_helper.from_array(np.zeros(8, np.float32), "beta")])
    path = tmp_path / "skip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    def op_types(saved) -> set[str]:
        return {node.op_type for node in onnx.load(str(saved)).graph.node}

    options = ort.SessionOptions()  # ONNX Runtime's default fuses the pair
    options.optimized_model_filepath = str(tmp_path / "default.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in op_types(tmp_path / "default.onnx")
    onnx_model.create_session(path, 1, save_optimized=tmp_path / "ours.onnx")
    assert op_types(tmp_path / "ours.onnx") == {"Add", "LayerNormalization"}


def test_a_lone_text_takes_every_core_only_while_no_other_instance_executes(tmp_path):
    import threading

    args = {"model_repository": str(tmp_path / "fused"), "model_name": "fused"}
    first, second = onnx_model.core_gate(args), onnx_model.core_gate(args)  # two instances of one model
    assert first.lock_path == second.lock_path and first.lock_path.name.startswith("hf2triton-fused-")
    with second.execution(lone=True) as every_core:
        assert every_core  # the other instance is idle
    with first.execution(lone=False) as every_core:
        assert not every_core
        with second.execution(lone=True) as every_core:
            assert not every_core  # the first instance is executing: stay on one's own threads
    with first.execution(lone=True) as every_core:
        assert every_core  # released again
        entered = threading.Event()

        def other_execution():
            with second.execution(lone=False):
                entered.set()

        worker = threading.Thread(target=other_execution)
        worker.start()
        assert not entered.wait(0.2)  # waits while a lone text holds every core
    worker.join(5)
    assert entered.is_set()
    other = onnx_model.core_gate({"model_repository": str(tmp_path / "other"), "model_name": "fused"})
    assert other.lock_path != first.lock_path  # another repository's model of the same name
    for gate in (first, second, other):
        gate.close()

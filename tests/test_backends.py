"""The python-backend step modules' pure functions, run outside Triton on real data."""

import numpy as np
import pytest
import torch

from hf2triton.backends import onnx_model, postprocess, tokenizer
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

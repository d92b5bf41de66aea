"""Long texts: token classification in overlapping windows (``--stride``) equals transformers'
``TokenClassificationPipeline(stride=N)``; embeddings with ``--long-text chunk`` equal the documented
definition computed in PyTorch. In process (step code + ONNX Runtime) and on a real tritonserver."""

import warnings

import numpy as np
import pytest
import torch
import transformers

from hf2triton.backends import postprocess
from hf2triton.backends.onnx_model import create_session
from hf2triton.backends.tokenizer import encode_windows, load_window_tokenizer
from hf2triton.errors import OptionsError
from hf2triton.export.checkpoint import inspect_checkpoint
from hf2triton.export.parity import LONG_TEXT, VERIFY_TEXTS
from hf2triton.export.tokenization import entity_settings, text_options, tokenizer_settings, write_tokenizer_json

MAX_LENGTH, STRIDE = 32, 8
SENTENCES = (
    "John Smith lives in New York and works for Acme Corporation in Berlin.",
    "Angela Merkel met Emmanuel Macron at the Élysée Palace on Tuesday.",
    "Great 🎉🔥 job 👍🏽 ok, see you in München!",
    "unbelievably complicated tokenization of antidisestablishmentarianism",
)
# Several windows of 32 tokens each (5 and 2), a short one, and an empty one.
LONG_TEXTS = (" ".join(SENTENCES * 2), " ".join(SENTENCES[:2]) + " 这家餐厅在北京 and Paris.", "Hi Bob.", "")


def pipeline_entities(checkpoint_dir, texts, aggregation, stride=STRIDE, max_length=MAX_LENGTH):
    """The reference: transformers' pipeline with the same stride, max length and aggregation."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir, model_max_length=max_length)
    pipe = transformers.pipeline("token-classification", model=str(checkpoint_dir), tokenizer=tokenizer,
                                 aggregation_strategy=aggregation, stride=stride)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pipe(text) if text else [] for text in texts]


def assert_same_entities(served, expected, texts):
    for text, got, want in zip(texts, served, expected):
        assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"], e["word"]) for e in want
        ], text
        np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in want], atol=1e-4)


class WindowedSteps:
    """The served windowed tokenizer → ONNX → postprocess path, in process."""

    def __init__(self, checkpoint_dir, workdir, max_windows=16):
        from hf2triton.export.onnx_export import export_onnx, load_torch_model

        self.checkpoint = inspect_checkpoint(checkpoint_dir, max_length=MAX_LENGTH)
        self.tokenizer_json = write_tokenizer_json(self.checkpoint, workdir / "tokenizer.json")
        self.settings = tokenizer_settings(self.tokenizer_json, self.checkpoint, 65536)
        self.options = text_options(self.tokenizer_json, self.checkpoint, stride=STRIDE, max_windows=max_windows)
        self.tokenizer = load_window_tokenizer(self.tokenizer_json, MAX_LENGTH, STRIDE)
        self.raw = __import__("tokenizers").Tokenizer.from_file(str(self.tokenizer_json))
        self.session = create_session(export_onnx(load_torch_model(self.checkpoint), self.checkpoint,
                                                  workdir / "model.onnx"))

    def __call__(self, texts, aggregation):
        from dataclasses import replace

        windows = encode_windows(self.tokenizer, list(texts), self.settings, self.options.max_windows)
        arrays = windows.batch.arrays
        logits = self.session.run(["logits"], {n: arrays[n] for n in self.checkpoint.input_names})[0]
        entities = replace(entity_settings(self.tokenizer_json, self.checkpoint, aggregation), aggregation=aggregation)
        sources = [s.decode() for s in windows.source]
        return postprocess.find_entities_windowed(
            sources, windows.owner, arrays["input_ids"], arrays["offset_mapping"], arrays["special_tokens_mask"],
            logits, self.raw, entities,
        ), windows


@pytest.fixture(scope="module")
def bert_ner(tiny_checkpoint):
    return tiny_checkpoint("bert", "token-classification")


@pytest.fixture(scope="module")
def steps(bert_ner, tmp_path_factory):
    return WindowedSteps(bert_ner, tmp_path_factory.mktemp("windowed-ner"))


@pytest.mark.parametrize("aggregation", ("simple", "first", "average", "max"))
def test_windowed_entities_match_the_pipeline_with_stride(steps, bert_ner, aggregation):
    served, windows = steps(LONG_TEXTS, aggregation)
    assert np.bincount(windows.owner).tolist() == [5, 2, 1, 1]  # really several windows per text
    assert not windows.truncated.any()
    expected = pipeline_entities(bert_ner, LONG_TEXTS, aggregation)
    assert sum(len(e) for e in expected[:2]) > 10
    assert_same_entities(served, expected, LONG_TEXTS)
    # start/end index the whole text: entities are found past the first window
    assert max(e["end"] for e in served[0]) > len(LONG_TEXTS[0]) * 3 // 4


def test_windows_are_bounded_and_the_cut_is_reported(bert_ner, tmp_path):
    steps = WindowedSteps(bert_ner, tmp_path, max_windows=2)
    served, windows = steps(LONG_TEXTS[:3], "simple")
    assert np.bincount(windows.owner).tolist() == [2, 2, 1]
    assert windows.truncated.tolist() == [True, False, False]  # text 1 needs exactly two windows
    cut = windows.batch.arrays["offset_mapping"][1].max()  # the end of the second window of text 0
    assert all(e["end"] <= cut for e in served[0])


def test_window_options_are_checked(bert_ner, tiny_checkpoint, tmp_path):
    checkpoint = inspect_checkpoint(bert_ner, max_length=MAX_LENGTH)
    tokenizer_json = write_tokenizer_json(checkpoint, tmp_path / "tokenizer.json")
    with pytest.raises(OptionsError, match=r"--stride 30 must be in 0\.\.29"):
        text_options(tokenizer_json, checkpoint, stride=30)
    with pytest.raises(OptionsError, match="other than none"):
        text_options(tokenizer_json, checkpoint, stride=4, aggregation="none")
    with pytest.raises(OptionsError, match="--max-windows must be in 1..1024"):
        text_options(tokenizer_json, checkpoint, stride=4, max_windows=0)
    with pytest.raises(OptionsError, match="--long-text chunk applies to embeddings"):
        text_options(tokenizer_json, checkpoint, long_text="chunk")
    classifier = inspect_checkpoint(tiny_checkpoint("bert"))
    with pytest.raises(OptionsError, match="sequence-classification truncates long texts"):
        text_options(tokenizer_json, classifier, stride=4)
    assert not text_options(tokenizer_json, checkpoint).windowed  # no --stride: truncate and report


def chunked_reference(checkpoint_dir, texts, max_length, stride) -> np.ndarray:
    """The documented definition in PyTorch: transformers' windows (return_overflowing_tokens, stride),
    each mean-pooled over its attention mask, the token-count-weighted mean of a text's windows, L2-normalised."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir)
    model = transformers.AutoModel.from_pretrained(checkpoint_dir).eval()
    vectors = []
    for text in texts:
        batch = tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                          return_overflowing_tokens=True, padding=True, return_tensors="pt")
        batch.pop("overflow_to_sample_mapping")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        counts = mask.sum(1)
        merged = (pooled * counts).sum(0) / counts.sum()
        vectors.append(torch.nn.functional.normalize(merged, dim=0).numpy())
    return np.stack(vectors)


@pytest.mark.e2e
def test_served_long_texts(long_text_server, default_model_dir, tiny_checkpoint):
    """NER in windows and chunked embeddings, both protocols, through the real ensemble."""
    from hf2triton.client import Client

    server, names = long_text_server
    texts = list(LONG_TEXTS)
    expected = pipeline_entities(tiny_checkpoint("bert", "token-classification"), texts, "first")
    chunk_texts = [LONG_TEXTS[0] * 3, LONG_TEXTS[1], "short"]
    reference = chunked_reference(default_model_dir, chunk_texts, CHUNK_MAX_LENGTH, CHUNK_STRIDE)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with Client(url, protocol=protocol, model=names["ner"]) as client:
            info = client.wait_for_model(timeout_s=60)
            results = client.entities(texts)
        assert info.max_batch_size == 4
        assert [r.truncated for r in results] == [False] * len(texts)
        assert (info.max_windows, info.stride) == (16, STRIDE)
        served = [[{"entity_group": e.label, "score": e.score, "word": e.word, "start": e.start, "end": e.end}
                   for e in r.entities] for r in results]
        assert_same_entities(served, expected, texts)
        with Client(url, protocol=protocol, model=names["chunk"]) as client:
            client.wait_for_model(timeout_s=60)
            vectors = client.embed(chunk_texts)
            truncated = [r.truncated for r in client.infer(chunk_texts)]
        cosine = (vectors * reference).sum(axis=1)
        assert cosine.min() > 0.9999, cosine
        assert truncated == [False, False, False]


CHUNK_MAX_LENGTH, CHUNK_STRIDE = 64, 16


@pytest.fixture(scope="module")
def long_text_server(tmp_path_factory, tiny_checkpoint):
    """One repository served by a real tritonserver: a windowed NER model (max batch 4 texts) and
    the default embedder with --long-text chunk."""
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root = tmp_path_factory.mktemp("long-texts") / "model_repository"
    names = {"ner": "ner_stride", "chunk": "minilm_chunk"}
    export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint("bert", "token-classification"), output_dir=root,
                                    name=names["ner"], max_length=MAX_LENGTH, aggregation="first", stride=STRIDE,
                                    serving=ServingOptions(max_batch_size=4)))
    export_checkpoint(ExportOptions(output_dir=root, name=names["chunk"], max_length=CHUNK_MAX_LENGTH,
                                    long_text="chunk", stride=CHUNK_STRIDE))
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0,
                          log_file=root.parent / "tritonserver.log")
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield running, names


@pytest.mark.e2e
def test_verify_checks_windows_and_dimensions(long_text_server, default_model_dir, tiny_checkpoint):
    """``hf2triton verify`` adds a text several windows long (and, for embeddings, half the dimensions)."""
    from hf2triton.client.verify import verify

    server, names = long_text_server
    urls = {"grpc": server.grpc_url, "http": server.http_url}
    for model, checkpoint in ((names["ner"], tiny_checkpoint("bert", "token-classification")),
                              (names["chunk"], default_model_dir)):
        report = verify(model, checkpoint, urls)
        assert report.passed, "\n".join(report.table())
        added = [c for c in report.checks if c.index == len(VERIFY_TEXTS)]  # the text verify adds
        assert len(added) >= 2 and len(added[0].text.encode()) >= 12 * MAX_LENGTH and all(c.passed for c in added)
        if model == names["ner"]:  # a text over --max-windows is cut (reported): verify does not compare it
            assert report.skipped == (VERIFY_TEXTS.index(LONG_TEXT),)
    assert any("dimensions=192" in c.detail for c in report.checks)


def test_window_rows_are_checked_and_merged_by_token_count():
    """The postprocess step's merge: sum(n_i v_i) / sum(n_i) per text; malformed row maps are refused."""
    pooled = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    merged = postprocess.merge_windows(pooled, np.array([3, 1, 2]), np.array([[0], [0], [1]]))
    np.testing.assert_allclose(merged, [[0.75, 0.25], [3.0, 4.0]])
    for owner in ([1, 1], [0, 2], [0, 1, 0], []):
        with pytest.raises(postprocess.RequestError, match="window_text must number texts 0, 1, ..."):
            postprocess.check_owners(np.array(owner, dtype=np.int64))


@pytest.mark.parametrize("task, args, message", [
    ("sequence-classification", ("--stride", "8"), "sequence-classification truncates long texts"),
    ("token-classification", ("--stride", "8", "--layout", "fused"), "need the ensemble layout"),
    ("token-classification", ("--stride", "64", "--max-length", "32"), "--stride 64 must be in 0..29"),
])
def test_long_text_mistakes_end_in_one_line(tiny_checkpoint, tmp_path, task, args, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hf2triton.cli", "export", str(tiny_checkpoint("bert", task)),
                           "-o", str(tmp_path / "repo"), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr

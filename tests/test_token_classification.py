"""Token classification without a server: the tokenizer and postprocess step code plus the
exported ONNX file in ONNX Runtime, compared with transformers' TokenClassificationPipeline."""

import warnings
from dataclasses import replace

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer

import checkpoints
from hf2triton.backends import postprocess
from hf2triton.backends.onnx_model import create_session
from hf2triton.backends.tokenizer import encode_requests
from hf2triton.export.checkpoint import inspect_checkpoint
from hf2triton.errors import OptionsError
from hf2triton.export.tokenization import entity_settings, served_tokenizer, tokenizer_settings, write_tokenizer_json

NER_TEXTS = (
    "John Smith lives in New York and works for Acme Corporation in Berlin.",
    "Angela Merkel met Emmanuel Macron at the Élysée Palace on Tuesday.",
    "Great 🎉🔥 job 👍🏽 ok, see you in München!",
    "这家餐厅在北京 and Paris, 東京タワー",
    "Cafe\u0301 na\u00efve re\u0301sume\u0301 — José Álvarez",
    "   ",
    "",
    "🎉🎉🔥",
    "unbelievably complicated tokenization of antidisestablishmentarianism",
    "Numbers 3.14159, dates 2026-11-23, and URLs https://example.com/a?b=c",
)
STRATEGIES = ("none", "simple", "first", "average", "max")


class ServedSteps:
    """The served tokenizer → ONNX → postprocess path, in process."""

    def __init__(self, checkpoint_dir, workdir, aggregation="simple"):
        from hf2triton.export.onnx_export import export_onnx, load_torch_model

        self.checkpoint = inspect_checkpoint(checkpoint_dir)
        self.tokenizer_json = write_tokenizer_json(self.checkpoint, workdir / "tokenizer.json")
        self.settings = tokenizer_settings(self.tokenizer_json, self.checkpoint, 65536)
        self.tokenizer = served_tokenizer(self.tokenizer_json, self.settings)
        self.entities = entity_settings(self.tokenizer_json, self.checkpoint, aggregation)
        self.raw_tokenizer = Tokenizer.from_file(str(self.tokenizer_json))
        onnx_file = export_onnx(load_torch_model(self.checkpoint), self.checkpoint, workdir / "model.onnx")
        self.session = create_session(onnx_file)

    def __call__(self, texts, aggregation):
        settings = replace(self.entities, aggregation=aggregation)
        (batch,) = encode_requests(self.tokenizer, [list(texts)], self.settings)
        feed = {n: batch.arrays[n] for n in self.checkpoint.input_names}
        logits = self.session.run(["logits"], feed)[0]
        return postprocess.find_entities(
            list(texts), batch.arrays["input_ids"], batch.arrays["offset_mapping"],
            batch.arrays["special_tokens_mask"], logits, self.raw_tokenizer, settings,
        ), batch


def pipeline_entities(checkpoint_dir, texts, aggregation):
    """The reference: transformers' pipeline, one text at a time (it rejects empty strings)."""
    pipe = transformers.pipeline("token-classification", model=str(checkpoint_dir), aggregation_strategy=aggregation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words": the heuristic applies
        return [pipe(text) if text else [] for text in texts]


def assert_same_entities(served, expected, texts):
    for text, got, want in zip(texts, served, expected):
        label = "entity" if want and "entity" in want[0] else "entity_group"
        assert [(e[label], e["start"], e["end"], e["word"]) for e in got] == [
            (e[label], e["start"], e["end"], e["word"]) for e in want
        ], text
        np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in want], atol=1e-4)
        for e in got:
            assert 0 <= e["start"] <= e["end"] <= len(text)


@pytest.fixture(scope="module")
def bert_ner(tiny_checkpoint):
    return tiny_checkpoint("bert", "token-classification")


@pytest.fixture(scope="module")
def bert_steps(bert_ner, tmp_path_factory):
    return ServedSteps(bert_ner, tmp_path_factory.mktemp("bert-ner"))


@pytest.mark.parametrize("aggregation", STRATEGIES)
def test_wordpiece_entities_match_the_pipeline(bert_steps, bert_ner, aggregation):
    served, _ = bert_steps(NER_TEXTS, aggregation)
    expected = pipeline_entities(bert_ner, NER_TEXTS, aggregation)
    assert sum(len(e) for e in expected) > 10  # the tiny model finds entities of several labels
    labels = {e.get("entity_group", e.get("entity")) for row in expected for e in row}
    assert len(labels) >= 2, labels
    assert_same_entities(served, expected, NER_TEXTS)


@pytest.mark.parametrize("aggregation", STRATEGIES)
def test_byte_level_bpe_entities_match_the_pipeline(tiny_checkpoint, tmp_path, aggregation):
    roberta = tiny_checkpoint("roberta", "token-classification")
    steps = ServedSteps(roberta, tmp_path)
    served, _ = steps(NER_TEXTS, aggregation)
    assert_same_entities(served, pipeline_entities(roberta, NER_TEXTS, aggregation), NER_TEXTS)


def test_offsets_slice_the_original_text_exactly(bert_steps, tiny_checkpoint):
    """Offsets are code-point indices into the str sent: the same spans transformers reports."""
    texts = ["Great 🎉🔥 job 👍🏽", "这家餐厅在北京", "Cafe\u0301 Jose\u0301", "a\u200db 🇩🇪 x"]
    _, batch = bert_steps(texts, "simple")
    reference = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint("bert", "token-classification"))
    for row, text in enumerate(texts):
        expected = reference(text, return_offsets_mapping=True)["offset_mapping"]
        special = batch.arrays["special_tokens_mask"][row]
        offsets = batch.arrays["offset_mapping"][row][: len(expected)]
        assert [tuple(o) for o in offsets] == [tuple(o) for o in expected]
        assert special[len(expected):].all()  # padding is masked out like special tokens
        spans = [text[a:b] for (a, b), s in zip(offsets, special) if not s]
        assert all(spans) and all(span in text for span in spans)
    assert "🎉🔥" in [texts[0][a:b] for a, b in batch.arrays["offset_mapping"][0]]
    assert [texts[1][a:b] for a, b in batch.arrays["offset_mapping"][1][1:8]] == list(texts[1])


def test_whitespace_and_emoji_only_texts(bert_steps):
    served, _ = bert_steps(["   ", "", "\n\t", "🎉🎉🔥"], "simple")
    assert served[:3] == [[], [], []]
    assert all("🎉🎉🔥"[e["start"]:e["end"]] for e in served[3])


def test_labels_without_bio_prefixes_match_the_pipeline(tmp_path):
    plain = checkpoints.tiny_encoder(tmp_path / "plain", "bert", "token-classification",
                                     labels={0: "O", 1: "PER", 2: "LOC", 3: "MISC"})
    steps = ServedSteps(plain, tmp_path)
    for aggregation in ("simple", "first"):
        served, _ = steps(NER_TEXTS, aggregation)
        expected = pipeline_entities(plain, NER_TEXTS, aggregation)
        assert any(len(row) > 1 for row in expected)
        assert_same_entities(served, expected, NER_TEXTS)


def test_truncation_keeps_entities_up_to_the_cut_and_reports_it(bert_ner, tmp_path):
    """Policy: tokens past the max length are dropped; an entity straddling the cut ends at the
    last kept token; TRUNCATED says so. Same as the pipeline with the same max length."""
    steps = ServedSteps(bert_ner, tmp_path)
    steps.settings = replace(steps.settings, max_length=16, buckets=(16,))
    steps.tokenizer = served_tokenizer(steps.tokenizer_json, steps.settings)
    text = NER_TEXTS[0] + " " + NER_TEXTS[1]
    served, batch = steps([text], "simple")
    assert batch.truncated.tolist() == [True]
    reference = transformers.AutoTokenizer.from_pretrained(bert_ner, model_max_length=16)
    pipe = transformers.pipeline("token-classification", model=str(bert_ner), tokenizer=reference,
                                 aggregation_strategy="simple")
    assert_same_entities(served, [pipe(text)], [text])
    last_kept_end = int(batch.arrays["offset_mapping"][0][14][1])  # 16 tokens = [CLS] + 14 + [SEP]
    assert served[0] and max(e["end"] for e in served[0]) <= last_kept_end < len(text)


def test_aggregation_is_checked(bert_ner, tmp_path):
    from hf2triton.pipeline import ExportOptions

    with pytest.raises(OptionsError, match="--aggregation 'longest'"):
        ExportOptions(checkpoint=bert_ner, aggregation="longest")
